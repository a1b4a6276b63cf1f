"""Digits: norm-only MLPs (depth 2, 4) and ResNets (8, 14) beside random_subset and output-only.

  python -m experiments.classify --workdir=/tmp/classify
"""

from experiments.classify import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
