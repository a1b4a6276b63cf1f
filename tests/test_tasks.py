"""Tests for jaxnorm.tasks: targets, samplers, data sets, held-out sets, losses, key streams."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import tasks


def test_target_kinds_and_input_dimension():
  layers = [(np.ones((4, 3), np.float32), np.zeros(4, np.float32)),
            (np.ones((2, 4), np.float32), np.zeros(2, np.float32))]
  assert jaxnorm.Regression(layers).kind == "mlp"
  assert jaxnorm.Regression(layers).target_widths == (3, 4, 2)
  assert jaxnorm.Regression(jaxnorm.RandomMLP((3, 5, 1))).sample().shape == (1, 3)
  assert jaxnorm.Regression(jnp.sin, in_dim=6).sample().shape == (1, 6)
  sampler = lambda key, n: jax.random.normal(key, (n, 7))
  assert jaxnorm.Regression(jnp.sin, inputs=sampler).sample().shape == (1, 7)
  x = np.zeros((10, 2), np.float32)
  data = jaxnorm.Regression((x, np.ones(10)))
  assert data.kind == "data"
  assert [a.shape for a in data.consts()] == [(8, 2), (8, 1), (2, 2), (2, 1)]


def test_a_seed_draws_its_own_random_target_and_held_out_set():
  task = jaxnorm.Regression(jaxnorm.RandomMLP((2, 3, 1)), eval_size=16, fit_size=8)
  states = [task.init(*jax.random.split(jax.random.key(s), 3), (), True) for s in range(2)]
  assert not np.allclose(states[0]["target"][0][0], states[1]["target"][0][0])
  assert states[0]["eval_x"].shape == (16, 2) and states[0]["fit_x"].shape == (8, 2)
  assert np.all(np.linalg.norm(states[0]["eval_x"], axis=1) <= 1.0 + 1e-6)   # the unit ball
  np.testing.assert_allclose(states[0]["fit_y"], jaxnorm.apply_target(states[0]["target"],
                                                                      states[0]["fit_x"]))


def test_relative_mse_and_accuracy_metrics():
  task = jaxnorm.Regression(lambda x: 2 * x, in_dim=1, eval_size=64)
  state = task.init(*jax.random.split(jax.random.key(0), 3), (), False)
  assert float(task.metrics(lambda x: 2 * x, state, ())["rel_mse"]) == 0.0
  np.testing.assert_allclose(task.metrics(lambda x: 0 * x, state, ())["rel_mse"],
                             jnp.mean((2 * state["eval_x"]) ** 2) / state["var"], rtol=1e-5)
  x, y = np.eye(3, dtype=np.float32), np.array([0, 1, 2])
  cls = jaxnorm.Classification(train=(x, y), test=(x, y))
  acc = cls.metrics(lambda inputs: inputs, {}, cls.consts())
  assert float(acc["test_acc"]) == float(acc["train_acc"]) == 1.0


def test_key_streams_keep_the_earlier_draws():
  key = jax.random.key(5)
  reg = jaxnorm.Regression(jnp.sin, in_dim=1).split_key(key)
  k4 = jax.random.split(key, 4)
  for name, i in (("model", 0), ("target", 1), ("data", 2), ("eval", 3)):
    assert np.array_equal(jax.random.key_data(reg[name]), jax.random.key_data(k4[i]))
  cls = jaxnorm.Classification(train=(np.ones((2, 1)), np.zeros(2, int)),
                               test=(np.ones((2, 1)), np.zeros(2, int))).split_key(key)
  k3 = jax.random.split(key, 3)
  for name, i in (("model", 0), ("subset", 1), ("data", 2)):
    assert np.array_equal(jax.random.key_data(cls[name]), jax.random.key_data(k3[i]))


def test_equal_tasks_share_compiled_programs():
  x = np.zeros((10, 2), np.float32)
  a, b = jaxnorm.Regression((x, np.ones(10))), jaxnorm.Regression((x + 1, np.zeros(10)))
  assert a == b and hash(a) == hash(b)   # arrays enter as arguments: only shapes matter
  assert jaxnorm.Regression(jnp.sin, in_dim=2) != jaxnorm.Regression(jnp.cos, in_dim=2)


@pytest.mark.parametrize("make,message", [
    (lambda: jaxnorm.Regression((np.ones((3, 2)), np.ones(3)), holdout=0.1), "too few"),
    (lambda: jaxnorm.Regression((np.full((5, 2), np.nan), np.ones(5))), "X must be finite"),
    (lambda: jaxnorm.Regression((np.ones((5, 2)), np.full(5, np.inf))), "Y must be finite"),
    (lambda: jaxnorm.Regression([(np.full((1, 2), np.nan), np.zeros(1))]),
     r"target\[0\] weight must be finite"),
    (lambda: jaxnorm.Regression(jnp.sin, inputs=lambda key, n: jnp.ones(n)),
     "return \\[n, d_in\\]"),
    (lambda: jaxnorm.Regression(jnp.sin, in_dim=2, loss="mse"), "loss must be a callable"),
    (lambda: jaxnorm.Regression((np.ones((5, 2)), np.ones((5, 1))),
                                test=(np.ones((2, 3)), np.ones((2, 1)))), "don't match"),
    (lambda: jaxnorm.Classification(train=(np.ones((4, 2)), np.zeros(4, int)),
                                    test=(np.ones((2, 3)), np.zeros(2, int))), "don't match"),
    (lambda: jaxnorm.Classification(train=(np.ones((4, 2)), np.zeros((4, 1), int)),
                                    test=(np.ones((2, 2)), np.zeros(2, int))), "1 dims"),
])
def test_bad_tasks_are_one_line_errors(make, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    make()
  assert tasks.Regression   # the module is the public home of the task types


def test_accuracy_in_eval_batches_equals_all_at_once():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 3, 50)
  w = rng.normal(size=(4, 3)).astype(np.float32)
  predict = lambda inputs: inputs @ w
  whole = jaxnorm.Classification(train=(x, y), test=(x[:20], y[:20]))
  batched = jaxnorm.Classification(train=(x, y), test=(x[:20], y[:20]), eval_batch=7)
  a, b = (t.metrics(predict, {}, t.consts()) for t in (whole, batched))
  expected = pytest.approx(np.mean((x @ w).argmax(1) == y))
  assert float(a["train_acc"]) == float(b["train_acc"]) == expected
  assert float(a["test_acc"]) == float(b["test_acc"])
  with pytest.raises(jaxnorm.ConfigError, match="eval_batch"):
    jaxnorm.Classification(train=(x, y), test=(x, y), eval_batch=0)
