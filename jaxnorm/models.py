"""Linen modules: frozen random ReLU networks with tunable normalizations, and targets.

`NormMLP` is the network of docs/design.md §1: a chain of linear layers whose random
weights are meant to stay frozen, each followed by a normalization whose
per-unit scale and shift are the only tunable numbers, ReLU after every
normalization except the last.

Parameter layout (relied on by `jaxnorm.freeze` and by exporters)::

    params/dense_{k}/kernel   [in, out]  frozen random weights (zeros where pruned)
    params/norm_{k}/scale     [out]      tunable (absent for nothing: every kind has it)
    params/norm_{k}/bias      [out]      tunable
    batch_stats/norm_{k}/mean, var       (norm="batchnorm" only)

`TargetMLP` is a plain ReLU MLP with biases whose last layer is linear; the
array-level form of a target, `[(W[out, in], b[out]), ...]`, is what users pass
when they bring weights of their own (`target_from_params`, `apply_target`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_KINDS = ("affine", "batchnorm", "layernorm")


def sparse_he_normal(keep_prob: float = 1.0):
  """He-normal initializer with each weight kept independently with prob `keep_prob`.

  Kept weights are rescaled by `1/sqrt(keep_prob)` so every unit's expected
  fan-in variance stays `2/fan_in`. Pruned entries are exactly `+0.0`.

  Args:
    keep_prob: probability in (0, 1] that a weight is kept.

  Returns:
    An initializer `init(key, shape, dtype)` for `[in, out]` kernels.
  """
  he = nn.initializers.he_normal()

  def init(key, shape, dtype=jnp.float32):
    k_w, k_mask = jax.random.split(key)
    w = he(k_w, shape, dtype)
    if keep_prob >= 1.0:
      return w
    keep = jax.random.bernoulli(k_mask, keep_prob, shape)
    return jnp.where(keep, w / jnp.sqrt(jnp.asarray(keep_prob, dtype)), jnp.zeros((), dtype))

  return init


class Affine(nn.Module):
  """Per-unit affine map `scale * x + bias` (the object of the theorem)."""

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), x.dtype)
    return x * scale + bias


class NormMLP(nn.Module):
  """Frozen random linear layers, each followed by a tunable normalization.

  Attributes:
    widths: `[d_0, d_1, ..., d_L]`: input width then the output width of each of
      the `L` linear layers.
    norm: `"affine"`, `"batchnorm"` or `"layernorm"`.
    keep_prob: keep-probability `p` of each frozen weight (1 = dense).
    momentum: BatchNorm running-average momentum.
    output_norm: the kind of the last norm (`None`: `norm`). A LayerNorm there
      normalises every output vector to mean 0 and variance 1 across its
      units before the scale and shift, so the network can only produce
      outputs of that shape (a single output is constant); `"affine"` ends
      the network with a free per-unit scale and shift instead.
  """

  widths: Sequence[int]
  norm: str = "affine"
  keep_prob: float = 1.0
  momentum: float = 0.99
  output_norm: Optional[str] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Applies the network.

    Args:
      x: inputs `[..., d_0]`.
      train: BatchNorm only: use batch statistics and update running ones
        (apply with `mutable=["batch_stats"]`).

    Returns:
      Outputs `[..., d_L]`.
    """
    n_layers = len(self.widths) - 1
    for k, width in enumerate(self.widths[1:]):
      x = nn.Dense(width, use_bias=False, kernel_init=sparse_he_normal(self.keep_prob),
                   name=f"dense_{k}")(x)
      last = k == n_layers - 1
      kind = self.output_norm if last and self.output_norm is not None else self.norm
      x = norm_layer(kind, f"norm_{k}", self.momentum, x, train)
      if not last:
        x = nn.relu(x)
    return x


class TargetMLP(nn.Module):
  """Plain ReLU MLP with biases; the last layer is linear.

  Attributes:
    widths: `[d_0, ..., d_l]`.
    bias_std: standard deviation of the random biases at init.
  """

  widths: Sequence[int]
  bias_std: float = 0.1

  @nn.compact
  def __call__(self, x):
    n_layers = len(self.widths) - 1
    for k, width in enumerate(self.widths[1:]):
      x = nn.Dense(width, kernel_init=nn.initializers.he_normal(),
                   bias_init=nn.initializers.normal(self.bias_std), name=f"dense_{k}")(x)
      if k < n_layers - 1:
        x = nn.relu(x)
    return x


def target_from_params(params) -> list[tuple[jax.Array, jax.Array]]:
  """Converts `TargetMLP` params to the array form `[(W[out, in], b[out]), ...]`.

  Args:
    params: the `"params"` collection of a `TargetMLP`.

  Returns:
    A list of `(weight, bias)` pairs in math layout.
  """
  n = len(params)
  return [(params[f"dense_{k}"]["kernel"].T, params[f"dense_{k}"]["bias"]) for k in range(n)]


def init_target(key: jax.Array, widths: Sequence[int], bias_std: float = 0.1):
  """Draws a random target network in array form.

  Args:
    key: a `jax.random.key`.
    widths: `[d_0, ..., d_l]`.
    bias_std: standard deviation of the biases.

  Returns:
    `[(W[out, in], b[out]), ...]`, He-normal weights and normal biases.
  """
  model = TargetMLP(tuple(widths), bias_std)
  params = model.init(key, jnp.zeros((1, widths[0])))["params"]
  return target_from_params(params)


def apply_target(target, x: jax.Array) -> jax.Array:
  """Evaluates a target given as `[(W[out, in], b[out]), ...]`.

  Args:
    target: the layers; ReLU after each but the last.
    x: inputs `[..., d_0]`.

  Returns:
    Outputs `[..., d_l]`.
  """
  for k, (w, b) in enumerate(target):
    x = x @ w.T + b
    if k < len(target) - 1:
      x = jax.nn.relu(x)
  return x


def norm_layer(kind: str, name: str, momentum: float, x, train: bool):
  """Applies a normalization of `kind` named `name` (BatchNorm: batch statistics iff `train`).

  Args:
    kind: one of `NORM_KINDS`.
    name: the module name (its leaves are `name/scale`, `name/bias`).
    momentum: BatchNorm's running-average momentum.
    x: the input; normalised over its last axis's units.
    train: BatchNorm uses batch statistics (and updates its averages) if True.

  Returns:
    The normalised, scaled and shifted `x`.
  """
  if kind == "affine":
    return Affine(name=name)(x)
  if kind == "layernorm":
    return nn.LayerNorm(name=name)(x)
  if kind == "batchnorm":
    return nn.BatchNorm(momentum=momentum, name=name)(x, use_running_average=not train)
  raise ValueError(f"unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
