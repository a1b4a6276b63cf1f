"""How the seeds of a fit are batched: `vmap`, `lax.map`, or `lax.map` over vmapped chunks.

A fit runs the same per-seed program for every seed. On an accelerator one
`jax.vmap` over all seeds fills the device. On a CPU it does not always pay:
`vmap` turns every matmul of a step into a batched one whose operands are S
times larger, and once a step's activations for all seeds outgrow the cores'
caches, S plain matmuls (`lax.map`, one seed at a time) or vmapped chunks of a
few seeds run faster (measurements in WORKSPACE.md, issue 16). The cost model
of `choose` keeps the seeds computed at once within `cache_bytes` of their
largest activation, the caches shared by the CPU devices the seeds are spread
over (one device per core, `jaxnorm.set_cpu_devices`, gives each its share):

    at_once = cache_bytes / devices // (bytes of one seed's largest value in a step)
    at_once >= seeds  -> vmap over all seeds
    at_once <= 1      -> lax.map, one seed at a time
    otherwise         -> lax.map over vmapped chunks of `at_once` seeds

It applies to minibatch (first-order) methods on the CPU, where it was
measured; full-batch methods (L-BFGS, Levenberg–Marquardt, distill) and every
accelerator keep one `vmap`. The choice changes the order of floating-point
sums only: results agree with `vmap`'s to float32 rounding, not bit for bit.
"""

from __future__ import annotations

from typing import Optional

from jaxnorm import validate

BATCHINGS = ("auto", "vmap", "map")
# The cores' L2 caches on the 2-core CPU of the measurements (2 x 1 MiB); a fixed number, so a
# fit batches (and rounds) the same way on every CPU.
CPU_CACHE_BYTES = 2 << 20


def choose(platform: str, seeds: int, value_bytes: int, *, full_batch: bool = False,
           cache_bytes: Optional[int] = None, devices: int = 1) -> tuple[str, Optional[int]]:
  """The batching of `batching="auto"`: `(batching, seed_chunk)` for `jaxnorm.fit`.

  Args:
    platform: the devices' platform (`"cpu"`, `"gpu"`, `"tpu"`).
    seeds: seeds on one device.
    value_bytes: bytes of the largest value one seed's training step computes
      (`Programs.step_value_bytes`).
    full_batch: the method is full-batch (not measured: one `vmap`).
    cache_bytes: what the seeds computed at once on all of this process's
      devices may hold of that value (default `CPU_CACHE_BYTES`).
    devices: this process's devices running at once (each gets
      `cache_bytes / devices`).

  Returns:
    `("vmap", None)`, `("map", None)` or `("vmap", at_once)`.
  """
  validate.positive_int("seeds", seeds)
  validate.positive_int("devices", devices)
  if platform != "cpu" or full_batch or value_bytes <= 0:
    return "vmap", None
  at_once = (CPU_CACHE_BYTES if cache_bytes is None else cache_bytes) // devices // value_bytes
  if at_once >= seeds:
    return "vmap", None
  if at_once <= 1:
    return "map", None
  return "vmap", int(at_once)
