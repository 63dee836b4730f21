"""`sdlora train | eval | export | report | list | data check`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

from sdlora.typed import ConfigError

log = logging.getLogger("sdlora")


def _config(args: argparse.Namespace):
    from sdlora.config import load_config

    return load_config(args.config, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from sdlora.engine.launch import launched, relaunch

    cfg = _config(args)
    if args.nproc > 1 and not launched():
        return relaunch(args.argv, args.nproc)
    from sdlora.engine import distributed
    from sdlora.engine.runner import run_config

    out = Path(args.out) if args.out else Path("runs") / (cfg.name or Path(args.config).stem)
    run_config(cfg, out, device=args.device, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if distributed.is_main():
        print(f"\nrun written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sdlora.engine.learn import run_scenario
    from sdlora.engine.loop import evaluate
    from sdlora.engine.restore import restore_run

    run = restore_run(Path(args.run_dir), args.seed, args.device or "cpu")
    scenario = run_scenario(run.folder, run.cfg, run.seed)  # grown by `sdlora learn`, if it ran
    task = scenario.task(run.tasks_done - 1)
    from sdlora.engine.length_order import pass_loader

    backbone = run.method.backbone
    loader = pass_loader(scenario.eval_set(task.index, args.split), backbone.collate, run.cfg.train.eval_batch_size,
                         backbone.sample_lengths if run.cfg.train.length_aware_passes else None)
    device = next(run.method.parameters()).device
    row, counts = evaluate(run.method, loader, scenario, task, device)
    total = sum(a * n for a, n in zip(row, counts, strict=True)) / max(sum(counts), 1)
    print(json.dumps({"run": str(run.folder), "split": args.split, "tasks": run.tasks_done,
                      "accuracy": round(total, 4), "per_task": [round(a, 4) for a in row]}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sdlora.engine.restore import export_run, restore_run

    run = restore_run(Path(args.run_dir), args.seed)
    if args.format is not None:
        from sdlora.export import export_run_as

        command = " ".join(["sdlora", *(args.argv or [])])
        manifest = export_run_as(run, Path(args.out), args.format, command=command)
        print(f"exported a {manifest['library']} {args.format} folder ({len(manifest['class_names'])} classes, "
              f"{run.tasks_done} tasks, merged) to {args.out}")
        for note in manifest.get("notes", []):
            print(f"note: {note}")
        return 0
    state = export_run(run, Path(args.out))
    print(f"exported {len(state)} tensors ({run.tasks_done} tasks, merged) to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sdlora.predict import load
    from sdlora.predict_io import read_inputs, rows, write_predictions

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    inputs, kind = read_inputs(Path(args.input), args.text_column)
    classifier = load(args.model, args.seed, args.device or "cpu")
    if kind != classifier.takes:
        raise ValueError(f"{args.input} holds {kind} but {args.model} takes {classifier.takes}")
    records = list(rows(inputs, classifier.predict(inputs, top_k=args.top_k)))
    write_predictions(records, Path(args.out) if args.out else None)
    if args.out:
        print(f"{len(records)} predictions written to {args.out}")
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    from sdlora.engine.learn import learn
    from sdlora.engine.runner import print_table

    if (args.data is None or args.test is None) and not args.resume:
        raise ValueError("give the new task's files with --data and --test (or --resume an interrupted learn)")
    result = learn(Path(args.run_dir), None if args.resume and args.data is None else Path(args.data),
                   Path(args.test) if args.test else None, seed=args.seed, device=args.device or "cpu",
                   text_column=args.text_column, label_column=args.label_column, quiet=args.quiet)
    print_table(result, sys.stdout)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sdlora.report import report_main

    print(report_main(args.run_dirs, args.format, args.plot))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sdlora.engine.loggers import LOGGERS
    from sdlora.export import EXPORT_FORMATS
    from sdlora.registry import BACKBONES, BENCHMARKS, METHODS

    registries = (("methods", METHODS), ("benchmarks", BENCHMARKS), ("backbones", BACKBONES),
                  ("loggers", LOGGERS), ("export formats", EXPORT_FORMATS))
    for title, registry in registries:
        print(f"{title}:")
        for name, doc in registry.describe().items():
            print(f"  {name:<14} {doc}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from sdlora.data.check import run_check

    return run_check(_config(args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdlora", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a config (every seed) into an output folder")
    t.add_argument("config")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--device", help="cpu, cuda, cuda:1... (default: the config's, auto)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train on N processes of this machine (torchrun --standalone --nproc-per-node N; one GPU "
                        "each, or CPU processes); the global batch stays train.batch_size")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a finished run on every seen class")
    e.add_argument("run_dir")
    e.add_argument("--seed", type=int)
    e.add_argument("--split", default="test", choices=["test", "val"])
    e.add_argument("--device")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="merged backbone + head: a timm / transformers / PEFT folder, or one file")
    x.add_argument("run_dir")
    x.add_argument("--out", required=True, help="a folder with --format, else a .safetensors file")
    x.add_argument("--format", choices=["timm", "hf", "peft"],
                   help="timm folder, transformers save_pretrained folder, or PEFT LoRA adapter (default: one "
                        "safetensors file with backbone.* and head.* keys)")
    x.add_argument("--seed", type=int)
    x.set_defaults(func=cmd_export)

    q = sub.add_parser("predict", help="classify texts or images with a run or an export folder")
    q.add_argument("model", help="a run folder (or one seed of it) or a --format timm / hf export")
    q.add_argument("input", help="text file (one per line), .csv / .tsv / .jsonl with a text column, or an "
                                 "image folder")
    q.add_argument("--top-k", type=int, default=1)
    q.add_argument("--out", help="write .csv or .jsonl (default: JSON lines on stdout)")
    q.add_argument("--text-column", default="text", help="column of a table input (default text)")
    q.add_argument("--seed", type=int)
    q.add_argument("--device")
    q.set_defaults(func=cmd_predict)

    n = sub.add_parser("learn", help="continue a finished run with one more task of new classes from new files")
    n.add_argument("run_dir")
    n.add_argument("--data", help="training data of the new classes: .csv / .tsv / .jsonl (text, label) for a text "
                                  "encoder, an image folder (one sub-folder per class) for a ViT")
    n.add_argument("--test", help="test data of the new classes, same kind (every task is evaluated; needed unless "
                                  "--resume)")
    n.add_argument("--resume", action="store_true", help="continue an interrupted learn")
    n.add_argument("--text-column", default="text")
    n.add_argument("--label-column", default="label")
    n.add_argument("--seed", type=int)
    n.add_argument("--device")
    n.add_argument("--quiet", action="store_true", help="no progress bars")
    n.set_defaults(func=cmd_learn)

    r = sub.add_parser("report", help="a table across methods and seeds")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--format", default="md", choices=["md", "csv"])
    r.add_argument("--plot", help="also write the accuracy curves of every method to this PNG")
    r.set_defaults(func=cmd_report)

    sub.add_parser("list", help="methods, benchmarks, backbones and export formats").set_defaults(func=cmd_list)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="verify a benchmark's files and counts")
    c.add_argument("config")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    c.set_defaults(func=cmd_data_check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    from sdlora.backbones.base import BackboneUnavailable
    from sdlora.engine.checkpoint import CheckpointError
    from sdlora.engine.distributed import RankFailed
    from sdlora.engine.lock import OutputLocked
    from sdlora.engine.loop import TrainingDiverged
    from sdlora.engine.runner import OutputExists

    user_errors = (ConfigError, KeyError, FileNotFoundError, OutputExists, OutputLocked, TrainingDiverged, ValueError,
                   BackboneUnavailable, CheckpointError, RankFailed)
    try:
        return args.func(args)
    except user_errors as err:  # one line; the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"sdlora: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError | KeyError) else 1


if __name__ == "__main__":
    sys.exit(main())
