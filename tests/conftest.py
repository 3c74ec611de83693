"""Test-wide set-up: every test gets its own SLOWTUNE_HOME, a real keyring backend whose file lives outside
it, and Qt's offscreen platform. The environment is set before slowtune or keyring is imported, and
subprocesses (the CLI, kill-and-resume tests) inherit it, so they see the same keys."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_KEYRING_ROOT = Path(tempfile.mkdtemp(prefix="slowtune-test-keyring-"))
os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
os.environ["XDG_DATA_HOME"] = str(_KEYRING_ROOT)  # keyrings.alt keeps its file under $XDG_DATA_HOME on Linux
os.environ["QT_QPA_PLATFORM"] = "offscreen"
for _name in [n for n in os.environ if n.startswith("SLOWTUNE_KEY_")]:
    del os.environ[_name]
os.environ.pop("SLOWTUNE_HOME", None)

from model_fixtures import *  # noqa: E402,F403  (tiny model fixtures)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def slowtune_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "slowtune-home"
    monkeypatch.setenv("SLOWTUNE_HOME", str(home))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "no-ollama-models"))  # never this machine's Ollama models
    return home


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """``setup_logging`` attaches handlers to the root logger; each test starts and ends without them."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_slowtune", False)]:
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def keyring_root() -> Path:
    """Where the test keyring keeps its file: outside every SLOWTUNE_HOME."""
    return _KEYRING_ROOT


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_KEYRING_ROOT, ignore_errors=True)
