"""Prompt injection without forking timm or transformers (issue 10).

* `PrefixAttention` wraps a timm ViT `Attention`: prefix keys/values P_k, P_v ([B, L, dim]) join the keys and
  values of the wrapped module's own qkv projection (prefix-tuning, DualPrompt/CODA-Prompt/HiDe-Prompt):
      Attn(q, [P_k; k], [P_v; v])
* `PromptedViT` puts those wrappers into a timm VisionTransformer and a pre-hook on its blocks that inserts
  prompt tokens after the [CLS] (and register) tokens, i.e. after patch + positional embedding (L2P).
* `PromptedBert` does the prefix for Hugging Face BERT-like self-attention.
Prompts are given per forward with a context manager (`with prompted.inject(...)`), so the wrapped model is
the plain one whenever no prompt is given.
"""

from sdlora.prompts.bert import PrefixSelfAttention, PromptedBert
from sdlora.prompts.pool import KeyedPool, TaskPrefixes, cosine_match, layer_prefixes, pull_loss
from sdlora.prompts.vit import PrefixAttention, PromptedViT

__all__ = ["KeyedPool", "PrefixAttention", "PrefixSelfAttention", "PromptedBert", "PromptedViT", "TaskPrefixes",
           "cosine_match", "layer_prefixes", "pull_loss"]
