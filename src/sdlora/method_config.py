"""The method section of a run config: the method, its own options, and its classifier settings.

    method:
      name: sdlora
      options: {rank: 8}
      classifier: {kind: prototypes, drift: sdc, sdc_sigma: 0.3, head_init: class_mean, head_init_scale: 60.0}
      # or, the LDA head from class statistics:  {kind: lda, shrinkage: oas, priors: uniform, drift: sdc}

The classifier settings belong to the method: every method declares what it can do with them
(`ClassifierSupport`, the class attribute `Method.classifier_support`). A key left out (or null) takes the
method's default; a value the method cannot honour is refused with the reason, never silently ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sdlora.typed import ConfigError

#: defaults of the numeric settings, for the methods that have the feature they tune
SDC_SIGMA = 0.3
HEAD_INIT_SCALE = 10.0
#: OAS, chosen from the statistics: level with the best fixed value on full CLINC150 / HWU64, far above a small fixed
#: one with few samples per class (benchmarks/README.md, "Shrinkage")
LDA_SHRINKAGE: float | Literal["oas"] = "oas"
LDA_PRIORS = "uniform"
#: the kinds that predict from class statistics fitted after each task (drift compensation moves those)
STATISTICS_KINDS = ("prototypes", "lda")


@dataclass
class ClassifierConfig:
    """What predicts at evaluation time and how a task's new head rows start; null: the method's default.

    `kind`: `linear`, the growing linear head; `prototypes`, cosine nearest-class-mean over the adapted
    features, class means taken after each task. Training always goes through the linear head (it carries
    the loss), so `prototypes` changes prediction only.
    `drift: sdc`: semantic drift compensation (Yu et al., CVPR 2020) moves old class means by the drift that
    the current task's samples show: mu_c += sum_i w_ic (f_new(x_i) - f_old(x_i)) / sum_i w_ic,
    w_ic = exp(-||g_old(x_i) - g(mu_c)||^2 / (2 sigma^2)), g = L2-normalisation; current data only. It moves
    prototypes, so it needs `kind: prototypes`.
    `head_init`: new head rows are `random` (official) or the class means of the task's features
    (`class_mean`, the LP-then-FT idea: a random head distorts pretrained features):
    rows = scale * mu_c / (||mu_c|| * mean ||f||), i.e. the logits start as scaled cosines.
    `kind: lda`: linear discriminant analysis over the L2-normalised features from running class statistics
    (`sdlora.methods.lda`): logit_c = w_c^T g + b_c, w_c = Sigma^{-1} mu_c, b_c = -1/2 mu_c^T Sigma^{-1} mu_c
    (+ log n_c / N with `priors: empirical`), Sigma = (1 - a) S + a (tr S / D) I, S the pooled within-class
    covariance, a = `shrinkage` in (0, 1], or `oas` (the default: a chosen from the statistics, Oracle
    Approximating Shrinkage). Like `prototypes` it changes prediction only; `drift: sdc`
    moves its class means.
    """

    kind: Literal["linear", "prototypes", "lda"] | None = None
    drift: Literal["none", "sdc"] | None = None
    sdc_sigma: float | None = None  # sigma of the SDC weights w_ic (default 0.3)
    head_init: Literal["random", "class_mean"] | None = None
    head_init_scale: float | None = None  # `scale` of the class-mean rows (default 10.0)
    # kind 'lda': a of Sigma = (1 - a) S + a (tr S / D) I, or 'oas' (chosen from the statistics; the default)
    shrinkage: float | Literal["oas"] | None = None
    priors: Literal["uniform", "empirical"] | None = None  # kind 'lda': + log(n_c / N) when empirical

    def __post_init__(self) -> None:
        for name in ("sdc_sigma", "head_init_scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.shrinkage is not None and self.shrinkage != "oas" and not 0 < self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in (0, 1] or 'oas' (0 leaves Sigma singular when classes have fewer "
                             f"samples than dimensions), got {self.shrinkage}")


@dataclass
class MethodConfig:
    """A registered method by name, its own `options` (validated against its `Options`) and `classifier`."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


@dataclass(frozen=True)
class ClassifierSupport:
    """What a method does with `method.classifier`: the values it honours (the first is its default) and, per
    setting it does not have, why (`kind`, `drift`, `head_init`). `head_inits=()`: no head to initialise."""

    kinds: tuple[Literal["linear", "prototypes", "lda"], ...] = ("linear", "prototypes", "lda")
    drifts: tuple[Literal["none", "sdc"], ...] = ("none", "sdc")
    head_inits: tuple[Literal["random", "class_mean"], ...] = ("random", "class_mean")
    reasons: Mapping[str, str] = field(default_factory=dict)

    def problems(self, given: ClassifierConfig) -> dict[str, str]:
        """Setting -> why it is refused, for every given setting this method would not honour."""
        out = {}
        allowed = {"kind": self.kinds, "drift": self.drifts, "head_init": self.head_inits}
        for name, values in allowed.items():
            value = getattr(given, name)
            if value is not None and value not in values:
                out[name] = self.reasons.get(name, f"this method supports {', '.join(map(repr, values))}")
        if given.sdc_sigma is not None and "sdc" not in self.drifts:
            out["sdc_sigma"] = self.reasons.get("drift", "this method has no drift compensation")
        if given.head_init_scale is not None and not self.head_inits:
            out["head_init_scale"] = self.reasons.get("head_init", "this method has no head to initialise")
        kind = given.kind or self.kinds[0]
        if given.drift == "sdc" and kind not in STATISTICS_KINDS and "drift" not in out:
            out["drift"] = ("drift compensation moves the class prototypes (or the LDA head's class means), which "
                            "only kinds 'prototypes' and 'lda' predict with")
        for name in ("shrinkage", "priors"):
            if getattr(given, name) is not None and kind != "lda" and "kind" not in out:
                out[name] = f"{name} tunes the LDA head (kind 'lda'); this classifier is kind {kind!r}"
        return out

    def resolve(self, given: ClassifierConfig | None, key: str = "method.classifier") -> ClassifierConfig:
        """Every setting filled in with this method's defaults; a ConfigError naming the first refused key."""
        given = given or ClassifierConfig()
        for name, why in self.problems(given).items():
            raise ConfigError(f"{key}.{name}: {getattr(given, name)!r} is refused: {why}")
        has_sdc, has_head = "sdc" in self.drifts, bool(self.head_inits)
        return dataclasses.replace(
            given, kind=given.kind or self.kinds[0], drift=given.drift or self.drifts[0],
            sdc_sigma=given.sdc_sigma if given.sdc_sigma is not None else (SDC_SIGMA if has_sdc else None),
            head_init=given.head_init or (self.head_inits[0] if has_head else None),
            head_init_scale=given.head_init_scale if given.head_init_scale is not None else (
                HEAD_INIT_SCALE if has_head else None),
            **(lda_defaults(given) if (given.kind or self.kinds[0]) == "lda" else {}))


def lda_defaults(given: ClassifierConfig) -> dict[str, Any]:
    """`shrinkage` and `priors` of an LDA head, defaults filled in."""
    return {"shrinkage": LDA_SHRINKAGE if given.shrinkage is None else given.shrinkage,
            "priors": given.priors or LDA_PRIORS}
