"""`sdlora report`: runs collected from disk, grouped by benchmark and label, mean ± stderr over seeds."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest

from sdlora import report
from sdlora.config import config_to_dict, load_config
from sdlora.engine.metrics import accuracy_curve, compute_metrics
from sdlora.report import collect_runs, report_main, report_table, run_label

PUBLISHED = {"final_accuracy": 80.0, "average_incremental_accuracy": 90.0}


def write_run(folder, method, seed, matrix, config=None, status="complete", cost=None, trainable=100,
              benchmark="clinc150"):
    counts = [10] * len(matrix)
    results = {
        "method": method, "benchmark": benchmark, "backbone": {"name": "hf_encoder"}, "seed": seed,
        "class_order": list(range(30)), "num_tasks": len(matrix), "task_sizes": [15] * len(matrix),
        "accuracy_matrix": matrix, "task_test_counts": counts,
        "accuracy_curve": accuracy_curve(matrix, counts), "metrics": compute_metrics(matrix, counts),
        "trainable_parameters": [trainable + t for t in range(len(matrix))], "task_times_s": [1.0] * len(matrix),
        "wall_time_s": 2.0, "config": {"method": {"name": method, "options": {}}, **(config or {})},
        "versions": {}, "status": status,
        **({"inference_cost": cost} if cost is not None else {}),  # absent: a run from before it was recorded
    }
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def cost(ratio, extra=115_300, stored=None):
    """A results.json `inference_cost`; `stored` None: a run from before `extra_stored_numbers` was recorded."""
    out = {"form": "merged", "batch": 16, "flops": int(1e9 * ratio), "backbone_flops": int(1e9), "ratio": ratio,
           "parameters": 86_000_000 + extra, "backbone_parameters": 86_000_000, "extra_parameters": extra}
    if stored is not None:
        out |= {"stored_numbers": 86_000_000 + stored, "extra_stored_numbers": stored}
    return out


@pytest.fixture
def runs_root(tmp_path):
    # seq_lora: curves [90, 65] and [92, 68] -> final 66.5 ± 1.5 (|65 - 68| / 2), AAA (77.5, 80) 78.75 ± 1.25,
    # forgetting (30, 28) 29 ± 1
    write_run(tmp_path / "seq" / "seed-1", "seq_lora", 1, [[90.0], [60.0, 70.0]])
    write_run(tmp_path / "seq" / "seed-2", "seq_lora", 2, [[92.0], [64.0, 72.0]])
    (tmp_path / "seq" / "summary.json").write_text("{}")
    # sdlora-official: curves [94, 83] and [96, 86] -> final 84.5 ± 1.5, AAA (88.5, 91) 89.75 ± 1.25,
    # forgetting (8, 6) 7 ± 1; published 80 / 90 -> differences +4.50 / -0.25
    # costs: trainable max (1501, 1501) -> 1.50K; extra 115300 -> 115.30K; stored (2.4M, 2.5M) -> 2.45M;
    # ratio (1.0003, 1.0005) -> 1.00x
    named = {"name": "sdlora-official", "published": PUBLISHED}
    write_run(tmp_path / "sd" / "seed-1", "sdlora", 1, [[94.0], [86.0, 80.0]], named,
              cost=cost(1.0003, stored=2_400_000), trainable=1500)
    write_run(tmp_path / "sd" / "seed-2", "sdlora", 2, [[96.0], [90.0, 82.0]], named,
              cost=cost(1.0005, stored=2_500_000), trainable=1500)
    write_run(tmp_path / "sd-live", "sdlora", 3, [[50.0]], status="running")
    return tmp_path


def test_collect_runs_finds_every_results_json(runs_root):
    runs = collect_runs([runs_root])
    assert len(runs) == 5
    assert {r["_dir"] for r in runs} >= {str((runs_root / "seq" / "seed-1").resolve())}
    # a run dir, a multi-seed dir and the file itself; duplicates are counted once
    again = collect_runs([runs_root / "seq", runs_root / "seq" / "seed-1" / "results.json"])
    assert sorted(r["seed"] for r in again) == [1, 2]
    with pytest.raises(FileNotFoundError):
        collect_runs([runs_root / "missing"])


def test_collect_runs_skips_the_copy_an_interrupted_learn_keeps(runs_root, tmp_path):
    backup = tmp_path / "copy" / "seq" / "seed-1" / ".learn-backup"
    shutil.copytree(runs_root / "seq", tmp_path / "copy" / "seq")
    shutil.copytree(runs_root / "seq" / "seed-1", backup)
    assert sorted(r["seed"] for r in collect_runs([tmp_path / "copy"])) == [1, 2]


def test_report_table_markdown(runs_root):
    text = report_table(collect_runs([runs_root]), "md")
    lines = text.splitlines()
    assert lines[0] == ("| benchmark | run | method | seeds | final_accuracy | published Acc | Δ Acc | "
                        "final_accuracy_task_mean | average_incremental_accuracy | published AAA | Δ AAA | "
                        "forgetting | trainable params | extra inference params | extra stored numbers | "
                        "inference cost (x backbone) |")
    assert lines[1] == "|" + "|".join(["---"] * 16) + "|"
    # worst: the lower accuracy, the higher forgetting; then the cost columns (the seq_lora runs predate them)
    assert lines[2] == ("| clinc150 | sdlora-official | sdlora | 2 | 84.50 ± 1.50 (worst 83.00) | 80.00 | +4.50 | "
                        "84.50 ± 1.50 (worst 83.00) | 89.75 ± 1.25 (worst 88.50) | 90.00 | -0.25 | "
                        "7.00 ± 1.00 (worst 8.00) | 1.50K | 115.30K | 2.45M | 1.00x |")
    assert lines[3] == ("| clinc150 | seq_lora | seq_lora | 2 | 66.50 ± 1.50 (worst 65.00) | – | – | "
                        "66.50 ± 1.50 (worst 65.00) | 78.75 ± 1.25 (worst 77.50) | – | – | "
                        "29.00 ± 1.00 (worst 30.00) | 101 | – | – | – |")
    assert lines[4] == ""
    assert lines[5] == f"Note: skipped {(runs_root / 'sd-live').resolve()}: status 'running'"
    assert len(lines) == 6


def test_report_table_csv(runs_root):
    text = report_table(collect_runs([runs_root]), "csv")
    table = [line for line in text.splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(io.StringIO("\n".join(table))))
    assert len(rows) == 2
    sd, seq = rows
    assert sd["run"] == "sdlora-official" and sd["method"] == "sdlora" and sd["seeds"] == "2"
    assert (sd["final_accuracy_mean"], sd["final_accuracy_stderr"]) == ("84.5000", "1.5000")
    assert (sd["published_final_accuracy"], sd["diff_final_accuracy"]) == ("80.0000", "4.5000")
    assert (sd["published_average_incremental_accuracy"], sd["diff_average_incremental_accuracy"]) == (
        "90.0000", "-0.2500")
    assert (seq["forgetting_mean"], seq["forgetting_stderr"]) == ("29.0000", "1.0000")
    assert seq["published_final_accuracy"] == seq["diff_final_accuracy"] == ""
    assert (sd["trainable_parameters"], sd["extra_inference_parameters"], sd["extra_stored_numbers"],
            sd["inference_cost_ratio"]) == ("1501", "115300", "2450000", "1.0004")
    assert (seq["trainable_parameters"], seq["extra_inference_parameters"], seq["extra_stored_numbers"],
            seq["inference_cost_ratio"]) == ("101", "", "", "")
    assert text.splitlines()[-1] == f"# note: skipped {(runs_root / 'sd-live').resolve()}: status 'running'"


def test_report_without_published_has_no_published_columns(runs_root):
    text = report_table(collect_runs([runs_root / "seq"]), "md")
    assert text.splitlines()[2] == (
        "| clinc150 | seq_lora | seq_lora | 2 | 66.50 ± 1.50 (worst 65.00) | 66.50 ± 1.50 (worst 65.00) | "
        "78.75 ± 1.25 (worst 77.50) | 29.00 ± 1.00 (worst 30.00) | 101 | – | – | – |")
    assert "Note" not in text


def test_report_with_no_complete_run(runs_root):
    text = report_table(collect_runs([runs_root / "sd-live"]), "md")
    assert "Note: no complete runs found" in text.splitlines()


def test_run_label_variant(monkeypatch):
    monkeypatch.setattr(report, "_default_option", lambda method, key: "plain")
    run = {"method": "sdlora", "config": {"method": {"name": "sdlora", "options": {"variant": "rr"}}}}
    assert run_label(run) == "sdlora-rr"
    run["config"]["method"]["options"]["variant"] = "plain"
    assert run_label(run) == "sdlora"
    run["config"]["name"] = "my run"
    assert run_label(run) == "my run"
    assert run_label({"method": "ncm", "config": {}}) == "ncm"


def test_report_main_writes_plot(runs_root, tmp_path):
    plot = tmp_path / "out" / "curves.png"
    text = report_main([str(runs_root)], "md", plot=str(plot))
    assert text.splitlines()[2].startswith("| clinc150 | sdlora-official | sdlora | 2 |")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown report format"):
        report_main([str(runs_root)], "xlsx")


def test_cost_columns_mix_recorded_and_older_runs(tmp_path):
    """Seeds that record a cost are averaged; a seed from before the field counts for nothing; counts scale."""
    write_run(tmp_path / "a", "l2p", 1, [[90.0]], cost=cost(2.5, extra=2_118, stored=2_138), trainable=2_000_000)
    write_run(tmp_path / "b", "l2p", 2, [[80.0]], trainable=4_000_000)
    assert report.cost_summary(collect_runs([tmp_path])) == {"trainable": 3_000_000.0, "extra": 2118.0,
                                                              "stored": 2138.0, "ratio": 2.5}
    line = report_table(collect_runs([tmp_path]), "md").splitlines()[2]
    assert line.endswith("| 3.00M | 2.12K | 2.14K | 2.50x |")
    assert report.cost_summary([{"trainable_parameters": []}]) == {"trainable": None, "extra": None, "stored": None,
                                                                   "ratio": None}


PROMPT_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "vision" / "prompts"


def test_report_puts_the_prompt_baselines_published_numbers_side_by_side(tmp_path):
    """Fake runs (2 seeds) of the four prompt configs of ImageNet-R N=20 and of L2P and HiDe-Prompt on CIFAR-100,
    each with its config as a real run saves it: one row per config name, each beside its own published Acc / AAA
    (SD-LoRA Table 2 / Table 6) and the difference; HiDe-Prompt has no Table 6 row, hence dashes."""
    # every run: curves [90, 75] (seed 1) and [94, 78] (seed 2) -> final 76.50 ± 1.50, AAA (82.5, 86) 84.25 ± 1.75,
    # forgetting (20, 20) 20 ± 0
    matrices = {1: [[90.0], [70.0, 80.0]], 2: [[94.0], [74.0, 82.0]]}
    runs = [(m, "imagenet_r_20") for m in ("l2p", "dualprompt", "coda_prompt", "hide_prompt")]
    runs += [("l2p", "cifar100_10"), ("hide_prompt", "cifar100_10")]
    for method, setting in runs:
        cfg = load_config(PROMPT_CONFIGS / f"{setting}_{method}.yaml")
        for seed, matrix in matrices.items():
            write_run(tmp_path / f"{setting}_{method}" / f"seed-{seed}", method, seed, matrix, config_to_dict(cfg),
                      benchmark=cfg.benchmark.name)
    lines = report_table(collect_runs([tmp_path]), "md").splitlines()
    assert lines[0].startswith("| benchmark | run | method | seeds | final_accuracy | published Acc | Δ Acc | ")
    same = "76.50 ± 1.50 (worst 75.00)"

    def row(benchmark, name, acc, d_acc, aaa, d_aaa):
        method = name.split("-")[0] if not name.startswith(("coda", "hide")) else "_".join(name.split("-")[:2])
        return (f"| {benchmark} | {name} | {method} | 2 | {same} | {acc} | {d_acc} | {same} | "
                f"84.25 ± 1.75 (worst 82.50) | {aaa} | {d_aaa} | 20.00 ± 0.00 (worst 20.00) | 101 | – | – | – |")

    assert lines[2:] == [
        row("cifar100", "hide-prompt-cifar100-10", "–", "–", "–", "–"),
        row("cifar100", "l2p-cifar100-10", "83.18", "-6.68", "87.69", "-3.44"),
        row("imagenet_r", "coda-prompt-imagenet-r-20", "69.38", "+7.12", "73.95", "+10.30"),
        row("imagenet_r", "dualprompt-imagenet-r-20", "65.23", "+11.27", "71.30", "+12.95"),
        row("imagenet_r", "hide-prompt-imagenet-r-20", "73.59", "+2.91", "77.93", "+6.32"),
        row("imagenet_r", "l2p-imagenet-r-20", "68.97", "+7.53", "74.16", "+10.09"),
    ]
    rows = list(csv.DictReader(io.StringIO(report_table(collect_runs([tmp_path]), "csv"))))
    published = {r["run"]: (r["published_final_accuracy"], r["published_average_incremental_accuracy"])
                 for r in rows}
    assert published == {"hide-prompt-cifar100-10": ("", ""), "l2p-cifar100-10": ("83.1800", "87.6900"),
                         "coda-prompt-imagenet-r-20": ("69.3800", "73.9500"),
                         "dualprompt-imagenet-r-20": ("65.2300", "71.3000"),
                         "hide-prompt-imagenet-r-20": ("73.5900", "77.9300"),
                         "l2p-imagenet-r-20": ("68.9700", "74.1600")}


def test_report_says_what_a_cut_down_run_trained_and_shows_no_spread_for_one_seed(tmp_path):
    small = {"name": "clinc150-smoke", "benchmark": {"options": {"max_per_class": 10}}}
    run = write_run(tmp_path / "smoke" / "seed-1", "sdlora", 1, [[96.0], [94.0, 95.0]], small)
    record = json.loads((run / "results.json").read_text())
    record["class_names"] = [f"intent_{i}" for i in range(150)]  # the benchmark's 150, 2 tasks x 15 trained
    (run / "results.json").write_text(json.dumps(record))
    line = report_table(collect_runs([tmp_path]), "md").splitlines()[2]
    assert line.startswith("| clinc150 [30/150 classes, <=10 per class] | clinc150-smoke | sdlora | 1 | 94.50 | ")
    assert "±" not in line
    # grown by `sdlora learn` (+3 classes): results.json keeps only the 33 trained names, learn records the 150
    record.update(task_sizes=[15, 15, 3], class_names=[f"intent_{i}" for i in range(33)],
                  accuracy_matrix=[[96.0], [94.0, 95.0], [93.0, 94.0, 90.0]])
    record["data"] = {"learn": {"learned": [{"task": 2}], "benchmark_classes": 150}}
    (run / "results.json").write_text(json.dumps(record))
    line = report_table(collect_runs([tmp_path]), "md").splitlines()[2]
    assert line.startswith("| clinc150 [30/150 classes, <=10 per class] | clinc150-smoke +1 learned | sdlora | 1 |")


def test_runs_under_one_name_with_different_settings_are_never_averaged(tmp_path):
    """A `--set` that kept the config's name (another method, another lr) gives its own row, labelled by the keys
    that differ; seeds, the device and a key an older run does not record do not split a row."""
    base = {"name": "sdlora-hwu64", "train": {"lr": 0.01, "eval_batch_size": 256}, "device": "auto"}
    write_run(tmp_path / "a" / "seed-1", "sdlora", 1, [[90.0]], {**base, "seeds": [1]})
    write_run(tmp_path / "a" / "seed-2", "sdlora", 2, [[80.0]],
              {**base, "seeds": [2], "device": "cpu", "train": {"lr": 0.01, "eval_batch_size": 64}})
    older = write_run(tmp_path / "old" / "seed-3", "sdlora", 3, [[70.0]],
                      {"name": "sdlora-hwu64", "train": {"lr": 0.01}})
    record = json.loads((older / "results.json").read_text())
    del record["config"]["method"]["options"]  # a run written before the key existed
    (older / "results.json").write_text(json.dumps(record))
    write_run(tmp_path / "lr" / "seed-1", "sdlora", 1, [[60.0]], {**base, "train": {"lr": 0.005}})
    write_run(tmp_path / "inf" / "seed-1", "inflora", 1, [[50.0]], base)
    groups, _ = report.group_runs(collect_runs([tmp_path]))
    assert {label: sorted(r["seed"] for r in members) for (_, label), members in groups.items()} == {
        "sdlora-hwu64 [method.name=inflora, train.lr=0.01]": [1],
        "sdlora-hwu64 [method.name=sdlora, train.lr=0.005]": [1],
        "sdlora-hwu64 [method.name=sdlora, train.lr=0.01]": [1, 2, 3],
    }
    # a run that does not record a key on which the others differ stands apart
    write_run(tmp_path / "nolr" / "seed-4", "sdlora", 4, [[40.0]], {"name": "sdlora-hwu64"})
    groups, _ = report.group_runs(collect_runs([tmp_path]))
    assert [r["seed"] for r in groups[("clinc150", "sdlora-hwu64 [method.name=sdlora, train.lr=?]")]] == [4]
    table = report_table(collect_runs([tmp_path]), "md")
    assert "| sdlora-hwu64 [method.name=sdlora, train.lr=0.01] | sdlora | 3 | 80.00 ± 5.77 (worst 70.00) |" in table
    # one setting: the plain label
    groups, _ = report.group_runs(collect_runs([tmp_path / "a"]))
    assert list(groups) == [("clinc150", "sdlora-hwu64")]
