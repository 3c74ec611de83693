from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from slowtune import store
from slowtune.store import MIGRATIONS, SCHEMA_VERSION, Project, StoreError


def _schema(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").fetchall()
    return [(r[0], " ".join(r[1].split())) for r in rows]


def _database_at(path: Path, version: int) -> sqlite3.Connection:
    """A database as the slowtune of schema ``version`` left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    store.migrate(conn, target=version)
    assert store.schema_version(conn) == version
    return conn


# Rows to plant in a database of each version, to check they survive migration.
def _plant(conn: sqlite3.Connection, version: int) -> None:
    now = time.time()
    if version >= 1:
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('name', 'old project')")
        conn.execute(
            "INSERT INTO documents(id, path, sha256, status, added_at, updated_at) VALUES (1, '/d/a.pdf', 'abc', 'ok', ?, ?)",
            (now, now),
        )
        conn.execute("INSERT INTO chunks(id, document_id, ord, text, tokens) VALUES ('c1', 1, 0, 'hello', 1)")
        conn.execute(
            "INSERT INTO dataset_rows(messages_json, content_hash, split, created_at, updated_at) VALUES ('{}', 'h1', 'train', ?, ?)",
            (now, now),
        )
    if version >= 2:
        conn.execute(
            "INSERT INTO chat_sessions(id, title, models_json, settings_json, created_at, updated_at) VALUES (1, 't', '[]', '{}', ?, ?)",
            (now, now),
        )
    if version >= 3:
        conn.execute("INSERT INTO chunk_splits(chunk_id, split, assigned_at) VALUES ('c1', 'valid', ?)", (now,))
        conn.execute(
            "INSERT INTO generation_chunks(chunk_id, document_id, status, updated_at) VALUES ('c1', 1, 'done', ?)",
            (now,),
        )


def test_new_project_has_the_current_schema(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p", name="My docs") as project:
        assert store.schema_version(project.conn) == SCHEMA_VERSION
        assert project.name == "My docs"
        assert project.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert project.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert (project.root / "runs").is_dir() and (project.root / "exports").is_dir()
        assert set(project.counts()) >= {"documents", "chunks", "dataset_rows", "runs", "exports"}
        tables = {r[0] for r in project.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"documents", "chunks", "generation_cache", "dataset_rows", "runs", "exports"} <= tables


@pytest.mark.parametrize("old_version", range(0, SCHEMA_VERSION))
def test_migrates_from_every_earlier_version(tmp_path: Path, old_version: int) -> None:
    root = tmp_path / "p"
    root.mkdir()
    conn = _database_at(root / store.DB_NAME, old_version)
    _plant(conn, old_version)
    conn.close()

    with Project.open(root) as project:
        assert store.schema_version(project.conn) == SCHEMA_VERSION
        fresh = sqlite3.connect(tmp_path / "fresh.sqlite", isolation_level=None)
        store.migrate(fresh)
        assert _schema(project.conn) == _schema(fresh)
        if old_version >= 1:
            assert project.name == "old project"
            assert project.conn.execute("SELECT text FROM chunks WHERE id='c1'").fetchone()[0] == "hello"
            assert project.counts()["dataset_rows"] == 1
    backup = root / f"{store.DB_NAME}.v{old_version}.bak"
    assert backup.exists(), "the database as it was must be kept before migrating"


def test_failed_migration_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    monkeypatch.setattr(store, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x); CREATE TABLE broken ("])
    monkeypatch.setattr(store, "SCHEMA_VERSION", len(MIGRATIONS) + 1)
    with pytest.raises((sqlite3.Error, StoreError)):
        Project.open(root)
    conn = sqlite3.connect(root / store.DB_NAME)
    assert store.schema_version(conn) == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name='extra'").fetchone()[0] == 0


def test_newer_project_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    root = tmp_path / "p"
    Project.create(root).close()
    conn = sqlite3.connect(root / store.DB_NAME)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer slowtune"):
        Project.open(root)


def test_not_a_database_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / store.DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=str(root / store.DB_NAME)):
        Project.open(root)


def test_missing_project_and_existing_project(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="No slowtune project"):
        Project.open(tmp_path / "nothing")
    Project.create(tmp_path / "p").close()
    with pytest.raises(StoreError, match="already exists"):
        Project.create(tmp_path / "p")


def test_foreign_keys_cascade(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        _plant(project.conn, SCHEMA_VERSION)
        project.conn.execute("DELETE FROM documents WHERE id = 1")
        assert project.counts()["chunks"] == 0
        with pytest.raises(sqlite3.IntegrityError):
            project.conn.execute("INSERT INTO chunks(id, document_id, ord, text, tokens) VALUES ('x', 99, 0, 't', 1)")


def test_transaction_rolls_back(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        with pytest.raises(RuntimeError), project.transaction():
            project.set_meta("k", "v")
            raise RuntimeError
        assert project.get_meta("k") is None


def test_project_names_resolve_under_the_projects_folder(slowtune_home: Path) -> None:
    project = store.open_or_create("Field notes")
    assert project.root == slowtune_home / "data" / "projects" / "Field notes"
    project.close()
    assert store.list_projects() == [project.root]
    with pytest.raises(StoreError, match="not a usable project name"):
        store.resolve_project_path("bad\x00name")
