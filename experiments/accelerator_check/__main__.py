r"""The accelerator check in one call: fitting benchmark (--preset=gpu) and construction at scale.

  python -m experiments.accelerator_check --workdir=/tmp/accelerator_check

Runs on whatever JAX's default backend is (a GPU or TPU host: the full sizes,
about 8 minutes); `--config=quick` runs tiny sizes (a CPU smoke test).
Prints the summary and writes summary.json into --workdir.
"""

import json
import signal

signal.signal(signal.SIGINT, signal.SIG_DFL)   # Ctrl-C while importing: stop at once, no traceback

# pylint: disable=g-import-not-at-top,wrong-import-position

from absl import flags

from experiments import common
from experiments import config_flags
from experiments.accelerator_check import experiment

CONFIG = config_flags.define(experiment.Config, "experiments.accelerator_check.configs")
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the benchmark's outputs and "
                              "summary.json.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv   # flags only: common.run_app refuses stray arguments
  config = common.run_or_exit(CONFIG.value)
  common.start()
  control = common.control()
  summary = common.run_or_exit(lambda: experiment.run(config, WORKDIR.value, control))
  if common.is_writer():
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
  common.run_app(main)
