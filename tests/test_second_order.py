"""Tests for jaxnorm.second_order: Levenberg–Marquardt steps and fits."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import second_order


def _linear(params, x_row):
  return x_row @ params["w"] + params["b"]


def test_lm_solves_linear_least_squares():
  key_x, key_w = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, (40, 3))
  y = x @ jax.random.normal(key_w, (3, 2)) + 0.5 + 0.01 * jnp.sin(7 * x[:, :2])
  params = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
  fitted, state, losses, final = jax.jit(
      lambda p: second_order.lm_fit(_linear, p, x, y, 1.0 / y.size, 12))(params)
  design = np.concatenate([np.asarray(x), np.ones((40, 1))], axis=1)
  best, *_ = np.linalg.lstsq(design, np.asarray(y), rcond=None)
  np.testing.assert_allclose(fitted["w"], best[:3], atol=2e-4)
  np.testing.assert_allclose(fitted["b"], best[3], atol=2e-4)
  assert np.all(np.diff(np.asarray(losses)) <= 0)   # only downhill steps are kept
  assert float(final) <= float(losses[-1]) * (1 + 1e-5)
  assert float(losses[4]) <= float(final) * (1 + 1e-3)   # Gauss–Newton: a few steps suffice
  del state


def test_lm_rejects_a_step_that_would_make_the_loss_non_finite():
  x = jnp.linspace(-1.0, 1.0, 8)[:, None]
  y = jnp.exp(3 * x)
  predict = lambda p, xr: jnp.exp(p["a"] * xr)
  state = second_order.lm_init(damping=1e-9)
  params, state2, loss = jax.jit(lambda p: second_order.lm_step(predict, p, x, y, 1.0, state))(
      {"a": jnp.asarray(80.0)})
  assert np.isfinite(float(params["a"]))
  assert float(state2.damping) >= float(state.damping)


def test_lm_fit_refuses_non_finite_data_on_a_direct_call():
  x, y = np.ones((4, 2), np.float32), np.full((4, 1), np.nan, np.float32)
  params = {"w": jnp.zeros((2, 1)), "b": jnp.zeros(1)}
  with np.testing.assert_raises_regex(ValueError, "y must be finite"):
    second_order.lm_fit(_linear, params, x, y, 1.0, 2)


def test_seeds_under_vmap_solve_one_system_per_lapack_call_and_match_one_at_a_time():
  """jaxlib's CPU LAPACK kernels split a batch over XLA's thread pool and block a pool thread on
  it (a deadlock with one device per core): vmapped steps must call them on single systems."""
  key_x, key_p = jax.random.split(jax.random.key(1))
  x = jax.random.normal(key_x, (3, 20, 3))
  y = jnp.sin(x[..., :2])
  params = {"w": 0.1 * jax.random.normal(key_p, (3, 3, 2)), "b": jnp.zeros((3, 2))}
  state = second_order.lm_init()
  step = lambda p, xs, ys: second_order.lm_step(_linear, p, xs, ys, 1.0, state)
  batched = jax.jit(jax.vmap(step))
  hlo = batched.lower(params, x, y).as_text()
  calls = [l for l in hlo.splitlines() if "custom_call @lapack_" in l]
  shapes = [t for l in calls for t in re.findall(r"tensor<([^>]*)>", l)]
  assert len(calls) >= 2 and shapes, hlo   # the Cholesky factor and its triangular solves
  assert all(t.count("x") <= 2 for t in shapes), shapes   # matrices and vectors: no seed axis
  out = batched(params, x, y)
  for i in range(3):
    one = jax.jit(step)(jax.tree.map(lambda a: a[i], params), x[i], y[i])
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(one)):
      np.testing.assert_array_equal(np.asarray(a)[i], np.asarray(b))
