"""Which reader a text data file needs, told from its extension, with no numpy or torch: `sdlora learn` checks
its --data / --test files with it before importing them (`sdlora.serving.learn_files`).

The readers themselves are `sdlora.data.benchmarks.text_files.READERS` (a test keeps their names equal to the
formats here and to `TextFilesOptions.format`).
"""

from __future__ import annotations

from pathlib import Path


class TextFileError(ValueError):
    """A text data file is missing a column, empty, or has an unusable row; the message names the file."""


#: file extension -> format (the `READERS` of `sdlora.data.benchmarks.text_files`)
SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
#: how a user of the `text_files` benchmark chooses the format of a file whose extension does not tell it
FORMAT_FIX = f"set benchmark.options.format to one of {', '.join(dict.fromkeys(SUFFIX_FORMATS.values()))}"


def file_format(path: Path, configured: str, fix: str = FORMAT_FIX) -> str:
    """`configured`, or for "auto" the format of `path`'s extension; an unknown extension is a TextFileError that
    ends with `fix` (what the user can do about it where they stand)."""
    if configured != "auto":
        return configured
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise TextFileError(f"{path}: cannot tell the format from the extension {path.suffix!r} (known: "
                            f"{', '.join(SUFFIX_FORMATS)}); {fix}") from None
