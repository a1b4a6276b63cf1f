"""Tests for experiments/lifecycle.py: one writer per workdir."""

import errno
import os
import shutil
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


@pytest.mark.parametrize("damage", ["delete", "edit"])
def test_checkpoints_of_another_run_are_never_resumed(tmp_path, damage):
  """The issue's case: config.json lost (or changed), then a re-run with another seed."""
  with pytest.raises(checkpoint.Preempted):
    fit_target.run(TINY, str(tmp_path), checkpoint.Control(stop_after_chunks=1))
  if damage == "delete":
    os.remove(tmp_path / "config.json")
  else:
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text().replace(
        '"seed": 0', '"seed": 7'))
  other = fit_target.dataclasses.replace(TINY, seed=7)
  with pytest.raises(validate.ConfigError, match="holds checkpoints of another run"):
    fit_target.run(other, str(tmp_path))
  assert not (tmp_path / "results.json").exists()
  if damage == "delete":
    fit_target.run(TINY, str(tmp_path))                # the run they belong to still resumes


def _stopped(tmp_path, chunks=2):
  config = fit_target.dataclasses.replace(TINY, steps=6)
  with pytest.raises(checkpoint.Preempted):
    fit_target.run(config, str(tmp_path), checkpoint.Control(stop_after_chunks=chunks))
  return config


@pytest.mark.parametrize("name, content", [
    ("config.json", "{not json"), ("config.json", "[]"), ("config.json", "5"),
    ("config.json", b"\xff\xfe"), ("timings.json", "{oops"),
])
def test_a_damaged_json_file_is_named_in_one_line_and_left_alone(tmp_path, name, content):
  fit_target.run(TINY, str(tmp_path))                  # complete (timings.json is read back)
  write = (tmp_path / name).write_bytes if isinstance(content, bytes) else (
      tmp_path / name).write_text
  write(content)
  with pytest.raises(validate.ConfigError, match=rf"{name} is damaged .*--overwrite"):
    fit_target.run(TINY, str(tmp_path))
  assert (tmp_path / name).read_bytes() == (content if isinstance(content, bytes)
                                            else content.encode())


def _damage(step_dir, how):
  """Damages one checkpoint step the ways a crash, a full disk or a stray write would."""
  if how == "meta":
    (step_dir / "meta" / "metadata").write_text("garbage")
  elif how == "no state":
    shutil.rmtree(step_dir / "state")
  else:   # the state's data files truncated, or overwritten with garbage of the same size
    for root, _, files in os.walk(step_dir / "state"):
      for name in files:
        path = os.path.join(root, name)
        if os.sep + "d" + os.sep in path:
          size = os.path.getsize(path)
          with open(path, "r+b") as f:
            if how == "truncated state":
              f.truncate(size // 2)
            else:
              f.write(b"\x5a" * size)


@pytest.fixture(scope="module")
def stopped_and_whole(tmp_path_factory):
  """A workdir stopped after 2 of 3 chunks (two checkpoints), and the uninterrupted rows."""
  path = tmp_path_factory.mktemp("stopped")
  config = _stopped(path / "w")
  return config, path / "w", fit_target.run(config, str(path / "whole"))["rows"]


@pytest.mark.parametrize("how", ["meta", "no state", "truncated state", "overwritten state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, how,
                                                                 stopped_and_whole):
  config, stopped, whole = stopped_and_whole
  shutil.copytree(stopped, tmp_path / "w")
  steps = sorted(int(p) for p in os.listdir(tmp_path / "w" / "checkpoints") if p.isdigit())
  assert len(steps) == 2
  _damage(tmp_path / "w" / "checkpoints" / str(steps[-1]), how)
  ckpts = checkpoint.Checkpoints(str(tmp_path / "w" / "checkpoints"))   # passes it over, warns
  assert ckpts.meta["chunks_done"] == 1
  ckpts.close()
  assert fit_target.run(config, str(tmp_path / "w"))["rows"] == whole


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  config = _stopped(tmp_path)
  for step, how in zip(sorted(os.listdir(tmp_path / "checkpoints")), ["no state", "meta"]):
    _damage(tmp_path / "checkpoints" / step, how)
  with pytest.raises(validate.ConfigError, match="every checkpoint in .* is damaged"):
    fit_target.run(config, str(tmp_path))
  assert fit_target.run(config, str(tmp_path), checkpoint.Control(overwrite=True))["rows"]


def test_a_full_disk_at_the_end_damages_nothing_and_the_run_resumes(tmp_path, monkeypatch):
  from experiments import outputs  # pylint: disable=g-import-not-at-top
  whole = fit_target.run(TINY, str(tmp_path / "whole"))
  real = outputs._atomic_write

  def full(path, text):
    if path.endswith("results.json"):
      raise OSError(errno.ENOSPC, "No space left on device", path)
    real(path, text)
  monkeypatch.setattr(outputs, "_atomic_write", full)
  with pytest.raises(OSError, match="No space left"):
    fit_target.run(TINY, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "results.json").exists()
  assert lifecycle.LOCK not in os.listdir(tmp_path / "w")
  monkeypatch.setattr(outputs, "_atomic_write", real)
  assert fit_target.run(TINY, str(tmp_path / "w"))["rows"] == whole["rows"]


@pytest.fixture
def tiny_disk(tmp_path):
  """A 1 MiB tmpfs (needs the right to mount, as root in a container has; skipped otherwise)."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True, check=False).returncode == 0
  if not mounted:
    pytest.skip("cannot mount a tmpfs here")
  try:
    yield disk
  finally:
    subprocess.run(["umount", str(disk)], check=False)


def test_a_disk_that_fills_up_inside_a_checkpoint_save_and_the_resume_once_freed(tiny_disk,
                                                                                  tmp_path):
  config = _stopped(tiny_disk / "w", chunks=1)            # one complete checkpoint on the disk
  complete = sorted(os.listdir(tiny_disk / "w" / "checkpoints"))
  step_bytes = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in
                   os.walk(tiny_disk / "w" / "checkpoints" / complete[-1]) for f in files)
  free = os.statvfs(tiny_disk).f_bavail * os.statvfs(tiny_disk).f_frsize
  (tiny_disk / "ballast").write_bytes(b"\0" * (free - step_bytes // 2))   # room for half a step
  with pytest.raises(OSError) as info:
    fit_target.run(config, str(tiny_disk / "w"))
  assert info.value.errno == errno.ENOSPC and "checkpoints" in str(info.value.filename)
  assert sorted(p for p in os.listdir(tiny_disk / "w" / "checkpoints") if p.isdigit()) == [
      p for p in complete if p.isdigit()]                    # the complete step is untouched
  os.remove(tiny_disk / "ballast")
  resumed = fit_target.run(config, str(tiny_disk / "w"))
  assert resumed["rows"] == fit_target.run(config, str(tmp_path / "whole"))["rows"]
