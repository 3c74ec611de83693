from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from model_fixtures import unsupported_copy

from slowtune import secrets, system
from slowtune.models import catalog
from slowtune.models.architectures import SUPPORTED_ARCHITECTURES


def _models(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "models", *args], capture_output=True, text=True,
                          input=stdin, env=env or os.environ.copy(), timeout=120)


def _table_rows(stdout: str) -> dict[str, list[str]]:
    """The rows of the table `models list` prints: model -> its cells (a wrapped cell's continuation left out)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0]:
            rows[cells[0]] = cells
    return rows


def test_list_shows_the_catalog_and_nothing_else() -> None:
    out = _models("list")
    assert out.returncode == 0, out.stderr
    rows = _table_rows(out.stdout)
    assert list(rows) == [m.repo_id for m in catalog.CATALOG]
    assert all(m.architecture in SUPPORTED_ARCHITECTURES for m in catalog.CATALOG)
    memory = system.memory().total_bytes
    assert f"on this Mac ({memory / 1e9:.0f} GB)" in out.stdout
    for model in catalog.CATALOG:
        cells = rows[model.repo_id]
        assert model.architecture in cells and catalog.placement(model, memory) in cells, cells
    listed = json.loads(_models("list", "--json").stdout)
    assert [r["repo_id"] for r in listed] == [m.repo_id for m in catalog.CATALOG]
    assert any(r["quantization_bits"] == 4 for r in listed) and any(r["gated"] for r in listed)
    for row in listed:
        model = catalog.find(row["repo_id"])
        assert model is not None and row["memory_bytes"] == memory
        assert row["needs_streaming"] == catalog.needs_streaming(model, memory)
        assert row["on_this_mac"] == catalog.placement(model, memory)


def test_list_marks_large_models_streamed_on_a_smaller_mac() -> None:
    out = _models("list", "--memory", "64")
    assert out.returncode == 0, out.stderr
    rows = _table_rows(out.stdout)
    assert "on 64 GB Mac" in out.stdout and "more than half its memory" in " ".join(out.stdout.split())
    on_64 = {repo: cells[6] for repo, cells in rows.items()}
    assert on_64["Qwen/Qwen2.5-0.5B-Instruct"] == "in memory"
    for repo in ("Qwen/Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.3-70B-Instruct",
                 "mlx-community/Qwen2.5-72B-Instruct-4bit", "mlx-community/Llama-3.3-70B-Instruct-4bit"):
        assert on_64[repo] == "streamed", repo  # less than twice their size in memory
    listed = json.loads(_models("list", "--json", "--memory", "16").stdout)
    assert all(r["needs_streaming"] == (2 * r["download_gb"] * 1e9 > 16e9) for r in listed)
    bad = _models("list", "--memory", "0")
    assert bad.returncode == 1 and "--memory" in bad.stderr


@pytest.mark.parametrize("how", ["falcon", "multimodal"])
def test_a_model_slowtune_does_not_train_is_refused_when_chosen(tiny_llama: Path, tmp_path: Path, how: str) -> None:
    folder = unsupported_copy(tiny_llama, tmp_path / how, how)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Hello."}]}) + "\n")
    info = _models("info", str(folder))
    trained = subprocess.run([sys.executable, "-m", "slowtune", "train", "--model", str(folder), "--data", str(data),
                              "--dry-run"], capture_output=True, text=True, timeout=120)
    for out in (info, trained):
        assert out.returncode == 1 and "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, out.stderr  # one message
        assert str(folder / "config.json") in errors[0]
        if how == "falcon":
            assert "'falcon'" in errors[0] and all(f in errors[0] for f in SUPPORTED_ARCHITECTURES)
        else:
            assert "multimodal" in errors[0] and "vision_config" in errors[0] and "270M or 1B" in errors[0]
    assert "architecture" in info.stdout  # described all the same
    described = json.loads(_models("info", str(folder), "--json").stdout)
    assert described["problem"] and not described["streamed_supported"]
    assert not list(tmp_path.glob("**/run.json"))


def test_info_describes_a_folder_and_names_a_bad_one(tiny_qwen2: Path, tmp_path: Path) -> None:
    info = json.loads(_models("info", str(tiny_qwen2), "--json").stdout)
    assert info["architecture"] == "qwen2" and info["streamed_supported"] and info["has_chat_template"]
    bad = _models("info", str(tmp_path))
    assert bad.returncode == 1 and str(tmp_path) in bad.stderr and "Traceback" not in bad.stderr
    missing = _models("info", "nobody/not-downloaded-model")
    assert missing.returncode == 1 and "nobody/not-downloaded-model" in missing.stderr


def test_hf_token_goes_to_the_keychain_and_is_never_printed() -> None:
    token = "hf_" + "x1y2z3" * 5
    out = _models("hf-token", stdin=token + "\n")
    assert out.returncode == 0, out.stderr
    assert token not in out.stdout + out.stderr
    assert secrets.get_secret(secrets.HUGGINGFACE) == token
    assert _models("hf-token", "--delete").stdout.strip() == "Token removed."
    assert secrets.get_secret(secrets.HUGGINGFACE) is None


def test_hf_token_without_a_keychain_is_refused_plainly() -> None:
    env = os.environ.copy()
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    out = _models("hf-token", stdin="hf_abcdefabcdefabcdefabcdef\n", env=env)
    assert out.returncode == 1 and "No OS keychain" in out.stderr and "hf_abcdef" not in out.stderr
