"""Shared fixtures."""

import jax
import numpy as np
import pytest


@pytest.fixture
def enable_x64():
  """Runs a test in float64 and restores the previous setting after."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def bit_identical(a, b) -> bool:
  """True when two pytrees have the same structure and byte-identical leaves."""
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  return ta == tb and all(
      np.asarray(x).dtype == np.asarray(y).dtype and np.asarray(x).tobytes() == np.asarray(y).tobytes()
      for x, y in zip(la, lb))
