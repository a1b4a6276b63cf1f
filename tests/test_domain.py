"""Tests for jaxnorm.domain."""

import jax
import numpy as np
import pytest

import jaxnorm


def test_ball_samples_fill_the_ball():
  x = np.asarray(jaxnorm.sample_inputs(jax.random.key(0), 20000, 4, radius=2.0))
  norms = np.linalg.norm(x, axis=1)
  assert norms.max() <= 2.0 + 1e-6
  # Uniform in a 4-ball: P(||x|| <= r) = (r / R)^4.
  assert abs((norms <= 1.0).mean() - 1 / 16) < 0.01


def test_gaussian_samples_have_the_radius_as_rms_norm():
  x = np.asarray(jaxnorm.sample_inputs(jax.random.key(0), 20000, 8, radius=3.0,
                                       distribution="gaussian"))
  np.testing.assert_allclose(np.sqrt((x ** 2).sum(1).mean()), 3.0, rtol=0.02)


def test_unknown_distribution():
  with pytest.raises(ValueError, match="cube"):
    jaxnorm.sample_inputs(jax.random.key(0), 4, 2, distribution="cube")
