"""get_sdlora_model: magnitudes visible to parameters() / to() / state_dict(), plain optimisers and HF Trainer
train them, merge_and_unload puts plain Linears back."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sdlora
from sdlora.adapters import SDLoRAConfig
from sdlora.testing import tiny_bert, tiny_vit


def test_magnitudes_are_a_registered_submodule_and_a_plain_optimiser_trains_them():
    torch.manual_seed(0)
    model = sdlora.get_sdlora_model(tiny_vit(), SDLoRAConfig(rank=2))
    assert list(model.adapter.wrappers) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    model.begin_task()
    alpha = model.sdlora_magnitudes.alpha
    assert any(p is alpha for p in model.parameters())
    assert "sdlora_magnitudes.alpha" in model.state_dict()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"sdlora_magnitudes.alpha", *(f"base_model.blocks.{i}.attn.qkv.bank.cur_{w}"
                                                  for i in (0, 1) for w in ("down", "up"))}
    start = alpha.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, target = torch.rand(8, 3, 32, 32), torch.randn(8, 48)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), target).backward()
        opt.step()
    assert start.tolist() == pytest.approx([0.8]) and abs(model.sdlora_magnitudes.alpha.item() - 0.8) > 1e-4
    model.end_task()
    model.begin_task()  # the first task's magnitude keeps training in the second
    assert len(list(model.sdlora_magnitudes.parameters())[0]) == 2
    model.double()
    assert model.sdlora_magnitudes.alpha.dtype == torch.float64
    model.float()


def test_merge_and_unload_gives_plain_linears_and_the_same_outputs(capsys):
    torch.manual_seed(1)
    model = sdlora.get_sdlora_model(tiny_vit(), SDLoRAConfig(rank=2))
    model.begin_task()
    with torch.no_grad():
        for bank in model.adapter.banks:
            bank.cur_up.normal_()
    model.end_task()
    model.print_trainable_parameters()
    printed = capsys.readouterr().out
    trainable, total = model.trainable_parameter_counts()
    assert trainable == 1 and f"trainable params: 1 || all params: {total:,d}" in printed
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        adapted = model.eval()(x)
        plain = model.merge_and_unload()
        assert type(plain.blocks[0].attn.qkv) is nn.Linear
        torch.testing.assert_close(plain(x), adapted, atol=1e-5, rtol=1e-5)
    fresh = tiny_vit()
    fresh.load_state_dict(plain.state_dict(), strict=True)  # plain timm keys
    # the adapter is out of the model now: unmerging would write W0 into the plain layers (the bare backbone)
    for call in (model.adapter.unmerge, model.begin_task, lambda: model.save_pretrained("unused")):
        with pytest.raises(RuntimeError, match="merge_and_unload\\(\\) gave the model back as plain Linear layers"):
            call()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted, atol=1e-5, rtol=1e-5)  # still the merged model


def test_default_targets_follow_the_hf_model_type_inside_a_task_model():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    model = sdlora.get_sdlora_model(BertForSequenceClassification(config), modules_to_train=["classifier"])
    assert list(model.adapter.wrappers) == [f"bert.encoder.layer.{i}.attention.self.{qv}"
                                            for i in (0, 1) for qv in ("query", "value")]
    assert model.config.num_labels == 3  # attributes fall through to the model
    assert model.classifier.weight.requires_grad
    bare = sdlora.get_sdlora_model(tiny_bert(), SDLoRAConfig(rank=3))
    assert bare.adapter.config.rank == 3 and "encoder.layer.0.attention.self.query" in bare.adapter.wrappers
    with pytest.raises(ValueError, match="no default SD-LoRA targets for Sequential"):
        sdlora.get_sdlora_model(nn.Sequential(nn.Linear(2, 2)))


def test_hf_trainer_trains_the_magnitudes_and_save_pretrained_writes_plain_keys(tmp_path):
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    model = sdlora.get_sdlora_model(BertForSequenceClassification(config), SDLoRAConfig(rank=2),
                                    modules_to_train=["classifier"])
    model.begin_task()
    data = [{"input_ids": torch.randint(1, 100, (6,)), "attention_mask": torch.ones(6, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(16)]
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=0.05, report_to=[], save_strategy="no", use_cpu=True,
                             logging_strategy="no", disable_tqdm=True)
    before = model.sdlora_magnitudes.alpha.detach().clone()
    Trainer(model=model, args=args, train_dataset=data).train()
    assert abs(model.sdlora_magnitudes.alpha.item() - before.item()) > 1e-5
    model.end_task()
    plain = model.merge_and_unload()
    plain.save_pretrained(tmp_path / "plain")
    from export_helpers import no_library_warnings

    with no_library_warnings():
        loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    batch = {"input_ids": torch.randint(1, 100, (2, 6))}
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, plain.eval()(**batch).logits)


def _tiny_bert_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    return BertForSequenceClassification(config)


def _train_task(model, steps: int = 6, seed: int = 0) -> None:
    """begin_task, a few SGD steps on fixed random batches, end_task."""
    torch.manual_seed(100 + seed)  # the new direction's random init too
    model.begin_task()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for _ in range(steps):
        ids = torch.randint(1, 100, (4, 6))
        loss = model(input_ids=ids, labels=torch.randint(0, 3, (4,))).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.end_task()


def test_unmerged_save_pretrained_then_from_pretrained_continues_like_memory(tmp_path):
    """(issue 21, e) save after 2 tasks, load into a fresh base model, train task 3: the same as in memory."""
    from sdlora.model_api import SDLoRAModel

    memory = sdlora.get_sdlora_model(_tiny_bert_classifier(), SDLoRAConfig(rank=2), modules_to_train=["classifier"])
    for task in range(2):
        _train_task(memory, seed=task)
    memory.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "sdlora_adapter.safetensors", "sdlora_model.json", "sdlora_modules_to_train.safetensors"]
    loaded = SDLoRAModel.from_pretrained(_tiny_bert_classifier(), tmp_path / "ckpt")
    assert loaded.adapter.num_tasks == 2 and loaded.adapter.ranks == memory.adapter.ranks
    torch.testing.assert_close(loaded.sdlora_magnitudes.alpha, memory.sdlora_magnitudes.alpha, atol=0, rtol=0)
    old_magnitudes = memory.sdlora_magnitudes.alpha.detach().clone()
    _train_task(memory, seed=2)
    _train_task(loaded, seed=2)
    assert not torch.equal(memory.sdlora_magnitudes.alpha[:2], old_magnitudes)  # old magnitudes kept learning
    batch = {"input_ids": torch.randint(1, 100, (3, 6))}
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, memory.eval()(**batch).logits, atol=1e-6, rtol=0)


def test_save_pretrained_of_the_wrapper_never_writes_a_base_checkpoint_with_missing_weights(tmp_path):
    model = sdlora.get_sdlora_model(_tiny_bert_classifier(), SDLoRAConfig(rank=2))
    _train_task(model)
    with pytest.raises(TypeError, match="merge_and_unload"):
        model.save_pretrained(tmp_path / "x", safe_serialization=True)  # what a transformers caller passes
    model.save_pretrained(tmp_path / "ok")
    assert not (tmp_path / "ok" / "config.json").exists()  # no half-model that AutoModel would load
    from sdlora.model_api import SDLoRAModel

    with pytest.raises(FileNotFoundError, match="sdlora_model.json"):
        SDLoRAModel.from_pretrained(_tiny_bert_classifier(), tmp_path / "nothing")
