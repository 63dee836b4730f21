"""How the linear head trains (`method.classifier.loss`, `freeze_old_head`, `head_lr`): what each key does, and the
old `train.loss` / `train.freeze_old_head` / `train.head_lr` (files, bases, --set, run folders, learned.json) read
as the new keys with one warning per key, so nothing a user has breaks or changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import sdlora
from engine_helpers import check_classifier_refused, results_without_timing, tiny
from export_helpers import text_run_config, train, write_text_files
from sdlora.backbones.base import Backbone
from sdlora.cli import main
from sdlora.config import ClassifierConfig, TrainConfig, load_config
from sdlora.config_migration import ConfigDeprecationWarning
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.methods.base import Method
from sdlora.serving.learn import learn
from sdlora.typed import ConfigError
from test_cli_fast import heavy_modules_after

SRC = Path(sdlora.__file__).resolve().parents[1]
KEYS = ("loss", "freeze_old_head", "head_lr")
#: non-default values of the three keys, new and old spelling
NEW = {"loss": "seen", "freeze_old_head": False, "head_lr": 0.05}
OLD = dict(NEW)
SDLORA = {"name": "sdlora", "options": {"rank": 2}}


def head_training(cfg) -> tuple:
    classifier = build.validate_plugins(cfg).method.classifier
    return tuple(getattr(classifier, k) for k in KEYS)


def moved_warnings(record) -> list[str]:
    return sorted(str(w.message) for w in record if issubclass(w.category, ConfigDeprecationWarning))


# -- what the keys do ---------------------------------------------------------------------------------------------


class Features(Backbone):
    feature_dim = 3
    default_targets: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs


def second_task_method(**classifier) -> Method:
    """A method that has grown its head over two tasks of 2 classes (rows 0-1, then 2-3)."""
    torch.manual_seed(0)
    method = Method(Features(), None, TrainConfig(), ClassifierConfig(**classifier))
    method.begin_task(TaskInfo(0, 0, 2, 2))
    method.begin_task(TaskInfo(1, 2, 4, 2))
    return method


def test_loss_current_takes_the_current_task_s_logits_and_seen_every_seen_one():
    logits, labels, task = torch.tensor([[5.0, 0.0, 1.0, 2.0], [0.0, 4.0, 3.0, 0.5]]), torch.tensor([3, 2]), \
        TaskInfo(1, 2, 4, 2)
    current = second_task_method().loss(logits, labels, task)
    seen = second_task_method(loss="seen").loss(logits, labels, task)
    assert current.item() == pytest.approx(F.cross_entropy(logits[:, 2:], labels - 2).item())
    assert seen.item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert seen.item() > current.item() + 1  # the old classes' large logits count only with `seen`


def test_freeze_old_head_and_head_lr_shape_the_head_s_param_group():
    frozen = second_task_method().trainable_parameters()
    assert len(frozen) == 1 and "lr" not in frozen[0]  # the optimiser's own lr (train.lr)
    assert [tuple(p.shape) for p in frozen[0]["params"]] == [(2, 3), (2,)]  # the current task's rows only
    free = second_task_method(freeze_old_head=False, head_lr=0.05).trainable_parameters()
    assert free[0]["lr"] == 0.05
    assert sorted(tuple(p.shape) for p in free[0]["params"]) == [(2,), (2,), (2, 3), (2, 3)]


# -- old keys in configs --------------------------------------------------------------------------------------------


def test_old_keys_resolve_to_the_new_ones_with_one_warning_per_key():
    with pytest.warns(ConfigDeprecationWarning) as record:
        old = load_config(data=tiny(method=SDLORA, train={**OLD, "epochs": 1}))
    new = load_config(data=tiny(method={**SDLORA, "classifier": NEW}, train={"epochs": 1}))
    assert head_training(old) == head_training(new) == ("seen", False, 0.05)
    assert build.validate_plugins(old) == build.validate_plugins(new)
    assert moved_warnings(record) == sorted(f"config: train.{k} is now method.classifier.{k} (or classifier.{k}, "
                                            "shared by any method); moved" for k in KEYS)
    assert not hasattr(old.train, "loss") and not hasattr(old.train, "head_lr")


def test_an_old_key_wins_over_the_shared_classifier_as_it_did():
    """`train.loss` used to decide alone; moved to `method.classifier`, it still wins over a shared `classifier:`."""
    with pytest.warns(ConfigDeprecationWarning):
        cfg = load_config(data=tiny(method=SDLORA, classifier={"loss": "current", "head_lr": 0.2},
                                    train={"loss": "seen"}))
    assert head_training(cfg) == ("seen", True, 0.2)


def test_the_old_and_the_new_key_must_agree():
    data = tiny(method={**SDLORA, "classifier": {"loss": "current"}}, train={"loss": "seen"})
    with pytest.raises(ConfigError, match=r"train.loss \('seen'\) and method.classifier.loss \('current'\) disagree: "
                                          r"train.loss is the old name of method.classifier.loss"):
        load_config(data=data)
    data = tiny(method={**SDLORA, "classifier": {"head_lr": 0.1}}, train={"head_lr": 0.2})
    with pytest.raises(ConfigError, match=r"train.head_lr \(0.2\) and method.classifier.head_lr \(0.1\) disagree"):
        load_config(data=data)
    with pytest.warns(ConfigDeprecationWarning):  # the same value twice is only redundant
        assert head_training(load_config(data=tiny(method={**SDLORA, "classifier": {"loss": "seen"}},
                                                   train={"loss": "seen"})))[0] == "seen"


def test_old_keys_through_bases_and_set(tmp_path):
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(tiny(method=SDLORA, train={"loss": "seen", "head_lr": 0.3})))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(tiny(method={**SDLORA, "classifier": {"loss": "seen"}})))

    def child(name, data):
        (tmp_path / name).write_text(yaml.safe_dump(data))
        return tmp_path / name

    with pytest.warns(ConfigDeprecationWarning):  # the base's old keys are inherited ...
        assert head_training(load_config(child("a.yaml", {"base": "old.yaml"}))) == ("seen", True, 0.3)
    with pytest.warns(ConfigDeprecationWarning):  # ... also by another method: `train` was never reset
        assert head_training(load_config(child("b.yaml", {"base": "old.yaml", "method": {
            "name": "seq_lora", "options": {"rank": 2}}}))) == ("seen", True, 0.3)
    with pytest.warns(ConfigDeprecationWarning):  # a file's new key overrides its base's old one, and back
        assert head_training(load_config(child("c.yaml", {"base": "old.yaml", "method": {
            "classifier": {"loss": "current"}}}))) == ("current", True, 0.3)
    with pytest.warns(ConfigDeprecationWarning):
        assert head_training(load_config(child("d.yaml", {"base": "new.yaml", "train": {"loss": "current"}})))[0] \
            == "current"
    with pytest.warns(ConfigDeprecationWarning):  # the shared classifier's key is a new spelling too ...
        assert head_training(load_config(child("e.yaml", {"base": "old.yaml", "classifier": {"loss": "current"}}))) \
            == ("current", True, 0.3)
    with pytest.warns(ConfigDeprecationWarning):  # ... but `classifier: null` (the method's defaults) resets no key
        assert head_training(load_config(child("f.yaml", {"base": "old.yaml", "classifier": None}))) == \
            ("seen", True, 0.3)
    with pytest.warns(ConfigDeprecationWarning, match="train.loss is now method.classifier.loss"):
        assert head_training(load_config(tmp_path / "new.yaml", ["train.loss=current"]))[0] == "current"
    with pytest.warns(ConfigDeprecationWarning, match="train.head_lr is now"):
        assert head_training(load_config(tmp_path / "old.yaml", ["classifier.loss=current"])) == \
            ("current", True, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new key over an old-style file's old key: silently
        assert head_training(load_config(tmp_path / "old.yaml", ["method.classifier.loss=current",
                                                                 "method.classifier.head_lr=null"])) == \
            ("current", True, None)


def test_a_bad_value_under_an_old_key_is_refused_with_its_old_message_before_torch(tmp_path):
    with pytest.raises(ConfigError, match=r"^train.loss: expected 'current' \| 'seen' \| null, got 'bogus'$"):
        load_config(data=tiny(), overrides=["train.loss=bogus"])
    with pytest.raises(ConfigError, match="^train.freeze_old_head: expected bool"):
        load_config(data=tiny(), overrides=["train.freeze_old_head=1"])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny()))
    for key in ("train.loss", "method.classifier.loss"):
        rc, heavy, err = heavy_modules_after(["train", str(cfg), "--set", f"{key}=bogus", "--out",
                                              str(tmp_path / "run")], tmp_path)
        assert (rc, heavy) == (2, [])
        assert f"{key}: expected 'current' | 'seen' | null, got 'bogus'" in err
    assert not (tmp_path / "run").exists()


def test_reading_the_defaults_under_the_old_keys_imports_no_method():
    """Every run folder written before the move has `train.loss` etc. (mostly the defaults): reading it stays light
    (`sdlora learn`'s early checks open it before torch)."""
    code = ("import sys, warnings; warnings.simplefilter('ignore'); from sdlora.config import load_config\n"
            "load_config(data={'benchmark': {'name': 'synthetic'}, 'backbone': {'name': 'timm_vit'}, 'method': "
            "{'name': 'ncm'}, 'train': {'loss': 'current', 'freeze_old_head': True, 'head_lr': None}})\n"
            "print(*sorted(m for m in ('torch', 'sdlora.registry', 'sdlora.methods') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          check=True)
    assert done.stdout.split() == []


def test_ncm_trains_no_head_refuses_the_new_keys_and_drops_the_old_ones():
    ncm = {"name": "ncm"}
    check_classifier_refused("ncm", {"loss": "seen"}, r"method.classifier.loss: 'seen' is refused: ncm trains nothing")
    check_classifier_refused("ncm", {"head_lr": 0.1}, r"method.classifier.head_lr: 0.1 is refused: ncm trains nothing")
    with pytest.warns(ConfigDeprecationWarning) as record:
        cfg = load_config(data=tiny(method=ncm, train={"loss": "seen", "freeze_old_head": True}))
    assert moved_warnings(record) == [
        "config: train.freeze_old_head is now method.classifier.freeze_old_head (or classifier.freeze_old_head, "
        "shared by any method); moved",
        "config: train.loss is now method.classifier.loss (or classifier.loss, shared by any method); dropped, as the "
        "method never used it (method.classifier.loss refuses it): train.loss = 'seen' (ncm trains nothing (no loss, "
        "no head rows to freeze, no head learning rate))"]
    assert head_training(cfg) == ("current", True, None)  # what it resolved to (and ignored) before
    assert head_training(load_config(data=tiny(method={**ncm, "classifier": {"loss": "current"}}))) == \
        ("current", True, None)  # the defaults change nothing: accepted


# -- run folders written before the move ----------------------------------------------------------------------------


def to_old_layout(out: Path, learned_set: list[str] | None = None) -> None:
    """Rewrite a run folder as sdlora wrote it before the move: the three keys under `train` in config.yaml and in
    results.json's config; `learned_set`: the pending learned task's --set, as learned.json recorded it."""
    def move(config: dict) -> dict:
        config["train"].update({k: config["method"]["classifier"].pop(k) for k in KEYS})
        return config

    (out / "config.yaml").write_text(yaml.safe_dump(move(yaml.safe_load((out / "config.yaml").read_text())),
                                                    sort_keys=False))
    for seed in out.glob("seed-*"):
        record = json.loads((seed / "results.json").read_text())
        (seed / "results.json").write_text(json.dumps({**record, "config": move(record["config"])}, indent=2))
        if learned_set is not None:
            learned = json.loads((seed / "learned.json").read_text())
            learned["tasks"][-1]["set"] = learned_set
            (seed / "learned.json").write_text(json.dumps(learned, indent=2))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny text run (2 tasks of 2 intents, 2 epochs) and a one-class new task (learnable only with
    `loss: seen`: one logit gives a zero loss under `current`)."""
    folder = tmp_path_factory.mktemp("run")
    data = text_run_config(folder)
    data["train"]["epochs"] = 2
    return train(data, folder / "run"), write_text_files(folder / "one", ["cancel my order"])


def copy_run(seed: Path, target: Path) -> Path:
    shutil.copytree(seed.parent, target)
    return target / seed.name


def learned(seed: Path, task_file: dict, overrides: list[str]) -> dict:
    assert main(["learn", str(seed), "--data", task_file["train_file"], "--test", task_file["test_file"],
                 *[w for o in overrides for w in ("--set", o)], "--quiet"]) == 0
    return results_without_timing(seed)


def test_an_old_run_folder_evaluates_predicts_and_loads_as_before(finished, tmp_path, capsys):
    seed, _ = finished
    new, old = copy_run(seed, tmp_path / "new"), copy_run(seed, tmp_path / "old")
    to_old_layout(old.parent)
    assert yaml.safe_load((old.parent / "config.yaml").read_text())["train"]["loss"] == "current"
    texts = tmp_path / "ask.txt"
    texts.write_text("alarm clock please 1\nweather in paris please 2\nplay some jazz\n")
    answers = []
    for run in (new, old):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert main(["eval", str(run)]) == 0
            evaluated = {k: v for k, v in json.loads(capsys.readouterr().out).items() if k != "run"}
            assert main(["predict", str(run), str(texts)]) == 0
            predicted = capsys.readouterr().out
            logits = sdlora.load(run).logits(texts.read_text().splitlines())
        answers.append((evaluated, predicted, logits, moved_warnings(record)))
    (evaluated, predicted, logits, quiet), (old_evaluated, old_predicted, old_logits, noted) = answers
    assert old_evaluated == evaluated and old_predicted == predicted and torch.equal(old_logits, logits)
    assert evaluated["accuracy"] > 0 and len(predicted.splitlines()) == 3
    # the folder's config.yaml was written by sdlora, not by its user: one warning per read, naming every key
    summary = (f"{old.parent}/config.yaml: written by an older sdlora, read as before under today's names "
               "(train.loss, train.freeze_old_head, train.head_lr: now method.classifier.*): nothing to change")
    assert quiet == [] and noted and set(noted) == {summary}


def test_learn_takes_the_new_key_and_the_old_one_also_on_an_old_run_folder(finished, tmp_path, capsys):
    seed, one = finished
    refused = copy_run(seed, tmp_path / "refused")
    assert main(["learn", str(refused), "--data", one["train_file"], "--test", one["test_file"]]) == 2
    assert "--set method.classifier.loss=seen" in capsys.readouterr().err
    # the shared section, and the classifier's other settings (new or old names): fixed by the trained model
    for key in ("classifier.loss", "method.classifier.kind", "train.classifier.kind", "train.classifier",
                "train.head_init"):
        assert main(["learn", str(refused), "--data", one["train_file"], "--test", one["test_file"], "--set",
                     f"{key}=seen"]) == 2
        assert f"['{key}'] are fixed by the trained model" in capsys.readouterr().err
    reference = learned(copy_run(seed, tmp_path / "new"), one, ["method.classifier.loss=seen"])
    assert reference["task_sizes"] == [2, 2, 1] and reference["accuracy_matrix"][2][2] > 0
    with pytest.warns(ConfigDeprecationWarning, match="train.loss is now method.classifier.loss"):
        assert learned(copy_run(seed, tmp_path / "set"), one, ["train.loss=seen"]) == reference
    old = copy_run(seed, tmp_path / "old")
    to_old_layout(old.parent)
    with pytest.warns(ConfigDeprecationWarning) as record:
        assert learned(old, one, ["train.loss=seen"]) == reference
    # the user's old key gets its own warning; the folder's, one for the file
    assert {m.split(": ", 1)[1][:30] for m in moved_warnings(record)} == {"train.loss is now method.class",
                                                                          "written by an older sdlora, re"}
    assert json.loads((old / "learned.json").read_text())["tasks"][0]["set"] == ["train.loss=seen"]
    old = copy_run(seed, tmp_path / "old-new-key")
    to_old_layout(old.parent)
    with pytest.warns(ConfigDeprecationWarning):
        assert learned(old, one, ["method.classifier.loss=seen"]) == reference


def test_an_old_interrupted_learn_resumes_to_the_uninterrupted_one(finished, tmp_path):
    seed, one = finished
    reference = learned(copy_run(seed, tmp_path / "straight"), one, ["method.classifier.loss=seen"])
    crashed = copy_run(seed, tmp_path / "crashed")

    def crash(task, epochs, finished_task):
        if epochs == 1 and not finished_task:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn(crashed, Path(one["train_file"]), Path(one["test_file"]), overrides=["method.classifier.loss=seen"],
              on_checkpoint=crash)
    to_old_layout(crashed.parent, learned_set=["train.loss=seen"])  # as learned.json recorded it before the move
    with pytest.warns(ConfigDeprecationWarning):
        assert main(["learn", str(crashed), "--resume", "--quiet"]) == 0
    assert results_without_timing(crashed) == reference
