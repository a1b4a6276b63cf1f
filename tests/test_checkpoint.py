"""Tests for jaxnorm.checkpoint: a fit stopped and resumed is bit-identical to one never stopped."""

import errno

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import jaxnorm
from jaxnorm import checkpoint
from jaxnorm.trees import bit_identical
from tests.test_fitspec import METHODS
from tests.test_fitspec import SEEDS   # the same specs: their programs are compiled once

TINY, DISTILL = METHODS["adam"], METHODS["distill"]   # 2 chunks; 1 chunk after the start


def _fields(r: jaxnorm.FitResult):
  return (r.rel_mse, r.loss_curve, r.params, r.batch_stats, r.diverged, r.targets)


def _fit(spec, directory, stop=None, every=1):
  ckpts = checkpoint.Checkpoints(str(directory), checkpoint.Control(every_chunks=every,
                                                                    stop_after_chunks=stop))
  try:
    return jaxnorm.fit_seeds(spec, SEEDS, checkpoint=checkpoint.FitSlot(ckpts, {"unit": 0}))
  finally:
    ckpts.close()


@pytest.mark.parametrize("spec,stop,every", [(TINY, 1, 1), (TINY, 1, 2), (DISTILL, 1, 1)],
                         ids=["adam", "adam-every-2", "distill"])
def test_stop_and_resume_is_bit_identical(tmp_path, spec, stop, every):
  straight = jaxnorm.fit_seeds(spec, SEEDS)
  with pytest.raises(checkpoint.Preempted, match=f"after {stop} chunks"):
    _fit(spec, tmp_path, stop=stop, every=every)
  resumed = _fit(spec, tmp_path, every=every)
  assert bit_identical(_fields(resumed), _fields(straight))
  assert resumed.frozen_unchanged
  # a start's report (distill: its students and construction) survives the resume
  assert resumed.start_report == straight.start_report
  assert bool(straight.start_report) == (spec.optimizer == "distill")


def test_a_checkpoint_of_another_unit_is_not_restored(tmp_path):
  with pytest.raises(checkpoint.Preempted):
    _fit(TINY, tmp_path, stop=1)
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  try:
    slot = checkpoint.FitSlot(ckpts, {"unit": 1})
    assert slot.restore(None, None) is None
  finally:
    ckpts.close()


def test_prng_keys_and_shardings_round_trip(tmp_path):
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  tree = {"key": jax.random.split(jax.random.key(7), 3), "x": jnp.arange(6.0).reshape(3, 2),
          "none": None}
  ckpts.save({"unit": 0}, tree)
  ckpts.close()
  again = checkpoint.Checkpoints(str(tmp_path))
  assert again.meta == {"unit": 0}
  like = jax.tree.map(jnp.zeros_like, {"key": tree["key"], "x": tree["x"], "none": None})
  restored = again.restore_state(like)
  again.close()
  assert jax.dtypes.issubdtype(restored["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(restored["key"]),
                                jax.random.key_data(tree["key"]))
  np.testing.assert_array_equal(restored["x"], tree["x"])
  assert restored["x"].sharding == tree["x"].sharding


def test_bad_control_is_a_config_error():
  with pytest.raises(jaxnorm.ConfigError, match="stop_after_chunks"):
    checkpoint.check_control(checkpoint.Control(stop_after_chunks=0))
  with pytest.raises(jaxnorm.ConfigError, match="checkpoint_every"):
    checkpoint.check_control(checkpoint.Control(every_chunks=0))


def test_a_checkpoint_from_another_device_count_is_refused(tmp_path):
  with pytest.raises(checkpoint.Preempted):
    _fit(TINY, tmp_path, stop=1)
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  try:
    slot = checkpoint.FitSlot(ckpts, {"unit": 0})
    with pytest.raises(jaxnorm.ConfigError, match="another number of devices"):
      slot.restore(None, np.zeros((2, 4)))   # 3 seeds padded to 4, as on 4 devices
  finally:
    ckpts.close()


def test_a_full_disk_inside_an_orbax_save_is_the_oserror_behind_it(tmp_path, monkeypatch):
  real = ocp.CheckpointManager.save
  calls = []

  def save(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 2:   # what Orbax raises when a tensorstore write hits a full disk
      raise ValueError("RESOURCE_EXHAUSTED: Error writing \"0/0.0\" in OCDBT database: Failed to "
                       "write 8252 bytes to file 6: No space left on device [os_error_code='28']")
    return real(self, *args, **kwargs)
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  ckpts = checkpoint.Checkpoints(str(tmp_path))
  ckpts.save({"unit": 0}, [jnp.ones(3)])
  with pytest.raises(OSError) as info:
    ckpts.save({"unit": 1}, [jnp.ones(3)])
  assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path)
  ckpts.close()
  reopened = checkpoint.Checkpoints(str(tmp_path))
  assert reopened.meta == {"unit": 0}   # the complete step is intact
  reopened.close()
