"""Tests for jaxnorm.jit: one-shot programs compute what `jax.jit` computes."""

import jax
import numpy as np

from jaxnorm import jit


def test_one_shot_jit_matches_jit():
  def init(key):
    return jax.vmap(lambda k: jax.random.normal(k, (16, 16)))(jax.random.split(key, 8))
  a = jit.one_shot_jit(init)(jax.random.key(0))
  b = jax.jit(init)(jax.random.key(0))
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_norm_mlp_init_under_one_shot_jit_matches_to_the_last_bit_or_so():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jaxnorm  # pylint: disable=g-import-not-at-top
  init = lambda k: jaxnorm.NormMLP((8, 64, 8)).init(k, jnp.zeros((1, 8)))
  keys = jax.random.split(jax.random.key(0), 4)
  a = jit.one_shot_jit(jax.vmap(init))(keys)
  b = jax.jit(jax.vmap(init))(keys)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):   # last-bit rounding at most
    np.testing.assert_allclose(x, y, rtol=2e-6, atol=1e-7)
  norms = lambda v: {k: v["params"][k] for k in v["params"] if k.startswith("norm_")}
  assert jaxnorm.trees.bit_identical(norms(a), norms(b))


def test_a_heavy_one_shot_program_rounds_as_jit_does():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jaxnorm  # pylint: disable=g-import-not-at-top
  init = lambda k: jaxnorm.NormMLP((8, 512, 8)).init(k, jnp.zeros((1, 8)))
  keys = jax.random.split(jax.random.key(0), 4)
  heavy = jit.one_shot_jit(jax.vmap(init), heavy=True)(keys)
  assert jaxnorm.trees.bit_identical(heavy, jax.jit(jax.vmap(init))(keys))
