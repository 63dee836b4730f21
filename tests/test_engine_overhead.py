"""benchmarks/engine_overhead.py and main_job_floor.py run end to end on a micro tiny-ViT case (numbers only)."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import load_benchmark_script

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MICRO = ["--set", "benchmark.options.train_per_class=4", "--set", "benchmark.options.test_per_class=2",
         "--set", "backbone.options.model_kwargs.depth=1", "--set", "backbone.options.model_kwargs.patch_size=8",
         "--set", "backbone.options.model_kwargs.embed_dim=48", "--set", "backbone.options.model_kwargs.num_heads=3",
         "--set", "train.batch_size=8", "--set", "train.epochs=1"]


def load(name: str):
    return load_benchmark_script(name)


def test_engine_overhead_prints_every_phase_and_ratio(tmp_path, capsys):
    script = load("engine_overhead")
    out = script.main(["tiny-vit", "--reps", "2", "--warmup", "0", "--threads", "1", "--json", str(tmp_path / "o.json"),
                       *MICRO])
    result = out["tiny-vit"]
    assert len(result["engine_runs"]) == len(result["bare_runs"]) == 2
    for phase in (*script.PHASES, "total"):
        for table in ("phases", "cpu_phases"):
            cell = result[table][phase]
            assert cell["engine_s"] >= 0 and cell["bare_s"] >= 0
    assert result["phases"]["total"]["ratio"] > 0 and result["phases"]["train"]["ratio"] > 0
    # the bare loop does the engine's work: same batches, same seed, same accuracies
    assert result["accuracy_curve"]["engine"] == result["accuracy_curve"]["bare"]
    assert len(result["accuracy_curve"]["engine"]) == 2
    assert json.loads((tmp_path / "o.json").read_text())["tiny-vit"]["phases"]["total"]["ratio"] > 0
    printed = capsys.readouterr().out
    assert "engine/bare" in printed and "identical" in printed


def test_main_job_floor_runs_the_job_and_its_floor(tmp_path, capsys):
    script = load("main_job_floor")
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps(load("engine_overhead").TINY_VIT))  # JSON is YAML
    out = script.main([str(config), "--engine", "--threads", "1", *MICRO])
    assert out["floor"]["seconds"]["total"] > 0 and out["engine"]["wall_s"] > 0 and out["ratio"] > 0
    assert out["floor"]["accuracy_curve"] == out["engine"]["accuracy_curve"]
    assert "job / floor" in capsys.readouterr().out


def test_the_floor_forms_the_engines_length_aware_batches():
    """The bare loop's no-gradient passes read the batches the engine's `pass_loader` reads (length-aware when the
    backbone gives lengths, dataset order when it does not), so the floor is not slowed by padding the engine
    avoids."""
    from sdlora.data.length_order import pass_loader

    script = load("engine_overhead")
    texts = [f"w{i} " * (1 + (7 * i) % 11) for i in range(50)]  # uneven lengths in words

    def lengths_of(dataset):
        return [len(t.split()) for t in dataset]

    engine = pass_loader(texts, list, 8, lengths_of).batch_sampler
    floor = script.pass_batches(texts, 8, lengths_of)
    assert floor == list(engine) and sorted(i for b in floor for i in b) == list(range(50))
    first = lengths_of(texts[i] for i in floor[0])
    assert first[0] == 11 and first == sorted(first, reverse=True) and len(floor) > 7  # longest first, short batches
    assert script.pass_batches(texts, 8, None) == [list(range(i, min(i + 8, 50))) for i in range(0, 50, 8)]
