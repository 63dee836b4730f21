"""benchmarks/gpu_smoke.py runs end to end on the CPU with a tiny ViT (about a second)."""

from __future__ import annotations

import pytest

from scripts import load_benchmark_script


def load_script():
    return load_benchmark_script("gpu_smoke")


TINY_ARGS = ["--device", "cpu", "--tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--eval-batches", "2"]


@pytest.mark.parametrize("mode", ["official", "paper", "continuous"])
def test_gpu_smoke_script_on_cpu_tiny(capsys, mode):
    results = load_script().main([*TINY_ARGS, "--mode", mode])
    out = capsys.readouterr().out
    assert f"SD-LoRA mode {mode}" in out
    assert "task 2/2: SD-LoRA training" in out and "merged SD-LoRA inference" in out
    assert results["merge_max_abs_diff"] < 1e-4  # merging changes nothing but the cost
    assert results["sdlora_train_img_s_task2"] > 0 and results["merged_infer_img_s"] > 0
    assert results["sdlora_train_peak_gib"] is None  # no GPU memory on the CPU


def test_gpu_smoke_profile_prints_operator_tables(capsys):
    load_script().main([*TINY_ARGS, "--profile"])
    out = capsys.readouterr().out
    assert "profile: frozen backbone, 3 steps" in out and "profile: SD-LoRA task 2, 3 steps" in out
    assert out.count("Self CPU time total") == 2  # one profiler table per profiled step function


def test_gpu_smoke_times_chosen_tasks_through_the_compiled_backbone(capsys):
    """`--timed-tasks`: the other tasks store a direction without a step; `--compile`: the compiled frozen backbone
    is measured beside the eager floor, and SD-LoRA trains through it."""
    results = load_script().main([*TINY_ARGS, "--tasks", "3", "--timed-tasks", "1", "3", "--compile", "default"])
    out = capsys.readouterr().out
    assert "frozen backbone compiled (default)" in out and "task 3/3: SD-LoRA training" in out
    assert "task 2/3" not in out and "sdlora_train_img_s_task2" not in results
    assert results["compiled_backbone_train_img_s"] > 0 and results["sdlora_train_img_s_task3"] > 0
    assert results["merge_max_abs_diff"] < 1e-4
