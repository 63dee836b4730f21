"""The README main job (`sdlora train configs/clinc150.yaml`, one seed) beside its floor: the same passes in a
bare loop.

The floor runs, for every task of the config, exactly the forward/backward passes the job needs and nothing
else, over batches made before its clock starts (tokenised once, outside the floor): the feature pass over
the task's training data before training (`before_task`: the SDC "before" features; `begin_task`; head
rows from class means, reusing that pass in `continuous` mode); the training epochs (forward, loss,
backward, optimiser step on the engine's very batches);
`end_task`'s feature pass after training (SDC "after" features, prototypes); the evaluation forward over
the test data of every seen class. It shares its loop with `engine_overhead.py` (`bare_run`).

With `--engine` the job itself also runs in this process (`run_config`, the code behind `sdlora train`:
data, model, DataLoaders, tokenisation, checkpoints, results.json, CSV, plots), and the script prints both
wall times and their ratio. Set-up (loading data and weights, and for the floor making the batches) is
printed apart: the job's in-process wall time includes it, `results.json`'s wall_time_s does not.
Interpreter start and imports (a few seconds) are in neither; `time sdlora train ...` adds them.

Run:  python benchmarks/main_job_floor.py --engine        # configs/clinc150.yaml, ~2 x the job's time
      python benchmarks/main_job_floor.py [CONFIG] [--set k=v] [--device cuda] [--engine-first]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_overhead import (  # noqa: E402
    PHASES,
    ROOT,
    add_run_arguments,
    bare_run,
    build_bare,
    case_config,
    load_average,
    make_batches,
    run_device,
)

from sdlora.engine import build  # noqa: E402
from sdlora.engine.runner import run_config  # noqa: E402


def floor(cfg: Any, device: torch.device) -> dict[str, Any]:
    start = time.perf_counter()
    data = build.build_benchmark(cfg)
    batches = make_batches(cfg, data, build_bare(cfg, device), device)
    setup = time.perf_counter() - start
    times, curve = bare_run(cfg, data, device, batches)
    return {"setup_s": setup, "seconds": times["wall"], "cpu_seconds": times["cpu"], "accuracy_curve": curve}


def engine(cfg: Any, device: torch.device) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sdlora-main-job-") as out:
        start = time.perf_counter()
        run_config(cfg, Path(out) / "run", device=str(device), quiet=True, stream=io.StringIO())
        wall = time.perf_counter() - start
        result = json.loads(next((Path(out) / "run").glob("seed-*/results.json")).read_text())
    return {"wall_s": wall, "results_wall_time_s": result["wall_time_s"], "accuracy_curve": result["accuracy_curve"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", nargs="?", default=str(ROOT / "configs" / "clinc150.yaml"))
    p.add_argument("--engine", action="store_true", help="also run the job itself (run_config) in this process")
    p.add_argument("--engine-first", action="store_true", help="run the job before the floor")
    add_run_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = run_device(args)
    cfg = case_config(args.config, None, args.overrides)  # every task, the config's first seed
    print(f"{args.config}: seed {cfg.seeds[0]}, device {device}, torch threads {torch.get_num_threads()}", flush=True)
    out: dict[str, Any] = {"load_average_before": load_average()}
    steps = ["engine", "floor"] if args.engine_first else ["floor", "engine"]
    for step in steps:
        if step == "floor":
            out["floor"] = floor(cfg, device)
            s = out["floor"]["seconds"]
            print(f"floor: {s['total']:.1f} s (" + ", ".join(f"{p} {s[p]:.1f}" for p in PHASES if p != "other")
                  + f"); set-up {out['floor']['setup_s']:.1f} s; load {load_average()}", flush=True)
        elif args.engine:
            out["engine"] = engine(cfg, device)
            e = out["engine"]
            print(f"job:   {e['wall_s']:.1f} s in process (results.json wall_time_s {e['results_wall_time_s']:.1f} s); "
                  f"load {load_average()}", flush=True)
    out["load_average_after"] = load_average()
    if "engine" in out:
        f, e = out["floor"], out["engine"]
        out["ratio"] = e["results_wall_time_s"] / f["seconds"]["total"]
        out["ratio_with_setup"] = e["wall_s"] / (f["seconds"]["total"] + f["setup_s"])
        same = "identical" if e["accuracy_curve"] == f["accuracy_curve"] else "DIFFERENT"
        print(f"job / floor: {out['ratio']:.3f} (training loop, results.json wall time over the floor's passes); "
              f"{out['ratio_with_setup']:.3f} with set-up on both sides; accuracy curves {same}")
    print(f"load average (1, 5, 15 min) before {out['load_average_before']}, after {out['load_average_after']}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
