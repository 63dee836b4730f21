"""`sdlora learn`: one more task of new classes from new files, no old training data; refusals; resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sdlora
from export_helpers import text_run_config, train, write_text_files
from sdlora.cli import main
from sdlora.serving.evaluate import evaluate_run
from sdlora.serving.learn import learn

NEW = ["cancel my order", "track my package"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = text_run_config(folder)
    data["train"]["epochs"] = 2
    return train(data, folder / "run"), write_text_files(folder / "new", NEW)


def copy_run(seed_folder, tmp_path):
    target = tmp_path / "run" / seed_folder.name
    shutil.copytree(seed_folder.parent, tmp_path / "run")
    return target


def test_learn_appends_a_task_and_re_evaluates_the_old_tests(finished, tmp_path, capsys):
    seed, new = finished
    run = copy_run(seed, tmp_path)
    before = json.loads((run / "results.json").read_text())
    assert main(["learn", str(run), "--data", new["train_file"], "--test", new["test_file"], "--quiet"]) == 0
    assert "average incremental accuracy (AAA)" in capsys.readouterr().out
    after = json.loads((run / "results.json").read_text())
    assert after["status"] == "complete" and after["task_sizes"] == [2, 2, 2]
    assert after["class_names"] == before["class_names"] + NEW
    assert after["accuracy_matrix"][:2] == before["accuracy_matrix"]
    assert len(after["accuracy_matrix"][2]) == 3 and after["task_test_counts"] == [6, 6, 6]
    assert json.loads((run / "learned.json").read_text())["tasks"][0]["status"] == "complete"
    classifier = sdlora.load(run)
    assert classifier.class_names == after["class_names"] and len(classifier.weight) == 6
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0  # re-evaluates over the grown scenario
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["tasks"] == 3 and evaluated["per_task"] == pytest.approx(after["accuracy_matrix"][2], abs=1e-4)
    # a second learn stacks another task on top, still without old training data
    more = write_text_files(tmp_path / "more", ["set a timer", "call mom"])
    assert main(["learn", str(run), "--data", more["train_file"], "--test", more["test_file"], "--quiet"]) == 0
    last = json.loads((run / "results.json").read_text())
    assert last["task_sizes"] == [2, 2, 2, 2] and last["task_test_counts"] == [6, 6, 6, 6]
    assert last["task_info"][3]["not_re_evaluated"] == []
    assert last["accuracy_matrix"][:3] == after["accuracy_matrix"]


def test_learn_refuses_known_classes_and_unfinished_input(finished, tmp_path, capsys):
    seed, _ = finished
    run = copy_run(seed, tmp_path)
    clash = write_text_files(tmp_path / "clash", ["alarm clock", "brand new"])
    assert main(["learn", str(run), "--data", clash["train_file"], "--test", clash["test_file"]]) == 1
    assert "the model already knows class(es) ['alarm clock']" in capsys.readouterr().err
    assert not (run / "learned.json").exists()
    fresh = write_text_files(tmp_path / "fresh", ["brand new", "also new"])
    assert main(["learn", str(run), "--data", fresh["train_file"], "--test", clash["test_file"]]) == 1
    assert "labels ['alarm clock'] are not among the new training classes" in capsys.readouterr().err
    assert not (run / "learned.json").exists()
    assert main(["learn", str(run)]) == 1
    assert "--data" in capsys.readouterr().err
    assert main(["learn", str(run), "--resume"]) == 1
    assert "has no interrupted learn to resume; to learn a new task, give" in capsys.readouterr().err
    assert main(["learn", str(run), "--data", str(tmp_path / "clash"), "--test", clash["test_file"]]) == 1
    assert "no images in class sub-folders" in capsys.readouterr().err
    pictures = image_folder(tmp_path / "pictures", ["cat"], 1, 0)
    assert main(["learn", str(run), "--data", str(pictures), "--test", str(pictures)]) == 1
    assert "holds images but this run's backbone takes text" in capsys.readouterr().err


def test_an_interrupted_learn_resumes_to_the_same_results(finished, tmp_path):
    seed, new = finished
    straight = copy_run(seed, tmp_path / "a")
    learn(straight, Path(new["train_file"]), Path(new["test_file"]))

    crashed = copy_run(seed, tmp_path / "b")

    def crash(task, epochs, finished_task):
        if epochs == 1 and not finished_task:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn(crashed, Path(new["train_file"]), Path(new["test_file"]), on_checkpoint=crash)
    assert json.loads((crashed / "learned.json").read_text())["tasks"][0]["status"] == "running"
    assert json.loads((crashed / "results.json").read_text())["task_sizes"] == [2, 2]  # still the old record
    assert main(["learn", str(crashed), "--resume", "--quiet"]) == 0
    a = json.loads((straight / "results.json").read_text())
    b = json.loads((crashed / "results.json").read_text())
    assert b["accuracy_matrix"] == a["accuracy_matrix"] and b["task_info"] == a["task_info"]


def test_a_learn_stopped_after_its_last_checkpoint_is_neither_used_nor_resumed_by_train(finished, tmp_path, capsys):
    seed, new = finished
    crashed = copy_run(seed, tmp_path)

    def crash(task, epochs, finished_task):
        if finished_task:  # the new task's final checkpoint is written: the model holds 6 classes, the record 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learn(crashed, Path(new["train_file"]), Path(new["test_file"]), on_checkpoint=crash)
    capsys.readouterr()
    for command in (["predict", str(crashed), new["test_file"]], ["eval", str(crashed)],
                    ["export", str(crashed), "--out", str(tmp_path / "hf"), "--format", "hf"],
                    ["train", str(crashed.parent / "config.yaml"), "--out", str(crashed.parent), "--resume"]):
        assert main([*command, "--quiet"]) != 0, command
        assert "`sdlora learn` of task 3 did not complete" in capsys.readouterr().err, command
    assert not (tmp_path / "hf").exists()
    assert main(["learn", str(crashed), "--resume", "--quiet"]) == 0
    assert evaluate_run(crashed)["per_task"] == pytest.approx(json.loads((crashed / "results.json").read_text())[
        "accuracy_matrix"][-1], abs=1e-3)  # the 3 tasks, as learn measured them


def test_learn_without_the_old_training_file(finished, tmp_path):
    seed, new = finished
    run = copy_run(seed, tmp_path)
    config = json.loads((run / "results.json").read_text())["config"]
    old_train = config["benchmark"]["options"]["train_file"]
    moved = tmp_path / "elsewhere.csv"
    shutil.move(old_train, moved)
    try:
        assert main(["learn", str(run), "--data", new["train_file"], "--test", new["test_file"], "--quiet"]) == 0
    finally:
        shutil.move(moved, old_train)
    result = json.loads((run / "results.json").read_text())
    before = json.loads((seed / "results.json").read_text())
    assert result["data"]["learn"]["original_reachable"] is False and result["task_sizes"] == [2, 2, 2]
    # the old tasks keep their last measured accuracy and count, flagged as not re-evaluated
    assert result["task_test_counts"] == [6, 6, 6] and result["task_info"][2]["not_re_evaluated"] == [0, 1]
    assert result["accuracy_matrix"][2][:2] == before["accuracy_matrix"][1]
    logged = [line for line in (run / "train.log").read_text().splitlines() if "task 3/3: accuracy" in line][-1]
    assert logged.endswith("(" + " ".join(f"{a:.1f}" for a in result["accuracy_matrix"][2]) + ")")  # not 0.0
    moved = tmp_path / "gone.csv"
    shutil.move(old_train, moved)  # the old data unreachable again, now for eval
    try:
        evaluated = evaluate_run(run)
    finally:
        shutil.move(moved, old_train)
    assert evaluated["per_task"][:2] == [None, None] and evaluated["not_evaluated"] == [1, 2]  # never 0.0
    assert evaluated["per_task"][2] == evaluated["accuracy"] == pytest.approx(result["accuracy_matrix"][2][2], abs=1e-3)


def image_folder(root, classes, per_class, seed):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_a_vit_run_learns_new_classes_from_image_folders(tiny_vit_run, tmp_path):
    run = copy_run(tiny_vit_run, tmp_path)
    train_dir = image_folder(tmp_path / "new" / "train", ["zebra", "yak"], 4, 0)
    test_dir = image_folder(tmp_path / "new" / "test", ["yak", "zebra"], 2, 1)
    assert main(["learn", str(run), "--data", str(train_dir), "--test", str(test_dir), "--quiet"]) == 0
    result = json.loads((run / "results.json").read_text())
    assert result["class_names"][-2:] == ["yak", "zebra"] and result["task_sizes"] == [2, 2, 2, 2]
    assert result["task_test_counts"] == [6, 6, 6, 4] and len(result["accuracy_matrix"][3]) == 4
    top = sdlora.load(run).predict([str(test_dir / "yak" / "0.png")], top_k=8)[0]
    assert sorted(label for label, _ in top) == sorted(result["class_names"])


def test_learning_one_seed_of_several_keeps_their_summaries_apart(tmp_path):
    data = text_run_config(tmp_path / "data")
    data["seeds"] = [3, 4]
    train(data, tmp_path / "run")
    new = write_text_files(tmp_path / "new", NEW)
    assert main(["learn", str(tmp_path / "run"), "--seed", "3", "--data", new["train_file"], "--test",
                 new["test_file"], "--quiet"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert "metrics" not in summary  # no mean over a 3-task seed and a 2-task seed
    assert [(g["seeds"], g["task_sizes"]) for g in summary["groups"]] == [([3], [2, 2, 2]), ([4], [2, 2])]
    grown = json.loads((tmp_path / "run" / "seed-3" / "results.json").read_text())
    assert summary["groups"][0]["metrics"]["final_accuracy"]["mean"] == grown["metrics"]["final_accuracy"]


def test_eval_says_when_a_learned_tasks_test_file_changed(finished, tmp_path, caplog):
    seed, _ = finished
    run = copy_run(seed, tmp_path)
    new = write_text_files(tmp_path / "new", NEW)
    learn(run, Path(new["train_file"]), Path(new["test_file"]))
    with caplog.at_level("WARNING", logger="sdlora"):
        evaluate_run(run)
    assert "changed since task" not in caplog.text
    with open(new["test_file"], "a") as f:
        f.write(f"{NEW[0]} once more,{NEW[0]}\n")
    with caplog.at_level("WARNING", logger="sdlora"):
        evaluate_run(run)
    assert f"{Path(new['test_file']).resolve()} changed since task 3 was learned" in caplog.text
