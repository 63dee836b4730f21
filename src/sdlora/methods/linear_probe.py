"""Linear probe: frozen backbone, only the growing linear head trains (the cheapest trained baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from sdlora.methods.base import Method
from sdlora.registry import METHODS


@METHODS.register("linear_probe")
class LinearProbe(Method):
    """Frozen backbone + growing linear head."""

    @dataclass
    class Options:
        pass
