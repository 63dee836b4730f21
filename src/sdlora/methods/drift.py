"""Affine drift compensation (`method.classifier.drift: affine`): one affine map of the feature space, fitted on the
current task's samples, moves every stored statistic of old classes (means and covariance alike).

    x_i, y_i = a current-task sample's feature before and after training (in the space the statistics live in)
    y ~ x P + b,  P = I + Delta,  fitted by ridge regression towards the identity on the centred samples:
        Delta = (C + lam I)^{-1} X^T (Y - X) / n,  C = X^T X / n,  lam = a tr(C) / D   (a = `affine_ridge`)
        b = mean(y) - mean(x) P
    class means  mu_c -> mu_c P + b;   within-class scatter  S -> P^T S P  (the translation cancels)

The map is exact for an affine drift (then y_i = x_i P* + b* and a -> 0 recovers P*, b*); the ridge pulls the
directions the current task's samples do not span towards a plain translation by the mean drift (a -> infinity:
P = I, b = mean(y - x)). SDC (`drift: sdc`, `prototypes.sdc_shift`) instead moves each class mean by the drift of
the samples near it and leaves the covariance as it was; the ridge towards the identity, rather than towards 0,
follows LDC's projector (Gomez-Villa et al., ECCV 2024) and DPCR's ridge-regressed shift (He et al., 2025).
"""

from __future__ import annotations

import torch


def affine_drift(before: torch.Tensor, after: torch.Tensor, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(P [D, D], b [D]) in float64 with after ~ before P + b (the module's equations; `ridge` = a > 0)."""
    x, y = before.double(), after.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, dim = xc.shape
    gram = xc.T @ xc / n
    lam = ridge * gram.diagonal().sum() / dim
    eye = torch.eye(dim, dtype=gram.dtype, device=gram.device)
    p = eye + torch.linalg.solve(gram + lam * eye, xc.T @ (yc - xc) / n)
    return p, y_mean - x_mean @ p
