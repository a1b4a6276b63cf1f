"""Wider MLPs, norm-only against as many random weights, 8 seeds (no conv net).

  python -m experiments.classify --workdir=/tmp/classify_wide --config=wide
"""

from experiments.classify import experiment


def get_config() -> experiment.Config:
  return experiment.Config(mlp_widths=(256, 1024, 4096), mlp_depths=(2,), keep_probs=(1.0,),
                           resnet_depths=(), modes=("norm", "random_subset"), seeds=8)
