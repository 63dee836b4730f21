"""Length-aware passes and long task sequences (issue 25, "Lower the floor").

``passes``: the same job twice in one process, `train.length_aware_passes` false (the dataset-order batches of
before) and true, in alternating order over `--reps` rounds. It prints, for the no-gradient passes, the tokens
processed over the real tokens (counted from the very loaders the trainer builds: the feature passes over each
task's training data, the evaluation over every seen task's test data) and, per phase, the wall and CPU time
of both runs with their ratio, and the two runs' accuracy curves. The training batches' padding is printed
too, with and without `train.length_buckets` (tokens only: bucketing changes the optimisation).

``long``: one run per task count (`--tasks 50 100`) of CLINC150 split finely (`benchmark.increment`), printing
at a few task indices the training step time (the task's epochs over its optimiser steps), the peak memory
of this process (RSS high-water mark), the size of the checkpoint written after the task and the evaluation
time. Evaluation follows `eval_every` (rows not evaluated have no evaluation time).

Run:  python benchmarks/length_aware.py passes [--set k=v ...] [--reps 1] [--threads 1]
      python benchmarks/length_aware.py long --tasks 50 100 [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_overhead import PHASES, ROOT, Clock, case_config, engine_run, load_average  # noqa: E402

from sdlora.config import RunConfig  # noqa: E402
from sdlora.data.length_order import pass_loader, token_counts  # noqa: E402
from sdlora.engine import build, distributed  # noqa: E402
from sdlora.engine import trainer as trainer_module  # noqa: E402
from sdlora.engine.trainer import Trainer  # noqa: E402


# -- tokens ------------------------------------------------------------------------------------------------
def pass_tokens(cfg: RunConfig, data: Any, aware: bool) -> dict[str, list[int]]:
    """[processed, real] tokens of one feature pass over every task's training data and of the evaluation
    after every task, with the trainer's loaders (`eval_batch_size`; lengths from the backbone)."""
    backbone = build.build_backbone(cfg)
    scenario = build.build_scenario(cfg, data, cfg.seeds[0])
    lengths_of = backbone.sample_lengths if aware else None
    size = cfg.train.eval_batch_size
    out = {"feature_pass": [0, 0], "evaluation": [0, 0]}
    for t in range(scenario.num_tasks):
        for name, dataset in (("feature_pass", scenario.train_set(t)), ("evaluation", scenario.eval_set(t))):
            processed, real = token_counts(pass_loader(distributed.shard(dataset), backbone.collate, size,
                                                       lengths_of))
            out[name][0] += processed
            out[name][1] += real
    return out


def training_tokens(cfg: RunConfig, data: Any, buckets: int) -> list[int]:
    """[processed, real] tokens of the first epoch of every task's training batches."""
    cfg.train.length_buckets = buckets
    trainer = Trainer(cfg, cfg.seeds[0], Path(tempfile.gettempdir()), torch.device("cpu"), data, quiet=True)
    total = [0, 0]
    for t in range(trainer.scenario.num_tasks):
        processed, real = token_counts(trainer._loader(trainer.scenario.train_set(t), shuffle=True, task=t))
        total[0] += processed
        total[1] += real
    return total


def ratio(pair: list[int]) -> float:
    return pair[0] / pair[1]


def passes(args: argparse.Namespace) -> dict[str, Any]:
    cfg = case_config(args.config, None, args.overrides)
    device = torch.device(args.device)
    data = build.build_benchmark(cfg)
    print(f"{args.config} {' '.join(args.overrides)}: {build.build_scenario(cfg, data, cfg.seeds[0]).num_tasks} "
          f"tasks, seed {cfg.seeds[0]}, torch threads {torch.get_num_threads()}, load {load_average()}", flush=True)
    out: dict[str, Any] = {"tokens": {}, "training_tokens": {}, "runs": {"off": [], "on": []}}
    for label, aware in (("off", False), ("on", True)):
        out["tokens"][label] = pass_tokens(cfg, data, aware)
    for label, buckets in (("plain shuffle", 0), (f"length_buckets {args.buckets}", args.buckets)):
        out["training_tokens"][label] = training_tokens(case_config(args.config, None, args.overrides), data, buckets)
    print("tokens processed / real tokens (one pass of each kind per task, summed over tasks):")
    for name in ("feature_pass", "evaluation"):
        off, on = out["tokens"]["off"][name], out["tokens"]["on"][name]
        print(f"  {name:>13}: off {ratio(off):.3f}  on {ratio(on):.3f}  (real {off[1]:,} tokens)")
    for label, pair in out["training_tokens"].items():
        print(f"  training batches, {label}: {ratio(pair):.3f}")
    for rep in range(args.reps):
        order = [("off", False), ("on", True)] if rep % 2 == 0 else [("on", True), ("off", False)]
        for label, aware in order:
            run_cfg = case_config(args.config, None, [*args.overrides, f"train.length_aware_passes={aware}"])
            times, curve = engine_run(run_cfg, data, device)
            out["runs"][label].append({"seconds": times, "accuracy_curve": curve})
            print(f"round {rep + 1} {label}: {times['wall']['total']:.1f} s wall, {times['cpu']['total']:.1f} s CPU; "
                  f"final accuracy {curve[-1]:.2f}; load {load_average()}", flush=True)
    print(f"\nphase      wall off / on (ratio)        CPU off / on (ratio)   [round-wise ratios, {args.reps} rounds]")
    for phase in (*PHASES, "total"):
        cells = []
        for kind in ("wall", "cpu"):
            offs = [r["seconds"][kind][phase] for r in out["runs"]["off"]]
            ons = [r["seconds"][kind][phase] for r in out["runs"]["on"]]
            ratios = [a / b for a, b in zip(ons, offs, strict=True) if b > 0]
            cells.append(f"{sum(offs):8.1f} / {sum(ons):8.1f} ({', '.join(f'{r:.3f}' for r in ratios)})")
        print(f"{phase:>7}  {cells[0]:>30}  {cells[1]:>30}")
    curves = {label: runs[0]["accuracy_curve"] for label, runs in out["runs"].items()}
    diff = max(abs(a - b) for a, b in zip(curves["off"], curves["on"], strict=True))
    print("accuracy curve off: " + " ".join(f"{a:.2f}" for a in curves["off"]))
    print("accuracy curve on:  " + " ".join(f"{a:.2f}" for a in curves["on"]))
    print(f"largest difference {diff:.3f} points; load {load_average()}")
    return out


# -- long sequences ----------------------------------------------------------------------------------------
def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def long_run(cfg: RunConfig, data: Any, device: torch.device, report: list[int]) -> list[dict[str, Any]]:
    """One run; per task: training seconds per optimiser step, peak RSS, checkpoint bytes, evaluation seconds."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sdlora-long-") as out:
        trainer = Trainer(cfg, cfg.seeds[0], Path(out), device, data, quiet=True)
        clock = Clock(device)
        train_task = trainer._train_task
        evaluate = trainer_module.evaluate

        def timed_train(task: Any, *rest: Any) -> None:
            steps = trainer.step
            with clock.measure("train"):
                train_task(task, *rest)
            rows.append({"task": task.index + 1, "train_s": clock.seconds["train"], "steps": trainer.step - steps})
            clock.seconds["train"] = 0.0

        def timed_eval(*a: Any, **k: Any) -> Any:
            with clock.measure("eval"):
                return evaluate(*a, **k)

        def on_checkpoint(task: int, epochs: int, finished: bool) -> None:
            if finished:
                pointer = json.loads((trainer.ckpt_dir / "latest.json").read_text())
                rows[-1].update(checkpoint_bytes=pointer["bytes"], peak_rss_mib=peak_rss_mib(),
                                eval_s=clock.seconds["eval"] or None)
                clock.seconds["eval"] = 0.0
                if task + 1 in report:
                    r = rows[-1]
                    step = r["train_s"] / max(r["steps"], 1)
                    print(f"  task {task + 1:>3}: step {1000 * step:7.1f} ms, peak RSS {r['peak_rss_mib']:7.0f} MiB, "
                          f"checkpoint {r['checkpoint_bytes'] / 2**20:7.2f} MiB, evaluation "
                          + (f"{r['eval_s']:6.2f} s" if r["eval_s"] else "   -  ") + f"; load {load_average()}",
                          flush=True)

        trainer._train_task = timed_train  # type: ignore[method-assign]
        trainer.on_checkpoint = on_checkpoint
        trainer_module.evaluate = timed_eval
        try:
            trainer.run()
        finally:
            trainer_module.evaluate = evaluate
    return rows


def long(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    out: dict[str, Any] = {}
    for tasks in args.tasks:
        cfg = case_config(args.config, tasks, args.overrides)
        data = build.build_benchmark(cfg)
        report = sorted({1, 2, *range(10, tasks + 1, 10), tasks} & set(range(1, tasks + 1)))
        print(f"{tasks} tasks: {args.config} {' '.join(args.overrides)}; load {load_average()}", flush=True)
        rows = long_run(cfg, data, device, report)
        first, last = (r["train_s"] / max(r["steps"], 1) for r in (rows[0], rows[-1]))
        print(f"  step time task {tasks} / task 1: {last / first:.3f}")
        out[str(tasks)] = rows
    return out


MODES = {"passes": passes, "long": long}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--config", default=str(ROOT / "configs" / "clinc150.yaml"))
    p.add_argument("--reps", type=int, default=1, help="passes: rounds of (off, on), order alternating")
    p.add_argument("--buckets", type=int, default=8, help="passes: train.length_buckets for the token count")
    p.add_argument("--tasks", type=int, nargs="+", default=[50, 100], help="long: task counts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = MODES[args.mode](args)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
