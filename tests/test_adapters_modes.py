"""The three current-direction modes, pinned: what happens at the start, during, and at the end of a task."""

from __future__ import annotations

import pytest
import torch

from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.testing import tiny_vit

torch.set_num_threads(1)


def perturb(adapter: SDLoRAAdapter) -> None:
    with torch.no_grad():
        for p in adapter.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.3)


def slice_norms(adapter: SDLoRAAdapter, name: str) -> list[float]:
    wrapper = adapter.wrappers[name]
    delta = wrapper.delta_weight()
    return [float(torch.linalg.matrix_norm(delta[a:b])) for a, b in wrapper.bounds]


@pytest.mark.parametrize("kernel", ["factored", "fused_proj"])
def test_continuous_mode_is_continuous_at_every_task_boundary(kernel: str) -> None:
    torch.manual_seed(0)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank_schedule=[[0, 3], [2, 2]], kernel=kernel))
    x = torch.randn(2, 3, 32, 32)
    for task in range(4):
        before_begin = model(x)
        adapter.begin_task()
        torch.testing.assert_close(model(x), before_begin, atol=1e-5, rtol=0, msg=f"begin_task {task}")
        perturb(adapter)
        trained = model(x)
        values = adapter.magnitude_values()
        adapter.end_task()
        torch.testing.assert_close(model(x), trained, atol=1e-5, rtol=0, msg=f"end_task {task}")
        assert adapter.magnitude_values() == values  # carried over, never re-created
    assert len(adapter.magnitude_values()) == 4
    assert torch.equal(adapter.wrappers["blocks.0.attn.qkv"].bank.divisor, torch.ones(2, 4))


def test_official_mode_normalises_at_freeze_and_recreates_magnitudes() -> None:
    torch.manual_seed(1)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=3, current_mode="official", norm="product"))
    x = torch.randn(2, 3, 32, 32)
    name = "blocks.0.attn.qkv"
    adapter.begin_task()
    bank = adapter.wrappers[name].bank
    assert torch.equal(bank.cur_up, torch.zeros_like(bank.cur_up))  # U_t = 0
    bound = 1 / 48**0.5
    assert bank.cur_down.abs().max() <= bound and bank.cur_down.abs().max() > 0.5 * bound  # kaiming(a=sqrt 5)
    assert adapter.magnitude_values() == pytest.approx([0.8])
    perturb(adapter)
    alpha = adapter.magnitude_values()[0]
    up, down = bank.cur_up.detach().clone(), bank.cur_down.detach().clone()
    trained = model(x)
    adapter.end_task()
    # frozen term = alpha U D / ||U D||_F: each slice of the update now has Frobenius norm |alpha|
    assert slice_norms(adapter, name) == pytest.approx([abs(alpha)] * 2, rel=1e-5)
    expected = torch.linalg.matrix_norm(up @ down)
    torch.testing.assert_close(bank.divisor[:, 0], expected, rtol=1e-5, atol=0)
    assert (model(x) - trained).abs().max() > 1e-3  # the function jumps (the official behaviour)
    with torch.no_grad():
        adapter.magnitudes.alpha.fill_(1.7)
    adapter.begin_task()
    assert adapter.magnitude_values() == pytest.approx([0.8, 0.8])  # every magnitude re-created


def test_official_mode_with_factor_norms() -> None:
    torch.manual_seed(2)
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=3, current_mode="official", norm="factors"))
    adapter.begin_task()
    perturb(adapter)
    bank = adapter.wrappers["blocks.1.attn.qkv"].bank
    up, down = bank.cur_up.detach().clone(), bank.cur_down.detach().clone()
    adapter.end_task()
    expected = torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down)
    torch.testing.assert_close(bank.divisor[:, 0], expected, rtol=1e-6, atol=0)


def test_paper_mode_trains_a_normalised_direction_and_carries_magnitudes() -> None:
    torch.manual_seed(3)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=3, current_mode="paper"))
    assert adapter.config.resolved_magnitude_init == 1.0
    x = torch.randn(2, 3, 32, 32)
    name = "blocks.1.attn.qkv"
    before = model(x)
    adapter.begin_task()
    bank = adapter.wrappers[name].bank
    assert bank.cur_up.abs().sum() > 0 and bank.cur_down.abs().sum() > 0  # both factors random
    assert (model(x) - before).abs().max() > 1e-3  # a random unit direction appears at the start
    assert slice_norms(adapter, name) == pytest.approx([1.0, 1.0], rel=1e-5)  # alpha = 1, unit direction
    perturb(adapter)
    alpha = adapter.magnitude_values()[0]
    # normalised while training
    assert slice_norms(adapter, name) == pytest.approx([abs(alpha)] * 2, rel=1e-5)
    trained = model(x)
    adapter.end_task()
    torch.testing.assert_close(model(x), trained, atol=1e-6, rtol=0)  # continuous at the end of a task
    adapter.begin_task()
    assert adapter.magnitude_values() == pytest.approx([alpha, 1.0])  # carried over; the new one at 1.0


def test_paper_mode_gradient_flows_through_the_normaliser() -> None:
    torch.manual_seed(4)
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2, current_mode="paper"))
    adapter.begin_task()
    bank = adapter.wrappers["blocks.0.attn.qkv"].bank
    # scaling U by a constant leaves the normalised direction (so the loss) unchanged: the gradient along U
    # must be orthogonal to U when the norm is differentiated (it would not be with a detached norm)
    model(torch.randn(2, 3, 32, 32)).square().sum().backward()
    radial = (bank.cur_up.grad * bank.cur_up.detach()).sum(dim=(1, 2))
    scale = bank.cur_up.grad.norm() * bank.cur_up.detach().norm()
    assert (radial.abs() / scale < 1e-5).all()


def test_magnitude_init_overrides_the_mode_default() -> None:
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2, current_mode="paper", magnitude_init=0.5))
    adapter.begin_task()
    assert adapter.magnitude_values() == [0.5]
