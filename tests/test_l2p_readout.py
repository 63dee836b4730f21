"""L2P's feature readout: the backbone's own readout of the input's tokens (`readout: backbone`) or the mean
prompt output (`readout: prompt`, the release's), on a tiny BERT-like encoder and a tiny ViT."""

import pytest
import torch

from engine_helpers import tiny
from export_helpers import TINY_BERT
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build

TEXTS = ["book a table for two", "hi", "what is the weather like in paris tomorrow", "play jazz"]
TEXT_BACKBONE = {"name": "hf_encoder", "options": {"random_init_config": TINY_BERT, "max_length": 16}}


def l2p(readout: str, **sections):  # noqa: ANN201
    method = {"name": "l2p", "options": {"pool_size": 4, "prompt_length": 2, "top_n": 2, "readout": readout}}
    cfg = load_config(data=tiny(method=method, **sections))
    torch.manual_seed(0)
    built = build.build_method(cfg, build.build_backbone(cfg))
    with torch.no_grad():  # non-zero prompts of a clear size, so they do change the input's states
        built.prompts.prompts.normal_(0, 1.0)
    return built.eval()


def text_inputs(method):  # noqa: ANN001, ANN201
    return method.backbone.collate([(t, 0) for t in TEXTS])[0]


@pytest.mark.parametrize("backbone", ["vit", "text"])
def test_readout_of_the_plain_states_is_the_backbone_feature(backbone):
    method = l2p("backbone", **({"backbone": TEXT_BACKBONE} if backbone == "text" else {}))
    inputs = text_inputs(method) if backbone == "text" else torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        hidden = method.injector.hidden(inputs)
        torch.testing.assert_close(method.backbone.readout(hidden, inputs), method.backbone(inputs),
                                   rtol=0, atol=1e-6)


def test_text_backbone_readout_is_the_masked_mean_over_the_real_tokens_of_the_prompted_run():
    method = l2p("backbone", backbone=TEXT_BACKBONE)
    inputs = text_inputs(method)
    with torch.no_grad():
        idx = method.select(inputs)[1]
        tokens = method.prompts.prompts[idx].flatten(1, 2)  # 2 prompts x 2 tokens
        with method.injector.inject(tokens=tokens):
            hidden = method.injector.hidden(inputs)
        assert hidden.shape[1] == inputs["input_ids"].shape[1] + 4
        real = torch.cat([hidden[:, :1], hidden[:, 5:]], dim=1)  # [CLS], then the text's tokens
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        expected = (real * mask).sum(1) / mask.sum(1)
        got = method.features(inputs)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        plain = method.backbone(inputs)
        assert (got - plain).abs().max() > 1e-3  # the prompts, attended to, moved the sentence feature
        prompt_mean = hidden[:, 1:5].mean(1)
        assert (got - prompt_mean).abs().max() > 1e-3


def test_vit_readouts_are_cls_and_the_prompt_mean():
    x = torch.randn(3, 3, 32, 32)
    by_readout = {}
    for readout in ("backbone", "prompt"):
        method = l2p(readout)
        with torch.no_grad():
            idx = method.select(x)[1]
            with method.injector.inject(tokens=method.prompts.prompts[idx].flatten(1, 2)):
                hidden = method.injector.hidden(x)
            by_readout[readout] = (method.features(x), hidden)
    feature, hidden = by_readout["backbone"]
    torch.testing.assert_close(feature, hidden[:, 0], rtol=0, atol=1e-6)  # timm 'token' pool: [CLS]
    feature, hidden = by_readout["prompt"]
    torch.testing.assert_close(feature, hidden[:, 1:5].mean(1), rtol=0, atol=1e-6)


def test_backbone_readout_trains_the_selected_prompts_through_attention():
    method = l2p("backbone", backbone=TEXT_BACKBONE)
    task = TaskInfo(index=0, known=0, total=2, num_tasks=1)
    method.begin_task(task)
    method.train()
    inputs = text_inputs(method)
    out = method.training_step((inputs, torch.tensor([0, 1, 1, 0])), task)
    out.loss.backward()
    idx = method.select(inputs)[1].flatten().unique()
    grads = method.prompts.prompts.grad
    assert grads[idx].abs().sum(dim=(1, 2)).min() > 0  # every selected prompt gets a gradient
    unused = sorted(set(range(4)) - set(idx.tolist()))
    assert all(grads[i].abs().sum() == 0 for i in unused)
    assert all(p.grad is None for p in method.backbone.parameters())


def test_readout_must_be_known():
    with pytest.raises(ValueError, match="readout"):
        l2p("cls")
