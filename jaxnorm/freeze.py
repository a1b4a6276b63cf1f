"""The freezing guarantee: select normalization leaves, and train nothing else.

* `norm_mask(params)` marks the scale and shift leaves of the normalization
  layers in any Flax linen parameter tree.
* `partition` / `combine` split a tree into its trainable and frozen parts, so
  that a loss can be differentiated with respect to the trainable part only
  (no gradient is ever computed for a frozen weight).
* `norm_only(optimizer)` is an optax transformation for a user's own training
  loop: `optimizer` on the norm leaves, an exact zero update on every other
  leaf, and no optimizer state for the frozen leaves.

A leaf counts as a normalization leaf, by default, when it is named `scale` or
`bias` and sits in a module whose own leaves are all named `scale` or `bias`.
That is what Flax's `BatchNorm`, `LayerNorm`, `GroupNorm`, `RMSNorm` and
jaxnorm's `Affine` look like whatever they are named, while `Dense`, `Conv`,
`Embed` and friends always own a `kernel` or `embedding` beside their bias.
Pass `predicate(path, leaf) -> bool` to choose differently.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import optax
from flax import traverse_util

NORM_LEAF_NAMES = ("scale", "bias")

Predicate = Callable[[tuple[str, ...], Any], bool]


def _default_predicate(flat: dict[tuple[str, ...], Any]) -> Predicate:
  siblings: dict[tuple[str, ...], set[str]] = {}
  for path in flat:
    siblings.setdefault(path[:-1], set()).add(path[-1])

  def predicate(path, leaf):
    del leaf
    return (path[-1] in NORM_LEAF_NAMES
            and siblings[path[:-1]] <= set(NORM_LEAF_NAMES))

  return predicate


def norm_mask(params, predicate: Optional[Predicate] = None):
  """Marks the normalization scale and shift leaves of a parameter tree.

  Args:
    params: a (nested dict) Flax linen parameter tree, e.g. `variables["params"]`.
    predicate: optional `predicate(path, leaf) -> bool`, `path` a tuple of str
      keys; replaces the default rule (see the module docstring).

  Returns:
    A tree of Python bools with the structure of `params`: True for leaves to
    tune, False for leaves to freeze.
  """
  flat = traverse_util.flatten_dict(params)
  if not flat:
    raise ValueError("norm_mask: the parameter tree has no leaves")
  predicate = predicate or _default_predicate(flat)
  return traverse_util.unflatten_dict({p: bool(predicate(p, v)) for p, v in flat.items()})


def partition(params, mask):
  """Splits `params` into `(trainable, frozen)` flat dicts keyed by path.

  Args:
    params: a nested dict parameter tree.
    mask: a tree of bools with the same structure (e.g. from `norm_mask`).

  Returns:
    `(trainable, frozen)`: two dicts `{path_tuple: leaf}` that together hold
    every leaf of `params` exactly once; both are pytrees.
  """
  flat = traverse_util.flatten_dict(params)
  flat_mask = traverse_util.flatten_dict(mask)
  if flat.keys() != flat_mask.keys():
    raise ValueError("partition: mask and params have different structures")
  trainable = {p: v for p, v in flat.items() if flat_mask[p]}
  frozen = {p: v for p, v in flat.items() if not flat_mask[p]}
  return trainable, frozen


def combine(trainable, frozen):
  """Inverse of `partition`: the nested parameter tree.

  Args:
    trainable: `{path: leaf}` from `partition`.
    frozen: `{path: leaf}` from `partition`.

  Returns:
    The nested dict parameter tree.
  """
  return traverse_util.unflatten_dict({**frozen, **trainable})


class NormOnlyState(NamedTuple):
  """State of `norm_only`: the inner optimizer's state on the trainable leaves only."""
  inner: Any


def norm_only(optimizer: optax.GradientTransformation,
              predicate: Optional[Predicate] = None) -> optax.GradientTransformation:
  """Applies `optimizer` to normalization leaves only; frozen leaves get zero updates.

  Unlike `optax.masked(optimizer, mask)`, which passes the raw gradient through
  to the leaves outside the mask, every frozen leaf receives an update of exact
  zeros, and `optimizer` never sees (nor keeps state for) a frozen leaf.

  Args:
    optimizer: any optax transformation, e.g. `optax.adam(1e-2)`.
    predicate: optional leaf predicate for `norm_mask`.

  Returns:
    An `optax.GradientTransformation`.

  Example:
    >>> tx = norm_only(optax.adam(1e-2))
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
  """

  def init_fn(params):
    trainable, _ = partition(params, norm_mask(params, predicate))
    return NormOnlyState(inner=optimizer.init(trainable))

  def update_fn(updates, state, params=None):
    mask = norm_mask(updates, predicate)
    trainable, frozen = partition(updates, mask)
    trainable_params = None
    if params is not None:
      trainable_params, _ = partition(params, mask)
    trainable, inner = optimizer.update(trainable, state.inner, trainable_params)
    zeros = jax.tree.map(lambda g: jax.numpy.zeros_like(g), frozen)
    return combine(trainable, zeros), NormOnlyState(inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)
