"""A copy of a seed folder taken before `sdlora learn` changes it, so a failed or unwanted learn can be abandoned
with the run restored byte for byte (checkpoints, results, reports, logs, learned.json and the run's summary.json).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdlora.engine.lock import output_lock
from sdlora.engine.run_folder import RunFolder

BACKUP = ".learn-backup"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copy2(src, dst)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def has_backup(folder: Path) -> bool:
    return (folder / BACKUP / MANIFEST).is_file()


def take_backup(folder: Path, out: Path) -> None:
    """Copy every entry of `folder` (and `out/summary.json`) into `folder/.learn-backup`; the manifest, written
    last, marks the copy complete (a half-written copy is replaced by the next one)."""
    target = folder / BACKUP
    _remove(target)
    target.mkdir()
    entries = sorted(p.name for p in folder.iterdir() if p.name != BACKUP)
    for name in entries:
        _copy(folder / name, target / name)
    summary = out / SUMMARY if out != folder else None
    if summary is not None and summary.is_file():
        shutil.copy2(summary, target / f"parent-{SUMMARY}")
    (target / MANIFEST).write_text(json.dumps({"entries": entries, "summary": summary is not None
                                               and summary.is_file()}))


def restore_backup(folder: Path, out: Path) -> None:
    """Put `folder` back as the backup holds it: entries made since are removed, copied ones replaced."""
    target = folder / BACKUP
    manifest = json.loads((target / MANIFEST).read_text())
    for path in folder.iterdir():
        if path.name != BACKUP:
            _remove(path)
    for name in manifest["entries"]:
        _copy(target / name, folder / name)
    if manifest["summary"]:
        shutil.copy2(target / f"parent-{SUMMARY}", out / SUMMARY)
    shutil.rmtree(target)


def drop_backup(folder: Path) -> None:
    _remove(folder / BACKUP)


def abandon(run_dir: Path | str, seed: int | None = None) -> dict[str, Any]:
    """Put the run back exactly as it was before the interrupted (or failed) learn; returns its results.json.
    Torch-free: `sdlora learn --abandon` answers without loading a model."""
    run = RunFolder.open(run_dir, seed)
    with output_lock(run.out):
        if not has_backup(run.folder):
            raise ValueError(f"{run.folder}: no learn to abandon (nothing was started, or it completed)")
        restore_backup(run.folder, run.out)
    return RunFolder.open(run_dir, seed).record
