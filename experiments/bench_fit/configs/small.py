"""The small setting only, with 256 seeds.

  python -m experiments.bench_fit --workdir=/tmp/bench_small --config=small
"""

import dataclasses

from experiments.bench_fit import experiment


def get_config() -> experiment.Config:
  return experiment.Config(settings=("small",),
                           small=dataclasses.replace(experiment.SMALL, seeds=256))
