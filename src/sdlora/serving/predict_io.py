"""Inputs and outputs of `sdlora predict`: readers by input kind, writers by output suffix (registries)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from sdlora.serving.predict import TopK


def read_lines(path: Path, column: str) -> list[str]:
    """A text file: one input per non-empty line."""
    return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]


def read_table(path: Path, column: str) -> list[str]:
    """CSV / TSV / JSON lines: the `column` of every row."""
    from sdlora.data.benchmarks.text_files import READERS, SUFFIX_FORMATS

    texts = []
    for line, row in READERS[SUFFIX_FORMATS[path.suffix.lower()]](path):
        if column not in row:
            raise ValueError(f"{path} line {line}: no column {column!r} (columns: {', '.join(map(str, row))}); "
                             "choose one with --text-column")
        texts.append(str(row[column]))
    return texts


def read_image_folder(path: Path, column: str) -> list[str]:
    """A folder: every image file below it (sorted paths)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)


#: input kind -> (reader, what it holds)
READERS: dict[str, tuple[Callable[[Path, str], list[str]], str]] = {
    ".txt": (read_lines, "text"),
    ".csv": (read_table, "text"),
    ".tsv": (read_table, "text"),
    ".jsonl": (read_table, "text"),
    ".ndjson": (read_table, "text"),
    "folder": (read_image_folder, "images"),
}


def read_inputs(path: Path, column: str = "text") -> tuple[list[str], str]:
    """(inputs, "text" | "images") from a text / table file or an image folder."""
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    key = "folder" if path.is_dir() else path.suffix.lower()
    if key not in READERS:
        raise ValueError(f"input {path}: cannot read {key!r} files; give a text file (.txt, one input per line), "
                         "a table (.csv, .tsv, .jsonl with a text column) or a folder of images")
    reader, kind = READERS[key]
    items = reader(path, column)
    if not items:
        raise ValueError(f"input {path} holds no {kind}")
    return items, kind


def rows(inputs: list[str], predictions: list[TopK]) -> Iterator[dict[str, Any]]:
    """One record per input, in input order; an input skipped as unreadable gets label and score None."""
    for item, top in zip(inputs, predictions, strict=True):
        if not top:
            yield {"input": item, "label": None, "score": None, "top_k": [], "error": "unreadable"}
            continue
        yield {"input": item, "label": top[0][0], "score": round(top[0][1], 6),
               "top_k": [{"label": label, "score": round(score, 6)} for label, score in top]}


def write_jsonl(records: list[dict[str, Any]], stream: TextIO) -> None:
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")


def write_csv(records: list[dict[str, Any]], stream: TextIO) -> None:
    k = max((len(r["top_k"]) for r in records), default=1)
    writer = csv.writer(stream)
    writer.writerow(["input", "label", "score", *[f"{w}_{i}" for i in range(2, k + 1) for w in ("label", "score")]])
    for r in records:
        extra = [v for t in r["top_k"][1:] for v in (t["label"], t["score"])]
        writer.writerow([r["input"], r["label"], r["score"], *extra])


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
