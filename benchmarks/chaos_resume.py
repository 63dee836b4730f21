"""Chaos test of exact resume: a small real run, killed with SIGKILL at random moments, resumed each time.

1. Runs the config uninterrupted (`python -m sdlora train ... --out ref`).
2. Runs it again into `cut`, always with `--resume`, and sends SIGKILL at a moment drawn uniformly in
   [0, span / N] after the process starts its seed (its train.log grows; import times vary too much
   on a loaded machine to count from the launch), where span is the reference's time from that point to
   its end: during an epoch, an evaluation, a checkpoint write, prototype fitting...; N kills spread over
   the run. Each kill is followed by a resume; then one last resume runs to the end.
3. Compares the final results.json and summary.json of `cut` with `ref`, timing fields aside.

The config: synthetic 6-class benchmark in 3 tasks, a random 2-block 32x32 timm ViT, SD-LoRA rank 2 with the
prototype classifier (so prototypes are fitted at every task end), Adam with a cosine schedule, 3 epochs.

Run:  python benchmarks/chaos_resume.py --kills 10 [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"wall_time_s", "task_times_s"}

CONFIG: dict[str, Any] = {
    "name": "chaos",
    "benchmark": {"name": "synthetic", "init_classes": 2, "increment": 2,
                  "options": {"num_classes": 6, "train_per_class": 16, "test_per_class": 4, "separation": 3.0}},
    "backbone": {"name": "timm_vit", "options": {
        "model": "vit_tiny_patch16_224", "pretrained": False,
        "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}}},
    "method": {"name": "sdlora", "options": {"rank": 2}, "classifier": {"kind": "prototypes"}},
    "train": {"optimizer": "adam", "lr": 0.01, "scheduler": "cosine", "epochs": 3, "batch_size": 4,
              "eval_batch_size": 8},
    "seeds": [3],
    "deterministic": True,
}


def command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "sdlora", "train", str(config), "--out", str(out), "--quiet", "--resume"]


def environment() -> dict[str, str]:
    """One thread (bitwise-reproducible CPU maths), this checkout's sources first, no network."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def comparable(out: Path) -> dict[str, Any]:
    """results.json, metrics.csv and scalars.csv of every seed, summary.json, without the timing fields; which
    plots exist."""
    found: dict[str, Any] = {}
    for path in sorted(out.glob("seed-*/results.json")):
        data = json.loads(path.read_text())
        found[path.parent.name] = {k: v for k, v in data.items() if k not in TIMING}
        rows = (path.parent / "metrics.csv").read_text().splitlines()
        found[f"{path.parent.name}/metrics.csv"] = [row.rsplit(",", 1)[0] for row in rows]  # time_s is last
        found[f"{path.parent.name}/scalars.csv"] = (path.parent / "scalars.csv").read_text().splitlines()
        found[f"{path.parent.name}/plots"] = sorted(p.name for p in path.parent.glob("*.png"))
    found["summary"] = {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k != "out"}
    return found


def where(out: Path) -> str:
    """What the run had last reported when it was killed (its log's last line and last checkpoint)."""
    logs = sorted(out.glob("seed-*/train.log"))
    last = logs[-1].read_text().strip().splitlines()[-1:] if logs else []
    pointers = sorted(out.glob("seed-*/checkpoints/latest.json"))
    position = json.loads(pointers[-1].read_text())["position"] if pointers else None
    line = last[0].split(" ", 3)[-1] if last else "(no log yet)"
    return f"after '{line}', checkpoint {position}"


def log_size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.glob("seed-*/train.log"))


def wait_until_started(proc: subprocess.Popen, out: Path) -> float | None:
    """Seconds until the process has got past its imports and started its seed (its log grows); None when it
    ended first. Import time on a loaded machine varies by seconds, so kill moments are counted from here."""
    start, size = time.perf_counter(), log_size(out)
    while proc.poll() is None:
        if log_size(out) > size:
            return time.perf_counter() - start
        time.sleep(0.005)
    return None


def timed_reference(config: Path, out: Path) -> float:
    """Seconds from the start of the seed to the end of an uninterrupted run."""
    proc = subprocess.Popen(command(config, out), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until_started(proc, out)
    start = time.perf_counter()
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"the reference run failed (exit {proc.returncode})")
    return time.perf_counter() - start


def kill_after(config: Path, out: Path, delay: float) -> bool:
    """Start a resume, SIGKILL it `delay` seconds after its seed started; False when it finished first."""
    proc = subprocess.Popen(command(config, out), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_until_started(proc, out)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        raise SystemExit(f"a resumed run failed (exit {proc.returncode})")
    return False


def kill_at_checkpoint(config: Path, out: Path, counter: int) -> bool:
    """Start a resume, SIGKILL it as soon as checkpoint number `counter` is on disk (no timing involved)."""
    proc = subprocess.Popen(command(config, out), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = out / "seed-3" / "checkpoints" / "latest.json"
    while proc.poll() is None:
        try:
            reached = json.loads(pointer.read_text())["counter"] >= counter
        except (OSError, ValueError, KeyError):
            reached = False
        if reached:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    return False


def finish(config: Path, out: Path) -> None:
    subprocess.run(command(config, out), env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", help="work in this folder (kept) instead of a temporary one")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sdlora-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "chaos.yaml"
    config.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    span = timed_reference(config, work / "ref")
    print(f"reference run: {span:.1f} s from the start of its seed to its end")
    kills, attempts = 0, 0
    window = span / args.kills
    while kills < args.kills:
        delay = rng.uniform(0.0, window)
        attempts += 1
        if kill_after(config, work / "cut", delay):
            kills += 1
            print(f"kill {kills}: SIGKILL after {delay:.2f} s, {where(work / 'cut')}")
        else:
            print(f"(attempt {attempts}: the run finished before {delay:.2f} s)")
            break
    finish(config, work / "cut")
    same = comparable(work / "cut") == comparable(work / "ref")
    print(f"\n{kills} kills delivered ({attempts} attempts, {args.kills} wanted), resumed each time; "
          f"final results.json {'IDENTICAL' if same else 'DIFFERENT'} to the uninterrupted run (timing aside)")
    print(f"work folder: {work}")
    raise SystemExit(0 if same else 1)


if __name__ == "__main__":
    main()
