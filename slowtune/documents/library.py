"""The document library: add files and folders to a project, incrementally.

``ingest(project, paths)`` walks the dropped files and folders, skips what has not changed (same size and
modification time, or the same content hash), parses the rest in worker processes, chunks it, and replaces
each changed document's chunks in one transaction. A file that disappeared from a dropped folder is marked
``removed`` (its chunks stay, so data generated from them remains reviewable). Identical files are stored once.
Every file gets a status and, when it was not read, a reason; the batch always finishes.

What the library holds is read back by :func:`summary`, :func:`list_documents` (one :class:`DocumentRow` each),
:func:`watched_folders` and :func:`document_chunks`: what the CLI prints and the Library page shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.documents.types import Chunk, ParsedDocument, ReadError
from slowtune.progress import Progress, ensure
from slowtune.store import Project

SUPPORTED_SUFFIXES = {".pdf", ".docx", ".html", ".htm", ".xhtml", ".md", ".markdown", ".txt", ".text", ".rst",
                      ".csv"}
NOT_FOUND = "does not exist"
UNSUPPORTED = "is not a supported type (PDF, DOCX, HTML, Markdown, text)"


@dataclass
class FileResult:
    path: str
    status: str  # ok, skipped, failed, unchanged, removed, duplicate
    reason: str | None = None
    pages: int | None = None
    tokens: int = 0
    chunks: int = 0


@dataclass
class IngestReport:
    files: list[FileResult] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"files": [f.__dict__ for f in self.files], "summary": self.summary, "seconds": self.seconds}


def _walk(paths: list[Path]) -> Iterator[tuple[Path, Path | None, str | None]]:
    """(file, the dropped folder it was found in or None, a problem) for every file under ``paths``.

    Symlinked folders are not followed, so a link loop cannot trap the walk; a broken link is reported.
    """
    for root in paths:
        root = Path(os.path.abspath(root))
        if root.is_symlink() and not root.exists():
            yield root, None, "is a broken link"
        elif root.is_file():
            yield root, None, None
        elif root.is_dir():
            for folder, dirs, files in os.walk(root, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if name.startswith("."):
                        continue
                    path = Path(folder) / name
                    if path.is_symlink() and not path.exists():
                        yield path, root, "is a broken link"
                    elif path.suffix.lower() in SUPPORTED_SUFFIXES:
                        yield path, root, None
                    else:
                        yield path, root, UNSUPPORTED
        else:
            yield root, None, NOT_FOUND


DUPLICATE_PREFIX = "is identical to "


def _is_duplicate(row: Any) -> bool:
    return row["status"] == "skipped" and (row["reason"] or "").startswith(DUPLICATE_PREFIX)


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(4 * 2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest(project: Project, paths: list[Path], *, chunk_tokens: int = 512, chunk_overlap: int = 64,
           max_file_mb: int = 100, workers: int = 2, progress: Progress | None = None) -> IngestReport:
    from slowtune.documents.chunking import chunk_document, count_tokens
    from slowtune.documents.worker import parse_many

    progress = ensure(progress)
    started = time.perf_counter()
    report = IngestReport()
    conn = project.conn
    found = list(_walk([Path(p) for p in paths]))
    # Files the project already has come first: if a new file is a copy of one of them, the new one is the copy.
    known = {r["path"] for r in conn.execute("SELECT path FROM documents")}
    found.sort(key=lambda item: (str(item[0]) not in known, str(item[0])))
    roots = {str(r) for _, r, _ in found if r is not None}
    to_parse: dict[Path, tuple[str, Path | None, os.stat_result]] = {}
    seen: set[str] = set()
    queued: dict[str, str] = {}
    now = time.time()

    for done, (path, root, problem) in enumerate(found, start=1):
        progress.report("scan", done, len(found))
        key = str(path)
        seen.add(key)
        if problem is not None:
            status = "skipped" if problem == UNSUPPORTED else "failed"
            if problem != NOT_FOUND:  # a mistyped path is reported, not stored as a document
                _record(conn, key, root, status, problem, now=now)
            report.files.append(FileResult(key, status, problem))
            continue
        try:
            st = path.stat()
            row = conn.execute("SELECT * FROM documents WHERE path = ?", (key,)).fetchone()
            # A duplicate is checked again every time: the file it copied may have changed since.
            settled = row is not None and row["status"] in ("ok", "skipped") and not _is_duplicate(row)
            if settled and row["size_bytes"] == st.st_size and row["mtime"] == st.st_mtime:
                report.files.append(FileResult(key, "unchanged", None, row["pages"], row["tokens"] or 0,
                                               row["n_chunks"] or 0))
                continue
            digest = file_hash(path)
        except OSError as exc:
            reason = "cannot be read (permission denied)" if isinstance(exc, PermissionError) else \
                f"cannot be read ({exc.strerror or exc})"
            _record(conn, key, root, "failed", reason, now=now)
            report.files.append(FileResult(key, "failed", reason))
            continue
        if settled and row["sha256"] == digest:
            conn.execute("UPDATE documents SET size_bytes = ?, mtime = ? WHERE id = ?", (st.st_size, st.st_mtime, row["id"]))
            report.files.append(FileResult(key, "unchanged", None, row["pages"], row["tokens"] or 0, row["n_chunks"] or 0))
            continue
        twin = conn.execute("SELECT path FROM documents WHERE sha256 = ? AND status = 'ok' AND path != ?",
                            (digest, key)).fetchone()
        # A stored twin that is itself being re-read in this run (its content changed) is a twin no more.
        twin_path = twin["path"] if twin is not None and Path(twin["path"]) not in to_parse else queued.get(digest)
        if twin_path is not None:
            reason = f"{DUPLICATE_PREFIX}{twin_path} (stored once)"
            _record(conn, key, root, "skipped", reason, sha256=digest, st=st, now=now)
            report.files.append(FileResult(key, "duplicate", reason))
            continue
        to_parse[path] = (digest, root, st)
        queued[digest] = key  # a second copy in this same batch is a duplicate too

    max_bytes = max_file_mb * 2**20
    for path, result in parse_many(list(to_parse), max_bytes=max_bytes, progress=progress, workers=workers):
        digest, root, st = to_parse[path]
        key = str(path)
        if isinstance(result, ReadError):
            reason = result.reason.replace("(setting: max_file_mb)", f"(setting max_file_mb = {max_file_mb})")
            _record(conn, key, root, result.status, reason, sha256=digest, st=st, now=now)
            report.files.append(FileResult(key, result.status, reason))
            continue
        doc: ParsedDocument = result
        chunks = chunk_document(doc, doc_hash=digest, target_tokens=chunk_tokens, overlap_tokens=chunk_overlap)
        tokens = count_tokens(doc.text)
        with project.transaction():
            doc_id = _record(conn, key, root, "ok", "; ".join(doc.notes) or None, sha256=digest, st=st, now=now,
                             title=doc.title, kind=doc.kind, pages=doc.n_pages, chars=len(doc.text), tokens=tokens,
                             n_chunks=len(chunks))
            conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO chunks(id, document_id, ord, text, tokens, heading_path, page_start, page_end, "
                "char_start, char_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.id, doc_id, c.ord, c.text, c.tokens, json.dumps(list(c.heading_path)), c.page_start, c.page_end,
                  c.char_start, c.char_end) for c in chunks],
            )
        # Notes on a file that was read ("read as Latin-1", "named .docx but is plain text") go in the report too.
        report.files.append(FileResult(key, "ok", "; ".join(doc.notes) or None, doc.n_pages, tokens, len(chunks)))

    # Files that were in a dropped folder before and are gone now.
    for root in roots:
        gone = conn.execute("SELECT id, path FROM documents WHERE watched_root = ? AND status != 'removed'",
                            (root,)).fetchall()
        for row in gone:
            if row["path"] not in seen:
                conn.execute("UPDATE documents SET status = 'removed', reason = ?, updated_at = ? WHERE id = ?",
                             ("no longer in the folder", now, row["id"]))
                report.files.append(FileResult(row["path"], "removed", "no longer in the folder"))
    report.summary = summary(project)
    report.seconds = time.perf_counter() - started
    return report


def _record(conn: Any, path: str, root: Path | None, status: str, reason: str | None, *, now: float,
            sha256: str | None = None, st: os.stat_result | None = None, **fields: Any) -> int:
    """Insert or update a document's row; returns its id."""
    values = {"status": status, "reason": reason, "sha256": sha256, "watched_root": str(root) if root else None,
              "size_bytes": st.st_size if st else None, "mtime": st.st_mtime if st else None, "updated_at": now,
              "title": fields.get("title") or Path(path).name, **fields}
    row = conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()
    if row is None:
        columns = ["path", "added_at", *values]
        conn.execute(f"INSERT INTO documents({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                     (path, now, *values.values()))
        return conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchone()["id"]
    conn.execute(f"UPDATE documents SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                 (*values.values(), row["id"]))
    return row["id"]


def summary(project: Project) -> dict[str, Any]:
    """Documents by status, total tokens and chunks: what the CLI prints and the GUI's library page shows."""
    conn = project.conn
    by_status = {r["status"]: r["n"] for r in conn.execute("SELECT status, count(*) AS n FROM documents GROUP BY status")}
    totals = conn.execute("SELECT coalesce(sum(tokens), 0) AS t, coalesce(sum(pages), 0) AS p FROM documents "
                          "WHERE status = 'ok'").fetchone()
    chunks = conn.execute("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id "
                          "WHERE d.status = 'ok'").fetchone()[0]
    return {"documents": by_status, "tokens": totals["t"], "pages": totals["p"], "chunks": chunks}


def has_chunks(project: Project) -> bool:
    """Whether a document in the library (read, not removed) has chunks: something the teacher can write from."""
    return project.conn.execute(
        "SELECT 1 FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.status = 'ok' LIMIT 1"
    ).fetchone() is not None


def document_titles(project: Project) -> list[tuple[int, str]]:
    """(id, title) of every document the project has known, by id; one without a title is named by its file."""
    return [(r["id"], r["title"] or Path(r["path"]).name)
            for r in project.conn.execute("SELECT id, title, path FROM documents ORDER BY id")]


@dataclass(frozen=True)
class DocumentRow:
    """A document of the library as it is listed: what was read, and why not when it was not."""

    id: int
    path: str
    title: str  # the document's own title, or its file name
    kind: str  # pdf, docx, html, md, txt (the file's suffix while it was never read)
    status: str  # ok, failed, skipped, removed, pending
    reason: str  # why it was not read, or a note on how it was ("" when none)
    pages: int | None
    tokens: int | None
    chunks: int | None
    watched_root: str | None  # the added folder it was found in; None for a file added on its own

    @property
    def file_name(self) -> str:
        return Path(self.path).name


def list_documents(project: Project) -> list[DocumentRow]:
    """Every document of the library, in the order they were added."""
    rows = project.conn.execute(
        "SELECT id, path, title, kind, status, reason, pages, tokens, n_chunks, watched_root FROM documents "
        "ORDER BY added_at, path"
    ).fetchall()
    return [
        DocumentRow(r["id"], r["path"], r["title"] or Path(r["path"]).name, r["kind"] or Path(r["path"]).suffix[1:],
                    r["status"], r["reason"] or "", r["pages"], r["tokens"], r["n_chunks"], r["watched_root"])
        for r in rows
    ]


def watched_folders(project: Project) -> list[Path]:
    """The folders the user added (as folders, not single files): what a re-scan reads again."""
    rows = project.conn.execute(
        "SELECT DISTINCT watched_root FROM documents WHERE watched_root IS NOT NULL ORDER BY 1")
    return [Path(r[0]) for r in rows]


def document_chunks(project: Project, document_id: int, limit: int | None = None) -> list[Chunk]:
    """A document's chunks in order (the first ``limit`` of them)."""
    rows = project.conn.execute(
        "SELECT id, ord, text, tokens, heading_path, page_start, page_end, char_start, char_end FROM chunks "
        "WHERE document_id = ? ORDER BY ord LIMIT ?", (document_id, -1 if limit is None else limit)).fetchall()
    return [Chunk(r["id"], r["ord"], r["text"], r["tokens"], tuple(json.loads(r["heading_path"] or "[]")),
                  r["page_start"], r["page_end"], r["char_start"], r["char_end"]) for r in rows]
