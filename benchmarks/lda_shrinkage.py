"""LDA's shrinkage with few and many samples per class: nearest-class-mean, fixed a, and OAS (`shrinkage: oas`).

A frozen encoder's features (one pass over train and the evaluation split), then for each cap on the training
samples per class (and the first 30 classes or all of them) the final accuracy of cosine NCM and of LDA on the
L2-normalised features with a = 1e-2, 1e-1 and a = OAS's choice from the pooled statistics (printed). Fitted at once
from all kept features: on a frozen encoder equal to the incremental head (benchmarks/lda_offline.py).

Run:  SDLORA_DATA=... OMP_NUM_THREADS=1 python benchmarks/lda_shrinkage.py configs/clinc150.yaml configs/hwu64.yaml
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from lda_offline import features  # a sibling script: the script's folder is on sys.path

from sdlora.config import load_config
from sdlora.engine import build
from sdlora.methods.lda import lda_weights, oas_shrinkage

CAPS = (5, 12, 30, None)
FIXED = (1e-2, 1e-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * float((logits.argmax(1) == labels).double().mean())


def row(x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, cap: int | None,
        classes: int) -> dict[str, float]:
    """Accuracies on the first `classes` classes with at most `cap` training samples each (float64)."""
    x, xt = x.double(), xt.double()
    keep = torch.cat([torch.nonzero(y == c).flatten()[:cap] for c in range(classes)])
    z, zy = x[keep], y[keep]
    shown = yt < classes
    zt, zyt = xt[shown], yt[shown]
    means = torch.stack([z[zy == c].mean(0) for c in range(classes)])
    centred = z - means[zy]
    covariance = centred.T @ centred / zy.shape[0]
    out = {"n": float(zy.shape[0]), "ncm": accuracy(zt @ F.normalize(means, dim=-1).T, zyt)}
    a_oas = oas_shrinkage(covariance, zy.shape[0])
    for name, a in [*((f"a={a:g}", a) for a in FIXED), ("oas", a_oas)]:
        weight, bias = lda_weights(means, covariance, a)
        out[name] = accuracy(zt @ weight.T + bias, zyt)
    out["a_oas"] = a_oas
    return out


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--split", default="val", choices=("val", "test"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results: dict[str, list[dict[str, float]]] = {}
    for path in args.configs:
        cfg = build.validate_plugins(load_config(path))
        data = build.build_benchmark(cfg)
        backbone = build.build_backbone(cfg).eval()
        split = (data.val, data.val_targets) if args.split == "val" else (data.test, data.test_targets)
        x, y = features(backbone, data.train, cfg.train.eval_batch_size)
        xt, yt = features(backbone, split[0], cfg.train.eval_batch_size)
        x, xt = F.normalize(x, dim=-1), F.normalize(xt, dim=-1)
        results[path] = []
        print(f"{path} ({args.split}): per-class cap, classes, samples | ncm | lda a=1e-2 | a=1e-1 | a=OAS (value)")
        for cap in CAPS:
            for classes in (30, int(y.max()) + 1):
                r = row(x, y, xt, yt, cap, classes)
                results[path].append({"cap": cap or 0, "classes": classes, **r})
                print(f"  {cap or 'all':>4} {classes:4d} {int(r['n']):6d} | {r['ncm']:.2f} | {r['a=0.01']:.2f} | "
                      f"{r['a=0.1']:.2f} | {r['oas']:.2f} ({r['a_oas']:.3f})", flush=True)
    return results


if __name__ == "__main__":
    main()
