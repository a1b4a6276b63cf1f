"""Fitting many frozen networks' norms to their targets in one compiled program.

Each seed draws its own frozen `NormMLP` (and, unless a target is given, its
own random target), then only the normalization leaves are fitted to the
target's outputs — the target is a black box, evaluated on inputs drawn from
the domain (`models.apply_target(target, x)`), its weights never read. Methods
(`FitSpec.optimizer`):

* `adam`: Adam on fresh inputs at every step (`batch_size * steps` target
  evaluations per seed);
* `lbfgs`: `optax.lbfgs` with its zoom line search on a fixed batch of
  `fit_size` inputs (evaluated once);
* `lm`: Levenberg–Marquardt on that fixed batch (`jaxnorm.second_order`);
* `distill`: fit a target-shaped student MLP to the fixed batch (best of
  `restarts`), write it into the norms by the exact construction, then
  Levenberg–Marquardt on the norms (`jaxnorm.distill`).

The seed axis is batched with `jax.vmap` (or `jax.lax.map`), steps run under
`jax.lax.scan` in chunks so progress can be reported in between. Only the
trainable partition is differentiated: no gradient is ever computed for a
frozen weight, and no optimizer state is kept for one. A seed whose loss or
parameters become non-finite is marked diverged and keeps its last finite
parameters; the others carry on.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnorm import construct_batch
from jaxnorm import domain
from jaxnorm import freeze
from jaxnorm import jit
from jaxnorm import memory
from jaxnorm import models
from jaxnorm import sharding
from jaxnorm import steps
from jaxnorm import trees
from jaxnorm import validate

SCHEDULES = ("constant", "cosine")
INITS = ("standard", "linear", "construct")
OPTIMIZERS = ("adam", "lbfgs", "lm", "distill")
BATCHINGS = ("vmap", "map")
# distill on Gaussian inputs (no bounded domain): the shifts keep the wide units linear on
# the fixed batch scaled by this factor, so that fresh inputs a little beyond it stay covered.
GAUSSIAN_MARGIN = 1.5
# Defaults of `steps` / `chunk_steps` per optimizer (a step of `lm` costs ~1000 of `adam`).
DEFAULT_STEPS = {"adam": 2000, "lbfgs": 500, "lm": 100, "distill": 10}
DEFAULT_CHUNK_STEPS = {"adam": 250, "lbfgs": 100, "lm": 10, "distill": 5}


@dataclasses.dataclass(frozen=True)
class FitSpec:
  """What to fit, and how (static: one compiled program per spec).

  Attributes:
    target_widths: `[d_0, ..., d_l]` of the target network.
    hidden_widths: `[m_1, ..., m_l]`: width of the first layer of each random
      block; the frozen network has widths `[d_0, m_1, d_1, ..., m_l, d_l]`.
    norm: `"affine"`, `"batchnorm"` or `"layernorm"`.
    keep_prob: keep-probability `p` of each frozen weight.
    steps: optimizer steps (`None`: `DEFAULT_STEPS[optimizer]`); for
      `distill`, the Levenberg–Marquardt steps on the norms after the
      construction.
    chunk_steps: steps per compiled `scan` chunk (progress is reported
      between; `None`: `DEFAULT_CHUNK_STEPS[optimizer]`).
    batch_size: fresh inputs per step (`adam`).
    learning_rate: peak learning rate (`adam`; `lbfgs` uses its line search).
    schedule: `"constant"` or `"cosine"` (decay to 0 over `steps`; `adam`).
    optimizer: one of `OPTIMIZERS` (see the module docstring).
    input_distribution: `"ball"` or `"gaussian"` (see `domain.sample_inputs`).
    radius: radius of the input domain.
    eval_size: held-out inputs per seed for the final relative MSE.
    seed: base seed; seed `s` uses `fold_in(key(seed), s)`.
    init: `"standard"` (scale 1, shift 0); `"linear"`: shifts that put every
      unit of each block's wide layer in ReLU's linear regime, computed from
      the frozen weights alone (`distill.linear_regime_norms`; `norm="affine"`);
      or `"construct"`: the exact reconstruction of each seed's target
      (`jaxnorm.reconstruct_batch`, least-squares fit where a block is narrower
      than `d_in * d_out`) — an oracle: it reads the target's weights; needs
      `norm="affine"` and inputs in the ball. `distill` makes its own start and
      needs `"standard"`.
    fit_size: inputs of the fixed batch (`lbfgs`, `lm`, `distill`): the
      target is evaluated on them once.
    restarts: random students tried per seed (`distill`).
    student_steps: Levenberg–Marquardt steps on the student (`distill`).
  """

  target_widths: Sequence[int]
  hidden_widths: Sequence[int]
  norm: str = "affine"
  keep_prob: float = 1.0
  steps: Optional[int] = None
  chunk_steps: Optional[int] = None
  batch_size: int = 256
  learning_rate: float = 1e-2
  schedule: str = "cosine"
  optimizer: str = "adam"
  input_distribution: str = "ball"
  radius: float = 1.0
  eval_size: int = 4096
  seed: int = 0
  init: str = "standard"
  fit_size: int = 512
  restarts: int = 16
  student_steps: int = 100

  def __post_init__(self):
    object.__setattr__(self, "target_widths", tuple(self.target_widths))
    object.__setattr__(self, "hidden_widths", tuple(self.hidden_widths))
    if self.steps is None and self.optimizer in DEFAULT_STEPS:
      object.__setattr__(self, "steps", DEFAULT_STEPS[self.optimizer])
    if self.chunk_steps is None and self.optimizer in DEFAULT_CHUNK_STEPS:
      object.__setattr__(self, "chunk_steps", DEFAULT_CHUNK_STEPS[self.optimizer])

  @property
  def evals(self) -> int:
    """Target evaluations per seed for fitting (the held-out set not counted)."""
    return self.fit_size if self.optimizer in steps.FULL_BATCH else self.batch_size * self.steps

  @property
  def network_widths(self) -> tuple[int, ...]:
    """Widths `[d_0, m_1, d_1, ..., m_l, d_l]` of the frozen network."""
    widths = [self.target_widths[0]]
    for m, d in zip(self.hidden_widths, self.target_widths[1:]):
      widths += [m, d]
    return tuple(widths)

  def model(self) -> models.NormMLP:
    """The frozen network this spec fits."""
    return models.NormMLP(self.network_widths, self.norm, self.keep_prob)


def check_spec(spec: FitSpec) -> FitSpec:
  """Validates every field of `spec`; raises `validate.ConfigError`.

  Args:
    spec: the spec to check.

  Returns:
    `spec`, unchanged.
  """
  target = validate.positive_ints("target_widths", spec.target_widths, min_len=2)
  hidden = validate.positive_ints("hidden widths", spec.hidden_widths)
  if len(hidden) != len(target) - 1:
    raise validate.ConfigError(
        f"need one hidden width per target layer: {len(target) - 1} for target widths "
        f"{list(target)}, got {list(hidden)}")
  validate.one_of("norm kind", spec.norm, models.NORM_KINDS)
  validate.one_of("optimizer", spec.optimizer, OPTIMIZERS)
  validate.probability("keep probability p", spec.keep_prob)
  for name in ("steps", "chunk_steps", "batch_size", "eval_size", "fit_size", "restarts",
               "student_steps"):
    validate.positive_int(name, getattr(spec, name))
  if spec.norm == "batchnorm" and spec.batch_size < 2:
    raise validate.ConfigError("batchnorm needs batch_size >= 2")
  validate.positive_float("learning_rate", spec.learning_rate)
  validate.positive_float("radius", spec.radius)
  validate.one_of("schedule", spec.schedule, SCHEDULES)
  validate.one_of("input distribution", spec.input_distribution, domain.INPUT_DISTRIBUTIONS)
  validate.one_of("init", spec.init, INITS)
  if spec.optimizer == "distill" and (spec.norm != "affine" or spec.init != "standard"):
    raise validate.ConfigError(
        f"optimizer=distill constructs affine norms from its student: it needs norm=affine and "
        f"init=standard, got norm={spec.norm}, init={spec.init}")
  if spec.init == "linear" and spec.norm != "affine":
    raise validate.ConfigError(f"init=linear needs norm=affine, got norm={spec.norm}")
  if spec.init == "construct" and (spec.norm, spec.input_distribution) != ("affine", "ball"):
    raise validate.ConfigError(
        f"init=construct needs norm=affine and input_distribution=ball (the construction is "
        f"exact on a ball), got norm={spec.norm}, input_distribution={spec.input_distribution}")
  if isinstance(spec.seed, bool) or not hasattr(spec.seed, "__index__") or spec.seed < 0:
    raise validate.ConfigError(f"seed must be a non-negative integer, got {spec.seed!r}")
  return spec


def estimate_bytes(spec: FitSpec, seeds: int, seed_chunk: Optional[int] = None) -> int:
  """Estimated peak memory of fitting `seeds` seeds of `spec` on one device (float32).

  Every seed's state stays resident (twice: a chunk's input and output); the
  working set of one step (activations and their gradients, the fixed batch,
  a Jacobian for `lm`/`distill`) is needed by the seeds computed at once — all
  of them under `vmap`, `seed_chunk` of them under chunking. The estimate
  errs high; tests compare it with XLA's own memory analysis.

  Args:
    spec: the fit (validated).
    seeds: seeds on the device.
    seed_chunk: seeds computed at once (`None`: all).

  Returns:
    Bytes.
  """
  widths = spec.network_widths
  d_in, d_out = spec.target_widths[0], spec.target_widths[-1]
  weights = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
  norms = 2 * sum(widths[1:])
  target = sum(a * b + b for a, b in zip(spec.target_widths[:-1], spec.target_widths[1:]))
  opt = {"adam": 2 * norms, "lbfgs": 42 * norms}.get(spec.optimizer, 4)
  fixed = spec.fit_size * (d_in + d_out) if spec.optimizer in FULL_BATCH else 0
  state = weights + norms * 2 + opt + target + spec.eval_size * d_in + fixed
  rows = spec.fit_size if spec.optimizer in FULL_BATCH else spec.batch_size
  # activations: pre- and post-norm values, masks and their gradients per unit
  work = max(6 * rows * sum(widths), 2 * spec.eval_size * max(widths))
  if spec.optimizer in ("lm", "distill"):
    # the Jacobian (twice: built per example, then stacked), per-example cotangents, J^T J
    work += rows * d_out * (2 * norms + sum(widths)) + 3 * norms ** 2
  if spec.optimizer == "distill":
    student = target
    work += spec.restarts * (rows * d_out * student + 2 * student ** 2)
  at_once = seeds if seed_chunk is None else min(seeds, seed_chunk)
  return 4 * (2 * seeds * state + at_once * work)


make_optimizer = steps.make_optimizer
FULL_BATCH = steps.FULL_BATCH
FitState = steps.FitState


class FitResult(NamedTuple):
  """Per-seed results of `fit_seeds` (numpy arrays, leading axis = seed).

  Attributes:
    seed_ids: the seed ids fitted, `[S]`.
    loss_curve: mean training relative MSE of each chunk, `[S, n_chunks]`
      (NaN once a seed has diverged).
    chunk_steps: the step count at the end of each chunk, `[n_chunks]`.
    rel_mse: held-out relative MSE (MSE / variance of the target output), `[S]`,
      of each seed's last finite parameters.
    diverged: `[S]` bool, the seed's loss or parameters went non-finite.
    params: final parameter trees (leading seed axis).
    batch_stats: final BatchNorm statistics (`{}` unless norm="batchnorm").
    targets: each seed's target `[(W[S, out, in], b[S, out]), ...]`.
    frozen_unchanged: every frozen leaf is bit-identical before and after.
    trainable_params: tunable numbers per seed.
    evals: target evaluations per seed used for fitting (`FitSpec.evals`).
    devices: devices the seeds were spread over.
    seeds_per_device: seeds (padding included) held by each local device.
    seconds: wall time of the whole fit, compilation included.
  """
  seed_ids: np.ndarray
  loss_curve: np.ndarray
  chunk_steps: np.ndarray
  rel_mse: np.ndarray
  diverged: np.ndarray
  params: Any
  batch_stats: Any
  targets: Any
  frozen_unchanged: bool
  trainable_params: int
  evals: int
  devices: int
  seeds_per_device: tuple[int, ...]
  seconds: float


class ChunkReport(NamedTuple):
  """Progress after one chunk, passed to the `on_chunk` callback."""
  chunk: int
  n_chunks: int
  step: int
  median_loss: float        # over the seeds that have not diverged
  steps_per_second: float
  diverged: int = 0         # seeds diverged so far


def heldout_inputs(spec: FitSpec, seed_id: int) -> jax.Array:
  """The held-out inputs `[eval_size, d_0]` on which seed `seed_id` is evaluated.

  Args:
    spec: the fit's spec.
    seed_id: the seed.

  Returns:
    The same points `fit_seeds` evaluates that seed's relative MSE on.
  """
  return domain.sample_inputs(steps.seed_keys(spec, seed_id)[3], spec.eval_size,
                              spec.target_widths[0], spec.radius, spec.input_distribution)


def _batched(fn: Callable, batching: str, mesh, seed_chunk: Optional[int],
             fixed_args: int = 0) -> Callable:
  """Maps `fn(*fixed, per_seed)` over the leading axis of `per_seed`, split over `mesh`.

  On each device: one `vmap` over its seeds, or `lax.map` one seed at a time
  (`batching="map"`), or `lax.map` over vmapped chunks of `seed_chunk` seeds.
  """
  if batching == "vmap" and seed_chunk is None:
    local = jax.vmap(fn, in_axes=(None,) * fixed_args + (0,))
  else:
    def local(*args):
      fixed, per_seed = args[:fixed_args], args[fixed_args]
      return jax.lax.map(lambda s: fn(*fixed, s), per_seed, batch_size=seed_chunk)
  return sharding.over_seeds(local, mesh, fixed_args)


@functools.lru_cache(maxsize=64)
def _compiled(spec: FitSpec, layout, length: int):
  return jax.jit(_batched(functools.partial(steps.run_chunk, spec, length), *layout),
                 donate_argnums=0)


@functools.lru_cache(maxsize=64)
def _compiled_init(spec: FitSpec, layout, fixed_target: bool):
  if fixed_target:
    return jit.one_shot_jit(_batched(lambda t, s: steps.init_seed(spec, s, t), *layout,
                                     fixed_args=1))
  return jit.one_shot_jit(_batched(lambda s: steps.init_seed(spec, s, None), *layout))


@functools.lru_cache(maxsize=64)
def _compiled_eval(spec: FitSpec, layout):
  return jit.one_shot_jit(_batched(functools.partial(steps.evaluate, spec), *layout))


@functools.lru_cache(maxsize=64)
def _compiled_start(spec: FitSpec, layout, what: str):
  fn = {"linear": steps.linear_start, "students": steps.fit_students,
        "opt_state": lambda spec, s: steps.init_opt_state(spec, s.trainable)}[what]
  return jax.jit(_batched(functools.partial(fn, spec), *layout))


def _constructed_norms(spec: FitSpec, state: FitState, layers, mesh, data=None):
  """Per-seed norms that realise `layers` `[(W[S, out, in], b[S, out]), ...]` (batched `cg`).

  The domain is the ball of radius `spec.radius`, or the points `data` `[S, n, d_0]`.
  """
  n_layers = len(spec.network_widths) - 1
  frozen = [jnp.swapaxes(state.frozen[(f"dense_{k}", "kernel")], 1, 2) for k in range(n_layers)]
  domain_arg = {"radius": spec.radius} if data is None else {"data": data}
  rec = construct_batch.reconstruct_batch(layers, frozen, allow_inexact=True, mesh=mesh, **domain_arg)
  trainable = {}
  for k in range(n_layers):
    trainable[(f"norm_{k}", "scale")] = rec.gammas[k]
    trainable[(f"norm_{k}", "bias")] = rec.betas[k]
  if set(trainable) != set(state.trainable):
    raise AssertionError("constructed norms do not match the model's norm leaves")
  return trainable


def _distilled(spec: FitSpec, layout, state: FitState) -> FitState:
  """`distill`: fit students, construct their norms; a failed seed keeps its norms, diverged.

  The construction holds on the ball of radius `spec.radius` (`"ball"` inputs),
  or (`"gaussian"`) on the fixed batch scaled by `GAUSSIAN_MARGIN`.
  """
  t0 = time.perf_counter()
  students, loss = _compiled_start(spec, layout, "students")(state)
  loss = sharding.to_host(loss)
  t1 = time.perf_counter()
  data = None if spec.input_distribution == "ball" else GAUSSIAN_MARGIN * state.fit_x
  trainable = _constructed_norms(spec, state, students, layout[1], data)
  ok = np.isfinite(loss)
  for v in sharding.to_host(trainable).values():
    ok &= np.isfinite(v).reshape(len(ok), -1).all(axis=1)
  logging.info("distill: students of %d seeds in %.1f s (relative MSE on the fixed batch: "
               "median %.3g, max %.3g), norms constructed in %.1f s; %d failed", ok.size,
               t1 - t0, np.median(loss), np.max(loss), time.perf_counter() - t1, (~ok).sum())
  keep = sharding.distribute(ok, layout[1])
  trainable = {p: jnp.where(keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, state.trainable[p])
               for p, v in trainable.items()}
  return state._replace(trainable=trainable, diverged=state.diverged | ~keep)


class Checkpoint(Protocol):
  """Where `fit_seeds` saves and resumes a fit (`jaxnorm.checkpoint.FitSlot`)."""

  def restore(self, like_state: FitState, like_curve: np.ndarray
              ) -> Optional[tuple[int, FitState, np.ndarray]]:
    """The saved `(chunks_done, state, curve)`, or None; the `like_*` give shapes, shardings."""

  def save(self, chunks_done: int, n_chunks: int, state: FitState, curve: np.ndarray) -> None:
    """Called after a costly start phase (`chunks_done=0`) and after every chunk; may raise."""


def chunk_lengths(spec: FitSpec) -> list[int]:
  """Steps of each compiled chunk of a fit of `spec`."""
  lengths = [spec.chunk_steps] * (spec.steps // spec.chunk_steps)
  if spec.steps % spec.chunk_steps:
    lengths.append(spec.steps % spec.chunk_steps)
  return lengths


def fit_seeds(spec: FitSpec, seed_ids: Sequence[int], target=None,
              on_chunk: Optional[Callable[[ChunkReport], None]] = None,
              batching: str = "vmap", *, devices: Optional[int] = None,
              seed_chunk: Optional[int] = None,
              checkpoint: Optional[Checkpoint] = None) -> FitResult:
  """Fits the normalization leaves of one frozen network per seed, all at once.

  The seeds are split over `devices` devices (`jax.shard_map` over a one-axis
  mesh; padded to a multiple of the device count, the padding dropped from
  the results); each device runs the batched program on its share.

  Args:
    spec: the `FitSpec` (validated here before any compute).
    seed_ids: integer seed ids; seed `s` always draws the same frozen network,
      target, data and held-out set, whatever else is fitted beside it.
    target: optional fixed target `[(W[out, in], b[out]), ...]` shared by all
      seeds; by default each seed draws its own random target. Either way the
      methods only evaluate it on inputs they sample.
    on_chunk: optional callback receiving a `ChunkReport` after every chunk.
    batching: `"vmap"` (one program for all seeds) or `"map"` (`jax.lax.map`).
    devices: how many devices to spread the seeds over (`None`/0: all).
    seed_chunk: with `batching="vmap"`, `lax.map` over vmapped chunks of this
      many seeds per device instead of one `vmap` (less memory traffic).
    checkpoint: optional `Checkpoint`: resume from it, and save into it.

  Returns:
    A `FitResult`.
  """
  check_spec(spec)
  seed_ids = validate.seed_ids(seed_ids)
  validate.one_of("batching", batching, BATCHINGS)
  if seed_chunk is not None:
    validate.positive_int("seed_chunk", seed_chunk)
  if target is not None:
    validate.target_layers(target, spec.target_widths)
  mesh = sharding.seed_mesh(devices)
  layout = (batching, mesh, seed_chunk)
  n = seed_ids.size
  memory.check(estimate_bytes(spec, sharding.padded_count(n, mesh) // mesh.size,
                              1 if batching == "map" else seed_chunk), "this fit")

  start = time.perf_counter()
  ids = sharding.distribute(sharding.pad_seed_ids(seed_ids, mesh).astype(np.int32), mesh)
  init = _compiled_init(spec, layout, target is not None)
  if target is not None:
    target = sharding.replicate([(np.asarray(w, np.float32), np.asarray(b, np.float32))
                                 for w, b in target], mesh)
    state = init(target, ids)
  else:
    state = init(ids)
  frozen_before = sharding.to_host(state.frozen)
  lengths = chunk_lengths(spec)
  curve = np.full((len(lengths), ids.shape[0]), np.nan, np.float32)
  resumed = checkpoint.restore(state, curve) if checkpoint is not None else None
  if resumed is not None:
    done_chunks, state, curve = resumed
    logging.info("resumed after chunk %d/%d", done_chunks, len(lengths))
  else:
    if spec.init == "construct":   # oracle: reads the target's weights
      state = state._replace(trainable=_constructed_norms(spec, state, state.target, mesh))
    elif spec.init == "linear":
      state = _compiled_start(spec, layout, "linear")(state)
    if spec.optimizer == "distill":
      state = _distilled(spec, layout, state)
    if spec.init != "standard" or spec.optimizer == "distill":
      state = state._replace(opt_state=_compiled_start(spec, layout, "opt_state")(state))
    done_chunks = 0
    if checkpoint is not None and (spec.init != "standard" or spec.optimizer == "distill"):
      checkpoint.save(0, len(lengths), state, curve)
  trainable_params = sum(int(np.prod(v.shape[1:])) for v in jax.tree.leaves(state.trainable))

  for i in range(done_chunks, len(lengths)):
    t0 = time.perf_counter()
    state, loss = _compiled(spec, layout, lengths[i])(state)
    curve[i] = loss = sharding.to_host(loss)
    if on_chunk is not None:
      live = loss[:n][np.isfinite(loss[:n])]
      on_chunk(ChunkReport(i, len(lengths), sum(lengths[:i + 1]),
                           float(np.median(live)) if live.size else float("nan"),
                           lengths[i] / (time.perf_counter() - t0), int(n - live.size)))
    if checkpoint is not None:
      checkpoint.save(i + 1, len(lengths), state, curve)
  rel_mse = sharding.to_host(_compiled_eval(spec, layout)(state), n)
  frozen_unchanged = trees.bit_identical(frozen_before, sharding.to_host(state.frozen))
  params = sharding.to_host(freeze.combine(state.trainable, state.frozen), n)
  return FitResult(seed_ids=seed_ids, loss_curve=curve[:, :n].T,
                   chunk_steps=np.cumsum(lengths), rel_mse=rel_mse,
                   diverged=sharding.to_host(state.diverged, n), params=params,
                   batch_stats=sharding.to_host(state.batch_stats, n),
                   targets=sharding.to_host(state.target, n),
                   frozen_unchanged=frozen_unchanged, trainable_params=trainable_params,
                   evals=spec.evals, devices=mesh.size,
                   seeds_per_device=sharding.shard_sizes(state.diverged),
                   seconds=time.perf_counter() - start)
