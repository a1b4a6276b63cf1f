"""Tests for jaxnorm.export: reconstructions written into NormMLP / BatchNorm variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import construct
from jaxnorm import export


def _setup(norm, dtype):
  target_widths = (3, 4, 2)
  widths = (3, 12, 4, 8, 2)  # m_i = d_i * d_{i-1}: the narrowest exact width
  model = jaxnorm.NormMLP(widths, norm)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 3)))
  frozen = [w.astype(dtype) for w in export.frozen_weights(variables["params"])]
  target = [(w.astype(dtype), b.astype(dtype))
            for w, b in jaxnorm.init_target(jax.random.key(1), target_widths)]
  x = jaxnorm.sample_inputs(jax.random.key(2), 200, 3, radius=1.0).astype(dtype)
  return model, variables, frozen, target, x


def test_frozen_weights_are_math_layout():
  params = jaxnorm.NormMLP((3, 5, 2)).init(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  ws = export.frozen_weights(params)
  assert [w.shape for w in ws] == [(5, 3), (2, 5)]
  np.testing.assert_array_equal(ws[0], params["dense_0"]["kernel"].T)


def test_affine_export_reproduces_target_in_norm_mlp(enable_x64):
  model, _, frozen, target, x = _setup("affine", jnp.float64)
  rec = construct.reconstruct(target, frozen, radius=1.0, solver="lstsq")
  variables = export.norm_mlp_variables(rec.gammas, rec.betas, frozen)
  out = model.apply(variables, x)
  want = jaxnorm.apply_target(target, x)
  assert out.dtype == jnp.float64
  assert float(jnp.max(jnp.abs(out - want)) / jnp.max(jnp.abs(want))) <= 1e-9


def test_batchnorm_export_reproduces_target_in_plain_flax_batchnorm(enable_x64):
  model, variables, frozen, target, x = _setup("batchnorm", jnp.float64)
  rec = construct.reconstruct(target, frozen, radius=1.0, solver="lstsq")
  # Non-trivial running statistics, as a trained BatchNorm network would have.
  rng = np.random.default_rng(0)
  stats = {k: {"mean": jnp.asarray(rng.normal(size=v["mean"].shape)),
               "var": jnp.asarray(rng.uniform(0.5, 2.0, size=v["var"].shape))}
           for k, v in variables["batch_stats"].items()}
  exported = export.norm_mlp_variables(rec.gammas, rec.betas, frozen, norm="batchnorm",
                                       batch_stats=stats)
  np.testing.assert_array_equal(exported["batch_stats"]["norm_0"]["mean"], stats["norm_0"]["mean"])
  out = model.apply(exported, x, train=False)  # ordinary nn.BatchNorm, inference mode
  want = jaxnorm.apply_target(target, x)
  assert float(jnp.max(jnp.abs(out - want)) / jnp.max(jnp.abs(want))) <= 1e-9


def test_export_rejects_mismatched_shapes():
  w = [jnp.ones((4, 3)), jnp.ones((2, 4))]
  with pytest.raises(jaxnorm.ConfigError, match="layer 1"):
    export.norm_mlp_variables([jnp.ones(4), jnp.ones(3)], [jnp.ones(4), jnp.ones(2)], w)
  with pytest.raises(jaxnorm.ConfigError, match="one gamma and beta per frozen layer"):
    export.norm_mlp_variables([jnp.ones(4)], [jnp.ones(4)], w)
  with pytest.raises(jaxnorm.ConfigError, match="layernorm"):
    export.norm_mlp_variables([jnp.ones(4)], [jnp.ones(4)], w[:1], norm="layernorm")
