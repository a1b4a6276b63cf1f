"""Tests for jaxnorm.starts: where an affine NormMLP's norms begin."""

import jax
import jax.numpy as jnp
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
  # ... and the network's, measured; both carried into the result
  assert any("constructed network: 2/2 seeds exact" in r.getMessage() for r in caplog.records)
  report = result.start_report["construction"]
  assert report["exact_seeds"] == 2 and report["network_tol"] == 1e-4
  assert all(e <= 1e-4 for e in report["network_error"]) and len(report["network_error"]) == 2
  assert [b["exact_seeds"] for b in report["blocks"]] == [2, 2]
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
    (jaxnorm.Construct(), NET, jaxnorm.Regression(jaxnorm.RandomMLP((2, 4, 2))),
     r"in the network's narrow widths \[2, 3, 2\]; the target has widths \[2, 4, 2\]"),
])
def test_starts_refuse_what_they_cannot_start(start, model, task, message):
  with pytest.raises(jaxnorm.ConfigError, match=message):
    engine.init_states(model, task, [0], start=start)


def test_distill_fits_a_black_box_through_students_made_once_for_several_widths(caplog):
  # The target is a plain function (hidden width 3, never told); the network's narrow width 6
  # (the widest its blocks of width 12 hold exactly) shapes the student.
  from jaxnorm import starts  # pylint: disable=g-import-not-at-top
  w1 = np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], np.float32)
  w2 = np.array([[0.6, -1.0, 0.4], [-0.2, 0.5, 0.9]], np.float32)
  task = jaxnorm.Regression(lambda x: jnp.maximum(x @ w1.T + 0.1, 0) @ w2.T, in_dim=2,
                            eval_size=512, fit_size=256)
  assert jaxnorm.widest_student(2, 2, (12, 12)) == (6,)
  method = jaxnorm.Distill(restarts=4, student_steps=30)
  fit = lambda m, seed=0: jaxnorm.fit(jaxnorm.NormMLP((2, m, 6, m, 2)), task, 2, optimizer=method,
                                      steps=2, seed=seed)
  starts._STUDENTS.clear()
  with caplog.at_level("INFO"):
    narrow = fit(12)
  assert narrow.start_report["students"]["widths"] == [2, 6, 2]
  assert narrow.start_report["construction"]["exact_seeds"] == 2
  assert (narrow.rel_mse <= 1e-4).all(), narrow.rel_mse
  assert any("distill: students [2, 6, 2] of 2 seeds" in r.getMessage() and "(2/2 exact)" in
             r.getMessage() for r in caplog.records)
  # The students depend on the seeds' data, not on the frozen network: made once for both widths.
  wide = fit(24)
  assert len(starts._STUDENTS) == 1                       # the second fit reused the students
  starts._STUDENTS.clear()
  again = fit(24)                                         # made afresh: the same bits
  np.testing.assert_array_equal(again.rel_mse, wide.rel_mse)
  for k, v in again.params.items():
    for name in v:
      np.testing.assert_array_equal(v[name], wide.params[k][name])


def test_extract_reads_a_depth_3_black_box_from_queries_without_fitting_students(caplog):
  from jaxnorm import starts  # pylint: disable=g-import-not-at-top
  target = jaxnorm.init_target(jax.random.key(3), (3, 6, 6, 2))   # hidden widths never told
  task = jaxnorm.Regression(lambda x: jaxnorm.apply_target(target, x), in_dim=3, eval_size=512,
                            fit_size=256)
  net = jaxnorm.NormMLP((3, 48, 8, 128, 8, 32, 2))   # the narrow widths 8, 8 hold what is read
  starts._STUDENTS.clear()
  with caplog.at_level("INFO"):
    result = jaxnorm.fit(net, task, 2, optimizer=jaxnorm.Extract(), steps=1)
  notes = result.start_report["students"]
  assert notes["source"] == ["queries", "queries"] and min(notes["queries"]) > 100_000
  assert all(w[1] == 6 for w in notes["read_widths"])           # the first layer's 6 hyperplanes
  assert not starts._STUDENTS                                    # no student was fitted
  assert result.start_report["construction"]["exact_seeds"] == 2
  assert (result.rel_mse <= 1e-8).all(), result.rel_mse
  assert any("extract: 2/2 seeds read from queries" in r.getMessage() for r in caplog.records)


def test_each_seed_keeps_the_read_mlp_only_where_it_fits_at_least_as_well_as_the_student():
  from jaxnorm import starts  # pylint: disable=g-import-not-at-top
  student = [(np.zeros((3, 2, 4)), np.zeros((3, 2))), (np.zeros((3, 1, 2)), np.zeros((3, 1)))]
  mlp = lambda v: [(np.full((2, 4), v), np.full(2, v)), (np.full((1, 2), v), np.full(1, v))]
  read = {"layers": [mlp(1.0), None, mlp(3.0)], "loss": np.array([1e-9, np.inf, 1e-2]),
          "source": ["queries", "student", "queries"]}
  layers, loss = starts._choose(read, student, np.array([1e-3, 1e-3, 1e-3]), 3)
  assert read["source"] == ["queries", "student", "student"]   # seed 2's student fits better
  np.testing.assert_array_equal(loss, [1e-9, 1e-3, 1e-3])
  np.testing.assert_array_equal(np.asarray(layers[0][0])[:, 0, 0], [1.0, 0.0, 0.0])
