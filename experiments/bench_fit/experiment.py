"""Benchmark: jaxnorm's vmapped fit of S seeds against a per-seed loop, `lax.map` and PyTorch.

For each setting (a small memory-bound one and a larger compute-bound one),
every method fits S seeds with the same Adam work per step (fresh inputs in
the ball, the seed's target evaluated on them, forward and backward of the
frozen network with only the norms differentiated, an Adam update with a
cosine schedule), for the same number of steps:

* `vmap`: `jaxnorm.fitspec.fit_seeds`, all seeds in one `vmap`;
* `vmap_chunk`: the same with `seed_chunk` (`lax.map` over vmapped chunks of
  seeds; only for a setting whose `seed_chunk` is set);
* `loop`: `fit_seeds` on one seed at a time;
* `lax_map`: `fit_seeds(batching="map")`, one seed at a time inside one program;
* `torch`: the PyTorch peer (`jaxnorm.runs.torch_peer`: `torch.func.vmap`
  over `functional_call`, `torch.optim.Adam` on the stacked norms) with as
  many intra-op threads as XLA's CPU pool (the cores); `torch_1t`: the same on
  one thread, slower on an idle machine but far less hurt when another process
  holds a core (torch's OpenMP threads wait for each other at every op: 10x
  slower with 2 threads than with 1 when measured so). Both are skipped when
  torch is not installed; `vs_torch` is against the faster of the two.

Every method is run once to compile / warm up, then `repeats` rounds time each
method once (the order rotated each round); the best round of each counts. The
machine is shared and noisy, so the float32 matrix-multiply peak is measured
right before and right after every timed run, and a run's share of the peak is
its GFLOP/s over the larger of those two (`peak_fraction`). Times cover
init, every step and the held-out evaluation. Throughput is seed-steps per
second; GFLOP/s counts the matmul flops the whole fit needs (`flops_per_seed`).
jaxnorm's number is `vmap_chunk` where it runs, else `vmap`.

Writes `results.json` (config, per-setting rows and ratios) into the workdir.

Run it: `python -m experiments.bench_fit --workdir=/tmp/bench_fit`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

import jax
from absl import logging

from experiments.config_flags import hparam

from jaxnorm import checkpoint
from jaxnorm import fitspec
from jaxnorm import memory
from jaxnorm import validate
from experiments import lifecycle
from experiments import outputs
from experiments import peak as peak_lib
from experiments.bench_fit import torch_peer

METHODS = ("vmap", "vmap_chunk", "loop", "lax_map", "torch", "torch_1t")
# Goals the benchmark reports against: jaxnorm over the loop and over torch (first setting),
# share of the matmul peak (last setting).
GOALS = {"vs_loop": 2.0, "vs_torch": 1.5, "peak_fraction": 0.4}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One problem size (its fields are flags, prefixed as the `Config` field that holds it)."""

  name: str = hparam(flag=False)
  seeds: int = hparam(help="S, seeds fitted by every method.")
  target_widths: tuple[int, ...] = hparam(help="Target widths d_0,...,d_l.")
  width: int = hparam(help="Hidden width of every random block.")
  batch_size: int = hparam(help="Inputs per step.")
  steps: int = hparam(help="Timed optimizer steps per seed.")
  seed_chunk: Optional[int] = hparam(
      None, "Seeds per vmapped chunk of the vmap_chunk row (none or 0: no such row).")


# Small: S=64 tiny networks, memory-bound. Large: matmuls [256 x 64] @ [64 x 2048] and back,
# big enough to be compute-bound, few seeds so that a whole run stays within minutes.
SMALL = Setting("small", seeds=64, target_widths=(8, 8, 8), width=128, batch_size=256,
                steps=200, seed_chunk=16)
LARGE = Setting("large", seeds=4, target_widths=(64, 64, 64), width=2048, batch_size=256,
                steps=100)


@dataclasses.dataclass(frozen=True)
class Config:
  """The benchmark: every hyperparameter, declared once (flags are generated from these fields
  by `experiments.config_flags`; the named configs are in `configs/`)."""

  settings: tuple[str, ...] = hparam(("small", "large"), "Which settings run: small, large.")
  small: Setting = hparam(SMALL, "The small setting (flags without prefix).")
  large: Setting = hparam(LARGE, "The large setting (flags prefixed large_).", prefix="large_")
  chunk_steps: int = hparam(100, "Steps per compiled chunk.")
  methods: tuple[str, ...] = hparam(METHODS, "Any of " + ", ".join(METHODS) + ".")
  norm: str = hparam("affine", "affine | batchnorm | layernorm (the torch peer: affine).")
  repeats: int = hparam(3, "Timed rounds per setting (the best counts).")
  torch_threads: int = hparam(0, "torch intra-op threads (0: the cores this process may use, "
                              "the size of XLA's CPU thread pool too).")
  peak_size: int = hparam(2048, "Side of the square matrices of the matmul peak measurement.")

  def selected(self) -> tuple[Setting, ...]:
    """The settings that run, in the order `settings` names them."""
    by_name = {"small": self.small, "large": self.large}
    for name in self.settings:
      validate.one_of("setting", name, tuple(by_name))
    return tuple(dataclasses.replace(by_name[n], name=n, seed_chunk=by_name[n].seed_chunk or None)
                 for n in self.settings)


def spec(config: Config, setting: Setting) -> fitspec.FitSpec:
  """Validates `setting` (within `config`) and returns the spec every method fits."""
  for name in ("seeds", "width", "batch_size", "steps"):
    validate.positive_int(f"{setting.name} {name}", getattr(setting, name))
  if setting.seed_chunk:
    validate.positive_int(f"{setting.name} seed_chunk", setting.seed_chunk)
  widths = validate.positive_ints(f"{setting.name} target_widths", setting.target_widths,
                                  min_len=2)
  s = fitspec.check_spec(fitspec.FitSpec(
      target_widths=widths, hidden_widths=(setting.width,) * (len(widths) - 1),
      norm=config.norm, steps=setting.steps,
      chunk_steps=min(config.chunk_steps, setting.steps), batch_size=setting.batch_size,
      eval_size=1024))
  if {"torch", "torch_1t"} & set(config.methods):
    torch_peer.check_spec(s)
  return s


def check_config(config: Config) -> list[fitspec.FitSpec]:
  """Validates every field of `config`; returns one spec per setting."""
  if not config.methods:
    raise validate.ConfigError("need at least one method")
  for m in config.methods:
    validate.one_of("method", m, METHODS)
  if "vmap" not in config.methods:   # every ratio compares a method with jaxnorm's vmap row
    raise validate.ConfigError(f"methods must include vmap (what the others are compared "
                               f"with), got {list(config.methods)}")
  if not config.settings:
    raise validate.ConfigError("--settings needs at least one of small, large")
  names = list(config.settings)
  if len(set(names)) != len(names):
    raise validate.ConfigError(f"setting names must differ, got {names}")
  validate.positive_int("chunk_steps", config.chunk_steps)
  validate.positive_int("repeats", config.repeats)
  validate.positive_int("peak_size", config.peak_size)
  validate.non_negative_int("torch_threads", config.torch_threads)
  return [spec(config, s) for s in config.selected()]


def flops_per_step(s: fitspec.FitSpec) -> float:
  """Matmul flops of one training step of one seed.

  The target's forward pass, the network's forward pass, and the backward
  pass's data gradients through every layer but the first: the weights are
  frozen (no weight gradient) and the inputs need none. Element-wise work
  (norms, ReLU, loss, Adam) is not counted.

  Args:
    s: the spec.

  Returns:
    Flops (2 per multiply-add).
  """
  w, t = s.network_widths, s.target_widths
  layers = [a * b for a, b in zip(w[:-1], w[1:])]
  target = sum(a * b for a, b in zip(t[:-1], t[1:]))
  return 2.0 * s.batch_size * (target + sum(layers) + sum(layers[1:]))


def flops_per_seed(s: fitspec.FitSpec) -> float:
  """Matmul flops of a whole fit of one seed: every step, plus the held-out set.

  The held-out inputs go through the target twice (its output variance at
  init, the error at the end) and through the network once.

  Args:
    s: the spec.

  Returns:
    Flops (2 per multiply-add).
  """
  w, t = s.network_widths, s.target_widths
  layers = sum(a * b for a, b in zip(w[:-1], w[1:]))
  target = sum(a * b for a, b in zip(t[:-1], t[1:]))
  return s.steps * flops_per_step(s) + 2.0 * s.eval_size * (layers + 2 * target)


def _sig(x: float, digits: int = 4) -> float:
  """`x` rounded to `digits` significant digits."""
  return float(f"{x:.{digits}g}")


def _fit_all(method: str, s: fitspec.FitSpec, seeds: int, seed_chunk: Optional[int],
             threads: int) -> None:
  if method == "vmap":
    fitspec.fit_seeds(s, range(seeds), batching="vmap")
  elif method == "vmap_chunk":
    fitspec.fit_seeds(s, range(seeds), batching="vmap", seed_chunk=seed_chunk)
  elif method == "lax_map":
    fitspec.fit_seeds(s, range(seeds), batching="map")
  elif method == "torch":
    torch_peer.fit(s, seeds, threads=threads)
  elif method == "torch_1t":
    torch_peer.fit(s, seeds, threads=1)
  else:
    for seed in range(seeds):
      fitspec.fit_seeds(s, [seed])


def _methods(config: Config, setting: Setting, torch_version: Optional[str],
             threads: int) -> list[str]:
  methods = list(config.methods)
  if "vmap_chunk" in methods and (setting.seed_chunk is None
                                  or setting.seed_chunk >= setting.seeds):
    logging.info("%s: no seed_chunk smaller than S=%d, vmap_chunk skipped", setting.name,
                 setting.seeds)
    methods.remove("vmap_chunk")
  if torch_version is None and {"torch", "torch_1t"} & set(methods):
    logging.warning("torch is not installed: the PyTorch peer is skipped and vs_torch is null "
                    "(pip install torch to run it)")
    methods = [m for m in methods if m not in ("torch", "torch_1t")]
  if "torch_1t" in methods and "torch" in methods and threads == 1:
    methods.remove("torch_1t")   # the same run twice
  return methods


def _time_setting(config: Config, setting: Setting, s: fitspec.FitSpec, threads: int,
                  torch_version: Optional[str]) -> dict[str, Any]:
  methods = _methods(config, setting, torch_version, threads)
  flops = flops_per_seed(s)
  warmup = {}
  for method in methods:
    start = time.perf_counter()
    if method.startswith("torch"):   # eager: a few steps warm the allocator and vmap's caches
      _fit_all(method, dataclasses.replace(s, steps=2, chunk_steps=2), setting.seeds, None,
               threads)
    else:
      _fit_all(method, s, 1 if method == "loop" else setting.seeds, setting.seed_chunk, threads)
    warmup[method] = time.perf_counter() - start
  seconds = {m: [] for m in methods}
  peaks = {m: [] for m in methods}
  for r in range(config.repeats):
    for method in methods[r % len(methods):] + methods[:r % len(methods)]:
      before = peak_lib.matmul_peak_gflops(config.peak_size, repeats=3)
      start = time.perf_counter()
      _fit_all(method, s, setting.seeds, setting.seed_chunk, threads)
      seconds[method].append(time.perf_counter() - start)
      peaks[method].append(max(before, peak_lib.matmul_peak_gflops(config.peak_size, repeats=3)))
      logging.info("%s round %d/%d %-10s %.3f s (matmul peak around it %.1f GFLOP/s)",
                   setting.name, r + 1, config.repeats, method, seconds[method][-1],
                   peaks[method][-1])
  rows, by, fraction = [], {}, {}
  for method in methods:
    best = min(range(config.repeats), key=seconds[method].__getitem__)
    by[method] = throughput = setting.seeds * setting.steps / seconds[method][best]
    gflops = setting.seeds * flops / seconds[method][best] / 1e9
    fraction[method] = gflops / peaks[method][best]
    rows.append({"method": method, "seconds": round(seconds[method][best], 4),
                 "seconds_per_round": [round(t, 4) for t in seconds[method]],
                 "warmup_seconds": round(warmup[method], 4),
                 "seed_steps_per_s": _sig(throughput), "gflops": _sig(gflops),
                 "peak_gflops": _sig(peaks[method][best]),
                 "peak_gflops_per_round": [_sig(p) for p in peaks[method]],
                 "peak_fraction": _sig(fraction[method])})
    logging.info("%s %-10s %8.3f s  %10.1f seed-steps/s  %7.2f GFLOP/s (%.0f%% of peak %.1f)",
                 setting.name, method, seconds[method][best], throughput, gflops,
                 100 * fraction[method], peaks[method][best])
  jaxnorm = "vmap_chunk" if "vmap_chunk" in by else ("vmap" if "vmap" in by else None)
  ratios: dict[str, Optional[float]] = {}
  if jaxnorm is not None:
    for other, key in (("loop", "vs_loop"), ("lax_map", "vs_lax_map")):
      ratios[key] = _sig(by[jaxnorm] / by[other]) if other in by else None
    torch_best = max((by[m] for m in ("torch", "torch_1t") if m in by), default=None)
    ratios["vs_torch"] = _sig(by[jaxnorm] / torch_best) if torch_best else None
    if "torch" in by:
      ratios["vs_torch_matched_threads"] = _sig(by[jaxnorm] / by["torch"])
    ratios["peak_fraction"] = _sig(fraction[jaxnorm])
    if jaxnorm == "vmap_chunk" and "vmap" in by:
      ratios["chunk_gain"] = _sig(by["vmap_chunk"] / by["vmap"])
  return {"setting": dataclasses.asdict(setting), "jaxnorm_method": jaxnorm,
          "flops_per_seed_step": flops_per_step(s), "flops_per_seed": flops,
          "matmul_peak_gflops": _sig(max(max(p) for p in peaks.values())), "rows": rows,
          "ratios": ratios}


def _goals(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """Issue 6's goals: speed-ups at the first setting, share of peak at the last."""
  names = list(settings)
  goals = {}
  for key, setting in (("vs_loop", names[0]), ("vs_torch", names[0]),
                       ("peak_fraction", names[-1])):
    value = settings[setting]["ratios"].get(key)
    goals[key] = {"setting": setting, "goal": GOALS[key], "value": value,
                  "met": None if value is None else value >= GOALS[key]}
  return goals


def _load_average() -> Optional[list[float]]:
  """The 1, 5 and 15 minute load averages (None where the OS has none)."""
  return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def run(config: Config, workdir: str,
        control: checkpoint.Control = checkpoint.Control()) -> dict[str, Any]:
  """Times every method at every setting and writes `results.json` into `workdir`.

  Each setting is one unit of work (`lifecycle.Run`): a killed benchmark resumes
  at the first setting not yet measured, a complete workdir is reported, not
  re-measured. Unlike the other experiments' results, these are timings: two
  runs never give the same bytes.

  Args:
    config: benchmark settings (validated before any compute).
    workdir: output directory.
    control: checkpointing (simulated preemption after k settings, overwrite).

  Returns:
    The content of `results.json`: `config`, `devices`, `backend`, versions,
    thread counts, `settings` (per setting: `rows`, `ratios` with `vs_loop`,
    `vs_lax_map`, `vs_torch`, `peak_fraction`) and `goals`.
  """
  specs = check_config(config)
  memory.check(max(fitspec.estimate_bytes(s, setting.seeds, setting.seed_chunk or None)
                   for setting, s in zip(config.selected(), specs)), "bench_fit")
  run_ = lifecycle.Run(workdir, dataclasses.asdict(config), control)
  if run_.finished is not None:
    return dict(run_.finished, already_complete=True)
  torch_version = (torch_peer.version() if {"torch", "torch_1t"} & set(config.methods)
                   else None)
  threads = config.torch_threads or torch_peer.default_threads()
  load_before = _load_average()
  start = time.perf_counter()
  settings = {}
  try:
    for unit, (setting, s) in enumerate(zip(config.selected(), specs)):
      if unit < len(run_.records):
        settings[setting.name] = run_.records[unit]
        continue
      settings[setting.name] = run_.unit_done(
          _time_setting(config, setting, s, threads, torch_version), counts_as_chunk=True)
  except BaseException:
    run_.close()
    raise
  results = {"config": dataclasses.asdict(config), "devices": jax.device_count(),
             "backend": jax.default_backend(), "jax_version": jax.__version__,
             "torch_version": torch_version,
             "threads": {"xla_cpu_pool": torch_peer.default_threads(),
                         "torch_intra_op": threads if torch_version else None},
             "load_average": {"before": load_before, "after": _load_average()},
             "seconds": round(time.perf_counter() - start, 1),
             "settings": settings, "goals": _goals(settings)}
  if torch_version is not None:
    results["torch_matmul_peak_gflops"] = round(
        torch_peer.matmul_peak_gflops(config.peak_size, threads=threads), 2)
  return run_.finish(results)


def table(results: dict[str, Any], setting: str) -> str:
  """One setting's table: time, throughput, GFLOP/s, paired peak and share, jaxnorm's speed-up."""
  res = results["settings"][setting]
  by = {r["method"]: r["seed_steps_per_s"] for r in res["rows"]}
  ours = by.get(res["jaxnorm_method"])
  rows = [[r["method"], r["seconds"], r["seed_steps_per_s"], r["gflops"], r["peak_gflops"],
           r["peak_fraction"], (ours / r["seed_steps_per_s"]) if ours else float("nan")]
          for r in res["rows"]]
  return outputs.format_table(("method", "seconds", "seed_steps/s", "GFLOP/s", "peak_GFLOP/s",
                               "of_peak", "jaxnorm_speedup"), rows)
