"""The backbone interface: a frozen feature extractor, `forward(inputs) -> [batch, feature_dim]`."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from sdlora.wrapping import plain_forward, plain_numel


class BackboneUnavailable(OSError, RuntimeError):
    """The model cannot be built or its weights cannot be found; one line naming the model and what was tried."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an error message (library messages often run over many lines)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


class Backbone(nn.Module):
    """Wraps one timm or Hugging Face model (`self.model`, where adapters are injected).

    Subclasses set `feature_dim`, `default_targets` (adapter target patterns, relative to `self.model`)
    and implement `forward`; `collate` turns a list of dataset samples into (inputs, labels).
    Registered classes also carry an `Options` dataclass (defined in the torch-free `sdlora.backbones.options`)
    and are built as `cls(options)`.
    """

    feature_dim: int
    default_targets: list[str]
    model: nn.Module
    #: what the backbone takes: "text" (strings, tokenised by `tokenize`) or "images" (pixel tensors)
    modality: ClassVar[str] = "images"

    @classmethod
    def targets_for(cls, model: nn.Module) -> list[str] | None:
        """The layers SD-LoRA adapts on a model of this backbone's kind (adapter target patterns), or None when
        `model` is not of its kind: the one table `get_sdlora_model` and the methods read their defaults from."""
        return None

    @classmethod
    def check_options(cls, options: Any) -> None:
        """Checks of valid options that need the backbone's own library (a ValueError says what is wrong): run by
        `engine.build.validate_plugins` after every plugin's options are resolved, so the torch-free checks of
        the command line refuse the same configs first."""

    @classmethod
    def data_config(cls, options: Any) -> dict[str, Any]:
        """What the model expects as images (timm data config: input_size, mean, std, ...); {} if nothing.

        A classmethod, so the benchmark's transforms are resolved before any weights load.
        """
        return {}

    def readout(self, hidden: torch.Tensor, inputs: Any) -> torch.Tensor:
        """The feature from the model's final token states [B, N, dim] (what `forward` returns after them):
        methods that change the token sequence (L2P's inserted prompts) pool the input's own tokens with it."""
        raise NotImplementedError(f"backbone {type(self).__name__} does not expose its readout")

    def collate(self, samples: list[tuple[Any, int]]) -> tuple[Any, torch.Tensor]:
        inputs, labels = zip(*samples, strict=True)
        return torch.stack(list(inputs)), torch.as_tensor(labels, dtype=torch.long)

    def sample_lengths(self, dataset: Any) -> list[int] | None:
        """Each sample's length in the model's units (tokens), for length-aware batches
        (`sdlora.data.length_order`); None when every input has one shape (images): the passes then keep
        the dataset order, and the dataset is not read."""
        return None

    def info(self) -> dict[str, Any]:
        """What results.json records about the weights (name, resolved tag, sha256 of the loaded weights)."""
        return {"name": type(self).__name__}

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped model's own state dict, loadable by timm / transformers with strict=True."""
        injector = self.__dict__.get("_prompted")
        if injector is not None:  # prompt wrappers are in the model: report the library's own names
            return injector.unwrapped_state_dict()
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def prompted(self) -> Any:
        """The prompt injector over `self.model` (`sdlora.prompts`: `inject`, `hidden`, `depth`), built once."""
        if self.__dict__.get("_prompted") is None:
            self.__dict__["_prompted"] = self.make_prompted()
        return self.__dict__["_prompted"]

    def make_prompted(self) -> Any:
        raise NotImplementedError(f"backbone {type(self).__name__} does not support prompt methods")

    def plain(self) -> contextlib.AbstractContextManager:
        """Inside: the backbone runs as the plain pre-trained architecture, every adapter and prompt wrapper
        calling only the module it wraps (`sdlora.wrapping`)."""
        return plain_forward(self.model)

    def plain_numel(self) -> int:
        """Parameters (and persistent buffers) of the plain backbone, without adapter or prompt tensors."""
        return plain_numel(self.model)

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """A stable hash of loaded weights (names, shapes, dtypes and raw bytes in key order)."""
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
