"""An option that would change nothing is refused, naming the key that decides; its default stays accepted (a config
may switch that key without deleting the option, and a saved config that records every default loads again)."""

from __future__ import annotations

import io

import pytest

from engine_helpers import tiny
from sdlora.config import config_to_dict, load_config
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.typed import ConfigError

SDLORA = {"name": "sdlora", "options": {"rank": 2}}
HIDE = {"name": "hide_prompt", "options": {"e_layers": [0]}}


def validate(**sections) -> object:
    return build.validate_plugins(load_config(data=tiny(**sections)))


def with_options(method: dict, **options) -> dict:
    return {**method, "options": {**method["options"], **options}}


CASES = {
    "rank beside a schedule": (dict(method=with_options(SDLORA, rank=7, rank_schedule=[[0, 3]])),
                               r"method.options: rank: 7 would change nothing: a rank_schedule gives every task's "
                               r"rank, from task 0 \(here \[\[0, 3\]\]\)"),
    "rr with its own schedule": (dict(method=with_options(SDLORA, variant="rr", rank_schedule=[[0, 3], [1, 2]])),
                                 r"variant 'rr' shrinks the ranks from rank 2 \(\[\[0, 2\], \[4, 2\], \[8, 1\]\]\); "
                                 "with another rank_schedule"),
    "kd_tau without kd": (dict(method=with_options(SDLORA, kd_tau=0.5)),
                          r"kd_tau: 0.5 would change nothing: it is read only when variant is 'kd' \(here variant: "
                          "'plain'\\)"),
    "magnitude decay beside fixed_old": (dict(method=with_options(SDLORA, ablation="fixed_old",
                                                                  magnitude_weight_decay=5.0)),
                                         "magnitude_weight_decay: 5.0 would change nothing: it is read only when "
                                         "ablation is not 'fixed_old'"),
    "later ranks beside first_direction_only": (dict(method={"name": "sdlora", "options": {
        "ablation": "first_direction_only", "rank_schedule": [[0, 2], [1, 6]]}}),
                                                "rank_schedule entries from task 1 on change nothing"),
    "seq_lora magnitude not decoupled": (dict(method={"name": "seq_lora", "options": {"magnitude_init": 3.0}}),
                                         "magnitude_init: 3.0 would change nothing: it is read only when decoupled "
                                         "is True"),
    "hide centroids without multi_centroid": (dict(method=with_options(HIDE, statistics="variance", centroids=7)),
                                              "centroids: 7 would change nothing"),
    "hide tii_lr without tii epochs": (dict(method=with_options(HIDE, tii_epochs=0, tii_lr=0.1)),
                                       "tii_lr: 0.1 would change nothing: it is read only when tii_epochs is not 0"),
    "hide ca_lr without alignment": (dict(method=with_options(HIDE, ca_epochs=0, ca_lr=0.1)),
                                     "ca_lr: 0.1 would change nothing"),
    "hide temperature without contrast": (dict(method=with_options(HIDE, contrast_weight=0, contrast_temperature=2.0)),
                                          "contrast_temperature: 2.0 would change nothing"),
    "milestones without multistep": (dict(train={"milestones": [3]}),
                                     "train.milestones: \\[3\\] would change nothing: it is read only when scheduler "
                                     "is 'multistep'"),
    "min_lr without cosine": (dict(train={"scheduler": "quarter_cosine", "min_lr": 0.001}),
                              "train.min_lr: 0.001 would change nothing"),
    "first-task milestones without multistep": (dict(train={"first_task": {"milestones": [2]}}),
                                                "first_task.milestones and first_task.gamma shape the multistep"),
    "init_seed of pretrained weights": (dict(backbone={"name": "hf_encoder", "options": {"init_seed": 5}}),
                                        "init_seed: 5 would change nothing"),
    "sdc_sigma without drift": (dict(method={**SDLORA, "classifier": {"kind": "prototypes", "sdc_sigma": 1.0}}),
                                "sdc_sigma: 1.0 is refused: sdc_sigma weighs SDC's samples; with drift 'none'"),
    "head_init_scale with random rows": (dict(method={**SDLORA, "classifier": {"head_init_scale": 60.0}}),
                                         "head_init_scale: 60.0 is refused: .* random rows change nothing"),
    "unfrozen old rows that nothing moves": (dict(method={**SDLORA, "classifier": {"freeze_old_head": False}}),
                                             "freeze_old_head: false changes nothing here"),
    "length buckets of images": (dict(train={"length_buckets": 4}), "train.length_buckets: 4 changes nothing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_option_that_would_change_nothing_is_refused(case):
    sections, message = CASES[case]
    with pytest.raises(ConfigError, match=message):
        validate(**sections)


@pytest.mark.parametrize(("sections", "where"), [
    (dict(method=with_options(SDLORA, rank=7, rank_schedule=[[0, 3]])), "rank_schedule"),
    (dict(method={**SDLORA, "classifier": {"freeze_old_head": False}}), "loss"),
    (dict(train={"milestones": [3]}), "scheduler"),
])
def test_the_same_option_is_read_once_the_deciding_key_asks_for_it(sections, where):
    fixes = {"rank_schedule": dict(method=with_options(SDLORA, rank=7)),
             "loss": dict(method={**SDLORA, "classifier": {"freeze_old_head": False, "loss": "seen"}}),
             "scheduler": dict(train={"milestones": [3], "scheduler": "multistep"})}
    validate(**fixes[where])


def test_defaults_and_saved_configs_stay_accepted(tmp_path):
    """Defaults of keys not read (rank beside variant rr, sdc_sigma 0.3 beside drift none) load, and a run's
    saved config.yaml, which records every resolved default, loads back."""
    data = tiny(method=with_options(SDLORA, variant="rr", rank=8, kd_tau=9e-4), train={"epochs": 1, "gamma": 0.1})
    cfg = build.validate_plugins(load_config(data=data))
    assert cfg.method.options["rank_schedule"] == [[0, 8], [4, 6], [8, 5]]  # rr shrinks the rank given
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert config_to_dict(build.validate_plugins(saved)) == config_to_dict(cfg)
    validate(method={**SDLORA, "classifier": {"kind": "prototypes", "sdc_sigma": 0.3, "head_init_scale": 10.0}})


def test_the_python_api_refuses_the_same_and_rr_shrinks_the_rank_it_is_given():
    from sdlora import SDLoRAConfig

    with pytest.raises(ValueError, match=r"kd_tau: 0.5 would change nothing"):
        SDLoRAConfig(kd_tau=0.5)
    assert SDLoRAConfig(variant="rr").rank_schedule == [[0, 10], [4, 8], [8, 6]]  # the paper's
    assert [SDLoRAConfig(rank=4, variant="rr").rank_for_task(t) for t in (0, 3, 4, 8)] == [4, 4, 3, 2]
    # a run recorded before rr read its rank (the paper's schedule beside rank 8) loads as it ran
    assert SDLoRAConfig(rank=8, variant="rr", rank_schedule=[[0, 10], [4, 8], [8, 6]]).rank_for_task(0) == 10
