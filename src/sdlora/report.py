"""Comparison table over methods and seeds (`sdlora report`): mean ± standard error per (benchmark, method).

Runs are grouped by benchmark and by a label: config `name` when set, else the method name plus its
`variant` option when that differs from the method's default (e.g. `sdlora-rr`). Runs under one label whose
configs differ in a setting (a `--set` that kept the config's name: another method, classifier or lr) are never
averaged together: each setting gets its own row, its label followed by the keys that differ, e.g.
`sdlora-hwu64 [method.classifier.kind=ridge]`. Keys that cannot change a result (SEED_KEYS, NEUTRAL_KEYS) are
not compared; a key a run does not record (an older version) splits it off only where the others differ.
The last four columns are costs (means over seeds): the most parameters the optimiser trained in one task, the
parameters stored for inference beyond the plain backbone, every number stored to predict and to keep learning
beyond the plain backbone (statistics, bases, the head a classifier replaces), and the inference FLOPs against the
plain backbone's (results.json `inference_cost`, `sdlora.engine.cost`); a run written before they were recorded
shows a dash.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

from sdlora.engine.metrics import summarize_runs

TABLE_METRICS = ("final_accuracy", "final_accuracy_task_mean", "average_incremental_accuracy", "forgetting")
PUBLISHED = {"final_accuracy": "Acc", "average_incremental_accuracy": "AAA"}  # config.published keys
DASH = "–"
#: cost columns: (markdown header, csv header, key of `cost_summary`)
COST_COLUMNS = (("trainable params", "trainable_parameters", "trainable"),
                ("extra inference params", "extra_inference_parameters", "extra"),
                ("extra stored numbers", "extra_stored_numbers", "stored"),
                ("inference cost (x backbone)", "inference_cost_ratio", "ratio"))


def collect_runs(paths: list[Path]) -> list[dict]:
    """Every results.json under the given paths (a run dir, a multi-seed dir, any parent folder, or the
    file itself), each dict with `_dir` set to its run directory. An unreadable file comes back as a
    run with status `unreadable` so that the report can say so."""
    files: dict[Path, None] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no such run directory or file: {path}")
        found = [path] if path.is_file() else sorted(  # not in hidden folders: `learn`'s .learn-backup is a copy
            f for f in path.rglob("results.json") if not any(p.startswith(".") for p in f.relative_to(path).parts))
        files.update(dict.fromkeys(f.resolve() for f in found))
    runs = []
    for file in files:
        try:
            run = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            run = {"status": f"unreadable ({err})"}
        runs.append({**run, "_dir": str(file.parent)})
    return runs


def _default_option(method: str, key: str) -> Any:
    """The registered method's default for an option (its `Options`, found without torch through the source
    catalog); None when the method or option is unknown."""
    from sdlora.catalog import builtin_catalog

    options = builtin_catalog().options("METHODS", method)
    if options is None:
        return None
    return next((f.default for f in dataclasses.fields(options) if f.name == key), None)


def run_label(run: dict) -> str:
    """config.name, else `method` or `method-variant` when the variant option is not the default; `+N learned`
    when `sdlora learn` added N tasks to the run (its metrics then cover them)."""
    learned = len(((run.get("data") or {}).get("learn") or {}).get("learned", []))
    suffix = f" +{learned} learned" if learned else ""
    config = run.get("config") or {}
    if config.get("name"):
        return str(config["name"]) + suffix
    method = str(run.get("method", "?"))
    variant = ((config.get("method") or {}).get("options") or {}).get("variant")
    if variant is None or variant == _default_option(method, "variant"):
        return method + suffix
    return f"{method}-{variant}{suffix}"


def run_setting(run: dict) -> str:
    """What a cut-down run trained, when it is not its whole benchmark: `30/150 classes`, `<=12 per class`
    (`benchmark.num_tasks`, `benchmark.options.max_per_class`); "" for a full run."""
    parts = []
    sizes, names = run.get("task_sizes") or [], run.get("class_names") or []
    learn = (run.get("data") or {}).get("learn") or {}
    trained = sum(sizes[:len(sizes) - len(learn.get("learned", []))])  # by `train`; `learn` added the rest
    # a grown run keeps only the names it trained, so the benchmark's count comes from learn's record
    available = learn.get("benchmark_classes") or len(names) - (sum(sizes) - trained)
    if names and trained < available:
        parts.append(f"{trained}/{available} classes")
    per_class = (((run.get("config") or {}).get("benchmark") or {}).get("options") or {}).get("max_per_class")
    if per_class:
        parts.append(f"<={per_class} per class")
    return ", ".join(parts)


def benchmark_cell(run: dict) -> str:
    """The benchmark's name, with `run_setting` in brackets for a cut-down run."""
    setting = run_setting(run)
    return str(run.get("benchmark", "?")) + (f" [{setting}]" if setting else "")


#: config keys that name or place a run, or pick its seeds, not what it computes
SEED_KEYS = frozenset({"seeds", "name", "source", "published"})
#: config keys that change speed or logging only
NEUTRAL_KEYS = frozenset({"device", "benchmark.data_root", "train.loggers", "train.num_workers",
                          "train.eval_batch_size", "train.compile"})


def flat_config(config: dict, prefix: str = "") -> dict[str, str]:
    """{"train.lr": "0.01", ...}: a run's config as dotted keys (values as JSON, so lists compare)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out |= flat_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True)
    return out


def split_by_setting(members: list[dict]) -> dict[str, list[dict]]:
    """{"": members} when the runs that record a key agree on it, for every key (SEED_KEYS and NEUTRAL_KEYS
    aside); else one entry per setting, keyed by `[key=value, ...]` over the keys that differ (`key=?` for a run
    that does not record one of them: it cannot be told apart, so it is not averaged in)."""
    flats = [flat_config(r.get("config") or {}) for r in members]
    keys = set().union(*flats) - SEED_KEYS - NEUTRAL_KEYS
    differ = sorted(k for k in keys if len({f[k] for f in flats if k in f}) > 1)
    parts: dict[str, list[dict]] = {}
    for run, flat in zip(members, flats):
        values = (json.loads(flat[k]) if k in flat else "?" for k in differ)
        tag = "[" + ", ".join(f"{k}={v}" for k, v in zip(differ, values)) + "]" if differ else ""
        parts.setdefault(tag, []).append(run)
    return parts


def group_runs(runs: list[dict]) -> tuple[dict[tuple[str, str], list[dict]], list[str]]:
    """Complete runs by (benchmark, label), sorted, a label split by `split_by_setting`; notes for skipped runs
    and repeated seeds."""
    labelled: dict[tuple[str, str], list[dict]] = {}
    notes = []
    for run in runs:
        where = run.get("_dir") or f"{run.get('method')} seed {run.get('seed')}"
        if run.get("status") != "complete":
            notes.append(f"skipped {where}: status {run.get('status')!r}")
            continue
        labelled.setdefault((benchmark_cell(run), run_label(run)), []).append(run)
    groups = {(benchmark, f"{label} {tag}" if tag else label): part
              for (benchmark, label), members in labelled.items()
              for tag, part in split_by_setting(members).items()}
    for (benchmark, label), members in groups.items():
        repeated = sorted(s for s, c in Counter(r.get("seed") for r in members).items() if c > 1 and s is not None)
        if repeated:
            notes.append(f"{benchmark} / {label}: seed(s) {repeated} appear more than once; all are averaged")
    return dict(sorted(groups.items())), notes


def _published(members: list[dict]) -> dict[str, float]:
    return next(((r.get("config") or {}).get("published") or {} for r in members
                 if (r.get("config") or {}).get("published")), {})


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def cost_summary(members: list[dict]) -> dict[str, float | None]:
    """Means over the seeds that record them: `trainable` (the largest per-task trainable parameter count),
    `extra` (inference parameters beyond the plain backbone), `stored` (every stored number beyond the plain
    backbone) and `ratio` (inference FLOPs / backbone FLOPs)."""
    costs = [r.get("inference_cost") or {} for r in members]
    return {"trainable": _mean([max(r["trainable_parameters"]) if r.get("trainable_parameters") else None
                                for r in members]),
            "extra": _mean([c.get("extra_parameters") for c in costs]),
            "stored": _mean([c.get("extra_stored_numbers") for c in costs]),
            "ratio": _mean([c.get("ratio") for c in costs])}


def _rows(groups: dict[tuple[str, str], list[dict]]) -> list[dict]:
    rows = []
    for (benchmark, label), members in groups.items():
        summary = summarize_runs(members)["metrics"]
        methods = ", ".join(sorted({str(r.get("method", "?")) for r in members}))
        rows.append({"benchmark": benchmark, "label": label, "method": methods, "seeds": len(members),
                     "metrics": summary, "published": _published(members), "cost": cost_summary(members)})
    return rows


def _count(n: float) -> str:
    """1234567 -> 1.23M, 2118 -> 2.12K, 198 -> 198."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"


def _cost_cells(cost: dict[str, float | None], fmt: str) -> list[str]:
    cells = []
    for _, _, key in COST_COLUMNS:
        value = cost[key]
        if value is None:
            cells.append(DASH if fmt == "md" else "")
        elif fmt == "csv":
            cells.append(f"{value:.4f}" if key == "ratio" else f"{value:.0f}")
        else:
            cells.append(f"{value:.2f}x" if key == "ratio" else _count(value))
    return cells


def _pm(stat: dict) -> str:
    """mean ± stderr, and the worst seed's value when there are several seeds."""
    if stat["mean"] is None:
        return DASH
    if stat.get("n", 1) == 1:  # one seed: no spread to show
        return f"{stat['mean']:.2f}"
    worst = f" (worst {stat['worst']:.2f})" if stat.get("n", 1) > 1 and stat.get("worst") is not None else ""
    return f"{stat['mean']:.2f} ± {stat['stderr']:.2f}{worst}"


def _published_cells(row: dict, name: str, fmt: str) -> list[str]:
    value, mean = row["published"].get(name), row["metrics"][name]["mean"]
    if value is None:
        return [DASH if fmt == "md" else ""] * 2
    diff = None if mean is None else mean - value
    if fmt == "md":
        return [f"{value:.2f}", DASH if diff is None else f"{diff:+.2f}"]
    return [f"{value:.4f}", "" if diff is None else f"{diff:.4f}"]


def _table_md(rows: list[dict], with_published: bool) -> list[list[str]]:
    header = ["benchmark", "run", "method", "seeds"]
    for name in TABLE_METRICS:
        header.append(name)
        if with_published and name in PUBLISHED:
            header += [f"published {PUBLISHED[name]}", f"Δ {PUBLISHED[name]}"]
    header += [md for md, _, _ in COST_COLUMNS]
    body = []
    for row in rows:
        cells = [row["benchmark"], row["label"], row["method"], str(row["seeds"])]
        for name in TABLE_METRICS:
            cells.append(_pm(row["metrics"][name]))
            if with_published and name in PUBLISHED:
                cells += _published_cells(row, name, "md")
        body.append(cells + _cost_cells(row["cost"], "md"))
    return [header, *body]


def _table_csv(rows: list[dict], with_published: bool) -> list[list[str]]:
    header = ["benchmark", "run", "method", "seeds"]
    for name in TABLE_METRICS:
        header += [f"{name}_mean", f"{name}_stderr", f"{name}_worst"]
        if with_published and name in PUBLISHED:
            header += [f"published_{name}", f"diff_{name}"]
    header += [csv_name for _, csv_name, _ in COST_COLUMNS]
    body = []
    for row in rows:
        cells = [row["benchmark"], row["label"], row["method"], str(row["seeds"])]
        for name in TABLE_METRICS:
            stat = row["metrics"][name]
            cells += ["", "", ""] if stat["mean"] is None else [
                f"{stat['mean']:.4f}", f"{stat['stderr']:.4f}", f"{stat['worst']:.4f}"]
            if with_published and name in PUBLISHED:
                cells += _published_cells(row, name, "csv")
        body.append(cells + _cost_cells(row["cost"], "csv"))
    return [header, *body]


def _render_md(table: list[list[str]], notes: list[str]) -> str:
    lines = ["| " + " | ".join(r) + " |" for r in table]
    lines.insert(1, "|" + "|".join("---" for _ in table[0]) + "|")
    return "\n".join(lines + ([""] + [f"Note: {n}" for n in notes] if notes else []))


def _render_csv(table: list[list[str]], notes: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(table)
    return out.getvalue() + "".join(f"# note: {n}\n" for n in notes)


FORMATS = {"md": (_table_md, _render_md), "csv": (_table_csv, _render_csv)}


def report_table(runs: list[dict], fmt: str = "md") -> str:
    """One row per (benchmark, label): seeds and mean ± stderr of TABLE_METRICS (percent); published
    Acc / AAA and obtained - published when a config carries `published`; the cost columns (COST_COLUMNS).
    md or csv (notes as # lines)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r}; known: {', '.join(FORMATS)}")
    build, render = FORMATS[fmt]
    groups, notes = group_runs(runs)
    rows = _rows(groups)
    if not rows:
        notes = ["no complete runs found", *notes]
    return render(build(rows, any(r["published"] for r in rows)), notes)


def report_main(paths: list[str], fmt: str = "md", plot: str | None = None) -> str:
    """Collect runs under `paths`, return the table; with `plot`, write every group's mean curve there."""
    runs = collect_runs([Path(p) for p in paths])
    table = report_table(runs, fmt)
    groups, _ = group_runs(runs)
    if plot and groups:
        from sdlora.engine.plots import plot_curves  # matplotlib: only for --plot

        several = len({benchmark for benchmark, _ in groups}) > 1
        named = {(f"{label} [{benchmark}]" if several else label): members
                 for (benchmark, label), members in groups.items()}
        plot_curves(named, plot)
    return table
