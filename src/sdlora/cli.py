"""`sdlora train | eval | predict | learn | export | report | list | data check`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from sdlora.typed import ConfigError

log = logging.getLogger("sdlora")
PACKAGE = Path(__file__).resolve().parent


def _config(args: argparse.Namespace):
    if getattr(args, "loaded_config", None) is not None:  # read and checked by `sdlora.cli_checks` already
        return args.loaded_config
    from sdlora.config import load_config

    return load_config(args.config, args.set)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option in its error)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    from sdlora.engine.launch import launched, relaunch

    cfg = _config(args)
    out = Path(args.out) if args.out else Path("runs") / (cfg.name or Path(args.config).stem)
    if args.nproc > 1 and not launched():
        from sdlora.engine.runner import check_output
        from sdlora.engine.trainer import micro_batch_size

        # what every process would refuse at once, refused here: one line, not one per process and torchrun's trace
        micro_batch_size(cfg.train, args.nproc)
        check_output(out, args.resume, args.overwrite)
        return relaunch(args.argv, args.nproc)
    from sdlora.engine import distributed
    from sdlora.engine.runner import run_config

    try:
        run_config(cfg, out, device=args.device, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    except KeyboardInterrupt:  # Ctrl-C: a line that says how to go on, not a traceback
        if args.verbose:
            traceback.print_exc()
        resumable = any(out.glob("seed-*/checkpoints/latest.json"))
        again = " ".join(["sdlora train", args.config, *(f"--set {s}" for s in args.set), "--out", str(out)])
        print("\nsdlora: interrupted; " + (f"continue with `{again} --resume`" if resumable else
                                           "nothing was saved yet"), file=sys.stderr)
        return 130
    if distributed.is_main():
        print(f"\nrun written to {out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from sdlora.serving.evaluate import evaluate_run

    result = evaluate_run(Path(args.run_dir), args.seed, args.split, args.device or "cpu", per_class=args.per_class)
    print(json.dumps(result, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from sdlora.engine.restore import restore_run
    from sdlora.export.common import check_target
    from sdlora.export.single_file import export_run

    check_target(Path(args.out), args.overwrite)  # before the model loads
    if args.format is not None:
        from sdlora.export import EXPORT_FORMATS

        EXPORT_FORMATS.get(args.format)  # an unknown format: the registry's message, before the model loads
    run = restore_run(Path(args.run_dir), args.seed)
    if args.format is not None:
        from sdlora.export import export_run_as

        command = " ".join(["sdlora", *(args.argv or [])])
        manifest = export_run_as(run, Path(args.out), args.format, command=command, overwrite=args.overwrite)
        print(f"exported {args.out}: a --format {args.format} folder for {manifest['library']} "
              f"({len(manifest['class_names'])} classes, {run.tasks_done} tasks, merged)")
        for note in manifest.get("notes", []):
            print(f"note: {note}")
        return 0
    state = export_run(run, Path(args.out), overwrite=args.overwrite)
    print(f"exported {len(state)} tensors ({run.tasks_done} tasks, merged) to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sdlora.serving.predict import load
    from sdlora.serving.predict_io import read_inputs, rows, write_predictions

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    inputs, kind, columns = read_inputs(Path(args.input), args.text_column)
    classifier = load(args.model, args.seed, args.device or "cpu")
    if kind != classifier.takes:
        raise ValueError(f"{args.input} holds {kind} but {args.model} takes {classifier.takes}")
    predictions = classifier.predict(inputs, top_k=args.top_k, on_corrupt=args.on_corrupt)
    records = list(rows(inputs, predictions, columns))
    if args.top_k > len(classifier.class_names):
        print(f"note: --top-k {args.top_k}: the model knows {len(classifier.class_names)} classes, so each row "
              "lists all of them", file=sys.stderr)
    write_predictions(records, Path(args.out) if args.out else None)
    skipped = sum(not p for p in predictions)
    if args.out:
        print(f"{len(records)} predictions written to {args.out}" + (f" ({skipped} unreadable inputs skipped: "
                                                                       "label empty)" if skipped else ""))
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    """The arguments are checked before torch is imported (and the files, `cli_checks.check_learn`)."""
    if args.abandon:
        if args.data or args.test or args.resume or args.set:
            raise ValueError("--abandon takes no --data, --test, --resume or --set: it only puts the run back")
        from sdlora.serving.backup import abandon  # no torch

        abandon(Path(args.run_dir), args.seed)
        print(f"the interrupted learn is abandoned: {args.run_dir} is as it was before it")
        return 0
    if (args.data is None or args.test is None) and not args.resume:
        raise ValueError("give the new task's files with --data and --test (or --resume an interrupted learn)")
    from sdlora.engine.runner import print_table
    from sdlora.serving.learn import learn
    from sdlora.terminal import interactive

    result = learn(Path(args.run_dir), Path(args.data) if args.data else None, Path(args.test) if args.test else None,
                   seed=args.seed, device=args.device or "cpu", text_column=args.text_column,
                   label_column=args.label_column, overrides=args.set, quiet=args.quiet or not interactive())
    print_table(result, sys.stdout)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from sdlora.report import report_main

    print(report_main(args.run_dirs, args.format, args.plot))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from sdlora.catalog import builtin_catalog  # the registries read from the source: no torch

    catalog = builtin_catalog()
    registries = (("methods", "METHODS"), ("benchmarks", "BENCHMARKS"), ("backbones", "BACKBONES"),
                  ("loggers", "LOGGERS"), ("export formats", "EXPORT_FORMATS"))
    for title, registry in registries:
        print(f"{title}:")
        for name, doc in catalog.describe(registry).items():
            print(f"  {name:<14} {doc}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from sdlora.data_check import run_check

    return run_check(_config(args))


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        empty = action.default is None or action.default is False or action.default == [] or \
            action.default is argparse.SUPPRESS
        if "default" in text or empty or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class VersionAction(argparse.Action):
    """`--version`: the installed package's version, read only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from sdlora.provenance import package_version

        print(f"{parser.prog} {package_version()}")
        parser.exit()


#: flags every subcommand takes, before or after its name: (flags, help)
COMMON_FLAGS = ((("-v", "--verbose"), "debug logging, and the traceback of an error"),
                (("--quiet",), "no progress bars (never drawn when stderr is not a terminal)"))


def add_common_flags(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """-v / --quiet on `parser`: the top parser holds the defaults; a subcommand's copies only set them (SUPPRESS),
    so the flag counts wherever it stands. A subcommand's own --quiet is kept, with its default moved up."""
    default = False if top else argparse.SUPPRESS
    for flags, text in COMMON_FLAGS:
        own = parser._option_string_actions.get(flags[-1])
        if own is not None:
            own.default = default
        else:
            parser.add_argument(*flags, action="store_true", default=default, help=text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdlora", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--version", action=VersionAction, help="print the version and exit")
    add_common_flags(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a config (every seed) into an output folder")
    t.add_argument("config", help="YAML config file (see configs/)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. train.lr=0.01 (repeatable)")
    t.add_argument("--out", help="output folder (default runs/<config name>)")
    continuing = t.add_mutually_exclusive_group()
    continuing.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    continuing.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--device", help="cpu, cuda, cuda:1... (default: the config's, auto)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--nproc", type=positive_int, default=1, metavar="N",
                   help="train on N processes of this machine (torchrun --standalone --nproc-per-node N; one GPU "
                        "each, or CPU processes); the global batch stays train.batch_size")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="re-evaluate a finished run on every seen class")
    e.add_argument("run_dir", help="a run folder (or one seed-N folder of it)")
    e.add_argument("--seed", type=int, help="the seed to evaluate when the run has several (default: the only one)")
    e.add_argument("--split", default="test", choices=["test", "val"], help="the evaluation split")
    e.add_argument("--device", help="cpu, cuda, cuda:1... (default: cpu)")
    e.add_argument("--per-class", nargs="?", const="", metavar="DIR",
                   help="also write per-class accuracy and the confusion matrix (per_class.csv, confusion.csv, "
                        "confusion.png) into DIR (default: SEED/per_class_SPLIT)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="merged backbone + head: a timm / transformers / PEFT folder, or one file")
    x.add_argument("run_dir", help="a run folder (or one seed-N folder of it)")
    x.add_argument("--out", required=True, help="a folder with --format, else a .safetensors file")
    x.add_argument("--format", help="an export format of `sdlora list` (timm folder, transformers save_pretrained "
                                    "folder, PEFT LoRA adapter); default: one safetensors file with backbone.* "
                                    "and head.* keys")
    x.add_argument("--seed", type=int, help="the seed to export when the run has several (default: the only one)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out (file, or folder with all "
                                                              "its files)")
    x.set_defaults(func=cmd_export)

    q = sub.add_parser("predict", help="classify texts or images with a run or an export folder")
    q.add_argument("model", help="a run folder (or one seed of it) or a --format timm / hf export")
    q.add_argument("input", help="text file (one per line), .csv / .tsv / .jsonl with a text column, or an "
                                 "image folder")
    q.add_argument("--top-k", type=int, default=1, help="how many labels (with scores) to give per input")
    q.add_argument("--out", help="write .csv or .jsonl (default: JSON lines on stdout)")
    q.add_argument("--text-column", default="text", help="column of a table input (default text)")
    q.add_argument("--seed", type=int, help="the seed of a run with several (default: the only one)")
    q.add_argument("--device", help="cpu, cuda, cuda:1... (default: cpu)")
    q.add_argument("--on-corrupt", default="stop", choices=["stop", "skip"],
                   help="an unreadable image: stop with its path, or skip it (its row's label is empty)")
    q.set_defaults(func=cmd_predict)

    n = sub.add_parser("learn", help="continue a finished run with one more task of new classes from new files")
    n.add_argument("run_dir", help="a finished run folder (or one seed-N folder of it)")
    n.add_argument("--data", help="training data of the new classes: .csv / .tsv / .jsonl (text, label) for a text "
                                  "encoder, an image folder (one sub-folder per class) for a ViT")
    n.add_argument("--test", help="test data of the new classes, same kind (every task is evaluated; needed unless "
                                  "--resume)")
    n.add_argument("--resume", action="store_true", help="continue an interrupted learn")
    n.add_argument("--abandon", action="store_true",
                   help="drop an interrupted or failed learn: the run is put back exactly as it was before it")
    n.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a training setting of the new task: train.* or how its head trains, method.classifier.loss "
                        "/ freeze_old_head / head_lr (e.g. train.epochs=3, method.classifier.loss=seen)")
    n.add_argument("--text-column", default="text", help="text column of table files")
    n.add_argument("--label-column", default="label", help="label column of table files")
    n.add_argument("--seed", type=int, help="the seed of a run with several (default: the only one)")
    n.add_argument("--device", help="cpu, cuda, cuda:1... (default: cpu)")
    n.add_argument("--quiet", action="store_true", help="no progress bars")
    n.set_defaults(func=cmd_learn)

    r = sub.add_parser("report", help="a table across methods and seeds")
    r.add_argument("run_dirs", nargs="+", help="run folders (each holding seed-N folders)")
    r.add_argument("--format", default="md", choices=["md", "csv"], help="markdown table or CSV")
    r.add_argument("--plot", help="also write the accuracy curves of every method to this PNG")
    r.set_defaults(func=cmd_report)

    sub.add_parser("list", help="methods, benchmarks, backbones, loggers, export formats").set_defaults(func=cmd_list)

    d = sub.add_parser("data", help="data utilities")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    c = dsub.add_parser("check", help="verify a benchmark's files and counts")
    c.add_argument("config", help="YAML config file naming the benchmark")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    c.set_defaults(func=cmd_data_check)
    finish_subcommands(p)
    return p


def finish_subcommands(parser: argparse.ArgumentParser) -> None:
    """Every subcommand (nested ones too): the help formatter with defaults, its help line as its --help
    description, and the common flags."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                child.formatter_class = HelpFormatter
                child.description = child.description or lines.get(name)
                add_common_flags(child)
                finish_subcommands(child)


#: errors that are the user's to fix (one line, exit 1; 2 for a config error), by module and name: a module that was
#: never imported raised none of its errors, so `user_errors` imports nothing
USER_ERRORS = (("sdlora.backbones.base", "BackboneUnavailable"), ("sdlora.engine.checkpoint", "CheckpointError"),
               ("sdlora.engine.distributed", "RankFailed"), ("sdlora.engine.lock", "OutputLocked"),
               ("sdlora.engine.loop", "TrainingDiverged"), ("sdlora.engine.runner", "OutputExists"),
               ("sdlora.data.image_folder", "CorruptImageError"))


def user_errors() -> tuple[type[BaseException], ...]:
    """The error classes reported in one line: the builtin ones and those of the modules imported so far."""
    loaded = [getattr(sys.modules[module], name) for module, name in USER_ERRORS if module in sys.modules]
    return (ConfigError, KeyError, FileNotFoundError, FileExistsError, ValueError, *loaded)


def is_user_error(err: BaseException) -> bool:
    """An error to report in one line: one of `user_errors()`, and for the broad KeyError / ValueError only one that
    sdlora raised on purpose (a `raise` statement in sdlora's code). The same classes thrown elsewhere (a library,
    a failed conversion such as int("model")) are bugs: their traceback is shown."""
    import traceback as tb

    if not isinstance(err, user_errors()):
        return False
    if type(err) not in (KeyError, ValueError):
        return True
    frames = tb.extract_tb(err.__traceback__)
    if not frames:
        return True
    last = frames[-1]
    return str(Path(last.filename).resolve()).startswith(str(PACKAGE)) and (last.line or "").startswith("raise")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    from sdlora.cli_checks import check_args
    from sdlora.terminal import interactive, quiet_libraries

    if args.quiet or not interactive():  # no library progress bars or warnings in a log file
        quiet_libraries()
    try:
        check_args(args)  # arguments, paths and config, before anything heavy is imported
        return args.func(args)
    except BrokenPipeError:  # `sdlora list | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as err:
        if not is_user_error(err):
            raise
        if args.verbose:  # one line; the traceback only with -v
            traceback.print_exc()
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"sdlora: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, ConfigError | KeyError) else 1


if __name__ == "__main__":
    sys.exit(main())
