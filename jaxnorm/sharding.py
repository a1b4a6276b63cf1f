"""The seed axis spread over every device: a 1-D mesh, padding, `jax.shard_map`.

Seeds are independent, so a fit of `S` seeds on `D` devices is `D` copies of
the single-device program, each on `S / D` seeds, with no communication:
`jax.shard_map` over a one-axis `Mesh` named `"seeds"`. A seed count that `D`
does not divide is padded (by repeating the last seed id) and the padding is
dropped from every result. The same code runs on one CPU, a GPU, a TPU slice or
several hosts (after `jax.distributed.initialize`): arrays are built with
`jax.make_array_from_callback`, so each process supplies only its own shards,
and results are gathered with `multihost_utils.process_allgather`.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnorm import validate

SEED_AXIS = "seeds"


def cpu_cores() -> int:
  """The CPU cores this process may run on (its affinity where the OS has one; what XLA's CPU
  thread pool uses)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:   # no affinity on this OS (macOS)
    return os.cpu_count() or 1


def set_cpu_devices(count: Optional[int] = None) -> int:
  """Makes JAX's CPU backend show `count` devices (default: one per core this process may use).

  A fit spreads its seeds over every device, so with one CPU device per core
  the seed shards run side by side, each program on its own core, instead of
  one program whose small operations leave cores idle. A computation placed on
  one device still uses every core: the CPU devices share one thread pool.
  GPU and TPU devices are unaffected (the CPU backend exists beside them).
  Call this before JAX's first computation: the device count is fixed when
  JAX starts. It sets `jax_num_cpu_devices`, which overrides
  `XLA_FLAGS=--xla_force_host_platform_device_count`.

  Args:
    count: CPU devices; `None` for one per core (`cpu_cores`).

  Returns:
    The count set.

  Raises:
    validate.ConfigError: `count` below 1, or JAX has already started.
  """
  count = cpu_cores() if count is None else validate.positive_int("cpu devices", count)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    raise validate.ConfigError(
        "the CPU device count must be set before JAX's first computation (it is fixed when JAX "
        "starts)") from None
  return count


def seed_mesh(devices: Optional[int | Sequence[jax.Device]] = None,
              seeds: Optional[int] = None) -> Mesh:
  """A one-axis mesh (`"seeds"`) over the devices the seeds are spread on.

  Args:
    devices: `None` or `0` for every device of every process; a positive int
      `n` for the first `n` devices (`jax.devices()` order); or a list of
      devices.
    seeds: with `devices` `None` or `0` in a single-process job, the number of
      seeds to spread: a mesh of at most that many devices, so that no device
      holds padding alone (e.g. one seed on a CPU split into one device per
      core). Ignored otherwise.

  Returns:
    The mesh.

  Raises:
    validate.ConfigError: asking for more devices than there are.
  """
  available = jax.devices()
  if devices is None or (isinstance(devices, int) and devices == 0):
    chosen = available
    if seeds is not None and jax.process_count() == 1:
      chosen = available[:max(1, seeds)]
  elif isinstance(devices, int):
    if isinstance(devices, bool) or devices < 0:
      raise validate.ConfigError(f"devices must be 0 (all) or a positive count, got {devices!r}")
    if devices > len(available):
      raise validate.ConfigError(
          f"asked for {devices} devices but this job has {len(available)} "
          f"({jax.default_backend()})")
    chosen = available[:devices]
  else:
    chosen = list(devices)
  return Mesh(np.asarray(chosen), (SEED_AXIS,))


def padded_count(n: int, mesh: Mesh) -> int:
  """The smallest multiple of the mesh size that holds `n` seeds."""
  return -(-n // mesh.size) * mesh.size


def pad_seed_ids(seed_ids: np.ndarray, mesh: Mesh) -> np.ndarray:
  """`seed_ids` padded to a multiple of the mesh size by repeating the last id."""
  extra = padded_count(len(seed_ids), mesh) - len(seed_ids)
  return np.concatenate([seed_ids, np.repeat(seed_ids[-1:], extra)])


def seed_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (seed) axis split over the mesh, everything else whole."""
  return NamedSharding(mesh, P(SEED_AXIS))


def distribute(x: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array (same on every process) as a global array split along its seed axis."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, seed_sharding(mesh), lambda index: x[index])


def replicate(tree, mesh: Mesh):
  """Host arrays (same on every process) as global arrays held whole by every device."""
  sharding = NamedSharding(mesh, P())

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(put, tree)


def over_seeds(fn: Callable, mesh: Mesh, fixed_args: int = 0) -> Callable:
  """`fn(*fixed, per_seed)` run on each device's share of the seed axis.

  Args:
    fn: a function of `fixed_args` arguments shared by all seeds (replicated)
      and one pytree whose leaves all carry the leading seed axis; it must
      itself be batched over that axis (e.g. a `jax.vmap`) and return pytrees
      with the leading seed axis.
    mesh: the seed mesh.
    fixed_args: how many leading arguments are shared.

  Returns:
    The `jax.shard_map` of `fn` (to be jitted by the caller).
  """
  # No collectives: seeds never talk to each other. `check_vma=False` lets the
  # loops inside start from constants (replicated) and carry per-seed values.
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(),) * fixed_args + (P(SEED_AXIS),),
                       out_specs=P(SEED_AXIS), check_vma=False)


def shard_sizes(x: jax.Array) -> tuple[int, ...]:
  """How many seeds (leading-axis entries) each addressable device holds, by device id."""
  shards = sorted(x.addressable_shards, key=lambda s: s.device.id)
  return tuple(int(s.data.shape[0]) for s in shards)


def to_host(tree, n: Optional[int] = None):
  """Every leaf as a numpy array on this host (gathered across processes), first `n` seeds.

  Args:
    tree: a pytree of (global) arrays with a leading seed axis.
    n: keep the first `n` entries of that axis (drops padding); `None` keeps all.

  Returns:
    The same tree of numpy arrays (typed PRNG keys as their `key_data`).
  """

  def get(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return to_host(jax.random.key_data(x), n)   # typed keys as their raw key data
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = multihost_utils.process_allgather(x, tiled=True)
    x = np.asarray(x)
    return x if n is None or x.ndim == 0 else x[:n]
  return jax.tree.map(get, tree)
