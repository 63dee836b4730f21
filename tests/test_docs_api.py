"""The `python` blocks of docs/api.md run, in order, in one namespace (in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_every_example_of_docs_api_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md block {i + 1}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    assert "['blocks.0.attn.qkv', 'blocks.1.attn.qkv']" in printed and "trainable params: 2 ||" in printed
    assert (tmp_path / "bert-sdlora" / "model.safetensors").is_file()
    assert "\n1 [2]\n" in printed and (tmp_path / "bert-sdlora-task1" / "sdlora_adapter.safetensors").is_file()
    assert "['alarm', 'bill', 'music']" in printed
    run_line, export_line = [line for line in printed.splitlines() if line.startswith("[[(")]
    assert run_line.count("'") == export_line.count("'") and run_line[:20] == export_line[:20]
