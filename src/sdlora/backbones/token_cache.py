"""Token ids kept per text: each distinct text is tokenised once, every later batch only pads cached ids.

A class-incremental run reads the same texts many times (every epoch, the feature passes before and after
training, evaluation after every task over every seen class): the main CLINC150 job tokenises each training
text 4 times and each test text up to 10 times. `TokenCache.batch(texts)` returns exactly what
`tokenizer(texts, padding="longest", truncation=True, max_length=L, return_tensors="pt")` returns (same keys,
values, int64 dtype, padding side): truncation is per text, and padding to the batch's longest text uses the
tokenizer's own pad values (pad_token_id for input_ids, pad_token_type_id for token_type_ids, 0 for the
attention mask).
"""

from __future__ import annotations

from typing import Any

import torch

#: the outputs whose padding value is known; a tokenizer returning anything else is not cached
PADDED_KEYS = ("input_ids", "token_type_ids", "attention_mask")


class TokenCache:
    """Per-text token ids of one tokenizer at one max_length, padded per batch like the tokenizer pads."""

    def __init__(self, tokenizer: Any, max_length: int, capacity: int = 1_000_000) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.capacity = capacity  # distinct texts kept; beyond it new texts are tokenised every time
        self.entries: dict[str, tuple[list[int], ...]] = {}
        self.keys: tuple[str, ...] | None = None
        self.left = tokenizer.padding_side == "left"
        self.pad = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
                    "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}

    @staticmethod
    def supports(tokenizer: Any) -> bool:
        """A pad token and a plain padding side: what padding from the cache needs."""
        return tokenizer.pad_token_id is not None and getattr(tokenizer, "padding_side", None) in ("left", "right")

    def __len__(self) -> int:
        return len(self.entries)

    def _encode(self, texts: list[str]) -> dict[str, tuple[list[int], ...]] | None:
        """Unpadded ids of `texts` (one tokenizer call); None when the tokenizer returns unknown keys."""
        encoded = self.tokenizer(texts, padding=False, truncation=True, max_length=self.max_length)
        keys = tuple(encoded.keys())
        if any(k not in PADDED_KEYS for k in keys) or "input_ids" not in keys:
            return None
        if self.keys is None:
            self.keys = keys
        return {text: tuple(encoded[k][i] for k in keys) for i, text in enumerate(texts)}

    def lengths(self, texts: list[str]) -> list[int] | None:
        """Tokens of each text after truncation (what a batch of it pads to); new texts are cached as `batch`
        caches them. None when this tokenizer's outputs cannot be cached."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.entries]
        fresh = self._encode(missing) if missing else {}
        if fresh is None:
            return None
        if len(self.entries) + len(fresh) <= self.capacity:
            self.entries.update(fresh)
        return [len((self.entries.get(t) or fresh[t])[0]) for t in texts]

    def batch(self, texts: list[str]) -> dict[str, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self.entries]
        fresh = self._encode(missing) if missing else {}
        if fresh is None or not texts or self.keys is None:
            return dict(self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                                       return_tensors="pt"))
        if len(self.entries) + len(fresh) <= self.capacity:
            self.entries.update(fresh)
        rows = [self.entries.get(t) or fresh[t] for t in texts]
        length = max(len(row[0]) for row in rows)
        out = {}
        for j, key in enumerate(self.keys):
            pad = self.pad[key]
            if self.left:
                padded = [[pad] * (length - len(row[j])) + row[j] for row in rows]
            else:
                padded = [row[j] + [pad] * (length - len(row[j])) for row in rows]
            out[key] = torch.tensor(padded, dtype=torch.long)
        return out
