"""Tests for jaxnorm.extract: an MLP with two hidden layers read from its outputs alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import extract
from jaxnorm import models


def _black_box(layers):
  """The target as the method sees it: float32 outputs of numpy inputs, and a query count."""
  apply = jax.jit(lambda x: models.apply_target(layers, x))
  calls = [0]

  def f(x):
    calls[0] += len(x)
    return np.asarray(apply(jnp.asarray(x, jnp.float32)))
  return f, calls


def _rel_mse(layers, f, d_in, radius=1.0):
  rng = np.random.default_rng(7)
  g = rng.normal(size=(2000, d_in))
  x = radius * g / np.linalg.norm(g, axis=1, keepdims=True) * rng.uniform(size=(2000, 1)) ** (
      1 / d_in)
  y = f(x).astype(np.float64)
  out = np.asarray(models.apply_target(layers, x), np.float64)
  return np.mean((out - y) ** 2) / np.var(y, axis=0).mean()


def test_reads_a_depth_3_target_to_float32_rounding_from_queries_alone():
  target = models.init_target(jax.random.key(3), (3, 6, 6, 2))
  f, calls = _black_box(target)
  got = extract.extract_mlp(f, 3, 2, radius=1.0, seed=0, lines=200, points=1025)
  assert got.planes == 6 and got.widths[0] == 3 and got.widths[-1] == 2
  assert got.queries == calls[0] > 0          # every evaluation is counted
  assert _rel_mse(got.layers, f, 3) < 1e-10   # measured on fresh points of the ball
  # the same function on a larger ball: the reading scales with the radius
  big = extract.extract_mlp(f, 3, 2, radius=2.0, seed=0, lines=200, points=1025)
  assert _rel_mse(big.layers, f, 3, radius=2.0) < 1e-8


@pytest.mark.parametrize("layers,message", [
    ([(np.eye(2, dtype=np.float32), np.zeros(2, np.float32))], "kinks found"),   # linear
    (models.init_target(jax.random.key(0), (3, 6, 2)), "two hidden layers"),   # one hidden layer
])
def test_refuses_what_is_not_a_two_hidden_layer_relu_network(layers, message):
  f, _ = _black_box(layers)
  with pytest.raises(extract.ExtractionError, match=message):
    extract.extract_mlp(f, layers[0][0].shape[1], layers[-1][0].shape[0], lines=100, points=513)


def test_refuses_outputs_of_the_wrong_shape():
  with pytest.raises(extract.ExtractionError, match=r"shape \(1, 3\).*expected \(1, 2\)"):
    extract.extract_mlp(lambda x: np.zeros((len(x), 3), np.float32), 2, 2)


def test_kinks_are_located_from_the_slopes_either_side():
  t = np.linspace(-1, 1, 101)[None]
  y = np.stack([np.maximum(t - 0.3037, 0), 2 * np.maximum(t - 0.3037, 0)], -1)
  y = y + np.abs(t + 0.5)[..., None]                    # a second kink at -0.5 (on a grid point)
  line, pos, jump = extract.kinks_on_lines(y, t, np.finfo(np.float64).eps)
  inside = np.isclose(pos, 0.3037)
  assert inside.sum() == 1 and np.all(line == 0)
  np.testing.assert_allclose(pos[inside], 0.3037, atol=1e-12)
  np.testing.assert_allclose(jump[inside][0], [1.0, 2.0], atol=1e-9)


def test_pad_layers_keeps_the_function_and_refuses_what_does_not_fit():
  layers = [(np.asarray(w, np.float64), np.asarray(b, np.float64))
            for w, b in models.init_target(jax.random.key(1), (3, 4, 5, 2))]
  padded = extract.pad_layers(layers, (3, 6, 7, 2))
  assert [w.shape for w, _ in padded] == [(6, 3), (7, 6), (2, 7)]
  x = np.random.default_rng(0).normal(size=(50, 3))
  np.testing.assert_allclose(models.apply_target(padded, x), models.apply_target(layers, x),
                             atol=1e-6)
  assert extract.pad_layers(layers, (3, 3, 7, 2)) is None     # narrower than the MLP
  assert extract.pad_layers(layers, (3, 6, 2)) is None        # another depth
