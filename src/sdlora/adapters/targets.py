"""Target strings -> (module name, output slices).

A target is an fnmatch pattern on module names (``*`` also crosses dots) with an optional output-slice suffix:
``"blocks.*.attn.qkv[q,v]"`` adapts the q and v thirds of timm's fused qkv (out = 3 * dim: q = rows [0, dim),
k = [dim, 2 dim), v = [2 dim, 3 dim)) and leaves k untouched; ``"*.attention.self.query"`` adapts the whole
output. Every (module, slice) pair gets its own U, D.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from sdlora.wrapping import ModuleWrapper

#: named slices of a fused projection, as (index, parts)
SLICE_NAMES: dict[str, tuple[int, int]] = {"q": (0, 3), "k": (1, 3), "v": (2, 3)}
WHOLE = "all"

_TARGET = re.compile(r"^(?P<pattern>[^\[\]]+?)\s*(?:\[(?P<slices>[^\[\]]*)\])?$")


@dataclass(frozen=True)
class Target:
    pattern: str
    slices: tuple[str, ...] | None  # None: the whole output


@dataclass(frozen=True)
class Slice:
    name: str
    start: int
    stop: int


def parse_target(text: str) -> Target:
    """``"pattern[q,v]"`` -> Target; unknown slice names and malformed brackets are ValueErrors."""
    match = _TARGET.match(text.strip())
    if match is None:
        raise ValueError(f"target {text!r} is malformed; expected 'pattern' or 'pattern[q,v]'")
    raw = match.group("slices")
    if raw is None:
        return Target(match.group("pattern"), None)
    names = tuple(s.strip() for s in raw.split(","))
    if not names or any(not n for n in names):
        raise ValueError(f"target {text!r}: empty slice name inside [...]; allowed: {sorted(SLICE_NAMES)}")
    unknown = [n for n in names if n not in SLICE_NAMES]
    if unknown:
        raise ValueError(f"target {text!r}: unknown slice names {unknown}; allowed: {sorted(SLICE_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"target {text!r}: repeated slice names")
    return Target(match.group("pattern"), tuple(sorted(names, key=lambda n: SLICE_NAMES[n][0])))


def resolve_slices(target: Target, out_features: int, module_name: str) -> tuple[Slice, ...]:
    """Row ranges of the adapted output slices of a Linear with `out_features` outputs."""
    if target.slices is None:
        return (Slice(WHOLE, 0, out_features),)
    result = []
    for name in target.slices:
        index, parts = SLICE_NAMES[name]
        if out_features % parts:
            raise ValueError(
                f"target {target.pattern!r}: slice {name!r} needs out_features divisible by {parts}, "
                f"but {module_name} has {out_features}"
            )
        width = out_features // parts
        result.append(Slice(name, index * width, (index + 1) * width))
    return tuple(result)


def find_targets(model: nn.Module, targets: list[str]) -> dict[str, tuple[nn.Linear, tuple[Slice, ...]]]:
    """Match every target against `model`'s module names; returns name -> (Linear, slices) in model order."""
    parsed = [(t, parse_target(t)) for t in targets]
    modules = dict(model.named_modules())
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    found: dict[str, tuple[nn.Linear, tuple[Slice, ...]]] = {}
    owner: dict[str, str] = {}
    for text, target in parsed:
        names = [n for n in modules if n and fnmatch.fnmatchcase(n, target.pattern)]
        if not names:
            sample = ", ".join(linears[:8]) + (", ..." if len(linears) > 8 else "")
            raise ValueError(
                f"target {text!r} matches no module of {type(model).__name__}; "
                f"some Linear layers are: {sample or '(none)'}"
            )
        for name in names:
            module = modules[name]
            if not isinstance(module, nn.Linear):
                hint = " (already adapted?)" if hasattr(module, "bank") else ""
                raise ValueError(
                    f"target {text!r} matches {name!r}, a {type(module).__name__}{hint}, "
                    "but only nn.Linear layers can be adapted; make the pattern more specific"
                )
            if name in owner:
                raise ValueError(f"module {name!r} is matched by two targets: {owner[name]!r} and {text!r}")
            owner[name] = text
            found[name] = (module, resolve_slices(target, module.out_features, name))
    order = {n: i for i, n in enumerate(modules)}
    return dict(sorted(found.items(), key=lambda kv: order[kv[0]]))


class SlicedLinear(ModuleWrapper):
    """Base of the adapter wrappers: holds the original (frozen) nn.Linear and the output slices it adapts."""

    base: nn.Linear

    def __init__(self, base: nn.Linear, slices: tuple[Slice, ...]) -> None:
        super().__init__()
        widths = {s.stop - s.start for s in slices}
        if len(widths) != 1:
            raise ValueError(f"adapted slices must share one width, got {slices}")
        self.base = base
        self.slices = slices
        self.bounds = tuple((s.start, s.stop) for s in slices)
        self.width = widths.pop()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features
