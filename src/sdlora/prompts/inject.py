"""What every prompted backbone shares: per-forward prefixes and prompt tokens, set inside a context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class PromptInjection:
    """Mixin: `self.attentions` (wrappers with a `.prefix` slot) and `self.tokens`, set only inside `inject`;
    inserted tokens sit at positions [prompt_start, prompt_start + L) of the hidden states."""

    attentions: Any
    tokens: torch.Tensor | None
    prompt_start: int

    def insert(self, sequence: torch.Tensor, inserted: torch.Tensor) -> torch.Tensor:
        """`sequence` [B, N, ...] with `inserted` [B, L, ...] placed at position `prompt_start`."""
        start = self.prompt_start
        return torch.cat([sequence[:, :start], inserted, sequence[:, start:]], dim=1)

    def prompt_outputs(self, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """The states at the `length` inserted prompt positions [B, length, dim]."""
        return hidden[:, self.prompt_start:self.prompt_start + length]

    def input_outputs(self, hidden: torch.Tensor, length: int) -> torch.Tensor:
        """The states of the input's own tokens, the `length` inserted prompt positions removed (undoes `insert`)."""
        start = self.prompt_start
        return torch.cat([hidden[:, :start], hidden[:, start + length:]], dim=1)

    @contextlib.contextmanager
    def inject(self, prefixes: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
               tokens: torch.Tensor | None = None) -> Iterator[None]:
        """Inside: layer i attends with `prefixes[i]` = (P_k, P_v) [B or 1, L, dim]; `tokens` [B or 1, L, dim]
        are inserted after the [CLS] token. Everything is cleared on exit (also on errors), so prompts never
        leak from one forward into the next."""
        try:
            for i, prefix in (prefixes or {}).items():
                self.attentions[i].prefix = prefix
            self.tokens = tokens
            yield
        finally:
            for attention in self.attentions:
                attention.prefix = None
            self.tokens = None
