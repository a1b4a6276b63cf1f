"""Fit frozen random networks to random targets by tuning only their norms.

  python -m experiments.fit_target --workdir=/tmp/jaxnorm/fit_target
  python -m experiments.fit_target --workdir=/tmp/fit_sparse --config=sparse
  python -m experiments.fit_target --workdir=/tmp/fit_all --config=all_methods

By default every width is fitted by gradient descent (adam) and by the best
black-box method (distill), beside the exact construction from the target's
weights (construct, the reference). Writes config.json, results.json,
timings.json, metrics.csv, curves.csv and rel_mse_vs_width.png into --workdir
and prints the results table. The seeds are spread over every device
(--devices); progress is checkpointed into --workdir/checkpoints, and
re-running the same command resumes. Every flag below overrides the field of
the named --config.
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.fit_target import experiment as fit_target

CONFIG = config_flags.define(fit_target.Config, "experiments.fit_target.configs")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
flags.mark_flag_as_required("workdir")

OUTPUTS = ("results.json", "timings.json", "metrics.csv", "curves.csv", "rel_mse_vs_width.png")


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  if CONFIG.present("widths") and CONFIG.present("width_multipliers"):
    common.fail("give --widths or --width_multipliers, not both")
  config = common.run_or_exit(CONFIG.value)
  common.start()
  control = common.control()
  results = common.run_or_exit(lambda: fit_target.run(config, WORKDIR.value, control))
  if not common.is_writer():
    return
  common.report_complete(results, WORKDIR.value)
  print(fit_target.table(results["rows"]))
  print(f"frozen weights bit-identical after fitting: {results['frozen_unchanged']}")
  common.report_written(WORKDIR.value, OUTPUTS, results["devices"])


if __name__ == "__main__":
  common.run_app(main)
