"""Tests for jaxnorm.distill: same-shape students fitted to a teacher; the linear-regime shifts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm
from jaxnorm import distill
from jaxnorm import domain
from jaxnorm import freeze
from jaxnorm.jit import one_shot_jit

WIDTHS = (3, 4, 2)


@pytest.fixture(scope="module")
def teacher_data():
  teacher = one_shot_jit(jaxnorm.init_target, static_argnums=1)(jax.random.key(3), WIDTHS)
  x = one_shot_jit(domain.sample_inputs, static_argnums=(1, 2))(jax.random.key(4), 64, WIDTHS[0])
  y = jaxnorm.apply_target(teacher, x)
  return teacher, x, y


def test_student_recovers_a_same_shape_teacher(teacher_data):
  teacher, x, y = teacher_data
  weight = 1.0 / (y.size * jnp.var(y, axis=0).mean())
  fit = jax.jit(lambda k: distill.fit_student(k, WIDTHS, x, y, weight, restarts=12, steps=20))
  student, loss = fit(jax.random.key(5))
  assert float(loss) < 1e-6, float(loss)
  held = np.random.default_rng(6).uniform(-0.5, 0.5, size=(256, WIDTHS[0])).astype(np.float32)
  err = jaxnorm.apply_target(student, held) - jaxnorm.apply_target(teacher, held)
  assert float(jnp.mean(err ** 2) / jnp.var(jaxnorm.apply_target(teacher, held))) < 1e-4


@pytest.mark.parametrize("radius", [1.0, None])
def test_linear_regime_norms_make_the_wide_relus_the_identity(radius):
  model = jaxnorm.NormMLP((3, 12, 4, 8, 2))
  params = one_shot_jit(model.init)(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  trainable, frozen = freeze.partition(params, freeze.norm_mask(params))
  rng = np.random.default_rng(0)
  trainable = {p: v + 0.3 * rng.normal(size=v.shape).astype(np.float32)   # not the defaults
               for p, v in trainable.items()}
  x = rng.uniform(-0.5, 0.5, size=(200, 3)).astype(np.float32)   # inside the unit ball
  new = jax.jit(distill.linear_regime_norms, static_argnums=3)(trainable, frozen, x, radius)
  for path in trainable:
    if path[-1] == "scale":
      assert np.array_equal(new[path], trainable[path])   # only shifts move

  def forward(norms, wide_relu):
    h = x
    for k in range(4):
      z = (h @ frozen[(f"dense_{k}", "kernel")]) * norms[(f"norm_{k}", "scale")]
      z = z + norms[(f"norm_{k}", "bias")]
      if k == 0 or k == 2:
        assert not wide_relu or float(z.min()) >= 0   # wide units in their linear regime
      h = jax.nn.relu(z) if (k < 3 and (wide_relu or k % 2 == 1)) else z
    return h

  out = model.apply({"params": freeze.combine(new, frozen)}, x)
  np.testing.assert_allclose(out, forward(new, wide_relu=True), atol=1e-5)
  # The same function as the old norms without the wide ReLUs and without the wide
  # shifts: the next layer's shift cancels the new constant exactly.
  linear = dict(trainable)
  for k in (0, 2):
    linear[(f"norm_{k}", "bias")] = jnp.zeros_like(linear[(f"norm_{k}", "bias")])
  np.testing.assert_allclose(out, forward(linear, wide_relu=False), atol=1e-4)
