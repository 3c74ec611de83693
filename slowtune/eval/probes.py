"""The held-out probes: the questions the teacher stage kept out of training, and the evaluation's error.

The teacher stage keeps a few rephrased questions of the training chunks out of training (``split='probe'``),
with the teacher's answer as the reference. :func:`load_probes` reads them from a project, with the source
chunk of each; :func:`open_book_messages` is the prompt with that chunk in it (open book).

The held-out near-miss questions (``qtype`` :data:`~slowtune.quality.LEAKAGE_QTYPE`: entities that resemble the
documents' subjects but are absent from them) are not knowledge probes: :func:`load_probes` leaves them out, and
:func:`near_miss_items` gives them to the leakage axis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slowtune.quality import LEAKAGE_QTYPE, QualityItem
from slowtune.scoring import is_refusal
from slowtune.store import Project

__all__ = ["LABELS", "VARIANTS", "EvalError", "Probe", "load_probes", "near_miss_items", "open_book_messages",
           "probe_counts"]

# The four ways a probe can be answered; the report keeps this order everywhere.
VARIANTS = ("tuned", "base", "tuned_open_book", "base_open_book")
LABELS = {"tuned": "Tuned", "base": "Base", "tuned_open_book": "Tuned, open book",
          "base_open_book": "Base, open book"}


class EvalError(RuntimeError):
    """The evaluation cannot run (no probes, a judge whose key was rejected, ...). The message is for users."""


@dataclass
class Probe:
    """One held-out question with its reference answer and where it came from."""

    id: int  # the dataset row id
    question: str
    reference: str
    qtype: str | None  # fact, reasoning, refusal, ...
    document_id: int | None
    document: str  # the document's title (or file name)
    chunk_id: str | None
    chunk_text: str | None  # None when the chunk is gone (the document was re-ingested since)
    system: str | None = None
    earlier: list[dict[str, str]] = field(default_factory=list)  # earlier turns of a multi-turn probe
    evidence: str | None = None  # the quote that grounds the reference answer

    @property
    def is_refusal(self) -> bool:
        # Rows without a type (imported ones) count as refusal probes when their reference refuses.
        if self.qtype:
            return self.qtype == "refusal"
        return is_refusal(self.reference)

    def messages(self) -> list[dict[str, str]]:
        """The closed-book prompt: system prompt, earlier turns, the question."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.earlier, {"role": "user", "content": self.question}]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("chunk_text")  # the project holds it; reports stay small
        data["refusal"] = self.is_refusal
        return data


def _spread(probes: list[Probe], limit: int) -> list[Probe]:
    """``limit`` probes taken round-robin over documents, so a limit does not test only the first document."""
    by_doc: dict[Any, list[Probe]] = {}
    for p in probes:
        by_doc.setdefault(p.document_id, []).append(p)
    queues = list(by_doc.values())
    chosen: list[Probe] = []
    while len(chosen) < limit:
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(q.pop(0))
    return sorted(chosen, key=lambda p: p.id)


def _held_out(project: Project) -> list[Probe]:
    """Every accepted held-out question of ``project`` (near-miss ones too), in row order, with its source."""
    from slowtune.dataset import rows

    found = rows(project, split="probe")
    chunk_ids = sorted({r.provenance.chunk_id for r in found if r.provenance.chunk_id})
    chunks: dict[str, str] = {}
    for start in range(0, len(chunk_ids), 500):  # SQLite caps the number of bound parameters
        part = chunk_ids[start:start + 500]
        marks = ",".join("?" * len(part))
        for r in project.conn.execute(f"SELECT id, text FROM chunks WHERE id IN ({marks})", part):
            chunks[r["id"]] = r["text"]
    titles = {r["id"]: r["title"] or Path(r["path"]).name
              for r in project.conn.execute("SELECT id, title, path FROM documents")}
    probes = []
    for row in found:
        messages = row.messages
        if not messages or messages[-1]["role"] != "assistant":
            continue
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        turns = messages[1 if system else 0:-1]
        if not turns or turns[-1]["role"] != "user":
            continue
        p = row.provenance
        probes.append(Probe(
            id=int(row.id or 0), question=turns[-1]["content"], reference=messages[-1]["content"], qtype=p.qtype,
            document_id=p.document_id, document=titles.get(p.document_id, "(unknown document)"),
            chunk_id=p.chunk_id, chunk_text=chunks.get(p.chunk_id or ""), system=system,
            earlier=[dict(m) for m in turns[:-1]], evidence=p.evidence,
        ))
    return probes


def load_probes(project: Project, limit: int | None = None) -> list[Probe]:
    """The accepted held-out probes of ``project`` (not the near-miss ones: they are leakage questions), in row
    order; at most ``limit``, spread over documents."""
    if limit is not None and limit < 1:
        raise EvalError("the number of probes must be at least 1")
    held_out = _held_out(project)
    probes = [p for p in held_out if p.qtype != LEAKAGE_QTYPE]
    if not probes:
        only = " (only questions about things the documents do not mention)" if held_out else ""
        raise EvalError(f"no held-out probes in project {project.name!r}{only}: run `slowtune generate` first")
    if limit is not None and limit < len(probes):
        probes = _spread(probes, limit)
    return probes


def probe_counts(project: Project) -> tuple[int, int]:
    """The held-out probes of ``project`` as the report counts them: (questions about the documents' facts,
    questions the documents do not answer, which should be refused). Near-miss questions are not among them."""
    from slowtune.dataset import rows

    facts = refused = 0
    for row in rows(project, split="probe"):
        messages = row.messages
        if row.provenance.qtype == LEAKAGE_QTYPE or not messages or messages[-1]["role"] != "assistant":
            continue
        if is_refusal(messages[-1]["content"]):
            refused += 1
        else:
            facts += 1
    return facts, refused


def near_miss_items(project: Project) -> list[QualityItem]:
    """The project's held-out near-miss questions, as leakage questions, closed book, with the row's system
    prompt (earlier turns, which near-miss rows do not have, are dropped)."""
    return [QualityItem(axis="leakage", id=f"probe-{p.id}", question=p.question, category=LEAKAGE_QTYPE,
                        source="project", system=p.system)
            for p in _held_out(project) if p.qtype == LEAKAGE_QTYPE]


def open_book_messages(probe: Probe) -> list[dict[str, str]]:
    """The open-book prompt: the source excerpt, clearly delimited, then the question.

    Plain delimiter lines rather than the teacher's hashed ones: the student is a small chat model, and an
    instruction it can follow matters more here than resistance to forged markers.
    """
    source = probe.chunk_text or probe.evidence
    if not source:
        return probe.messages()
    user = (
        "Answer the question using the excerpt from the documents below. If the excerpt does not answer it, "
        "say that the documents do not cover it.\n\n"
        f"--- BEGIN EXCERPT from \"{probe.document}\" ---\n{source.strip()}\n--- END EXCERPT ---\n\n"
        f"Question: {probe.question}"
    )
    head = [{"role": "system", "content": probe.system}] if probe.system else []
    return [*head, *probe.earlier, {"role": "user", "content": user}]

