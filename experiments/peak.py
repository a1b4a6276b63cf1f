"""The machine's measured float32 matrix-multiply rate and memory bandwidth: the roofline's
yardsticks."""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
  """The machine's float32 matrix-multiply rate: best of `repeats` n x n GEMMs.

  Args:
    n: side of the square matrices.
    repeats: timed products (after one to compile); the fastest counts.

  Returns:
    GFLOP/s (`2 n^3` flops per product) of XLA's matrix multiply on the
    default device.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  mm(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    mm(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n ** 3 / best / 1e9


def memory_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
  """The machine's streaming memory bandwidth: best of `repeats` passes of `x <- 2 x`.

  Args:
    megabytes: size of `x`, well beyond the caches: each pass reads `x` from
      memory and writes it back (in place: the buffer is donated, so no pass
      pays for a fresh allocation's page faults).
    repeats: timed passes (after one to compile); the fastest counts.

  Returns:
    GB/s, counting the bytes read and the bytes written.
  """
  n = megabytes * (1 << 20) // 4
  scale = jax.jit(lambda v: 2.0 * v, donate_argnums=0)
  x = scale(jnp.ones((n,), jnp.float32))
  x.block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    x = scale(x)
    x.block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * 4 * n / best / 1e9
