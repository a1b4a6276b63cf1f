"""An experiment's life in its workdir: fresh, resumed after a kill, or already complete.

Every experiment's `run(config, workdir, control)` goes through a `Run`:

* a workdir holding a **complete** run (`results.json`) is not touched: the run
  reports it and returns those results (`Control.overwrite` starts fresh);
* a workdir holding a **different** config is refused before anything is
  written (`validate.ConfigError`), so a typo can't damage earlier work;
* otherwise the run resumes from its newest checkpoint: the records of the
  units of work already finished (each turned into JSON at once, so a resumed
  run writes exactly the bytes an uninterrupted one would), and the state of
  the unit in progress (`fit_slot`).

Wall-clock numbers never go into `results.json` (same seed and flags give the
same bytes); experiments write them to `timings.json`.
"""

from __future__ import annotations

import json
import os
import fcntl
import shutil
import socket
from typing import Any, Optional

import jax

from jaxnorm import checkpoint
from jaxnorm import validate
from experiments import outputs

CONFIG = "config.json"
RESULTS = "results.json"
TIMINGS = "timings.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"


class WorkdirLock:
  """An exclusive lock on a workdir, held while a run uses it (one writer per workdir).

  `fcntl.flock` on `workdir/.lock`, which holds the holder's pid and host. The
  kernel drops the lock when its holder exits, however it exits (a killed run
  leaves no live lock, only the file, which the next run takes over). A released
  lock removes its file (while still holding it; a process that opened the old
  file meanwhile sees it was replaced and reports the workdir busy).

  Args:
    workdir: the run's directory (created if missing).

  Raises:
    validate.ConfigError: another live process holds the lock.
  """

  def __init__(self, workdir: str):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, LOCK)
    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if os.stat(self.path).st_ino != os.fstat(self._fd).st_ino:   # released and removed
        raise BlockingIOError
    except OSError:
      holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "another process"
      os.close(self._fd)
      self._fd = None
      raise validate.ConfigError(
          f"workdir {workdir} is in use by a live run ({holder}); wait for it to end, or use "
          f"another workdir") from None
    os.ftruncate(self._fd, 0)
    os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

  def release(self) -> None:
    """Removes the lock file and releases the lock (idempotent)."""
    if self._fd is not None:
      try:
        os.unlink(self.path)
      except FileNotFoundError:
        pass
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def as_json(obj: Any) -> Any:
  """`obj` as it reads back from `results.json` (numpy scalars to numbers, NaN to "nan")."""
  return json.loads(json.dumps(outputs.jsonable(obj)))


def _read_json(path: str) -> Any:
  """A workdir's JSON file; a damaged one is a one-line `ConfigError` saying what to do."""
  try:
    with open(path) as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise validate.ConfigError(
        f"{path} is damaged (not JSON: {str(e).splitlines()[0][:80]}); pass --overwrite to start "
        f"fresh, or delete that file") from None


def _differences(saved: dict[str, Any], wanted: dict[str, Any]) -> str:
  keys = sorted(set(saved) | set(wanted))
  diff = [f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in keys
          if saved.get(k) != wanted.get(k)]
  return "; ".join(diff[:3]) + ("; ..." if len(diff) > 3 else "")


class Run:
  """One run of an experiment in `workdir` (call after every other check passed).

  Args:
    workdir: the run's directory (validated: a writable directory or creatable).
    config: the experiment's config as a dict (what must match to resume).
    control: checkpoint interval, simulated preemption, overwrite.

  Raises:
    validate.ConfigError: the workdir holds a run of a different config.
  """

  def __init__(self, workdir: str, config: dict[str, Any], control: checkpoint.Control):
    self.workdir = validate.workdir(workdir)
    checkpoint.check_control(control)
    self.config = as_json(config)
    self.writer = jax.process_index() == 0
    # Process 0 writes, so it holds the lock, for the whole run (before --overwrite deletes).
    self._lock = WorkdirLock(self.workdir) if self.writer else None
    try:
      self._open(control)
    except BaseException:
      self._release()
      raise

  def _release(self) -> None:
    if self._lock is not None:
      self._lock.release()

  def _open(self, control: checkpoint.Control) -> None:
    config_path, results_path = self.path(CONFIG), self.path(RESULTS)
    if not control.overwrite and os.path.exists(config_path):
      saved = _read_json(config_path)
      if not isinstance(saved, dict):
        raise validate.ConfigError(
            f"{config_path} is damaged (not a config); pass --overwrite to start fresh, or "
            f"delete that file")
      if saved != self.config:
        raise validate.ConfigError(
            f"workdir {self.workdir} holds a run with another config "
            f"({_differences(saved, self.config)}); pass --overwrite to replace it, or use another "
            f"workdir")
    self.finished: Optional[dict[str, Any]] = None
    self.timings: dict[str, Any] = {}
    if not control.overwrite and os.path.exists(results_path):
      try:
        with open(results_path) as f:
          self.finished = json.load(f)
      except ValueError:
        self.finished = None
      if not isinstance(self.finished, dict) or as_json(self.finished.get("config")) != (
          self.config):
        raise validate.ConfigError(
            f"workdir {self.workdir} holds a results.json that is not a complete run of this "
            f"config; pass --overwrite to replace it, or use another workdir")
      if os.path.exists(self.path(TIMINGS)):
        self.timings = _read_json(self.path(TIMINGS))
      self._release()
      return
    if self.writer:
      if control.overwrite:
        for name in (RESULTS, TIMINGS):
          if os.path.exists(self.path(name)):
            os.remove(self.path(name))
        shutil.rmtree(self.path(CHECKPOINTS), ignore_errors=True)
    self.checkpoints = checkpoint.Checkpoints(self.path(CHECKPOINTS), control)
    meta = self.checkpoints.meta or {}
    if meta and as_json(meta.get("config")) != self.config:
      # The checkpoints carry their run's config: a lost or edited config.json cannot make a
      # run resume (and mix in) another run's units.
      self.checkpoints.close()
      raise validate.ConfigError(
          f"workdir {self.workdir} holds checkpoints of another run (its config.json is missing "
          f"or was changed); pass --overwrite to replace it, or use another workdir")
    if self.writer:
      outputs.write_json(config_path, self.config)
    self.records: list[Any] = list(meta.get("records", []))
    self.timings: dict[str, Any] = dict(meta.get("timings", {}))

  def path(self, name: str) -> str:
    """A file of the workdir."""
    return os.path.join(self.workdir, name)

  def _meta(self, **extra) -> dict[str, Any]:
    return dict(records=self.records, timings=self.timings, config=self.config, **extra)

  def fit_slot(self, unit: int) -> checkpoint.FitSlot:
    """Where the fit of unit `unit` (= `len(records)`) saves and resumes."""
    return checkpoint.FitSlot(self.checkpoints, self._meta(unit=unit))

  def unit_done(self, record: Any, seconds: Optional[Any] = None,
                counts_as_chunk: bool = False) -> Any:
    """Records a finished unit of work (as JSON) and checkpoints the records.

    Args:
      record: the unit's results (JSON-able).
      seconds: its wall time (or a dict of timing-dependent numbers), kept
        for `timings.json` under the unit's index.
      counts_as_chunk: the unit had no chunks of its own: count it toward
        `stop_after_chunks`.

    Returns:
      `record` as it reads back from JSON.
    """
    record = as_json(record)
    self.records.append(record)
    if isinstance(seconds, (int, float)):
      seconds = round(float(seconds), 3)
    if seconds is not None:
      self.timings[str(len(self.records) - 1)] = as_json(seconds)
    if counts_as_chunk:
      self.checkpoints.chunk_done(self._meta(), save=True)
    else:
      self.checkpoints.save(self._meta())
    return record

  def finish(self, results: dict[str, Any]) -> dict[str, Any]:
    """Writes `timings.json` and then `results.json` (last: its presence marks completion)."""
    try:
      if self.writer:
        outputs.write_json(self.path(TIMINGS), self.timings)
        outputs.write_json(self.path(RESULTS), results)
    finally:
      self.close()
    return as_json(results)

  def close(self) -> None:
    """Waits for pending checkpoint writes, then releases the workdir."""
    try:
      if self.finished is None:
        self.checkpoints.close()
    finally:
      self._release()
