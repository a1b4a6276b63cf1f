"""Norm-only training of frozen random networks on real digits, beside its baselines.

Every (model, depth, width, p) cell is trained in every mode of
`jaxnorm.classify.MODES` with the same seeds; the run writes into its workdir:

* `results.json`  `{"config", "frozen_unchanged", "rows": [...]}`, one row per (cell, mode);
* `results.csv`   the same rows;
* `acc_vs_params.png`  test accuracy vs trainable parameters, one series per mode;
* `norm_scaling.png`   `norm` mode: test accuracy vs width (per depth) and vs depth.

Run it: `python -m experiments.classify --workdir=/tmp/classify`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import jax
from absl import logging

from jaxnorm import classify
from jaxnorm import data
from jaxnorm import validate
from jaxnorm.runs import outputs
from jaxnorm.runs import plots

COLUMNS = ("model", "mode", "depth", "width", "p", "trainable_params", "test_acc_mean",
           "test_acc_std", "train_acc_mean", "seconds")


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the `classify` experiment.

  The MLP cells are the union of a depth sweep (`mlp_depths` at the first
  width), a width sweep (`mlp_widths` at the first depth) and a sparsity sweep
  (`keep_probs` at the first depth and width); the conv cells are
  `conv_depths` x `conv_channels`.

  Attributes:
    mlp_depths: hidden layers of the MLPs.
    mlp_widths: hidden widths of the MLPs.
    keep_probs: keep-probabilities p of the frozen weights (MLP).
    conv_depths: convolution blocks of the conv nets (empty: no conv).
    conv_channels: channels of the conv nets.
    modes: training modes (subset of `classify.MODES`).
    norm: normalization kind.
    seeds: seeds per cell and mode.
    steps: Adam steps.
    batch_size: examples per step.
    learning_rate: Adam's peak learning rate (cosine decay).
    seed: base seed (the data split is fixed).
  """

  mlp_depths: Sequence[int] = (1, 2, 3)
  mlp_widths: Sequence[int] = (64, 256, 512)
  keep_probs: Sequence[float] = (1.0, 0.25)
  conv_depths: Sequence[int] = (2,)
  conv_channels: Sequence[int] = (16,)
  modes: Sequence[str] = classify.MODES
  norm: str = "batchnorm"
  seeds: int = 4
  steps: int = 600
  batch_size: int = 128
  learning_rate: float = 3e-3
  seed: int = 0


def cells(config: Config) -> list[classify.ClassifySpec]:
  """Validates `config` and lists every (cell, mode) spec, before any compute."""
  depths = validate.positive_ints("mlp_depths", config.mlp_depths)
  widths = validate.positive_ints("mlp_widths", config.mlp_widths)
  probs = [validate.probability("keep probability p", p) for p in config.keep_probs]
  if not probs:
    raise validate.ConfigError("keep_probs needs at least one entry")
  conv_depths = validate.positive_ints("conv_depths", config.conv_depths, min_len=0)
  conv_channels = validate.positive_ints("conv_channels", config.conv_channels, min_len=0)
  if not config.modes:
    raise validate.ConfigError("modes needs at least one entry")
  validate.positive_int("seeds", config.seeds)
  mlp = dict.fromkeys([(d, widths[0], probs[0]) for d in depths]
                      + [(depths[0], w, probs[0]) for w in widths]
                      + [(depths[0], widths[0], p) for p in probs])
  shapes = [("mlp", d, w, p) for d, w, p in mlp] + [
      ("conv", d, c, 1.0) for d in conv_depths for c in conv_channels]
  return [classify.check_spec(classify.ClassifySpec(
      model=model, mode=mode, depth=d, width=w, keep_prob=p, norm=config.norm,
      steps=config.steps, chunk_steps=max(1, config.steps // 2), batch_size=config.batch_size,
      learning_rate=config.learning_rate, seed=config.seed))
          for model, d, w, p in shapes for mode in config.modes]


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The accuracy table printed at the end of a run."""
  return outputs.format_table(COLUMNS, [[r[k] for k in COLUMNS] for r in rows])


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


def run(config: Config, workdir: str) -> dict[str, Any]:
  """Trains every cell in every mode and writes the outputs into `workdir`.

  Args:
    config: the experiment config (validated before any compute).
    workdir: output directory.

  Returns:
    The content of `results.json`.
  """
  workdir = validate.workdir(workdir)
  specs = cells(config)
  split = data.digits()
  rows, frozen_ok = [], True
  for i, spec in enumerate(specs):
    result = classify.train(spec, range(config.seeds), split)
    frozen_ok &= result.frozen_unchanged
    rows.append({"model": spec.model, "mode": spec.mode, "depth": spec.depth,
                 "width": spec.width, "p": spec.keep_prob,
                 "trainable_params": result.trainable_params,
                 "test_acc_mean": float(result.test_acc.mean()),
                 "test_acc_std": float(result.test_acc.std()),
                 "train_acc_mean": float(result.train_acc.mean()),
                 "seconds": round(result.seconds, 3), "seeds": config.seeds,
                 "frozen_unchanged": result.frozen_unchanged})
    logging.info("[%d/%d] %s depth %d width %d p=%g %-13s: test acc %.3f ± %.3f, %d trainable, "
                 "%.1f s", i + 1, len(specs), spec.model, spec.depth, spec.width, spec.keep_prob,
                 spec.mode, result.test_acc.mean(), result.test_acc.std(),
                 result.trainable_params, result.seconds)
  results = {"config": dataclasses.asdict(config), "frozen_unchanged": bool(frozen_ok),
             "chance": 1.0 / data.N_CLASSES, "rows": rows}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    outputs.write_json(os.path.join(workdir, "results.json"), results)
    outputs.write_csv(os.path.join(workdir, "results.csv"), list(rows[0]),
                      [list(r.values()) for r in rows])
    _plots(rows, workdir)
  return results
