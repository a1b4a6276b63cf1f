"""Randomly sparsified frozen weights (keep-probability 1/4): the width needed grows as 1/p.

  python -m experiments.fit_target --workdir=/tmp/fit_sparse --config=sparse
"""

from experiments.fit_target import experiment


def get_config() -> experiment.Config:
  return experiment.Config(sparsity=0.25, width_multipliers=(1.0, 4.0, 16.0), seeds=16)
