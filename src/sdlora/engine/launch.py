"""Launching: whether torchrun started this process, and `sdlora train --nproc N` re-started through torchrun.

Kept free of torch imports: the launching process only hands over to torchrun.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger("sdlora")


def launched() -> bool:
    """Started by torchrun (or another launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def relaunch(argv: list[str], nproc: int) -> int:
    """`sdlora ARGV` again on `nproc` local processes through torchrun (torch.distributed.run, a free port);
    returns its exit status (non-zero when any rank failed: torchrun stops the others)."""
    args = strip_option(argv, "--nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "sdlora", *args]
    log.info("launching %d processes: %s", nproc, " ".join(command))
    return subprocess.run(command, check=False).returncode


def strip_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` / `name=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(f"{name}="):
            out.append(arg)
    return out
