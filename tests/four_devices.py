"""The four-device half of tests/test_sharding.py, run in its own process (not a test file).

    python -m tests.four_devices WORKDIR

`main` sets four CPU devices (`jax_num_cpu_devices`, before any JAX
computation: the device count is fixed when JAX starts), runs the same fits
on one device and on all four, and prints its measurements as one line
`RESULT{json}`, which test_sharding.py reads. `WORKDIR/one_process` gets the
`fit_target` experiment's outputs, compared there with a two-process run.
"""

import json
import sys

import jax
import numpy as np
from flax import nnx

import jaxnorm
from experiments.fit_target import experiment as fit_target
from jaxnorm import construct_batch
from jaxnorm import sharding


class User(nnx.Module):
  """A user's NNX model with BatchNorm (per-seed statistics)."""

  def __init__(self, rngs):
    self.a, self.bn = nnx.Linear(4, 16, rngs=rngs), nnx.BatchNorm(16, rngs=rngs)
    self.b = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.b(nnx.relu(self.bn(self.a(x))))


def main(workdir):
  jax.config.update("jax_num_cpu_devices", 4)
  assert jax.device_count() == 4, jax.devices()
  out = {}
  spec = jaxnorm.FitSpec(target_widths=(3, 4, 2), hidden_widths=(12, 8), steps=20,
                         chunk_steps=10, batch_size=16, eval_size=64)
  for name, seeds, kwargs in (("one", 6, dict(devices=1)), ("all", 6, {}),
                              ("chunked", 6, dict(seed_chunk=1)), ("few", 3, {})):
    r = jaxnorm.fit_seeds(spec, range(seeds), **kwargs)
    out[name] = dict(rel_mse=r.rel_mse.tolist(), curve=r.loss_curve.tolist(),
                     devices=r.devices, per_device=list(r.seeds_per_device),
                     frozen=bool(r.frozen_unchanged), seeds=r.seed_ids.tolist(),
                     gamma=np.asarray(r.params["norm_0"]["scale"]).tolist())
  # batched reconstruction: 3 seeds over 4 devices (one padded) vs no mesh
  key = jax.random.key(0)
  ks = jax.random.split(key, 4)
  target = [(jax.random.normal(ks[0], (3, 4, 3)), jax.random.normal(ks[1], (3, 4)))]
  frozen = [jax.random.normal(ks[2], (3, 24, 3)), jax.random.normal(ks[3], (3, 4, 24))]
  a = construct_batch.reconstruct_batch(target, frozen, radius=1.0)
  b = construct_batch.reconstruct_batch(target, frozen, radius=1.0,
                                        mesh=sharding.seed_mesh())
  out["construct_gap"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                             for x, y in zip(a.gammas + a.betas, b.gammas + b.betas))
  out["construct_shapes"] = [list(np.shape(g)) for g in b.gammas]
  # seeds where cg misses (cut to 2 iterations), rebuilt by lstsq: the same split over devices
  c = construct_batch.reconstruct_batch(target, frozen, radius=1.0, maxiter=2,
                                        mesh=sharding.seed_mesh())
  out["lstsq_solver"] = c.blocks[0].solver
  out["lstsq_gap"] = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                         for x, y in zip(a.gammas + a.betas, c.gammas + c.betas))
  # The construction through the engine (its norms placed on every host's devices, one step of
  # the sharded fit program, results gathered and written); adam's fits over four devices are
  # compared above, so the two-process run need not compile them again.
  config = fit_target.Config(target_widths=(3, 4, 2), width_multipliers=(1.0,), seeds=5,
                             steps=10, chunk_steps=5, batch_size=16, eval_size=64,
                             optimizers=("construct",))
  # A user's NNX model with BatchNorm (per-seed statistics), 5 seeds, through jaxnorm.fit.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 4)).astype(np.float32)
  task = jaxnorm.Classification(train=(x, (x[:, 0] > 0).astype(np.int32)),
                                test=(x, (x[:, 0] > 0).astype(np.int32)))
  for name, kwargs in (("user_one", dict(devices=1)), ("user_all", {})):
    r = jaxnorm.fit(lambda rngs: User(rngs), task, 5, steps=10, chunk_steps=5, batch_size=16,
                    **kwargs)
    out[name] = dict(curve=r.loss_curve.tolist(), acc=r.test_acc.tolist(),
                     per_device=list(r.seeds_per_device), frozen=bool(r.frozen_unchanged),
                     mean=np.asarray(r.batch_stats["bn"]["mean"]).tolist())
  out["fit_target_devices"] = fit_target.run(config, str(workdir) + "/one_process")["devices"]
  print("RESULT" + json.dumps(out))


if __name__ == "__main__":
  main(sys.argv[1])
