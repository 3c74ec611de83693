"""User settings: a versioned dataclass stored as JSON.

Rules: a newer app reads every older file through the migrations in ``MIGRATIONS``; a file that cannot be
read, or holds a wrong value, is copied aside (``settings.json.bad-<time>``) with a warning that names the
file and the key, and the app goes on with defaults for what was wrong. Nothing the user wrote is lost, and
keys written by a newer slowtune are kept on save.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune import paths
from slowtune.fsutil import atomic_write_text, set_aside

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

# MIGRATIONS[n] turns a version-n dict into a version-(n + 1) dict. Add one whenever a field is renamed or
# changes meaning, and bump SCHEMA_VERSION; tests migrate a file of every earlier version.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}


@dataclass
class Settings:
    """Everything the user can change in Preferences. Keys (API keys, tokens) never live here."""

    version: int = field(default=SCHEMA_VERSION, metadata={"help": "settings file format version"})
    last_project: str | None = field(default=None, metadata={"help": "project opened at start"})
    recent_projects: list[str] = field(default_factory=list, metadata={"help": "most recent first"})
    teacher_provider: str | None = field(default=None, metadata={"help": "provider id of the teacher"})
    teacher_model: str | None = field(default=None, metadata={"help": "model name at that provider"})
    chunk_tokens: int = field(default=512, metadata={"help": "target chunk size in tokens"})
    chunk_overlap: int = field(default=64, metadata={"help": "overlap between chunks in tokens"})
    max_file_mb: int = field(default=100, metadata={"help": "documents larger than this are not read"})
    export_quants: list[str] = field(
        default_factory=lambda: ["Q4_K_M"], metadata={"help": "GGUF quantisations made by default"}
    )
    confirm_before_upload: bool = field(
        default=True, metadata={"help": "ask before document text is sent to a teacher"}
    )
    # Keys this version does not know (written by a newer slowtune): kept so a save does not drop them.
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": "unknown keys, preserved"})


@dataclass
class SettingsLoad:
    settings: Settings
    warnings: list[str]
    set_aside: Path | None = None


def _field_ok(value: Any, default: Any, name: str) -> bool:
    f = next(f for f in dataclasses.fields(Settings) if f.name == name)
    annotation = str(f.type)
    if value is None:
        return "None" in annotation
    if isinstance(default, bool) or annotation == "bool":
        return isinstance(value, bool)
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation.startswith("list[str]"):
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if annotation.startswith("str"):
        return isinstance(value, str)
    return True


def load_settings(path: Path | None = None) -> SettingsLoad:
    """Read settings, migrating old files and setting aside bad ones (see the module docstring)."""
    path = path or paths.settings_file()
    if not path.exists():
        return SettingsLoad(Settings(), [])
    warnings: list[str] = []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("the top level is not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        aside = set_aside(path)
        msg = f"Settings file {path} could not be read ({exc}); it was kept as {aside.name} and defaults are used."
        log.warning(msg)
        return SettingsLoad(Settings(), [msg], aside)

    version = raw.get("version", 1)
    if not isinstance(version, int) or version < 1:
        warnings.append(f"Settings file {path}: key 'version' has the bad value {version!r}; read as version 1.")
        version = 1
    while version < SCHEMA_VERSION:
        raw = MIGRATIONS[version](dict(raw))
        version += 1
        raw["version"] = version
    if version > SCHEMA_VERSION:
        log.info("settings file %s is version %s, newer than this slowtune (%s)", path, version, SCHEMA_VERSION)

    defaults = Settings()
    known = {f.name for f in dataclasses.fields(Settings)} - {"extra", "version"}
    values: dict[str, Any] = {}
    extra = dict(raw.get("extra") or {}) if isinstance(raw.get("extra"), dict) else {}
    for key, value in raw.items():
        if key in ("version", "extra"):
            continue
        if key not in known:
            extra[key] = value
            continue
        if _field_ok(value, getattr(defaults, key), key):
            values[key] = value
        else:
            warnings.append(
                f"Settings file {path}: key '{key}' has the bad value {value!r}; the default "
                f"{getattr(defaults, key)!r} is used."
            )
    settings = Settings(version=max(version, SCHEMA_VERSION), extra=extra, **values)
    aside = None
    if warnings:
        aside = set_aside(path)
        warnings.append(f"The settings file as it was is kept as {aside.name}.")
        for w in warnings:
            log.warning(w)
    return SettingsLoad(settings, warnings, aside)


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    path = path or paths.settings_file()
    data = dataclasses.asdict(settings)
    extra = data.pop("extra")
    # Unknown keys go back where they were found: at the top level.
    merged = {**extra, **data}
    merged["version"] = max(settings.version, SCHEMA_VERSION)
    atomic_write_text(path, json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return path


def add_recent_project(settings: Settings, project: str, keep: int = 10) -> None:
    settings.recent_projects = [project, *[p for p in settings.recent_projects if p != project][:keep - 1]]
    settings.last_project = project
