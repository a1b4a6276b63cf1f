"""The dense phase transition: relative error vs width ratio m/(d_in d_out), per block size.

  python -m experiments.reconstruct --workdir=/tmp/rec_dense
"""

from experiments.reconstruct import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
