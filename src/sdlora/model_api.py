"""`get_sdlora_model(model, config)`: SD-LoRA on any timm ViT or Hugging Face model, in the spirit of PEFT.

    model = get_sdlora_model(model, SDLoRAConfig(rank=8))   # default targets chosen from the model
    model.begin_task(); ...train with any optimiser over model.parameters() (Trainer, Lightning...)...
    model.end_task(); model.print_trainable_parameters()
    plain = model.merge_and_unload()                       # plain nn.Linear layers back, plain state_dict keys

The returned `SDLoRAModel` registers the model as `base_model` and the shared magnitudes as the submodule
`sdlora_magnitudes`, so `parameters()`, `.to()`, `state_dict()` and DDP see them (wrap DDP per task: a task
adds parameters at `begin_task`). Attributes it does not have are looked up on the model (`model.config`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from collections.abc import Callable
from typing import Any

from torch import nn

from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig

# -- default targets -------------------------------------------------------------------------------


def timm_vit_targets(model: nn.Module) -> list[str] | None:
    """q and v of timm's fused `blocks.N.attn.qkv`."""
    fused = any(isinstance(m, nn.Linear) and fnmatch.fnmatchcase(n, "blocks.*.attn.qkv")
                for n, m in model.named_modules())
    return ["blocks.*.attn.qkv[q,v]"] if fused else None


def hf_encoder_targets(model: nn.Module) -> list[str] | None:
    """The query / value Linears of `config.model_type` (also inside a *ForSequenceClassification model)."""
    from sdlora.backbones.hf_encoder import ATTENTION_TARGETS

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ATTENTION_TARGETS:
        return None
    prefix = getattr(model, "base_model_prefix", "")
    inner = f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""
    return [inner + pattern for pattern in ATTENTION_TARGETS[model_type]]


#: detectors tried in order: model -> target patterns, or None when the model is not theirs
DEFAULT_TARGETS: dict[str, Callable[[nn.Module], list[str] | None]] = {
    "timm_vit": timm_vit_targets,
    "hf_encoder": hf_encoder_targets,
}


def default_targets(model: nn.Module) -> list[str]:
    for detect in DEFAULT_TARGETS.values():
        found = detect(model)
        if found:
            return found
    raise ValueError(f"no default SD-LoRA targets for {type(model).__name__} (known: timm ViTs and Hugging Face "
                     f"model_types of sdlora.backbones.hf_encoder.ATTENTION_TARGETS); pass SDLoRAConfig(targets=...)")


# -- the model -------------------------------------------------------------------------------------


class SDLoRAModel(nn.Module):
    """`base_model` with SD-LoRA injected; see the module docstring."""

    def __init__(self, model: nn.Module, config: SDLoRAConfig, modules_to_train: list[str] | None = None) -> None:
        super().__init__()
        adapter = SDLoRAAdapter(model, config)  # injects and freezes `model`
        self.base_model = model
        self.sdlora_magnitudes = adapter.magnitudes
        self.__dict__["adapter"] = adapter  # banks are registered through the wrapped layers already
        self.modules_to_train = list(modules_to_train or [])
        self._unfreeze(self.modules_to_train)
        # forward = the model's forward, with its signature (Trainer keeps the columns it names)
        self.forward = functools.update_wrapper(functools.partial(_call, model), model.forward)

    def _unfreeze(self, patterns: list[str]) -> None:
        for pattern in patterns:
            matched = [m for n, m in self.base_model.named_modules() if n and fnmatch.fnmatchcase(n, pattern)]
            if not matched:
                raise ValueError(f"modules_to_train: {pattern!r} matches no module of {type(self.base_model).__name__}")
            for module in matched:
                module.requires_grad_(True)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_modules"]["base_model"], name)

    # -- task lifecycle ----------------------------------------------------------------------------
    def begin_task(self) -> dict[str, int]:
        """A new direction in every adapted matrix; build the optimiser after this call."""
        return self.adapter.begin_task()

    def end_task(self) -> dict[str, Any]:
        """Freeze the task's direction (KD may absorb it); the magnitudes keep training in later tasks."""
        return self.adapter.end_task()

    # -- facts -------------------------------------------------------------------------------------
    def trainable_parameter_counts(self) -> tuple[int, int]:
        params = {id(p): p for p in self.parameters()}.values()
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def print_trainable_parameters(self) -> None:
        trainable, total = self.trainable_parameter_counts()
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || "
              f"trainable%: {100 * trainable / max(total, 1):.4f}")

    # -- merge -------------------------------------------------------------------------------------
    def merge_and_unload(self) -> nn.Module:
        """Merge every direction into its weight and put the plain nn.Linear layers back; returns the model."""
        if self.adapter.current_task is not None:
            raise RuntimeError("task still open: call end_task() before merge_and_unload()")
        self.adapter.merge()
        for name, wrapper in self.adapter.wrappers.items():
            parent_name, _, child = name.rpartition(".")
            parent = self.base_model.get_submodule(parent_name) if parent_name else self.base_model
            setattr(parent, child, wrapper.base)
        return self.base_model


def _call(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return model(*args, **kwargs)


def get_sdlora_model(model: nn.Module, config: SDLoRAConfig | None = None,
                     modules_to_train: list[str] | None = None) -> SDLoRAModel:
    """Inject SD-LoRA into `model` (in place) and return it wrapped; `modules_to_train`: fnmatch patterns of
    submodules that stay trainable (e.g. ["classifier"] for a Hugging Face sequence classifier).

    With no config, or a config without targets (`SDLoRAConfig.targets` is None by default), the targets come
    from the model: timm ViT q/v, or the query/value layers of `config.model_type`.
    """
    config = config if config is not None else SDLoRAConfig()
    if config.targets is None:
        config = dataclasses.replace(config, targets=default_targets(model))
    return SDLoRAModel(model, config, modules_to_train)
