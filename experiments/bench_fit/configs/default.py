"""Both settings (small: 64 tiny seeds, memory-bound; large: 4 seeds of width 2048), every method.

  python -m experiments.bench_fit --workdir=/tmp/bench_fit
"""

from experiments.bench_fit import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
