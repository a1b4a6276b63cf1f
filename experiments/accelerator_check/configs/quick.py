"""The same check on tiny sizes: a smoke test that runs anywhere (a few seconds on a CPU).

  python -m experiments.accelerator_check --workdir=/tmp/accelerator_quick --config=quick
"""

from experiments.accelerator_check import experiment


def get_config() -> experiment.Config:
  return experiment.Config(quick=True)
