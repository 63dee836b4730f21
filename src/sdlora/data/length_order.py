"""Length-aware batches: samples of similar length share a batch, so a batch pads little.

A text batch is padded to its longest text. CLINC150 queries are short and uneven, so in batches of 256 in
dataset order the passes without gradient (feature passes before and after training, evaluation) processed
2.03 - 2.17 x the real tokens (benchmarks/README.md, "Where the job's time goes"). Sorting the samples of a
pass by length (longest first, ties in dataset order: deterministic, and the largest batch comes first, so
a memory error shows at once) makes each batch's texts about equally long.

Passes without gradient:
  `LengthBatches` orders one pass, longest first, in batches of at most `eval_batch_size` samples and at most
  10 % padding (`similar_length_batches`); every per-sample output is put back in the loader's dataset order
  by `dataset_order(rows, loader)` (`collect_features` does this before gathering the shards of a
  multi-process run, so features, labels and everything fitted from them keep their order). A sample's
  feature then comes from another batch shape, which moves it by float rounding only (attention masks the
  padding): tests/test_length_order.py bounds the difference.
Training (opt-in, `train.length_buckets: k`):
  `bucket_order` sorts each window of k consecutive global batches of the epoch's shuffle by length and
  shuffles the batches of the window again, so a batch holds texts of similar length but the epoch still
  visits random batches. It changes which samples share a batch, hence the optimisation.

Which backbones: the backbone declares lengths (`Backbone.sample_lengths`: the token count of each text for
Hugging Face encoders); image backbones have fixed shapes and return None, and their passes keep the
dataset order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

#: a dataset's per-sample lengths (None: its samples have one shape, nothing to sort)
LengthsOf = Callable[[Dataset], "list[int] | None"]


def longest_first(lengths: Sequence[int]) -> list[int]:
    """Positions ordered by decreasing length; equal lengths keep their order (a stable, seedless sort)."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


#: the most padding a length-aware batch may hold, as a share of its padded tokens: every batch, hence the
#: whole pass, processes at most 1 / (1 - MAX_PADDING) = 1.11 x its real tokens
MAX_PADDING = 0.1


def similar_length_batches(order: Sequence[int], lengths: Sequence[int], batch_size: int,
                           max_padding: float = MAX_PADDING) -> list[list[int]]:
    """`order` (longest first) cut into batches of at most `batch_size` samples whose padding stays within
    `max_padding` of their padded tokens. Fixed batches of the sorted order are not enough when a pass has
    few batches: with 512 CLINC150 queries in batches of 256 the first batch pads its short texts to the few
    longest (1.7 x the real tokens); a batch here ends where the lengths fall, so the longest texts form
    small batches of their own. No batch holds more samples or more padded tokens than a batch of
    `batch_size` in dataset order can."""
    batches: list[list[int]] = []
    real = 0
    for i in order:
        batch = batches[-1] if batches else []
        longest = lengths[batch[0]] if batch else 0  # longest first: the batch's first sample
        padded = (len(batch) + 1) * longest
        if not batch or len(batch) == batch_size or padded - real - lengths[i] > max_padding * padded:
            batches.append([i])
            real = lengths[i]
        else:
            batch.append(i)
            real += lengths[i]
    return batches


class LengthBatches(Sampler[list[int]]):
    """One pass over a dataset in batches of similar length, longest first (a DataLoader `batch_sampler`);
    `restore` puts per-sample rows back in dataset order."""

    def __init__(self, lengths: Sequence[int], batch_size: int) -> None:
        self.batches = similar_length_batches(longest_first(lengths), lengths, batch_size)
        self.order = [i for batch in self.batches for i in batch]
        self.inverse = torch.empty(len(self.order), dtype=torch.long)
        self.inverse[torch.as_tensor(self.order, dtype=torch.long)] = torch.arange(len(self.order))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def restore(self, rows: torch.Tensor) -> torch.Tensor:
        """`rows` in the pass's order (one per sample) -> the same rows in dataset order."""
        if rows.shape[0] != len(self.order):
            raise ValueError(f"{rows.shape[0]} rows for a pass over {len(self.order)} samples")
        return rows[self.inverse.to(rows.device)]


def dataset_order(rows: torch.Tensor, loader: Any) -> torch.Tensor:
    """Per-sample `rows` of one pass over `loader`, in the loader's dataset order (unchanged when the loader
    reads its dataset in order). Every consumer of per-sample outputs of a pass goes through this."""
    batches = getattr(loader, "batch_sampler", None)
    return batches.restore(rows) if isinstance(batches, LengthBatches) else rows


def pass_loader(dataset: Dataset, collate: Callable[[list[Any]], Any], batch_size: int,
                lengths_of: LengthsOf | None = None, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader for a pass without gradient: in `LengthBatches` when `lengths_of` gives lengths, else
    batches of `batch_size` in dataset order."""
    lengths = lengths_of(dataset) if lengths_of is not None else None
    if not lengths:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                          pin_memory=pin_memory)
    return DataLoader(dataset, batch_sampler=LengthBatches(lengths, batch_size), collate_fn=collate,
                      num_workers=num_workers, pin_memory=pin_memory)


def bucket_order(order: list[int], lengths: Sequence[int], batch: int, window: int,
                 generator: torch.Generator) -> list[int]:
    """The epoch's shuffled `order` with each window of `window` consecutive batches of `batch` samples sorted
    by length (longest first) and its batches shuffled again by `generator`; the samples of each window stay
    in that window, the last short batch of the epoch stays last."""
    size = batch * window
    out: list[int] = []
    for start in range(0, len(order), size):
        part = order[start:start + size]
        part = [part[i] for i in longest_first([lengths[j] for j in part])]
        chunks = [part[i:i + batch] for i in range(0, len(part), batch)]
        full = [c for c in chunks if len(c) == batch]
        short = [c for c in chunks if len(c) < batch]
        for k in torch.randperm(len(full), generator=generator).tolist():
            out.extend(full[k])
        for c in short:
            out.extend(c)
    return out


def token_counts(loader: Any) -> tuple[int, int]:
    """(tokens processed, real tokens) over one pass of a text loader: the padded batch sizes against the
    attention masks' ones. What the benchmarks and tests count padding with."""
    processed = real = 0
    for inputs, _ in loader:
        mask = inputs["attention_mask"]
        processed += mask.numel()
        real += int(mask.sum())
    return processed, real
