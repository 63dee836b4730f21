"""Seeds and RNG state: set once per run, saved and restored by checkpoints for bit-exact resume."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def data_generator(seed: int, task: int, epoch: int) -> torch.Generator:
    """The shuffling order of one epoch depends only on (seed, task, epoch): resume needs no loader state."""
    return torch.Generator().manual_seed((seed * 1_000_003 + task * 10_007 + epoch) % 2**63)


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every global RNG."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # the global MT19937's legacy state (numpy's stub also allows a dict)
    py_state = random.getstate()
    meta = {
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # this process's GPU only: reading every
        tensors["rng.cuda"] = torch.cuda.get_rng_state()  # device's state would open a context on each of them
    return meta, tensors


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    n = meta["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), *n[2:]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    torch.set_rng_state(tensors["rng.torch"])
    if not torch.cuda.is_available():
        return
    if "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    else:  # checkpoints before: every device's state, "rng.cuda.<i>"
        index = torch.cuda.current_device()
        if f"rng.cuda.{index}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"])


@contextmanager
def rank_streams(seed: int, task: int, epoch: int, rank: int, world_size: int) -> Iterator[None]:
    """One training epoch's random draws (dropout, augmentation, DataLoader workers' seeds) from a stream of this
    rank's own under torchrun. Every rank seeds alike (the model must start equal), so without this rank r's k-th
    sample would get rank 0's k-th dropout masks and crops: N processes, 1/N of the independent draws. The stream is
    seeded from (seed, task, epoch, rank), and afterwards every global RNG is put back as it was, so the ranks'
    streams stay equal outside the epochs (a new task's random head rows) and a checkpoint resumes exactly. One
    process: nothing changes."""
    if world_size == 1:
        yield
        return
    meta, tensors = rng_state()
    stream = ((seed * 1_000_003 + task * 10_007 + epoch) * 65_537 + rank) % 2**63
    random.seed(stream)
    np.random.seed(stream % 2**32)
    torch.manual_seed(stream)  # and every CUDA device's generator
    try:
        yield
    finally:
        set_rng_state(meta, tensors)
