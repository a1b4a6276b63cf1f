"""A user's Flax model, linen or NNX, as two pure functions the engine can batch over seeds.

`as_model(model, sample)` gives a `Model` with

* `init(key) -> (params, state)`: the seed's parameters (a nested dict of
  arrays, path keys as in the model) and its other variables (`batch_stats`
  and friends, a nested dict; `{}` when there are none);
* `apply(params, state, x, train, rng=None) -> (out, state)`: the outputs,
  and the other variables as updated by a training-mode call (BatchNorm's
  running averages); with `train=False` the state comes back unchanged. In
  training a linen model gets `rng` as its `'dropout'` stream; an NNX model
  keeps its own `nnx.Rngs` state among the other variables.

A linen module is used directly: `module.init(key, sample)`, `module.apply`
with `mutable=` the non-param collections when training; a `train` argument of
its `__call__` is passed through (`train=True` in training, `False` at
evaluation), and a model with `batch_stats` but no such argument is refused.
An NNX model is a factory `lambda rngs: MyModel(..., rngs=rngs)`: each seed
builds it from `nnx.Rngs(key)` and splits it (`nnx.split`) into `nnx.Param`
leaves and the rest; `apply` merges, switches `model.train()` / `model.eval()`
and splits again. Params of both kinds come out as plain nested dicts, so one
freezing rule (`jaxnorm.norm_mask`) and one engine serve both.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxnorm import validate


@dataclasses.dataclass(frozen=True)
class Model:
  """A model as pure functions (see the module docstring).

  Attributes:
    init: `init(key) -> (params, state)`.
    apply: `apply(params, state, x, train, rng=None) -> (out, state)`.
    kind: `"linen"` or `"nnx"`.
    abstract: `(params, state)` shapes from `jax.eval_shape(init, key)`.
    rebuild: `rebuild(params, state)` -> the user's object for one seed:
      linen `variables`, or the merged NNX module.
  """

  init: Callable[[jax.Array], tuple[Any, Any]]
  apply: Callable[..., tuple[Any, Any]]
  kind: str
  abstract: tuple[Any, Any]
  rebuild: Callable[[Any, Any], Any]


def takes_train(module: nn.Module) -> bool:
  """Whether a linen module's `__call__` has a `train` argument."""
  try:
    return "train" in inspect.signature(module.__call__).parameters
  except (TypeError, ValueError):
    return False


def _linen(module: nn.Module, sample) -> Model:
  has_train = takes_train(module)
  kwargs = lambda train: {"train": train} if has_train else {}

  def init(key):
    variables = dict(module.init(key, sample, **kwargs(False)))
    params = variables.pop("params", {})
    return params, variables

  def apply(params, state, x, train, rng=None):
    variables = {"params": params, **state}
    rngs = {"dropout": rng} if train and rng is not None else None
    if train and state:
      out, updates = module.apply(variables, x, mutable=list(state), rngs=rngs, **kwargs(True))
      return out, {**state, **updates}
    return module.apply(variables, x, rngs=rngs, **kwargs(train)), state

  abstract = _eval_init(init, "model.init")
  if abstract[1] and not has_train:
    raise validate.ConfigError(
        f"{type(module).__name__} has {sorted(abstract[1])} variables but its __call__ takes no "
        f"`train` argument: jaxnorm calls model.apply(..., train=True) in training and "
        f"train=False at evaluation")
  return Model(init, apply, "linen", abstract,
               rebuild=lambda params, state: {"params": params, **state})


def _nnx(factory: Callable[[nnx.Rngs], nnx.Module], sample) -> Model:
  def build(key):
    module = factory(nnx.Rngs(key))
    if not isinstance(module, nnx.Module):
      raise validate.ConfigError(
          f"an NNX model is given as a factory `lambda rngs: Model(..., rngs=rngs)`; it returned "
          f"{type(module).__name__}")
    return module

  try:
    graphdef, p_state, r_state = nnx.split(
        nnx.eval_shape(lambda: build(jax.random.key(0))), nnx.Param, ...)
  except validate.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise validate.ConfigError(f"the NNX factory failed: {_first_line(e)}") from None
  p_def, r_def = jax.tree.structure(p_state), jax.tree.structure(r_state)

  def init(key):
    _, params, rest = nnx.split(build(key), nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

  def merge(params, state):
    p = jax.tree.unflatten(p_def, jax.tree.leaves(params))
    r = jax.tree.unflatten(r_def, jax.tree.leaves(state))
    return nnx.merge(graphdef, p, r)

  def apply(params, state, x, train, rng=None):
    del rng   # an NNX model carries its own rng state (in `state`)
    module = merge(params, state)
    if train:
      module.train()
    else:
      module.eval()
    out = module(x)
    if not train:
      return out, state
    _, _, rest = nnx.split(module, nnx.Param, ...)
    return out, nnx.to_pure_dict(rest)

  abstract = _eval_init(init, "the NNX factory")
  _check_apply(apply, abstract, sample)
  return Model(init, apply, "nnx", abstract, rebuild=merge)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


def _eval_init(init, what: str):
  try:
    return jax.eval_shape(init, jax.random.key(0))
  except validate.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise validate.ConfigError(f"{what} failed on the sample input: {_first_line(e)}") from None


def _check_apply(apply, abstract, sample) -> None:
  try:
    jax.eval_shape(lambda p, s: apply(p, s, sample, False)[0], *abstract)
  except Exception as e:  # pylint: disable=broad-except
    raise validate.ConfigError(f"the model failed on the sample input: {_first_line(e)}") from None


def as_model(model, sample) -> Model:
  """Wraps a linen module or an NNX factory as a `Model`.

  Args:
    model: a `flax.linen.Module`, or a callable `rngs -> nnx.Module`.
    sample: an input batch `[n, ...]` the model accepts (shapes only are used).

  Returns:
    The `Model`.

  Raises:
    validate.ConfigError: not a model, or its init or apply fails on `sample`.
  """
  sample = jax.ShapeDtypeStruct(jnp.shape(sample), jnp.result_type(sample))
  if isinstance(model, nnx.Module):
    raise validate.ConfigError(
        "pass an NNX model as a factory, `lambda rngs: MyModel(..., rngs=rngs)`, so that every "
        "seed draws its own weights")
  if isinstance(model, nn.Module):
    zeros = jnp.zeros(sample.shape, sample.dtype)
    m = _linen(model, zeros)
    _check_apply(m.apply, m.abstract, zeros)
    return m
  if callable(model):
    return _nnx(model, jnp.zeros(sample.shape, sample.dtype))
  raise validate.ConfigError(
      f"model must be a flax.linen.Module or an NNX factory `lambda rngs: ...`, got "
      f"{type(model).__name__}")
