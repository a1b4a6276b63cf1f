"""Compilation policy for programs that run once."""

from __future__ import annotations

from typing import Callable

import jax

# A seed's init drawing at least this many parameters is compiled for speed (`one_shot_jit`).
HEAVY_INIT_VALUES = 1 << 18


def one_shot_jit(fn: Callable, *, heavy: bool = False, **jit_kwargs) -> Callable:
  """`jax.jit` for programs that run once per call site (inits, evaluations).

  On CPU they are compiled at XLA backend optimization level 0: their run time
  is negligible, while full optimization of the many unrolled threefry hashes
  of a vmapped init is slow to compile. The random bits are the same; the
  floating-point transforms of them (e.g. He-normal's inverse error function)
  may round differently in the last bit than under plain `jax.jit`, so every
  program that must agree bit for bit (a fit's init, `engine.init_states`)
  goes through this one. A `heavy` program (the init of a model of at least
  `HEAVY_INIT_VALUES` parameters per seed) is compiled at level 1 instead:
  level 0's unoptimized hashing and inverse error function then cost more than
  level 1's extra compilation once a few seeds are drawn or the cached program
  runs again (its values round as under plain `jax.jit`). Hot loops use plain
  `jax.jit`. Measurements are in WORKSPACE.md ("Decisions worth knowing").

  Args:
    fn: the function to compile.
    heavy: compile at level 1 (a large init) rather than level 0.
    **jit_kwargs: passed to `jax.jit`.

  Returns:
    The jitted function.
  """
  if jax.default_backend() == "cpu":
    jit_kwargs.setdefault("compiler_options", {"xla_backend_optimization_level": int(heavy)})
  return jax.jit(fn, **jit_kwargs)
