"""SDLoRAForSequenceClassification: an sdlora run as a transformers sequence classifier (custom code).

Written by `sdlora export RUN --format hf` into the export folder, next to `config.json`, whose `auto_map`
points `AutoModelForSequenceClassification` here:

    model = AutoModelForSequenceClassification.from_pretrained(FOLDER, trust_remote_code=True)

Why custom code: the run pools the encoder's last hidden state its own way (mean over non-padding tokens for
sentence encoders such as all-MiniLM-L6-v2, or the CLS token without BERT's tanh pooler) and, with a prototype
or LDA classifier, L2-normalises the feature; no stock `*ForSequenceClassification` class does that.

Layout, chosen so that `AutoModel.from_pretrained(FOLDER)` (no custom code) also loads without a load report:
* `config.json` stays the encoder's own config (`model_type` bert, ...) plus `id2label` / `label2id`,
  `sdlora_pooling` ("mean" | "cls"), `sdlora_normalize` (bool) and `sdlora_max_length` (the run's truncation:
  the saved tokenizer's `model_max_length`, so `tok(texts, truncation=True)` cuts where the run did; a longer input
  is warned about once);
* `model.safetensors` holds the encoder's own keys only (the stock AutoModel class uses every one of them);
* the head lives in `classifier.safetensors` (`weight` [C, H], `bias` [C]): a key in `model.safetensors`
  would be reported UNEXPECTED by AutoModel. `from_pretrained` reads it, `save_pretrained` writes it.

logits = normalize?(pool(encoder(x).last_hidden_state)) W^T + b, exactly the run's classifier.
Self-contained on purpose (torch, safetensors, transformers only): this file is imported from the folder.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import cached_file

logger = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.safetensors"
POOLINGS = ("mean", "cls")
#: from_pretrained keyword arguments that locate files (forwarded when fetching CLASSIFIER_FILE)
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "proxies", "revision", "subfolder", "token")


def pool(hidden: torch.Tensor, mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """`mean`: sum_i m_i h_i / sum_i m_i over tokens (padding has m_i = 0); `cls`: the first token."""
    if how == "cls":
        return hidden[:, 0]
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


class SDLoRAForSequenceClassification(PreTrainedModel):
    """Any `AutoModel` encoder (built from the config) + the run's pooling, optional L2 norm and linear head."""

    config_class = AutoConfig  # type: ignore[assignment]  # config.json is the encoder's own config (module docstring)
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    _keys_to_ignore_on_load_missing = [r"^classifier\."]  # filled from CLASSIFIER_FILE by from_pretrained

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.pooling = getattr(config, "sdlora_pooling", "mean")
        if self.pooling not in POOLINGS:
            raise ValueError(f"sdlora_pooling must be one of {POOLINGS}, got {self.pooling!r}")
        self.normalize = bool(getattr(config, "sdlora_normalize", False))
        self.max_length = getattr(config, "sdlora_max_length", None)
        self.warned_length = False
        self.backbone = AutoModel.from_config(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> SequenceClassifierOutput:
        """Logits [N, num_labels]; with `labels` also the cross-entropy loss. Other keyword arguments
        (token_type_ids, output_hidden_states, ...) go to the encoder."""
        if (self.max_length and input_ids is not None and input_ids.shape[-1] > self.max_length
                and not self.warned_length):
            self.warned_length = True
            logger.warning("inputs of %d tokens, but the run read at most %d: tokenize with truncation=True to "
                           "predict as it did", input_ids.shape[-1], self.max_length)
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        kwargs.pop("return_dict", None)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
        features = pool(out.last_hidden_state, attention_mask, self.pooling)
        if self.normalize:
            features = F.normalize(features, dim=-1)
        logits = self.classifier(features.to(self.classifier.weight.dtype))
        loss = F.cross_entropy(logits.float(), labels.view(-1)) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.get("hidden_states"),
                                        attentions=out.get("attentions"))

    @classmethod
    def from_encoder(cls, encoder: PreTrainedModel, weight: torch.Tensor, bias: torch.Tensor, pooling: str = "mean",
                     normalize: bool = False, max_length: int | None = None) -> Any:
        """Wrap a loaded encoder (its config carries id2label / label2id) and a head [C, H], [C]."""
        config = copy.deepcopy(encoder.config)  # save_pretrained writes auto_map into it
        config.sdlora_pooling, config.sdlora_normalize = pooling, normalize
        if max_length is not None:
            config.sdlora_max_length = max_length
        model = cls(config)
        with torch.no_grad():
            model.backbone.load_state_dict(encoder.state_dict(), strict=True)
            model.classifier.weight.copy_(weight)
            model.classifier.bias.copy_(bias)
        return model.eval()

    @classmethod
    def from_pretrained(  # type: ignore[override]  # needs a path (not None): the head is read from it too
            cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """transformers' loader for the encoder, then the head from CLASSIFIER_FILE (same folder or repo)."""
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        head_file = cached_file(pretrained_model_name_or_path, CLASSIFIER_FILE, **hub)
        assert head_file is not None  # cached_file raises when the file is missing
        head = load_file(head_file)
        with torch.no_grad():
            model.classifier.weight.copy_(head["weight"])
            model.classifier.bias.copy_(head["bias"])
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """config.json + the encoder's own keys (what AutoModel expects) + CLASSIFIER_FILE + this file."""
        kwargs.setdefault("state_dict", self.backbone.state_dict())
        super().save_pretrained(save_directory, *args, **kwargs)
        head = {"weight": self.classifier.weight.detach().cpu().contiguous(),
                "bias": self.classifier.bias.detach().cpu().contiguous()}
        save_file(head, os.path.join(save_directory, CLASSIFIER_FILE), metadata={"format": "pt"})


SDLoRAForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
