"""Where the exact construction holds, where it breaks, how far it scales.

Studies (`Config.study`), each writing `results.json`, `results.csv` and a PNG
into the workdir:

* `dense`  success fraction (float64 relative error < 1e-6) over seeds versus
  width ratio m/(d_in d_out) for one random block per d: the phase transition at 1.
* `sparse` smallest width m* at which a sparsified block (keep-probability p)
  is exact, median over seeds, next to the coverage estimate
  max(d_in d_out, ln(d_in d_out)/p^2), and the non-zero frozen weights it needs
  relative to the target's parameter count.
* `scale`  seconds (compilation included) and error of the matrix-free `cg`
  solver in float32 at m = 2 d^2, next to dense `lstsq` for every d whose dense
  system fits (`construct.LSTSQ_MAX_ENTRIES`), with the speed ratio.
* `gap`    at equal widths and seeds, held-out relative MSE of the construction
  next to gradient fitting (Adam) from the standard init and from the construction.
* `conv`   CNNs (`jaxnorm.reconstruct_conv`): the phase transition of one 3x3
  conv block `c -> c + 1` at width ratio m/(k^2 c_in c_out) = 1 (float64,
  success over seeds), and a small CNN trained on the digits with plain Flax,
  rebuilt by the BatchNorms of a frozen random CNN at `--conv_ratio`, in
  float64 and float32: accuracies, identical predictions, logit errors
  (`experiments/reconstruct/conv_rows.py`).

Relative error = max |g(x) - f(x)| / max |f(x)| over points inside the ball of
the radius and on its sphere. One block (target depth 1, d_in = d_out = d) for
the dense, sparse and scale studies; widths are nested (the first m units of
one wide frozen network per seed), so success is monotone in m.

Each row of a study is one unit of work (`cases`): the run checkpoints after
every row (and the gap study's Adam fits after every chunk), re-running the
same command resumes, and `results.json` holds no wall-clock number — seconds,
GFLOP/s, peak fractions and speed-ups go to `timings.json` (by row index), so
`results.json` and `results.csv` are bit-identical across runs of the same
config on the same machine.

Run it: `python -m experiments.reconstruct --workdir=/tmp/rec_dense --study=dense`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from absl import logging

from experiments.config_flags import hparam

from jaxnorm import checkpoint
from jaxnorm import construct
from jaxnorm import construct_conv
from jaxnorm import fitspec
from jaxnorm import memory
from jaxnorm import sharding
from jaxnorm import validate
from experiments import lifecycle
from experiments import outputs
from experiments import peak
from experiments import plots
from experiments.reconstruct import conv_rows
from experiments.reconstruct import rows as reconstruct_rows

STUDIES = ("dense", "sparse", "scale", "gap", "conv")
MAX_SEEDS = 10_000
DEFAULT_DIMS = {"dense": (4, 8, 16), "sparse": (8, 16), "scale": (16, 32, 64, 128, 256),
                "gap": (8,), "conv": (2,)}
DEFAULT_RATIOS = {"dense": (0.5, 0.75, 0.9, 0.97, 1.0, 1.1, 1.25, 1.5, 2.0), "gap": (1.0, 2.0, 4.0),
                  "conv": (0.5, 0.75, 0.9, 0.97, 1.0, 1.1, 1.5, 2.0)}
COLUMNS = ("study", "d", "p", "width", "width_ratio", "rel_error", "success", "seconds", "solver")
GAP_METHODS = ("standard", "construct", "construction")   # Adam from either init; the construction


@dataclasses.dataclass(frozen=True)
class Config:
  """The `reconstruct` experiment: every hyperparameter, declared once (flags are generated
  from these fields by `experiments.config_flags`; the named configs are in `configs/`)."""

  study: str = hparam("dense", "Study: dense | sparse | scale | gap | conv.")
  dims: tuple[int, ...] = hparam((), "Block sizes d, d_in = d_out = d (conv: channels c of a "
                                 "3x3 block c -> c+1; empty: the study's own).")
  ratios: tuple[float, ...] = hparam(
      (), "Width ratios m/(d_in d_out) (dense, gap; empty: the study's own).")
  keep_probs: tuple[float, ...] = hparam((1.0, 0.5, 0.25, 0.125, 0.0625),
                                         "Keep-probabilities p (sparse).")
  seeds: int = hparam(8, "Seeds per cell.")
  radius: float = hparam(1.0, "Inputs with ||x|| <= radius.")
  seed: int = hparam(0, "Base random seed.")
  steps: int = hparam(2000, "Gradient steps (gap).")
  learning_rate: float = hparam(1e-2, "Adam's peak learning rate (gap).")
  test_points: int = hparam(2000, "Points for the relative error (half inside the ball, half "
                            "on the sphere).")
  conv_ratio: float = hparam(1.5, "Width ratio m/(k^2 c_in c_out) of every block of the "
                             "rebuilt trained CNN (conv).")
  train_steps: int = hparam(400, "Full-batch Adam steps that train the digits CNN (conv).")
  conv_scale_channels: int = hparam(64, "Channels c of the conv study's scale row, one float32 "
                                    "3x3 block c -> c at m = 2 k^2 c^2 (0: no scale row).")
  devices: int = hparam(0, "Devices the gap study's Adam fits spread their seeds over (0: "
                        "every device); the other studies solve one block at a time.")

  def resolved(self) -> "Config":
    """The config with the study's defaults filled in (validated)."""
    validate.one_of("study", self.study, STUDIES)
    dims = validate.positive_ints("dims", self.dims or DEFAULT_DIMS[self.study])
    ratios = tuple(self.ratios or DEFAULT_RATIOS.get(self.study, ()))
    if self.study in ("dense", "gap", "conv"):
      validate.positive_floats("ratios", ratios)
    validate.positive_float("conv_ratio", self.conv_ratio)
    if self.study == "sparse" and not self.keep_probs:
      raise validate.ConfigError("keep_probs needs at least one entry")
    for p in self.keep_probs:
      validate.probability("keep probability p", p)
    for name in ("seeds", "steps", "test_points", "train_steps"):
      validate.positive_int(name, getattr(self, name))
    validate.prng_seed("seed", self.seed)
    validate.at_most("seeds", self.seeds, MAX_SEEDS, "every seed is solved one after another")
    for name, values in (("dims", dims), ("ratios", ratios), ("keep_probs", self.keep_probs)):
      validate.at_most(f"the number of {name}", len(values), validate.MAX_SWEEP,
                       "each is a row of the study")
    validate.non_negative_int("devices", self.devices)
    validate.non_negative_int("conv_scale_channels", self.conv_scale_channels)
    validate.positive_float("radius", self.radius)
    validate.positive_float("learning_rate", self.learning_rate)
    if self.study == "gap" and len(dims) != 1:
      raise validate.ConfigError(f"the gap study takes one d (target d,d,d), got {list(dims)}")
    return dataclasses.replace(self, dims=dims, ratios=ratios,
                               keep_probs=tuple(float(p) for p in self.keep_probs))


def _scale_has_lstsq(d: int) -> bool:
  return d * d * 2 * d * d <= construct.LSTSQ_MAX_ENTRIES


def cases(config: Config) -> list[dict[str, Any]]:
  """The units of work of the resolved config's study, one per row of its results, in order.

  Args:
    config: a resolved config (`Config.resolved`).

  Returns:
    JSON-able dicts: `{"d", "width"}` (dense), `{"d", "p"}` (sparse),
    `{"d", "solver"}` (scale), `{"ratio", "method"}` (gap).

  Raises:
    validate.ConfigError: a dense least-squares system above
      `construct.LSTSQ_MAX_ENTRIES`, or a bad gap fit.
  """
  if config.study == "dense":
    out = [{"d": d, "width": m} for d in config.dims
           for m in reconstruct_rows.dense_widths(config, d)]
  elif config.study == "sparse":
    out = [{"d": d, "p": p} for d in config.dims for p in config.keep_probs]
  elif config.study == "scale":
    out = [{"d": d, "solver": s} for d in config.dims
           for s in (("cg", "lstsq") if _scale_has_lstsq(d) else ("cg",))]
  elif config.study == "conv":
    out = [{"part": "phase", "c": c, "ratio": r} for c in config.dims for r in config.ratios]
    out += [{"part": "trained", "dtype": t} for t in ("float64", "float32")]
    if config.conv_scale_channels:
      out.append({"part": "scale", "c": config.conv_scale_channels})
  else:
    out = [{"ratio": r, "method": k} for r in config.ratios for k in GAP_METHODS]
    for r in config.ratios:
      reconstruct_rows.gap_spec(config, r)
  for case in out:
    d, m = case.get("d"), _lstsq_width(config, case)
    if m and d * d * m > construct.LSTSQ_MAX_ENTRIES:
      raise validate.ConfigError(
          f"{config.study} study at d={d}: the dense least-squares system would have "
          f"{d * d * m:.3g} entries (about {memory.human(_lstsq_bytes(d, m))}) > "
          f"{construct.LSTSQ_MAX_ENTRIES:.3g}; use smaller dims, ratios or a larger p")
  return out


def _lstsq_width(config: Config, case: dict[str, Any]) -> Optional[int]:
  """The widest block a case solves with dense least squares (None: none)."""
  if config.study == "dense":
    return max(reconstruct_rows.dense_widths(config, case["d"]))
  if config.study == "sparse":
    return reconstruct_rows.sparse_max_width(case["d"], case["p"])
  if config.study == "scale":
    return 2 * case["d"] ** 2 if case["solver"] == "lstsq" else None
  return None


def _lstsq_bytes(d: int, m: int) -> int:
  """float64 Khatri–Rao system `[d^2, m]`, LAPACK's copy of it, its square factor, vectors."""
  n = d * d
  return 8 * (2 * n * m + n * n + 8 * (n + m))


def estimate_bytes(config: Config, devices: int) -> int:
  """Peak memory of the study's largest unit of work, per device (an estimate).

  Args:
    config: a resolved config.
    devices: devices the gap study's fits are spread over.

  Returns:
    Bytes.
  """
  need = []
  if config.study == "conv":   # the scale row's block and probe activations (float32), or small
    m = 2 * 9 * config.conv_scale_channels ** 2
    return max(256 << 20, 4 * (4 * 9 * config.conv_scale_channels * m
                               + 2 * construct_conv.PROBE_ACTIVATIONS))
  for case in cases(config):
    if config.study == "gap" and case["method"] != "construction":
      spec = reconstruct_rows.gap_spec(config, case["ratio"], case["method"])
      need.append(fitspec.estimate_bytes(spec, -(-config.seeds // devices)))
      continue
    if config.study == "gap":   # construct's "auto" solver picks lstsq for small systems
      d = config.dims[0]
      m = reconstruct_rows.gap_spec(config, case["ratio"]).hidden_widths[0]
      lstsq = m if d * d * m <= construct.LSTSQ_AUTO_ENTRIES else None
    else:
      d = case["d"]
      lstsq = _lstsq_width(config, case)
      m = lstsq or 2 * d * d
    solve = _lstsq_bytes(d, lstsq) if lstsq else 8 * 8 * (m + d * d)   # cg: a few vectors
    need.append(solve + 8 * (2 * m * d + 2 * config.test_points * (m + d)))  # block, activations
  return max(need)


def with_timings(rows: Sequence[dict[str, Any]], timings: Optional[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
  """Rows with their `timings.json` numbers merged in, and lstsq's time over cg's (`cg_speedup`).

  Args:
    rows: `results.json`'s rows.
    timings: `timings.json` (by row index), or `None`.

  Returns:
    New row dicts.
  """
  timings = timings or {}
  out = [dict(r, **timings.get(str(i), {})) for i, r in enumerate(rows)]
  cg = {r["d"]: r["seconds"] for r in out if r["study"] == "scale" and r["solver"] == "cg"
        and "seconds" in r}
  for r in out:
    if r["study"] == "scale" and r["solver"] == "lstsq" and "seconds" in r and r["d"] in cg:
      r["cg_speedup"] = float(f"{r['seconds'] / cg[r['d']]:.3g}")
  return out


def _plot(config: Config, rows, path: str) -> None:
  if config.study == "dense":
    series = {f"d={d}": ([r["width_ratio"] for r in rows if r["d"] == d],
                         [r["success"] for r in rows if r["d"] == d]) for d in config.dims}
    plots.lines(path, series, xlabel="width ratio m / (d_in d_out)",
                ylabel=f"success fraction (rel. error < {reconstruct_rows.SUCCESS_TOL:g}, float64)",
                title=f"dense blocks, {config.seeds} seeds", logx=False, logy=False)
  elif config.study == "sparse":
    done = [r for r in rows if isinstance(r["width"], (int, float)) and math.isfinite(r["width"])]
    series = {f"d={d}": ([r["coverage_estimate"] for r in done if r["d"] == d],
                         [r["width"] for r in done if r["d"] == d]) for d in config.dims}
    plots.lines(path, series, xlabel="coverage estimate max(d², ln(d²)/p²)",
                ylabel="measured m* (median over seeds)", diagonal=True,
                title=f"sparse blocks, p in {list(config.keep_probs)}, {config.seeds} seeds")
  elif config.study == "conv":
    phase = [r for r in rows if r.get("part") == "phase"]   # (the scale row is in the table)
    series = {f"3x3 {c}->{c + 1}": ([r["width_ratio"] for r in phase if r["d"] == c],
                                    [r["success"] for r in phase if r["d"] == c])
              for c in config.dims}
    plots.lines(path, series, xlabel="width ratio m / (k^2 c_in c_out)",
                ylabel=f"success fraction (rel. error < {reconstruct_rows.SUCCESS_TOL:g}, float64)",
                title=f"conv blocks, {config.seeds} seeds", logx=False, logy=False)
  elif config.study == "scale":
    series = {s: ([r["d"] for r in rows if r["solver"] == s],
                  [r["seconds"] for r in rows if r["solver"] == s]) for s in ("cg", "lstsq")}
    plots.lines(path, series, xlabel="d (m = 2 d²)", ylabel="seconds (compile included)",
                title="one block: matrix-free cg (float32) vs dense lstsq (float64)")
  else:
    methods = sorted({r["method"] for r in rows})
    series = {k: ([r["width_ratio"] for r in rows if r["method"] == k],
                  [r["rel_mse"] for r in rows if r["method"] == k]) for k in methods}
    plots.lines(path, series, xlabel="width ratio m / (d_in d_out)",
                ylabel="held-out relative MSE (median)",
                title=f"target {config.dims[0]},{config.dims[0]},{config.dims[0]}: construction "
                      f"vs gradient fitting, {config.seeds} seeds, {config.steps} steps")


def table(rows: Sequence[dict[str, Any]], timings: Optional[dict[str, Any]] = None) -> str:
  """The study's table: the common columns plus the study's own.

  Args:
    rows: `results.json`'s rows.
    timings: `timings.json`, for the seconds, GFLOP/s, peak fractions and
      speed-ups (`None`: shown as "-").

  Returns:
    The table.
  """
  rows = with_timings(rows, timings)
  extra = [k for k in ("part", "dtype", "identical_predictions", "target_accuracy",
                       "rebuilt_accuracy", "frozen_params", "tuned_params", "target_params",
                       "method", "coverage_estimate", "nnz_over_target_params", "iterations",
                       "residual", "gflops", "peak_fraction", "cg_speedup")
           if any(k in r for r in rows)]
  cols = list(COLUMNS[1:]) + extra
  return outputs.format_table(cols, [[r[k] if r.get(k) is not None else "-" for k in cols]
                                     for r in rows])


def run(config: Config, workdir: str,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Runs one study (or resumes it) and writes its outputs into `workdir`.

  Writes `config.json`, `results.json` (`{"config", "devices", "rows"}`, last:
  it marks the run complete), `timings.json`, `results.csv`, `<study>.png` and
  `checkpoints/`.

  Args:
    config: the experiment config (validated, with a memory estimate, before
      any compute).
    workdir: output directory (created if missing).
    control: checkpointing (interval, simulated preemption, overwrite); each
      row counts as a chunk, and so does each chunk of a gap study's fit.

  Returns:
    The content of `results.json`, with `"timings"` (the content of
    `timings.json`) added, and `"already_complete": True` when the workdir
    held a complete run (which is then left as it was).

  Raises:
    validate.ConfigError: bad config, a study that would not fit in memory,
      or a workdir holding another config.
    checkpoint.Preempted: after `control.stop_after_chunks` chunks.
  """
  config = config.resolved()
  units = cases(config)
  mesh = sharding.seed_mesh(config.devices)
  memory.check(estimate_bytes(config, mesh.size), f"the {config.study} study")
  run_ = lifecycle.Run(workdir, dataclasses.asdict(config), control)
  if run_.finished is not None:
    return dict(run_.finished, timings=run_.timings, already_complete=True)
  try:
    for unit in range(len(run_.records), len(units)):
      case = units[unit]
      fitted = config.study == "gap" and case["method"] != "construction"
      if fitted:   # chunks of its own, checkpointed inside the fit
        row, timing = reconstruct_rows.gap_fit(config, case, run_.fit_slot(unit))
      elif config.study == "scale" or case.get("part") == "scale":
        if "matmul_peak_gflops" not in run_.timings:
          run_.timings["matmul_peak_gflops"] = round(peak.matmul_peak_gflops(), 2)
          logging.info("float32 matmul peak: %.1f GFLOP/s", run_.timings["matmul_peak_gflops"])
        row, timing = (conv_rows.scale if config.study == "conv" else reconstruct_rows.scale)(
            config, case, run_.timings["matmul_peak_gflops"])
      elif config.study == "conv":
        row, timing = {"phase": conv_rows.phase, "trained": conv_rows.trained}[case["part"]](
            config, case)
      else:
        row, timing = {"dense": reconstruct_rows.dense, "sparse": reconstruct_rows.sparse,
                       "gap": reconstruct_rows.gap_construction}[config.study](config, case)
      run_.unit_done(row, seconds=timing, counts_as_chunk=not fitted)
  except BaseException:
    run_.close()
    raise
  rows = run_.records
  results = {"config": run_.config, "devices": mesh.size if config.study == "gap" else 1,
             "rows": rows}
  timings = dict(run_.timings)
  if run_.writer:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    outputs.write_csv(run_.path("results.csv"), keys, [[r.get(k) for k in keys] for r in rows])
    _plot(config, with_timings(rows, timings), run_.path(f"{config.study}.png"))
  return dict(run_.finish(results), timings=timings)
