"""The magnitudes alpha: one trainable scalar per task, shared by every adapted matrix of the model.

Stored as ONE parameter vector ``alpha`` [num_slots] (slot k = task k, the current task included while it
trains), so that each layer's forward reads its per-rank-column scales with one gather. Growing the vector
creates a new Parameter: build the optimiser after ``begin_task`` (new directions appear then anyway).
There is no limit on the number of tasks (the official code stops at 21).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Magnitudes(nn.Module):
    """alpha_0 .. alpha_{T-1}, all trainable."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(0))

    def __len__(self) -> int:
        return self.alpha.numel()

    def _replace(self, values: Tensor) -> None:
        self.alpha = nn.Parameter(values.detach().clone().to(self.alpha.device, self.alpha.dtype))

    def append(self, value: float) -> None:
        """Add one slot (a new task) initialised at `value`; earlier slots keep their learned values."""
        new = torch.full((1,), float(value), device=self.alpha.device, dtype=self.alpha.dtype)
        self._replace(torch.cat([self.alpha.detach(), new]))

    def reset(self, num_slots: int, value: float) -> None:
        """Re-create every slot at `value` (the official code's behaviour at the start of a task)."""
        kw: dict[str, Any] = {"device": self.alpha.device, "dtype": self.alpha.dtype}
        self._replace(torch.full((num_slots,), float(value), **kw))

    def set_values(self, values: Tensor) -> None:
        """Replace all slots (loading a checkpoint)."""
        self._replace(values)

    def values(self) -> list[float]:
        return [float(a) for a in self.alpha.detach().cpu()]

    def extra_repr(self) -> str:
        return f"slots={len(self)}"
