"""The whole accelerator check in one call: the fitting benchmark and the construction at scale.

On a GPU (or TPU) host, `python -m experiments.accelerator_check --workdir=DIR`
runs, in one process and within about 8 minutes:

1. `bench_fit` with `--preset=gpu` (S = 4096 small, S = 256 large): jaxnorm's
   vmapped fit against the hand-written JAX baseline, seed-steps/s and
   TFLOP/s against the device's measured matmul peak, device memory;
2. the construction at scale: one float32 dense block at d = 256
   (m = 131,072, matrix-free `cg`) and one 3x3 conv block 64 -> 64
   (m = 73,728), seconds with compilation and warm;

and writes `summary.json` (and the benchmark's workdir) into DIR. `--quick`
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
from experiments import peak as peak_lib
from experiments.bench_fit import experiment as bench_fit
from experiments.reconstruct import conv_rows
from experiments.reconstruct import experiment as reconstruct
from experiments.reconstruct import rows as reconstruct_rows
from jaxnorm import checkpoint

BUDGET_SECONDS = 480   # the check is sized to fit this on one GPU


@dataclasses.dataclass(frozen=True)
class Parts:
  """The check's parts: the benchmark's config, and the construction's blocks."""
  bench: bench_fit.Config
  dense_d: int        # one float32 dense block d -> d at m = 2 d^2 (matrix-free cg)
  conv_channels: int  # one float32 3x3 conv block c -> c at m = 2 k^2 c^2


def parts(quick: bool = False) -> Parts:
  """The full check (for an accelerator) or its tiny version (`quick`, for a CPU test)."""
  if quick:
    tiny = bench_fit.Setting("small", seeds=2, target_widths=(3, 4, 2), width=8, batch_size=16,
                             steps=3)
    return Parts(bench_fit.Config(small=tiny, large=dataclasses.replace(tiny, name="large"),
                                  methods=("vmap", "hand_jax"), chunk_steps=3, repeats=1,
                                  peak_size=64, bandwidth_megabytes=4), dense_d=4, conv_channels=2)
  return Parts(bench_fit.Config(preset="gpu", methods=("vmap", "hand_jax"), repeats=2),
               dense_d=256, conv_channels=64)


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    return json.load(f)


def _device() -> dict[str, Any]:
  d = jax.local_devices()[0]
  return {"backend": jax.default_backend(), "kind": d.device_kind, "count": jax.device_count(),
          "jax_version": jax.__version__}


def run(workdir: str, quick: bool = False,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Runs the benchmark (resumable, in `workdir/bench_fit`), then the blocks; writes `summary.json`.

  Args:
    workdir: output directory (`bench_fit/` and `summary.json`).
    quick: tiny sizes instead of the accelerator's.
    control: checkpointing of the benchmark (simulated preemption, overwrite).

  Returns:
    The summary: device, seconds per part, per bench setting seed-steps/s,
    TFLOP/s, share of the measured peak and device memory, and per
    construction block its seconds (with compilation and warm), GFLOP/s,
    share of the peak, error and iterations.
  """
  p = parts(quick)
  bench_fit.check_config(p.bench)
  os.makedirs(workdir, exist_ok=True)
  start = time.perf_counter()
  seconds = {}
  bench = bench_fit.run(p.bench, os.path.join(workdir, "bench_fit"), control)
  seconds["bench_fit"] = round(time.perf_counter() - start, 1)
  settings = {}
  for name, res in bench["settings"].items():
    rows = {r["method"]: {"seed_steps_per_s": r["seed_steps_per_s"],
                          "tflops": r["gflops"] / 1e3, "peak_fraction": r["peak_fraction"],
                          "seconds": r["seconds"], "warmup_seconds": r["warmup_seconds"]}
            for r in res["rows"]}
    settings[name] = {"seeds": res["setting"]["seeds"],
                      "peak_tflops": res["matmul_peak_gflops"] / 1e3,
                      "memory_bandwidth_gbs": res["memory_bandwidth_gbs"],
                      "device_memory": res["device_memory"], "methods": rows,
                      "vs_hand_jax": res["ratios"].get("vs_hand_jax")}
  t0 = time.perf_counter()
  peak = peak_lib.matmul_peak_gflops(p.bench.peak_n())
  config = reconstruct.Config(study="scale").resolved()
  blocks = []
  for part, (row, timing) in (
      ("dense", reconstruct_rows.scale(config, {"d": p.dense_d, "solver": "cg"}, peak)),
      ("conv", conv_rows.scale(config, {"c": p.conv_channels}, peak))):
    blocks.append({"part": part, "d": row["d"], "width": row["width"],
                   "rel_error": row["rel_error"], "iterations": row["iterations"],
                   "seconds": timing["seconds"], "warm_seconds": timing["warm_seconds"],
                   "gflops": timing["gflops"], "peak_fraction": timing["peak_fraction"]})
  seconds["construction"] = round(time.perf_counter() - t0, 1)
  total = round(time.perf_counter() - start, 1)
  summary = {"device": _device(), "quick": quick, "matmul_peak_gflops": round(peak, 1),
             "seconds": seconds, "total_seconds": total,
             "within_budget": total <= BUDGET_SECONDS, "bench_settings": settings,
             "construction_blocks": blocks}
  if not summary["within_budget"]:
    logging.warning("the accelerator check took %.0f s, over its %d s budget", total,
                    BUDGET_SECONDS)
  outputs.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary
