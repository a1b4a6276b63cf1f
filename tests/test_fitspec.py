"""Tests for jaxnorm.fitspec: `fit_seeds` on a `FitSpec`, many seeds in one program, frozen kept."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import jaxnorm
from jaxnorm import engine
from jaxnorm import programs as programs_lib
from jaxnorm import fitspec
from jaxnorm import sharding
from jaxnorm.trees import bit_identical

TINY = jaxnorm.FitSpec(target_widths=(3, 4, 2), hidden_widths=(12, 8), steps=40, chunk_steps=20,
                       batch_size=32, eval_size=256, learning_rate=1e-2)
# One tiny spec per fitting method (each compiles once; tests share them).
METHODS = {
    "adam": TINY,
    "lbfgs": dataclasses.replace(TINY, optimizer="lbfgs", steps=30, chunk_steps=15, fit_size=64),
    "lm": dataclasses.replace(TINY, optimizer="lm", steps=8, chunk_steps=4, fit_size=64,
                              init="linear"),
    "distill": dataclasses.replace(TINY, optimizer="distill", steps=2, chunk_steps=2,
                                   fit_size=64, restarts=4, student_steps=20),
}
SEEDS = [0, 1, 2]


def _programs(spec):
  """The engine's programs for `spec` (the ones `fit_seeds` uses on one device)."""
  model, task, method, _ = fitspec.problem(spec)
  sample = task.sample()
  return programs_lib.cache(programs_lib.Plan(
      model, (sample.shape, sample.dtype), task, method, "norm", spec.batch_size, spec.seed,
      "vmap", sharding.seed_mesh(1), None)), task


def _initial_state(spec, seed_ids, start=None):
  model, task, method, _ = fitspec.problem(spec)
  return engine.init_states(model, task, seed_ids, optimizer=method, seed=spec.seed, start=start)


def _initial_params(spec, seed_ids):
  state = _initial_state(spec, seed_ids)
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
  state = _initial_state(TINY, [0])
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
  assert reports[-1].eta_seconds == 0 and all(r.eta_seconds > 0 for r in reports[:-1])
  assert result.trainable_params == 2 * (12 + 4 + 8 + 2)


@functools.lru_cache(maxsize=None)
def _method_fit(name):
  return jaxnorm.fit_seeds(METHODS[name], SEEDS)


@functools.lru_cache(maxsize=None)
def _initial_loss(name):
  """Held-out relative MSE of the standard starting norms (scale 1, shift 0)."""
  spec = dataclasses.replace(METHODS[name], init="standard")
  programs, task = _programs(spec)
  state = programs.init(task.consts(), np.asarray(SEEDS, np.int32))
  return np.asarray(programs.eval(task.consts(), state)["rel_mse"])


@pytest.mark.parametrize("name", ["lbfgs", "lm", "distill"])
def test_each_method_lowers_the_loss_and_keeps_frozen_leaves(name):
  spec = METHODS[name]
  before = _initial_params(spec, SEEDS)
  result = _method_fit(name)
  assert result.frozen_unchanged
  assert bit_identical(_norm_split(result.params)[1], _norm_split(before)[1])
  assert not result.diverged.any()
  assert spec.evals == spec.fit_size
  assert np.isfinite(result.loss_curve).all() and np.isfinite(result.rel_mse).all()
  assert (result.rel_mse < 0.5 * _initial_loss(name)).all(), (result.rel_mse, _initial_loss(name))
  assert np.median(result.rel_mse) < 0.3 * np.median(_initial_loss(name))


def test_evals_count_target_evaluations():
  assert METHODS["adam"].evals == 32 * 40
  assert dataclasses.replace(TINY, optimizer="lm", fit_size=100).evals == 100


def test_default_steps_depend_on_the_optimizer():
  spec = jaxnorm.FitSpec(target_widths=(3, 4, 2), hidden_widths=(12, 8), optimizer="lm")
  assert (spec.steps, spec.chunk_steps) == (fitspec.DEFAULT_STEPS["lm"],
                                            fitspec.DEFAULT_CHUNK_STEPS["lm"])
  assert jaxnorm.FitSpec(target_widths=(3, 4, 2), hidden_widths=(12, 8)).steps == 2000


@pytest.fixture
def poisoned_seed_1(monkeypatch):
  """Seed 1's target outputs NaN (its held-out variance stays finite); other seeds untouched."""
  real = programs_lib.Programs.init_seed

  def init_seed(self, consts, seed_id):
    state = real(self, consts, seed_id)
    bad = seed_id == 1
    task = dict(state.task)
    w, b = task["target"][-1]
    task["target"] = list(task["target"][:-1]) + [(w, jnp.where(bad, jnp.nan, b))]
    if "fit_y" in task:
      task["fit_y"] = jnp.where(bad, jnp.nan, task["fit_y"])
    return state._replace(task=task)

  with programs_lib.cache.isolated():
    monkeypatch.setattr(programs_lib.Programs, "init_seed", init_seed)
    yield


def _starting_norms(spec, seed_ids):
  start = fitspec.problem(spec)[3]
  return jax.tree.map(np.asarray, _initial_state(spec, seed_ids, start).trainable)


@pytest.fixture
def clean(name):
  """The method's fit before any poisoning (`_method_fit` caches it for the other tests too)."""
  return _method_fit(name)


@pytest.mark.parametrize("name", list(METHODS))
def test_a_nan_seed_is_marked_diverged_and_the_others_carry_on(clean, poisoned_seed_1, name):
  # `clean` before `poisoned_seed_1` (pytest sets them up in this order): computed inside the
  # poisoning, the cached "clean" fit had seed 1's NaNs, and the tests using it later failed.
  result = jaxnorm.fit_seeds(METHODS[name], SEEDS)
  assert result.diverged.tolist() == [False, True, False]
  assert result.frozen_unchanged
  assert np.isnan(result.loss_curve[1]).all()
  for s in (0, 2):
    np.testing.assert_allclose(result.rel_mse[s], clean.rel_mse[s], rtol=1e-5)
    np.testing.assert_allclose(result.loss_curve[s], clean.loss_curve[s], rtol=1e-5)
  # Seed 1 diverged at its first step (distill: its student failed): it keeps the
  # norms it started from (the target does not enter them).
  start = _starting_norms(METHODS[name], SEEDS)
  norms, _ = _norm_split(result.params)
  for path, value in norms.items():
    np.testing.assert_array_equal(value[1], start[path][1])


def test_a_seed_that_blows_up_mid_run_keeps_the_last_norms_with_a_finite_loss(monkeypatch):
  clean = _method_fit("adam")   # TINY: 2 chunks of 20 steps
  programs, task = _programs(TINY)
  state = programs.init(task.consts(), np.asarray(SEEDS, np.int32))
  marker = float(state.task["var"][1])
  state, _ = programs.chunk(19)(task.consts(), state)
  after_19 = jax.tree.map(np.asarray, state.trainable)
  real = programs_lib.Programs.objective

  def objective(self, consts, state):   # seed 1's 21st step has a NaN loss
    obj = real(self, consts, state)
    bad = (state.step == 20) & (state.task["var"] == marker)

    def batch_loss(trainable):
      loss, model_state = obj.batch_loss(trainable)
      return jnp.where(bad, jnp.nan, loss), model_state
    return obj._replace(batch_loss=batch_loss)

  with programs_lib.cache.isolated():
    monkeypatch.setattr(programs_lib.Programs, "objective", objective)
    result = jaxnorm.fit_seeds(TINY, SEEDS)
    monkeypatch.undo()
  assert result.diverged.tolist() == [False, True, False]
  assert np.isfinite(result.loss_curve[1, 0]) and np.isnan(result.loss_curve[1, 1])
  norms, _ = _norm_split(result.params)
  clean_norms, _ = _norm_split(clean.params)
  for path, value in norms.items():
    # seed 1: the norms of step 19, the last whose loss was finite (step 20's loss is NaN)
    np.testing.assert_array_equal(value[1], after_19[path][1])
    for s in (0, 2):   # the others: as if nothing happened
      np.testing.assert_array_equal(value[s], clean_norms[path][s])


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
    (dict(optimizer="sgd"), "unknown optimizer 'sgd'"),
    (dict(optimizer="lm", fit_size=0), "fit_size"),
    (dict(optimizer="distill", restarts=0), "restarts"),
    (dict(optimizer="distill", student_steps=-1), "student_steps"),
    (dict(optimizer="distill", init="linear"), "init=standard"),
    (dict(optimizer="distill", norm="layernorm"), "norm=affine"),
    (dict(optimizer="extract", norm="batchnorm"), "optimizer=extract constructs affine norms"),
    (dict(init="linear", norm="batchnorm"), "init=linear needs norm=affine"),
    (dict(init="zeros"), "zeros"),
    (dict(output_norm="groupnorm"), "output norm kind"),
    (dict(optimizer="distill", output_norm="layernorm"), "output_norm=layernorm must be left out"),
    (dict(init="linear", output_norm="batchnorm"), "output_norm=batchnorm must be left out"),
]


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
  with pytest.raises(jaxnorm.ConfigError,
                     match="maps 3 inputs to 5 outputs but the network 3 to 2"):
    jaxnorm.fit_seeds(TINY, [0], target=[(w1, np.zeros(4)), (np.ones((5, 4)), np.zeros(5))])
  # other hidden widths than the network's are a black box's business; only the oracle reads them
  other = [(np.ones((7, 3)), np.zeros(7)), (np.ones((2, 7)), np.zeros(2))]
  with pytest.raises(jaxnorm.ConfigError, match=r"rebuilds the target in the network's widths "
                     r"\[3, 4, 2\]; the target has widths \[3, 7, 2\]"):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, optimizer="construct"), [0], target=other)
  with pytest.raises(jaxnorm.ConfigError, match=r"narrow widths \[5\] must be the target's \[4\]"):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, init="construct", narrow_widths=(5,)), [0])
  with pytest.raises(jaxnorm.ConfigError, match="one narrow width between each two blocks"):
    jaxnorm.fit_seeds(dataclasses.replace(TINY, narrow_widths=(5, 5)), [0])


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
