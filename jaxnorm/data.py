"""Real data that ships with a package: scikit-learn's handwritten digits.

1797 8x8 grey-scale images of the digits 0-9 (UCI optical digits), bundled
with scikit-learn, so nothing is downloaded at run time. scikit-learn is not a
dependency of the library: it comes with the `experiments` extra
(`pip install 'jaxnorm[experiments]'`), and `digits()` says so when it is missing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

N_CLASSES = 10


class Split(NamedTuple):
  """A fixed train/test split: inputs `[n, 64]` float32, labels `[n]` int32."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def digits(test_fraction: float = 0.25, split_seed: int = 0) -> Split:
  """The digits, stratified into train and test, standardised with train statistics.

  Args:
    test_fraction: share of each class held out for testing.
    split_seed: seed of the (stratified) split; fixed by default.

  Returns:
    A `Split`; every pixel has mean 0 and standard deviation 1 over the
    training set (constant pixels are only centred).
  """
  try:
    from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
    from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("jaxnorm.data.digits() needs scikit-learn (it ships the digits): "
                      "pip install 'jaxnorm[experiments]'") from e

  bunch = load_digits()
  x, y = bunch.data.astype(np.float64), bunch.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(
      x, y, test_size=test_fraction, stratify=y, random_state=split_seed)
  mean, std = x_train.mean(0), x_train.std(0)
  std = np.where(std > 0, std, 1.0)
  standardise = lambda a: ((a - mean) / std).astype(np.float32)
  return Split(standardise(x_train), y_train, standardise(x_test), y_test)


def as_images(x: np.ndarray) -> np.ndarray:
  """`[n, 64]` -> `[n, 8, 8, 1]` (NHWC) for convolutional models."""
  return x.reshape(-1, 8, 8, 1)
