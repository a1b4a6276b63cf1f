"""Tests for jaxnorm.adapters: linen modules and NNX factories as pure init/apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnorm
from jaxnorm import adapters


class WithBN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(4)(x))


class NNXBN(nnx.Module):
  def __init__(self, rngs):
    self.lin = nnx.Linear(3, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(4, momentum=0.5, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.lin(x))


X = jnp.arange(15.0).reshape(5, 3)


@pytest.mark.parametrize("model", [WithBN(), lambda rngs: NNXBN(rngs)], ids=["linen", "nnx"])
def test_train_updates_statistics_and_eval_uses_them(model):
  m = adapters.as_model(model, X[:1])
  params, state = m.init(jax.random.key(0))
  assert jax.tree.leaves(state)   # batch statistics
  out_train, new_state = m.apply(params, state, X, True)
  np.testing.assert_allclose(out_train.mean(0), params_bias(params), atol=1e-5)  # batch-normalised
  assert not all(np.allclose(a, b)
                 for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(state)))
  out_eval, same = m.apply(params, new_state, X, False)
  assert same is new_state and not np.allclose(out_eval, out_train)


def params_bias(params):
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return [v for p, v in flat
          if ("bn" in str(p).lower() or "BatchNorm" in str(p)) and "bias" in str(p)][0]


def test_each_seed_key_draws_its_own_weights_and_vmaps():
  m = adapters.as_model(lambda rngs: NNXBN(rngs), X[:1])
  params, _ = jax.vmap(m.init)(jax.random.split(jax.random.key(0), 3))
  kernel = params["lin"]["kernel"]
  assert kernel.shape == (3, 3, 4) and not np.allclose(kernel[0], kernel[1])
  module = m.rebuild(jax.tree.map(lambda a: a[0], params), m.init(jax.random.key(1))[1])
  assert isinstance(module, NNXBN)


@pytest.mark.parametrize("model,message", [
    (NNXBN(nnx.Rngs(0)), "factory"),
    (lambda rngs: 3, "returned int"),
    (42, "model must be"),
])
def test_bad_models_are_config_errors(model, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    adapters.as_model(model, X[:1])
