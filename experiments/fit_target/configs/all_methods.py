"""Every fitting method (adam, lbfgs, lm, distill, extract, construct) on the same seeds and widths.

  python -m experiments.fit_target --workdir=/tmp/fit_all --config=all_methods
"""

from experiments.fit_target import experiment


def get_config() -> experiment.Config:
  return experiment.Config(optimizers=("all",), width_multipliers=(1.0, 2.0), seeds=16)
