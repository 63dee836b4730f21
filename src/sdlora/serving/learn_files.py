"""What `sdlora learn` checks of its --data / --test paths before it reads them, with no torch or numpy: the
command checks them first thing when a new task starts (`serving.learn`), and the command line runs the same
function before importing torch (`sdlora.cli_checks`), so a missing file or one it cannot read fails at once.
"""

from __future__ import annotations

from pathlib import Path

from sdlora.data.text_format import SUFFIX_FORMATS, file_format

#: what a user of `sdlora learn` can do about a file whose extension does not tell its format
FORMAT_FIX = (f"give --data / --test a {', '.join(SUFFIX_FORMATS)} file, or a folder with one sub-folder of images "
              "per class")


def check_task_path(path: Path) -> None:
    """A new task's file or folder exists, and a file's extension says how to read it (`read_task` reads a folder
    as images and a file as text rows)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if not path.is_dir():
        file_format(path, "auto", FORMAT_FIX)


def check_task_files(*paths: Path | None) -> None:
    """`check_task_path` of each path given (None: not given)."""
    for path in paths:
        if path is not None:
            check_task_path(path)
