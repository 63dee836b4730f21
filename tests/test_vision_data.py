"""Vision data on tiny generated trees: folder benchmarks, DomainNet, corrupt images, transforms, check."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdlora.config import load_config, resolve_options
from sdlora.data.image_folder import CorruptImageError, ImageFiles
from sdlora.data.scenario import Scenario
from sdlora.data.transforms import eval_resize, eval_transform, train_transform
from sdlora.data_check import run_check
from sdlora.registry import BENCHMARKS

CLASSES = ["n001", "n002", "n003", "n004", "n005", "n006"]


def write_png(path: Path, seed: int, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def make_tree(root: Path, classes: list[str] = CLASSES, train: int = 3, test: int = 2) -> Path:
    """`root/train/<class>/i.png` and `root/test/<class>/i.png`, 8x8 random pixels."""
    seed = 0
    for split, count in (("train", train), ("test", test)):
        for name in classes:
            for i in range(count):
                write_png(root / split / name / f"{i}.png", seed)
                seed += 1
    return root


def load_benchmark(name: str, options: dict, data_root: Path | None):
    entry = BENCHMARKS.get(name)
    return entry(resolve_options(entry.Options, options, "benchmark.options"), data_root).load()


def run_config(name: str, data_root: Path, **options) -> object:
    return load_config(data={
        "benchmark": {"name": name, "data_root": str(data_root), "increment": 2, "options": options},
        "backbone": {"name": "timm_vit"}, "method": {"name": "sdlora"},
    })


def test_hidden_files_and_folders_are_not_images_of_a_class(tmp_path):
    from sdlora.serving.predict_io import read_image_folder

    root = make_tree(tmp_path / "mine", classes=["a", "b"], train=2, test=1)
    (root / "train" / "a" / "._0.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    write_png(root / "train" / "b" / ".thumbnails" / "0.png", 99)
    write_png(root / "train" / "b" / "more" / "2.PNG", 98)  # a visible sub-folder and an upper-case suffix count
    data = load_benchmark("image_folder", {"root": "mine", "image_size": 8, "normalize": "none"}, tmp_path)
    assert sorted(Path(p).relative_to(root).as_posix() for p in data.train.paths) == [
        "train/a/0.png", "train/a/1.png", "train/b/0.png", "train/b/1.png", "train/b/more/2.PNG"]
    assert [Path(p).name for p, _ in read_image_folder(root / "train", "text")] == [
        "0.png", "1.png", "0.png", "1.png", "2.PNG"]  # predict lists what training would read


def test_image_folder_tree_gives_the_scenario_counts(tmp_path):
    make_tree(tmp_path / "imagenet-r")
    data = load_benchmark("imagenet_r", {"image_size": 16}, tmp_path)
    assert data.class_names == CLASSES
    assert data.train_targets.tolist() == [c for c in range(6) for _ in range(3)]
    assert data.test_targets.tolist() == [c for c in range(6) for _ in range(2)]
    scenario = Scenario(data, "sorted", init_classes=2, increment=2, seed=1993)
    assert scenario.num_tasks == 3
    assert [len(scenario.train_set(t)) for t in range(3)] == [6, 6, 6]
    assert [len(scenario.eval_set(t)) for t in range(3)] == [4, 8, 12]
    x, y = scenario.train_set(1)[0]
    assert tuple(x.shape) == (3, 16, 16) and y == 2
    permuted = Scenario(data, "permutation", init_classes=4, increment=2, seed=1993)
    assert permuted.task_sizes == [4, 2]
    assert sorted(permuted.train_set(0).targets.tolist()) == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_generic_image_folder_with_renamed_splits(tmp_path):
    root = tmp_path / "mine"
    make_tree(root, classes=["cat", "dog"], train=2, test=1)
    (root / "train").rename(root / "training")
    options = {"root": str(root), "train_dir": "training", "image_size": 16, "normalize": "none"}
    data = load_benchmark("image_folder", options, None)
    assert data.class_names == ["cat", "dog"] and tuple(data.train[0][0].shape) == (3, 16, 16)
    assert len(data.train) == 4 and len(data.test) == 2
    assert data.info["locations"]["train"] == str(root / "training")


@pytest.mark.parametrize("name, folder", [("imagenet_a", "imagenet-a"), ("cub200", "cub")])
def test_default_folders_under_the_data_root(tmp_path, name, folder):
    make_tree(tmp_path / folder, classes=["a", "b"], train=1, test=1)
    assert load_benchmark(name, {}, tmp_path).class_names == ["a", "b"]
    other = make_tree(tmp_path / "elsewhere", classes=["x", "y", "z"], train=1, test=1)
    assert load_benchmark(name, {"folder": str(other)}, tmp_path).num_classes == 3


def test_listing_does_not_touch_the_files(tmp_path):
    root = make_tree(tmp_path / "imagenet-r", classes=["a", "b"])
    before = sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))
    data = load_benchmark("imagenet_r", {"image_size": 8}, tmp_path)
    data.train[0]
    assert sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")) == before


def test_missing_tree_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="imagenet-r"):
        load_benchmark("imagenet_r", {}, tmp_path)


def test_test_only_class_is_refused_and_missing_test_class_warned(tmp_path):
    root = make_tree(tmp_path / "imagenet-r", classes=["a", "b"], train=1, test=1)
    write_png(root / "test" / "zzz" / "0.png", 99)
    with pytest.raises(ValueError, match="zzz"):
        load_benchmark("imagenet_r", {}, tmp_path)
    root2 = make_tree(tmp_path / "two" / "imagenet-r", classes=["a", "b"], train=1, test=1)
    for f in (root2 / "test" / "b").iterdir():
        f.unlink()
    (root2 / "test" / "b").rmdir()
    with pytest.warns(UserWarning, match="missing class folder .*test/b"):
        data = load_benchmark("imagenet_r", {}, tmp_path / "two")
    assert data.test_targets.tolist() == [0]


def test_corrupt_image_skipped_with_a_warning_naming_it(tmp_path):
    good = tmp_path / "good.png"
    write_png(good, 1)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    files = ImageFiles([(str(bad), 0), (str(good), 0), (str(good), 1)], transform=None, on_corrupt="skip")
    assert files.targets.tolist() == [0, 0, 1]
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad}"):
        image, label = files[0]
    assert label == 0 and image.size == (8, 8)  # served by the next readable image of the same class
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        files[0]  # warned once per file
    assert files.skipped == {str(bad)}


def test_corrupt_image_stops_the_run_with_its_path(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    files = ImageFiles([(str(bad), 0)], transform=None, on_corrupt="stop")
    with pytest.raises(CorruptImageError, match=str(bad)):
        files[0]
    lonely = ImageFiles([(str(bad), 0)], transform=None, on_corrupt="skip")
    with pytest.warns(UserWarning), pytest.raises(CorruptImageError, match="no readable image left"):
        lonely[0]


def test_transforms_shapes_and_range_without_normalisation():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    torch.manual_seed(0)
    for transform in (train_transform(32), eval_transform(32), train_transform(), eval_transform()):
        x = transform(image)
        assert x.dtype == torch.float32 and x.min() >= 0.0 and x.max() <= 1.0
    assert tuple(train_transform(32)(image).shape) == (3, 32, 32)
    assert tuple(eval_transform()(image).shape) == (3, 224, 224)
    assert eval_resize(224) == 256 and eval_resize(32) == 36
    steps = eval_transform(32).transforms
    assert steps[0].size == 36 and steps[0].interpolation.value == "bicubic" and steps[1].size == (32, 32)
    crop = train_transform().transforms[0]
    assert crop.scale == (0.05, 1.0) and crop.ratio == pytest.approx((0.75, 4 / 3))
    inception = eval_transform(32, "inception")(image)
    assert inception.min() < 0 and inception.max() <= 1.0
    plain = eval_transform(32)(image)
    assert torch.allclose(inception, (plain - 0.5) / 0.5, atol=1e-6)


def write_domainnet(root: Path, classes: list[str], domains: list[str], per_class: int = 2) -> Path:
    base = root / "domainnet"
    seed = 0
    for domain in domains:
        for split in ("train", "test"):
            lines = []
            for label, name in enumerate(classes):
                for i in range(per_class):
                    rel = f"{domain}/{name}/{domain}_{split}_{i}.png"
                    write_png(base / rel, seed)
                    seed += 1
                    lines.append(f"{rel} {label}")
            (base / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return base


def test_domainnet_reads_the_official_lists(tmp_path):
    write_domainnet(tmp_path, ["apple", "bee", "car"], ["clipart", "sketch"])
    data = load_benchmark("domainnet", {"domains": ["clipart", "sketch"], "image_size": 8}, tmp_path)
    assert data.class_names == ["apple", "bee", "car"]
    assert len(data.train) == 12 and len(data.test) == 12
    assert data.train_targets.tolist() == [0, 0, 1, 1, 2, 2] * 2
    one = load_benchmark("domainnet", {"domains": ["sketch"]}, tmp_path)
    assert len(one.train) == 6 and "sketch" in one.train.paths[0]
    with pytest.raises(FileNotFoundError, match="real_train.txt"):
        load_benchmark("domainnet", {"domains": ["real"]}, tmp_path)


def test_domainnet_inconsistent_labels_are_refused(tmp_path):
    base = write_domainnet(tmp_path, ["apple", "bee"], ["clipart"], per_class=1)
    (base / "clipart_test.txt").write_text("clipart/apple/clipart_test_0.png 1\n")
    with pytest.raises(ValueError, match="label 1"):
        load_benchmark("domainnet", {"domains": ["clipart"]}, tmp_path)


@pytest.mark.parametrize("label", ["-1", "²", "x"])
def test_domainnet_labels_must_be_plain_non_negative_integers(tmp_path, label):
    base = write_domainnet(tmp_path, ["apple", "bee"], ["clipart"], per_class=1)
    (base / "clipart_test.txt").write_text(f"clipart/apple/clipart_test_0.png 0\nclipart/bee/x.png {label}\n")
    with pytest.raises(ValueError, match="clipart_test.txt:2: expected '<path> <label>' with a label 0, 1, ..."):
        load_benchmark("domainnet", {"domains": ["clipart"]}, tmp_path)


@pytest.mark.parametrize(("values", "mode", "expected"), [
    (np.array([0, 257, 32896, 65535], dtype=np.uint16), "I;16", [0, 1, 128, 255]),  # 16-bit: v / 257
    (np.array([0, 100, 200, 255], dtype=np.int32), "I", [0, 100, 200, 255]),  # integers within 8 bits: as they are
    (np.array([0.0, 0.5, 1.0, 0.25], dtype=np.float32), "F", [0, 128, 255, 64]),  # fractions of white
])
def test_wide_greyscale_is_scaled_to_8_bits_not_clipped(tmp_path, values, mode, expected):
    from sdlora.data.image_folder import open_rgb

    image = Image.fromarray(np.tile(values, (2, 1)))
    assert image.mode == mode
    path = tmp_path / "wide.tiff"
    image.save(path)
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (2, 4, 3) and rgb[0, :, 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()
    if mode == "I;16":
        assert Image.open(path).convert("RGB").getpixel((2, 0))[0] == 255  # what PIL alone makes of 32896


@pytest.mark.parametrize("entry", ["../../etc/passwd", "/etc/passwd", "clipart/../../x.png", "C:\\x\\y.png",
                                   "clipart\\..\\..\\x.png"])
def test_domainnet_lists_cannot_reach_outside_the_data_folder(tmp_path, entry):
    base = write_domainnet(tmp_path, ["apple", "bee"], ["clipart"], per_class=1)
    (base / "clipart_test.txt").write_text(f"clipart/apple/clipart_test_0.png 0\n{entry} 1\n")
    with pytest.raises(ValueError, match="clipart_test.txt:2: '.*' points outside the folder of the lists"):
        load_benchmark("domainnet", {"domains": ["clipart"]}, tmp_path)


def test_cifar100_offline_without_files_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=true"):
        load_benchmark("cifar100", {"download": False}, tmp_path)


def test_data_check_reports_missing_class_and_corrupt_image(tmp_path):
    root = make_tree(tmp_path / "imagenet-r", classes=["n01", "n02", "n03"])
    for f in (root / "test" / "n03").iterdir():
        f.unlink()
    (root / "test" / "n03").rmdir()
    bad = root / "train" / "n02" / "broken.png"
    bad.write_bytes(b"not a png")
    out = io.StringIO()
    code = run_check(run_config("imagenet_r", tmp_path), out=out)
    text = out.getvalue()
    assert code != 0
    assert f"missing class folder {root / 'test' / 'n03'}" in text
    assert f"unreadable images (1):\n      {bad}" in text
    assert "3 classes, expected 200" in text
    assert "train: 10 images in 3 classes" in text


def test_data_check_passes_a_clean_generic_tree(tmp_path):
    make_tree(tmp_path / "mine", classes=["a", "b"], train=2, test=1)
    out = io.StringIO()
    assert run_check(run_config("image_folder", tmp_path, root="mine"), out=out) == 0
    assert "ok: every image opens" in out.getvalue() and "result: all good" in out.getvalue()


def test_data_check_lists_missing_files_of_domainnet(tmp_path):
    base = write_domainnet(tmp_path, ["apple", "bee"], ["clipart"], per_class=1)
    gone = base / "clipart" / "bee" / "clipart_test_0.png"
    gone.unlink()
    out = io.StringIO()
    assert run_check(run_config("domainnet", tmp_path, domains=["clipart"]), out=out) == 1
    assert f"missing image files (1):\n      {gone}" in out.getvalue()
    assert "2 classes, expected 345" in out.getvalue()


def test_data_check_without_data_fails_cleanly(tmp_path):
    out = io.StringIO()
    assert run_check(run_config("cub200", tmp_path), out=out) == 1
    assert "train folder not found" in out.getvalue()


def test_a_run_stopped_by_a_corrupt_image_continues_with_the_fix_its_message_gives(tmp_path, capsys):
    import shlex

    import yaml

    from engine_helpers import TINY_VIT, tiny
    from sdlora.cli import main

    root = make_tree(tmp_path / "tree", CLASSES[:4], train=3, test=2)
    (root / "train" / CLASSES[2] / "1.png").write_bytes(b"not an image")  # a class of task 2
    data = tiny(benchmark={"name": "image_folder", "class_order": "sorted", "init_classes": 2, "increment": 2,
                           "options": {"root": str(root), "image_size": 32}},
                backbone={"name": "timm_vit", "options": TINY_VIT},
                method={"name": "sdlora", "options": {"rank": 2}}, train={"epochs": 1})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(data))
    command = ["train", str(config), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(command) == 1
    err = capsys.readouterr().err
    assert str(root / "train" / CLASSES[2] / "1.png") in err
    fix = err.split("continue with `", 1)[1].split("`", 1)[0]
    assert fix == "--set benchmark.options.on_corrupt=skip --resume"
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        assert main(command + shlex.split(fix)) == 0
    result = json.loads((tmp_path / "run" / "seed-3" / "results.json").read_text())
    assert result["status"] == "complete" and result["task_sizes"] == [2, 2]
