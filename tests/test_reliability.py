"""Nothing lost: checksummed checkpoints with a fallback, a lock per output folder, failing writes."""

import io
import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import torch

from engine_helpers import results_without_timing, tiny
from sdlora.config import load_config
from sdlora.engine import checkpoint
from sdlora.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from sdlora.engine.lock import OutputLocked
from sdlora.engine.runner import run_config


def run(out, data, **kw):
    return run_config(load_config(data=data), out, quiet=True, stream=io.StringIO(), **kw)


def save_three(folder):
    for counter in range(3):
        save_checkpoint(folder, {"counter": counter}, {"w": torch.full((64,), float(counter))})


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor data: the file still parses, only the checksum sees it
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [truncate, flip_a_byte])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_used(tmp_path, caplog, damage):
    save_three(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("tensors-*")) == ["tensors-000001.safetensors",
                                                                 "tensors-000002.safetensors"]
    damage(tmp_path / "tensors-000002.safetensors")
    with caplog.at_level(logging.WARNING, logger="sdlora"):
        meta, tensors = load_checkpoint(tmp_path)
    assert meta["counter"] == 1 and torch.equal(tensors["w"], torch.full((64,), 1.0))
    assert "latest.json: tensors-000002.safetensors" in caplog.text
    assert "using the previous checkpoint (tensors-000001.safetensors) instead" in caplog.text
    # the next save replaces the damaged file and keeps the good one as the previous checkpoint
    save_checkpoint(tmp_path, {"counter": 2}, {"w": torch.full((64,), 7.0)})
    assert json.loads((tmp_path / "previous.json").read_text())["tensors"] == "tensors-000001.safetensors"
    assert load_checkpoint(tmp_path)[0]["counter"] == 2


def test_no_intact_checkpoint_is_an_error_never_a_silent_load(tmp_path):
    save_three(tmp_path)
    truncate(tmp_path / "tensors-000002.safetensors")
    flip_a_byte(tmp_path / "tensors-000001.safetensors")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint in .*latest.json: tensors-000002.safetensors is "
                                              r"\d+ bytes, \d+ were written \(truncated\?\); previous.json: "
                                              r"tensors-000001.safetensors does not match its recorded sha256"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest.json").write_text(json.dumps({"tensors": "../../etc/passwd"}))
    with pytest.raises(CheckpointError, match=r"\.\./\.\./etc/passwd is missing"):
        load_checkpoint(tmp_path)


class Interrupt(Exception):
    pass


def test_resume_after_damage_and_after_a_failing_write_matches_the_uninterrupted_run(tmp_path, monkeypatch, caplog):
    data = tiny(train={"epochs": 2, "optimizer": "adam", "lr": 0.01})
    run(tmp_path / "ref", data)
    reference = results_without_timing(tmp_path / "ref" / "seed-3")

    def stop(task, epochs, finished):
        if (task, epochs, finished) == (1, 1, False):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "cut", data, on_checkpoint=stop)
    ckpt = tmp_path / "cut" / "seed-3" / "checkpoints"
    flip_a_byte(ckpt / json.loads((ckpt / "latest.json").read_text())["tensors"])

    real_save, calls = checkpoint.save_file, []

    def full_disk(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as handle:
                handle.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(checkpoint, "save_file", full_disk)
    with caplog.at_level(logging.WARNING, logger="sdlora"), pytest.raises(
            CheckpointError, match=r"could not write a checkpoint into .*checkpoints \(\[Errno 28\] No space left on "
                                   r"device\); the previous checkpoint is left as it was"):
        run(tmp_path / "cut", data, resume=True)
    assert "does not match its recorded sha256" in caplog.text and "using the previous checkpoint" in caplog.text
    assert not list(ckpt.glob(".*.tmp"))  # the half-written file is gone
    meta, _ = load_checkpoint(ckpt)  # and what is on disk verifies
    monkeypatch.setattr(checkpoint, "save_file", real_save)
    run(tmp_path / "cut", data, resume=True)
    assert results_without_timing(tmp_path / "cut" / "seed-3") == reference


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_run_on_a_folder_is_refused_and_a_stale_lock_taken_over(tmp_path, caplog):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(OutputLocked, match=rf"{out} is in use by another run \(pid {os.getpid()} on "):
        run(out, tiny(benchmark={"num_tasks": 1}))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written beside the other run's lock
    stale = dead_pid()
    (out / ".lock").write_text(json.dumps({"pid": stale, "host": socket.gethostname()}))
    with caplog.at_level(logging.WARNING, logger="sdlora"):
        run(out, tiny(benchmark={"num_tasks": 1}), resume=True)
    assert f"taking over the stale lock {out / '.lock'} of pid {stale}" in caplog.text
    assert not (out / ".lock").exists() and (out / "seed-3" / "results.json").is_file()
