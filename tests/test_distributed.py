"""Multi-process training (torchrun, gloo on the CPU, 2 processes) against one process with the same global batch.

Why the comparison is not bit-exact: a rank's batch is a strided half of the single-process batch (the same
samples, the same permutation), DDP averages the two halves' mean gradients, and feature passes run on
half-sized batches; the sums differ in rounding only (~1e-7 here), so parameters agree within 1e-4 and the
accuracy matrices are equal.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from engine_helpers import tiny
from sdlora.adapters.subspace import collect_covariances
from sdlora.config import load_config
from sdlora.engine import distributed
from sdlora.engine.launch import strip_option
from sdlora.engine.runner import run_config
from sdlora.engine.seeding import data_generator, rank_streams
from sdlora.engine.trainer import micro_batch_size
from sdlora.methods.base import StepScalars
from sdlora.prompts.pool import KeyedPool
from sdlora.typed import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# 9 classes in 3 tasks: 24 training samples per task (3 global batches of 8), 9 test samples per task (odd:
# the evaluation shards are uneven at tasks 1 and 3)
BENCH = {"name": "synthetic", "init_classes": 3, "increment": 3,
         "options": {"num_classes": 9, "train_per_class": 8, "test_per_class": 3, "separation": 1.0}}
TRAIN = {"epochs": 1, "batch_size": 8, "eval_batch_size": 4, "lr": 0.1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", SDLORA_DIST_TIMEOUT_S="120")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def torchrun(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
            "-m", "sdlora", "train", str(config), "--out", str(out), "--quiet", *extra]


def final_state(out: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """results.json and the method's tensors of the last checkpoint."""
    folder = out / "seed-3"
    pointer = json.loads((folder / "checkpoints" / "latest.json").read_text())
    tensors = load_file(str(folder / "checkpoints" / pointer["tensors"]))
    return (json.loads((folder / "results.json").read_text()),
            {k: v for k, v in tensors.items() if k.startswith("method.")})


def assert_same_run(one: Path, two: Path) -> float:
    """Same accuracy matrix, parameters within 1e-4; returns the largest parameter difference."""
    (r1, t1), (r2, t2) = final_state(one), final_state(two)
    assert r2["status"] == "complete"
    assert r2["accuracy_matrix"] == r1["accuracy_matrix"]
    assert r2["metrics"] == r1["metrics"]
    assert r2["trainable_parameters"] == r1["trainable_parameters"]
    assert r2["task_test_counts"] == r1["task_test_counts"]  # no test sample counted twice or missed
    assert r2["inference_cost"] == r1["inference_cost"] and r1["inference_cost"]["ratio"] > 1  # rank 0's, shared
    assert sorted(t1) == sorted(t2)
    diff = max(float((t1[k].double() - t2[k].double()).abs().max()) for k in t1)
    assert diff < 1e-4
    return diff


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def one_process(config: Path, out: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_config(load_config(config), out, quiet=True, stream=io.StringIO())
    finally:
        torch.set_num_threads(threads)


# -- the helpers, on two spawned gloo processes ---------------------------------------------------------------
def _helpers_worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # strided shards without padding: 5 rows -> 3 on rank 0, 2 on rank 1, gathered back in order
        rows = torch.arange(10.0).reshape(5, 2)
        mine = rows[list(distributed.shard(range(5)))]
        assert mine.shape[0] == (3 if rank == 0 else 2)
        assert torch.equal(distributed.gather_shards(mine), rows)
        assert torch.equal(distributed.all_reduce_sum(torch.tensor([rank + 1])), torch.tensor([3]))
        assert distributed.is_main() == (rank == 0) and distributed.world_size() == 2
        # the training sampler: rank r's batch i is the strided half of the single-process batch i
        data = list(range(12))
        order = torch.tensor([int(i) for i in DataLoader(range(12), shuffle=True,  # one process's order
                                                          generator=data_generator(7, 1, 2))])
        single = [order[i:i + 4].tolist() for i in range(0, 12, 4)]
        sampler = distributed.train_sampler(data, data_generator(7, 1, 2))
        mine_batches = [b.tolist() for b in DataLoader(data, batch_size=2, sampler=sampler)]
        assert mine_batches == [batch[rank::2] for batch in single]
        # rank 0's failure reaches rank 1 as RankFailed, with rank 0's message
        def fail() -> None:
            raise FileExistsError("out holds another run")

        expected = FileExistsError if rank == 0 else distributed.RankFailed
        try:
            distributed.from_main(fail)
        except expected as err:
            assert "out holds another run" in str(err)
        else:
            raise AssertionError("from_main did not raise")
        assert distributed.from_main(lambda: rank) == 0  # rank 0's value everywhere
        # InfLoRA's input covariance from two shards (7 batches: 4 on rank 0, 3 on rank 1) = the one of all
        layer = torch.nn.Linear(3, 2)
        batches = [torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(i)) for i in range(7)]
        everything = torch.cat(batches).reshape(-1, 3).double()
        cov = collect_covariances({"layer": layer}, layer, batches[rank::2])["layer"]
        assert torch.allclose(cov, everything.T @ everything / everything.shape[0], atol=1e-12)
        assert micro_batch_size(load_config(data=tiny()).train, distributed.world_size()) == 2
        # an epoch's draws come from each rank's own stream; outside it the ranks' streams stay equal
        torch.manual_seed(5)
        with rank_streams(5, 1, 0, rank, 2):
            inside = torch.rand(4)
        after = torch.rand(4)
        both = [torch.empty(4) for _ in range(2)], [torch.empty(4) for _ in range(2)]
        dist.all_gather(both[0], inside)
        dist.all_gather(both[1], after)
        assert not torch.equal(*both[0]) and torch.equal(*both[1])  # dropout masks differ, the shared RNG does not
        torch.manual_seed(5)
        assert torch.equal(after, torch.rand(4))  # as if the epoch drew nothing
        # L2P's selection counts and the epoch means of step scalars: over both ranks' batches
        torch.manual_seed(0)
        pool = KeyedPool(6, (1, 4), 4).train()
        query = torch.randn(3 + rank, 4)  # uneven shards
        local = torch.bincount(pool.select(query, 2).flatten(), minlength=6).float()
        assert torch.equal(pool.current_counts, distributed.all_reduce_sum(local)) and pool.current_counts.sum() == 14
        scalars = StepScalars()
        for value in ([1.0, 2.0] if rank == 0 else [3.0]):
            scalars.add({"ce": value})
        assert scalars.pop_means() == {"ce": 2.0}
    finally:
        dist.destroy_process_group()


def test_distributed_helpers_on_two_processes():
    mp.spawn(_helpers_worker, args=(free_port(),), nprocs=2, join=True)


def test_global_batch_must_split_over_processes_and_micro_batches():
    train = load_config(data=tiny(train={"batch_size": 9, "accumulate_steps": 3})).train
    assert micro_batch_size(train, 1) == 3
    with pytest.raises(ConfigError, match=r"multiple of processes x train.accumulate_steps \(2 x 3\)"):
        micro_batch_size(train, 2)
    with pytest.raises(ConfigError, match="multiple of accumulate_steps"):
        load_config(data=tiny(train={"batch_size": 6, "accumulate_steps": 4}))


def test_nproc_relaunches_the_same_command_without_the_flag():
    assert strip_option(["train", "c.yaml", "--nproc", "2", "--set", "a=1", "--nproc=3", "--quiet"], "--nproc") == [
        "train", "c.yaml", "--set", "a=1", "--quiet"]


def test_accumulated_micro_batches_equal_the_whole_batch(tmp_path):
    """One process: batch 8 in 4 micro-batches of 2 gives the run of batch 8 in one go."""
    base = tiny(benchmark=BENCH, method={"name": "seq_lora", "options": {"rank": 2}}, train=TRAIN)
    one_process(write_config(tmp_path / "a.yaml", base), tmp_path / "whole")
    accumulated = {**base, "train": {**base["train"], "accumulate_steps": 4}}
    one_process(write_config(tmp_path / "b.yaml", accumulated), tmp_path / "accumulated")
    assert_same_run(tmp_path / "whole", tmp_path / "accumulated")


# -- whole runs: torchrun with 2 processes against 1 process ---------------------------------------------------
def test_two_processes_equal_one_seq_lora_with_accumulation(tmp_path):
    """seq_lora, linear head initialised from class means: `sdlora train --nproc 2` with 2 accumulated
    micro-batches per rank."""
    base = tiny(benchmark=BENCH, method={"name": "seq_lora", "options": {"rank": 2},
                                         "classifier": {"head_init": "class_mean"}}, train=TRAIN)
    one_process(write_config(tmp_path / "one.yaml", base), tmp_path / "one")
    config = write_config(tmp_path / "two.yaml", {**base, "train": {**base["train"], "accumulate_steps": 2}})
    done = subprocess.run([sys.executable, "-m", "sdlora", "train", str(config), "--out", str(tmp_path / "two"),
                           "--quiet", "--nproc", "2"], env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run written to") == 1  # rank 0 alone reports
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert [final_state(tmp_path / run)[0]["processes"] for run in ("one", "two")] == [1, 2]  # recorded
    assert sorted(p.name for p in (tmp_path / "two" / "seed-3").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "seed-3").iterdir())


def worker_pids(launcher: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes (Linux /proc)."""
    found = {}
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        ranks = [int(e.split(b"=", 1)[1]) for e in env if e.startswith(b"RANK=")]
        if ranks:
            found[ranks[0]] = int(child)
    return found


def test_two_processes_killed_mid_task_resume_to_the_one_process_run(tmp_path):
    """SD-LoRA with class-mean head init, prototypes and SDC (every data statistic is reduced over ranks).
    Rank 1 is SIGKILLed as soon as task 2's mid-task checkpoint is on disk: torchrun stops rank 0 too and
    exits non-zero; the resumed 2-process run ends with the 1-process results."""
    data = tiny(benchmark=BENCH, method={"name": "sdlora", "options": {"rank": 2}, "classifier": {
        "kind": "prototypes", "drift": "sdc", "head_init": "class_mean"}}, train=TRAIN)
    config = write_config(tmp_path / "run.yaml", data)
    one_process(config, tmp_path / "one")
    out = tmp_path / "two"
    pointer = out / "seed-3" / "checkpoints" / "latest.json"
    proc = subprocess.Popen(torchrun(config, out), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    killed = False
    while proc.poll() is None and not killed:
        try:
            position = json.loads(pointer.read_text())["position"]
        except (OSError, ValueError, KeyError):
            position = None
        if position == {"task": 1, "epochs_done": 1, "finished": False}:
            os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
            killed = True
        time.sleep(0.005)
    _, stderr = proc.communicate(timeout=120)  # no hang: torchrun ends rank 0 as well
    assert killed and proc.returncode != 0
    assert "FAILED" in stderr or "Signal 9" in stderr
    assert json.loads((out / "seed-3" / "results.json").read_text())["status"] != "complete"
    resumed = subprocess.run(torchrun(config, out, "--resume"), env=environment(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "one", out)


TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}
#: dropout draws other masks on 2 ranks than in 1 process (the ViT of the other tests has none)
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def test_two_processes_equal_one_with_length_aware_text_passes(tmp_path):
    """Length-aware passes under sharding: each rank sorts its strided shard of the feature and evaluation
    passes and restores its order before the shards are gathered; SD-LoRA with prototypes, SDC and class-mean
    head init on a tiny BERT over texts of 1 to 9 words ends as in one process."""
    phrases = ["alarm clock", "pay my bill", "weather in paris", "play some jazz", "book a table", "call mom"]
    rows = ["text,label"] + [f"{' '.join([p] * (1 + (i * 7) % 4))} {i},{c}" for c, p in enumerate(phrases)
                             for i in range(8)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "test.csv").write_text("\n".join(rows[:1] + rows[1::3]) + "\n")
    data = tiny(benchmark={"name": "text_files", "data_root": str(tmp_path), "init_classes": 2, "increment": 2,
                           "options": {"train_file": "train.csv", "test_file": "test.csv"}},
                backbone={"name": "hf_encoder", "options": {"random_init_config": TINY_BERT, "max_length": 16,
                                                             "config_overrides": NO_DROPOUT}},
                method={"name": "sdlora", "options": {"rank": 2}, "classifier": {
                    "kind": "prototypes", "drift": "sdc", "head_init": "class_mean"}},
                train={**TRAIN, "eval_batch_size": 3})
    assert load_config(data=data).train.length_aware_passes
    config = write_config(tmp_path / "run.yaml", data)
    one_process(config, tmp_path / "one")
    done = subprocess.run([sys.executable, "-m", "sdlora", "train", str(config), "--out", str(tmp_path / "two"),
                           "--quiet", "--nproc", "2"], env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(tmp_path / "one", tmp_path / "two")
