from __future__ import annotations

import os
from pathlib import Path

import pytest

from slowtune import paths
from slowtune.fsutil import atomic_write_bytes, atomic_write_text, atomic_writer


def test_slowtune_home_overrides_every_folder(slowtune_home: Path) -> None:
    folders = paths.all_folders()
    assert set(folders) == {"data", "projects", "cache", "logs", "config"}
    for folder in folders.values():
        assert folder.is_dir()
        assert folder.is_relative_to(slowtune_home)
    assert paths.settings_file().parent == paths.config_dir()


def test_platformdirs_are_used_without_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLOWTUNE_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    if os.uname().sysname != "Linux":
        pytest.skip("XDG variables steer platformdirs on Linux only")
    assert paths.data_dir() == tmp_path / "xdg-data" / "slowtune"
    assert paths.cache_dir() == tmp_path / "xdg-cache" / "slowtune"
    assert paths.config_dir() == tmp_path / "xdg-config" / "slowtune"
    assert paths.log_dir().is_relative_to(tmp_path / "xdg-state")


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.jsonl"
    target.write_text("precious\n")
    with pytest.raises(RuntimeError), atomic_writer(target, "w") as handle:
        handle.write("half a fi")
        raise RuntimeError("crash in the middle of a write")
    assert target.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl"]


def test_atomic_write_keeps_permissions(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    target.write_text("{}")
    target.chmod(0o600)
    atomic_write_text(target, '{"a": 1}')
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_writer_refuses_read_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError), atomic_writer(tmp_path / "x", "r"):
        pass


def test_new_files_get_the_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "export.json"
    atomic_write_text(target, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
