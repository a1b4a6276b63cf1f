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

Relative error = max |g(x) - f(x)| / max |f(x)| over points inside the ball of
the radius and on its sphere. One block (target depth 1, d_in = d_out = d) for
the dense, sparse and scale studies; widths are nested (the first m units of
one wide frozen network per seed), so success is monotone in m.

Run it: `python -m experiments.reconstruct --workdir=/tmp/rec_dense --study=dense`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnorm import construct
from jaxnorm import domain
from jaxnorm import export
from jaxnorm import fit
from jaxnorm import jit
from jaxnorm import models
from jaxnorm import validate
from jaxnorm.runs import outputs
from jaxnorm.runs import plots

STUDIES = ("dense", "sparse", "scale", "gap")
SUCCESS_TOL = 1e-6     # dense, sparse: float64 relative error of the network
SCALE_RESIDUAL = 1e-4  # scale: relative residual of the float32 block system
DEFAULT_DIMS = {"dense": (4, 8, 16), "sparse": (8, 16), "scale": (16, 32, 64, 128, 256),
                "gap": (8,)}
DEFAULT_RATIOS = {"dense": (0.5, 0.75, 0.9, 0.97, 1.0, 1.1, 1.25, 1.5, 2.0), "gap": (1.0, 2.0, 4.0)}
COLUMNS = ("study", "d", "p", "width", "width_ratio", "rel_error", "success", "seconds", "solver")


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the `reconstruct` experiment.

  Attributes:
    study: one of `STUDIES`.
    dims: block sizes d (d_in = d_out = d); empty = the study's default.
    ratios: width ratios (dense, gap); empty = the study's default.
    keep_probs: keep-probabilities p (sparse).
    seeds: seeds per cell.
    radius: inputs with ||x|| <= radius.
    seed: base seed.
    steps: gradient steps (gap).
    learning_rate: Adam's peak learning rate (gap).
    test_points: points for the relative error (half inside, half on the sphere).
  """

  study: str = "dense"
  dims: Sequence[int] = ()
  ratios: Sequence[float] = ()
  keep_probs: Sequence[float] = (1.0, 0.5, 0.25, 0.125, 0.0625)
  seeds: int = 8
  radius: float = 1.0
  seed: int = 0
  steps: int = 2000
  learning_rate: float = 1e-2
  test_points: int = 2000

  def resolved(self) -> "Config":
    """The config with the study's defaults filled in (validated)."""
    validate.one_of("study", self.study, STUDIES)
    dims = validate.positive_ints("dims", self.dims or DEFAULT_DIMS[self.study])
    ratios = tuple(self.ratios or DEFAULT_RATIOS.get(self.study, ()))
    if self.study in ("dense", "gap"):
      validate.positive_floats("ratios", ratios)
    for p in self.keep_probs:
      validate.probability("keep probability p", p)
    for name in ("seeds", "steps", "test_points"):
      validate.positive_int(name, getattr(self, name))
    validate.positive_float("radius", self.radius)
    validate.positive_float("learning_rate", self.learning_rate)
    if self.study == "gap" and len(dims) != 1:
      raise validate.ConfigError(f"the gap study takes one d (target d,d,d), got {list(dims)}")
    return dataclasses.replace(self, dims=dims, ratios=ratios)


def _frozen_block(key, d: int, m: int, p: float) -> list[np.ndarray]:
  """One wide frozen block `[W1 [m, d], W2 [d, m]]` drawn as `NormMLP` draws it."""
  params = jit.one_shot_jit(models.NormMLP((d, m, d), keep_prob=p).init)(key, jnp.zeros((1, d)))
  return [np.asarray(w) for w in export.frozen_weights(params["params"])]


def _target(key, d: int):
  return [tuple(np.asarray(a) for a in layer) for layer in models.init_target(key, (d, d))]


def _test_points(key, n: int, d: int, radius: float) -> np.ndarray:
  x = np.asarray(domain.sample_inputs(key, n, d, radius), np.float64)
  sphere = x[n // 2:] / np.linalg.norm(x[n // 2:], axis=1, keepdims=True) * radius
  return np.concatenate([x[:n // 2], sphere])


def _rel_error(rec: construct.Reconstruction, target, x) -> float:
  """max |g(x) - f(x)| / max |f(x)|; g in the reconstruction's dtype, on the host."""
  dtype = np.dtype(rec.frozen[0].dtype)
  h = x.astype(dtype)
  for k, (w, g, b) in enumerate(zip(rec.frozen, rec.gammas, rec.betas)):
    h = np.asarray(g) * (h @ np.asarray(w).T) + np.asarray(b)
    h = np.maximum(h, 0) if k < len(rec.frozen) - 1 else h
  want = x
  for k, (w, b) in enumerate(target):
    want = want @ np.asarray(w, np.float64).T + np.asarray(b, np.float64)
    want = np.maximum(want, 0) if k < len(target) - 1 else want
  return float(np.max(np.abs(h - want)) / np.max(np.abs(want)))


def _seed_keys(config: Config, *ids):
  key = jax.random.key(config.seed)
  for i in ids:
    key = jax.random.fold_in(key, i)
  return jax.random.split(key, 3)


def _try(target, frozen, radius, x, solver="lstsq"):
  """Reconstructs (least squares where not exact); returns (rel error, report, seconds)."""
  start = time.perf_counter()
  rec = construct.reconstruct(target, frozen, radius=radius, solver=solver, allow_inexact=True)
  jax.block_until_ready(rec.gammas)
  seconds = time.perf_counter() - start
  return _rel_error(rec, target, x), rec.blocks[0], seconds


def _dense(config: Config) -> list[dict[str, Any]]:
  rows = []
  with jax.enable_x64(True):
    for d in config.dims:
      m_max = max(1, round(max(config.ratios) * d * d))
      widths = sorted({max(1, round(r * d * d)) for r in config.ratios})
      errors = {m: [] for m in widths}
      seconds = {m: 0.0 for m in widths}
      for s in range(config.seeds):
        k_net, k_target, k_x = _seed_keys(config, d, s)
        w1, w2 = (w.astype(np.float64) for w in _frozen_block(k_net, d, m_max, 1.0))
        target = [tuple(a.astype(np.float64) for a in _target(k_target, d)[0])]
        x = _test_points(k_x, config.test_points, d, config.radius)
        for m in widths:
          err, _, sec = _try(target, [w1[:m], w2[:, :m]], config.radius, x)
          errors[m].append(err)
          seconds[m] += sec
      for m in widths:
        rows.append(_row("dense", d, 1.0, m, m / (d * d), errors[m], seconds[m], "lstsq"))
        logging.info("dense d=%d ratio %.3g: success %.2f, median error %.3g", d, m / (d * d),
                     rows[-1]["success"], rows[-1]["rel_error"])
  return rows


def _row(study, d, p, width, ratio, errors, seconds, solver, **extra):
  errors = np.asarray(errors)
  return {"study": study, "d": d, "p": p, "width": width, "width_ratio": round(ratio, 6),
          "rel_error": float(np.median(errors)), "success": float(np.mean(errors < SUCCESS_TOL)),
          "seconds": round(seconds, 4), "solver": solver, "seeds": int(errors.size), **extra}


def coverage_estimate(d_in: int, d_out: int, p: float) -> float:
  """DESIGN.md's guess for the sparse threshold: max(d_in d_out, ln(d_in d_out) / p^2)."""
  n = d_in * d_out
  return max(n, math.log(n) / p ** 2)


def _smallest_exact_width(target, w1, w2, radius, x, lo, hi):
  """Binary search of the smallest m in [lo, hi] whose first m units are exact."""
  def exact(m):
    err, block, _ = _try(target, [w1[:m], w2[:, :m]], radius, x)
    return block.exact and err < SUCCESS_TOL, err
  ok, err = exact(hi)
  if not ok:
    return None, err
  best_err = err
  while lo < hi:
    mid = (lo + hi) // 2
    ok, err = exact(mid)
    if ok:
      hi, best_err = mid, err
    else:
      lo = mid + 1
  return hi, best_err


def _sparse(config: Config) -> list[dict[str, Any]]:
  rows = []
  with jax.enable_x64(True):
    for d in config.dims:
      for p in config.keep_probs:
        estimate = coverage_estimate(d, d, p)
        m_max = int(math.ceil(4 * estimate))
        found, errors, nnz, start = [], [], [], time.perf_counter()
        for s in range(config.seeds):
          k_net, k_target, k_x = _seed_keys(config, d, int(p * 1e6), s)
          w1, w2 = (w.astype(np.float64) for w in _frozen_block(k_net, d, m_max, p))
          target = [tuple(a.astype(np.float64) for a in _target(k_target, d)[0])]
          x = _test_points(k_x, config.test_points, d, config.radius)
          m, err = _smallest_exact_width(target, w1, w2, config.radius, x, d * d, m_max)
          errors.append(err)
          found.append(np.inf if m is None else m)
          if m is not None:
            nnz.append(np.count_nonzero(w1[:m]) + np.count_nonzero(w2[:, :m]))
        m_star = float(np.median(found))
        row = _row("sparse", d, p, m_star, m_star / (d * d), errors,
                   time.perf_counter() - start, "lstsq", coverage_estimate=round(estimate, 2),
                   searched_up_to=m_max,
                   nnz_over_target_params=(float(np.median(nnz)) / (d * d + d)) if nnz else None)
        row["success"] = float(np.mean(np.isfinite(found)))
        rows.append(row)
        logging.info("sparse d=%d p=%g: m* median %s (estimate %.0f), %d/%d seeds exact", d, p,
                     m_star, estimate, int(np.isfinite(found).sum()), len(found))
  return rows


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """The machine's float32 matrix-multiply rate: best of `repeats` n x n GEMMs."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best / 1e9


def _scale(config: Config) -> list[dict[str, Any]]:
  rows, peak = [], matmul_peak_gflops()
  logging.info("float32 matmul peak: %.1f GFLOP/s", peak)
  for d in config.dims:
    m = 2 * d * d
    k_net, k_target, k_x = _seed_keys(config, d)
    w1, w2 = _frozen_block(k_net, d, m, 1.0)
    target = _target(k_target, d)
    x = _test_points(k_x, config.test_points, d, config.radius)
    err, block, sec = _try(target, [w1, w2], config.radius, x, solver="cg")   # compile included
    _, _, warm = _try(target, [w1, w2], config.radius, x, solver="cg")
    gflops = 4.0 * m * d * d * block.iterations / warm / 1e9
    row = _row("scale", d, 1.0, m, 2.0, [err], sec, "cg", dtype="float32",
               residual=block.residual, iterations=block.iterations, warm_seconds=round(warm, 4),
               gflops=round(gflops, 2), peak_fraction=round(gflops / peak, 3),
               matmul_peak_gflops=round(peak, 2))
    row["success"] = float(block.residual <= SCALE_RESIDUAL)
    rows.append(row)
    logging.info("scale d=%d m=%d cg: %.2f s (warm %.2f s), %d iterations, residual %.2g, "
                 "error %.2g, %.1f GFLOP/s", d, m, sec, warm, block.iterations, block.residual,
                 err, gflops)
    if d * d * m <= construct.LSTSQ_MAX_ENTRIES:
      err, block, sec = _try(target, [w1, w2], config.radius, x, solver="lstsq")
      rows.append(_row("scale", d, 1.0, m, 2.0, [err], sec, "lstsq", dtype="float64 solve",
                       residual=block.residual, cg_speedup=float(f"{sec / row['seconds']:.3g}")))
      rows[-1]["success"] = float(block.residual <= SCALE_RESIDUAL)
      logging.info("scale d=%d lstsq: %.2f s, residual %.2g", d, sec, block.residual)
  return rows


def _gap(config: Config) -> list[dict[str, Any]]:
  d = config.dims[0]
  rows = []
  for ratio in config.ratios:
    m = max(1, round(ratio * d * d))
    base = fit.FitSpec(target_widths=(d, d, d), hidden_widths=(m, m), steps=config.steps,
                       learning_rate=config.learning_rate, radius=config.radius,
                       seed=config.seed)
    for init in ("standard", "construct"):
      result = fit.fit_seeds(dataclasses.replace(base, init=init), range(config.seeds))
      rows.append(_row("gap", d, 1.0, m, ratio, result.rel_mse, result.seconds, "adam",
                       method=f"adam from {init} init", rel_mse=float(np.median(result.rel_mse))))
    start, mses = time.perf_counter(), []
    for s in range(config.seeds):
      params = jax.tree.map(lambda a: a[s], result.params)
      target = [(w[s], b[s]) for w, b in result.targets]
      rec = construct.reconstruct(target, export.frozen_weights(params), radius=config.radius,
                                  allow_inexact=True)
      x = fit.heldout_inputs(base, s)
      want = models.apply_target(target, x)
      mses.append(float(jnp.mean((rec.apply(x) - want) ** 2) / jnp.var(want, axis=0).mean()))
    rows.append(_row("gap", d, 1.0, m, ratio, mses, time.perf_counter() - start,
                     rec.blocks[0].solver, method="construction", rel_mse=float(np.median(mses))))
    logging.info("gap ratio %g: relative MSE adam %.3g, adam from construction %.3g, "
                 "construction %.3g", ratio, rows[-3]["rel_mse"], rows[-2]["rel_mse"],
                 rows[-1]["rel_mse"])
  return rows


_STUDY_FNS = {"dense": _dense, "sparse": _sparse, "scale": _scale, "gap": _gap}


def _plot(config: Config, rows, path: str) -> None:
  if config.study == "dense":
    series = {f"d={d}": ([r["width_ratio"] for r in rows if r["d"] == d],
                         [r["success"] for r in rows if r["d"] == d]) for d in config.dims}
    plots.lines(path, series, xlabel="width ratio m / (d_in d_out)",
                ylabel=f"success fraction (rel. error < {SUCCESS_TOL:g}, float64)",
                title=f"dense blocks, {config.seeds} seeds", logx=False, logy=False)
  elif config.study == "sparse":
    done = [r for r in rows if math.isfinite(r["width"])]
    series = {f"d={d}": ([r["coverage_estimate"] for r in done if r["d"] == d],
                         [r["width"] for r in done if r["d"] == d]) for d in config.dims}
    plots.lines(path, series, xlabel="coverage estimate max(d², ln(d²)/p²)",
                ylabel="measured m* (median over seeds)", diagonal=True,
                title=f"sparse blocks, p in {list(config.keep_probs)}, {config.seeds} seeds")
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


def table(rows: Sequence[dict[str, Any]]) -> str:
  """The study's table: the common columns plus the study's own."""
  extra = [k for k in ("method", "coverage_estimate", "nnz_over_target_params", "iterations",
                       "residual", "gflops", "peak_fraction", "cg_speedup") if any(k in r for r in rows)]
  cols = list(COLUMNS[1:]) + extra
  return outputs.format_table(cols, [[r.get(k, "") if r.get(k) is not None else "-"
                                      for k in cols] for r in rows])


def run(config: Config, workdir: str) -> dict[str, Any]:
  """Runs one study and writes `results.json`, `results.csv` and `<study>.png`.

  Args:
    config: the experiment config (validated before any compute).
    workdir: output directory.

  Returns:
    The content of `results.json`: `{"config", "rows"}`.
  """
  workdir = validate.workdir(workdir)
  config = config.resolved()
  rows = _STUDY_FNS[config.study](config)
  results = {"config": dataclasses.asdict(config), "rows": rows}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    outputs.write_json(os.path.join(workdir, "results.json"), results)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    outputs.write_csv(os.path.join(workdir, "results.csv"), keys,
                      [[r.get(k) for k in keys] for r in rows])
    _plot(config, rows, os.path.join(workdir, f"{config.study}.png"))
  return results
