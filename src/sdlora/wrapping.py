"""The module wrappers that adapters and prompt injection put into a backbone in place, and the plain backbone
under them.

Every wrapper (`SlicedLinear` of the adapters, `PrefixAttention` / `PrefixSelfAttention` of the prompts) keeps
the module it replaced as `base`; the plain pre-trained architecture is the model with every wrapper replaced
by its `base`. `plain_forward` runs it so without changing the model's structure, `plain_tensors` names its
stored tensors (what inference cost is measured against, `sdlora.engine.cost`); `module_tensors` names every
stored tensor of a model, wrappers' own included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class ModuleWrapper(nn.Module):
    """Base of the in-place wrappers: `base` is the wrapped module, whose call signature the wrapper keeps."""

    base: nn.Module


@contextlib.contextmanager
def plain_forward(model: nn.Module) -> Iterator[None]:
    """Inside: every `ModuleWrapper` in `model` only calls its `base` (no adapter term, no prompt); restored on
    exit, also on errors."""
    wrappers = [m for m in model.modules() if isinstance(m, ModuleWrapper)]
    try:
        for wrapper in wrappers:
            wrapper.forward = wrapper.base.__call__  # the instance attribute shadows the class's forward
        yield
    finally:
        for wrapper in wrappers:
            wrapper.__dict__.pop("forward", None)


def own_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    """The parameters and persistent buffers registered on `module` itself (not on its children)."""
    for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
        if tensor is not None and name not in module._non_persistent_buffers_set:
            yield tensor


def plain_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """The parameters and persistent buffers of the plain model (inside a wrapper only its `base`'s), by id."""
    out: dict[int, torch.Tensor] = {}
    stack = [model]
    while stack:
        module = stack.pop()
        if isinstance(module, ModuleWrapper):
            stack.append(module.base)
            continue
        out.update((id(t), t) for t in own_tensors(module))
        stack.extend(m for m in module._modules.values() if m is not None)
    return out


def module_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """Every parameter and persistent buffer of `model` and its submodules, wrappers' own included (adapter
    factors, prompt tensors), by id: a tensor registered twice counts once."""
    return {id(t): t for module in model.modules() for t in own_tensors(module)}


def plain_numel(model: nn.Module) -> int:
    """The numbers stored by the plain model (parameters and persistent buffers, shared ones once)."""
    return sum(t.numel() for t in plain_tensors(model).values())


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put `module` at the dotted `name` inside `model` (how wrappers go in and plain layers come back)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
