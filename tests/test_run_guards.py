"""What a run folder refuses: an unfinished run used as a model, --resume with --overwrite, a failed --overwrite
that would lose the old run, repeated seeds."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine_helpers import Interrupt, tiny
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine.runner import run_config
from sdlora.typed import ConfigError


def go(data: dict, out, **kw) -> None:
    run_config(load_config(data=data), out, quiet=True, stream=io.StringIO(), **kw)


def test_an_unfinished_run_is_not_a_model_until_resumed(tmp_path, capsys):
    data = tiny(train={"epochs": 1})

    def stop_after_task_1(task: int, epochs: int, finished: bool) -> None:
        if finished and task == 0:
            raise Interrupt

    with pytest.raises(Interrupt):
        go(data, tmp_path / "run", on_checkpoint=stop_after_task_1)
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "images" / "a.png")
    capsys.readouterr()
    for command in (["eval", str(tmp_path / "run")], ["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.st")],
                    ["predict", str(tmp_path / "run"), str(tmp_path / "images")]):
        assert main([*command, "--quiet"]) != 0, command
        err = capsys.readouterr().err
        assert "the run is not finished (it stopped after task 1); finish it first with `sdlora train" in err
        assert f"config.yaml --out {tmp_path / 'run'} --resume`" in err
    go(data, tmp_path / "run", resume=True)
    assert main(["eval", str(tmp_path / "run"), "--quiet"]) == 0


def test_overwrite_that_fails_on_its_data_keeps_the_old_run(tmp_path):
    data = tiny(train={"epochs": 1})
    go(data, tmp_path / "run")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    broken = tiny(train={"epochs": 1}, benchmark={"num_tasks": 9})
    with pytest.raises(ValueError, match="num_tasks=9"):
        go(broken, tmp_path / "run", overwrite=True)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before
    with pytest.raises(ValueError, match="give one of them"):
        go(data, tmp_path / "run", resume=True, overwrite=True)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="--out .*file is a file; a run writes a folder"):
        go(data, tmp_path / "file")


def test_a_seed_given_twice_is_refused():
    with pytest.raises(ConfigError, match=r"seeds: \[1\] given more than once"):
        load_config(data=tiny(seeds=[1, 2, 1]))


def test_nproc_refuses_a_batch_the_processes_cannot_share_before_launching(tmp_path, capsys):
    import yaml

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny(train={"batch_size": 5})))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--nproc", "2"]) == 2  # no torchrun started
    assert "train.batch_size (5) is the global batch: it must be a multiple of processes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
