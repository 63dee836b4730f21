"""`sdlora learn RUN --data NEW_TRAIN --test NEW_TEST`: one more task of new classes for a finished run.

No old training data is read: the run's checkpoint carries the model, the new files the new classes (a
CSV / TSV / JSON-lines text file, or an image folder with one sub-folder per class, read through the run's own
transforms). The new task's classes follow the classes the model was trained on (`RunFolder.trained_classes`);
a class of the benchmark that the run never trained counts as new. `--set train.KEY=VALUE` changes the new task's
training settings, and `--set method.classifier.KEY=VALUE` how its linear head trains (`loss`, `freeze_old_head`,
`head_lr`; the old `train.loss` etc. are read as those); validated like the run's config and recorded in learned.json
so a resume uses the same.

The engine's `Trainer` continues the run over the grown scenario (`learn_data.combined_data`): the same loop,
checkpoints, loggers and results.json, then metrics.csv, the plots, train.log and the run's summary.json are
rewritten. Old tasks' test data is re-evaluated when it can still be read; otherwise the new row of the accuracy
matrix carries their last measured accuracy (and sample count), listed under `not_re_evaluated` in `task_info`.

Before anything changes, the seed folder is copied (`backup`): an interrupted learn resumes with `--resume` (to the
same results.json as an uninterrupted one), and `--abandon` puts the run back byte for byte. A learn that fails
before its first checkpoint restores the run by itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sdlora.config import RunConfig, config_to_dict, load_config
from sdlora.config_migration import LEGACY
from sdlora.engine import build
from sdlora.engine.checkpoint import write_json_atomic
from sdlora.engine.lock import output_lock
from sdlora.engine.results import RunRecord
from sdlora.engine.run_folder import LEARNED, RunFolder
from sdlora.engine.runner import (
    MAY_CHANGE_ON_RESUME,
    file_logger,
    pick_device,
    run_summary,
    write_seed_reports,
    write_summary,
)
from sdlora.engine.trainer import CheckpointHook, Trainer
from sdlora.method_config import HEAD_TRAINING
from sdlora.registry import BACKBONES, METHODS
from sdlora.serving.backup import drop_backup, restore_backup, take_backup
from sdlora.serving.learn_data import GrowingScenario, NewTask, combined_data, fingerprint, read_task
from sdlora.serving.learn_files import check_task_files
from sdlora.typed import ConfigError

log = logging.getLogger("sdlora")

#: what `learn --set` may change besides `train.*`: how the linear head trains (the classifier's other settings
#: are fixed by the trained model)
HEAD_KEYS = tuple(f"method.classifier.{name}" for name in HEAD_TRAINING)


class LearnRecord(RunRecord):
    """A run record whose new rows carry the last measured accuracy of old tasks that had no test data now."""

    def add_task(self, row: list[float] | None, counts: list[int], trainable: int, seconds: float,
                 info: dict[str, Any]) -> None:
        if row is None:  # not evaluated (eval_every): nothing to carry over
            super().add_task(row, counts, trainable, seconds, info)
            return
        row, counts = list(row), list(counts)
        # the last evaluated row: the one task_test_counts belong to (eval_every leaves None rows)
        evaluated = [r for r in self.accuracy_matrix if r is not None]
        before, previous = self.task_test_counts, evaluated[-1] if evaluated else []
        stale = [j for j, n in enumerate(counts) if n == 0 and j < len(previous) and before[j] > 0]
        for j in stale:
            row[j], counts[j] = previous[j], before[j]
        if any(n == 0 for n in counts):
            raise ValueError(f"task(s) {[j + 1 for j, n in enumerate(counts) if n == 0]} have no test samples")
        super().add_task(row, counts, trainable, seconds, {**info, "not_re_evaluated": stale})


def fixed_by_the_model(key: str) -> bool:
    """Whether `--set KEY=...` would change what the trained model fixed: any key but `train.*`, `HEAD_KEYS` and
    `MAY_CHANGE_ON_RESUME`, and the old `train.` names of the classifier's other settings (`train.head_init`,
    `train.classifier.kind`, ...: read as `method.classifier.*`)."""
    if key in (*HEAD_KEYS, *MAY_CHANGE_ON_RESUME):
        return False
    parts = tuple(key.split("."))
    return parts[0] != "train" or len(parts) < 2 or any(
        path[:len(parts)] == parts or parts[:len(path)] == path for path, name in LEGACY.items()
        if name not in HEAD_TRAINING)


def learn_config(run: RunFolder, overrides: list[str]) -> RunConfig:
    """The run's config with `--set` overrides of the new task's training settings (`train.*`, `HEAD_KEYS`),
    validated like the run's config."""
    keys = [a.split("=", 1)[0].strip() for a in overrides]
    fixed = [k for k in keys if fixed_by_the_model(k)]
    if fixed:
        raise ConfigError(f"learn --set changes the new task's training settings (train.*, {', '.join(HEAD_KEYS)}) "
                          f"and {', '.join(MAY_CHANGE_ON_RESUME)} only; {fixed} are fixed by the trained model "
                          "(train a new run to change them)")
    # the folder's config as `RunFolder.open` read it (config_to_dict and load_config round-trip a RunConfig)
    return build.validate_plugins(load_config(data=config_to_dict(run.cfg), overrides=list(overrides),
                                              source=str(run.config_file)))


def check_new_task(run: RunFolder, cfg: RunConfig, new: NewTask, test: NewTask, train_file: Path,
                   test_file: Path) -> list[str]:
    """Refuse a task the model cannot learn; returns its classes (sorted)."""
    takes = BACKBONES.get(cfg.backbone.name).modality
    if new.kind != takes:
        raise ValueError(f"{train_file} holds {new.kind} but this run's backbone takes {takes}")
    classes = sorted(set(new.labels))
    trained = run.trained_classes
    known = sorted(set(classes) & set(trained))
    if known:
        raise ValueError(f"the model already knows class(es) {known[:10]}; a new task must bring new classes "
                         f"only (known: {len(trained)} classes)")
    unknown = sorted(set(test.labels) - set(classes))
    if test.kind != new.kind or unknown:
        raise ValueError(f"--test {test_file}: " + (f"labels {unknown[:10]} are not among the new training "
                         f"classes {classes[:10]}" if unknown else f"holds {test.kind}, --data holds {new.kind}"))
    trains = getattr(METHODS.get(cfg.method.name), "trains", True)
    if len(classes) == 1 and trains and cfg.method.classifier.loss == "current":
        raise ConfigError(f"the new task has one class ({classes[0]!r}): with method.classifier.loss 'current' its "
                          "loss is identically zero (cross-entropy over one logit), so nothing would be learned; add "
                          "`--set method.classifier.loss=seen` (cross-entropy over every known class) or bring two "
                          "classes or more")
    return classes


def _start(run: RunFolder, train_file: Path | None, test_file: Path | None, text_column: str, label_column: str,
           overrides: list[str]) -> tuple[dict[str, Any], NewTask, RunConfig]:
    """A new learned task: checked, the run backed up, then recorded as running in learned.json."""
    check_task_files(train_file, test_file)  # first, as the command line does before importing torch
    meta = run.checkpoint_meta()
    if not meta["position"]["finished"] or run.record.get("status") != "complete":
        raise ValueError(f"{run.folder}: the run is not finished; finish it with `sdlora train ... --resume` first")
    if run.cfg.eval_split != "test":
        raise ValueError(f"{run.folder} was evaluated on the {run.cfg.eval_split!r} split; learn evaluates on test "
                         "files, so it continues runs with eval_split: test only")
    if train_file is None and test_file is None:  # `learn RUN --resume` with nothing interrupted
        raise ValueError(f"{run.folder} has no interrupted learn to resume; to learn a new task, give its training "
                         "and test files (--data, --test)")
    if train_file is None or test_file is None:
        raise ValueError("give the new task's training and test files (--data, --test)")
    cfg = learn_config(run, overrides)
    new, test = read_task(train_file, text_column, label_column), read_task(test_file, text_column, label_column)
    classes = check_new_task(run, cfg, new, test, train_file, test_file)
    entry = {"task": len(run.record["accuracy_matrix"]), "train": str(train_file.resolve()),
             "test": str(test_file.resolve()), "sha256": fingerprint(train_file),
             "test_sha256": fingerprint(test_file), "classes": classes,
             "text_column": text_column, "label_column": label_column, "set": list(overrides), "status": "running"}
    learned = run.learned_file()
    take_backup(run.folder, run.out)
    write_json_atomic(run.folder / LEARNED, {"base": learned["base"], "tasks": [*learned["tasks"], entry]})
    return entry, new, cfg


def _continue(run: RunFolder, pending: dict[str, Any], train_file: Path | None,
              overrides: list[str]) -> tuple[dict[str, Any], NewTask, RunConfig]:
    """The interrupted learned task, as it was started."""
    where = f"task {pending['task'] + 1} from {pending['train']}"
    if train_file is not None and str(train_file.resolve()) != pending["train"]:
        raise ValueError(f"{where} was interrupted; continue it (`sdlora learn {run.folder} --resume`) or put the "
                         f"run back as it was before it (`sdlora learn {run.folder} --abandon`)")
    started = list(pending.get("set", []))
    extra = [a for a in overrides if a not in started]
    if any(a.split("=", 1)[0].strip() not in MAY_CHANGE_ON_RESUME for a in extra):
        raise ValueError(f"{where} was started with --set {started}; resume it with those (or none), adding only "
                         f"{', '.join(MAY_CHANGE_ON_RESUME)}")
    if not Path(pending["train"]).exists() or fingerprint(pending["train"]) != pending["sha256"]:
        raise ValueError(f"{pending['train']} is gone or changed since {where} started; put the run back as it "
                         f"was with `sdlora learn {run.folder} --abandon`")
    new = read_task(Path(pending["train"]), pending["text_column"], pending["label_column"])
    return pending, new, learn_config(run, started + extra)


def learn(run_dir: Path | str, train_file: Path | None = None, test_file: Path | None = None, *,
          seed: int | None = None, device: str = "cpu", text_column: str = "text", label_column: str = "label",
          overrides: list[str] | None = None, quiet: bool = True,
          on_checkpoint: CheckpointHook | None = None) -> dict[str, Any]:
    """Add one task of new classes from `train_file` (a text file or an image folder) evaluated on `test_file`, or
    continue the interrupted one (no files); returns the new results.json."""
    overrides = list(overrides or [])
    run = RunFolder.open(run_dir, seed)
    with output_lock(run.out):
        pending = run.pending
        if pending is None:
            entry, new, cfg = _start(run, train_file, test_file, text_column, label_column, overrides)
        else:
            entry, new, cfg = _continue(run, pending, train_file, overrides)
        handler = file_logger(run.folder / "train.log")
        try:
            result = _train(run, cfg, entry, new, device, quiet, on_checkpoint, fresh=pending is None)
        finally:
            log.removeHandler(handler)
            handler.close()
        learned = run.learned_file()
        learned["tasks"][-1]["status"] = "complete"
        write_json_atomic(run.folder / LEARNED, learned)
        write_seed_reports(result, run.folder)
        write_summary(run.out)
        drop_backup(run.folder)
    return result


def _train(run: RunFolder, cfg: RunConfig, entry: dict[str, Any], new: NewTask, device: str, quiet: bool,
           on_checkpoint: CheckpointHook | None, fresh: bool) -> dict[str, Any]:
    """The engine's trainer over the grown scenario, resumed from the run's last checkpoint. A `fresh` learn that
    fails before its first checkpoint puts the run back as it was."""
    counter = run.checkpoint_meta()["counter"]
    try:
        learned = run.learned_file()
        data, sizes = combined_data(cfg, learned["base"], learned["tasks"], new)
        log.info("learn: task %d of %d new classes (%d training samples) after %d trained classes",
                 entry["task"] + 1, len(entry["classes"]), len(new.items), len(run.trained_classes))
        log.info("%s", run_summary(cfg, data, pick_device(device), run.folder, sizes))
        trainer = Trainer(cfg, run.seed, run.folder, pick_device(device), data, quiet=quiet,
                          on_checkpoint=on_checkpoint, scenario=GrowingScenario(data, sizes), record=LearnRecord)
        trainer.record.config = config_to_dict(run.cfg)  # results.json keeps the run's config; learned.json the --set
        return trainer.run(resume=True)
    except BaseException as err:
        if fresh and run.checkpoint_meta()["counter"] == counter:  # nothing trained yet
            restore_backup(run.folder, run.out)
            log.error("learn failed before its first checkpoint; the run is left as it was")
        else:
            log.error("learn stopped in task %d (%s); continue with `sdlora learn %s --resume`, or put the run back "
                      "as it was with `sdlora learn %s --abandon`", entry["task"] + 1, type(err).__name__,
                      run.folder, run.folder)
        raise
