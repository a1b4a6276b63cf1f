"""Training frozen random classifiers on real data, tuning only some of their parameters.

Modes (what is trainable; everything else stays bit-identical):

* `norm`          the normalization scales and shifts only (Frankle et al. 2021);
* `output`        the final linear layer only (random features);
* `random_subset` as many randomly chosen weights as `norm` has parameters
                  (Frankle's control; chosen among the non-pruned weights);
* `norm_output`   norms plus the final linear layer;
* `full`          everything.

All seeds of one (model, mode) cell train in one compiled program: `jax.vmap`
over seeds (each its own frozen network, random subset and batch order),
spread over devices with `jax.shard_map` (`jaxnorm.sharding`), and
`jax.lax.scan` over steps in chunks; the state can be checkpointed after every
chunk and a run resumed from it. Only the trainable leaves are differentiated;
in `random_subset` the selected weights' leaves are differentiated and an
element mask keeps every other entry. BatchNorm uses batch statistics in
training and each seed's own running averages at evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxnorm import data
from jaxnorm import fit
from jaxnorm import freeze
from jaxnorm import jit
from jaxnorm import models
from jaxnorm import sharding
from jaxnorm import trees
from jaxnorm import validate

MODES = ("norm", "output", "random_subset", "norm_output", "full")
MODELS = ("mlp", "conv")


@dataclasses.dataclass(frozen=True)
class ClassifySpec:
  """One cell: model, training mode and optimisation settings (static).

  Attributes:
    model: `"mlp"` (`NormMLP` 64 -> width x depth -> 10) or `"conv"`
      (`NormConvNet` with `depth` conv blocks of `width` channels).
    mode: one of `MODES`.
    depth: hidden layers (mlp) or convolution blocks (conv).
    width: hidden width (mlp) or channels (conv).
    keep_prob: keep-probability of each frozen weight.
    norm: normalization kind.
    steps: optimizer steps.
    chunk_steps: steps per compiled chunk.
    batch_size: training examples per step (drawn with replacement).
    learning_rate: Adam's peak learning rate (cosine decay).
    seed: base seed; seed `s` uses `fold_in(key(seed), s)`.
  """

  model: str = "mlp"
  mode: str = "norm"
  depth: int = 2
  width: int = 256
  keep_prob: float = 1.0
  norm: str = "batchnorm"
  steps: int = 600
  chunk_steps: int = 300
  batch_size: int = 128
  learning_rate: float = 3e-3
  seed: int = 0

  def network(self):
    """The frozen network of this cell."""
    if self.model == "conv":
      return models.NormConvNet(self.width, self.depth, data.N_CLASSES, self.norm, self.keep_prob)
    widths = (64,) + (self.width,) * self.depth + (data.N_CLASSES,)
    return models.NormMLP(widths, self.norm, self.keep_prob, momentum=0.9)

  def output_layer(self) -> str:
    """Name of the final linear layer."""
    return "dense_out" if self.model == "conv" else f"dense_{self.depth}"


def check_spec(spec: ClassifySpec) -> ClassifySpec:
  """Validates `spec` (raises `validate.ConfigError` naming the bad value)."""
  validate.one_of("model", spec.model, MODELS)
  validate.one_of("mode", spec.mode, MODES)
  validate.one_of("norm kind", spec.norm, models.NORM_KINDS)
  for name in ("depth", "width", "steps", "chunk_steps", "batch_size"):
    validate.positive_int(name, getattr(spec, name))
  validate.probability("keep probability p", spec.keep_prob)
  validate.positive_float("learning_rate", spec.learning_rate)
  validate.non_negative_int("seed", spec.seed)
  return spec


def leaf_mask(params, spec: ClassifySpec):
  """Which leaves `spec.mode` differentiates (a tree of bools)."""
  norms = freeze.norm_mask(params)
  if spec.mode == "norm":
    return norms
  out = spec.output_layer()
  output = freeze.norm_mask(params, lambda path, leaf: path[0] == out)
  if spec.mode == "output":
    return output
  if spec.mode == "norm_output":
    return jax.tree.map(lambda a, b: a or b, norms, output)
  if spec.mode == "full":
    return jax.tree.map(lambda _: True, norms)
  return jax.tree.map(lambda a: not a, norms)  # random_subset: the weights' leaves


def count_norm_params(params) -> int:
  """Number of normalization scale/shift entries in `params`."""
  trainable, _ = freeze.partition(params, freeze.norm_mask(params))
  return sum(int(np.prod(v.shape)) for v in trainable.values())


def random_subset_masks(key, weights: dict, n: int) -> dict:
  """Element masks selecting `n` random non-zero entries among `weights` leaves.

  Args:
    key: a `jax.random.key`.
    weights: `{path: array}` (e.g. the trainable partition in random_subset).
    n: how many entries to select (at most the number of non-zero entries).

  Returns:
    `{path: bool array}` with exactly `n` True entries in total.
  """
  paths = sorted(weights)
  flat = jnp.concatenate([weights[p].ravel() for p in paths])
  scores = jnp.where(flat != 0, jax.random.uniform(key, flat.shape), -1.0)
  chosen = jnp.zeros(flat.shape, bool).at[jax.lax.top_k(scores, n)[1]].set(True)
  masks, start = {}, 0
  for p in paths:
    size = weights[p].size
    masks[p] = chosen[start:start + size].reshape(weights[p].shape)
    start += size
  return masks


def estimate_bytes(spec: ClassifySpec, seeds: int, n_train: int, n_test: int) -> int:
  """Estimated peak memory of training `seeds` seeds of `spec` on one device (float32).

  Each seed keeps its parameters (twice on the device, once on the host)
  and, for the leaves it differentiates, Adam's two moments, a gradient, a
  mask and a host copy; a step needs the activations of a batch and their
  gradients, an evaluation those of the whole train (or test) set. Sizes come
  from `jax.eval_shape` (nothing is allocated or compiled).

  Args:
    spec: the cell (validated).
    seeds: seeds on the device.
    n_train: training examples.
    n_test: test examples.

  Returns:
    Bytes.
  """
  sample = _inputs(spec, np.zeros((1, 64), np.float32))
  shapes = jax.eval_shape(spec.network().init, jax.random.key(0), sample)["params"]
  size = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  params = size(shapes)
  trainable = size(freeze.partition(shapes, leaf_mask(shapes, spec))[0])
  units = 64 + (count_norm_params(shapes) // 2) * (64 if spec.model == "conv" else 1)
  work = max(6 * spec.batch_size, 2 * max(n_train, n_test)) * units
  return 4 * (seeds * (3 * params + 4 * trainable + work) + 64 * (n_train + n_test))


class TrainState(NamedTuple):
  """One seed's state (a leading seed axis is added when batched)."""
  trainable: Any
  frozen: Any
  batch_stats: Any
  opt_state: Any
  masks: Any      # element masks of the trainable leaves (all True unless random_subset)
  step: jax.Array
  data_key: jax.Array


class ClassifyResult(NamedTuple):
  """Per-seed results (numpy, leading axis = seed).

  Attributes:
    test_acc: test accuracy `[S]`.
    train_acc: training accuracy `[S]`.
    loss_curve: mean training cross-entropy per chunk `[S, n_chunks]`.
    trainable_params: trainable entries per seed.
    frozen_unchanged: every frozen leaf, and every unselected entry of a
      random_subset leaf, is bit-identical after training.
    devices: devices the seeds were spread over.
    seeds_per_device: seeds (padding included) held by each local device.
    seconds: wall time, compilation included.
  """
  test_acc: np.ndarray
  train_acc: np.ndarray
  loss_curve: np.ndarray
  trainable_params: int
  frozen_unchanged: bool
  devices: int
  seeds_per_device: tuple[int, ...]
  seconds: float


def _optimizer(spec):
  return optax.adam(optax.cosine_decay_schedule(spec.learning_rate, spec.steps))


def _init(spec: ClassifySpec, sample_x, seed_id):
  key = jax.random.fold_in(jax.random.key(spec.seed), seed_id)
  k_net, k_mask, k_data = jax.random.split(key, 3)
  variables = spec.network().init(k_net, sample_x)
  params = variables["params"]
  trainable, frozen = freeze.partition(params, leaf_mask(params, spec))
  if spec.mode == "random_subset":
    masks = random_subset_masks(k_mask, trainable, count_norm_params(params))
  else:
    masks = jax.tree.map(lambda a: jnp.ones(a.shape, bool), trainable)
  return TrainState(trainable, frozen, variables.get("batch_stats", {}),
                    _optimizer(spec).init(trainable), masks, jnp.zeros((), jnp.int32), k_data)


def _logits(spec, state_params, batch_stats, x, train):
  variables = {"params": state_params}
  if spec.norm == "batchnorm":
    variables["batch_stats"] = batch_stats
    if train:
      out, upd = spec.network().apply(variables, x, train=True, mutable=["batch_stats"])
      return out, upd["batch_stats"]
  return spec.network().apply(variables, x), batch_stats


def _chunk(spec: ClassifySpec, length: int, state: TrainState, x_train, y_train):
  tx = _optimizer(spec)

  def loss_fn(trainable, state, x, y):
    logits, stats = _logits(spec, freeze.combine(trainable, state.frozen), state.batch_stats,
                            x, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), stats

  def step(state: TrainState, _):
    idx = jax.random.randint(jax.random.fold_in(state.data_key, state.step), (spec.batch_size,),
                             0, y_train.shape[0])
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, state, x_train[idx], y_train[idx])
    updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
    new = optax.apply_updates(state.trainable, updates)
    new = jax.tree.map(jnp.where, state.masks, new, state.trainable)
    return state._replace(trainable=new, batch_stats=stats, opt_state=opt_state,
                          step=state.step + 1), loss

  state, losses = jax.lax.scan(step, state, None, length=length)
  return state, losses.mean()


def _accuracy(spec: ClassifySpec, state: TrainState, x, y):
  logits, _ = _logits(spec, freeze.combine(state.trainable, state.frozen), state.batch_stats,
                      x, train=False)
  return jnp.mean(jnp.argmax(logits, -1) == y)


@functools.lru_cache(maxsize=128)
def _programs(spec: ClassifySpec, mesh):
  """init, chunk(length) and accuracy, each vmapped over seeds and split over `mesh`.

  Every program takes the replicated data first and the per-seed argument last.
  """
  init = jit.one_shot_jit(sharding.over_seeds(
      jax.vmap(functools.partial(_init, spec), in_axes=(None, 0)), mesh, fixed_args=1))

  @functools.lru_cache(maxsize=4)
  def chunk(length: int):
    per_seed = jax.vmap(functools.partial(_chunk, spec, length), in_axes=(0, None, None))
    return jax.jit(sharding.over_seeds(lambda x, y, state: per_seed(state, x, y), mesh,
                                       fixed_args=2), donate_argnums=2)

  per_seed_acc = jax.vmap(functools.partial(_accuracy, spec), in_axes=(0, None, None))
  accuracy = jit.one_shot_jit(sharding.over_seeds(lambda x, y, state: per_seed_acc(state, x, y),
                                                  mesh, fixed_args=2))
  return init, chunk, accuracy


def _inputs(spec, x):
  return np.asarray(data.as_images(x) if spec.model == "conv" else x)


def _unselected_unchanged(before, after, masks) -> bool:
  return all(np.asarray(before[p])[~np.asarray(masks[p])].tobytes()
             == np.asarray(after[p])[~np.asarray(masks[p])].tobytes() for p in before)


def train(spec: ClassifySpec, seed_ids, split: data.Split, *, devices: Optional[int] = None,
          checkpoint: Optional[fit.Checkpoint] = None) -> ClassifyResult:
  """Trains one frozen network per seed in one program and evaluates it.

  The seeds are split over `devices` devices (padded to a multiple of the
  device count, the padding dropped from the results).

  Args:
    spec: the cell (validated here before any compute).
    seed_ids: non-negative integer seed ids.
    split: the data (`data.digits()`).
    devices: how many devices to spread the seeds over (`None`/0: all).
    checkpoint: optional `fit.Checkpoint` (e.g. `jaxnorm.checkpoint.FitSlot`):
      resume from it, and save the `TrainState` and loss curve into it after
      every chunk.

  Returns:
    A `ClassifyResult`.
  """
  check_spec(spec)
  seed_ids = validate.seed_ids(seed_ids)
  mesh = sharding.seed_mesh(devices)
  n = seed_ids.size
  start = time.perf_counter()
  init, chunk, accuracy = _programs(spec, mesh)
  x_train, y_train, x_test, y_test = sharding.replicate(
      (_inputs(spec, split.x_train), np.asarray(split.y_train),
       _inputs(spec, split.x_test), np.asarray(split.y_test)), mesh)
  ids = sharding.distribute(sharding.pad_seed_ids(seed_ids, mesh).astype(np.int32), mesh)
  state = init(sharding.replicate(_inputs(spec, split.x_train[:1]), mesh), ids)
  frozen_before = sharding.to_host(state.frozen)
  subset = spec.mode == "random_subset"
  trainable_before = sharding.to_host(state.trainable) if subset else None
  masks = sharding.to_host(state.masks)
  trainable_params = int(sum(m[0].sum() for m in masks.values()))
  lengths = fit.chunk_lengths(spec)
  curve = np.full((len(lengths), ids.shape[0]), np.nan, np.float32)
  resumed = checkpoint.restore(state, curve) if checkpoint is not None else None
  done = 0
  if resumed is not None:
    done, state, curve = resumed
    logging.info("resumed after chunk %d/%d", done, len(lengths))
  for i in range(done, len(lengths)):
    state, loss = chunk(lengths[i])(x_train, y_train, state)
    curve[i] = sharding.to_host(loss)
    if checkpoint is not None:
      checkpoint.save(i + 1, len(lengths), state, curve)
  unchanged = trees.bit_identical(frozen_before, sharding.to_host(state.frozen))
  if subset:
    unchanged &= _unselected_unchanged(trainable_before, sharding.to_host(state.trainable), masks)
  return ClassifyResult(
      test_acc=sharding.to_host(accuracy(x_test, y_test, state), n),
      train_acc=sharding.to_host(accuracy(x_train, y_train, state), n),
      loss_curve=curve[:, :n].T, trainable_params=trainable_params,
      frozen_unchanged=bool(unchanged), devices=mesh.size,
      seeds_per_device=sharding.shard_sizes(state.step), seconds=time.perf_counter() - start)
