"""The options of every registered method, with no torch: `sdlora train` validates them before importing it.

Each method's class says `Options = ...Options` (one of these); `engine.build.validate_plugins` resolves a config's
`method.options` against it, and the command line's early checks (`sdlora.cli_checks`) import the same class through
the source catalog (`sdlora.catalog`) to refuse an unknown key or a bad value in about a second. Checks that need
the model (a prompted layer beyond the backbone's depth) stay with the method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal, cast

from sdlora.adapters.config import SDLoRAConfig
from sdlora.typed import PositiveInt, ReadWhen

#: class statistics of HiDe-Prompt's head alignment (`sdlora.methods.class_stats`)
StatsKind = Literal["covariance", "variance", "multi_centroid"]
#: HiDe-Prompt's keys read only when its task-identity head trains, and only when its heads are aligned
TII, CA = ReadWhen("tii_epochs", (0,), negate=True), ReadWhen("ca_epochs", (0,), negate=True)


@dataclass
class NoOptions:
    """A method without options of its own (ncm, linear_probe)."""


@dataclass
class PromptOptions:
    """What the options of every prompt method share: the prompts' learning rate, and the layer indices the
    prefixes enter (the fields `LAYER_FIELDS` name; together non-empty and >= 0 here, below the backbone's depth
    when the method is built)."""

    #: the fields holding backbone layer indices (none: L2P's prompts are tokens, not prefixes)
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ()

    prompt_lr: float | None = None  # learning rate of the prompts and keys (None: train.lr)

    def __post_init__(self) -> None:
        layers = self.prompt_layers()
        if self.LAYER_FIELDS and (not layers or any(i < 0 for i in layers)):
            raise ValueError(f"{' + '.join(self.LAYER_FIELDS)} must be non-empty indices >= 0, got {layers}")

    def prompt_layers(self) -> list[int]:
        """Every layer index of `LAYER_FIELDS`, in their order."""
        return [i for name in self.LAYER_FIELDS for i in getattr(self, name)]

    def check_non_negative(self, *names: str) -> None:
        """A ValueError naming the first field of `names` below 0 (loss weights)."""
        for name in names:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TaskPromptOptions(PromptOptions):
    """Options of the methods with one prefix per task (`sdlora.methods.prompting.TaskPromptMethod`).

    `init_from_previous`: task t's prefix E^t starts as a copy of E^{t-1} (from the second task on), else
    uniform(-1, 1). Default on: every release of DualPrompt and HiDe-Prompt runs with `shared_prompt_pool`,
    which copies the previous task's prompt into the new task's slot at task start (google-research/l2p
    train_continual.py, JH-LEE-KR/dualprompt-pytorch and thu-ml/HiDe-Prompt engine `train_and_evaluate`)."""

    init_from_previous: bool = True


@dataclass
class SDLoRAOptions(SDLoRAConfig):
    """SD-LoRA (`sdlora.methods.sdlora`): the adapter's keys (`SDLoRAConfig`, declared there once) plus the
    training-only ones below."""

    magnitude_lr: float | None = None  # learning rate of the magnitudes (None: train.lr)
    # weight decay of the magnitudes: none by default (the released code uses none; decaying alpha pulls
    # every old task's term towards zero, i.e. it is forgetting by construction)
    magnitude_weight_decay: Annotated[float, ReadWhen("ablation", ("fixed_old",), negate=True)] = 0.0
    ablation: Literal["none", "first_direction_only", "fixed_old"] = "none"  # Table 4
    # lambda of the pull of each old magnitude towards its value at the end of its task (module docstring)
    magnitude_anchor: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ablation != "none" and self.variant != "plain":
            raise ValueError(f"ablation {self.ablation!r} needs variant 'plain', got {self.variant!r}")
        if self.magnitude_weight_decay < 0:
            raise ValueError(f"magnitude_weight_decay must be >= 0, got {self.magnitude_weight_decay}")
        if not self.magnitude_anchor >= 0:
            raise ValueError(f"magnitude_anchor must be >= 0, got {self.magnitude_anchor}")
        schedule = cast(list[list[int]], self.rank_schedule or [])  # normalised by SDLoRAConfig: [[task, rank]...]
        later = [task for task, _ in schedule if task > 0]
        if self.ablation == "first_direction_only" and later:
            raise ValueError(f"rank_schedule entries from task {later[0]} on change nothing with ablation "
                             "'first_direction_only' (no direction opens after the first task): remove them")
        if self.magnitude_anchor and self.ablation == "fixed_old":
            raise ValueError("magnitude_anchor has no effect with ablation 'fixed_old' (old magnitudes are "
                             "frozen): remove one of them")


@dataclass
class SeqLoRAOptions:
    """Sequential LoRA (`sdlora.methods.seq_lora`): one LoRA for every task, plain or decoupled."""

    rank: PositiveInt = 10  # SD-LoRA's default rank
    targets: list[str] | None = None  # None: the backbone's default (q and v)
    decoupled: bool = False
    magnitude_init: Annotated[float, ReadWhen("decoupled", (True,))] = 0.0
    lora_lr: float | None = None  # learning rate of the LoRA parameters (None: train.lr)


@dataclass
class InfLoRAOptions:
    """InfLoRA (`sdlora.methods.inflora`): rank and targets of the designed-A LoRA, the DualGPM thresholds."""

    rank: PositiveInt = 10
    targets: list[str] | None = None  # None: the backbone's q/v targets mapped to k/v
    # DualGPM energy threshold after the first task (released code: lamb), rising linearly to threshold_end
    # (lame): lamb + (lame - lamb) * t / T after 0-indexed task t of T (release methods/inflora.py
    # update_DualGPM). Default 0.95 -> 1.0: the InfLoRA release's configs/cifar100_inflora.json and
    # configs/domainnet_inflora.json; its ImageNet-R configs (mimg5/10/20_inflora.json) use 0.98 -> 1.0
    # (configs/vision/inflora/ has each benchmark's setting).
    threshold: float = 0.95
    threshold_end: float = 1.0
    spectrum: Literal["official", "paper"] = "official"  # G = C^2 (released code) or C (paper)
    down_scale: float = 1.0 / math.sqrt(3.0)  # A = eigenvectors * down_scale (released code)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0 or not 0.0 < self.threshold_end <= 1.0:
            raise ValueError(f"threshold and threshold_end must lie in (0, 1], got {self.threshold}, "
                             f"{self.threshold_end}")


@dataclass
class FinetuneOptions:
    """Full fine-tuning (`sdlora.methods.finetune`)."""

    backbone_lr: float | None = None  # learning rate of the backbone (None: train.lr)


@dataclass
class L2POptions(PromptOptions):
    """L2P (`sdlora.methods.l2p`): a keyed pool of prompt tokens, top-N per input."""

    pool_size: PositiveInt = 10  # M
    prompt_length: PositiveInt = 5  # L_p, tokens per prompt
    top_n: PositiveInt = 5  # N, prompts per input
    pull_weight: float = 0.1  # lambda, the key pull (surrogate) loss weight
    balance: bool = False  # prompt-frequency balancing while training
    readout: Literal["prompt", "backbone"] = "prompt"  # f(x): mean prompt output or the backbone's own

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.top_n > self.pool_size:
            raise ValueError(f"top_n ({self.top_n}) cannot exceed pool_size ({self.pool_size})")
        self.check_non_negative("pull_weight")


@dataclass
class DualPromptOptions(TaskPromptOptions):
    """DualPrompt (`sdlora.methods.dualprompt`): shared G-prompts and per-task E-prompts, as prefixes."""

    LAYER_FIELDS = ("g_layers", "e_layers")

    g_layers: list[int] = field(default_factory=lambda: [0, 1])
    g_length: PositiveInt = 5
    e_layers: list[int] = field(default_factory=lambda: [2, 3, 4])
    e_length: PositiveInt = 20
    pull_weight: float = 1.0  # lambda
    # init_from_previous (TaskPromptOptions, on): E^t starts as E^{t-1}, the releases' shared_prompt_pool
    key_from_previous: bool = False  # k_t starts as k_{t-1}: the releases' shared_prompt_key (False)

    def __post_init__(self) -> None:
        if set(self.g_layers) & set(self.e_layers):
            raise ValueError(f"g_layers {self.g_layers} and e_layers {self.e_layers} overlap")
        super().__post_init__()
        self.check_non_negative("pull_weight")


@dataclass
class CodaPromptOptions(PromptOptions):
    """CODA-Prompt (`sdlora.methods.coda_prompt`): prompts assembled from attended components."""

    LAYER_FIELDS = ("layers",)

    pool_size: PositiveInt = 100  # M, components per layer over all tasks
    prompt_length: PositiveInt = 8  # L (L/2 prefix keys, L/2 prefix values)
    layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    ortho_weight: float = 0.0  # mu (release code: 0.0; paper: 0.1)

    def __post_init__(self) -> None:
        if self.prompt_length % 2:
            raise ValueError(f"prompt_length must be even (split into keys and values), got {self.prompt_length}")
        self.check_non_negative("ortho_weight")
        super().__post_init__()


@dataclass
class HiDePromptOptions(TaskPromptOptions):
    """HiDe-Prompt (`sdlora.methods.hide_prompt`): task prompts, task-identity inference, head alignment."""

    LAYER_FIELDS = ("e_layers",)

    # release (thu-ml/HiDe-Prompt @0ed4333): C = configs/imr_hideprompt_5e.py, S = training_scripts/
    # train_imr_vit.sh (a TII run, then the prompt run), E = engines/hide_promtp_wtp_and_tap_engine.py,
    # T = engines/hide_tii_engine.py, TT = trainers/tii_trainer.py; the runs use 8 processes x batch 24
    e_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # C:106 --e_prompt_layer_idx
    e_length: PositiveInt = 20  # C:115 --length (S passes 20)
    # init_from_previous (TaskPromptOptions, on): C:122 --shared_prompt_pool, E^t starts as E^{t-1} (E:257)
    prompt_momentum: float = 0.01  # m: S --prompt_momentum 0.01 (C:148: 0); E:315
    contrast_weight: float = 0.5  # lambda: S --reg 0.5 (C:149 default 0.01); E:75 orth_loss
    contrast_temperature: Annotated[float, ReadWhen("contrast_weight", (0, 0.0), negate=True)] = 0.8  # tau: E:539
    # prompt_lr (PromptOptions): lr of the prompts (None: train.lr); the release's head gets lr / 10
    # C:151 --ca_storage_efficient_method (default multi-centroid, which no script overrides; the engines
    # E:398-415/459-470 and T:185-202/324-335 fit and sample both feature kinds with it); covariance is the
    # paper's Gaussian, variance its diagonal
    statistics: StatsKind = "multi_centroid"
    # C:152 --n_centroids: k-means clusters per class (multi_centroid only)
    centroids: Annotated[PositiveInt, ReadWhen("statistics", ("multi_centroid",))] = 10
    covariance_eps: float = 1e-4  # E:391 (+ 1e-4 I; multi_centroid: diag(var) + 1e-4 I, E:467)
    tii_hidden: list[int] = field(default_factory=lambda: [2])  # C:143 --original_model_mlp_structure
    tii_epochs: int = 20  # S, TII run: --epochs 20
    # Adam; S, TII run: --lr 0.0005, scaled by batch 24 / 256 (TT:79)
    tii_lr: Annotated[float, TII] = 0.0005 * 24 / 256
    # 8 x 24: the TII run's DistributedSampler gives each process its own 24
    tii_batch_size: Annotated[PositiveInt, TII] = 192
    ca_epochs: int = 30  # C:141 --crct_epochs (S passes 30)
    ca_lr: Annotated[float, CA] = 0.005  # S --ca_lr 0.005 (head alignment, unscaled: trainers/hideprompt_trainer:105)
    tii_ca_lr: Annotated[float, CA] = 0.005 * 24 / 256  # TII alignment: --ca_lr scaled by 24 / 256 (TT:80)
    ca_momentum: Annotated[float, CA] = 0.9  # SGD momentum, E:427 and T:292
    # E:423 gives the SGD param group weight_decay = args.weight_decay, which is 0.0 ('--weight-decay' at C:27
    # is declared before '--weight_decay' 5e-4 at C:145 and so owns the default): SGD's own 5e-4 is overridden
    ca_weight_decay: Annotated[float, CA] = 0.0
    # pseudo-features per step and per class (multi_centroid: per cluster) of the pool: the release's effective
    # batches, 24 x 5 = 120 (E:440) and 24 (T:305). Each of its 8 processes draws its own pool of that many per
    # component and takes batches of that size, and DDP averages their gradients; but main.py:104 seeds every
    # process with the same --seed and every process consumes its generators alike (the same sampling and
    # randperm on the same shapes, from statistics all_gathered over the processes), so the 8 pools, shuffles
    # and gradients are the same draws (read from the code, not run): the average is one process's step on
    # 120 (24), not a step on 960 (192), the defaults here before
    ca_batch_size: Annotated[PositiveInt, CA] = 120
    tii_ca_batch_size: Annotated[PositiveInt, CA] = 24

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.prompt_momentum < 1:
            raise ValueError(f"prompt_momentum must be in [0, 1), got {self.prompt_momentum}")
        if self.contrast_weight < 0 or self.contrast_temperature <= 0:
            raise ValueError("contrast_weight must be >= 0 and contrast_temperature > 0")
        if any(k < 1 for k in self.tii_hidden) or min(self.tii_epochs, self.ca_epochs) < 0:
            raise ValueError("tii_hidden widths must be >= 1; tii_epochs and ca_epochs >= 0")
        if self.centroids < 1:
            raise ValueError(f"centroids (k-means clusters per class) must be >= 1, got {self.centroids}")
