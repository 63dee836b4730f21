"""The LDA and ridge heads computed at once from a frozen encoder's features (no increments): the batch reference for
`method.classifier.kind: lda / ridge` on a frozen backbone, and a cheap sweep of their settings on the validation
split, random feature maps included.

For the config's benchmark and backbone (no training), one feature pass over train and the evaluation split, then
the final accuracy of: cosine nearest class mean (as `ncm`), and LDA (`sdlora.methods.lda.lda_weights`) with the
class means and pooled within-class covariance computed from all training features at once, on the L2-normalised
and on the raw features, for each shrinkage and both priors. On a frozen encoder, `ncm` with `kind: lda` must give
the same final accuracy as the matching row here (benchmarks/README.md, "Classifiers from class statistics").

Then the heads from the same running sums on a fixed random feature map h of g = f / ||f||
(`sdlora.methods.random_features.RandomFeatures`, as `method.classifier.random_features: M` draws it; benchmarks/
README.md, "Random feature maps before the head"), for every M in RF_DIMS, each map drawn with seeds RF_SEEDS:

    relu:  h = ReLU(W^T g)                            (RanPAC, McDonnell et al., NeurIPS 2023)
    rff:   h = sqrt(2/M) cos(W^T g / s + b)           (random Fourier features of the RBF kernel of bandwidth s; KLDA)

and on each h (and on g itself, "no projection") both heads, for each shrinkage a in SHRINKAGES:

    ridge: `ridge_weights` (RanPAC's (G + lam (tr G / M) I)^{-1} C, one-hot targets, lam = a / (1 - a))
    lda:   `lda_weights` on h (class means, pooled within-class covariance, uniform priors)

A row of a random map is the mean final accuracy over the draws (their spread is printed beside it). The random
rows take about 10 minutes per benchmark on one CPU thread (`--no-random-features` leaves them out).

Run:  SDLORA_DATA=... OMP_NUM_THREADS=1 python benchmarks/lda_offline.py configs/clinc150.yaml configs/hwu64.yaml
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sdlora.config import load_config
from sdlora.devices import move_to
from sdlora.engine import build
from sdlora.methods.lda import lda_weights, ridge_weights
from sdlora.methods.random_features import FeatureMapKind, RandomFeatures

SHRINKAGES = (1e-4, 1e-3, 1e-2, 1e-1)
RF_DIMS = (1024, 2048, 4096)
RF_SEEDS = (0, 1, 2)
#: feature map -> the bandwidths it is run with (relu is scale-free: the heads give the same logits for any s)
BANDWIDTHS: dict[FeatureMapKind, tuple[float, ...]] = {"relu": (1.0,), "rff": (0.5, 0.7, 1.0, 1.4, 2.0)}


@torch.no_grad()
def features(backbone: Any, dataset: Any, batch_size: int, fn: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features [N, D] float64, labels [N]) of `dataset` through `fn` (default: the backbone itself)."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=backbone.collate)
    fn = backbone if fn is None else fn
    feats, labels = [], []
    for inputs, y in loader:
        feats.append(fn(move_to(inputs, torch.device("cpu"))).double())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * float((logits.argmax(1) == labels).double().mean())


def class_moments(z: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means [C, D], pooled within-class covariance [D, D], ddof 0)."""
    means = torch.stack([z[y == c].mean(0) for c in range(classes)])
    centred = z - means[y]
    return means, centred.T @ centred / y.shape[0]


def head_rows(name: str, z: torch.Tensor, y: torch.Tensor, zt: torch.Tensor, yt: torch.Tensor,
              classes: int) -> Iterator[tuple[str, float]]:
    """Ridge and LDA (uniform priors) for each shrinkage in SHRINKAGES on the features z, tested on zt."""
    means, covariance = class_moments(z, y, classes)
    priors = torch.bincount(y, minlength=classes).double() / y.shape[0]
    for a in SHRINKAGES:
        yield f"ridge {name} a={a:g}", accuracy(zt @ ridge_weights(means, covariance, priors, a).T, yt)
        weight, bias = lda_weights(means, covariance, a)
        yield f"lda {name} a={a:g}", accuracy(zt @ weight.T + bias, yt)


def random_feature_accuracies(train: tuple[torch.Tensor, torch.Tensor],
                              test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, list[float]]:
    """Ridge and LDA on g, and on every random feature map of g (kind x RF_DIMS x bandwidths): final accuracy
    (percent) per draw of the map (RF_SEEDS; one value for g)."""
    (x, y), (xt, yt) = train, test
    classes = int(y.max()) + 1
    g, gt = F.normalize(x, dim=-1), F.normalize(xt, dim=-1)
    out = {name: [acc] for name, acc in head_rows("g", g, y, gt, yt, classes)}
    for kind, bandwidths in BANDWIDTHS.items():
        for m in RF_DIMS:
            for s in bandwidths:
                label = f"{kind} M={m}" + (f" s={s:g}" if kind == "rff" else "")
                for seed in RF_SEEDS:
                    phi = RandomFeatures(g.shape[1], m, kind, s, seed)
                    for name, acc in head_rows(label, phi(g), y, phi(gt), yt, classes):
                        out.setdefault(name, []).append(acc)
    return out


def accuracies(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Final accuracy (percent) of NCM and of every LDA variant."""
    (x, y), (xt, yt) = train, test
    classes = int(y.max()) + 1
    out = {}
    raw_means = torch.stack([x[y == c].mean(0) for c in range(classes)])
    ncm = F.normalize(xt, dim=-1) @ F.normalize(raw_means, dim=-1).T
    out["ncm (cosine)"] = 100 * float((ncm.argmax(1) == yt).double().mean())
    counts = torch.bincount(y, minlength=classes).double()
    for name, g in (("normalised", lambda z: F.normalize(z, dim=-1)), ("raw", lambda z: z)):
        z, zt = g(x), g(xt)
        means, covariance = class_moments(z, y, classes)
        for a in SHRINKAGES:
            for priors, log_priors in (("uniform", None), ("empirical", (counts / counts.sum()).log())):
                weight, bias = lda_weights(means, covariance, a, log_priors)
                out[f"lda {name} a={a:g} {priors}"] = accuracy(zt @ weight.T + bias, yt)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--no-random-features", action="store_true", help="only the NCM and LDA rows on f and g")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    for path in args.configs:
        cfg = build.validate_plugins(load_config(path))
        data = build.build_benchmark(cfg)
        backbone = build.build_backbone(cfg).eval()
        test = (data.val, data.val_targets) if args.split == "val" else (data.test, data.test_targets)
        if test[0] is None:
            raise SystemExit(f"{path}: the benchmark has no {args.split} split")
        batch = cfg.train.eval_batch_size
        train, evaluation = features(backbone, data.train, batch), features(backbone, test[0], batch)
        results[path] = accuracies(train, evaluation)
        print(f"{path} ({args.split}):")
        for name, acc in results[path].items():
            print(f"  {name:36s} {acc:.2f}")
        if not args.no_random_features:
            for name, draws in random_feature_accuracies(train, evaluation).items():
                results[path][name] = statistics.mean(draws)
                spread = f"  (draws {' '.join(f'{d:.2f}' for d in draws)})" if len(draws) > 1 else ""
                print(f"  {name:36s} {results[path][name]:.2f}{spread}", flush=True)
    return results


if __name__ == "__main__":
    main()
