"""Classification data: the digits that ship with scikit-learn, or the user's own arrays.

* `digits()`: 1797 8x8 grey-scale images of the digits 0-9 (UCI optical
  digits), bundled with scikit-learn, so nothing is downloaded at run time.
  scikit-learn is not a dependency of the library: it comes with the
  `experiments` extra (`pip install 'jaxnorm[experiments]'`), and `digits()`
  says so when it is missing.
* `load_npz(path)`: any data set the user has as arrays (`x_train, y_train,
  x_test, y_test`; inputs flat `[n, d]` or images `[n, H, W, C]`), checked
  before use, e.g. CIFAR-10 exported once with another tool.
* `validation_split(split)`: a stratified validation set carved from the
  training set, for choosing hyperparameters without looking at the test set.
* `as_images(x)`: the inputs as NHWC images for the convolutional models.
* `CropFlip`: random crops and horizontal flips of training batches (the
  augmentation of He et al. and Frankle et al. on CIFAR-10), for
  `Classification(augment=...)`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import validate

N_CLASSES = 10


class Split(NamedTuple):
  """A fixed train/test split: inputs `[n, d]` or `[n, H, W, C]` float32, labels `[n]` int32."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def n_classes(self) -> int:
    """Classes: one more than the largest label."""
    return int(max(self.y_train.max(), self.y_test.max())) + 1

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one input."""
    return tuple(self.x_train.shape[1:])


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
  return standardise(Split(x_train, y_train, x_test, y_test))


def as_images(x: np.ndarray) -> np.ndarray:
  """Inputs as NHWC images: `[n, H, W, C]` as given, flat `[n, s*s]` as `[n, s, s, 1]`.

  Args:
    x: `[n, H, W, C]`, or `[n, d]` with `d` a perfect square (digits: 64 -> 8x8).

  Returns:
    `[n, H, W, C]`.

  Raises:
    validate.ConfigError: flat inputs whose length is not a square.
  """
  if x.ndim == 4:
    return x
  side = math.isqrt(x.shape[-1])
  if x.ndim != 2 or side * side != x.shape[-1]:
    raise validate.ConfigError(
        f"inputs of shape {x.shape[1:]} are not images: a convolutional model needs "
        f"[n, H, W, C] (or flat [n, s*s] grey-scale)")
  return x.reshape(-1, side, side, 1)


def standardise(split: Split) -> Split:
  """Every input feature (every channel, for images) to mean 0, std 1 over the training set.

  Constant features are only centred. The test set uses the training
  statistics.

  Args:
    split: the data.

  Returns:
    The standardised `Split` (float32).
  """
  axes = (0, 1, 2) if split.x_train.ndim == 4 else (0,)
  x = split.x_train.astype(np.float64)
  mean, std = x.mean(axes), x.std(axes)
  std = np.where(std > 0, std, 1.0)
  scale = lambda a: ((a - mean) / std).astype(np.float32)
  return Split(scale(split.x_train), split.y_train, scale(split.x_test), split.y_test)


def load_npz(path: str, standardised: bool = True) -> Split:
  """A data set the user has as arrays, from an `.npz` file (checked before use).

  Args:
    path: an `.npz` holding `x_train`, `y_train`, `x_test`, `y_test`; inputs
      flat `[n, d]` or images `[n, H, W, C]` (NHWC), any real dtype; labels
      integers `0 .. classes - 1`.
    standardised: standardise the inputs with the training statistics
      (`standardise`); otherwise they are only cast to float32.

  Returns:
    A `Split`.

  Raises:
    validate.ConfigError: the file cannot be read, a key is missing, or an
      array has the wrong shape, dtype or values (the message names it).
  """
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError) as e:
    raise validate.ConfigError(f"cannot read {path} as an .npz file ({e})") from None
  missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
  if missing:
    raise validate.ConfigError(f"{path} lacks {', '.join(missing)} (it holds "
                               f"{', '.join(sorted(arrays)) or 'nothing'})")
  for part in ("train", "test"):
    x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
    if x.ndim not in (2, 4) or not len(x):
      raise validate.ConfigError(f"{path}: x_{part} must be [n, d] or [n, H, W, C] images "
                                 f"with n >= 1, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
      raise validate.ConfigError(f"{path}: x_{part} must hold numbers, got {x.dtype}")
    if not np.isfinite(x).all():
      raise validate.ConfigError(f"{path}: x_{part} must be finite (found NaN or inf)")
    if y.shape != (len(x),):
      raise validate.ConfigError(f"{path}: y_{part} must be [{len(x)}] labels (one per row of "
                                 f"x_{part}), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
      raise validate.ConfigError(f"{path}: y_{part} must be integer labels 0, 1, ..., got "
                                 f"{y.dtype} from {y.min()} to {y.max()}")
  if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
    raise validate.ConfigError(f"{path}: x_train rows are {arrays['x_train'].shape[1:]} but "
                               f"x_test rows are {arrays['x_test'].shape[1:]}")
  split = Split(arrays["x_train"].astype(np.float32), arrays["y_train"].astype(np.int32),
                arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32))
  if split.n_classes < 2:
    raise validate.ConfigError(f"{path}: the labels hold a single class")
  return standardise(split) if standardised else split


def validation_split(split: Split, fraction: float = 0.1, seed: int = 0) -> Split:
  """A validation set carved from the training set (stratified, fixed by `seed`).

  Args:
    split: the data.
    fraction: share of each class's training examples moved to validation.
    seed: seed of the (fixed) choice.

  Returns:
    `Split(x_fit, y_fit, x_val, y_val)`: its "test" part is the validation
    set; the test set of `split` is not in it.

  Raises:
    validate.ConfigError: `fraction` outside (0, 1), or a class left with no
      training or no validation example.
  """
  validate.probability("validation fraction", fraction)
  if fraction >= 1:
    raise validate.ConfigError(f"validation fraction must be below 1, got {fraction}")
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(split.y_train):
    members = np.flatnonzero(split.y_train == c)
    take = int(round(fraction * len(members)))
    if take < 1 or take >= len(members):
      raise validate.ConfigError(
          f"class {c} has {len(members)} training examples: too few to carve a validation "
          f"share of {fraction}")
    val.extend(rng.choice(members, take, replace=False))
  val = np.sort(np.asarray(val))
  fit = np.setdiff1d(np.arange(len(split.y_train)), val)
  return Split(split.x_train[fit], split.y_train[fit], split.x_train[val], split.y_train[val])


@dataclasses.dataclass(frozen=True)
class CropFlip:
  """Random crops and horizontal flips of a batch of images, one draw per image.

  A crop pads the image with `pad` zeros on every side and cuts it back to
  its size at a random offset (a shift of up to `pad` pixels); a flip mirrors
  it left-right with probability 1/2. Flat inputs are augmented as the images
  of `image_shape` and flattened back (for MLPs on image data).

  Attributes:
    pad: largest shift in pixels (0: no crops).
    flip: random horizontal flips.
    image_shape: `(H, W, C)` of flat inputs (unused for `[B, H, W, C]` batches).
  """

  pad: int = 4
  flip: bool = True
  image_shape: Optional[tuple[int, int, int]] = None

  def __post_init__(self):
    validate.non_negative_int("pad", self.pad)

  def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
    """Augments a batch `[B, H, W, C]` (or `[B, H*W*C]` with `image_shape`)."""
    flat = x.ndim == 2
    if flat:
      if self.image_shape is None:
        raise validate.ConfigError("CropFlip of flat inputs needs their image_shape")
      x = x.reshape((x.shape[0],) + tuple(self.image_shape))
    b, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if self.pad:
      p = self.pad
      padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
      offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * p + 1)
      x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
          padded, offsets)
    if self.flip:
      mirror = jax.random.bernoulli(k_flip, 0.5, (b,))
      x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return x.reshape(b, -1) if flat else x

