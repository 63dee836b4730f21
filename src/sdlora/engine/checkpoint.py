"""Checkpoints: tensors in safetensors, everything else in JSON; nothing is loaded through pickle.

Writing is atomic: the tensor file gets a fresh name, then `latest.json` (which names it and records its
sha256) is replaced with os.replace; the checkpoint before it stays on disk, named by `previous.json`.
Loading verifies the checksum: a truncated or altered file is reported and the previous checkpoint is used
(with a warning); when neither verifies, loading stops with an error. Never a silent load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("sdlora")

POINTER = "latest.json"
PREVIOUS = "previous.json"


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or none on disk passes its integrity check."""


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary name, flush to disk, then rename over `path`: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, tuple | set):
        return list(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_pointer(folder: Path, name: str) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / name).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and isinstance(meta.get("tensors"), str) else None


def _verified(folder: Path, meta: dict[str, Any] | None) -> str | None:
    """None when the checkpoint that `meta` names is intact, else what is wrong with it."""
    if meta is None:
        return "its pointer file is missing or unreadable"
    name = meta["tensors"]
    path = folder / name
    if Path(name).name != name or not path.is_file():
        return f"{name} is missing"
    if "sha256" not in meta:  # written before checksums were recorded
        log.warning("checkpoint %s has no recorded checksum (an older sdlora wrote it); loading it unverified", path)
        return None
    if meta.get("bytes") is not None and path.stat().st_size != meta["bytes"]:
        return f"{name} is {path.stat().st_size} bytes, {meta['bytes']} were written (truncated?)"
    if file_sha256(path) != meta["sha256"]:
        return f"{name} does not match its recorded sha256 (altered or corrupted)"
    return None


def save_checkpoint(folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    """Write a new checkpoint; the last intact one becomes `previous.json`. A write error (full disk...)
    leaves the existing checkpoints as they were and raises CheckpointError."""
    counter = int(meta.get("counter", 0))
    name = f"tensors-{counter:06d}.safetensors"
    tmp = folder / f".{name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        _fsync(tmp)
        record = {**meta, "tensors": name, "sha256": file_sha256(tmp), "bytes": tmp.stat().st_size}
        current = _read_pointer(folder, POINTER)
        if current is not None and current["tensors"] != name and _verified(folder, current) is None:
            write_json_atomic(folder / PREVIOUS, current)
        os.replace(tmp, folder / name)
        write_json_atomic(folder / POINTER, record)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write a checkpoint into {folder} ({err}); the previous checkpoint is "
                              "left as it was: free space or fix the folder, then continue with --resume") from err
    keep = {name, *(p["tensors"] for p in [_read_pointer(folder, PREVIOUS)] if p is not None)}
    for old in [*folder.glob("tensors-*.safetensors"), *folder.glob(".tensors-*.tmp")]:
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return folder / name


def latest_meta(folder: Path) -> dict[str, Any] | None:
    """The newest checkpoint's metadata (position, counter...) without reading its tensors; None when there is
    none. `load_checkpoint` verifies and loads the tensors when they are needed."""
    return _read_pointer(folder, POINTER) or _read_pointer(folder, PREVIOUS)


def load_checkpoint(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The newest intact checkpoint (latest, else previous with a warning); None when there is none at all."""
    if not (folder / POINTER).exists() and not (folder / PREVIOUS).exists():
        return None
    problems: list[str] = []
    for pointer in (POINTER, PREVIOUS):
        meta = _read_pointer(folder, pointer)
        problem = _verified(folder, meta)
        if problem is None:
            assert meta is not None  # _verified reports a missing pointer
            if problems:
                log.warning("checkpoint in %s: %s; using the previous checkpoint (%s) instead", folder,
                            problems[0], meta["tensors"])
            return meta, load_file(str(folder / meta["tensors"]))
        problems.append(f"{pointer}: {problem}")
    raise CheckpointError(f"no intact checkpoint in {folder} ({'; '.join(problems)}); "
                          "start the run again with --overwrite")


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimiser state dict into JSON and tensors."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        state_meta[str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                state_meta[str(idx)][key] = value
    return {"state": state_meta, "param_groups": sd["param_groups"]}, tensors


def load_optimizer_state(opt: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    opt.load_state_dict({"state": state, "param_groups": groups})


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`tensors` under `prefix.` in one checkpoint file beside others (method, rng, optimizer)."""
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def unprefixed(tensors: dict[str, torch.Tensor], prefix: str, device: torch.device | str | None = None
               ) -> dict[str, torch.Tensor]:
    """The tensors stored under `prefix.` (see `prefixed`), without it, moved to `device` when given."""
    start = f"{prefix}."
    return {k[len(start):]: v if device is None else v.to(device) for k, v in tensors.items() if k.startswith(start)}
