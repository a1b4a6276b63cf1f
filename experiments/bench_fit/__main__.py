r"""Benchmark fitting S seeds: jaxnorm vmapped vs one at a time vs lax.map vs a PyTorch peer.

  python -m experiments.bench_fit --workdir=/tmp/bench_fit
  python -m experiments.bench_fit --workdir=/tmp/bench_small --config=small
  python -m experiments.bench_fit --workdir=/tmp/bench_large --settings=large --large_width=4096

Two settings by default: `small` (--seeds, --target_widths, --width,
--batch_size, --steps, --seed_chunk) and `large` (the same flags prefixed with
`large_`). Prints, per setting, seconds, seed-steps/s, GFLOP/s, the share of
the measured float32 matmul peak and jaxnorm's speed-up over each method, then
the ratios; writes results.json into --workdir. The PyTorch peer runs when
torch is installed (`pip install -e ".[bench]"`), else it is skipped. Every
flag below overrides the field of the named --config.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.bench_fit import experiment as bench_fit

CONFIG = config_flags.define(bench_fit.Config, "experiments.bench_fit.configs")
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
