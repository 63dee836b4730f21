"""Scalar loggers: scalars.csv (per step and per epoch, the method's named scalars), TensorBoard, W&B checks."""

import csv
import io
import json
import sys
import types

import pytest

from engine_helpers import tiny
from sdlora.config import load_config
from sdlora.engine import loggers as loggers_mod
from sdlora.engine.build import validate_plugins
from sdlora.engine.runner import interactive, run_config
from sdlora.typed import ConfigError

SDLORA = tiny(method={"name": "sdlora", "options": {"rank": 2}}, train={"epochs": 2, "lr": 0.01})


def run(out, data, **kw):
    return run_config(load_config(data=data), out, quiet=True, stream=io.StringIO(), **kw)


def rows(folder):
    with (folder / "scalars.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_scalars_csv_has_steps_epochs_magnitudes_and_accuracy(tmp_path):
    run(tmp_path / "run", SDLORA)
    folder = tmp_path / "run" / "seed-3"
    found = rows(folder)
    steps = [r for r in found if r["name"] == "train/loss"]
    assert len(steps) == 3 * 2 * 3  # 3 tasks x 2 epochs x 3 batches (12 samples, batch 4)
    assert [int(r["step"]) for r in steps] == list(range(1, 19))
    epochs = [r for r in found if r["name"] == "epoch/loss"]
    assert [(r["task"], r["epoch"]) for r in epochs] == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2"),
                                                         ("3", "1"), ("3", "2")]
    assert {r["name"] for r in found if r["task"] == "3"} >= {"method/magnitude_1", "method/magnitude_2",
                                                              "method/magnitude_3", "train/lr", "epoch/lr"}
    result = json.loads((folder / "results.json").read_text())
    accuracy = [float(r["value"]) for r in found if r["name"] == "eval/accuracy"]
    assert accuracy == pytest.approx(result["accuracy_curve"], abs=1e-5)
    assert float(next(r["value"] for r in found if r["name"] == "train/lr")) == 0.01


class Interrupt(Exception):
    pass


def test_resume_drops_the_rows_after_the_checkpoint(tmp_path):
    run(tmp_path / "ref", SDLORA)

    def stop(task, epochs, finished):
        if (task, epochs, finished) == (1, 1, False):
            raise Interrupt

    with pytest.raises(Interrupt):
        run(tmp_path / "cut", SDLORA, on_checkpoint=stop)
    with (tmp_path / "cut" / "seed-3" / "scalars.csv").open("a") as handle:  # as if killed mid-epoch
        handle.write("99,2,2,train/loss,1.0\n")
    run(tmp_path / "cut", SDLORA, resume=True)
    assert rows(tmp_path / "cut" / "seed-3") == rows(tmp_path / "ref" / "seed-3")


def test_tensorboard_logger_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tmp_path / "run", tiny(train={"loggers": ["csv", "tensorboard"], "epochs": 1}, benchmark={"num_tasks": 1}))
    events = EventAccumulator(str(tmp_path / "run" / "seed-3" / "tensorboard"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    csv_losses = [float(r["value"]) for r in rows(tmp_path / "run" / "seed-3") if r["name"] == "train/loss"]
    assert losses == pytest.approx(csv_losses, rel=1e-6) and len(losses) == 3


def test_wandb_logger_offline_records_the_same_scalars(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run(tmp_path / "run", tiny(train={"loggers": ["csv", "wandb"], "epochs": 1}, benchmark={"num_tasks": 1},
                               method={"name": "sdlora", "options": {"rank": 2}}))
    seed = tmp_path / "run" / "seed-3"
    run_id = (seed / "wandb_id.txt").read_text().strip()
    (offline,) = list((seed / "wandb").glob(f"offline-run-*-{run_id}"))
    records = (offline / f"run-{run_id}.wandb").read_bytes()  # W&B's offline record log, synced later
    csv_names = {r["name"] for r in rows(seed)}
    assert {"train/loss", "method/magnitude_1"} <= csv_names
    assert all(name.encode() in records for name in csv_names)  # every scalar reached W&B too


def test_unknown_or_missing_loggers_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"train.loggers: unknown logger 'tensorbord' \(did you mean "
                                          r"'tensorboard'\?\); known loggers: csv, tensorboard, wandb"):
        validate_plugins(load_config(data=tiny(train={"loggers": ["tensorbord"]})))
    real = loggers_mod.importlib.util.find_spec
    monkeypatch.setattr(loggers_mod.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n))
    with pytest.raises(ConfigError, match=r"train.loggers: 'wandb' needs the wandb package, which is not "
                                          r"installed: pip install 'sdlora\[wandb\]'"):
        validate_plugins(load_config(data=tiny(train={"loggers": ["csv", "wandb"]})))


def test_progress_bars_in_notebooks_not_in_logs(monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not interactive()  # a log file or a pipe
    kernel = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "k.json"}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert interactive()  # Jupyter: tqdm.auto draws a widget
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not interactive()  # IPython imported but no kernel (a script)
