"""SD-LoRA-KD (least-squares absorption) and SD-LoRA-RR (rank schedule), and many tasks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from adapter_helpers import perturb
from sdlora.adapters import RR_SCHEDULE, SDLoRAAdapter, SDLoRAConfig, rank_for_task
from sdlora.testing import reference_delta, tiny_vit

torch.set_num_threads(1)
SCHEDULE = [[0, 2], [2, 4]]  # tasks 0, 1: rank 2; task 2+: rank 4 (room for a combination of both)


def two_tasks(mode: str = "continuous", **kw: object) -> tuple[torch.nn.Module, SDLoRAAdapter]:
    torch.manual_seed(0)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank_schedule=SCHEDULE, current_mode=mode, variant="kd", **kw))
    for _ in range(2):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    adapter.begin_task()
    perturb(adapter)  # the magnitudes move too
    return model, adapter


@torch.no_grad()
def set_combination(adapter: SDLoRAAdapter, coeffs: dict[str, torch.Tensor]) -> None:
    """Current direction of each matrix := sum_k c_k E_k with E_k the stored term U_k D_k / n_k."""
    for name, wrapper in adapter.wrappers.items():
        bank = wrapper.bank
        for s in range(bank.num_slices):
            c0, c1 = coeffs[name][s]
            e0 = bank.past_up[s, :, :2] / bank.divisor[s, 0]
            e1 = bank.past_up[s, :, 2:4] / bank.divisor[s, 1]
            bank.cur_up[s] = torch.cat([c0 * e0, c1 * e1], 1)
            bank.cur_down[s] = bank.past_down[s, :4]


def end_both(model: torch.nn.Module, adapter: SDLoRAAdapter, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """end_task with KD, and the output that the same model gives when it keeps the direction instead."""
    kept_model, kept = copy.deepcopy((model, adapter))
    kept.config.variant = "plain"
    kept.end_task()
    info = adapter.end_task()
    with torch.no_grad():
        torch.testing.assert_close(model(x), kept_model(x), atol=1e-5, rtol=0)
    return info, kept_model(x)


def test_joint_kd_absorbs_a_linear_combination_of_old_directions() -> None:
    model, adapter = two_tasks()
    set_combination(adapter, {name: [(0.7, -1.3)] * 2 for name in adapter.wrappers})
    alpha = adapter.magnitude_values()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    info, _ = end_both(model, adapter, x)
    assert info["absorbed"] is True and info["residual"] < 1e-6
    assert info["coefficients"] == pytest.approx([0.7, -1.3], abs=1e-5)
    assert adapter.ranks == [2, 2, 0]  # no new direction stored
    assert adapter.wrappers["blocks.0.attn.qkv"].bank.past_rank == 4
    new = adapter.magnitude_values()  # alpha_k += alpha_t c_k, alpha_t -> 0
    assert new == pytest.approx([alpha[0] + 0.7 * alpha[2], alpha[1] - 1.3 * alpha[2], 0.0], abs=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)  # continuous mode: unchanged
    # later tasks still follow the dense formula (the absorbed slot stores rank 0)
    adapter.begin_task()
    perturb(adapter)
    name = "blocks.1.attn.qkv"
    wrapper = adapter.wrappers[name]
    h = torch.randn(3, 5, 48)
    expected = F.linear(h.double(), wrapper.base.weight.double() + reference_delta(adapter, name),
                        wrapper.base.bias.double())
    torch.testing.assert_close(wrapper(h).double(), expected, atol=1e-5, rtol=0)


def test_kd_keeps_a_new_random_direction() -> None:
    model, adapter = two_tasks()
    info = adapter.end_task()
    assert info["absorbed"] is False and info["residual"] > 0.5
    assert adapter.ranks == [2, 2, 4]


def test_joint_fit_rejects_what_only_per_layer_coefficients_explain() -> None:
    model, adapter = two_tasks()
    gen = torch.Generator().manual_seed(5)
    coeffs = {name: (torch.rand(2, 2, generator=gen) * 2 - 1).tolist() for name in adapter.wrappers}
    set_combination(adapter, coeffs)
    info = adapter.end_task()
    assert info["absorbed"] is False and info["residual"] > 1e-2
    assert adapter.ranks == [2, 2, 4]


@pytest.mark.parametrize("mode", ["continuous", "official"])
def test_per_layer_kd_absorbs_into_per_matrix_offsets(mode: str) -> None:
    model, adapter = two_tasks(mode, kd_fit="per_layer")
    gen = torch.Generator().manual_seed(6)
    coeffs = {name: (torch.rand(2, 2, generator=gen) * 2 - 1).tolist() for name in adapter.wrappers}
    set_combination(adapter, coeffs)
    x = torch.randn(2, 3, 32, 32)
    info, kept_output = end_both(model, adapter, x)  # outputs equal those of keeping the direction
    assert info["absorbed"] is True and info["residual"] < 1e-5
    assert adapter.ranks == [2, 2, 0]
    for name, wrapper in adapter.wrappers.items():
        assert info["coefficients"][name][0][:2] != pytest.approx([0.0, 0.0])
        assert wrapper.bank.has_offset and wrapper.bank.offset[:, :2].abs().sum() > 0
    with torch.no_grad():  # merge honours the offsets
        adapter.merge()
        torch.testing.assert_close(model(x), kept_output, atol=1e-5, rtol=0)


def test_kd_off_still_reports_the_residual() -> None:
    model, adapter = two_tasks(kd_tau=9e-4)
    adapter.config.variant = "plain"
    set_combination(adapter, {name: [(0.5, 0.5)] * 2 for name in adapter.wrappers})
    info = adapter.end_task()
    assert info["absorbed"] is False and info["residual"] < 1e-6
    assert adapter.ranks == [2, 2, 4]


def test_rr_schedule_ranks() -> None:
    assert [rank_for_task(t, RR_SCHEDULE, 10) for t in range(10)] == [10] * 4 + [8] * 4 + [6] * 2
    torch.manual_seed(1)
    adapter = SDLoRAAdapter(tiny_vit(), SDLoRAConfig(rank_schedule="rr"))
    assert adapter.config.rank_schedule == [[0, 10], [4, 8], [8, 6]]
    for _ in range(10):
        rank = adapter.begin_task()["rank"]
        assert adapter.wrappers["blocks.0.attn.qkv"].bank.cur_down.shape == (2, rank, 48)
        adapter.end_task()
    assert adapter.ranks == [10] * 4 + [8] * 4 + [6] * 2
    assert adapter.wrappers["blocks.0.attn.qkv"].bank.past_down.shape == (2, 84, 48)
    assert SDLoRAConfig(rank=7).rank_for_task(30) == 7  # plain SD-LoRA: constant rank


@pytest.mark.parametrize("mode", ["continuous", "official"])
def test_twenty_five_tasks(mode: str) -> None:
    torch.manual_seed(2)
    model = tiny_vit().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2, current_mode=mode))
    for _ in range(25):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    adapter.begin_task()
    perturb(adapter)
    assert adapter.num_tasks == 25 and len(adapter.magnitude_values()) == 26
    name = "blocks.0.attn.qkv"
    wrapper = adapter.wrappers[name]
    h = torch.randn(2, 5, 48)
    expected = F.linear(h.double(), wrapper.base.weight.double() + reference_delta(adapter, name),
                        wrapper.base.bias.double())
    torch.testing.assert_close(wrapper(h).double(), expected, atol=1e-5, rtol=0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert (adapter.magnitudes.alpha.grad != 0).all()  # all 26 magnitudes train


def test_paper_residual_weighs_every_matrix_alike() -> None:
    """One matrix (v of block 1) has tiny terms and its new direction is half new: the relative joint residual
    hardly sees it (its terms are negligible next to the others), the paper's, on unit directions, does."""
    outcomes = {}
    for residual in ("relative", "paper"):
        model, adapter = two_tasks(kd_residual=residual)
        bank = adapter.wrappers["blocks.1.attn.qkv"].bank
        bank.past_up[1] *= 1e-6
        set_combination(adapter, {name: [(0.7, -1.3)] * 2 for name in adapter.wrappers})
        with torch.no_grad():
            bank.cur_up[1] += torch.randn_like(bank.cur_up[1]) * bank.cur_up[1].std()
        info, _ = end_both(model, adapter, torch.randn(2, 3, 32, 32))
        assert info["residual_kind"] == residual
        outcomes[residual] = (info["absorbed"], info["residual"])
    assert outcomes["relative"][0] is True and outcomes["relative"][1] < 9e-4
    assert outcomes["paper"][0] is False and outcomes["paper"][1] > 0.1


@pytest.mark.parametrize("mode", ["continuous", "official"])
def test_paper_joint_never_absorbs_what_its_own_fit_leaves(mode: str) -> None:
    """Each matrix's new direction is a multiple of its own old one (x2 here, x3 there): on unit directions that is
    an exact combination (paper residual 0), but no single coefficient per task fits the model's own terms, so
    absorbing would change the trained function. It is kept instead."""
    model, adapter = two_tasks(mode, kd_residual="paper", kd_fit="joint")
    with torch.no_grad():
        for wrapper, m in zip(adapter.wrappers.values(), [2.0, 3.0], strict=True):
            bank = wrapper.bank  # the new term := m x task 1's term, in every slice of this matrix
            bank.cur_up.zero_()
            bank.cur_up[:, :, :2] = m * bank.past_up[:, :, :2] / bank.divisor[:, :1, None]
            bank.cur_down.copy_(bank.past_down[:, :4])
    info, _ = end_both(model, adapter, torch.randn(2, 3, 32, 32))  # asserts the function is unchanged
    assert info["residual"] < 1e-6 and info["fit_residual"] > 0.01  # passes on unit directions, not on the terms
    assert info["absorbed"] is False


@pytest.mark.parametrize("residual, fit", [("relative", "joint"), ("relative", "per_layer"), ("paper", "per_layer")])
def test_both_residuals_absorb_an_exact_combination(residual: str, fit: str) -> None:
    """(paper + joint needs the same combination of *unit* directions in every matrix: see the test above.)"""
    model, adapter = two_tasks("official", kd_residual=residual, kd_fit=fit, norm="product")
    set_combination(adapter, {name: [(0.4, 0.9)] * 2 for name in adapter.wrappers})
    info, _ = end_both(model, adapter, torch.randn(2, 3, 32, 32))
    assert info["absorbed"] is True and info["residual"] < 1e-6
    assert adapter.ranks == [2, 2, 0]


@pytest.mark.parametrize("residual, absorbed_at_tau", [("relative", False), ("paper", True)])
def test_residual_tests_at_tau_exactly(residual: str, absorbed_at_tau: bool) -> None:
    """`relative` absorbs below tau (< tau), `paper` at tau too (<= tau, the paper's wording)."""
    def ending(tau: float) -> dict:
        model, adapter = two_tasks(kd_residual=residual, kd_tau=tau, kd_fit="per_layer")
        set_combination(adapter, {name: [(0.7, -1.3)] * 2 for name in adapter.wrappers})
        with torch.no_grad():
            for wrapper in adapter.wrappers.values():
                wrapper.bank.cur_up.add_(torch.randn_like(wrapper.bank.cur_up) * 1e-3)
        return adapter.end_task()

    probe = ending(0.0)  # tau 0: nothing is absorbed, the residual is reported
    assert probe["absorbed"] is False and probe["residual"] > 0
    assert ending(probe["residual"])["absorbed"] is absorbed_at_tau
