"""The project store: one folder per project with one SQLite database and the large files beside it.

```
<project>/
  project.sqlite        documents, chunks, generation cache, dataset rows, runs, exports, chat sessions
  runs/<run id>/        adapters and checkpoints (mlx-lm layout)
  exports/<export id>/  fused models, GGUF files, Modelfiles
```

The schema is versioned with SQLite's ``user_version``. ``MIGRATIONS[i]`` takes a database from version i
to i + 1; a database is migrated forward when opened, inside one transaction per step, after a copy of the
file is kept as ``project.sqlite.v<old>.bak``. Never edit a released migration: add a new one.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slowtune import paths

DB_NAME = "project.sqlite"

# Version 1: the pipeline's tables. Version 2: saved chat sessions of the offline tester. Version 3: the
# teacher's per-chunk state (which split a chunk belongs to, and how its generation went).
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,          -- absolute path where the user's file was found
        sha256 TEXT,                        -- content hash: unchanged files are not parsed again
        title TEXT,
        kind TEXT,                          -- pdf, docx, html, md, txt
        status TEXT NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'ok', 'skipped', 'failed', 'removed')),
        reason TEXT,                        -- why skipped or failed, in the user's words
        pages INTEGER,
        chars INTEGER,
        tokens INTEGER,
        n_chunks INTEGER,
        size_bytes INTEGER,
        mtime REAL,
        watched_root TEXT,                  -- the dropped folder this file was found in, if any
        added_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX documents_sha256 ON documents(sha256);
    CREATE TABLE chunks (
        id TEXT PRIMARY KEY,                -- stable, derived from the chunk's content
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        ord INTEGER NOT NULL,
        text TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        heading_path TEXT,                  -- JSON list of headings above the chunk
        page_start INTEGER,
        page_end INTEGER,
        char_start INTEGER,
        char_end INTEGER
    );
    CREATE INDEX chunks_document ON chunks(document_id, ord);
    CREATE TABLE generation_cache (
        key TEXT PRIMARY KEY,               -- hash of (provider, model, prompt version, chunk id, settings)
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        request_json TEXT NOT NULL,
        response_json TEXT NOT NULL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        cost_usd REAL,
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_rows (
        id INTEGER PRIMARY KEY,
        messages_json TEXT NOT NULL,        -- {"messages": [...]} as written to JSONL
        content_hash TEXT NOT NULL UNIQUE,  -- of the messages: the same conversation is stored once
        split TEXT NOT NULL CHECK (split IN ('train', 'valid', 'probe')),
        status TEXT NOT NULL DEFAULT 'accepted' CHECK (status IN ('pending', 'accepted', 'rejected')),
        qtype TEXT,                         -- fact, reasoning, multi_turn, refusal, ...
        source TEXT NOT NULL DEFAULT 'teacher' CHECK (source IN ('teacher', 'import', 'manual')),
        document_id INTEGER REFERENCES documents(id) ON DELETE SET NULL,
        chunk_id TEXT,                      -- no foreign key: rows outlive re-chunking, for review
        evidence TEXT,                      -- the quote from the chunk that grounds the answer
        verdicts_json TEXT,                 -- judge and check results
        reject_reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX dataset_rows_split ON dataset_rows(split, status);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        base_model TEXT NOT NULL,
        engine TEXT NOT NULL,               -- memory or streamed
        status TEXT NOT NULL CHECK (status IN ('created', 'running', 'paused', 'failed', 'cancelled', 'done')),
        config_json TEXT NOT NULL,
        metrics_json TEXT,
        adapter_path TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE exports (
        id TEXT PRIMARY KEY,
        run_id TEXT REFERENCES runs(id) ON DELETE SET NULL,
        kind TEXT NOT NULL,                 -- fused, gguf, gguf-lora, modelfile
        quant TEXT,
        path TEXT NOT NULL,
        size_bytes INTEGER,
        sha256 TEXT,
        verified INTEGER NOT NULL DEFAULT 0,
        report_json TEXT,
        created_at REAL NOT NULL
    );
    """,
    """
    CREATE TABLE chat_sessions (
        id INTEGER PRIMARY KEY,
        title TEXT NOT NULL,
        models_json TEXT NOT NULL,          -- the GGUF file(s) compared in this session
        settings_json TEXT NOT NULL,        -- sampling settings and system prompt
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE chat_messages (
        id INTEGER PRIMARY KEY,
        session_id INTEGER NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
        model_slot INTEGER NOT NULL DEFAULT 0,  -- 0: the tuned model, 1: the model beside it
        role TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content TEXT NOT NULL,
        stats_json TEXT,                    -- tokens/s, time to first token
        created_at REAL NOT NULL
    );
    CREATE INDEX chat_messages_session ON chat_messages(session_id, id);
    """,
    """
    CREATE TABLE chunk_splits (
        chunk_id TEXT PRIMARY KEY,          -- no foreign key: a chunk keeps its split if it is re-ingested
        split TEXT NOT NULL CHECK (split IN ('train', 'valid')),
        assigned_at REAL NOT NULL
    );
    CREATE TABLE generation_chunks (
        chunk_id TEXT PRIMARY KEY,
        document_id INTEGER REFERENCES documents(id) ON DELETE SET NULL,
        status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
        reason TEXT,                        -- why it failed, in the user's words
        candidates INTEGER NOT NULL DEFAULT 0,
        kept INTEGER NOT NULL DEFAULT 0,
        stats_json TEXT,                    -- rejections by gate, calls, tokens
        regenerations INTEGER NOT NULL DEFAULT 0,
        updated_at REAL NOT NULL
    );
    ALTER TABLE dataset_rows ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX dataset_rows_chunk ON dataset_rows(chunk_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(RuntimeError):
    pass


_NAME_RE = re.compile(r"^[\w][\w .\-]{0,79}$")


def _connect(db_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def migrate(conn: sqlite3.Connection, target: int | None = None) -> int:
    """Apply migrations until the database is at ``target`` (default: the newest); returns where it started."""
    target = SCHEMA_VERSION if target is None else target
    start = schema_version(conn)
    if start > SCHEMA_VERSION:
        raise StoreError(
            f"This project was written by a newer slowtune (schema {start}; this one reads up to "
            f"{SCHEMA_VERSION}). Update slowtune to open it."
        )
    for version in range(start, target):
        # executescript would COMMIT on its own; run the statements one by one inside our transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return start


def _split_sql(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        raise StoreError(f"incomplete SQL in a migration: {current.strip()[:60]}")
    return statements


class Project:
    """An open project. Use as a context manager, or call ``close()``."""

    def __init__(self, root: Path, conn: sqlite3.Connection) -> None:
        self.root = root
        self.conn = conn

    # --- opening -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, root: str | Path, name: str | None = None) -> Project:
        root = Path(root).expanduser().resolve()
        if (root / DB_NAME).exists():
            raise StoreError(f"A project already exists at {root}.")
        root.mkdir(parents=True, exist_ok=True)
        conn = _connect(root / DB_NAME)
        migrate(conn)
        project = cls(root, conn)
        now = time.time()
        project.set_meta("name", name or root.name)
        project.set_meta("created_at", str(now))
        for sub in ("runs", "exports"):
            (root / sub).mkdir(exist_ok=True)
        return project

    @classmethod
    def open(cls, root: str | Path) -> Project:
        root = Path(root).expanduser().resolve()
        db_path = root / DB_NAME
        if not db_path.is_file():
            raise StoreError(f"No slowtune project at {root} (no {DB_NAME} there).")
        conn = None
        try:
            conn = _connect(db_path)
            version = schema_version(conn)
            if version < SCHEMA_VERSION:
                # Keep the user's data as it was before touching the schema.
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                shutil.copy2(db_path, db_path.with_name(f"{DB_NAME}.v{version}.bak"))
            migrate(conn)
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"The project database {db_path} cannot be read: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        return cls(root, conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def name(self) -> str:
        return self.get_meta("name") or self.root.name

    def run_dir(self, run_id: str) -> Path:
        path = self.root / "runs" / run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def export_dir(self, export_id: str) -> Path:
        path = self.root / "exports" / export_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def counts(self) -> dict[str, int]:
        tables = ("documents", "chunks", "dataset_rows", "runs", "exports", "chat_sessions")
        return {t: self.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def resolve_project_path(name_or_path: str) -> Path:
    """A project given as a path (contains a separator or exists) or as a name under the projects folder."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_absolute() or "/" in name_or_path or candidate.exists():
        return candidate.resolve()
    if not _NAME_RE.match(name_or_path):
        raise StoreError(
            f"{name_or_path!r} is not a usable project name (letters, digits, spaces, '.', '-', '_'; "
            "at most 80 characters)."
        )
    return paths.projects_dir() / name_or_path


def open_or_create(name_or_path: str) -> Project:
    root = resolve_project_path(name_or_path)
    if (root / DB_NAME).exists():
        return Project.open(root)
    return Project.create(root)


def list_projects() -> list[Path]:
    return sorted(p.parent for p in paths.projects_dir().glob(f"*/{DB_NAME}"))


def dumps(value: Any) -> str:
    """JSON for the store: stable key order and UTF-8, so equal values give equal text."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
