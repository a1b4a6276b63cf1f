"""Tests for jaxnorm.selection: what `trainable=` selects, output layers, random subsets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax import traverse_util

import jaxnorm
from jaxnorm import selection


class Reordered(nn.Module):
  """Defines `head` first but calls it last: the output layer is found by tracing the call."""

  def setup(self):
    self.head = nn.Dense(3)
    self.body = nn.Dense(5)
    self.norm = nn.LayerNorm()

  def __call__(self, x):
    return self.head(self.norm(self.body(x)))


def test_linen_output_layer_is_the_last_called():
  assert selection.linen_output_path(Reordered(), jnp.zeros((1, 2)), False) == ("head",)


def test_nnx_output_layer_is_the_last_defined_kernel_owner():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(2, 4, rngs=rngs)
      self.norms = nnx.List([nnx.LayerNorm(4, rngs=rngs)])
      self.z_out = nnx.Linear(4, 1, rngs=rngs)
  assert selection.nnx_output_path(Net(nnx.Rngs(0))) == ("z_out",)


def test_masks_per_kind():
  params = Reordered().init(jax.random.key(0), jnp.zeros((1, 2)))["params"]
  paths = lambda kind: {p for p, v in traverse_util.flatten_dict(
      selection.trainable_mask(kind, params, ("head",))).items() if v}
  norms = {("norm", "scale"), ("norm", "bias")}
  head = {("head", "kernel"), ("head", "bias")}
  assert paths("norm") == norms and paths("output") == head
  assert paths("norm_output") == norms | head
  assert paths("random_subset") == head | {("body", "kernel"), ("body", "bias")}
  assert paths("full") == set(traverse_util.flatten_dict(params))
  assert selection.count_norm_entries(params) == 10


def test_random_subset_masks_pick_exactly_n_nonzero_entries():
  weights = {("a",): jnp.array([0.0, 1.0, 2.0, 0.0]), ("b",): jnp.array([[3.0, 0.0], [4.0, 5.0]])}
  masks = selection.random_subset_masks(jax.random.key(0), weights, 3)
  assert sum(int(m.sum()) for m in masks.values()) == 3
  assert all(np.all(np.asarray(weights[p])[np.asarray(m)] != 0) for p, m in masks.items())


def test_a_selection_of_nothing_or_a_bad_tree_is_refused():
  params = {"dense": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(jaxnorm.ConfigError, match="no normalization"):
    selection.trainable_mask("norm", params, None)
  with pytest.raises(jaxnorm.ConfigError, match="structure of params"):
    selection.trainable_mask(lambda p: {"x": True}, params, None)
