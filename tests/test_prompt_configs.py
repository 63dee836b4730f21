"""The prompt baselines' vision configs (configs/vision/prompts/): one per method and setting of SD-LoRA's Tables
2, 3 and 6, each pinning the settings of the method's release for that dataset (the published numbers are
checked in test_prompt_methods.py); a wrong edit of a base or a setting fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdlora.config import load_config, read_yaml_file
from sdlora.engine.build import resolve_classifier

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "vision" / "prompts"
METHODS = ("l2p", "dualprompt", "coda_prompt", "hide_prompt")
SETTINGS = ("imagenet_r_5", "imagenet_r_10", "imagenet_r_20", "imagenet_a_10", "domainnet_5", "cifar100_10",
            "cub200_10")

#: the ImageNet-R N=10 settings of each method (its bases/<method>.yaml): train fields and the head's learning rate
#: (`method.classifier.head_lr`), then method options
BASE = {
    "l2p": ({"lr": 0.03, "head_lr": None, "epochs": 50, "scheduler": "constant", "milestones": [],
             "batch_size": 128, "grad_clip": 1.0},
            {"pool_size": 10, "prompt_length": 5, "top_n": 5, "pull_weight": 0.1}),
    "dualprompt": ({"lr": 0.005, "head_lr": None, "epochs": 50, "scheduler": "constant", "milestones": [],
                    "batch_size": 128, "grad_clip": 1.0},
                   {"g_layers": [0, 1], "g_length": 5, "e_layers": [2, 3, 4], "e_length": 20, "pull_weight": 1.0}),
    "coda_prompt": ({"lr": 0.001, "head_lr": None, "epochs": 50, "scheduler": "quarter_cosine", "milestones": [],
                     "batch_size": 128, "grad_clip": None},
                    {"pool_size": 100, "prompt_length": 8, "layers": [0, 1, 2, 3, 4], "ortho_weight": 0.0}),
    "hide_prompt": ({"lr": 0.03 * 24 / 256, "head_lr": 0.003 * 24 / 256, "epochs": 150, "scheduler": "cosine",
                     "milestones": [], "batch_size": 192, "grad_clip": 1.0},
                    {"e_layers": [0, 1, 2, 3, 4], "e_length": 20, "prompt_momentum": 0.01, "contrast_weight": 0.5,
                     "tii_epochs": 20, "tii_lr": 0.0005 * 24 / 256, "ca_epochs": 30, "ca_lr": 0.005,
                     "tii_ca_lr": 0.005 * 24 / 256}),
}
#: what the releases change per dataset (train fields and method options together); the rest is BASE
CHANGES = {
    ("l2p", "domainnet_5"): {"epochs": 5},  # CODA-Prompt's DomainNet schedule (our choice)
    ("l2p", "cifar100_10"): {"epochs": 5},  # l2p-pytorch configs/cifar100_l2p.py
    ("l2p", "cub200_10"): {"epochs": 5},  # HiDe-Prompt configs/cub_l2p.py
    ("dualprompt", "domainnet_5"): {"epochs": 5},  # CODA-Prompt's DomainNet schedule (our choice)
    ("dualprompt", "cifar100_10"): {"epochs": 5, "lr": 0.03, "e_length": 5},  # configs/cifar100_dualprompt.py
    ("dualprompt", "cub200_10"): {"epochs": 5, "lr": 0.03},  # HiDe-Prompt configs/cub_dualprompt.py
    ("coda_prompt", "domainnet_5"): {"epochs": 5},  # configs/domainnet_prompt.yaml
    ("coda_prompt", "cifar100_10"): {"epochs": 20},  # configs/cifar-100_prompt.yaml
    ("hide_prompt", "cifar100_10"): {"epochs": 50, "scheduler": "multistep", "milestones": [31], "e_length": 5,
                                     "contrast_weight": 0.1},  # train_cifar100_vit.sh
    ("hide_prompt", "cub200_10"): {"epochs": 50, "scheduler": "multistep", "milestones": [31], "head_lr": None,
                                   "contrast_weight": 0.01, "tii_lr": 0.01 * 24 / 256},  # train_cub_vit.sh
}
#: settings whose hyper-parameters no release gives for that method and dataset
OUR_CHOICE = {(m, "imagenet_a_10") for m in METHODS} | {("l2p", "domainnet_5"), ("dualprompt", "domainnet_5"),
                                                        ("hide_prompt", "domainnet_5"), ("coda_prompt", "cub200_10")}
CASES = [(m, s) for m in METHODS for s in SETTINGS]


def test_every_prompt_setting_is_shipped():
    assert sorted(p.stem for p in FOLDER.glob("*.yaml")) == sorted(f"{s}_{m}" for m, s in CASES)
    assert sorted(p.name for p in (FOLDER / "bases").glob("*.yaml")) == sorted(f"{m}.yaml" for m in METHODS)
    assert {(m, s) for m, s in CHANGES} | OUR_CHOICE <= set(CASES)


@pytest.mark.parametrize(("method", "setting"), CASES, ids=[f"{s}_{m}" for m, s in CASES])
def test_prompt_config_pins_the_release_settings(method, setting):
    cfg = load_config(FOLDER / f"{setting}_{method}.yaml")
    train, options = BASE[method]
    expected = {**train, **options, **CHANGES.get((method, setting), {})}
    classifier = resolve_classifier(cfg)
    got = {k: getattr(classifier if k == "head_lr" else cfg.train, k) if k in train else cfg.method.options[k]
           for k in expected}
    assert got == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in expected.items()}
    assert cfg.train.optimizer == "adam" and list(cfg.train.betas) == [0.9, 0.999]
    assert cfg.train.weight_decay == 0.0 and cfg.train.first_task.lr is None
    if method == "hide_prompt":  # the same statistics, TII head and alignment batch on every dataset
        o = cfg.method.options
        assert (o["statistics"], o["centroids"], o["tii_hidden"], o["init_from_previous"],
                o["contrast_temperature"]) == ("multi_centroid", 10, [2], True, 0.8)
        # the TII run's global batch 8 x 24; the alignments' per-process 24 x 5 and 24 (all 8 draw the same)
        assert (o["tii_batch_size"], o["ca_batch_size"], o["tii_ca_batch_size"]) == (192, 120, 24)
        assert cfg.train.min_lr == (1e-5 if cfg.train.scheduler == "cosine" else 0.0)  # read by cosine only
    if method == "dualprompt":  # both releases: shared_prompt_pool True, shared_prompt_key False
        assert (cfg.method.options["init_from_previous"], cfg.method.options["key_from_previous"]) == (True, False)
    if cfg.train.scheduler == "multistep":  # timm StepLR(30, 0.1) stepped after each epoch: from epoch 31 on
        assert cfg.train.gamma == 0.1
    assert ("our choice" in cfg.source) == ((method, setting) in OUR_CHOICE)


@pytest.mark.parametrize(("method", "setting"), CASES, ids=[f"{s}_{m}" for m, s in CASES])
def test_prompt_settings_state_only_what_differs(method, setting):
    """Each setting extends its method's base (ImageNet-R N=5 / 20: the N=10 file) and never restates the
    optimiser; the method bases extend the official harness."""
    raw = read_yaml_file(FOLDER / f"{setting}_{method}.yaml")
    parent = f"imagenet_r_10_{method}.yaml" if setting in ("imagenet_r_5", "imagenet_r_20") else f"bases/{method}.yaml"
    assert raw["base"] == parent
    assert "optimizer" not in raw.get("train", {}) and "betas" not in raw.get("train", {})
    assert set(raw.get("method", {})) <= {"options", "classifier"}  # the name comes from the base
    assert read_yaml_file(FOLDER / "bases" / f"{method}.yaml")["base"] == "../../bases/official.yaml"
