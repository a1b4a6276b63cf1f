r"""The exact construction: phase transition, sparse threshold, scale, gap to gradient descent.

  python -m experiments.reconstruct --workdir=/tmp/rec_dense
  python -m experiments.reconstruct --workdir=/tmp/rec_sparse --config=sparse
  python -m experiments.reconstruct --workdir=/tmp/rec_scale --config=scale
  python -m experiments.reconstruct --workdir=/tmp/rec_gap --config=gap

Writes config.json, results.json, timings.json, results.csv and <study>.png into
--workdir and prints the table. Every row is checkpointed into
--workdir/checkpoints (the gap study's fits after every chunk too); re-running
the same command resumes. Every flag below overrides the field of the named
--config (the studies' named configs set --study).
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.reconstruct import experiment as reconstruct

CONFIG = config_flags.define(reconstruct.Config, "experiments.reconstruct.configs")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  config = common.run_or_exit(CONFIG.value)
  common.start()
  control = common.control()
  results = common.run_or_exit(lambda: reconstruct.run(config, WORKDIR.value, control))
  common.report_complete(results, WORKDIR.value)
  print(reconstruct.table(results["rows"], results["timings"]))
  common.report_written(WORKDIR.value, ("results.json", "timings.json", "results.csv",
                                        f"{results['config']['study']}.png"), results["devices"])


if __name__ == "__main__":
  common.run_app(main)
