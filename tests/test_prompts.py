"""Prompt injection into timm ViTs by wrapping: empty prompts = the plain model, prefixes = extra keys/values,
prompt tokens after [CLS], and only the prompts train while the frozen backbone stays bit-identical."""

import copy

import pytest
import torch

from sdlora.prompts import KeyedPool, PrefixAttention, PromptedViT, cosine_match, pull_loss
from sdlora.testing import tiny_vit


def vit(**overrides):  # noqa: ANN201
    torch.manual_seed(0)
    return tiny_vit(**overrides).eval()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_empty_prompts_equal_the_plain_model(fused, qk_norm):
    plain = vit(qk_norm=qk_norm)
    for block in plain.blocks:
        block.attn.fused_attn = fused
    wrapped = copy.deepcopy(plain)
    prompted = PromptedViT(wrapped)
    x = torch.randn(2, 3, 32, 32)
    empty = torch.zeros(1, 0, 48)
    with torch.no_grad():
        reference = plain(x)
        assert torch.equal(wrapped(x), reference)  # no prompt: the wrapped module itself runs
        with prompted.inject({i: (empty, empty) for i in range(prompted.depth)}, tokens=empty):
            replica = wrapped(x)  # the replica of timm's Attention.forward, with zero-length prefixes
    torch.testing.assert_close(replica, reference, rtol=0, atol=1e-6)
    assert all(a.prefix is None for a in prompted.attentions) and prompted.tokens is None


@pytest.mark.parametrize("fused", [True, False])
def test_prefix_equals_attending_to_extra_tokens(fused):
    """Oracle: prefixes made of the k/v projections of extra tokens z give the same outputs for x as the plain
    attention over [z; x] (restricted to x's rows)."""
    attn = vit(qk_norm=True).blocks[0].attn
    attn.fused_attn = fused
    wrapper = PrefixAttention(attn)
    torch.manual_seed(1)
    z, x = torch.randn(2, 4, 48), torch.randn(2, 7, 48)
    with torch.no_grad():
        _, k, v = attn.qkv(z).chunk(3, dim=-1)
        wrapper.prefix = (k, v)
        out = wrapper(x)
        oracle = attn(torch.cat([z, x], dim=1))[:, 4:]
    torch.testing.assert_close(out, oracle, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, attn(x), atol=1e-3)  # the prefix does change the output


def test_prompt_tokens_follow_cls_and_positional_embedding():
    model = vit()
    prompted = PromptedViT(model)
    x = torch.randn(2, 3, 32, 32)
    tokens = torch.randn(1, 3, 48)
    with torch.no_grad():
        with prompted.inject(tokens=tokens):
            out = model.forward_features(x)
        seq = model._pos_embed(model.patch_embed(x))
        oracle = model.norm(model.blocks(torch.cat([seq[:, :1], tokens.expand(2, -1, -1), seq[:, 1:]], 1)))
    assert out.shape == (2, 1 + 3 + 64, 48)
    torch.testing.assert_close(out, oracle, rtol=0, atol=0)


def test_only_prompts_train_and_the_frozen_backbone_is_bit_identical():
    model = vit()
    for p in model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompted = PromptedViT(model)
    prefix = torch.nn.Parameter(torch.randn(2, 1, 5, 48) * 0.1)  # (P_k, P_v) of block 0
    tokens = torch.nn.Parameter(torch.randn(1, 2, 48) * 0.1)
    optimizer = torch.optim.Adam([prefix, tokens], lr=0.1)
    start = (prefix.detach().clone(), tokens.detach().clone())
    model.train()
    for _ in range(3):
        with prompted.inject({0: (prefix[0], prefix[1])}, tokens=tokens):
            loss = model(torch.randn(4, 3, 32, 32)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = prompted.unwrapped_state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    assert not torch.equal(prefix, start[0]) and not torch.equal(tokens, start[1])


def test_pool_selects_nearest_keys_and_pull_moves_them_to_the_query():
    torch.manual_seed(0)
    pool = KeyedPool(6, (2, 4), 4)
    with torch.no_grad():
        pool.keys.copy_(torch.cat([torch.eye(4), torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]])]) + 0.01)
    query = torch.tensor([[0.1, 1.0, 0.3, 0.0], [0.0, 0.0, 0.2, 1.0]])
    idx = pool.select(query, 2)
    cos = cosine_match(query, pool.keys)
    assert idx.tolist() == [[1, 4], [3, 5]]  # the nearest key first
    assert idx.tolist() == cos.topk(2, dim=1).indices.tolist()
    loss = pull_loss(query, pool.keys, idx)
    loss.backward()
    with torch.no_grad():
        moved = pool.keys - 0.5 * pool.keys.grad
    new_cos = cosine_match(query, moved).gather(1, idx)
    assert (new_cos > cos.gather(1, idx)).all()
    unselected = sorted(set(range(6)) - set(idx.flatten().tolist()))
    assert pool.keys.grad[unselected].abs().sum() == 0
    assert pool.current_counts.tolist() == torch.bincount(idx.flatten(), minlength=6).float().tolist()


def test_frequency_balancing_prefers_rarely_used_prompts():
    pool = KeyedPool(4, (1, 2), 2)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]))
    query = torch.tensor([[1.0, 0.05]])
    assert pool.select(query, 2, balance=True).tolist() == [[0, 1]]  # no history: nearest keys
    pool.end_task()  # prompts 0 and 1 were used in the past task
    assert pool.frequency_penalty().tolist() == [0.5, 0.5, 0.0, 0.0]
    assert sorted(pool.select(query, 2, balance=True).flatten().tolist()) == [2, 3]
    pool.eval()
    assert pool.select(query, 2, balance=True).tolist() == [[0, 1]]  # balancing is a training-time rule


def bert_inputs():  # noqa: ANN201
    torch.manual_seed(2)
    ids = torch.randint(5, 100, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bert_empty_prompts_equal_the_plain_model(implementation):
    from sdlora.prompts import PromptedBert
    from sdlora.testing import tiny_bert

    torch.manual_seed(0)
    plain = tiny_bert(attn_implementation=implementation).eval()
    wrapped = copy.deepcopy(plain)
    prompted = PromptedBert(wrapped)
    inputs = bert_inputs()
    empty = torch.zeros(1, 0, 32)
    with torch.no_grad():
        reference = plain(**inputs).last_hidden_state
        assert torch.equal(prompted.hidden(inputs), reference)
        with prompted.inject({0: (empty, empty), 1: (empty, empty)}, tokens=empty):
            replica = prompted.hidden(inputs)
    torch.testing.assert_close(replica, reference, rtol=0, atol=1e-6)
    assert prompted.unwrapped_state_dict().keys() == plain.state_dict().keys()


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_bert_prefix_and_tokens_equal_extra_tokens(implementation):
    """Oracle: prompt tokens after [CLS] = the same vectors as embedding outputs of extra (always attended)
    positions; prefixes from the key/value projections of extra states = attending to those states."""
    from sdlora.prompts import PromptedBert
    from sdlora.prompts.bert import PrefixSelfAttention
    from sdlora.testing import tiny_bert

    torch.manual_seed(0)
    model = tiny_bert(attn_implementation=implementation).eval()
    inputs = bert_inputs()
    attention = model.encoder.layer[0].attention.self
    wrapper = PrefixSelfAttention(attention)
    z, x = torch.randn(2, 3, 32), torch.randn(2, 6, 32)
    mask = torch.zeros(2, 1, 1, 6)  # additive, broadcast over the queries: sample 1 has 2 padding tokens
    mask[1, :, :, 4:] = torch.finfo(torch.float32).min
    with torch.no_grad():
        wrapper.prefix = (attention.key(z), attention.value(z))
        out = wrapper(x, mask)[0]
        full = attention(torch.cat([z, x], 1), torch.cat([torch.zeros(2, 1, 1, 3), mask], -1))[0][:, 3:]
    torch.testing.assert_close(out, full, rtol=1e-5, atol=1e-6)
    prompted = PromptedBert(model)
    tokens = torch.randn(1, 2, 32)
    with torch.no_grad(), prompted.inject(tokens=tokens):
        hidden = prompted.hidden(inputs)
    assert hidden.shape == (2, 8, 32)
    assert not torch.allclose(hidden[:, :1], model(**inputs).last_hidden_state[:, :1], atol=1e-4)
