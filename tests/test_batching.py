"""Tests for jaxnorm.batching: the cost model behind `batching="auto"`."""

import pytest

import jaxnorm
from jaxnorm import batching

MIB = 1 << 20


@pytest.mark.parametrize("seeds,value,chosen", [
    (64, 128 << 10, ("vmap", 16)),   # bench_fit's small setting: 16 seeds' activations in 2 MiB
    (4, 2 * MIB, ("map", None)),     # its large one: one seed's activation fills the budget
    (8, 256 << 10, ("vmap", None)),  # the main job's widest fit: all 8 seeds fit
    (16, 256 << 10, ("vmap", 8)),
    (5, 3 * MIB, ("map", None)),
])
def test_cpu_choices(seeds, value, chosen):
  assert batching.choose("cpu", seeds, value) == chosen


def test_accelerators_and_full_batch_methods_keep_one_vmap():
  assert batching.choose("gpu", 4, 100 * MIB) == ("vmap", None)
  assert batching.choose("tpu", 4, 100 * MIB) == ("vmap", None)
  assert batching.choose("cpu", 4, 100 * MIB, full_batch=True) == ("vmap", None)
  assert batching.choose("cpu", 4, 0) == ("vmap", None)


def test_the_budget_is_a_parameter():
  assert batching.choose("cpu", 8, MIB, cache_bytes=4 * MIB) == ("vmap", 4)
  assert jaxnorm.choose_batching is batching.choose


def test_cpu_devices_share_the_caches():
  """One device per core (bench_fit's small setting, 32 seeds per device): 1 MiB each."""
  assert batching.choose("cpu", 32, 128 << 10, devices=2) == ("vmap", 8)
  assert batching.choose("cpu", 32, 128 << 10, devices=1) == ("vmap", 16)
  assert batching.choose("cpu", 2, 2 * MIB, devices=2) == ("map", None)
  with pytest.raises(jaxnorm.ConfigError, match="devices"):
    batching.choose("cpu", 8, MIB, devices=0)


def test_bad_seed_count():
  with pytest.raises(jaxnorm.ConfigError, match="seeds"):
    batching.choose("cpu", 0, MIB)
