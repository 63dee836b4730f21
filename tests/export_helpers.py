"""Tiny finished runs (timm ViT and random BERT, SD-LoRA) and a recorder of the other libraries' warnings."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

import sdlora
from engine_helpers import tiny
from sdlora.cli import main
from sdlora.config import load_config
from sdlora.engine.restore import restore_run
from sdlora.engine.runner import run_config

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}
INTENTS = ["alarm clock", "pay my bill", "weather in paris", "play some jazz"]
LIBRARY_LOGGERS = ("transformers", "timm", "peft", "huggingface_hub")


def write_text_files(folder: Path, intents: list[str] = INTENTS, suffix: str = "") -> dict[str, str]:
    """6 train and 3 test texts per intent (label = the intent's name), as CSV files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    train, test = ["text,label"], ["text,label"]
    for phrase in intents:
        train += [f"{' '.join([phrase] * (1 + i % 3))} {i},{phrase}" for i in range(6)]
        test += [f"{phrase} please {i},{phrase}" for i in range(3)]
    (folder / f"train{suffix}.csv").write_text("\n".join(train) + "\n")
    (folder / f"test{suffix}.csv").write_text("\n".join(test) + "\n")
    return {"train_file": str(folder / f"train{suffix}.csv"), "test_file": str(folder / f"test{suffix}.csv")}


def text_run_config(folder: Path, **method_options: object) -> dict:
    files = write_text_files(folder)
    return tiny(benchmark={"name": "text_files", "init_classes": 2, "increment": 2, "class_order": "sorted",
                           "options": files},
                backbone={"name": "hf_encoder", "options": {"random_init_config": TINY_BERT, "max_length": 16}},
                method={"name": "sdlora", "options": {"rank": 2, **method_options}},
                train={"epochs": 1, "batch_size": 4, "lr": 0.05}, name="tiny-text")


def vit_run_config(**method_options: object) -> dict:
    return tiny(method={"name": "sdlora", "options": {"rank": 2, **method_options}},
                train={"epochs": 1}, name="tiny-vit")


def train(data: dict, out: Path) -> Path:
    """Train `data` into `out` quietly; returns the seed folder."""
    run_config(load_config(data=data), out, quiet=True, stream=open("/dev/null", "w"))  # noqa: SIM115
    return next(out.glob("seed-*"))


class LibraryWarnings(logging.Handler):
    """Collects WARNING+ log records of the interop libraries and Python warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def no_library_warnings() -> Iterator[LibraryWarnings]:
    """Fails on any log record >= WARNING of transformers / timm / peft (load reports: unexpected, missing,
    newly initialised keys) and on any Python warning except deprecation notices between library versions."""
    handler = LibraryWarnings()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    deprecations = (DeprecationWarning, FutureWarning)
    messages = handler.messages + [str(w.message) for w in caught if not issubclass(w.category, deprecations)]
    assert not messages, f"the loading library warned: {messages}"


def check_exported_head(tmp_path: Path, classifier: dict, kind: str,
                        lift: Callable[[torch.Tensor], torch.Tensor]) -> Path:
    """A tiny ViT run with `method.classifier` = `classifier`: `sdlora.load` and the single-file export describe its
    head as `kind` and reproduce the run's own logits (the exported W, b applied to lift(feature)); timm refuses a
    head that is not a plain linear one. Returns the seed folder."""
    data = vit_run_config()
    data["method"]["classifier"] = classifier
    seed = train(data, tmp_path / "run")
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    run = restore_run(seed)
    with torch.no_grad():
        own = run.method.eval()(x)
        features = run.method.features(x)
    loaded = sdlora.load(seed)
    assert loaded.kind == kind
    torch.testing.assert_close(loaded.logits(list(x)), own, atol=1e-5, rtol=1e-5)
    assert main(["export", str(seed), "--out", str(tmp_path / "m.safetensors")]) == 0
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        assert f.metadata()["classifier"] == kind
        weight, bias = f.get_tensor("head.weight"), f.get_tensor("head.bias")
    torch.testing.assert_close(lift(features) @ weight.T + bias, own, atol=1e-5, rtol=1e-5)
    return seed
