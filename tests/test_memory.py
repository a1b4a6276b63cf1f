"""Tests for jaxnorm.memory and the fit's memory estimate (checked against XLA's own analysis)."""

import jax
import numpy as np
import pytest

import jaxnorm
from jaxnorm import programs as programs_lib
from jaxnorm import fitspec
from jaxnorm import memory
from jaxnorm import sharding


def test_check_refuses_with_the_estimate():
  limit, sharing = memory.available_bytes()
  assert limit > 0 and sharing >= 1
  memory.check(1e6, "a small job")
  with pytest.raises(jaxnorm.ConfigError, match=r"a huge job needs about .* TiB of memory"):
    memory.check(1e15, "a huge job")


def test_fit_seeds_refuses_before_compute(no_compute):
  spec = jaxnorm.FitSpec(target_widths=(64, 64, 64), hidden_widths=(200_000, 200_000),
                         batch_size=4096)
  with pytest.raises(jaxnorm.ConfigError, match="this fit needs about"):
    jaxnorm.fit_seeds(spec, range(64))


@pytest.mark.parametrize("optimizer", ["adam", "lm"])
def test_estimate_bounds_xla_memory_analysis(optimizer):
  spec = jaxnorm.FitSpec(target_widths=(8, 8, 8), hidden_widths=(64, 64), batch_size=256,
                         optimizer=optimizer, fit_size=128, eval_size=512, steps=10,
                         chunk_steps=10)
  seeds = 8
  model, task, method, _ = fitspec.problem(spec)
  sample = task.sample()
  programs = programs_lib.cache(programs_lib.Plan(
      model, (sample.shape, sample.dtype), task, method, "norm", spec.batch_size, spec.seed,
      "vmap", sharding.seed_mesh(1), None))
  ids = np.arange(seeds, dtype=np.int32)
  state = jax.eval_shape(programs.init, task.consts(), ids)
  analysis = programs.chunk(10).lower(task.consts(), state).compile().memory_analysis()
  actual = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes)
  estimate = fitspec.estimate_bytes(spec, seeds)
  assert actual <= estimate <= 20 * actual, (actual, estimate)


def test_jaxpr_sizes_sum_and_largest_value_reach_into_loops():
  def f(x):   # [8, 16] float32 in; a [8, 32] value inside a scan
    def body(c, _):
      return c, jax.numpy.concatenate([c, c], axis=1)
    return jax.lax.scan(body, x, None, length=2)[1].sum()
  jaxpr = jax.make_jaxpr(f)(np.zeros((8, 16), np.float32)).jaxpr
  assert memory.jaxpr_largest_bytes(jaxpr) == 2 * 8 * 32 * 4   # the scan's stacked output
  assert memory.jaxpr_bytes(jaxpr) >= 2 * 8 * 32 * 4 + 8 * 32 * 4
