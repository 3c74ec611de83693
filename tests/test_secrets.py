"""Keys go to a real keyring backend and nowhere else."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets as pysecrets
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune import dataset, logs, secrets, settings
from slowtune.store import Project


def _run(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env or os.environ.copy())


def _fake_key() -> str:
    return "sk-test" + pysecrets.token_hex(16)


def test_set_get_delete_through_the_real_backend(keyring_root: Path) -> None:
    key = _fake_key()
    info = secrets.backend_info()
    assert info.usable and info.explicit and not info.os_keychain
    secrets.set_secret(secrets.provider_key_name("acme"), key)
    assert secrets.get_secret("provider:acme") == key
    assert secrets.secret_source("provider:acme") == "keychain"
    # The backend really holds it (keyrings.alt writes it base64-encoded), in a file outside SLOWTUNE_HOME.
    encoded = base64.b64encode(key.encode()).decode()
    assert any(encoded in p.read_text() for p in keyring_root.rglob("*") if p.is_file())
    # A subprocess (the CLI, a resumed training run) sees the same key.
    child = _run("from slowtune import secrets; print(secrets.get_secret('provider:acme') == " + repr(key) + ")")
    assert child.stdout.strip() == "True", child.stderr
    assert secrets.delete_secret("provider:acme")
    assert secrets.get_secret("provider:acme") is None
    assert not secrets.delete_secret("provider:acme")


def test_empty_key_is_refused() -> None:
    with pytest.raises(secrets.SecretsError, match="empty"):
        secrets.set_secret("provider:x", "   ")


def test_no_keychain_means_environment_only_and_never_plain_text(tmp_path: Path) -> None:
    key = _fake_key()
    env = os.environ.copy()
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    env["SLOWTUNE_KEY_PROVIDER_OPENAI"] = key
    code = (
        "from slowtune import secrets\n"
        "info = secrets.backend_info()\n"
        "print(info.usable, 'No OS keychain' in info.note)\n"
        "print(secrets.get_secret('provider:openai') == " + repr(key) + ", secrets.secret_source('provider:openai'))\n"
        "try:\n"
        "    secrets.set_secret('provider:openai', " + repr(key) + ")\n"
        "except secrets.NoKeychainError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "False True"
    assert lines[1] == "True environment"
    assert lines[2].startswith("refused: Cannot save the key for provider:openai")
    assert key not in out.stdout + out.stderr


def test_a_plain_text_backend_is_not_used_unless_chosen(tmp_path: Path) -> None:
    # Without PYTHON_KEYRING_BACKEND keyring picks its best backend by itself; with keyrings.alt installed and
    # no OS keychain (as on this Linux machine) that is a plain-text file, which slowtune must not accept.
    env = {k: v for k, v in os.environ.items() if k != "PYTHON_KEYRING_BACKEND"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "no-keyringrc")
    code = (
        "import json; from slowtune import secrets\n"
        "i = secrets.backend_info()\n"
        "print(json.dumps([i.name, i.usable, i.os_keychain, i.explicit]))\n"
    )
    out = _run(code, env)
    name, usable, os_keychain, explicit = json.loads(out.stdout)
    assert not explicit
    if os_keychain:
        pytest.skip(f"this machine has an OS keychain ({name})")
    assert not usable, f"slowtune would store keys with {name}"


def test_mask_never_shows_a_short_key_and_hides_most_of_a_long_one() -> None:
    assert secrets.mask("abc") == "•" * 8
    long_key = "sk-" + "abcdefgh" * 3 + "yz"  # built here, so no key-shaped literal sits in the source
    assert secrets.mask(long_key) == "sk-…yz"


def test_a_planted_key_reaches_no_file_and_no_log_line(slowtune_home: Path, tmp_path: Path) -> None:
    key = _fake_key()
    hf_token = "hf_" + pysecrets.token_hex(12)
    secrets.set_secret("provider:openai", key)
    secrets.set_secret(secrets.HUGGINGFACE, hf_token)

    # Exercise settings, the store and logging with the key in play.
    log_file = logs.setup_logging(verbose=True)
    got = secrets.get_secret("provider:openai")
    assert got == key
    s = settings.Settings(teacher_provider="openai", teacher_model="gpt-x")
    settings.save_settings(s)
    settings.load_settings()
    with Project.create(slowtune_home / "data" / "projects" / "p") as project:
        project.set_meta("teacher", "openai")
        dataset.add_rows(project, [dataset.DatasetRow([
            {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])])
    log = logging.getLogger("slowtune.test")
    log.info("calling the teacher with key %s", got)
    log.info(f"header Authorization: Bearer {got}")
    try:
        raise RuntimeError(f"provider said: invalid key {got}")
    except RuntimeError:
        log.exception("request failed")
    log.warning("hub token %s", hf_token)
    for handler in logging.getLogger().handlers:
        handler.flush()

    # The CLI in a subprocess, verbose, with the same keyring.
    cli = subprocess.run(
        [sys.executable, "-m", "slowtune", "-v", "doctor", "--no-disk-test"], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stderr

    files = [p for p in slowtune_home.rglob("*") if p.is_file()]
    assert log_file in files and "calling the teacher with key [REDACTED]" in log_file.read_text()
    for path in files:
        data = path.read_bytes()
        assert key.encode() not in data, f"the API key leaked into {path}"
        assert hf_token.encode() not in data, f"the HF token leaked into {path}"
    assert key not in cli.stdout + cli.stderr


def test_redaction_of_key_shapes_never_seen() -> None:
    text = logs.redact("url?api_key=abcdefghijklmnop123 and sk-proj-ABCDEFGHIJKLMNOP and hf_ABCDEFGHIJKLMNOPQRST")
    assert "abcdefghijklmnop123" not in text
    assert "sk-proj-ABCDEFGHIJKLMNOP" not in text
    assert "hf_ABCDEFGHIJKLMNOPQRST" not in text
    assert text.count("[REDACTED]") == 3


def test_a_keychain_backend_that_cannot_load_is_reported_not_raised() -> None:
    env = os.environ.copy()
    env["PYTHON_KEYRING_BACKEND"] = "no_such_module.Keyring"
    env["SLOWTUNE_KEY_PROVIDER_OPENAI"] = "from-the-environment"
    code = (
        "from slowtune import secrets\n"
        "info = secrets.backend_info()\n"
        "print(info.usable, info.name)\n"
        "print('PYTHON_KEYRING_BACKEND' in info.note, 'no_such_module' in info.note)\n"
        "print(secrets.get_secret('provider:openai'))\n"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False unavailable", "True True", "from-the-environment"]
