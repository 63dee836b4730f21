"""Any text classification data as CSV / TSV / JSON-lines files with a text column and a label column.

Class names are the sorted unique labels of the train file (numerically when every label is an integer);
a label is the index of its name. Test / val labels absent from the train file are an error.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sdlora.data.base import DATA_ENV, BenchmarkData, ListDataset
from sdlora.data.benchmarks.options import TextFilesOptions
from sdlora.data.download import sha256_file
from sdlora.data.text_format import TextFileError, file_format
from sdlora.registry import BENCHMARKS

Row = tuple[int, dict[str, Any]]  # (line number, column -> value)


def unquote(field: str | None) -> str | None:
    """A TSV field written with CSV quoting (pandas' `to_csv(sep="\\t")`) without its quotes: a field in double quotes
    whose inner quotes are doubled loses the outer pair and the doubling; other fields stay as they are."""
    inner = field[1:-1] if field is not None and len(field) >= 2 and field[0] == field[-1] == '"' else None
    if inner is not None and '"' not in inner.replace('""', ""):
        return inner.replace('""', '"')
    return field


def read_delimited(path: Path, delimiter: str, quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL) -> Iterator[Row]:
    """Rows of a CSV (quoted fields may hold the delimiter and line breaks) or a TSV (read literally: one line a row,
    a quote is a character, as the TSV format has it; a whole field in quotes is unquoted). A row with more fields
    than the header is an error: the extra field would shift the label silently."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter, quoting=quoting)
        literal = quoting == csv.QUOTE_NONE
        try:
            if literal and reader.fieldnames:
                reader.fieldnames = [unquote(name) or "" for name in reader.fieldnames]
            for row in reader:
                header = len(reader.fieldnames or ())
                fields = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or ())
                if fields != header:
                    hint = ("a TSV field cannot hold a tab or a line break" if literal else
                            "a field that holds the delimiter or a line break goes in double quotes, and a quote "
                            "opened must be closed")
                    raise TextFileError(f"{path} line {reader.line_num}: {fields} field{'s' * (fields != 1)}, the "
                                        f"header has {header} ({hint})")
                yield reader.line_num, {k: unquote(v) for k, v in row.items()} if literal else row
        except csv.Error as err:
            raise TextFileError(f"{path} line {reader.line_num}: unreadable {path.suffix.lstrip('.').upper() or 'CSV'} "
                                f"({err})") from None


def read_jsonl(path: Path) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TextFileError(f"{path} line {number}: not valid JSON ({err})") from err
            if not isinstance(row, dict):
                raise TextFileError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            yield number, row


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "csv": partial(read_delimited, delimiter=","),
    "tsv": partial(read_delimited, delimiter="\t", quoting=csv.QUOTE_NONE),
    "jsonl": read_jsonl,
}


def label_text(value: Any, path: Path, line: int) -> str:
    """A label as a string: JSON ints and strings are accepted ("3" and 3 are the same class)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise TextFileError(f"{path} line {line}: the label must be a non-empty string or an integer, "
                        f"got {value!r}")


#: how a user names the columns: the config keys (benchmark), or `sdlora learn`'s options
COLUMN_FIX = "set benchmark.options.text_column / label_column"


def read_text_file(path: Path, fmt: str, text_column: str, label_column: str,
                   column_fix: str = COLUMN_FIX) -> tuple[list[str], list[str]]:
    """(texts, labels as strings) of one file; errors name the file, the line and the columns found, and a missing
    column says how to choose others (`column_fix`)."""
    if not path.is_file():
        raise FileNotFoundError(f"text_files: {path} not found")
    texts: list[str] = []
    labels: list[str] = []
    try:
        _read_rows(READERS[file_format(path, fmt)](path), path, text_column, label_column, texts, labels, column_fix)
    except UnicodeDecodeError as err:
        line = path.read_bytes().count(b"\n", 0, err.start) + 1
        raise TextFileError(f"{path} line {line}: not UTF-8 text ({err.reason}); save the file as UTF-8") from None
    except RecursionError:
        raise TextFileError(f"{path} line {len(texts) + 1}: JSON nested too deeply") from None
    if not texts:
        raise TextFileError(f"{path}: empty file (no data rows)")
    return texts, labels


def _read_rows(rows: Iterator[Row], path: Path, text_column: str, label_column: str, texts: list[str],
               labels: list[str], column_fix: str) -> None:
    for line, row in rows:
        missing = [c for c in (text_column, label_column) if c not in row]
        if missing:
            found = [c for c in row if c is not None]
            where = "the header (line 1)" if path.suffix.lower() in (".csv", ".tsv") else f"line {line}"
            raise TextFileError(
                f"{path} {where}: no column {' or '.join(map(repr, missing))}; columns found: {found} ({column_fix})"
            )
        text = row[text_column]
        if text is not None and not isinstance(text, str):  # JSON: a number or a list where a text belongs
            raise TextFileError(f"{path} line {line}: the text in column {text_column!r} must be a string, got "
                                f"{text!r}")
        if not isinstance(text, str) or not text.strip():
            raise TextFileError(f"{path} line {line}: empty text in column {text_column!r}")
        texts.append(text)
        labels.append(label_text(row[label_column], path, line))


def sorted_labels(labels: list[str]) -> list[str]:
    """Unique labels, sorted numerically when all are integers (2 before 10; equal numbers by their text), else as
    strings."""
    unique = set(labels)
    if all(re.fullmatch(r"-?\d+", label) for label in unique):
        return sorted(unique, key=lambda label: (int(label), label))  # "1" before "01": the same in every process
    return sorted(unique)


def resolve_file(name: str, data_root: Path | None) -> Path:
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    if data_root is None:
        raise FileNotFoundError(
            f"text_files: {name!r} is a relative path but there is no data root; set benchmark.data_root in "
            f"the config or the {DATA_ENV} environment variable, or give an absolute path"
        )
    return Path(data_root).expanduser() / path


@BENCHMARKS.register("text_files")
class TextFiles:
    """Your own text data: CSV / TSV / JSON-lines files of (text, label) rows; train, test, optional val."""

    Options = TextFilesOptions

    def __init__(self, options: TextFilesOptions, data_root: Path | None) -> None:
        self.options = options
        names = {"train": options.train_file, "test": options.test_file, "val": options.val_file}
        self.files = {split: resolve_file(name, data_root)
                      for split, name in names.items() if name is not None}

    def load(self) -> BenchmarkData:
        opts = self.options
        rows = {split: read_text_file(path, opts.format, opts.text_column, opts.label_column)
                for split, path in self.files.items()}
        class_names = sorted_labels(rows["train"][1])
        index = {name: i for i, name in enumerate(class_names)}
        splits: dict[str, ListDataset] = {}
        for split, (texts, labels) in rows.items():
            unseen = sorted(set(labels) - set(index))
            if unseen:
                raise TextFileError(
                    f"{self.files[split]}: {len(unseen)} label(s) do not occur in the train file "
                    f"{self.files['train']}: {unseen[:10]}"
                )
            splits[split] = ListDataset(texts, np.asarray([index[label] for label in labels], dtype=np.int64))
        val = splits.get("val")
        return BenchmarkData(
            train=splits["train"], train_targets=splits["train"].labels,
            test=splits["test"], test_targets=splits["test"].labels,
            val=val, val_targets=None if val is None else val.labels,
            class_names=class_names,
            info={
                "name": "text_files",
                "files": {split: str(path) for split, path in self.files.items()},
                "sha256": {split: sha256_file(path) for split, path in self.files.items()},
                "counts": {split: len(ds) for split, ds in splits.items()},
                "num_classes": len(class_names),
            },
        )
