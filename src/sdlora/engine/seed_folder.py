"""Where a run's seed lives: `OUT/seed-N/` (with checkpoints/), or the folder itself. No torch: the command line
checks paths with it before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path


def find_seed_folder(run_dir: Path, seed: int | None = None) -> Path:
    """A seed folder itself, or the one seed folder of a run (or the one `seed` names)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise FileNotFoundError(f"{run_dir} does not exist")
    if run_dir.is_file():
        raise ValueError(f"{run_dir} is a file: give a run folder (or one of its seed-N folders), or, to predict, an "
                         "export folder written with --format timm or hf (a single .safetensors export holds the "
                         "weights and names: docs/export.md, \"The single file\", loads it)")
    if (run_dir / "checkpoints").is_dir():
        return run_dir
    every = sorted(run_dir.glob("seed-*"))
    folders = [f for f in every if seed is None or f.name == f"seed-{seed}"]
    if not folders:
        if every:
            raise FileNotFoundError(f"{run_dir} has no seed {seed}; its seeds: {', '.join(f.name for f in every)}")
        raise FileNotFoundError(f"{run_dir} holds no run (no checkpoints/ and no seed-*/ folders)")
    if len(folders) > 1:
        raise ValueError(f"{run_dir} holds {len(folders)} seeds ({', '.join(f.name for f in folders)}); "
                         "choose one with --seed or pass the seed folder")
    return folders[0]
