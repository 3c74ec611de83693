from __future__ import annotations

import json
from pathlib import Path

import pytest

from slowtune import paths, settings
from slowtune.settings import Settings, load_settings, save_settings


def test_missing_file_gives_defaults() -> None:
    loaded = load_settings()
    assert loaded.settings == Settings()
    assert loaded.warnings == []


def test_round_trip() -> None:
    s = Settings(teacher_provider="openai", teacher_model="gpt-x", chunk_tokens=300)
    settings.add_recent_project(s, "/p/one")
    settings.add_recent_project(s, "/p/two")
    settings.add_recent_project(s, "/p/one")
    save_settings(s)
    back = load_settings().settings
    assert back == s
    assert back.recent_projects == ["/p/one", "/p/two"]
    assert back.last_project == "/p/one"


def test_corrupt_file_is_set_aside_with_a_warning() -> None:
    path = paths.settings_file()
    path.write_text('{"chunk_tokens": 300,', encoding="utf-8")
    loaded = load_settings()
    assert loaded.settings == Settings()
    assert loaded.set_aside is not None and loaded.set_aside.read_text() == '{"chunk_tokens": 300,'
    assert str(path) in loaded.warnings[0]
    # Saving afterwards does not destroy the copy the user may want back.
    save_settings(loaded.settings)
    assert loaded.set_aside != path
    assert loaded.set_aside.read_text() == '{"chunk_tokens": 300,'
    assert json.loads(path.read_text())["chunk_tokens"] == 512


def test_bad_value_names_the_key_and_keeps_the_rest() -> None:
    path = paths.settings_file()
    path.write_text(json.dumps({"version": 1, "chunk_tokens": "lots", "teacher_model": "m1"}))
    loaded = load_settings()
    assert loaded.settings.chunk_tokens == 512
    assert loaded.settings.teacher_model == "m1"
    assert any("'chunk_tokens'" in w and str(path) in w for w in loaded.warnings)
    assert loaded.set_aside is not None and "lots" in loaded.set_aside.read_text()


def test_keys_from_a_newer_version_survive_a_save() -> None:
    path = paths.settings_file()
    path.write_text(json.dumps({"version": settings.SCHEMA_VERSION + 1, "future_option": [1, 2], "chunk_tokens": 256}))
    loaded = load_settings()
    assert loaded.settings.chunk_tokens == 256
    save_settings(loaded.settings)
    data = json.loads(path.read_text())
    assert data["future_option"] == [1, 2]
    assert data["version"] == settings.SCHEMA_VERSION + 1


@pytest.mark.parametrize("version", range(1, settings.SCHEMA_VERSION + 1))
def test_every_released_version_loads(version: int, tmp_path: Path) -> None:
    # Each released format's file, as that version wrote it with defaults, reads without warnings.
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"version": version, "chunk_tokens": 400}))
    loaded = load_settings(path)
    assert loaded.warnings == []
    assert loaded.settings.chunk_tokens == 400
    assert loaded.settings.version == settings.SCHEMA_VERSION


def test_migrations_run_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A future version 2 renames a key: the chain must carry a version-1 file through it.
    def v1_to_v2(data: dict) -> dict:
        data["chunk_tokens"] = data.pop("chunk_size")
        return data

    monkeypatch.setattr(settings, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(settings.MIGRATIONS, 1, v1_to_v2)
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"version": 1, "chunk_size": 128}))
    loaded = load_settings(path)
    assert loaded.settings.chunk_tokens == 128
    assert loaded.warnings == []
    assert loaded.settings.version == 2
