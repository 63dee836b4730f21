import math

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


def test_quarter_cosine_is_inflora_cosine_schedule():
    """InfLoRA's CosineSchedule: lr * cos(99 pi e / (200 (K - 1))), per group, stepped once per epoch."""
    out = lrs(TrainConfig(lr=5e-4, epochs=50, scheduler="quarter_cosine", optimizer="adam"), 3)
    assert out == pytest.approx([5e-4 * math.cos(99 * math.pi * e / (200 * 49)) for e in range(50)])
    assert out[0] == 5e-4 and out[-1] == pytest.approx(5e-4 * 0.015707, rel=1e-4)
    assert lrs(TrainConfig(lr=0.3, epochs=1, scheduler="quarter_cosine"), 0) == pytest.approx([0.3])
    cfg = TrainConfig(lr=1.0, epochs=3, scheduler="quarter_cosine")
    schedule = task_schedule(cfg, 0)
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                           {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 2.0}], cfg, schedule)
    sched = build_scheduler(opt, cfg, schedule)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([math.cos(0.2475 * math.pi),
                                                                2 * math.cos(0.2475 * math.pi)])


def test_optimizer_kinds_and_empty_groups():
    p = torch.nn.Parameter(torch.zeros(1))
    schedule = task_schedule(TrainConfig(), 0)
    sgd = build_optimizer([{"params": [p]}, {"params": []}], TrainConfig(momentum=0.5), schedule)
    assert type(sgd) is torch.optim.SGD and sgd.param_groups[0]["momentum"] == 0.5 and len(sgd.param_groups) == 1
    adam = build_optimizer([{"params": [p]}], TrainConfig(optimizer="adam", betas=[0.8, 0.9]), schedule)
    assert adam.param_groups[0]["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([{"params": []}], TrainConfig(), schedule)


def test_a_setting_of_the_other_optimiser_is_refused_and_its_default_is_not():
    """momentum is SGD's and betas are Adam's: set to a value the chosen optimiser would ignore, they are refused;
    left at their defaults (a config switching optimiser with `--set train.optimizer=adam`) they are not."""
    with pytest.raises(ValueError, match="momentum \\(0.0\\) is SGD's; adam takes betas"):
        TrainConfig(optimizer="adam", momentum=0.0)
    with pytest.raises(ValueError, match="betas \\(\\[0.8, 0.99\\]\\) are Adam's; sgd takes momentum"):
        TrainConfig(optimizer="sgd", betas=[0.8, 0.99])
    opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], TrainConfig(optimizer="adamw"),
                          task_schedule(TrainConfig(optimizer="adamw"), 0))
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)
