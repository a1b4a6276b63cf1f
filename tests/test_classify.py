"""Tests for jaxnorm.classify: what each mode trains, and that nothing else moves."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import jaxnorm
from jaxnorm import classify
from jaxnorm import data

TINY = classify.ClassifySpec(model="mlp", depth=1, width=16, steps=40, chunk_steps=20,
                             batch_size=32, learning_rate=1e-2)


@pytest.fixture(scope="module")
def split():
  return data.digits()


def _trainable_paths(spec):
  params = spec.network().init(jax.random.key(0), jnp.zeros((1, 64)))["params"]
  flat = traverse_util.flatten_dict(classify.leaf_mask(params, spec))
  return {p for p, v in flat.items() if v}, params


def test_leaf_masks_per_mode():
  norms = {("norm_0", "scale"), ("norm_0", "bias"), ("norm_1", "scale"), ("norm_1", "bias")}
  out = {("dense_1", "kernel")}
  expected = {"norm": norms, "output": out, "norm_output": norms | out,
              "full": norms | out | {("dense_0", "kernel")},
              "random_subset": out | {("dense_0", "kernel")}}
  for mode, paths in expected.items():
    got, _ = _trainable_paths(dataclasses.replace(TINY, mode=mode))
    assert got == paths, mode


def test_random_subset_selects_as_many_nonzero_weights_as_norm_params():
  params = jaxnorm.NormMLP((64, 16, 10), keep_prob=0.5).init(
      jax.random.key(0), jnp.zeros((1, 64)))["params"]
  weights = {("dense_0", "kernel"): params["dense_0"]["kernel"],
             ("dense_1", "kernel"): params["dense_1"]["kernel"]}
  n = classify.count_norm_params(params)
  assert n == 2 * (16 + 10)
  masks = classify.random_subset_masks(jax.random.key(1), weights, n)
  assert sum(int(m.sum()) for m in masks.values()) == n
  assert all(np.all(np.asarray(weights[p])[np.asarray(m)] != 0) for p, m in masks.items())
  other = classify.random_subset_masks(jax.random.key(2), weights, n)
  assert any(not np.array_equal(masks[p], other[p]) for p in masks)


@pytest.mark.parametrize("mode", classify.MODES)
def test_every_mode_trains_and_keeps_frozen_bits(split, mode):
  result = classify.train(dataclasses.replace(TINY, mode=mode), [0, 1], split)
  assert result.frozen_unchanged
  assert result.test_acc.shape == (2,) and result.loss_curve.shape == (2, 2)
  assert (result.loss_curve[:, -1] < result.loss_curve[:, 0]).all()
  assert ((result.test_acc >= 0) & (result.test_acc <= 1)).all()
  if mode == "full":  # 40 steps are enough for the full network to beat chance (0.1) by far
    assert (result.test_acc > 0.5).all()
  if mode in ("norm", "random_subset"):
    assert result.trainable_params == 2 * (16 + 10)


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
def test_conv_norm_mode_for_every_norm_kind(split, norm):
  spec = classify.ClassifySpec(model="conv", depth=1, width=4, norm=norm, keep_prob=0.5,
                               steps=20, chunk_steps=20, batch_size=16, learning_rate=1e-2)
  result = classify.train(spec, [0, 1], split)
  assert result.frozen_unchanged
  assert result.trainable_params == 2 * (4 + 10)
  assert np.isfinite(result.loss_curve).all()


def test_seed_alone_equals_seed_among_others(split):
  both = classify.train(TINY, [0, 1], split)
  alone = classify.train(TINY, [1], split)
  np.testing.assert_allclose(alone.loss_curve[0], both.loss_curve[1], rtol=1e-5)
  assert alone.test_acc[0] == pytest.approx(both.test_acc[1], abs=1 / 450)


@pytest.mark.parametrize("change,needle", [
    (dict(mode="weights"), "weights"), (dict(model="resnet"), "resnet"),
    (dict(width=0), "width"), (dict(keep_prob=0.0), "0.0"), (dict(steps=-1), "steps")])
def test_bad_spec(split, change, needle):
  with pytest.raises(jaxnorm.ConfigError, match=needle):
    classify.train(dataclasses.replace(TINY, **change), [0], split)
