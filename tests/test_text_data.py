"""CLINC150 on the shared file, the generic CSV / JSON-lines loader, and the atomic download helper."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sdlora.config import resolve_options
from sdlora.data.benchmarks import clinc150
from sdlora.data.benchmarks.clinc150 import Clinc150, DataFileError
from sdlora.data.benchmarks.text_files import TextFileError, TextFiles
from sdlora.data.download import DownloadError, download_file, sha256_file
from sdlora.data.scenario import Scenario, make_class_order
from sdlora.typed import ConfigError


def load_clinc(root: Path | None, **options) -> object:
    opts = resolve_options(Clinc150.Options, options, "benchmark.options")
    return Clinc150(opts, root).load()


@pytest.fixture(scope="module")
def clinc(data_root):
    return load_clinc(data_root)


@pytest.fixture(scope="module")
def domains(data_root) -> dict[str, list[str]]:
    return json.loads((data_root / "clinc150" / "domains.json").read_text())


@pytest.fixture
def clinc_copy(data_root, tmp_path) -> Path:
    """A private copy of the CLINC150 folder (to corrupt or remove files)."""
    shutil.copytree(data_root / "clinc150", tmp_path / "clinc150")
    return tmp_path


def test_clinc150_counts_labels_and_checksum(clinc):
    assert (len(clinc.train), len(clinc.val), len(clinc.test)) == (15000, 3000, 4500)
    assert clinc.num_classes == 150 and clinc.class_names == sorted(clinc.class_names)
    for targets, per_class in ((clinc.train_targets, 100), (clinc.val_targets, 20), (clinc.test_targets, 30)):
        assert np.bincount(targets, minlength=150).tolist() == [per_class] * 150
    text, label = clinc.train[0]
    assert text == "what expression would i use to say i love you if i were an italian"
    assert clinc.class_names[label] == "translate" and clinc.train_targets[0] == label
    assert clinc.info["sha256"] == clinc150.DATA_SHA256
    assert clinc.info["counts"] == {"train": 15000, "val": 3000, "test": 4500}


def test_clinc150_domain_order_groups_15_intents_per_domain(clinc, domains):
    order = clinc.class_orders["domain"]
    assert len(order) == 150 and sorted(order) == list(range(150))
    groups = [[clinc.class_names[c] for c in order[i:i + 15]] for i in range(0, 150, 15)]
    assert groups == list(domains.values())
    assert groups[0][:3] == ["freeze_account", "routing", "pin_change"]  # banking, in file order
    scenario = Scenario(clinc, "domain", init_classes=15, increment=15, seed=1993)
    assert scenario.num_tasks == 10
    assert set(scenario.class_names(15)) == set(domains["banking"])


def test_clinc150_seeded_permutation_is_reproducible_and_differs_between_seeds(clinc):
    named = clinc.class_orders
    first = make_class_order("permutation", clinc.num_classes, 1993, named)
    assert first == make_class_order("permutation", clinc.num_classes, 1993, named)
    assert first != make_class_order("permutation", clinc.num_classes, 1994, named)
    assert sorted(first) == list(range(150)) and first != list(range(150))
    assert make_class_order("domain", 150, 1993, named) == named["domain"]


def test_clinc150_max_per_class_keeps_the_first_queries(clinc, data_root):
    small = load_clinc(data_root, max_per_class=3)
    assert (len(small.train), len(small.val), len(small.test)) == (450, 450, 450)
    assert np.bincount(small.test_targets).tolist() == [3] * 150
    translate = small.class_names.index("translate")
    first_train = [clinc.train[i][0] for i in np.flatnonzero(clinc.train_targets == translate)[:3]]
    assert [small.train[i][0] for i in np.flatnonzero(small.train_targets == translate)] == first_train
    assert small.class_orders["domain"] == clinc.class_orders["domain"]


def test_clinc150_val_can_join_train(data_root):
    data = load_clinc(data_root, include_val_in_train=True, max_per_class=2)
    assert len(data.train) == 600 and data.val is None and data.info["counts"]["val"] == 0


def test_clinc150_checksum_mismatch_names_file_and_hashes(clinc_copy):
    path = clinc_copy / "clinc150" / "data_full.json"
    path.write_bytes(path.read_bytes() + b"\n")  # still valid JSON, other bytes
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(DataFileError) as err:
        load_clinc(clinc_copy)
    message = str(err.value)
    assert str(path) in message and clinc150.DATA_SHA256 in message and actual in message
    assert load_clinc(clinc_copy, verify_checksum=False, max_per_class=1).info["sha256"] == actual


def test_clinc150_wrong_counts_are_reported(clinc_copy):
    path = clinc_copy / "clinc150" / "data_full.json"
    raw = json.loads(path.read_text())
    raw["test"] = raw["test"][1:]
    path.write_text(json.dumps(raw))
    with pytest.raises(DataFileError, match="split 'test' has 4499 queries"):
        load_clinc(clinc_copy, verify_checksum=False)


def test_clinc150_missing_file_offline_says_where_to_put_it(tmp_path, monkeypatch):
    def offline(url, dest, sha256=None, timeout=60.0):
        raise DownloadError(f"could not download {url}: <urlopen error [Errno -3] name resolution>")

    monkeypatch.setattr(clinc150, "download_file", offline)
    with pytest.raises(FileNotFoundError) as err:
        load_clinc(tmp_path)
    message = str(err.value)
    assert str(tmp_path / "clinc150" / "data_full.json") in message
    assert "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_full.json" in message
    with pytest.raises(FileNotFoundError, match="downloading is off"):
        load_clinc(tmp_path, download=False)


def test_clinc150_downloads_missing_files_into_the_data_root(tmp_path, data_root, monkeypatch):
    fetched = []

    def fake_download(url, dest, sha256=None, timeout=60.0):
        fetched.append((url.rsplit("/", 1)[1], sha256))
        return download_file((data_root / "clinc150" / Path(dest).name).as_uri(), dest, sha256)

    monkeypatch.setattr(clinc150, "download_file", fake_download)
    data = load_clinc(tmp_path, max_per_class=1)
    assert fetched == [("data_full.json", clinc150.DATA_SHA256), ("domains.json", None)]
    assert sorted(p.name for p in (tmp_path / "clinc150").iterdir()) == ["data_full.json", "domains.json"]
    assert data.num_classes == 150


def test_clinc150_without_data_root_names_the_settings():
    with pytest.raises(FileNotFoundError, match="benchmark.data_root.*SDLORA_DATA"):
        load_clinc(None)


def test_download_file_is_atomic_and_verifies_sha256(tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("hello\n")
    good = hashlib.sha256(b"hello\n").hexdigest()
    dest = tmp_path / "root" / "sub" / "copy.txt"
    assert download_file(source.as_uri(), dest, sha256=good) == dest
    assert dest.read_text() == "hello\n" and sha256_file(dest) == good
    other = tmp_path / "other.txt"
    with pytest.raises(DownloadError, match="expected 0{64}"):
        download_file(source.as_uri(), other, sha256="0" * 64)
    with pytest.raises(DownloadError, match="could not download"):
        download_file((tmp_path / "absent.txt").as_uri(), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root", "source.txt"]  # no partial files


# -- generic text files ---------------------------------------------------------------------------------

def load_files(root: Path | None, **options) -> object:
    opts = resolve_options(TextFiles.Options, options, "benchmark.options")
    return TextFiles(opts, root).load()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_csv_with_string_labels(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"hi, there",greet\nbye now,leave\nhello,greet\n')
    (tmp_path / "test.csv").write_text("label,text\nleave,see you\n")
    (tmp_path / "val.csv").write_text("text,label\nhey,greet\n")
    data = load_files(tmp_path, train_file="train.csv", test_file="test.csv", val_file="val.csv")
    assert data.class_names == ["greet", "leave"]
    assert [data.train[i] for i in range(3)] == [("hi, there", 0), ("bye now", 1), ("hello", 0)]
    assert data.test[0] == ("see you", 1) and data.test_targets.tolist() == [1]
    assert data.val_targets.tolist() == [0]
    assert data.info["counts"] == {"train": 3, "test": 1, "val": 1}


def test_jsonl_with_integer_labels_and_custom_columns(tmp_path):
    rows = [{"q": "a", "y": 10}, {"q": "b", "y": 2}, {"q": "c", "y": "2"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", [{"q": "d", "y": 10}])
    data = load_files(None, train_file=str(tmp_path / "train.jsonl"), test_file=str(tmp_path / "test.jsonl"),
                      text_column="q", label_column="y")
    assert data.class_names == ["2", "10"]  # numeric order; 2 and "2" are one class
    assert data.train_targets.tolist() == [1, 0, 0] and data.test_targets.tolist() == [1]
    assert data.val is None


def test_a_row_whose_field_count_differs_from_the_header_is_an_error(tmp_path):
    (tmp_path / "extra.csv").write_text("text,label\nhello,greet\nhi there, friend,greet\n")  # unquoted comma
    (tmp_path / "short.csv").write_text("text,label\nhello,greet\njust text\n")
    (tmp_path / "open.csv").write_text('text,label\nhello,greet\n"never closed,greet\nbye,leave\n')
    for name, fields, line in (("extra", 3, 3), ("short", 1, 3), ("open", 1, 4)):
        with pytest.raises(TextFileError, match=rf"{name}.csv line {line}: {fields} fields?, the header has 2 "
                                                 r"\(a field that holds the delimiter .* double quotes"):
            load_files(tmp_path, train_file=f"{name}.csv", test_file=f"{name}.csv")


def test_tsv_is_read_literally_one_row_a_line(tmp_path):
    (tmp_path / "train.tsv").write_text('text\tlabel\n"hi there\tgreet\nbye now\tleave\nsay "yo" ok\tgreet\n'
                                        '"a ""b"""\t"leave"\n')  # the last row as pandas' to_csv(sep="\t") writes it
    data = load_files(tmp_path, train_file="train.tsv", test_file="train.tsv")
    assert [data.train[i] for i in range(4)] == [('"hi there', 0), ("bye now", 1), ('say "yo" ok', 0), ('a "b"', 1)]
    (tmp_path / "tab.tsv").write_text("text\tlabel\nhi\tthere\tgreet\n")
    with pytest.raises(TextFileError, match=r"tab.tsv line 2: 3 fields, the header has 2 \(a TSV field cannot hold"):
        load_files(tmp_path, train_file="tab.tsv", test_file="tab.tsv")


def test_integer_labels_of_equal_value_sort_the_same_in_every_process():
    from sdlora.data.benchmarks.text_files import sorted_labels

    # "1" and "01" are distinct classes of equal value: ordered by their text, not by the set's hash order
    assert sorted_labels(["2", "01", "1", "02", "10", "001"]) == ["001", "01", "1", "02", "2", "10"]


def test_format_option_overrides_the_extension(tmp_path):
    write_jsonl(tmp_path / "train.txt", [{"text": "x", "label": "a"}])
    with pytest.raises(TextFileError, match="set benchmark.options.format"):
        load_files(tmp_path, train_file="train.txt", test_file="train.txt")
    data = load_files(tmp_path, train_file="train.txt", test_file="train.txt", format="jsonl")
    assert data.class_names == ["a"]


def test_missing_column_lists_the_columns_found(tmp_path):
    (tmp_path / "train.csv").write_text("sentence,intent\nhi,greet\n")
    with pytest.raises(TextFileError) as err:
        load_files(tmp_path, train_file="train.csv", test_file="train.csv")
    message = str(err.value)
    assert str(tmp_path / "train.csv") in message and "'text' or 'label'" in message
    assert "['sentence', 'intent']" in message


def test_empty_files_and_empty_texts_are_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("text,label\n")
    write_jsonl(tmp_path / "blank.jsonl", [{"text": "ok", "label": 1}, {"text": "  ", "label": 2}])
    for name in ("empty.csv", "header.csv"):
        with pytest.raises(TextFileError, match=f"{name}: empty file"):
            load_files(tmp_path, train_file=name, test_file=name)
    with pytest.raises(TextFileError, match="blank.jsonl line 2: empty text"):
        load_files(tmp_path, train_file="blank.jsonl", test_file="blank.jsonl")
    write_jsonl(tmp_path / "number.jsonl", [{"text": "ok", "label": 1}, {"text": 42, "label": 2}])
    with pytest.raises(TextFileError, match="number.jsonl line 2: the text in column 'text' must be a string, got 42"):
        load_files(tmp_path, train_file="number.jsonl", test_file="number.jsonl")


def test_unseen_test_labels_and_missing_files_are_errors(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhi,greet\n")
    (tmp_path / "test.csv").write_text("text,label\nbye,leave\n")
    with pytest.raises(TextFileError, match=r"test.csv: 1 label\(s\) do not occur.*\['leave'\]"):
        load_files(tmp_path, train_file="train.csv", test_file="test.csv")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.csv")):
        load_files(tmp_path, train_file="train.csv", test_file="absent.csv")
    with pytest.raises(FileNotFoundError, match="benchmark.data_root.*SDLORA_DATA"):
        load_files(None, train_file="train.csv", test_file="test.csv")
    with pytest.raises(ConfigError, match="benchmark.options.train_file: required"):
        resolve_options(TextFiles.Options, {"test_file": "test.csv"}, "benchmark.options")


def test_the_text_files_config_of_docs_text_md_learns(tmp_path):
    """The docs' text_files block, as a user copies it (real MiniLM, the shipped classifier settings)."""
    import io
    import re

    import yaml

    from export_helpers import write_text_files
    from sdlora.config import load_config
    from sdlora.engine.runner import run_config

    doc = (Path(__file__).resolve().parents[1] / "docs" / "text.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S) if "name: text_files" in b)
    data = yaml.safe_load(block)
    assert data["method"]["classifier"]["kind"] == "lda"  # what configs/clinc150.yaml ships
    write_text_files(tmp_path / "data")
    data["benchmark"].update({"data_root": str(tmp_path / "data"), "init_classes": 2, "increment": 2})
    data["seeds"] = [0]
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    result = json.loads((tmp_path / "run" / "seed-0" / "results.json").read_text())
    assert result["task_sizes"] == [2, 2] and result["metrics"]["final_accuracy"] >= 90.0


def test_text_file_errors_point_at_the_line_and_the_fix_that_works_where_the_user_stands(tmp_path, capsys):
    from sdlora.cli import main
    from sdlora.data.benchmarks.text_files import TextFileError, read_text_file

    header = tmp_path / "h.csv"
    header.write_text("sentence,intent\nhello,greet\n")
    with pytest.raises(TextFileError, match=r"h.csv the header \(line 1\): no column 'text' or 'label'; columns "
                                            r"found: \['sentence', 'intent'\] \(set benchmark.options.text_column"):
        read_text_file(header, "auto", "text", "label")
    latin = tmp_path / "l.csv"
    latin.write_bytes("text,label\nhello,greet\ncaf\u00e9 au lait,order\n".encode("latin-1"))
    with pytest.raises(TextFileError, match=r"l.csv line 3: not UTF-8 text .*save the file as UTF-8"):
        read_text_file(latin, "auto", "text", "label")
    # `sdlora learn` names its own options, not config keys it does not take
    from export_helpers import text_run_config, train

    run = train(text_run_config(tmp_path / "setup"), tmp_path / "setup" / "run")
    assert main(["learn", str(run), "--data", str(header), "--test", str(header)]) == 1
    assert "choose them with --text-column / --label-column" in capsys.readouterr().err
    assert main(["learn", str(run), "--data", str(header), "--test", str(header), "--text-column", "sentence",
                 "--label-column", "intent", "--set", "method.classifier.loss=seen", "--quiet"]) == 0


def test_data_check_compares_clinc150_with_its_published_sizes(data_root, capsys):
    from sdlora.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs" / "clinc150.yaml")
    assert main(["data", "check", config, "--set", f"benchmark.data_root={data_root}"]) == 0
    out = capsys.readouterr().out
    assert "ok: 150 classes (expected 150)" in out and "ok: 19,500 samples in train + test" in out
    assert "no published sizes" not in out
    assert main(["data", "check", config, "--set", f"benchmark.data_root={data_root}", "--set",
                 "benchmark.options.max_per_class=10"]) == 0
    assert "split (train 1,500 / test 1,500) matches" in capsys.readouterr().out
    for setting, message in (("benchmark.init_classes=151", "init_classes=151 exceeds the 150 classes"),
                             ("benchmark.num_tasks=11", "num_tasks=11, but 150 classes"),
                             ("benchmark.class_order=[0, 1, 1]", "class_order: the list must be a permutation")):
        assert main(["data", "check", config, "--set", f"benchmark.data_root={data_root}", "--set", setting]) == 1
        assert f"ERROR: benchmark: {message}" in capsys.readouterr().out  # what train would stop on
