r"""Benchmark fitting S seeds: jaxnorm vmapped vs one at a time vs lax.map vs a PyTorch peer.

  python -m experiments.bench_fit --workdir=/tmp/bench_fit
  python -m experiments.bench_fit --workdir=/tmp/bench_small --settings=small --seeds=256
  python -m experiments.bench_fit --workdir=/tmp/bench_large --settings=large --large_width=4096

Two settings by default: `small` (--seeds, --target_widths, --width,
--batch_size, --steps, --seed_chunk) and `large` (the same flags prefixed with
`large_`). Prints, per setting, seconds, seed-steps/s, GFLOP/s, the share of
the measured float32 matmul peak and jaxnorm's speed-up over each method, then
the ratios; writes results.json into --workdir. The PyTorch peer runs when
torch is installed (`pip install torch`), else it is skipped.
"""

from absl import app
from absl import flags

from experiments import common
from jaxnorm import validate
from jaxnorm.runs import bench_fit

_D = bench_fit.Config()
_S, _L = bench_fit.SMALL, bench_fit.LARGE
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json.")
SETTINGS = flags.DEFINE_list("settings", ["small", "large"], "Which settings: small, large.")
SEEDS = flags.DEFINE_integer("seeds", _S.seeds, "small: seeds S fitted by every method.")
TARGET_WIDTHS = flags.DEFINE_list("target_widths", list(map(str, _S.target_widths)),
                                  "small: target widths d_0,...,d_l.")
WIDTH = flags.DEFINE_integer("width", _S.width, "small: hidden width of every random block.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", _S.batch_size, "small: inputs per step.")
STEPS = flags.DEFINE_integer("steps", _S.steps, "small: timed optimizer steps per seed.")
SEED_CHUNK = flags.DEFINE_integer("seed_chunk", _S.seed_chunk,
                                  "small: seeds per chunk of vmap_chunk (0: no vmap_chunk row).")
LARGE_SEEDS = flags.DEFINE_integer("large_seeds", _L.seeds, "large: seeds S.")
LARGE_TARGET_WIDTHS = flags.DEFINE_list("large_target_widths", list(map(str, _L.target_widths)),
                                        "large: target widths d_0,...,d_l.")
LARGE_WIDTH = flags.DEFINE_integer("large_width", _L.width, "large: hidden width.")
LARGE_BATCH_SIZE = flags.DEFINE_integer("large_batch_size", _L.batch_size,
                                        "large: inputs per step.")
LARGE_STEPS = flags.DEFINE_integer("large_steps", _L.steps, "large: timed steps per seed.")
LARGE_SEED_CHUNK = flags.DEFINE_integer("large_seed_chunk", _L.seed_chunk or 0,
                                        "large: seeds per chunk of vmap_chunk (0: none).")
CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", _D.chunk_steps, "Steps per compiled chunk.")
METHODS = flags.DEFINE_list("methods", list(_D.methods),
                            "Any of vmap, vmap_chunk, loop, lax_map, torch.")
NORM = flags.DEFINE_string("norm", _D.norm, "affine | batchnorm | layernorm (torch: affine).")
REPEATS = flags.DEFINE_integer("repeats", _D.repeats, "Timed rounds per setting (best counts).")
TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0,
                                     "torch intra-op threads (0: the cores, as XLA uses).")
flags.mark_flag_as_required("workdir")


def _chunk(name: str, value: int):
  if value < 0:
    raise validate.ConfigError(f"{name} must be 0 (none) or a positive integer, got {value}")
  return value or None


def _config() -> bench_fit.Config:
  """The `Config` the flags describe (raises `ConfigError` on a bad flag)."""
  for name in SETTINGS.value:
    validate.one_of("setting", name, ("small", "large"))
  if not SETTINGS.value:
    raise validate.ConfigError("--settings needs at least one of small, large")
  if TORCH_THREADS.value < 0:
    raise validate.ConfigError(f"torch_threads must be >= 0, got {TORCH_THREADS.value}")
  settings = {
      "small": bench_fit.Setting(
          "small", SEEDS.value, common.int_list(TARGET_WIDTHS.value), WIDTH.value,
          BATCH_SIZE.value, STEPS.value, _chunk("seed_chunk", SEED_CHUNK.value)),
      "large": bench_fit.Setting(
          "large", LARGE_SEEDS.value, common.int_list(LARGE_TARGET_WIDTHS.value),
          LARGE_WIDTH.value, LARGE_BATCH_SIZE.value, LARGE_STEPS.value,
          _chunk("large_seed_chunk", LARGE_SEED_CHUNK.value))}
  config = bench_fit.Config(
      settings=tuple(settings[name] for name in SETTINGS.value), chunk_steps=CHUNK_STEPS.value,
      methods=tuple(METHODS.value), norm=NORM.value, repeats=REPEATS.value,
      torch_threads=TORCH_THREADS.value or None)
  bench_fit.check_config(config)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start()
  config = common.run_or_exit(_config)
  control = common.control()
  results = common.run_or_exit(lambda: bench_fit.run(config, WORKDIR.value, control))
  if not common.is_writer():
    return
  common.report_complete(results, WORKDIR.value)
  print(f"devices {results['devices']} ({results['backend']}), jax {results['jax_version']}, "
        f"torch {results['torch_version']}, threads {results['threads']}, "
        f"load average {results['load_average']}, {results['seconds']} s")
  for name, res in results["settings"].items():
    s = res["setting"]
    print(f"\n[{name}] S={s['seeds']} target_widths={list(s['target_widths'])} "
          f"width={s['width']} batch={s['batch_size']} steps={s['steps']} "
          f"seed_chunk={s['seed_chunk']}; best matmul peak {res['matmul_peak_gflops']} GFLOP/s; "
          f"jaxnorm = {res['jaxnorm_method']}")
    print(bench_fit.table(results, name))
    print("ratios (jaxnorm throughput / other; peak_fraction = jaxnorm GFLOP/s / paired peak):",
          res["ratios"])
  if "torch_matmul_peak_gflops" in results:
    print("\ntorch float32 matmul peak:", results["torch_matmul_peak_gflops"], "GFLOP/s")
  print("goals:", {k: (g["value"], ">=", g["goal"], "met" if g["met"] else
                       ("n/a" if g["met"] is None else "MISSED")) for k, g in
                   results["goals"].items()})


if __name__ == "__main__":
  common.run_app(main)
