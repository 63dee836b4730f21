"""Build typed dataclasses from plain dicts (YAML), with errors that name the key and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A config value is missing, unknown or of the wrong type; the message names the key."""


class UnknownName(ConfigError, KeyError):
    """A plugin name that no registry knows (a KeyError too, for code that looks names up)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Range:
    """A bound on a number, attached with `Annotated[int, Range(min=1)]`: checked while the config loads,
    so a bad value is reported by key before any data or model is touched."""

    min: float | None = None
    max: float | None = None

    def check(self, value: Any, key: str) -> None:
        if value is None:
            return
        if self.min is not None and value < self.min:
            raise ConfigError(f"{key}: must be >= {self.min:g}, got {value!r}")
        if self.max is not None and value > self.max:
            raise ConfigError(f"{key}: must be <= {self.max:g}, got {value!r}")


PositiveInt = Annotated[int, Range(min=1)]


@dataclass(frozen=True)
class ReadWhen:
    """`Annotated[T, ReadWhen("drift", ("sdc",))]`: the key is read only when key `other` of the same mapping has one
    of `values` (`negate`: none of them). A value other than the key's default where it is not read would change
    nothing, so `from_dict` refuses it, naming the key that decides (the default stays accepted: a config may switch
    `other` without deleting the key, and a saved config that records every default loads again)."""

    other: str
    values: tuple[Any, ...]
    negate: bool = False

    def holds(self, obj: Any) -> bool:
        return (getattr(obj, self.other) in self.values) != self.negate

    def why(self, obj: Any) -> str:
        values = " or ".join(map(repr, self.values))
        return (f"it is read only when {self.other} is {'not ' if self.negate else ''}{values} "
                f"(here {self.other}: {getattr(obj, self.other)!r})")


def default_of(fld: dataclasses.Field) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return dataclasses.MISSING


def check_read(obj: Any, hints: dict[str, Any], key: str) -> None:
    """Refuse a non-default value of a key that `ReadWhen` says is not read here (`obj` a built dataclass)."""
    for fld in dataclasses.fields(obj):
        hint = hints.get(fld.name)
        marks = get_args(hint)[1:] if get_origin(hint) is Annotated else ()
        for mark in marks:
            value = getattr(obj, fld.name)
            if isinstance(mark, ReadWhen) and not mark.holds(obj) and value != default_of(fld):
                sub = f"{key}.{fld.name}" if key else fld.name
                raise ConfigError(f"{sub}: {value!r} would change nothing: {mark.why(obj)}; remove it")


def did_you_mean(word: str, choices: list[str] | set[str]) -> str:
    """' (did you mean 'x'?)' for the closest known name, or ''."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        (item,) = get_args(tp) or (Any,)
        return f"list of {_type_name(item)}"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def convert(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the type hint `tp` and convert it (nested dataclasses included)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        inner, *marks = get_args(tp)
        converted = convert(inner, value, key)
        for mark in marks:
            if isinstance(mark, Range):
                mark.check(converted, key)
        return converted
    if origin in (Union, types.UnionType):
        if value is None and type(None) in get_args(tp):  # null means None, not an all-defaults dataclass
            return None
        errors = {}
        for option in get_args(tp):
            try:
                return convert(option, value, key)
            except ConfigError as err:
                errors[option] = err
        # a mapping meant for the one mapping-typed option: its own error names the inner key
        shaped = [err for option, err in errors.items() if dataclasses.is_dataclass(option)]
        if isinstance(value, dict) and len(shaped) == 1:
            raise shaped[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        hint = did_you_mean(value, [a for a in get_args(tp) if isinstance(a, str)]) if isinstance(value, str) else ""
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {_type_name(tp)}{hint}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (item,) = get_args(tp) or (Any,)
        return [convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def from_dict(cls: type, data: Any, key: str = "config") -> Any:
    """Instantiate dataclass `cls` from `data`; unknown keys, wrong types and missing keys are errors."""
    if data is None:
        data = {}
    label = key or "config"
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping ({cls.__name__}), got {data!r}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted((k for k in data if k not in fields), key=str)
    if unknown:
        guesses = "".join(did_you_mean(k, set(fields)) for k in unknown)
        raise ConfigError(
            f"{label}: unknown key(s) {', '.join(map(repr, unknown))}{guesses}; allowed: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, fld in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            kwargs[name] = convert(hints[name], data[name], sub)
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{sub}: required key is missing (expected {_type_name(hints[name])})")
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:
        # a class's own `check_read` names its field ("rank: ..."): as a key below this one ("method.options.rank")
        named = isinstance(err, ConfigError) and str(err).split(":", 1)[0] in fields and key
        raise ConfigError(f"{label}.{err}" if named else f"{label}: {err}") from err
    check_read(obj, hints, key)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a (nested) dataclass, for JSON and YAML: its init fields (what `from_dict` takes back;
    `init=False` fields are derived state, e.g. a benchmark's bound backbone data config)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["ConfigError", "PositiveInt", "Range", "ReadWhen", "convert", "did_you_mean", "from_dict", "to_dict"]
