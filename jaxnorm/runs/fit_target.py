"""Fit frozen random networks to random target networks by tuning only their norms.

For each width of the random blocks and each fitting method (`optimizers`),
all seeds are fitted in one compiled program (`jaxnorm.fit_seeds`); every
method sees the same seeds (frozen networks, targets, held-out sets). The run
writes into its workdir:

* `config.json`   the config it ran with;
* `results.json`  `{"config", "devices", "frozen_unchanged", "rows": [...]}`, one
  row per (width, optimizer) — written last, it marks the run complete;
* `timings.json`  wall time of each fit (kept out of `results.json`, which is
  bit-identical across runs of the same config on the same machine);
* `checkpoints/`  Orbax checkpoints: re-running the same command resumes;
* `metrics.csv`   one line per (optimizer, width, seed): held-out relative MSE,
  final loss, diverged;
* `curves.csv`    one line per (optimizer, width, seed, chunk): training relative MSE;
* `rel_mse_vs_width.png`  median held-out relative MSE vs width ratio, quartile
  band, one line per optimizer.

Run it: `python -m experiments.fit_target --workdir=/tmp/fit_target`
(`--optimizers=all` compares every method).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from jaxnorm import checkpoint
from jaxnorm import domain
from jaxnorm import fitspec
from jaxnorm import memory
from jaxnorm import sharding
from jaxnorm import validate
from jaxnorm.runs import lifecycle
from jaxnorm.runs import outputs
from jaxnorm.runs import plots

TABLE_COLUMNS = ("optimizer", "width", "ratio", "trainable", "target", "evals", "rel_mse_med",
                 "q25", "q75", "diverged")


@dataclasses.dataclass(frozen=True)
class Config:
  """Defaults of the `fit_target` experiment (the absl flags mirror these).

  Attributes:
    target_widths: `[d_0, ..., d_l]` of the random target networks.
    width_multipliers: hidden width of every random block as a multiple of
      `d_in * d_out` of the target layer it emulates; one fit per multiplier.
    widths: explicit hidden widths instead (each applies to every block); when
      non-empty it replaces `width_multipliers`.
    seeds: independent seeds (frozen network + target) fitted per width.
    optimizers: the fitting methods to compare, each on every width and seed
      (`jaxnorm.fitspec.OPTIMIZERS`, or `("all",)` for every one).
    steps, chunk_steps: as in `jaxnorm.FitSpec`; `None` takes each
      optimizer's default (`jaxnorm.fitspec.DEFAULT_STEPS`).
    batch_size, learning_rate, schedule, norm, radius, input_distribution,
    eval_size, seed, fit_size, restarts, student_steps: as in `jaxnorm.FitSpec`.
    sparsity: keep-probability `p` of the frozen weights (1 = dense).
    init: `"standard"`, `"linear"` or `"construct"` (see `jaxnorm.FitSpec`;
      `distill` needs `"standard"`).
    devices: devices to spread the seeds over (0: every device).
    seed_chunk: seeds per vmapped chunk on each device, `lax.map` over the
      chunks (0: one `vmap` over all of them).
  """

  target_widths: Sequence[int] = (8, 8, 8)
  width_multipliers: Sequence[float] = (0.25, 0.5, 1.0, 2.0, 4.0)
  widths: Sequence[int] = ()
  seeds: int = 8
  optimizers: Sequence[str] = ("adam",)
  steps: Optional[int] = None
  chunk_steps: Optional[int] = None
  batch_size: int = 256
  learning_rate: float = 1e-2
  schedule: str = "cosine"
  norm: str = "affine"
  sparsity: float = 1.0
  radius: float = 1.0
  input_distribution: str = "ball"
  eval_size: int = 4096
  seed: int = 0
  init: str = "standard"
  fit_size: int = 512
  restarts: int = 16
  student_steps: int = 100
  devices: int = 0
  seed_chunk: int = 0


def optimizers(config: Config) -> tuple[str, ...]:
  """The optimizers the config asks for (`"all"` expanded), validated.

  Args:
    config: the experiment config.

  Returns:
    Optimizer names, in the order given, without repeats.

  Raises:
    validate.ConfigError: naming an unknown optimizer.
  """
  names = tuple(config.optimizers)
  if not names:
    raise validate.ConfigError("optimizers needs at least one entry")
  if "all" in names:
    names = fitspec.OPTIMIZERS
  for name in names:
    validate.one_of("optimizer", name, fitspec.OPTIMIZERS)
  return tuple(dict.fromkeys(names))


def hidden_widths(config: Config) -> list[tuple[int, ...]]:
  """The hidden widths `(m_1, ..., m_l)` of each fit the config asks for.

  Args:
    config: the experiment config.

  Returns:
    One tuple per fit, in the order given.
  """
  d = list(config.target_widths)
  products = [a * b for a, b in zip(d[:-1], d[1:])]
  if config.widths:
    return [tuple(int(m) for _ in products) for m in config.widths]
  return [tuple(max(1, round(r * p)) for p in products) for r in config.width_multipliers]


def specs(config: Config) -> list[fitspec.FitSpec]:
  """Validates `config` and returns one `FitSpec` per (width, optimizer), before any compute.

  Args:
    config: the experiment config.

  Returns:
    The specs, width by width, each width's optimizers in the order given.

  Raises:
    validate.ConfigError: naming the first bad value.
  """
  validate.positive_ints("target_widths", config.target_widths, min_len=2)
  if config.widths:
    validate.positive_ints("widths", config.widths)
  else:
    validate.positive_floats("width_multipliers", config.width_multipliers)
  validate.positive_int("seeds", config.seeds)
  validate.non_negative_int("devices", config.devices)
  validate.non_negative_int("seed_chunk", config.seed_chunk)
  validate.probability("sparsity (keep probability p)", config.sparsity)
  validate.one_of("input distribution", config.input_distribution, domain.INPUT_DISTRIBUTIONS)
  names = optimizers(config)
  out = []
  for hidden in hidden_widths(config):
    for name in names:
      spec = fitspec.FitSpec(
          target_widths=tuple(config.target_widths), hidden_widths=hidden, norm=config.norm,
          keep_prob=config.sparsity, steps=config.steps, optimizer=name,
          batch_size=config.batch_size, learning_rate=config.learning_rate,
          schedule=config.schedule, input_distribution=config.input_distribution,
          radius=config.radius, eval_size=config.eval_size, seed=config.seed, init=config.init,
          fit_size=config.fit_size, restarts=config.restarts, student_steps=config.student_steps)
      chunk = spec.chunk_steps if config.chunk_steps is None else config.chunk_steps
      if isinstance(chunk, int) and isinstance(spec.steps, int):
        chunk = min(chunk, spec.steps)
      out.append(fitspec.check_spec(dataclasses.replace(spec, chunk_steps=chunk)))
  return out


def target_params(target_widths: Sequence[int]) -> int:
  """Weights and biases of a target MLP with these widths."""
  return sum(a * b + b for a, b in zip(target_widths[:-1], target_widths[1:]))


def _row(spec: fitspec.FitSpec, result: fitspec.FitResult) -> dict[str, Any]:
  d = spec.target_widths
  ratios = [m / (a * b) for m, a, b in zip(spec.hidden_widths, d[:-1], d[1:])]
  q25, med, q75 = np.percentile(result.rel_mse, [25, 50, 75])
  width = spec.hidden_widths[0] if len(set(spec.hidden_widths)) == 1 else list(
      spec.hidden_widths)
  return {"optimizer": spec.optimizer, "width_ratio": min(ratios), "width": width,
          "init": spec.init, "steps": spec.steps, "trainable_params": result.trainable_params,
          "target_params": target_params(d), "evals": spec.evals,
          "rel_mse_median": float(med), "rel_mse_q25": float(q25), "rel_mse_q75": float(q75),
          "diverged": int(result.diverged.sum()), "seeds": int(result.seed_ids.size)}


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The results table printed at the end of a run."""
  keys = ("optimizer", "width", "width_ratio", "trainable_params", "target_params", "evals",
          "rel_mse_median", "rel_mse_q25", "rel_mse_q75", "diverged")
  return outputs.format_table(TABLE_COLUMNS, [[r[k] for k in keys] for r in rows])


def run(config: Config, workdir: str,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Runs the experiment (or resumes it) and writes its outputs into `workdir`.

  Args:
    config: the experiment config (validated before any compute).
    workdir: output directory (created if missing).
    control: checkpointing (interval, simulated preemption, overwrite).

  Returns:
    The content of `results.json`, with `"already_complete": True` added when
    the workdir held a complete run (which is then left as it was).

  Raises:
    validate.ConfigError: bad config, or a workdir holding another config.
    checkpoint.Preempted: after `control.stop_after_chunks` chunks.
  """
  fit_specs = specs(config)
  mesh = sharding.seed_mesh(config.devices)
  memory.check(estimate_bytes(config, mesh.size), "fit_target")
  run_ = lifecycle.Run(workdir, dataclasses.asdict(config), control)
  if run_.finished is not None:
    return dict(run_.finished, already_complete=True)
  try:
    for unit in range(len(run_.records), len(fit_specs)):
      spec = fit_specs[unit]
      logging.info("[%d/%d] fitting %d seeds with %s on %d device(s): frozen widths %s, norm %s, "
                   "p=%g", unit + 1, len(fit_specs), config.seeds, spec.optimizer, mesh.size,
                   list(spec.network_widths), spec.norm, spec.keep_prob)
      result = fitspec.fit_seeds(spec, range(config.seeds), on_chunk=_progress,
                             devices=config.devices, seed_chunk=config.seed_chunk or None,
                             checkpoint=run_.fit_slot(unit))
      record = run_.unit_done(_record(spec, result), seconds=result.seconds)
      row = record["row"]
      logging.info("  held-out relative MSE median %.4g [%.4g, %.4g], %d diverged, %.1f s, "
                   "frozen unchanged: %s", row["rel_mse_median"], row["rel_mse_q25"],
                   row["rel_mse_q75"], row["diverged"], result.seconds, result.frozen_unchanged)
  except BaseException:
    run_.close()
    raise
  records = run_.records
  rows = [r["row"] for r in records]
  results = {"config": run_.config, "devices": mesh.size,
             "frozen_unchanged": all(r["frozen_unchanged"] for r in records), "rows": rows}
  if run_.writer:
    outputs.write_csv(run_.path("metrics.csv"),
                      ["optimizer", "width_ratio", "width", "seed", "rel_mse",
                       "final_train_rel_mse", "diverged"], [m for r in records for m in r["metrics"]])
    outputs.write_csv(run_.path("curves.csv"),
                      ["optimizer", "width_ratio", "width", "seed", "step", "train_rel_mse"],
                      [c for r in records for c in r["curves"]])
    _plot(config, rows, run_.path("rel_mse_vs_width.png"))
  return run_.finish(results)


def _progress(c: fitspec.ChunkReport) -> None:
  logging.info("  chunk %d/%d  step %d  median loss %.4g  %.3g steps/s  diverged %d  ETA %.0f s",
               c.chunk + 1, c.n_chunks, c.step, c.median_loss, c.steps_per_second, c.diverged,
               c.eta_seconds)


def _record(spec: fitspec.FitSpec, result: fitspec.FitResult) -> dict[str, Any]:
  """What `results.json`, `metrics.csv` and `curves.csv` need of one fit."""
  row = _row(spec, result)
  key = [spec.optimizer, row["width_ratio"], row["width"]]
  metrics, curves = [], []
  for s, mse, curve, div in zip(result.seed_ids, result.rel_mse, result.loss_curve,
                                result.diverged):
    metrics.append(key + [int(s), float(mse), float(curve[-1]), bool(div)])
    curves += [key + [int(s), int(step), float(v)] for step, v in zip(result.chunk_steps, curve)]
  return {"row": row, "metrics": metrics, "curves": curves,
          "frozen_unchanged": bool(result.frozen_unchanged)}


def estimate_bytes(config: Config, devices: int) -> int:
  """Peak device memory of the largest fit the config asks for, per device (an estimate)."""
  return max(fitspec.estimate_bytes(spec, -(-config.seeds // devices), config.seed_chunk or None)
             for spec in specs(config))


def _plot(config: Config, rows: Sequence[dict[str, Any]], path: str) -> None:
  series = {}
  for name in dict.fromkeys(r["optimizer"] for r in rows):
    ordered = sorted((r for r in rows if r["optimizer"] == name), key=lambda r: r["width_ratio"])
    label = f"{name} ({ordered[0]['evals']} evals/seed)"
    series[label] = tuple([r[k] for r in ordered] for k in (
        "width_ratio", "rel_mse_median", "rel_mse_q25", "rel_mse_q75"))
  plots.median_band(
      path, series, xlabel="width ratio m / (d_in d_out)", ylabel="held-out relative MSE",
      title=(f"target {list(config.target_widths)}, norm={config.norm}, p={config.sparsity:g}, "
             f"init={config.init}, {config.seeds} seeds"))
