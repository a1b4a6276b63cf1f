"""Will it fit? Memory available to a job, and a refusal with the estimate when it won't.

Experiments estimate their peak memory from the config alone (no compiling)
and call `check` before any compute, so an impossible config fails in a second
with a one-line message instead of after minutes with an allocator crash.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from jaxnorm import validate

# Keep this share of the memory free for the runtime, compiled code and the host side.
HEADROOM = 0.8


def available_bytes() -> tuple[int, int]:
  """Memory one device may use, and how many local devices share it.

  Returns:
    `(bytes, sharing)`: on accelerators, the first local device's allocator
    limit (each device has its own, so `sharing` is 1); on CPU, the host's
    available memory (`/proc/meminfo` MemAvailable, else physical memory),
    shared by all local CPU devices.
  """
  device = jax.local_devices()[0]
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), 1
  total = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          total = int(line.split()[1]) * 1024
  except OSError:
    pass
  if total is None:
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return int(total), jax.local_device_count()


def human(n: float) -> str:
  """Bytes as a short string: `1.5 GiB`."""
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if n < 1024 or unit == "TiB":
      return f"{n:.3g} {unit}"
    n /= 1024
  return f"{n:.3g} TiB"


def check(per_device_bytes: float, what: str) -> None:
  """Refuses (`validate.ConfigError`) an estimate that exceeds the usable memory.

  Args:
    per_device_bytes: estimated peak bytes on each device.
    what: names the job in the message.
  """
  limit, sharing = available_bytes()
  need = per_device_bytes * sharing
  if need > HEADROOM * limit:
    where = f"{sharing} devices sharing {human(limit)}" if sharing > 1 else human(limit)
    raise validate.ConfigError(
        f"{what} needs about {human(need)} of memory ({human(per_device_bytes)} per device) but "
        f"only {human(HEADROOM * limit)} is usable ({where}); use fewer seeds or smaller widths, "
        f"batch or eval/fit sizes, or a smaller --seed_chunk")


def tree_bytes(tree) -> int:
  """Bytes of every array (or shape struct) in a pytree."""
  return sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree)
             if hasattr(a, "shape") and not jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key))


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jax.extend.core.Jaxpr):
        yield v


def jaxpr_largest_bytes(jaxpr) -> int:
  """Bytes of the largest single value a jaxpr (or one of its sub-jaxprs) computes.

  Args:
    jaxpr: a `jax.extend.core.Jaxpr`.

  Returns:
    Bytes (0 for a jaxpr that computes no array).
  """
  largest = 0
  for eqn in jaxpr.eqns:
    for v in eqn.outvars:
      largest = max(largest, _value_bytes(getattr(v, "aval", None)))
    for sub in _sub_jaxprs(eqn):
      largest = max(largest, jaxpr_largest_bytes(sub))
  return largest


def _value_bytes(aval) -> int:
  if aval is None or not hasattr(aval, "shape") or not hasattr(aval, "dtype"):
    return 0
  try:
    return int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
  except TypeError:   # key types and the like
    return 0


def jaxpr_bytes(jaxpr) -> int:
  """Sum of the sizes of every value a jaxpr (and its sub-jaxprs) computes: an upper bound
  on the working set of one call, as if nothing were fused or freed.

  Args:
    jaxpr: a `jax.extend.core.Jaxpr` (e.g. `jax.make_jaxpr(f)(...).jaxpr`).

  Returns:
    Bytes.
  """
  total = 0
  for eqn in jaxpr.eqns:
    total += sum(_value_bytes(getattr(v, "aval", None)) for v in eqn.outvars)
    for sub in _sub_jaxprs(eqn):
      total += jaxpr_bytes(sub)
  return total
