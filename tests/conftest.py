"""Shared fixtures, and a persistent XLA compilation cache for the test session.

Many tests compile the same programs (the same tiny specs in several files, in
xdist workers and in CLI subprocesses); JAX's persistent compilation cache,
keyed by the compiled program's fingerprint, lets each be compiled once. It
lives in `.jax_test_cache/` of the checkout (git-ignored), so a fresh clone
starts cold; subprocesses inherit it through the environment.
"""

import os

_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      ".jax_test_cache")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture
def enable_x64():
  """Runs a test in float64 and restores the previous setting after."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def no_compute(monkeypatch):
  """Fails the test if the engine starts compiling or initialising (checks must come first)."""
  from jaxnorm import programs as programs_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(programs_lib.Programs, "init", property(
      lambda self: pytest.fail("compute started before the input was validated")))
