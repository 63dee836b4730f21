"""Which code ran: the package version and, from a git checkout, the commit (stdlib only, fast)."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version (package metadata), else `sdlora.__version__`."""
    from importlib import metadata

    try:
        return metadata.version("sdlora")
    except metadata.PackageNotFoundError:
        from sdlora._version import __version__

        return __version__


@lru_cache(maxsize=1)
def git_commit(package: Path = PACKAGE, timeout: float = 2.0) -> str | None:
    """The commit checked out where the running sdlora source lives (`src/sdlora` of a clone or worktree), or
    None: an installed wheel, no git, or a repository that is not sdlora's own (a venv inside another repo)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 2:
        return None
    top, commit = lines
    return commit if (Path(top) / "src" / "sdlora").resolve() == package.resolve() else None
