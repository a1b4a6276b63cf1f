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
import shutil
from typing import Any, Optional

import jax

from jaxnorm import checkpoint
from jaxnorm import validate
from experiments import outputs

CONFIG = "config.json"
RESULTS = "results.json"
TIMINGS = "timings.json"
CHECKPOINTS = "checkpoints"


def as_json(obj: Any) -> Any:
  """`obj` as it reads back from `results.json` (numpy scalars to numbers, NaN to "nan")."""
  return json.loads(json.dumps(outputs.jsonable(obj)))


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
    config_path, results_path = self.path(CONFIG), self.path(RESULTS)
    if not control.overwrite and os.path.exists(config_path):
      with open(config_path) as f:
        saved = json.load(f)
      if saved != self.config:
        raise validate.ConfigError(
            f"workdir {self.workdir} holds a run with another config ({_differences(saved, self.config)}); "
            f"pass --overwrite to replace it, or use another workdir")
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
        with open(self.path(TIMINGS)) as f:
          self.timings = json.load(f)
      return
    if self.writer:
      if control.overwrite:
        for name in (RESULTS, TIMINGS):
          if os.path.exists(self.path(name)):
            os.remove(self.path(name))
        shutil.rmtree(self.path(CHECKPOINTS), ignore_errors=True)
      outputs.write_json(config_path, self.config)
    self.checkpoints = checkpoint.Checkpoints(self.path(CHECKPOINTS), control)
    meta = self.checkpoints.meta or {}
    self.records: list[Any] = list(meta.get("records", []))
    self.timings: dict[str, Any] = dict(meta.get("timings", {}))

  def path(self, name: str) -> str:
    """A file of the workdir."""
    return os.path.join(self.workdir, name)

  def _meta(self, **extra) -> dict[str, Any]:
    return dict(records=self.records, timings=self.timings, **extra)

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
    if self.writer:
      outputs.write_json(self.path(TIMINGS), self.timings)
      outputs.write_json(self.path(RESULTS), results)
    self.close()
    return as_json(results)

  def close(self) -> None:
    """Waits for pending checkpoint writes."""
    if self.finished is None:
      self.checkpoints.close()
