r"""Benchmark fitting S seeds: vmapped in one program vs one at a time vs lax.map.

  python -m experiments.bench_fit --workdir=/tmp/bench_fit
  python -m experiments.bench_fit --workdir=/tmp/bench_big --seeds=256 --width=512

Prints seconds, seed-steps/s, GFLOP/s and vmap's speed-up over each method;
writes results.json into --workdir.
"""

from absl import app
from absl import flags

from experiments import common
from jaxnorm.runs import bench_fit

_D = bench_fit.Config()
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json.")
SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds S fitted by every method.")
TARGET_WIDTHS = flags.DEFINE_list("target_widths", list(map(str, _D.target_widths)),
                                  "Target widths d_0,...,d_l.")
WIDTH = flags.DEFINE_integer("width", _D.width, "Hidden width of every random block.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size, "Inputs per step.")
STEPS = flags.DEFINE_integer("steps", _D.steps, "Timed optimizer steps per seed.")
CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", _D.chunk_steps, "Steps per compiled chunk.")
METHODS = flags.DEFINE_list("methods", list(_D.methods), "Any of vmap, loop, lax_map.")
NORM = flags.DEFINE_string("norm", _D.norm, "affine | batchnorm | layernorm.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.log_environment()
  config = bench_fit.Config(
      seeds=SEEDS.value, target_widths=common.int_list(TARGET_WIDTHS.value), width=WIDTH.value,
      batch_size=BATCH_SIZE.value, steps=STEPS.value, chunk_steps=CHUNK_STEPS.value,
      methods=tuple(METHODS.value), norm=NORM.value)
  results = common.run_or_exit(lambda: bench_fit.run(config, WORKDIR.value))
  print(bench_fit.table(results))
  print("ratios (vmap throughput / other):", results["ratios"])


if __name__ == "__main__":
  app.run(main)
