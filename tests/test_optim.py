import pytest
import torch

from sdlora.config import FirstTaskConfig, TrainConfig
from sdlora.engine.optim import build_optimizer, build_scheduler, task_schedule


def lrs(cfg: TrainConfig, task: int) -> list[float]:
    schedule = task_schedule(cfg, task)
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg, schedule)
    sched = build_scheduler(opt, cfg, schedule)
    out = []
    for _ in range(schedule.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_multistep_and_first_task_overrides():
    cfg = TrainConfig(lr=0.1, epochs=4, scheduler="multistep", milestones=[2], gamma=0.5,
                      first_task=FirstTaskConfig(lr=1.0, epochs=3, milestones=[1], gamma=0.1))
    assert lrs(cfg, 0) == pytest.approx([1.0, 0.1, 0.1])
    assert lrs(cfg, 1) == pytest.approx([0.1, 0.1, 0.05, 0.05])


def test_cosine_and_constant():
    assert lrs(TrainConfig(lr=0.2, epochs=3, scheduler="constant"), 5) == pytest.approx([0.2] * 3)
    cosine = lrs(TrainConfig(lr=1.0, epochs=4, scheduler="cosine", min_lr=0.0), 0)
    assert cosine == pytest.approx([1.0, 0.853553, 0.5, 0.146447], abs=1e-6)


def test_optimizer_kinds_and_empty_groups():
    p = torch.nn.Parameter(torch.zeros(1))
    schedule = task_schedule(TrainConfig(), 0)
    sgd = build_optimizer([{"params": [p]}, {"params": []}], TrainConfig(momentum=0.5), schedule)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.5 and len(sgd.param_groups) == 1
    adam = build_optimizer([{"params": [p]}], TrainConfig(optimizer="adam", betas=[0.8, 0.9]), schedule)
    assert adam.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([{"params": []}], TrainConfig(), schedule)
