"""Tests for jaxnorm.freeze on a user-style model (not one of jaxnorm's own)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxnorm
from jaxnorm.trees import bit_identical


class UserModel(nn.Module):
  """Conv + BatchNorm + LayerNorm + GroupNorm + RMSNorm + Dense, some custom names."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(8, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, name="bn1")(x)
    x = nn.relu(x)
    x = nn.Conv(8, (3, 3), name="conv_b")(x)
    x = nn.GroupNorm(num_groups=2)(x)
    x = nn.relu(x).mean(axis=(1, 2))
    x = nn.Dense(16)(x)
    x = nn.LayerNorm(name="ln_custom")(x)
    x = nn.Dense(16, use_bias=False)(x)
    x = nn.RMSNorm()(x)
    return nn.Dense(3)(x)


EXPECTED_NORM_LEAVES = {
    ("bn1", "scale"), ("bn1", "bias"), ("GroupNorm_0", "scale"), ("GroupNorm_0", "bias"),
    ("ln_custom", "scale"), ("ln_custom", "bias"), ("RMSNorm_0", "scale")}


@pytest.fixture(scope="module")
def user_setup():
  model = UserModel()
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))
  variables = jax.jit(model.init)(jax.random.key(1), x)
  y = jax.random.normal(jax.random.key(2), (4, 3))
  return model, variables, x, y


def _loss(model, params, batch_stats, x, y):
  out, _ = model.apply({"params": params, "batch_stats": batch_stats}, x,
                       mutable=["batch_stats"])
  return jnp.mean((out - y) ** 2)


def _train(tx, model, variables, x, y, steps=5):
  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: _loss(model, p, variables["batch_stats"], x, y))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = variables["params"]
  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def _split(params):
  flat = traverse_util.flatten_dict(params)
  norm = {p: v for p, v in flat.items() if p in EXPECTED_NORM_LEAVES}
  frozen = {p: v for p, v in flat.items() if p not in EXPECTED_NORM_LEAVES}
  return norm, frozen


def test_norm_mask_finds_every_norm_leaf_and_nothing_else(user_setup):
  _, variables, _, _ = user_setup
  flat = traverse_util.flatten_dict(jaxnorm.norm_mask(variables["params"]))
  assert {p for p, v in flat.items() if v} == EXPECTED_NORM_LEAVES
  # Dense and Conv biases are frozen.
  assert not flat[("Dense_0", "bias")] and not flat[("conv_b", "bias")]


def test_norm_mask_custom_predicate(user_setup):
  _, variables, _, _ = user_setup
  mask = jaxnorm.norm_mask(variables["params"], predicate=lambda path, leaf: path[0] == "Dense_2")
  flat = traverse_util.flatten_dict(mask)
  assert {p for p, v in flat.items() if v} == {("Dense_2", "kernel"), ("Dense_2", "bias")}


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
def test_norm_mask_on_norm_mlp(norm):
  params = jaxnorm.NormMLP((3, 6, 2), norm).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  flat = traverse_util.flatten_dict(jaxnorm.norm_mask(params))
  assert {p for p, v in flat.items() if v} == {(f"norm_{k}", n) for k in (0, 1)
                                               for n in ("scale", "bias")}


def test_partition_combine_roundtrip(user_setup):
  _, variables, _, _ = user_setup
  params = variables["params"]
  trainable, frozen = jaxnorm.partition(params, jaxnorm.norm_mask(params))
  assert set(trainable) == EXPECTED_NORM_LEAVES
  assert bit_identical(jaxnorm.combine(trainable, frozen), params)


def test_norm_only_moves_norms_and_nothing_else(user_setup):
  model, variables, x, y = user_setup
  params, state = _train(jaxnorm.norm_only(optax.adam(1e-2)), model, variables, x, y)
  norm_before, frozen_before = _split(variables["params"])
  norm_after, frozen_after = _split(params)
  assert bit_identical(frozen_after, frozen_before)
  for path in EXPECTED_NORM_LEAVES:
    assert not np.array_equal(norm_after[path], norm_before[path]), path
  # Optimizer state exists for the norm leaves only: Adam's mu has exactly their paths.
  mu = state.inner[0].mu
  assert set(mu) == {"/".join(p) for p in EXPECTED_NORM_LEAVES}
  n_state = sum(np.size(v) for v in jax.tree.leaves(state))
  n_norm = sum(np.size(v) for v in norm_before.values())
  assert n_state == 2 * n_norm + 1  # mu, nu and the step count


def test_norm_only_loss_decreases(user_setup):
  model, variables, x, y = user_setup
  before = _loss(model, variables["params"], variables["batch_stats"], x, y)
  params, _ = _train(jaxnorm.norm_only(optax.adam(3e-2)), model, variables, x, y, steps=20)
  assert _loss(model, params, variables["batch_stats"], x, y) < 0.9 * before


def test_bare_optax_masked_would_move_frozen_weights(user_setup):
  """Documents the pitfall `norm_only` exists for."""
  model, variables, x, y = user_setup
  mask = jaxnorm.norm_mask(variables["params"])
  params, _ = _train(optax.masked(optax.adam(1e-2), mask), model, variables, x, y, steps=1)
  _, frozen_before = _split(variables["params"])
  _, frozen_after = _split(params)
  assert not bit_identical(frozen_after, frozen_before)


def test_norm_only_with_chained_transforms_and_no_params(user_setup):
  model, variables, x, y = user_setup
  tx = jaxnorm.norm_only(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)))
  params = variables["params"]
  state = tx.init(params)
  grads = jax.jit(jax.grad(lambda p: _loss(model, p, variables["batch_stats"], x, y)))(params)
  updates, _ = tx.update(grads, state)
  _, frozen_updates = _split(updates)
  assert all(not np.any(v) for v in frozen_updates.values())
  assert bit_identical(_split(optax.apply_updates(params, updates))[1], _split(params)[1])


def test_norm_mask_rejects_empty_tree():
  with pytest.raises(ValueError, match="no leaves"):
    jaxnorm.norm_mask({})


# --- NNX -------------------------------------------------------------------------------------

from flax import nnx  # pylint: disable=g-import-not-at-top,wrong-import-position


class NNXUser(nnx.Module):
  """Every NNX norm kind inside a user model, a Linear bias beside each, names of its own."""

  def __init__(self, rngs: nnx.Rngs):
    self.inp = nnx.Linear(4, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(8, 8, rngs=rngs), nnx.GroupNorm(8, num_groups=2, rngs=rngs)])
    self.layer_norm = nnx.LayerNorm(8, rngs=rngs)
    self.rms = nnx.RMSNorm(8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(self.inp(x)))
    x = nnx.relu(self.blocks[1](self.blocks[0](x)))
    return self.out(self.rms(self.layer_norm(x)))


NNX_NORMS = {("bn", "scale"), ("bn", "bias"), ("blocks", 1, "scale"), ("blocks", 1, "bias"),
             ("layer_norm", "scale"), ("layer_norm", "bias"), ("rms", "scale")}
X4 = jnp.linspace(-1, 1, 20).reshape(5, 4)


def _nnx_loss(model):
  return jnp.mean((model(X4) - 1.0) ** 2)


def _selected(tree):
  return {p for p, v in nnx.to_flat_state(tree)
          if (v.get_value() if isinstance(v, nnx.Variable) else v) is True}


def test_norm_mask_on_nnx_module_and_state():
  model = NNXUser(nnx.Rngs(0))
  assert _selected(jaxnorm.norm_mask(model)) == NNX_NORMS
  assert _selected(jaxnorm.norm_mask(nnx.state(model, nnx.Param))) == NNX_NORMS
  # A whole state (with the BatchNorm's statistics) gives the same parameters.
  assert _selected(jaxnorm.norm_mask(nnx.state(model))) == NNX_NORMS


def test_norm_filter_selects_the_same_leaves_live_and_detached():
  model = NNXUser(nnx.Rngs(0))
  live = {p for p, _ in nnx.to_flat_state(nnx.state(model, jaxnorm.norm_filter))}
  assert live == NNX_NORMS
  _, params, _ = nnx.split(model, nnx.Param, ...)   # a detached state
  detached = {p for p, _ in nnx.to_flat_state(nnx.state(params, jaxnorm.norm_filter))}
  assert detached == NNX_NORMS


def _frozen_and_norms(model):
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  frozen = {p: np.array(v.get_value()) for p, v in flat.items() if p not in NNX_NORMS}
  norms = {p: np.array(v.get_value()) for p, v in flat.items() if p in NNX_NORMS}
  return frozen, norms


@pytest.mark.parametrize("how", ["norm_filter", "norm_only"])
def test_nnx_optimizer_trains_only_norms(how):
  model = NNXUser(nnx.Rngs(1))
  frozen_before, norms_before = _frozen_and_norms(model)
  if how == "norm_filter":
    optimizer = nnx.Optimizer(model, optax.adam(1e-1), wrt=jaxnorm.norm_filter)
    diff = nnx.DiffState(0, jaxnorm.norm_filter)
  else:
    optimizer = nnx.Optimizer(model, jaxnorm.norm_only(optax.adam(1e-1)), wrt=nnx.Param)
    diff = nnx.DiffState(0, nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    loss, grads = nnx.value_and_grad(_nnx_loss, argnums=diff)(model)
    optimizer.update(model, grads)
    return loss, grads

  first, grads = step(model, optimizer)
  if how == "norm_filter":   # no gradient is computed for a frozen leaf
    assert {p for p, _ in nnx.to_flat_state(grads)} == NNX_NORMS
  for _ in range(20):
    loss, _ = step(model, optimizer)
  assert float(loss) < float(first)
  frozen_after, norms_after = _frozen_and_norms(model)
  assert bit_identical(frozen_after, frozen_before)
  assert all(not np.array_equal(norms_after[p], norms_before[p]) for p in norms_after)
  # Optimizer state only for the norm leaves: Adam's two moments of 7 x 8 norm entries + a count.
  sizes = [np.size(v.get_value()) for _, v in nnx.to_flat_state(nnx.state(optimizer.opt_state))
           if np.ndim(v.get_value()) > 0
           or np.issubdtype(np.asarray(v.get_value()).dtype, np.floating)]
  assert sum(sizes) == 2 * 7 * 8, sizes


def test_norm_filter_called_on_a_lone_variable_raises():
  def lone():
    return jaxnorm.norm_filter(("x", "scale"), nnx.Param(jnp.ones(3)))
  with pytest.raises(ValueError, match="outside an NNX walk"):
    lone()


def test_norm_only_refuses_integer_norm_leaves():
  params = {"norm": {"scale": jnp.ones(3, jnp.int32), "bias": jnp.zeros(3)},
            "dense": {"kernel": jnp.ones((2, 3))}}
  with pytest.raises(ValueError, match="'norm/scale' has dtype int32"):
    jaxnorm.norm_only(optax.adam(1e-2)).init(params)
