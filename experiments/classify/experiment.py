"""Norm-only training of frozen random networks on real digits, beside its baselines.

Every (model, depth, width, p) cell is trained in every mode of
`jaxnorm.classify.MODES` with the same seeds, spread over the devices; the run
writes into its workdir:

* `config.json`   the config it ran with;
* `results.json`  `{"config", "devices", "frozen_unchanged", "chance", "rows": [...]}`,
  one row per (cell, mode) — written last, it marks the run complete;
* `timings.json`  wall time of each (cell, mode), by row index (kept out of
  `results.json`, which is bit-identical across runs of the same config on the
  same machine);
* `checkpoints/`  Orbax checkpoints (after every chunk of steps): re-running
  the same command resumes;
* `results.csv`   the same rows;
* `acc_vs_params.png`  test accuracy vs trainable parameters, one series per mode;
* `norm_scaling.png`   `norm` mode: test accuracy vs width (per depth) and vs depth.

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
from jaxnorm import data
from jaxnorm import memory
from jaxnorm import sharding
from jaxnorm import validate
from experiments import lifecycle
from experiments import outputs
from experiments import plots

COLUMNS = ("model", "mode", "depth", "width", "p", "trainable_params", "test_acc_mean",
           "test_acc_std", "train_acc_mean", "seconds")


@dataclasses.dataclass(frozen=True)
class Config:
  """The `classify` experiment: every hyperparameter, declared once (flags are generated from
  these fields by `experiments.config_flags`; the named configs are in `configs/`).

  The MLP cells are the union of a depth sweep (`mlp_depths` at the first
  width), a width sweep (`mlp_widths` at the first depth) and a sparsity sweep
  (`keep_probs` at the first depth and width); the conv cells are
  `conv_depths` x `conv_channels`.
  """

  mlp_depths: tuple[int, ...] = hparam(
      (1, 2, 3), "Hidden layers of the MLPs (depth sweep at the first width).")
  mlp_widths: tuple[int, ...] = hparam(
      (64, 256, 512), "Hidden widths of the MLPs (width sweep at the first depth).")
  keep_probs: tuple[float, ...] = hparam((1.0, 0.25),
                                         "Keep-probabilities p of the frozen MLP weights.")
  conv_depths: tuple[int, ...] = hparam(
      (2,), "Convolution blocks of the conv nets (empty: no conv net).")
  conv_channels: tuple[int, ...] = hparam((16,), "Channels of the conv nets.")
  modes: tuple[str, ...] = hparam(
      classify.MODES, "Training modes: norm, output, random_subset, norm_output, full.")
  norm: str = hparam("batchnorm", "Normalization kind: batchnorm | affine | layernorm.")
  seeds: int = hparam(4, "Seeds per cell and mode, trained at once.")
  steps: int = hparam(600, "Adam steps.")
  chunk_steps: int = hparam(300, "Steps per compiled chunk (a checkpoint is saved after each).")
  batch_size: int = hparam(128, "Examples per step.")
  learning_rate: float = hparam(3e-3, "Adam's peak learning rate (cosine decay).")
  seed: int = hparam(0, "Base random seed (the data split is fixed).")
  devices: int = hparam(0, "Devices to spread the seeds over (0: every device of the job).")


def cells(config: Config) -> list[classify.ClassifySpec]:
  """Validates `config` and lists every (cell, mode) spec, before any compute.

  Args:
    config: the experiment config.

  Returns:
    One spec per (cell, mode), cell by cell, each cell's modes in the order given.

  Raises:
    validate.ConfigError: naming the first bad value.
  """
  depths = validate.positive_ints("mlp_depths", config.mlp_depths)
  widths = validate.positive_ints("mlp_widths", config.mlp_widths)
  probs = [validate.probability("keep probability p", p) for p in config.keep_probs]
  if not probs:
    raise validate.ConfigError("keep_probs needs at least one entry")
  conv_depths = validate.positive_ints("conv_depths", config.conv_depths, min_len=0)
  for name in ("mlp_depths", "mlp_widths", "keep_probs", "conv_depths", "conv_channels"):
    validate.at_most(f"the number of {name}", len(getattr(config, name)), validate.MAX_SWEEP,
                     "each is a cell of the sweep")
  conv_channels = validate.positive_ints("conv_channels", config.conv_channels, min_len=0)
  if conv_depths and not conv_channels:   # would silently drop the conv net
    raise validate.ConfigError(
        f"conv_depths={list(conv_depths)} asks for conv nets: give their conv_channels too "
        f"(or conv_depths= for none)")
  if not config.modes:
    raise validate.ConfigError("modes needs at least one entry")
  for mode in config.modes:
    validate.one_of("mode", mode, classify.MODES)
  if len(set(config.modes)) != len(config.modes):
    raise validate.ConfigError(f"modes has repeats: {list(config.modes)}")
  validate.positive_int("seeds", config.seeds)
  validate.positive_int("steps", config.steps)
  validate.positive_int("chunk_steps", config.chunk_steps)
  validate.non_negative_int("devices", config.devices)
  mlp = dict.fromkeys([(d, widths[0], probs[0]) for d in depths]
                      + [(depths[0], w, probs[0]) for w in widths]
                      + [(depths[0], widths[0], p) for p in probs])
  shapes = [("mlp", d, w, p) for d, w, p in mlp] + [
      ("conv", d, c, 1.0) for d in conv_depths for c in conv_channels]
  return [classify.check_spec(classify.ClassifySpec(
      model=model, mode=mode, depth=d, width=w, keep_prob=p, norm=config.norm,
      steps=config.steps, chunk_steps=min(config.chunk_steps, config.steps),
      batch_size=config.batch_size,
      learning_rate=config.learning_rate, seed=config.seed))
          for model, d, w, p in shapes for mode in config.modes]


def table(rows: Sequence[dict[str, Any]], timings: Optional[dict[str, Any]] = None) -> str:
  """The accuracy table printed at the end of a run.

  Args:
    rows: `results.json`'s rows.
    timings: `timings.json` (seconds by row index); `None` leaves them out.

  Returns:
    The table.
  """
  timings = timings or {}
  return outputs.format_table(COLUMNS, [
      [timings.get(str(i), "-") if k == "seconds" else r[k] for k in COLUMNS]
      for i, r in enumerate(rows)])


def _plots(rows, workdir: str) -> None:
  by_mode = {}
  for r in rows:
    by_mode.setdefault(r["mode"], []).append(r)
  series = {}
  for mode, rs in by_mode.items():
    rs = sorted(rs, key=lambda r: r["trainable_params"])
    series[mode] = ([r["trainable_params"] for r in rs], [r["test_acc_mean"] for r in rs],
                    [r["test_acc_mean"] - r["test_acc_std"] for r in rs],
                    [r["test_acc_mean"] + r["test_acc_std"] for r in rs])
  plots.median_band(os.path.join(workdir, "acc_vs_params.png"), series,
                    xlabel="trainable parameters", ylabel="test accuracy (mean ± std)",
                    title="digits: frozen random nets, what is trained", logy=False)
  norm = [r for r in rows if r["mode"] == "norm" and r["model"] == "mlp" and r["p"] == 1.0]
  scaling = {}
  for key, label in (("width", "depth"), ("depth", "width")):
    groups = {}
    for r in norm:
      groups.setdefault(r[label], []).append(r)
    for value, rs in groups.items():
      if len(rs) > 1:
        rs = sorted(rs, key=lambda r: r[key])
        scaling[f"vs {key}, {label}={value}"] = (
            [r[key] for r in rs], [r["test_acc_mean"] for r in rs],
            [r["test_acc_mean"] - r["test_acc_std"] for r in rs],
            [r["test_acc_mean"] + r["test_acc_std"] for r in rs])
  if scaling:
    plots.median_band(os.path.join(workdir, "norm_scaling.png"), scaling,
                      xlabel="width (hidden units) or depth (hidden layers)",
                      ylabel="test accuracy, norm-only (mean ± std)",
                      title="norm-only MLPs on digits: width and depth", logy=False)


def estimate_bytes(config: Config, devices: int, split: data.Split) -> int:
  """Peak memory per device of the largest (cell, mode) the config asks for (an estimate)."""
  return max(classify.estimate_bytes(spec, -(-config.seeds // devices), len(split.y_train),
                                     len(split.y_test)) for spec in cells(config))


def _row(spec: classify.ClassifySpec, result: classify.ClassifyResult) -> dict[str, Any]:
  return {"model": spec.model, "mode": spec.mode, "depth": spec.depth, "width": spec.width,
          "p": spec.keep_prob, "trainable_params": result.trainable_params,
          "test_acc_mean": float(result.test_acc.mean()),
          "test_acc_std": float(result.test_acc.std()),
          "train_acc_mean": float(result.train_acc.mean()), "seeds": int(result.test_acc.size),
          "frozen_unchanged": result.frozen_unchanged}


def run(config: Config, workdir: str,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Trains every cell in every mode (or resumes) and writes the outputs into `workdir`.

  Args:
    config: the experiment config (validated before any compute).
    workdir: output directory (created if missing).
    control: checkpointing (interval, simulated preemption, overwrite).

  Returns:
    The content of `results.json`, with `"timings"` (the content of
    `timings.json`) added, and `"already_complete": True` when the workdir
    held a complete run (which is then left as it was).

  Raises:
    validate.ConfigError: bad config, or a workdir holding another config.
    checkpoint.Preempted: after `control.stop_after_chunks` chunks.
  """
  specs = cells(config)
  mesh = sharding.seed_mesh(config.devices)
  split = data.digits()
  memory.check(estimate_bytes(config, mesh.size, split), "classify")
  run_ = lifecycle.Run(workdir, dataclasses.asdict(config), control)
  if run_.finished is not None:
    return dict(run_.finished, timings=run_.timings, already_complete=True)
  try:
    for unit in range(len(run_.records), len(specs)):
      spec = specs[unit]
      result = classify.train(spec, range(config.seeds), split, devices=config.devices,
                              checkpoint=run_.fit_slot(unit))
      row = run_.unit_done(_row(spec, result), seconds=result.seconds)
      logging.info("[%d/%d] %s depth %d width %d p=%g %-13s: test acc %.3f ± %.3f, %d trainable, "
                   "%.1f s on %d device(s)", unit + 1, len(specs), spec.model, spec.depth,
                   spec.width, spec.keep_prob, spec.mode, row["test_acc_mean"],
                   row["test_acc_std"], row["trainable_params"], result.seconds, result.devices)
  except BaseException:
    run_.close()
    raise
  rows = run_.records
  results = {"config": run_.config, "devices": mesh.size,
             "frozen_unchanged": all(r["frozen_unchanged"] for r in rows),
             "chance": 1.0 / data.N_CLASSES, "rows": rows}
  if run_.writer:
    outputs.write_csv(run_.path("results.csv"), list(rows[0]), [list(r.values()) for r in rows])
    _plots(rows, run_.workdir)
  timings = dict(run_.timings)
  return dict(run_.finish(results), timings=timings)
