"""Tests for jaxnorm.starts: where an affine NormMLP's norms begin."""

import numpy as np
import pytest

import jaxnorm
from jaxnorm import engine

TARGET = jaxnorm.Regression(jaxnorm.RandomMLP((2, 3, 2)), eval_size=256)
NET = jaxnorm.NormMLP((2, 12, 3, 12, 2))   # m = 2 * d_in * d_out per block


def test_construct_start_is_exact_and_linear_start_keeps_scales(caplog):
  with caplog.at_level("INFO"):
    result = jaxnorm.fit(NET, TARGET, 2, steps=1, optimizer=jaxnorm.default_optimizer(1, 1e-9),
                         start=jaxnorm.Construct())
  assert (result.rel_mse < 1e-6).all(), result.rel_mse
  # The construction's own verdict per block is reported, not only the fit's error.
  lines = [r.getMessage() for r in caplog.records if "construction block" in r.getMessage()]
  assert len(lines) == 2 and all("2/2 seeds exact" in l for l in lines), lines
  plain = engine.init_states(NET, TARGET, [0, 1])
  linear = engine.init_states(NET, TARGET, [0, 1], start=jaxnorm.LinearRegime())
  for path, value in plain.trainable.items():
    if path[-1] == "scale":
      np.testing.assert_array_equal(linear.trainable[path], value)
  assert np.all(linear.trainable[("norm_0", "bias")] > 0)   # the wide units pushed positive


@pytest.mark.parametrize("start,model,task,message", [
    (jaxnorm.Construct(), jaxnorm.NormMLP((2, 12, 3, 12, 2), norm="batchnorm"), TARGET, "affine"),
    (jaxnorm.Construct(), NET, jaxnorm.Regression(jaxnorm.RandomMLP((2, 3, 2)), inputs="gaussian"),
     "ball"),
    (jaxnorm.LinearRegime(), NET, jaxnorm.Regression(
        (np.ones((10, 2), np.float32), np.ones((10, 2), np.float32))), "domain"),
])
def test_starts_refuse_what_they_cannot_start(start, model, task, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    engine.init_states(model, task, [0], start=start)


def test_distill_students_are_made_once_for_the_same_seeds_at_several_widths():
  from jaxnorm import starts  # pylint: disable=g-import-not-at-top
  method = jaxnorm.Distill(restarts=2, student_steps=5)
  task = jaxnorm.Regression(jaxnorm.RandomMLP((2, 3, 2)), eval_size=64, fit_size=32)
  fit = lambda m: jaxnorm.fit(jaxnorm.NormMLP((2, m, 3, m, 2)), task, 2, optimizer=method,
                              steps=2)
  starts._STUDENTS.clear()
  fit(12)
  wide = fit(24)
  assert len(starts._STUDENTS) == 1                       # the second fit reused the students
  starts._STUDENTS.clear()
  again = fit(24)                                         # made afresh: the same bits
  np.testing.assert_array_equal(again.rel_mse, wide.rel_mse)
  for k, v in again.params.items():
    for name in v:
      np.testing.assert_array_equal(v[name], wide.params[k][name])
  other = jaxnorm.fit(jaxnorm.NormMLP((2, 24, 3, 24, 2)), task, 2, optimizer=method, steps=2,
                      seed=1)
  assert len(starts._STUDENTS) == 2 and not np.array_equal(other.rel_mse, wide.rel_mse)
