"""What every experiment main shares: start-up logging and one-line errors."""

import sys
from typing import Callable

import jax
from absl import logging

from jaxnorm import validate


def log_environment() -> None:
  """Logs the process index, process count and devices (first thing in main)."""
  logging.info("JAX process %d / %d, local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("global devices: %d (%s)", jax.device_count(), jax.default_backend())


def fail(message: str) -> None:
  """Prints `error: message` as one line on stderr and exits with code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def run_or_exit(fn: Callable[[], object]) -> object:
  """Calls `fn`; a bad-input `ConfigError` becomes one line on stderr and exit code 2."""
  try:
    return fn()
  except validate.ConfigError as e:
    fail(str(e))


def int_list(values) -> tuple[int, ...]:
  """Flag list of strings -> ints, with a one-line error for a non-integer."""
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    fail(f"expected integers, got {list(values)}")


def float_list(values) -> tuple[float, ...]:
  """Flag list of strings -> floats, with a one-line error for a non-number."""
  try:
    return tuple(float(v) for v in values)
  except ValueError:
    fail(f"expected numbers, got {list(values)}")
