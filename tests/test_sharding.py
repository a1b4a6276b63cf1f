"""Tests for jaxnorm.sharding: the seed axis over several devices gives the one-device results.

The four-device checks run `tests/four_devices.py` in a subprocess (the device
count is fixed when JAX starts; it sets `jax_num_cpu_devices=4` first), which
prints its measurements as JSON; the two-process check runs
`python -m experiments.fit_target` twice with
`XLA_FLAGS=--xla_force_host_platform_device_count=2`.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxnorm import sharding
from jaxnorm import validate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices=None):
  """The subprocesses' environment; `devices`: CPU devices set by XLA_FLAGS (None: unset)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  return tmp_path_factory.mktemp("fit_target")


@pytest.fixture(scope="module")
def four_devices(workdirs):
  # four_devices.main sets jax_num_cpu_devices=4 itself, before JAX starts.
  proc = subprocess.run([sys.executable, "-m", "tests.four_devices", str(workdirs)], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


def test_two_hosts_write_what_one_host_writes(four_devices, workdirs):
  """Two processes x 2 devices (jax.distributed on localhost) = one process x 4 devices."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  flags = ["--target_widths=3,4,2", "--width_multipliers=1", "--seeds=5", "--steps=10",
           "--chunk_steps=5", "--batch_size=16", "--eval_size=64",
           "--optimizers=construct", "--distributed",
           f"--coordinator_address=localhost:{port}", "--num_processes=2",
           f"--workdir={workdirs / 'two_processes'}"]
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.fit_target", *flags,
                             f"--process_id={i}"], cwd=ROOT, env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "JAX process 1 / 2" in outs[1][1]
  one = (workdirs / "one_process" / "results.json").read_bytes()
  assert (workdirs / "two_processes" / "results.json").read_bytes() == one


def test_four_devices_match_one_device(four_devices):
  one, four = four_devices["one"], four_devices["all"]
  assert one["devices"] == 1 and four["devices"] == 4
  assert four["seeds"] == list(range(6))          # padding dropped
  np.testing.assert_allclose(four["rel_mse"], one["rel_mse"], rtol=1e-5)
  np.testing.assert_allclose(four["curve"], one["curve"], rtol=1e-5)
  np.testing.assert_allclose(four["gamma"], one["gamma"], rtol=1e-5, atol=1e-6)
  assert one["frozen"] and four["frozen"]


def test_a_user_nnx_model_on_four_devices_matches_one(four_devices):
  one, four = four_devices["user_one"], four_devices["user_all"]
  assert four["per_device"] == [2, 2, 2, 2] and one["per_device"] == [5]
  np.testing.assert_allclose(four["curve"], one["curve"], rtol=1e-5)
  np.testing.assert_allclose(four["mean"], one["mean"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(four["acc"], one["acc"], atol=1e-6)
  assert one["frozen"] and four["frozen"] and np.asarray(four["mean"]).shape == (5, 16)


def test_each_device_holds_its_share_of_seeds(four_devices):
  assert four_devices["one"]["per_device"] == [6]
  assert four_devices["all"]["per_device"] == [2, 2, 2, 2]   # 6 seeds padded to 8


def test_fewer_seeds_than_devices_take_one_device_each_and_no_padding(four_devices):
  few = four_devices["few"]
  assert few["per_device"] == [1, 1, 1] and few["devices"] == 3
  np.testing.assert_allclose(few["rel_mse"], four_devices["one"]["rel_mse"][:3], rtol=1e-5)


def test_seed_chunks_match_one_vmap(four_devices):
  np.testing.assert_allclose(four_devices["chunked"]["rel_mse"], four_devices["one"]["rel_mse"],
                             rtol=1e-5)


def test_batched_reconstruction_sharded_matches(four_devices):
  assert four_devices["construct_gap"] < 1e-5
  assert four_devices["construct_shapes"][0] == [3, 24]   # padding dropped
  assert four_devices["lstsq_solver"] == "cg (lstsq for seeds [0, 1, 2])"
  assert four_devices["lstsq_gap"] < 1e-4   # the same min-norm norms, solved another way


def test_experiment_records_devices(four_devices):
  assert four_devices["fit_target_devices"] == 4


def test_pad_seed_ids_repeats_the_last():
  mesh = sharding.seed_mesh(1)
  assert sharding.pad_seed_ids(np.array([3, 5]), mesh).tolist() == [3, 5]
  assert sharding.padded_count(5, mesh) == 5


def test_set_cpu_devices_refuses_a_started_jax_or_a_bad_count():
  """The success path (a split CPU) runs in experiments/common_test.py, in a fresh process."""
  sharding.seed_mesh()   # JAX has started
  with pytest.raises(validate.ConfigError, match="before JAX's first computation"):
    sharding.set_cpu_devices(2)
  with pytest.raises(validate.ConfigError, match="positive"):
    sharding.set_cpu_devices(0)


def test_cpu_cores_is_the_affinity_or_the_cpu_count_where_there_is_none(monkeypatch):
  assert sharding.cpu_cores() == len(os.sched_getaffinity(0))
  monkeypatch.delattr(os, "sched_getaffinity")
  monkeypatch.setattr(os, "cpu_count", lambda: 7)
  assert sharding.cpu_cores() == 7


def test_a_mesh_for_fewer_seeds_than_devices():
  assert sharding.seed_mesh(None, seeds=1).size == 1
  assert sharding.seed_mesh(1, seeds=5).size == 1


def test_too_many_devices_is_a_config_error():
  with pytest.raises(validate.ConfigError, match="asked for 99 devices"):
    sharding.seed_mesh(99)
  with pytest.raises(validate.ConfigError, match="devices"):
    sharding.seed_mesh(-1)
