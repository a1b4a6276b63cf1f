"""The full accelerator check (for a GPU or TPU host, about 8 minutes).

  python -m experiments.accelerator_check --workdir=/tmp/accelerator_check
"""

from experiments.accelerator_check import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
