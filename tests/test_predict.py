"""sdlora.load(run or export).predict and `sdlora predict`: texts, tables, image folders; clear errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sdlora
from sdlora.cli import main
from sdlora.engine.restore import restore_run

TEXTS = ["pay my bill please", "play some jazz now", "weather in paris today", "alarm clock at 7"]


def test_load_run_and_hf_export_predict_the_runs_classes(tiny_text_run, tmp_path):
    clf = sdlora.load(tiny_text_run)
    run = restore_run(tiny_text_run)
    run.method.eval()
    with torch.no_grad():
        logits = run.method(run.method.backbone.tokenize(TEXTS))
    names = json.loads((tiny_text_run / "results.json").read_text())["class_names"]
    top = clf.predict(TEXTS, top_k=2)
    assert [t[0][0] for t in top] == [names[i] for i in logits.argmax(1).tolist()]
    probs = logits.softmax(-1).max(1).values
    assert [t[0][1] for t in top] == pytest.approx(probs.tolist(), abs=1e-5)
    assert all(len(t) == 2 and t[0][1] >= t[1][1] for t in top)
    assert main(["export", str(tiny_text_run), "--out", str(tmp_path / "hf"), "--format", "hf"]) == 0
    exported = sdlora.load(tmp_path / "hf").predict(TEXTS, top_k=2)
    assert [[label for label, _ in t] for t in exported] == [[label for label, _ in t] for t in top]
    assert np.allclose([s for t in exported for _, s in t], [s for t in top for _, s in t], atol=1e-5)


def test_top_k_follows_the_logits_where_the_softmax_underflows(tiny_text_run, monkeypatch):
    clf = sdlora.load(tiny_text_run)
    # the LDA head's logits are hundreds apart: past the first, every softmax score is exactly 0.0
    big = torch.tensor([[995.0, 364.0, 528.0, 10.0], [-20.0, 700.0, 100.0, 400.0]])
    monkeypatch.setattr(clf, "logits", lambda items, batch_size: big[:len(items)])
    names = clf.class_names
    top = clf.predict(TEXTS[:2], top_k=3)
    assert [[label for label, _ in t] for t in top] == [[names[0], names[2], names[1]], [names[1], names[3], names[2]]]
    assert [[score for _, score in t] for t in top] == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def test_predict_cli_reads_text_csv_and_jsonl_and_writes_csv_or_jsonl(tiny_text_run, tmp_path, capsys):
    expected = [t[0][0] for t in sdlora.load(tiny_text_run).predict(TEXTS)]
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n\n")
    assert main(["predict", str(tiny_text_run), str(tmp_path / "in.txt"), "--top-k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in lines] == expected and [r["input"] for r in lines] == TEXTS
    assert all(len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"] for r in lines)

    with open(tmp_path / "in.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "utterance"], *[[i, t] for i, t in enumerate(TEXTS)]])
    out = tmp_path / "pred.csv"
    assert main(["predict", str(tiny_text_run), str(tmp_path / "in.csv"), "--text-column", "utterance",
                 "--out", str(out), "--top-k", "2"]) == 0
    table = list(csv.DictReader(open(out)))
    assert [r["label"] for r in table] == expected and list(table[0]) == ["id", "input", "label", "score", "label_2",
                                                                           "score_2"]
    assert [r["id"] for r in table] == [str(i) for i in range(len(TEXTS))]  # the input's other columns stay
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    assert main(["predict", str(tiny_text_run), str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "p.jsonl")]) == 0
    assert [json.loads(x)["label"] for x in (tmp_path / "p.jsonl").read_text().splitlines()] == expected


def test_predict_cli_on_an_image_folder_with_the_timm_export(tiny_vit_run, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    assert main(["export", str(tiny_vit_run), "--out", str(tmp_path / "timm"), "--format", "timm"]) == 0
    run_out, export_out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert main(["predict", str(tiny_vit_run), str(folder), "--out", str(run_out), "--top-k", "2"]) == 0
    assert main(["predict", str(tmp_path / "timm"), str(folder), "--out", str(export_out), "--top-k", "2"]) == 0
    a = [json.loads(x) for x in run_out.read_text().splitlines()]
    b = [json.loads(x) for x in export_out.read_text().splitlines()]
    assert [r["input"] for r in a] == [str(folder / f"img{i}.png") for i in range(3)]
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], abs=1e-5)
    x = torch.rand(2, 3, 32, 32)
    assert sdlora.load(tiny_vit_run).predict(x)[0][0][0] in json.loads((tmp_path / "timm" / "sdlora_export.json")
                                                                  .read_text())["class_names"]


def test_predict_refuses_the_wrong_kind_of_input(tiny_text_run, tiny_vit_run, tmp_path, capsys):
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "in.txt").write_text("hello\n")
    (tmp_path / "in.parquet").write_text("x")
    (tmp_path / "in.csv").write_text("sentence\nhello\n")
    cases = [
        ([str(tiny_text_run), str(tmp_path / "imgs")], "holds images but"),
        ([str(tiny_vit_run), str(tmp_path / "in.txt")], "holds text but"),
        ([str(tiny_text_run), str(tmp_path / "in.parquet")], "cannot read '.parquet' files"),
        ([str(tiny_text_run), str(tmp_path / "in.csv")], "no column 'text' (columns: sentence)"),
        ([str(tiny_text_run), str(tmp_path / "in.txt"), "--top-k", "0"], "--top-k must be at least 1"),
        ([str(tiny_text_run), str(tmp_path / "missing.txt")], "does not exist"),
    ]
    for args, message in cases:
        assert main(["predict", *args]) != 0
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="takes text"):
        sdlora.load(tiny_text_run).predict([torch.zeros(3)])


def test_predict_writes_one_row_per_input_row_and_says_what_it_cannot(tiny_text_run, tmp_path, capsys):
    (tmp_path / "gap.txt").write_text("first question\n\nthird question\n")
    assert main(["predict", str(tiny_text_run), str(tmp_path / "gap.txt")]) == 1
    assert "gap.txt line 2 is empty" in capsys.readouterr().err  # never a silent shift of the rows
    with open(tmp_path / "gap.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "label"], [7, "alarm please", "alarm clock"], [8, "", "x"]])
    assert main(["predict", str(tiny_text_run), str(tmp_path / "gap.csv")]) == 1
    assert "gap.csv line 3 is empty" in capsys.readouterr().err
    with open(tmp_path / "ok.csv", "w", newline="") as f:
        csv.writer(f).writerows([["id", "text", "label"], [7, "alarm please", "alarm clock"]])
    assert main(["predict", str(tiny_text_run), str(tmp_path / "ok.csv"), "--top-k", "9"]) == 0
    out = capsys.readouterr()
    record = json.loads(out.out)
    assert record["id"] == "7" and record["input_label"] == "alarm clock" and len(record["top_k"]) == 4
    assert "--top-k 9: the model knows 4 classes" in out.err
    # a line ends at \n or \r\n only: U+2028 and a form feed inside a line do not split it
    (tmp_path / "odd.txt").write_bytes("alarm\u2028please\r\npay\x0cmy bill\nweather\n\n".encode())
    assert main(["predict", str(tiny_text_run), str(tmp_path / "odd.txt")]) == 0
    inputs = [json.loads(line)["input"] for line in capsys.readouterr().out.splitlines()]
    assert inputs == ["alarm\u2028please", "pay\x0cmy bill", "weather"]
    with open(tmp_path / "wide.csv", "w", newline="") as f:
        f.write("id,text\n7,hello, world\n")  # an unquoted comma: an error, not a prediction of 'hello'
    assert main(["predict", str(tiny_text_run), str(tmp_path / "wide.csv")]) != 0
    assert "wide.csv line 2: 3 fields, the header has 2" in capsys.readouterr().err


def test_predict_on_a_single_file_export_names_what_it_can_read(tiny_text_run, tmp_path, capsys):
    single = tmp_path / "model.safetensors"
    assert main(["export", str(tiny_text_run), "--out", str(single)]) == 0
    (tmp_path / "in.txt").write_text("hello\n")
    capsys.readouterr()
    assert main(["predict", str(single), str(tmp_path / "in.txt")]) == 1
    err = capsys.readouterr().err
    assert "is a file: give a run folder" in err and "--format timm or hf" in err
    with pytest.raises(ValueError, match="single .safetensors export holds the weights and names: docs/export.md"):
        sdlora.load(single)
