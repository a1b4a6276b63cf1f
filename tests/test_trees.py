"""Tests for jaxnorm.trees: byte-for-byte comparison of pytrees, and their element counts."""

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


def test_size_counts_the_elements_of_arrays_and_shape_structs():
  import jax  # pylint: disable=g-import-not-at-top
  tree = {"a": np.zeros((2, 3)), "b": [jnp.ones(4), jax.ShapeDtypeStruct((5, 0), jnp.float32)],
          "c": np.float32(1.0)}
  assert trees.size(tree) == 6 + 4 + 0 + 1
  assert trees.size({}) == 0
