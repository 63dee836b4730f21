"""Property-based fuzzing (Hypothesis): any input to the config loader, the `--set` parser and the CSV /
JSON-lines readers either loads or raises the project's error type with a message; nothing else escapes."""

import copy
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine_helpers import tiny
from sdlora.config import RunConfig, load_config, set_override
from sdlora.data.benchmarks.text_files import TextFileError, read_text_file
from sdlora.engine.build import validate_plugins
from sdlora.typed import ConfigError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEYS = ["benchmark", "backbone", "method", "train", "name", "options", "lr", "epochs", "rank", "seeds", "seed",
        "increment", "init_classes", "loss", "base", "loggers", "classifier", "kind", "first_task", "model"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["synthetic", "sdlora", "timm_vit", "current", "1e-3"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=12)


def check(error: Exception) -> None:
    assert isinstance(error, ConfigError) and str(error).strip(), repr(error)


@FUZZ
@given(st.text(max_size=200))
def test_any_yaml_text_loads_or_is_a_config_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cfg.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_config(path), RunConfig)
        except ConfigError as err:
            check(err)


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6), st.sampled_from(["benchmark", "method", "train"]))
def test_any_structure_validates_or_is_a_config_error(extra, section):
    data = tiny(method={"name": "sdlora"})
    data[section] = {**data[section], **extra} if isinstance(data[section], dict) else extra
    data.update({k: v for k, v in extra.items() if k not in ("base",)})
    try:
        validate_plugins(load_config(data=data))
    except ConfigError as err:
        check(err)


@FUZZ
@given(st.lists(st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["train.lr", "method.options.rank", "seed", "benchmark", "train.loggers", "a..b", "train.first_task.lr", ""]),
    st.text(max_size=20)), max_size=3))
def test_any_set_override_applies_or_is_a_config_error(assignments):
    data = copy.deepcopy(tiny())
    try:
        for assignment in assignments:
            set_override(data, assignment)
        validate_plugins(load_config(data=data))
    except ConfigError as err:
        check(err)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode()),
       st.sampled_from(["data.csv", "data.tsv", "data.jsonl"]))
def test_any_text_file_reads_or_is_a_text_file_error(content, name):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(content)
        try:
            texts, labels = read_text_file(path, "auto", "text", "label")
            assert len(texts) == len(labels) > 0 and all(isinstance(t, str) and t.strip() for t in texts)
        except TextFileError as err:
            assert str(path) in str(err), err


@FUZZ
@given(st.lists(st.fixed_dictionaries({}, optional={"text": values, "label": values, "x": values}), max_size=4))
def test_jsonl_rows_of_any_shape(rows):
    import json

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        try:
            texts, labels = read_text_file(path, "auto", "text", "label")
            assert len(texts) == len(labels) > 0
        except TextFileError as err:
            assert str(path) in str(err), err


def test_yaml_dump_of_a_valid_config_round_trips(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny()))
    assert load_config(path) == load_config(data=tiny())
