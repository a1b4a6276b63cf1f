"""Norm-only training of frozen random networks on real data, beside its baselines.

The study of Frankle, Schwab and Morcos (ICLR 2021), on the data that ships
(scikit-learn's digits) or any data set the user has as arrays (`--data`):
frozen random ResNets (depth and width sweeps), VGG-style nets and MLPs, each
trained in every mode of `jaxnorm.classify.MODES` with the same seeds. For each
(cell, mode) a small learning-rate sweep picks the rate on a validation share
carved from the training set — never the test set; the networks of the chosen
rate are then measured on the test set. The run writes into its workdir:

* `config.json`   the config it ran with;
* `results.json`  `{"config", "devices", "frozen_unchanged", "chance", "data",
  "rows": [...], "sweep": [...]}`: one row per (cell, mode) at its chosen
  learning rate, and every (cell, mode, rate) of the sweep — written last, it
  marks the run complete;
* `timings.json`  wall time of each (cell, mode, rate), by sweep index (kept
  out of `results.json`, which is bit-identical across runs of the same
  config on the same machine);
* `checkpoints/`  Orbax checkpoints (after every chunk of steps): re-running
  the same command resumes;
* `results.csv`   the rows;
* `acc_vs_params.png`  test accuracy vs trainable parameters, one series per mode;
* `acc_vs_depth.png`   test accuracy vs depth, one series per (model, mode).

Run it: `python -m experiments.classify --workdir=/tmp/classify`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

from absl import logging

from experiments.config_flags import hparam

from jaxnorm import checkpoint
from jaxnorm import classify
from jaxnorm import convnets
from jaxnorm import data
from jaxnorm import memory
from jaxnorm import sharding
from jaxnorm import validate
from experiments import lifecycle
from experiments import outputs
from experiments import plots

COLUMNS = ("model", "mode", "depth", "width", "p", "trainable_params", "learning_rate",
           "val_acc", "test_acc", "train_acc", "seconds")


@dataclasses.dataclass(frozen=True)
class Config:
  """The `classify` experiment: every hyperparameter, declared once (flags are generated from
  these fields by `experiments.config_flags`; the named configs are in `configs/`).

  The cells of each model family are the union of a depth sweep (its depths at
  its first width) and a width sweep (its widths at its first depth); the MLPs
  also sweep `keep_probs` at their first depth and width; the conv nets are
  `conv_depths` x `conv_channels`. An empty depth list leaves a family out.
  """

  data: str = hparam("", "An .npz holding x_train, y_train, x_test, y_test (inputs flat or "
                     "NHWC images; integer labels); empty: scikit-learn's digits.")
  standardise: bool = hparam(True, "Standardise --data's inputs with training statistics "
                             "(per feature, or per channel for images); the digits always are.")
  crop_pad: int = hparam(0, "Random crops of the training images: shifts of up to this many "
                         "pixels (0: off; 4 on CIFAR-10, as He et al. and Frankle et al.).")
  flip: bool = hparam(False, "Random horizontal flips of the training images (off: digits are "
                      "not mirror-symmetric).")
  mlp_depths: tuple[int, ...] = hparam(
      (2, 4), "Hidden layers of the MLPs (depth sweep at the first width; empty: none).")
  mlp_widths: tuple[int, ...] = hparam((1024,), "Hidden widths of the MLPs.")
  keep_probs: tuple[float, ...] = hparam((1.0,), "Keep-probabilities p of the frozen MLP weights.")
  resnet_depths: tuple[int, ...] = hparam(
      (8, 14), "Depths (6n+2) of the CIFAR ResNets (depth sweep at the first width; empty: none).")
  resnet_widths: tuple[int, ...] = hparam((16,), "First-stage channels of the ResNets.")
  vgg_depths: tuple[int, ...] = hparam((), "Conv blocks of the VGG-style nets (empty: none).")
  vgg_widths: tuple[int, ...] = hparam((16,), "First-stage channels of the VGG-style nets.")
  conv_depths: tuple[int, ...] = hparam(
      (), "Convolution blocks of the one-width conv nets (empty: none).")
  conv_channels: tuple[int, ...] = hparam((16,), "Channels of the one-width conv nets.")
  modes: tuple[str, ...] = hparam(
      ("norm", "random_subset", "output"),
      "Training modes: norm, output, random_subset, norm_output, full.")
  norm: str = hparam("batchnorm", "Normalization kind: batchnorm | affine | layernorm.")
  seeds: int = hparam(2, "Seeds per cell, mode and learning rate, trained at once.")
  steps: int = hparam(400, "Adam steps.")
  chunk_steps: int = hparam(200, "Steps per compiled chunk (a checkpoint is saved after each).")
  batch_size: int = hparam(128, "Examples per step.")
  learning_rates: tuple[float, ...] = hparam(
      (3e-2, 1e-1), "Adam peak learning rates (cosine decay) swept per (cell, mode); the one "
      "with the best validation accuracy is reported.", aliases=("learning_rate",))
  validation: float = hparam(0.1, "Share of each class's training examples held out to choose "
                             "the learning rate.")
  seed: int = hparam(0, "Base random seed (the data split is fixed).")
  devices: int = hparam(0, "Devices to spread the seeds over (0: every device of the job).")


def _sweep(name: str, depths, widths, check_depth=None) -> list[tuple[int, int]]:
  """(depth, width) cells: the depth sweep at the first width, then the width sweep."""
  depths = validate.positive_ints(f"{name}_depths", depths, min_len=0)
  widths = validate.positive_ints(f"{name}_widths", widths, min_len=0)
  if depths and not widths:   # would silently drop the family
    raise validate.ConfigError(f"{name}_depths={list(depths)} asks for {name} nets: give their "
                               f"{name}_widths too (or {name}_depths= for none)")
  for d in depths:
    if check_depth is not None:
      check_depth(d)
  if not depths:
    return []
  return list(dict.fromkeys([(d, widths[0]) for d in depths] + [(depths[0], w) for w in widths]))


def _resnet_depth(depth: int) -> None:
  try:
    convnets.resnet_blocks(depth)
  except ValueError as e:
    raise validate.ConfigError(f"resnet_depths: {e}") from None


def cells(config: Config, split: Optional[data.Split] = None) -> list[classify.ClassifySpec]:
  """Validates `config` and lists every (cell, mode, learning rate) spec, before any compute.

  Args:
    config: the experiment config.
    split: the data (its input shape and classes enter the specs); default
      the digits' shape, 10 classes.

  Returns:
    One spec per (cell, mode, learning rate): cell by cell, each cell's modes
    in the order given, each mode's rates in the order given.

  Raises:
    validate.ConfigError: naming the first bad value.
  """
  for name in ("mlp_depths", "mlp_widths", "keep_probs", "resnet_depths", "resnet_widths",
               "vgg_depths", "vgg_widths", "conv_depths", "conv_channels", "learning_rates"):
    validate.at_most(f"the number of {name}", len(getattr(config, name)), validate.MAX_SWEEP,
                     "each is a cell of the sweep")
  probs = [validate.probability("keep probability p", p) for p in config.keep_probs]
  if not probs:
    raise validate.ConfigError("keep_probs needs at least one entry")
  mlp = _sweep("mlp", config.mlp_depths, config.mlp_widths)
  mlp = list(dict.fromkeys([(d, w, probs[0]) for d, w in mlp]
                           + [(mlp[0][0], mlp[0][1], p) for p in probs])) if mlp else []
  conv_depths = validate.positive_ints("conv_depths", config.conv_depths, min_len=0)
  conv_channels = validate.positive_ints("conv_channels", config.conv_channels, min_len=0)
  if conv_depths and not conv_channels:   # would silently drop the conv net
    raise validate.ConfigError(
        f"conv_depths={list(conv_depths)} asks for conv nets: give their conv_channels too "
        f"(or conv_depths= for none)")
  shapes = ([("mlp", d, w, p) for d, w, p in mlp]
            + [("resnet", d, w, 1.0) for d, w in _sweep("resnet", config.resnet_depths,
                                                        config.resnet_widths, _resnet_depth)]
            + [("vgg", d, w, 1.0) for d, w in _sweep("vgg", config.vgg_depths,
                                                     config.vgg_widths)]
            + [("conv", d, c, 1.0) for d in conv_depths for c in conv_channels])
  if not shapes:
    raise validate.ConfigError("no model to train: give mlp_depths, resnet_depths, vgg_depths "
                               "or conv_depths")
  if not config.modes:
    raise validate.ConfigError("modes needs at least one entry")
  for mode in config.modes:
    validate.one_of("mode", mode, classify.MODES)
  if len(set(config.modes)) != len(config.modes):
    raise validate.ConfigError(f"modes has repeats: {list(config.modes)}")
  rates = [validate.positive_float("learning rate", r) for r in config.learning_rates]
  if not rates or len(set(rates)) != len(rates):
    raise validate.ConfigError(f"learning_rates needs distinct entries, got {rates}")
  if not 0.0 < config.validation < 1.0:
    raise validate.ConfigError(f"validation must be a share in (0, 1), got {config.validation}")
  validate.positive_int("seeds", config.seeds)
  validate.positive_int("steps", config.steps)
  validate.positive_int("chunk_steps", config.chunk_steps)
  validate.non_negative_int("devices", config.devices)
  input_shape = split.input_shape if split is not None else (64,)
  n_classes = split.n_classes if split is not None else data.N_CLASSES
  return [classify.check_spec(classify.ClassifySpec(
      model=model, mode=mode, depth=d, width=w, keep_prob=p, norm=config.norm,
      steps=config.steps, chunk_steps=min(config.chunk_steps, config.steps),
      batch_size=config.batch_size, learning_rate=lr, seed=config.seed,
      input_shape=input_shape, n_classes=n_classes, crop_pad=config.crop_pad, flip=config.flip))
          for model, d, w, p in shapes for mode in config.modes for lr in rates]


def _cell_key(r: dict[str, Any]) -> tuple:
  return (r["model"], r["depth"], r["width"], r["p"], r["mode"])


def select(sweep: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """One row per (cell, mode): the learning rate with the best mean validation accuracy.

  Args:
    sweep: one record per (cell, mode, learning rate), in order.

  Returns:
    The chosen records (first occurrence order), each with
    `val_acc_by_lr` (`{rate: mean validation accuracy}`) and `sweep_index`
    (the chosen record's index in `sweep`) added. Ties go to the smaller rate.
  """
  groups: dict[tuple, list[tuple[int, dict[str, Any]]]] = {}
  for i, r in enumerate(sweep):
    groups.setdefault(_cell_key(r), []).append((i, r))
  rows = []
  for members in groups.values():
    i, best = max(members, key=lambda ir: (ir[1]["val_acc_mean"], -ir[1]["learning_rate"]))
    rows.append(dict(best, sweep_index=i, val_acc_by_lr={
        str(r["learning_rate"]): r["val_acc_mean"] for _, r in members}))
  return rows


def table(rows: Sequence[dict[str, Any]], timings: Optional[dict[str, Any]] = None,
          sweep: Optional[Sequence[dict[str, Any]]] = None) -> str:
  """The accuracy table printed at the end of a run.

  Args:
    rows: `results.json`'s rows (one per (cell, mode), at the chosen rate).
    timings: `timings.json` (seconds by sweep index); `None` leaves them out.
    sweep: `results.json`'s sweep, to add up the seconds of each row's rates.

  Returns:
    The table: accuracies as mean ± std over the seeds.
  """
  timings = timings or {}
  seconds = {}
  for i, r in enumerate(sweep or []):
    if str(i) in timings:
      seconds[_cell_key(r)] = seconds.get(_cell_key(r), 0.0) + timings[str(i)]

  def cell(r, k):
    if k == "seconds":
      return round(seconds[_cell_key(r)], 1) if _cell_key(r) in seconds else "-"
    if k in ("val_acc", "test_acc", "train_acc"):
      std = r.get(f"{k}_std")
      return f"{r[f'{k}_mean']:.3f}" + (f" ± {std:.3f}" if std is not None else "")
    return r[k]
  return outputs.format_table(COLUMNS, [[cell(r, k) for k in COLUMNS] for r in rows])


def _band(rs, x):
  return ([r[x] for r in rs], [r["test_acc_mean"] for r in rs],
          [r["test_acc_mean"] - r["test_acc_std"] for r in rs],
          [r["test_acc_mean"] + r["test_acc_std"] for r in rs])


def _plots(rows, workdir: str, data_name: str) -> None:
  by_mode = {}
  for r in rows:
    by_mode.setdefault(r["mode"], []).append(r)
  plots.median_band(os.path.join(workdir, "acc_vs_params.png"),
                    {m: _band(sorted(rs, key=lambda r: r["trainable_params"]), "trainable_params")
                     for m, rs in by_mode.items()},
                    xlabel="trainable parameters", ylabel="test accuracy (mean ± std)",
                    title=f"{data_name}: frozen random nets, what is trained", logy=False)
  depth = {}
  for r in rows:   # each family's depth sweep (at one width and p)
    depth.setdefault((r["model"], r["width"], r["p"], r["mode"]), []).append(r)
  series = {f"{m} w{w} {mode}": _band(sorted(rs, key=lambda r: r["depth"]), "depth")
            for (m, w, p, mode), rs in depth.items() if len(rs) > 1}
  if series:
    plots.median_band(os.path.join(workdir, "acc_vs_depth.png"), series,
                      xlabel="depth (MLP: hidden layers; ResNet: layers; VGG/conv: conv blocks)",
                      ylabel="test accuracy (mean ± std)",
                      title=f"{data_name}: accuracy vs depth, per model and mode", logy=False)


def load(config: Config) -> data.Split:
  """The config's data: `--data` (checked) or the digits."""
  if config.data:
    return data.load_npz(config.data, config.standardise)
  return data.digits()


def estimate_bytes(config: Config, devices: int, split: data.Split) -> int:
  """Peak memory per device of the largest (cell, mode) the config asks for (an estimate)."""
  n_val = int(round(config.validation * len(split.y_train)))
  return max(classify.estimate_bytes(spec, -(-config.seeds // devices),
                                     len(split.y_train) - n_val, max(len(split.y_test), n_val))
             for spec in cells(config, split))


def _record(spec: classify.ClassifySpec, result: classify.ClassifyResult) -> dict[str, Any]:
  return {"model": spec.model, "mode": spec.mode, "depth": spec.depth, "width": spec.width,
          "p": spec.keep_prob, "learning_rate": spec.learning_rate,
          "trainable_params": result.trainable_params,
          "val_acc_mean": float(result.val_acc.mean()),
          "val_acc_std": float(result.val_acc.std()),
          "test_acc_mean": float(result.test_acc.mean()),
          "test_acc_std": float(result.test_acc.std()),
          "train_acc_mean": float(result.train_acc.mean()),
          "train_acc_std": float(result.train_acc.std()), "seeds": int(result.test_acc.size),
          "frozen_unchanged": result.frozen_unchanged}


def run(config: Config, workdir: str,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Trains every cell in every mode at every learning rate (or resumes); writes the outputs.

  Args:
    config: the experiment config (validated before any compute).
    workdir: output directory (created if missing).
    control: checkpointing (interval, simulated preemption, overwrite).

  Returns:
    The content of `results.json`, with `"timings"` (the content of
    `timings.json`) added, and `"already_complete": True` when the workdir
    held a complete run (which is then left as it was).

  Raises:
    validate.ConfigError: bad config or data, or a workdir holding another config.
    checkpoint.Preempted: after `control.stop_after_chunks` chunks.
  """
  cells(config)   # the config's own values, before the data is read
  split = load(config)
  specs = cells(config, split)
  mesh = sharding.seed_mesh(config.devices)
  memory.check(estimate_bytes(config, mesh.size, split), "classify")
  run_ = lifecycle.Run(workdir, dataclasses.asdict(config), control)
  if run_.finished is not None:
    return dict(run_.finished, timings=run_.timings, already_complete=True)
  try:
    for unit in range(len(run_.records), len(specs)):
      spec = specs[unit]
      result = classify.train(spec, range(config.seeds), split, validation=config.validation,
                              devices=config.devices, checkpoint=run_.fit_slot(unit))
      record = run_.unit_done(_record(spec, result), seconds=result.seconds)
      logging.info("[%d/%d] %s p=%g %-13s lr %g: val acc %.3f, test acc %.3f ± %.3f, "
                   "%d trainable, %.1f s on %d device(s)", unit + 1, len(specs), spec.name,
                   spec.keep_prob, spec.mode, spec.learning_rate, record["val_acc_mean"],
                   record["test_acc_mean"], record["test_acc_std"], record["trainable_params"],
                   result.seconds, result.devices)
  except BaseException:
    run_.close()
    raise
  sweep = run_.records
  rows = select(sweep)
  results = {"config": run_.config, "devices": mesh.size,
             "frozen_unchanged": all(r["frozen_unchanged"] for r in sweep),
             "chance": 1.0 / split.n_classes,
             "data": config.data or "digits (scikit-learn)", "rows": rows, "sweep": sweep}
  if run_.writer:
    columns = [k for k in rows[0] if k != "val_acc_by_lr"]
    outputs.write_csv(run_.path("results.csv"), columns, [[r[k] for k in columns] for r in rows])
    _plots(rows, run_.workdir, "digits" if not config.data else os.path.basename(config.data))
  timings = dict(run_.timings)
  return dict(run_.finish(results), timings=timings)
