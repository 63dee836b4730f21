"""`--format hf`: a transformers `save_pretrained` folder (config with id2label / label2id, merged weights,
tokenizer, the classifier in `classifier.safetensors`) that both Auto classes load without a load report:

* `AutoModel.from_pretrained(FOLDER)`: the merged encoder (stock class, every key used, none missing);
* `AutoModelForSequenceClassification.from_pretrained(FOLDER, trust_remote_code=True)`: the run's classifier
  (`hf_remote/modeling_sdlora.py`, copied into the folder and named in config.json's `auto_map`). Custom code
  because the run pools its own way (mean over non-padding tokens for sentence encoders such as MiniLM, or CLS
  without BERT's tanh pooler) and L2-normalises for a prototype head; no stock class does that.
* CLS pooling, not normalised, on an architecture in `SEQUENCE_HEADS`: also a folder `sequence-classification/`
  with the stock class (no custom code): dense = eps I and classifier = W / eps, so
  tanh(eps h) / eps = h - eps^2 h^3 / 3 reproduces the linear head to ~1e-6 relative.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoModel

from sdlora.export.common import EXPORT_FORMATS, NORMALIZED_KINDS, ExportFormat, ExportSource, export_backbone
from sdlora.export.hf_remote.modeling_sdlora import CLASSIFIER_FILE, SDLoRAForSequenceClassification

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
    if model is None or tokenizer is None or not hasattr(getattr(model, "config", None), "model_type"):
        raise ValueError(f"--format hf needs a Hugging Face encoder, this run uses "
                         f"{source.backbone_config.get('name')!r}; use --format timm")
    config = copy.deepcopy(model.config)
    config.id2label = dict(enumerate(source.class_names))
    config.label2id = {name: i for i, name in enumerate(source.class_names)}
    fresh = AutoModel.from_config(config)
    fresh.load_state_dict(source.merged_backbone, strict=True)
    return fresh.eval()


def save_run_tokenizer(source: ExportSource, folder: Path) -> None:
    """The run's tokenizer, truncating where the run did: `model_max_length` = the run's `max_length` (the model's
    own, often 512, would let `tok(texts, truncation=True)` read past what the run saw and change predictions), and
    no stale `max_length` of the original model's files."""
    tokenizer = copy.deepcopy(source.backbone.tokenizer)
    tokenizer.model_max_length = source.backbone.options.max_length
    tokenizer.init_kwargs.pop("max_length", None)
    tokenizer.save_pretrained(folder)


def write_hf(source: ExportSource, folder: Path) -> dict[str, Any]:
    encoder = hf_encoder(source)
    options = source.backbone.options
    normalize = bool(options.normalize) or source.classifier in NORMALIZED_KINDS
    classifier = SDLoRAForSequenceClassification.from_encoder(encoder, source.head_weight, source.head_bias,
                                                              options.pooling, normalize, options.max_length)
    # config.json (+ auto_map), model.safetensors (the encoder's keys), classifier.safetensors, modeling_sdlora.py
    classifier.save_pretrained(folder)
    save_run_tokenizer(source, folder)
    builder = SEQUENCE_HEADS.get(encoder.config.model_type)
    # the stock class applies W to the un-normalised feature: the same argmax for a linear or cosine head only
    sequence = (options.pooling == "cls" and not options.normalize and builder is not None
                and source.classifier != "normalized_linear")
    if sequence:
        assert builder is not None  # part of `sequence`
        builder(encoder, source.head_weight, source.head_bias).save_pretrained(folder / SEQUENCE_FOLDER)
        save_run_tokenizer(source, folder / SEQUENCE_FOLDER)
    return {"classifier_file": CLASSIFIER_FILE, "pooling": options.pooling, "normalize": options.normalize,
            "max_length": options.max_length, "sequence_classification": SEQUENCE_FOLDER if sequence else None,
            "remote_code": "modeling_sdlora.SDLoRAForSequenceClassification", "notes": []}


def hf_recipe(source: ExportSource, manifest: dict[str, Any]) -> str:
    pool = ("(h * m).sum(1) / m.sum(1)" if manifest["pooling"] == "mean" else "h[:, 0]")
    norm = manifest["normalize"] or source.classifier in NORMALIZED_KINDS
    normalize = "\n    f = F.normalize(f, dim=-1)" if norm else ""
    kind = {"cosine": "cosine similarities to the class means",
            "normalized_linear": "LDA logits"}.get(source.classifier, "linear logits")
    return f"""One line with transformers (the run's {kind}):

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained("FOLDER", trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained("FOLDER")
batch = tok(["book a table for two"], padding=True, truncation=True, max_length={manifest["max_length"]},
            return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
print(model.config.id2label[int(logits.argmax(-1))])
```

`trust_remote_code=True` is needed because the run pools the encoder's output its own way
({manifest["pooling"]} pooling{" + L2 normalisation" if norm else ""}), which no stock
`*ForSequenceClassification` class does: the folder ships that code in `modeling_sdlora.py` (about 120 lines,
torch and transformers only; read it before trusting it), named in `config.json`'s `auto_map`. Without the flag
transformers loads its stock class for `{source.backbone.model.config.model_type}`, whose head is new and untrained
(it reports the keys as MISSING).

Without custom code: the merged encoder loads with `AutoModel`, and five lines apply the classifier:

```python
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

Or `sdlora.load("FOLDER").predict([...])`.{sequence_note(source, manifest)}"""


def sequence_note(source: ExportSource, manifest: dict[str, Any]) -> str:
    if not manifest["sequence_classification"]:
        return ""
    scaled = " (a cosine classifier: same argmax, logits scaled by the feature norm)" \
        if source.classifier == "cosine" else ""
    return (f" With CLS pooling the stock class works too, without custom code: "
            f"`AutoModelForSequenceClassification.from_pretrained(\"FOLDER/{SEQUENCE_FOLDER}\")` gives the "
            f"same logits to ~1e-6{scaled}; its pooler is a linearised tanh (dense = {EPS} I, classifier = "
            f"W / {EPS}), so its `pooler_output` is not meaningful on its own.")


def load_hf(folder: Path, manifest: dict[str, Any], device: str = "cpu") -> Any:
    """The folder as an `sdlora.load` classifier: the registered encoder backbone over the saved model (the run's
    pooling, length and normalisation), the head from `classifier.safetensors`."""
    from safetensors.torch import load_file

    from sdlora.export.classifier import Classifier

    keep = ("pooling", "max_length", "normalize")
    options = {k: v for k, v in manifest["backbone_config"]["options"].items() if k in keep}
    backbone = export_backbone(manifest, {**options, "model": str(folder)}).to(device)
    head = load_file(str(folder / manifest["classifier_file"]))
    return Classifier(backbone, backbone, head["weight"].to(device), head["bias"].to(device),
                      manifest["classifier"], manifest["class_names"])


EXPORT_FORMATS.register("hf", "transformers save_pretrained folder: AutoModel, and "
                        "AutoModelForSequenceClassification with trust_remote_code")(
    ExportFormat(write=write_hf, library="transformers", how_to_load=hf_recipe, load=load_hf))
