"""Merge / unmerge / export as a plain timm or transformers state dict; save and load with safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from adapter_helpers import perturb
from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.testing import reference_delta, tiny_bert, tiny_vit

torch.set_num_threads(1)
QV = ["*.attention.self.query", "*.attention.self.value"]


def trained_vit(mode: str = "continuous", tasks: int = 3, open_task: bool = True, **kw: object):
    torch.manual_seed(0)
    model = tiny_vit().eval()
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank_schedule=[[0, 3], [1, 2]], current_mode=mode, **kw))
    for task in range(tasks):
        adapter.begin_task()
        perturb(adapter)
        if task < tasks - 1 or not open_task:
            adapter.end_task()
    return model, adapter, plain


@pytest.mark.parametrize("mode", ["official", "paper", "continuous"])
def test_merge_unmerge_and_timm_export(mode: str) -> None:
    model, adapter, plain = trained_vit(mode)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        unmerged = model(x)
        exported = adapter.merged_state_dict()
        adapter.merge()
        merged = model(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    fresh = tiny_vit().eval()
    fresh.load_state_dict(exported, strict=True)  # a plain timm model, original key names
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), unmerged, atol=1e-5, rtol=0)
    # exporting from the merged model gives the same weights
    for key, value in adapter.merged_state_dict().items():
        torch.testing.assert_close(value, exported[key], atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="unmerge"):
        adapter.end_task()
    adapter.unmerge()
    for key, value in model.state_dict().items():
        if ".bank." not in key:
            assert torch.equal(value, plain[key.replace(".base.", ".")]), f"{key} not restored exactly"
    with torch.no_grad():
        assert torch.equal(model(x), unmerged)


def test_bert_merged_state_dict_loads_into_transformers() -> None:
    torch.manual_seed(1)
    model = tiny_bert().eval()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(targets=QV, rank=2))
    for _ in range(2):
        adapter.begin_task()
        perturb(adapter)
        adapter.end_task()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
    fresh = tiny_bert().eval()
    fresh.load_state_dict(adapter.merged_state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=0)
        adapter.merge()
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("open_task", [False, True])
def test_save_and_load_round_trip(tmp_path: Path, open_task: bool) -> None:
    model, adapter, plain = trained_vit("paper", open_task=open_task, variant="kd")
    path = tmp_path / "adapter.safetensors"
    adapter.save(path)
    with safe_open(str(path), framework="pt") as f:  # a real safetensors file, structure in the metadata
        assert "magnitudes" in set(f.keys())
        assert "sdlora_adapter" in (f.metadata() or {})
    x = torch.randn(2, 3, 32, 32)
    fresh = tiny_vit().eval()
    fresh.load_state_dict(plain)
    loaded = SDLoRAAdapter.load(path, fresh)
    assert loaded.ranks == adapter.ranks and loaded.current_task == adapter.current_task
    assert loaded.config == adapter.config and loaded.history == adapter.history
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fresh(x), expected, atol=0, rtol=0)
    if open_task:  # training resumes: the current factors are parameters again
        assert len(loaded.trainable_parameters()) == 1 + 2 * len(loaded.wrappers)
        assert all(p.requires_grad for p in loaded.trainable_parameters())
        loaded.end_task()
        adapter.end_task()
        assert loaded.ranks == adapter.ranks
    # the instance method loads into an existing adapter too
    other = tiny_vit().eval()
    other.load_state_dict(plain)
    again = SDLoRAAdapter(other, adapter.config)
    again.load_file(path)
    with torch.no_grad():
        torch.testing.assert_close(other(x), expected, atol=0, rtol=0)


def test_state_tensors_and_structure_rebuild_banks() -> None:
    model, adapter, plain = trained_vit(tasks=4, open_task=False)
    structure, tensors = adapter.structure(), adapter.state_tensors()
    assert structure["ranks"] == [3, 2, 2, 2] and structure["num_tasks"] == 4
    assert tensors["blocks.0.attn.qkv.past_down"].shape == (2, 9, 48)
    fresh = tiny_vit().eval()
    fresh.load_state_dict(plain)
    loaded = SDLoRAAdapter(fresh, adapter.config)
    loaded.load_state(structure, tensors)
    for key, value in loaded.state_tensors().items():
        assert torch.equal(value, tensors[key]), key
    loaded.begin_task()  # continues with the right task index and rank
    assert loaded.current_task == 4 and loaded.current_rank == 2


def test_shape_mismatch_on_load_names_the_tensor(tmp_path: Path) -> None:
    model, adapter, _ = trained_vit(open_task=False)
    path = tmp_path / "a.safetensors"
    adapter.save(path)
    smaller = tiny_vit(embed_dim=36)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.past_down.*\(2, 7, 48\).*\(2, 7, 36\)"):
        SDLoRAAdapter.load(path, smaller)
    structure, tensors = adapter.structure(), adapter.state_tensors()
    tensors["blocks.1.attn.qkv.divisor"] = torch.ones(2, 7)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.qkv\.divisor.*\(2, 7\).*\(2, 3\)"):
        SDLoRAAdapter(tiny_vit(), adapter.config).load_state(structure, tensors)


def test_load_refuses_another_mode_or_other_targets() -> None:
    _, adapter, _ = trained_vit(open_task=False)
    structure, tensors = adapter.structure(), adapter.state_tensors()
    with pytest.raises(ValueError, match="current_mode"):
        SDLoRAAdapter(tiny_vit(), SDLoRAConfig(current_mode="official")).load_state(structure, tensors)
    with pytest.raises(ValueError, match="targets"):
        other = SDLoRAAdapter(tiny_vit(), SDLoRAConfig(targets=["blocks.0.attn.qkv[q,v]"]))
        other.load_state(structure, tensors)


@pytest.mark.parametrize("mode", ["official", "paper", "continuous"])
def test_merge_in_place_and_export_are_bit_identical(mode: str) -> None:
    """Both take W0 + delta in float64 and cast once, so the exported dict equals the merged weights exactly."""
    model, adapter, _ = trained_vit(mode)
    exported = adapter.merged_state_dict()
    adapter.merge()
    merged = model.state_dict()
    for name in adapter.wrappers:
        assert torch.equal(exported[f"{name}.weight"], merged[f"{name}.base.weight"])
        w0 = adapter.wrappers[name].w0_rows.double()
        rows = torch.cat([merged[f"{name}.base.weight"][a:b] for a, b in adapter.wrappers[name].bounds])
        exact = w0 + torch.cat([reference_delta(adapter, name)[a:b] for a, b in adapter.wrappers[name].bounds])
        torch.testing.assert_close(rows.double(), exact, atol=1e-6, rtol=0)  # and it is W0 + delta
    assert torch.equal(adapter.merged_state_dict()[f"{name}.weight"], exported[f"{name}.weight"])
