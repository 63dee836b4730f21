"""`--format hf`: a transformers `save_pretrained` folder (config with id2label / label2id, merged weights,
tokenizer) plus the classifier in `classifier.safetensors`.

`AutoModel.from_pretrained(FOLDER)` loads it with no load report (every key used, none missing). The run's
classifier sits on a pooled feature (mean over tokens for sentence encoders such as MiniLM, or CLS, optionally
L2-normalised). transformers' `*ForSequenceClassification` classes pool their own way (BERT: tanh(dense(CLS))):
* CLS pooling, not normalised, on an architecture in `SEQUENCE_HEADS`: a second folder
  `sequence-classification/` holds that class with dense = eps I and classifier = W / eps, so
  tanh(eps h) / eps = h - eps^2 h^3 / 3 reproduces the linear head to ~1e-6 relative;
  `AutoModelForSequenceClassification.from_pretrained(FOLDER/sequence-classification)` loads it silently.
* mean pooling (MiniLM and other sentence encoders): no stock class pools that way, so none is written; use
  `sdlora.load(FOLDER)` or the five lines in the model card (AutoModelForSequenceClassification on FOLDER
  would attach a new, untrained head and transformers reports it as MISSING).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor
from transformers import AutoModel

from sdlora.export.common import EXPORT_FORMATS, ExportFormat, ExportSource

CLASSIFIER_FILE = "classifier.safetensors"
SEQUENCE_FOLDER = "sequence-classification"
#: scale of the linearised tanh pooler (see the module docstring)
EPS = 1e-4


def bert_sequence_head(encoder: Any, weight: Tensor, bias: Tensor) -> Any:
    """BertForSequenceClassification computing W h_cls + b: pooler dense = EPS I, classifier = W / EPS."""
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(encoder.config)
    config.num_labels = weight.shape[0]
    config.id2label, config.label2id = encoder.config.id2label, encoder.config.label2id
    model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        model.base_model.load_state_dict(encoder.state_dict(), strict=True)
        dense = model.base_model.pooler.dense
        dense.weight.copy_(torch.eye(dense.weight.shape[0]) * EPS)
        dense.bias.zero_()
        model.classifier.weight.copy_(weight / EPS)
        model.classifier.bias.copy_(bias)
    return model.eval()


#: config.model_type -> builder of its stock sequence-classification model reproducing a linear CLS head
SEQUENCE_HEADS: dict[str, Callable[[Any, Tensor, Tensor], Any]] = {"bert": bert_sequence_head}


def hf_encoder(source: ExportSource) -> Any:
    """A fresh `AutoModel` of the run's config, holding the merged weights, with the label maps."""
    model = getattr(source.backbone, "model", None)
    tokenizer = getattr(source.backbone, "tokenizer", None)
    if tokenizer is None or not hasattr(getattr(model, "config", None), "model_type"):
        raise ValueError(f"--format hf needs a Hugging Face encoder, this run uses "
                         f"{source.backbone_config.get('name')!r}; use --format timm")
    config = copy.deepcopy(model.config)
    config.id2label = dict(enumerate(source.class_names))
    config.label2id = {name: i for i, name in enumerate(source.class_names)}
    fresh = AutoModel.from_config(config)
    fresh.load_state_dict(source.merged_backbone, strict=True)
    return fresh.eval()


def write_hf(source: ExportSource, folder: Path) -> dict[str, Any]:
    encoder = hf_encoder(source)
    encoder.save_pretrained(folder)
    source.backbone.tokenizer.save_pretrained(folder)
    options = source.backbone.options
    save_file({"weight": source.head_weight.contiguous(), "bias": source.head_bias.contiguous()},
              str(folder / CLASSIFIER_FILE), metadata={"classifier": source.classifier})
    builder = SEQUENCE_HEADS.get(encoder.config.model_type)
    sequence = options.pooling == "cls" and not options.normalize and builder is not None
    if sequence:
        builder(encoder, source.head_weight, source.head_bias).save_pretrained(folder / SEQUENCE_FOLDER)
        source.backbone.tokenizer.save_pretrained(folder / SEQUENCE_FOLDER)
    notes = [] if sequence else [
        f"no {SEQUENCE_FOLDER}/ folder: transformers' *ForSequenceClassification cannot reproduce {options.pooling} "
        f"pooling{' with L2 normalisation' if options.normalize else ''}; load with AutoModel + "
        f"{CLASSIFIER_FILE} (model card) or sdlora.load"]
    return {"classifier_file": CLASSIFIER_FILE, "pooling": options.pooling, "normalize": options.normalize,
            "max_length": options.max_length, "sequence_classification": SEQUENCE_FOLDER if sequence else None,
            "notes": notes}


def hf_recipe(source: ExportSource, manifest: dict[str, Any]) -> str:
    pool = ("(h * m).sum(1) / m.sum(1)" if manifest["pooling"] == "mean" else "h[:, 0]")
    norm = manifest["normalize"] or source.classifier == "cosine"
    normalize = "\n    f = F.normalize(f, dim=-1)" if norm else ""
    return f"""```python
import torch, torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
model, tok = AutoModel.from_pretrained("FOLDER").eval(), AutoTokenizer.from_pretrained("FOLDER")
head = load_file("FOLDER/{CLASSIFIER_FILE}")
batch = tok(["book a table for two"], padding=True, truncation=True, max_length={manifest["max_length"]},
            return_tensors="pt")
with torch.no_grad():
    h, m = model(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
    f = {pool}  # the run's {manifest["pooling"]} pooling{normalize}
    logits = f @ head["weight"].T + head["bias"]
print(model.config.id2label[int(logits.argmax(-1))])
```

Or `sdlora.load("FOLDER").predict([...])`. {sequence_note(source, manifest)}"""


def sequence_note(source: ExportSource, manifest: dict[str, Any]) -> str:
    if manifest["sequence_classification"]:
        scaled = " (a cosine classifier: same argmax, logits scaled by the feature norm)" \
            if source.classifier == "cosine" else ""
        return (f"`AutoModelForSequenceClassification.from_pretrained(\"FOLDER/{SEQUENCE_FOLDER}\")` gives the "
                f"same logits to ~1e-6{scaled}: its pooler is a linearised tanh (dense = {EPS} I, classifier = "
                f"W / {EPS}), so its `pooler_output` is not meaningful on its own.")
    return (f"`AutoModelForSequenceClassification` cannot reproduce the run's {manifest['pooling']} pooling"
            f"{' with L2 normalisation' if manifest['normalize'] else ''} (its BERT head is tanh(dense(CLS))); "
            "on this folder it would add an untrained head, which transformers reports as MISSING.")


EXPORT_FORMATS.register("hf", "transformers save_pretrained folder + tokenizer + classifier.safetensors")(
    ExportFormat(write=write_hf, library="transformers", how_to_load=hf_recipe))
