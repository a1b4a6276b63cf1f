"""What a fit is asked to do: where inputs come from, the loss, the metrics.

* `Regression(target, inputs="ball", radius=1.0)`: match a target. The target
  is a traceable callable `f(x) -> [n, d_out]`, an array-form MLP
  `[(W[out, in], b[out]), ...]` (wrapped with `models.apply_target`), a
  `RandomMLP(widths)` (each seed draws its own random target MLP), or fixed
  arrays `(X, Y)`. Inputs are drawn fresh every step (`"ball"`, `"gaussian"`,
  or a callable `sample(key, n) -> [n, d_in]`), or, for `(X, Y)`, drawn from
  the rows. Loss: relative MSE (MSE over the target's output variance);
  metric: `rel_mse` on held-out inputs (a fixed held-out set per seed, or the
  `test` rows of a data set).
* `Classification(train=(X, y), test=(X, y))`: cross-entropy on training
  rows drawn with replacement; metrics `test_acc` and `train_acc`.

A `loss=` callable `loss(out, y) -> scalar` replaces the default loss.

A task is used by `jaxnorm.fit` through four pure, per-seed pieces:
`init(keys, consts) -> state` (the seed's held-out set, target, fixed batch),
`batch(state, consts, key) -> (x, y)`, `fixed_batch(state, consts)`, and
`loss` / `metrics`. `consts` are the arrays every seed shares (data sets, a
fixed target's weights), passed to the compiled programs as replicated
arguments rather than baked into them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import domain
from jaxnorm import models
from jaxnorm import validate


@dataclasses.dataclass(frozen=True)
class RandomMLP:
  """A random target MLP per seed (`models.init_target`): what `fit_target` fits to.

  Attributes:
    widths: `[d_0, ..., d_l]`.
  """

  widths: Sequence[int]

  def __post_init__(self):
    object.__setattr__(self, "widths", validate.positive_ints("target widths", self.widths,
                                                              min_len=2))


def _as_layers(target) -> Optional[list]:
  """`target` as `[(W, b), ...]` if it is an array-form MLP, else None."""
  if isinstance(target, (list, tuple)) and target and all(
      isinstance(l, (list, tuple)) and len(l) == 2 for l in target):
    validate.target_layers(target)
    layers = [(np.asarray(w, np.float32), np.asarray(b, np.float32)) for w, b in target]
    for k, (w, b) in enumerate(layers):
      validate.finite_if_concrete(**{f"target[{k}] weight": w, f"target[{k}] bias": b})
    return layers
  return None


def _rows(name: str, x, y, y_ndim: Optional[int] = None):
  x, y = np.asarray(x), np.asarray(y)
  if x.ndim < 2 or x.shape[0] == 0:
    raise validate.ConfigError(f"{name}: X must be [n, ...] with n >= 1, got shape {x.shape}")
  if y.ndim < 1 or y.shape[0] != x.shape[0]:
    raise validate.ConfigError(f"{name}: X has {x.shape[0]} rows but Y has shape {y.shape}")
  if y_ndim is not None and y.ndim != y_ndim:
    raise validate.ConfigError(f"{name}: Y must have {y_ndim} dims, got shape {y.shape}")
  if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
    raise validate.ConfigError(f"{name}: X must be finite numbers")
  if not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all():
    raise validate.ConfigError(f"{name}: Y must be finite numbers")
  return x, y


@dataclasses.dataclass(frozen=True, eq=False)
class Regression:
  """Fit a target function or data set (relative MSE).

  Attributes:
    target: a callable `f(x)`, an array-form MLP `[(W[out, in], b[out]), ...]`,
      a `RandomMLP`, or arrays `(X, Y)` (`Y` `[n, d_out]`).
    inputs: `"ball"` (uniform in the ball of `radius`), `"gaussian"`
      (`N(0, radius^2/d I)`), or `sample(key, n) -> [n, d_in]`; unused for
      `(X, Y)`.
    radius: radius of the input domain.
    in_dim: input dimension to sample for a callable target with a named
      `inputs` distribution (an MLP target gives its own).
    test: held-out `(X, Y)` for a data-set target (default: the last
      `holdout` share of its rows).
    holdout: share of a data set's rows held out when no `test` is given.
    eval_size: held-out inputs drawn per seed (function targets).
    fit_size: inputs of the fixed batch of full-batch methods (function
      targets; a data set uses all its training rows).
    loss: optional `loss(out, y) -> scalar` replacing the relative MSE.
  """

  target: Any
  inputs: Union[str, Callable] = "ball"
  radius: float = 1.0
  in_dim: Optional[int] = None
  test: Optional[tuple] = None
  holdout: float = 0.2
  eval_size: int = 4096
  fit_size: int = 512
  loss: Optional[Callable] = None

  metric_names = ("rel_mse",)
  primary_metric = "rel_mse"

  def __post_init__(self):
    t = self.target
    layers = None if isinstance(t, RandomMLP) else _as_layers(t)
    if isinstance(t, RandomMLP):
      kind = "random_mlp"
    elif layers is not None:
      kind = "mlp"
    elif callable(t):
      kind = "function"
    elif isinstance(t, (tuple, list)) and len(t) == 2:
      kind = "data"
    else:
      raise validate.ConfigError(
          f"Regression target must be a callable f(x), an MLP [(W, b), ...], a RandomMLP or "
          f"arrays (X, Y); got {type(t).__name__}")
    object.__setattr__(self, "kind", kind)
    object.__setattr__(self, "layers", layers)
    if kind != "data":
      if isinstance(self.inputs, str):
        validate.one_of("inputs", self.inputs, domain.INPUT_DISTRIBUTIONS)
      elif not callable(self.inputs):
        raise validate.ConfigError(f"inputs must be 'ball', 'gaussian' or a callable "
                                   f"sample(key, n), got {self.inputs!r}")
      validate.positive_float("radius", self.radius)
      validate.positive_int("eval_size", self.eval_size)
      validate.positive_int("fit_size", self.fit_size)
    if self.loss is not None and not callable(self.loss):
      raise validate.ConfigError(f"loss must be a callable loss(out, y), got {self.loss!r}")
    if kind == "data":
      x, y = _rows("Regression data", *t)
      if y.ndim == 1:
        y = y[:, None]
      if self.test is not None:
        if not (isinstance(self.test, (tuple, list)) and len(self.test) == 2):
          raise validate.ConfigError("Regression test must be a pair (X, Y)")
        xt, yt = _rows("Regression test", *self.test)
        yt = yt[:, None] if yt.ndim == 1 else yt
      else:
        if not 0 < self.holdout < 1:
          raise validate.ConfigError(f"holdout must be in (0, 1), got {self.holdout!r}")
        n_test = int(round(self.holdout * x.shape[0]))
        if n_test < 1 or n_test >= x.shape[0]:
          raise validate.ConfigError(
              f"Regression data: {x.shape[0]} rows are too few to hold out {self.holdout:g} "
              f"of them; pass test=(X, Y)")
        x, xt, y, yt = x[:-n_test], x[-n_test:], y[:-n_test], y[-n_test:]
      if xt.shape[1:] != x.shape[1:] or yt.shape[1:] != y.shape[1:]:
        raise validate.ConfigError(f"Regression test rows {xt.shape}, {yt.shape} don't match "
                                   f"training rows {x.shape}, {y.shape}")
      object.__setattr__(self, "_data", tuple(
          np.asarray(a, np.float32) for a in (x, y, xt, yt)))
    object.__setattr__(self, "_d_in", self._input_dim())

  def _static(self):
    """What the compiled programs depend on: arrays enter as `consts`, so only their shapes."""
    shapes = tuple((np.shape(a), str(np.asarray(a).dtype)) for a in jax.tree.leaves(self.consts()))
    target = self.target if self.kind in ("random_mlp", "function") else None
    return (self.kind, target, self.inputs, self.radius, self._d_in, self.eval_size,
            self.fit_size, self.loss, shapes)

  def __eq__(self, other):
    return isinstance(other, Regression) and self._static() == other._static()

  def __hash__(self):
    return hash(self._static())

  def _input_dim(self) -> int:
    if self.kind == "data":
      return int(self._data[0].shape[1])
    if callable(self.inputs):
      try:
        shape = jax.eval_shape(lambda k: self.inputs(k, 2), jax.random.key(0)).shape
      except Exception as e:  # pylint: disable=broad-except
        raise validate.ConfigError(f"inputs sampler failed: {type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
      if len(shape) != 2 or shape[0] != 2:
        raise validate.ConfigError(f"inputs(key, n) must return [n, d_in], got {shape} for n=2")
      return int(shape[1])
    if self.kind == "random_mlp":
      return self.target.widths[0]
    if self.kind == "mlp":
      return int(self.layers[0][0].shape[1])
    if self.in_dim is None:
      raise validate.ConfigError("Regression: give in_dim= (the input dimension to sample) for a "
                                 "callable target with inputs='ball' or 'gaussian'")
    return validate.positive_int("in_dim", self.in_dim)

  @property
  def target_widths(self) -> Optional[tuple[int, ...]]:
    """The target's widths when it is an MLP (random or given), else None."""
    if self.kind == "random_mlp":
      return tuple(self.target.widths)
    if self.kind == "mlp":
      return validate.target_layers(self.layers)
    return None

  def sample(self) -> np.ndarray:
    """A one-row input batch (for the model's init)."""
    return np.zeros((1, self._d_in), np.float32)

  def consts(self):
    """Arrays shared by every seed: the data set, or a fixed MLP target's weights."""
    if self.kind == "data":
      return self._data
    if self.kind == "mlp":
      return self.layers
    return ()

  def check(self, predict_shape) -> None:
    """Checks the model's output against the target's (`predict_shape(x_shape)` -> shape)."""
    x = jax.ShapeDtypeStruct((2, self._d_in), jnp.float32)
    out = predict_shape(x.shape)
    if self.kind == "data":
      want = (2,) + self._data[1].shape[1:]
    else:
      abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
      own = (jax.eval_shape(lambda k: models.init_target(k, self.target.widths), jax.random.key(0))
             if self.kind == "random_mlp" else ())
      try:
        want = jax.eval_shape(self._apply, abstract(self.consts()), own, x).shape
      except Exception as e:  # pylint: disable=broad-except
        raise validate.ConfigError(
            f"the target failed on inputs of shape {x.shape}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if tuple(want) != tuple(out):
      raise validate.ConfigError(
          f"the model gives outputs of shape {tuple(out)} on {x.shape[0]} inputs but the target "
          f"gives {tuple(want)}")

  def split_key(self, key) -> dict[str, jax.Array]:
    """The seed's key split into streams: model, target, data, eval, subset."""
    k_model, k_target, k_data, k_eval = jax.random.split(key, 4)
    return {"model": k_model, "target": k_target, "data": k_data, "eval": k_eval,
            "subset": jax.random.fold_in(k_target, 1)}

  # --- per seed -----------------------------------------------------------------------------

  def _apply(self, consts, own_target, x):
    if self.kind == "random_mlp":
      return models.apply_target(own_target, x)
    if self.kind == "mlp":
      return models.apply_target(consts, x)
    return self.target(x)

  def target_outputs(self, consts, own_target, x):
    """The target's outputs on `x`: one black-box query (`own_target`: the seed's target state)."""
    return self._apply(consts, own_target, x)

  def draw(self, key, n):
    """`n` inputs from the task's input distribution."""
    if callable(self.inputs):
      return self.inputs(key, n)
    return domain.sample_inputs(key, n, self._d_in, self.radius, self.inputs)

  def init(self, key_target, key_eval, key_fixed, consts, full_batch: bool):
    """The seed's task state: its target, held-out set, output variance and fixed batch."""
    own = (models.init_target(key_target, self.target.widths) if self.kind == "random_mlp"
           else ())
    if self.kind == "data":
      x, y, _, yt = consts
      var = jnp.var(yt, axis=0).mean()
      return {"target": own, "var": var, "train_var": jnp.var(y, axis=0).mean()}
    eval_x = self.draw(key_eval, self.eval_size)
    var = jnp.var(self._apply(consts, own, eval_x), axis=0).mean()
    state = {"target": own, "var": var, "eval_x": eval_x}
    if full_batch:
      fit_x = self.draw(key_fixed, self.fit_size)
      state.update(fit_x=fit_x, fit_y=self._apply(consts, own, fit_x))
    return state

  def batch(self, state, consts, key, batch_size: int):
    """A training batch `(x, y)` drawn with `key`."""
    if self.kind == "data":
      x, y = consts[0], consts[1]
      idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
      return x[idx], y[idx]
    x = self.draw(key, batch_size)
    return x, self._apply(consts, state["target"], x)

  def fixed_batch(self, state, consts):
    """The fixed batch `(x, y)` of full-batch methods."""
    if self.kind == "data":
      return consts[0], consts[1]
    return state["fit_x"], state["fit_y"]

  def residual_weight(self, state, y):
    """`w` with the relative MSE on rows `y` equal to `w * sum((out - y)^2)` (least squares)."""
    return 1.0 / (y.size * self.loss_denominator(state))

  def loss_denominator(self, state):
    """The relative MSE's denominator: the target's output variance (+1e-12)."""
    return self._train_var(state) + 1e-12

  def _train_var(self, state):
    return state["train_var"] if self.kind == "data" else state["var"]

  def loss_fn(self, out, y, state):
    """The training loss of a batch."""
    if self.loss is not None:
      return self.loss(out, y)
    return jnp.mean((out - y) ** 2) / self.loss_denominator(state)

  def metrics(self, predict, state, consts):
    """`{"rel_mse": ...}` on the held-out inputs (`predict(x)` = the model at evaluation)."""
    if self.kind == "data":
      x, y = consts[2], consts[3]
    else:
      x = state["eval_x"]
      y = self._apply(consts, state["target"], x)
    return {"rel_mse": jnp.mean((predict(x) - y) ** 2) / (state["var"] + 1e-12)}

  def residual_form(self) -> bool:
    """Whether the loss is a weighted sum of squares (Levenberg–Marquardt applies)."""
    return self.loss is None


@dataclasses.dataclass(frozen=True, eq=False)
class Classification:
  """Classify `train` rows; report test and train accuracy.

  Attributes:
    train: `(X [n, ...], y [n] int)`.
    test: `(X [n, ...], y [n] int)`.
    loss: optional `loss(logits, y) -> scalar` replacing the mean softmax
      cross-entropy.
    augment: optional `augment(key, x) -> x` applied to every training batch
      (never to evaluation), e.g. `jaxnorm.data.CropFlip(pad=4, flip=True)`;
      hashable by value keeps compiled programs shared.
    eval_batch: examples evaluated at once when measuring accuracy (bounds
      the memory of the evaluation, e.g. on CIFAR-10's 50,000 images).
  """

  train: tuple
  test: tuple
  loss: Optional[Callable] = None
  augment: Optional[Callable] = None
  eval_batch: int = 1024

  metric_names = ("test_acc", "train_acc")
  primary_metric = "test_acc"
  kind = "classification"
  target_widths = None

  def __post_init__(self):
    for name in ("train", "test"):
      pair = getattr(self, name)
      if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise validate.ConfigError(f"Classification {name} must be a pair (X, y)")
    x, y = _rows("Classification train", *self.train, y_ndim=1)
    xt, yt = _rows("Classification test", *self.test, y_ndim=1)
    for name, labels in (("train", y), ("test", yt)):
      if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise validate.ConfigError(f"Classification {name} labels must be non-negative integers")
    if xt.shape[1:] != x.shape[1:]:
      raise validate.ConfigError(f"Classification test inputs {xt.shape[1:]} don't match train "
                                 f"inputs {x.shape[1:]}")
    if self.loss is not None and not callable(self.loss):
      raise validate.ConfigError(f"loss must be a callable loss(logits, y), got {self.loss!r}")
    validate.positive_int("eval_batch", self.eval_batch)
    if self.augment is not None and not callable(self.augment):
      raise validate.ConfigError(f"augment must be a callable augment(key, x), got "
                                 f"{self.augment!r}")
    object.__setattr__(self, "_data", (np.asarray(x, np.float32), np.asarray(y, np.int32),
                                       np.asarray(xt, np.float32), np.asarray(yt, np.int32)))
    object.__setattr__(self, "n_classes", int(max(y.max(), yt.max())) + 1)

  def _static(self):
    return (self.loss, self.augment, self.eval_batch, tuple(a.shape for a in self._data))

  def __eq__(self, other):
    return isinstance(other, Classification) and self._static() == other._static()

  def __hash__(self):
    return hash(self._static())

  def sample(self) -> np.ndarray:
    """A one-row input batch (for the model's init)."""
    return self._data[0][:1]

  def consts(self):
    """The train and test arrays, shared by every seed."""
    return self._data

  def check(self, predict_shape) -> None:
    """The model must give `[n, classes]` logits covering every label."""
    out = predict_shape((2,) + self._data[0].shape[1:])
    if len(out) != 2 or out[1] < self.n_classes:
      raise validate.ConfigError(
          f"the model gives outputs of shape {tuple(out)} on 2 inputs but the labels need "
          f"[n, >= {self.n_classes}] logits")

  def split_key(self, key) -> dict[str, jax.Array]:
    """The seed's key split into streams: model, subset, data (target and eval unused)."""
    k_model, k_subset, k_data = jax.random.split(key, 3)
    return {"model": k_model, "subset": k_subset, "data": k_data, "target": k_data,
            "eval": k_data}

  def init(self, key_target, key_eval, key_fixed, consts, full_batch: bool):
    """No per-seed task state: the data are shared."""
    del key_target, key_eval, key_fixed, consts, full_batch
    return {}

  def batch(self, state, consts, key, batch_size: int):
    """`batch_size` training rows drawn with replacement (augmented, if asked)."""
    del state
    idx = jax.random.randint(key, (batch_size,), 0, consts[1].shape[0])
    x = consts[0][idx]
    if self.augment is not None:
      x = self.augment(jax.random.fold_in(key, 1), x)
    return x, consts[1][idx]

  def fixed_batch(self, state, consts):
    """Every training row (full-batch methods)."""
    del state
    return consts[0], consts[1]

  def loss_fn(self, out, y, state):
    """Mean softmax cross-entropy (or the user's loss)."""
    del state
    if self.loss is not None:
      return self.loss(out, y)
    return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

  def metrics(self, predict, state, consts):
    """Test and train accuracy (`predict(x)` = the model at evaluation), `eval_batch` at a time."""
    del state

    def acc(x, y):
      if len(x) <= self.eval_batch:
        return jnp.mean(jnp.argmax(predict(x), -1) == y)
      right = jax.lax.map(lambda xy: jnp.argmax(predict(xy[0][None])[0], -1) == xy[1], (x, y),
                          batch_size=self.eval_batch)
      return jnp.mean(right)
    return {"test_acc": acc(consts[2], consts[3]), "train_acc": acc(consts[0], consts[1])}

  def residual_form(self) -> bool:
    """Cross-entropy is not a sum of squares."""
    return False


Task = Union[Regression, Classification]
