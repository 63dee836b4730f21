"""Rank per task (SD-LoRA-RR, docs/sdlora.md).

A schedule is a list of ``[first_task, rank]`` pairs (0-indexed tasks, strictly increasing starts, the first
start 0); task t uses the rank of the last pair with ``first_task <= t``. The paper's RR setting (r_1 = 10,
mu = 4, nu = 8, r_mu = 8, r_nu = 6, read as the official code's commented block) is ``RR_SCHEDULE``:
tasks 0-3 rank 10, tasks 4-7 rank 8, tasks 8+ rank 6. `variant: rr` shrinks any first rank r the same way
(`rr_schedule`: r, 0.8 r, 0.6 r from tasks 0, 4, 8). Plain SD-LoRA is a constant rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

#: RR's ranks as fractions of the first (the paper's 10 / 8 / 6 from tasks mu = 4 and nu = 8 on)
RR_SHRINK: tuple[tuple[int, float], ...] = ((0, 1.0), (4, 0.8), (8, 0.6))


def rr_schedule(rank: int) -> list[list[int]]:
    """RR from a first rank: [[0, r], [4, round(0.8 r)], [8, round(0.6 r)]] (at least 1): the paper's at r = 10."""
    return [[start, max(1, round(rank * share))] for start, share in RR_SHRINK]


RR_SCHEDULE: tuple[tuple[int, int], ...] = tuple((start, r) for start, r in rr_schedule(10))

#: names accepted in place of an explicit schedule (YAML-friendly)
NAMED_SCHEDULES: dict[str, tuple[tuple[int, int], ...]] = {"rr": RR_SCHEDULE}


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_rank(rank: object, field: str = "rank") -> int:
    """A rank must be a positive int; anything else is a ValueError naming the field."""
    if not _is_int(rank) or rank <= 0:
        raise ValueError(f"{field} must be a positive integer, got {rank!r}")
    return int(rank)


def normalize_schedule(schedule: Sequence[Sequence[int]] | str) -> list[list[int]]:
    """Validate a schedule (or a name in NAMED_SCHEDULES) and return it as a list of [start, rank] lists."""
    if isinstance(schedule, str):
        if schedule not in NAMED_SCHEDULES:
            raise ValueError(
                f"rank_schedule: unknown name {schedule!r}; allowed names: {sorted(NAMED_SCHEDULES)} "
                "or a list of [first_task, rank] pairs"
            )
        schedule = NAMED_SCHEDULES[schedule]
    pairs: list[list[int]] = []
    for i, pair in enumerate(schedule):
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"rank_schedule[{i}] must be a [first_task, rank] pair, got {pair!r}")
        start, rank = pair
        if not _is_int(start) or start < 0:
            raise ValueError(f"rank_schedule[{i}]: first_task must be an int >= 0, got {start!r}")
        check_rank(rank, f"rank_schedule[{i}] rank")
        if pairs and start <= pairs[-1][0]:
            raise ValueError(f"rank_schedule: first_task values must strictly increase, "
                             f"got {list(schedule)!r}")
        pairs.append([int(start), int(rank)])
    if not pairs or pairs[0][0] != 0:
        raise ValueError(f"rank_schedule must start with a pair for task 0, got {list(schedule)!r}")
    return pairs


def rank_for_task(task: int, schedule: Sequence[Sequence[int]] | None, default_rank: int) -> int:
    """Rank of 0-indexed `task`: the last schedule entry whose start is <= task (constant when None)."""
    if schedule is None:
        return default_rank
    rank = default_rank
    for start, r in schedule:
        if start <= task:
            rank = r
        else:
            break
    return int(rank)
