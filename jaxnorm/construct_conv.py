"""The exact construction for convolutional targets (docs/design.md §2b).

A target conv layer `T` (`k x k`, `c_in -> c_out`, stride `s`, bias `c`) is
rebuilt by a random block: a frozen `k x k` conv `W1` (`c_in -> m`, the same
stride and padding), a per-channel affine `(gamma_1, beta_1)` (a BatchNorm in
inference), ReLU, a frozen `1 x 1` conv `W2` (`m -> c_out`) and a per-channel
affine `(gamma_2, beta_2)`. On every input patch `p` (a vector of `k^2 c_in`
numbers, zero padding included) the block computes the MLP block of
docs/design.md §2 with `W_in = W1` flattened to `[m, k^2 c_in]` and
`W_out = W2` `[c_out, m]`: the kernel it realises is
`K[o, (u, v, i)] = sum_j W2[o, j] gamma_j W1[j, (u, v, i)]`, a Khatri–Rao
system with `k^2 c_in c_out` equations and `m` unknowns (exact for dense random
weights once `m >= k^2 c_in c_out`), and the shifts
`beta_1 = |gamma_1| ||W1_j|| R_patch` keep every unit linear for every patch of
norm `<= R_patch`, `beta_2` cancelling their constant. So each conv block is
solved by `construct.reconstruct` on its patches, matrix-free (`cg`) or dense.

Between blocks the domain propagates per patch: with `radius=R` (every
image's norm `<= R`), a first-layer patch has norm `<= R` (zero padding only
shrinks it); a block's output pixels have norm `<= B = ||K||_2 R_patch + ||c||`
(and after ReLU and average pooling still), so the next `k x k` patch has norm
`<= k B` and a flattened `H x W` map `<= sqrt(H W) B`. With `data=` images the
shifts come from the actual patches, layer by layer (the tightest). Dense
layers after `Flatten` are MLP blocks; `AvgPool` and `Flatten` are linear and
pass through unchanged, and so does `MaxPool`: it acts pixel by pixel on a
block's output, which equals the target's on the domain (the rebuilt network
has the same pooling layers, `bound` grows by the window for max pooling).

The rebuilt network is a plain Flax linen CNN (`nn.Conv`, `nn.BatchNorm` in
inference with running mean 0 and variance 1, `nn.Dense`, `nn.avg_pool`):
`ConvReconstruction.model()` and `.variables()` run with no jaxnorm code. A
block's `1 x 1` conv `W2` is exported as the same map written as an `nn.Dense`
on the channel axis (kernel `[m, c_out]`), which XLA:CPU runs several times
faster than a `1 x 1` `nn.Conv` (WORKSPACE.md).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import construct
from jaxnorm.validate import ConfigError

BN_EPSILON = 1e-5   # the exported BatchNorms' epsilon (their scales absorb sqrt(1 + eps))


class Conv(NamedTuple):
  """A target conv layer (ReLU after it unless it is the last layer).

  Attributes:
    kernel: `[k, k, c_in, c_out]` (Flax's HWIO layout).
    bias: `[c_out]`.
    stride: the stride (both axes).
    padding: `"SAME"` or `"VALID"`.
  """
  kernel: Any
  bias: Any
  stride: int = 1
  padding: str = "SAME"


class Dense(NamedTuple):
  """A target dense layer `x @ kernel + bias` (ReLU after it unless it is the last layer).

  Attributes:
    kernel: `[d_in, d_out]` (Flax's layout).
    bias: `[d_out]`.
  """
  kernel: Any
  bias: Any


class AvgPool(NamedTuple):
  """Average pooling over `window x window`, 'VALID' (linear: passed through)."""
  window: int
  stride: Optional[int] = None


class MaxPool(NamedTuple):
  """Max pooling over `window x window`, 'VALID' (a fixed layer, kept in the rebuilt CNN)."""
  window: int
  stride: Optional[int] = None


class Flatten(NamedTuple):
  """`[n, H, W, C] -> [n, H W C]` (linear: passed through)."""


def _pool(x, op):
  s = op.stride or op.window
  pool = nn.max_pool if isinstance(op, MaxPool) else nn.avg_pool
  return pool(x, (op.window, op.window), strides=(s, s), padding="VALID")


def _flatten(x):
  return x.reshape(x.shape[0], -1)


def _conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _static(op):
  """What a compiled program depends on: an op's kind, shapes, stride and padding (no values)."""
  if isinstance(op, Conv):
    return ("conv", tuple(np.shape(op.kernel)), int(op.stride), op.padding)
  if isinstance(op, Dense):
    return ("dense", tuple(np.shape(op.kernel)))
  return op   # pooling and flatten: small hashable tuples


def _kind(op) -> str:
  """`"conv"`, `"dense"`, `"pool"` or `"flatten"` of a `_static` entry."""
  if isinstance(op, (AvgPool, MaxPool)):
    return "pool"
  return "flatten" if isinstance(op, Flatten) else op[0]


@functools.lru_cache(maxsize=64)
def _target_program(structure):
  """One jitted program per target structure: `(weights, x) -> outputs`."""
  last = max(i for i, op in enumerate(structure) if _kind(op) in ("conv", "dense"))

  def run(weights, x):
    weights = iter(weights)
    for i, op in enumerate(structure):
      if _kind(op) in ("conv", "dense"):
        kernel, bias = (jnp.asarray(a, x.dtype) for a in next(weights))
        x = (_conv(x, kernel, op[2], op[3]) if op[0] == "conv" else x @ kernel) + bias
        if i < last:
          x = jax.nn.relu(x)
      elif isinstance(op, (AvgPool, MaxPool)):
        x = _pool(x, op)
      else:
        x = _flatten(x)
    return x
  return jax.jit(run)


def apply_target(layers: Sequence, x: jax.Array) -> jax.Array:
  """Runs a target CNN (`Conv`, `Dense`, `AvgPool`, `MaxPool`, `Flatten` ops) on `[n, H, W, C]`."""
  weights = tuple((op.kernel, op.bias) for op in layers if isinstance(op, (Conv, Dense)))
  return _target_program(tuple(_static(op) for op in layers))(weights, x)


def patches(x: np.ndarray, k: int, stride: int, padding: str) -> np.ndarray:
  """The `k x k` patches of images `[n, H, W, C]` as rows `[n Ho Wo, k k C]` (HWIO order)."""
  x = np.asarray(x)
  n, h, w, c = x.shape
  if padding == "SAME":
    ho, wo = -(-h // stride), -(-w // stride)
    ph, pw = max((ho - 1) * stride + k - h, 0), max((wo - 1) * stride + k - w, 0)
    x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
  else:
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
  rows = np.stack([x[:, u:u + stride * (ho - 1) + 1:stride, v:v + stride * (wo - 1) + 1:stride]
                   for u in range(k) for v in range(k)], axis=3)        # [n, ho, wo, k*k, c]
  return rows.reshape(n * ho * wo, k * k * c)


@dataclasses.dataclass(frozen=True)
class ConvReconstruction:
  """Norms with which a frozen random CNN computes a target CNN.

  Attributes:
    layers: the target's ops.
    frozen: per `Conv`/`Dense` op, its block's frozen `(W1, W2)` in Flax layout
      (`[k, k, c_in, m]`, `[1, 1, m, c_out]`; or `[d_in, m]`, `[m, d_out]`).
    gammas: two scale vectors per block.
    betas: two shift vectors per block.
    blocks: one `construct.BlockReport` per block (its `block` counts from 1).
    network_error: the rebuilt CNN's measured relative error against the
      target on the probe images (the data, or images on and inside the
      radius's sphere), both in the working dtype.
    network_tol: the error up to which the network counts as exact.
  """

  layers: tuple
  frozen: tuple
  gammas: tuple
  betas: tuple
  blocks: tuple
  network_error: float
  network_tol: float

  @property
  def exact(self) -> bool:
    """Every block solved to its tolerance and the network measured within `network_tol`."""
    return bool(all(b.exact for b in self.blocks) and self.network_error <= self.network_tol)

  def model(self) -> nn.Sequential:
    """The rebuilt CNN as a plain Flax linen model (apply with `variables()`, no jaxnorm code)."""
    return _plain_cnn(tuple(_static(op) for op in self.layers),
                      tuple(int(w1.shape[-1]) for w1, _ in self.frozen))

  def variables(self) -> dict:
    """`{"params", "batch_stats"}` of `model()`: the frozen kernels, the norms as BatchNorms."""
    return _plain_variables(self.model(), self.frozen, self.gammas, self.betas)

  def apply(self, x: jax.Array) -> jax.Array:
    """The rebuilt CNN on images `[n, H, W, C]` (compiled once per structure and shape)."""
    return _model_program(self.model())(self.variables(), x)


@functools.lru_cache(maxsize=64)
def _plain_cnn(structure, widths) -> nn.Sequential:
  ops = []
  blocks = iter(widths)
  last = max(i for i, op in enumerate(structure) if _kind(op) in ("conv", "dense"))
  for i, op in enumerate(structure):
    bn = lambda: nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON)
    if _kind(op) == "conv":
      (k, _, _, c_out), stride, padding = op[1], op[2], op[3]
      ops += [nn.Conv(next(blocks), (k, k), strides=(stride, stride), padding=padding,
                      use_bias=False), bn(), nn.relu,
              nn.Dense(c_out, use_bias=False), bn()]   # the 1 x 1 conv W2, on the channels
    elif _kind(op) == "dense":
      ops += [nn.Dense(next(blocks), use_bias=False), bn(), nn.relu,
              nn.Dense(op[1][-1], use_bias=False), bn()]
    elif isinstance(op, (AvgPool, MaxPool)):
      ops.append(functools.partial(_pool, op=op))
    else:
      ops.append(_flatten)
    if _kind(op) in ("conv", "dense") and i < last:
      ops.append(nn.relu)
  return nn.Sequential(tuple(ops))


@functools.lru_cache(maxsize=64)
def _model_program(model):
  return jax.jit(model.apply)


def _plain_variables(model, frozen, gammas, betas):
  kernels = [w for pair in frozen for w in pair]
  modules = [i for i, op in enumerate(model.layers) if isinstance(op, nn.Module)]
  params, stats = {}, {}
  it = iter(range(len(kernels)))
  for idx in modules:
    op = model.layers[idx]
    name = f"layers_{idx}"
    if isinstance(op, (nn.Conv, nn.Dense)):
      j = next(it)
      kernel = np.asarray(kernels[j])
      if isinstance(op, nn.Dense):   # a W2 `[1, 1, m, c_out]` as the `nn.Dense` kernel `[m, c_out]`
        kernel = kernel.reshape(kernel.shape[-2:])
      params[name] = {"kernel": jnp.asarray(kernel)}
    else:   # the BatchNorm after kernel j: (x - 0) / sqrt(1 + eps) * scale + bias
      g, b = np.asarray(gammas[j]), np.asarray(betas[j])   # on the host: nothing to compile
      params[name] = {"scale": jnp.asarray(g * np.sqrt(np.asarray(1.0 + BN_EPSILON, g.dtype))),
                      "bias": jnp.asarray(b)}
      stats[name] = {"mean": jnp.asarray(np.zeros_like(g)), "var": jnp.asarray(np.ones_like(g))}
  return {"params": params, "batch_stats": stats}


def _describe(op) -> str:
  if isinstance(op, Conv):
    k, _, c_in, c_out = np.shape(op.kernel)
    return f"conv {k}x{k} {c_in}->{c_out}, stride {op.stride}, {op.padding}"
  return f"dense {np.shape(op.kernel)[0]}->{np.shape(op.kernel)[1]}"


def _check(layers, frozen, radius, data, input_shape):
  """Validates everything before any compute; returns the input shape of every op."""
  if (radius is None) == (data is None):
    raise ConfigError("give exactly one of radius= (a bound on every image's norm) and data=")
  if radius is not None:
    if input_shape is None or len(input_shape) != 3:
      raise ConfigError("radius= needs input_shape=(H, W, C)")
    if not (np.isfinite(radius) and radius > 0):
      raise ConfigError(f"radius must be a positive number, got {radius!r}")
  else:
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[0] == 0 or not np.isfinite(data).all():
      raise ConfigError(f"data must be finite images [n, H, W, C], got shape {data.shape}")
    input_shape = data.shape[1:]
  blocks = [op for op in layers if isinstance(op, (Conv, Dense))]
  if not blocks:
    raise ConfigError("the target has no Conv or Dense layer")
  if len(frozen) != len(blocks):
    raise ConfigError(f"need one frozen (W1, W2) pair per Conv/Dense layer: {len(blocks)}, got "
                     f"{len(frozen)}")
  shape = tuple(int(v) for v in input_shape)
  spatial = True
  b = 0
  shapes = []
  for i, op in enumerate(layers):
    shapes.append(shape)
    if isinstance(op, Conv):
      kshape = np.shape(op.kernel)
      if not spatial or len(kshape) != 4 or kshape[0] != kshape[1] or kshape[2] != shape[2]:
        raise ConfigError(f"layer {i}: a conv kernel [k, k, {shape[-1]}, c_out] on maps of shape "
                         f"{shape} is needed, got {kshape}")
      if op.padding not in ("SAME", "VALID") or int(op.stride) < 1:
        raise ConfigError(f"layer {i}: padding must be SAME or VALID and stride >= 1")
      w1, w2 = (np.shape(w) for w in frozen[b])
      if len(w1) != 4 or w1[:3] != kshape[:3] or np.prod(w2[:-2] or (1,)) != 1 or (
          w2[-2:] != (w1[-1], kshape[-1])):
        raise ConfigError(f"block {b + 1} ({_describe(op)}): frozen W1 [{kshape[0]}, {kshape[1]}, "
                         f"{kshape[2]}, m] and W2 [1, 1, m, {kshape[3]}] needed, got {w1}, {w2}")
      k, s = kshape[0], int(op.stride)
      h, w = shape[:2]
      ho, wo = ((-(-h // s), -(-w // s)) if op.padding == "SAME"
                else ((h - k) // s + 1, (w - k) // s + 1))
      if ho < 1 or wo < 1:
        raise ConfigError(f"layer {i}: a {k}x{k} VALID conv on maps of shape {shape}")
      shape = (ho, wo, kshape[3])
      b += 1
    elif isinstance(op, Dense):
      kshape = np.shape(op.kernel)
      if spatial or len(kshape) != 2 or kshape[0] != shape[0]:
        raise ConfigError(f"layer {i}: a dense kernel [{shape[0] if not spatial else 'flat'}, "
                         f"d_out] after Flatten is needed, got {kshape} on {shape}")
      w1, w2 = (np.shape(w) for w in frozen[b])
      if len(w1) != 2 or w1[0] != kshape[0] or w2 != (w1[1], kshape[1]):
        raise ConfigError(f"block {b + 1} ({_describe(op)}): frozen W1 [{kshape[0]}, m] and W2 "
                         f"[m, {kshape[1]}] needed, got {w1}, {w2}")
      shape = (kshape[1],)
      b += 1
    elif isinstance(op, (AvgPool, MaxPool)):
      if not spatial or op.window < 1 or op.window > min(shape[:2]):
        raise ConfigError(f"layer {i}: pooling {op.window}x{op.window} on {shape}")
      s = op.stride or op.window
      shape = ((shape[0] - op.window) // s + 1, (shape[1] - op.window) // s + 1, shape[2])
    elif isinstance(op, Flatten):
      if not spatial:
        raise ConfigError(f"layer {i}: Flatten of a flat vector")
      shape, spatial = (int(np.prod(shape)),), False
    else:
      raise ConfigError(f"layer {i}: unknown op {type(op).__name__} (Conv, Dense, AvgPool, "
                        f"MaxPool or Flatten)")
  for op, pair in zip(blocks, frozen):
    for a in (op.kernel, op.bias, *pair):
      if not np.isfinite(np.asarray(a)).all():
        raise ConfigError(f"{_describe(op)}: weights must be finite")
  return tuple(int(v) for v in input_shape), shapes


def reconstruct_conv(layers: Sequence, frozen: Sequence, *, radius: Optional[float] = None,
                     data=None, input_shape: Optional[Sequence[int]] = None,
                     solver: str = "auto", allow_inexact: bool = False) -> ConvReconstruction:
  """Norms with which a frozen random CNN computes a target CNN on a domain of images.

  Args:
    layers: the target, a sequence of `Conv`, `Dense`, `AvgPool`, `Flatten`
      (ReLU after every `Conv`/`Dense` but the last).
    frozen: per `Conv`/`Dense` layer, its block's frozen `(W1, W2)` in Flax
      layout: `[k, k, c_in, m]` and `[1, 1, m, c_out]` (or `[m, c_out]`) for a
      conv, `[d_in, m]` and `[m, d_out]` for a dense layer (zeros for pruned
      weights).
    radius: the domain is every image of norm `<= radius` (needs `input_shape`).
    data: the domain is these images `[n, H, W, C]`.
    input_shape: `(H, W, C)` of the images (with `radius`).
    solver: each block's solver, as in `construct.reconstruct`.
    allow_inexact: keep least-squares fits of blocks that cannot be exact.

  Returns:
    A `ConvReconstruction`, in the working dtype of the weights (float64 only
    with `jax_enable_x64`).

  Raises:
    ValueError: bad arguments (before any compute), or a block that is not
      exact (naming it, its layer, width and minimum) unless `allow_inexact`.
  """
  input_shape, shapes = _check(layers, frozen, radius, data, input_shape)
  dtype = construct.working_dtype([np.asarray(a) for op in layers if isinstance(op, (Conv, Dense))
                                   for a in (op.kernel, op.bias)]
                                  + [np.asarray(w) for pair in frozen for w in pair])
  blocks = [op for op in layers if isinstance(op, (Conv, Dense))]
  for b, (op, (w1, _)) in enumerate(zip(blocks, frozen)):   # widths first, before any solve
    need, m = int(np.prod(np.shape(op.kernel))), np.shape(w1)[-1]
    if m < need and not allow_inexact:
      raise ConfigError(f"block {b + 1} ({_describe(op)}): width m = {m} is below the minimum "
                        f"{'k^2 c_in c_out' if isinstance(op, Conv) else 'd_in d_out'} = {need} "
                        f"for an exact reconstruction (allow_inexact=True: a least-squares fit)")
  h = None if data is None else np.asarray(data, np.float64)
  r = None if radius is None else float(radius)       # patch radius (spatial) or vector radius
  bound = r                                            # bound on every pixel's norm (spatial)
  gammas, betas, reports = [], [], []
  b = 0
  for i, op in enumerate(layers):
    if isinstance(op, (Conv, Dense)):
      w1, w2 = (np.asarray(w) for w in frozen[b])
      kernel, bias = np.asarray(op.kernel), np.asarray(op.bias)
      m = w1.shape[-1]
      t_mat = kernel.reshape(-1, kernel.shape[-1]).T              # [c_out, k k c_in]
      w_in, w_out = w1.reshape(-1, m).T, w2.reshape(m, -1).T      # [m, k k c_in], [c_out, m]
      if isinstance(op, Conv):
        k = kernel.shape[0]
        dom = ({"data": patches(h, k, op.stride, op.padding)} if h is not None
               else {"radius": r if b == 0 else k * bound})
      else:
        dom = {"data": h} if h is not None else {"radius": r}
      cast = lambda a: jnp.asarray(a, dtype)
      try:
        rec = construct.reconstruct([(cast(t_mat), cast(bias))], [cast(w_in), cast(w_out)],
                                    solver=solver, allow_inexact=allow_inexact,
                                    measure=False, **dom)   # the whole CNN is measured below
      except ValueError as e:
        raise ValueError(str(e).replace("block 1", f"block {b + 1} ({_describe(op)})", 1)) from None
      g1, g2 = (np.asarray(g, np.float64) for g in rec.gammas)
      gammas += list(rec.gammas)
      betas += list(rec.betas)
      reports.append(rec.blocks[0]._replace(block=b + 1))
      b += 1
      if b == len(blocks):
        break   # the last block: nothing after it needs its outputs' domain
      realised = ((w_out.astype(np.float64) * g1) @ w_in.astype(np.float64)) * g2[:, None]
      if isinstance(op, Conv):
        if h is not None:
          h = np.asarray(_conv(jnp.asarray(h, dtype), cast(realised.T.reshape(kernel.shape)),
                               op.stride, op.padding), np.float64) + bias
        else:
          bound = np.linalg.norm(realised, 2) * dom["radius"] + np.linalg.norm(bias)
      else:
        if h is not None:
          h = h @ realised.T + bias
        else:
          r = np.linalg.norm(realised, 2) * r + np.linalg.norm(bias)
      if h is not None:
        h = np.maximum(h, 0)
    elif isinstance(op, (AvgPool, MaxPool)):
      if h is not None:
        h = np.asarray(_pool(jnp.asarray(h), op), np.float64)
      elif isinstance(op, MaxPool):   # each channel's max comes from one of window^2 pixels
        bound *= op.window
    else:
      if h is not None:
        h = h.reshape(h.shape[0], -1)
      else:
        r = bound * np.sqrt(shapes[i][0] * shapes[i][1])   # H W pixels of norm <= bound
  result = ConvReconstruction(tuple(layers), tuple((np.asarray(w1), np.asarray(w2))
                                                   for w1, w2 in frozen),
                              tuple(gammas), tuple(betas), tuple(reports), np.nan,
                              construct.tolerances(dtype).network)
  error = _network_error(result, radius, data, input_shape, dtype)
  result = dataclasses.replace(result, network_error=error)
  if not result.exact and not allow_inexact:
    raise ValueError(f"the rebuilt CNN misses its target: measured relative error {error:.3g} "
                     f"> {result.network_tol:.3g} on the probe images (every block solved)")
  return result


PROBE_ACTIVATIONS = 1 << 24   # at most this many activations of the widest layer per probe


def probe_images(input_shape, *, radius=None, data=None, seed: int = 0, n: int = 512):
  """Images on which a rebuilt CNN is measured: the data (first `n`), or `n/2` on the sphere of
  `radius` and `n/2` inside it (float64)."""
  if data is not None:
    return np.asarray(data, np.float64)[:n]
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(n, int(np.prod(input_shape))))
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  g[n // 2:] *= rng.uniform(size=(n - n // 2, 1))
  return (radius * g).reshape(n, *input_shape)


def _network_error(result, radius, data, input_shape, dtype) -> float:
  # as many probe images as keep the widest layer's activations within PROBE_ACTIVATIONS
  widest = max(w1.shape[-1] for w1, _ in result.frozen) * input_shape[0] * input_shape[1]
  n = int(np.clip(PROBE_ACTIVATIONS // widest, 8, 512))
  x = jnp.asarray(probe_images(input_shape, radius=radius, data=data, n=n), dtype)
  with jax.default_matmul_precision("highest"):   # the networks as written, on any device
    want = np.asarray(apply_target(result.layers, x), np.float64)
    got = np.asarray(result.apply(x), np.float64)
  scale = np.linalg.norm(want)
  err = np.linalg.norm(got - want)
  return float(err / scale) if scale > 0 else float(err)
