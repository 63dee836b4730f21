"""Training cost of several methods on the same job, side by side in one process (issue 23's "training <= 1.2x
sequential LoRA").

Every config runs the same job (`--tasks`, `--set` apply to all) through `Trainer.run()`, in rotating order over
`--reps` rounds. Per phase (`engine_overhead.PHASES`: the epochs, the feature passes before / after a task, the
evaluation, the rest) it prints each config's CPU time (one torch thread: the steadier measure on a shared
machine) and wall time, and the ratio to the first config (the reference) as the median over rounds of the
per-round ratio, with the final accuracy of each. The configs should share the classifier and the schedule, so
that the ratio is the method's own cost (the shipped text configs do: configs/clinc150.yaml's `classifier:`).

Run:  python benchmarks/train_cost.py configs/baselines/clinc150_seq_lora.yaml configs/clinc150.yaml \
          configs/baselines/clinc150_inflora.yaml --tasks 4 --reps 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_overhead import PHASES, case_config, engine_run, load_average, ratio_cells  # noqa: E402

from sdlora.engine import build  # noqa: E402


def measure(configs: list[str], tasks: int | None, overrides: list[str], reps: int) -> dict[str, Any]:
    """{config: {"runs": [{"seconds": {wall, cpu: {phase: s}}, "final": acc}], "method": name}}, rotating order."""
    cfgs = {path: case_config(path, tasks, overrides) for path in configs}
    benchmarks = {path: cfg.benchmark for path, cfg in cfgs.items()}
    if len({repr(b) for b in benchmarks.values()}) > 1:  # one data load serves all: the same benchmark or nothing
        raise SystemExit("the configs train different benchmarks, so their costs do not compare: "
                         + "; ".join(f"{path}: {b}" for path, b in benchmarks.items()))
    data = build.build_benchmark(next(iter(cfgs.values())))
    out: dict[str, Any] = {path: {"method": cfg.method.name, "runs": []} for path, cfg in cfgs.items()}
    for rep in range(reps):
        order = configs[rep % len(configs):] + configs[:rep % len(configs)]
        for path in order:
            times, curve = engine_run(cfgs[path], data, torch.device("cpu"))
            out[path]["runs"].append({"seconds": times, "final": curve[-1]})
            print(f"round {rep + 1} {cfgs[path].method.name:>12}: {times['cpu']['total']:7.1f} s CPU "
                  f"({times['cpu']['train']:.1f} in epochs), {times['wall']['total']:7.1f} s wall; final "
                  f"{curve[-1]:.2f}; load {load_average()}", flush=True)
    return out


def table(out: dict[str, Any]) -> str:
    """One row per config and phase: CPU and wall seconds (mean over rounds) and the ratios to the reference."""
    ref = next(iter(out.values()))["runs"]
    lines = ["| method | phase | CPU s | CPU / ref | wall s | wall / ref | final accuracy |",
             "|---|---|---|---|---|---|---|"]
    for entry in out.values():
        runs = entry["runs"]
        final = statistics.mean(r["final"] for r in runs)
        for phase in (*PHASES, "total"):
            cells = []
            for kind in ("cpu", "wall"):
                # median over rounds of this config's time / the reference's in the same round
                value = ratio_cells([r["seconds"] for r in runs], [r["seconds"] for r in ref], phase, kind)["ratio"]
                cells += [f"{statistics.mean(r['seconds'][kind][phase] for r in runs):.1f}",
                          "-" if value is None else f"{value:.3f}"]
            lines.append(f"| {entry['method']} | {phase} | {' | '.join(cells)} | {final:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="YAML configs; the first is the reference")
    p.add_argument("--tasks", type=int, default=None, help="benchmark.num_tasks for every config")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{len(args.configs)} configs, tasks {args.tasks or 'all'}, {' '.join(args.overrides)}; torch threads "
          f"{torch.get_num_threads()}; load {load_average()}", flush=True)
    out = measure(args.configs, args.tasks, args.overrides, args.reps)
    print(table(out))
    return out


if __name__ == "__main__":
    main()
