"""One run per output folder: OUT/.lock holds the owner's pid and host; a lock whose process is gone
(a crash, a SIGKILL) is recognised as stale and taken over, with a warning."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("sdlora")

LOCK_NAME = ".lock"


class OutputLocked(RuntimeError):
    """Another live process is writing into the output folder."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The lock's owner, or None when the file is empty or garbled (a crash while it was being written)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _is_stale(owner: dict | None) -> bool:
    if owner is None:
        return True
    return owner.get("host") == socket.gethostname() and not pid_alive(owner["pid"])


@contextmanager
def output_lock(out: Path) -> Iterator[Path]:
    """Hold OUT/.lock while the block runs; refuse when a live process holds it, take over a stale one."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_lock(path)
            if owner is not None and not _is_stale(owner):  # (None is stale)
                raise OutputLocked(
                    f"{out} is in use by another run (pid {owner['pid']} on {owner.get('host')}, lock file {path}); "
                    "wait for it to finish or choose another --out (if no such run exists, delete the lock file)"
                ) from None
            log.warning("taking over the stale lock %s of %s (that process no longer exists)", path,
                        f"pid {owner['pid']}" if owner else "an unknown process")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me))
        break
    else:
        raise OutputLocked(f"could not take the lock {path} (other runs keep taking it)")
    try:
        yield path
    finally:
        if read_lock(path) == me:
            path.unlink(missing_ok=True)
