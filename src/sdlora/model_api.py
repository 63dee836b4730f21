"""`get_sdlora_model(model, config)`: SD-LoRA on any timm ViT or Hugging Face model, in the spirit of PEFT.

    model = get_sdlora_model(model, SDLoRAConfig(rank=8))   # default targets chosen from the model
    model.begin_task(); ...train with any optimiser over model.parameters() (Trainer, Lightning...)...
    model.end_task(); model.print_trainable_parameters()
    model.save_pretrained("ckpt"); SDLoRAModel.from_pretrained(fresh_model, "ckpt")  # unmerged: continue later
    plain = model.merge_and_unload()                       # plain nn.Linear layers back, plain state_dict keys

The returned `SDLoRAModel` registers the model as `base_model` and the shared magnitudes as the submodule
`sdlora_magnitudes`, so `parameters()`, `.to()`, `state_dict()` and DDP see them (wrap DDP per task: a task
adds parameters at `begin_task`). Attributes it does not have are looked up on the model (`model.config`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.adapters.adapter import check_injectable
from sdlora.wrapping import set_submodule

ADAPTER_FILE = "sdlora_adapter.safetensors"
TRAINED_FILE = "sdlora_modules_to_train.safetensors"
MODEL_FILE = "sdlora_model.json"

# -- default targets -------------------------------------------------------------------------------


def default_targets(model: nn.Module) -> list[str]:
    """The SD-LoRA targets of `model`, from the registered backbones (`Backbone.targets_for`: timm ViTs' fused q, v;
    the query / value layers of Hugging Face model types)."""
    from sdlora.registry import BACKBONES, load_builtins

    load_builtins()
    for name in BACKBONES.names():
        found = BACKBONES.get(name).targets_for(model)
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

    # -- save / load the unmerged state ------------------------------------------------------------
    def save_pretrained(self, folder: str | os.PathLike[str], **kwargs: Any) -> None:
        """Save what SD-LoRA adds, unmerged, to continue with the next task later: every direction, the magnitudes,
        the task count and an open task (sdlora_adapter.safetensors), and the weights of `modules_to_train`.
        The base model's own weights are not written: rebuild it as before and call `from_pretrained(model,
        folder)`. For a plain model that loads anywhere, save `merge_and_unload()` instead."""
        if kwargs:
            raise TypeError(f"SDLoRAModel.save_pretrained takes no {sorted(kwargs)}: it writes the unmerged adapter "
                            "only; for a plain transformers checkpoint use merge_and_unload().save_pretrained(...)")
        self.adapter._check_loaded("save_pretrained")
        if self.adapter.merged:
            raise RuntimeError("the directions are merged into the weights: unmerge first, or save the plain model "
                               "with merge_and_unload().save_pretrained(...)")
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.adapter.save(folder / ADAPTER_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.trained_module_state().items()},
                  str(folder / TRAINED_FILE))
        (folder / MODEL_FILE).write_text(json.dumps({"format": "sdlora-model-1", "modules_to_train":
                                                     self.modules_to_train, "base_model": type(self.base_model)
                                                     .__name__}, indent=2))

    def trained_module_state(self) -> dict[str, Any]:
        """The state of the modules `modules_to_train` names (e.g. a classifier), by their names in the model."""
        names = [n for n, _ in self.base_model.named_modules() if n and any(fnmatch.fnmatchcase(n, p)
                                                                             for p in self.modules_to_train)]
        state = self.base_model.state_dict()
        return {k: v for k, v in state.items() if any(k.startswith(f"{n}.") for n in names)}

    @classmethod
    def from_pretrained(cls, model: nn.Module, folder: str | os.PathLike[str]) -> SDLoRAModel:
        """`model` (the same base model, freshly built) with the state `save_pretrained` wrote into `folder`:
        training goes on with `begin_task()` of the next task exactly as it would have in memory."""
        from safetensors.torch import load_file

        from sdlora.adapters.io import read_adapter_file

        folder = Path(folder)
        if not (folder / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{folder} holds no SDLoRAModel.save_pretrained output ({MODEL_FILE} missing)")
        meta = json.loads((folder / MODEL_FILE).read_text())
        structure, tensors = read_adapter_file(folder / ADAPTER_FILE)
        wrapped = cls(model, SDLoRAConfig.from_dict(structure["config"]), meta["modules_to_train"])
        wrapped.adapter.load_state(structure, tensors)
        trained = load_file(str(folder / TRAINED_FILE))
        own = wrapped.trained_module_state()
        if set(trained) != set(own):
            only_saved, only_here = sorted(set(trained) - set(own))[:5], sorted(set(own) - set(trained))[:5]
            raise ValueError(f"{folder}: the saved modules_to_train weights do not fit this model (only saved: "
                             f"{only_saved}, only here: {only_here})")
        for key, value in trained.items():
            own[key].copy_(value)
        return wrapped

    # -- merge -------------------------------------------------------------------------------------
    def merge_and_unload(self) -> nn.Module:
        """Merge every direction into its weight and put the plain nn.Linear layers back; returns the model."""
        if self.adapter.current_task is not None:
            raise RuntimeError("task still open: call end_task() before merge_and_unload()")
        self.adapter.merge()
        for name, wrapper in self.adapter.wrappers.items():
            set_submodule(self.base_model, name, wrapper.base)
        self.adapter.unloaded = True  # every later lifecycle call refuses (`_check_loaded`)
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
    check_injectable(model, config)  # before the default targets are looked up (an adapted ViT has none)
    if config.targets is None:
        config = dataclasses.replace(config, targets=default_targets(model))
    return SDLoRAModel(model, config, modules_to_train)
