"""Reading a config: YAML (safely, aliases refused, size capped), dotted ``--set a.b=c`` overrides,
and the typed build of the frozen sections from the merged tree.

Separate from the sections because this is the only part that parses untrusted text and turns it into
typed values; it hands the built config to :mod:`edgefpn.config.validation` before returning it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from edgefpn.config.sections import Config, _settings
from edgefpn.config.validation import _validate
from edgefpn.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # a config is a page of YAML; anything bigger is a mistake or an attack


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases: configs never need them and alias bombs exist."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases are not allowed in configs", event.start_mark
            )
        return super().compose_node(parent, index)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config is {size} bytes, more than the {MAX_CONFIG_BYTES} byte cap")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_NoAliasLoader)  # noqa: S506
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except RecursionError:  # PyYAML composes recursively: "[[[[..." a few thousand deep overflows it
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    try:
        value = yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _merge_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return _build(tp, value, key, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key} has an invalid value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{source}: {key} must have {len(args)} items, got {list(value)!r}")
        return tuple(
            _coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        vt = args[1] if args else Any
        return types.MappingProxyType(
            {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
        )
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key}: unsupported type {tp!r}")  # a bug in this module


def _build(cls: type, data: Mapping[str, Any], prefix: str, source: str) -> Any:
    hints = _field_types(cls)
    names = [f.name for f in _settings(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + '.' if prefix else ''}{close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown key {full}{hint}")
        tp = hints[key]
        if isinstance(value, dict) and (typing.get_origin(tp) in (Mapping, dict) or tp is Mapping):
            # a partial table (`--set check.max_map_drop.int8=0.3`) updates the default table
            default = next(f for f in _settings(cls) if f.name == key)
            if default.default_factory is not dataclasses.MISSING:
                value = {**default.default_factory(), **value}
        kwargs[key] = _coerce(value, tp, full, source)
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (or the defaults), apply dotted overrides, validate, return a frozen Config."""
    tree: dict[str, Any] = _read_yaml(Path(path)) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    for item in overrides:
        keys, value = _parse_override(item)
        _merge_override(tree, keys, value)
    if overrides:
        source += " + --set"
    cfg = dataclasses.replace(_build(Config, tree, "", source), source=source)
    _validate(cfg, source)
    return cfg
