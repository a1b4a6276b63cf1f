"""Digits: norm-only training beside output-only, as many random weights, norm+output and full.

  python -m experiments.classify --workdir=/tmp/classify
"""

from experiments.classify import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
