from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from slowtune import secrets


def _models(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "models", *args], capture_output=True, text=True,
                          input=stdin, env=env or os.environ.copy(), timeout=120)


def test_list_shows_the_catalog() -> None:
    out = _models("list")
    assert out.returncode == 0
    assert "Qwen/Qwen2.5-0.5B-Instruct" in out.stdout and "streamed" in out.stdout
    rows = json.loads(_models("list", "--json").stdout)
    assert any(r["quantization_bits"] == 4 for r in rows) and any(r["gated"] for r in rows)


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
