"""Tests for jaxnorm.data."""

import numpy as np
import pytest

from jaxnorm import data
from jaxnorm import validate


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
          "for m in pkgutil.iter_modules(jaxnorm.__path__):\n"
          "  importlib.import_module('jaxnorm.' + m.name)\n"
          "print(sorted(k for k in ('matplotlib', 'sklearn') if k in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def _write(path, **arrays):
  np.savez(path, **arrays)
  return str(path)


def test_a_users_npz_of_images_loads_standardised_per_channel(tmp_path):
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (40, 6, 6, 3)).astype(np.uint8)
  x_test = rng.integers(0, 256, (10, 6, 6, 3)).astype(np.uint8)
  path = _write(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(40) % 4,
                x_test=x_test, y_test=np.arange(10) % 4)
  split = data.load_npz(path)
  assert split.input_shape == (6, 6, 3) and split.n_classes == 4
  assert split.x_train.dtype == np.float32 and split.y_test.dtype == np.int32
  np.testing.assert_allclose(split.x_train.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(split.x_train.std((0, 1, 2)), 1, atol=1e-4)
  assert data.as_images(split.x_test) is split.x_test
  raw = data.load_npz(path, standardised=False)
  np.testing.assert_array_equal(raw.x_train, x_train.astype(np.float32))


@pytest.mark.parametrize("change,message", [
    (dict(y_test=None), "lacks y_test"),
    (dict(x_train=np.zeros((8, 3, 3))), r"x_train must be \[n, d\] or \[n, H, W, C\]"),
    (dict(x_train=np.full((8, 4), np.nan)), "x_train must be finite"),
    (dict(y_train=np.zeros(7, int)), r"y_train must be \[8\] labels"),
    (dict(y_train=np.full(8, 0.5)), "y_train must be integer labels"),
    (dict(y_train=-np.ones(8, int)), "y_train must be integer labels"),
    (dict(x_test=np.zeros((4, 5))), "x_train rows are"),
    (dict(y_train=np.zeros(8, int), y_test=np.zeros(4, int)), "a single class"),
])
def test_a_bad_npz_is_refused_naming_what_is_wrong(tmp_path, change, message):
  arrays = dict(x_train=np.zeros((8, 4)), y_train=np.arange(8) % 2, x_test=np.zeros((4, 4)),
                y_test=np.arange(4) % 2)
  arrays.update(change)
  path = _write(tmp_path / "d.npz", **{k: v for k, v in arrays.items() if v is not None})
  with pytest.raises(validate.ConfigError, match=message):
    data.load_npz(path)


def test_a_file_that_is_not_an_npz_is_one_clear_error(tmp_path):
  (tmp_path / "d.npz").write_text("not a zip")
  for path in (tmp_path / "d.npz", tmp_path / "missing.npz"):
    with pytest.raises(validate.ConfigError, match="cannot read .* as an .npz file"):
      data.load_npz(str(path))


def test_the_validation_split_is_stratified_fixed_and_disjoint_from_test():
  split = data.digits()
  carved = data.validation_split(split, 0.1)
  assert len(carved.y_train) + len(carved.y_test) == len(split.y_train)
  np.testing.assert_array_equal(np.bincount(carved.y_test), np.round(
      0.1 * np.bincount(split.y_train)).astype(int))
  rows = {r.tobytes() for r in carved.x_test}
  assert not rows & {r.tobytes() for r in carved.x_train}
  assert not rows & {r.tobytes() for r in split.x_test}
  again = data.validation_split(split, 0.1)
  np.testing.assert_array_equal(again.y_test, carved.y_test)
  with pytest.raises(validate.ConfigError, match="too few"):
    data.validation_split(split._replace(y_train=np.r_[0, np.ones(len(split.y_train) - 1, int)]))


def test_crop_flip_shifts_and_mirrors_each_image_on_its_own():
  import jax  # pylint: disable=g-import-not-at-top
  x = np.arange(64 * 5 * 5, dtype=np.float32).reshape(64, 5, 5, 1) % 25 + 1   # no zeros
  out = np.asarray(data.CropFlip(pad=1, flip=True)(jax.random.key(0), x))
  assert out.shape == x.shape
  shifted = mirrored = 0
  for img, a in zip(x[..., 0], out[..., 0]):
    candidates = {}
    padded = np.pad(img, 1)
    for dy in range(3):
      for dx in range(3):
        crop = padded[dy:dy + 5, dx:dx + 5]
        for m in (False, True):
          candidates[(dy, dx, m)] = crop[:, ::-1] if m else crop
    match = [k for k, c in candidates.items() if np.array_equal(c, a)]
    assert match, "not a crop (or its mirror) of the image"
    shifted += match[0][:2] != (1, 1)
    mirrored += match[0][2]
  assert 20 < mirrored < 44 and shifted > 40   # each image its own draw
  flat = data.CropFlip(pad=0, flip=False, image_shape=(5, 5, 1))(jax.random.key(0),
                                                                x.reshape(64, -1))
  np.testing.assert_array_equal(flat, x.reshape(64, -1))   # nothing asked: unchanged
  with pytest.raises(validate.ConfigError, match="image_shape"):
    data.CropFlip()(jax.random.key(0), x.reshape(64, -1))
