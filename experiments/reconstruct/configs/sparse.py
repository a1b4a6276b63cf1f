"""The sparse threshold: width needed vs keep-probability p, against the 1/p prediction.

  python -m experiments.reconstruct --workdir=/tmp/rec_sparse --config=sparse
"""

from experiments.reconstruct import experiment


def get_config() -> experiment.Config:
  return experiment.Config(study="sparse")
