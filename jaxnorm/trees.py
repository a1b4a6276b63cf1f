"""Pytree comparison and counting shared by the fitting and training loops (`bit_identical`,
`size`)."""

from __future__ import annotations

import jax
import numpy as np


def bit_identical(a, b) -> bool:
  """True when `a` and `b` have the same structure and byte-identical leaves.

  Args:
    a: a pytree of arrays.
    b: another pytree of arrays.

  Returns:
    Whether every pair of leaves has the same dtype, shape and bytes
    (so `-0.0` differs from `+0.0`, and identical NaNs are equal).
  """
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    return False
  return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
             for x, y in zip(map(np.asarray, leaves_a), map(np.asarray, leaves_b)))


def size(tree) -> int:
  """The number of elements of every leaf of `tree` (arrays or shape structs).

  Args:
    tree: a pytree of arrays or `jax.ShapeDtypeStruct`s.

  Returns:
    The total element count.
  """
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
