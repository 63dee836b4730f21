"""Rebuild a finished run's model from its folder (for `sdlora eval` and `sdlora export`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from sdlora.config import RunConfig, load_config
from sdlora.engine import build
from sdlora.engine.checkpoint import load_checkpoint
from sdlora.engine.seeding import seed_everything
from sdlora.methods.base import Method


@dataclass
class RestoredRun:
    cfg: RunConfig
    seed: int
    folder: Path
    method: Method
    tasks_done: int


def find_seed_folder(run_dir: Path, seed: int | None = None) -> Path:
    """A seed folder itself, or the one seed folder of a run (or the one `seed` names)."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    folders = sorted(run_dir.glob("seed-*"))
    if seed is not None:
        folders = [f for f in folders if f.name == f"seed-{seed}"]
    if not folders:
        raise FileNotFoundError(f"{run_dir} holds no run (no checkpoints/ and no seed-*/ folders)")
    if len(folders) > 1:
        raise ValueError(f"{run_dir} holds {len(folders)} seeds ({', '.join(f.name for f in folders)}); "
                         "choose one with --seed or pass the seed folder")
    return folders[0]


def check_weights(info: dict, results_file: Path) -> None:
    """The rebuilt backbone must carry the weights the run was trained on (same sha256)."""
    if not results_file.is_file():
        return
    recorded = json.loads(results_file.read_text()).get("backbone", {}).get("weights_sha256")
    if recorded and info.get("weights_sha256") and recorded != info["weights_sha256"]:
        raise ValueError(f"the backbone weights differ from the run's (sha256 {info['weights_sha256'][:12]}... "
                         f"vs {recorded[:12]}... in {results_file}); the pretrained weights changed")


def restore_run(run_dir: Path, seed: int | None = None, device: str = "cpu") -> RestoredRun:
    folder = find_seed_folder(run_dir, seed)
    config_file = next((p / "config.yaml" for p in (folder, folder.parent) if (p / "config.yaml").is_file()), None)
    if config_file is None:
        raise FileNotFoundError(f"no config.yaml next to {folder}")
    cfg = load_config(data=yaml.safe_load(config_file.read_text()), source=str(config_file))
    loaded = load_checkpoint(folder / "checkpoints")
    if loaded is None:
        raise FileNotFoundError(f"{folder / 'checkpoints'} has no checkpoint")
    meta, tensors = loaded
    if not meta["position"]["finished"]:
        raise ValueError(f"{folder}: the last checkpoint is in the middle of task {meta['position']['task'] + 1}; "
                         "finish the run with `sdlora train ... --resume` first")
    seed_value = int(folder.name.split("-", 1)[1]) if folder.name.startswith("seed-") else cfg.seeds[0]
    seed_everything(seed_value)  # as the trainer did: random-init backbones come out the same
    backbone = build.build_backbone(cfg).to(device)
    check_weights(backbone.info(), folder / "results.json")
    method = build.build_method(cfg, backbone).to(device)
    method.load_checkpoint_state(meta["method"], {k[7:]: v.to(device) for k, v in tensors.items()
                                                  if k.startswith("method.")})
    method.to(device)
    return RestoredRun(cfg, seed_value, folder, method, meta["position"]["task"] + 1)


def classifier_kind(method: Any) -> str:
    """How the exported head applies to the pooled feature: a key of `sdlora.export.common.CLASSIFIER_KINDS`."""
    head = method.class_head
    return "linear" if head is None else head.export_kind


def export_run(run: RestoredRun, path: Path) -> dict[str, torch.Tensor]:
    """Merged backbone (`backbone.*`, a plain timm / transformers state dict) + head (`head.*`); the metadata's
    `classifier` says how the head applies (`normalized_linear`: L2-normalise the feature first)."""
    from safetensors.torch import save_file

    run.method.check_exportable()
    state = {k: v.contiguous().cpu() for k, v in run.method.export_state_dict().items()}
    meta = {
        "format": "sdlora-export-1",
        "backbone": json.dumps(run.method.backbone.info()),
        "config": json.dumps({"backbone": run.cfg.backbone.name, "options": run.cfg.backbone.options}),
        "num_classes": str(state["head.weight"].shape[0]),
        "classifier": classifier_kind(run.method),  # how head.* applies (sdlora.export.common.CLASSIFIER_KINDS)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return state
