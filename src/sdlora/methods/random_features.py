"""Fixed random feature maps of the L2-normalised feature g, applied before a head from class statistics
(`method.classifier.random_features: M`):

    relu:  h = ReLU(W^T g)                             (RanPAC, McDonnell et al., NeurIPS 2023)
    rff:   h = sqrt(2 / M) cos(W^T g / s + b)          (random Fourier features, Rahimi & Recht 2007; KLDA, AAAI 2025:
                                                        E[h^T h'] = exp(-||g - g'||^2 / (2 s^2)), bandwidth s)

    W [D, M], W_ij ~ N(0, 1);  b [M], b_j ~ U[0, 2 pi)  (rff only)

W and b are drawn once from their own generator (seeded with the run's seed, so a run is repeatable and the
map does not move the global random stream) and then never change; the head keeps them in its checkpoint. An
LDA or ridge head over h is linear in h, not in g: a random feature map widens the head from D to M inputs and
makes the classifier non-linear in the feature (the export formats, which write a linear head, refuse it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

FeatureMapKind = Literal["relu", "rff"]


def _relu(u: torch.Tensor) -> torch.Tensor:
    return torch.relu(u)


def _cosine(u: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2 / u.shape[-1]) * torch.cos(u)


#: kind -> (the non-linearity applied to W^T g / s + b, whether it has the random offset b)
NONLINEARITIES: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]] = {
    "relu": (_relu, False),
    "rff": (_cosine, True),
}


class RandomFeatures(nn.Module):
    """h = phi(g W / s + b) with `weight` W [D, M] and `offset` b [M] (zeros for relu) as float32 buffers."""

    weight: torch.Tensor
    offset: torch.Tensor

    def __init__(self, dim: int, width: int, kind: FeatureMapKind = "relu", bandwidth: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        if kind not in NONLINEARITIES:
            raise ValueError(f"feature_map must be one of {sorted(NONLINEARITIES)}, got {kind!r}")
        if width < 1 or not bandwidth > 0:
            raise ValueError(f"random_features must be >= 1 and bandwidth > 0, got {width} and {bandwidth}")
        self.kind, self.width = kind, width
        self.nonlinearity, has_offset = NONLINEARITIES[kind]
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(dim, width, generator=generator, dtype=torch.float64) / bandwidth
        offset = 2 * math.pi * torch.rand(width, generator=generator, dtype=torch.float64) if has_offset else \
            torch.zeros(width, dtype=torch.float64)
        self.register_buffer("weight", weight.float())
        self.register_buffer("offset", offset.float())

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        """h [N, M] in the dtype of g (the buffers are cast to it)."""
        return self.nonlinearity(g @ self.weight.to(g.dtype) + self.offset.to(g.dtype))

    def stored_numel(self) -> int:
        """Numbers needed to apply the map: W, and b for rff."""
        return self.weight.numel() + (self.offset.numel() if NONLINEARITIES[self.kind][1] else 0)
