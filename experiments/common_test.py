"""Tests for experiments/common.py: what every experiment main shares."""

import os
import signal
import subprocess
import sys
import types

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
  for shared in ("--checkpoint_every", "--stop_after_chunks", "--[no]overwrite",
                 "--[no]distributed", "--cpu_devices"):
    assert shared in out, shared


@pytest.mark.parametrize("argv, needle", [
    (["--workdir=W", "--no_such_flag=1"], "no_such_flag"),   # (a missing --workdir: same path)
    (["--workdir=W", "stray"], "unexpected arguments: stray"),
    (["--workdir=W", "--config=nope"], "nope"),
    (["--workdir=W", "--cpu_devices=two"], "--cpu_devices must be 'auto' or a positive count"),
])
def test_a_bad_command_line_is_one_line_and_exit_code_2(argv, needle, tmp_path):
  argv = [a.replace("=W", f"={tmp_path / 'w'}") for a in argv]
  proc = subprocess.run([sys.executable, "-m", "experiments.fit_target", *argv], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
  assert not (tmp_path / "w").exists()


def test_cpu_devices_splits_the_cpu_and_levenberg_marquardt_returns_on_it(tmp_path):
  """Two seeds per device on two CPU devices: jaxlib's batched LAPACK kernels would block both
  pool threads at once (a deadlock, hence the timeout); jaxnorm solves one system per call."""
  argv = [sys.executable, "-m", "experiments.fit_target", f"--workdir={tmp_path}",
          "--cpu_devices=2", "--optimizers=lm", "--target_widths=4,8,4", "--width_multipliers=1",
          "--seeds=4", "--steps=4", "--chunk_steps=4", "--fit_size=32", "--eval_size=32"]
  proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "global devices: 2 (cpu)" in proc.stderr
  assert "seeds spread over 2 device(s)" in proc.stdout


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143)])   # Ctrl-C: the same path
def test_sigterm_or_ctrl_c_exits_with_its_code_after_the_checkpoint_and_resumes(tmp_path, sig,
                                                                                code):
  argv = [sys.executable, "-m", "experiments.fit_target", f"--workdir={tmp_path}",
          "--optimizers=adam", "--target_widths=3,4,2", "--width_multipliers=1", "--seeds=2",
          "--steps=400000", "--chunk_steps=200", "--batch_size=16", "--eval_size=32"]
  proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
  try:
    lines = []
    for line in proc.stderr:          # wait for the first finished (and checkpointed) chunks
      lines.append(line)
      if "chunk 2/" in line:
        break
    proc.send_signal(sig)
    err = "".join(lines) + proc.stderr.read()
    assert proc.wait(timeout=120) == code, err
  finally:
    proc.kill()
  assert "Traceback" not in err and "stopping after the current chunk" in err
  assert "re-run the same command to resume" in err
  again = subprocess.run(argv + ["--stop_after_chunks=1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 3 and "resumed after chunk" in again.stderr, again.stderr


def test_a_failed_write_is_one_line_and_exit_code_4(capsys):
  import errno  # pylint: disable=g-import-not-at-top
  from experiments import common  # pylint: disable=g-import-not-at-top

  def full():
    raise OSError(errno.ENOSPC, "No space left on device", "/w/results.json")
  with pytest.raises(SystemExit) as exit_info:
    common.run_or_exit(full)
  assert exit_info.value.code == common.IO_ERROR_EXIT
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "No space left on device while writing /w/results.json" in err


def test_only_the_closed_event_loop_of_an_abandoned_orbax_read_is_kept_quiet(monkeypatch):
  from experiments import common  # pylint: disable=g-import-not-at-top
  passed_on = []
  monkeypatch.setattr(sys, "__unraisablehook__", passed_on.append)
  unraisable = lambda e: types.SimpleNamespace(exc_type=type(e), exc_value=e, exc_traceback=None,
                                               err_msg=None, object=None)
  common._quiet_unraisable(unraisable(RuntimeError("Event loop is closed")))
  assert passed_on == []
  others = [RuntimeError("something else"), ValueError("Event loop is closed")]
  for other in others:
    common._quiet_unraisable(unraisable(other))
  assert [u.exc_value for u in passed_on] == others
