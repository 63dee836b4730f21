"""Bad input: one clear line (which key, what is allowed, what was tried) and nothing written to --out."""

import json

import pytest
import yaml

from engine_helpers import tiny
from sdlora.cli import main
from sdlora.config import load_config, parse_yaml


def write(tmp_path, data, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_yaml_numbers_with_exponents_are_floats(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tiny()).replace("lr: 0.05", "lr: 1e-3"))
    cfg = load_config(path, ["train.weight_decay=5E-4", "train.scheduler=multistep", "train.gamma=-2.5e+1"])
    assert cfg.train.lr == 0.001 and cfg.train.weight_decay == 0.0005 and cfg.train.gamma == -25.0
    assert parse_yaml("[1e3, .5, 1_000, 0x10, +1.e2, 1e, e3, 1.0.0]", "t") == [1000.0, 0.5, 1000, 16, 100.0,
                                                                              "1e", "e3", "1.0.0"]


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("benchmark: {name: synthetic\nmethod: x\n")
    assert main(["train", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"sdlora: error: {path}:2:7: YAML error: while parsing a flow mapping expected ',' or '}}'" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    path.write_text("train:\n  lr: 1\n  lr: 2\n")
    with pytest.raises(ValueError, match=r"broken.yaml:3:3: YAML error: .*duplicate key 'lr'"):
        load_config(path)


BAD = [
    (["method.options.rank=0"], "method.options.rank: must be >= 1, got 0"),
    (["method.options.rnak=3"], "method.options: unknown key(s) 'rnak' (did you mean 'rank'?); allowed: ablation"),
    (["train.optimizer=adamm"], "train.optimizer: 'adamm' is not allowed; allowed: 'sgd' | 'adam' | 'adamw' "
                                "(did you mean 'adam'?)"),
    (["method.name=sdlroa"], "unknown method 'sdlroa' (did you mean 'sdlora'?); known methods: coda_prompt"),
    (["method.options.rank_schedule=[[1, 4]]"], "method.options: rank_schedule must start with a pair for task 0, "
                                                "got [[1, 4]]"),
    (["backbone.options.model=vit_tiny_patch16_2244"],
     "backbone.options: timm 1.0.31 does not know the model 'vit_tiny_patch16_2244' (looked up "
     "'vit_tiny_patch16_2244' in timm's model registry) (did you mean 'vit_tiny_patch16_224'?)"),
    (["benchmark.increment=1", "benchmark.init_classes=1"],
     "method.classifier.loss: 'current' with one class per task (benchmark.init_classes: 1, benchmark.increment: 1) "
     "gives an identically zero loss (cross-entropy over a single logit), so nothing would be learned; set "
     "method.classifier.loss: seen"),
    (["train.lr=1e-3x"], "train.lr: expected float, got '1e-3x' (str)"),
    (["train.lr=[1"], "--set train.lr:1:3: YAML error: while parsing a flow sequence expected ',' or ']'"),
    (["train..lr=1"], "--set 'train..lr=1': the key must be dot-separated names, like train.lr"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[b[0][0] for b in BAD])
def test_bad_option_fails_before_the_output_folder_is_touched(tmp_path, capsys, overrides, message):
    import timm

    message = message.replace("1.0.31", timm.__version__)
    cfg = write(tmp_path, tiny(method={"name": "sdlora", "options": {"rank": 2}}))
    args = ["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"sdlora: error: {message}" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_failed_start_leaves_nothing_so_the_same_out_works(tmp_path, capsys, monkeypatch):
    from sdlora.backbones import hf_encoder

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your internet.")

    monkeypatch.setattr(hf_encoder.AutoConfig, "from_pretrained", offline)
    cfg = write(tmp_path, tiny(backbone={"name": "hf_encoder", "options": {"model": "nobody/no-such-model"}}))
    out = tmp_path / "out"
    assert main(["train", str(cfg), "--out", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert ("sdlora: error: hf_encoder: could not load 'nobody/no-such-model' from hub 'nobody/no-such-model' "
            "(We couldn't connect to 'https://huggingface.co' to load the files.); set backbone.options.model to a "
            "local folder or a hub id reachable from this machine\n") in err
    assert "Traceback" not in err and not out.exists()
    assert main(["-v", "train", str(cfg), "--out", str(out), "--quiet"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err  # -v shows where it came from
    good = write(tmp_path, tiny(benchmark={"num_tasks": 1}, method={"name": "sdlora", "options": {"rank": 2}}))
    assert main(["train", str(good), "--out", str(out), "--quiet"]) == 0  # the same --out, no --overwrite


def test_resolved_options_are_recorded(tmp_path):
    cfg = write(tmp_path, tiny(benchmark={"num_tasks": 1}, method={"name": "sdlora", "options": {"rank": 2}}))
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    config = json.loads((tmp_path / "out" / "seed-3" / "results.json").read_text())["config"]
    assert config["method"]["options"]["rank"] == 2
    assert config["method"]["options"]["current_mode"] == "continuous"  # a default, resolved and recorded
    assert config["benchmark"]["options"]["shape"] == [3, 32, 32]
    assert config["backbone"]["options"]["pretrained_file"] is None
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved == config
    # resuming with the unresolved config is the same run
    assert main(["train", str(cfg), "--out", str(tmp_path / "out"), "--quiet", "--resume"]) == 0
