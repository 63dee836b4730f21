"""TokenCache: batches padded from cached per-text ids equal the tokenizer's own padded batch call."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from sdlora.backbones.hf_encoder import HFEncoder
from sdlora.backbones.token_cache import TokenCache
from sdlora.config import resolve_options

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 37}
TEXTS = ["book a table for two", "hi", "", "what's the weather like in Zürich tomorrow morning?",
         " ".join(["very long query"] * 30), "play some jazz", "PAY MY BILL", "a", "hi",
         "café au lait, s'il vous plaît",
         "set an alarm for 7:30", "transfer $200 from checking to savings please"]


@pytest.fixture(scope="module")
def encoder() -> HFEncoder:
    return HFEncoder(resolve_options(HFEncoder.Options, {"random_init_config": TINY_BERT, "max_length": 16},
                                     "backbone.options"))


def reference(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return dict(tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("side", ["right", "left"])
def test_cached_batches_equal_the_tokenizer_call(encoder, side):
    tokenizer = copy.deepcopy(encoder.tokenizer)
    tokenizer.padding_side = side
    cache = TokenCache(tokenizer, max_length=16)
    rng = random.Random(0)
    for _ in range(20):  # overlapping batches: hits, misses and duplicates within a batch
        batch = rng.choices(TEXTS, k=rng.randint(1, 7))
        assert_same(cache.batch(batch), reference(tokenizer, batch, 16))
    assert len(cache) == len(set(TEXTS))


def test_capacity_bounds_the_cache_without_changing_batches(encoder):
    cache = TokenCache(encoder.tokenizer, max_length=8, capacity=3)
    for start in range(0, len(TEXTS), 4):
        batch = TEXTS[start:start + 4]
        assert_same(cache.batch(batch), reference(encoder.tokenizer, batch, 8))
    assert len(cache) <= 3


def test_encoder_collate_uses_the_cache_and_gives_the_same_features(encoder):
    samples = [(t, i) for i, t in enumerate(TEXTS)]
    cached, labels = encoder.collate(samples)
    assert encoder.token_cache is not None and len(encoder.token_cache) == len(set(TEXTS))
    again, _ = encoder.collate(samples[::-1])
    plain = encoder.tokenize_uncached(TEXTS)
    assert_same(cached, plain)
    assert_same(again, encoder.tokenize_uncached(TEXTS[::-1]))
    assert labels.tolist() == list(range(len(TEXTS)))
    with torch.no_grad():
        assert torch.equal(encoder(cached), encoder(plain))
