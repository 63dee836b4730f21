"""The LDA head computed at once from a frozen encoder's features (no increments): the batch reference for
`method.classifier.kind: lda` on a frozen backbone, and a cheap sweep of its settings on the validation split.

For the config's benchmark and backbone (no training), one feature pass over train and the evaluation split, then
the final accuracy of: cosine nearest class mean (as `ncm`), and LDA (`sdlora.methods.lda.lda_weights`) with the
class means and pooled within-class covariance computed from all training features at once, on the L2-normalised
and on the raw features, for each shrinkage and both priors. On a frozen encoder, `ncm` with `kind: lda` must give
the same final accuracy as the matching row here (benchmarks/README.md, "Classifiers from class statistics").

Run:  SDLORA_DATA=... OMP_NUM_THREADS=1 python benchmarks/lda_offline.py configs/clinc150.yaml configs/hwu64.yaml
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sdlora.config import load_config
from sdlora.devices import move_to
from sdlora.engine import build
from sdlora.methods.lda import lda_weights

SHRINKAGES = (1e-4, 1e-3, 1e-2, 1e-1)


@torch.no_grad()
def features(backbone: Any, dataset: Any, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=backbone.collate)
    feats, labels = [], []
    for inputs, y in loader:
        feats.append(backbone(move_to(inputs, torch.device("cpu"))).double())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


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
        means = torch.stack([z[y == c].mean(0) for c in range(classes)])
        centred = z - means[y]
        covariance = centred.T @ centred / y.shape[0]
        for a in SHRINKAGES:
            for priors, log_priors in (("uniform", None), ("empirical", (counts / counts.sum()).log())):
                weight, bias = lda_weights(means, covariance, a, log_priors)
                correct = ((zt @ weight.T + bias).argmax(1) == yt).double().mean()
                out[f"lda {name} a={a:g} {priors}"] = 100 * float(correct)
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--split", default="val", choices=("val", "test"))
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
        results[path] = accuracies(features(backbone, data.train, batch), features(backbone, test[0], batch))
        print(f"{path} ({args.split}):")
        for name, acc in results[path].items():
            print(f"  {name:36s} {acc:.2f}")
    return results


if __name__ == "__main__":
    main()
