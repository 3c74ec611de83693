"""The dataset as the user reviews it: list with filters, edit, accept, reject, regenerate, and a report.

These functions are what the Dataset page of the app calls (through a worker) and what ``slowtune dataset``
prints. Edits keep provenance: an edited row remembers it was edited, so regenerating its chunk keeps it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slowtune.dataset import (
    CURRENT_ROW_SQL,
    DatasetError,
    DatasetRow,
    _row_from_db,
    content_hash,
    validate_messages,
)
from slowtune.store import Project, dumps

GATES = ("schema", "quote", "refusal", "judge", "duplicate", "user")
# The rows regenerating a chunk replaces: the teacher's, unless the user edited them.
REPLACED_ROW_SQL = "(source = 'teacher' AND edited = 0)"


@dataclass
class RowFilter:
    split: str | None = None
    status: str | None = None  # accepted, rejected, pending
    qtype: str | None = None
    document_id: int | None = None
    chunk_id: str | None = None
    gate: str | None = None  # why it was rejected
    text: str | None = None  # substring of the conversation
    limit: int = 200
    offset: int = 0


def list_rows(project: Project, flt: RowFilter | None = None) -> list[DatasetRow]:
    flt = flt or RowFilter()
    query, args = "SELECT * FROM dataset_rows WHERE 1=1", []
    for column in ("split", "status", "qtype", "document_id", "chunk_id"):
        value = getattr(flt, column)
        if value is not None:
            query += f" AND {column} = ?"
            args.append(value)
    if flt.gate is not None:
        query += " AND json_extract(verdicts_json, '$.gate') = ?"
        args.append(flt.gate)
    if flt.text:
        query += " AND messages_json LIKE ? ESCAPE '\\'"
        escaped = flt.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(f"%{escaped}%")
    query += " ORDER BY id LIMIT ? OFFSET ?"
    args += [flt.limit, flt.offset]
    return [_row_from_db(r) for r in project.conn.execute(query, args)]


def get_row(project: Project, row_id: int) -> DatasetRow:
    r = project.conn.execute("SELECT * FROM dataset_rows WHERE id = ?", (row_id,)).fetchone()
    if r is None:
        raise DatasetError(f"there is no dataset row {row_id} in project {project.name!r}")
    return _row_from_db(r)


def edit_row(project: Project, row_id: int, messages: list[dict[str, str]]) -> DatasetRow:
    """Replace a row's conversation (the user's edit is accepted as it is, and kept on regeneration)."""
    get_row(project, row_id)
    problems = validate_messages(messages)
    if problems:
        raise DatasetError(f"row {row_id}: {'; '.join(problems)}")
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    clash = project.conn.execute("SELECT id FROM dataset_rows WHERE content_hash = ? AND id != ?",
                                 (content_hash(clean), row_id)).fetchone()
    if clash is not None:
        raise DatasetError(f"row {row_id}: row {clash['id']} already holds exactly this conversation")
    project.conn.execute(
        "UPDATE dataset_rows SET messages_json = ?, content_hash = ?, edited = 1, status = 'accepted', "
        "reject_reason = NULL, updated_at = ? WHERE id = ?",
        (dumps({"messages": clean}), content_hash(clean), time.time(), row_id),
    )
    return get_row(project, row_id)


def set_status(project: Project, row_ids: list[int], status: str, reason: str | None = None) -> int:
    """Accept or reject rows by hand. Returns how many changed."""
    if status not in ("accepted", "rejected", "pending"):
        raise DatasetError(f"status {status!r} is not one of accepted, rejected, pending")
    changed = 0
    now = time.time()
    with project.transaction() as conn:
        for row_id in row_ids:
            r = conn.execute("SELECT verdicts_json FROM dataset_rows WHERE id = ?", (row_id,)).fetchone()
            if r is None:
                raise DatasetError(f"there is no dataset row {row_id} in project {project.name!r}")
            verdicts = json.loads(r["verdicts_json"] or "{}")
            if status == "rejected":
                verdicts["gate"] = "user"
                why = reason or "rejected by you"
            else:
                verdicts["reviewed"] = True
                why = None
            changed += conn.execute(
                "UPDATE dataset_rows SET status = ?, reject_reason = ?, verdicts_json = ?, updated_at = ? "
                "WHERE id = ?", (status, why, dumps(verdicts), now, row_id)).rowcount
    return changed


def clear_chunk(project: Project, chunk_id: str) -> int:
    """Forget a chunk's teacher rows (not the ones the user edited) so it can be generated again.

    Returns the next regeneration number: it goes into the cache key, so the teacher is asked afresh
    rather than the cached answer being replayed.
    """
    r = project.conn.execute("SELECT id FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
    if r is None:
        raise DatasetError(f"there is no chunk {chunk_id} in project {project.name!r}")
    with project.transaction() as conn:
        conn.execute(f"DELETE FROM dataset_rows WHERE chunk_id = ? AND {REPLACED_ROW_SQL}", (chunk_id,))
        g = conn.execute("SELECT regenerations FROM generation_chunks WHERE chunk_id = ?", (chunk_id,)).fetchone()
        regen = (g["regenerations"] if g else 0) + 1
        conn.execute(
            """INSERT INTO generation_chunks(chunk_id, status, reason, regenerations, updated_at)
               VALUES (?, 'failed', 'regeneration requested', ?, ?)
               ON CONFLICT(chunk_id) DO UPDATE SET status='failed', reason='regeneration requested',
                 regenerations=excluded.regenerations, updated_at=excluded.updated_at""",
            (chunk_id, regen, time.time()),
        )
    return regen


@dataclass
class ChunkRows:
    """What regenerating a chunk replaces and keeps."""
    chunk_id: str
    document: str
    tokens: int
    replaced: int  # the teacher's rows nobody edited: removed, and written afresh
    probes: int  # of those, probe questions
    reviewed: int  # of those, rows the user accepted or rejected by hand
    kept: int  # rows the user edited (and any not written by the teacher)


def chunk_rows(project: Project, chunk_id: str) -> ChunkRows | None:
    """What ``clear_chunk`` would remove and keep; None when the chunk is not in the library any more (its
    document was removed or re-chunked)."""
    chunk = project.conn.execute(
        "SELECT c.tokens, d.title, d.path FROM chunks c JOIN documents d ON d.id = c.document_id "
        "WHERE c.id = ? AND d.status = 'ok'", (chunk_id,)).fetchone()
    if chunk is None:
        return None
    replaced = REPLACED_ROW_SQL
    r = project.conn.execute(
        f"""SELECT coalesce(sum({replaced}), 0) replaced,
                   coalesce(sum({replaced} AND split = 'probe'), 0) probes,
                   coalesce(sum({replaced} AND (coalesce(json_extract(verdicts_json, '$.reviewed'), 0)
                                               OR json_extract(verdicts_json, '$.gate') = 'user')), 0) reviewed,
                   coalesce(sum(NOT ({replaced})), 0) kept
            FROM dataset_rows WHERE chunk_id = ?""", (chunk_id,)).fetchone()
    title = chunk["title"] or Path(chunk["path"]).name
    return ChunkRows(chunk_id, title, chunk["tokens"], r["replaced"], r["probes"], r["reviewed"], r["kept"])


@dataclass
class DatasetReport:
    rows: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> status -> count
    by_type: dict[str, int] = field(default_factory=dict)  # accepted rows (train + valid) by question type
    rejected_by_gate: dict[str, int] = field(default_factory=dict)
    documents: list[dict[str, Any]] = field(default_factory=list)  # per-document coverage
    chunks_total: int = 0
    chunks_generated: int = 0
    chunks_failed: list[dict[str, Any]] = field(default_factory=list)
    chunks_without_rows: list[dict[str, Any]] = field(default_factory=list)
    chunks_failed_count: int = 0
    chunks_without_rows_count: int = 0
    stale_rows: int = 0  # teacher rows about chunks no longer in the library (left out of training)
    tokens: dict[str, int] = field(default_factory=dict)  # teacher tokens spent, and dataset tokens
    cost_usd: float = 0.0
    teacher_calls: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def report(project: Project, *, list_limit: int = 50) -> DatasetReport:
    conn = project.conn
    rep = DatasetReport()
    current = CURRENT_ROW_SQL
    for r in conn.execute(f"SELECT split, status, count(*) n FROM dataset_rows WHERE {current} GROUP BY split, status"):
        rep.rows.setdefault(r["split"], {})[r["status"]] = r["n"]
    rep.stale_rows = conn.execute(f"SELECT count(*) FROM dataset_rows WHERE NOT {current}").fetchone()[0]
    for r in conn.execute("SELECT coalesce(qtype, 'unknown') t, count(*) n FROM dataset_rows "
                          f"WHERE status = 'accepted' AND split != 'probe' AND {current} GROUP BY t"):
        rep.by_type[r["t"]] = r["n"]
    for r in conn.execute("SELECT coalesce(json_extract(verdicts_json, '$.gate'), 'other') g, count(*) n "
                          f"FROM dataset_rows WHERE status = 'rejected' AND {current} GROUP BY g"):
        rep.rejected_by_gate[r["g"]] = r["n"]
    for r in conn.execute(
        """SELECT d.id, d.title, d.path, d.n_chunks,
                  (SELECT count(*) FROM chunks c JOIN generation_chunks g ON g.chunk_id = c.id
                   WHERE c.document_id = d.id AND g.status = 'done') AS generated,
                  (SELECT count(DISTINCT r.chunk_id) FROM dataset_rows r JOIN chunks c ON c.id = r.chunk_id
                   WHERE c.document_id = d.id AND r.status = 'accepted' AND r.split != 'probe') AS covered,
                  (SELECT count(*) FROM dataset_rows r JOIN chunks c ON c.id = r.chunk_id
                   WHERE c.document_id = d.id AND r.status = 'accepted' AND r.split != 'probe') AS rows
           FROM documents d WHERE d.status = 'ok' ORDER BY d.id"""):
        chunks = r["n_chunks"] or 0
        rep.documents.append({
            "document_id": r["id"], "title": r["title"] or r["path"].rsplit("/", 1)[-1], "chunks": chunks,
            "generated": r["generated"], "chunks_with_rows": r["covered"], "rows": r["rows"],
            "coverage": round(r["covered"] / chunks, 3) if chunks else 0.0,
        })
    rep.chunks_total = conn.execute(
        "SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.status = 'ok'").fetchone()[0]
    in_library = "JOIN chunks c ON c.id = g.chunk_id JOIN documents d ON d.id = c.document_id AND d.status = 'ok'"
    rep.chunks_generated = conn.execute(
        f"SELECT count(*) FROM generation_chunks g {in_library} WHERE g.status = 'done'").fetchone()[0]
    rep.chunks_failed_count = conn.execute(
        f"SELECT count(*) FROM generation_chunks g {in_library} WHERE g.status = 'failed'").fetchone()[0]
    no_rows = ("g.status = 'done' AND NOT EXISTS (SELECT 1 FROM dataset_rows r WHERE r.chunk_id = g.chunk_id "
               "AND r.status = 'accepted' AND r.split != 'probe')")
    rep.chunks_without_rows_count = conn.execute(
        f"SELECT count(*) FROM generation_chunks g {in_library} WHERE {no_rows}").fetchone()[0]
    for r in conn.execute(f"SELECT g.chunk_id, g.document_id, g.reason FROM generation_chunks g {in_library} "
                          "WHERE g.status = 'failed' LIMIT ?", (list_limit,)):
        rep.chunks_failed.append({"chunk_id": r["chunk_id"], "document_id": r["document_id"], "reason": r["reason"]})
    for r in conn.execute(
        f"SELECT g.chunk_id, g.document_id, g.candidates, g.stats_json FROM generation_chunks g {in_library} "
        f"WHERE {no_rows} LIMIT ?", (list_limit,)):
        rep.chunks_without_rows.append({
            "chunk_id": r["chunk_id"], "document_id": r["document_id"], "candidates": r["candidates"],
            "rejected": json.loads(r["stats_json"] or "{}").get("rejected", {}),
        })
    cache = conn.execute("SELECT count(*) n, coalesce(sum(prompt_tokens), 0) p, coalesce(sum(completion_tokens), 0) c,"
                         " coalesce(sum(cost_usd), 0) cost FROM generation_cache").fetchone()
    rep.teacher_calls = cache["n"]
    rep.cost_usd = round(cache["cost"], 6)
    dataset_chars = conn.execute("SELECT coalesce(sum(length(messages_json)), 0) FROM dataset_rows "
                                 f"WHERE status = 'accepted' AND {current}").fetchone()[0]
    rep.tokens = {"teacher_input": cache["p"], "teacher_output": cache["c"],
                  "dataset_approx": dataset_chars // 4}
    return rep


def render_report(rep: DatasetReport) -> str:
    lines = []
    for split in ("train", "valid", "probe"):
        counts = rep.rows.get(split, {})
        lines.append(f"{split:>6}: {counts.get('accepted', 0)} accepted, {counts.get('rejected', 0)} rejected"
                     + (f", {counts['pending']} pending" if counts.get("pending") else ""))
    if rep.by_type:
        lines.append("types: " + ", ".join(f"{t} {n}" for t, n in sorted(rep.by_type.items())))
    if rep.rejected_by_gate:
        lines.append("rejected by: " + ", ".join(f"{g} {n}" for g, n in sorted(rep.rejected_by_gate.items())))
    lines.append(f"chunks: {rep.chunks_generated} of {rep.chunks_total} generated, {rep.chunks_failed_count} failed, "
                 f"{rep.chunks_without_rows_count} with no surviving rows")
    if rep.stale_rows:
        lines.append(f"{rep.stale_rows} rows are about documents that were removed or changed: left out of training")
    for d in rep.documents:
        lines.append(f"  {d['title']}: {d['rows']} rows from {d['chunks_with_rows']}/{d['chunks']} chunks")
    for f in rep.chunks_failed[:10]:
        lines.append(f"  failed chunk {f['chunk_id'][:12]}: {f['reason']}")
    lines.append(f"teacher: {rep.teacher_calls} calls, {rep.tokens.get('teacher_input', 0):,} input + "
                 f"{rep.tokens.get('teacher_output', 0):,} output tokens, ${rep.cost_usd:.4f}")
    return "\n".join(lines)
