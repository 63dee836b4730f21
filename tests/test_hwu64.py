"""The hwu64 benchmark (a fixed held-out validation part of train.csv) and configs/hwu64.yaml, the CLINC150 recipe
with only the benchmark changed."""

import csv
from pathlib import Path

import numpy as np
import pytest

from sdlora.config import config_to_dict, load_config
from sdlora.data.benchmarks.hwu64 import Hwu64, hold_out

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_hold_out_takes_a_fixed_fraction_of_every_class():
    labels = np.repeat(np.arange(4), [3, 10, 41, 2])
    mask = hold_out(labels, 0.1, seed=0)
    assert np.bincount(labels[mask], minlength=4).tolist() == [1, 1, 4, 1]  # round(0.1 n), at least one, never all
    assert np.array_equal(mask, hold_out(labels, 0.1, seed=0))  # the same split every time
    assert not np.array_equal(mask, hold_out(labels, 0.1, seed=1))
    assert not hold_out(labels, 0.0, seed=0).any()


def test_hwu64_config_differs_from_clinc150_only_in_the_benchmark():
    clinc, hwu = (config_to_dict(load_config(CONFIGS / name)) for name in ("clinc150.yaml", "hwu64.yaml"))
    for cfg in (clinc, hwu):
        for key in ("benchmark", "name", "source"):
            cfg.pop(key)
    assert hwu == clinc
    assert load_config(CONFIGS / "hwu64.yaml").benchmark.name == "hwu64"


def test_hwu64_reads_the_shared_data_with_a_held_out_val(data_root):
    if not (data_root / "hwu64" / "train.csv").is_file():
        pytest.skip(f"HWU64 not under {data_root}")
    data = Hwu64(Hwu64.Options(), data_root).load()
    counts = data.info["counts"]
    assert data.num_classes == 64 and data.class_names[0] == "alarm_query"
    assert counts["train"] + counts["val"] == 9960 and counts["test"] == 1076
    assert 0.09 < counts["val"] / 9960 < 0.11
    assert set(np.unique(data.val_targets)) == set(range(64))  # every intent has validation rows
    with open(data_root / "hwu64" / "train.csv", encoding="utf-8", newline="") as f:
        full_texts = [row["text"] for row in csv.DictReader(f)]
    assert sorted(data.train.inputs + data.val.inputs) == sorted(full_texts)  # a partition of train.csv
    assert data.info["checksum_verified"]
    scenarios = [data.class_names[c].split("_", 1)[0] for c in data.class_orders["scenario"]]
    assert sorted(data.class_orders["scenario"]) == list(range(64))
    assert scenarios == sorted(scenarios) and scenarios[:8] == ["alarm"] * 3 + ["audio"] * 3 + ["calendar"] * 2
    full = Hwu64(Hwu64.Options(val_fraction=0), data_root).load()
    assert full.val is None and len(full.train) == 9960


def test_hwu64_without_a_data_root_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="SDLORA_DATA"):
        Hwu64(Hwu64.Options(), None)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        Hwu64(Hwu64.Options(), tmp_path).load()


def test_data_check_compares_hwu64_with_fold_1_s_sizes(data_root, tmp_path, capsys):
    """`sdlora data check` knows fold 1's sizes (less the held-out val rows) and names a file that lost rows."""
    if not (data_root / "hwu64" / "train.csv").is_file():
        pytest.skip(f"HWU64 not under {data_root}")
    from sdlora.cli import main

    config = str(CONFIGS / "hwu64.yaml")
    assert main(["data", "check", config, "--set", f"benchmark.data_root={data_root}"]) == 0
    out = capsys.readouterr().out
    assert "ok: split (train 8,942 / test 1,076) matches the fold 1, 1,018 train.csv rows held out as val" in out
    assert "no published sizes" not in out
    cut = tmp_path / "hwu64"
    cut.mkdir()
    rows = (data_root / "hwu64" / "train.csv").read_text(encoding="utf-8").splitlines()
    (cut / "train.csv").write_text("\n".join(rows[:-50]) + "\n", encoding="utf-8")  # 50 rows lost
    (cut / "test.csv").write_bytes((data_root / "hwu64" / "test.csv").read_bytes())
    assert main(["data", "check", config, "--set", f"benchmark.data_root={tmp_path}",
                 "--set", "benchmark.options.verify_checksum=false"]) == 1
    assert "matches no known layout" in capsys.readouterr().out
