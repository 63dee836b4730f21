"""`train.compile`: the backbone's forward through `torch.compile` (opt-in), for every pass of a run.

The backbone's forward is replaced by its compiled version in place: the module, its state_dict keys, checkpoints
and exports are those of an eager run, and every path that calls it is compiled: the training step's forward and
backward (the adapted layers' kernels, the prompts' prefixes), the feature passes and evaluation. The head, the
loss and the optimiser step stay eager.

Modes are torch.compile's: `default`; `reduce-overhead` (CUDA graphs on a GPU: the host-bound step of a fixed-shape
ViT; its outputs are cloned out of the graph's memory, which the next replay overwrites; on the CPU it compiles as
`default`); `max-autotune` (searches kernels, long compiles). A continual run changes
the compiled module at every task start (new directions, prompts, a longer stored rank) and text batches change
length: both recompile. The recompile limit is raised to `RECOMPILE_LIMIT` so that a long run never falls back
to eager silently; input shapes that keep changing (text lengths) are compiled dynamically after their second
value (torch's default). Random ops (dropout) draw from torch's own generator as in eager mode
(`torch._inductor.config.fallback_random`), not from inductor's: a compiled run equals the eager run of the same
seed within float rounding (tests/test_compile.py), and a run may switch on resume. Forward hooks added after the
compile (InfLoRA's input taps) are guarded, so they recompile instead of being skipped (torch's default skips
hook guards).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, get_args

import torch
from torch import nn

from sdlora.config import CompileMode

log = logging.getLogger(__name__)

#: the modes `train.compile` takes besides "none" (torch.compile's)
COMPILE_MODES = tuple(mode for mode in get_args(CompileMode) if mode != "none")

#: compiled versions kept per compiled frame before torch falls back to eager (torch's default is 8; a run
#: recompiles at most a few times a task)
RECOMPILE_LIMIT = 256


def compile_backbone(backbone: nn.Module, mode: str, device: torch.device) -> None:
    """Compile `backbone`'s forward in place with torch.compile's `mode` ("none": leave it eager)."""
    if mode == "none":
        return
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile must be none or one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "reduce-overhead" and device.type != "cuda":
        log.warning("train.compile reduce-overhead uses CUDA graphs on a GPU only: on %s it compiles as default",
                    device.type)
    configure_compiler()
    compiled = torch.compile(backbone.forward, mode=torch_mode(mode))
    # in place: the module, its state_dict and its hooks stay; only the forward it calls is the compiled one
    backbone.forward = cloned(compiled) if mode == "reduce-overhead" else compiled


def cloned(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`fn` with its output copied out. A CUDA graph's next replay overwrites its outputs, and the feature passes
    keep every batch's features (torch raises on reading an overwritten output; cloning is its remedy)."""
    @functools.wraps(fn)
    def forward(*args: Any, **kwargs: Any) -> torch.Tensor:
        return fn(*args, **kwargs).clone()

    return forward


def torch_mode(mode: str) -> str | None:
    """torch.compile's `mode` argument for a `train.compile` mode."""
    return None if mode == "default" else mode


def configure_compiler() -> None:
    """The compiler settings a continual run needs (process-wide, as torch keeps them)."""
    torch._inductor.config.fallback_random = True  # dropout masks: eager's, so the seed's results are kept
    dynamo = torch._dynamo.config
    dynamo.skip_nnmodule_hook_guards = False  # hooks added later (InfLoRA's input taps) must recompile, not vanish
    dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
    dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, RECOMPILE_LIMIT * 4)


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Compiled modules run their eager code inside (FLOP counting sees every operator)."""
    with torch.compiler.set_stance("force_eager"):
        yield
