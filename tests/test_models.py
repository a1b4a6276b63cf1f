"""Tests for jaxnorm.models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm


@pytest.mark.parametrize("p", [1.0, 0.5, 0.25, 0.0625])
def test_sparse_mask_density_and_scale(p):
  w = np.asarray(jaxnorm.sparse_he_normal(p)(jax.random.key(0), (512, 512)))
  density = (w != 0).mean()
  assert abs(density - p) < 0.01, density
  # Pruned entries are +0.0 (so that adding a zero update keeps them bit-identical).
  assert not np.signbit(w[w == 0]).any()
  # Kept weights are rescaled by 1/sqrt(p): fan-in variance stays ~2/fan_in
  # (He-normal is truncated at 2 std, which shrinks the variance to ~0.774 of it).
  np.testing.assert_allclose(w.var() * 512 / 2, 1.0, rtol=0.05)


def test_mask_is_fixed_by_the_key():
  init = jaxnorm.sparse_he_normal(0.25)
  a = init(jax.random.key(3), (64, 64))
  b = init(jax.random.key(3), (64, 64))
  c = init(jax.random.key(4), (64, 64))
  np.testing.assert_array_equal(a, b)
  assert (np.asarray(a != 0) != np.asarray(c != 0)).any()


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
def test_norm_mlp_layout_and_last_layer_linear(norm):
  model = jaxnorm.NormMLP((5, 12, 3, 7, 4), norm=norm)
  variables = model.init(jax.random.key(0), jnp.zeros((2, 5)))
  params = variables["params"]
  assert sorted(params) == sorted([f"dense_{k}" for k in range(4)]
                                  + [f"norm_{k}" for k in range(4)])
  assert params["dense_0"]["kernel"].shape == (5, 12)
  assert params["norm_3"]["scale"].shape == (4,) and params["norm_3"]["bias"].shape == (4,)
  assert ("batch_stats" in variables) == (norm == "batchnorm")
  y = model.apply(variables, jax.random.normal(jax.random.key(1), (64, 5)))
  assert y.shape == (64, 4)
  assert (y < 0).any()  # no ReLU after the last normalization


def test_affine_norm_is_scale_and_shift():
  model = jaxnorm.NormMLP((3, 4), norm="affine")
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  params["norm_0"] = {"scale": jnp.array([1., 2., 3., 4.]), "bias": jnp.array([0., 1., 0., -1.])}
  x = jnp.ones((1, 3))
  norm = params["norm_0"]
  expected = (x @ params["dense_0"]["kernel"]) * norm["scale"] + norm["bias"]
  np.testing.assert_allclose(model.apply({"params": params}, x), expected, rtol=1e-6)


def test_batchnorm_train_mode_updates_running_stats():
  model = jaxnorm.NormMLP((3, 8, 2), norm="batchnorm")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
  x = jax.random.normal(jax.random.key(1), (32, 3)) + 2.0
  _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(updates["batch_stats"]["norm_0"]["mean"],
                         variables["batch_stats"]["norm_0"]["mean"])


def test_target_array_form_matches_module():
  widths = (6, 5, 4, 3)
  module = jaxnorm.TargetMLP(widths)
  params = module.init(jax.random.key(2), jnp.zeros((1, 6)))["params"]
  target = jaxnorm.target_from_params(params)
  assert [w.shape for w, _ in target] == [(5, 6), (4, 5), (3, 4)]
  x = jax.random.normal(jax.random.key(3), (10, 6))
  np.testing.assert_allclose(jaxnorm.apply_target(target, x), module.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-6)
  drawn = jaxnorm.init_target(jax.random.key(2), widths)
  for (w1, b1), (w2, b2) in zip(drawn, target):
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)


def test_user_supplied_target_weights():
  w1, b1 = jnp.array([[1., -1.], [2., 0.]]), jnp.array([0., -1.])
  w2, b2 = jnp.array([[1., 1.]]), jnp.array([0.5])
  x = jnp.array([[1., 2.]])
  # h = relu([1-2, 2-1]) = [0, 1]; out = 0 + 1 + 0.5
  np.testing.assert_allclose(jaxnorm.apply_target([(w1, b1), (w2, b2)], x), [[1.5]])


def test_a_layernorm_output_is_constrained_and_an_affine_output_is_not():
  x = jax.random.normal(jax.random.key(0), (16, 3))
  ln = jaxnorm.NormMLP((3, 8, 1), norm="layernorm")
  out = ln.apply(ln.init(jax.random.key(1), x), x)
  np.testing.assert_allclose(out, out[0, 0], atol=1e-6)   # one output: always its shift
  ln2 = jaxnorm.NormMLP((3, 8, 2), norm="layernorm")
  out2 = ln2.apply(ln2.init(jax.random.key(1), x), x)
  np.testing.assert_allclose(out2.sum(-1), 0.0, atol=1e-5)   # mean 0 across the outputs
  free = jaxnorm.NormMLP((3, 8, 1), norm="layernorm", output_norm="affine")
  variables = free.init(jax.random.key(1), x)
  assert float(jnp.std(free.apply(variables, x))) > 0.01
  assert sorted(variables["params"]["norm_1"]) == ["bias", "scale"]   # still tunable norms
