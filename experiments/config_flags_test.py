"""Tests for experiments.config_flags, and for every experiment's named configs."""

import dataclasses
import importlib
import pkgutil
from typing import Optional

import pytest
from absl import flags

from experiments import config_flags
from experiments.config_flags import hparam
from jaxnorm import validate

EXPERIMENTS = ("fit_target", "classify", "reconstruct", "bench_fit")


@dataclasses.dataclass(frozen=True)
class Inner:
  name: str = hparam(flag=False)
  size: int = hparam(help="A size.")


@dataclasses.dataclass(frozen=True)
class Toy:
  seeds: int = hparam(8, "Seeds.")
  rate: float = hparam(0.5, "A rate.")
  kind: str = hparam("a", "A kind.")
  fast: bool = hparam(False, "Go fast.")
  steps: Optional[int] = hparam(None, "Steps.")
  widths: tuple[int, ...] = hparam((1, 2), "Widths.", aliases=("width",))
  big: Inner = hparam(Inner("big", 3), "The big one.", prefix="big_")


def _parse(argv):
  values = flags.FlagValues()
  parsed = config_flags.ConfigFlags(
      Toy, {"default": Toy, "other": lambda: Toy(seeds=99, kind="o")}, values)
  values(["prog", *argv])
  return parsed


def test_every_field_is_a_flag_with_its_type_and_the_named_config_is_overridden():
  parsed = _parse(["--config=other", "--rate=0.25", "--fast", "--steps=7", "--width=3,4",
                   "--big_size=11"])
  assert parsed.value() == Toy(seeds=99, rate=0.25, kind="o", fast=True, steps=7,
                               widths=(3, 4), big=Inner("big", 11))
  assert _parse([]).value() == Toy()
  assert _parse(["--steps=none", "--widths="]).value() == Toy(widths=())
  assert parsed.configs == ["default", "other"]
  assert parsed.present("rate") and not parsed.present("seeds")
  with pytest.raises(flags.UnrecognizedFlagError):
    _parse(["--big_name=x"])


@pytest.mark.parametrize("argv, message", [
    (["--seeds=x"], "--seeds must be an integer, got 'x'"),
    (["--rate=fast"], "--rate must be a number, got 'fast'"),
    (["--widths=1,b"], "--widths must be an integer, got 'b'"),
    (["--big_size=1.5"], "--big_size must be an integer, got '1.5'"),
])
def test_a_malformed_value_is_a_config_error(argv, message):
  with pytest.raises(validate.ConfigError, match=message):
    _parse(argv).value()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_named_config_is_valid_and_says_how_to_run_it(experiment, no_compute):
  module = importlib.import_module(f"experiments.{experiment}.experiment")
  package = importlib.import_module(f"experiments.{experiment}.configs")
  names = [m.name for m in pkgutil.iter_modules(package.__path__)]
  assert "default" in names
  for name in names:
    config_module = importlib.import_module(f"{package.__name__}.{name}")
    config = config_module.get_config()
    assert isinstance(config, module.Config)
    command = f"python -m experiments.{experiment} --workdir="
    assert command in config_module.__doc__, name
    assert (f"--config={name}" in config_module.__doc__) == (name != "default"), name
    {"fit_target": lambda c: module.specs(c), "classify": lambda c: module.cells(c),
     "reconstruct": lambda c: c.resolved(),
     "bench_fit": lambda c: module.check_config(c)}[experiment](config)


def test_the_default_config_is_the_config_class_default():
  for experiment in EXPERIMENTS:
    module = importlib.import_module(f"experiments.{experiment}.experiment")
    default = importlib.import_module(f"experiments.{experiment}.configs.default")
    assert default.get_config() == module.Config()
