"""Tests for jaxnorm.methods: one interface for optax, L-BFGS, Levenberg–Marquardt and Distill."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnorm
from jaxnorm import methods

LINE = jaxnorm.Regression(lambda x: 3 * x - 1, in_dim=1, eval_size=64, fit_size=32)
PAIRS = jaxnorm.Classification(train=(np.eye(2, dtype=np.float32), np.array([0, 1])),
                               test=(np.eye(2, dtype=np.float32), np.array([0, 1])))


def _objective(trainable_out):
  x = jnp.linspace(-1, 1, 32)[:, None]
  y = 3 * x - 1
  predict = lambda t, xs: t["a"] * xs + t["b"]
  loss = lambda t: jnp.mean((predict(t, x) - y) ** 2)
  return methods.Objective(lambda t: (loss(t), {}), loss, predict, x, y, 1.0 / y.size, {})


@pytest.mark.parametrize("method", [methods.Optax(optax.adam(0.05)), methods.LBFGS(),
                                    methods.LevenbergMarquardt()], ids=lambda m: m.name)
def test_every_method_fits_a_line_through_one_interface(method):
  objective = _objective(None)
  trainable = {"a": jnp.zeros(()), "b": jnp.zeros(())}
  state = method.init(trainable)
  step = jax.jit(lambda t, s: method.step(objective, t, s))
  first = None
  for _ in range(300 if method.name == "optax" else 10):
    trainable, state, loss, model_state = step(trainable, state)
    first = loss if first is None else first
  assert float(objective.fixed_loss(trainable)) < 1e-3 * float(first)
  assert model_state == {}


def test_full_batch_flags():
  assert not methods.Optax(optax.sgd(1.0)).full_batch
  assert methods.LBFGS().full_batch and methods.LevenbergMarquardt().full_batch
  assert methods.Distill().full_batch


def test_methods_refuse_what_they_cannot_fit():
  info = {"description": "MyNet"}
  with pytest.raises(jaxnorm.ConfigError, match="sum-of-squares"):
    methods.LevenbergMarquardt().check(PAIRS, info)
  mlp = jaxnorm.Regression(jaxnorm.RandomMLP((2, 3, 1)))
  with pytest.raises(jaxnorm.ConfigError, match="affine NormMLP with an even number.*got MyNet"):
    methods.Distill().check(mlp, info)
  net = {"norm_mlp": ("affine", 3), "widths": (2, 6, 3, 3, 1)}
  methods.Distill().check(mlp, net)    # passes
  methods.Distill().check(LINE, net)   # a black box (any function) passes too: no widths read
  with pytest.raises(jaxnorm.ConfigError, match="Distill needs a Regression task with inputs"):
    methods.Distill().check(jaxnorm.Regression((np.ones((4, 2)), np.ones((4, 1)))), net)


def test_default_optimizer_is_cached_adam_with_cosine_decay():
  tx = methods.default_optimizer(100, 0.1)
  assert tx is methods.default_optimizer(100, 0.1)
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.ones(())}, state, params)
  np.testing.assert_allclose(updates["w"], -0.1, rtol=1e-4)   # Adam's first step at the peak rate
