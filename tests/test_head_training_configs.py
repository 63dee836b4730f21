"""The classifier's training keys (`loss`, `freeze_old_head`, `head_lr`) moved from `train:` into the classifier
config: every shipped config resolves to what its `train.*` keys resolved to before the move."""

import warnings
from pathlib import Path

import pytest

from sdlora.config import load_config, read_config_file
from sdlora.engine.build import resolve_classifier

ROOT = Path(__file__).resolve().parents[1]
#: plugin names for the sections a base file leaves to the configs that extend it (they name no plugin options)
STAND_INS = {"benchmark": "synthetic", "backbone": "timm_vit", "method": "sdlora"}

#: config -> (train.loss, train.freeze_old_head, train.head_lr) as main resolved them before the move (c0e5756),
#: generated once with this file's `completed` and, from a checkout of c0e5756 (PYTHONPATH=src):
#:     for p in sorted(Path("configs").rglob("*.yaml")):
#:         t = load_config(data=completed(p)).train
#:         print(f"    {str(p)!r}: {(t.loss, t.freeze_old_head, t.head_lr)!r},")
#: A config added later: add its row (what it resolves to now).
BEFORE = {
    'configs/ablations/clinc150_decoupled_single.yaml': ('current', True, None),
    'configs/ablations/clinc150_first_direction_only.yaml': ('current', True, None),
    'configs/ablations/clinc150_fixed_old.yaml': ('current', True, None),
    'configs/ablations/imagenet_r_10_decoupled_single.yaml': ('current', True, None),
    'configs/ablations/imagenet_r_10_first_direction_only.yaml': ('current', True, None),
    'configs/ablations/imagenet_r_10_fixed_old.yaml': ('current', True, None),
    'configs/baselines/clinc150_coda_prompt.yaml': ('current', True, None),
    'configs/baselines/clinc150_coda_prompt_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_dualprompt.yaml': ('current', True, None),
    'configs/baselines/clinc150_dualprompt_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_frozen_lda.yaml': ('current', True, None),
    'configs/baselines/clinc150_frozen_ridge_rf.yaml': ('current', True, None),
    'configs/baselines/clinc150_hide_prompt.yaml': ('current', True, None),
    'configs/baselines/clinc150_inflora.yaml': ('current', True, None),
    'configs/baselines/clinc150_inflora_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_joint.yaml': ('current', True, None),
    'configs/baselines/clinc150_l2p.yaml': ('current', True, None),
    'configs/baselines/clinc150_l2p_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_linear_probe.yaml': ('current', True, None),
    'configs/baselines/clinc150_ncm.yaml': ('current', True, None),
    'configs/baselines/clinc150_sdlora_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_sdlora_official_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_sdlora_paper_linear_head.yaml': ('current', True, None),
    'configs/baselines/clinc150_seq_lora.yaml': ('current', True, None),
    'configs/baselines/clinc150_seq_lora_linear_head.yaml': ('current', True, None),
    'configs/clinc150.yaml': ('current', True, None),
    'configs/examples/digits_image_folder.yaml': ('current', True, None),
    'configs/hwu64.yaml': ('current', True, None),
    'configs/vision/bases/official.yaml': ('current', True, None),
    'configs/vision/bases/paper.yaml': ('current', True, None),
    'configs/vision/cifar100_10_official.yaml': ('current', True, None),
    'configs/vision/cifar100_10_paper.yaml': ('current', True, None),
    'configs/vision/cub200_10_official.yaml': ('current', True, None),
    'configs/vision/cub200_10_paper.yaml': ('current', True, None),
    'configs/vision/domainnet_5_official.yaml': ('current', True, None),
    'configs/vision/domainnet_5_paper.yaml': ('current', True, None),
    'configs/vision/imagenet_a_10_official.yaml': ('current', True, None),
    'configs/vision/imagenet_a_10_official_json.yaml': ('current', True, None),
    'configs/vision/imagenet_a_10_paper.yaml': ('current', True, None),
    'configs/vision/imagenet_r_10_kd_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_10_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_10_paper.yaml': ('current', True, None),
    'configs/vision/imagenet_r_10_rr_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_20_kd_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_20_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_20_paper.yaml': ('current', True, None),
    'configs/vision/imagenet_r_20_rr_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_5_kd_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_5_official.yaml': ('current', True, None),
    'configs/vision/imagenet_r_5_paper.yaml': ('current', True, None),
    'configs/vision/imagenet_r_5_rr_official.yaml': ('current', True, None),
    'configs/vision/inflora/bases/inflora.yaml': ('current', True, None),
    'configs/vision/inflora/bases/transforms.yaml': ('current', True, None),
    'configs/vision/inflora/cifar100_10.yaml': ('current', True, None),
    'configs/vision/inflora/cub200_10.yaml': ('current', True, None),
    'configs/vision/inflora/domainnet_5.yaml': ('current', True, 0.01),
    'configs/vision/inflora/imagenet_a_10.yaml': ('current', True, None),
    'configs/vision/inflora/imagenet_r_10.yaml': ('current', True, None),
    'configs/vision/inflora/imagenet_r_20.yaml': ('current', True, None),
    'configs/vision/inflora/imagenet_r_5.yaml': ('current', True, None),
    'configs/vision/prompts/bases/coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/bases/dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/bases/hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/bases/l2p.yaml': ('current', True, None),
    'configs/vision/prompts/cifar100_10_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/cifar100_10_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/cifar100_10_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/cifar100_10_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/cub200_10_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/cub200_10_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/cub200_10_hide_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/cub200_10_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/domainnet_5_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/domainnet_5_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/domainnet_5_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/domainnet_5_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_a_10_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_a_10_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_a_10_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/imagenet_a_10_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_10_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_10_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_10_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/imagenet_r_10_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_20_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_20_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_20_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/imagenet_r_20_l2p.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_5_coda_prompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_5_dualprompt.yaml': ('current', True, None),
    'configs/vision/prompts/imagenet_r_5_hide_prompt.yaml': ('current', True, 0.00028125),
    'configs/vision/prompts/imagenet_r_5_l2p.yaml': ('current', True, None),
}


def completed(path: Path) -> dict:
    """The config file with its bases; a base file's unnamed plugin sections get `STAND_INS`."""
    data = read_config_file(path)
    for section, name in STAND_INS.items():
        if not isinstance(data.get(section), dict) or "name" not in data[section]:
            data[section] = {**(data.get(section) or {}), "name": name}
    return data


def test_the_table_covers_every_shipped_config():
    assert sorted(BEFORE) == sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_each_config_trains_its_head_as_before(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped configs use the new keys only
        classifier = resolve_classifier(load_config(data=completed(ROOT / name)))
    assert (classifier.loss, classifier.freeze_old_head, classifier.head_lr) == BEFORE[name]
