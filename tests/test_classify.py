"""Tests for jaxnorm.classify: what each mode trains, and that nothing else moves."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import classify
from jaxnorm import data
from jaxnorm import engine
from jaxnorm import selection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = classify.ClassifySpec(model="mlp", depth=1, width=16, steps=40, chunk_steps=20,
                             batch_size=32, learning_rate=1e-2)


@pytest.fixture(scope="module")
def split():
  return data.digits()


def _trainable_paths(spec, split):
  state = engine.init_states(spec.network(), classify.task(spec, split), [0], trainable=spec.mode)
  return set(state.trainable)


def test_leaf_masks_per_mode(split):
  norms = {("norm_0", "scale"), ("norm_0", "bias"), ("norm_1", "scale"), ("norm_1", "bias")}
  out = {("dense_1", "kernel")}
  expected = {"norm": norms, "output": out, "norm_output": norms | out,
              "full": norms | out | {("dense_0", "kernel")},
              "random_subset": out | {("dense_0", "kernel")}}
  for mode, paths in expected.items():
    got = _trainable_paths(dataclasses.replace(TINY, mode=mode), split)
    assert got == paths, mode


def test_random_subset_selects_as_many_nonzero_weights_as_norm_params():
  params = jaxnorm.NormMLP((64, 16, 10), keep_prob=0.5).init(
      jax.random.key(0), jnp.zeros((1, 64)))["params"]
  weights = {("dense_0", "kernel"): params["dense_0"]["kernel"],
             ("dense_1", "kernel"): params["dense_1"]["kernel"]}
  n = selection.count_norm_entries(params)
  assert n == 2 * (16 + 10)
  masks = selection.random_subset_masks(jax.random.key(1), weights, n)
  assert sum(int(m.sum()) for m in masks.values()) == n
  assert all(np.all(np.asarray(weights[p])[np.asarray(m)] != 0) for p, m in masks.items())
  other = selection.random_subset_masks(jax.random.key(2), weights, n)
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
    (dict(mode="weights"), "weights"), (dict(model="transformer"), "transformer"),
    (dict(model="resnet", depth=9), r"6n \+ 2"), (dict(model="resnet", depth=6 * 40 + 2), "32"),
    (dict(input_shape=(63,), model="vgg"), "not images"),
    (dict(n_classes=5), "and 5 classes, the data has"),
    (dict(width=0), "width"), (dict(keep_prob=0.0), "0.0"), (dict(steps=-1), "steps")])
def test_bad_spec(split, change, needle):
  with pytest.raises(jaxnorm.ConfigError, match=needle):
    classify.train(dataclasses.replace(TINY, **change), [0], split)


SHARDED = """
import json
import numpy as np
from jaxnorm import classify, data
spec = classify.ClassifySpec(model="mlp", depth=1, width=8, steps=4, chunk_steps=2, batch_size=8)
split = data.digits()
four = classify.train(spec, range(5), split, devices=4)
one = classify.train(spec, range(5), split, devices=1)
print(json.dumps({"devices": [four.devices, one.devices],
                  "per_device": [list(four.seeds_per_device), list(one.seeds_per_device)],
                  "acc": [four.test_acc.tolist(), one.test_acc.tolist()],
                  "train_acc": [four.train_acc.tolist(), one.train_acc.tolist()],
                  "curve": [four.loss_curve.tolist(), one.loss_curve.tolist()],
                  "frozen": [four.frozen_unchanged, one.frozen_unchanged]}))
"""


def test_seeds_spread_over_four_devices_match_one_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == [4, 1]
  assert out["per_device"] == [[2, 2, 2, 2], [5]]   # 5 seeds padded to 8, padding dropped
  four, one = (np.asarray(a) for a in out["acc"])
  assert four.shape == (5,)
  np.testing.assert_allclose(four, one, atol=1e-5)
  np.testing.assert_allclose(*out["train_acc"], atol=1e-5)
  np.testing.assert_allclose(*out["curve"], rtol=1e-5)
  assert out["frozen"] == [True, True]


class _Slot:
  """An in-memory `engine.Checkpoint`: keeps what `save` got, returns it from `restore`."""

  def __init__(self, stop_after=None):
    self.saved, self.stop_after = None, stop_after

  def restore(self, like_state, like_curve):
    del like_state, like_curve
    return self.saved

  def save(self, chunks_done, n_chunks, state, curve):
    assert 0 < chunks_done <= n_chunks
    self.saved = (chunks_done, jax.tree.map(jnp.copy, state), np.array(curve))  # state is donated
    if chunks_done == self.stop_after:
      raise KeyboardInterrupt


def test_train_resumes_from_its_checkpoint_bit_identically(split):
  whole = classify.train(TINY, [0, 1], split)   # two chunks of 20 steps
  slot = _Slot(stop_after=1)
  with pytest.raises(KeyboardInterrupt):
    classify.train(TINY, [0, 1], split, checkpoint=slot)
  assert slot.saved[0] == 1 and np.isnan(slot.saved[2][1]).all()
  resumed = classify.train(TINY, [0, 1], split, checkpoint=slot)
  assert slot.saved[0] == 2
  for a, b in [(whole.test_acc, resumed.test_acc), (whole.train_acc, resumed.train_acc),
               (whole.loss_curve, resumed.loss_curve)]:
    assert a.tobytes() == b.tobytes()
  assert resumed.frozen_unchanged


def test_validation_is_carved_from_train_and_the_test_set_is_still_measured(split):
  held = classify.train(TINY, [0, 1], split, validation=0.2)
  plain = classify.train(TINY, [0, 1], split)
  assert np.isnan(plain.val_acc).all() and np.isfinite(held.val_acc).all()
  # The networks saw 80% of the training set: other numbers, the same test set.
  assert held.test_acc.shape == (2,) and not np.array_equal(held.test_acc, plain.test_acc)
  assert (held.test_acc * len(split.y_test)).round(6).tolist() == (
      held.test_acc * len(split.y_test)).round().tolist()   # whole test examples



def test_augmentation_changes_the_training_batches_only(split):
  augmented = dataclasses.replace(TINY, crop_pad=1, flip=True)
  task = classify.task(augmented, split)
  assert task.augment == data.CropFlip(1, True, (8, 8, 1))   # the MLP's flat digits as 8x8
  plain = classify.train(TINY, [0], split)
  moved = classify.train(augmented, [0], split)
  assert moved.frozen_unchanged and not np.array_equal(moved.loss_curve, plain.loss_curve)
  with pytest.raises(jaxnorm.ConfigError, match="not images"):
    classify.train(dataclasses.replace(augmented, input_shape=(63,)), [0], split)
