"""The three current-direction modes, pinned: what happens at the start, during, and at the end of a task."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import perturb
from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.testing import reference_delta, tiny_vit

torch.set_num_threads(1)


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


@pytest.mark.parametrize("norm", ["product", "factors"])
def test_official_mode_evaluates_the_trained_function_and_rebuilds_at_the_next_task(norm: str) -> None:
    """The released loop: train t -> evaluate (trained function) -> next task: normalise, all alphas at 0.8."""
    torch.manual_seed(1)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=3, current_mode="official", norm=norm))
    x = torch.randn(2, 3, 32, 32)
    name = "blocks.0.attn.qkv"
    wrapper = adapter.wrappers[name]
    adapter.begin_task()
    bank = wrapper.bank
    assert torch.equal(bank.cur_up, torch.zeros_like(bank.cur_up))  # U_t = 0
    bound = 1 / 48**0.5
    assert bank.cur_down.abs().max() <= bound and bank.cur_down.abs().max() > 0.5 * bound  # kaiming(a=sqrt 5)
    assert adapter.magnitude_values() == pytest.approx([0.8])
    perturb(adapter)
    alpha = adapter.magnitude_values()[0]
    up, down = bank.cur_up.detach().clone(), bank.cur_down.detach().clone()
    trained = model(x)
    adapter.end_task()
    torch.testing.assert_close(model(x), trained, atol=0, rtol=0)  # evaluated as trained: nothing moves
    assert torch.equal(bank.divisor[:, 0], torch.ones(2))
    assert adapter.magnitude_values() == [alpha]
    merged = adapter.merged_state_dict()[f"{name}.weight"].double()
    torch.testing.assert_close(merged - wrapper.base.weight.double(), reference_delta(adapter, name),
                               atol=1e-6, rtol=0)  # export after task t: the trained function too
    with torch.no_grad():
        adapter.magnitudes.alpha.fill_(1.7)
    adapter.begin_task()  # the rebuild: U_0 D_0 / n_0 with every magnitude re-created at 0.8
    assert adapter.magnitude_values() == pytest.approx([0.8, 0.8])
    n0 = torch.linalg.matrix_norm(up @ down) if norm == "product" else \
        torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down)
    torch.testing.assert_close(bank.divisor[:, 0], n0, rtol=1e-5, atol=0)
    assert (model(x) - trained).abs().max() > 1e-3  # the jump happens here, at the start of the next task
    expected = torch.stack([0.8 * (up[s].double() @ down[s].double()) / n0[s].double() for s in range(2)])
    delta = reference_delta(adapter, name)
    rows = torch.cat([delta[a:b] for a, b in wrapper.bounds]).view(2, 48, 48)
    torch.testing.assert_close(rows, expected, atol=1e-6, rtol=0)  # the dense formula of the rebuild
    adapter.end_task()
    adapter.begin_task()  # normalising again is idempotent: the stored factors never change
    torch.testing.assert_close(bank.divisor[:, 0], n0, rtol=1e-5, atol=0)


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


def _two_stored(mode: str) -> tuple[torch.nn.Module, SDLoRAAdapter]:
    torch.manual_seed(5)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2, current_mode=mode))
    for _ in range(2):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    return model, adapter


@pytest.mark.parametrize("mode", ["official", "paper", "continuous"])
def test_preserve_stored_keeps_every_stored_term_in_every_mode(mode: str) -> None:
    """Table 4's fixed_old: a task start that leaves stored terms and magnitudes exactly as they were."""
    model, adapter = _two_stored(mode)
    name = "blocks.1.attn.qkv"
    before = reference_delta(adapter, name)
    values, divisor = adapter.magnitude_values(), adapter.wrappers[name].bank.divisor.clone()
    adapter.begin_task(preserve_stored=True)
    assert adapter.magnitude_values()[:2] == values
    assert torch.equal(adapter.wrappers[name].bank.divisor, divisor)
    adapter.wrappers[name].bank.cur_up.data.zero_()  # the stored part alone (paper starts a random direction)
    torch.testing.assert_close(reference_delta(adapter, name, newest_normalised=False), before, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["official", "paper", "continuous"])
def test_task_start_without_a_new_direction_applies_the_mode_rule(mode: str) -> None:
    """Table 4's first_direction_only: no new direction, but the mode's task-start rule still applies."""
    model, adapter = _two_stored(mode)
    x = torch.randn(2, 3, 32, 32)
    trained, values = model(x), adapter.magnitude_values()
    info = adapter.begin_task(new_direction=False)
    assert info == {"task": None, "rank": None} and adapter.current_task is None
    if mode == "official":  # the released rebuild: normalised, every magnitude re-created at 0.8
        assert adapter.magnitude_values() == pytest.approx([0.8, 0.8])
        assert not torch.allclose(model(x), trained)
    else:
        assert adapter.magnitude_values() == values
        torch.testing.assert_close(model(x), trained, atol=0, rtol=0)
    name = "blocks.0.attn.qkv"
    expected = reference_delta(adapter, name, newest_normalised=True)
    got = adapter.merged_state_dict()[f"{name}.weight"].double() - adapter.wrappers[name].base.weight.double()
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
