"""Fitting many frozen networks' norms to their targets in one compiled program.

Each seed draws its own frozen `NormMLP` (and, unless a target is given, its
own random target), then only the normalization leaves are fitted by an optax
optimizer to the target's outputs on fresh inputs drawn from the domain at
every step. The seed axis is batched with `jax.vmap` (or `jax.lax.map`), steps
run under `jax.lax.scan` in chunks so progress can be reported in between.
Only the trainable partition is differentiated: no gradient is ever computed
for a frozen weight, and no optimizer state is kept for one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import construct
from jaxnorm import domain
from jaxnorm import freeze
from jaxnorm import jit
from jaxnorm import models
from jaxnorm import validate

SCHEDULES = ("constant", "cosine")
INITS = ("standard", "construct")
OPTIMIZERS = ("adam",)
BATCHINGS = ("vmap", "map")


@dataclasses.dataclass(frozen=True)
class FitSpec:
  """What to fit, and how (static: one compiled program per spec).

  Attributes:
    target_widths: `[d_0, ..., d_l]` of the target network.
    hidden_widths: `[m_1, ..., m_l]`: width of the first layer of each random
      block; the frozen network has widths `[d_0, m_1, d_1, ..., m_l, d_l]`.
    norm: `"affine"`, `"batchnorm"` or `"layernorm"`.
    keep_prob: keep-probability `p` of each frozen weight.
    steps: optimizer steps.
    chunk_steps: steps per compiled `scan` chunk (progress is reported between).
    batch_size: fresh inputs per step.
    learning_rate: peak learning rate.
    schedule: `"constant"` or `"cosine"` (decay to 0 over `steps`).
    optimizer: `"adam"`.
    input_distribution: `"ball"` or `"gaussian"` (see `domain.sample_inputs`).
    radius: radius of the input domain.
    eval_size: held-out inputs per seed for the final relative MSE.
    seed: base seed; seed `s` uses `fold_in(key(seed), s)`.
    init: `"standard"` (scale 1, shift 0) or `"construct"`: start the norms from
      the exact reconstruction of each seed's target (`jaxnorm.reconstruct_batch`,
      least-squares fit where a block is narrower than `d_in * d_out`); needs the
      target's weights, `norm="affine"` and inputs in the ball.
  """

  target_widths: Sequence[int]
  hidden_widths: Sequence[int]
  norm: str = "affine"
  keep_prob: float = 1.0
  steps: int = 2000
  chunk_steps: int = 250
  batch_size: int = 256
  learning_rate: float = 1e-2
  schedule: str = "cosine"
  optimizer: str = "adam"
  input_distribution: str = "ball"
  radius: float = 1.0
  eval_size: int = 4096
  seed: int = 0
  init: str = "standard"

  def __post_init__(self):
    object.__setattr__(self, "target_widths", tuple(self.target_widths))
    object.__setattr__(self, "hidden_widths", tuple(self.hidden_widths))

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
  validate.probability("keep probability p", spec.keep_prob)
  for name in ("steps", "chunk_steps", "batch_size", "eval_size"):
    validate.positive_int(name, getattr(spec, name))
  if spec.norm == "batchnorm" and spec.batch_size < 2:
    raise validate.ConfigError("batchnorm needs batch_size >= 2")
  validate.positive_float("learning_rate", spec.learning_rate)
  validate.positive_float("radius", spec.radius)
  validate.one_of("schedule", spec.schedule, SCHEDULES)
  validate.one_of("optimizer", spec.optimizer, OPTIMIZERS)
  validate.one_of("input distribution", spec.input_distribution, domain.INPUT_DISTRIBUTIONS)
  validate.one_of("init", spec.init, INITS)
  if spec.init == "construct" and (spec.norm, spec.input_distribution) != ("affine", "ball"):
    raise validate.ConfigError(
        f"init=construct needs norm=affine and input_distribution=ball (the construction is "
        f"exact on a ball), got norm={spec.norm}, input_distribution={spec.input_distribution}")
  if isinstance(spec.seed, bool) or not hasattr(spec.seed, "__index__") or spec.seed < 0:
    raise validate.ConfigError(f"seed must be a non-negative integer, got {spec.seed!r}")
  return spec


def make_optimizer(spec: FitSpec) -> optax.GradientTransformation:
  """The optax optimizer (with its schedule) that `spec` names."""
  if spec.schedule == "cosine":
    lr = optax.cosine_decay_schedule(spec.learning_rate, spec.steps)
  else:
    lr = spec.learning_rate
  return optax.adam(lr)


class FitState(NamedTuple):
  """One seed's state (a leading seed axis is added when batched)."""
  trainable: Any      # {path: leaf}, the normalization leaves
  frozen: Any         # {path: leaf}, everything else; passed through untouched
  batch_stats: Any    # BatchNorm running statistics ({} for other kinds)
  opt_state: Any      # optimizer state for `trainable` only
  step: jax.Array
  data_key: jax.Array
  target: Any         # [(W, b), ...] this seed's target
  target_var: jax.Array  # variance of the target's outputs on the held-out set
  eval_x: jax.Array   # held-out inputs


class FitResult(NamedTuple):
  """Per-seed results of `fit_seeds` (numpy arrays, leading axis = seed).

  Attributes:
    seed_ids: the seed ids fitted, `[S]`.
    loss_curve: mean training relative MSE of each chunk, `[S, n_chunks]`.
    chunk_steps: the step count at the end of each chunk, `[n_chunks]`.
    rel_mse: held-out relative MSE (MSE / variance of the target output), `[S]`.
    params: final parameter trees (leading seed axis).
    batch_stats: final BatchNorm statistics (`{}` unless norm="batchnorm").
    targets: each seed's target `[(W[S, out, in], b[S, out]), ...]`.
    frozen_unchanged: every frozen leaf is bit-identical before and after.
    trainable_params: tunable numbers per seed.
    seconds: wall time of the whole fit, compilation included.
  """
  seed_ids: np.ndarray
  loss_curve: np.ndarray
  chunk_steps: np.ndarray
  rel_mse: np.ndarray
  params: Any
  batch_stats: Any
  targets: Any
  frozen_unchanged: bool
  trainable_params: int
  seconds: float


class ChunkReport(NamedTuple):
  """Progress after one chunk, passed to the `on_chunk` callback."""
  chunk: int
  n_chunks: int
  step: int
  median_loss: float
  steps_per_second: float


def _apply(model, spec, params, batch_stats, x, train):
  variables = {"params": params}
  if spec.norm == "batchnorm":
    variables["batch_stats"] = batch_stats
    if train:
      out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
      return out, updates["batch_stats"]
  return model.apply(variables, x), batch_stats


def _seed_keys(spec: FitSpec, seed_id):
  """Keys of seed `seed_id`: (frozen net, target, data stream, held-out set)."""
  return jax.random.split(jax.random.fold_in(jax.random.key(spec.seed), seed_id), 4)


def heldout_inputs(spec: FitSpec, seed_id: int) -> jax.Array:
  """The held-out inputs `[eval_size, d_0]` on which seed `seed_id` is evaluated.

  Args:
    spec: the fit's spec.
    seed_id: the seed.

  Returns:
    The same points `fit_seeds` evaluates that seed's relative MSE on.
  """
  return domain.sample_inputs(_seed_keys(spec, seed_id)[3], spec.eval_size,
                              spec.target_widths[0], spec.radius, spec.input_distribution)


def _init_seed(spec: FitSpec, seed_id, fixed_target):
  model, tx = spec.model(), make_optimizer(spec)
  k_net, k_target, k_data, k_eval = _seed_keys(spec, seed_id)
  d_in = spec.target_widths[0]
  variables = model.init(k_net, jnp.zeros((1, d_in)))
  params = variables["params"]
  trainable, frozen = freeze.partition(params, freeze.norm_mask(params))
  target = fixed_target if fixed_target is not None else models.init_target(
      k_target, spec.target_widths)
  eval_x = domain.sample_inputs(k_eval, spec.eval_size, d_in, spec.radius,
                                spec.input_distribution)
  target_var = jnp.var(models.apply_target(target, eval_x), axis=0).mean()
  return FitState(trainable, frozen, variables.get("batch_stats", {}), tx.init(trainable),
                  jnp.zeros((), jnp.int32), k_data, target, target_var, eval_x)


def _rel_mse(out, y, target_var):
  return jnp.mean((out - y) ** 2) / (target_var + 1e-12)


def _run_chunk(spec: FitSpec, length: int, state: FitState):
  """`length` optimizer steps of one seed; returns (state, mean loss)."""
  model, tx = spec.model(), make_optimizer(spec)

  def loss_fn(trainable, frozen, batch_stats, x, y, target_var):
    out, batch_stats = _apply(model, spec, freeze.combine(trainable, frozen), batch_stats,
                              x, train=True)
    return _rel_mse(out, y, target_var), batch_stats

  def step(state: FitState, _):
    x = domain.sample_inputs(jax.random.fold_in(state.data_key, state.step), spec.batch_size,
                             spec.target_widths[0], spec.radius, spec.input_distribution)
    y = models.apply_target(state.target, x)
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, state.frozen, state.batch_stats, x, y, state.target_var)
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    return state._replace(trainable=trainable, batch_stats=batch_stats, opt_state=opt_state,
                          step=state.step + 1), loss

  state, losses = jax.lax.scan(step, state, None, length=length)
  return state, losses.mean()


def _evaluate(spec: FitSpec, state: FitState):
  model = spec.model()
  out, _ = _apply(model, spec, freeze.combine(state.trainable, state.frozen),
                  state.batch_stats, state.eval_x, train=False)
  return _rel_mse(out, models.apply_target(state.target, state.eval_x), state.target_var)


def _batched(fn: Callable, batching: str, fixed_args: int = 0) -> Callable:
  """Maps `fn(*fixed, per_seed)` over the leading axis of `per_seed`."""
  if batching == "vmap":
    return jax.vmap(fn, in_axes=(None,) * fixed_args + (0,))

  def mapped(*args):
    fixed, per_seed = args[:fixed_args], args[fixed_args]
    return jax.lax.map(lambda s: fn(*fixed, s), per_seed)
  return mapped


@functools.lru_cache(maxsize=64)
def _compiled(spec: FitSpec, batching: str, length: int):
  return jax.jit(_batched(functools.partial(_run_chunk, spec, length), batching),
                 donate_argnums=0)


@functools.lru_cache(maxsize=64)
def _compiled_init(spec: FitSpec, batching: str, fixed_target: bool):
  if fixed_target:
    return jit.one_shot_jit(_batched(lambda t, s: _init_seed(spec, s, t), batching, fixed_args=1))
  return jit.one_shot_jit(_batched(lambda s: _init_seed(spec, s, None), batching))


@functools.lru_cache(maxsize=64)
def _compiled_eval(spec: FitSpec, batching: str):
  return jit.one_shot_jit(_batched(functools.partial(_evaluate, spec), batching))


def _constructed_norms(spec: FitSpec, state: FitState):
  """Per-seed norms of the reconstruction of each seed's target (batched `cg`)."""
  n_layers = len(spec.network_widths) - 1
  frozen = [jnp.swapaxes(state.frozen[(f"dense_{k}", "kernel")], 1, 2) for k in range(n_layers)]
  rec = construct.reconstruct_batch(state.target, frozen, radius=spec.radius, allow_inexact=True)
  trainable = {}
  for k in range(n_layers):
    trainable[(f"norm_{k}", "scale")] = rec.gammas[k]
    trainable[(f"norm_{k}", "bias")] = rec.betas[k]
  if set(trainable) != set(state.trainable):
    raise AssertionError("constructed norms do not match the model's norm leaves")
  return trainable


def _to_host(tree):
  return jax.tree.map(np.asarray, tree)


def _bit_identical(a, b) -> bool:
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    return False
  return all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
             for x, y in zip(map(np.asarray, leaves_a), map(np.asarray, leaves_b)))


def fit_seeds(spec: FitSpec, seed_ids: Sequence[int], target=None,
              on_chunk: Optional[Callable[[ChunkReport], None]] = None,
              batching: str = "vmap") -> FitResult:
  """Fits the normalization leaves of one frozen network per seed, all at once.

  Args:
    spec: the `FitSpec` (validated here before any compute).
    seed_ids: integer seed ids; seed `s` always draws the same frozen network,
      target, data and held-out set, whatever else is fitted beside it.
    target: optional fixed target `[(W[out, in], b[out]), ...]` shared by all
      seeds; by default each seed draws its own random target.
    on_chunk: optional callback receiving a `ChunkReport` after every chunk.
    batching: `"vmap"` (one program for all seeds) or `"map"` (`jax.lax.map`).

  Returns:
    A `FitResult`.
  """
  check_spec(spec)
  seed_ids = np.asarray(list(seed_ids))
  if seed_ids.size == 0:
    raise validate.ConfigError("need at least one seed, got 0")
  if seed_ids.ndim != 1 or not np.issubdtype(seed_ids.dtype, np.integer) or (seed_ids < 0).any():
    raise validate.ConfigError(f"seed ids must be non-negative integers, got {seed_ids.tolist()}")
  validate.one_of("batching", batching, BATCHINGS)
  if target is not None:
    validate.target_layers(target, spec.target_widths)
    target = [(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)) for w, b in target]

  start = time.perf_counter()
  ids = jnp.asarray(seed_ids, jnp.int32)
  init = _compiled_init(spec, batching, target is not None)
  state = init(target, ids) if target is not None else init(ids)
  if spec.init == "construct":
    state = state._replace(trainable=_constructed_norms(spec, state))
  frozen_before = _to_host(state.frozen)
  trainable_params = sum(int(np.prod(v.shape[1:])) for v in jax.tree.leaves(state.trainable))

  lengths = [spec.chunk_steps] * (spec.steps // spec.chunk_steps)
  if spec.steps % spec.chunk_steps:
    lengths.append(spec.steps % spec.chunk_steps)
  curve, ends, done = [], [], 0
  for i, length in enumerate(lengths):
    t0 = time.perf_counter()
    state, loss = _compiled(spec, batching, length)(state)
    loss = np.asarray(loss)
    done += length
    curve.append(loss)
    ends.append(done)
    if on_chunk is not None:
      on_chunk(ChunkReport(i, len(lengths), done, float(np.median(loss)),
                           length / (time.perf_counter() - t0)))
  rel_mse = np.asarray(_compiled_eval(spec, batching)(state))
  frozen_unchanged = _bit_identical(frozen_before, _to_host(state.frozen))
  params = _to_host(freeze.combine(state.trainable, state.frozen))
  return FitResult(seed_ids=seed_ids, loss_curve=np.stack(curve, axis=1),
                   chunk_steps=np.asarray(ends), rel_mse=rel_mse, params=params,
                   batch_stats=_to_host(state.batch_stats), targets=_to_host(state.target),
                   frozen_unchanged=frozen_unchanged, trainable_params=trainable_params,
                   seconds=time.perf_counter() - start)
