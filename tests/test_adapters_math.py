"""SD-LoRA maths: low-rank norms, the forward against the dense formula, kernels agree (values, grads)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapter_helpers import perturb
from sdlora.adapters import KERNELS, SDLoRAAdapter, SDLoRAConfig, choose_kernel, lowrank_inner, product_norm
from sdlora.adapters.norms import factors_norm
from sdlora.testing import reference_delta, tiny_vit

torch.set_num_threads(1)

MIXED = [[0, 3], [1, 2], [2, 4]]  # ranks 3, 2, 4, 4, ...


def test_product_norm_matches_dense_frobenius_norm() -> None:
    torch.manual_seed(0)
    up, down = torch.randn(3, 40, 5, dtype=torch.float64), torch.randn(3, 5, 30, dtype=torch.float64)
    dense = torch.linalg.matrix_norm(up @ down)
    torch.testing.assert_close(product_norm(up, down), dense, rtol=1e-12, atol=0)
    torch.testing.assert_close(factors_norm(up, down),
                               torch.linalg.matrix_norm(up) * torch.linalg.matrix_norm(down))
    assert (factors_norm(up, down) >= dense).all()  # the official normaliser is an upper bound


def test_lowrank_inner_matches_dense_inner_product() -> None:
    torch.manual_seed(1)
    ua, da = torch.randn(20, 3, dtype=torch.float64), torch.randn(3, 15, dtype=torch.float64)
    ub, db = torch.randn(20, 6, dtype=torch.float64), torch.randn(6, 15, dtype=torch.float64)
    dense = ((ua @ da) * (ub @ db)).sum()
    torch.testing.assert_close(lowrank_inner(ua, da, ub, db), dense, rtol=1e-12, atol=0)


MODE_NORMS = [("official", "product"), ("official", "factors"), ("paper", "product"), ("paper", "factors"),
              ("continuous", None)]


@pytest.mark.parametrize("mode, norm", MODE_NORMS)
def test_forward_equals_dense_formula_across_tasks(mode: str, norm: str | None) -> None:
    torch.manual_seed(2)
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank_schedule=MIXED, norm=norm, current_mode=mode))
    name = "blocks.1.attn.qkv"
    wrapper = adapter.wrappers[name]
    x = torch.randn(2, 7, 48)
    for task in range(4):
        adapter.begin_task()
        perturb(adapter)
        for phase in ("training", "frozen"):
            expected = F.linear(x.double(), wrapper.base.weight.double() + reference_delta(adapter, name),
                                wrapper.base.bias.double())
            for kernel in KERNELS:
                wrapper.kernel = kernel
                torch.testing.assert_close(wrapper(x).double(), expected, atol=1e-5, rtol=0,
                                           msg=f"task {task} {phase} {kernel}")
                with torch.no_grad():  # the inference path of the same kernel
                    torch.testing.assert_close(wrapper(x).double(), expected, atol=1e-5, rtol=0)
            if phase == "training":
                adapter.end_task()
    assert adapter.ranks == [3, 2, 4, 4]
    assert wrapper.bank.past_down.shape == (2, 13, 48) and wrapper.bank.past_up.shape == (2, 48, 13)


def test_all_kernels_give_the_same_gradients() -> None:
    torch.manual_seed(3)
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank_schedule=MIXED, current_mode="paper"))
    for _ in range(2):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    adapter.begin_task()
    perturb(adapter)
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    results = {}
    for kernel in KERNELS:
        for wrapper in adapter.wrappers.values():
            wrapper.kernel = kernel
        x.grad = None
        for p in adapter.trainable_parameters():
            p.grad = None
        out = model(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        grads = [p.grad.clone() for p in adapter.trainable_parameters()]
        results[kernel] = [out.detach(), x.grad.clone(), *grads]
    reference = results.pop("factored")
    for kernel, values in results.items():
        for got, want in zip(values, reference, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=kernel)


def test_auto_kernel_follows_the_cost_model() -> None:
    # few tokens or a tiny stack: through the factors; many tokens and a big stack: fold + projections;
    # a stack wider than the layer: fold + weight gradient
    assert choose_kernel(8, 768, 2304, 2, 768, 190, 10, True, False) == "factored"
    assert choose_kernel(1576, 768, 2304, 2, 768, 0, 10, True, False) == "factored"
    assert choose_kernel(1576, 768, 2304, 2, 768, 190, 10, True, True) == "fused_proj"
    assert choose_kernel(1576, 192, 576, 2, 192, 190, 10, True, False) == "fused_wgrad"
    assert choose_kernel(4, 768, 2304, 2, 768, 190, 0, False, False) == "factored"
    assert choose_kernel(4096, 768, 2304, 2, 768, 190, 0, False, False) == "fused_proj"


def test_a_layer_without_directions_is_the_plain_linear() -> None:
    torch.manual_seed(4)
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    adapter = SDLoRAAdapter(model, SDLoRAConfig())
    assert torch.equal(model(x), before)
    adapter.begin_task()  # continuous: U = 0, the new term is exactly zero
    torch.testing.assert_close(model(x), before, atol=1e-6, rtol=0)
