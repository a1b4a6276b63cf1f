"""Benchmark: fitting S seeds vmapped in one program vs one at a time vs `lax.map`.

Every method fits the same seeds with the same `FitSpec` (same steps, batch,
widths), so the work is identical; each is run once to compile and once to
time, back to back in one process, and throughput is reported as seed-steps
per second (compilation excluded, init and held-out evaluation included).

Writes `results.json` (config, rows, ratios) into the workdir.

Run it: `python -m experiments.bench_fit --workdir=/tmp/bench_fit`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Sequence

import jax
from absl import logging

from jaxnorm import fit
from jaxnorm import validate
from jaxnorm.runs import outputs

METHODS = ("vmap", "loop", "lax_map")


@dataclasses.dataclass(frozen=True)
class Config:
  """Benchmark settings.

  Attributes:
    seeds: S, seeds fitted per method.
    target_widths: target `[d_0, ..., d_l]`.
    width: hidden width of every random block.
    batch_size: inputs per step.
    steps: optimizer steps per seed (timed).
    chunk_steps: steps per compiled chunk.
    methods: which of `METHODS` to run.
    norm: normalization kind.
  """

  seeds: int = 64
  target_widths: Sequence[int] = (8, 8, 8)
  width: int = 128
  batch_size: int = 256
  steps: int = 200
  chunk_steps: int = 100
  methods: Sequence[str] = METHODS
  norm: str = "affine"


def spec(config: Config) -> fit.FitSpec:
  """Validates `config` and returns the spec every method fits."""
  validate.positive_int("seeds", config.seeds)
  for m in config.methods:
    validate.one_of("method", m, METHODS)
  if not config.methods:
    raise validate.ConfigError("need at least one method")
  widths = validate.positive_ints("target_widths", config.target_widths, min_len=2)
  return fit.check_spec(fit.FitSpec(
      target_widths=widths, hidden_widths=(config.width,) * (len(widths) - 1),
      norm=config.norm, steps=config.steps, chunk_steps=min(config.chunk_steps, config.steps),
      batch_size=config.batch_size, eval_size=1024))


def _fit_all(method: str, s: fit.FitSpec, seeds: int) -> None:
  if method == "vmap":
    fit.fit_seeds(s, range(seeds), batching="vmap")
  elif method == "lax_map":
    fit.fit_seeds(s, range(seeds), batching="map")
  else:
    for seed in range(seeds):
      fit.fit_seeds(s, [seed])


def flops_per_step(s: fit.FitSpec) -> float:
  """Matmul flops of one training step of one seed (forward + backward, ~3x forward)."""
  w = s.network_widths
  forward = 2 * s.batch_size * sum(a * b for a, b in zip(w[:-1], w[1:]))
  return 3.0 * forward


def run(config: Config, workdir: str) -> dict[str, Any]:
  """Times every method and writes `results.json` into `workdir`.

  Args:
    config: benchmark settings (validated before any compute).
    workdir: output directory.

  Returns:
    The content of `results.json`.
  """
  workdir = validate.workdir(workdir)
  s = spec(config)
  rows = []
  for method in config.methods:
    warm = time.perf_counter()
    _fit_all(method, s, 1 if method == "loop" else config.seeds)
    compile_s = time.perf_counter() - warm
    start = time.perf_counter()
    _fit_all(method, s, config.seeds)
    seconds = time.perf_counter() - start
    throughput = config.seeds * config.steps / seconds
    rows.append({"method": method, "seconds": round(seconds, 4),
                 "warmup_seconds": round(compile_s, 4),
                 "seed_steps_per_s": round(throughput, 2),
                 "gflops": round(throughput * flops_per_step(s) / 1e9, 3)})
    logging.info("%-8s %8.3f s  %10.1f seed-steps/s  %.2f GFLOP/s (warm-up %.1f s)", method,
                 seconds, throughput, rows[-1]["gflops"], compile_s)
  by = {r["method"]: r["seed_steps_per_s"] for r in rows}
  ratios = {}
  if "vmap" in by:
    for other, key in (("loop", "vs_loop"), ("lax_map", "vs_lax_map")):
      if other in by:
        ratios[key] = round(by["vmap"] / by[other], 3)
  results = {"config": dataclasses.asdict(config), "devices": jax.device_count(),
             "backend": jax.default_backend(), "rows": rows, "ratios": ratios}
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    outputs.write_json(os.path.join(workdir, "results.json"), results)
  return results


def table(results: dict[str, Any]) -> str:
  """The benchmark table with vmap's speed-up over each method."""
  vmap = {r["method"]: r["seed_steps_per_s"] for r in results["rows"]}.get("vmap")
  rows = [[r["method"], r["seconds"], r["seed_steps_per_s"], r["gflops"],
           (vmap / r["seed_steps_per_s"]) if vmap else float("nan")] for r in results["rows"]]
  return outputs.format_table(("method", "seconds", "seed_steps/s", "GFLOP/s", "vmap_speedup"),
                              rows)
