"""Which parameters a fit trains: norms, the output layer, a random subset, everything, or yours.

`trainable_mask(kind, params, output_path)` turns a `trainable=` choice into a
static tree of bools over a parameter tree (computed once from shapes):

* `"norm"`           the normalization scales and shifts (`jaxnorm.norm_mask`);
* `"output"`         the output layer's leaves (the last module with a
                     `kernel` that the model calls: traced for linen, the last
                     one defined for NNX);
* `"norm_output"`    both;
* `"random_subset"`  every non-norm leaf is differentiated, but an element
                     mask (`random_subset_masks`, drawn per seed) lets only as
                     many randomly chosen non-zero weights change as the
                     norms have entries (Frankle et al.'s control);
* `"full"`           everything;
* a callable `params -> tree of bools`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import traverse_util

from jaxnorm import freeze
from jaxnorm import validate

KINDS = ("norm", "output", "norm_output", "random_subset", "full")

Trainable = Union[str, Callable[[Any], Any]]


def linen_output_path(module: nn.Module, sample, takes_train: bool) -> Optional[tuple[str, ...]]:
  """Path of the last submodule with a `kernel` that `module` calls on `sample` (or None)."""
  called = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and context.module.scope is not None:
      called.append(tuple(context.module.scope.path))
    return out

  kwargs = {"train": False} if takes_train else {}
  with nn.intercept_methods(interceptor):
    variables = jax.eval_shape(lambda k: module.init(k, sample, **kwargs), jax.random.key(0))
  flat = traverse_util.flatten_dict(variables.get("params", {}))
  owners = {p[:-1] for p in flat if p[-1] == "kernel"}
  for path in reversed(called):
    if path in owners:
      return path
  return None


def nnx_output_path(module: nnx.Module) -> Optional[tuple[Any, ...]]:
  """Path of the last submodule with a `kernel` `nnx.Param`, in definition order (or None)."""
  found = []

  def walk(node, path):
    items = list(vars(node).items()) if isinstance(node, nnx.Module) else []
    if isinstance(node, (nnx.List, list, tuple)):
      items = list(enumerate(node))
    for name, child in items:
      if isinstance(name, str) and name.startswith("_"):
        continue
      if isinstance(child, nnx.Param) and name == "kernel":
        found.append(path)
      elif isinstance(child, (nnx.Module, list, tuple)):
        walk(child, path + (name,))
  walk(module, ())
  return found[-1] if found else None


def trainable_mask(kind: Trainable, params, output_path: Optional[tuple[Any, ...]]):
  """The static tree of bools `trainable=` selects over `params` (shapes suffice).

  Args:
    kind: one of `KINDS`, or a callable `params -> tree of bools`.
    params: the parameter tree (nested dicts; arrays or shape structs).
    output_path: the output layer's module path (for `"output"`/`"norm_output"`).

  Returns:
    A nested dict of Python bools.

  Raises:
    validate.ConfigError: an unknown kind, a mask of the wrong structure, no
      output layer, or a selection with nothing in it.
  """
  flat = traverse_util.flatten_dict(params)
  if callable(kind):
    try:
      mask = kind(params)
      mask_flat = traverse_util.flatten_dict(jax.tree.map(bool, mask))
    except Exception as e:  # pylint: disable=broad-except
      raise validate.ConfigError(f"trainable(params) failed: {type(e).__name__}: {e}") from None
    if mask_flat.keys() != flat.keys():
      raise validate.ConfigError("trainable(params) must return a tree of bools with the "
                                 "structure of params")
  else:
    validate.one_of("trainable", kind, KINDS)
    norms = traverse_util.flatten_dict(freeze.norm_mask(params))
    if kind in ("output", "norm_output"):
      if output_path is None:
        raise validate.ConfigError(f"trainable={kind!r}: the model has no layer with a kernel")
    out = {p: p[:len(output_path)] == tuple(output_path) for p in flat} if output_path else {}
    mask_flat = {
        "norm": lambda p: norms[p],
        "output": lambda p: out[p],
        "norm_output": lambda p: norms[p] or out[p],
        "random_subset": lambda p: not norms[p],
        "full": lambda p: True,
    }[kind]
    mask_flat = {p: bool(mask_flat(p)) for p in flat}
    if kind in ("norm", "norm_output", "random_subset") and not any(norms.values()):
      raise validate.ConfigError(
          f"trainable={kind!r}: the model has no normalization scale/shift leaves (BatchNorm, "
          f"LayerNorm, GroupNorm, RMSNorm or jaxnorm's Affine)")
  if not any(mask_flat.values()):
    raise validate.ConfigError("trainable selects no parameter: nothing to fit")
  return traverse_util.unflatten_dict(mask_flat)


def count_norm_entries(params) -> int:
  """Number of normalization scale/shift entries in `params` (arrays or shape structs)."""
  flat = traverse_util.flatten_dict(params)
  norms = traverse_util.flatten_dict(freeze.norm_mask(params))
  return sum(int(np.prod(flat[p].shape)) for p in flat if norms[p])


def random_subset_masks(key, weights: dict, n: int) -> dict:
  """Element masks selecting `n` random non-zero entries among `weights` leaves.

  Args:
    key: a `jax.random.key`.
    weights: `{path: array}` (e.g. the trainable partition in random_subset).
    n: how many entries to select (at most the number of non-zero entries).

  Returns:
    `{path: bool array}` with exactly `n` True entries in total.
  """
  paths = sorted(weights, key=lambda p: tuple(map(str, p)))
  flat = jnp.concatenate([weights[p].ravel() for p in paths])
  scores = jnp.where(flat != 0, jax.random.uniform(key, flat.shape), -1.0)
  chosen = jnp.zeros(flat.shape, bool).at[jax.lax.top_k(scores, n)[1]].set(True)
  masks, start = {}, 0
  for p in paths:
    size = weights[p].size
    masks[p] = chosen[start:start + size].reshape(weights[p].shape)
    start += size
  return masks
