"""Wall time of quick `sdlora` commands against `python -c "import torch"` on the same machine (issue 24).

Each command runs in a fresh interpreter (`python -m sdlora ...`, the source tree given by --src, by default
this checkout's `src/`), stdout and stderr to pipes as in a script or CI log:

* `--version`;
* `list` (methods, benchmarks, backbones, loggers, export formats);
* `predict` with a missing input file (a wrong argument);
* `train configs/clinc150.yaml --set train.lrr=1` (a bad config key);
* `train configs/clinc150.yaml --set method.options.rankk=3` (an unknown option of a registered plugin);
* `learn RUN --data missing.csv --test missing.csv` (a missing new-task file; RUN is a stand-in run folder,
  checkpoints/ and a config.yaml, which the check reads before the files).

Rounds are interleaved (every command once per round, rotating order, one warm-up round); each ratio is the
median over rounds of the per-round ratio to that round's `import torch`, which cancels the load drift of a
shared machine. The goal is every ratio <= 1.5. The exit codes are printed too (0; 1 for the missing
input and file; 2 for the config errors); `--src` on an older tree measures it before this work (where `--version`
is a usage error, exit code 2). No test asserts these times.

Run:  python benchmarks/cli_latency.py [--rounds 7] [--src OTHER_CHECKOUT/src]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5


def commands(scratch: Path) -> dict[str, list[str]]:
    """Label -> argv; the baseline first."""
    sdlora = [sys.executable, "-m", "sdlora"]
    return {
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "sdlora --version": [*sdlora, "--version"],
        "sdlora list": [*sdlora, "list"],
        "sdlora predict RUN missing.txt": [*sdlora, "predict", str(scratch), str(scratch / "missing.txt")],
        "sdlora train CONFIG --set train.lrr=1": [*sdlora, "train", str(ROOT / "configs" / "clinc150.yaml"),
                                                  "--set", "train.lrr=1", "--out", str(scratch / "run")],
        "sdlora train CONFIG --set method.options.rankk=3": [
            *sdlora, "train", str(ROOT / "configs" / "clinc150.yaml"), "--set", "method.options.rankk=3", "--out",
            str(scratch / "run")],
        "sdlora learn RUN --data missing.csv": [*sdlora, "learn", str(stand_in_run(scratch)), "--data",
                                                str(scratch / "missing.csv"), "--test", str(scratch / "missing.csv")],
    }


def stand_in_run(scratch: Path) -> Path:
    """A folder that opens as a run (checkpoints/, config.yaml on configs/clinc150.yaml) without being one."""
    run = scratch / "stand-in-run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(f"base: {ROOT / 'configs' / 'clinc150.yaml'}\n")
    return run


def wall_time(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    return time.perf_counter() - start, done.returncode


def measure(src: Path, rounds: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Label -> wall times (s), one per round after the warm-up; label -> exit code."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        argvs = commands(Path(tmp))
        labels = list(argvs)
        times: dict[str, list[float]] = {label: [] for label in labels}
        codes: dict[str, int] = {}
        for r in range(rounds + 1):
            shift = r % len(labels)
            for label in labels[shift:] + labels[:shift]:
                seconds, codes[label] = wall_time(argvs[label], env)
                if r:
                    times[label].append(seconds)
    return times, codes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="measured rounds (after one warm-up round)")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the source tree holding sdlora/")
    args = parser.parse_args(argv)
    times, codes = measure(args.src.resolve(), args.rounds)
    labels = list(times)
    base = times[labels[0]]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.rounds} rounds, sdlora from {args.src}, {cpus} CPU(s) usable, python {sys.version.split()[0]}")
    print(f"| command | exit code | median wall time (s) | ratio to import torch (median of per-round ratios) "
          f"| <= {GOAL} |")
    print("|---|---|---|---|---|")
    for label in labels:
        ratio = statistics.median(t / b for t, b in zip(times[label], base, strict=True))
        ok = "yes" if ratio <= GOAL else "no"
        print(f"| `{label}` | {codes[label]} | {statistics.median(times[label]):.3f} | {ratio:.2f} | {ok} |")


if __name__ == "__main__":
    main()
