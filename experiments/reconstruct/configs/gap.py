"""The gap: the exact construction against Adam on the same norms and seeds.

  python -m experiments.reconstruct --workdir=/tmp/rec_gap --config=gap
"""

from experiments.reconstruct import experiment


def get_config() -> experiment.Config:
  return experiment.Config(study="gap")
