"""Frozen random convolutional networks with tunable normalizations (linen modules).

* `ShiftConv`: a bias-free 3x3 convolution as nine shifted matrix products
  (fast under `vmap` over seeds on CPU).
* `NormConvNet`: a plain stack of `depth` conv -> norm -> ReLU blocks at one
  width.
* `NormResNet`: the CIFAR ResNet of He et al. (2016) that Frankle, Schwab and
  Morcos (ICLR 2021) trained in its BatchNorms only: a stem, three stages of
  basic residual blocks (widths `w, 2w, 4w`, the later two starting with
  stride 2), depth `6n + 2`.
* `NormVGG`: the same stages without shortcuts (a plain, VGG-style CNN with
  2x2 max-pooling between stages).

Every convolution and linear layer is bias-free and random (He-normal, with an
optional keep-probability), meant to stay frozen; every normalization
(`models.NORM_KINDS`) ends in a per-channel scale and shift, the tunable
numbers, so `jaxnorm.norm_mask` finds them by its default rule. Each network
ends in global average pooling, a frozen random linear layer to `n_out` and a
final normalization whose shift acts as the output bias, like `NormMLP`.
Inputs are images `[..., H, W, C]` (NHWC).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxnorm import models


class ShiftConv(nn.Module):
  """A bias-free 3x3 convolution (padding 1) computed as nine shifted matrix products.

  Same parameter (`kernel [3, 3, in, out]`) and result as `nn.Conv(out, (3, 3),
  strides, padding=1, use_bias=False)` (for stride 1: `padding="SAME"`), but
  under `jax.vmap` over a batch of kernels it becomes batched matrix products
  (forward and backward) instead of a grouped convolution, which XLA's CPU
  backend runs slowly (measurements in WORKSPACE.md, "Implementation notes").

  Attributes:
    features: output channels.
    kernel_init: initializer of the `[3, 3, in, out]` kernel.
    strides: stride in both spatial dimensions (the output keeps every
      `strides`-th position of the stride-1 output, starting at 0).
  """

  features: int
  kernel_init: Any = nn.initializers.lecun_normal()
  strides: int = 1

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features))
    h, w = x.shape[-3], x.shape[-2]
    pad = [(0, 0)] * (x.ndim - 3) + [(1, 1), (1, 1), (0, 0)]
    xp = jnp.pad(x, pad)
    out = 0.0
    s = self.strides
    for i in range(3):
      for j in range(3):
        out = out + xp[..., i:i + h:s, j:j + w:s, :] @ kernel[i, j]
    return out


class NormConvNet(nn.Module):
  """Frozen random 3x3 convolutions, each followed by a tunable normalization.

  `depth` blocks of conv (no bias, He-normal, optional keep-probability) ->
  norm -> ReLU, then global average pooling, a frozen random linear layer to
  `n_out` and a final norm (its shift acts as the output bias), like `NormMLP`.
  Parameter names: `conv_k/kernel`, `norm_k/{scale, bias}`, `dense_out/kernel`,
  `norm_out/{scale, bias}`.

  Attributes:
    channels: channels of every convolution.
    depth: number of convolution blocks.
    n_out: outputs (classes).
    norm: `"affine"`, `"batchnorm"` or `"layernorm"`.
    keep_prob: keep-probability of each frozen weight.
    momentum: BatchNorm running-average momentum.
  """

  channels: int = 32
  depth: int = 2
  n_out: int = 10
  norm: str = "batchnorm"
  keep_prob: float = 1.0
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Applies the network to images `[..., H, W, C]`; returns `[..., n_out]`."""
    init = models.sparse_he_normal(self.keep_prob)
    for k in range(self.depth):
      x = ShiftConv(self.channels, kernel_init=init, name=f"conv_{k}")(x)
      x = nn.relu(models.norm_layer(self.norm, f"norm_{k}", self.momentum, x, train))
    return _pooled_output(x, self.n_out, init, self.norm, self.momentum, train)


def _pooled_output(x, n_out: int, init, norm: str, momentum: float, train: bool):
  """The head every conv net here shares (called inside its compact `__call__`): global average
  pooling, a frozen linear layer `dense_out` to `n_out`, a final norm `norm_out`."""
  x = x.mean(axis=(-3, -2))
  x = nn.Dense(n_out, use_bias=False, kernel_init=init, name="dense_out")(x)
  return models.norm_layer(norm, "norm_out", momentum, x, train)


class ResidualBlock(nn.Module):
  """A basic residual block: conv -> norm -> ReLU -> conv -> norm, plus the shortcut, ReLU.

  The shortcut is the identity, or, where the stride or the width changes, a
  frozen 1x1 projection (strided) followed by a norm. Parameter names:
  `conv_0`, `norm_0`, `conv_1`, `norm_1` (and `shortcut`, `shortcut_norm`).

  Attributes:
    features: output channels.
    strides: stride of the first convolution (and of the projection).
    norm: normalization kind.
    keep_prob: keep-probability of each frozen weight.
    momentum: BatchNorm running-average momentum.
  """

  features: int
  strides: int = 1
  norm: str = "batchnorm"
  keep_prob: float = 1.0
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Applies the block to `[..., H, W, C]`."""
    init = models.sparse_he_normal(self.keep_prob)
    y = ShiftConv(self.features, init, self.strides, name="conv_0")(x)
    y = nn.relu(models.norm_layer(self.norm, "norm_0", self.momentum, y, train))
    y = ShiftConv(self.features, init, name="conv_1")(y)
    y = models.norm_layer(self.norm, "norm_1", self.momentum, y, train)
    if self.strides != 1 or x.shape[-1] != self.features:
      s = self.strides
      x = nn.Dense(self.features, use_bias=False, kernel_init=init, name="shortcut")(
          x[..., ::s, ::s, :])
      x = models.norm_layer(self.norm, "shortcut_norm", self.momentum, x, train)
    return nn.relu(x + y)


def resnet_blocks(depth: int) -> int:
  """Residual blocks per stage of a CIFAR ResNet of `depth` layers (`depth = 6n + 2`).

  Args:
    depth: 8, 14, 20, 26, 32, ... (ResNet-20 has 3 blocks per stage).

  Returns:
    `n`.

  Raises:
    ValueError: `depth` is not of the form `6n + 2` with `n >= 1`.
  """
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 26, ...), got {depth}")
  return (depth - 2) // 6


class NormResNet(nn.Module):
  """The CIFAR ResNet (He et al. 2016), frozen and random except its normalizations.

  Stem: conv (`width` channels) -> norm -> ReLU; three stages of
  `(depth - 2) / 6` residual blocks of `width`, `2 width`, `4 width` channels
  (the first block of stages 2 and 3 has stride 2); global average pooling; a
  frozen linear layer to `n_out`; a final norm. Parameter names:
  `stem`, `stem_norm`, `stage{s}_block{b}/...` (`ResidualBlock`),
  `dense_out/kernel`, `norm_out/{scale, bias}`.

  Attributes:
    depth: layers, `6n + 2` (ResNet-14: 14; Frankle et al. went to 866).
    width: channels of the first stage (16 in He et al. and Frankle et al.).
    n_out: outputs (classes).
    norm: `"batchnorm"` (default), `"affine"` or `"layernorm"`.
    keep_prob: keep-probability of each frozen weight.
    momentum: BatchNorm running-average momentum.
  """

  depth: int = 14
  width: int = 16
  n_out: int = 10
  norm: str = "batchnorm"
  keep_prob: float = 1.0
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Applies the network to images `[..., H, W, C]`; returns `[..., n_out]`."""
    blocks = resnet_blocks(self.depth)
    init = models.sparse_he_normal(self.keep_prob)
    x = ShiftConv(self.width, init, name="stem")(x)
    x = nn.relu(models.norm_layer(self.norm, "stem_norm", self.momentum, x, train))
    for stage in range(3):
      for b in range(blocks):
        x = ResidualBlock(self.width * 2 ** stage, 2 if stage and not b else 1, self.norm,
                          self.keep_prob, self.momentum, name=f"stage{stage}_block{b}")(x, train)
    return _pooled_output(x, self.n_out, init, self.norm, self.momentum, train)


def vgg_stages(depth: int) -> tuple[int, int, int]:
  """Convolutions in each of a `NormVGG`'s three stages: `depth` spread evenly, earlier first."""
  return tuple(depth // 3 + (1 if k < depth % 3 else 0) for k in range(3))


class NormVGG(nn.Module):
  """A plain (VGG-style) CNN, frozen and random except its normalizations.

  `depth` blocks of conv -> norm -> ReLU spread over three stages of `width`,
  `2 width`, `4 width` channels (`vgg_stages`), with 2x2 max-pooling between
  stages (while the image is at least 2x2); global average pooling; a frozen
  linear layer to `n_out`; a final norm. Parameter names: `conv_k`, `norm_k`
  (k counts every block), `dense_out/kernel`, `norm_out/{scale, bias}`.

  Attributes:
    depth: convolution blocks (>= 1).
    width: channels of the first stage.
    n_out: outputs (classes).
    norm: normalization kind.
    keep_prob: keep-probability of each frozen weight.
    momentum: BatchNorm running-average momentum.
  """

  depth: int = 6
  width: int = 16
  n_out: int = 10
  norm: str = "batchnorm"
  keep_prob: float = 1.0
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Applies the network to images `[..., H, W, C]`; returns `[..., n_out]`."""
    init = models.sparse_he_normal(self.keep_prob)
    k = 0
    for stage, convs in enumerate(vgg_stages(self.depth)):
      if stage and convs and min(x.shape[-3], x.shape[-2]) >= 2:
        x = _max_pool_2x2(x)
      for _ in range(convs):
        x = ShiftConv(self.width * 2 ** stage, init, name=f"conv_{k}")(x)
        x = nn.relu(models.norm_layer(self.norm, f"norm_{k}", self.momentum, x, train))
        k += 1
    return _pooled_output(x, self.n_out, init, self.norm, self.momentum, train)


def _max_pool_2x2(x):
  """2x2 max-pooling, stride 2, of `[..., H, W, C]` (an odd last row or column is dropped)."""
  h, w = x.shape[-3] // 2 * 2, x.shape[-2] // 2 * 2
  x = x[..., :h, :w, :]
  x = x.reshape(x.shape[:-3] + (h // 2, 2, w // 2, 2, x.shape[-1]))
  return jnp.max(x, axis=(-4, -2))
