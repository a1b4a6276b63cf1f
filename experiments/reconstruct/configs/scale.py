"""Scale: the matrix-free solver at large block sizes (time and error per size).

  python -m experiments.reconstruct --workdir=/tmp/rec_scale --config=scale
"""

from experiments.reconstruct import experiment


def get_config() -> experiment.Config:
  return experiment.Config(study="scale")
