"""Frankle et al.'s depth sweep on CIFAR-10 arrays the user supplies (a GPU/TPU batch job).

  python -m experiments.classify --workdir=/tmp/cifar10 --config=cifar10 --data=cifar10.npz

`cifar10.npz` holds x_train [50000, 32, 32, 3], y_train, x_test [10000, 32, 32, 3],
y_test, exported once with any tool; nothing is downloaded. ResNet-14/32/56/110 at
width 16 (Frankle et al.'s Table: ResNet-14 48%, ResNet-110 69.5% norm-only), norm-only
against output-only and as many random weights, with random crops and flips.
"""

from experiments.classify import experiment


def get_config() -> experiment.Config:
  return experiment.Config(
      mlp_depths=(), resnet_depths=(14, 32, 56, 110), resnet_widths=(16,),
      modes=("norm", "random_subset", "output"), seeds=2, steps=20000, chunk_steps=1000,
      batch_size=128, learning_rates=(1e-2, 3e-2, 1e-1), crop_pad=4, flip=True)
