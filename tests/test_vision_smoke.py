"""benchmarks/gpu_smoke.py runs end to end on the CPU with a tiny ViT (about a second)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_smoke.py"


def test_gpu_smoke_script_on_cpu_tiny(capsys):
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--device", "cpu", "--tiny", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                           "--eval-batches", "2"])
    out = capsys.readouterr().out
    assert "task 2/2: SD-LoRA training" in out and "merged SD-LoRA inference" in out
    assert results["merge_max_abs_diff"] < 1e-4  # merging changes nothing but the cost
    assert results["sdlora_train_img_s_task2"] > 0 and results["merged_infer_img_s"] > 0
    assert results["sdlora_train_peak_gib"] is None  # no GPU memory on the CPU
