"""Tests for experiments/lifecycle.py: one writer per workdir."""

import os
import subprocess
import sys

import pytest

from experiments import lifecycle
from experiments.fit_target import experiment as fit_target
from jaxnorm import checkpoint
from jaxnorm import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(1.0,), seeds=2, steps=4,
                         chunk_steps=2, batch_size=16, eval_size=32, optimizers=("adam",))


def test_a_workdir_in_use_is_refused_and_left_alone(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  lock = lifecycle.WorkdirLock(str(tmp_path))
  try:
    for control in (checkpoint.Control(), checkpoint.Control(overwrite=True)):
      with pytest.raises(validate.ConfigError, match=rf"in use by a live run \(pid {os.getpid()}"):
        fit_target.run(TINY, str(tmp_path), control)
      assert (tmp_path / "config.json").read_text() == "{}"
  finally:
    lock.release()
  assert sorted(os.listdir(tmp_path)) == ["config.json"]


def test_a_second_process_exits_2_at_once(tmp_path):
  lock = lifecycle.WorkdirLock(str(tmp_path))
  try:
    proc = subprocess.run([sys.executable, "-m", "experiments.fit_target", f"--workdir={tmp_path}",
                           "--optimizers=adam", "--steps=4", "--seeds=2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  finally:
    lock.release()
  assert proc.returncode == 2, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "in use by a live run" in errors[0]
  assert os.listdir(tmp_path) == []


def test_a_lock_file_left_by_a_killed_run_does_not_block_and_a_run_leaves_none(tmp_path):
  (tmp_path / lifecycle.LOCK).write_text("pid 1 on a host that was killed")
  fit_target.run(TINY, str(tmp_path))
  assert lifecycle.LOCK not in os.listdir(tmp_path)
  again = fit_target.run(TINY, str(tmp_path))          # complete: reported, lock released
  assert again["already_complete"] and lifecycle.LOCK not in os.listdir(tmp_path)
