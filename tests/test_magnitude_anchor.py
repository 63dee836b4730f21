"""SD-LoRA's magnitude anchor: lambda * sum_{k<t} (alpha_k - abar_k)^2, abar_k = alpha_k when task k ended."""

from __future__ import annotations

import io
import json

import pytest
import torch

from engine_helpers import check_resume_equals_uninterrupted, tiny
from sdlora.backbones.timm_vit import TimmViT
from sdlora.config import TrainConfig, load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.methods.sdlora import SDLoRA

TINY_VIT = TimmViT.Options(model="vit_tiny_patch16_224", pretrained=False,
                           model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32,
                                         "num_heads": 2})


def method_after_task_one(mode: str = "continuous", lam: float = 0.5) -> SDLoRA:
    torch.manual_seed(0)
    method = SDLoRA(TimmViT(TINY_VIT), SDLoRA.Options(rank=2, current_mode=mode, magnitude_anchor=lam),
                    TrainConfig(lr=0.1))
    first = TaskInfo(0, 0, 2, 2)
    method.begin_task(first)
    with torch.no_grad():
        method.adapter.magnitudes.alpha.fill_(1.3)  # as if task 1 had trained its magnitude to 1.3
        for p in method.adapter.trainable_parameters():
            if p is not method.adapter.magnitudes.alpha:
                p.normal_()
    method.adapter.end_task()
    method.begin_task(TaskInfo(1, 2, 4, 2))
    return method


def batch():
    torch.manual_seed(1)
    return torch.randn(4, 3, 32, 32), torch.tensor([2, 3, 2, 3])


@pytest.mark.parametrize("mode", ["continuous", "paper"])
def test_anchor_is_the_magnitude_at_the_end_of_its_task(mode):
    method = method_after_task_one(mode)
    assert method.magnitude_anchors.tolist() == pytest.approx([1.3])


def test_official_rebuild_re_anchors_at_the_recreated_value():
    method = method_after_task_one("official")
    assert method.adapter.magnitude_values() == pytest.approx([0.8, 0.8])
    assert method.magnitude_anchors.tolist() == pytest.approx([0.8])


def test_penalty_adds_lambda_times_squared_distance_and_pulls_back():
    method = method_after_task_one(lam=0.5)
    task = TaskInfo(1, 2, 4, 2)
    method.train()
    inputs, labels = batch()
    at_anchor = method.training_step((inputs, labels), task)
    assert float(at_anchor.scalars["magnitude_anchor_penalty"]) == 0
    with torch.no_grad():
        method.adapter.magnitudes.alpha[0] += 0.4  # old magnitude drifted up by 0.4
    moved = method.training_step((inputs, labels), task)
    base = method.loss(method(inputs), labels, task)
    assert float((moved.loss - base).detach()) == pytest.approx(0.5 * 0.4**2, rel=1e-5)
    assert float(moved.scalars["magnitude_anchor_penalty"]) == pytest.approx(0.08, rel=1e-5)
    alpha = method.adapter.magnitudes.alpha
    grad_with = torch.autograd.grad(moved.loss, alpha)[0][0]
    grad_without = torch.autograd.grad(method.loss(method(inputs), labels, task), alpha)[0][0]
    assert float(grad_with - grad_without) == pytest.approx(2 * 0.5 * 0.4, rel=1e-5)  # d/dalpha of the pull


def test_off_by_default_changes_nothing():
    method = method_after_task_one(lam=0.0)
    with torch.no_grad():
        method.adapter.magnitudes.alpha[0] += 0.4
    inputs, labels = batch()
    task = TaskInfo(1, 2, 4, 2)
    step = method.training_step((inputs, labels), task)
    assert torch.equal(step.loss, method.loss(method(inputs), labels, task))
    assert step.scalars == {}


def test_anchor_bounds_old_magnitudes_and_resumes_exactly(tmp_path):
    def data(lam):
        return tiny(method={"name": "sdlora", "options": {"rank": 2, "magnitude_anchor": lam}},
                    train={"optimizer": "sgd", "lr": 0.2, "momentum": 0.0, "epochs": 3})

    def magnitudes(lam, name):
        run_config(load_config(data=data(lam)), tmp_path / name, quiet=True, stream=io.StringIO())
        info = json.loads((tmp_path / name / "seed-3" / "results.json").read_text())["task_info"]
        return [t["magnitudes"] for t in info]

    free = magnitudes(0.0, "free")
    # the anchored run is also stopped mid-task 3 and resumed: the anchors are in the checkpoint
    ref = check_resume_equals_uninterrupted(tmp_path / "anchored", data(2.0), stop_at=(2, 1, False))
    anchored = [t["magnitudes"] for t in ref["task_info"]]
    # task 1's magnitude after task 1, then after task 3: the anchor holds it near where its task left it
    drift_free, drift_anchored = abs(free[2][0] - free[0][0]), abs(anchored[2][0] - anchored[0][0])
    assert drift_free > 0.01 and drift_anchored < drift_free / 10


@pytest.mark.parametrize(("options", "message"), [
    ({"magnitude_anchor": -1.0}, "magnitude_anchor must be >= 0"),
    ({"magnitude_anchor": 1.0, "ablation": "fixed_old"}, "magnitude_anchor has no effect"),
])
def test_bad_anchor_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        build.validate_plugins(load_config(data=tiny(method={"name": "sdlora", "options": options})))
