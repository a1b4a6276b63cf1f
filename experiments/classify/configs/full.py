"""The whole study on digits: every mode; ResNet depth and width sweeps, VGG, MLPs; 4 seeds.

  python -m experiments.classify --workdir=/tmp/classify_full --config=full
"""

from experiments.classify import experiment


def get_config() -> experiment.Config:
  return experiment.Config(
      mlp_depths=(1, 2, 4, 6), mlp_widths=(512, 128), keep_probs=(1.0, 0.25),
      resnet_depths=(8, 14, 20, 32), resnet_widths=(16, 32), vgg_depths=(3, 6, 9),
      modes=("norm", "output", "random_subset", "norm_output", "full"), seeds=4, steps=600,
      chunk_steps=300, learning_rates=(3e-3, 1e-2, 3e-2))
