"""The continual workflow end to end on CLINC150: train on the first 75 intents, then `sdlora learn` the other
75 in five steps of 15 new intents (no old training data), predict and export along the way.

    SDLORA_DATA=../shared/data python benchmarks/clinc150_learn_workflow.py --out runs/workflow

Class order = the permutation under seed 1993 that configs/clinc150.yaml uses, so the 10 tasks are the
same 15-intent groups as the main benchmark; settings are those of configs/clinc150.yaml.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import yaml

from sdlora.cli import main
from sdlora.data.base import resolve_data_root
from sdlora.data.scenario import make_class_order
from sdlora.registry import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]


def write_csv(path: Path, dataset, targets, names, keep: set[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i, label in enumerate(targets):
            if names[label] in keep:
                writer.writerow([dataset[i][0], names[label]])


def main_workflow() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/clinc150-workflow")
    parser.add_argument("--seed", type=int, default=1993)
    args = parser.parse_args()
    out = Path(args.out)
    files = out / "data"
    files.mkdir(parents=True, exist_ok=True)
    entry = BENCHMARKS.get("clinc150")
    data = entry(entry.Options(), resolve_data_root(None)).load()
    names = data.class_names
    order = [names[c] for c in make_class_order("permutation", len(names), args.seed)]
    groups = [order[:75]] + [order[75 + 15 * k: 90 + 15 * k] for k in range(5)]
    for g, group in enumerate(groups):
        write_csv(files / f"part{g}_train.csv", data.train, data.train_targets, names, set(group))
        write_csv(files / f"part{g}_test.csv", data.test, data.test_targets, names, set(group))
    config = yaml.safe_load((ROOT / "configs" / "clinc150.yaml").read_text())
    first = sorted(groups[0])
    config["name"] = "clinc150-first-75"
    config["benchmark"] = {"name": "text_files", "class_order": [first.index(n) for n in groups[0]],
                           "init_classes": 15, "increment": 15,
                           "options": {"train_file": str((files / "part0_train.csv").resolve()),
                                       "test_file": str((files / "part0_test.csv").resolve())}}
    config["seeds"] = [args.seed]
    (out / "first75.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    run = out / "run"
    clock = time.perf_counter()
    steps = [["train", str(out / "first75.yaml"), "--out", str(run), "--quiet", "--resume"]]
    steps += [["learn", str(run), "--data", str(files / f"part{g}_train.csv"),
               "--test", str(files / f"part{g}_test.csv"), "--quiet"] for g in range(1, 6)]
    seed = run / f"seed-{args.seed}"
    for step in steps:
        print("$ sdlora " + " ".join(step), flush=True)
        assert main(step) == 0
        result = json.loads((seed / "results.json").read_text())
        print(f"-> {len(result['class_names'])} intents, accuracy over all of them "
              f"{result['accuracy_curve'][-1]:.2f}% ({time.perf_counter() - clock:.0f} s so far)\n", flush=True)
    probe = files / "probe.txt"
    probe.write_text("what's the weather like tomorrow\nplease cancel my reservation at 7\nhow do i say hello in "
                     "french\n")
    main(["predict", str(seed), str(probe), "--top-k", "2"])
    for fmt in ("hf", "peft"):
        main(["export", str(seed), "--out", str(out / f"export-{fmt}"), "--format", fmt])
    result = json.loads((seed / "results.json").read_text())
    print("accuracy curve:", " ".join(f"{a:.2f}" for a in result["accuracy_curve"]))
    print("metrics:", json.dumps({k: round(v, 2) for k, v in result["metrics"].items() if v is not None}))


if __name__ == "__main__":
    main_workflow()
