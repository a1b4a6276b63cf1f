"""Input checks that run before any compute, with one-line messages.

Every check raises `ConfigError` (a `ValueError`) naming the bad value; the
experiment mains turn it into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Sequence

import jax
import numpy as np


class ConfigError(ValueError):
  """A bad argument, flag or combination, found before any compute."""


def positive_int(name: str, value: Any) -> int:
  """Returns `value` if it is an integer in [1, 2**31) (counts and sizes are int32 on the
  device), else raises `ConfigError`."""
  if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 1:
    raise ConfigError(f"{name} must be a positive integer, got {value!r}")
  if int(value) >= 2 ** 31:
    raise ConfigError(f"{name} must be below 2**31 (an int32 on the device), got {int(value)}")
  return int(value)


def non_negative_int(name: str, value: Any) -> int:
  """Returns `value` if it is an integer >= 0, else raises `ConfigError`."""
  if isinstance(value, bool) or not hasattr(value, "__index__") or int(value) < 0:
    raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
  return int(value)


def positive_ints(name: str, values: Sequence[Any], min_len: int = 1) -> tuple[int, ...]:
  """Returns `values` as a tuple of positive ints (at least `min_len` of them)."""
  values = tuple(values)
  if len(values) < min_len:
    raise ConfigError(f"{name} needs at least {min_len} entries, got {list(values)!r}")
  for v in values:
    if isinstance(v, bool) or not hasattr(v, "__index__") or int(v) < 1:
      raise ConfigError(f"{name} must be positive integers, got {v!r} in {list(values)!r}")
  return tuple(int(v) for v in values)


# `jax.random.key(seed)` keeps 32 bits of `seed` (2**32 gives the key of 0), and seed ids are
# folded in as int32: larger values would silently name another seed.
MAX_SEED = 2 ** 32 - 1
MAX_SEED_ID = 2 ** 31 - 1


# Sizes beyond these are refused before any compute: they would compile or run for hours.
MAX_LAYERS = 64        # layers of an MLP (target or frozen), blocks of a conv net
MAX_SWEEP = 64         # entries of a list of widths, depths, ratios or probabilities to sweep


def at_most(name: str, value: int, limit: int, why: str) -> int:
  """Returns `value` if it is `<= limit`, else raises `ConfigError` saying `why`."""
  if value > limit:
    raise ConfigError(f"{name} is {value}, more than {limit} ({why})")
  return value


def prng_seed(name: str, value: Any) -> int:
  """Returns `value` if it is an integer in [0, 2**32) (a seed `jax.random.key` keeps whole)."""
  value = non_negative_int(name, value)
  if value > MAX_SEED:
    raise ConfigError(f"{name} must be below 2**32 (jax.random.key keeps 32 bits), got {value}")
  return value


def seed_ids(values: Iterable[Any]):
  """Returns `values` as a 1-D numpy int64 array of distinct seed ids in [0, 2**31), at least one.

  Raises:
    ConfigError: no ids, a non-integer, a negative or too large id, or a repeated id.
  """
  values = list(values)
  if not values:
    raise ConfigError("need at least one seed, got 0")
  if any(isinstance(v, bool) or not hasattr(v, "__index__") for v in values):
    raise ConfigError(f"seed ids must be non-negative integers, got {values}")
  ids = [int(v) for v in values]
  bad = [v for v in ids if not 0 <= v <= MAX_SEED_ID]
  if bad:
    raise ConfigError(f"seed ids must be integers in [0, 2**31) (they are folded into the key as "
                      f"int32), got {bad[0]}")
  if len(set(ids)) != len(ids):
    twice = sorted({v for v in ids if ids.count(v) > 1})
    raise ConfigError(f"seed ids must differ: {twice} given more than once")
  return np.asarray(ids, np.int64)


def positive_float(name: str, value: Any) -> float:
  """Returns `value` if it is a finite number > 0, else raises `ConfigError`."""
  try:
    f = float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{name} must be a positive number, got {value!r}") from None
  if not math.isfinite(f) or f <= 0:
    raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
  return f


def positive_floats(name: str, values: Sequence[Any]) -> tuple[float, ...]:
  """Returns `values` as a non-empty tuple of positive finite floats."""
  values = tuple(values)
  if not values:
    raise ConfigError(f"{name} needs at least one entry")
  return tuple(positive_float(name, v) for v in values)


def probability(name: str, value: Any) -> float:
  """Returns `value` if it lies in (0, 1], else raises `ConfigError`."""
  try:
    f = float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{name} must be a probability in (0, 1], got {value!r}") from None
  if not 0.0 < f <= 1.0:
    raise ConfigError(f"{name} must be a probability in (0, 1], got {value!r}")
  return f


def one_of(name: str, value: Any, choices: Iterable[str]) -> str:
  """Returns `value` if it is one of `choices`, else raises `ConfigError`."""
  choices = tuple(choices)
  if value not in choices:
    raise ConfigError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
  return value


def target_layers(target, widths: Sequence[int] | None = None) -> tuple[int, ...]:
  """Checks that `[(W[out, in], b[out]), ...]` chains; returns its widths.

  Args:
    target: the target layers in math layout.
    widths: if given, the widths `[d_0, ..., d_l]` the target must have.

  Returns:
    The widths `(d_0, ..., d_l)` of the target.
  """
  target = list(target)
  if not target:
    raise ConfigError("target must have at least one layer")
  dims = []
  for k, layer in enumerate(target):
    if len(layer) != 2:
      raise ConfigError(f"target layer {k} must be a (weight, bias) pair")
    w, b = layer
    w_shape, b_shape = tuple(getattr(w, "shape", ())), tuple(getattr(b, "shape", ()))
    if len(w_shape) != 2 or b_shape != w_shape[:1]:
      raise ConfigError(f"target layer {k}: weight must be [out, in] and bias [out], "
                        f"got {w_shape} and {b_shape}")
    if dims and w_shape[1] != dims[-1]:
      raise ConfigError(f"target dims don't chain: layer {k} takes {w_shape[1]} inputs "
                        f"but layer {k - 1} gives {dims[-1]} outputs")
    if not dims:
      dims.append(w_shape[1])
    dims.append(w_shape[0])
  dims = tuple(int(d) for d in dims)
  if widths is not None and tuple(widths) != dims:
    raise ConfigError(f"target has widths {list(dims)} but target_widths is {list(widths)}")
  return dims


def workdir(path: str) -> str:
  """Checks that `path` is, or can become, a writable directory."""
  if not path:
    raise ConfigError("--workdir is required")
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(f"workdir {path} exists and is not a directory")
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f"workdir {path} is not writable")
  return path


def finite_if_concrete(**arrays) -> None:
  """Refuses NaN or inf in each named array that holds values (tracers pass through).

  For functions that are also called under `jit`/`vmap`: a direct call with
  concrete arrays is checked, a traced one is not (its caller checks).

  Args:
    **arrays: `name=array`.
  """
  for name, a in arrays.items():
    if a is None or isinstance(a, jax.core.Tracer):
      continue
    values = np.asarray(a)
    if np.issubdtype(values.dtype, np.inexact) and not np.isfinite(values).all():
      raise ConfigError(f"{name} must be finite (found NaN or inf)")
