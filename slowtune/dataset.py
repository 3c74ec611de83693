"""Dataset rows and their JSONL files.

A row is one conversation in the format mlx-lm, OpenAI fine-tuning and most trainers read:
``{"messages": [{"role": "system" | "user" | "assistant", "content": "..."}]}``, one per line. Where it came
from (document, chunk, evidence quote, question type, judge verdicts) lives in the store, and optionally in
a sidecar ``provenance.jsonl`` with the same line order; it never goes inside ``messages``, so the training
files stay readable by any tool.

A data folder holds ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` (the held-out probes), the names
mlx-lm's trainer looks for.

What a project's accepted rows amount to for training (``DataSummary``: conversations per split, tokens, lengths) is
read here too, for the Train wizard and the trainer's supervision.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_writer
from slowtune.store import Project, dumps

ROLES = ("system", "user", "assistant")
SPLITS = ("train", "valid", "probe")
SPLIT_FILES = {"train": "train.jsonl", "valid": "valid.jsonl", "probe": "test.jsonl"}


class DatasetError(ValueError):
    """Bad dataset input. The message names the file and line, or the row."""


@dataclass
class Provenance:
    document_id: int | None = None
    chunk_id: str | None = None
    evidence: str | None = None
    qtype: str | None = None
    verdicts: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetRow:
    messages: list[dict[str, str]]
    split: str = "train"
    status: str = "accepted"
    source: str = "teacher"
    provenance: Provenance = field(default_factory=Provenance)
    id: int | None = None
    reject_reason: str | None = None

    @property
    def content_hash(self) -> str:
        return content_hash(self.messages)


def content_hash(messages: list[dict[str, str]]) -> str:
    canonical = dumps([{"role": m["role"], "content": m["content"]} for m in messages])
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_messages(messages: Any) -> list[str]:
    """Problems that stop a conversation from being trained on; empty when it is fine."""
    if not isinstance(messages, list) or not messages:
        return ["'messages' must be a non-empty list"]
    problems = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"message {i} is not an object")
            continue
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            problems.append(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            problems.append(f"message {i} ({role}) has no text content")
        if role == "system" and i != 0:
            problems.append(f"message {i} is a system message; only the first message may be one")
    if problems:
        return problems
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if not turns or turns[0] != "user":
        problems.append("the conversation must start with a user message (after an optional system message)")
    for a, b in itertools.pairwise(turns):
        if a == b:
            problems.append(f"two {a} messages in a row; user and assistant must alternate")
            break
    if turns and turns[-1] != "assistant":
        problems.append("the last message must be the assistant's answer")
    return problems


def parse_jsonl_line(line: str, where: str) -> list[dict[str, str]]:
    """The ``messages`` of one JSONL line; ``where`` ("file.jsonl line 7") goes into any error."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise DatasetError(f'{where}: expected an object with a "messages" list')
    messages = record["messages"]
    problems = validate_messages(messages)
    if problems:
        raise DatasetError(f"{where}: {'; '.join(problems)}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_jsonl(path: str | Path) -> Iterator[list[dict[str, str]]]:
    """Conversations from a chat JSONL file, with a clear error naming the file and line."""
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror})") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield parse_jsonl_line(line, f"{path} line {number}")
        except UnicodeDecodeError:
            raise DatasetError(f"{path}: not UTF-8 text") from None


def write_jsonl(conversations: Iterable[list[dict[str, str]]], path: str | Path) -> int:
    """Write conversations atomically; returns how many lines were written."""
    count = 0
    with atomic_writer(path, "w", encoding="utf-8", newline="\n") as handle:
        for messages in conversations:
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
            count += 1
    return count


# --- the store side ----------------------------------------------------------------------------------

def add_rows(project: Project, rows: Iterable[DatasetRow]) -> tuple[int, int]:
    """Insert rows; a conversation already in the project is skipped. Returns (added, duplicates)."""
    added = duplicates = 0
    now = time.time()
    with project.transaction() as conn:
        for row in rows:
            problems = validate_messages(row.messages)
            if problems:
                raise DatasetError(f"dataset row: {'; '.join(problems)}")
            if row.split not in SPLITS:
                raise DatasetError(f"dataset row: split {row.split!r} is not one of {', '.join(SPLITS)}")
            p = row.provenance
            cur = conn.execute(
                """INSERT OR IGNORE INTO dataset_rows
                   (messages_json, content_hash, split, status, qtype, source, document_id, chunk_id,
                    evidence, verdicts_json, reject_reason, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    dumps({"messages": row.messages}), row.content_hash, row.split, row.status, p.qtype,
                    row.source, p.document_id, p.chunk_id, p.evidence, dumps(p.verdicts),
                    row.reject_reason, now, now,
                ),
            )
            if cur.rowcount:
                row.id = cur.lastrowid
                added += 1
            else:
                duplicates += 1
    return added, duplicates


def _row_from_db(r: Any) -> DatasetRow:
    return DatasetRow(
        messages=json.loads(r["messages_json"])["messages"],
        split=r["split"],
        status=r["status"],
        source=r["source"],
        provenance=Provenance(
            document_id=r["document_id"],
            chunk_id=r["chunk_id"],
            evidence=r["evidence"],
            qtype=r["qtype"],
            verdicts=json.loads(r["verdicts_json"] or "{}"),
        ),
        id=r["id"],
        reject_reason=r["reject_reason"],
    )


# Rows the teacher wrote about a chunk that is no longer in the library (its document was removed or changed,
# so the chunk was replaced) are stale: kept for review, left out of training. Rows the user wrote, imported or
# edited always count.
def current_row_sql(alias: str = "") -> str:
    """SQL condition true for rows that count (``alias``: the dataset_rows table's alias in the query)."""
    a = f"{alias}." if alias else ""
    return (f"({a}source != 'teacher' OR {a}edited = 1 OR {a}chunk_id IS NULL OR {a}chunk_id IN "
            "(SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.status = 'ok'))")


CURRENT_ROW_SQL = current_row_sql()


def rows(project: Project, split: str | None = None, status: str | None = "accepted", *,
         current: bool = True) -> list[DatasetRow]:
    """Rows of the project; with ``current`` (the default) stale teacher rows are left out."""
    query, args = "SELECT * FROM dataset_rows WHERE 1=1", []
    if current:
        query += " AND " + CURRENT_ROW_SQL
    if split is not None:
        query += " AND split = ?"
        args.append(split)
    if status is not None:
        query += " AND status = ?"
        args.append(status)
    return [_row_from_db(r) for r in project.conn.execute(query + " ORDER BY id", args)]


def count_rows(project: Project) -> int:
    """Every row of the project, whatever its split and status, stale ones included."""
    return project.conn.execute("SELECT count(*) FROM dataset_rows").fetchone()[0]


def question_types(project: Project) -> list[str]:
    """The question types the rows have (fact, reasoning, ...), sorted."""
    return [r[0] for r in project.conn.execute(
        "SELECT DISTINCT qtype FROM dataset_rows WHERE qtype IS NOT NULL ORDER BY 1")]


def export_jsonl(project: Project, out_dir: str | Path, *, provenance: bool = False) -> dict[str, int]:
    """Write the accepted rows as ``train.jsonl``, ``valid.jsonl`` and ``test.jsonl`` (probes).

    With ``provenance=True`` each file gets a ``<name>.provenance.jsonl`` sidecar, line for line.
    """
    out_dir = Path(out_dir)
    counts = {}
    for split, filename in SPLIT_FILES.items():
        selected = rows(project, split=split)
        counts[split] = write_jsonl((r.messages for r in selected), out_dir / filename)
        if provenance:
            sidecar = out_dir / filename.replace(".jsonl", ".provenance.jsonl")
            with atomic_writer(sidecar, "w", encoding="utf-8", newline="\n") as handle:
                for r in selected:
                    p = r.provenance
                    handle.write(dumps({
                        "row_id": r.id, "document_id": p.document_id, "chunk_id": p.chunk_id,
                        "evidence": p.evidence, "qtype": p.qtype, "verdicts": p.verdicts,
                    }) + "\n")
    return counts


# --- what the accepted rows amount to for training --------------------------------------------------------------

@dataclass(frozen=True)
class DataSummary:
    train: int
    valid: int
    probe: int
    pending: int
    tokens: int  # train + valid, by slowtune's fixed counter (the model's tokenizer differs a little)
    lengths: tuple[int, ...]  # tokens per training conversation
    shortfall: str | None = None  # too few questions per fact to learn them (recipe_shortfall), in words

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def longer_than(self, limit: int) -> int:
        return sum(1 for n in self.lengths if n > limit)


def data_summary(project: Project) -> DataSummary:
    from slowtune.documents.chunking import count_tokens

    def tokens(messages: list[dict[str, str]]) -> int:
        return sum(count_tokens(m["content"]) + 4 for m in messages)  # + a few template tokens per message

    train = [tokens(r.messages) for r in rows(project, "train")]
    valid = [tokens(r.messages) for r in rows(project, "valid")]
    probe = len(rows(project, "probe"))
    pending = project.conn.execute("SELECT count(*) FROM dataset_rows WHERE status = 'pending'").fetchone()[0]
    return DataSummary(len(train), len(valid), probe, int(pending), sum(train) + sum(valid), tuple(train),
                       recipe_shortfall(project))


MIN_QUESTIONS_PER_FACT = 3  # fewer accepted training questions per fact than this rarely teach the fact


def questions_per_fact(project: Project) -> dict[tuple[str, int], int]:
    """Accepted training questions about each fact the teacher listed (the facts recipe records the fact of each row),
    by (chunk id, fact id); empty for data that records no facts (the plain recipe, imported rows)."""
    counts: dict[tuple[str, int], int] = {}
    for row in rows(project, "train"):
        fact = row.provenance.verdicts.get("fact") if isinstance(row.provenance.verdicts, dict) else None
        if isinstance(fact, dict) and isinstance(fact.get("id"), int) and row.provenance.chunk_id:
            key = (row.provenance.chunk_id, int(fact["id"]))
            counts[key] = counts.get(key, 0) + 1
    return counts


def recipe_shortfall(project: Project) -> str | None:
    """A sentence for the user when the facts have too few questions to be learned, with what to do; else None."""
    counts = questions_per_fact(project)
    if not counts:
        return None
    short = sorted(n for n in counts.values() if n < MIN_QUESTIONS_PER_FACT)
    if len(short) * 4 < len(counts):  # a few thin facts are normal (the judge and de-duplication drop questions)
        return None
    return (f"{len(short)} of the {len(counts)} facts in the training data have fewer than {MIN_QUESTIONS_PER_FACT} "
            "questions each, too few for the model to learn them. Generate more: Dataset, Options, Questions per fact "
            "(slowtune generate --questions-per-fact 6), or accept more of the rejected rows.")


def has_training_data(project: Project) -> bool:
    """Whether the project has an accepted training conversation (cheap: one row is looked at)."""
    return project.conn.execute("SELECT 1 FROM dataset_rows WHERE status = 'accepted' AND split = 'train' "
                                f"AND {CURRENT_ROW_SQL} LIMIT 1").fetchone() is not None


def training_conversations(project_root: Path) -> int:
    """The project's accepted training conversations: what a run there trains on."""
    with Project.open(project_root) as project:
        return len(rows(project, "train"))
