"""SIGKILL at checkpoints 2 and 5 of a small real run, resumed each time: the same results as uninterrupted.

The full chaos run (random moments, N=10) is benchmarks/chaos_resume.py; this CI version kills as soon as a
given checkpoint is on disk (event-driven, no timing), i.e. somewhere in the following epoch or evaluation.
"""

import io

import torch
import yaml

from scripts import load_benchmark_script
from sdlora.config import load_config
from sdlora.engine.runner import run_config


def load_script():
    return load_benchmark_script("chaos_resume")


def test_killed_twice_and_resumed_equals_the_uninterrupted_run(tmp_path):
    chaos = load_script()
    config = tmp_path / "chaos.yaml"
    small = {**chaos.CONFIG, "train": {**chaos.CONFIG["train"], "epochs": 2}}
    small["benchmark"] = {**small["benchmark"], "options": {**small["benchmark"]["options"], "train_per_class": 8}}
    config.write_text(yaml.safe_dump(small))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the killed runs use one thread: the same floating-point sums
    try:
        run_config(load_config(config), tmp_path / "ref", quiet=True, stream=io.StringIO())
        assert chaos.kill_at_checkpoint(config, tmp_path / "cut", 2)
        assert chaos.kill_at_checkpoint(config, tmp_path / "cut", 5)
        assert not (tmp_path / "cut" / "seed-3" / "metrics.csv").exists()  # the kills came before the end
        run_config(load_config(config), tmp_path / "cut", resume=True, quiet=True, stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)
    assert chaos.comparable(tmp_path / "cut") == chaos.comparable(tmp_path / "ref")
    assert chaos.comparable(tmp_path / "ref")["seed-3"]["status"] == "complete"
