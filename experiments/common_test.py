"""Tests for experiments/common.py: what every experiment main shares."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("experiment,own_flag", [("fit_target", "--seeds"), ("classify", "--modes"),
                                                 ("reconstruct", "--study"),
                                                 ("bench_fit", "--repeats")])
def test_helpshort_exits_0_with_own_and_run_control_flags(experiment, own_flag, tmp_path):
  """From a directory outside the repository: the installed package finds the experiments."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--helpshort"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert f"python -m experiments.{experiment}" in out   # the docstring with its commands
  assert f"  {own_flag}:" in out and "  --config:" in out and "  --workdir:" in out
  for shared in ("--checkpoint_every", "--stop_after_chunks", "--[no]overwrite", "--[no]distributed"):
    assert shared in out, shared


@pytest.mark.parametrize("argv, needle", [
    (["--workdir=W", "--no_such_flag=1"], "no_such_flag"),
    (["--seeds=5"], "--workdir"),                        # the required flag missing
    (["--workdir=W", "stray"], "unexpected arguments: stray"),
    (["--workdir=W", "--seeds=nan"], "--seeds must be an integer, got 'nan'"),
    (["--workdir=W", "--config=nope"], "nope"),
])
def test_a_bad_command_line_is_one_line_and_exit_code_2(argv, needle, tmp_path):
  argv = [a.replace("=W", f"={tmp_path / 'w'}") for a in argv]
  proc = subprocess.run([sys.executable, "-m", "experiments.fit_target", *argv], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()
