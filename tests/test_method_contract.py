"""The method contract (issue 10): `training_step` defaults to forward + loss exactly; auxiliary losses train
and their scalars reach scalars.csv as `method/<name>` (epoch means)."""

import copy
import csv
import io
from dataclasses import dataclass

import pytest
import torch

from engine_helpers import tiny
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.engine.runner import run_config
from sdlora.methods.base import Method, StepOutput
from sdlora.registry import METHODS


class AuxLoss(Method):
    """Linear probe + an auxiliary term 0.5 * ||anchor||^2 on a parameter that only the auxiliary loss reaches."""

    @dataclass
    class Options:
        pass

    def __init__(self, backbone, options, train, classifier=None) -> None:  # noqa: ANN001
        super().__init__(backbone, options, train, classifier)
        self.anchor = torch.nn.Parameter(torch.full((3,), 2.0))

    def trainable_parameters(self):  # noqa: ANN201
        return [*super().trainable_parameters(), {"params": [self.anchor]}]

    def training_step(self, batch, task):  # noqa: ANN001, ANN201
        out = super().training_step(batch, task)
        aux = 0.5 * self.anchor.pow(2).sum()
        return StepOutput(out.loss + aux, {"aux": aux.detach().item(), "ce": out.loss.detach().item()})


@pytest.fixture
def aux_method(monkeypatch):  # noqa: ANN001, ANN201
    """`test_aux_loss` registered for one test only (the registry's listing stays the built-in one)."""
    METHODS.names()  # load the built-ins first
    monkeypatch.setitem(METHODS._entries, "test_aux_loss", AuxLoss)
    monkeypatch.setitem(METHODS._docs, "test_aux_loss", "test method")


def built(method: dict):  # noqa: ANN201
    cfg = load_config(data=tiny(method=method))
    torch.manual_seed(0)
    backbone = build.build_backbone(cfg)
    return build.build_method(cfg, backbone), cfg


@pytest.mark.parametrize("method", [{"name": "linear_probe"}, {"name": "sdlora", "options": {"rank": 2}}])
def test_default_training_step_equals_forward_then_loss(method):
    """Same loss bits and same gradients as the engine's former `loss(forward(x).float(), y, task)`."""
    new, _ = built(method)
    task = TaskInfo(index=0, known=0, total=2, num_tasks=3)
    new.begin_task(task)
    new.train()
    old = copy.deepcopy(new)
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    step = new.training_step((x, y), task)
    reference = old.loss(old(x).float(), y, task)
    assert step.scalars == {}
    assert torch.equal(step.loss, reference)
    step.loss.backward()
    reference.backward()
    grads_new = [p.grad for g in new.trainable_parameters() for p in g["params"]]
    grads_old = [p.grad for g in old.trainable_parameters() for p in g["params"]]
    assert len(grads_new) == len(grads_old) > 0
    assert all(torch.equal(a, b) for a, b in zip(grads_new, grads_old, strict=True))


def test_auxiliary_loss_is_trained_and_logged(tmp_path, aux_method):
    data = tiny(method={"name": "test_aux_loss"}, train={"epochs": 2, "lr": 0.05, "momentum": 0.0,
                                                          "loggers": ["csv"]})
    run_config(load_config(data=data), tmp_path / "run", quiet=True, stream=io.StringIO())
    with (tmp_path / "run" / "seed-3" / "scalars.csv").open(newline="") as handle:
        found = list(csv.DictReader(handle))
    aux = [float(r["value"]) for r in found if r["name"] == "method/aux"]
    ce = [r for r in found if r["name"] == "method/ce"]
    # one epoch mean per epoch (3 tasks x 2 epochs); the task-end rows carry none (already read)
    assert len(aux) == len(ce) == 6
    # plain SGD on 0.5||a||^2: a <- (1 - lr) a each step, 3 steps an epoch, a fresh optimiser each task
    # but the same parameter: after k steps a = 2 * 0.95^k, aux = 0.5 * 3 * a^2 before each step
    expected = []
    for epoch in range(6):
        values = [0.5 * 3 * (2 * 0.95 ** (3 * epoch + i)) ** 2 for i in range(3)]
        expected.append(sum(values) / 3)
    assert aux == pytest.approx(expected, rel=1e-5)


def test_head_rows_are_made_on_the_device_the_head_was_moved_to():
    """A head moved before it has rows (the trainer builds the method, then moves it) grows there: the
    first task's rows were made on the CPU while the features came from the GPU."""
    from sdlora.methods.head import IncrementalHead

    head = IncrementalHead(4).to(torch.device("meta"))
    head.grow(3)
    head.grow(2)
    assert [w.device.type for w in head.weights] == ["meta", "meta"]
    head.resize_to([3, 2])
    assert {p.device.type for p in head.parameters()} == {"meta"}
    assert "device_tag" not in head.state_dict()


TASK_START_METHODS = {
    "sdlora-continuous": {"name": "sdlora", "options": {"rank": 2}},
    "sdlora-official": {"name": "sdlora", "options": {"rank": 2, "current_mode": "official"}},
    "sdlora-paper": {"name": "sdlora", "options": {"rank": 2, "current_mode": "paper"}},
    "seq_lora": {"name": "seq_lora", "options": {"rank": 2}},
    "inflora": {"name": "inflora", "options": {"rank": 2}},
    "linear_probe": {"name": "linear_probe"},
    "finetune": {"name": "finetune"},
    "l2p": {"name": "l2p", "options": {"pool_size": 4, "prompt_length": 2, "top_n": 2}},
    "dualprompt": {"name": "dualprompt", "options": {"g_layers": [0], "g_length": 2, "e_layers": [1], "e_length": 3}},
    "coda_prompt": {"name": "coda_prompt", "options": {"pool_size": 6, "prompt_length": 4, "layers": [0, 1]}},
    "hide_prompt": {"name": "hide_prompt", "options": {"e_layers": [0, 1], "e_length": 3, "tii_epochs": 1,
                                                       "ca_epochs": 1}},
}


@pytest.mark.parametrize("method", list(TASK_START_METHODS.values()), ids=list(TASK_START_METHODS))
def test_sdc_reference_features_come_from_the_function_the_prototypes_describe(tmp_path, method):
    """SDC's reference features are taken before `begin_task`, and `task_start_keeps_features` tells the
    truth: where the task start changes the features (the official rebuild, paper's random direction), that
    drift is compensated too; where it does not, the head init reuses the same pass. Over 3 tasks, as a copied
    per-task prompt can keep the features at one start and not at the next: DualPrompt's second start keeps them
    (E^1 = E^0, which every input used), its third does not (inputs that used E^0 now get E^2 = E^1)."""
    from sdlora.engine.trainer import Trainer
    from sdlora.methods.prototypes import collect_features

    sdc = "sdc" in METHODS.get(method["name"]).classifier_support.drifts  # not where features cannot drift
    classifier = {"kind": "prototypes", "drift": "sdc" if sdc else "none", "head_init": "class_mean"}
    cfg = load_config(data=tiny(method={**method, "classifier": classifier}))
    trainer = Trainer(cfg, 3, tmp_path / "run", torch.device("cpu"), build.build_benchmark(cfg), quiet=True)
    m = trainer.method
    original, seen = m.begin_task, {"kept": []}

    def begin_task(task):
        loader = trainer._loader(trainer.scenario.train_set(task.index), shuffle=False)
        before = collect_features(m.features, loader, torch.device("cpu"))[0] if task.index else None
        if task.index and sdc:
            assert torch.equal(m.features_before, before)  # taken under the function before the start
        original(task)
        m.eval()
        if task.index:
            seen["kept"].append(torch.equal(collect_features(m.features, loader, torch.device("cpu"))[0], before))

    m.begin_task = begin_task
    trainer.run()
    assert len(seen["kept"]) == 2 and all(seen["kept"]) == m.task_start_keeps_features


def test_step_scalars_take_tensors_and_floats_and_read_them_once():
    """Tensor scalars are summed where they are (no host sync per step) and read at `pop_means`."""
    from sdlora.methods.base import StepScalars

    scalars = StepScalars()
    scalars.add({"ce": torch.tensor(1.5), "pull": 0.25})
    scalars.add({"ce": torch.tensor(0.5, requires_grad=True) * 1, "pull": 0.75})
    assert isinstance(scalars.sums["ce"], torch.Tensor) and not scalars.sums["ce"].requires_grad
    assert scalars.pop_means() == {"ce": 1.0, "pull": 0.5}
    assert scalars.pop_means() == {}
