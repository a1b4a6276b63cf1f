"""Tiny end-to-end runs of the reconstruct experiment (every study), resume, refusals, CLI."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

import jaxnorm
from jaxnorm import checkpoint
from jaxnorm import memory
from experiments.reconstruct import experiment as reconstruct
from experiments.reconstruct import rows as reconstruct_rows

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED = {"study", "d", "p", "width", "width_ratio", "rel_error", "success", "solver"}
DENSE = reconstruct.Config(study="dense", dims=(3,), ratios=(0.5, 0.9, 1.0, 2.0), seeds=2,
                           test_points=200)


def _files(path):
  return {name: (path / name).read_bytes() for name in sorted(os.listdir(path))
          if (path / name).is_file()}


def _run(tmp_path, config, control=checkpoint.Control()):
  results = reconstruct.run(config, str(tmp_path), control)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert {k: v for k, v in results.items() if k != "timings"} == on_disk
  assert all(REQUIRED <= set(r) and "seconds" not in r for r in on_disk["rows"])
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert results["timings"] == timings
  assert all(timings[str(i)]["seconds"] >= 0 for i in range(len(on_disk["rows"])))
  assert (tmp_path / "results.csv").exists()
  assert (tmp_path / f"{config.study}.png").stat().st_size > 1000
  return results["rows"]


def _stop_and_resume(config, path, stops):
  """Runs `config` in `path`, preempted after each count of `stops` chunks, then to the end."""
  for stop in stops:
    with pytest.raises(checkpoint.Preempted):
      reconstruct.run(config, str(path), checkpoint.Control(stop_after_chunks=stop))
    assert not (path / "results.json").exists()
  return reconstruct.run(config, str(path))


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
  """A workdir holding a complete, uninterrupted dense study of `DENSE`."""
  path = tmp_path_factory.mktemp("dense")
  return path, _run(path, DENSE)


def test_dense_study_shows_the_transition_at_ratio_one(dense_run):
  _, rows = dense_run
  success = {r["width_ratio"]: r["success"] for r in rows}
  assert [r["width"] for r in rows] == [4, 8, 9, 18]
  assert success[0.444444] == 0 and success[0.888889] == 0
  assert success[1.0] == 1 and success[2.0] == 1
  assert rows[2]["rel_error"] < 1e-9


def test_dense_stopped_and_resumed_writes_the_same_bytes(dense_run, tmp_path):
  path, _ = dense_run
  _stop_and_resume(DENSE, tmp_path, stops=(1, 2))   # a row is a chunk: rows 1, 2-3, then 4
  for name in ("results.json", "results.csv"):
    assert (tmp_path / name).read_bytes() == (path / name).read_bytes(), name


def test_complete_workdir_is_reported_not_recomputed(dense_run, monkeypatch):
  path, rows = dense_run
  before = _files(path)

  def forbidden(*args, **kwargs):
    raise AssertionError("a complete run was recomputed")
  monkeypatch.setattr(reconstruct_rows, "dense", forbidden)
  again = reconstruct.run(DENSE, str(path))
  assert again["already_complete"] is True and again["rows"] == rows
  assert "seconds" in reconstruct.table(again["rows"], again["timings"])
  assert _files(path) == before


def test_workdir_with_another_config_is_refused_untouched(dense_run):
  path, _ = dense_run
  before = _files(path)
  with pytest.raises(jaxnorm.ConfigError, match="another config.*seeds: 2 -> 3"):
    reconstruct.run(dataclasses.replace(DENSE, seeds=3), str(path))
  assert _files(path) == before


def test_overwrite_starts_afresh(tmp_path):
  config = dataclasses.replace(DENSE, ratios=(1.0,))
  reconstruct.run(dataclasses.replace(config, seeds=1), str(tmp_path))
  rows = reconstruct.run(config, str(tmp_path), checkpoint.Control(overwrite=True))["rows"]
  assert rows[0]["seeds"] == 2
  assert json.loads((tmp_path / "config.json").read_text())["seeds"] == 2


def test_sparse_study_finds_a_threshold_at_or_above_d_squared(tmp_path):
  rows = _run(tmp_path, reconstruct.Config(study="sparse", dims=(3,), keep_probs=(1.0, 0.5),
                                           seeds=2, test_points=200))
  assert [r["p"] for r in rows] == [1.0, 0.5]
  assert rows[0]["width"] == 9  # dense: exactly d^2
  for r in rows:
    assert r["success"] == 1 and r["width"] >= 9 and r["rel_error"] < 1e-6
    assert r["coverage_estimate"] == pytest.approx(
        reconstruct_rows.coverage_estimate(3, 3, r["p"]), abs=0.01)
    assert r["nnz_over_target_params"] > 0


def test_scale_study_runs_cg_and_lstsq(tmp_path):
  rows = _run(tmp_path, reconstruct.Config(study="scale", dims=(4,), test_points=100))
  assert [r["solver"] for r in rows] == ["cg", "lstsq"]
  assert rows[0]["residual"] <= 1e-4 and rows[0]["success"] == 1
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert timings["matmul_peak_gflops"] > 0 and timings["0"]["gflops"] > 0
  timed = reconstruct.with_timings(rows, timings)
  assert timed[1]["cg_speedup"] > 0 and "gflops" not in rows[0]
  assert "cg_speedup" in reconstruct.table(rows, timings)


def test_conv_study_shows_the_transition_and_rebuilds_the_trained_cnn(tmp_path):
  rows = _run(tmp_path, reconstruct.Config(study="conv", dims=(1,), ratios=(0.9, 1.0), seeds=1,
                                           train_steps=30, conv_scale_channels=4))
  phase, trained, scale = rows[:2], rows[2:4], rows[4]
  assert scale["part"] == "scale" and scale["width"] == 2 * 9 * 16 and scale["success"] == 1
  timings = json.loads((tmp_path / "timings.json").read_text())
  assert timings["4"]["gflops"] > 0 and timings["matmul_peak_gflops"] > 0
  assert [r["success"] for r in phase] == [0.0, 1.0] and phase[1]["width"] == 18   # 3*3*1*2
  assert [r["dtype"] for r in trained] == ["float64", "float32"]
  for r in trained:
    assert r["study"] == "conv" and r["identical_predictions"] == 1.0
    assert r["rebuilt_accuracy"] == r["target_accuracy"] > 0.5
    assert r["frozen_params"] > r["target_params"] > 0 and r["tuned_params"] > 0
  assert trained[0]["rel_error"] <= 1e-9 and trained[1]["rel_error"] <= 1e-3


def test_gap_study_compares_construction_and_adam_and_resumes_inside_a_fit(tmp_path):
  config = reconstruct.Config(study="gap", dims=(2,), ratios=(1.0,), seeds=2, steps=20,
                              test_points=100)
  rows = _run(tmp_path / "whole", config)
  methods = {r["method"]: r["rel_mse"] for r in rows}
  assert set(methods) == {"adam from standard init", "adam from construct init", "construction"}
  assert methods["construction"] < 1e-6 < methods["adam from standard init"]
  assert json.loads((tmp_path / "whole" / "results.json").read_text())["devices"] >= 1
  # chunk 1: the first fit; chunk 2: the second fit's one chunk (after its saved start).
  _stop_and_resume(config, tmp_path / "resumed", stops=(2,))
  for name in ("results.json", "results.csv"):
    assert (tmp_path / "resumed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


@pytest.mark.parametrize("kw,needle", [
    (dict(study="exact"), "exact"),
    (dict(study="dense", dims=(0,)), "0"),
    (dict(study="sparse", keep_probs=(2.0,)), "2.0"),
    (dict(study="sparse", keep_probs=()), "keep_probs"),
    (dict(study="gap", dims=(4, 8)), "one d"),
    (dict(study="gap", steps=0), "steps"),
    (dict(study="dense", seed=-1), "seed"),
    (dict(study="dense", devices=99), "asked for 99 devices"),
    (dict(study="dense", dims=(200,), ratios=(1.0,)),
     r"1\.6e\+09 entries \(about .* GiB\) > 2e\+08"),
    (dict(study="scale", dims=(10 ** 4,)), "needs about"),
    (dict(study="dense", seeds=10 ** 9), "seeds is 1000000000, more than 10000"),
    (dict(study="dense", ratios=tuple(range(1, 100))), "the number of ratios is 99"),
])
def test_bad_config_is_refused_before_compute(tmp_path, kw, needle):
  (tmp_path / "results.json").write_text("earlier")
  with pytest.raises(jaxnorm.ConfigError, match=needle):
    reconstruct.run(reconstruct.Config(**kw), str(tmp_path))
  assert _files(tmp_path) == {"results.json": b"earlier"}


def test_memory_estimate_is_checked(monkeypatch, tmp_path):
  monkeypatch.setattr(memory, "available_bytes", lambda: (1 << 10, 1))
  with pytest.raises(jaxnorm.ConfigError, match="the dense study needs about .* KiB"):
    reconstruct.run(DENSE, str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "a_file").write_text("keep me")
  for where, needle in (("a_file", "not a directory"), ("a_file/sub", "not writable")):
    with pytest.raises(jaxnorm.ConfigError, match=needle):
      reconstruct.run(DENSE, str(tmp_path / where))
  assert (tmp_path / "a_file").read_text() == "keep me"


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.reconstruct", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flags,line", [
    (["--study=nope"], "error: unknown study 'nope'; expected one of dense, sparse, scale, gap"),
    (["--dims=3,x"], "error: --dims must be an integer, got 'x'"),
    (["--study=scale", "--dims=10000"], "error: the scale study needs about"),
])
def test_cli_bad_input_is_one_line_and_leaves_workdir_alone(tmp_path, flags, line):
  (tmp_path / "results.json").write_text('{"earlier": "run"}\n')
  proc = _cli(f"--workdir={tmp_path}", *flags)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith(line), proc.stderr
  assert "Traceback" not in proc.stderr
  assert _files(tmp_path) == {"results.json": b'{"earlier": "run"}\n'}


def test_cli_stop_after_chunks_exits_3_then_resumes(tmp_path):
  flags = (f"--workdir={tmp_path}", "--study=dense", "--dims=2", "--ratios=1,2", "--seeds=1",
           "--test_points=50")
  proc = _cli(*flags, "--stop_after_chunks=1")
  assert proc.returncode == 3 and "preempted" in proc.stderr, proc.stderr
  assert not (tmp_path / "results.json").exists()
  proc = _cli(*flags)
  assert proc.returncode == 0, proc.stderr
  assert "rel_error" in proc.stdout
  assert len(json.loads((tmp_path / "results.json").read_text())["rows"]) == 2
