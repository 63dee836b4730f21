"""Inference cost of a method as deployed, against the plain backbone: FLOPs counted on one batch, the numbers
stored to predict, and every number stored to predict and to keep learning. Deterministic
(`torch.utils.flop_counter`, no timing): the same on every rerun, and counted from shapes, so the same on CPU and
GPU as long as every kernel used is in the table (torch's has the GPU attention kernels; the CPU one is added
below; checked on CPU only).

    flops           the method's eval forward (`Method.deployed()` form: SD-LoRA merged; prompt methods their
                    query pass and the prompted pass) on the batch
    backbone_flops  the plain pre-trained backbone's forward (`Backbone.plain()`: no adapter, no prompt)
    ratio           flops / backbone_flops (a merged method: 1 + the classifier's share)
    parameters      `Method.inference_parameters()`; backbone_parameters: the plain backbone's; extra: the difference
    stored_numbers  `Method.stored_numbers()`: every number the continual model keeps to predict and to keep
                    learning (the linear head, class statistics, subspace bases, ... beside what it predicts
                    with); extra_stored_numbers: beyond the plain backbone

Counted ops: matrix products (incl. the in-place addmm_), convolutions and attention (incl. the CPU kernel of
scaled_dot_product_attention), 2 FLOPs per multiply-add; element-wise ops are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import flop_counter

from sdlora.methods.base import Method


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return int(flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape))


def _addmm_flops(self_shape: Any, a_shape: Any, b_shape: Any, *args: Any, **kwargs: Any) -> int:
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n


def _sdpa_backward_flops(grad_out_shape: Any, query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                         **kwargs: Any) -> int:
    return int(flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape))


#: kernels that torch's FLOP table misses, counted as their table entries are: the CPU attention (its backward for
#: benchmarks that count training steps, benchmarks/step_cost.py) and the in-place addmm_ (an adapter folded into a
#: weight copy, `sdlora.adapters.kernels`)
EXTRA_FORMULAS = {getattr(torch.ops.aten, name): formula
                  for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _sdpa_flops),
                                        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_backward_flops),
                                        ("addmm_", _addmm_flops))
                  if hasattr(torch.ops.aten, name)}


def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of `fn`, a backward it runs included (torch's table and `EXTRA_FORMULAS`)."""
    with flop_counter.FlopCounterMode(display=False, custom_mapping=EXTRA_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(fn: Callable[[Any], Any], inputs: Any) -> int:
    """FLOPs of `fn(inputs)` without gradient and autocast (counts do not depend on the dtype)."""
    with torch.no_grad():
        return flops_of(lambda: fn(inputs))


def batch_size(inputs: Any) -> int:
    """Samples in a batch of images [B, ...] or of tokenized text (a dict of [B, ...] tensors)."""
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else inputs
    return int(first.shape[0])


def inference_cost(method: Method, inputs: Any) -> dict[str, Any]:
    """The `inference_cost` entry of results.json for `method` on one batch `inputs` (on its device)."""
    was_training = method.training
    method.eval()
    try:
        with torch.autocast(next(method.parameters()).device.type, enabled=False):
            with method.deployed() as form:
                flops = count_flops(method, inputs)
                parameters = method.inference_parameters()
            with method.backbone.plain():
                backbone_flops = count_flops(method.backbone, inputs)
    finally:
        method.train(was_training)
    backbone_parameters = method.backbone.plain_numel()
    stored = method.stored_numbers()  # as trained, outside `deployed` (a merge in place stores nothing new)
    return {"form": form, "batch": batch_size(inputs), "flops": flops, "backbone_flops": backbone_flops,
            "ratio": flops / backbone_flops if backbone_flops else None,
            "parameters": parameters, "backbone_parameters": backbone_parameters,
            "extra_parameters": parameters - backbone_parameters,
            "stored_numbers": stored, "extra_stored_numbers": stored - backbone_parameters}
