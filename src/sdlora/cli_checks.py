"""Checks of the command line's arguments, paths and config that need no torch: run before any command starts.

A mistyped path or config key should fail in a blink, not after seconds of importing torch, timm and
transformers and loading weights. Each check raises the error (class and message) that the command itself
would raise later, so a command's outcome is the same with or without them; only sooner.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from sdlora.typed import ConfigError

#: input kinds `sdlora predict` reads (`sdlora.serving.predict_io.READERS`; a test keeps the two equal)
PREDICT_INPUTS = (".txt", ".csv", ".tsv", ".jsonl", ".ndjson")
#: suffixes `sdlora predict --out` writes (`sdlora.serving.predict_io.WRITERS`; a test keeps the two equal)
PREDICT_OUTPUTS = (".jsonl", ".csv")
#: the file that marks an export folder (`sdlora.export.common.MANIFEST`; a test keeps the two equal)
EXPORT_MANIFEST = "sdlora_export.json"
#: the config sections naming a registered plugin, with their registry (variable name in the source)
PLUGIN_SECTIONS = (("benchmark", "BENCHMARKS"), ("backbone", "BACKBONES"), ("method", "METHODS"))


def load_config_file(args: argparse.Namespace) -> None:
    """The whole config file (with bases and --set) as `load_config` validates it; the loaded config is kept on
    `args` for the command (`sdlora data check` reports plugin problems itself, in its own report)."""
    from sdlora.config import load_config

    args.loaded_config = load_config(args.config, args.set)


def check_config(args: argparse.Namespace) -> None:
    """`load_config_file`, then each plugin's name and options, then the logger names, against the built-in
    catalog: what `sdlora train` would refuse after importing torch (`engine.build.validate_plugins`), in its
    order, with the same `Options` classes (imported from their torch-free modules)."""
    from sdlora.catalog import builtin_catalog
    from sdlora.config import plugin_options

    load_config_file(args)
    cfg = args.loaded_config
    catalog = builtin_catalog()
    for section, registry in PLUGIN_SECTIONS:
        name = getattr(cfg, section).name
        catalog.check(registry, name)
        options = catalog.options(registry, name)
        if options is not None:
            plugin_options(options, cfg, section)
    for name in cfg.train.loggers:
        try:
            catalog.check("LOGGERS", name)
        except KeyError as err:  # as `sdlora.engine.loggers.check_loggers` words it
            raise ConfigError(f"train.loggers: {err.args[0]}") from None


def check_run_folder(run_dir: Path, seed: int | None) -> None:
    """A run folder or one seed of it, as `sdlora.engine.run_folder.RunFolder.open` finds it."""
    from sdlora.engine.seed_folder import find_seed_folder

    find_seed_folder(run_dir, seed)


def check_run(args: argparse.Namespace) -> None:
    check_run_folder(Path(args.run_dir), args.seed)


def check_learn(args: argparse.Namespace) -> None:
    """The run folder, then, when a new task starts (no interrupted learn to continue), its --data and --test as
    `sdlora learn` checks them first (`serving.learn_files`). `--abandon` and missing files without `--resume`
    are the command's own first refusals."""
    from sdlora.engine.run_folder import RunFolder
    from sdlora.serving.learn_files import check_task_files

    if args.abandon or (not args.resume and (args.data is None or args.test is None)):
        return
    run = RunFolder.open(Path(args.run_dir), args.seed)
    if run.pending is None:
        check_task_files(*(Path(p) if p is not None else None for p in (args.data, args.test)))


def check_predict(args: argparse.Namespace) -> None:
    """--top-k, the input (`serving.predict_io.read_inputs`), the model (`serving.predict.load`), --out's suffix."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    source = Path(args.input)
    if not source.exists():
        raise FileNotFoundError(f"input {source} does not exist")
    key = "folder" if source.is_dir() else source.suffix.lower()
    if key != "folder" and key not in PREDICT_INPUTS:
        raise ValueError(f"input {source}: cannot read {key!r} files; give a text file (.txt, one input per line), "
                         "a table (.csv, .tsv, .jsonl with a text column) or a folder of images")
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"{model} does not exist")
    if not (model / EXPORT_MANIFEST).is_file():
        check_run_folder(model, args.seed)
    if args.out and Path(args.out).suffix.lower() not in PREDICT_OUTPUTS:
        raise ValueError(f"--out {args.out}: write .csv or .jsonl")


CHECKS: dict[str, Callable[[argparse.Namespace], None]] = {
    "train": check_config,
    "data": load_config_file,
    "eval": check_run,
    "export": check_run,
    "learn": check_learn,
    "predict": check_predict,
}


def check_args(args: argparse.Namespace) -> None:
    """Run the light checks of `args.command` (none for a command without any)."""
    check = CHECKS.get(args.command)
    if check is not None:
        check(args)
