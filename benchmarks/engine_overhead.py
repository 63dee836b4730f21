"""Engine overhead: `sdlora train`'s task loop against a bare PyTorch loop doing the same passes, side by side.

Per repetition, two runs of the same config from the same freshly built model (construction, i.e. loading
weights and data, is outside both clocks):

* **engine**: `Trainer.run()`, the path of `sdlora train`: DataLoaders over the scenario's subsets with the
  backbone's collate (tokenisation for text, stacking for images), `Method.before_task / begin_task / prepare_task`,
  the training epochs through `train_epoch` (TrainingStep, NaN check, per-step scalar logging, progress
  bar object), a checkpoint after every epoch and task, `end_task`, `evaluate`, results.json and the loggers.
* **bare**: a hand-written loop over batches made before the clock starts (the very same batches: the
  engine's epoch permutation and micro-batch size, collated with the same collate_fn), doing the same
  forward/backward/step: `begin_task`, the method's feature passes (`prepare_task` / `end_task` fed the
  pre-made batches: head init, SDC and prototypes need one feature pass over the task's training data before
  and one after training), `method.training_step(batch).loss.backward(); optimizer.step()`, and an
  evaluation forward over every seen class's test batches with an argmax. No DataLoader, no tokenisation,
  no checkpoint, no logging.

Both runs start from the same seed, so with a deterministic backbone they reach the same accuracies: the
script prints both (a check that the bare loop does the work the engine does, not less).

Rounds are interleaved (engine and bare once per round, the order alternating; `--warmup` rounds not
counted), so a shared machine's load drift cancels. Each ratio is the median over rounds of engine / bare
in the same round; in parentheses the ratio of the minima over rounds (interference only adds time).
Wall time and CPU time (this process, all its threads: `time.process_time`) are both printed: on a shared,
loaded CPU machine the wall time swings with the other jobs, while CPU time with `--threads 1` counts the
work done (no OpenMP spin-waiting at one thread) and is the steadier ratio there; on a GPU read the wall time.
Phases: train (the epochs), prepare (the pass before training: before_task / prepare_task), end (end_task's
pass), eval, other
(engine: begin_task, DataLoader set-up outside the passes, checkpoint after the task, results.json).

Cases:
* ``clinc150``: configs/clinc150.yaml (all-MiniLM-L6-v2, 2 epochs, batch 32, prototype head with SDC) on its
  first `--tasks` tasks (default 2: task 1 has the head-init pass, task 2 adds the SDC pass); needs
  $SDLORA_DATA with clinc150/ and the offline encoder package.
* ``tiny-vit``: random vit_tiny (width 192, depth 4, 32x32 inputs, patch 4: 64 tokens) on the synthetic
  benchmark (10 classes, 2 tasks of 5, 32 training images per class), same training settings.
* or a config file path.

Run:  python benchmarks/engine_overhead.py clinc150 [--tasks 2] [--reps 3] [--device cpu|cuda] [--set k=v]
      python benchmarks/engine_overhead.py tiny-vit --reps 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sdlora.config import RunConfig, load_config, read_config_file, set_override
from sdlora.data.length_order import LengthBatches, LengthsOf
from sdlora.data.scenario import Scenario, TaskInfo
from sdlora.devices import move_to
from sdlora.engine import build
from sdlora.engine import trainer as trainer_module
from sdlora.engine.loop import autocast
from sdlora.engine.optim import build_optimizer, build_scheduler, task_schedule
from sdlora.engine.runner import pick_device
from sdlora.engine.seeding import data_generator, seed_everything
from sdlora.engine.trainer import Trainer, micro_batch_size
from sdlora.methods.base import Method

ROOT = Path(__file__).resolve().parents[1]

TRAIN = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "epochs": 2, "batch_size": 32, "eval_batch_size": 256}
CLASSIFIER = {"kind": "prototypes", "drift": "sdc", "sdc_sigma": 0.3, "head_init": "class_mean",
              "head_init_scale": 60.0, "loss": "current"}

TINY_VIT: dict[str, Any] = {
    "name": "engine-overhead-tiny-vit",
    "benchmark": {"name": "synthetic", "class_order": "permutation", "init_classes": 5, "increment": 5,
                  "options": {"num_classes": 10, "train_per_class": 32, "test_per_class": 16,
                              "shape": [3, 32, 32], "separation": 2.0}},
    "backbone": {"name": "timm_vit", "options": {"model": "vit_tiny_patch16_224", "pretrained": False,
                                                 "model_kwargs": {"img_size": 32, "patch_size": 4, "depth": 4}}},
    "method": {"name": "sdlora", "options": {"rank": 8, "current_mode": "continuous", "magnitude_init": 0.8},
               "classifier": CLASSIFIER},
    "train": TRAIN,
    "seeds": [1993],
}

CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "clinc150": lambda: read_config_file(ROOT / "configs" / "clinc150.yaml"),
    "tiny-vit": lambda: copy.deepcopy(TINY_VIT),
}

PHASES = ("train", "prepare", "end", "eval", "other")


def case_config(case: str, tasks: int | None, overrides: list[str]) -> RunConfig:
    """The case's config (a name of CASES or a YAML path), limited to `tasks` tasks, one seed, csv logging."""
    data = CASES[case]() if case in CASES else read_config_file(case)
    if tasks is not None:
        set_override(data, f"benchmark.num_tasks={tasks}")
    data["seeds"] = data.get("seeds", [1993])[:1]
    for assignment in overrides:
        set_override(data, assignment)
    return build.validate_plugins(load_config(data=data))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall seconds and CPU seconds (this process, all threads) per phase; `wrap(name, fn)` times fn's calls."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.cpu: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        sync(self.device)
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[name] += time.perf_counter() - start
            self.cpu[name] += time.process_time() - cpu

    def result(self, total: float, total_cpu: float, fill_other: bool) -> dict[str, dict[str, float]]:
        out = {}
        for kind, seconds, whole in (("wall", self.seconds, total), ("cpu", self.cpu, total_cpu)):
            seconds = dict(seconds)
            if fill_other:
                seconds["other"] = whole - sum(seconds[p] for p in PHASES if p != "other")
            seconds["total"] = whole
            out[kind] = seconds
        return out

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.measure(name):
                return fn(*args, **kwargs)

        return timed


# -- the engine ----------------------------------------------------------------------------------------
def engine_run(cfg: RunConfig, data: Any, device: torch.device) -> tuple[dict[str, dict[str, float]], list[float]]:
    """`Trainer.run()` into a temporary folder: ({wall, cpu: seconds per phase}, accuracy curve)."""
    with tempfile.TemporaryDirectory(prefix="sdlora-overhead-") as out:
        trainer = Trainer(cfg, cfg.seeds[0], Path(out), device, data, quiet=True)
        clock = Clock(device)
        method = trainer.method
        trainer._train_task = clock.wrap("train", trainer._train_task)  # type: ignore[method-assign]
        method.before_task = clock.wrap("prepare", method.before_task)  # type: ignore[method-assign]
        method.prepare_task = clock.wrap("prepare", method.prepare_task)  # type: ignore[method-assign]
        method.end_task = clock.wrap("end", method.end_task)  # type: ignore[method-assign]
        evaluate = trainer_module.evaluate
        trainer_module.evaluate = clock.wrap("eval", evaluate)
        try:
            sync(device)
            start, cpu = time.perf_counter(), time.process_time()
            result = trainer.run()
            sync(device)
            total, total_cpu = time.perf_counter() - start, time.process_time() - cpu
        finally:
            trainer_module.evaluate = evaluate
    return clock.result(total, total_cpu, fill_other=True), result["accuracy_curve"]


# -- the bare loop -------------------------------------------------------------------------------------
Batch = tuple[Any, torch.Tensor]


def collate_all(dataset: Any, indices: list[int], size: int, collate: Callable[[list[Any]], Batch],
                pin: bool) -> list[Batch]:
    """`dataset[indices]` in consecutive batches of `size`, collated (what a DataLoader would yield)."""
    return collate_batches(dataset, [indices[i:i + size] for i in range(0, len(indices), size)], collate, pin)


def collate_batches(dataset: Any, batches: list[list[int]], collate: Callable[[list[Any]], Batch],
                    pin: bool) -> list[Batch]:
    """Each list of `batches` collated from `dataset` (pinned for a CUDA device)."""
    out = []
    for batch in batches:
        inputs, labels = collate([dataset[j] for j in batch])
        if pin:
            inputs, labels = pin_all(inputs), labels.pin_memory()
        out.append((inputs, labels))
    return out


def pass_batches(dataset: Any, size: int, lengths_of: LengthsOf | None) -> list[list[int]]:
    """The batches of a pass without gradient as the engine forms them (`sdlora.data.length_order.pass_loader`):
    similar lengths, longest first, when the backbone gives lengths; else consecutive batches of `size`. The
    floor reads them in that order and never restores it: its passes only feed order-free statistics."""
    lengths = lengths_of(dataset) if lengths_of is not None else None
    if lengths:
        return LengthBatches(lengths, size).batches
    return [list(range(i, min(i + size, len(dataset)))) for i in range(0, len(dataset), size)]


class UnseededPasses(list):
    """Batches of a pass the engine reads through a DataLoader without a generator (feature passes,
    evaluation): iterating draws one int64 from the global RNG first, as that DataLoader's iterator does for
    its base seed. The draws move the global RNG that dropout reads in training, so the bare loop makes them too."""

    def __iter__(self) -> Iterator[Batch]:
        torch.empty((), dtype=torch.int64).random_()
        return super().__iter__()


def pin_all(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.pin_memory()
    if isinstance(inputs, dict):
        return {k: v.pin_memory() for k, v in inputs.items()}
    return inputs


class TaskBatches:
    """Every batch one task's passes read, made before the clock starts (outside the floor)."""

    def __init__(self, cfg: RunConfig, scenario: Scenario, collate: Callable[[list[Any]], Batch], t: int,
                 seed: int, pin: bool, lengths_of: LengthsOf | None = None) -> None:
        """`lengths_of`: the backbone's `sample_lengths` when the run's passes are length-aware (as the engine's)."""
        train_set = scenario.train_set(t)
        eval_set = scenario.eval_set(t, cfg.eval_split)
        micro = micro_batch_size(cfg.train, 1)
        size = cfg.train.eval_batch_size
        self.passes = UnseededPasses(collate_batches(train_set, pass_batches(train_set, size, lengths_of), collate,
                                                     pin))
        self.eval = UnseededPasses(collate_batches(eval_set, pass_batches(eval_set, size, lengths_of), collate, pin))
        self.epochs = []
        for epoch in range(task_schedule(cfg.train, t).epochs):
            # the engine's order: one draw for the loader's base seed, then randperm (EpochShareSampler)
            gen = data_generator(seed, t, epoch)
            torch.empty((), dtype=torch.int64).random_(generator=gen)
            order = torch.randperm(len(train_set), generator=gen).tolist()
            self.epochs.append(collate_all(train_set, order, micro, collate, pin))


def bare_task(cfg: RunConfig, method: Method, task: TaskInfo, batches: TaskBatches, device: torch.device,
              clock: Clock) -> float:
    """One task's passes by hand; returns the accuracy (percent) over every seen class."""
    with clock.measure("prepare"):
        method.before_task(task, batches.passes)  # type: ignore[arg-type]  # SDC's reference pass, if any
    with clock.measure("other"):
        method.begin_task(task)
    with clock.measure("prepare"):
        method.prepare_task(task, batches.passes)  # type: ignore[arg-type]  # a list of batches is a loader
    schedule = task_schedule(cfg.train, task.index)
    with clock.measure("train"):
        if method.trains and schedule.epochs:
            optimizer = build_optimizer(method.trainable_parameters(), cfg.train, schedule)
            scheduler = build_scheduler(optimizer, cfg.train, schedule)
            method.train()
            for epoch in batches.epochs:
                for inputs, labels in epoch:
                    inputs, labels = move_to(inputs, device), labels.to(device, non_blocking=True)
                    with autocast(device, cfg.train.amp):
                        loss = method.training_step((inputs, labels), task).loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                scheduler.step()
    with clock.measure("end"):
        method.end_task(task, batches.passes)  # type: ignore[arg-type]
    with clock.measure("eval"):
        method.eval()
        correct, count = torch.zeros((), dtype=torch.long), 0
        with torch.no_grad():
            for inputs, labels in batches.eval:
                with autocast(device, cfg.train.amp):
                    logits = method(move_to(inputs, device))
                correct += (logits[:, :task.total].argmax(1).cpu() == labels).sum()
                count += len(labels)
    return 100.0 * float(correct) / max(count, 1)


def build_bare(cfg: RunConfig, device: torch.device) -> Method:
    """The method as `Trainer.__init__` builds it (same seed, same order of random draws)."""
    seed_everything(cfg.seeds[0], cfg.deterministic)
    backbone = build.build_backbone(cfg).to(device)
    return build.build_method(cfg, backbone).to(device)


def make_batches(cfg: RunConfig, data: Any, method: Method, device: torch.device) -> list[TaskBatches]:
    scenario = build.build_scenario(cfg, data, cfg.seeds[0])
    pin = device.type == "cuda"
    lengths_of = method.backbone.sample_lengths if cfg.train.length_aware_passes else None
    return [TaskBatches(cfg, scenario, method.backbone.collate, t, cfg.seeds[0], pin, lengths_of)
            for t in range(scenario.num_tasks)]


def bare_run(cfg: RunConfig, data: Any, device: torch.device,
             batches: list[TaskBatches] | None = None) -> tuple[dict[str, dict[str, float]], list[float]]:
    """The bare loop over every task of `cfg`: ({wall, cpu: seconds per phase}, accuracy curve)."""
    method = build_bare(cfg, device)
    if batches is None:
        batches = make_batches(cfg, data, method, device)
    scenario = build.build_scenario(cfg, data, cfg.seeds[0])
    clock = Clock(device)
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    curve = [bare_task(cfg, method, scenario.task(t), batches[t], device, clock) for t in range(scenario.num_tasks)]
    sync(device)
    return clock.result(time.perf_counter() - start, time.process_time() - cpu, fill_other=False), curve


# -- the comparison ------------------------------------------------------------------------------------
def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


Run = dict[str, dict[str, float]]  # {"wall" | "cpu": {phase: seconds}}


def ratio_cells(engine: list[Run], bare: list[Run], phase: str, kind: str = "wall") -> dict[str, float | None]:
    e = [r[kind][phase] for r in engine]
    b = [r[kind][phase] for r in bare]
    per_round = [x / y for x, y in zip(e, b, strict=True) if y > 0]
    return {
        "engine_s": statistics.median(e),
        "bare_s": statistics.median(b),
        "ratio": statistics.median(per_round) if per_round else None,
        "ratio_of_minima": min(e) / min(b) if min(b) > 0 else None,
    }


def compare(cfg: RunConfig, device: torch.device, reps: int, warmup: int) -> dict[str, Any]:
    """Interleaved rounds of engine and bare runs; returns every timing and the per-phase ratios."""
    data = build.build_benchmark(cfg)
    batches = make_batches(cfg, data, build_bare(cfg, device), device)
    engine: list[Run] = []
    bare: list[Run] = []
    curves: dict[str, list[float]] = {}
    for rep in range(warmup + reps):
        order = ("engine", "bare") if rep % 2 == 0 else ("bare", "engine")
        for which in order:
            if which == "engine":
                seconds, curves["engine"] = engine_run(cfg, data, device)
            else:
                seconds, curves["bare"] = bare_run(cfg, data, device, batches)
            if rep >= warmup:
                (engine if which == "engine" else bare).append(seconds)
            wall, cpu = seconds["wall"], seconds["cpu"]
            print(f"  round {rep + 1}{' (warm-up)' if rep < warmup else ''}: {which:6s} {wall['total']:8.3f} s  "
                  + " ".join(f"{p} {wall[p]:.3f}" for p in PHASES) + f"  (CPU {cpu['total']:.3f} s)", flush=True)
    return {
        "engine_runs": engine,
        "bare_runs": bare,
        "phases": {p: ratio_cells(engine, bare, p) for p in (*PHASES, "total")},
        "cpu_phases": {p: ratio_cells(engine, bare, p, "cpu") for p in (*PHASES, "total")},
        "accuracy_curve": curves,
    }


def describe(cfg: RunConfig, device: torch.device) -> str:
    scenario_tasks = cfg.benchmark.num_tasks or "all"
    classifier = cfg.method.classifier
    return (f"{cfg.benchmark.name} / {cfg.backbone.name} {cfg.backbone.options.get('model')} / {cfg.method.name}, "
            f"tasks {scenario_tasks}, epochs {cfg.train.epochs}, batch {cfg.train.batch_size}, eval batch "
            f"{cfg.train.eval_batch_size}, classifier {classifier.kind}, head_init {classifier.head_init}; "
            f"device {device}, torch threads {torch.get_num_threads()}, torch {torch.__version__}, "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")


def format_table(result: dict[str, Any]) -> str:
    """Wall time per phase and engine / bare; the same for CPU time (this process's threads: on a loaded
    machine it counts the work, not the waits for a core; on a GPU only wall time counts)."""
    lines = [f"{'phase':>8} {'engine s':>10} {'bare s':>10} {'engine/bare':>12} {'(minima)':>9}   "
             f"{'engine CPU s':>12} {'bare CPU s':>10} {'CPU ratio':>12} {'(minima)':>9}"]

    def cells(cell: dict[str, Any]) -> str:
        ratio = "-" if cell["ratio"] is None else f"{cell['ratio']:.3f}"
        minima = "-" if cell["ratio_of_minima"] is None else f"({cell['ratio_of_minima']:.3f})"
        return f"{ratio:>12} {minima:>9}"

    for phase, wall in result["phases"].items():
        cpu = result["cpu_phases"][phase]
        lines.append(f"{phase:>8} {wall['engine_s']:10.3f} {wall['bare_s']:10.3f} {cells(wall)}   "
                     f"{cpu['engine_s']:12.3f} {cpu['bare_s']:10.3f} {cells(cpu)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cases", nargs="*", default=["clinc150", "tiny-vit"],
                   help=f"{' | '.join(CASES)} | a config file (default: both cases)")
    p.add_argument("--tasks", type=int, default=2, help="run the first N tasks (0: all)")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (engine and bare once each)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    add_run_arguments(p)
    return p.parse_args(argv)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --threads, --set, --json: shared with main_job_floor.py."""
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as sdlora train --set (repeatable)")
    p.add_argument("--json", type=Path, default=None, help="also write the measurements here")


def run_device(args: argparse.Namespace) -> torch.device:
    """Applies --threads and resolves --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return pick_device(args.device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = run_device(args)
    out: dict[str, Any] = {}
    for case in args.cases:
        cfg = case_config(case, args.tasks or None, args.overrides)
        print(f"\n== {case}: {describe(cfg, device)}", flush=True)
        load_before = load_average()
        start = time.perf_counter()
        result = compare(cfg, device, args.reps, args.warmup)
        result["load_average"] = {"before": load_before, "after": load_average()}
        result["wall_s"] = time.perf_counter() - start
        print(format_table(result))
        curves = result["accuracy_curve"]
        same = "identical" if curves["engine"] == curves["bare"] else "DIFFERENT"
        print(f"accuracy after each task: engine {[round(a, 2) for a in curves['engine']]}, "
              f"bare {[round(a, 2) for a in curves['bare']]} ({same})")
        print(f"load average (1, 5, 15 min) before {load_before}, after {result['load_average']['after']}; "
              f"{result['wall_s']:.0f} s")
        out[case] = result
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
