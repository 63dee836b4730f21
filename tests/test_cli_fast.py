"""The command line answers before importing torch when it can, and says what it did (issue 24)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

import sdlora
from engine_helpers import TINY_VIT, tiny
from sdlora.catalog import builtin_catalog, imported_catalog, source_catalog
from sdlora.cli import HelpFormatter, build_parser, main
from sdlora.cli_checks import EXPORT_MANIFEST, PREDICT_INPUTS, PREDICT_OUTPUTS
from sdlora.provenance import git_commit

SRC = Path(sdlora.__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "transformers", "numpy")


def run_cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m sdlora ARGS` in a fresh interpreter on this source tree, stderr piped (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)  # as a user's shell has it, whatever this test process set
    return subprocess.run([sys.executable, "-m", "sdlora", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def heavy_modules_after(args: list[str], cwd: Path) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stderr) of `main(args)` in a fresh interpreter."""
    code = ("import contextlib, io, sys\nfrom sdlora.cli import main\nout = io.StringIO()\n"
            "try:\n    with contextlib.redirect_stdout(out):\n        rc = main(sys.argv[1:])\n"
            "except SystemExit as stop:\n    rc = stop.code\n"
            f"print(rc, *sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    words = done.stdout.split()
    assert words, done.stderr
    return int(words[0]), words[1:], done.stderr


def test_version_is_the_package_metadata(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"sdlora {metadata.version('sdlora')}\n"
    assert metadata.version("sdlora") == sdlora.__version__  # pyproject.toml and sdlora/__init__.py agree


@pytest.fixture
def bad_config(tmp_path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny(train={"lrr": 1})))
    return path


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--version"], 0, ""),
        (["list"], 0, ""),
        (["predict", "{tmp}", "{tmp}/missing.txt"], 1, "input {tmp}/missing.txt does not exist"),
        (["predict", "{tmp}/no-run", "{tmp}/bad.yaml"], 1, "cannot read '.yaml' files"),
        (["eval", "{tmp}/no-run"], 1, "{tmp}/no-run does not exist"),
        (["eval", "{tmp}"], 1, "{tmp} holds no run (no checkpoints/ and no seed-*/ folders)"),
        (["export", "{tmp}/no-run", "--out", "{tmp}/x.safetensors"], 1, "no-run does not exist"),
        (["learn", "{tmp}", "--data", "a.csv", "--test", "b.csv"], 1, "holds no run"),
        (["train", "{tmp}/bad.yaml", "--out", "{tmp}/run"], 2, "train: unknown key(s) 'lrr'"),
        (["train", "{tmp}/missing.yaml"], 2, "config file not found"),
        (["data", "check", "{tmp}/bad.yaml"], 2, "train: unknown key(s) 'lrr'"),
        (["report", "{tmp}/no-run"], 1, "no such run directory or file: {tmp}/no-run"),
    ],
)
def test_light_commands_and_wrong_arguments_import_no_torch(tmp_path, bad_config, args, code, message):
    args = [a.format(tmp=tmp_path) for a in args]
    rc, heavy, err = heavy_modules_after(args, tmp_path)
    assert (rc, heavy) == (code, [])
    assert message.format(tmp=tmp_path) in err
    assert not (tmp_path / "run").exists()


def test_import_sdlora_is_light_and_the_api_resolves_lazily(tmp_path):
    code = f"import sys, sdlora\nprint(*sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == []
    from sdlora.adapters import SDLoRAConfig
    from sdlora.model_api import SDLoRAModel, get_sdlora_model
    from sdlora.serving.predict import load

    assert (sdlora.load, sdlora.get_sdlora_model, sdlora.SDLoRAModel, sdlora.SDLoRAConfig) == \
        (load, get_sdlora_model, SDLoRAModel, SDLoRAConfig)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sdlora.nope  # noqa: B018


def test_unknown_plugins_fail_before_torch_with_the_registry_message(tmp_path):
    from sdlora.registry import METHODS

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny(method={"name": "sdlor"}, train={"loggers": ["csv", "tensorbord"]})))
    rc, heavy, err = heavy_modules_after(["train", str(cfg), "--out", str(tmp_path / "run")], tmp_path)
    assert (rc, heavy) == (2, [])
    with pytest.raises(KeyError) as real:
        METHODS.get("sdlor")
    assert err.strip() == f"sdlora: error: {real.value.args[0]}"
    assert "did you mean 'sdlora'?" in err
    cfg.write_text(yaml.safe_dump(tiny(train={"loggers": ["csv", "tensorbord"]})))
    rc, heavy, err = heavy_modules_after(["train", str(cfg), "--out", str(tmp_path / "run")], tmp_path)
    assert (rc, heavy) == (2, [])
    assert "train.loggers: unknown logger 'tensorbord' (did you mean 'tensorboard'?)" in err


PLUGIN_SECTIONS = {"METHODS": "method", "BACKBONES": "backbone", "BENCHMARKS": "benchmark"}

#: (config sections over `tiny()`, --set overrides): a bad option of a method, a backbone or a benchmark
BAD_OPTIONS = {
    "unknown method key": ({"method": {"name": "sdlora"}}, ["method.options.rankk=3"]),
    "method range": ({"method": {"name": "sdlora"}}, ["method.options.rank=-1"]),
    "method choice": ({"method": {"name": "sdlora"}}, ["method.options.current_mode=offical"]),
    "prompt method check": ({"method": {"name": "l2p"}}, ["method.options.top_n=20"]),
    "timm backbone type": ({}, ["backbone.options.pretrained=maybe"]),
    "hf backbone literal": ({"backbone": {"name": "hf_encoder", "options": {"pooling": "bogus"}}}, []),
    "hf backbone check": ({"backbone": {"name": "hf_encoder", "options": {}}}, ["backbone.options.max_length=1"]),
    "synthetic type": ({}, ["benchmark.options.shape=x"]),
    "clinc150 check": ({"benchmark": {"name": "clinc150", "options": {"max_per_class": 0}}}, []),
    "text files missing key": ({"benchmark": {"name": "text_files", "options": {"test_file": "t.csv"}}}, []),
    "image folder nested": ({"benchmark": {"name": "image_folder", "options": {"root": "x", "augment": "timm",
                                                                                "timm": {"scale": [1, 0.5]}}}}, []),
    # the timm model name is checked with timm after every section's options: the method's key is refused first
    "after a bad timm model": ({"backbone": {"options": {**TINY_VIT, "model": "vit_nope"}},
                                "method": {"name": "sdlora"}}, ["method.options.rankk=3"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_a_bad_plugin_option_is_refused_before_torch_as_the_run_refuses_it(tmp_path, case):
    from sdlora.config import load_config
    from sdlora.engine.build import validate_plugins
    from sdlora.typed import ConfigError

    sections, overrides = BAD_OPTIONS[case]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny(**sections)))
    with pytest.raises(ConfigError) as real:  # what `sdlora train` refuses once torch and the plugins are loaded
        validate_plugins(load_config(cfg, overrides))
    sets = [word for o in overrides for word in ("--set", o)]
    rc, heavy, err = heavy_modules_after(["train", str(cfg), *sets, "--out", str(tmp_path / "run")], tmp_path)
    assert (rc, heavy) == (2, [])
    assert err == f"sdlora: error: {real.value}\n"
    assert "options" in str(real.value) and not (tmp_path / "run").exists()


def test_every_plugin_s_options_are_the_run_s_class_from_a_torch_free_module():
    from sdlora import registry

    catalog = source_catalog()
    imported = imported_catalog()
    modules = set()
    for variable in PLUGIN_SECTIONS:
        plugins = getattr(registry, variable)
        for name in plugins.names():
            found = catalog.options(variable, name)
            assert found is plugins.get(name).Options, (variable, name)  # one definition, not a copy
            assert catalog.entries[variable][name].options == imported.entries[variable][name].options
            modules.add(found.__module__)
    assert modules == {"sdlora.methods.options", "sdlora.backbones.options", "sdlora.data.benchmarks.options"}
    code = f"import sys\nimport {', '.join(sorted(modules))}\nprint(*sorted(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == []


def test_the_catalog_finds_options_nested_defined_or_imported_relatively():
    from sdlora.catalog import Catalog, scan_module

    source = (
        "from .opts import Imported as Renamed\n"
        "class Here: ...\n"
        "@METHODS.register('nested')\nclass A:\n    class Options: ...\n"
        "@METHODS.register('imported')\nclass B:\n    Options = Renamed\n"
        "@METHODS.register('defined')\nclass C:\n    Options: type = Here\n"
        "@METHODS.register('none')\nclass D: ...\n"
    )
    catalog = Catalog()
    scan_module(ast.parse(source), "pkg.sub.mod", catalog)
    assert {n: e.options for n, e in catalog.entries["METHODS"].items()} == {
        "nested": ("pkg.sub.mod", "A.Options"), "imported": ("pkg.sub.opts", "Imported"),
        "defined": ("pkg.sub.mod", "Here"), "none": None}


def test_the_torch_free_tables_match_the_torch_code():
    import typing

    from sdlora.adapters import MODES, NORMS
    from sdlora.adapters.choices import MODE_DEFAULTS, NORM_NAMES
    from sdlora.data.benchmarks.options import TextFilesOptions
    from sdlora.data.benchmarks.text_files import READERS
    from sdlora.data.text_format import SUFFIX_FORMATS

    assert list(MODES) == list(MODE_DEFAULTS) and tuple(NORMS) == NORM_NAMES
    assert set(READERS) == set(SUFFIX_FORMATS.values())
    assert typing.get_args(typing.get_type_hints(TextFilesOptions)["format"]) == ("auto", *READERS)


def test_the_adapters_package_loads_its_names_on_use():
    import importlib

    import sdlora.adapters as adapters

    for name, module in adapters._HOMES.items():
        assert getattr(adapters, name) is getattr(importlib.import_module(f"sdlora.adapters.{module}"), name)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        adapters.nope  # noqa: B018


def learn_run(tmp_path: Path, pending: bool = False) -> Path:
    """A run folder as `RunFolder.open` reads it (no checkpoint: the learn stops before it needs one)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(tiny()))
    if pending:
        (run / "learned.json").write_text(json.dumps({"base": {}, "tasks": [
            {"task": 3, "train": str(tmp_path / "earlier.csv"), "status": "running"}]}))
    return run


@pytest.mark.parametrize(
    ("files", "error"),
    [
        (["--data", "missing.csv", "--test", "t.csv"], "missing.csv not found"),
        (["--data", "t.csv", "--test", "missing.jsonl"], "missing.jsonl not found"),
        (["--data", "notes.txt", "--test", "t.csv"],
         "notes.txt: cannot tell the format from the extension '.txt' (known: .csv, .tsv, .jsonl, .ndjson); give "
         "--data / --test a .csv, .tsv, .jsonl, .ndjson file, or a folder with one sub-folder of images per class"),
        (["--resume", "--data", "missing.csv"], "missing.csv not found"),
    ],
)
def test_learn_s_files_are_refused_before_torch_as_learn_refuses_them(tmp_path, monkeypatch, files, error):
    from sdlora.cli_checks import check_args
    from sdlora.serving.learn import learn

    run = learn_run(tmp_path)
    for name in ("t.csv", "notes.txt"):
        (tmp_path / name).write_text("text,label\nhello,greet\n")
    rc, heavy, err = heavy_modules_after(["learn", str(run), *files], tmp_path)
    assert (rc, heavy, err) == (1, [], f"sdlora: error: {error}\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Exception) as light:
        check_args(build_parser().parse_args(["learn", str(run), *files]))
    given = {k: Path(v) for k, v in zip(files, files[1:]) if k in ("--data", "--test")}
    with pytest.raises(Exception) as real:  # the command itself, torch and all
        learn(run, given.get("--data"), given.get("--test"))
    assert (type(light.value), str(light.value)) == (type(real.value), str(real.value)) == (type(real.value), error)
    assert isinstance(real.value, FileNotFoundError | ValueError) and not (run / "learned.json").exists()


def test_learn_s_argument_errors_come_before_torch(tmp_path):
    for args, error in ((["learn", str(tmp_path / "no-run")], "give the new task's files with --data and --test"),
                        (["learn", str(tmp_path / "no-run"), "--abandon", "--data", "x.csv"], "--abandon takes no")):
        rc, heavy, err = heavy_modules_after(args, tmp_path)
        assert (rc, heavy) == (1, []) and err.startswith(f"sdlora: error: {error}")


def test_learn_abandon_answers_without_torch(tmp_path):
    """`--abandon` only restores files: nothing to abandon is said, and a run is put back, with no model loaded."""
    run = learn_run(tmp_path)
    rc, heavy, err = heavy_modules_after(["learn", str(run), "--abandon"], tmp_path)
    assert (rc, heavy) == (1, []) and "no learn to abandon (nothing was started, or it completed)" in err
    from sdlora.serving.backup import take_backup

    (run / "results.json").write_text('{"before": true}')
    take_backup(run, run)
    (run / "results.json").write_text('{"learned": true}')
    rc, heavy, err = heavy_modules_after(["learn", str(run), "--abandon"], tmp_path)
    assert (rc, heavy, err) == (0, [], "") and json.loads((run / "results.json").read_text()) == {"before": True}


def test_an_interrupted_learn_is_left_to_the_command(tmp_path):
    from sdlora.cli_checks import check_args

    run = learn_run(tmp_path, pending=True)
    args = build_parser().parse_args(["learn", str(run), "--data", str(tmp_path / "missing.csv"), "--test", "x.csv"])
    check_args(args)  # the learn continues the interrupted task (or says it was interrupted): not the light check's
    fresh = learn_run(tmp_path / "fresh")
    args = build_parser().parse_args(["learn", str(fresh), "--data", str(tmp_path / "missing.csv"), "--test", "x.csv"])
    with pytest.raises(FileNotFoundError, match="missing.csv not found"):
        check_args(args)


def test_data_check_still_reports_an_unknown_benchmark_itself(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny(benchmark={"name": "nope"}, method={"name": "nope"})))
    assert main(["data", "check", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "benchmark 'nope'" in out and "unknown benchmark 'nope'" in out and "result: 1 problem(s)" in out


def test_the_light_listing_equals_the_registries(capsys, tmp_path):
    from sdlora.engine.loggers import LOGGERS
    from sdlora.export import EXPORT_FORMATS
    from sdlora.registry import BACKBONES, BENCHMARKS, METHODS

    catalog = source_catalog()
    assert catalog == builtin_catalog()  # what `sdlora list` and the early checks use
    registries = {"METHODS": METHODS, "BENCHMARKS": BENCHMARKS, "BACKBONES": BACKBONES, "LOGGERS": LOGGERS,
                  "EXPORT_FORMATS": EXPORT_FORMATS}
    imported = imported_catalog()
    assert set(catalog.kinds) == set(registries) == set(imported.kinds)
    for variable, registry in registries.items():
        assert catalog.kinds[variable] == imported.kinds[variable] == registry.kind
        assert catalog.describe(variable) == imported.describe(variable) == registry.describe()
        for name, entry in catalog.entries[variable].items():
            obj = registry.get(name)
            if isinstance(obj, type):
                assert obj.__module__ == entry.module
            with pytest.raises(KeyError) as real:
                registry.get(name + "x")
            with pytest.raises(KeyError) as light:
                catalog.check(variable, name + "x")
            assert str(light.value) == str(real.value) and type(light.value) is type(real.value)
    assert builtin_catalog.__wrapped__(tmp_path).kinds == imported.kinds  # no source shipped: the registries
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for registry in registries.values():
        for name, doc in registry.describe().items():
            assert f"  {name:<14} {doc}\n" in printed


def test_light_checks_share_the_constants_of_the_commands():
    from sdlora.export.common import MANIFEST
    from sdlora.serving.predict_io import READERS, WRITERS

    assert {*PREDICT_INPUTS, "folder"} == set(READERS)
    assert set(PREDICT_OUTPUTS) == set(WRITERS)
    assert EXPORT_MANIFEST == MANIFEST


def test_predict_refuses_a_bad_out_suffix_before_loading(tiny_text_run, tmp_path):
    texts = tmp_path / "in.txt"
    texts.write_text("set an alarm\n")
    rc, heavy, err = heavy_modules_after(["predict", str(tiny_text_run), str(texts), "--out", "p.txt"], tmp_path)
    assert (rc, heavy, err.strip()) == (1, [], "sdlora: error: --out p.txt: write .csv or .jsonl")


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(words, parser) of the parser and every subcommand below it."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from subcommands(child, (*path, name))


COMMAND_ARGS = {("train",): ["c.yaml"], ("eval",): ["r"], ("export",): ["r", "--out", "o"], ("predict",): ["m", "i"],
                ("learn",): ["r"], ("report",): ["r"], ("list",): [], ("data", "check"): ["c.yaml"]}


def test_every_option_and_positional_has_help_with_its_default():
    parser = build_parser()
    seen = set()
    for path, sub in subcommands(parser):
        seen.add(path)
        assert sub.formatter_class is HelpFormatter, path
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), path
                continue
            assert action.help, (path, action.dest)
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS):
                shown = formatter._expand_help(action)  # the help as `--help` prints it
                assert "default" in shown and str(action.default) in shown, (path, action.dest, shown)
    assert set(COMMAND_ARGS) <= seen


@pytest.mark.parametrize("command", sorted(COMMAND_ARGS))
def test_verbose_and_quiet_anywhere_on_the_line(command):
    parser = build_parser()
    words, rest = list(command), COMMAND_ARGS[command]
    plain = parser.parse_args([*words, *rest])
    assert (plain.verbose, plain.quiet) == (False, False)
    for line in ([*words, *rest, "-v", "--quiet"], ["-v", "--quiet", *words, *rest], ["--quiet", *words, *rest, "-v"],
                 [*words, "--verbose", *rest, "--quiet"]):
        args = parser.parse_args(line)
        assert (args.verbose, args.quiet) == (True, True), line
    assert parser.parse_args(["--quiet", *words, *rest]).verbose is False


def test_results_json_records_the_code_version_and_commit(tiny_vit_run):
    versions = json.loads((tiny_vit_run / "results.json").read_text())["versions"]
    assert versions["sdlora"] == sdlora.__version__
    git = shutil.which("git")
    checkout = (SRC.parent / ".git").exists() and git is not None
    expected = subprocess.run([git, "rev-parse", "HEAD"], cwd=SRC.parent, capture_output=True, text=True,
                              check=True).stdout.strip() if checkout else None
    assert versions["git_commit"] == expected


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_no_commit_outside_sdlora_s_own_checkout(tmp_path):
    assert git_commit.__wrapped__(tmp_path) is None  # not a git checkout
    package = tmp_path / "site-packages" / "sdlora"
    package.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    assert git_commit.__wrapped__(package) is None  # a checkout, but not the one of this sdlora
    assert git_commit.__wrapped__(tmp_path / "src" / "sdlora") is None


def test_no_progress_bars_or_library_warnings_when_not_interactive(tiny_text_run, tmp_path):
    hf = tmp_path / "hf"
    assert main(["export", str(tiny_text_run), "--out", str(hf), "--format", "hf"]) == 0
    texts = tmp_path / "in.txt"
    texts.write_text("set an alarm\npay the bill\n")
    done = run_cli(["predict", str(hf), str(texts)], tmp_path)  # from_pretrained: the "Loading weights" bar
    assert done.returncode == 0 and done.stderr == ""
    assert [json.loads(line)["input"] for line in done.stdout.splitlines()] == ["set an alarm", "pay the bill"]
    done = run_cli(["eval", str(tiny_text_run)], tmp_path)
    assert done.returncode == 0 and done.stderr == ""
    if importlib.util.find_spec("peft") is not None:  # get_peft_model: a transformers FutureWarning
        done = run_cli(["export", str(tiny_text_run), "--out", str(tmp_path / "peft"), "--format", "peft"], tmp_path)
        assert done.returncode == 0 and done.stderr == "", done.stderr
