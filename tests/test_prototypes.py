import io
import json

import pytest
import torch
import torch.nn.functional as F

from engine_helpers import TINY, tiny
from sdlora.config import load_config
from sdlora.engine.runner import run_config
from sdlora.methods.prototypes import ClassPrototypes


def test_fit_sets_class_means_and_grows():
    protos = ClassPrototypes(2)
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    protos.fit(feats, torch.tensor([0, 0, 1, 1]), 0, 2)
    assert torch.equal(protos.means, torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
    protos.fit(torch.tensor([[-1.0, -1.0]]), torch.tensor([2]), 2, 3)
    assert protos.num_classes == 3 and torch.equal(protos.means[2], torch.tensor([-1.0, -1.0]))
    with pytest.raises(ValueError, match=r"no training samples for classes \[4\]"):
        protos.fit(feats[:1], torch.tensor([3]), 3, 5)


def test_cosine_logits_pick_the_nearest_direction():
    protos = ClassPrototypes(2)
    protos.fit(torch.tensor([[10.0, 0.0], [0.0, 0.1]]), torch.tensor([0, 1]), 0, 2)
    logits = protos.cosine_logits(torch.tensor([[1.0, 0.2], [0.1, 5.0]]))
    assert logits.argmax(1).tolist() == [0, 1]
    assert logits[0, 0].item() == pytest.approx(1 / (1 + 0.04) ** 0.5)


def test_sdc_moves_prototypes_by_a_uniform_drift_exactly():
    protos = ClassPrototypes(3)
    protos.fit(torch.eye(3), torch.tensor([0, 1, 2]), 0, 3)
    before = torch.randn(20, 3)
    shift = torch.tensor([0.5, -1.0, 2.0])
    moved = protos.compensate_drift(before, before + shift, upto=2, sigma=0.3)
    assert torch.allclose(protos.means[:2], torch.eye(3)[:2] + shift, atol=1e-6)
    assert torch.equal(protos.means[2], torch.eye(3)[2])  # classes >= upto are not touched
    assert moved == pytest.approx(shift.norm().item(), rel=1e-6)


def test_sdc_weights_follow_proximity():
    protos = ClassPrototypes(2)
    protos.fit(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]), 0, 2)
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    after = before + torch.tensor([[1.0, 0.0], [0.0, -1.0]])
    protos.compensate_drift(before, after, upto=2, sigma=0.1)
    # each prototype follows the sample next to it, not the other one
    assert torch.allclose(protos.means, torch.tensor([[2.0, 0.0], [0.0, 0.0]]), atol=1e-4)


def test_prototype_classifier_and_class_mean_head_end_to_end(tmp_path):
    data = tiny(method={"name": "sdlora", "options": {"rank": 2},
                        "classifier": {"kind": "prototypes", "drift": "sdc", "head_init": "class_mean"}},
                train={"epochs": 1})
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    result = json.loads((tmp_path / "run" / "seed-3" / "results.json").read_text())
    assert "prototype_shift" not in result["task_info"][0] and result["task_info"][1]["prototype_shift"] > 0
    from sdlora.engine.restore import restore_run
    from sdlora.export.single_file import export_run

    run = restore_run(tmp_path / "run")
    state = export_run(run, tmp_path / "m.safetensors")
    assert torch.allclose(state["head.weight"].norm(dim=1), torch.ones(6), atol=1e-5)  # unit-norm class means
    assert torch.equal(state["head.bias"], torch.zeros(6))


def test_class_mean_head_rows_are_scaled_cosines():
    from sdlora.data.scenario import TaskInfo
    from sdlora.engine.build import build_backbone, build_method

    cfg = load_config(data=tiny(method={**TINY["method"],
                                        "classifier": {"head_init": "class_mean", "head_init_scale": 5.0}}))
    method = build_method(cfg, build_backbone(cfg))
    task = TaskInfo(0, 0, 2, 3)
    method.begin_task(task)
    feats = torch.randn(6, 32) + 3
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    method.classifier.init_rows(feats, labels, task)
    means = torch.stack([feats[:3].mean(0), feats[3:].mean(0)])
    expected = F.normalize(means, dim=-1) * 5.0 / feats.norm(dim=-1).mean()
    assert torch.allclose(method.head.weight(), expected, atol=1e-6)
