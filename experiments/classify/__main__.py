r"""Norm-only training of frozen random networks on real digits, beside its baselines.

  python -m experiments.classify --workdir=/tmp/classify
  python -m experiments.classify --workdir=/tmp/classify_wide --config=wide

Data: scikit-learn's digits (ships with the package), fixed stratified split.
Writes config.json, results.json, timings.json, results.csv, acc_vs_params.png
and norm_scaling.png into --workdir and prints the accuracy table. The seeds
are spread over every device (--devices); the training state is checkpointed
into --workdir/checkpoints after every chunk, and re-running the same command
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
OUTPUTS = ("results.json", "timings.json", "results.csv", "acc_vs_params.png", "norm_scaling.png")


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  config = common.run_or_exit(CONFIG.value)
  common.start()
  control = common.control()
  results = common.run_or_exit(lambda: classify.run(config, WORKDIR.value, control))
  common.report_complete(results, WORKDIR.value)
  print(classify.table(results["rows"], results["timings"]))
  print(f"chance: {results['chance']:.2f}; frozen weights bit-identical after training: "
        f"{results['frozen_unchanged']}")
  common.report_written(WORKDIR.value, OUTPUTS, results["devices"])


if __name__ == "__main__":
  common.run_app(main)
