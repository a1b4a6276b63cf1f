"""Tests for jaxnorm.data."""

import numpy as np

from jaxnorm import data


def test_digits_split_is_fixed_stratified_and_standardised():
  a, b = data.digits(), data.digits()
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert a.x_train.shape == (1347, 64) and a.x_test.shape == (450, 64)
  assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
  # Stratified: every class has its share of the test set (within one example).
  counts = np.bincount(a.y_test, minlength=10)
  assert counts.min() >= 43 and counts.max() <= 46
  np.testing.assert_allclose(a.x_train.mean(0), 0, atol=1e-5)
  std = a.x_train.std(0)
  assert np.all((np.abs(std - 1) < 1e-4) | (std == 0))
  assert data.as_images(a.x_test).shape == (450, 8, 8, 1)
