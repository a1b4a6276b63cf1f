"""Tests for jaxnorm.convnets: the frozen random conv nets and their layouts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxnorm
from jaxnorm import convnets
from jaxnorm.trees import bit_identical


@pytest.mark.parametrize("strides", [1, 2])
def test_shift_conv_equals_flax_conv(strides):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  conv = nn.Conv(5, (3, 3), strides=strides, padding=1, use_bias=False)
  variables = conv.init(jax.random.key(1), x)
  np.testing.assert_allclose(convnets.ShiftConv(5, strides=strides).apply(variables, x),
                             conv.apply(variables, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", jaxnorm.NORM_KINDS)
def test_norm_conv_net_layout(norm):
  net = convnets.NormConvNet(channels=4, depth=2, norm=norm, keep_prob=0.5)
  variables = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  params = variables["params"]
  assert sorted(params) == ["conv_0", "conv_1", "dense_out", "norm_0", "norm_1", "norm_out"]
  assert params["conv_1"]["kernel"].shape == (3, 3, 4, 4)
  assert net.apply(variables, jnp.ones((3, 8, 8, 1))).shape == (3, 10)


@pytest.mark.parametrize("depth,blocks", [(8, 1), (14, 2), (20, 3), (110, 18)])
def test_resnet_depth_is_6n_plus_2(depth, blocks):
  assert convnets.resnet_blocks(depth) == blocks


@pytest.mark.parametrize("depth", [2, 7, 15])
def test_a_resnet_depth_not_of_the_form_6n_plus_2_is_refused(depth):
  with pytest.raises(ValueError, match="6n \\+ 2"):
    convnets.resnet_blocks(depth)


def _paths(tree):
  return {"/".join(k) for k in traverse_util.flatten_dict(tree)}


def test_resnet_layout_counts_and_shapes():
  net = convnets.NormResNet(depth=8, width=4, n_out=3)
  variables = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  params = variables["params"]
  assert sorted(params) == ["dense_out", "norm_out", "stage0_block0", "stage1_block0",
                            "stage2_block0", "stem", "stem_norm"]
  assert "shortcut" not in params["stage0_block0"]          # same width, stride 1: identity
  assert params["stage1_block0"]["shortcut"]["kernel"].shape == (4, 8)   # 1x1 projection
  assert params["stage2_block0"]["conv_0"]["kernel"].shape == (3, 3, 8, 16)
  mask = jaxnorm.norm_mask(params)
  norm_paths = {p for p, m in traverse_util.flatten_dict(mask).items() if m}
  assert all(p[-1] in ("scale", "bias") and "norm" in p[-2] for p in norm_paths)
  # every norm: stem + 2 per block + the 2 projections' + the output's
  assert len(norm_paths) == 2 * (1 + 2 * 3 + 2 + 1)
  # 8x8 -> 8x8 -> 4x4 -> 2x2; the output keeps a leading batch shape
  assert jax.eval_shape(net.apply, variables, jnp.ones((5, 8, 8, 1))).shape == (5, 3)
  assert "batch_stats" in variables


def test_vgg_spreads_its_convolutions_over_three_stages():
  assert convnets.vgg_stages(1) == (1, 0, 0) and convnets.vgg_stages(8) == (3, 3, 2)
  net = convnets.NormVGG(depth=4, width=4)
  variables = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  params = variables["params"]
  assert [params[f"conv_{k}"]["kernel"].shape[-1] for k in range(4)] == [4, 4, 8, 16]
  assert jax.eval_shape(net.apply, variables, jnp.ones((2, 8, 8, 1))).shape == (2, 10)
  x = jnp.arange(2 * 5 * 5 * 1.0).reshape(2, 5, 5, 1)
  np.testing.assert_array_equal(convnets._max_pool_2x2(x)[0, :, :, 0], [[6, 8], [16, 18]])


@pytest.mark.parametrize("model", [convnets.NormResNet(depth=8, width=4, keep_prob=0.5),
                                   convnets.NormVGG(depth=3, width=4)])
def test_norm_only_fit_leaves_every_frozen_conv_weight_bit_identical(model):
  rng = np.random.RandomState(0)
  x, y = rng.randn(48, 8, 8, 1).astype(np.float32), rng.randint(0, 10, 48)
  task = jaxnorm.Classification(train=(x[:32], y[:32]), test=(x[32:], y[32:]))
  result = jaxnorm.fit(model, task, 2, steps=4, batch_size=8, optimizer=optax.adam(1e-1))
  assert result.frozen_unchanged
  start = jaxnorm.engine.init_states(model, task, [0, 1])
  after = traverse_util.flatten_dict(result.params)
  for path, value in start.frozen.items():
    assert bit_identical(after[path], value), path
  moved = [p for p, v in start.trainable.items() if not bit_identical(after[p], v)]
  assert moved and all(p[-1] in ("scale", "bias") for p in start.trainable)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  assert result.trainable_params == jaxnorm.selection.count_norm_entries(shapes)
