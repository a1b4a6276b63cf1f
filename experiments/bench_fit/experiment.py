"""Benchmark: jaxnorm's vmapped fit of S seeds against hand-written JAX, PyTorch and itself.

For each setting (a small memory-bound one and a larger compute-bound one),
every method fits S seeds with the same Adam work per step (fresh inputs in
the ball, the seed's target evaluated on them, forward and backward of the
frozen network with only the norms differentiated, an Adam update with a
cosine schedule), for the same number of steps:

* `auto`: `jaxnorm.fitspec.fit_seeds` as a user calls it: the engine's
  default `batching="auto"` (`jaxnorm.batching.choose`: one `vmap`, `lax.map`,
  or vmapped chunks of seeds, from the platform and the step's largest value),
  its seeds spread over the process's devices like every jaxnorm row (the
  command line splits a CPU into one device per core by default);
* `vmap`: the same with all seeds in one `vmap`;
* `vmap_chunk`: the same with `seed_chunk` (`lax.map` over vmapped chunks of
  seeds; only for a setting whose `seed_chunk` is set);
* `loop`: `fit_seeds` on one seed at a time;
* `lax_map`: `fit_seeds(batching="map")`, one seed at a time inside one program;
* `hand_jax`: the same math written by hand in JAX (`hand_jax.py`: stacked
  weights, `einsum`, `jax.grad`, Adam written out, `lax.scan`);
* `torch`: the PyTorch peer (`torch_peer.Peer`: `torch.func.vmap` over
  `functional_call`, `torch.optim.Adam` on the stacked norms) with as many
  intra-op threads as XLA's CPU pool (the cores); `torch_1t`: the same on one
  thread (far less hurt when another process holds a core);
* `torch_bmm`: an expert's eager step (`torch_peer.Stacked`: stacked weights,
  `torch.bmm`, `torch.func.grad`, Adam written out in one function);
* `torch_compile`: that whole step under `torch.compile` (inductor).
The torch methods are skipped when torch is not installed. Every method's
per-step losses equal jaxnorm's from the same start and batches (a test).

Every method is run once first (its compilation: XLA's, inductor's; its time
is `warmup_seconds`), then `repeats` rounds time each method once (the order
rotated each round); the best round of each counts. `seconds` is end to end
(init, every step, the held-out evaluation) in a warm process;
`steps_seconds` is the steps alone (steady state). The machine is shared and
noisy, so the float32 matrix-multiply peak is measured right before and right
after every timed run, and a run's share of the peak is its GFLOP/s over the
larger of those two (`peak_fraction`). The roofline of each setting comes
from the flops and a model of the bytes of one seed-step (`flops_per_step`,
`bytes_per_step`) against the measured matmul peak and memory bandwidth.
Throughput is seed-steps per second; GFLOP/s counts the matmul flops the whole
fit needs (`flops_per_seed`). jaxnorm's number is `auto` (the default) where
it runs, else `vmap_chunk`, else `vmap`; `ratios` divide its throughput by each
other method's.

Writes `results.json` (config, per-setting rows, roofline and ratios, goals)
into the workdir.

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
from experiments.bench_fit import hand_jax
from experiments.bench_fit import torch_peer

METHODS = ("auto", "vmap", "vmap_chunk", "loop", "lax_map", "hand_jax", "torch", "torch_1t",
           "torch_bmm", "torch_compile")
# vmap_chunk is left out by default: at the small setting `auto` runs the same chunks.
DEFAULT_METHODS = tuple(m for m in METHODS if m != "vmap_chunk")
TORCH_METHODS = ("torch", "torch_1t", "torch_bmm", "torch_compile")
# Goals the benchmark reports against (issue 16): jaxnorm over compiled PyTorch end to end and
# at least as fast as lax.map at every setting; share of the matmul peak at the last setting.
GOALS = {"vs_torch_compile": 1.3, "vs_lax_map": 1.0, "peak_fraction": 0.6}
PRESETS = ("cpu", "gpu")
GPU_SEEDS = {"small": 4096, "large": 256}   # --preset=gpu: enough seeds to fill an accelerator


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
  methods: tuple[str, ...] = hparam(DEFAULT_METHODS, "Any of " + ", ".join(METHODS) + ".")
  norm: str = hparam("affine", "affine | batchnorm | layernorm (the torch peer: affine).")
  repeats: int = hparam(3, "Timed rounds per setting (the best counts).")
  torch_threads: int = hparam(0, "torch intra-op threads (0: the cores this process may use, "
                              "the size of XLA's CPU thread pool too).")
  peak_size: int = hparam(2048, "Side of the square matrices of the matmul peak measurement.")
  bandwidth_megabytes: int = hparam(256, "Size of the array of the memory bandwidth measurement.")
  preset: str = hparam("cpu", "cpu | gpu. gpu (any accelerator): S = 4096 (small) and 256 "
                       "(large) instead of the --seeds flags, no seed chunks, no one-seed loop "
                       "and no torch peers (CPU builds), the matmul peak on 8192^2 matrices.")

  def selected(self) -> tuple[Setting, ...]:
    """The settings that run, in the order `settings` names them (scaled by the preset)."""
    by_name = {"small": self.small, "large": self.large}
    for name in self.settings:
      validate.one_of("setting", name, tuple(by_name))
    validate.one_of("preset", self.preset, PRESETS)
    if self.preset == "gpu":
      return tuple(dataclasses.replace(by_name[n], name=n, seeds=GPU_SEEDS[n], seed_chunk=None)
                   for n in self.settings)
    return tuple(dataclasses.replace(by_name[n], name=n, seed_chunk=by_name[n].seed_chunk or None)
                 for n in self.settings)

  def peak_n(self) -> int:
    """Side of the matmul peak's matrices (an accelerator needs large ones to reach its peak)."""
    on_accelerator = self.preset == "gpu" and jax.default_backend() != "cpu"
    return max(self.peak_size, 8192) if on_accelerator else self.peak_size


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
  if set(TORCH_METHODS) & set(config.methods):
    torch_peer.check_spec(s)
  if "hand_jax" in config.methods:
    torch_peer.check_spec(s, who="the hand-written JAX baseline")   # the same work
  return s


def check_config(config: Config) -> list[fitspec.FitSpec]:
  """Validates every field of `config`; returns one spec per setting."""
  if not config.methods:
    raise validate.ConfigError("need at least one method")
  for m in config.methods:
    validate.one_of("method", m, METHODS)
  if not {"auto", "vmap"} & set(config.methods):   # every ratio compares with jaxnorm's row
    raise validate.ConfigError(f"methods must include auto or vmap (what the others are "
                               f"compared with), got {list(config.methods)}")
  if not config.settings:
    raise validate.ConfigError("--settings needs at least one of small, large")
  names = list(config.settings)
  if len(set(names)) != len(names):
    raise validate.ConfigError(f"setting names must differ, got {names}")
  validate.positive_int("chunk_steps", config.chunk_steps)
  validate.positive_int("repeats", config.repeats)
  validate.positive_int("peak_size", config.peak_size)
  validate.positive_int("bandwidth_megabytes", config.bandwidth_megabytes)
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


def bytes_per_step(s: fitspec.FitSpec) -> float:
  """Memory traffic of one training step of one seed, when no operand stays in cache.

  A model for the roofline, not a measurement: every frozen kernel is read in
  the forward pass and (but the first) again in the backward pass, the target's
  weights once; every hidden and output activation of the network is written
  in the forward pass and read back in the backward pass, its gradient written
  and read once, and the target's activations written once. float32.

  Args:
    s: the spec.

  Returns:
    Bytes.
  """
  w, t = s.network_widths, s.target_widths
  layers = [a * b for a, b in zip(w[:-1], w[1:])]
  weights = sum(layers) + sum(layers[1:]) + sum(a * b + b for a, b in zip(t[:-1], t[1:]))
  activations = s.batch_size * (4 * sum(w[1:]) + sum(t))
  return 4.0 * (weights + activations)


def roofline(flops: float, nbytes: float, peak_gflops: float, bandwidth_gbs: float
             ) -> dict[str, float]:
  """Where a step of `flops` and `nbytes` can run at best on this machine.

  Args:
    flops: flops of a seed-step.
    nbytes: bytes of a seed-step (`bytes_per_step`).
    peak_gflops: the measured matmul peak.
    bandwidth_gbs: the measured memory bandwidth.

  Returns:
    `{"intensity"` (flop per byte), `"ridge"` (the intensity at which the
    peak is reached), `"attainable_gflops"` (`min(peak, intensity x
    bandwidth)`), `"bound"` (`"compute"` or `"memory"`)`}`.
  """
  intensity = flops / nbytes
  attainable = min(peak_gflops, intensity * bandwidth_gbs)
  return {"intensity": _sig(intensity), "ridge": _sig(peak_gflops / bandwidth_gbs),
          "attainable_gflops": _sig(attainable),
          "bound": "compute" if attainable >= peak_gflops else "memory"}


def _chunk_timer():
  """An `on_chunk` callback adding up the chunks' own seconds (the steps alone), and the total."""
  total, last = [0.0], [0]

  def on_chunk(report):
    done_before = 0 if report.chunk == 0 else last[0]   # chunk 0: a new fit (the loop's seeds)
    total[0] += (report.step - done_before) / report.steps_per_second
    last[0] = report.step
  return on_chunk, total


def _fit_all(method: str, s: fitspec.FitSpec, seeds: int, seed_chunk: Optional[int],
             threads: int) -> tuple[float, Optional[str]]:
  """Fits `seeds` seeds with `method`; returns the seconds of the steps alone, and for `auto`
  the batching the engine chose."""
  if method.startswith("torch"):
    kind = {"torch": "vmap", "torch_1t": "vmap", "torch_bmm": "bmm",
            "torch_compile": "compile"}[method]
    return torch_peer.fit(s, seeds, threads=1 if method == "torch_1t" else threads,
                          kind=kind).steps_seconds, None
  if method == "hand_jax":
    return hand_jax.fit(s, seeds).steps_seconds, None
  on_chunk, total = _chunk_timer()
  if method == "auto":
    res = fitspec.fit_seeds(s, range(seeds), on_chunk=on_chunk)
    return total[0], res.batching + (f" over chunks of {res.seed_chunk}" if res.seed_chunk
                                     else "")
  if method == "vmap":
    fitspec.fit_seeds(s, range(seeds), on_chunk=on_chunk, batching="vmap")
  elif method == "vmap_chunk":
    fitspec.fit_seeds(s, range(seeds), on_chunk=on_chunk, batching="vmap", seed_chunk=seed_chunk)
  elif method == "lax_map":
    fitspec.fit_seeds(s, range(seeds), on_chunk=on_chunk, batching="map")
  else:
    for seed in range(seeds):
      fitspec.fit_seeds(s, [seed], on_chunk=on_chunk)
  return total[0], None


def _methods(config: Config, setting: Setting, torch_version: Optional[str],
             threads: int) -> list[str]:
  methods = list(config.methods)
  if config.preset == "gpu":
    dropped = [m for m in methods if m == "loop" or m in TORCH_METHODS]
    if dropped:
      logging.info("--preset=gpu: %s skipped (one seed at a time, CPU builds of torch)",
                   ", ".join(dropped))
    methods = [m for m in methods if m not in dropped]
  if "vmap_chunk" in methods and (setting.seed_chunk is None
                                  or setting.seed_chunk >= setting.seeds):
    logging.info("%s: no seed_chunk smaller than S=%d, vmap_chunk skipped", setting.name,
                 setting.seeds)
    methods.remove("vmap_chunk")
  if torch_version is None and set(TORCH_METHODS) & set(methods):
    logging.warning("torch is not installed: the PyTorch peers are skipped and their ratios are "
                    "null (README: the CPU build of torch)")
    methods = [m for m in methods if m not in TORCH_METHODS]
  if "torch_1t" in methods and "torch" in methods and threads == 1:
    methods.remove("torch_1t")   # the same run twice
  return methods


def _time_setting(config: Config, setting: Setting, s: fitspec.FitSpec, threads: int,
                  torch_version: Optional[str]) -> dict[str, Any]:
  methods = _methods(config, setting, torch_version, threads)
  flops = flops_per_seed(s)
  warmup, chosen = {}, None
  for method in methods:   # the first call: compilation (XLA, inductor), caches, allocators
    start = time.perf_counter()
    if method in ("torch", "torch_1t", "torch_bmm"):   # eager: a few steps warm the caches
      _fit_all(method, dataclasses.replace(s, steps=2, chunk_steps=2), setting.seeds, None,
               threads)
    else:
      chosen = _fit_all(method, s, 1 if method == "loop" else setting.seeds,
                        setting.seed_chunk, threads)[1] or chosen
    warmup[method] = time.perf_counter() - start
  seconds = {m: [] for m in methods}
  steps_seconds = {m: [] for m in methods}
  peaks = {m: [] for m in methods}
  for r in range(config.repeats):
    for method in methods[r % len(methods):] + methods[:r % len(methods)]:
      before = peak_lib.matmul_peak_gflops(config.peak_n(), repeats=3)
      start = time.perf_counter()
      steps_seconds[method].append(_fit_all(method, s, setting.seeds, setting.seed_chunk,
                                            threads)[0])
      seconds[method].append(time.perf_counter() - start)
      peaks[method].append(max(before, peak_lib.matmul_peak_gflops(config.peak_n(), repeats=3)))
      logging.info("%s round %d/%d %-13s %.3f s (steps %.3f s; matmul peak around it %.1f "
                   "GFLOP/s)", setting.name, r + 1, config.repeats, method, seconds[method][-1],
                   steps_seconds[method][-1], peaks[method][-1])
  bandwidth = peak_lib.memory_bandwidth_gbs(config.bandwidth_megabytes)
  peak = max(max(p) for p in peaks.values())
  roof = roofline(flops_per_step(s), bytes_per_step(s), peak, bandwidth)
  rows, by, steady, fraction = [], {}, {}, {}
  for method in methods:
    best = min(range(config.repeats), key=seconds[method].__getitem__)
    by[method] = throughput = setting.seeds * setting.steps / seconds[method][best]
    steady[method] = setting.seeds * setting.steps / min(steps_seconds[method])
    gflops = setting.seeds * flops / seconds[method][best] / 1e9
    fraction[method] = gflops / peaks[method][best]
    rows.append({"method": method, "seconds": round(seconds[method][best], 4),
                 "seconds_per_round": [round(t, 4) for t in seconds[method]],
                 "steps_seconds": round(min(steps_seconds[method]), 4),
                 "warmup_seconds": round(warmup[method], 4),
                 "seed_steps_per_s": _sig(throughput),
                 "steps_seed_steps_per_s": _sig(steady[method]),
                 "gflops": _sig(gflops), "peak_gflops": _sig(peaks[method][best]),
                 "peak_gflops_per_round": [_sig(p) for p in peaks[method]],
                 "peak_fraction": _sig(fraction[method]),
                 "roofline_fraction": _sig(gflops / roof["attainable_gflops"])})
    logging.info("%s %-13s %8.3f s (steps %.3f s, first call %.1f s)  %10.1f seed-steps/s  "
                 "%7.2f GFLOP/s (%.0f%% of peak %.1f)", setting.name, method,
                 seconds[method][best], min(steps_seconds[method]), warmup[method], throughput,
                 gflops, 100 * fraction[method], peaks[method][best])
  jaxnorm = next((m for m in ("auto", "vmap_chunk", "vmap") if m in by), None)
  ratios: dict[str, Optional[float]] = {}
  if jaxnorm is not None:
    for other, key in (("vmap", "vs_vmap"), ("loop", "vs_loop"), ("lax_map", "vs_lax_map"),
                       ("hand_jax", "vs_hand_jax"),
                       ("torch_compile", "vs_torch_compile"), ("torch_bmm", "vs_torch_bmm")):
      ratios[key] = _sig(by[jaxnorm] / by[other]) if other in by and other != jaxnorm else None
    ratios["vs_torch_compile_steps"] = (_sig(steady[jaxnorm] / steady["torch_compile"])
                                        if "torch_compile" in by else None)
    torch_best = max((by[m] for m in ("torch", "torch_1t") if m in by), default=None)
    ratios["vs_torch"] = _sig(by[jaxnorm] / torch_best) if torch_best else None
    if "torch" in by:
      ratios["vs_torch_matched_threads"] = _sig(by[jaxnorm] / by["torch"])
    ratios["peak_fraction"] = _sig(fraction[jaxnorm])
    if "vmap_chunk" in by and "vmap" in by:
      ratios["chunk_gain"] = _sig(by["vmap_chunk"] / by["vmap"])
  return {"setting": dataclasses.asdict(setting), "jaxnorm_method": jaxnorm,
          "auto_batching": chosen,
          "device_memory": _device_memory(),
          "flops_per_seed_step": flops_per_step(s), "bytes_per_seed_step": bytes_per_step(s),
          "flops_per_seed": flops, "matmul_peak_gflops": _sig(peak),
          "memory_bandwidth_gbs": _sig(bandwidth), "roofline": roof, "rows": rows,
          "ratios": ratios}


def _goals(settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """`GOALS`: the speed-ups at every setting (their smallest counts), the share of peak at the
  last setting."""
  names = list(settings)
  goals = {}
  for key in GOALS:
    over = names[-1:] if key == "peak_fraction" else names
    values = {n: settings[n]["ratios"].get(key) for n in over}
    # Where the default chose lax.map, the two rows ran one compiled program: their measured
    # ratio is the machine's noise, and the default is as fast as lax.map by identity.
    same = [n for n in over if key == "vs_lax_map" and settings[n].get("jaxnorm_method") == "auto"
            and settings[n].get("auto_batching") == "map"]
    values.update({n: 1.0 for n in same if values[n] is not None})
    value = None if any(v is None for v in values.values()) else min(values.values())
    goals[key] = {"settings": over, "goal": GOALS[key], "value": value, "per_setting": values,
                  "met": None if value is None else value >= GOALS[key]}
    if same:
      goals[key]["same_program"] = same
  return goals


def _device_memory() -> Optional[dict[str, int]]:
  """The first device's allocator statistics (peak and limit, bytes), where it keeps them."""
  stats = jax.local_devices()[0].memory_stats()
  if not stats:
    return None
  return {k: int(stats[k]) for k in ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
          if k in stats}


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
  torch_version = (torch_peer.version() if set(TORCH_METHODS) & set(config.methods)
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
  """One setting's table: times, throughput, GFLOP/s, shares of peak and roofline, speed-up."""
  res = results["settings"][setting]
  by = {r["method"]: r["seed_steps_per_s"] for r in res["rows"]}
  ours = by.get(res["jaxnorm_method"])
  rows = [[r["method"], r["seconds"], r["steps_seconds"], r["warmup_seconds"],
           r["seed_steps_per_s"], r["gflops"], r["peak_gflops"], r["peak_fraction"],
           r["roofline_fraction"], (ours / r["seed_steps_per_s"]) if ours else float("nan")]
          for r in res["rows"]]
  return outputs.format_table(("method", "seconds", "steps_s", "first_call_s", "seed_steps/s",
                               "GFLOP/s", "peak_GFLOP/s", "of_peak", "of_roofline",
                               "jaxnorm_speedup"), rows)
