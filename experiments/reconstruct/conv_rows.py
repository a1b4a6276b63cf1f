"""The rows of `reconstruct --study=conv`: CNNs rebuilt by the BatchNorms of frozen random CNNs.

* `phase`: one random conv block (3x3, `c -> c + 1` channels, 6x6 images in
  the ball of `radius`), success fraction over seeds (float64 relative error
  of the network < `rows.SUCCESS_TOL`) versus width ratio `m / (k^2 c_in c_out)`.
* `trained`: a small CNN trained on the digits with plain Flax (two 3x3 convs
  of 4 and 8 channels, the second with stride 2, and a dense head), rebuilt
  by norms alone in a frozen random CNN at width ratio `config.conv_ratio`,
  exact on the digits (train and test images: the data domain), in float64
  and in float32: accuracies, identical predictions, logit errors.

* `scale`: one 3x3 conv block `c -> c` on 8x8 images at `m = 2 k^2 c^2`
  (`--conv_scale_channels`, 64: m = 73,728) in float32 with the matrix-free
  `cg` solver: seconds with compilation, GFLOP/s against the matmul peak.

Like `rows.py`, each function returns `(row, timing)`: the row holds what is
the same on every run, `timing` the seconds.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from jaxnorm import construct_conv as cc
from jaxnorm import data as data_lib
from experiments.reconstruct import rows

PHASE_KERNEL, PHASE_IMAGE = 3, (6, 6)
CHANNELS = (4, 8)


class SmallCNN(nn.Module):
  """The trained target: conv 3x3 (4), ReLU, conv 3x3 stride 2 (8), ReLU, flatten, dense (10)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(CHANNELS[0], (3, 3), padding="SAME")(x))
    x = nn.relu(nn.Conv(CHANNELS[1], (3, 3), strides=(2, 2), padding="SAME")(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _he(key, shape, fan_in, dtype):
  """He-normal weights drawn on the host (numpy, seeded by `key`: no program to compile)."""
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
  return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(dtype)


def frozen_blocks(key, layers, ratio: float, dtype):
  """Frozen random `(W1, W2)` per Conv/Dense layer, width `ceil(ratio * k^2 c_in c_out)`."""
  out = []
  for op in layers:
    if not isinstance(op, (cc.Conv, cc.Dense)):
      continue
    shape = np.shape(op.kernel)
    m = int(math.ceil(ratio * np.prod(shape)))
    key, k1, k2 = jax.random.split(key, 3)
    fan_in = int(np.prod(shape[:-1]))
    if isinstance(op, cc.Conv):
      out.append((_he(k1, (*shape[:-1], m), fan_in, dtype),
                  _he(k2, (1, 1, m, shape[-1]), m, dtype)))
    else:
      out.append((_he(k1, (shape[0], m), fan_in, dtype), _he(k2, (m, shape[-1]), m, dtype)))
  return out


@functools.lru_cache(maxsize=4)
def trained_cnn(seed: int, steps: int):
  """The digits CNN trained with Adam (full batch): `(layers, images, labels, test_mask, acc)`."""
  split = data_lib.digits()
  x_train, x_test = data_lib.as_images(split.x_train), data_lib.as_images(split.x_test)
  model = SmallCNN()
  params = model.init(jax.random.key(seed), jnp.zeros((1, *x_train.shape[1:])))["params"]
  tx = optax.adam(optax.cosine_decay_schedule(1e-2, steps))
  xt, yt = jnp.asarray(x_train, jnp.float32), jnp.asarray(split.y_train)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xt),
                                                           yt).mean()

  @jax.jit
  def train(p):
    def step(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (p, tx.init(p)), None, length=steps)[0][0]

  params = jax.device_get(train(params))
  conv0, conv1, dense = params["Conv_0"], params["Conv_1"], params["Dense_0"]
  layers = [cc.Conv(np.asarray(conv0["kernel"], np.float64), np.asarray(conv0["bias"], np.float64)),
            cc.Conv(np.asarray(conv1["kernel"], np.float64), np.asarray(conv1["bias"], np.float64),
                    stride=2),
            cc.Flatten(),
            cc.Dense(np.asarray(dense["kernel"], np.float64),
                     np.asarray(dense["bias"], np.float64))]
  images = np.concatenate([x_train, x_test]).astype(np.float64)
  labels = np.concatenate([split.y_train, split.y_test])
  test = np.arange(len(images)) >= len(x_train)
  logits = np.asarray(model.apply({"params": params}, jnp.asarray(x_test, jnp.float32)))
  accuracy = float(np.mean(logits.argmax(-1) == split.y_test))
  return layers, images, labels, test, accuracy


def phase(config, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """`case = {"c", "ratio"}`: one random 3x3 conv block `c -> c + 1` over seeds, float64."""
  c, ratio = case["c"], case["ratio"]
  k = PHASE_KERNEL
  need = k * k * c * (c + 1)
  m = max(1, round(ratio * need))
  errors, seconds = [], 0.0
  with jax.enable_x64(True):
    for s in range(config.seeds):
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 7919 + c), s)
      kt, kb, kf, kx = jax.random.split(key, 4)
      target = [cc.Conv(_he(kt, (k, k, c, c + 1), k * k * c, np.float64),
                        0.1 * np.asarray(jax.random.normal(kb, (c + 1,)), np.float64))]
      frozen = [(_he(kf, (k, k, c, m), k * k * c, np.float64),
                 _he(jax.random.fold_in(kf, 1), (1, 1, m, c + 1), m, np.float64))]
      start = time.perf_counter()
      rec = cc.reconstruct_conv(target, frozen, radius=config.radius,
                                input_shape=(*PHASE_IMAGE, c), allow_inexact=True)
      seconds += time.perf_counter() - start
      x = cc.probe_images((*PHASE_IMAGE, c), radius=config.radius,
                          seed=int(jax.random.randint(kx, (), 0, 2 ** 30)))
      want = cc.apply_target(target, jnp.asarray(x))
      errors.append(rows.max_rel_error(rec.apply(jnp.asarray(x)), want))
  errors = np.asarray(errors)
  row = {"study": "conv", "part": "phase", "d": c, "p": 1.0, "width": m,
         "width_ratio": round(m / need, 6), "rel_error": float(np.median(errors)),
         "success": float(np.mean(errors < rows.SUCCESS_TOL)), "solver": "auto",
         "seeds": int(errors.size), "dtype": "float64", "kernel": f"{k}x{k} {c}->{c + 1}"}
  logging.info("conv phase %dx%d %d->%d ratio %.3g: success %.2f, median error %.3g", k, k, c,
               c + 1, m / need, row["success"], row["rel_error"])
  return row, {"seconds": round(seconds, 4)}


def trained(config, case: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """`case = {"dtype"}`: the digits CNN rebuilt by norms, measured on the test images."""
  dtype = np.dtype(case["dtype"])
  layers, images, labels, test, accuracy = trained_cnn(config.seed, config.train_steps)
  with jax.enable_x64(dtype == np.float64):
    cast = [op._replace(kernel=np.asarray(op.kernel, dtype), bias=np.asarray(op.bias, dtype))
            if isinstance(op, (cc.Conv, cc.Dense)) else op for op in layers]
    frozen = frozen_blocks(jax.random.key(config.seed + 1), cast, config.conv_ratio, dtype)
    start = time.perf_counter()
    rec = cc.reconstruct_conv(cast, frozen, data=images.astype(dtype), allow_inexact=True)
    seconds = time.perf_counter() - start
    x = jnp.asarray(images[test], dtype)
    got = np.asarray(rec.apply(x), np.float64)
    want = np.asarray(cc.apply_target(cast, x), np.float64)
  y = labels[test]
  per_image = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
  frozen_params = int(sum(w1.size + w2.size for w1, w2 in frozen))
  tuned = int(sum(g.size + b.size for g, b in zip(rec.gammas, rec.betas)))
  target_params = int(sum(np.size(op.kernel) + np.size(op.bias) for op in layers
                          if isinstance(op, (cc.Conv, cc.Dense))))
  row = {"study": "conv", "part": "trained", "d": None, "p": 1.0,
         "width": [int(w1.shape[-1]) for w1, _ in frozen],
         "width_ratio": config.conv_ratio, "rel_error": float(per_image.max()),
         "success": float(np.all(got.argmax(-1) == want.argmax(-1))), "solver": "auto",
         "dtype": dtype.name, "identical_predictions": float(np.mean(
             got.argmax(-1) == want.argmax(-1))),
         "target_accuracy": float(np.mean(want.argmax(-1) == y)),
         "rebuilt_accuracy": float(np.mean(got.argmax(-1) == y)),
         "target_accuracy_float32": accuracy, "network_error": rec.network_error,
         "blocks_exact": int(sum(b.exact for b in rec.blocks)), "frozen_params": frozen_params,
         "tuned_params": tuned, "target_params": target_params, "test_images": int(test.sum())}
  logging.info("conv trained CNN (%s): target accuracy %.4f, rebuilt %.4f, identical "
               "predictions %.4f, max relative logit error %.3g, %.1f s", dtype.name,
               row["target_accuracy"], row["rebuilt_accuracy"], row["identical_predictions"],
               row["rel_error"], seconds)
  return row, {"seconds": round(seconds, 4)}


def scale(config, case: dict[str, Any], peak: float) -> tuple[dict[str, Any], dict[str, Any]]:
  """`case = {"c"}`: one float32 3x3 conv block `c -> c` of width `2 k^2 c^2`, matrix-free."""
  c, k = case["c"], PHASE_KERNEL
  need = k * k * c * c
  m = 2 * need
  key = jax.random.fold_in(jax.random.key(config.seed), 104729 + c)
  kt, kb, kf = jax.random.split(key, 3)
  target = [cc.Conv(_he(kt, (k, k, c, c), k * k * c, np.float32),
                    0.1 * np.asarray(jax.random.normal(kb, (c,)), np.float32))]
  frozen = [(_he(kf, (k, k, c, m), k * k * c, np.float32),
             _he(jax.random.fold_in(kf, 1), (1, 1, m, c), m, np.float32))]
  timing = {}
  for run in ("seconds", "warm_seconds"):   # the first with compilation, then warm
    start = time.perf_counter()
    rec = cc.reconstruct_conv(target, frozen, radius=config.radius, input_shape=(8, 8, c),
                              solver="cg", allow_inexact=True)
    jax.block_until_ready(rec.gammas)
    timing[run] = round(time.perf_counter() - start, 4)
  block = rec.blocks[0]
  gflops = 4.0 * m * need * block.iterations / timing["warm_seconds"] / 1e9
  timing.update(gflops=float(f"{gflops:.3g}"), peak_fraction=float(f"{gflops / peak:.3g}"))
  row = {"study": "conv", "part": "scale", "d": c, "p": 1.0, "width": m, "width_ratio": 2.0,
         "rel_error": rec.network_error, "success": float(rec.exact), "solver": "cg",
         "dtype": "float32", "kernel": f"{k}x{k} {c}->{c}", "residual": block.residual,
         "iterations": block.iterations}
  logging.info("conv scale 3x3 %d->%d m=%d: %.2f s (warm %.2f s, network check included), %d "
               "iterations, residual %.2g, network error %.2g, %.3g GFLOP/s", c, c, m,
               timing["seconds"], timing["warm_seconds"], block.iterations, block.residual,
               rec.network_error, gflops)
  return row, timing
