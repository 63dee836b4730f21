"""Inference cost (`sdlora.engine.cost`, results.json `inference_cost`): FLOPs of the deployed form against the
plain backbone on the tiny ViT, the stored parameters, and the plain forward that bypasses every wrapper."""

import copy
import io
import json

import pytest
import torch

from engine_helpers import tiny
from sdlora.config import load_config
from sdlora.data.scenario import TaskInfo
from sdlora.engine import build
from sdlora.engine.cost import count_flops, flops_of, inference_cost
from sdlora.engine.runner import run_config

DIM, CLASSES, BATCH = 32, 6, 16  # the tiny ViT's width, the synthetic benchmark's classes, eval_batch_size
HEAD = DIM * CLASSES + CLASSES
L2P = {"name": "l2p"}  # published pool: M = 10 prompts of L_p = 5 tokens, N = 5 per input
DUAL = {"name": "dualprompt", "options": {"g_layers": [0], "e_layers": [1]}}  # published lengths 5 / 20, depth 2


def results(tmp_path, method: dict) -> dict:  # noqa: ANN001
    run_config(load_config(data=tiny(method=method, train={"epochs": 1})), tmp_path, quiet=True,
               stream=io.StringIO())
    return json.loads((tmp_path / "seed-3" / "results.json").read_text())


def trained_sdlora():  # noqa: ANN201
    """SD-LoRA after one task whose direction moved, and the backbone as it was before the adapter went in."""
    cfg = load_config(data=tiny(method={"name": "sdlora"}))
    torch.manual_seed(0)
    backbone = build.build_backbone(cfg)
    plain = copy.deepcopy(backbone).eval()
    method = build.build_method(cfg, backbone)
    task = TaskInfo(index=0, known=0, total=2, num_tasks=3)
    method.begin_task(task)
    with torch.no_grad():
        for p in method.adapter.trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    method.end_task(task, None)
    return method.eval(), plain


def test_sdlora_merged_costs_the_backbone_plus_its_head(tmp_path):
    cost = results(tmp_path, {"name": "sdlora"})["inference_cost"]
    assert (cost["form"], cost["batch"]) == ("merged", BATCH)
    assert cost["flops"] - cost["backbone_flops"] == 2 * BATCH * DIM * CLASSES  # the head's, nothing else
    assert cost["ratio"] == pytest.approx(1.0, abs=1e-3)
    assert cost["extra_parameters"] == HEAD  # the merged adapter stores nothing
    cfg = load_config(data=tiny())
    assert cost["backbone_parameters"] == sum(p.numel() for p in build.build_backbone(cfg).parameters())


@pytest.mark.parametrize(("method", "extra", "stored"), [
    (L2P, 10 * 5 * DIM + 10 * DIM + HEAD, 2 * 10),  # pool and keys; stored: each prompt's selection counts (x 2)
    (DUAL, 2 * 5 * DIM + 3 * (2 * 20 * DIM + DIM) + HEAD, 0),  # G; per task an E-prompt (keys and values), a key
    # the harness classifier: prediction reads the class means instead of the linear head, which is kept to learn
    ({**L2P, "classifier": {"kind": "prototypes"}}, 10 * 5 * DIM + 10 * DIM + CLASSES * DIM, 2 * 10 + HEAD),
], ids=["l2p", "dualprompt", "l2p-prototypes"])
def test_prompt_methods_pay_a_query_pass_and_a_longer_prompted_pass(tmp_path, method, extra, stored):
    cost = results(tmp_path, method)["inference_cost"]
    assert cost["form"] == "as trained"
    assert cost["ratio"] > 1.8
    assert cost["flops"] > 2 * cost["backbone_flops"]  # the query pass is the backbone's, the prompted one longer
    assert cost["extra_parameters"] == extra
    assert cost["extra_stored_numbers"] == extra + stored
    assert cost["stored_numbers"] == cost["backbone_parameters"] + extra + stored


def test_a_buffer_prediction_reads_is_counted_and_one_only_learning_reads_is_stored_only():
    cfg = load_config(data=tiny(method=L2P))
    method = build.build_method(cfg, build.build_backbone(cfg))
    method.begin_task(TaskInfo(index=0, known=0, total=2, num_tasks=3))
    plain = method.backbone.plain_numel()
    prompts = 10 * 5 * DIM + 10 * DIM
    assert (method.inference_parameters() - plain, method.stored_numbers() - plain) == (
        prompts + 2 * DIM + 2, prompts + 2 * DIM + 2 + 2 * 10)
    method.prompts.register_buffer("scale", torch.ones(7))  # say prediction reads it: it is counted in both
    assert (method.inference_parameters() - plain, method.stored_numbers() - plain) == (
        prompts + 2 * DIM + 2 + 7, prompts + 2 * DIM + 2 + 2 * 10 + 7)


def test_sdlora_stores_every_direction_magnitude_and_anchor_and_predicts_merged():
    """A hand count after 2 tasks of rank 4 on the tiny ViT (depth 2, q and v slices of the 32 -> 96 qkv)."""
    cfg = load_config(data=tiny(method={"name": "sdlora", "options": {"rank": 4}}))
    method = build.build_method(cfg, build.build_backbone(cfg))
    for t in range(2):
        task = TaskInfo(index=t, known=2 * t, total=2 * t + 2, num_tasks=3)
        method.begin_task(task)
        method.end_task(task, None)
    slices, width, ranks, tasks, blocks = 2, DIM, 2 * 4, 2, 2
    bank = (slices * ranks * DIM + slices * width * ranks  # past_down [S, R, in], past_up [S, w, R]
            + ranks + slices * tasks + slices * tasks)  # col_task [R], divisor and offset [S, T]
    head = 4 * DIM + 4
    cost = inference_cost(method, torch.randn(4, 3, 32, 32))
    assert cost["extra_parameters"] == head  # merged: the backbone's shapes, and the head
    assert cost["extra_stored_numbers"] == blocks * bank + tasks + 1 + head == 2215  # + magnitudes, 1 anchor
    assert not method.adapter.merged


def test_inflora_stores_its_subspace_bases_but_not_its_merge_records():
    cfg = load_config(data=tiny(method={"name": "inflora", "options": {"rank": 2}}))
    method = build.build_method(cfg, build.build_backbone(cfg))
    images = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.tensor([0, 1] * 4))
    loader = torch.utils.data.DataLoader(images, batch_size=4)
    for t in range(2):
        task = TaskInfo(index=t, known=2 * t, total=2 * t + 2, num_tasks=3)
        method.begin_task(task)
        method.prepare_task(task, loader)
        method.end_task(task, loader)
    factors = sum(w.down.numel() + w.up.numel() for w in method.lora.wrappers.values())
    bases = sum(m.numel() for m in method.subspaces.values())
    assert len(method.subspaces) == 2 and bases >= 2 * DIM  # [in, dims], at least one direction per layer
    assert len(method.lora.merged_factors) == 2  # kept to replay merges on resume; the merged W0 holds them
    plain, head = method.backbone.plain_numel(), 4 * DIM + 4
    assert method.inference_parameters() == plain + head
    assert method.stored_numbers() == plain + factors + bases + head


def test_measuring_merges_sdlora_and_restores_it_bit_for_bit():
    method, _ = trained_sdlora()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = method(x)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    unmerged = count_flops(method, x)
    method.train()
    cost = inference_cost(method, x)
    assert method.training and not method.adapter.merged
    assert cost["flops"] < unmerged  # as trained, every adapted layer also pays its low-rank terms
    assert cost["ratio"] == pytest.approx(1.0, abs=1e-3)
    assert cost["extra_parameters"] == DIM * 2 + 2  # the first task's head rows
    after = method.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(method.eval()(x), before)


def test_plain_backbone_bypasses_the_wrappers_and_counts_without_them():
    method, plain = trained_sdlora()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        adapted, reference = method.backbone(x), plain(x)
        with method.backbone.plain():
            torch.testing.assert_close(method.backbone(x), reference, rtol=0, atol=0)
        assert torch.equal(method.backbone(x), adapted)  # the wrappers are back
        assert not torch.allclose(adapted, reference)
    assert method.backbone.plain_numel() == sum(p.numel() for p in plain.parameters())
    assert count_flops(plain, x) < count_flops(method.backbone, x)
    with method.backbone.plain():
        assert count_flops(method.backbone, x) == count_flops(plain, x)


def test_in_place_matrix_products_and_cpu_attention_backward_are_counted():
    """torch's FLOP table lacks addmm_ (the adapter folded into a weight copy) and the CPU attention's backward."""
    a, b = torch.randn(4, 3), torch.randn(3, 5)
    assert count_flops(lambda w: w.addmm_(a, b), torch.zeros(4, 5)) == 2 * 4 * 3 * 5
    q = torch.randn(1, 2, 6, 8, requires_grad=True)
    total = flops_of(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward())
    forward = 2 * (2 * 2 * 6 * 6 * 8)  # q k^T and p v: 2 heads, 6 x 6 scores of width 8
    assert total == forward * 3.5  # backward: both products' gradients and the recomputed scores


def test_step_cost_counts_the_growing_fold():
    """benchmarks/step_cost.py --count-only: the stored directions' fold and contraction grow the step's count."""
    from scripts import load_benchmark_script

    lines = load_benchmark_script("step_cost").run("tiny", [1, 8], 0, 4, "fused_wgrad", count_only=True)
    rows = [line.split("|") for line in lines if line.startswith("| 1 ") or line.startswith("| 8 ")]
    one, eight = (float(row[4]) for row in rows)
    assert 1.0 < one < eight  # vs the frozen step: the adapter adds work, 7 stored directions more
