"""DomainNet (345 classes, 6 domains) from the official per-domain split lists, all domains mixed.

`<data_root>/domainnet/<domain>_train.txt` and `<domain>_test.txt` hold lines
`<domain>/<class>/<file> <label>`, paths relative to `<data_root>/domainnet/` (the layout of the official
zips). The class-incremental protocol of CODA-Prompt / InfLoRA / SD-LoRA: 345 classes in 5 tasks of 69.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from sdlora.data.base import BenchmarkData, resolve_folder
from sdlora.data.benchmarks.options import DomainNetOptions
from sdlora.data.image_folder import Inventory, checked_data
from sdlora.registry import BENCHMARKS

if TYPE_CHECKING:
    from sdlora.data.check import KnownCounts

#: images per domain in the official (cleaned) split lists, DomainNet paper (Peng et al., ICCV 2019)
#: Table 1 as commonly cited; `sdlora data check` treats them as approximate.
SPLIT_COUNTS: dict[str, dict[str, int]] = {
    "clipart": {"train": 33525, "test": 14604},
    "infograph": {"train": 36023, "test": 15582},
    "painting": {"train": 50416, "test": 21850},
    "quickdraw": {"train": 120750, "test": 51750},
    "real": {"train": 120906, "test": 52041},
    "sketch": {"train": 48212, "test": 20916},
}


def inside(rel: str) -> bool:
    """A list entry must stay inside the list's folder: relative, no `..`, no drive (POSIX or Windows form)."""
    posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
    return not (posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts
                or ".." in windows.parts)


def read_split_list(path: Path, base: Path) -> tuple[list[tuple[str, int]], dict[int, str], list[str]]:
    """Parse `relative/path label` lines: samples (absolute path, label), label -> class, problems."""
    samples: list[tuple[str, int]] = []
    names: dict[int, str] = {}
    problems: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not (parts[1].isascii() and parts[1].isdigit()):
            problems.append(f"{path}:{number}: expected '<path> <label>' with a label 0, 1, ..., got "
                            f"{line.strip()!r}")
            continue
        rel, label = parts[0], int(parts[1])
        if not inside(rel):
            problems.append(f"{path}:{number}: {rel!r} points outside the folder of the lists "
                            "(absolute paths and '..' are not allowed)")
            continue
        name = Path(rel).parent.name
        if names.setdefault(label, name) != name:
            problems.append(f"{path}:{number}: label {label} is {names[label]!r} elsewhere but {name!r} here")
            continue
        samples.append((str(base / rel), label))
    return samples, names, problems


@BENCHMARKS.register("domainnet")
class DomainNet:
    """DomainNet: the official `<domain>_{train,test}.txt` lists under `<data_root>/domainnet/`."""

    title = "DomainNet"

    Options = DomainNetOptions

    def __init__(self, options: DomainNetOptions, data_root: Path | None) -> None:
        self.options = options
        self.data_root = data_root

    def location(self) -> Path:
        return resolve_folder(self.options.folder, self.data_root, self.title)

    def inventory(self) -> Inventory:
        """Samples of the selected domains' lists, without opening any image."""
        base = self.location()
        names: dict[int, str] = {}
        inventory = Inventory([], {})
        for split in ("train", "test"):
            samples: list[tuple[str, int]] = []
            for domain in self.options.domains:
                path = base / self.options.list_pattern.format(domain=domain, split=split)
                if not path.is_file():
                    raise FileNotFoundError(f"{self.title}: split list not found: {path}")
                items, found, problems = read_split_list(path, base)
                samples += items
                inventory.fatal += problems
                for label, name in found.items():
                    if names.setdefault(label, name) != name:
                        inventory.fatal.append(
                            f"{path}: label {label} is {name!r} here, {names[label]!r} before")
            inventory.splits[split] = samples
            inventory.locations[split] = str(base / self.options.list_pattern.format(domain="*", split=split))
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        if missing:
            inventory.fatal.append(f"labels {missing[:20]} never occur in the lists (labels must be 0..K-1)")
        inventory.class_names = [names.get(i, f"missing_{i}") for i in range(max(names, default=-1) + 1)]
        return inventory

    def load(self) -> BenchmarkData:
        return checked_data(self.inventory(), self.options,
                            {"benchmark": self.title, "root": str(self.location()),
                             "domains": list(self.options.domains)})

    def expected_counts(self) -> KnownCounts:
        """Counts of the selected domains (approximate: the lists were re-released once)."""
        from sdlora.data.check import KnownCounts, KnownSplit

        counts = {split: sum(SPLIT_COUNTS.get(domain, {}).get(split, 0) for domain in self.options.domains)
                  for split in ("train", "test")}
        return KnownCounts(
            classes=345, total=None,
            layouts=(KnownSplit("official split lists", counts, exact=False),),
            source="DomainNet, Peng et al. ICCV 2019 (345 classes; list sizes of the cleaned release)",
        )
