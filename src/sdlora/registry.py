"""Decorator registries (Mammoth style): methods, backbones and benchmarks are found by name, never by if/elif."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named dict filled by a decorator; `get` fails with the list of known names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            text = doc or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._docs[name] = text if isinstance(text, str) else (text[0] if text else "")
            return obj

        return decorator

    def get(self, name: str) -> T:
        load_builtins()
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, self._entries) from None

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        load_builtins()
        return {n: self._docs[n] for n in sorted(self._entries)}

    def __contains__(self, name: object) -> bool:
        load_builtins()
        return name in self._entries


def unknown_name(kind: str, name: object, known: Iterable[str]) -> Exception:
    """The error for a name that a registry of `kind` does not hold: the known names, "did you mean" for a near miss
    (an UnknownName: a ConfigError and a KeyError). Also raised by the light checks of `sdlora.catalog`."""
    from sdlora.typed import UnknownName, did_you_mean

    names = set(known)
    hint = did_you_mean(name, names) if isinstance(name, str) else ""
    return UnknownName(f"unknown {kind} {name!r}{hint}; known {kind}s: {', '.join(sorted(names)) or '(none)'}")


METHODS: Registry[Any] = Registry("method")
BACKBONES: Registry[Any] = Registry("backbone")
BENCHMARKS: Registry[Any] = Registry("benchmark")

_loaded = False


def load_builtins() -> None:
    """Import the built-in plugin packages once so their decorators run."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: plugin modules import this module while they load
    import importlib
    import pkgutil

    for package in ("sdlora.methods", "sdlora.backbones", "sdlora.data.benchmarks"):
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                try:
                    importlib.import_module(f"{package}.{info.name}")
                except Exception:
                    _loaded = False
                    raise
