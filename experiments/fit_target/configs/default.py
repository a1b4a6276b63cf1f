"""The main job: adam, distill and the exact construction side by side, widths 1/2-4 x d_in d_out.

  python -m experiments.fit_target --workdir=/tmp/jaxnorm/fit_target
"""

from experiments.fit_target import experiment


def get_config() -> experiment.Config:
  return experiment.Config()
