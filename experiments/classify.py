r"""Norm-only training of frozen random networks on real digits, beside its baselines.

  python -m experiments.classify --workdir=/tmp/classify
  python -m experiments.classify --workdir=/tmp/classify_wide --mlp_widths=256,1024,4096 \
      --mlp_depths=2 --keep_probs=1 --conv_depths= --modes=norm,random_subset --seeds=8

Data: scikit-learn's digits (ships with the package), fixed stratified split.
Writes config.json, results.json, timings.json, results.csv, acc_vs_params.png
and norm_scaling.png into --workdir and prints the accuracy table. The seeds
are spread over every device (--devices); the training state is checkpointed
into --workdir/checkpoints after every chunk, and re-running the same command
resumes.
"""

from absl import app
from absl import flags

from experiments import common
from jaxnorm.runs import classify

_D = classify.Config()
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
MLP_DEPTHS = flags.DEFINE_list("mlp_depths", list(map(str, _D.mlp_depths)),
                               "Hidden layers of the MLPs (depth sweep at the first width).")
MLP_WIDTHS = flags.DEFINE_list("mlp_widths", list(map(str, _D.mlp_widths)),
                               "Hidden widths of the MLPs (width sweep at the first depth).")
KEEP_PROBS = flags.DEFINE_list("keep_probs", list(map(str, _D.keep_probs)),
                               "Keep-probabilities p of the frozen MLP weights.")
CONV_DEPTHS = flags.DEFINE_list("conv_depths", list(map(str, _D.conv_depths)),
                                "Convolution blocks of the conv nets (empty: no conv net).")
CONV_CHANNELS = flags.DEFINE_list("conv_channels", list(map(str, _D.conv_channels)),
                                  "Channels of the conv nets.")
MODES = flags.DEFINE_list("modes", list(_D.modes),
                          "Training modes: norm, output, random_subset, norm_output, full.")
NORM = flags.DEFINE_string("norm", _D.norm, "batchnorm | affine | layernorm.")
SEEDS = flags.DEFINE_integer("seeds", _D.seeds, "Seeds per cell and mode, trained at once.")
STEPS = flags.DEFINE_integer("steps", _D.steps, "Adam steps.")
CHUNK_STEPS = flags.DEFINE_integer("chunk_steps", _D.chunk_steps,
                                   "Steps per compiled chunk (a checkpoint is saved after each).")
BATCH_SIZE = flags.DEFINE_integer("batch_size", _D.batch_size, "Examples per step.")
LEARNING_RATE = flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak learning rate.")
SEED = flags.DEFINE_integer("seed", _D.seed, "Base random seed.")
DEVICES = flags.DEFINE_integer("devices", _D.devices,
                               "Devices to spread the seeds over (0: every device of the job).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.start()
  config = classify.Config(
      mlp_depths=common.int_list(MLP_DEPTHS.value), mlp_widths=common.int_list(MLP_WIDTHS.value),
      keep_probs=common.float_list(KEEP_PROBS.value),
      conv_depths=common.int_list(CONV_DEPTHS.value),
      conv_channels=common.int_list(CONV_CHANNELS.value), modes=tuple(MODES.value),
      norm=NORM.value, seeds=SEEDS.value, steps=STEPS.value, chunk_steps=CHUNK_STEPS.value,
      batch_size=BATCH_SIZE.value, learning_rate=LEARNING_RATE.value, seed=SEED.value,
      devices=DEVICES.value)
  control = common.control()
  results = common.run_or_exit(lambda: classify.run(config, WORKDIR.value, control))
  common.report_complete(results, WORKDIR.value)
  print(classify.table(results["rows"], results["timings"]))
  print(f"chance: {results['chance']:.2f}; frozen weights bit-identical after training: "
        f"{results['frozen_unchanged']}")
  print(f"seeds spread over {results['devices']} device(s); wrote {WORKDIR.value}/results.json, "
        f"timings.json, results.csv, acc_vs_params.png")


if __name__ == "__main__":
  common.run_app(main)
