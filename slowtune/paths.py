"""Where slowtune keeps its files.

platformdirs gives the per-OS folders (``~/Library/Application Support/slowtune`` on a Mac). Setting
``SLOWTUNE_HOME`` puts every folder under one root instead: tests, the frozen app's self-test and users who
want everything on an external disk all use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "slowtune"
HOME_ENV = "SLOWTUNE_HOME"


def _home_override() -> Path | None:
    value = os.environ.get(HOME_ENV, "").strip()
    return Path(value).expanduser().resolve() if value else None


def _folder(kind: str) -> Path:
    home = _home_override()
    if home is not None:
        path = home / kind
    else:
        path = Path(
            {
                "data": platformdirs.user_data_dir,
                "cache": platformdirs.user_cache_dir,
                "logs": platformdirs.user_log_dir,
                "config": platformdirs.user_config_dir,
            }[kind](APP_NAME, appauthor=False)
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """Projects and everything a user made (datasets, adapters, exports)."""
    return _folder("data")


def cache_dir() -> Path:
    """Things that can be rebuilt: downloaded-file scratch, probe results."""
    return _folder("cache")


def log_dir() -> Path:
    return _folder("logs")


def config_dir() -> Path:
    return _folder("config")


def projects_dir() -> Path:
    path = data_dir() / "projects"
    path.mkdir(parents=True, exist_ok=True)
    return path


def settings_file() -> Path:
    return config_dir() / "settings.json"


def all_folders() -> dict[str, Path]:
    """The folders a user may need to find (shown by ``slowtune doctor``)."""
    return {
        "data": data_dir(),
        "projects": projects_dir(),
        "cache": cache_dir(),
        "logs": log_dir(),
        "config": config_dir(),
    }
