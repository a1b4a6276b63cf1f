"""Training frozen random classifiers on real data, tuning only some of their parameters.

Modes (what is trainable; everything else stays bit-identical):

* `norm`          the normalization scales and shifts only (Frankle et al. 2021);
* `output`        the final linear layer only (random features);
* `random_subset` as many randomly chosen weights as `norm` has parameters
                  (Frankle's control; chosen among the non-pruned weights);
* `norm_output`   norms plus the final linear layer;
* `full`          everything.

`train(spec, seeds, split)` is a thin wrapper over `jaxnorm.fit`: the cell's
network (`ClassifySpec.network`), a `Classification` task on the split, the
mode as `trainable=`, Adam with a cosine decay. The engine does the rest: all
seeds of a cell in one compiled program spread over the devices, steps in
chunks, checkpoints, the freezing check (in `random_subset` the selected
weights' leaves are differentiated and an element mask keeps every other
entry), BatchNorm on batch statistics in training and each seed's own running
averages at evaluation.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import numpy as np

from jaxnorm import convnets
from jaxnorm import data
from jaxnorm import engine
from jaxnorm import freeze
from jaxnorm import methods
from jaxnorm import models
from jaxnorm import selection
from jaxnorm import tasks
from jaxnorm import trees
from jaxnorm import validate

MODES = ("norm", "output", "random_subset", "norm_output", "full")
MODELS = ("mlp", "conv", "resnet", "vgg")
CONV_MODELS = ("conv", "resnet", "vgg")
EVAL_BATCH = 1024   # examples evaluated at once (`Classification.eval_batch`)


@dataclasses.dataclass(frozen=True)
class ClassifySpec:
  """One cell: model, training mode and optimisation settings (static).

  Attributes:
    model: `"mlp"` (`NormMLP` in -> width x depth -> classes), `"conv"`
      (`NormConvNet`: `depth` conv blocks of `width` channels), `"resnet"`
      (`NormResNet` of `depth = 6n + 2` layers, first-stage width `width`) or
      `"vgg"` (`NormVGG`: `depth` conv blocks over three stages).
    mode: one of `MODES`.
    depth: hidden layers (mlp), layers (resnet) or convolution blocks.
    width: hidden width (mlp) or (first-stage) channels.
    keep_prob: keep-probability of each frozen weight.
    norm: normalization kind.
    steps: optimizer steps.
    chunk_steps: steps per compiled chunk.
    batch_size: training examples per step (drawn with replacement).
    learning_rate: Adam's peak learning rate (cosine decay).
    seed: base seed; seed `s` uses `fold_in(key(seed), s)`.
    input_shape: the shape of one input (flat `(d,)` or `(H, W, C)`).
    n_classes: classes.
    crop_pad: random crops of the training images, shifted by up to this many
      pixels (`data.CropFlip`; 0: none).
    flip: random horizontal flips of the training images.
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
  input_shape: tuple[int, ...] = (64,)
  n_classes: int = data.N_CLASSES
  crop_pad: int = 0
  flip: bool = False

  def network(self):
    """The frozen network of this cell."""
    n = self.n_classes
    if self.model == "conv":
      return convnets.NormConvNet(self.width, self.depth, n, self.norm, self.keep_prob)
    if self.model == "resnet":
      return convnets.NormResNet(self.depth, self.width, n, self.norm, self.keep_prob)
    if self.model == "vgg":
      return convnets.NormVGG(self.depth, self.width, n, self.norm, self.keep_prob)
    widths = (int(np.prod(self.input_shape)),) + (self.width,) * self.depth + (n,)
    return models.NormMLP(widths, self.norm, self.keep_prob, momentum=0.9)

  @property
  def name(self) -> str:
    """`mlp-3x256`, `resnet-20x16`, ...: the model, its depth and width."""
    return f"{self.model}-{self.depth}x{self.width}"

  def output_layer(self) -> str:
    """Name of the final linear layer."""
    return "dense_out" if self.model in CONV_MODELS else f"dense_{self.depth}"


def check_spec(spec: ClassifySpec) -> ClassifySpec:
  """Validates `spec` (raises `validate.ConfigError` naming the bad value)."""
  validate.one_of("model", spec.model, MODELS)
  validate.one_of("mode", spec.mode, MODES)
  validate.one_of("norm kind", spec.norm, models.NORM_KINDS)
  for name in ("depth", "width", "steps", "chunk_steps", "batch_size"):
    validate.positive_int(name, getattr(spec, name))
  if spec.model == "resnet":
    try:
      blocks = convnets.resnet_blocks(spec.depth)
    except ValueError as e:
      raise validate.ConfigError(str(e)) from None
    validate.at_most("resnet blocks per stage", blocks, validate.MAX_LAYERS // 2,
                     "a deeper network would take hours to compile")
  else:
    validate.at_most("depth", spec.depth, validate.MAX_LAYERS,
                     "a deeper network would take hours to compile")
  validate.positive_ints("input_shape", spec.input_shape)
  if spec.model in CONV_MODELS and len(spec.input_shape) != 3:
    data.as_images(np.zeros((1,) + tuple(spec.input_shape)))   # (raises unless square)
  if spec.n_classes < 2:
    raise validate.ConfigError(f"n_classes must be at least 2, got {spec.n_classes}")
  validate.non_negative_int("crop_pad", spec.crop_pad)
  if spec.crop_pad or spec.flip:   # augmentation needs images (flat ones must be square)
    data.as_images(np.zeros((1,) + tuple(spec.input_shape)))
  if spec.norm == "batchnorm" and spec.batch_size < 2:
    raise validate.ConfigError("batchnorm needs batch_size >= 2 (one example normalises to 0)")
  validate.probability("keep probability p", spec.keep_prob)
  validate.positive_float("learning_rate", spec.learning_rate)
  validate.prng_seed("seed", spec.seed)
  return spec


def estimate_bytes(spec: ClassifySpec, seeds: int, n_train: int, n_test: int) -> int:
  """Estimated peak memory of training `seeds` seeds of `spec` on one device (float32).

  Each seed keeps its parameters (twice on the device, once on the host)
  and, for the leaves it differentiates, Adam's two moments, a gradient, a
  mask and a host copy; a step needs the activations of a batch and their
  gradients, an evaluation those of `EVAL_BATCH` examples at once. Sizes come
  from `jax.eval_shape` (nothing is allocated or compiled).

  Args:
    spec: the cell (validated).
    seeds: seeds on the device.
    n_train: training examples.
    n_test: test examples.

  Returns:
    Bytes.
  """
  sample = _inputs(spec, np.zeros((1,) + tuple(spec.input_shape), np.float32))
  shapes = jax.eval_shape(spec.network().init, jax.random.key(0), sample)["params"]
  params = trees.size(shapes)
  output = (spec.output_layer(),) if spec.mode in ("output", "norm_output") else None
  mask = selection.trainable_mask(spec.mode, shapes, output)
  trainable = trees.size(freeze.partition(shapes, mask)[0])
  positions = int(np.prod(sample.shape[1:-1])) if spec.model in CONV_MODELS else 1
  units = sample[0].size + (selection.count_norm_entries(shapes) // 2) * positions
  work = max(6 * spec.batch_size, 2 * min(max(n_train, n_test), EVAL_BATCH)) * units
  return 4 * (seeds * (3 * params + 4 * trainable + work) + sample[0].size * (n_train + n_test))


class ClassifyResult(NamedTuple):
  """Per-seed results (numpy, leading axis = seed).

  Attributes:
    test_acc: test accuracy `[S]`.
    train_acc: training accuracy `[S]` (on the examples trained on).
    val_acc: validation accuracy `[S]` (NaN without a validation split).
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
  val_acc: np.ndarray
  loss_curve: np.ndarray
  trainable_params: int
  frozen_unchanged: bool
  devices: int
  seeds_per_device: tuple[int, ...]
  seconds: float


def _inputs(spec, x):
  x = np.asarray(x)
  return data.as_images(x) if spec.model in CONV_MODELS else x.reshape(len(x), -1)


def task(spec: ClassifySpec, split: data.Split) -> tasks.Classification:
  """The `Classification` task of a cell on `split` (images for conv nets, augmented if asked)."""
  augment = None
  if spec.crop_pad or spec.flip:
    image = data.as_images(np.zeros((1,) + tuple(spec.input_shape))).shape[1:]
    augment = data.CropFlip(spec.crop_pad, spec.flip,
                            None if spec.model in CONV_MODELS else image)
  return tasks.Classification(train=(_inputs(spec, split.x_train), split.y_train),
                              test=(_inputs(spec, split.x_test), split.y_test), augment=augment,
                              eval_batch=EVAL_BATCH)


def train(spec: ClassifySpec, seed_ids, split: data.Split, *, validation: float = 0.0,
          devices: Optional[int] = None,
          checkpoint: Optional[engine.Checkpoint] = None) -> ClassifyResult:
  """Trains one frozen network per seed in one program and evaluates it (`jaxnorm.fit`).

  Args:
    spec: the cell (validated here before any compute); its `input_shape` and
      `n_classes` must be those of `split`.
    seed_ids: non-negative integer seed ids.
    split: the data (`data.digits()`, `data.load_npz(...)`).
    validation: if positive, this share of each class's training examples
      (`data.validation_split`, fixed) is held out: the networks train on the
      rest and `val_acc` is measured on it, for choosing hyperparameters
      without the test set; the test set is evaluated either way.
    devices: how many devices to spread the seeds over (`None`/0: all).
    checkpoint: optional `engine.Checkpoint` (e.g. `jaxnorm.checkpoint.FitSlot`):
      resume from it, and save the state and loss curve into it after every
      chunk.

  Returns:
    A `ClassifyResult`.
  """
  check_spec(spec)
  if split.input_shape != tuple(spec.input_shape) or split.n_classes > spec.n_classes:
    raise validate.ConfigError(
        f"the spec is for inputs {tuple(spec.input_shape)} and {spec.n_classes} classes, the "
        f"data has {split.input_shape} and {split.n_classes}")
  fit_on = data.validation_split(split, validation) if validation > 0 else split
  result = engine.fit(
      spec.network(), task(spec, fit_on), validate.seed_ids(seed_ids), trainable=spec.mode,
      optimizer=methods.Optax(methods.default_optimizer(spec.steps, spec.learning_rate)),
      steps=spec.steps, chunk_steps=spec.chunk_steps, batch_size=spec.batch_size,
      seed=spec.seed, devices=devices, checkpoint=checkpoint)
  if validation > 0:
    val_acc = result.test_acc
    logits = result.predict(_inputs(spec, split.x_test))
    test_acc = (logits.argmax(-1) == split.y_test).mean(axis=1)
  else:
    val_acc, test_acc = np.full(len(result.seed_ids), np.nan), result.test_acc
  return ClassifyResult(
      test_acc=test_acc, train_acc=result.train_acc, val_acc=val_acc,
      loss_curve=result.loss_curve, trainable_params=result.trainable_params,
      frozen_unchanged=result.frozen_unchanged, devices=result.devices,
      seeds_per_device=result.seeds_per_device, seconds=result.seconds)
