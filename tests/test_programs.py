"""Tests for jaxnorm.programs: compiled programs are cached by plan, and never by identity."""

import flax.linen as nn
import jax.numpy as jnp

import jaxnorm
from jaxnorm import methods
from jaxnorm import programs

TASK = jaxnorm.Regression(lambda x: jnp.sin(x[:, :1]), in_dim=2, eval_size=16)


def _plan(model, task=TASK):
  sample = task.sample()
  return programs.Plan(model, (sample.shape, sample.dtype), task,
                       methods.Optax(methods.default_optimizer(10)), "norm", 8, 0, "vmap",
                       jaxnorm.seed_mesh(1), None)


def test_equal_plans_share_programs_and_isolation_restores_them():
  net = jaxnorm.NormMLP((2, 8, 1))
  first = programs.cache(_plan(net))
  assert programs.cache(_plan(jaxnorm.NormMLP((2, 8, 1)))) is first   # equal, not identical
  assert programs.cache(_plan(jaxnorm.NormMLP((2, 9, 1)))) is not first
  with programs.cache.isolated():
    assert programs.cache(_plan(net)) is not first
  assert programs.cache(_plan(net)) is first


class Unhashable(nn.Module):
  widths: list   # a list field makes the module unhashable

  @nn.compact
  def __call__(self, x):
    return nn.LayerNorm()(nn.Dense(self.widths[0])(x))


def test_an_unhashable_plan_is_never_cached():
  model = Unhashable([1])
  assert programs.cache(_plan(model)) is not programs.cache(_plan(model))


def test_footprint_and_checks_are_computed_once_per_plan():
  p = programs.cache(_plan(jaxnorm.NormMLP((2, 8, 1))))
  assert p.footprint is p.footprint and all(b > 0 for b in p.footprint[:2])
  p.check()
  p.check()   # cached: no second trace


def test_rebatched_programs_share_the_shape_only_work():
  with programs.cache.isolated():
    p = programs.cache(_plan(jaxnorm.NormMLP((2, 8, 1))))
    p.check()
    footprint, largest = p.footprint, p.step_value_bytes
    q = p.rebatched("map", None)
    assert (q.plan.batching, q.plan.seed_chunk) == ("map", None) and q is not p
    assert q.footprint is footprint and q.step_value_bytes == largest and q._checked
    assert p.rebatched("vmap", None) is p   # the same plan: the cached programs themselves


def test_a_large_init_is_compiled_for_speed_and_still_agrees_with_init_states():
  from jaxnorm import engine, jit, trees  # pylint: disable=g-import-not-at-top
  wide = jaxnorm.NormMLP((2, jit.HEAVY_INIT_VALUES // 2, 1))   # 2 * width kernel entries
  assert programs.cache(_plan(wide)).heavy_init
  assert not programs.cache(_plan(jaxnorm.NormMLP((2, 8, 1)))).heavy_init
  fitted = jaxnorm.fit(wide, TASK, [0, 1], steps=1, batch_size=4)
  alone = engine.init_states(wide, TASK, [1])
  assert len(alone.frozen) == 2
  for (layer, name), kernel in alone.frozen.items():   # seed 1's, fitted beside seed 0
    assert trees.bit_identical(fitted.params[layer][name][1:], kernel), layer
