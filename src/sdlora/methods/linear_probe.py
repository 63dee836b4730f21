"""Linear probe: frozen backbone, only the growing linear head trains (the cheapest trained baseline)."""

from __future__ import annotations

from sdlora.method_config import ClassifierSupport
from sdlora.methods.base import Method
from sdlora.methods.options import NoOptions
from sdlora.registry import METHODS


@METHODS.register("linear_probe")
class LinearProbe(Method):
    """Frozen backbone + growing linear head."""

    classifier_support = ClassifierSupport(drifts=("none",), reasons={
        "drift": "linear_probe trains the head only, so the backbone's features never drift (SDC would move "
                 "every mean by 0)"})

    Options = NoOptions
