import pytest

from sdlora.config import load_config
from sdlora.engine.build import validate_plugins
from sdlora.typed import ConfigError

BASE = {"benchmark": {"name": "synthetic"}, "backbone": {"name": "timm_vit"}, "method": {"name": "linear_probe"}}


def test_overrides_parse_yaml_values():
    cfg = load_config(data=BASE, overrides=["train.lr=0.5", "train.scheduler=multistep", "train.milestones=[3, 6]",
                                            "train.grad_clip=null", "benchmark.options.num_classes=4", "seed=7"])
    assert cfg.train.lr == 0.5 and cfg.train.milestones == [3, 6] and cfg.train.grad_clip is None
    assert cfg.benchmark.options == {"num_classes": 4}
    assert cfg.seeds == [7]  # `seed` is a shortcut for a one-element `seeds`
    assert load_config(data={**BASE, "seed": 7}).seeds == [7]


@pytest.mark.parametrize(
    ("data", "overrides", "message"),
    [
        ({**BASE, "train": {"lrr": 1}}, [],
         r"train: unknown key\(s\) 'lrr' \(did you mean 'lr'\?\); allowed: accumulate_steps, amp"),
        (BASE, ["train.optimizer=rmsprop"], "train.optimizer: 'rmsprop' is not allowed; allowed: 'sgd' | 'adam'"),
        (BASE, ["train.epochs=two"], "train.epochs: expected int, got 'two'"),
        (BASE, ["method.classifier.freeze_old_head=1"], "method.classifier.freeze_old_head: expected bool"),
        ({"backbone": {"name": "x"}, "method": {"name": "m"}}, [], "benchmark: required key is missing"),
        (BASE, ["train.lr=-1"], "lr must be > 0"),
        (BASE, ["train"], "--set expects key=value"),
    ],
)
def test_bad_config_names_the_key(data, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(data=data, overrides=overrides)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_plugins_validated_before_any_work():
    with pytest.raises(KeyError, match="unknown method 'nope'; known methods: .*linear_probe.*sdlora"):
        validate_plugins(load_config(data={**BASE, "method": {"name": "nope"}}))
    with pytest.raises(KeyError, match=r"unknown benchmark 'imagenet-z' \(did you mean 'imagenet_r'\?\); "
                                       "known benchmarks: .*synthetic"):
        validate_plugins(load_config(data={**BASE, "benchmark": {"name": "imagenet-z"}}))
    with pytest.raises(ConfigError, match=r"method.options: unknown key\(s\) 'rnk'"):
        validate_plugins(load_config(data={**BASE, "method": {"name": "sdlora", "options": {"rnk": 4}}}))
