"""Exports load through timm / transformers / PEFT's own loaders, silently, and compute the run's function."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from export_helpers import no_library_warnings, text_run_config, train, vit_run_config
from sdlora.cli import main
from sdlora.engine.restore import restore_run


@pytest.fixture
def vit_run(tiny_vit_run):
    return tiny_vit_run


@pytest.fixture
def text_run(tiny_text_run):
    return tiny_text_run


def images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def run_logits(seed_folder, inputs) -> torch.Tensor:
    run = restore_run(seed_folder)
    run.method.eval()
    with torch.no_grad():
        return run.method(inputs)


def test_timm_export_loads_through_timm_pretrained_path_strictly(vit_run, tmp_path):
    out = tmp_path / "timm"
    assert main(["export", str(vit_run), "--out", str(out), "--format", "timm"]) == 0
    manifest = json.loads((out / "sdlora_export.json").read_text())
    x = images()
    kwargs = manifest["model_kwargs"]
    with no_library_warnings():
        by_name = timm.create_model(manifest["timm_tag"], pretrained=True, num_classes=6, **kwargs,
                                    pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=6))
        local = timm.create_model(f"local-dir:{out}", pretrained=True)
    plain = timm.create_model(manifest["timm_tag"], pretrained=False, num_classes=6, **kwargs)
    plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    expected = run_logits(vit_run, x)
    for model in (by_name, local, plain):
        with torch.no_grad():
            got = model.eval()(x)

        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert local.pretrained_cfg["label_names"] == manifest["class_names"] and len(manifest["class_names"]) == 6
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and manifest["backbone"]["weights_sha256"] in card
    assert "--format timm" in card and "hf upload" in card and "final_accuracy" in card


def test_hf_export_loads_with_automodel_silently_and_reproduces_the_classifier(text_run, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "hf"
    assert main(["export", str(text_run), "--out", str(out), "--format", "hf"]) == 0
    assert "note: no sequence-classification/ folder" in capsys.readouterr().out
    assert not (out / "sequence-classification").exists()
    with no_library_warnings():
        model = AutoModel.from_pretrained(out).eval()
        tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "alarm clock", 1: "pay my bill", 2: "play some jazz", 3: "weather in paris"}
    assert model.config.label2id["pay my bill"] == 1
    texts = ["pay my bill now", "play some jazz tonight", "weather"]
    batch = tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    head = load_file(str(out / "classifier.safetensors"))
    with torch.no_grad():
        h, m = model(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
        logits = ((h * m).sum(1) / m.sum(1)) @ head["weight"].T + head["bias"]
    run = restore_run(text_run)
    run.method.eval()
    with torch.no_grad():
        expected = run.method(run.method.backbone.tokenize(texts))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card
    # the model card's own snippet runs and prints the class the run predicts
    snippet = re.search(r"```python\n(.*?)```", card, flags=re.S).group(1).replace("FOLDER", str(out))
    exec(compile(snippet, "model card", "exec"), {})  # noqa: S102
    with torch.no_grad():
        first = run.method(run.method.backbone.tokenize(["book a table for two"])).argmax(-1).item()
    assert capsys.readouterr().out.strip().splitlines()[-1] == model.config.id2label[first]


def test_peft_export_matches_the_merged_model(vit_run, text_run, tmp_path):
    PeftModel = pytest.importorskip("peft").PeftModel
    from transformers import AutoModel

    from sdlora.engine import build
    from sdlora.engine.seeding import seed_everything

    # timm: PeftModel on the ORIGINAL backbone + the adapter (LoRA + head) == the merged timm export
    out = tmp_path / "peft-vit"
    assert main(["export", str(vit_run), "--out", str(out), "--format", "peft"]) == 0
    manifest = json.loads((out / "sdlora_export.json").read_text())
    assert set(manifest["ranks"].values()) == {2 * 2 * 3}  # q and v slices x rank 2 x 3 tasks
    run = restore_run(vit_run)
    base = timm.create_model(manifest["base_model"], pretrained=False, num_classes=6, **manifest_kwargs(run))
    seed_everything(run.seed)  # the seeded random init plays the pretrained weights
    original = build.build_backbone(run.cfg).model.state_dict()
    base.load_state_dict({**original, "head.weight": torch.zeros(6, 32), "head.bias": torch.zeros(6)})
    with no_library_warnings():
        peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    x = images()
    with torch.no_grad():
        diff = (peft_model(x) - run_logits(vit_run, x)).abs().max().item()
    assert diff < 1e-5

    # Hugging Face encoder: same last hidden states as the merged encoder
    out = tmp_path / "peft-text"
    assert main(["export", str(text_run), "--out", str(out), "--format", "peft"]) == 0
    run = restore_run(text_run)
    seed_everything(run.seed)
    base = build.build_backbone(run.cfg).model
    with no_library_warnings():
        peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    batch = run.method.backbone.tokenize(["pay my bill", "jazz"])
    merged = AutoModel.from_config(base.config)
    merged.load_state_dict(run.method.export_backbone(), strict=True)
    with torch.no_grad():
        diff = (peft_model(**batch).last_hidden_state - merged.eval()(**batch).last_hidden_state).abs().max().item()
    assert diff < 1e-5


def manifest_kwargs(run):
    return dict(run.cfg.backbone.options["model_kwargs"])


def test_export_refuses_a_format_the_run_cannot_take(text_run, vit_run, tmp_path, capsys):
    assert main(["export", str(text_run), "--out", str(tmp_path / "x"), "--format", "timm"]) == 1
    assert "--format timm needs a timm backbone" in capsys.readouterr().err
    assert main(["export", str(vit_run), "--out", str(tmp_path / "y"), "--format", "hf"]) == 1
    assert "--format hf needs a Hugging Face encoder" in capsys.readouterr().err


def test_cosine_classifier_exports_unit_means_with_the_same_predictions(tmp_path):
    data = vit_run_config()
    data["train"] = {**data["train"], "classifier": {"kind": "prototypes"}}
    seed = train(data, tmp_path / "run")
    assert main(["export", str(seed), "--out", str(tmp_path / "t"), "--format", "timm"]) == 0
    model = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).eval()
    x = images(8)
    with torch.no_grad():
        logits, features = model(x), model.forward_head(model.forward_features(x), pre_logits=True)
    cosines = run_logits(seed, x)
    torch.testing.assert_close(model.head.weight.norm(dim=-1), torch.ones(6))
    torch.testing.assert_close(logits / features.norm(dim=-1, keepdim=True), cosines, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(1), cosines.argmax(1))
    assert F.normalize(features, dim=-1).shape == (8, 32)


def test_cls_pooled_bert_also_exports_a_silent_sequence_classifier(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = text_run_config(tmp_path)
    data["backbone"]["options"]["pooling"] = "cls"
    seed = train(data, tmp_path / "run")
    out = tmp_path / "hf"
    assert main(["export", str(seed), "--out", str(out), "--format", "hf"]) == 0
    with no_library_warnings():
        model = AutoModelForSequenceClassification.from_pretrained(out / "sequence-classification").eval()
        tok = AutoTokenizer.from_pretrained(out / "sequence-classification")
    texts = ["pay my bill now", "play some jazz tonight", "weather"]
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    expected = run_logits(seed, restore_run(seed).method.backbone.tokenize(texts))
    assert (logits - expected).abs().max().item() < 1e-4 * expected.abs().max().item()
    assert model.config.id2label[2] == "play some jazz"


def test_list_names_the_export_formats(capsys):
    assert main(["list"]) == 0
    printed = capsys.readouterr().out
    assert "export formats:" in printed and "save_for_hf" in printed and "PEFT LoRA adapter" in printed
