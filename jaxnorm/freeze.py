"""The freezing guarantee: select normalization leaves, and train nothing else.

* `norm_mask(params)` marks the scale and shift leaves of the normalization
  layers in any Flax parameter tree: a linen `variables["params"]` dict, an
  NNX `nnx.State` (or a module: its `nnx.Param` state), or any pytree whose
  key paths name the leaves.
* `norm_filter` is the same rule as an NNX filter:
  `nnx.Optimizer(model, tx, wrt=jaxnorm.norm_filter)`,
  `nnx.grad(loss, argnums=nnx.DiffState(0, jaxnorm.norm_filter))`,
  `nnx.state(model, jaxnorm.norm_filter)`.
* `partition` / `combine` split a nested-dict tree into its trainable and
  frozen parts, so that a loss can be differentiated with respect to the
  trainable part only (no gradient is ever computed for a frozen weight).
* `norm_only(optimizer)` is an optax transformation for a user's own training
  loop (linen params or NNX states alike): `optimizer` on the norm leaves, an
  exact zero update on every other leaf, and no optimizer state for the frozen
  leaves.

A leaf counts as a normalization leaf, by default, when it is named `scale` or
`bias` and sits in a module whose own parameters are all named `scale` or
`bias`. That is what Flax's `BatchNorm`, `LayerNorm`, `GroupNorm`, `RMSNorm`
(linen and NNX) and jaxnorm's `Affine` look like whatever they are named,
while `Dense`/`Linear`, `Conv`, `Embed` and friends always own a `kernel` or
`embedding` beside their bias. In an NNX state only `nnx.Param` leaves count
as parameters (a BatchNorm's `mean`/`var` are `nnx.BatchStat`). Pass
`predicate(path, leaf) -> bool` to choose differently.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, NamedTuple, Optional

import jax
import optax
from flax import nnx
from flax import traverse_util

NORM_LEAF_NAMES = ("scale", "bias")
# How far up the call stack `norm_filter` looks for the state NNX is filtering.
MAX_FRAMES = 8

Predicate = Callable[[tuple[Any, ...], Any], bool]


def _key_name(k):
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def leaf_paths(tree) -> tuple[list[tuple[Any, ...]], list[Any], Any]:
  """`(paths, leaves, treedef)` of a pytree; a path is the tuple of its key names.

  An NNX `Variable`'s trailing `.value` is dropped, so the leaf of
  `state["bn"]["scale"]` has the path `("bn", "scale")` as in a linen tree.

  Args:
    tree: any pytree (nested dicts, an `nnx.State`, ...).

  Returns:
    The paths and leaves in `jax.tree.leaves` order, and the treedef.
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
  paths = []
  for keypath, _ in with_path:
    names = tuple(_key_name(k) for k in keypath)
    if keypath and isinstance(keypath[-1], jax.tree_util.GetAttrKey) and names[-1] == "value":
      names = names[:-1]
    paths.append(names)
  return paths, [leaf for _, leaf in with_path], treedef


def _sibling_rule(paths, is_param) -> list[bool]:
  siblings: dict[tuple[Any, ...], set[Any]] = {}
  for path, param in zip(paths, is_param):
    if param:
      siblings.setdefault(path[:-1], set()).add(path[-1])
  return [bool(param and path and path[-1] in NORM_LEAF_NAMES
               and siblings[path[:-1]] <= set(NORM_LEAF_NAMES))
          for path, param in zip(paths, is_param)]


def _param_flags(tree, paths) -> list[bool]:
  """Which leaves are parameters: all of a plain tree; the `nnx.Param`s of an NNX state."""
  if not isinstance(tree, nnx.State):
    return [True] * len(paths)
  kinds = {tuple(p): v for p, v in nnx.to_flat_state(tree)}
  # a pure state (`nnx.as_pure`) holds bare arrays: all of them count as parameters
  return [not isinstance(kinds.get(p), nnx.Variable) or isinstance(kinds[p], nnx.Param)
          for p in paths]


def norm_mask(params, predicate: Optional[Predicate] = None):
  """Marks the normalization scale and shift leaves of a parameter tree.

  Args:
    params: a linen parameter tree (`variables["params"]`), an NNX
      `nnx.State`, an NNX module (its `nnx.Param` state is used), or any
      pytree of arrays.
    predicate: optional `predicate(path, leaf) -> bool`, `path` the tuple of
      key names (str, or int for list entries); replaces the default rule
      (see the module docstring).

  Returns:
    A tree of Python bools with the structure of `params` (of
    `nnx.state(module, nnx.Param)` for a module): True for leaves to tune,
    False for leaves to freeze.

  Raises:
    ValueError: the tree has no leaves.
  """
  if isinstance(params, nnx.Module):
    params = nnx.state(params, nnx.Param)
  paths, leaves, treedef = leaf_paths(params)
  if not leaves:
    raise ValueError("norm_mask: the parameter tree has no leaves")
  if predicate is not None:
    flags = [bool(predicate(p, v)) for p, v in zip(paths, leaves)]
  else:
    flags = _sibling_rule(paths, _param_flags(params, paths))
  return jax.tree.unflatten(treedef, flags)


class _NormFilter:
  """`norm_mask`'s rule as an NNX filter `(path, variable) -> bool` (see `norm_filter`).

  An NNX filter sees one variable at a time, but the rule needs the variable's
  siblings. NNX applies a filter while it walks a whole state or graph, so the
  filter finds what is being walked among its callers' locals — a flat state
  (`nnx.statelib.FlatState`) that holds this very variable at `path`, or a
  graph node from which `path` leads to it — and decides for all of its
  variables at once (cached). Identity is checked, so a decision is never made
  from the wrong state.
  """

  def __init__(self):
    self._cache: tuple[Any, dict[tuple[Any, ...], bool]] = (None, {})

  def _context(self, path, variable):
    """`(key, [(path, variable), ...])` of the state or graph being filtered, or None."""
    frame = sys._getframe(2)  # pylint: disable=protected-access
    for _ in range(MAX_FRAMES):
      if frame is None:
        return None
      for value in list(frame.f_locals.values()):
        if isinstance(value, nnx.statelib.FlatState):
          entries = dict(zip(map(tuple, value.paths), value.leaves))
          if entries.get(path) is variable:
            return ("flat", id(value)), list(entries.items())
        elif isinstance(value, nnx.Module) and _follow(value, path) is variable:
          flat = nnx.to_flat_state(nnx.state(value))
          return ("graph", id(value)), [(tuple(p), v) for p, v in flat]
      frame = frame.f_back
    return None

  def __call__(self, path, variable) -> bool:
    if not isinstance(variable, nnx.Param):
      return False
    path = tuple(path)
    key, decisions = self._cache
    context = self._context(path, variable)
    if context is None:
      raise ValueError(
          f"jaxnorm.norm_filter was called on {path} outside an NNX walk of a whole state or "
          f"model; use it in nnx.Optimizer(..., wrt=), nnx.DiffState, nnx.state or nnx.split, "
          f"or use jaxnorm.norm_mask(state)")
    if context[0] != key or path not in decisions:
      paths = [p for p, _ in context[1]]
      is_param = [isinstance(v, nnx.Param) or not isinstance(v, nnx.Variable)
                  for _, v in context[1]]
      decisions = dict(zip(paths, _sibling_rule(paths, is_param)))
      self._cache = (context[0], decisions)
    return decisions[path]

  def __repr__(self) -> str:
    return "jaxnorm.norm_filter"


def _follow(node, path):
  """The object `path` leads to from the graph node `node` (None where it leads nowhere)."""
  for k in path:
    try:
      node = node[k] if isinstance(k, int) or not hasattr(node, str(k)) else getattr(node, k)
    except (KeyError, IndexError, TypeError, AttributeError):
      return None
  return node


norm_filter = _NormFilter()
norm_filter.__doc__ = """NNX filter selecting the normalization `nnx.Param`s (`norm_mask`'s rule).

A Param passes when its name is `scale` or `bias` and every `nnx.Param` its
module owns is named `scale` or `bias` (BatchNorm, LayerNorm, GroupNorm,
RMSNorm, jaxnorm's own affine norms). It works wherever NNX filters a whole
state: `nnx.Optimizer(model, tx, wrt=norm_filter)`,
`nnx.grad(loss, argnums=nnx.DiffState(0, norm_filter))`,
`nnx.state(model_or_state, norm_filter)`, `nnx.split(model, norm_filter, ...)`;
called on a lone variable it raises `ValueError` (use `norm_mask`).
"""


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


def _join(path) -> str:
  return "/".join(map(str, path))


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
    optimizer: any optax transformation, e.g. `optax.adam(1e-2)`; it sees the
      trainable leaves as a dict `{"module/leaf": leaf}` (string keys, which
      NNX's optimizer state keeps intact).
    predicate: optional leaf predicate for `norm_mask`.

  Returns:
    An `optax.GradientTransformation`; its `init` raises `ValueError` when a
    trainable leaf is not floating point (an integer scale would be rounded to
    0 by the first update).

  Example:
    >>> tx = norm_only(optax.adam(1e-2))
    >>> opt_state = tx.init(params)
    >>> updates, opt_state = tx.update(grads, opt_state, params)
    >>> params = optax.apply_updates(params, updates)
  """

  def split(tree, mask_tree=None):
    paths, leaves, treedef = leaf_paths(tree)
    mask = jax.tree.leaves(norm_mask(tree, predicate) if mask_tree is None else mask_tree)
    if len(mask) != len(leaves):
      raise ValueError("norm_only: updates and params have different structures")
    trainable = {_join(p): v for p, v, m in zip(paths, leaves, mask) if m}
    return trainable, mask, treedef

  def init_fn(params):
    trainable, _, _ = split(params)
    ints = [k for k, v in trainable.items()
            if not jax.numpy.issubdtype(jax.numpy.result_type(v), jax.numpy.inexact)]
    if ints:
      raise ValueError(f"norm_only: the trainable leaf {ints[0]!r} has dtype "
                       f"{jax.numpy.result_type(trainable[ints[0]])}; gradient updates need "
                       f"floating-point norm leaves (cast the params, e.g. to float32)")
    return NormOnlyState(inner=optimizer.init(trainable))

  def update_fn(updates, state, params=None):
    mask_tree = norm_mask(params if params is not None else updates, predicate)
    trainable, mask, treedef = split(updates, mask_tree)
    trainable_params = split(params, mask_tree)[0] if params is not None else None
    trainable, inner = optimizer.update(trainable, state.inner, trainable_params)
    paths, leaves, _ = leaf_paths(updates)
    out = [trainable[_join(p)] if m else jax.numpy.zeros_like(g)
           for p, g, m in zip(paths, leaves, mask)]
    return jax.tree.unflatten(treedef, out), NormOnlyState(inner=inner)

  return optax.GradientTransformation(init_fn, update_fn)
