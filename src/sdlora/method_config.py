"""The method section of a run config: the method, its own options, and its classifier settings.

    method:
      name: sdlora
      options: {rank: 8}
      classifier: {kind: prototypes, drift: sdc, sdc_sigma: 0.3, head_init: class_mean, head_init_scale: 60.0}
      # how the linear head trains (the defaults):  {loss: current, freeze_old_head: true, head_lr: null}
      # or, the LDA head from class statistics:  {kind: lda, shrinkage: oas, priors: uniform, drift: sdc}
      # or RanPAC's ridge head over a random ReLU projection:  {kind: ridge, random_features: 4096, drift: sdc}

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
#: drift 'affine': a of the ridge towards the identity (`sdlora.methods.drift`), chosen on the validation splits
AFFINE_RIDGE = 0.3
HEAD_INIT_SCALE = 10.0
#: OAS, chosen from the statistics: level with the best fixed value on full CLINC150 / HWU64, far above a small fixed
#: one with few samples per class (benchmarks/README.md, "Shrinkage")
LDA_SHRINKAGE: float | Literal["oas"] = "oas"
LDA_PRIORS = "uniform"
RIDGE_SHRINKAGE = 1e-2  # chosen on the same validation splits (benchmarks/README.md, "Random feature maps")
FEATURE_MAP = "relu"
RFF_BANDWIDTH = 1.4  # about the median distance between two normalised MiniLM features (benchmarks/README.md)
#: classifier alignment (kind 'aligned'): SLCA's stage 2 (5 epochs, SGD 0.01, 256 pseudo-features per class), with
#: its Gaussian per class (HiDe-Prompt's own alignment keeps multi-centroid statistics)
ALIGNMENT: dict[str, Any] = {"statistics": "covariance", "alignment_epochs": 5, "alignment_lr": 0.01,
                             "alignment_samples": 256}
#: the kinds that predict from class statistics fitted after each task (drift compensation moves those)
STATISTICS_KINDS = ("prototypes", "lda", "ridge", "aligned")
#: per kind of head from running sums, its settings and their defaults (filled in by `ClassifierSupport.resolve`)
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lda": {"shrinkage": LDA_SHRINKAGE, "priors": LDA_PRIORS},
    "ridge": {"shrinkage": RIDGE_SHRINKAGE},
    "aligned": ALIGNMENT,
}
#: how the linear head trains, and the defaults: cross-entropy over the current task's logits (the official code),
#: old rows frozen, the body's learning rate (None: train.lr)
HEAD_TRAINING: dict[str, Any] = {"loss": "current", "freeze_old_head": True, "head_lr": None}
#: setting -> (what it tunes, the kinds that have it)
TUNES: dict[str, tuple[str, tuple[str, ...]]] = {
    "shrinkage": ("the LDA and ridge heads", ("lda", "ridge")),
    "priors": ("the LDA head", ("lda",)),
    "random_features": ("the LDA and ridge heads", ("lda", "ridge")),
    **{name: ("classifier alignment", ("aligned",)) for name in ALIGNMENT},
}


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
    `drift: affine`: one affine map y ~ x P + b of the feature space, fitted by ridge regression towards the
    identity on the current task's samples (features before / after training; `sdlora.methods.drift`), moves the
    old class means (mu P + b) and the LDA / ridge heads' shared covariance (P^T S P); `affine_ridge` a (default
    0.3): the ridge, lam = a tr(C) / D for C the covariance of the samples before training. Kinds `prototypes`,
    `lda` and `ridge` without `random_features` (a random feature map is not affine).
    `head_init`: new head rows are `random` (official) or the class means of the task's features
    (`class_mean`, the LP-then-FT idea: a random head distorts pretrained features):
    rows = scale * mu_c / (||mu_c|| * mean ||f||), i.e. the logits start as scaled cosines.
    `kind: lda`: linear discriminant analysis over the L2-normalised features from running class statistics
    (`sdlora.methods.lda`): logit_c = w_c^T g + b_c, w_c = Sigma^{-1} mu_c, b_c = -1/2 mu_c^T Sigma^{-1} mu_c
    (+ log n_c / N with `priors: empirical`), Sigma = (1 - a) S + a (tr S / D) I, S the pooled within-class
    covariance, a = `shrinkage` in (0, 1], or `oas` (the default: a chosen from the statistics, Oracle
    Approximating Shrinkage). Like `prototypes` it changes prediction only; `drift: sdc`
    moves its class means.
    `kind: ridge`: RanPAC's ridge regression onto one-hot targets from the same running sums: logit_c = w_c^T g,
    w_c = Q^{-1} (n_c / N) mu_c, Q = shrunk second moment of g (`shrinkage`, default 1e-2; = RanPAC's lambda
    a / (1 - a) relative to the mean eigenvalue of the Gram matrix).
    `random_features: M` (kinds lda and ridge): the head works on h = phi(g), a fixed random feature map M wide
    drawn from the run's seed (`sdlora.methods.random_features`): `feature_map: relu` (default, RanPAC's
    ReLU(W^T g)) or `rff` (random Fourier features of the RBF kernel of `bandwidth` s, default 1.4). The head is
    then no longer linear in the feature: the export formats refuse it (the run folder predicts).
    `kind: aligned`: classifier alignment (SLCA's CA; `sdlora.methods.aligned`): the linear head predicts, and
    after each task from the second on it is retrained on pseudo-features of every seen class drawn from stored
    per-class statistics of the features (`statistics`: `covariance`, default; `variance`; `multi_centroid`),
    `alignment_samples` per class and epoch (default 256), `alignment_epochs` (5) of SGD at `alignment_lr` (0.01)
    with cosine decay. `drift: sdc` moves the stored class means.

    How the linear head trains (every kind trains through it): `loss: current` (default, the official code):
    cross-entropy over the current task's logits only, CE(z[:, known:total], y - known); `seen`: over every
    class seen so far, CE(z[:, :total], y) (needed when a task has one class: one logit gives a zero loss).
    `freeze_old_head` (default true): old tasks' rows get no update. Unfrozen, they move with `loss: seen` (their
    logits are in the loss) or by weight decay; with `loss: current` and no weight decay they get no gradient and
    stay put (Adam's state starts at zero every task), so `false` there changes nothing and is refused.
    `head_lr`: the head's learning rate (default null: the body's `train.lr`). They were `train.loss`,
    `train.freeze_old_head` and `train.head_lr` (still read: `sdlora.config_migration`).
    """

    kind: Literal["linear", "prototypes", "lda", "ridge", "aligned"] | None = None
    drift: Literal["none", "sdc", "affine"] | None = None
    sdc_sigma: float | None = None  # sigma of the SDC weights w_ic (default 0.3)
    head_init: Literal["random", "class_mean"] | None = None
    head_init_scale: float | None = None  # `scale` of the class-mean rows (default 10.0)
    affine_ridge: float | None = None  # drift 'affine': a, the ridge towards the identity (default 0.3)
    # kinds 'lda' / 'ridge': a of shrunk(A, a) = (1 - a) A + a (tr A / D) I; 'oas' (lda only, the lda default):
    # chosen from the statistics (ridge default 1e-2)
    shrinkage: float | Literal["oas"] | None = None
    priors: Literal["uniform", "empirical"] | None = None  # kind 'lda': + log(n_c / N) when empirical
    random_features: int | None = None  # kinds 'lda' / 'ridge': M, a random feature map of g before the head
    feature_map: Literal["relu", "rff"] | None = None  # with random_features: ReLU(W^T g) or random Fourier features
    bandwidth: float | None = None  # feature_map 'rff': s of the kernel exp(-||g - g'||^2 / (2 s^2)) (default 1.4)
    # kind 'aligned': the statistics pseudo-features are drawn from, and the alignment's epochs, lr and samples
    statistics: Literal["covariance", "variance", "multi_centroid"] | None = None
    alignment_epochs: int | None = None
    alignment_lr: float | None = None
    alignment_samples: int | None = None  # pseudo-features per class (multi_centroid: per cluster) and epoch
    loss: Literal["current", "seen"] | None = None  # CE over the current task's logits (default) or every seen
    freeze_old_head: bool | None = None  # old head rows get no update (default true)
    head_lr: float | None = None  # learning rate of the linear head (default: train.lr)

    def __post_init__(self) -> None:
        for name in ("sdc_sigma", "affine_ridge", "head_init_scale", "bandwidth", "random_features", "alignment_epochs",
                     "alignment_lr", "alignment_samples"):
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
    setting it does not have, why (`kind`, `drift`, `head_init`, `training`). `head_inits=()`: no linear head
    (nothing to initialise or train: only the `HEAD_TRAINING` defaults, which change nothing, are accepted)."""

    kinds: tuple[Literal["linear", "prototypes", "lda", "ridge", "aligned"], ...] = (
        "linear", "prototypes", "lda", "ridge", "aligned")
    drifts: tuple[Literal["none", "sdc", "affine"], ...] = ("none", "sdc", "affine")
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
        for name, default in HEAD_TRAINING.items():
            if getattr(given, name) not in (None, default) and not self.head_inits:
                out[name] = self.reasons.get("training", "this method trains no linear head")
        kind = given.kind or self.kinds[0]
        if given.drift in ("sdc", "affine") and kind not in STATISTICS_KINDS and "drift" not in out:
            out["drift"] = ("drift compensation moves the class prototypes (or the class means of the LDA / ridge "
                            "heads and of alignment's statistics), which only kinds 'prototypes', 'lda', 'ridge' "
                            "and 'aligned' keep")
        if given.drift == "affine" and "drift" not in out and (kind == "aligned" or given.random_features):
            out["drift"] = ("the affine map moves statistics of the feature itself (prototypes, the LDA / ridge "
                            "heads without random_features); a random feature map is not affine and alignment's "
                            "per-class statistics take 'sdc'")
        if given.affine_ridge is not None and given.drift != "affine" and "drift" not in out:
            out["affine_ridge"] = "affine_ridge tunes drift 'affine'; set drift: affine with it"
        drift = given.drift or self.drifts[0]
        if given.sdc_sigma not in (None, SDC_SIGMA) and drift == "none" and "sdc_sigma" not in out:
            out["sdc_sigma"] = "sdc_sigma weighs SDC's samples; with drift 'none' it changes nothing: set drift: sdc"
        head_init = given.head_init or (self.head_inits[0] if self.head_inits else None)
        scale = given.head_init_scale
        if scale not in (None, HEAD_INIT_SCALE) and head_init == "random" and "head_init_scale" not in out:
            out["head_init_scale"] = ("head_init_scale scales the class-mean rows (head_init 'class_mean'); random "
                                      "rows change nothing with it: set head_init: class_mean")
        if given.sdc_sigma is not None and given.drift == "affine" and "drift" not in out:
            out["sdc_sigma"] = ("sdc_sigma weighs SDC's samples (drift 'sdc'); drift 'affine' fits one map to all of "
                                 "them: set it to null")
        if "kind" not in out:
            for name, (what, kinds) in TUNES.items():
                if getattr(given, name) is not None and kind not in kinds:
                    out[name] = f"{name} tunes {what} (kind {' / '.join(map(repr, kinds))}); this classifier is " \
                                f"kind {kind!r}"
        if given.shrinkage == "oas" and kind == "ridge" and "shrinkage" not in out:
            out["shrinkage"] = ("OAS estimates the shrinkage of a covariance (kind 'lda'); the ridge head's penalty is "
                                "a number in (0, 1]")
        if given.random_features is None:
            for name in ("feature_map", "bandwidth"):
                if getattr(given, name) is not None and "random_features" not in out:
                    out[name] = f"{name} shapes the random feature map, which needs random_features: M"
        elif given.bandwidth is not None and (given.feature_map or FEATURE_MAP) != "rff":
            out["bandwidth"] = ("bandwidth is the RBF kernel's of feature_map 'rff'; a ReLU map is scale-free (the "
                                "heads give the same logits for any scale of W)")
        return out

    def resolve(self, given: ClassifierConfig | None, key: str = "method.classifier") -> ClassifierConfig:
        """Every setting filled in with this method's defaults; a ConfigError naming the first refused key."""
        given = given or ClassifierConfig()
        for name, why in self.problems(given).items():
            raise ConfigError(f"{key}.{name}: {getattr(given, name)!r} is refused: {why}")
        # sdc's sigma is filled in wherever SDC is possible, except beside drift 'affine', which refuses it
        has_sdc, has_head = "sdc" in self.drifts and given.drift != "affine", bool(self.head_inits)
        return dataclasses.replace(
            given, kind=given.kind or self.kinds[0], drift=given.drift or self.drifts[0],
            sdc_sigma=given.sdc_sigma if given.sdc_sigma is not None else (SDC_SIGMA if has_sdc else None),
            affine_ridge=given.affine_ridge if given.affine_ridge is not None else (
                AFFINE_RIDGE if given.drift == "affine" else None),
            head_init=given.head_init or (self.head_inits[0] if has_head else None),
            head_init_scale=given.head_init_scale if given.head_init_scale is not None else (
                HEAD_INIT_SCALE if has_head else None),
            **head_defaults(given.kind or self.kinds[0], given),
            **{name: default if getattr(given, name) is None else getattr(given, name)
               for name, default in HEAD_TRAINING.items()})


def head_defaults(kind: str, given: ClassifierConfig) -> dict[str, Any]:
    """The settings of a head from running sums (`HEAD_DEFAULTS`, and the feature map's with random_features),
    defaults filled in; {} for the other kinds."""
    out = {name: default if getattr(given, name) is None else getattr(given, name)
           for name, default in HEAD_DEFAULTS.get(kind, {}).items()}
    if given.random_features is not None:
        out["feature_map"] = given.feature_map or FEATURE_MAP
        if out["feature_map"] == "rff":
            out["bandwidth"] = RFF_BANDWIDTH if given.bandwidth is None else given.bandwidth
    return out
