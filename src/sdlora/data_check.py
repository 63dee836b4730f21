"""`sdlora data check CONFIG`: build the config's benchmark and check its files (`sdlora.data.check`)."""

from __future__ import annotations

import sys
from typing import TextIO

from sdlora.config import RunConfig
from sdlora.data.check import KNOWN_COUNTS, Report, check_inventory, check_loaded
from sdlora.engine.build import make_benchmark
from sdlora.typed import ConfigError


def check_split(cfg: RunConfig, num_classes: int, report: Report) -> None:
    """The config's tasks over the classes found: init_classes / increment / num_tasks and a class_order given as a
    list, the errors `train` would stop on (a named order such as CLINC150's `domain` is the benchmark's own)."""
    from sdlora.data.scenario import make_class_order, split_tasks

    b = cfg.benchmark
    try:
        sizes = split_tasks(num_classes, b.init_classes, b.increment, b.num_tasks)
        if isinstance(b.class_order, list):
            make_class_order(b.class_order, num_classes, cfg.seeds[0])
    except ValueError as err:
        report.error(f"benchmark: {err}")
        return
    report.say(f"tasks: {len(sizes)} ({', '.join(map(str, sizes))} classes) of {num_classes}")


def run_check(cfg: RunConfig, out: TextIO | None = None) -> int:
    """Check the files of `cfg.benchmark`; prints a report to `out` (sys.stdout at call time), returns 0 when all
    is well."""
    out = out if out is not None else sys.stdout
    name = cfg.benchmark.name
    report = Report(out)
    print(f"sdlora data check: benchmark {name!r}", file=out)
    try:
        bench = make_benchmark(cfg)
        expected = getattr(bench, "expected_counts", None)
        known = expected() if expected is not None else KNOWN_COUNTS.get(name)
        location = getattr(bench, "location", None)
        if location is not None:
            report.say(f"location: {location()}")
        if hasattr(bench, "inventory"):
            num_classes = check_inventory(bench.inventory(), known, report)
        else:
            num_classes = check_loaded(bench, known, report)
        check_split(cfg, num_classes, report)
    except (KeyError, ConfigError, FileNotFoundError, NotADirectoryError, ValueError) as err:
        report.error(str(err).strip('"'))
    verdict = "all good" if report.errors == 0 else f"{report.errors} problem(s)"
    print(f"result: {verdict}", file=out)
    return 0 if report.errors == 0 else 1
