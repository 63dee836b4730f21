"""GPU smoke benchmark: ViT-B/16 (random init) + SD-LoRA through 2 tasks of synthetic 224x224 images.

Prints, measured in this one run: training images/s of the frozen backbone alone (forward + backward to
the activations, the floor of any adapter method) and of SD-LoRA per task, inference images/s of the plain
backbone and of the merged SD-LoRA model (they should match: merging costs nothing at inference), the
largest output difference between merged and unmerged models, and peak GPU memory. `--profile` adds
torch.profiler's operator tables of a few frozen-backbone and SD-LoRA steps (where a throughput gap goes).
`--compile MODE` (`train.compile`'s modes: default, reduce-overhead = CUDA graphs, max-autotune) compiles the
backbone after the eager floor is measured, measures the compiled frozen backbone too, and trains SD-LoRA through
it (each task's compile falls in its warm-up steps), so every ratio is against the eager floor of the same run;
inference stays eager on both sides.

Drives the model directly (no trainer, no data loader): `TimmViT` -> `SDLoRA` method -> SGD loop with
bf16 autocast on a GPU. `--device cpu --tiny` runs a 2-block 32x32 ViT in seconds (used as a check here).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import timm
import torch

from sdlora.backbones.timm_vit import TimmViT
from sdlora.config import TrainConfig
from sdlora.data.scenario import TaskInfo
from sdlora.engine.compiled import COMPILE_MODES, compile_backbone, eager
from sdlora.methods.sdlora import SDLoRA

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 3}
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")
    p.add_argument("--tiny", action="store_true", help="2-block ViT on 32x32 inputs (CPU check)")
    p.add_argument("--tasks", type=int, default=2)
    p.add_argument("--timed-tasks", type=int, nargs="+", default=None,
                   help="tasks (1-based) that train and are timed; the others only store a random direction (no "
                        "step, no compile), e.g. --tasks 20 --timed-tasks 1 20. Default: every task")
    p.add_argument("--classes-per-task", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed training steps per task")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval-batches", type=int, default=20, help="timed inference batches")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16", help="used on a GPU only")
    p.add_argument("--mode", choices=["official", "paper", "continuous"], default="official",
                   help="SD-LoRA current_mode, with that mode's own norm")
    p.add_argument("--profile", action="store_true",
                   help="also print torch.profiler's operators (by self GPU time; CPU time on a CPU) of 3 "
                        "frozen-backbone and 3 SD-LoRA steps of the last task")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--compile", choices=["none", *COMPILE_MODES], default="none",
                   help="train.compile's mode for the backbone (after the eager floor is measured)")
    return p.parse_args(argv)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn: Callable[[], None], steps: int, warmup: int, batch: int,
                      device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def profile_table(fn: Callable[[], None], device: torch.device, steps: int = 3, rows: int = 15) -> str:
    """torch.profiler over `steps` calls of `fn`: operators by self device time (CPU time on a CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def peak_memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> dict[str, float | None]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp = args.amp if device.type == "cuda" else "none"

    def autocast() -> contextlib.AbstractContextManager:
        return torch.autocast(device.type, dtype=AMP[amp]) if amp != "none" else contextlib.nullcontext()

    options = TimmViT.Options(model="vit_base_patch16_224.augreg2_in21k_ft_in1k", pretrained=False,
                              model_kwargs=TINY if args.tiny else {})
    backbone = TimmViT(options).to(device)
    size = backbone.model.patch_embed.img_size[0]
    x = torch.rand(args.batch_size, 3, size, size, device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}, timm {timm.__version__}; "
          f"{'tiny ViT' if args.tiny else 'ViT-B/16'} {size}x{size}, batch {args.batch_size}, amp {amp}, "
          f"SD-LoRA mode {args.mode}")
    results: dict[str, float | None] = {}

    # the floor: the frozen backbone's forward + backward to its activations (no weight gradients)
    def backbone_step() -> None:
        inputs = x.detach().requires_grad_(True)
        with autocast():
            out = backbone(inputs)
        out.float().sum().backward()

    def backbone_infer() -> None:
        with torch.no_grad(), autocast():
            backbone(x)

    backbone.eval()
    reset_peak(device)
    results["backbone_train_img_s"] = images_per_second(backbone_step, args.steps, args.warmup,
                                                        args.batch_size, device)
    results["backbone_infer_img_s"] = images_per_second(backbone_infer, args.eval_batches, args.warmup,
                                                        args.batch_size, device)
    results["backbone_peak_gib"] = peak_memory_gib(device)
    if args.compile != "none":
        compile_backbone(backbone, args.compile, device)
        compiled = images_per_second(backbone_step, args.steps, args.warmup, args.batch_size, device)
        results["compiled_backbone_train_img_s"] = compiled
        print(f"frozen backbone compiled ({args.compile}): training {compiled:,.1f} img/s "
              f"({compiled / results['backbone_train_img_s']:.2f} x eager)")

    train_cfg = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.9, batch_size=args.batch_size)
    method = SDLoRA(backbone, SDLoRA.Options(current_mode=args.mode), train_cfg).to(device)
    reset_peak(device)
    for t in range(args.tasks):
        task = TaskInfo(t, t * args.classes_per_task, (t + 1) * args.classes_per_task, args.tasks)
        method.begin_task(task)
        method.to(device)
        if args.timed_tasks is not None and t + 1 not in args.timed_tasks:
            with torch.no_grad():  # a stored direction without training: non-zero, distinct magnitudes
                for p in method.adapter.trainable_parameters():
                    p.add_(torch.randn_like(p) * 0.02)
            method.end_task(task, None)  # type: ignore[arg-type]  # no loader needed by SD-LoRA
            continue
        optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9)
        labels = torch.randint(task.known, task.total, (args.batch_size,), device=device)
        method.train()

        def train_step(task: TaskInfo = task, optimizer: torch.optim.Optimizer = optimizer,
                       labels: torch.Tensor = labels) -> None:
            with autocast():
                logits = method(x)
            loss = method.loss(logits.float(), labels, task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        speed = images_per_second(train_step, args.steps, args.warmup, args.batch_size, device)
        if args.profile and t == args.tasks - 1:
            for label, fn in (("frozen backbone", backbone_step), (f"SD-LoRA task {t + 1}", train_step)):
                print(f"profile: {label}, 3 steps")
                print(profile_table(fn, device))
        results[f"sdlora_train_img_s_task{t + 1}"] = speed
        method.end_task(task, None)  # type: ignore[arg-type]  # no loader needed by SD-LoRA
        print(f"task {t + 1}/{args.tasks}: SD-LoRA training {speed:,.1f} img/s "
              f"({speed / results['backbone_train_img_s']:.2f} x the frozen backbone's forward+backward)")
    results["sdlora_train_peak_gib"] = peak_memory_gib(device)

    method.eval()
    probe = x[: min(8, args.batch_size)]
    with torch.no_grad():
        before = method(probe).float()
        method.adapter.merge()
        after = method(probe).float()
    results["merge_max_abs_diff"] = float((after - before).abs().max())

    def merged_infer() -> None:
        with torch.no_grad(), autocast(), eager():  # against the plain backbone's eager inference
            method(x)

    reset_peak(device)
    results["merged_infer_img_s"] = images_per_second(merged_infer, args.eval_batches, args.warmup,
                                                      args.batch_size, device)
    results["merged_infer_peak_gib"] = peak_memory_gib(device)

    ratio = results["merged_infer_img_s"] / results["backbone_infer_img_s"]
    print(f"frozen backbone: training {results['backbone_train_img_s']:,.1f} img/s, "
          f"inference {results['backbone_infer_img_s']:,.1f} img/s")
    print(f"merged SD-LoRA inference: {results['merged_infer_img_s']:,.1f} img/s "
          f"({ratio:.2f} x the backbone); "
          f"max |merged - unmerged| = {results['merge_max_abs_diff']:.2e}")
    if device.type == "cuda":
        print(f"peak GPU memory: backbone {results['backbone_peak_gib']:.2f} GiB, SD-LoRA training "
              f"{results['sdlora_train_peak_gib']:.2f} GiB, "
              f"merged inference {results['merged_infer_peak_gib']:.2f} GiB")
    else:
        print("peak GPU memory: n/a (cpu)")
    return results


if __name__ == "__main__":
    main()
