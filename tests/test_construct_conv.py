"""Tests for jaxnorm.construct_conv: a CNN rebuilt exactly by the norms of a frozen random CNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import construct_conv as cc


def _he(rng, shape, fan_in, keep_prob=1.0):
  w = rng.normal(size=shape) * np.sqrt(2.0 / fan_in / keep_prob)
  return np.where(rng.uniform(size=shape) < keep_prob, w, 0.0) if keep_prob < 1 else w


def _problem(seed, convs, in_channels, dense=(), ratio=1.0, keep_prob=1.0, extra=0):
  """A random target CNN (`convs`: (k, c_out, stride, padding)), then Flatten and `dense` layers,
  and frozen blocks of width `ratio * k^2 c_in c_out` (+ `extra`)."""
  rng = np.random.default_rng(seed)
  layers, frozen, c = [], [], in_channels
  for k, c_out, stride, padding in convs:
    layers.append(cc.Conv(_he(rng, (k, k, c, c_out), k * k * c), 0.1 * rng.normal(size=c_out),
                          stride, padding))
    m = int(ratio * k * k * c * c_out) + extra
    frozen.append((_he(rng, (k, k, c, m), k * k * c, keep_prob),
                   _he(rng, (1, 1, m, c_out), m, keep_prob)))
    c = c_out
  if dense:
    layers.append(cc.Flatten())
  return layers, frozen, rng


def _add_dense(layers, frozen, rng, flat, widths, ratio=1.0):
  d = flat
  for d_out in widths:
    layers.append(cc.Dense(_he(rng, (d, d_out), d), 0.1 * rng.normal(size=d_out)))
    m = int(ratio * d * d_out)
    frozen.append((_he(rng, (d, m), d), _he(rng, (m, d_out), m)))
    d = d_out


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("convs,shape,dense", [
    ([(3, 2, 1, "SAME")], (5, 5, 1), ()),
    ([(3, 3, 2, "VALID"), (2, 2, 1, "SAME")], (7, 6, 2), (3,)),
    ([(2, 2, 1, "SAME"), (3, 3, 2, "SAME"), (1, 2, 1, "VALID")], (6, 6, 1), (2,)),
])
def test_float64_exact_at_width_exactly_k2_cin_cout(enable_x64, convs, shape, dense):
  del enable_x64
  layers, frozen, rng = _problem(0, convs, shape[-1], dense)
  if dense:
    flat = int(np.prod(jax.eval_shape(lambda x: cc.apply_target(layers, x),
                                      jax.ShapeDtypeStruct((1, *shape), jnp.float64)).shape[1:]))
    _add_dense(layers, frozen, rng, flat, dense)
  images = rng.normal(size=(40, *shape))
  for domain in ({"data": images}, {"radius": 3.0, "input_shape": shape}):
    rec = cc.reconstruct_conv(layers, frozen, **domain)
    assert rec.exact and rec.network_error <= 1e-9, rec.network_error
    x = images if "data" in domain else (   # the data set, or other images inside the ball
        images / np.linalg.norm(images.reshape(40, -1), axis=1)[:, None, None, None] * 2.9)
    err = _rel(rec.apply(jnp.asarray(x)), cc.apply_target(layers, jnp.asarray(x)))
    assert err <= 1e-9, err
    assert [b.width for b in rec.blocks] == [b.min_width for b in rec.blocks]   # ratio 1


def test_one_unit_narrower_raises_naming_the_block(enable_x64):
  del enable_x64
  layers, frozen, _ = _problem(1, [(3, 2, 1, "SAME"), (3, 2, 1, "SAME")], 1, extra=0)
  w1, w2 = frozen[1]
  frozen[1] = (w1[..., :-1], w2[:, :, :-1])
  with pytest.raises(ValueError, match=r"block 2 \(conv 3x3 2->2, stride 1, SAME\): width "
                     r"m = 35 is below the minimum k\^2 c_in c_out = 36"):
    cc.reconstruct_conv(layers, frozen, radius=1.0, input_shape=(5, 5, 1))
  rec = cc.reconstruct_conv(layers, frozen, radius=1.0, input_shape=(5, 5, 1),
                            allow_inexact=True)
  assert not rec.exact and not rec.blocks[1].exact and rec.blocks[0].exact


def test_sparse_blocks_exact_above_the_threshold_refused_below(enable_x64):
  del enable_x64
  layers, frozen, _ = _problem(2, [(2, 2, 1, "VALID")], 2, ratio=12.0, keep_prob=0.4)
  assert 0.5 < np.mean(frozen[0][0] == 0) < 0.7
  rec = cc.reconstruct_conv(layers, frozen, radius=1.0, input_shape=(4, 4, 2))
  assert rec.exact and rec.network_error <= 1e-9
  layers, frozen, _ = _problem(3, [(2, 2, 1, "VALID")], 2, ratio=1.0, keep_prob=0.4)
  with pytest.raises(ValueError, match="block 1 .*rank-deficient"):
    cc.reconstruct_conv(layers, frozen, radius=1.0, input_shape=(4, 4, 2))


def test_the_exported_plain_flax_cnn_reproduces_the_target(enable_x64):
  del enable_x64
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  layers, frozen, rng = _problem(4, [(3, 2, 2, "SAME")], 1, dense=(3,), ratio=1.5)
  _add_dense(layers, frozen, rng, 8, (3,), ratio=1.5)
  layers.insert(1, cc.AvgPool(2))          # 4x4x2 -> 2x2x2 = 8 features
  images = rng.normal(size=(30, 8, 8, 1))
  rec = cc.reconstruct_conv(layers, frozen, data=images)
  model, variables = rec.model(), rec.variables()
  assert all(type(op).__module__.startswith(("flax", "functools", "jax")) or callable(op)
             for op in model.layers)
  assert sum(isinstance(op, nn.BatchNorm) for op in model.layers) == 4
  out = model.apply(variables, jnp.asarray(images))
  assert _rel(out, cc.apply_target(layers, jnp.asarray(images))) <= 1e-9


def test_max_pooling_stays_exact_as_a_fixed_layer(enable_x64):
  del enable_x64
  layers, frozen, rng = _problem(6, [(3, 2, 1, "SAME"), (3, 3, 1, "SAME")], 1, ratio=1.2)
  layers.insert(1, cc.MaxPool(2))          # 6x6x2 -> 3x3x2, then the second conv
  images = rng.normal(size=(20, 6, 6, 1))
  for domain in ({"data": images}, {"radius": 2.0, "input_shape": (6, 6, 1)}):
    rec = cc.reconstruct_conv(layers, frozen, **domain)
    assert rec.exact and rec.network_error <= 1e-9, rec.network_error


@pytest.mark.parametrize("kwargs,message", [
    (dict(radius=1.0), "input_shape"),
    (dict(radius=1.0, data=np.zeros((2, 5, 5, 1))), "exactly one"),
    (dict(data=np.zeros((2, 5, 5))), r"images \[n, H, W, C\]"),
    (dict(data=np.zeros((2, 5, 5, 3))), r"conv kernel \[k, k, 3, c_out\]"),
])
def test_bad_input_raises_before_any_compute(kwargs, message):
  layers, frozen, _ = _problem(5, [(3, 2, 1, "SAME")], 1)
  with pytest.raises(ValueError, match=message):
    cc.reconstruct_conv(layers, frozen, **kwargs)
