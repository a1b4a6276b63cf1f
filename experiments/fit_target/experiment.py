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

from experiments.config_flags import hparam

from jaxnorm import checkpoint
from jaxnorm import distill
from jaxnorm import domain
from jaxnorm import fitspec
from jaxnorm import memory
from jaxnorm import sharding
from jaxnorm import validate
from experiments import lifecycle
from experiments import outputs
from experiments import plots

TABLE_COLUMNS = ("optimizer", "access", "width", "ratio", "trainable", "target", "evals",
                 "rel_mse_med", "q25", "q75", "diverged")
# What each method may see of the target: its outputs on inputs the method picks, or its weights.
ACCESS = {name: "weights" if name in fitspec.ORACLES else "black box"
          for name in fitspec.OPTIMIZERS}
# Relative MSE of rounding every output once to float32 (unit round-off u = 2^-24, u^2/3):
# the floor of what a float32 network can reach, whatever its norms.
FLOAT32_FLOOR = 2.0 ** -48 / 3
METHODS = {
    "adam": "gradient descent on the norms (Adam, cosine decay, fresh inputs every step).",
    "lbfgs": "L-BFGS on the norms, on a fixed batch of fit_size inputs.",
    "lm": "Levenberg-Marquardt on the norms, on a fixed batch of fit_size inputs.",
    "distill": "fit a student of the target's shape to fit_size evaluations, construct the "
               "norms from it, polish with Levenberg-Marquardt.",
    "extract": "read a student with two hidden layers out of queries of the target (kinks along "
               "random chords), construct the norms from it, polish with Levenberg-Marquardt; "
               "seeds it fails on take distill's student.",
    "construct": "the exact construction from the target's own weights (least squares below "
                 "ratio 1): what tuning only the norms can reach.",
}


@dataclasses.dataclass(frozen=True)
class Config:
  """The `fit_target` experiment: every hyperparameter, declared once (flags are generated
  from these fields by `experiments.config_flags`; the named configs are in `configs/`)."""

  target_widths: tuple[int, ...] = hparam(
      (8, 8, 8), "Widths d_0,...,d_l (input, hidden..., output) of the random target networks.")
  width_multipliers: tuple[float, ...] = hparam(
      (0.5, 1.0, 2.0, 4.0), "Hidden width of each random block as a multiple of "
      "d_in*d_out of the target layer it emulates (the width ratio); one fit per value.")
  widths: tuple[int, ...] = hparam(
      (), "Explicit hidden widths instead of --width_multipliers (each applies to every block).")
  seeds: int = hparam(8, "Seeds (frozen network + target) fitted at once per width.")
  optimizers: tuple[str, ...] = hparam(
      ("adam", "distill", "construct"), "Fitting methods side by side, each on every width and "
      "seed: adam | lbfgs | lm | distill | extract | construct (the exact construction from the "
      "target's weights: the oracle reference), or all.", aliases=("optimizer",))
  steps: Optional[int] = hparam(
      None, "Optimizer steps (none: per optimizer, adam 2000, lbfgs 500, lm 100, distill 10).")
  chunk_steps: Optional[int] = hparam(
      None, "Steps per compiled chunk; progress is reported in between (none: per optimizer).")
  batch_size: int = hparam(256, "Fresh inputs per step (adam).")
  learning_rate: float = hparam(1e-2, "Peak learning rate (adam).")
  schedule: str = hparam("cosine", "Learning-rate schedule (adam): constant | cosine.")
  norm: str = hparam("affine", "Norm layers of the frozen network: affine | batchnorm | "
                     "layernorm (distill and construct need affine).")
  output_norm: str = hparam("", "The network's last norm, if not --norm (e.g. affine after "
                            "layernorm: a LayerNorm output is normalised across its units, so "
                            "it can only fit outputs of zero mean and fixed spread).")
  sparsity: float = hparam(1.0, "Keep-probability p of each frozen weight, in (0, 1].")
  radius: float = hparam(1.0, "Radius of the input domain.")
  input_distribution: str = hparam("ball", "Inputs: ball | gaussian.")
  eval_size: int = hparam(4096, "Held-out inputs per seed.")
  seed: int = hparam(0, "Base random seed; seed s uses fold_in(key(seed), s).")
  init: str = hparam("standard", "Start of the norms: standard | linear (wide units in their "
                     "linear regime) | construct (oracle: the exact reconstruction).")
  fit_size: int = hparam(512, "Fixed inputs (target evaluations) of lbfgs, lm and distill.")
  restarts: int = hparam(16, "Random students per seed (distill).")
  student_widths: str = hparam(
      "", "The frozen network's widths between its blocks (the hidden widths of the MLP its "
      "norms realise, distill's student): empty = the target's; auto = the widest each width "
      "holds exactly (m_i >= d_(i-1) d_i), chosen without the target's hidden widths; or "
      "explicit, e.g. 24,16. The oracle (construct) always uses the target's.")
  student_steps: int = hparam(100, "Levenberg-Marquardt steps on each student (distill).")
  devices: int = hparam(0, "Devices to spread the seeds over (0: every device of the job).")
  seed_chunk: int = hparam(0, "Seeds per vmapped chunk on each device, lax.map over chunks "
                           "(0: one vmap over all).")


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
  for name in ("width_multipliers", "widths", "optimizers"):
    validate.at_most(f"the number of {name}", len(getattr(config, name)), validate.MAX_SWEEP,
                     "each is a fit of the run")
  validate.positive_int("seeds", config.seeds)
  validate.non_negative_int("devices", config.devices)
  validate.non_negative_int("seed_chunk", config.seed_chunk)
  validate.probability("sparsity (keep probability p)", config.sparsity)
  validate.one_of("input distribution", config.input_distribution, domain.INPUT_DISTRIBUTIONS)
  names = optimizers(config)
  # The hyperparameters a FitSpec shares with the config, by name.
  shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(fitspec.FitSpec)
            if f.name not in ("target_widths", "chunk_steps") and hasattr(config, f.name)}
  d = tuple(config.target_widths)
  explicit = () if config.student_widths in ("", "auto") else validate.positive_ints(
      "student_widths", _ints(config.student_widths))
  out = []
  for hidden in hidden_widths(config):
    narrow = distill.widest_student(d[0], d[-1], hidden) if config.student_widths == "auto" else (
        explicit)
    for name in names:
      spec = fitspec.FitSpec(
          target_widths=d, hidden_widths=hidden, keep_prob=config.sparsity, optimizer=name,
          chunk_steps=None, narrow_widths=() if name in fitspec.ORACLES else narrow, **shared)
      if name in fitspec.ORACLES:   # not fitted: its one step leaves the construction as it is
        spec = dataclasses.replace(spec, steps=fitspec.DEFAULT_STEPS[name])
      chunk = spec.chunk_steps if config.chunk_steps is None or name in fitspec.ORACLES else (
          config.chunk_steps)
      if isinstance(chunk, int) and isinstance(spec.steps, int):
        chunk = min(chunk, spec.steps)
      out.append(fitspec.check_spec(dataclasses.replace(spec, chunk_steps=chunk)))
  return out


def _ints(text: str) -> tuple:
  try:
    return tuple(int(v) for v in text.split(","))
  except ValueError:
    raise validate.ConfigError(f"student_widths must be empty, auto, or integers like 24,16; "
                               f"got {text!r}") from None


def target_params(target_widths: Sequence[int]) -> int:
  """Weights and biases of a target MLP with these widths."""
  return sum(a * b + b for a, b in zip(target_widths[:-1], target_widths[1:]))


def _row(spec: fitspec.FitSpec, result: fitspec.FitResult) -> dict[str, Any]:
  d = spec.target_widths
  ratios = [m / (a * b) for m, a, b in zip(spec.hidden_widths, d[:-1], d[1:])]
  q25, med, q75 = np.percentile(result.rel_mse, [25, 50, 75])
  width = spec.hidden_widths[0] if len(set(spec.hidden_widths)) == 1 else list(
      spec.hidden_widths)
  row = {"optimizer": spec.optimizer, "width_ratio": min(ratios), "width": width,
         "init": spec.init, "steps": spec.steps, "trainable_params": result.trainable_params,
         "target_params": target_params(d), "evals": spec.evals,
         "rel_mse_median": float(med), "rel_mse_q25": float(q25), "rel_mse_q75": float(q75),
         "diverged": int(result.diverged.sum()), "seeds": int(result.seed_ids.size),
         "seeds_at_most_1e-4": int(np.sum(result.rel_mse <= 1e-4)),
         "network_widths": list(spec.network_widths), "norm": spec.norm,
         "output_norm": spec.output_norm or spec.norm}
  # what a constructed start reported (distill, init=construct, construct): per seed
  for key in ("construction", "students"):
    if key in result.start_report:
      row[key] = result.start_report[key]
  queries = row.get("students", {}).get("queries")
  if queries:   # extract: the queries that read the students count as evaluations too
    row["evals"] = spec.evals + int(np.max(queries))
  return row


LAYERNORM_OUTPUT = (
    "output LayerNorm: the last norm normalises each output vector across its units (mean 0, "
    "variance 1) before its scale and shift, so the outputs are confined to a (d_out - 2)-"
    "dimensional family; --output_norm=affine ends the network with a free affine instead.")


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The results table printed at the end of a run, with a legend of its columns."""
  keys = ("optimizer", "width", "width_ratio", "trainable_params", "target_params", "evals",
          "rel_mse_median", "rel_mse_q25", "rel_mse_q75", "diverged")
  body = [[r["optimizer"], ACCESS[r["optimizer"]]] + [r[k] for k in keys[1:]] for r in rows]
  legend = [
      "rel_mse_med, q25, q75: held-out relative MSE over the seeds (median, quartiles); 1 is "
      "predicting 0.",
      "ratio: width m of each random block / (d_in d_out) of its target layer; from ratio 1 an "
      "exact solution exists.",
      f"float32 floor: ~{FLOAT32_FLOOR:.1e} (rounding each output once); trainable: norm "
      "entries tuned; target: the target's weights and biases.",
      "access: black box = the method only evaluates the target (evals times per seed); "
      "weights = the exact construction reads the target's weights (the reference)."]
  legend += [f"{name}: {METHODS[name]}" for name in dict.fromkeys(r["optimizer"] for r in rows)]
  if any(r.get("output_norm") == "layernorm" for r in rows):
    legend.append(LAYERNORM_OUTPUT)
  return outputs.format_table(TABLE_COLUMNS, body) + "\n" + "\n".join(legend)


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
      # (as read back from JSON: a non-finite median is the string "nan")
      logging.info("  held-out relative MSE median %s [%s, %s], %d diverged, %.1f s, "
                   "frozen unchanged: %s", *(outputs.number(row[k]) for k in (
                       "rel_mse_median", "rel_mse_q25", "rel_mse_q75")), row["diverged"],
                   result.seconds, result.frozen_unchanged)
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
                       "final_train_rel_mse", "diverged"],
                      [m for r in records for m in r["metrics"]])
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
    label = (f"{name} (black box, {ordered[0]['evals']} evals/seed)" if ACCESS[name] ==
             "black box" else f"{name} (oracle: reads the target's weights)")
    series[label] = tuple([r[k] for r in ordered] for k in (
        "width_ratio", "rel_mse_median", "rel_mse_q25", "rel_mse_q75"))
  plots.median_band(
      path, series, xlabel="width ratio m / (d_in d_out)", ylabel="held-out relative MSE",
      title=(f"target {list(config.target_widths)}, norm={config.norm}, p={config.sparsity:g}, "
             f"init={config.init}, {config.seeds} seeds"),
      xmarks={1.0: "ratio 1: an exact solution exists"},
      ymarks={FLOAT32_FLOOR: "float32 floor (output rounding)"})
