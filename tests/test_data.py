"""Tests for jaxnorm.data."""

import numpy as np
import pytest

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


def test_without_scikit_learn_digits_says_what_to_install(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "sklearn", None)   # `import sklearn` now raises ImportError
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  with pytest.raises(ImportError, match=r"pip install 'jaxnorm\[experiments\]'"):
    data.digits()


def test_the_library_imports_no_experiment_only_package():
  """`import jaxnorm` (every module) pulls in neither matplotlib nor scikit-learn."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import pkgutil, importlib, sys, jaxnorm\n"
          "for m in pkgutil.iter_modules(jaxnorm.__path__): importlib.import_module('jaxnorm.' + m.name)\n"
          "print(sorted(k for k in ('matplotlib', 'sklearn') if k in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
