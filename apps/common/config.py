"""Typed configs as dataclasses: presets, overrides and JSON round-trips.

In the spirit of the Model Garden's `config_definitions`: each app has one
(possibly nested) dataclass, named presets that build it, and the resolved
config is saved beside the model so that a run can be inspected and repeated.

Example:

>>> @dataclasses.dataclass
... class Cfg:
...     epochs: int = 3
>>> cfg = apply_overrides(get_preset({"tiny": Cfg}, "tiny"), epochs=5, seed=None)
>>> config_from_dict(Cfg, config_to_dict(cfg)) == cfg
True
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from apps.common.errors import MissingFileError, RunDirError, UserError
from apps.common.io import atomic_write_json

Cfg = TypeVar("Cfg")


def _check_dataclass_instance(cfg: Any) -> None:
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"Expected a dataclass instance. Received: cfg={cfg!r}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Returns the config as a plain dict (nested dataclasses become dicts)."""
    _check_dataclass_instance(cfg)
    return dataclasses.asdict(cfg)


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Converts a JSON value to the field's declared type where that matters."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, Mapping):
            raise ValueError(
                f"Config field '{where}' expects a mapping for {hint.__name__}. "
                f"Received: {where}={value!r}"
            )
        return config_from_dict(hint, value, _prefix=f"{where}.")
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        # Optional[Dataclass] and friends: try the dataclass member for mappings.
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return config_from_dict(arg, value, _prefix=f"{where}.")
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return tuple(value)
    return value


def config_from_dict(cls: type[Cfg], d: Mapping[str, Any], _prefix: str = "") -> Cfg:
    """Builds the dataclass `cls` from a dict such as `config_to_dict` returns.

    Nested dataclass fields are rebuilt recursively, lists become tuples where
    the field is a tuple, and fields missing from `d` take their defaults.

    Raises:
        ValueError: `d` holds keys that `cls` has no field for (all are named),
            or lacks a field that has no default.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"Expected a dataclass type. Received: cls={cls!r}")
    if not isinstance(d, Mapping):
        raise ValueError(f"Expected a mapping for {cls.__name__}. Received: {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        names = ", ".join(f"'{_prefix}{k}'" for k in unknown)
        raise ValueError(
            f"Unknown config key(s) for {cls.__name__}: {names}. "
            f"Known keys: {', '.join(sorted(fields))}."
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name in d:
            kwargs[name] = _convert(d[name], hints.get(name, Any), f"{_prefix}{name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValueError(f"Config for {cls.__name__} lacks required key '{_prefix}{name}'.")
    return cls(**kwargs)


APP_KEY = "app"


def save_config(cfg: Any, path: str | os.PathLike, app: str | None = None) -> Path:
    """Writes the config as JSON to `path` atomically.

    With `app`, the file also records which app wrote it (`"app": "translator"`),
    so that another app's CLI can refuse the run directory by name.
    """
    data = config_to_dict(cfg)
    if app is not None:
        data = {APP_KEY: app, **data}
    return atomic_write_json(path, data)


def load_config(cls: type[Cfg], path: str | os.PathLike, app: str | None = None) -> Cfg:
    """Reads a config written by `save_config`.

    Args:
        cls: the config dataclass.
        path: the `config.json` file.
        app: the app that must have written it; a file that records another
            app raises `RunDirError`. The `app` key itself is never a field.

    Raises:
        UserError: `path` does not exist, is not valid JSON or does not match `cls`.
        RunDirError: the file was written by another app than `app`.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and APP_KEY in data:
        data = dict(data)
        written_by = data.pop(APP_KEY)
        if app is not None and written_by != app:
            raise RunDirError(
                f"config file {path} was written by the {written_by!r} app, not {app!r}: "
                f"pass a run directory of this app."
            )
    try:
        return config_from_dict(cls, data)
    except ValueError as e:
        raise UserError(f"config file {path}: {e}") from e


def get_preset(presets: Mapping[str, Callable[[], Cfg]], name: str) -> Cfg:
    """Returns a fresh config from the preset called `name`.

    Raises:
        ValueError: no preset has that name (the message lists the known ones).
    """
    if name not in presets:
        raise UserError(f"Unknown preset '{name}'. Known presets: {', '.join(sorted(presets))}.")
    return presets[name]()


def apply_overrides(cfg: Cfg, **overrides: Any) -> Cfg:
    """Returns a copy of `cfg` with the given fields replaced; `None` values are ignored.

    This is what a CLI needs: flags the user did not give are `None` and keep
    the preset's value.

    Raises:
        ValueError: a key names no field of the config.
    """
    _check_dataclass_instance(cfg)
    names = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(
            f"Unknown config field(s) for {type(cfg).__name__}: {', '.join(unknown)}. "
            f"Known fields: {', '.join(sorted(names))}."
        )
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(cfg, **changes)


def parse_override(text: str) -> tuple[str, Any]:
    """`"name=value"` -> `(name, value)`: a Python literal, else the string itself.

    For benchmark flags such as `--set batch_size=128 --set shared_vocab=False`;
    `apply_overrides` then checks the name against the config's fields.

    Raises:
        ValueError: `text` has no `=` or an empty name.
    """
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"Expected NAME=VALUE. Received: {text!r}")
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name.strip(), value


def add_override_argument(parser) -> None:
    """Adds `--set NAME=VALUE` (repeatable, `parse_override`) to an argparse parser as `overrides`."""
    import argparse

    def override(text):
        try:
            return parse_override(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{e} (e.g. --set batch_size=128)") from None

    parser.add_argument(
        "--set",
        dest="overrides",
        type=override,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a config field (repeatable), e.g. --set batch_size=128",
    )
