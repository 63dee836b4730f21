import json

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

from engine_helpers import TINY_VIT, tiny
from sdlora.cli import main


@pytest.fixture
def config_file(tmp_path):
    def write(data, name="cfg.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def test_train_eval_export_report_end_to_end(tmp_path, config_file, capsys):
    cfg = config_file(tiny(method={"name": "sdlora", "options": {"rank": 2}}, name="tiny-sdlora"))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 0
    printed = capsys.readouterr().out
    assert "final accuracy (sample-weighted)" in printed and "average incremental accuracy (AAA)" in printed
    result = json.loads((out / "seed-3" / "results.json").read_text())
    assert result["config"]["train"]["epochs"] == 1 and result["status"] == "complete"

    assert main(["eval", str(out)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["tasks"] == 3
    assert evaluated["per_task"] == pytest.approx(result["accuracy_matrix"][-1], abs=1e-4)
    assert evaluated["accuracy"] == pytest.approx(result["metrics"]["final_accuracy"], abs=1e-4)

    exported = tmp_path / "model.safetensors"
    assert main(["export", str(out), "--out", str(exported)]) == 0
    state = load_file(str(exported))
    vit = timm.create_model(TINY_VIT["model"], pretrained=False, num_classes=0, **TINY_VIT["model_kwargs"])
    vit.load_state_dict({k[9:]: v for k, v in state.items() if k.startswith("backbone.")}, strict=True)
    assert state["head.weight"].shape == (6, 32)
    # the merged plain timm model + head reproduces the run's predictions
    from sdlora.config import load_config
    from sdlora.engine.build import build_benchmark, build_scenario

    run_cfg = load_config(cfg)
    scenario = build_scenario(run_cfg, build_benchmark(run_cfg), 3)
    test = scenario.eval_set(2)
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    vit.eval()
    with torch.no_grad():
        pred = (vit(x) @ state["head.weight"].T + state["head.bias"]).argmax(1)
    assert 100 * (pred == y).float().mean().item() == pytest.approx(result["metrics"]["final_accuracy"], abs=1e-4)

    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    assert "tiny-sdlora" in table and f"{result['metrics']['final_accuracy']:.2f}" in table


def test_list_names_every_registry(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    for word in ("methods:", "sdlora", "linear_probe", "benchmarks:", "synthetic", "backbones:", "timm_vit"):
        assert word in printed


@pytest.mark.parametrize(
    ("data", "message", "code"),
    [
        (tiny(method={"name": "nope"}), "unknown method 'nope'; known methods:", 2),
        (tiny(benchmark={"name": "nope"}), "unknown benchmark 'nope'; known benchmarks:", 2),
        (tiny(train={"lrr": 1}), "train: unknown key(s) 'lrr'", 2),
    ],
)
def test_bad_input_exits_non_zero_with_a_message(tmp_path, config_file, capsys, data, message, code):
    assert main(["train", str(config_file(data)), "--out", str(tmp_path / "x"), "--quiet"]) == code
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_config_and_occupied_output(tmp_path, config_file, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = config_file(tiny(benchmark={"num_tasks": 1}))
    out = tmp_path / "run"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 1
    assert "holds no run" in capsys.readouterr().err


def test_train_and_learn_say_what_they_run_first(tmp_path, config_file, caplog):
    import logging

    from export_helpers import text_run_config, write_text_files

    cfg = config_file(text_run_config(tmp_path / "data"))
    with caplog.at_level(logging.INFO, logger="sdlora"):
        assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    first = caplog.messages[0].splitlines()
    assert first[0].startswith("sdlora on text_files: 2 tasks x 2 classes (4 of 4 classes); the data holds 24 ")
    assert "backbone hf_encoder" in first[1] and "1 epochs per task, batch 4, sgd lr 0.05" in first[2]
    assert f"output {tmp_path / 'run'}" in first[2]
    caplog.clear()
    new = write_text_files(tmp_path / "new", ["cancel my order", "track my package"])
    with caplog.at_level(logging.INFO, logger="sdlora"):
        assert main(["learn", str(tmp_path / "run"), "--data", new["train_file"], "--test", new["test_file"],
                     "--quiet"]) == 0
    summary = next(m for m in caplog.messages if m.startswith("sdlora on text_files"))
    assert summary.startswith("sdlora on text_files: 3 tasks x 2 classes (6 of 6 classes); the data holds 36 ")


def test_a_bug_shows_its_traceback_a_user_error_one_line(monkeypatch, capsys, tmp_path):
    """The broad ValueError / KeyError read as a user's mistake only when sdlora raised them on purpose."""
    from sdlora import cli

    def buggy(args):
        return int("model")  # what issue 21 found inside predict: a bug, not a message for the user

    parser = cli.build_parser()
    parser._subparsers._group_actions[0].choices["list"].set_defaults(func=buggy)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    with pytest.raises(ValueError, match="invalid literal for int"):
        main(["list"])
    (tmp_path / "in.txt").write_text("hello\n")
    assert main(["predict", str(tmp_path), str(tmp_path / "in.txt"), "--top-k", "0"]) == 1  # sdlora's refusal
    assert capsys.readouterr().err.strip() == "sdlora: error: --top-k must be at least 1, got 0"
