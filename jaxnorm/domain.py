"""Input domains: where the frozen network is asked to match its target."""

from __future__ import annotations

import jax
import jax.numpy as jnp

INPUT_DISTRIBUTIONS = ("ball", "gaussian")


def sample_inputs(key: jax.Array, n: int, dim: int, radius: float = 1.0,
                  distribution: str = "ball", dtype=jnp.float32) -> jax.Array:
  """Draws `n` inputs of dimension `dim`.

  Args:
    key: a `jax.random.key`.
    n: number of points.
    dim: input dimension.
    radius: `"ball"`: uniform in the ball `||x|| <= radius`; `"gaussian"`:
      `N(0, radius**2 / dim * I)`, so that `E||x||**2 = radius**2`.
    distribution: `"ball"` or `"gaussian"`.
    dtype: floating dtype of the result.

  Returns:
    An array `[n, dim]`.
  """
  k_dir, k_rad = jax.random.split(key)
  g = jax.random.normal(k_dir, (n, dim), dtype)
  if distribution == "gaussian":
    return g * (radius / jnp.sqrt(dim))
  if distribution == "ball":
    u = jax.random.uniform(k_rad, (n, 1), dtype)
    direction = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    return direction * (radius * u ** (1.0 / dim))
  raise ValueError(f"unknown input distribution {distribution!r}; "
                   f"expected one of {INPUT_DISTRIBUTIONS}")
