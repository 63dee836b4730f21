"""The built-in plugins by name and one-line description, read from the package's source without importing it.

The registries (`sdlora.registry.Registry`) fill as their modules are imported, and those modules import torch,
timm and transformers (seconds). `sdlora list` and the command line's early config checks only need names and
descriptions, so this module reads the same registrations from the source text instead: every
`Registry("kind")` assignment, every `REGISTRY.register("name", "doc")` call, and for a decorator without a doc
the first docstring line of the class or function it decorates, which is exactly what `Registry.register`
stores. The source stays the one source of truth (nothing here lists a plugin), and a test checks that this
reading equals the imported registries (tests/test_cli_fast.py). A package installed without its `.py` files
falls back to importing the registries (`imported_catalog`).

A registered class's `Options = SomeOptions` (or a nested `class Options`) is read the same way: the catalog
notes the module that defines it (through the plugin module's `from ... import SomeOptions`), and `options`
imports that module alone. The built-in plugins keep their options in torch-free modules
(`sdlora.methods.options`, `sdlora.backbones.options`, `sdlora.data.benchmarks.options`), so the command line
validates a config's plugin options with the very classes a run uses, before torch is imported.
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Entry:
    """One registration: its name, the description `Registry.describe` gives, the module that makes it, and where
    its `Options` dataclass is defined ((module, qualified name); None for a plugin without one)."""

    name: str
    doc: str
    module: str
    options: tuple[str, str] | None = None


@dataclass
class Catalog:
    """Registry variable (`METHODS`) -> its kind (`method`) and its entries by name."""

    kinds: dict[str, str] = field(default_factory=dict)
    entries: dict[str, dict[str, Entry]] = field(default_factory=dict)

    def describe(self, registry: str) -> dict[str, str]:
        """Name -> one-line description, sorted by name, as `Registry.describe` returns it."""
        found = self.entries.get(registry, {})
        return {name: found[name].doc for name in sorted(found)}

    def names(self, registry: str) -> list[str]:
        return sorted(self.entries.get(registry, {}))

    def check(self, registry: str, name: object) -> None:
        """Raise what `Registry.get` raises for a name the registry does not hold (an UnknownName)."""
        if name not in self.entries.get(registry, {}):
            from sdlora.registry import unknown_name

            raise unknown_name(self.kinds[registry], name, self.names(registry))

    def options(self, registry: str, name: str) -> type | None:
        """The `Options` dataclass of a registered plugin, importing only the module that defines it (None when
        the plugin has none, or the source does not say which)."""
        entry = self.entries.get(registry, {}).get(name)
        if entry is None or entry.options is None:
            return None
        module, qualname = entry.options
        found = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
        return found if isinstance(found, type) else None


def _doc_of(node: ast.AST) -> str:
    """The first line of a docstring, as `Registry.register` takes it from `obj.__doc__`."""
    if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(node, clean=False)
        lines = (doc or "").strip().splitlines()
        return lines[0] if lines else ""
    return ""


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _register_call(node: ast.AST) -> tuple[str, str, str | None] | None:
    """(registry variable, name, doc or None) of a `VAR.register("name"[, "doc"])` call."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register"
            and isinstance(node.func.value, ast.Name) and node.args):
        return None
    name = _string(node.args[0])
    if name is None:
        return None
    doc_node = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "doc"), None)
    return node.func.value.id, name, _string(doc_node)


def _assignment(node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
    """(target, value) of `TARGET = VALUE` or `TARGET: ... = VALUE`."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        return node.targets[0], node.value
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return node.target, node.value
    return None


def _registry_kind(node: ast.AST) -> tuple[str, str] | None:
    """(variable, kind) of `VAR = Registry("kind")` or `VAR: Registry[...] = Registry("kind")`."""
    assigned = _assignment(node)
    if assigned is None:
        return None
    target, value = assigned
    if (isinstance(target, ast.Name) and isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            and value.func.id == "Registry" and value.args and _string(value.args[0]) is not None):
        return target.id, str(_string(value.args[0]))
    return None


def _imported_names(tree: ast.Module, package: str) -> dict[str, tuple[str, str]]:
    """Local name -> (module, name) of the module's top-level `from ... import ...` statements (relative ones
    resolved against `package`, the package the module belongs to)."""
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ImportFrom):
            continue
        source = str(node.module)
        if node.level:  # `from .x import y`: up from `package`, one level per dot after the first
            base = package.split(".")
            source = ".".join([*base[: len(base) - node.level + 1], *([node.module] if node.module else [])])
        for alias in node.names:
            found[alias.asname or alias.name] = (source, alias.name)
    return found


def _options_of(node: ast.AST, module: str, imported: dict[str, tuple[str, str]],
                defined: set[str]) -> tuple[str, str] | None:
    """Where the `Options` of a decorated class is defined: a nested `class Options`, or `Options = Name` with
    `Name` imported into or defined in the module."""
    if not isinstance(node, ast.ClassDef):
        return None
    for stmt in node.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == "Options":
            return module, f"{node.name}.Options"
        target, value = _assignment(stmt) or (None, None)
        if isinstance(target, ast.Name) and target.id == "Options" and isinstance(value, ast.Name):
            if value.id in imported:
                return imported[value.id]
            if value.id in defined:
                return module, value.id
    return None


def scan_module(tree: ast.Module, module: str, catalog: Catalog, package: str | None = None) -> None:
    """Add the registries and registrations of one parsed module to `catalog` (`package`: the package relative
    imports start from; by default the module's parent)."""
    imported = _imported_names(tree, package if package is not None else module.rpartition(".")[0])
    defined = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    decorated: dict[int, ast.AST] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            for decorator in node.decorator_list:
                decorated[id(decorator)] = node
    for node in ast.walk(tree):
        kind = _registry_kind(node)
        if kind is not None:
            catalog.kinds[kind[0]] = kind[1]
        call = _register_call(node)
        if call is None:
            continue
        registry, name, doc = call
        target = decorated.get(id(node))
        text = doc or (_doc_of(target) if target is not None else "")
        options = _options_of(target, module, imported, defined) if target is not None else None
        catalog.entries.setdefault(registry, {})[name] = Entry(name, text, module, options)


@lru_cache(maxsize=1)
def builtin_catalog(root: Path = PACKAGE) -> Catalog:
    """Every registry and registration in the sdlora package's source (read once per process); from the imported
    registries when the package ships without its source (no registry found in it)."""
    catalog = source_catalog(root)
    return catalog if catalog.kinds else imported_catalog()


def source_catalog(root: Path = PACKAGE) -> Catalog:
    """Every registry and registration in the `.py` files below `root`, none of them imported."""
    catalog = Catalog()
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if "Registry(" not in text and ".register(" not in text:
            continue
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        scan_module(ast.parse(text, str(path)), module, catalog, ".".join(parts[:-1]))
    catalog.entries = {k: v for k, v in catalog.entries.items() if k in catalog.kinds}
    return catalog


def _defined_at(options: object) -> tuple[str, str] | None:
    return (options.__module__, options.__qualname__) if isinstance(options, type) else None


def imported_catalog() -> Catalog:
    """The same from the registries themselves: every built-in plugin imported (torch, timm, transformers)."""
    from sdlora import registry
    from sdlora.engine import loggers
    from sdlora.export import common

    registry.load_builtins()
    import sdlora.export  # noqa: F401 (the export formats register on import)

    catalog = Catalog()
    for module in (registry, loggers, common):
        for variable, value in vars(module).items():
            if isinstance(value, registry.Registry):
                catalog.kinds[variable] = value.kind
                catalog.entries[variable] = {name: Entry(name, doc, getattr(value._entries[name], "__module__", ""),
                                                         _defined_at(getattr(value._entries[name], "Options", None)))
                                             for name, doc in value.describe().items()}
    return catalog
