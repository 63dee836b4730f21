"""`train.compile`: a compiled run equals the eager run of the same seed within float rounding, and a compiled run
cut mid-way goes on eager (tiny random BERT with dropout, text batches of varying length, 3 tasks of 2 intents)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine_helpers import Interrupt, tiny
from export_helpers import INTENTS, text_run_config, write_text_files
from sdlora.config import load_config
from sdlora.engine.compiled import cloned
from sdlora.engine.runner import run_config
from sdlora.typed import ConfigError


def losses(seed_dir: Path) -> list[float]:
    with open(seed_dir / "scalars.csv") as f:
        return [float(row["value"]) for row in csv.DictReader(f) if row["name"] == "train/loss"]


def final_tensors(seed_dir: Path) -> dict[str, torch.Tensor]:
    step = json.loads((seed_dir / "checkpoints" / "latest.json").read_text())
    return load_file(seed_dir / "checkpoints" / step["tensors"])


def test_compiled_run_equals_eager_and_resumes_eager(tmp_path):
    data = text_run_config(tmp_path / "files")
    data["benchmark"]["options"] = write_text_files(tmp_path / "files", [*INTENTS, "book a table", "reset my pin"])
    data["train"]["epochs"] = 2

    def run(name: str, mode: str, **kw: object) -> Path:
        cfg = load_config(data={**data, "train": {**data["train"], "compile": mode}})
        run_config(cfg, tmp_path / name, quiet=True, stream=io.StringIO(), **kw)
        return tmp_path / name / "seed-3"

    eager = run("eager", "none")

    def stop_after_task_2(task: int, epochs: int, finished: bool) -> None:
        if (task, finished) == (1, True):
            raise Interrupt

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with pytest.raises(Interrupt):
        run("cut", "default", on_checkpoint=stop_after_task_2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the backbone was compiled
    compiled_losses = losses(tmp_path / "cut" / "seed-3")
    assert len(compiled_losses) == 2 * 3 * 2  # 12 texts a task, batch 4, 2 epochs: tasks 1 and 2
    assert compiled_losses == pytest.approx(losses(eager)[:len(compiled_losses)], rel=1e-4)

    resumed = run("cut", "none", resume=True)  # the compiled run goes on eager
    assert losses(resumed) == pytest.approx(losses(eager), rel=1e-4)
    ref, got = (json.loads((d / "results.json").read_text()) for d in (eager, resumed))
    assert got["accuracy_matrix"] == ref["accuracy_matrix"]
    assert got["inference_cost"] == ref["inference_cost"]  # FLOPs counted eagerly
    ref_tensors, got_tensors = final_tensors(eager), final_tensors(resumed)
    assert ref_tensors.keys() == got_tensors.keys()
    for key, value in ref_tensors.items():
        torch.testing.assert_close(got_tensors[key], value, rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_inflora_sees_its_input_taps(tmp_path, caplog, mode):
    """InfLoRA reads each adapted layer's inputs through forward hooks added after the backbone was compiled: the
    compiled run must call them (torch skips hook guards by default, and the taps would see no input).
    `reduce-overhead` (CUDA graphs on a GPU) compiles as default on the CPU, says so, and clones its outputs."""
    def run(mode: str) -> Path:
        data = tiny(method={"name": "inflora", "options": {"rank": 2}}, train={"epochs": 1, "compile": mode})
        run_config(load_config(data=data), tmp_path / mode, quiet=True, stream=io.StringIO())
        return tmp_path / mode / "seed-3"

    eager, compiled = run("none"), run(mode)
    assert ("CUDA graphs on a GPU only" in caplog.text) == (mode == "reduce-overhead")
    assert losses(compiled) == pytest.approx(losses(eager), rel=1e-4)
    ref, got = final_tensors(eager), final_tensors(compiled)
    for key, value in ref.items():
        torch.testing.assert_close(got[key], value, rtol=1e-3, atol=1e-5, msg=key)


def test_reduce_overhead_outputs_are_copies():
    """A CUDA graph's outputs live in memory its next replay overwrites: what the backbone returns is a copy."""
    out = torch.ones(3)
    forward = cloned(lambda x: out)
    got = forward(None)
    assert torch.equal(got, out) and got.data_ptr() != out.data_ptr()


def test_unknown_compile_mode_is_refused():
    with pytest.raises(ConfigError, match="max-autotune"):
        load_config(data=tiny(train={"compile": "fast"}))
