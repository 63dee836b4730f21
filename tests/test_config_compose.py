"""`base:` composition: deep merge, chains, cycles refused; the shipped configs mean what they meant before."""

import json
from pathlib import Path

import pytest
import yaml

from sdlora.config import config_to_dict, load_config
from sdlora.typed import ConfigError

ROOT = Path(__file__).resolve().parents[1]
#: every config file as it was before the configs were rewritten with `base:` (each one complete, no bases),
#: taken with `git show ef7a0e9:<path>`; the test compares what both resolve to, so a key added later with a
#: default does not make it stale. Deliberate changes since: configs/clinc150.yaml lost its inert
#: `norm: product` (continuous mode never normalises; setting `norm` there is now an error); the classifier
#: keys moved from `train` (classifier, head_init, head_init_scale) to `method.classifier` (same values), less
#: the ones a method never used, which are now refused: all of NCM's, the linear probe's drift and sdc_sigma;
#: later the head's training keys (loss, freeze_old_head, head_lr) too (the fixture's are read as their new names).
#: Also the four configs/vision/prompts/imagenet_r_10_*.yaml as they resolved at 017958b (their single
#: `base: ../bases/official.yaml` inlined), before they moved onto per-method bases (prompts/bases/);
#: afterwards `train.grad_clip: 1.0` was added to the L2P and DualPrompt ones (their releases clip at 1.0) and
#: HiDe-Prompt's statistics became the release's multi-centroid ones, and its alignment batches the release's
#: effective 120 / 24 (were 960 / 192). Compared resolved (what a run records), since
#: configs/clinc150.yaml's classifier became the shared top-level `classifier:`
BEFORE = json.loads((ROOT / "tests" / "fixtures" / "configs_before_base.json").read_text())
#: changes of a resolved setting made on purpose since the fixture (config -> {dotted key: value now}): the
#: shared classifier of configs/clinc150.yaml became LDA (chosen on the validation splits of CLINC150 and HWU64,
#: benchmarks/README.md), so every config that inherits it predicts through LDA (its default shrinkage and priors)
LDA_DEFAULT = {"method.classifier.kind": "lda", "method.classifier.shrinkage": "oas",
               "method.classifier.priors": "uniform"}
CHANGED = {name: LDA_DEFAULT for name in ("configs/clinc150.yaml", "configs/baselines/clinc150_inflora.yaml",
                                          "configs/baselines/clinc150_joint.yaml",
                                          "configs/baselines/clinc150_seq_lora.yaml")}


def resolved(cfg):
    """What a run records: every plugin's options and the method's classifier resolved (the shared
    `classifier:` folded into `method.classifier`)."""
    from sdlora.engine.build import validate_plugins

    return config_to_dict(validate_plugins(cfg))


def changed(config: dict, changes: dict) -> dict:
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        assert section[key] != value, f"{dotted} already {value!r}: drop it from CHANGED"
        section[key] = value
    return config


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_rewritten_configs_resolve_to_what_they_were(name):
    assert "base" not in BEFORE[name]
    before = changed(resolved(load_config(data=BEFORE[name])), CHANGED.get(name, {}))
    assert resolved(load_config(ROOT / name)) == before


def test_settings_state_only_what_differs():
    text = (ROOT / "configs" / "vision" / "imagenet_r_20_kd_official.yaml").read_text()
    assert "base: imagenet_r_20_official.yaml" in text and "optimizer" not in text


def write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(data))
    return folder / name


BASE = {"benchmark": {"name": "synthetic", "increment": 2, "options": {"num_classes": 6, "seed": 1}},
        "backbone": {"name": "timm_vit"},
        "method": {"name": "sdlora", "options": {"rank": 4, "norm": "factors"}},
        "train": {"lr": 0.1, "scheduler": "multistep", "milestones": [1, 2]}}


def test_deep_merge_chains_and_relative_paths(tmp_path):
    write(tmp_path / "common", "base.yaml", BASE)
    write(tmp_path / "common", "mid.yaml", {"base": "base.yaml", "train": {"epochs": 3}})
    path = write(tmp_path / "runs", "top.yaml", {"base": "../common/mid.yaml", "train": {"milestones": [5]},
                                                 "benchmark": {"options": {"seed": 2}}})
    cfg = load_config(path)
    assert cfg.benchmark.options == {"num_classes": 6, "seed": 2}  # merged key by key
    assert cfg.train.milestones == [5] and cfg.train.lr == 0.1 and cfg.train.epochs == 3  # lists replace
    assert cfg.method.options == {"rank": 4, "norm": "factors"}


def test_another_plugin_starts_from_scratch(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    path = write(tmp_path, "ncm.yaml", {"base": "base.yaml", "method": {"name": "ncm"}})
    assert load_config(path).method.options == {}  # sdlora's rank would not apply to ncm


def test_cycles_and_missing_bases_are_refused(tmp_path):
    write(tmp_path, "a.yaml", {"base": "b.yaml"})
    write(tmp_path, "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ConfigError, match=r"base: cycle in config bases \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, "c.yaml", {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config(tmp_path / "c.yaml")
    write(tmp_path, "d.yaml", {"base": 3})
    with pytest.raises(ConfigError, match="base: expected a file name or a list of file names, got 3"):
        load_config(tmp_path / "d.yaml")


def test_a_relative_data_root_is_relative_to_its_file_from_any_working_directory(tmp_path, monkeypatch):
    from sdlora.config import load_config

    (tmp_path / "configs" / "bases").mkdir(parents=True)
    (tmp_path / "configs" / "bases" / "data.yaml").write_text(
        "benchmark: {name: clinc150, data_root: ../../data}\nbackbone: {name: hf_encoder}\nmethod: {name: sdlora}\n")
    (tmp_path / "configs" / "run.yaml").write_text("base: bases/data.yaml\n")
    (tmp_path / "configs" / "own.yaml").write_text("base: bases/data.yaml\nbenchmark: {data_root: ../elsewhere}\n")
    monkeypatch.chdir(tmp_path / "configs")  # anywhere but the files' folders
    assert load_config(tmp_path / "configs" / "run.yaml").benchmark.data_root == str(tmp_path / "data")
    assert load_config(tmp_path / "configs" / "own.yaml").benchmark.data_root == str(tmp_path / "elsewhere")
    # a --set value is typed where the command runs: relative to the working directory, as typed
    cfg = load_config(tmp_path / "configs" / "own.yaml", ["benchmark.data_root=here"])
    assert cfg.benchmark.data_root == "here"
