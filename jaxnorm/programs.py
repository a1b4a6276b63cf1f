"""The per-seed programs of a fit, batched over seeds, sharded, compiled, and cached by plan.

A `Plan` is everything a fit's compiled programs depend on (model, input
shape, task, method, trainable choice, batch size, base seed, batching,
mesh); `Programs(plan)` holds the per-seed functions — `init_seed`,
`objective`, the guarded `run_chunk`, `evaluate` — and their batched, sharded,
compiled forms, plus what is checked or traced once per plan (`check`,
`footprint`). `cache` keeps the programs of recent plans, so refitting the same
problem does not recompile; unhashable plans are never cached (a cache keyed
by `id()` could hand back a stale program). `jaxnorm.engine.fit` drives them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import adapters
from jaxnorm import freeze
from jaxnorm import jit
from jaxnorm import memory
from jaxnorm import methods
from jaxnorm import selection
from jaxnorm import sharding
from jaxnorm import trees
from jaxnorm import validate


class SeedState(NamedTuple):
  """One seed's state (a leading seed axis is added when batched)."""
  trainable: Any      # {path: leaf}, the leaves being fitted
  frozen: Any         # {path: leaf}, everything else; passed through untouched
  model_state: Any    # the model's other variables ({"batch_stats": ...} or {})
  opt_state: Any      # the method's state, for `trainable` only
  masks: Any          # element masks of `trainable` (random_subset), else None
  step: jax.Array
  data_key: jax.Array
  task: Any           # the task's per-seed state (held-out set, target, fixed batch)
  diverged: jax.Array  # bool: loss or parameters went non-finite; frozen since
  previous: Any       # `trainable` before the last update (its loss was finite)


def _hashable(obj):
  try:
    hash(obj)
    return True
  except TypeError:
    return False


def _cached(fn):
  """`functools.lru_cache` for hashable arguments; a plain call otherwise (never a stale hit)."""
  cached = functools.lru_cache(maxsize=64)(fn)

  @functools.wraps(fn)
  def call(*args):
    return cached(*args) if _hashable(args) else fn(*args)
  call.cache_clear = cached.cache_clear
  return call


def model_info(model) -> dict[str, Any]:
  """What methods and starts may need to know of the model (affine `NormMLP` layout)."""
  from jaxnorm import models  # pylint: disable=g-import-not-at-top
  if isinstance(model, models.NormMLP):
    n_layers = len(model.widths) - 1
    out = model.norm if model.output_norm is None else model.output_norm
    info = {"description": f"NormMLP(norm={model.norm!r}, {n_layers} layers"
                           + (f", output_norm={out!r})" if out != model.norm else ")"),
            "widths": tuple(model.widths)}
    if n_layers % 2 == 0:
      info["norm_mlp"] = (model.norm if out == model.norm else "mixed", n_layers // 2 + 1)
    return info
  return {"description": type(model).__name__}


@_cached
def _adapter(model, sample_shape, sample_dtype):
  return adapters.as_model(model, jax.ShapeDtypeStruct(sample_shape, sample_dtype))


@dataclasses.dataclass(frozen=True)
class Plan:
  """Everything the compiled programs depend on (hashable, so that they are cached)."""
  model: Any
  sample: tuple
  task: Any
  method: Any
  trainable: Any
  batch_size: int
  seed: int
  batching: str
  mesh: Any
  seed_chunk: Optional[int]


class Programs:
  """The per-seed programs of one plan, batched over seeds, sharded, compiled."""

  def __init__(self, plan: Plan):
    self.plan = plan
    self.model = _adapter(plan.model, *plan.sample)
    params_shape = self.model.abstract[0]
    output = None
    if plan.trainable in ("output", "norm_output"):
      output = self._output_path()
    self.mask = selection.trainable_mask(plan.trainable, params_shape, output)
    self.subset = plan.trainable == "random_subset"
    self.n_subset = selection.count_norm_entries(params_shape) if self.subset else 0
    self._chunks = {}
    self._checked = False

  def _output_path(self):
    plan = self.plan
    if self.model.kind == "linen":
      sample = jnp.zeros(*plan.sample)
      return selection.linen_output_path(plan.model, sample, adapters.takes_train(plan.model))
    from flax import nnx  # pylint: disable=g-import-not-at-top
    found = []   # walked inside the trace: the module as built, attributes in definition order

    def build():
      found.append(selection.nnx_output_path(plan.model(nnx.Rngs(0))))
      return 0
    jax.eval_shape(build)
    return found[0]

  # --- per seed -----------------------------------------------------------------------------

  def init_seed(self, consts, seed_id) -> SeedState:
    plan = self.plan
    keys = plan.task.split_key(jax.random.fold_in(jax.random.key(plan.seed), seed_id))
    params, model_state = self.model.init(keys["model"])
    trainable, frozen = freeze.partition(params, self.mask)
    masks = None
    if self.subset:
      masks = selection.random_subset_masks(keys["subset"], trainable, self.n_subset)
    fixed_key = jax.random.split(keys["data"])[0]
    task_state = plan.task.init(keys["target"], keys["eval"], fixed_key, consts,
                                plan.method.full_batch)
    return SeedState(trainable, frozen, model_state, plan.method.init(trainable), masks,
                     jnp.zeros((), jnp.int32), keys["data"], task_state, jnp.zeros((), bool),
                     trainable)

  def _predict(self, state: SeedState, trainable, x):
    return self.model.apply(freeze.combine(trainable, state.frozen), state.model_state, x,
                            False)[0]

  def objective(self, consts, state: SeedState) -> methods.Objective:
    plan = self.plan
    task = plan.task

    def batch_loss(trainable):
      key = jax.random.fold_in(state.data_key, state.step)
      x, y = task.batch(state.task, consts, key, plan.batch_size)
      out, model_state = self.model.apply(freeze.combine(trainable, state.frozen),
                                          state.model_state, x, True, jax.random.fold_in(key, 1))
      return task.loss_fn(out, y, state.task), model_state

    predict = functools.partial(self._predict, state)
    fixed_x = fixed_y = weight = None
    if plan.method.full_batch:
      fixed_x, fixed_y = task.fixed_batch(state.task, consts)
      if task.residual_form():
        weight = task.residual_weight(state.task, fixed_y)

    def fixed_loss(trainable):
      return task.loss_fn(predict(trainable, fixed_x), fixed_y, state.task)

    return methods.Objective(batch_loss, fixed_loss, predict, fixed_x, fixed_y, weight,
                             state.model_state)

  def run_chunk(self, length: int, consts, state: SeedState):
    """`length` guarded steps of one seed; returns (state, mean loss over the chunk)."""
    method = self.plan.method

    def step(state: SeedState, _):
      trainable, opt_state, loss, model_state = method.step(
          self.objective(consts, state), state.trainable, state.opt_state)
      if state.masks is not None:
        trainable = jax.tree.map(jnp.where, state.masks, trainable, state.trainable)
      loss_ok = jnp.isfinite(loss)   # the loss of `state.trainable`, before this update
      ok = ~state.diverged & loss_ok & all_finite(trainable)
      keep = lambda a, b: jax.tree.map(lambda u, v: jnp.where(ok, u, v), a, b)
      # On divergence a seed keeps the last parameters whose loss was finite: the
      # current ones if only the update failed, else the ones before the update
      # that made the loss blow up (finite but huge parameters are not kept).
      last_good = jax.tree.map(lambda u, v: jnp.where(state.diverged | loss_ok, u, v),
                               state.trainable, state.previous)
      state = state._replace(trainable=keep(trainable, last_good),
                             previous=keep(state.trainable, last_good),
                             model_state=keep(model_state, state.model_state),
                             opt_state=keep(opt_state, state.opt_state), step=state.step + 1,
                             diverged=~ok)
      return state, jnp.where(ok, loss, jnp.nan)

    state, losses = jax.lax.scan(step, state, None, length=length)
    return state, losses.mean()

  def evaluate(self, consts, state: SeedState):
    return self.plan.task.metrics(functools.partial(self._predict, state, state.trainable),
                                  state.task, consts)

  # --- batched, sharded, compiled -----------------------------------------------------------

  def batched(self, fn: Callable) -> Callable:
    """`fn(consts, per_seed)` mapped over the leading axis of `per_seed`, split over the mesh."""
    plan = self.plan
    if plan.batching == "vmap" and plan.seed_chunk is None:
      local = jax.vmap(fn, in_axes=(None, 0))
    else:
      def local(consts, per_seed):
        return jax.lax.map(lambda s: fn(consts, s), per_seed, batch_size=plan.seed_chunk)
    return sharding.over_seeds(local, plan.mesh, fixed_args=1)

  @functools.cached_property
  def init(self):
    return jit.one_shot_jit(self.batched(self.init_seed), heavy=self.heavy_init)

  @property
  def heavy_init(self) -> bool:
    """Whether one seed's init draws enough parameters to be compiled for speed
    (`jit.one_shot_jit`'s `heavy`): decided by the model alone, so a seed's
    initial weights do not depend on how many seeds are fitted beside it."""
    return trees.size(self.model.abstract[0]) >= jit.HEAVY_INIT_VALUES

  @functools.cached_property
  def eval(self):
    return jit.one_shot_jit(self.batched(self.evaluate))

  def chunk(self, length: int):
    if length not in self._chunks:
      self._chunks[length] = jax.jit(
          self.batched(functools.partial(self.run_chunk, length)), donate_argnums=1)
    return self._chunks[length]

  @functools.cached_property
  def info(self) -> dict[str, Any]:
    """What methods and starts may need to know of the model (`model_info`)."""
    return model_info(self.plan.model)

  @functools.cached_property
  def footprint(self) -> tuple[int, int, int]:
    """Bytes of one seed's state, of one step's (or evaluation's) values, of the consts.

    Traced once per plan (no compilation), from shapes alone.
    """
    consts, state = self._abstract
    evaluate = jax.make_jaxpr(self.evaluate)(consts, state)
    work = max(memory.jaxpr_bytes(self._step_jaxpr), memory.jaxpr_bytes(evaluate.jaxpr))
    return memory.tree_bytes(state), work, memory.tree_bytes(consts)

  @functools.cached_property
  def step_value_bytes(self) -> int:
    """Bytes of the largest value one seed's training step computes (what `batching="auto"`
    weighs; traced once per plan, no compilation)."""
    return memory.jaxpr_largest_bytes(self._step_jaxpr)

  @functools.cached_property
  def _abstract(self):   # the consts and one seed's state, as shapes
    consts = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)),
                          self.plan.task.consts())
    return consts, jax.eval_shape(self.init_seed, consts, jax.ShapeDtypeStruct((), jnp.int32))

  @functools.cached_property
  def _step_jaxpr(self):
    return jax.make_jaxpr(functools.partial(self.run_chunk, 1))(*self._abstract).jaxpr

  def rebatched(self, batching: str, seed_chunk: Optional[int]) -> "Programs":
    """The programs of this plan batched another way. What does not depend on the batching
    (the checks, the per-seed traces and footprint) is carried over, not computed again."""
    other = cache(dataclasses.replace(self.plan, batching=batching, seed_chunk=seed_chunk))
    for name in _BATCHING_FREE:
      if name in self.__dict__:
        other.__dict__.setdefault(name, self.__dict__[name])
    other._checked |= self._checked
    return other

  def check(self) -> None:
    """Checks that method, task and model fit together; raises ConfigError (once per plan)."""
    if not self._checked:
      self._check()
      self._checked = True

  def _check(self) -> None:
    plan, model = self.plan, self.model
    plan.method.check(plan.task, self.info)
    dtype = plan.sample[1]
    plan.task.check(lambda shape: jax.eval_shape(
        lambda p, s: model.apply(p, s, jnp.zeros(shape, dtype), False)[0],
        *model.abstract).shape)
    try:   # the training-mode call too (dropout, batch statistics), on two rows
      jax.eval_shape(lambda p, s: model.apply(p, s, jnp.zeros((2,) + plan.sample[0][1:], dtype),
                                              True, jax.random.key(0))[0], *model.abstract)
    except Exception as e:  # pylint: disable=broad-except
      text = str(e).strip().splitlines()
      raise validate.ConfigError(f"the model failed in training mode: {type(e).__name__}: "
                                 f"{text[0] if text else ''}") from None
    if model.abstract[1] and plan.batch_size < 2 and not plan.method.full_batch:
      raise validate.ConfigError("a model with batch statistics needs batch_size >= 2")

  def map(self, fn: Callable, one_shot: bool = False) -> Callable:
    """`fn(consts, state) -> out` for every seed, batched, sharded and compiled."""
    batched = self.batched(fn)
    return jit.one_shot_jit(batched) if one_shot else jax.jit(batched)


# Cached properties of `Programs` that depend on the plan but not on how its seeds are batched.
_BATCHING_FREE = ("info", "footprint", "step_value_bytes", "_abstract", "_step_jaxpr")


class ProgramCache:
  """Compiled programs by plan, the oldest of more than `size` dropped (unhashable plans: none)."""

  def __init__(self, size: int = 64):
    self._size = size
    self._entries: collections.OrderedDict = collections.OrderedDict()

  def __call__(self, plan: Plan) -> Programs:
    if not _hashable(plan):
      return Programs(plan)
    if plan in self._entries:
      self._entries.move_to_end(plan)
      return self._entries[plan]
    programs = self._entries[plan] = Programs(plan)
    if len(self._entries) > self._size:
      self._entries.popitem(last=False)
    return programs

  @contextlib.contextmanager
  def isolated(self):
    """Within it, programs start from an empty cache; the earlier ones come back after."""
    saved, self._entries = self._entries, collections.OrderedDict()
    try:
      yield
    finally:
      self._entries = saved


cache = ProgramCache()


def all_finite(tree) -> jax.Array:
  return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)]))


class Run(NamedTuple):
  """What a start phase or a method's `prepare` gets: the programs, consts, mesh, model info."""
  programs: Programs
  consts: Any
  mesh: Any
  model_info: dict[str, Any]
  task: Any
  seeds: Optional[int] = None   # seeds fitted (the state may hold padding seeds beyond them)
  notes: Optional[dict] = None  # what a start phase reports (JSON-able): `FitResult.start_report`

  def map(self, fn: Callable, one_shot: bool = False) -> Callable:
    """`fn(consts, state)` per seed, compiled; call the result as `f(state)`."""
    compiled = self.programs.map(fn, one_shot)
    return lambda state: compiled(self.consts, state)
