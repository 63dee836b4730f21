"""`method.classifier`: resolved per method, refused with the reason where a method cannot honour it; the old
`train.classifier` / `train.head_init` / `train.head_init_scale` keys still load (files, bases, --set, run folders)."""

import inspect
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import yaml

import sdlora
from engine_helpers import Interrupt, results_without_timing, tiny
from sdlora.config import ClassifierConfig, config_to_dict, load_config
from sdlora.config_migration import ConfigDeprecationWarning
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.registry import METHODS
from sdlora.typed import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SDLORA = {"name": "sdlora", "options": {"rank": 2}}
NEW = {"kind": "prototypes", "drift": "sdc", "sdc_sigma": 0.5, "head_init": "class_mean", "head_init_scale": 7.0}
OLD = {"classifier": {"kind": "prototypes", "drift": "sdc", "sdc_sigma": 0.5}, "head_init": "class_mean",
       "head_init_scale": 7.0}
#: how the linear head trains, resolved when not given (`method_config.HEAD_TRAINING`)
TRAINS = {"loss": "current", "freeze_old_head": True, "head_lr": None}


def new_style(method=SDLORA, classifier=NEW, **sections):
    return tiny(method={**method, "classifier": classifier}, **sections)


def old_style(method=SDLORA, train=OLD, **sections):
    return tiny(method=method, train=train, **sections)


def resolved(data, overrides=None):
    return build.validate_plugins(load_config(data=data, overrides=overrides))


def to_old_format(config_file, classifier=None):
    """Rewrite a run folder's config.yaml as sdlora wrote it before the move: every classifier setting under
    `train` (`classifier`: what to write there instead of the run's own settings)."""
    data = yaml.safe_load(config_file.read_text())
    classifier = classifier or data["method"]["classifier"]
    data["train"].update({k: data["method"]["classifier"][k] for k in TRAINS})
    del data["method"]["classifier"]
    defaults = {"kind": "linear", "drift": "none", "sdc_sigma": 0.3, "head_init": "random", "head_init_scale": 10.0}
    full = {k: classifier.get(k) if classifier.get(k) is not None else v for k, v in defaults.items()}
    data["train"].update(head_init=full.pop("head_init"), head_init_scale=full.pop("head_init_scale"),
                         classifier=full)
    config_file.write_text(yaml.safe_dump(data, sort_keys=False))


# -- resolution and refusals -------------------------------------------------------------------------


def test_each_method_fills_its_defaults_and_builds_with_them():
    for name in METHODS.names():
        cls = METHODS.get(name)
        cfg = cls.classifier_support.resolve(None)
        assert cfg.kind is not None and cfg.drift is not None, name
        assert cls.classifier_support.resolve(cfg) == cfg  # resolving is idempotent (config.yaml round trip)
    assert resolved(tiny(method=SDLORA)).method.classifier == ClassifierConfig("linear", "none", 0.3, "random", 10.0,
                                                                               **TRAINS)
    assert resolved(tiny(method={"name": "ncm"})).method.classifier == ClassifierConfig("prototypes", "none", **TRAINS)


@pytest.mark.parametrize(("classifier", "message"), [
    ({"kind": "linear"}, "method.classifier.kind: 'linear' is refused: ncm has no trained head"),
    ({"drift": "sdc"}, "method.classifier.drift: 'sdc' is refused: ncm's backbone is frozen"),
    ({"head_init": "class_mean"}, "method.classifier.head_init: 'class_mean' is refused: ncm has no head"),
    ({"head_init": "random"}, "method.classifier.head_init: 'random' is refused: ncm has no head"),
    ({"head_init_scale": 60.0}, "method.classifier.head_init_scale: 60.0 is refused: ncm has no head"),
])
def test_ncm_refuses_what_it_cannot_do_with_the_key_and_the_reason(classifier, message):
    with pytest.raises(ConfigError, match=message):
        resolved(new_style({"name": "ncm"}, classifier))


def test_the_method_itself_refuses_them_when_built_directly():
    cfg = load_config(data=tiny(method={"name": "ncm"}))
    backbone = build.build_backbone(cfg)
    ncm = METHODS.get("ncm")
    with pytest.raises(ConfigError, match="method.classifier.kind: 'linear' is refused"):
        ncm(backbone, ncm.Options(), cfg.train, ClassifierConfig(kind="linear"))
    assert ncm(backbone, ncm.Options(), cfg.train).class_head is not None  # no classifier given: its defaults


def test_drift_compensation_without_anything_to_move_is_refused():
    with pytest.raises(ConfigError, match="method.classifier.drift: 'sdc' is refused: linear_probe trains the head "
                                          "only"):
        resolved(new_style({"name": "linear_probe"}, {"kind": "prototypes", "drift": "sdc"}))
    with pytest.raises(ConfigError, match="method.classifier.drift: 'sdc' is refused: drift compensation moves the "
                                          "class prototypes"):
        resolved(new_style(SDLORA, {"drift": "sdc"}))  # kind defaults to linear
    with pytest.raises(ConfigError, match="method.classifier: sdc_sigma must be > 0"):
        load_config(data=new_style(SDLORA, {"sdc_sigma": 0}))


def test_hide_prompt_and_the_other_trained_methods_honour_every_setting():
    for name in ("sdlora", "seq_lora", "inflora", "finetune", "l2p", "dualprompt", "coda_prompt", "hide_prompt"):
        assert METHODS.get(name).classifier_support.resolve(ClassifierConfig(**NEW)) == ClassifierConfig(**NEW,
                                                                                                         **TRAINS)


# -- old keys ----------------------------------------------------------------------------------------


def test_old_keys_resolve_and_run_exactly_as_the_new_ones(tmp_path):
    with pytest.warns(ConfigDeprecationWarning, match=r"train.head_init is now method.classifier.head_init"):
        old = resolved(old_style(train={**OLD, "epochs": 1}))
    new = resolved(new_style(train={"epochs": 1}))
    assert config_to_dict(old) == config_to_dict(new)
    assert old.method.classifier == ClassifierConfig(**NEW, **TRAINS) and not hasattr(old.train, "head_init")
    for name, cfg in (("old", old), ("new", new)):
        run_config(cfg, tmp_path / name, quiet=True, stream=io.StringIO())
    results = results_without_timing(tmp_path / "old" / "seed-3")
    assert results == results_without_timing(tmp_path / "new" / "seed-3")  # same accuracies, head init, SDC
    assert results["task_info"][1]["prototype_shift"] > 0
    heads = [sdlora.load(tmp_path / name).weight for name in ("old", "new")]
    assert torch.equal(*heads)


def test_both_spellings_must_agree():
    data = new_style(train={"head_init": "random"})
    with pytest.raises(ConfigError, match=r"train.head_init \('random'\) and method.classifier.head_init "
                                          r"\('class_mean'\) disagree: .*keep only method.classifier.head_init"):
        load_config(data=data)
    with pytest.warns(ConfigDeprecationWarning):  # the same value twice is only redundant
        assert load_config(data=new_style(train={"head_init": "class_mean"})).method.classifier.head_init == \
            "class_mean"


def test_ncm_drops_the_old_keys_it_always_ignored_and_says_so():
    with pytest.warns(ConfigDeprecationWarning, match=r"train.classifier.kind is now method.classifier.kind .*; "
                                                      r"dropped, as the method never used it .*"
                                                      r"train.classifier.kind = 'linear' \(ncm has no trained head"):
        cfg = resolved(old_style({"name": "ncm"}, {"classifier": {"kind": "linear", "drift": "sdc"},
                                                   "head_init": "class_mean"}))
    assert cfg.method.classifier == ClassifierConfig("prototypes", "none", **TRAINS)  # what NCM always did
    with pytest.warns(ConfigDeprecationWarning, match="train.classifier.drift = 'sdc' .drift compensation moves"):
        assert resolved(old_style(train={"classifier": {"drift": "sdc"}})).method.classifier.drift == "none"


def test_a_files_key_overrides_its_bases_other_spelling(tmp_path):
    def write(name, data):
        (tmp_path / name).write_text(yaml.safe_dump(data))
        return tmp_path / name

    write("old.yaml", old_style())
    write("new.yaml", new_style())
    child = write("a.yaml", {"base": "old.yaml", "method": {"classifier": {"kind": "linear", "drift": "none"}}})
    with pytest.warns(ConfigDeprecationWarning):  # the base's other old keys still apply (sdc_sigma: not without sdc)
        assert load_config(child).method.classifier == ClassifierConfig("linear", "none", None, "class_mean", 7.0)
    child = write("b.yaml", {"base": "new.yaml", "train": {"head_init": "random"}})
    with pytest.warns(ConfigDeprecationWarning):
        assert load_config(child).method.classifier.head_init == "random"
    # old keys sit in `train`, which another method's section never reset: still inherited
    child = write("c.yaml", {"base": "old.yaml", "method": {"name": "seq_lora", "options": {"rank": 2}}})
    with pytest.warns(ConfigDeprecationWarning):
        assert load_config(child).method.classifier == ClassifierConfig(**NEW)
    # the new keys belong to the method: another method's section starts from its own defaults
    child = write("d.yaml", {"base": "new.yaml", "method": {"name": "ncm"}})
    assert build.validate_plugins(load_config(child)).method.classifier == ClassifierConfig("prototypes", "none",
                                                                                           **TRAINS)


def test_set_with_the_old_key_still_works():
    with pytest.warns(ConfigDeprecationWarning, match="train.classifier.kind is now method.classifier.kind"):
        cfg = resolved(new_style(classifier={**NEW, "sdc_sigma": None}), [
            "train.classifier.kind=linear", "train.classifier.drift=none", "train.head_init_scale=3"])
    assert cfg.method.classifier == ClassifierConfig("linear", "none", 0.3, "class_mean", 3.0, **TRAINS)
    with pytest.warns(ConfigDeprecationWarning):  # a whole old mapping replaces kind, drift and sdc_sigma
        cfg = resolved(new_style(), ["train.classifier={kind: linear}"])
    assert cfg.method.classifier == ClassifierConfig("linear", "none", 0.3, "class_mean", 7.0, **TRAINS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new key overrides an old-style file's old key, silently
        assert load_config(data=tiny(), overrides=["method.classifier.kind=prototypes"]).method.classifier.kind == \
            "prototypes"
    with pytest.warns(ConfigDeprecationWarning):
        cfg = load_config(data=old_style(), overrides=["method.classifier.head_init=random"])
    assert cfg.method.classifier.head_init == "random"


def test_the_warning_is_shown_by_default():
    code = ("from sdlora.config import load_config; "
            "load_config(data={'benchmark': {'name': 'synthetic'}, 'backbone': {'name': 'timm_vit'}, "
            "'method': {'name': 'sdlora'}, 'train': {'head_init': 'class_mean'}})")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "ConfigDeprecationWarning" in done.stderr and "method.classifier.head_init" in done.stderr


# -- run folders written before the move ---------------------------------------------------------------


def test_an_old_run_folder_still_loads_with_the_same_predictions(tmp_path):
    for name, method in (("sdlora", SDLORA), ("ncm", {"name": "ncm"})):
        data = new_style(method, NEW if name == "sdlora" else {}, train={"epochs": 1})
        run_config(load_config(data=data), tmp_path / name, quiet=True, stream=io.StringIO())
        x = list(torch.randn(5, 3, 32, 32))
        before = sdlora.load(tmp_path / name).logits(x)
        # NCM: what configs/baselines/clinc150_ncm.yaml runs saved (inherited from configs/clinc150.yaml)
        ignored = {"kind": "linear", "drift": "sdc", "head_init": "class_mean"} if name == "ncm" else None
        to_old_format(tmp_path / name / "config.yaml", ignored)
        with pytest.warns(ConfigDeprecationWarning) as record:
            after = sdlora.load(tmp_path / name)
        # one warning for the file sdlora wrote, naming its moved keys (and those NCM never used)
        (message,) = {str(w.message) for w in record if issubclass(w.category, ConfigDeprecationWarning)}
        assert message.startswith(f"{tmp_path / name}/config.yaml: written by an older sdlora, read as before")
        assert "train.classifier.kind, train.classifier.drift" in message and "train.loss" in message
        unused = ("; train.classifier.kind, train.classifier.drift, train.classifier.sdc_sigma, train.head_init, "
                  "train.head_init_scale: never used by the method, dropped")
        assert (unused in message) == (name == "ncm") and ("never used" in message) == (name == "ncm")
        assert torch.equal(after.logits(x), before)
    saved = yaml.safe_load((tmp_path / "ncm" / "config.yaml").read_text())
    assert saved["train"]["classifier"]["drift"] == "sdc"  # NCM ignored it, and still does


def test_an_old_run_folder_resumes_mid_task_to_the_uninterrupted_run(tmp_path):
    data = new_style(train={"epochs": 2}, benchmark={"num_tasks": 2})

    def stop(task, epochs, finished):
        if (task, epochs, finished) == (1, 1, False):
            raise Interrupt

    run_config(load_config(data=data), tmp_path / "ref", quiet=True, stream=io.StringIO())
    with pytest.raises(Interrupt):
        run_config(load_config(data=data), tmp_path / "cut", quiet=True, stream=io.StringIO(), on_checkpoint=stop)
    to_old_format(tmp_path / "cut" / "config.yaml")
    with pytest.warns(ConfigDeprecationWarning):  # --resume compares the saved config, read the old way
        run_config(load_config(data=data), tmp_path / "cut", resume=True, quiet=True, stream=io.StringIO())
    assert results_without_timing(tmp_path / "cut" / "seed-3") == results_without_timing(tmp_path / "ref" / "seed-3")


def test_method_constructors_take_the_classifier_settings():
    for name in METHODS.names():
        assert "classifier" in inspect.signature(METHODS.get(name)).parameters, name


def test_a_shared_classifier_reaches_whatever_method_a_config_runs(tmp_path):
    """configs/clinc150.yaml's top-level `classifier:` is inherited by a config that changes the method; the method's
    own keys win; `classifier: null` gives a method its defaults; a key the method refuses names where it came from."""
    import yaml

    from sdlora.typed import ConfigError

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny(method={"name": "sdlora", "options": {"rank": 2}},
                                        classifier={"kind": "prototypes", "drift": "sdc", "head_init": "class_mean"})))

    def resolved(extra):
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"base": "base.yaml", **extra}))
        return build.validate_plugins(load_config(tmp_path / "c.yaml"))

    seq = resolved({"method": {"name": "seq_lora", "options": {"rank": 2}}})
    assert (seq.method.classifier.kind, seq.method.classifier.drift, seq.method.classifier.head_init) == (
        "prototypes", "sdc", "class_mean") and seq.classifier is None  # folded into method.classifier
    own = resolved({"method": {"name": "seq_lora", "options": {"rank": 2}, "classifier": {"kind": "linear",
                                                                                          "drift": "none"}}})
    assert (own.method.classifier.kind, own.method.classifier.head_init) == ("linear", "class_mean")
    plain = resolved({"method": {"name": "seq_lora", "options": {"rank": 2}}, "classifier": None})
    assert (plain.method.classifier.kind, plain.method.classifier.head_init) == ("linear", "random")
    with pytest.raises(ConfigError, match=r"^classifier.drift: 'sdc' is refused: ncm"):
        resolved({"method": {"name": "ncm"}})
