r"""Fit frozen random networks to random targets by tuning only their norms.

  python -m experiments.fit_target --workdir=/tmp/fit_target
  python -m experiments.fit_target --workdir=/tmp/fit_sparse --sparsity=0.25 \
      --width_multipliers=1,4,16 --seeds=16
  python -m experiments.fit_target --workdir=/tmp/fit_all --optimizers=all \
      --width_multipliers=1,2 --seeds=16

Writes config.json, results.json, timings.json, metrics.csv, curves.csv and
rel_mse_vs_width.png into --workdir and prints the results table. The seeds are
spread over every device (--devices); progress is checkpointed into
--workdir/checkpoints, and re-running the same command resumes.
"""

from absl import app
from absl import flags

from experiments import common
from jaxnorm.runs import fit_target

_D = fit_target.Config()
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
TARGET_WIDTHS = flags.DEFINE_list("target_widths", list(map(str, _D.target_widths)),
                                  "Target widths d_0,...,d_l (input, hidden..., output).")
MULTIPLIERS = flags.DEFINE_list(
    "width_multipliers", list(map(str, _D.width_multipliers)),
    "Hidden width of each random block as a multiple of d_in*d_out of its target layer.")
WIDTHS = flags.DEFINE_list("widths", [], "Explicit hidden widths instead of --width_multipliers.")
SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds fitted at once per width.")
OPTIMIZER = flags.DEFINE_string("optimizer", _D.optimizers[0],
                                "Fitting method: adam | lbfgs | lm | distill.")
OPTIMIZERS = flags.DEFINE_list("optimizers", [],
                               "Several methods compared side by side (or 'all'); replaces "
                               "--optimizer.")
STEPS = flags.DEFINE_integer("steps", _D.steps,
                             "Optimizer steps (default: per optimizer, adam 2000, lbfgs 500, "
                             "lm 100, distill 10).")
CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", _D.chunk_steps,
                                   "Steps per compiled chunk (progress is logged in between; "
                                   "default per optimizer).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size, "Fresh inputs per step (adam).")
LEARNING_RATE = flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate.")
SCHEDULE = flags.DEFINE_string("schedule", _D.schedule, "constant | cosine.")
NORM = flags.DEFINE_string("norm", _D.norm, "affine | batchnorm | layernorm.")
SPARSITY = flags.DEFINE_float("sparsity", _D.sparsity,
                              "Keep-probability p of each frozen weight, in (0, 1].")
RADIUS = flags.DEFINE_float("radius", _D.radius, "Radius of the input domain.")
INPUTS = flags.DEFINE_string("input_distribution", _D.input_distribution, "ball | gaussian.")
EVAL_SIZE = flags.DEFINE_integer("eval_size", _D.eval_size, "Held-out inputs per seed.")
SEED = flags.DEFINE_integer("seed", _D.seed, "Base random seed.")
INIT = flags.DEFINE_string("init", _D.init,
                           "standard | linear (wide units in their linear regime) | construct "
                           "(oracle: the exact reconstruction from the target's weights).")
FIT_SIZE = flags.DEFINE_integer("fit_size", _D.fit_size,
                                "Fixed inputs (target evaluations) of lbfgs, lm and distill.")
RESTARTS = flags.DEFINE_integer("restarts", _D.restarts, "Random students per seed (distill).")
STUDENT_STEPS = flags.DEFINE_integer("student_steps", _D.student_steps,
                                     "Levenberg-Marquardt steps on the student (distill).")
DEVICES = flags.DEFINE_integer("devices", _D.devices,
                               "Devices to spread the seeds over (0: every device of the job).")
SEED_CHUNK = flags.DEFINE_integer("seed_chunk", _D.seed_chunk,
                                  "Seeds per vmapped chunk on each device, lax.map over chunks "
                                  "(0: one vmap over all).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start()
  if WIDTHS.value and flags.FLAGS["width_multipliers"].present:
    common.fail("give --widths or --width_multipliers, not both")
  if OPTIMIZERS.value and flags.FLAGS["optimizer"].present:
    common.fail("give --optimizer or --optimizers, not both")
  config = fit_target.Config(
      target_widths=common.int_list(TARGET_WIDTHS.value),
      width_multipliers=common.float_list(MULTIPLIERS.value),
      widths=common.int_list(WIDTHS.value), seeds=SEEDS.value,
      optimizers=tuple(OPTIMIZERS.value) or (OPTIMIZER.value,), steps=STEPS.value,
      chunk_steps=CHUNK_STEPS.value, batch_size=BATCH_SIZE.value,
      learning_rate=LEARNING_RATE.value, schedule=SCHEDULE.value, norm=NORM.value,
      sparsity=SPARSITY.value, radius=RADIUS.value, input_distribution=INPUTS.value,
      eval_size=EVAL_SIZE.value, seed=SEED.value, init=INIT.value, fit_size=FIT_SIZE.value,
      restarts=RESTARTS.value, student_steps=STUDENT_STEPS.value, devices=DEVICES.value,
      seed_chunk=SEED_CHUNK.value)
  control = common.control()
  results = common.run_or_exit(lambda: fit_target.run(config, WORKDIR.value, control))
  if not common.is_writer():
    return
  common.report_complete(results, WORKDIR.value)
  print(fit_target.table(results["rows"]))
  print(f"frozen weights bit-identical after fitting: {results['frozen_unchanged']}")
  print(f"seeds spread over {results['devices']} device(s); wrote {WORKDIR.value}/results.json, "
        f"timings.json, metrics.csv, curves.csv, rel_mse_vs_width.png")


if __name__ == "__main__":
  common.run_app(main)
