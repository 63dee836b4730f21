"""Before / after a config migration: the same cut-down CLINC150 runs on two checkouts, accuracy matrices compared.

Each case trains one config of the text harness (one per method family: configs/clinc150.yaml and
configs/baselines/) with `sdlora train`, in a fresh interpreter per run, once with the `--before` checkout's code
and configs (its `src` on PYTHONPATH) and once with the `--after` checkout's, under identical overrides
(`COMMON`: 2 tasks of 15 intents, 12 samples per intent, 1 epoch, seed 1993). The last cases give the head's
training keys non-default values, on the config whose linear head predicts (so they change its accuracies):
under the old names on the before side, the new names (and again the old ones, read by the migration) on the
after side. A case is equal when every row of results.json's accuracy matrix is identical, float for float.

Written for issue 22's move of `train.loss` / `train.freeze_old_head` / `train.head_lr` into
`method.classifier`; the cases' overrides are the only thing that names those keys.

Run:  OMP_NUM_THREADS=1 SDLORA_DATA=/path/to/data python benchmarks/config_migration_check.py \\
          --before /path/to/main/checkout [--after .] [--out /tmp/config_migration_runs] [--only sdlora,ncm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["benchmark.num_tasks=2", "benchmark.options.max_per_class=12", "train.epochs=1", "seeds=[1993]"]
HEAD = {"loss": "seen", "freeze_old_head": "false", "head_lr": "0.02"}  # not the defaults
#: where the linear head predicts, so that how it trains shows in the accuracies
LINEAR_HEAD = "configs/baselines/clinc150_sdlora_linear_head.yaml"


def head_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{key}={value}" for key, value in HEAD.items()]


@dataclass(frozen=True)
class Case:
    """One comparison: a config (the same path in both checkouts) and each side's extra overrides."""

    name: str
    config: str
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)


CASES = [
    Case("sdlora", "configs/clinc150.yaml"),
    Case("inflora", "configs/baselines/clinc150_inflora.yaml"),
    Case("seq_lora", "configs/baselines/clinc150_seq_lora.yaml"),
    Case("ncm", "configs/baselines/clinc150_ncm.yaml"),
    Case("l2p", "configs/baselines/clinc150_l2p.yaml"),
    Case("dualprompt", "configs/baselines/clinc150_dualprompt.yaml"),
    Case("coda_prompt", "configs/baselines/clinc150_coda_prompt.yaml"),
    Case("hide_prompt", "configs/baselines/clinc150_hide_prompt.yaml"),
    Case("joint", "configs/baselines/clinc150_joint.yaml"),
    Case("linear_probe", "configs/baselines/clinc150_linear_probe.yaml"),
    Case("sdlora linear head", LINEAR_HEAD),
    Case("sdlora linear head + head keys (new names after)", LINEAR_HEAD, head_keys("train"),
         head_keys("method.classifier")),
    Case("sdlora linear head + head keys (old names after)", LINEAR_HEAD, head_keys("train"), head_keys("train")),
]


def train(checkout: Path, case: Case, overrides: list[str], out: Path) -> dict:
    """`sdlora train` of the case's config with `checkout`'s code; returns (and keeps) results.json."""
    results = out / "seed-1993" / "results.json"
    if not results.is_file():
        sets = [word for o in [*COMMON, *overrides] for word in ("--set", o)]
        env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", "1")}
        subprocess.run([sys.executable, "-m", "sdlora", "train", str(checkout / case.config), *sets, "--out", str(out),
                        "--overwrite", "--quiet", "--device", "cpu"], env=env, check=True, capture_output=True)
    return json.loads(results.read_text())


def final(record: dict) -> str:
    return f"{record['metrics']['final_accuracy']:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout before the change (its src and configs)")
    parser.add_argument("--after", type=Path, default=ROOT, help="checkout after the change (default: this one)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/config_migration_runs"),
                        help="run folders (kept: a finished run is read back, not trained again)")
    parser.add_argument("--only", help="the cases whose names start with one of these comma-separated prefixes")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or any(c.name.startswith(p) for p in args.only.split(","))]
    print("| case | config | before: final acc | after: final acc | accuracy matrices equal | seconds |")
    print("|---|---|---|---|---|---|")
    equal_all = True
    for i, case in enumerate(cases):
        start = time.perf_counter()
        before = train(args.before.resolve(), case, case.before, args.out / f"{i:02d}-before")
        after = train(args.after.resolve(), case, case.after, args.out / f"{i:02d}-after")
        equal = before["accuracy_matrix"] == after["accuracy_matrix"]
        equal_all &= equal
        print(f"| {case.name} | {case.config} | {final(before)} | {final(after)} | {'yes' if equal else 'NO'} | "
              f"{time.perf_counter() - start:.0f} |", flush=True)
    return 0 if equal_all else 1


if __name__ == "__main__":
    sys.exit(main())
