"""Command-line flags generated from an experiment's `Config` dataclass, and named configs.

Each hyperparameter is declared once, as a field of the experiment's frozen
`Config` dataclass with its help text:

    seeds: int = hparam(8, "Seeds fitted at once per width.")

`define(Config, "experiments.<name>.configs")` then defines, for every field,
a flag of the same name (a nested dataclass field's flags are prefixed by its
`prefix`), plus `--config=<name>`, which picks a named config: the module
`experiments/<name>/configs/<config>.py`, whose `get_config()` returns a
`Config` and whose docstring carries the command that runs it. Flags given on
the command line override the named config's fields.

Every value arrives as text and is parsed here by the field's type (`int`,
`float`, `str`, `bool`, `Optional[...]`, tuples of those written `1,2,3`), so
that a malformed value is a `ConfigError` (one line, exit code 2), not absl's
usage dump. Range checks stay in each experiment's own validation, before any
compute.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import types
import typing
from typing import Any

from absl import flags

from jaxnorm import validate

_NONE = "none"


def hparam(default: Any = dataclasses.MISSING,
           help: str = "", *,  # pylint: disable=redefined-builtin
           aliases: tuple[str, ...] = (), prefix: str = "", flag: bool = True) -> Any:
  """A `Config` field with its flag's help text (one declaration per hyperparameter).

  Args:
    default: the default value (a tuple for a sequence; a dataclass instance
      for a nested config, whose fields become flags named `prefix + name`);
      none for a field of a nested dataclass whose default comes from the
      enclosing config.
    help: the flag's help text.
    aliases: other flag names for the same field.
    prefix: for a nested dataclass field, the prefix of its fields' flags.
    flag: False for a field that gets no flag (e.g. a nested setting's name).

  Returns:
    A `dataclasses.field`.
  """
  return dataclasses.field(default=default, metadata={
      "help": help, "aliases": tuple(aliases), "prefix": prefix, "flag": flag})


def _kind(annotation) -> tuple[str, Any, bool]:
  """(kind, element type, optional) of a field annotation: kind is scalar | tuple | nested."""
  optional = False
  origin = typing.get_origin(annotation)
  if origin in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional, annotation = True, args[0]
    origin = typing.get_origin(annotation)
  if dataclasses.is_dataclass(annotation):
    return "nested", annotation, optional
  if origin in (tuple, typing.Sequence, list) or annotation in (tuple, list):
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return "tuple", args[0] if args else str, optional
  return "scalar", annotation, optional


def _parse_scalar(name: str, text: str, kind: type) -> Any:
  if kind is str:
    return text
  try:
    if kind is bool:
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError
    return kind(text)
  except ValueError:
    word = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, str(kind))
    raise validate.ConfigError(f"--{name} must be {word}, got {text!r}") from None


def _text(value: Any) -> str:
  if value is None:
    return _NONE
  if isinstance(value, (tuple, list)):
    return ",".join(str(v) for v in value)
  return str(value)


class _Field(typing.NamedTuple):
  flag: str          # flag name
  path: tuple        # field names from the top config down
  kind: str          # scalar | tuple
  element: Any       # the scalar type
  optional: bool


class ConfigFlags:
  """The flags of one `Config` class; `value()` is the config the command line asks for."""

  def __init__(self, config_cls: type, configs, flag_values: flags.FlagValues = flags.FLAGS):
    """Defines the flags.

    Args:
      config_cls: the frozen `Config` dataclass.
      configs: the package of its named configs (e.g. `"experiments.fit_target.configs"`,
        each module with a `get_config()`), or a mapping `{name: get_config}`; either must
        name a `default`.
      flag_values: where to define the flags.
    """
    self._cls = config_cls
    self._flag_values = flag_values
    self._fields: list[_Field] = []
    if isinstance(configs, str):
      package = importlib.import_module(configs)
      configs = {m.name: functools.partial(_get_config, f"{configs}.{m.name}")
                 for m in pkgutil.iter_modules(package.__path__)}
    if "default" not in configs:
      raise ValueError("the named configs need a default")
    self._configs = dict(sorted(configs.items()))
    flags.DEFINE_enum("config", "default", list(self._configs),
                      "Named config (experiments/<name>/configs/<config>.py); the flags below "
                      "override its fields.", flag_values=flag_values)
    self._define(config_cls, self.named("default"), (), "")

  def _define(self, cls: type, default: Any, path: tuple, prefix: str) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
      if not f.metadata.get("flag", True):
        continue
      kind, element, optional = _kind(hints[f.name])
      value = getattr(default, f.name)
      if kind == "nested":
        self._define(element, value, path + (f.name,), prefix + f.metadata.get("prefix", ""))
        continue
      name = prefix + f.name
      help_text = f.metadata.get("help", "")
      if element is bool and kind == "scalar" and not optional:
        flags.DEFINE_boolean(name, value, help_text, flag_values=self._flag_values)
      else:
        hint = {int: "int", float: "float", str: "str", bool: "bool"}.get(element, "")
        hint = f"comma-separated {hint}s" if kind == "tuple" else hint
        if optional:
          hint += f", or {_NONE}"
        flags.DEFINE_string(name, _text(value), f"{help_text} ({hint})",
                            flag_values=self._flag_values)
      for alias in f.metadata.get("aliases", ()):
        flags.DEFINE_alias(alias, name, flag_values=self._flag_values)
      self._fields.append(_Field(name, path + (f.name,), kind, element, optional))

  @property
  def configs(self) -> list[str]:
    """The names of the named configs."""
    return list(self._configs)

  def named(self, name: str) -> Any:
    """The named config `name`."""
    config = self._configs[name]()
    if not isinstance(config, self._cls):
      raise TypeError(f"named config {name!r} must be a {self._cls.__name__}, got {config!r}")
    return config

  def present(self, name: str) -> bool:
    """Whether flag `name` was given on the command line."""
    return bool(self._flag_values[name].present)

  def parse(self, field: _Field, text: str) -> Any:
    """The value of `field` that the flag text `text` spells (raises `ConfigError`)."""
    if field.optional and text.lower() == _NONE:
      return None
    if field.kind == "tuple":
      items = [t.strip() for t in text.split(",") if t.strip()]
      return tuple(_parse_scalar(field.flag, t, field.element) for t in items)
    if field.element is bool and not isinstance(text, str):
      return bool(text)
    return _parse_scalar(field.flag, text, field.element)

  def value(self) -> Any:
    """The named config, with every flag given on the command line applied.

    Returns:
      A `Config`.

    Raises:
      validate.ConfigError: a flag value of the wrong type.
    """
    config = self.named(self._flag_values["config"].value)
    for field in self._fields:
      if self.present(field.flag):
        value = self._flag_values[field.flag].value
        config = _replace(config, field.path, self.parse(field, value))
    return config


def _get_config(module: str) -> Any:
  return importlib.import_module(module).get_config()


def _replace(config: Any, path: tuple, value: Any) -> Any:
  if len(path) == 1:
    return dataclasses.replace(config, **{path[0]: value})
  inner = _replace(getattr(config, path[0]), path[1:], value)
  return dataclasses.replace(config, **{path[0]: inner})


def define(config_cls: type, configs_package: str) -> ConfigFlags:
  """Defines `--config` and one flag per field of `config_cls` (nested fields prefixed).

  Args:
    config_cls: the experiment's frozen `Config` dataclass (fields made with
      `hparam`).
    configs_package: the package of its named configs, e.g.
      `"experiments.fit_target.configs"`; it must hold `default.py`.

  Returns:
    The `ConfigFlags`; call `.value()` in `main` for the config.
  """
  return ConfigFlags(config_cls, configs_package)
