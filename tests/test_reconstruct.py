"""Tiny end-to-end runs of the reconstruct experiment (every study) and its CLI."""

import json
import os
import subprocess
import sys

import pytest

import jaxnorm
from jaxnorm.runs import reconstruct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = {"study", "d", "p", "width", "width_ratio", "rel_error", "success", "seconds", "solver"}


def _run(tmp_path, **kw):
  results = reconstruct.run(reconstruct.Config(**kw), str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert all(REQUIRED <= set(r) for r in on_disk["rows"])
  assert (tmp_path / "results.csv").exists()
  assert (tmp_path / f"{kw['study']}.png").stat().st_size > 1000
  return results["rows"]


def test_dense_study_shows_the_transition_at_ratio_one(tmp_path):
  rows = _run(tmp_path, study="dense", dims=(3,), ratios=(0.5, 0.9, 1.0, 2.0), seeds=2,
              test_points=200)
  success = {r["width_ratio"]: r["success"] for r in rows}
  assert [r["width"] for r in rows] == [4, 8, 9, 18]
  assert success[0.444444] == 0 and success[0.888889] == 0
  assert success[1.0] == 1 and success[2.0] == 1
  assert rows[2]["rel_error"] < 1e-9


def test_sparse_study_finds_a_threshold_at_or_above_d_squared(tmp_path):
  rows = _run(tmp_path, study="sparse", dims=(3,), keep_probs=(1.0, 0.5), seeds=2,
              test_points=200)
  assert [r["p"] for r in rows] == [1.0, 0.5]
  assert rows[0]["width"] == 9  # dense: exactly d^2
  for r in rows:
    assert r["success"] == 1 and r["width"] >= 9 and r["rel_error"] < 1e-6
    assert r["coverage_estimate"] == pytest.approx(reconstruct.coverage_estimate(3, 3, r["p"]),
                                                   abs=0.01)
    assert r["nnz_over_target_params"] > 0


def test_scale_study_runs_cg_and_lstsq(tmp_path):
  rows = _run(tmp_path, study="scale", dims=(4,), test_points=100)
  assert [r["solver"] for r in rows] == ["cg", "lstsq"]
  assert rows[0]["residual"] <= 1e-4 and rows[0]["success"] == 1
  assert rows[0]["matmul_peak_gflops"] > 0 and rows[1]["cg_speedup"] > 0


def test_gap_study_compares_construction_and_adam(tmp_path):
  rows = _run(tmp_path, study="gap", dims=(2,), ratios=(1.0,), seeds=2, steps=20,
              test_points=100)
  methods = {r["method"]: r["rel_mse"] for r in rows}
  assert set(methods) == {"adam from standard init", "adam from construct init", "construction"}
  assert methods["construction"] < 1e-6 < methods["adam from standard init"]


@pytest.mark.parametrize("kw,needle", [
    (dict(study="exact"), "exact"),
    (dict(study="dense", dims=(0,)), "0"),
    (dict(study="sparse", keep_probs=(2.0,)), "2.0"),
    (dict(study="gap", dims=(4, 8)), "one d"),
])
def test_bad_config(tmp_path, kw, needle):
  with pytest.raises(jaxnorm.ConfigError, match=needle):
    reconstruct.run(reconstruct.Config(**kw), str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_cli_bad_study_is_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.reconstruct", f"--workdir={tmp_path}",
                         "--study=nope"], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and "Traceback" not in proc.stderr
  assert [l for l in proc.stderr.splitlines() if l.startswith("error:")] == [
      "error: unknown study 'nope'; expected one of dense, sparse, scale, gap"]
