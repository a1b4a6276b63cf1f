"""Tiny end-to-end run of the classify experiment, and its CLI's bad-input handling."""

import json
import os
import subprocess
import sys

import pytest

from jaxnorm.runs import classify

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_run_writes_every_cell_and_mode(tmp_path):
  config = classify.Config(mlp_depths=(1,), mlp_widths=(8,), keep_probs=(1.0, 0.5),
                           conv_depths=(1,), conv_channels=(2,), modes=("norm", "random_subset"),
                           seeds=2, steps=6, batch_size=8)
  results = classify.run(config, str(tmp_path))
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert [(r["model"], r["p"], r["mode"]) for r in rows] == [
      ("mlp", 1.0, "norm"), ("mlp", 1.0, "random_subset"), ("mlp", 0.5, "norm"),
      ("mlp", 0.5, "random_subset"), ("conv", 1.0, "norm"), ("conv", 1.0, "random_subset")]
  for r in rows:
    assert {"model", "mode", "depth", "width", "p", "trainable_params", "test_acc_mean",
            "test_acc_std", "seeds"} <= set(r)
  assert rows[0]["trainable_params"] == rows[1]["trainable_params"] == 2 * (8 + 10)
  assert results["frozen_unchanged"] is True
  assert (tmp_path / "acc_vs_params.png").stat().st_size > 1000
  assert "test_acc_mean" in classify.table(results["rows"])


def test_cells_are_the_union_of_the_sweeps():
  specs = classify.cells(classify.Config(mlp_depths=(2, 1), mlp_widths=(32, 64),
                                         keep_probs=(1.0, 0.25), conv_depths=(), modes=("norm",)))
  assert [(s.depth, s.width, s.keep_prob) for s in specs] == [
      (2, 32, 1.0), (1, 32, 1.0), (2, 64, 1.0), (2, 32, 0.25)]


@pytest.mark.parametrize("flag,needle", [("--modes=norm,weights", "weights"),
                                         ("--keep_probs=0", "0"), ("--mlp_widths=-2", "-2")])
def test_cli_bad_input(tmp_path, flag, needle):
  proc = subprocess.run([sys.executable, "-m", "experiments.classify", f"--workdir={tmp_path}",
                         flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and needle in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr and os.listdir(tmp_path) == []
