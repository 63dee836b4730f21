"""Step cost of SD-LoRA against the frozen backbone, measured side by side in one process (CPU).

For 1, 5, 10 and 20 tasks (`--tasks`; rank 10 per task, `--rank`, on the q and v slices of every block's qkv;
the last task open):

* training ratio = SD-LoRA step / frozen step. SD-LoRA step: forward + backward of the adapted model down to
  every magnitude and the current factors (optimiser step excluded). Frozen step: the plain backbone, all
  parameters frozen, forward + backward to its activations, two ways: ``qkv0`` makes the output of block 0's
  qkv require grad, i.e. backward through everything above the first adapted layer, the floor that any
  adapter of that layer pays; ``pixels`` makes the input image require grad (the literal "input
  requires_grad" floor; it adds block 0's qkv input gradient and the patch-embedding conv's, which no
  adapter needs, so SD-LoRA can come out below 1 against it).
* merged inference ratio = adapter.merge()d model / plain backbone, forward under no_grad.
* unmerged inference ratio = the adapted model without merging, forward under no_grad (for information).
* FLOP count ratio = FLOPs of the step / FLOPs of the frozen step (qkv0), counted by `torch.utils.flop_counter`
  over one call (matrix products and attention, forward and backward; element-wise ops not counted): what the
  arithmetic alone predicts, free of the machine's noise.
* with `--compile MODE` (`train.compile`'s modes): the same SD-LoRA steps through `torch.compile(model)` (compiled
  outside the timed rounds), as a ratio to the eager frozen step (the floor stays eager) and to the eager step.

Repetitions are interleaved (baselines and every task count in each round, rotating the order); a ratio is
the median over rounds of (time / the baseline's time in the same round), which cancels the drift of a
shared machine's load better than a ratio of medians; in parentheses the ratio of the minima over rounds
(interference only adds time, so minima resist it best).

With `--profile`, instead of the ratios: torch.profiler over 2 training steps at the first and the last task
count, the operators with the most self CPU time grouped by input shapes (where a step's growth goes).

Run:  python benchmarks/step_cost.py  [--preset tiny|base|base12|minilm|both] [--tasks 1 20 ...] [--rank R]
          [--batch B] [--reps N] [--threads N] [--profile]
`minilm`: a timm ViT of MiniLM-L6's shape (width 384, 6 blocks, MLP 1536) over 17 tokens a sample, the text main
job's step without its tokenizer (`--batch 32 --rank 8` as configs/clinc150.yaml).
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import timm
import torch

from sdlora.adapters import SDLoRAAdapter, SDLoRAConfig
from sdlora.engine.compiled import COMPILE_MODES, configure_compiler, torch_mode
from sdlora.engine.cost import flops_of

PRESETS = {
    # name: (timm architecture, overrides, image size)
    "tiny": ("vit_tiny_patch16_224", {"depth": 4}, 224),  # width 192, 197 tokens
    "base": ("vit_base_patch16_224", {"depth": 2}, 224),  # ViT-B width 768 (the paper's), two blocks
    "base12": ("vit_base_patch16_224", {}, 224),  # the paper's ViT-B/16: width 768, all 12 blocks
    # the text main job's shape: MiniLM-L6 (width 384, 6 blocks, MLP 1536) over 17 tokens a sample (its CLINC150
    # queries average about 12 tokens + [CLS] / [SEP] with max_length 32)
    "minilm": ("vit_small_patch16_224", {"depth": 6}, 64),
}


def build(preset: str) -> torch.nn.Module:
    arch, overrides, img = PRESETS[preset]
    return timm.create_model(arch, pretrained=False, num_classes=0, img_size=img, **overrides).eval()


RANK = {"rank": 10}  # per task; --rank


def adapted(base: torch.nn.Module, tasks: int, kernel: str) -> tuple[torch.nn.Module, SDLoRAAdapter]:
    model = copy.deepcopy(base)
    adapter = SDLoRAAdapter(model, SDLoRAConfig(targets=["blocks.*.attn.qkv[q,v]"], rank=RANK["rank"],
                                                kernel=kernel))
    for t in range(tasks):
        adapter.begin_task()
        with torch.no_grad():  # stand-in for training: non-zero directions and distinct magnitudes
            for p in adapter.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.02)
        if t < tasks - 1:
            adapter.end_task()
    return model, adapter


def sdlora_step(model: torch.nn.Module, adapter: SDLoRAAdapter, x: torch.Tensor,
                weight: torch.Tensor) -> Callable[[], None]:
    """One SD-LoRA step: forward + backward to every magnitude and the current factors (no optimiser step)."""
    params = adapter.trainable_parameters()

    def step() -> None:
        for p in params:
            p.grad = None
        (model(x) @ weight).sum().backward()

    return step


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Rounds:
    """Per-round timings of several functions, run interleaved in a rotating order."""

    def __init__(self, fns: dict[object, Callable[[], object]], reps: int, warmup: int = 2) -> None:
        names = list(fns)
        self.samples: dict[object, list[float]] = {n: [] for n in names}
        for rep in range(warmup + reps):
            order = names[rep % len(names):] + names[: rep % len(names)]
            times = {name: timed(fns[name]) for name in order}
            if rep >= warmup:
                for name, elapsed in times.items():
                    self.samples[name].append(elapsed)

    def median(self, name: object) -> float:
        return statistics.median(self.samples[name])

    def ratio(self, name: object, baseline: object) -> float:
        """Median over rounds of time(name) / time(baseline) in the same round."""
        return statistics.median(a / b for a, b in zip(self.samples[name], self.samples[baseline]))

    def ratio_of_minima(self, name: object, baseline: object) -> float:
        """min time(name) / min time(baseline): interference only adds time, so minima resist it."""
        return min(self.samples[name]) / min(self.samples[baseline])

    def cell(self, name: object, baseline: object) -> str:
        return f"{self.ratio(name, baseline):.3f} ({self.ratio_of_minima(name, baseline):.3f})"


def frozen_base(preset: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The preset's backbone, every parameter frozen, and a random input batch (seed 0)."""
    torch.manual_seed(0)
    base = build(preset)
    for p in base.parameters():
        p.requires_grad_(False)
    img = PRESETS[preset][2]
    return base, torch.randn(batch, 3, img, img)


def run(preset: str, task_counts: list[int], reps: int, batch: int, kernel: str,
        compile_mode: str = "none", count_only: bool = False) -> list[str]:
    base, x = frozen_base(preset, batch)
    x_grad = x.clone().requires_grad_(True)
    models = {t: adapted(base, t, kernel) for t in task_counts}
    weight = torch.randn(base.num_features)
    floor_grad = {"on": False}

    def output_requires_grad(module: torch.nn.Module, inputs: object, out: torch.Tensor) -> torch.Tensor:
        return out.requires_grad_(True) if floor_grad["on"] else out

    base.blocks[0].attn.qkv.register_forward_hook(output_requires_grad)

    def frozen_pixels() -> None:
        x_grad.grad = None
        (base(x_grad) @ weight).sum().backward()

    def frozen_qkv0() -> None:
        floor_grad["on"] = True
        (base(x) @ weight).sum().backward()
        floor_grad["on"] = False

    steps = {"qkv0": frozen_qkv0, "pixels": frozen_pixels}
    eager_steps = {t: sdlora_step(*models[t], x, weight) for t in task_counts}
    for step in eager_steps.values():
        step()  # the kernel `auto` picks, read before any compiled call
    kernels = {t: sorted({w.last_kernel for w in models[t][1].wrappers.values()}) for t in task_counts}
    floor_flops = flops_of(frozen_qkv0)
    count = {t: flops_of(step) / floor_flops for t, step in eager_steps.items()}
    if count_only:
        arch, overrides, img = PRESETS[preset]
        return [f"preset {preset}: {arch} {overrides} img {img}, batch {batch}, rank {RANK['rank']} on q,v of every "
                f"qkv; frozen step (qkv0) {floor_flops / 1e9:.2f} GFLOP", "",
                "| tasks | stored rank | kernel (auto) | FLOP count, train / frozen (qkv0) "
                f"| FLOP count, train / {task_counts[0]}-task train |", "|---|---|---|---|---|",
                *(f"| {t} | {RANK['rank'] * (t - 1)} | {','.join(kernels[t])} | {count[t]:.3f} "
                  f"| {count[t] / count[task_counts[0]]:.3f} |" for t in task_counts)]
    compiled = {}
    if compile_mode != "none":
        configure_compiler()
        for t in task_counts:
            model, adapter = models[t]
            compiled[("compiled", t)] = sdlora_step(torch.compile(model, mode=torch_mode(compile_mode)), adapter, x,
                                                    weight)
            compiled[("compiled", t)]()  # the compile, outside the timed rounds
    train = Rounds({**steps, **eager_steps, **compiled}, reps)

    def infer(model: torch.nn.Module) -> Callable[[], None]:
        def fwd() -> None:
            with torch.no_grad():
                model(x)

        return fwd

    unmerged = Rounds({"plain": infer(base), **{t: infer(models[t][0]) for t in task_counts}}, reps)
    for _, adapter in models.values():
        adapter.merge()
    merged = Rounds({"plain": infer(base), **{t: infer(models[t][0]) for t in task_counts}}, reps)

    arch, overrides, img = PRESETS[preset]
    lines = [
        f"preset {preset}: {arch} {overrides} img {img}, batch {batch}, width {base.num_features}, "
        f"rank {RANK['rank']} on q,v of every qkv, kernel={kernel}; {reps} interleaved rounds",
        f"frozen step: {train.median('qkv0') * 1e3:.1f} ms (grad to qkv0), "
        f"{train.median('pixels') * 1e3:.1f} ms (grad to pixels); plain inference "
        f"{merged.median('plain') * 1e3:.1f} ms (medians)",
        "cells: median of per-round ratios (ratio of the minima)",
        "",
        "| tasks | stored rank | kernel (auto) | train / frozen (qkv0) | train / frozen (pixels) "
        f"| train / {task_counts[0]}-task train | merged inference / plain | unmerged inference / plain "
        "| FLOP count, train / frozen (qkv0) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in task_counts:
        lines.append(
            f"| {t} | {RANK['rank'] * (t - 1)} | {','.join(kernels[t])} | {train.cell(t, 'qkv0')} "
            f"| {train.cell(t, 'pixels')} | {train.cell(t, task_counts[0])} "
            f"| {merged.cell(t, 'plain')} | {unmerged.cell(t, 'plain')} | {count[t]:.3f} |"
        )
    if compiled:
        lines += ["", f"compiled ({compile_mode}), the same steps:", "",
                  "| tasks | compiled train / frozen (qkv0) | compiled train / eager train |", "|---|---|---|"]
        lines += [f"| {t} | {train.cell(('compiled', t), 'qkv0')} | {train.cell(('compiled', t), t)} |"
                  for t in task_counts]
    return lines


def profile_steps(preset: str, task_counts: list[int], batch: int, kernel: str, rows: int = 14) -> list[str]:
    """Self CPU time per operator and input shapes over 2 SD-LoRA steps, fewest and most tasks."""
    from torch.profiler import ProfilerActivity, profile

    base, x = frozen_base(preset, batch)
    weight = torch.randn(base.num_features)
    lines = []
    for tasks in (task_counts[0], task_counts[-1]):
        step = sdlora_step(*adapted(base, tasks, kernel), x, weight)
        step()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
            step()
        events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events) / 2e3
        lines += ["", f"{preset}, {tasks} task(s): {total:.1f} ms of self CPU time per step; top operators "
                  "(ms per step)"]
        for e in events[:rows]:
            lines.append(f"  {e.self_cpu_time_total / 2e3:8.1f}  {e.key:<28s} x{e.count // 2:<3d} {e.input_shapes}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=[*PRESETS, "both"], default="both",
                        help="both = tiny and base (depth 2); base12 is the full ViT-B depth")
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernel", default="auto", help="auto | factored | fused_proj | fused_wgrad")
    parser.add_argument("--rank", type=int, default=10, help="rank per task (the text main job: 8)")
    parser.add_argument("--profile", action="store_true", help="operator profile of the fewest / most tasks")
    parser.add_argument("--count-only", action="store_true",
                        help="only the FLOP counts (one call each, no timing): deterministic, fast at any batch")
    parser.add_argument("--compile", choices=["none", *COMPILE_MODES], default="none",
                        help="also time the SD-LoRA steps through torch.compile with this mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RANK["rank"] = args.rank
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, timm {timm.__version__}, {cpu}, {args.threads} thread(s); "
          "optimiser step excluded")
    presets = ["tiny", "base"] if args.preset == "both" else [args.preset]
    start = time.perf_counter()
    for preset in presets:
        print()
        if args.profile:
            lines = profile_steps(preset, args.tasks, args.batch, args.kernel)
        else:
            lines = run(preset, args.tasks, args.reps, args.batch, args.kernel, args.compile, args.count_only)
        print("\n".join(lines), flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
