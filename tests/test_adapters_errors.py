"""Bad input gives clear ValueErrors (and lifecycle misuse clear RuntimeErrors)."""

from __future__ import annotations

import pytest
import torch

import sdlora
from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.testing import tiny_bert, tiny_vit


def test_target_that_matches_nothing_lists_linear_layers() -> None:
    with pytest.raises(ValueError, match=r"matches no module.*blocks\.0\.attn\.qkv"):
        SDLoRAAdapter(tiny_vit(), SDLoRAConfig(targets=["*.attention.self.query"]))


def test_target_matching_a_non_linear_module() -> None:
    with pytest.raises(ValueError, match=r"'blocks\.0\.attn'.*Attention.*nn\.Linear"):
        SDLoRAAdapter(tiny_vit(), SDLoRAConfig(targets=["blocks.*.attn"]))


def test_injecting_twice_is_refused() -> None:
    model = tiny_vit()
    SDLoRAAdapter(model, SDLoRAConfig())
    with pytest.raises(ValueError, match="already adapted"):
        SDLoRAAdapter(model, SDLoRAConfig())
    with pytest.raises(ValueError, match=r"already adapted \(SD-LoRA layers at blocks.0.attn.qkv"):
        sdlora.get_sdlora_model(model)  # default targets: not "no default targets" for an adapted ViT


def test_a_dict_config_says_what_to_pass() -> None:
    with pytest.raises(TypeError, match=r"config must be an SDLoRAConfig \(a dict: SDLoRAConfig\(\*\*it\)\)"):
        sdlora.get_sdlora_model(tiny_vit(), {"rank": 2})


def test_overlapping_targets() -> None:
    with pytest.raises(ValueError, match="two targets"):
        SDLoRAAdapter(tiny_vit(), SDLoRAConfig(targets=["blocks.*.attn.qkv[q]", "blocks.0.attn.qkv[v]"]))


@pytest.mark.parametrize("target, message", [
    ("blocks.*.attn.qkv[q,x]", r"unknown slice names \['x'\]"),
    ("blocks.*.attn.qkv[]", "empty slice name"),
    ("blocks.*.attn.qkv[q,q]", "repeated"),
    ("blocks.*.attn.qkv[q", "malformed"),
])
def test_bad_slices(target: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SDLoRAAdapter(tiny_vit(), SDLoRAConfig(targets=[target]))


def test_slices_need_a_divisible_output() -> None:
    with pytest.raises(ValueError, match="divisible by 3"):  # BERT query: 32 outputs
        SDLoRAAdapter(tiny_bert(), SDLoRAConfig(targets=["*.attention.self.query[q]"]))


@pytest.mark.parametrize("kwargs, field", [
    ({"rank": 0}, "rank"),
    ({"rank": -3}, "rank"),
    ({"rank": 2.5}, "rank"),
    ({"rank_schedule": [[0, 10], [4, 0]]}, r"rank_schedule\[1\] rank"),
    ({"rank_schedule": [[1, 10]]}, "task 0"),
    ({"rank_schedule": [[0, 10], [0, 8]]}, "strictly increase"),
    ({"rank_schedule": "fast"}, "unknown name"),
    ({"norm": "spectral"}, r"norm must be one of \['product', 'factors'\]"),
    ({"current_mode": "mine"}, "current_mode must be one of"),
    ({"kd_fit": "global"}, r"kd_fit must be one of \['joint', 'per_layer'\]"),
    ({"kernel": "cuda"}, "kernel must be one of"),
    ({"kd_tau": -1.0}, "kd_tau"),
    ({"variant": "kd2"}, "variant must be one of"),
    ({"kd_residual": "squared"}, "kd_residual must be one of"),
    ({"current_mode": "continuous", "norm": "product"}, "has no effect with current_mode"),
    ({"magnitude_init": float("nan")}, "magnitude_init"),
    ({"targets": "blocks.*.attn.qkv"}, "targets must be a list"),
    ({"targets": []}, "targets must be a non-empty list"),
])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SDLoRAConfig(**kwargs)


def test_config_round_trip_and_unknown_fields() -> None:
    cfg = SDLoRAConfig(rank_schedule="rr", current_mode="official", variant="kd")
    assert SDLoRAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown SDLoRAConfig fields \['alpha'\]"):
        SDLoRAConfig.from_dict({"alpha": 1})


def test_lifecycle_misuse() -> None:
    adapter = SDLoRAAdapter(tiny_vit(), SDLoRAConfig(rank=2))
    with pytest.raises(RuntimeError, match="begin_task"):
        adapter.end_task()
    adapter.begin_task()
    with pytest.raises(RuntimeError, match="end_task"):
        adapter.begin_task()
    with pytest.raises(TypeError, match="SDLoRAConfig"):
        SDLoRAAdapter(tiny_vit(), {"rank": 2})  # type: ignore[arg-type]


def test_magnitudes_on_another_device_is_a_clear_error() -> None:
    model = tiny_vit()
    adapter = SDLoRAAdapter(model, SDLoRAConfig(rank=2))
    adapter.begin_task()
    adapter.magnitudes.to("meta")
    with pytest.raises(RuntimeError, match=r"adapter\.to\(device\)"):
        model(torch.randn(1, 3, 32, 32))
