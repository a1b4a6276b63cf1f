r"""Benchmark fitting S seeds: jaxnorm vs one at a time, lax.map, hand-written JAX and PyTorch.

  python -m experiments.bench_fit --workdir=/tmp/bench_fit
  python -m experiments.bench_fit --workdir=/tmp/bench_small --config=small
  python -m experiments.bench_fit --workdir=/tmp/bench_large --settings=large --large_width=4096
  python -m experiments.bench_fit --workdir=/tmp/bench_gpu --preset=gpu   # on an accelerator

Two settings by default: `small` (--seeds, --target_widths, --width,
--batch_size, --steps, --seed_chunk) and `large` (the same flags prefixed with
`large_`). Prints, per setting, the roofline, then per method seconds (end to
end and steps alone, and the first call's, compilation included),
seed-steps/s, GFLOP/s, the share of the measured float32 matmul peak and of
the roofline, and jaxnorm's speed-up over each method, then the ratios and
goals; writes results.json into --workdir. The CPU is split into one JAX device
per core by default (`--cpu_devices=auto`; `--cpu_devices=1` for one device):
jaxnorm's fits spread their seeds over those devices, while the single-program
peers (hand-written JAX, PyTorch) use every core through their thread pools,
as they would on their own. The PyTorch peers run when torch
is installed (its CPU build: `pip install torch==2.13.0 --index-url
https://download.pytorch.org/whl/cpu`), else they are skipped. Every flag
below overrides the field of the named --config.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.bench_fit import experiment as bench_fit

CONFIG = config_flags.define(bench_fit.Config, "experiments.bench_fit.configs")
# jaxnorm on a CPU as its docs advise: one device per core (the peers run as they are).
flags.set_default(common.CPU_DEVICES, "auto")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json.")
flags.mark_flag_as_required("workdir")


def _config() -> bench_fit.Config:
  """The `Config` the flags describe, validated (raises `ConfigError`)."""
  config = CONFIG.value()
  bench_fit.check_config(config)
  return config


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  config = common.run_or_exit(_config)
  common.start()
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
          f"jaxnorm = {res['jaxnorm_method']}"
          + (f" ({res['auto_batching']})" if res.get("auto_batching") else ""))
    roof = res["roofline"]
    print(f"roofline: {res['flops_per_seed_step']:.4g} flop and {res['bytes_per_seed_step']:.4g} "
          f"bytes per seed-step (intensity {roof['intensity']} flop/B; ridge {roof['ridge']} at "
          f"{res['memory_bandwidth_gbs']} GB/s): at most {roof['attainable_gflops']} GFLOP/s, "
          f"{roof['bound']}-bound")
    print(bench_fit.table(results, name))
    print("ratios (jaxnorm throughput / other; peak_fraction = jaxnorm GFLOP/s / paired peak):",
          res["ratios"])
  if "torch_matmul_peak_gflops" in results:
    print("\ntorch float32 matmul peak:", results["torch_matmul_peak_gflops"], "GFLOP/s")
  print("goals:", {k: (g["value"], ">=", g["goal"], "met" if g["met"] else
                       ("n/a" if g["met"] is None else "MISSED")) for k, g in
                   results["goals"].items()})
  for k, g in results["goals"].items():
    if g.get("same_program"):
      print(f"{k}: at {', '.join(g['same_program'])} the default ran lax.map itself (one compiled "
            f"program, met by identity; the measured ratio there is noise)")


if __name__ == "__main__":
  common.run_app(main)
