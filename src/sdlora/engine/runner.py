"""Run a config over its seeds: OUT/seed-N/ for each, then OUT/summary.json (mean and standard error)."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import Any, TextIO

import torch
import yaml

from sdlora.config import RunConfig, config_to_dict, load_saved_config
from sdlora.engine import build, distributed
from sdlora.engine.checkpoint import write_json_atomic, write_text_atomic
from sdlora.engine.csvlog import write_metrics_csv
from sdlora.engine.lock import LOCK_NAME, output_lock
from sdlora.engine.metrics import summarize_runs
from sdlora.engine.run_folder import LEARNED
from sdlora.engine.trainer import CheckpointHook, Trainer, micro_batch_size
from sdlora.method_config import HEAD_TRAINING
from sdlora.terminal import interactive as interactive  # re-exported (moved to the light sdlora.terminal)
from sdlora.typed import ConfigError

log = logging.getLogger("sdlora")

SEED_REPORTS = ("metrics.csv", "accuracy_curve.png", "accuracy_matrix.png")
RUN_FILES = ("summary.json", "config.yaml", "results.json", "checkpoints")


#: config keys a resumed run (and `sdlora learn --set`) may change: they change nothing already computed (how corrupt
#: files are handled; whether the backbone is compiled, so a run whose compile fails goes on eager)
MAY_CHANGE_ON_RESUME = ("benchmark.options.on_corrupt", "train.compile")


class OutputExists(FileExistsError):
    """The output folder holds another run."""


def pick_device(name: str) -> torch.device:
    """`auto`: a CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def seed_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def holds_run(out: Path) -> bool:
    return out.is_dir() and (any((out / f).exists() for f in RUN_FILES) or any(out.glob("seed-*")))


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse (before anything is written) to mix a new run into a folder that holds another."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the folder and --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; a run writes a folder: give a folder's path")
    if holds_run(out) and not resume and not overwrite:
        raise OutputExists(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")


def prepare_output(out: Path, resume: bool, overwrite: bool) -> None:
    check_output(out, resume, overwrite)
    if holds_run(out) and not resume:
        for entry in [*(out / f for f in RUN_FILES), *out.glob("seed-*")]:
            if entry.is_dir():
                shutil.rmtree(entry)
            elif entry.exists():
                entry.unlink()
    out.mkdir(parents=True, exist_ok=True)


def check_resumed_config(saved: Path, cfg: RunConfig) -> None:
    """--resume continues the run saved in `saved` only with the same (resolved) config."""
    try:
        previous = config_to_dict(build.validate_plugins(load_saved_config(saved)))
    except ConfigError as err:
        raise ConfigError(f"--resume: the config saved in {saved} is not valid any more ({err})") from None
    differing = [k for k in differing_keys(previous, config_to_dict(cfg)) if k not in MAY_CHANGE_ON_RESUME]
    if differing:
        diff = ", ".join(differing)
        raise ValueError(f"--resume: the config differs from the one saved in {saved} ({diff}); "
                         "resume with the same config")


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b), key=str)
                for k in differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def remove_unstarted(out: Path, created: bool) -> None:
    """After a failure before any checkpoint, remove what this run wrote so the same --out works again."""
    if any(out.glob("seed-*/checkpoints/latest.json")):
        return
    for entry in [*(out / f for f in RUN_FILES), *out.glob("seed-*")]:
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.exists():
            entry.unlink()
    if created and out.is_dir() and not any(p.name != LOCK_NAME for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


def file_logger(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    if log.getEffectiveLevel() > logging.INFO:  # the run log always gets INFO, whatever the caller's logging
        log.setLevel(logging.INFO)
    log.addHandler(handler)
    return handler


def run_config(cfg: RunConfig, out: Path, device: str | None = None, resume: bool = False, overwrite: bool = False,
               quiet: bool = False, on_checkpoint: CheckpointHook | None = None,
               stream: TextIO | None = None) -> dict[str, Any]:
    """Train every seed of `cfg` into `out`; returns the summary.

    Everything that can be checked without data or weights is checked before the folder is touched; a run
    that fails before its first checkpoint removes what it wrote (so the same --out can be used again).

    Under torchrun every rank calls this: rank 0 alone touches the output folder (lock, checks, checkpoints,
    results, plots, logs, clean-up); its checks' outcome is handed to the others (`distributed.from_main`)."""
    cfg = build.validate_plugins(cfg)
    out = Path(out)
    with distributed.session(pick_device(device or cfg.device)) as dev:
        micro_batch_size(cfg.train, distributed.world_size())  # a batch the processes cannot share: stop now
        if cfg.train.amp != "none" and dev.type != "cuda" and distributed.is_main():
            log.warning("train.amp: %s is used on a GPU only; this run on %s computes in float32", cfg.train.amp,
                        dev)
        distributed.from_main(lambda: check_output(out, resume, overwrite))
        # progress bars on rank 0's terminal or notebook, never in a log file
        quiet = quiet or not interactive() or not distributed.is_main()
        if quiet:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        if not distributed.is_main():
            return _run_locked(cfg, out, dev, resume, overwrite, quiet, on_checkpoint, stream)
        created = not out.exists()
        fresh = not holds_run(out) or (overwrite and not resume)
        with output_lock(out):
            try:
                return _run_locked(cfg, out, dev, resume, overwrite, quiet, on_checkpoint, stream)
            except BaseException:
                if fresh:
                    remove_unstarted(out, created)
                raise


def _run_locked(cfg: RunConfig, out: Path, dev: torch.device, resume: bool, overwrite: bool, quiet: bool,
                on_checkpoint: CheckpointHook | None, stream: TextIO | None) -> dict[str, Any]:
    data = build.build_benchmark(cfg)  # before --overwrite clears the folder: data that fails leaves the old run
    scenarios = {seed: build.build_scenario(cfg, data, seed) for seed in cfg.seeds}  # the order may depend on it
    for scenario in scenarios.values():
        scenario.check_samples(cfg.eval_split)
    distributed.from_main(lambda: _prepare_locked(cfg, out, resume, overwrite))
    main = distributed.is_main()
    log.info("%s", run_summary(cfg, data, dev, out))
    results = []
    for seed in cfg.seeds:
        folder = seed_dir(out, seed)
        handler = distributed.from_main(partial(_seed_log, folder), share=False)
        try:
            existing = folder / "results.json"
            previous = distributed.from_main(partial(_previous_results, existing, resume))
            if previous.get("status") == "complete":
                log.info("seed %d already complete", seed)
                if main and not all((folder / f).is_file() for f in SEED_REPORTS):  # killed after it completed
                    write_seed_reports(previous, folder)
                results.append(previous)
                continue
            log.info("seed %d: %s on %s with %s, device %s%s", seed, cfg.method.name, cfg.benchmark.name,
                     cfg.backbone.name, dev,
                     f", {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
            trainer = Trainer(cfg, seed, folder, dev, data, quiet=quiet, on_checkpoint=on_checkpoint,
                              scenario=scenarios[seed])
            result = trainer.run(resume=resume)
            if main:
                write_seed_reports(result, folder)
                print_table(result, stream or sys.stdout)
            results.append(result)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()
    summary = summarize_runs(results)
    summary["out"] = str(out)
    if main:
        write_json_atomic(out / "summary.json", summary)
        if len(results) > 1:
            print_summary(summary, stream or sys.stdout)
    return summary


def run_summary(cfg: RunConfig, data: Any, device: torch.device, out: Path, sizes: list[int] | None = None) -> str:
    """What is about to run, in a few lines: method and classifier, backbone, tasks x classes (of the benchmark's),
    samples, the training settings, seeds, device and output (printed at the start of `train` and `learn`)."""
    from sdlora.data.scenario import split_tasks

    b, t = cfg.benchmark, cfg.train
    if sizes is None:
        sizes = split_tasks(data.num_classes, b.init_classes, b.increment, b.num_tasks)
    shape = f"{len(sizes)} tasks x {sizes[0]} classes" if len(set(sizes)) == 1 else f"tasks of {sizes} classes"
    classifier = cfg.method.classifier
    kind = getattr(classifier, "kind", None) if classifier is not None else None
    drift = getattr(classifier, "drift", None) if classifier is not None else None
    drift = None if drift == "none" else drift
    loss = getattr(classifier, "loss", None) or HEAD_TRAINING["loss"]
    evaluated = getattr(data, f"{cfg.eval_split}_targets", None)
    evaluated = evaluated if evaluated is not None else []
    options = cfg.backbone.options
    model = "random init" if options.get("random_init_config") else options.get("model")
    if model and options.get("pretrained") is False and not options.get("pretrained_file"):
        model += ", random init"
    per_class = b.options.get("max_per_class")
    lines = [f"{cfg.method.name} on {b.name}: {shape} ({sum(sizes)} of {data.num_classes} classes"
             + (f", at most {per_class} samples per class" if per_class else "") + "); the data holds "
             f"{len(data.train_targets):,} training and {len(evaluated):,} {cfg.eval_split} samples",
             f"  backbone {cfg.backbone.name}" + (f" ({model})" if model else "")
             + f"; classifier {kind or 'the method default'}" + (f" with {drift} drift compensation" if drift else ""),
             f"  {t.epochs} epochs per task, batch {t.batch_size}, {t.optimizer} lr {t.lr:g}, loss {loss}; seeds "
             f"{list(cfg.seeds)} on {device}" + (f" x {distributed.world_size()} processes"
                                                 if distributed.world_size() > 1 else "") + f"; output {out}"]
    return "\n".join(lines)


def _prepare_locked(cfg: RunConfig, out: Path, resume: bool, overwrite: bool) -> None:
    """Rank 0: clear or check the folder, and save the config."""
    prepare_output(out, resume, overwrite)
    saved = out / "config.yaml"
    if resume and saved.is_file():
        check_resumed_config(saved, cfg)
    write_text_atomic(saved, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _previous_results(path: Path, resume: bool) -> dict[str, Any]:
    """The seed's results.json when resuming and it exists, else {}. A seed that `sdlora learn` grew is continued by
    `learn` alone: `train --resume` would run the config's tasks over the learned ones."""
    learned = path.parent / LEARNED
    if resume and learned.is_file():
        pending = [t for t in json.loads(learned.read_text())["tasks"] if t["status"] != "complete"]
        if pending:
            raise ValueError(f"{path.parent}: `sdlora learn` of task {pending[-1]['task'] + 1} did not complete; "
                             f"continue it with `sdlora learn {path.parent.parent} --resume` (or put the run back "
                             "with --abandon), not with `train --resume`")
    return json.loads(path.read_text()) if resume and path.is_file() else {}


def _seed_log(folder: Path) -> logging.Handler:
    """Rank 0: the seed's folder and its train.log (other ranks get None from `from_main`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return file_logger(folder / "train.log")


def write_seed_reports(result: dict[str, Any], folder: Path) -> None:
    """metrics.csv and both plots of one seed, from its results.json."""
    write_metrics_csv(result, folder / "metrics.csv")
    write_plots(result, folder)


def write_summary(out: Path) -> dict[str, Any]:
    """OUT/summary.json again from the results.json of every seed folder in `out` (after `sdlora learn`)."""
    results = [json.loads(f.read_text()) for f in sorted(out.glob("seed-*/results.json"))]
    summary_file = out / "summary.json"
    if not results or not summary_file.is_file():
        return {}
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for result in results:  # `learn --seed` grows one seed: its classes are no longer the others'
        groups.setdefault(tuple(result["class_names"][:sum(result["task_sizes"])]), []).append(result)
    where = {"out": json.loads(summary_file.read_text()).get("out", str(out))}
    if len(groups) == 1:
        summary = {**summarize_runs(results), **where}
    else:  # no mean over seeds that learned different classes: one summary per group of seeds that match
        summary = {"seeds": [r.get("seed") for r in results], **where,
                   "groups": [{**summarize_runs(g), "task_sizes": g[0]["task_sizes"]} for g in groups.values()]}
    write_json_atomic(summary_file, summary)
    return summary


def write_plots(result: dict[str, Any], folder: Path) -> None:
    from sdlora.engine.plots import plot_accuracy_curve, plot_accuracy_matrix

    plot_accuracy_curve(result, folder / "accuracy_curve.png")
    plot_accuracy_matrix(result, folder / "accuracy_matrix.png")


METRIC_LABELS = {
    "final_accuracy": "final accuracy (sample-weighted)",
    "final_accuracy_task_mean": "final accuracy (task-weighted)",
    "average_incremental_accuracy": "average incremental accuracy (AAA)",
    "forgetting": "forgetting",
    "backward_transfer": "backward transfer",
}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:6.2f}"


def print_table(result: dict[str, Any], stream: TextIO) -> None:
    """The per-task table and the final metrics of one seed."""
    lines = [f"\n{result['method']} on {result['benchmark']}, seed {result['seed']}",
             f"{'task':>4} {'classes':>7} {'accuracy':>8}  per-task accuracy"]
    for i, (acc, row) in enumerate(zip(result["accuracy_curve"], result["accuracy_matrix"], strict=True)):
        total = sum(result["task_sizes"][: i + 1])
        cells = "not evaluated (eval_every)" if row is None else " ".join(f"{a:5.1f}" for a in row)
        lines.append(f"{i + 1:>4} {total:>7} {_fmt(acc):>8}  {cells}")
    null = (result.get("evaluation") or {}).get("null", {})
    for key, label in METRIC_LABELS.items():
        lines.append(f"{label:>38}: {_fmt(result['metrics'].get(key))}" + (f" ({null[key]})" if key in null else ""))
    lines.append(f"{'wall time':>38}: {result['wall_time_s']:6.1f} s")
    stream.write("\n".join(lines) + "\n")


def print_summary(summary: dict[str, Any], stream: TextIO) -> None:
    lines = [f"\nover seeds {summary['seeds']} (mean ± standard error; worst seed)"]
    for key, label in METRIC_LABELS.items():
        m = summary["metrics"].get(key)
        if m and m.get("mean") is not None:
            lines.append(f"{label:>38}: {m['mean']:6.2f} ± {m['stderr']:.2f}; worst {m['worst']:6.2f} "
                         f"(seed {m['worst_seed']})")
    stream.write("\n".join(lines) + "\n")
