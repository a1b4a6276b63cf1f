"""The whole accelerator check in one call: the fitting benchmark and the construction at scale.

On a GPU (or TPU) host, `python -m experiments.accelerator_check --workdir=DIR`
runs, in one process and within about 8 minutes:

1. `bench_fit` with `--preset=gpu` (S = 4096 small, S = 256 large): jaxnorm's
   vmapped fit against the hand-written JAX baseline, seed-steps/s and
   TFLOP/s against the device's measured matmul peak, device memory;
2. the construction at scale: one float32 dense block at d = 256
   (m = 131,072, matrix-free `cg`) and one 3x3 conv block 64 -> 64
   (m = 73,728), seconds with compilation and warm;

and writes `summary.json` (and each part's own workdir) into DIR. `--quick`
runs the same code on tiny sizes (how the test suite runs it on a CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
from absl import logging

from experiments import outputs
from experiments.bench_fit import experiment as bench_fit
from experiments.reconstruct import experiment as reconstruct
from jaxnorm import checkpoint

BUDGET_SECONDS = 480   # the check is sized to fit this on one GPU


@dataclasses.dataclass(frozen=True)
class Parts:
  """The configs of the check's parts."""
  bench: bench_fit.Config
  dense: reconstruct.Config
  conv: reconstruct.Config


def parts(quick: bool = False) -> Parts:
  """The full check (for an accelerator) or its tiny version (`quick`, for a CPU test)."""
  if quick:
    tiny = bench_fit.Setting("small", seeds=2, target_widths=(3, 4, 2), width=8, batch_size=16,
                             steps=3)
    return Parts(
        bench=bench_fit.Config(small=tiny, large=dataclasses.replace(tiny, name="large"),
                               methods=("vmap", "hand_jax"), chunk_steps=3, repeats=1,
                               peak_size=64, bandwidth_megabytes=4),
        dense=reconstruct.Config(study="scale", dims=(4,), test_points=64),
        conv=reconstruct.Config(study="conv", dims=(1,), ratios=(1.0,), seeds=1,
                                train_steps=2, conv_scale_channels=2, test_points=64))
  return Parts(
      bench=bench_fit.Config(preset="gpu", methods=("vmap", "hand_jax"), repeats=2),
      dense=reconstruct.Config(study="scale", dims=(256,)),
      conv=reconstruct.Config(study="conv", seeds=2))


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def _device() -> dict[str, Any]:
  d = jax.local_devices()[0]
  return {"backend": jax.default_backend(), "kind": d.device_kind, "count": jax.device_count(),
          "jax_version": jax.__version__}


def run(workdir: str, quick: bool = False,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Runs every part (each resumable in its own workdir) and writes `summary.json`.

  Args:
    workdir: output directory (`bench_fit/`, `scale/`, `conv/` and `summary.json`).
    quick: tiny sizes instead of the accelerator's.
    control: checkpointing of the parts (simulated preemption, overwrite).

  Returns:
    The summary: device, seconds per part, per bench setting seed-steps/s,
    TFLOP/s, share of the measured peak and device memory, the construction
    blocks' seconds (with compilation and warm), errors and iterations.
  """
  p = parts(quick)
  bench_fit.check_config(p.bench)
  p.dense.resolved()
  p.conv.resolved()
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  seconds = {}
  t0 = time.perf_counter()
  bench = bench_fit.run(p.bench, os.path.join(workdir, "bench_fit"), control)
  seconds["bench_fit"] = round(time.perf_counter() - t0, 1)
  t0 = time.perf_counter()
  dense = reconstruct.run(p.dense, os.path.join(workdir, "scale"), control)
  seconds["scale"] = round(time.perf_counter() - t0, 1)
  t0 = time.perf_counter()
  conv = reconstruct.run(p.conv, os.path.join(workdir, "conv"), control)
  seconds["conv"] = round(time.perf_counter() - t0, 1)
  settings = {}
  for name, res in bench["settings"].items():
    rows = {r["method"]: {"seed_steps_per_s": r["seed_steps_per_s"],
                          "tflops": r["gflops"] / 1e3, "peak_fraction": r["peak_fraction"],
                          "seconds": r["seconds"], "warmup_seconds": r["warmup_seconds"]}
            for r in res["rows"]}
    settings[name] = {"seeds": res["setting"]["seeds"], "peak_tflops": res["matmul_peak_gflops"] / 1e3,
                      "memory_bandwidth_gbs": res["memory_bandwidth_gbs"],
                      "device_memory": res["device_memory"], "methods": rows,
                      "vs_hand_jax": res["ratios"].get("vs_hand_jax")}
  blocks = []
  for part, results in (("dense", dense), ("conv", conv)):
    # timings.json: {"<row index>": {"seconds", ...}, "matmul_peak_gflops": ...}
    timings = _read_json(os.path.join(workdir, "scale" if part == "dense" else "conv",
                                      "timings.json"))
    for i, row in enumerate(results["rows"]):
      if row.get("solver") == "cg" and (part == "dense" or row.get("part") == "scale"):
        timing = timings.get(str(i), {})
        blocks.append({"part": part, "d": row["d"], "width": row["width"],
                       "rel_error": row["rel_error"], "iterations": row.get("iterations"),
                       "seconds": timing.get("seconds"),
                       "warm_seconds": timing.get("warm_seconds"),
                       "gflops": timing.get("gflops"), "peak_fraction": timing.get("peak_fraction")})
  total = round(time.perf_counter() - start, 1)
  summary = {"device": _device(), "quick": quick, "seconds": seconds, "total_seconds": total,
             "within_budget": total <= BUDGET_SECONDS, "bench_settings": settings,
             "construction_blocks": blocks}
  if not summary["within_budget"]:
    logging.warning("the accelerator check took %.0f s, over its %d s budget", total,
                    BUDGET_SECONDS)
  outputs.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
