"""End-to-end tests of the fit_target experiment: library `run` and the CLI."""

import csv
import json
import os
import subprocess
import sys

import pytest

from jaxnorm.runs import fit_target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(0.5, 1.0), seeds=2,
                         steps=30, chunk_steps=15, batch_size=16, eval_size=64)


def test_run_writes_results_metrics_and_plot(tmp_path):
  results = fit_target.run(TINY, str(tmp_path))
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["frozen_unchanged"] is True
  assert on_disk["config"]["target_widths"] == [3, 4, 2]
  assert [r["width"] for r in on_disk["rows"]] == [[6, 4], [12, 8]]
  assert [r["width_ratio"] for r in on_disk["rows"]] == [0.5, 1.0]
  for row in on_disk["rows"]:
    assert set(row) >= {"width_ratio", "width", "trainable_params", "target_params",
                        "rel_mse_median", "rel_mse_q25", "rel_mse_q75", "seconds", "seeds"}
    assert row["seeds"] == 2 and row["target_params"] == 3 * 4 + 4 + 4 * 2 + 2
    assert row["rel_mse_q25"] <= row["rel_mse_median"] <= row["rel_mse_q75"]
  assert on_disk["rows"][0]["trainable_params"] == 2 * (6 + 4 + 4 + 2)
  assert results["rows"] == on_disk["rows"]
  with open(tmp_path / "metrics.csv") as f:
    metrics = list(csv.DictReader(f))
  assert len(metrics) == 4 and {m["seed"] for m in metrics} == {"0", "1"}
  with open(tmp_path / "curves.csv") as f:
    assert len(list(csv.DictReader(f))) == 2 * 2 * 2
  assert (tmp_path / "rel_mse_vs_width.png").stat().st_size > 1000
  assert "rel_mse_med" in fit_target.table(results["rows"])


def test_explicit_widths_replace_multipliers():
  config = fit_target.Config(target_widths=(3, 4, 2), widths=(5, 7))
  assert fit_target.hidden_widths(config) == [(5, 5), (7, 7)]
  config = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(2.0,))
  assert fit_target.hidden_widths(config) == [(24, 16)]


def _cli(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "experiments.fit_target", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def test_cli_end_to_end(tmp_path):
  proc = _cli(f"--workdir={tmp_path}", "--target_widths=3,4,2", "--width_multipliers=1",
              "--seeds=2", "--steps=20", "--chunk_steps=10", "--batch_size=16",
              "--eval_size=64")
  assert proc.returncode == 0, proc.stderr
  assert "rel_mse_med" in proc.stdout and "chunk 2/2" in proc.stderr
  assert json.loads((tmp_path / "results.json").read_text())["frozen_unchanged"] is True


BAD_FLAGS = [
    (["--sparsity=1.5"], "1.5"),
    (["--sparsity=0"], "0"),
    (["--steps=0"], "steps"),
    (["--seeds=0"], "seeds"),
    (["--norm=groupnorm"], "groupnorm"),
    (["--target_widths=3,-4,2"], "-4"),
    (["--widths=0"], "0"),
    (["--target_widths=3,x"], "x"),
    (["--widths=5", "--width_multipliers=1"], "not both"),
]


@pytest.mark.parametrize("flags,needle", BAD_FLAGS)
def test_cli_bad_input_is_one_line_and_leaves_workdir_alone(tmp_path, flags, needle):
  results = tmp_path / "results.json"
  results.write_text('{"earlier": "run"}\n')
  proc = _cli(f"--workdir={tmp_path}", *flags)
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], proc.stderr
  assert "Traceback" not in proc.stderr
  assert results.read_text() == '{"earlier": "run"}\n'
  assert sorted(os.listdir(tmp_path)) == ["results.json"]


def test_cli_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("keep me")
  proc = _cli(f"--workdir={path}")
  assert proc.returncode != 0
  assert "not a directory" in proc.stderr and "Traceback" not in proc.stderr
  assert path.read_text() == "keep me"
