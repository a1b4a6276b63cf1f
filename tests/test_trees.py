"""Tests for jaxnorm.trees: byte-for-byte comparison of pytrees."""

import jax.numpy as jnp
import numpy as np

from jaxnorm import trees


def test_bit_identical_compares_bytes_dtypes_shapes_and_structure():
  a = {"x": np.array([1.0, np.nan], np.float32), "y": jnp.zeros(3)}
  assert trees.bit_identical(a, {"x": a["x"].copy(), "y": np.zeros(3, np.float32)})  # NaN == NaN
  assert not trees.bit_identical(a, {"x": np.array([1.0, np.nan]), "y": a["y"]})     # float64
  assert not trees.bit_identical({"z": np.array(0.0)}, {"z": np.array(-0.0)})         # -0 != +0
  assert not trees.bit_identical(a, {"x": a["x"]})                                    # structure
  assert not trees.bit_identical({"x": np.zeros((2, 1))}, {"x": np.zeros((1, 2))})    # shape
