"""How much of a finished run's accuracy is lost to stale class statistics, and how much its adaptation adds to the
features: the run's final accuracy beside the heads an oracle fits on the final model's features from every training
sample at once (not allowed in class-incremental learning), and beside the same heads on the frozen encoder.

    as run:  the run's final accuracy (results.json): statistics gathered task by task, drift-compensated
    oracle:  on g = f / ||f|| of the final model, class means and pooled within-class covariance from all training
             data: NCM (cosine to the class means) and LDA (OAS shrinkage, uniform priors; `sdlora.methods.lda`)
    frozen:  the same two heads on the backbone before any training

oracle LDA - as run bounds what better drift compensation could win; oracle LDA - frozen LDA is what the adaptation
adds to the features' linear separability (benchmarks/README.md, "What the adaptation adds to the features").

Run:  SDLORA_DATA=... OMP_NUM_THREADS=1 python benchmarks/oracle_statistics.py RUN_FOLDER [RUN_FOLDER ...]
(finished `sdlora train` runs; one seed folder each, the first when a run folder holds several)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lda_offline import accuracy, class_moments, features  # noqa: E402

from sdlora.engine import build  # noqa: E402
from sdlora.engine.restore import restore_run  # noqa: E402
from sdlora.engine.run_folder import LEARNED  # noqa: E402
from sdlora.methods.lda import lda_weights, oas_shrinkage  # noqa: E402

Split = tuple[torch.Tensor, torch.Tensor]


def heads(train: Split, test: Split) -> tuple[float, float]:
    """(NCM, LDA with OAS) final accuracy on `test`, both fitted on all of `train` (features f, labels)."""
    (x, y), (xt, yt) = train, test
    g, gt = F.normalize(x, dim=-1), F.normalize(xt, dim=-1)
    means, covariance = class_moments(g, y, int(y.max()) + 1)
    ncm = accuracy(gt @ F.normalize(means, dim=-1).T, yt)
    weight, bias = lda_weights(means, covariance, oas_shrinkage(covariance, y.shape[0]))
    return ncm, accuracy(gt @ weight.T + bias, yt)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run folders (or seed folders)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    for path in args.runs:
        run = restore_run(Path(path))
        if (run.folder / LEARNED).is_file():
            raise SystemExit(f"{path}: learned more classes (`sdlora learn`): the oracle rebuilds the benchmark only")
        cfg, method = run.cfg, run.method.eval()
        data = build.build_benchmark(cfg)
        evaluated = data.val if cfg.eval_split == "val" else data.test
        batch = cfg.train.eval_batch_size
        adapted = [features(method.backbone, d, batch, method.features) for d in (data.train, evaluated)]
        frozen_backbone = build.build_model(cfg, run.seed, "cpu").backbone.eval()  # a random init's weights too
        frozen = [features(frozen_backbone, d, batch) for d in (data.train, evaluated)]
        row = {"as run": float(run.run.record["metrics"]["final_accuracy"])}
        row["oracle ncm"], row["oracle lda"] = heads(*adapted)
        row["frozen ncm"], row["frozen lda"] = heads(*frozen)
        out[path] = row
        print(f"{path} ({cfg.eval_split}): " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    return out


if __name__ == "__main__":
    main()
