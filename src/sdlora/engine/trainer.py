"""The trainer: one loop for every method, one seed per call (task -> epochs -> end_task -> evaluate).

After every epoch and every task the full state is checkpointed atomically; `resume=True` continues from
the last checkpoint and ends with the same results.json as an uninterrupted run (bit for bit on the CPU
in deterministic mode; timing fields aside).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sdlora.config import RunConfig, TrainConfig
from sdlora.data.base import BenchmarkData
from sdlora.data.length_order import bucket_order, pass_loader
from sdlora.data.scenario import Scenario, TaskInfo, check_same_classes
from sdlora.devices import move_to
from sdlora.engine import build, cost, distributed
from sdlora.engine.checkpoint import (
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    prefixed,
    save_checkpoint,
    unprefixed,
    write_json_atomic,
)
from sdlora.engine.compiled import compile_backbone, eager
from sdlora.engine.distributed import Reorder
from sdlora.engine.loggers import Loggers, Resume
from sdlora.engine.loop import StepContext, TrainingStep, evaluate, read_interval, train_epoch
from sdlora.engine.optim import build_optimizer, build_scheduler, task_schedule
from sdlora.engine.results import RunRecord
from sdlora.engine.seeding import data_generator, rank_streams, rng_state, set_rng_state
from sdlora.methods.base import Method
from sdlora.typed import ConfigError

log = logging.getLogger("sdlora")

CheckpointHook = Callable[[int, int, bool], None]  # (task, epochs done, task finished)


def micro_batch_size(train: TrainConfig, processes: int) -> int:
    """The samples of one forward: the global batch split over processes and accumulated micro-batches."""
    parts = processes * train.accumulate_steps
    if train.batch_size % parts:
        raise ConfigError(f"train.batch_size ({train.batch_size}) is the global batch: it must be a multiple of "
                          f"processes x train.accumulate_steps ({processes} x {train.accumulate_steps})")
    return train.batch_size // parts


class Trainer:
    """Runs one seed of a config into `out_dir`."""

    def __init__(self, cfg: RunConfig, seed: int, out_dir: Path, device: torch.device, data: BenchmarkData,
                 quiet: bool = False, on_checkpoint: CheckpointHook | None = None, scenario: Scenario | None = None,
                 record: type[RunRecord] = RunRecord) -> None:
        """`scenario`: the tasks to run (default: the config's over `data`); `sdlora learn` continues a run with
        its grown scenario and a record that keeps old tasks' last accuracy when their test data is gone."""
        self.cfg, self.seed, self.out_dir, self.device = cfg, seed, Path(out_dir), device
        self.quiet = quiet or not distributed.is_main()
        self.on_checkpoint = on_checkpoint
        self.scenario: Scenario = scenario if scenario is not None else build.build_scenario(cfg, data, seed)
        self.method: Method = build.build_model(cfg, seed, device)
        self.backbone = self.method.backbone
        compile_backbone(self.backbone, cfg.train.compile, device)
        self.record = record.start(cfg, seed, self.scenario, self.backbone.info(), data.info)
        self.record.processes = distributed.world_size()
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.counter = 0
        self.step = 0  # optimiser steps so far (the x axis of the scalar logs)
        self.loggers = Loggers([], self.out_dir, "", {}, None)
        self.log_positions: dict[str, int] = {}

    # -- data ------------------------------------------------------------------------------------
    @property
    def micro_batch(self) -> int:
        """Samples per forward on this process (run_config checked that the global batch splits)."""
        return micro_batch_size(self.cfg.train, distributed.world_size())

    def _loader(self, dataset: Any, shuffle: bool, task: int = 0, epoch: int = 0) -> DataLoader:
        """Training: this rank's share of the epoch's permutation in micro-batches of
        batch_size / (processes * accumulate_steps), length-bucketed when `train.length_buckets` is set.
        Otherwise: this rank's shard (all of it when alone), for passes whose statistics are reduced over ranks,
        longest samples first with `train.length_aware_passes` (`length_order.pass_loader`; per-sample
        outputs go back to dataset order through `length_order.dataset_order`)."""
        t = self.cfg.train
        pin = self.device.type == "cuda"
        if not shuffle:
            lengths_of = self.backbone.sample_lengths if t.length_aware_passes else None
            return pass_loader(distributed.shard(dataset), self.backbone.collate, t.eval_batch_size, lengths_of,
                               t.num_workers, pin)
        return DataLoader(
            dataset,
            batch_size=self.micro_batch,
            sampler=distributed.train_sampler(dataset, data_generator(self.seed, task, epoch), self._buckets()),
            # its own generator for the loader's base seed, so a training epoch draws nothing from the global RNG
            generator=data_generator(self.seed, task, epoch),
            collate_fn=self.backbone.collate,
            num_workers=t.num_workers,
            pin_memory=pin,
        )

    def _buckets(self) -> Reorder | None:
        """`train.length_buckets`: the epoch's order with each window of that many global batches sorted by
        length (`length_order.bucket_order`); None when off or when the backbone's inputs have one shape."""
        window = self.cfg.train.length_buckets
        if not window:
            return None
        batch = self.cfg.train.batch_size

        def reorder(order: list[int], dataset: Any, generator: torch.Generator) -> list[int]:
            lengths = self.backbone.sample_lengths(dataset)
            return order if lengths is None else bucket_order(order, lengths, batch, window, generator)

        return reorder

    # -- checkpoints -----------------------------------------------------------------------------
    def _save(self, task: int, epochs_done: int, finished: bool, optimizer: torch.optim.Optimizer | None) -> None:
        """Rank 0 writes (every rank holds the same state); the others only count."""
        if not distributed.is_main():
            self.counter += 1
            return
        structure, tensors = self.method.checkpoint_state()
        rng_meta, rng_tensors = rng_state()
        meta: dict[str, Any] = {
            "counter": self.counter,
            "position": {"task": task, "epochs_done": epochs_done, "finished": finished},
            "step": self.step,
            "method": structure,
            "rng": rng_meta,
            "record": self.record.progress(),
            "loggers": self.loggers.positions(),
            "classes": self.scenario.class_names(self.scenario.task(task).total),  # what the model knows so far
        }
        tensors = prefixed(tensors, "method") | rng_tensors
        if optimizer is not None and not finished:
            opt_meta, opt_tensors = optimizer_state(optimizer)
            meta["optimizer"] = opt_meta
            tensors |= opt_tensors
        save_checkpoint(self.ckpt_dir, meta, tensors)
        self.counter += 1
        if self.on_checkpoint is not None:
            self.on_checkpoint(task, epochs_done, finished)

    def _restore(self) -> tuple[int, int, dict[str, Any] | None, dict[str, torch.Tensor]]:
        """Load the last checkpoint; returns (task to run, epochs already done in it, optimizer meta, tensors).

        Rank 0 reads it and hands it to the others: every rank resumes from the same one (shared disk or not)."""
        loaded = distributed.from_main(lambda: load_checkpoint(self.ckpt_dir))
        if loaded is None:
            return 0, 0, None, {}
        meta, tensors = loaded
        if "classes" in meta:  # checkpoints written before it was saved cannot tell
            check_same_classes(meta["classes"], self.scenario.class_names(), "--resume")
        self.counter = meta["counter"] + 1
        self.step = meta.get("step", 0)
        self.log_positions = meta.get("loggers", {})
        method_tensors = unprefixed(tensors, "method", self.device)
        self.method.load_checkpoint_state(meta["method"], method_tensors)
        self.method.to(self.device)  # whatever a method rebuilt while loading lives with the model
        self.record.restore(meta["record"])
        pos = meta["position"]
        set_rng_state(meta["rng"], tensors)
        if pos["finished"]:
            log.info("continuing after task %d (its checkpoint)", pos["task"] + 1)
            return pos["task"] + 1, 0, None, {}
        self.method.restore_trainable_flags(self.scenario.task(pos["task"]))
        log.info("resuming task %d after epoch %d", pos["task"] + 1, pos["epochs_done"])
        return pos["task"], pos["epochs_done"], meta.get("optimizer"), tensors

    # -- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        start_task, start_epoch, opt_meta, tensors = self._restore() if resume else (0, 0, None, {})
        name = f"{self.cfg.name or self.cfg.method.name}-seed{self.seed}"
        kinds = self.cfg.train.loggers if distributed.is_main() else []
        self.loggers = Loggers(kinds, self.out_dir, name, self.record.config,
                               Resume(self.step, self.log_positions) if resume else None)
        try:
            return self._run(start_task, start_epoch, opt_meta, tensors)
        finally:
            self.loggers.close()

    def _run(self, start_task: int, start_epoch: int, opt_meta: dict[str, Any] | None,
             tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        clock = time.perf_counter()
        for t in range(start_task, self.scenario.num_tasks):
            task = self.scenario.task(t)
            task_clock = time.perf_counter()
            if task.size == 1 and self.method.classifier_cfg.loss == "current" and self.method.trains:
                log.warning("task %d has one class: with method.classifier.loss 'current' its loss is identically "
                            "zero (nothing is learned in this task); consider method.classifier.loss: seen", t + 1)
            if len(self.scenario.train_set(t)) < distributed.world_size():
                raise ConfigError(f"task {t + 1} has {len(self.scenario.train_set(t))} training samples, fewer than "
                                  f"the {distributed.world_size()} processes: run it on fewer processes")
            resuming_mid_task = t == start_task and opt_meta is not None
            passes = self._loader(self.scenario.train_set(t), shuffle=False)  # the task's no-gradient passes
            if not resuming_mid_task:
                self.method.before_task(task, passes)
                self.method.begin_task(task)
                self.method.to(self.device)  # parameters a method adds at a task start (head rows, prompts...)
                self.method.prepare_task(task, passes)
            trainable = self.method.num_trainable()
            self._train_task(task, start_epoch if resuming_mid_task else 0, opt_meta if resuming_mid_task else None,
                             tensors)
            info = self.method.end_task(task, passes)
            row, counts = self._evaluate(task)
            self.record.add_task(row, counts, trainable, time.perf_counter() - task_clock, info)
            # evaluated (row not None): the curve's last point is a number
            accuracy = {} if row is None else {"eval/accuracy": cast(float, self.record.accuracy_curve[-1])}
            self.loggers.log(self.step, t + 1, task_schedule(self.cfg.train, t).epochs,
                             {**accuracy, **self._method_scalars()})
            if row is None:
                log.info("task %d/%d: not evaluated (eval_every %d)", t + 1, task.num_tasks, self.cfg.eval_every)
            else:
                recorded = cast(list[float], self.record.accuracy_matrix[-1])  # `learn` carries unreadable old tasks'
                log.info("task %d/%d: accuracy %.2f%% over %d classes (%s)", t + 1, task.num_tasks,
                         self.record.accuracy_curve[-1], task.total, " ".join(f"{a:.1f}" for a in recorded))
            self.record.add_time(time.perf_counter() - clock)
            clock = time.perf_counter()
            self._save(t, task_schedule(self.cfg.train, t).epochs, True, None)
            self.write_results()
        self.record.inference_cost = self._inference_cost()
        self.record.complete()
        self.write_results()
        return self.record.to_dict()

    def evaluates_after(self, t: int) -> bool:
        """`eval_every` k: after tasks k, 2k, ... and always after the last (k = 0: the last only)."""
        every = self.cfg.eval_every
        return t == self.scenario.num_tasks - 1 or (every > 0 and (t + 1) % every == 0)

    def _evaluate(self, task: TaskInfo) -> tuple[list[float] | None, list[int]]:
        """The accuracy row after `task` and the test counts per task; (None, []) when the schedule skips it.

        A skipped evaluation still draws the one number from the global RNG that iterating its DataLoader draws
        for the loader's base seed: training after it (dropout) reads the same random stream as in a run that
        evaluates after every task, so the final model, hence the final row, is the full schedule's."""
        if not self.evaluates_after(task.index):
            torch.empty((), dtype=torch.int64).random_()
            return None, []
        return evaluate(self.method, self._loader(self.scenario.eval_set(task.index, self.cfg.eval_split), False),
                        self.scenario, task, self.device, self.cfg.train.amp)

    def _inference_cost(self) -> dict[str, Any] | None:
        """`cost.inference_cost` on the first evaluation batch of the last task (unsharded: the same batch for
        any number of processes), measured on rank 0 and shared (every rank waits for it, none hangs); a
        failure is logged and recorded as None."""
        eval_set = self.scenario.eval_set(self.scenario.num_tasks - 1, self.cfg.eval_split)

        def measure() -> dict[str, Any] | None:
            try:
                loader = DataLoader(eval_set, batch_size=self.cfg.train.eval_batch_size,
                                    collate_fn=self.backbone.collate)
                inputs, _ = next(iter(loader))
                with eager():  # FLOPs are counted operator by operator
                    return cost.inference_cost(self.method, move_to(inputs, self.device))
            except Exception as err:  # noqa: BLE001 - a finished run is not lost to its cost measurement
                log.warning("inference cost not measured: %s: %s", type(err).__name__, err)
                return None

        return distributed.from_main(measure)

    def _train_task(self, task: TaskInfo, start_epoch: int, opt_meta: dict[str, Any] | None,
                    tensors: dict[str, torch.Tensor]) -> None:
        schedule = task_schedule(self.cfg.train, task.index)
        if not self.method.trains or schedule.epochs == 0:
            return
        optimizer = build_optimizer(self.method.trainable_parameters(), self.cfg.train, schedule)
        scheduler = build_scheduler(optimizer, self.cfg.train, schedule)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()"
            for _ in range(start_epoch):
                scheduler.step()
        if opt_meta is not None:
            load_optimizer_state(optimizer, opt_meta, {k: v.to(self.device) for k, v in tensors.items()})
        use_scaler = self.device.type == "cuda" and self.cfg.train.amp == "fp16"
        ctx = StepContext(self.method, optimizer, torch.amp.GradScaler("cuda") if use_scaler else None,
                          self.device, self.cfg.train.amp, self.cfg.train.grad_clip,
                          model=distributed.wrap(TrainingStep(self.method), self.device),
                          accumulate=self.cfg.train.accumulate_steps, read_every=read_interval(self.device))
        train_set = self.scenario.train_set(task.index)
        extra = -len(train_set) % distributed.world_size()
        if extra and distributed.is_main():  # `EpochShareSampler`: every rank takes the same number of samples
            log.warning("task %d: %d training samples over %d processes: each epoch repeats %d of them (one process "
                        "would not)", task.index + 1, len(train_set), distributed.world_size(), extra)
        for epoch in range(start_epoch, schedule.epochs):
            loader = self._loader(train_set, shuffle=True, task=task.index, epoch=epoch)
            desc = f"task {task.index + 1}/{task.num_tasks} epoch {epoch + 1}/{schedule.epochs}"
            lr = optimizer.param_groups[0]["lr"]

            def on_step(value: float, epoch: int = epoch, lr: float = lr) -> None:
                self.step += 1
                self.loggers.log(self.step, task.index + 1, epoch + 1, {"train/loss": value, "train/lr": lr})

            with (tqdm(total=len(loader), desc=desc, disable=self.quiet, leave=False, dynamic_ncols=True) as bar,
                  rank_streams(self.seed, task.index, epoch, distributed.rank(), distributed.world_size())):
                loss = train_epoch(ctx, loader, task, bar, on_step)
            self.loggers.log(self.step, task.index + 1, epoch + 1,
                             {"epoch/loss": loss, "epoch/lr": lr, **self._method_scalars()})
            scheduler.step()
            log.info("%s: loss %.4f, lr %.3g", desc, loss, optimizer.param_groups[0]["lr"])
            self._save(task.index, epoch + 1, False, optimizer)

    def _method_scalars(self) -> dict[str, float]:
        return {f"method/{k}": v for k, v in self.method.scalars().items()}

    def write_results(self) -> None:
        if not distributed.is_main():
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_dir / "results.json", self.record.to_dict())
