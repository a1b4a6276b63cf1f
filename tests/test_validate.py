"""Tests for jaxnorm.validate: the one-line checks that run before any compute."""

import numpy as np
import pytest

from jaxnorm import validate


@pytest.mark.parametrize("check,value,message", [
    (validate.positive_int, 0, "positive integer, got 0"),
    (validate.positive_int, True, "True"),
    (validate.positive_int, 2.5, "2.5"),
    (validate.non_negative_int, -1, "-1"),
    (validate.positive_float, float("inf"), "finite"),
    (validate.positive_float, "x", "'x'"),
    (validate.probability, 0.0, "\\(0, 1\\]"),
])
def test_scalar_checks_name_the_bad_value(check, value, message):
  with pytest.raises(validate.ConfigError, match=message):
    check("thing", value)


def test_good_values_pass_through():
  assert validate.positive_int("n", np.int64(3)) == 3
  assert validate.probability("p", 1) == 1.0
  assert validate.positive_ints("w", [1, 2]) == (1, 2)
  assert validate.one_of("kind", "a", ("a", "b")) == "a"
  assert validate.seed_ids(range(3)).tolist() == [0, 1, 2]


def test_seed_ids_and_choices():
  with pytest.raises(validate.ConfigError, match="at least one seed"):
    validate.seed_ids([])
  with pytest.raises(validate.ConfigError, match="non-negative integers"):
    validate.seed_ids([1.5])
  with pytest.raises(validate.ConfigError, match="unknown kind 'c'; expected one of a, b"):
    validate.one_of("kind", "c", ("a", "b"))


def test_target_layers_must_chain():
  w = np.zeros((4, 3))
  assert validate.target_layers([(w, np.zeros(4)), (np.zeros((2, 4)), np.zeros(2))]) == (3, 4, 2)
  with pytest.raises(validate.ConfigError, match="don't chain"):
    validate.target_layers([(w, np.zeros(4)), (np.zeros((2, 5)), np.zeros(2))])


@pytest.mark.parametrize("ids, message", [
    ([2 ** 31], "in \\[0, 2\\*\\*31\\)"), ([2 ** 40], "got 1099511627776"), ([-1], "got -1"),
    ([3, 1, 3], "must differ: \\[3\\]"), ([True], "non-negative integers"),
])
def test_seed_ids_that_would_silently_name_another_seed_are_refused(ids, message):
  with pytest.raises(validate.ConfigError, match=message):
    validate.seed_ids(ids)
  assert validate.seed_ids([2 ** 31 - 1, 0]).tolist() == [2 ** 31 - 1, 0]


def test_a_base_seed_beyond_32_bits_is_refused():
  assert validate.prng_seed("seed", 2 ** 32 - 1) == 2 ** 32 - 1
  with pytest.raises(validate.ConfigError, match="below 2\\*\\*32"):
    validate.prng_seed("seed", 2 ** 32)


def test_counts_beyond_int32_are_refused():
  assert validate.positive_int("steps", 2 ** 31 - 1) == 2 ** 31 - 1
  with pytest.raises(validate.ConfigError, match="steps must be below 2\\*\\*31"):
    validate.positive_int("steps", 10 ** 23)


def test_finite_if_concrete_checks_values_and_lets_tracers_through():
  import jax  # pylint: disable=g-import-not-at-top
  validate.finite_if_concrete(x=np.ones(3), labels=np.arange(3), nothing=None)
  with pytest.raises(validate.ConfigError, match="^y must be finite"):
    validate.finite_if_concrete(x=np.ones(3), y=np.array([1.0, np.inf]))
  traced = jax.jit(lambda y: (validate.finite_if_concrete(y=y), y + 1)[1])(np.array([np.nan]))
  assert np.isnan(traced).all()   # under jit the value is unknown: the caller checks
