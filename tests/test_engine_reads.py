"""train_epoch reads losses back in groups (`StepContext.read_every`, used on GPUs): same values, same
parameters, and a NaN is reported at the batch where it appeared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdlora.backbones.base import Backbone
from sdlora.config import ClassifierConfig, TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.engine.loop import StepContext, TrainingDiverged, read_interval, train_epoch
from sdlora.methods.base import Method

TASK = TaskInfo(0, 0, 3, 1)


class Linear(Backbone):
    feature_dim = 5
    default_targets: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(4, 5)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


class Bar:
    def __init__(self) -> None:
        self.updates = 0

    def update(self, n: int) -> None:
        self.updates += n

    def set_postfix(self, **kwargs: object) -> None:
        pass


def train(read_every: int, batches: list, accumulate: int = 1) -> tuple[float, list[float], torch.Tensor, int]:
    torch.manual_seed(0)
    method = Method(Linear(), None, TrainConfig(), ClassifierConfig(loss="seen"))
    method.begin_task(TASK)
    optimizer = torch.optim.SGD(method.head.parameters(), lr=0.1, momentum=0.9)
    ctx = StepContext(method, optimizer, None, torch.device("cpu"), "none", None, accumulate=accumulate,
                      read_every=read_every)
    values: list[float] = []
    bar = Bar()
    mean = train_epoch(ctx, batches, TASK, bar, values.append)
    return mean, values, method.head.weight().detach().clone(), bar.updates


def batches(n: int = 10) -> list:
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen)) for _ in range(n)]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_grouped_reads_give_the_same_losses_and_parameters(accumulate):
    data = batches()
    mean, values, weight, updates = train(1, data, accumulate)
    for every in (3, 16):
        m, v, w, u = train(every, data, accumulate)
        assert (m, v, u) == (mean, values, updates)
        assert torch.equal(w, weight)
    assert len(values) == updates == 10 // accumulate


def test_grouped_reads_report_a_nan_at_its_batch():
    data = batches()
    data[4] = (data[4][0] * float("nan"), data[4][1])
    for every in (1, 3):
        with pytest.raises(TrainingDiverged, match="loss became nan at batch 5"):
            train(every, data)


def test_read_interval_is_one_on_the_cpu():
    assert read_interval(torch.device("cpu")) == 1
    assert read_interval(torch.device("cuda")) > 1
