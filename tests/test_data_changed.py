"""A run's data edited after training: --resume, eval and learn refuse classes that moved, rather than mapping
every label onto another class."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from engine_helpers import Interrupt
from export_helpers import text_run_config, write_text_files
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine.runner import run_config
from sdlora.serving.evaluate import evaluate_run

MOVED = "the benchmark's classes are not the ones the run trained on"


def files_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_eval_and_learn_refuse_a_train_file_whose_classes_moved(tmp_path, capsys):
    data = text_run_config(tmp_path / "data")
    train_file = Path(data["benchmark"]["options"]["train_file"])
    original = train_file.read_text()
    shifted = original + "zzz first,aaa\nzzz second,aaa\n"  # 'aaa' sorts first: every old label would move by one

    def stop_after_task_1(task: int, epochs: int, finished: bool) -> None:
        if finished and task == 0:
            raise Interrupt

    def go(**kw) -> None:
        run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO(), **kw)

    with pytest.raises(Interrupt):
        go(on_checkpoint=stop_after_task_1)
    train_file.write_text(shifted)
    with pytest.raises(ValueError, match=rf"--resume: {MOVED} \(label: trained -> now: 0: 'alarm clock' -> 'aaa'"):
        go(resume=True)
    train_file.write_text(original)
    go(resume=True)
    seed = next((tmp_path / "run").glob("seed-*"))
    final = json.loads((seed / "results.json").read_text())["metrics"]["final_accuracy"]
    assert evaluate_run(tmp_path / "run")["accuracy"] == pytest.approx(final, abs=1e-3)

    train_file.write_text(shifted)
    with pytest.raises(ValueError, match=MOVED):
        evaluate_run(tmp_path / "run")
    new = write_text_files(tmp_path / "new", ["order pizza", "call mom"])
    before = files_digest(tmp_path / "run")
    capsys.readouterr()
    assert main(["learn", str(tmp_path / "run"), "--data", new["train_file"], "--test", new["test_file"],
                 "--quiet"]) != 0
    assert MOVED in capsys.readouterr().err
    assert files_digest(tmp_path / "run") == before  # the run is left as it was
