"""`FitSpec`: the MLP-to-MLP fits of the `fit_target` experiment, as one call of `jaxnorm.fit`.

A `FitSpec` names, in flat fields that map one-to-one onto experiment flags,
a frozen `NormMLP` (widths, norm kind, sparsity), a `Regression` task (a
random target MLP per seed, or one given target, inputs from a ball or a
Gaussian) and a fitting method by name (`adam`, `lbfgs`, `lm`, `distill`, `extract`
(distill's student read from queries of the target: `jaxnorm.extract`), or
`construct`: the exact construction from the target's weights, not fitted
further — the oracle reference a black-box method is measured against).
`fit_seeds(spec, seeds)` is a thin wrapper: it builds those objects
(`problem(spec)`) and calls `jaxnorm.fit`; everything else — batching over
seeds, sharding, chunks, checkpoints, the divergence guard, the freezing
check — is the engine's (`jaxnorm.engine`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional, Sequence

import jax
import numpy as np
import optax

from jaxnorm import domain
from jaxnorm import engine
from jaxnorm import methods
from jaxnorm import models
from jaxnorm import starts
from jaxnorm import tasks
from jaxnorm import validate

SCHEDULES = ("constant", "cosine")
INITS = ("standard", "linear", "construct")
OPTIMIZERS = ("adam", "lbfgs", "lm", "distill", "extract", "construct")
ORACLES = ("construct",)   # read the target's weights; every other method only evaluates it
BATCHINGS = engine.BATCHINGS
FULL_BATCH = ("lbfgs", "lm", "distill", "extract")   # fit a fixed batch of `fit_size` inputs
STUDENTS = ("distill", "extract")   # construct the norms from a student MLP, then LM
# distill on Gaussian inputs (no bounded domain): the shifts keep the wide units linear on
# the fixed batch scaled by this factor, so that fresh inputs a little beyond it stay covered.
GAUSSIAN_MARGIN = 1.5
# Defaults of `steps` / `chunk_steps` per optimizer (a step of `lm` costs ~1000 of `adam`).
# `construct` takes one step that leaves the constructed norms as they are (zero update).
DEFAULT_STEPS = {"adam": 2000, "lbfgs": 500, "lm": 100, "distill": 10, "extract": 10,
                 "construct": 1}
DEFAULT_CHUNK_STEPS = {"adam": 250, "lbfgs": 100, "lm": 10, "distill": 5, "extract": 5,
                       "construct": 1}


@dataclasses.dataclass(frozen=True)
class FitSpec:
  """What to fit, and how (static: one compiled program per spec).

  Attributes:
    target_widths: `[d_0, ..., d_l]` of the target network.
    hidden_widths: `[m_1, ..., m_l]`: width of the first layer of each random
      block; the frozen network has widths `[d_0, m_1, d_1, ..., m_l, d_l]`.
    norm: `"affine"`, `"batchnorm"` or `"layernorm"`.
    output_norm: the kind of the network's last norm (`""`: `norm`); e.g.
      `"affine"` after LayerNorm hidden layers (see `NormMLP.output_norm`).
    keep_prob: keep-probability `p` of each frozen weight.
    steps: optimizer steps (`None`: `DEFAULT_STEPS[optimizer]`); for
      `distill` and `extract`, the Levenberg–Marquardt steps on the norms after the
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
    fit_size: inputs of the fixed batch (`lbfgs`, `lm`, `distill`, `extract`): the
      target is evaluated on them once.
    restarts: random students tried per seed (`distill`).
    student_steps: Levenberg–Marquardt steps on the student (`distill`).
    narrow_widths: `[d_1, ..., d_{l-1}]`, the frozen network's widths between
      its blocks: the hidden widths of the MLP its norms realise (distill's
      student); empty: the target's. They need not match the target's:
      only `construct` (the oracle) rebuilds the target itself and needs them
      equal. `distill.widest_student` picks the widest the hidden widths hold.
  """

  target_widths: Sequence[int]
  hidden_widths: Sequence[int]
  norm: str = "affine"
  output_norm: str = ""
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
  narrow_widths: Sequence[int] = ()

  def __post_init__(self):
    object.__setattr__(self, "target_widths", tuple(self.target_widths))
    object.__setattr__(self, "hidden_widths", tuple(self.hidden_widths))
    object.__setattr__(self, "narrow_widths", tuple(self.narrow_widths))
    if self.steps is None and self.optimizer in DEFAULT_STEPS:
      object.__setattr__(self, "steps", DEFAULT_STEPS[self.optimizer])
    if self.chunk_steps is None and self.optimizer in DEFAULT_CHUNK_STEPS:
      object.__setattr__(self, "chunk_steps", DEFAULT_CHUNK_STEPS[self.optimizer])

  @property
  def evals(self) -> int:
    """Target evaluations per seed for fitting (the held-out set not counted)."""
    if self.optimizer in ORACLES:
      return 0
    return self.fit_size if self.optimizer in FULL_BATCH else self.batch_size * self.steps

  @property
  def network_widths(self) -> tuple[int, ...]:
    """Widths `[d_0, m_1, d_1, ..., m_l, d_l]` of the frozen network (`d_i`: `narrow_widths`)."""
    widths = [self.target_widths[0]]
    for m, d in zip(self.hidden_widths, self.student_widths[1:]):
      widths += [m, d]
    return tuple(widths)

  @property
  def student_widths(self) -> tuple[int, ...]:
    """`[d_0, d_1, ..., d_l]`: the MLP the network's norms realise exactly."""
    if not self.narrow_widths:
      return self.target_widths
    return (self.target_widths[0], *self.narrow_widths, self.target_widths[-1])

  def model(self) -> models.NormMLP:
    """The frozen network this spec fits."""
    return models.NormMLP(self.network_widths, self.norm, self.keep_prob,
                          output_norm=self.output_norm or None)


def check_spec(spec: FitSpec) -> FitSpec:
  """Validates every field of `spec`; raises `validate.ConfigError`.

  Args:
    spec: the spec to check.

  Returns:
    `spec`, unchanged.
  """
  target = validate.positive_ints("target_widths", spec.target_widths, min_len=2)
  validate.at_most("the target's depth", len(target) - 1, validate.MAX_LAYERS,
                   "a deeper MLP would take hours to compile")
  hidden = validate.positive_ints("hidden widths", spec.hidden_widths)
  if len(hidden) != len(target) - 1:
    raise validate.ConfigError(
        f"need one hidden width per target layer: {len(target) - 1} for target widths "
        f"{list(target)}, got {list(hidden)}")
  if spec.narrow_widths:
    narrow = validate.positive_ints("narrow widths", spec.narrow_widths)
    if len(narrow) != len(target) - 2:
      raise validate.ConfigError(
          f"need one narrow width between each two blocks: {len(target) - 2} for "
          f"{len(target) - 1} blocks, got {list(narrow)}")
    if reads_target(spec) and narrow != target[1:-1]:
      raise validate.ConfigError(
          f"the oracle construction rebuilds the target itself: narrow widths {list(narrow)} "
          f"must be the target's {list(target[1:-1])}")
  validate.one_of("norm kind", spec.norm, models.NORM_KINDS)
  if spec.output_norm:
    validate.one_of("output norm kind", spec.output_norm, models.NORM_KINDS)
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
  if spec.output_norm and spec.output_norm != spec.norm and spec.optimizer in (
      *STUDENTS, "construct") or spec.output_norm not in ("", spec.norm) and spec.init == "linear":
    raise validate.ConfigError(
        f"optimizer={spec.optimizer}, init={spec.init} build affine norms throughout: "
        f"output_norm={spec.output_norm} must be left out")
  if spec.optimizer in STUDENTS and (spec.norm != "affine" or spec.init != "standard"):
    raise validate.ConfigError(
        f"optimizer={spec.optimizer} constructs affine norms from its student: it needs "
        f"norm=affine and init=standard, got norm={spec.norm}, init={spec.init}")
  if spec.optimizer == "construct" and (spec.norm, spec.init, spec.input_distribution) != (
      "affine", "standard", "ball"):
    raise validate.ConfigError(
        f"optimizer=construct is the exact construction on a ball: it needs norm=affine, "
        f"init=standard and input_distribution=ball, got norm={spec.norm}, init={spec.init}, "
        f"input_distribution={spec.input_distribution}")
  if spec.init == "linear" and spec.norm != "affine":
    raise validate.ConfigError(f"init=linear needs norm=affine, got norm={spec.norm}")
  if spec.init == "construct" and (spec.norm, spec.input_distribution) != ("affine", "ball"):
    raise validate.ConfigError(
        f"init=construct needs norm=affine and input_distribution=ball (the construction is "
        f"exact on a ball), got norm={spec.norm}, input_distribution={spec.input_distribution}")
  validate.prng_seed("seed", spec.seed)
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
  if spec.optimizer in ("lm", *STUDENTS):
    # the Jacobian (twice: built per example, then stacked), per-example cotangents, J^T J
    work += rows * d_out * (2 * norms + sum(widths)) + 3 * norms ** 2
  if spec.optimizer in STUDENTS:
    student = sum(a * b + b for a, b in zip(spec.student_widths[:-1], spec.student_widths[1:]))
    work += spec.restarts * (rows * d_out * student + 2 * student ** 2)
  at_once = seeds if seed_chunk is None else min(seeds, seed_chunk)
  return 4 * (2 * seeds * state + at_once * work)


FitResult = engine.FitResult
ChunkReport = engine.ChunkReport
Checkpoint = engine.Checkpoint


@functools.lru_cache(maxsize=64)
def problem(spec: FitSpec, fixed_target: bool = False):
  """The `(model, task, method, start)` that `spec` names (the same objects for equal specs,
  so that the engine's compiled programs are reused).

  Args:
    spec: a validated spec.
    fixed_target: the task's target is given by the caller (`fit_seeds(target=)`);
      then the returned task is a function of it: call `task_for(spec, target)`.

  Returns:
    `(model, task, method, start)`; `task` is None when `fixed_target`.
  """
  method = {
      "adam": lambda: methods.Optax(make_optimizer(spec)),
      "lbfgs": lambda: methods.LBFGS(memory_size=20),
      "lm": lambda: methods.LevenbergMarquardt(),
      "distill": lambda: methods.Distill(restarts=spec.restarts,
                                         student_steps=spec.student_steps,
                                         gaussian_margin=GAUSSIAN_MARGIN),
      "extract": lambda: methods.Extract(restarts=spec.restarts,
                                         student_steps=spec.student_steps,
                                         gaussian_margin=GAUSSIAN_MARGIN),
      "construct": lambda: methods.Optax(optax.set_to_zero()),
  }[spec.optimizer]()
  init = "construct" if spec.optimizer == "construct" else spec.init
  start = {"standard": None, "linear": starts.LinearRegime(),
           "construct": starts.Construct()}[init]
  task = None if fixed_target else tasks.Regression(
      tasks.RandomMLP(spec.target_widths), inputs=spec.input_distribution, radius=spec.radius,
      eval_size=spec.eval_size, fit_size=spec.fit_size)
  return spec.model(), task, method, start


def task_for(spec: FitSpec, target) -> tasks.Regression:
  """The `Regression` task of `spec` with a given target `[(W, b), ...]` for every seed."""
  return tasks.Regression(
      [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in target],
      inputs=spec.input_distribution, radius=spec.radius, eval_size=spec.eval_size,
      fit_size=spec.fit_size)


def reads_target(spec: FitSpec) -> bool:
  """Whether `spec` reads the target's weights (`construct`, or `init="construct"`)."""
  return spec.optimizer in ORACLES or spec.init == "construct"


def make_optimizer(spec):
  """The optax optimizer of `spec.optimizer="adam"`: Adam with `spec.schedule`.

  `problem(spec)` is cached per spec, so equal specs share one transformation
  (and the engine's compiled programs).

  Args:
    spec: a `FitSpec`.

  Returns:
    The optax transformation.
  """
  if spec.schedule == "cosine":
    return methods.default_optimizer(spec.steps, spec.learning_rate)
  return optax.adam(spec.learning_rate)


def heldout_inputs(spec: FitSpec, seed_id: int) -> jax.Array:
  """The held-out inputs `[eval_size, d_0]` on which seed `seed_id` is evaluated.

  Args:
    spec: the fit's spec.
    seed_id: the seed.

  Returns:
    The same points `fit_seeds` evaluates that seed's relative MSE on.
  """
  task = problem(spec)[1]
  key = task.split_key(jax.random.fold_in(jax.random.key(spec.seed), seed_id))["eval"]
  return task.draw(key, spec.eval_size)


def chunk_lengths(spec: FitSpec) -> list[int]:
  """Steps of each compiled chunk of a fit of `spec`."""
  return engine.chunk_lengths(spec.steps, spec.chunk_steps)


def fit_seeds(spec: FitSpec, seed_ids: Sequence[int], target=None,
              on_chunk: Optional[Callable[[ChunkReport], None]] = None,
              batching: str = "auto", *, devices: Optional[int] = None,
              seed_chunk: Optional[int] = None,
              checkpoint: Optional[Checkpoint] = None) -> FitResult:
  """Fits the norms of one frozen `NormMLP` per seed to its target: `jaxnorm.fit` on `spec`.

  Args:
    spec: the `FitSpec` (validated here before any compute).
    seed_ids: integer seed ids; seed `s` always draws the same frozen network,
      target, data and held-out set, whatever else is fitted beside it.
    target: optional fixed target `[(W[out, in], b[out]), ...]` shared by all
      seeds; by default each seed draws its own random target. Either way the
      methods only evaluate it on inputs they sample; its hidden widths need
      not be the network's (only `construct`, which reads it, needs them).
    on_chunk: optional callback receiving a `ChunkReport` after every chunk.
    batching: `"auto"`, `"vmap"` or `"map"` (see `jaxnorm.fit`).
    devices: how many devices to spread the seeds over (see `jaxnorm.fit`).
    seed_chunk: seeds per vmapped chunk (see `jaxnorm.fit`).
    checkpoint: optional `Checkpoint`: resume from it, and save into it.

  Returns:
    The engine's `FitResult` (`rel_mse`, and `targets`: each seed's target).
  """
  check_spec(spec)
  if target is not None:
    dims = validate.target_layers(target)
    ends = (spec.target_widths[0], spec.target_widths[-1])
    if (dims[0], dims[-1]) != ends:
      raise validate.ConfigError(
          f"the target maps {dims[0]} inputs to {dims[-1]} outputs but the network "
          f"{ends[0]} to {ends[1]}")
    if reads_target(spec) and dims != spec.student_widths:
      raise validate.ConfigError(
          f"the oracle construction rebuilds the target in the network's widths "
          f"{list(spec.student_widths)}; the target has widths {list(dims)}")
  model, task, method, start = problem(spec, target is not None)
  if target is not None:
    task = task_for(spec, target)
  return engine.fit(model, task, seed_ids, optimizer=method, steps=spec.steps,
                    chunk_steps=spec.chunk_steps, batch_size=spec.batch_size, seed=spec.seed,
                    batching=batching, devices=devices, seed_chunk=seed_chunk, start=start,
                    checkpoint=checkpoint, on_chunk=on_chunk)
