"""Runs that survive being killed: an experiment's progress in Orbax checkpoints.

The only module that imports Orbax. A run keeps one `Checkpoints` directory
(`<workdir>/checkpoints`); each save is one Orbax step holding

* `meta`: JSON — what the experiment has finished (its records) and where it
  stands (which unit of work, how many chunks of it are done);
* `state` (optional): the arrays of the unit in progress — e.g. a fit's whole
  `FitState` (sharded arrays are saved and restored with their shardings) and
  its loss curve so far;
* `index`: JSON — the shapes and dtypes of `state`'s leaves (or `null`).

Opening a directory reads the newest step whole (its state onto the host, as
the index describes it) before trusting it; a step that cannot be read — its
meta or its state truncated, overwritten or missing — is passed over with a
warning and deleted, and the run resumes from the older intact step.

Re-running the same command restores the newest step and continues from it;
the programs are deterministic given their state, so the results are
bit-identical to a run that was never interrupted. `Control.stop_after_chunks`
simulates a preemption: after that many chunks the state is saved and
`Preempted` is raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxnorm import validate


class Preempted(Exception):
  """Raised after `Control.stop_after_chunks` chunks, once the checkpoint is on disk."""


_STOP_REQUEST: list[str] = []   # why a stop was requested (e.g. a signal), once


def request_stop(reason: str) -> None:
  """Asks every run to stop at its next chunk boundary: the chunk is saved, then `Preempted`.

  Safe to call from a signal handler: it only records the request, and the
  running `Checkpoints` acts on it between chunks (never inside a save, a
  compilation or a device computation).

  Args:
    reason: said in the `Preempted` message.
  """
  if not _STOP_REQUEST:
    _STOP_REQUEST.append(reason)


def stop_requested() -> bool:
  """Whether `request_stop` was called in this process."""
  return bool(_STOP_REQUEST)


@dataclasses.dataclass(frozen=True)
class Control:
  """How a run checkpoints (not part of its config: changing it never changes results).

  Attributes:
    every_chunks: save after every this many chunks of work (and always at
      the end of each unit of work).
    stop_after_chunks: simulate a preemption after this many chunks in this
      process (`None`: never).
    overwrite: discard whatever the workdir holds and start fresh.
  """

  every_chunks: int = 1
  stop_after_chunks: Optional[int] = None
  overwrite: bool = False


def check_control(control: Control) -> Control:
  """Validates `control`; raises `validate.ConfigError`."""
  validate.positive_int("checkpoint_every", control.every_chunks)
  if control.stop_after_chunks is not None:
    validate.positive_int("stop_after_chunks", control.stop_after_chunks)
  return control


def _is_key(x) -> bool:
  return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _savable(leaves):
  return [jax.random.key_data(x) if _is_key(x) else x for x in leaves]


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))


_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


@contextlib.contextmanager
def _writing(directory: str):
  """Re-raises a failed Orbax write as the `OSError` behind it (e.g. `ENOSPC`, a full disk).

  Orbax reports an operating-system failure of its writers as a `ValueError`
  (`RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']`); the
  caller gets `OSError(errno, strerror, directory)` instead, like any other
  failed write.
  """
  try:
    yield
  except OSError as e:
    if e.filename is not None or e.errno is None:
      raise
    raise OSError(e.errno, e.strerror, directory) from e
  except Exception as e:  # pylint: disable=broad-except
    code = _OS_ERROR_CODE.search(str(e))
    if code is None:
      raise
    raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), directory) from e


class Checkpoints:
  """An Orbax `CheckpointManager` over one run's checkpoint directory.

  Args:
    directory: where the checkpoints live (created if missing).
    control: the interval and the simulated preemption.
  """

  def __init__(self, directory: str, control: Control = Control()):
    self._control = check_control(control)
    self._manager = ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    self._directory = directory
    self._step, self._meta = None, None
    steps = sorted(self._manager.all_steps(), reverse=True)
    damaged = []
    for step in steps:   # the newest intact one; a damaged newer one is passed over, with a warning
      try:
        meta = self._read_intact(step)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("checkpoint %d in %s is damaged (%s); trying an older one", step,
                        directory, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
        damaged.append(step)
        continue
      self._step, self._meta = step, meta
      logging.info("found checkpoint %d in %s", step, directory)
      break
    if steps and self._step is None:
      raise validate.ConfigError(
          f"every checkpoint in {directory} is damaged; pass --overwrite to start fresh (or "
          f"delete that directory)")
    for step in damaged:   # the run goes on from the intact one and will save these steps again
      self._manager.delete(step)
    self._chunks = 0        # chunks run by this process
    self._unsaved = 0       # chunks since the last save

  def _read_intact(self, step: int) -> dict[str, Any]:
    """The meta of `step` after its state (if any) has been read whole; raises if damaged."""
    items = dict(meta=ocp.args.JsonRestore())
    indexed = (epath.Path(self._directory) / str(step) / "index").exists()
    if indexed:   # (steps written before the index existed are trusted as before)
      items["index"] = ocp.args.JsonRestore()
    read = self._manager.restore(step, args=ocp.args.Composite(**items))
    if not isinstance(read.meta, dict):
      raise ValueError(f"its meta is {type(read.meta).__name__}, not a dict")
    leaves = read.index.get("state") if indexed else None
    if leaves is not None:   # read every array onto the host, then let it go
      host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
      abstract = [jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=host)
                  for shape, dtype in leaves]
      self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract)))
    return read.meta

  @property
  def meta(self) -> Optional[dict[str, Any]]:
    """The newest checkpoint's `meta` (a JSON dict), or `None` before the first save."""
    return self._meta

  def restore_state(self, like):
    """The newest checkpoint's `state`, shaped, typed and sharded like the pytree `like`."""
    leaves, treedef = jax.tree.flatten(like)
    abstract = [_abstract(x) for x in _savable(leaves)]
    try:
      restored = self._manager.restore(self._step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract))).state
    except Exception as e:  # pylint: disable=broad-except
      raise validate.ConfigError(
          f"checkpoint {self._step} in {self._directory} is damaged ({type(e).__name__}); pass "
          f"--overwrite to start fresh") from None
    out = [jax.random.wrap_key_data(r, impl=jax.random.key_impl(x)) if _is_key(x) else r
           for r, x in zip(restored, leaves)]
    return jax.tree.unflatten(treedef, out)

  def save(self, meta: dict[str, Any], state=None) -> None:
    """Saves `meta` (and the pytree `state`, if given) as the next step."""
    step = 0 if self._step is None else self._step + 1
    items = {"meta": ocp.args.JsonSave(meta)}
    index = None
    if state is not None:
      leaves = _savable(jax.tree.leaves(state))
      items["state"] = ocp.args.StandardSave(leaves)
      index = [[list(x.shape), np.dtype(x.dtype).name] for x in leaves]
    items["index"] = ocp.args.JsonSave({"state": index})
    with _writing(self._directory):   # (raises a failure of the previous, asynchronous save)
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    self._step, self._meta, self._unsaved = step, meta, 0
    if stop_requested():
      self._wait()
      raise Preempted(f"stopped after saving ({_STOP_REQUEST[0]}); re-run the same command to "
                      f"resume")

  def chunk_done(self, meta: dict[str, Any], state=None, save: bool = False) -> None:
    """Counts one chunk of work; saves when due (or `save`); raises `Preempted` if told to stop."""
    self._chunks += 1
    self._unsaved += 1
    stop = self._control.stop_after_chunks
    stopping = stop is not None and self._chunks >= stop
    if save or stopping or stop_requested() or self._unsaved >= self._control.every_chunks:
      self.save(meta, state)
    if stopping:   # (a stop request was acted on by the save above)
      self._wait()
      raise Preempted(f"stopped after {self._chunks} chunks (--stop_after_chunks); re-run the "
                      f"same command to resume")

  def _wait(self) -> None:
    with _writing(self._directory):
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager.

    Raises:
      OSError: a pending save failed (e.g. the disk is full); the step it was
        writing is left unfinished, which Orbax never mistakes for a
        checkpoint, so the run resumes from the last complete one.
    """
    try:
      self._wait()
    finally:
      self._manager.close()


class FitSlot:
  """Where one `jaxnorm.fit` call saves and resumes (`engine.Checkpoint`).

  Args:
    checkpoints: the run's `Checkpoints`.
    meta: the run's `meta` for this unit of work; it must hold a `"unit"` key
      naming the fit, and is saved with `"chunks_done"` added.
  """

  def __init__(self, checkpoints: Checkpoints, meta: dict[str, Any]):
    self._checkpoints = checkpoints
    self._meta = meta
    self.notes: Optional[dict[str, Any]] = None   # the start phase's notes, saved with each step

  def restore(self, like_state, like_curve):
    """`(chunks_done, state, curve)` saved for this unit, or `None`."""
    saved = self._checkpoints.meta
    if not saved or saved.get("unit") != self._meta["unit"] or "chunks_done" not in saved:
      return None
    shape = list(np.shape(like_curve))
    if saved.get("curve_shape", shape) != shape:
      raise validate.ConfigError(
          f"the checkpoint holds {saved['curve_shape'][1]} (padded) seeds but this job pads to "
          f"{shape[1]}: it was written on another number of devices; re-run on as many devices "
          f"or pass --overwrite")
    state, curve = self._checkpoints.restore_state((like_state, like_curve))
    self.notes = saved.get("start_notes")
    return saved["chunks_done"], state, np.array(curve)

  def save(self, chunks_done: int, n_chunks: int, state, curve, notes=None) -> None:
    """Saves after the start phase (`chunks_done=0`); counts and maybe saves after a chunk.

    The start phase's `notes` (JSON-able) are kept and saved with every later step.
    """
    if notes is not None:
      self.notes = notes
    meta = dict(self._meta, chunks_done=chunks_done, n_chunks=n_chunks,
                curve_shape=list(np.shape(curve)))
    if self.notes:
      meta["start_notes"] = self.notes
    if chunks_done == 0:
      self._checkpoints.save(meta, (state, curve))
    else:
      self._checkpoints.chunk_done(meta, (state, curve))
