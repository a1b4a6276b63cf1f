"""Tests for jaxnorm.fit: many seeds in one program, frozen leaves untouched."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import traverse_util

import jaxnorm
from jaxnorm import fit
from tests.conftest import bit_identical

TINY = jaxnorm.FitSpec(target_widths=(3, 4, 2), hidden_widths=(12, 8), steps=40, chunk_steps=20,
                       batch_size=32, eval_size=256, learning_rate=1e-2)


def _initial_params(spec, seed_ids):
  state = fit._compiled_init(spec, "vmap", False)(np.asarray(seed_ids, np.int32))
  return jax.tree.map(np.asarray, jaxnorm.combine(state.trainable, state.frozen))


def _norm_split(params):
  flat = traverse_util.flatten_dict(params)
  norm = {p: v for p, v in flat.items() if p[0].startswith("norm_")}
  frozen = {p: v for p, v in flat.items() if not p[0].startswith("norm_")}
  return norm, frozen


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
@pytest.mark.parametrize("p", [1.0, 0.5])
def test_frozen_leaves_bit_identical_after_fit(norm, p):
  spec = dataclasses.replace(TINY, norm=norm, keep_prob=p)
  before = _initial_params(spec, [0, 1])
  result = jaxnorm.fit_seeds(spec, [0, 1])
  norm_before, frozen_before = _norm_split(before)
  norm_after, frozen_after = _norm_split(result.params)
  assert set(frozen_after) == {(f"dense_{k}", "kernel") for k in range(4)}
  assert bit_identical(frozen_after, frozen_before)
  assert result.frozen_unchanged
  for path in norm_before:  # the fit did move every norm leaf
    assert not np.array_equal(norm_after[path], norm_before[path]), path
  if p < 1:
    kernel = frozen_after[("dense_0", "kernel")]
    assert 0 < (kernel == 0).mean() < 1


def test_optimizer_state_only_for_norm_leaves():
  state = fit._compiled_init(TINY, "vmap", False)(np.asarray([0], np.int32))
  mu = state.opt_state[0].mu
  assert set(mu) == {(f"norm_{k}", n) for k in range(4) for n in ("scale", "bias")}
  assert all(p[0].startswith("dense_") for p in state.frozen)


def test_vmapped_seed_equals_single_seed_fit():
  batched = jaxnorm.fit_seeds(TINY, [0, 1, 2, 3])
  single = jaxnorm.fit_seeds(TINY, [2])
  assert single.seed_ids.tolist() == [2]
  np.testing.assert_allclose(single.rel_mse[0], batched.rel_mse[2], rtol=1e-5)
  np.testing.assert_allclose(single.loss_curve[0], batched.loss_curve[2], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(batched.params)):
    np.testing.assert_allclose(a[0], b[2], rtol=1e-5, atol=1e-6)
  # Different seeds really are different problems.
  assert not np.allclose(batched.rel_mse[0], batched.rel_mse[1])


def test_lax_map_batching_equals_vmap():
  a = jaxnorm.fit_seeds(TINY, [0, 1], batching="vmap")
  b = jaxnorm.fit_seeds(TINY, [0, 1], batching="map")
  np.testing.assert_allclose(a.rel_mse, b.rel_mse, rtol=1e-5)


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
def test_loss_decreases(norm):
  spec = dataclasses.replace(TINY, norm=norm, steps=300, chunk_steps=100)
  result = jaxnorm.fit_seeds(spec, [0, 1, 2])
  curve = np.median(result.loss_curve, axis=0)
  assert curve.shape == (3,)
  assert curve[-1] < 0.7 * curve[0], curve
  assert np.isfinite(result.rel_mse).all()
  assert np.median(result.rel_mse) < 0.7 * curve[0]


def test_fixed_target_shared_by_all_seeds():
  target = jaxnorm.init_target(jax.random.key(7), TINY.target_widths)
  result = jaxnorm.fit_seeds(TINY, [0, 1], target=target)
  for (w, b), (ws, bs) in zip(target, result.targets):
    np.testing.assert_array_equal(ws[0], w)
    np.testing.assert_array_equal(ws[1], w)
  # Seeds still draw their own frozen networks.
  k = result.params["dense_0"]["kernel"]
  assert not np.array_equal(k[0], k[1])


def test_uneven_chunks_and_progress_callback():
  spec = dataclasses.replace(TINY, steps=50, chunk_steps=20)
  reports = []
  result = jaxnorm.fit_seeds(spec, [0], on_chunk=reports.append)
  assert result.chunk_steps.tolist() == [20, 40, 50]
  assert [r.step for r in reports] == [20, 40, 50]
  assert all(r.n_chunks == 3 and r.steps_per_second > 0 for r in reports)
  assert result.trainable_params == 2 * (12 + 4 + 8 + 2)


BAD_SPECS = [
    (dict(hidden_widths=(0, 8)), "0"),
    (dict(hidden_widths=(-3, 8)), "-3"),
    (dict(target_widths=(3, 0, 2)), "0"),
    (dict(hidden_widths=(12,)), "one hidden width per target layer"),
    (dict(steps=0), "steps"),
    (dict(keep_prob=0.0), "0.0"),
    (dict(keep_prob=1.5), "1.5"),
    (dict(norm="groupnorm"), "groupnorm"),
    (dict(learning_rate=-1.0), "-1.0"),
    (dict(batch_size=0), "batch_size"),
    (dict(input_distribution="cube"), "cube"),
    (dict(schedule="linear"), "linear"),
]


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if anything gets compiled or initialised."""
  def forbidden(*args, **kwargs):
    raise AssertionError("compute started before the input was validated")
  monkeypatch.setattr(fit, "_compiled_init", forbidden)
  monkeypatch.setattr(fit, "_compiled", forbidden)


@pytest.mark.parametrize("change,message", BAD_SPECS)
def test_bad_spec_raises_before_compute(no_compute, change, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, **change), [0])


def test_zero_seeds_raise(no_compute):
  with pytest.raises(jaxnorm.ConfigError, match="at least one seed"):
    jaxnorm.fit_seeds(TINY, [])


def test_target_dims_that_do_not_chain_raise(no_compute):
  key = jax.random.key(0)
  w1, w2 = jax.random.normal(key, (4, 3)), jax.random.normal(key, (2, 5))
  with pytest.raises(jaxnorm.ConfigError, match="don't chain: layer 1 takes 5"):
    jaxnorm.fit_seeds(TINY, [0], target=[(w1, np.zeros(4)), (w2, np.zeros(2))])
  with pytest.raises(jaxnorm.ConfigError, match="target_widths"):
    jaxnorm.fit_seeds(TINY, [0], target=[(w1, np.zeros(4)), (np.ones((5, 4)), np.zeros(5))])


def test_construct_init_starts_at_the_exact_solution():
  spec = dataclasses.replace(TINY, hidden_widths=(24, 16), steps=1, chunk_steps=1,
                             learning_rate=1e-9, init="construct")
  constructed = jaxnorm.fit_seeds(spec, [0, 1])
  standard = jaxnorm.fit_seeds(dataclasses.replace(spec, init="standard"), [0, 1])
  assert (constructed.rel_mse < 1e-6).all(), constructed.rel_mse
  assert (standard.rel_mse > 1e-2).all(), standard.rel_mse
  assert constructed.frozen_unchanged


def test_construct_init_needs_affine_norms_on_a_ball(no_compute):
  with pytest.raises(jaxnorm.ConfigError, match="norm=batchnorm"):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, init="construct", norm="batchnorm"), [0])
  with pytest.raises(jaxnorm.ConfigError, match="gaussian"):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, init="construct", input_distribution="gaussian"),
                      [0])
