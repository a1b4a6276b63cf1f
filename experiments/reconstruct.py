r"""The exact construction: phase transition, sparse threshold, scale, gap to gradient descent.

  python -m experiments.reconstruct --workdir=/tmp/rec_dense --study=dense
  python -m experiments.reconstruct --workdir=/tmp/rec_sparse --study=sparse
  python -m experiments.reconstruct --workdir=/tmp/rec_scale --study=scale
  python -m experiments.reconstruct --workdir=/tmp/rec_gap --study=gap

Writes config.json, results.json, timings.json, results.csv and <study>.png into
--workdir and prints the table. Every row is checkpointed into
--workdir/checkpoints (the gap study's fits after every chunk too); re-running
the same command resumes.
"""

from absl import app
from absl import flags

from experiments import common
from jaxnorm.runs import reconstruct

_D = reconstruct.Config()
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
STUDY = flags.DEFINE_string("study", _D.study, "dense | sparse | scale | gap.")
DIMS = flags.DEFINE_list("dims", [], "Block sizes d (default: the study's own).")
RATIOS = flags.DEFINE_list("ratios", [], "Width ratios m/(d_in d_out) (dense, gap).")
KEEP_PROBS = flags.DEFINE_list("keep_probs", list(map(str, _D.keep_probs)),
                               "Keep-probabilities p (sparse).")
SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds per cell.")
RADIUS = flags.DEFINE_float("radius", _D.radius, "Inputs with ||x|| <= radius.")
SEED = flags.DEFINE_integer("seed", _D.seed, "Base random seed.")
STEPS = flags.DEFINE_integer("steps", _D.steps, "Gradient steps (gap).")
LEARNING_RATE = flags.DEFINE_float("learning_rate", _D.learning_rate, "Adam's learning rate (gap).")
TEST_POINTS = flags.DEFINE_integer("test_points", _D.test_points,
                                   "Points for the relative error (inside and on the sphere).")
DEVICES = flags.DEFINE_integer("devices", _D.devices,
                               "Devices the gap study's fits spread their seeds over (0: all).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start()
  config = reconstruct.Config(
      study=STUDY.value, dims=common.int_list(DIMS.value), ratios=common.float_list(RATIOS.value),
      keep_probs=common.float_list(KEEP_PROBS.value), seeds=SEEDS.value, radius=RADIUS.value,
      seed=SEED.value, steps=STEPS.value, learning_rate=LEARNING_RATE.value,
      test_points=TEST_POINTS.value, devices=DEVICES.value)
  control = common.control()
  results = common.run_or_exit(lambda: reconstruct.run(config, WORKDIR.value, control))
  common.report_complete(results, WORKDIR.value)
  print(reconstruct.table(results["rows"], results["timings"]))
  print(f"devices: {results['devices']}; wrote {WORKDIR.value}/results.json, timings.json, "
        f"results.csv, {results['config']['study']}.png")


if __name__ == "__main__":
  common.run_app(main)
