"""One row of each `reconstruct` study: draw a seed's block, solve it, measure it.

Each function computes one unit of work of `jaxnorm.runs.reconstruct` (one row
of its results) from the resolved `reconstruct.Config` and the unit's case
dict, and returns `(row, timing)`: the row holds only numbers that are the same
on every run of the config (they go to `results.json`), `timing` the
wall-clock ones (seconds, GFLOP/s, peak fraction; they go to `timings.json`).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxnorm import construct
from jaxnorm import domain
from jaxnorm import export
from jaxnorm import engine
from jaxnorm import fitspec
from jaxnorm import freeze
from jaxnorm import jit
from jaxnorm import models

SUCCESS_TOL = 1e-6     # dense, sparse: float64 relative error of the network
SCALE_RESIDUAL = 1e-4  # scale: relative residual of the float32 block system


def dense_widths(config, d: int) -> list[int]:
  """The dense study's widths m for block size d (nested: one wide block per seed)."""
  return sorted({max(1, round(r * d * d)) for r in config.ratios})


def sparse_max_width(d: int, p: float) -> int:
  """The widest block the sparse study searches: 4 x the coverage estimate."""
  return int(math.ceil(4 * coverage_estimate(d, d, p)))


def gap_spec(config, ratio: float, init: str = "standard") -> fitspec.FitSpec:
  """The gap study's fit (target d,d,d) at this width ratio, from `init` (validated)."""
  d = config.dims[0]
  m = max(1, round(ratio * d * d))
  return fitspec.check_spec(fitspec.FitSpec(
      target_widths=(d, d, d), hidden_widths=(m, m), steps=config.steps,
      learning_rate=config.learning_rate, radius=config.radius, seed=config.seed, init=init))


@functools.lru_cache(maxsize=64)
def _block_init(d: int, m: int, p: float):
  return jit.one_shot_jit(models.NormMLP((d, m, d), keep_prob=p).init)


def _problem(config, d: int, m: int, p: float, ids: Sequence[int], dtype):
  """Seed `ids`' frozen block `[W1 [m, d], W2 [d, m]]`, its target block and test points."""
  k_net, k_target, k_x = _seed_keys(config, *ids)
  params = _block_init(d, m, p)(k_net, jnp.zeros((1, d)))["params"]
  w1, w2 = (np.asarray(w).astype(dtype) for w in export.frozen_weights(params))
  target = [tuple(np.asarray(a).astype(dtype) for a in layer)
            for layer in models.init_target(k_target, (d, d))]
  return w1, w2, target, _test_points(k_x, config.test_points, d, config.radius)


def _test_points(key, n: int, d: int, radius: float) -> np.ndarray:
  x = np.asarray(domain.sample_inputs(key, n, d, radius), np.float64)
  sphere = x[n // 2:] / np.linalg.norm(x[n // 2:], axis=1, keepdims=True) * radius
  return np.concatenate([x[:n // 2], sphere])


def max_rel_error(got, want) -> float:
  """max |g - f| / max |f| over every output: the error every study's rows report."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


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
  return max_rel_error(h, want)


def _seed_keys(config, *ids):
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


def _row(study, d, p, width, ratio, errors, solver, **extra):
  errors = np.asarray(errors)
  return {"study": study, "d": d, "p": p, "width": width, "width_ratio": round(ratio, 6),
          "rel_error": float(np.median(errors)), "success": float(np.mean(errors < SUCCESS_TOL)),
          "solver": solver, "seeds": int(errors.size), **extra}


def dense(config, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Dense study, `case = {"d", "width"}`: errors of the first `width` units, over seeds.

  Args:
    config: the resolved `reconstruct.Config`.
    case: the unit of work.

  Returns:
    `(row, timing)`.
  """
  d, m = case["d"], case["width"]
  m_max = max(dense_widths(config, d))
  errors, seconds = [], 0.0
  with jax.enable_x64(True):
    for s in range(config.seeds):
      w1, w2, target, x = _problem(config, d, m_max, 1.0, (d, s), np.float64)
      err, _, sec = _try(target, [w1[:m], w2[:, :m]], config.radius, x)
      errors.append(err)
      seconds += sec
  row = _row("dense", d, 1.0, m, m / (d * d), errors, "lstsq")
  logging.info("dense d=%d ratio %.3g: success %.2f, median error %.3g", d, m / (d * d),
               row["success"], row["rel_error"])
  return row, {"seconds": round(seconds, 4)}


def coverage_estimate(d_in: int, d_out: int, p: float) -> float:
  """docs/design.md §2's guess for the sparse threshold: max(d_in d_out, ln(d_in d_out) / p^2)."""
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


def sparse(config, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Sparse study, `case = {"d", "p"}`: the smallest exact width, median over seeds.

  Args:
    config: the resolved `reconstruct.Config`.
    case: the unit of work.

  Returns:
    `(row, timing)`.
  """
  d, p = case["d"], case["p"]
  estimate, m_max = coverage_estimate(d, d, p), sparse_max_width(d, p)
  found, errors, nnz, start = [], [], [], time.perf_counter()
  with jax.enable_x64(True):
    for s in range(config.seeds):
      w1, w2, target, x = _problem(config, d, m_max, p, (d, int(p * 1e6), s), np.float64)
      m, err = _smallest_exact_width(target, w1, w2, config.radius, x, d * d, m_max)
      errors.append(err)
      found.append(np.inf if m is None else m)
      if m is not None:
        nnz.append(np.count_nonzero(w1[:m]) + np.count_nonzero(w2[:, :m]))
  m_star = float(np.median(found))
  row = _row("sparse", d, p, m_star, m_star / (d * d), errors, "lstsq",
             coverage_estimate=round(estimate, 2), searched_up_to=m_max,
             nnz_over_target_params=(float(np.median(nnz)) / (d * d + d)) if nnz else None)
  row["success"] = float(np.mean(np.isfinite(found)))
  logging.info("sparse d=%d p=%g: m* median %s (estimate %.0f), %d/%d seeds exact", d, p,
               m_star, estimate, int(np.isfinite(found).sum()), len(found))
  return row, {"seconds": round(time.perf_counter() - start, 4)}


def scale(config, case: dict[str, Any], peak: float) -> tuple[dict[str, Any], dict[str, Any]]:
  """Scale study, `case = {"d", "solver"}`: one float32 block of width 2 d^2.

  Args:
    config: the resolved `reconstruct.Config`.
    case: the unit of work.
    peak: the machine's matmul GFLOP/s (`peak.matmul_peak_gflops`), for cg's peak fraction.

  Returns:
    `(row, timing)`; the timing of `cg` adds its warm time, GFLOP/s and peak fraction.
  """
  d, solver = case["d"], case["solver"]
  m = 2 * d * d
  w1, w2, target, x = _problem(config, d, m, 1.0, (d,), np.float32)
  err, block, sec = _try(target, [w1, w2], config.radius, x, solver=solver)  # compile included
  timing = {"seconds": round(sec, 4)}
  if solver == "cg":
    _, _, warm = _try(target, [w1, w2], config.radius, x, solver="cg")
    gflops = 4.0 * m * d * d * block.iterations / warm / 1e9
    # Three significant digits: a tiny block's rate rounds to 0.0 at two decimals.
    timing.update(warm_seconds=round(warm, 4), gflops=float(f"{gflops:.3g}"),
                  peak_fraction=float(f"{gflops / peak:.3g}"))
    row = _row("scale", d, 1.0, m, 2.0, [err], "cg", dtype="float32", residual=block.residual,
               iterations=block.iterations)
  else:
    row = _row("scale", d, 1.0, m, 2.0, [err], "lstsq", dtype="float64 solve",
               residual=block.residual)
  row["success"] = float(block.residual <= SCALE_RESIDUAL)
  logging.info("scale d=%d m=%d %s: %.2f s, %s iterations, residual %.2g, error %.2g", d, m,
               solver, sec, block.iterations, block.residual, err)
  return row, timing


def gap_fit(config, case: dict[str, Any], slot: fitspec.Checkpoint
            ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Gap study, `case = {"ratio", "method": "standard" | "construct"}`: Adam from that init.

  Args:
    config: the resolved `reconstruct.Config` (its `devices` spread the seeds).
    case: the unit of work.
    slot: where the fit checkpoints (`fitspec.Checkpoint`).

  Returns:
    `(row, timing)`.
  """
  spec = gap_spec(config, case["ratio"], case["method"])
  result = fitspec.fit_seeds(spec, range(config.seeds), devices=config.devices, checkpoint=slot)
  row = _row("gap", spec.target_widths[0], 1.0, spec.hidden_widths[0], case["ratio"],
             result.rel_mse, "adam", method=f"adam from {spec.init} init",
             rel_mse=float(np.median(result.rel_mse)))
  logging.info("gap ratio %g, adam from %s init: relative MSE %.3g", case["ratio"], spec.init,
               row["rel_mse"])
  return row, {"seconds": round(result.seconds, 4)}


def gap_construction(config, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """Gap study, `case = {"ratio", "method": "construction"}`: the construction's held-out MSE.

  It runs on the seeds' own frozen networks and targets, drawn as `fit` draws them.

  Args:
    config: the resolved `reconstruct.Config`.
    case: the unit of work.

  Returns:
    `(row, timing)`.
  """
  spec = gap_spec(config, case["ratio"])
  model, task, method, _ = fitspec.problem(spec)
  state = engine.init_states(model, task, range(config.seeds), optimizer=method, seed=spec.seed)
  params = freeze.combine(state.trainable, state.frozen)
  start, mses = time.perf_counter(), []
  for s in range(config.seeds):
    target = [(w[s], b[s]) for w, b in state.task["target"]]
    rec = construct.reconstruct(target, export.frozen_weights(jax.tree.map(lambda a: a[s], params)),
                                radius=config.radius, allow_inexact=True)
    x = state.task["eval_x"][s]
    want = models.apply_target(target, x)
    mses.append(float(jnp.mean((rec.apply(x) - want) ** 2) / jnp.var(want, axis=0).mean()))
  row = _row("gap", spec.target_widths[0], 1.0, spec.hidden_widths[0], case["ratio"], mses,
             rec.blocks[0].solver, method="construction", rel_mse=float(np.median(mses)))
  logging.info("gap ratio %g, construction: relative MSE %.3g", case["ratio"], row["rel_mse"])
  return row, {"seconds": round(time.perf_counter() - start, 4)}
