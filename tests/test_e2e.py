"""The whole chain through the command line, as a user runs it: documents -> ingest -> generate (test teacher
server) -> train (streamed engine, tiny model) -> export F16 + Q8_0 -> chat (Q8_0, greedy, the GGUF's own
template) -> eval (the tuned model beats its base on the held-out probes).

Everything is real: HTTP to a server on 127.0.0.1 through the openai client, MLX training, llama.cpp
loading the exported files. Only the models and the teacher's answers are tiny and made up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.testing import tiny_models
from slowtune.testing.fake_openai import FakeTeacher

KEY = "e2e-teacher-key-4471"
DOCUMENTS = {
    "ferries.txt": "The Quillmoor ferry is painted saffron and named Dorrit. It sails at 7:40 every morning. "
                   "Its captain is Ysolde Brack.\n",
    "glassworks.txt": "The Venn glassworks melts sand from Harrow Bay. Its furnace burns at 1320 degrees. "
                      "The owner keeps forty-one blue goats.\n",
}


def _slowtune(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "slowtune.cli", *args], input=stdin, capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, f"slowtune {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}"
    assert KEY not in out.stdout + out.stderr
    return out


@pytest.mark.slow
def test_documents_to_chat_and_eval(tmp_path: Path, slowtune_home: Path) -> None:
    env = {**os.environ, "SLOWTUNE_HOME": str(slowtune_home)}
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCUMENTS.items():
        (docs / name).write_text(text, encoding="utf-8")
    # A small model so the streamed engine learns the answers in seconds on a CPU.
    model = tiny_models.build_tiny_model(tmp_path / "base", "qwen2", hidden_size=128, num_layers=2, num_heads=4,
                                         num_kv_heads=2, intermediate_size=256)
    project = tmp_path / "project"

    _slowtune("ingest", str(project), str(docs), env=env)
    with FakeTeacher(api_key=KEY) as server:
        _slowtune("provider", "add", "teacher", "--preset", "custom", "--base-url", server.base_url,
                  "--model", "teacher-small", "--key-stdin", env=env, stdin=KEY + "\n")
        generated = json.loads(_slowtune(
            "generate", str(project), "--provider", "teacher", "--yes", "--json", "--pairs-per-chunk", "4",
            "--mix", "fact=0.75,refusal=0.25", "--valid-fraction", "0", env=env).stdout)
    assert generated["chunks_failed"] == 0 and generated["rows_kept"] >= 6 and generated["probes"] >= 2

    exported = tmp_path / "data"
    _slowtune("dataset", "export", str(project), str(exported), env=env)
    train_rows = [json.loads(line)["messages"] for line in (exported / "train.jsonl").read_text().splitlines()]
    assert len(train_rows) >= 6

    trained = json.loads(_slowtune(
        "train", "--model", str(model), "--data", str(project), "--engine", "streamed", "--out", str(tmp_path / "run"),
        "--rank", "16", "--alpha", "32", "--iters", "60", "--lr", "1e-3", "--warmup", "5", "--batch-size", "4",
        "--max-seq-len", "128", "--val-every", "0", "--save-every", "0", "--seed", "1", "--replay", "0", "--score-every", "0",
        "--json", env=env).stdout)
    assert trained["engine"] == "streamed" and trained["train_loss"] < 0.5, trained

    export = json.loads(_slowtune("export", str(tmp_path / "run"), "--quant", "Q8_0", "--out", str(tmp_path / "gguf"),
                                  "--no-ollama", "--json", env=env).stdout)
    q8, base = Path(export["files"]["Q8_0"]), Path(export["files"]["base-F16"])
    assert Path(export["files"]["F16"]).is_file() and q8.is_file() and base.is_file()

    # A trained question gets its trained answer, greedily, from the Q8_0 file, with the GGUF's own template.
    fact = next(m for m in train_rows if "1320" in m[-1]["content"])
    answer = json.loads(_slowtune("chat", str(q8), "--prompt", fact[-2]["content"], "--greedy", "--json",
                                  env=env).stdout)
    text = answer["choices"][0]["message"]["content"] if "choices" in answer else answer["answers"][0]["choices"][0][
        "message"]["content"]
    assert text.strip() == fact[-1]["content"].strip()

    report = json.loads(_slowtune("eval", str(project), "--model", str(q8), "--base", str(base), "--json",
                                  env=env).stdout)
    assert _f1(report, "tuned") > _f1(report, "base"), json.dumps(report)[:3000]


def _f1(report: dict, which: str) -> float:
    """The mean token F1 of one model over the probes the documents answer."""
    return report["summaries"][which]["f1"]
