"""Issue 21's journeys, as a user goes: train -> predict -> learn -> predict -> export, on every kind of run.

(a) CLINC150 cut down with `num_tasks` -> learn made-up intents and never-trained CLINC intents; (c) the digits
image_folder example with its defaults -> predict from every kind of image input -> learn -> export timm;
(d) SIGKILL during learn -> resume = uninterrupted; a failed learn -> abandon = the run as before (hashes).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sdlora
from export_helpers import no_library_warnings, text_run_config, train, write_text_files
from scripts import load_benchmark_script
from sdlora.cli import main

ROOT = Path(__file__).resolve().parents[1]


def copy_run(seed_folder: Path, tmp_path: Path) -> Path:
    shutil.copytree(seed_folder.parent, tmp_path / "run")
    return tmp_path / "run" / seed_folder.name


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def write_rows(path: Path, rows: list[tuple[str, str]]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return str(path)


def accuracy(predictions: list, labels: list[str]) -> float:
    return sum(p[0][0] == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


# -- (a) a CLINC150 run cut down with num_tasks ---------------------------------------------------------------

MADE_UP = {
    "summon_dragon": ["summon a dragon to the castle", "call my dragon here", "i need the dragon to come now",
                      "bring the red dragon over", "get the dragon to fly to me", "dragon come to the tower",
                      "can you summon my pet dragon", "make the dragon appear", "send for the dragon please",
                      "wake the dragon and bring it"],
    "brew_potion": ["brew a healing potion", "start the potion cauldron", "make me a potion of strength",
                    "mix the ingredients for a potion", "cook up a sleeping potion", "i want to brew a potion",
                    "prepare an invisibility potion", "boil the potion mixture", "potion brewing please",
                    "help me brew a love potion"],
}


def clinc_examples(data_root: Path, split: str, intents: list[str], per_intent: int) -> list[tuple[str, str]]:
    rows = json.loads((data_root / "clinc150" / "data_full.json").read_text())[split]
    out: list[tuple[str, str]] = []
    for intent in intents:
        out += [(text, label) for text, label in rows if label == intent][:per_intent]
    return out


@pytest.mark.slow
def test_a_cut_down_clinc_run_learns_new_intents_and_keeps_its_old_ones(clinc_two_task_run, data_root, tmp_path,
                                                                       capsys):
    run = copy_run(clinc_two_task_run, tmp_path)
    before = results(run)
    trained = before["class_names"][:30]
    assert before["task_sizes"] == [15, 15] and len(before["class_names"]) == 150  # the benchmark's names
    old = clinc_examples(data_root, "test", trained[::3], 4)
    old_texts = [t for t, _ in old]
    old_before = sdlora.load(run).predict(old_texts)

    train_rows = [(t, label) for label, texts in MADE_UP.items() for t in texts[:7]]
    test_rows = [(t, label) for label, texts in MADE_UP.items() for t in texts[7:]]
    files = [write_rows(tmp_path / "new" / "train.csv", train_rows), write_rows(tmp_path / "new" / "test.csv",
                                                                                 test_rows)]
    assert main(["learn", str(run), "--data", files[0], "--test", files[1], "--quiet"]) == 0
    capsys.readouterr()
    after = results(run)
    assert after["task_sizes"] == [15, 15, 2] and after["class_names"] == trained + sorted(MADE_UP)
    assert after["task_test_counts"] == [180, 180, 6]  # the new task's 6 test rows, not 20 CLINC utterances
    model = sdlora.load(run)
    assert model.class_names == after["class_names"] and len(model.weight) == 32
    new = model.predict([t for t, _ in test_rows])
    assert accuracy(new, [y for _, y in test_rows]) >= 5 / 6, new
    old_after = model.predict(old_texts)
    assert all(p[0][0] in trained for p in old_after)
    agree = np.mean([a[0][0] == b[0][0] for a, b in zip(old_before, old_after, strict=True)])
    with capsys.disabled():
        print(f"\n(a) made-up intents: accuracy row {after['accuracy_matrix'][-1]}, new-intent test "
              f"{accuracy(new, [y for _, y in test_rows]):.3f}, old predictions unchanged {agree:.3f}")
    assert agree >= 0.8, f"old predictions changed for {1 - agree:.0%} of old inputs"

    # CLINC intents the run never trained are new classes: learned from the user's files only
    fresh = before["class_names"][40:42]
    known = write_rows(tmp_path / "known" / "train.csv", clinc_examples(data_root, "train", trained[:1], 5))
    assert main(["learn", str(run), "--data", known, "--test", known]) == 1
    assert f"the model already knows class(es) ['{trained[0]}']" in capsys.readouterr().err
    train_file = write_rows(tmp_path / "fresh" / "train.csv", clinc_examples(data_root, "train", fresh, 12))
    test_rows = clinc_examples(data_root, "test", fresh, 6)
    test_file = write_rows(tmp_path / "fresh" / "test.csv", test_rows)
    assert main(["learn", str(run), "--data", train_file, "--test", test_file, "--quiet"]) == 0
    last = results(run)
    assert last["task_sizes"] == [15, 15, 2, 2] and last["class_names"][-2:] == sorted(fresh)
    assert last["task_test_counts"] == [180, 180, 6, 12]
    print(f"(a) never-trained intents {fresh}: accuracy row {last['accuracy_matrix'][-1]}, "
          f"final {last['metrics']['final_accuracy']:.2f}")
    assert accuracy(sdlora.load(run).predict([t for t, _ in test_rows]), [y for _, y in test_rows]) >= 0.75


# -- (b) a text_files run: learn -> predict, and everything a run writes follows ---------------------------------

HARNESS_CLASSIFIER = {"kind": "prototypes", "drift": "sdc", "head_init": "class_mean", "head_init_scale": 60.0}


def test_a_text_files_run_learns_then_predicts_and_its_reports_follow(tmp_path, capsys):
    folder = tmp_path / "setup"
    data = text_run_config(folder)  # with the real MiniLM and the shipped classifier settings
    data["backbone"] = {"name": "hf_encoder", "options": {"max_length": 16}}
    data["method"]["classifier"] = HARNESS_CLASSIFIER
    run = train(data, folder / "run")
    new = write_text_files(tmp_path / "new", ["cancel my order", "track my package"])
    assert main(["learn", str(run), "--data", new["train_file"], "--test", new["test_file"], "--quiet"]) == 0
    after = results(run)
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[-1].startswith("3,6,")  # header + 3 tasks, 6 classes seen
    summary = json.loads((run.parent / "summary.json").read_text())
    assert summary["metrics"]["final_accuracy"]["mean"] == pytest.approx(after["metrics"]["final_accuracy"])
    assert "learn: task 3 of 2 new classes" in (run / "train.log").read_text()
    scalars = list(csv.DictReader((run / "scalars.csv").open()))
    assert {r["task"] for r in scalars if r["name"] == "eval/accuracy"} == {"1", "2", "3"}
    assert any(r["task"] == "3" and r["name"] == "epoch/loss" for r in scalars)
    capsys.readouterr()
    texts = tmp_path / "ask.txt"
    texts.write_text("cancel my order please 1\ntrack my package please 2\n")
    assert main(["predict", str(run), str(texts)]) == 0
    labels = [json.loads(line)["label"] for line in capsys.readouterr().out.splitlines()]
    assert labels == ["cancel my order", "track my package"]
    capsys.readouterr()
    assert main(["report", str(run.parent)]) == 0
    assert "learned" in capsys.readouterr().out
    # per-class accuracy and the confusion matrix over every class the grown model knows
    assert main(["eval", str(run), "--per-class"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(after["metrics"]["final_accuracy"], abs=1e-4)
    assert evaluated["per_task"] == pytest.approx(after["accuracy_matrix"][-1], abs=1e-4)
    per_class = list(csv.DictReader((run / "per_class_test" / "per_class.csv").open()))
    assert [r["class"] for r in per_class] == after["class_names"] and [r["task"] for r in per_class] == list("112233")
    assert sum(int(r["samples"]) for r in per_class) == sum(after["task_test_counts"])
    confusion = list(csv.reader((run / "per_class_test" / "confusion.csv").open()))
    assert confusion[0][1:] == after["class_names"]
    assert [int(row[i + 1]) for i, row in enumerate(confusion[1:])] == [int(r["correct"]) for r in per_class]
    assert (run / "per_class_test" / "confusion.png").stat().st_size > 1000


def test_a_one_class_learn_is_refused_with_a_fix_that_works(tmp_path, capsys):
    folder = tmp_path / "setup"
    run = train(text_run_config(folder), folder / "run")
    one = write_text_files(tmp_path / "one", ["cancel my order"])
    assert main(["learn", str(run), "--data", one["train_file"], "--test", one["test_file"]]) == 2
    err = capsys.readouterr().err
    assert "its loss is identically zero" in err and "--set method.classifier.loss=seen" in err
    assert not (run / "learned.json").exists()
    assert main(["learn", str(run), "--data", one["train_file"], "--test", one["test_file"], "--set",
                 "method.classifier.loss=seen", "--quiet"]) == 0
    scalars = list(csv.DictReader((run / "scalars.csv").open()))
    assert all(float(r["value"]) > 0 for r in scalars if r["task"] == "3" and r["name"] == "epoch/loss")
    assert json.loads((run / "learned.json").read_text())["tasks"][0]["set"] == ["method.classifier.loss=seen"]
    assert main(["learn", str(run), "--data", one["train_file"], "--test", one["test_file"], "--set",
                 "method.options.rank=4"]) == 2
    assert "fixed by the trained model" in capsys.readouterr().err


# -- (c) the digits image_folder example with its defaults ---------------------------------------------------------

def load_digits_script():
    return load_benchmark_script("digits_folder")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> tuple[Path, Path]:
    """configs/examples/digits_image_folder.yaml as shipped (image_size and normalize from the model), on digits
    0-3 (2 tasks); and a folder with digits 4 and 5 for learn."""
    work = tmp_path_factory.mktemp("digits")
    write = load_digits_script().write_digits
    write(work / "digits", classes=4, size=32, per_class=40)
    write(work / "all", classes=6, size=32, per_class=40)
    extra = work / "extra"
    for split in ("train", "test"):
        for digit in ("digit_4", "digit_5"):
            shutil.copytree(work / "all" / split / digit, extra / split / digit)
    assert main(["train", str(ROOT / "configs" / "examples" / "digits_image_folder.yaml"), "--out",
                 str(work / "run"), "--quiet", "--set", f"benchmark.options.root={work / 'digits'}"]) == 0
    return work / "run" / "seed-1993", extra


def test_c_an_image_folder_run_predicts_any_image_learns_and_exports(digits_run, tmp_path, capsys):
    seed, extra = digits_run
    run = copy_run(seed, tmp_path)
    record = results(run)
    assert record["config"]["benchmark"]["options"]["image_size"] == "model"
    assert record["class_names"] == ["digit_0", "digit_1", "digit_2", "digit_3"]
    from sdlora.data.transforms import transforms_from_spec
    from sdlora.engine.build import run_preprocess
    from sdlora.engine.run_folder import RunFolder

    rebuilt = transforms_from_spec(run_preprocess(RunFolder.open(run).cfg))  # what learn and predict use
    assert {k: repr(v) for k, v in rebuilt.items()} == {k: record["data"]["transforms"][k] for k in rebuilt}
    model = sdlora.load(run)
    files = sorted((seed.parent.parent / "digits" / "test" / "digit_2").glob("*.png"))[:10]
    gray = Image.open(files[0])
    assert gray.mode == "L"
    inputs = [str(files[0]), gray, gray.convert("RGB"), gray.convert("RGBA"), np.asarray(gray),
              np.asarray(gray.convert("RGB")).astype(np.float32) / 255.0]
    logits = model.logits(inputs)
    for i in range(1, len(inputs)):  # every kind of input predicts like the file itself
        torch.testing.assert_close(logits[i], logits[0], atol=1e-4, rtol=0)
    assert accuracy(model.predict([str(f) for f in files]), ["digit_2"] * 10) >= 0.4  # chance 0.25 (a random ViT)

    assert main(["learn", str(run), "--data", str(extra / "train"), "--test", str(extra / "test"), "--quiet"]) == 0
    after = results(run)
    assert after["class_names"] == record["class_names"] + ["digit_4", "digit_5"]
    assert after["task_sizes"] == [2, 2, 2] and after["accuracy_matrix"][2][2] >= 45.0  # chance 1/6
    probe = sorted((extra / "test" / "digit_5").glob("*.png"))
    predicted = sdlora.load(run).predict([str(p) for p in probe])
    assert accuracy(predicted, ["digit_5"] * len(probe)) >= 0.4
    with capsys.disabled():
        print(f"\n(c) digits: before learn {record['accuracy_matrix'][-1]}, after {after['accuracy_matrix'][-1]}, "
              f"digit_5 predicted {accuracy(predicted, ['digit_5'] * len(probe)):.3f}")
    capsys.readouterr()
    out = tmp_path / "timm-export"
    assert main(["export", str(run), "--out", str(out), "--format", "timm"]) == 0
    exported = sdlora.load(out)
    assert exported.class_names == after["class_names"]
    torch.testing.assert_close(exported.logits([str(p) for p in probe]), sdlora.load(run).logits([str(p) for p in
                                                                                                 probe]),
                               atol=1e-4, rtol=1e-4)
    import timm

    with no_library_warnings():
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert plain.pretrained_cfg["label_names"] == after["class_names"]
    # timm's own preprocessing from the folder's pretrained_cfg is the run's evaluation transform
    from timm.data import create_transform, resolve_model_data_config

    timm_transform = create_transform(**resolve_model_data_config(plain))
    image = Image.open(probe[0]).convert("RGB")
    torch.testing.assert_close(timm_transform(image), rebuilt["test"](image), atol=1e-5, rtol=0)
    with torch.no_grad():
        timm_logits = plain(torch.stack([timm_transform(Image.open(p).convert("RGB")) for p in probe]))
    assert timm_logits.argmax(-1).tolist() == sdlora.load(run).logits([str(p) for p in probe]).argmax(-1).tolist()


def test_predict_names_a_corrupt_image_in_one_line_or_skips_it(digits_run, tmp_path, capsys):
    seed, extra = digits_run
    folder = tmp_path / "ask"
    folder.mkdir()
    shutil.copy(sorted((extra / "test" / "digit_4").glob("*.png"))[0], folder / "a.png")
    (folder / "b.png").write_bytes(b"not an image at all")
    assert main(["predict", str(seed), str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b.png" in err[0] and "--on-corrupt skip" in err[0]
    assert main(["predict", str(seed), str(folder), "--on-corrupt", "skip"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["input"]).name for r in rows] == ["a.png", "b.png"]
    assert rows[0]["label"].startswith("digit_") and rows[1]["label"] is None and rows[1]["error"] == "unreadable"


# -- (d) a learn killed or failed in the middle ------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("text")
    data = text_run_config(folder)
    data["train"]["epochs"] = 3
    return train(data, folder / "run"), write_text_files(folder / "new", ["cancel my order", "track my package"])


def comparable(run: Path) -> dict:
    return load_benchmark_script("chaos_resume").comparable(run.parent)


def learn_command(run: Path, new: dict[str, str]) -> list[str]:
    return [sys.executable, "-m", "sdlora", "learn", str(run), "--data", new["train_file"], "--test",
            new["test_file"], "--quiet"]


def environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_d_a_killed_learn_resumes_to_the_uninterrupted_results(text_run, tmp_path):
    seed, new = text_run
    straight = copy_run(seed, tmp_path / "a")
    subprocess.run(learn_command(straight, new), env=environment(), check=True, capture_output=True)
    killed = copy_run(seed, tmp_path / "b")
    start = json.loads((killed / "checkpoints" / "latest.json").read_text())["counter"]
    proc = subprocess.Popen(learn_command(killed, new), env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = killed / "checkpoints" / "latest.json"
    while proc.poll() is None:  # SIGKILL as soon as the learned task's first epoch is checkpointed
        try:
            if json.loads(pointer.read_text())["counter"] > start:
                proc.send_signal(signal.SIGKILL)
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the learn finished before it could be killed"
    assert json.loads((killed / "learned.json").read_text())["tasks"][0]["status"] == "running"
    resumed = subprocess.run([sys.executable, "-m", "sdlora", "learn", str(killed), "--resume", "--quiet"],
                             env=environment(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(killed) == comparable(straight)
    assert not (killed / ".learn-backup").exists()


def folder_hashes(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_d_a_failed_learn_is_abandoned_to_the_run_as_it_was(text_run, tmp_path, capsys):
    from sdlora.serving.learn import learn

    seed, new = text_run
    run = copy_run(seed, tmp_path)
    before = folder_hashes(run.parent)

    def fail(task, epochs, finished):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        learn(run, Path(new["train_file"]), Path(new["test_file"]), on_checkpoint=fail)
    assert folder_hashes(run.parent) != before  # a checkpoint of the new task and learned.json were written
    other = write_text_files(tmp_path / "other", ["set a timer", "call mom"])
    assert main(["learn", str(run), "--data", other["train_file"], "--test", other["test_file"]]) == 1
    assert "--abandon" in capsys.readouterr().err
    assert main(["learn", str(run), "--abandon"]) == 0
    assert folder_hashes(run.parent) == before
    assert main(["learn", str(run), "--abandon"]) == 1  # nothing left to abandon
    assert main(["learn", str(run), "--data", other["train_file"], "--test", other["test_file"], "--quiet"]) == 0
    assert results(run)["class_names"][-2:] == ["call mom", "set a timer"]


def test_d_a_learn_that_fails_before_training_leaves_the_run_as_it_was(text_run, tmp_path, monkeypatch):
    from sdlora.serving import learn as learn_module

    seed, new = text_run
    run = copy_run(seed, tmp_path)
    before = folder_hashes(run.parent)

    def broken(self, resume=False):
        raise MemoryError("out of memory while building the task")

    monkeypatch.setattr(learn_module.Trainer, "run", broken)
    with pytest.raises(MemoryError):
        learn_module.learn(run, Path(new["train_file"]), Path(new["test_file"]))
    assert folder_hashes(run.parent) == before and not (run / "learned.json").exists()
