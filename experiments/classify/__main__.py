r"""Norm-only training of frozen random ResNets, VGG-style nets and MLPs, beside its baselines.

  python -m experiments.classify --workdir=/tmp/classify
  python -m experiments.classify --workdir=/tmp/classify_full --config=full
  python -m experiments.classify --workdir=/tmp/cifar10 --config=cifar10 --data=cifar10.npz

Data: scikit-learn's digits (ships with the package, fixed stratified split),
or --data=path.npz with x_train, y_train, x_test, y_test (flat or NHWC images).
For each (model, mode) a learning-rate sweep picks the rate on a validation
share of the training set; the test set is only measured. Writes config.json,
results.json, timings.json, results.csv, acc_vs_params.png and
acc_vs_depth.png into --workdir and prints the accuracy table. The seeds are
spread over every device (--devices); the training state is checkpointed into
--workdir/checkpoints after every chunk, and re-running the same command
resumes. Every flag below overrides the field of the named --config.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.classify import experiment as classify

CONFIG = config_flags.define(classify.Config, "experiments.classify.configs")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
flags.mark_flag_as_required("workdir")
OUTPUTS = ("results.json", "timings.json", "results.csv", "acc_vs_params.png", "acc_vs_depth.png")


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  config = common.run_or_exit(CONFIG.value)
  common.start()
  control = common.control()
  results = common.run_or_exit(lambda: classify.run(config, WORKDIR.value, control))
  common.report_complete(results, WORKDIR.value)
  print(f"data: {results['data']}; each row at the learning rate with the best validation "
        f"accuracy (a {config.validation:g} share of train), accuracies mean ± std over "
        f"{config.seeds} seeds")
  print(classify.table(results["rows"], results["timings"], results["sweep"]))
  print(f"chance: {results['chance']:.2f}; frozen weights bit-identical after training: "
        f"{results['frozen_unchanged']}")
  common.report_written(WORKDIR.value, OUTPUTS, results["devices"])


if __name__ == "__main__":
  common.run_app(main)
