"""timm ViT by explicit tag: legacy names, local weight files (round-trip), info()."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sdlora.backbones.base import weights_sha256
from sdlora.backbones.timm_vit import TimmViT, resolve_tag

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def tiny(**options) -> TimmViT:
    return TimmViT(TimmViT.Options(**{"model": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
                                      "pretrained": False, "model_kwargs": TINY, **options}))


@pytest.mark.parametrize("legacy, tag", [
    ("vit_base_patch16_224", "vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    ("vit_base_patch16_224_in21k", "vit_base_patch16_224.augreg_in21k"),
    ("vit_base_patch16_224_dino", "vit_base_patch16_224.dino"),
])
def test_untagged_legacy_names_map_to_a_tag_with_a_warning(legacy, tag):
    with pytest.warns(UserWarning, match=f"using '{tag}'"):
        assert resolve_tag(legacy, pretrained=True) == tag


@pytest.mark.parametrize("tag", [
    "vit_base_patch16_224.augreg2_in21k_ft_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "vit_base_patch16_224.augreg_in21k", "vit_base_patch16_224.dino",
])
def test_explicit_tags_are_kept_and_build(tag, recwarn):
    assert resolve_tag(tag, pretrained=True) == tag
    backbone = tiny(model=tag)
    assert not recwarn.list
    info = backbone.info()
    assert info["tag"] == tag and info["weights_source"] == "random"
    assert backbone(torch.rand(2, 3, 32, 32)).shape == (2, 32)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_pretrained_file_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = tiny()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(1)  # a different random init underneath, overwritten by the file
    loaded = tiny(pretrained=True, pretrained_file=str(path))
    assert loaded.info()["weights_sha256"] == source.info()["weights_sha256"] == weights_sha256(state)
    assert loaded.info()["weights_source"] == "file" and loaded.info()["pretrained_file"] == str(path)
    x = torch.rand(3, 3, 32, 32)
    source.eval(), loaded.eval()
    assert torch.equal(loaded(x), source(x))
    assert not any(p.requires_grad for p in loaded.parameters())


def test_pretrained_file_with_a_classifier_head_and_a_wrong_file(tmp_path):
    source = tiny()
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    state["head.weight"], state["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    save_file(state, str(tmp_path / "with_head.safetensors"))
    assert tiny(pretrained_file=str(tmp_path / "with_head.safetensors")).weights_hash == source.weights_hash
    del state["norm.weight"]
    save_file(state, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(RuntimeError, match="norm.weight"):
        tiny(pretrained_file=str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        tiny(pretrained_file=str(tmp_path / "nowhere.safetensors"))


def test_hub_failure_says_how_to_work_offline(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return timm.models.create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr("sdlora.backbones.timm_vit.timm.create_model", offline)
    with pytest.raises(RuntimeError, match="pretrained_file") as err:
        TimmViT(TimmViT.Options(model="vit_base_patch16_224.dino", model_kwargs=TINY))
    assert "vit_base_patch16_224.dino" in str(err.value) and isinstance(err.value.__cause__, OSError)


def test_an_unknown_timm_model_is_refused_by_the_backbone_not_its_options():
    options = TimmViT.Options(model="vit_tiny_patch16_2244")  # torch-free options: any name
    with pytest.raises(ValueError, match=r"does not know the model 'vit_tiny_patch16_2244'.*did you mean "
                                         r"'vit_tiny_patch16_224'"):
        TimmViT.check_options(options)
    with pytest.raises(ValueError, match="does not know the model"):
        TimmViT(options)
