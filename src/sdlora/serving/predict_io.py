"""Inputs and outputs of `sdlora predict`: readers by input kind, writers by output suffix (registries)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from sdlora.export.classifier import TopK

#: an input with the other columns of its row (ids...), kept in the output
Columns = dict[str, Any]


def _empty(path: Path, line: int) -> ValueError:
    return ValueError(f"{path} line {line} is empty: every line (row) is one input, and its prediction is the output "
                      "row of the same number; remove the empty line or give it a text")


def read_lines(path: Path, column: str) -> list[tuple[str, Columns]]:
    """A text file: one input per line, lines ended by \\n or \\r\\n only (not by the other characters
    `str.splitlines` breaks at, such as U+2028 or a form feed, which would shift every later prediction off its line);
    trailing empty lines ignored; an empty line in between is an error."""
    text = path.read_text(encoding="utf-8-sig")
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line:
            raise _empty(path, number)
    return [(line, {}) for line in lines]


def read_table(path: Path, column: str) -> list[tuple[str, Columns]]:
    """CSV / TSV / JSON lines: the `column` of every row, with the row's other columns."""
    from sdlora.data.benchmarks.text_files import READERS
    from sdlora.data.text_format import SUFFIX_FORMATS

    out = []
    for line, row in READERS[SUFFIX_FORMATS[path.suffix.lower()]](path):
        if column not in row:
            raise ValueError(f"{path} line {line}: no column {column!r} (columns: {', '.join(map(str, row))}); "
                             "choose one with --text-column")
        text = "" if row[column] is None else str(row[column]).strip()
        if not text:
            raise _empty(path, line)
        out.append((text, {k: v for k, v in row.items() if k != column}))
    return out


def read_image_folder(path: Path, column: str) -> list[tuple[str, Columns]]:
    """A folder: every visible image file below it (sorted paths; hidden files and folders skipped, as in
    training)."""
    from sdlora.data.image_folder import image_files

    return [(str(p), {}) for p in image_files(path)]


#: input kind -> (reader, what it holds)
READERS: dict[str, tuple[Callable[[Path, str], list[tuple[str, Columns]]], str]] = {
    ".txt": (read_lines, "text"),
    ".csv": (read_table, "text"),
    ".tsv": (read_table, "text"),
    ".jsonl": (read_table, "text"),
    ".ndjson": (read_table, "text"),
    "folder": (read_image_folder, "images"),
}


def read_inputs(path: Path, column: str = "text") -> tuple[list[str], str, list[Columns]]:
    """(inputs, "text" | "images", the other columns of each input's row) from a text / table file or an image
    folder."""
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    key = "folder" if path.is_dir() else path.suffix.lower()
    if key not in READERS:
        raise ValueError(f"input {path}: cannot read {key!r} files; give a text file (.txt, one input per line), "
                         "a table (.csv, .tsv, .jsonl with a text column) or a folder of images")
    reader, kind = READERS[key]
    read = reader(path, column)
    if not read:
        raise ValueError(f"input {path} holds no {kind}")
    return [item for item, _ in read], kind, [columns for _, columns in read]


#: the prediction's own fields; an input column of the same name is written as `input_<name>`
OUTPUT_FIELDS = ("input", "label", "score", "top_k", "error")


def rows(inputs: list[str], predictions: list[TopK], columns: list[Columns] | None = None) -> Iterator[dict[str, Any]]:
    """One record per input, in input order: the input row's other columns first, then the prediction; an input
    skipped as unreadable gets label and score None."""
    for i, (item, top) in enumerate(zip(inputs, predictions, strict=True)):
        kept = {(f"input_{k}" if k in OUTPUT_FIELDS else k): v for k, v in (columns[i] if columns else {}).items()}
        if not top:
            yield {**kept, "input": item, "label": None, "score": None, "top_k": [], "error": "unreadable"}
            continue
        yield {**kept, "input": item, "label": top[0][0], "score": round(top[0][1], 6),
               "top_k": [{"label": label, "score": round(score, 6)} for label, score in top]}


#: characters that `str.splitlines` and some JSON-lines readers take for a line end inside a JSON string
LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def write_jsonl(records: list[dict[str, Any]], stream: TextIO) -> None:
    """One JSON object a line; the Unicode line separators escaped, so a record never spans two lines."""
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False).translate(LINE_BREAKS) + "\n")


def write_csv(records: list[dict[str, Any]], stream: TextIO) -> None:
    """The input row's other columns, input, label, score, then label_2, score_2, ... for the other top-k."""
    k = max((len(r["top_k"]) for r in records), default=1)
    kept = list(dict.fromkeys(key for r in records for key in r if key not in OUTPUT_FIELDS))
    writer = csv.writer(stream)
    writer.writerow([*kept, "input", "label", "score",
                     *[f"{w}_{i}" for i in range(2, k + 1) for w in ("label", "score")]])
    for r in records:
        extra = [v for t in r["top_k"][1:] for v in (t["label"], t["score"])]
        writer.writerow([*(r.get(key, "") for key in kept), r["input"], r["label"], r["score"], *extra])


WRITERS: dict[str, Callable[[list[dict[str, Any]], TextIO], None]] = {".jsonl": write_jsonl, ".csv": write_csv}


def write_predictions(records: list[dict[str, Any]], out: Path | None) -> None:
    """JSON lines on stdout without `out`; else CSV or JSON lines by the suffix of `out`."""
    if out is None:
        write_jsonl(records, sys.stdout)
        return
    if out.suffix.lower() not in WRITERS:
        raise ValueError(f"--out {out}: write .csv or .jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as f:
        WRITERS[out.suffix.lower()](records, f)
