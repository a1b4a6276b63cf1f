"""The one engine: fit the trainable leaves of any Flax model, one network per seed, all at once.

`fit(model, task, seeds)` runs the same per-seed program for every seed:

* `init`: the seed's key `fold_in(key(seed), s)` is split into streams (the
  task says how: `task.split_key`); the model draws its weights from the model
  stream, the task its held-out set / target / fixed batch, the data stream
  feeds the training batches (`fold_in(data_key, step)`); the parameters are
  partitioned into the trainable leaves and the frozen rest (`jaxnorm.partition`);
* `step`: the method's step (`jaxnorm.methods`) on an `Objective` in which
  the frozen leaves are bound, so only the trainable partition is ever
  differentiated and only it has optimizer state; a step whose loss or new
  parameters are non-finite is undone and the seed marked diverged (it keeps
  the last parameters whose loss was finite, the others carry on);
* `evaluate`: the task's metrics, BatchNorm on its running averages.

The seed axis is batched with `jax.vmap` (or `lax.map`, or `lax.map` over
vmapped chunks of `seed_chunk` seeds; by default `jaxnorm.batching.choose`
picks), split over devices with
`jax.shard_map` (`jaxnorm.sharding`), and the steps run under `lax.scan` in
chunks of `chunk_steps`, between which progress is reported and the state can
be checkpointed. At the end every frozen leaf is compared bit for bit with its
value after init. The per-seed programs and their compiled, cached forms live
in `jaxnorm.programs`; this module drives them.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxnorm import batching as batching_lib
from jaxnorm import freeze
from jaxnorm import memory
from jaxnorm import methods
from jaxnorm import programs as programs_lib
from jaxnorm import selection
from jaxnorm import sharding
from jaxnorm import tasks
from jaxnorm import trees
from jaxnorm import validate

BATCHINGS = batching_lib.BATCHINGS


@dataclasses.dataclass(frozen=True)
class FitResult:
  """Per-seed results of `fit` (numpy arrays, leading axis = seed).

  Attributes:
    seed_ids: the seed ids fitted, `[S]`.
    loss_curve: mean training loss of each chunk, `[S, n_chunks]` (NaN once a
      seed has diverged).
    chunk_steps: the step count at the end of each chunk, `[n_chunks]`.
    metrics: the task's metrics, `{name: [S]}`: `rel_mse` for `Regression`,
      `test_acc` and `train_acc` for `Classification` (also attributes).
    diverged: `[S]` bool.
    params: final parameter trees (nested dicts, leading seed axis).
    batch_stats: final other variables of the model (`batch_stats` and the
      like; `{}` when none), leading seed axis.
    frozen_unchanged: every frozen leaf (and every unselected entry of a
      random-subset leaf) is bit-identical before and after.
    trainable_params: trainable numbers per seed.
    devices: devices the seeds were spread over.
    seeds_per_device: seeds (padding included) held by each local device.
    seconds: wall time, compilation included.
    task_state: the task's per-seed state (e.g. `"target"`: each seed's
      random target MLP), leading seed axis.
    model: the `adapters.Model` (its `rebuild` gives a seed's variables or
      NNX module; see `seed_model`).
    targets: for an MLP `Regression` target, each seed's target
      `[(W[S, out, in], b[S, out]), ...]`; else None.
    start_report: what the start phases reported (JSON-able; `{}` when
      none): `"construction"` (per-seed network errors and block verdicts of
      a constructed start), `"students"` (distill's students); kept across a
      resume from a checkpoint.
    batching: how the seeds were batched, `"vmap"` or `"map"` (what
      `batching="auto"` chose).
    seed_chunk: seeds per vmapped chunk (None: all at once).
  """
  seed_ids: np.ndarray
  loss_curve: np.ndarray
  chunk_steps: np.ndarray
  metrics: dict[str, np.ndarray]
  diverged: np.ndarray
  params: Any
  batch_stats: Any
  frozen_unchanged: bool
  trainable_params: int
  devices: int
  seeds_per_device: tuple[int, ...]
  seconds: float
  task_state: Any = None
  model: Any = None
  targets: Any = None
  start_report: dict = dataclasses.field(default_factory=dict)
  batching: str = "vmap"
  seed_chunk: Optional[int] = None

  def __getattr__(self, name):
    metrics = self.__dict__.get("metrics") or {}
    if name in metrics:
      return metrics[name]
    raise AttributeError(f"FitResult has no {name!r} (metrics: {sorted(metrics)})")

  def seed_model(self, i: int):
    """Seed `i`'s fitted model: linen `variables`, or the merged NNX module.

    Args:
      i: index into `seed_ids`.

    Returns:
      For linen, `{"params": ..., **batch_stats}` to pass to `module.apply`;
      for NNX, the module itself.
    """
    pick = lambda tree: jax.tree.map(lambda a: a[i], tree)
    return self.model.rebuild(pick(self.params), pick(self.batch_stats))

  def predict(self, x, batch_size: int = 1024) -> np.ndarray:
    """Every seed's fitted model on new inputs (evaluation mode: BatchNorm on running averages).

    Args:
      x: inputs `[n, ...]`, shaped like the task's.
      batch_size: inputs per compiled call (bounds the memory of the activations).

    Returns:
      Outputs `[S, n, ...]`.
    """
    validate.positive_int("batch_size", batch_size)
    apply = jax.jit(jax.vmap(lambda p, s, xb: self.model.apply(p, s, xb, False)[0],
                             in_axes=(0, 0, None)))
    x = np.asarray(x)
    return np.concatenate([np.asarray(apply(self.params, self.batch_stats,
                                            x[i:i + batch_size]))
                           for i in range(0, len(x), batch_size)], axis=1)


class ChunkReport(NamedTuple):
  """Progress after one chunk, passed to the `on_chunk` callback."""
  chunk: int
  n_chunks: int
  step: int
  median_loss: float        # over the seeds that have not diverged
  steps_per_second: float
  diverged: int = 0         # seeds diverged so far
  eta_seconds: float = float("nan")   # the rest of this fit at this chunk's speed


class Checkpoint(Protocol):
  """Where `fit` saves and resumes (`jaxnorm.checkpoint.FitSlot`)."""

  def restore(self, like_state, like_curve: np.ndarray):
    """The saved `(chunks_done, state, curve)`, or None; the `like_*` give shapes, shardings."""

  def save(self, chunks_done: int, n_chunks: int, state, curve: np.ndarray,
           notes: Optional[dict] = None) -> None:
    """Called after a costly start phase (`chunks_done=0`, with the start's JSON-able `notes`)
    and after every chunk; may raise. `restore` leaves the saved notes in `self.notes`."""


def chunk_lengths(steps: int, chunk_steps: int) -> list[int]:
  """Steps of each compiled chunk of a fit of `steps` steps."""
  lengths = [chunk_steps] * (steps // chunk_steps)
  if steps % chunk_steps:
    lengths.append(steps % chunk_steps)
  return lengths


def _as_method(optimizer, steps: int):
  if optimizer is None:
    return methods.Optax(methods.default_optimizer(steps))
  if isinstance(optimizer, optax.GradientTransformation):
    return methods.Optax(optimizer)
  if all(hasattr(optimizer, a) for a in ("init", "step", "full_batch")):
    return optimizer
  raise validate.ConfigError(
      f"optimizer must be an optax GradientTransformation or a jaxnorm method "
      f"(jaxnorm.methods.LBFGS(), LevenbergMarquardt(), Distill()), got {type(optimizer).__name__}")


def _check_task(task) -> None:
  if not isinstance(task, (tasks.Regression, tasks.Classification)):
    raise validate.ConfigError(
        f"task must be jaxnorm.Regression(...) or jaxnorm.Classification(...), got "
        f"{type(task).__name__}")


def estimate_bytes(programs: "programs_lib.Programs", seeds: int) -> int:
  """Estimated peak memory of fitting `seeds` seeds on one device.

  Every seed's state stays resident (twice: a chunk's input and output); the
  working set of one step — the sum of every intermediate value in the traced
  step (and in the evaluation), which errs high because XLA fuses and frees
  most of them — is needed by the seeds computed at once.

  Args:
    programs: the fit's programs.
    seeds: seeds on one device.

  Returns:
    Bytes.
  """
  plan = programs.plan
  state, work, consts = programs.footprint
  at_once = seeds if plan.batching == "vmap" and plan.seed_chunk is None else (
      1 if plan.batching == "map" else min(seeds, plan.seed_chunk))
  return int(2 * seeds * state + at_once * work + consts)


def init_states(model, task, seeds: Sequence[int], *, trainable: selection.Trainable = "norm",
                optimizer=None, seed: int = 0, start=None) -> programs_lib.SeedState:
  """Every seed's state right after init (and `start`), on the host: what `fit` starts from.

  Args:
    model: as in `fit`.
    task: as in `fit`.
    seeds: seed ids.
    trainable: as in `fit`.
    optimizer: as in `fit` (decides whether a fixed batch is drawn).
    seed: base seed.
    start: optional start phase, as in `fit`.

  Returns:
    The `programs.SeedState` with a leading seed axis (numpy arrays; keys as key data).
  """
  _check_task(task)
  seed_ids = validate.seed_ids(seeds)
  method = _as_method(optimizer, 1)
  mesh = sharding.seed_mesh(None, seeds=seed_ids.size)
  sample = task.sample()
  programs = programs_lib.cache(programs_lib.Plan(
      model, (sample.shape, sample.dtype), task, method, trainable, 2, seed, "vmap", mesh, None))
  consts, state = _initialise(programs, task, seed_ids, mesh)
  if start is not None:
    state = start(programs_lib.Run(programs, consts, mesh, programs.info, task, seed_ids.size),
                  state)
  return sharding.to_host(state, seed_ids.size)


def _initialise(programs, task, seed_ids: np.ndarray, mesh):
  """The shared arrays on every device, and every seed's state after init (padded, sharded)."""
  consts = sharding.replicate(task.consts(), mesh)
  ids = sharding.distribute(sharding.pad_seed_ids(seed_ids, mesh).astype(np.int32), mesh)
  return consts, programs.init(consts, ids)


def fit(model, task, seeds: Sequence[int] | int, *, trainable: selection.Trainable = "norm",
        optimizer=None, steps: int = 2000, chunk_steps: Optional[int] = None,
        batch_size: int = 256, seed: int = 0, batching: str = "auto",
        devices: Optional[int] = None, seed_chunk: Optional[int] = None, start=None,
        checkpoint: Optional[Checkpoint] = None,
        on_chunk: Optional[Callable[[ChunkReport], None]] = None) -> FitResult:
  """Fits the trainable leaves of one network per seed, all seeds in one compiled program.

  Args:
    model: a `flax.linen.Module` (seed `s` draws its weights with
      `model.init`), or an NNX factory `lambda rngs: Model(..., rngs=rngs)`
      (seed `s` builds it from its own `nnx.Rngs`). BatchNorm statistics are
      kept per seed: batch statistics in training, running averages at
      evaluation.
    task: `jaxnorm.Regression(...)` or `jaxnorm.Classification(...)`.
    seeds: seed ids (or a count `n` for `range(n)`); seed `s` always draws the
      same network, data and held-out set whatever else is fitted beside it.
    trainable: `"norm"` (default), `"output"`, `"norm_output"`,
      `"random_subset"`, `"full"`, or a callable `params -> tree of bools`.
    optimizer: an optax `GradientTransformation` (default: Adam, lr 1e-2 with
      a cosine decay over `steps`) or a method of `jaxnorm.methods`
      (`LBFGS()`, `LevenbergMarquardt()`, `Distill()`).
    steps: optimizer steps.
    chunk_steps: steps per compiled chunk (progress and checkpoints in
      between); default `min(steps, 250)`.
    batch_size: training examples per step (minibatch methods).
    seed: base seed; seed `s` uses `fold_in(key(seed), s)`.
    batching: `"auto"` (default: `jaxnorm.batching.choose` picks one of the
      others from the platform and the step's largest value), `"vmap"` (one
      program for all seeds) or `"map"` (`lax.map`, one seed at a time).
    devices: devices to spread the seeds over (`None`/0: all, or as many as there are seeds
      when they are fewer, in a single-process job).
    seed_chunk: with `"vmap"` or `"auto"`, `lax.map` over vmapped chunks of
      this many seeds per device (less memory traffic).
    start: optional start phase `start(run, state) -> state` run once before
      the first step (`jaxnorm.starts.LinearRegime()`, `Construct()`).
    checkpoint: optional `Checkpoint` to resume from and save into.
    on_chunk: optional callback receiving a `ChunkReport` after every chunk.

  Returns:
    A `FitResult`.

  Raises:
    validate.ConfigError: a bad argument (found before any compute), or a fit
      that would not fit in memory.
  """
  _check_task(task)
  if isinstance(seeds, int) and not isinstance(seeds, bool):
    seeds = range(validate.positive_int("seeds", seeds))
  seed_ids = validate.seed_ids(seeds)
  steps = validate.positive_int("steps", steps)
  chunk_steps = min(steps, 250) if chunk_steps is None else validate.positive_int(
      "chunk_steps", chunk_steps)
  validate.positive_int("batch_size", batch_size)
  validate.prng_seed("seed", seed)
  validate.one_of("batching", batching, BATCHINGS)
  if seed_chunk is not None:
    validate.positive_int("seed_chunk", seed_chunk)
  if on_chunk is not None and not callable(on_chunk):
    raise validate.ConfigError("on_chunk must be callable")
  method = _as_method(optimizer, steps)
  n = seed_ids.size
  mesh = sharding.seed_mesh(devices, seeds=n)
  sample = task.sample()
  per_device = sharding.padded_count(n, mesh) // mesh.size
  plan = programs_lib.Plan(model, (sample.shape, sample.dtype), task, method, trainable,
                           batch_size, seed, "vmap" if batching == "auto" else batching, mesh,
                           seed_chunk)
  programs = programs_lib.cache(plan)
  programs.check()
  if batching == "auto" and seed_chunk is None:
    chosen = batching_lib.choose(mesh.devices.flat[0].platform, per_device,
                                 programs.step_value_bytes, full_batch=method.full_batch,
                                 devices=mesh.local_mesh.size)
    if chosen != (plan.batching, plan.seed_chunk):
      programs = programs.rebatched(*chosen)
      plan = programs.plan
      logging.info("batching: %s%s (auto, %d seeds per device)", plan.batching,
                   f" over chunks of {plan.seed_chunk} seeds" if plan.seed_chunk else "",
                   per_device)
  memory.check(estimate_bytes(programs, per_device), "this fit")

  begin = time.perf_counter()
  consts, state = _initialise(programs, task, seed_ids, mesh)
  frozen_before = sharding.to_host(state.frozen)
  trainable_before = sharding.to_host(state.trainable) if programs.subset else None
  lengths = chunk_lengths(steps, chunk_steps)
  curve = np.full((len(lengths), state.step.shape[0]), np.nan, np.float32)
  resumed = checkpoint.restore(state, curve) if checkpoint is not None else None
  notes: dict = {}
  run = programs_lib.Run(programs, consts, mesh, programs.info, task, n, notes)
  if resumed is not None:
    done, state, curve = resumed
    notes.update(getattr(checkpoint, "notes", None) or {})
    logging.info("resumed after chunk %d/%d", done, len(lengths))
  else:
    done = 0
    prepared = False
    for phase in (start, getattr(method, "prepare", None)):
      if phase is not None:
        state = phase(run, state)
        prepared = True
    if prepared:
      state = state._replace(opt_state=run.map(
          lambda c, s: method.init(s.trainable))(state),
          previous=jax.tree.map(jnp.copy, state.trainable))   # its own buffers: state is donated
      if checkpoint is not None:
        checkpoint.save(0, len(lengths), state, curve, notes)
  if programs.subset:
    masks = sharding.to_host(state.masks)
    trainable_params = int(sum(m[0].sum() for m in masks.values()))
  else:
    trainable_params = sum(int(np.prod(v.shape[1:])) for v in jax.tree.leaves(state.trainable))

  for i in range(done, len(lengths)):
    t0 = time.perf_counter()
    state, loss = programs.chunk(lengths[i])(consts, state)
    curve[i] = loss = sharding.to_host(loss)
    if on_chunk is not None:
      live = loss[:n][np.isfinite(loss[:n])]
      speed = lengths[i] / (time.perf_counter() - t0)
      done_steps = sum(lengths[:i + 1])
      on_chunk(ChunkReport(i, len(lengths), done_steps,
                           float(np.median(live)) if live.size else float("nan"), speed,
                           int(n - live.size), (steps - done_steps) / speed))
    if checkpoint is not None:
      checkpoint.save(i + 1, len(lengths), state, curve)
  metrics = sharding.to_host(programs.eval(consts, state), n)
  diverged = sharding.to_host(state.diverged, n)
  for v in metrics.values():   # a seed whose held-out metric is not finite has diverged too
    v = np.asarray(v)
    if np.issubdtype(v.dtype, np.inexact):
      diverged = diverged | ~np.isfinite(v.reshape(n, -1)).all(axis=1)
  task_state = sharding.to_host(state.task, n)
  unchanged = trees.bit_identical(frozen_before, sharding.to_host(state.frozen))
  if programs.subset:
    after = sharding.to_host(state.trainable)
    unchanged &= all(
        np.asarray(trainable_before[p])[~masks[p]].tobytes() == after[p][~masks[p]].tobytes()
        for p in after)
  return FitResult(
      seed_ids=seed_ids, loss_curve=curve[:, :n].T, chunk_steps=np.cumsum(lengths),
      metrics={k: np.asarray(v) for k, v in metrics.items()},
      diverged=diverged,
      params=sharding.to_host(freeze.combine(state.trainable, state.frozen), n),
      batch_stats=sharding.to_host(state.model_state, n), frozen_unchanged=bool(unchanged),
      trainable_params=trainable_params, devices=mesh.size,
      seeds_per_device=sharding.shard_sizes(state.diverged), seconds=time.perf_counter() - begin,
      task_state=task_state, model=programs.model, targets=_targets(task, task_state, n),
      start_report=notes, batching=plan.batching, seed_chunk=plan.seed_chunk)


def _targets(task, task_state, n: int):
  if getattr(task, "kind", None) == "random_mlp":
    return task_state["target"]
  if getattr(task, "kind", None) == "mlp":
    return [(np.broadcast_to(w, (n,) + w.shape), np.broadcast_to(b, (n,) + b.shape))
            for w, b in task.layers]
  return None
