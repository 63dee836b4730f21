"""Exactly the intended tensors train; one copy of the backbone; the adapter does not own the model."""

from __future__ import annotations

import pytest
import torch

from adapter_helpers import perturb
from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.testing import tiny_bert, tiny_vit

torch.set_num_threads(1)


def backbone_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".bank." not in k}


@pytest.mark.parametrize("kernel", ["factored", "fused_proj", "fused_wgrad"])
def test_only_alphas_and_current_factors_train(kernel: str) -> None:
    torch.manual_seed(0)
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=3, kernel=kernel))
    for _ in range(2):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    adapter.begin_task()
    perturb(adapter)  # U_t leaves zero, so D_t gets a gradient too

    trainable = {id(p) for p in adapter.trainable_parameters()}
    everything = list({id(p): p for p in [*model.parameters(), *adapter.parameters()]}.values())
    assert {id(p) for p in everything if p.requires_grad} == trainable
    for bank in adapter.banks:  # old directions are buffers, never parameters
        names = dict(bank.named_parameters())
        assert set(names) == {"cur_down", "cur_up"}
        assert not bank.past_down.requires_grad and not bank.past_up.requires_grad

    before = backbone_state(model)
    past = {k: v.clone() for k, v in adapter.state_tensors().items() if "past" in k or "divisor" in k}
    alpha0 = adapter.magnitudes.alpha.detach().clone()
    qkv = model.blocks[0].attn.qkv
    k_rows = qkv.base.weight[48:96].clone()

    # optimise everything that claims to be trainable, as a careless trainer would
    optimiser = torch.optim.SGD([p for p in everything if p.requires_grad], lr=0.1, momentum=0.9)
    x = torch.randn(4, 3, 32, 32)
    for _ in range(2):
        optimiser.zero_grad()
        model(x).square().mean().backward()
        alpha = adapter.magnitudes.alpha
        assert alpha.grad is not None and (alpha.grad != 0).all(), "every alpha (old ones too) must train"
        for bank in adapter.banks:
            assert bank.cur_down.grad.abs().sum() > 0 and bank.cur_up.grad.abs().sum() > 0
        optimiser.step()

    after = backbone_state(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), f"backbone tensor {key} changed"
    assert torch.equal(qkv.base.weight[48:96], k_rows)  # the k slice is untouched
    for key, value in past.items():
        assert torch.equal(adapter.state_tensors()[key], value), f"frozen {key} changed"
    assert not torch.equal(adapter.magnitudes.alpha.detach(), alpha0)


def test_one_copy_of_the_backbone() -> None:
    torch.manual_seed(1)
    model = tiny_vit()
    plain = sum(p.numel() for p in model.parameters())
    qkv_weight = model.blocks[0].attn.qkv.weight
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=4))
    assert model.blocks[0].attn.qkv.base.weight is qkv_weight  # wrapped, not copied
    adapter.begin_task()
    current = sum(b.cur_down.numel() + b.cur_up.numel() for b in adapter.banks)
    assert current == 2 * 2 * 4 * (48 + 48)  # 2 blocks x (q, v) x rank 4 x (in + out)
    assert sum(p.numel() for p in model.parameters()) == plain + current
    # the adapter holds magnitudes and banks only: no backbone tensor is registered in it
    assert sum(p.numel() for p in adapter.parameters()) == current + 1
    assert not any(k.endswith("base.weight") or "blocks" in k for k in adapter.state_dict())
    assert "model" not in dict(adapter.named_children())


def test_bert_query_value_layers_train() -> None:
    torch.manual_seed(2)
    model = tiny_bert()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(targets=["*.attention.self.query", "*.attention.self.value"],
                                                rank=2))
    assert list(adapter.wrappers) == [f"encoder.layer.{i}.attention.self.{p}" for i in (0, 1)
                                      for p in ("query", "value")]
    adapter.begin_task()
    perturb(adapter)
    ids = torch.randint(0, 100, (2, 9))
    out = model(input_ids=ids).last_hidden_state
    out.square().mean().backward()
    assert (adapter.magnitudes.alpha.grad != 0).all()
    assert all(b.cur_down.grad.abs().sum() > 0 for b in adapter.banks)
    key = model.encoder.layer[0].attention.self.key
    assert key.weight.grad is None and not key.weight.requires_grad


def test_adapter_to_moves_banks_and_magnitudes_seen_by_the_model() -> None:
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2))
    adapter.begin_task()
    adapter.end_task()
    adapter.begin_task()
    adapter.to(torch.float64)  # any .to: the same bank objects live in the model's wrappers
    bank = model.blocks[0].attn.qkv.bank
    assert bank is adapter.banks[0]
    assert bank.past_down.dtype == bank.cur_down.dtype == adapter.magnitudes.alpha.dtype == torch.float64
    assert model.blocks[0].attn.qkv.base.weight.dtype == torch.float32  # the backbone is not the adapter's
