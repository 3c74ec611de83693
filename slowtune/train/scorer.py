"""Scoring a run while it trains: the three axes (knowledge, retention, leakage) on small held-out slices.

Every K steps the model in training answers a few closed-book questions greedily and briefly
(:mod:`slowtune.train.decode`), and :mod:`slowtune.quality` scores them:
- knowledge: the project's held-out probes (else the data's test or validation split: a user's own JSONL);
- retention: shipped general questions the base model answers right (found once, before the first step, with the
  LoRA switched off), and whether the tuned model still does;
- leakage: the project's held-out near-miss questions and shipped unknown-entity questions; an answer leaks when it
  asserts the data's specific names or numbers.

The trainer keeps the checkpoint with the best combined score, stops early when knowledge has plateaued while
retention falls, and chooses K so that scoring takes at most a tenth of the training time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.progress import Progress, ensure
from slowtune.quality import (
    LEAKAGE_QTYPE,
    RETENTION_TARGET,
    AxisScores,
    CorpusTerms,
    QualityError,
    QualityItem,
    corpus_terms,
    general_items,
    is_correct,
    knowledge_item,
    leaked_terms,
    spread,
    unknown_items,
)
from slowtune.scoring import new_fact_recall

__all__ = ["SCORING_SHARE", "RunScorer", "Scoring", "choose_interval", "load_run_items"]

SCORING_SHARE = 0.10  # of the training time, at most
KNOWLEDGE_SLICE = 16
RETENTION_POOL = 64  # general questions the base answers first; those it gets right are the retention slice
RETENTION_SLICE = 24
LEAKAGE_SLICE = 12
MAX_NEW_TOKENS = 32  # short answers: the key fact comes first
BATCH = 64  # questions answered together: on a CPU a large batch costs little more per step than a small one
PLATEAU = 0.02  # knowledge gains below this count as no gain


def _last_turn(messages: list[dict[str, str]]) -> tuple[str | None, str, str] | None:
    """(system, question, answer) of a conversation ending in a user turn and its answer."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant" or messages[-2]["role"] != "user":
        return None
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    return system, messages[-2]["content"], messages[-1]["content"]


@dataclass
class RunItems:
    """What a run scores itself on."""

    knowledge: list[QualityItem]
    retention_pool: list[QualityItem]
    leakage: list[QualityItem]
    terms: CorpusTerms | None
    notes: list[str] = field(default_factory=list)  # what could not be scored, in words


def load_run_items(data: Path, conversations: dict[str, list[Any]], *, general: list[QualityItem] | None = None,
                   unknown: list[QualityItem] | None = None) -> RunItems:
    """The slices for a run on ``data`` (a project folder, or JSONL whose ``conversations`` were loaded)."""
    from slowtune.store import DB_NAME

    notes: list[str] = []
    knowledge: list[QualityItem] = []
    near_miss: list[QualityItem] = []
    texts: list[str] = []
    if data.is_dir() and (data / DB_NAME).is_file():
        from slowtune.dataset import rows
        from slowtune.store import Project

        with Project.open(data) as project:
            for row in rows(project, "probe"):
                turn = _last_turn(row.messages)
                if turn is None:
                    continue
                system, question, answer = turn
                qtype = row.provenance.qtype
                if qtype == LEAKAGE_QTYPE:
                    near_miss.append(QualityItem(axis="leakage", id=f"row-{row.id}", question=question,
                                                 category="near_miss", source="project", system=system))
                elif qtype != "refusal":
                    knowledge.append(knowledge_item(f"row-{row.id}", question, answer, system=system))
            texts = [r["text"] for r in project.conn.execute("SELECT text FROM chunks")]
    else:
        # The validation split first: a test split is what the user may report on afterwards, untouched.
        held = conversations.get("valid") or conversations.get("test") or []
        for n, messages in enumerate(held):
            turn = _last_turn(messages)
            if turn is not None:
                system, question, answer = turn
                knowledge.append(knowledge_item(f"held-{n}", question, answer, source="held-out data", system=system))
        texts = [m["content"] for conv in conversations.get("train", []) for m in conv if m["role"] == "assistant"]
    if not knowledge:
        notes.append("Knowledge is not scored during training: the data has no held-out questions (a project's "
                     "probes, or a test.jsonl or valid.jsonl beside train.jsonl).")
    try:
        general = general_items() if general is None else general
        unknown = unknown_items() if unknown is None else unknown
    except (QualityError, FileNotFoundError) as exc:
        notes.append(f"Retention and unknown-entity leakage are not scored: {exc}")
        general, unknown = [], []
    terms = corpus_terms(texts) if texts else None
    leakage = near_miss[: LEAKAGE_SLICE // 2]
    leakage += spread(list(unknown), LEAKAGE_SLICE - len(leakage))
    if terms is None or not len(terms):
        notes.append("Leakage is not scored: the data has no names or numbers to leak.")
        leakage = []
    return RunItems(knowledge=knowledge[:KNOWLEDGE_SLICE] if len(knowledge) <= KNOWLEDGE_SLICE
                    else [knowledge[round(i * len(knowledge) / KNOWLEDGE_SLICE)] for i in range(KNOWLEDGE_SLICE)],
                    retention_pool=spread(list(general), RETENTION_POOL), leakage=leakage, terms=terms, notes=notes)


@dataclass
class Scoring:
    """One scoring of the model in training."""

    step: int
    axes: AxisScores
    seconds: float
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # axis -> [{question, answer, ...}]

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, **self.axes.to_json(), "seconds": round(self.seconds, 2),
                "examples": self.examples}


class RunScorer:
    """Answers the run's slices with the engine's model and scores them."""

    def __init__(self, engine: Any, renderer: Any, items: RunItems, *, max_new: int = MAX_NEW_TOKENS) -> None:
        self.engine = engine
        self.renderer = renderer
        self.items = items
        self.max_new = max_new
        self.retention: list[QualityItem] = []  # the pool's questions the base answers right
        self.base: Scoring | None = None
        self.notes = list(items.notes)
        self.step_s: float | None = None  # seconds a decoding step of a batch took at the last scoring (at least)

    @property
    def active(self) -> bool:
        return bool(self.items.knowledge or self.retention or self.items.leakage)

    def _encode(self, item: QualityItem) -> list[int]:
        r = self.renderer
        text = r.render_prompt(item.messages())
        ids = [int(i) for i in r.tokenizer(text, add_special_tokens=False)["input_ids"]]
        if r.adds_bos and (not ids or ids[0] != r.bos_id):
            ids.insert(0, int(r.bos_id))
        return ids

    def _answers(self, items: list[QualityItem], lora: bool, progress: Progress) -> list[str]:
        from slowtune.train.decode import greedy

        if not items:
            return []
        started = time.perf_counter()
        outs = greedy(self.engine, [self._encode(i) for i in items], self.max_new, set(self.renderer.end_of_turn_ids),
                      lora=lora, batch=BATCH, progress=progress)
        # Decoding steps run: each batch runs until its longest answer ends (the prompts' pass counts as one).
        steps = math.ceil(len(items) / BATCH) * (max(len(o) for o in outs) + 1)
        self.step_s = (time.perf_counter() - started) / steps
        return [self.renderer.tokenizer.decode(o, skip_special_tokens=True).strip() for o in outs]

    def baseline(self, progress: Progress | None = None) -> Scoring:
        """The base model's scores (LoRA off), and the retention slice: the pool's questions it answers right."""
        progress = ensure(progress)
        started = time.perf_counter()
        items = self.items.knowledge + self.items.retention_pool + self.items.leakage
        answers = self._answers(items, False, progress)
        k = len(self.items.knowledge)
        pool = self.items.retention_pool
        right = [item for item, answer in zip(pool, answers[k:k + len(pool)], strict=True) if is_correct(item, answer)]
        self.retention = right[:RETENTION_SLICE]
        if pool and not self.retention:
            self.notes.append("Retention is not scored: the base model answered none of the general questions right.")
        self.base = self._score(0, items, answers, time.perf_counter() - started, base=True)
        return self.base

    def scoring_estimate(self) -> float:
        """Seconds a scoring will take: the base model's took this long for its (larger) set of questions."""
        if self.base is None:
            return 0.0
        asked = len(self.items.knowledge) + len(self.items.retention_pool) + len(self.items.leakage)
        scored = len(self.items.knowledge) + len(self.retention) + len(self.items.leakage)
        return self.base.seconds * scored / max(asked, 1)

    def score(self, step: int, progress: Progress | None = None) -> Scoring:
        """The model as trained so far, on the three slices."""
        progress = ensure(progress)
        started = time.perf_counter()
        items = self.items.knowledge + self.retention + self.items.leakage
        answers = self._answers(items, True, progress)
        return self._score(step, items, answers, time.perf_counter() - started)

    def _score(self, step: int, items: list[QualityItem], answers: list[str], seconds: float, *,
               base: bool = False) -> Scoring:
        by_axis: dict[str, list[tuple[QualityItem, str]]] = {"knowledge": [], "retention": [], "leakage": []}
        for item, answer in zip(items, answers, strict=True):
            by_axis[item.axis].append((item, answer))
        examples: dict[str, list[dict[str, str]]] = {}
        vocabulary = self.items.terms.vocabulary if self.items.terms else None
        knowledge = retention = leakage = None
        if by_axis["knowledge"]:
            # The share of the reference's key facts the answer states, leaving out those the question already
            # names (a base model echoing the question scored 0.56 by plain recall on bench learn's probes); or,
            # where the item lists its facts, whether it states them all.
            right = [float(is_correct(i, a)) if i.facts
                     else new_fact_recall(a, i.question, i.reference, vocabulary=vocabulary)
                     for i, a in by_axis["knowledge"]]
            knowledge = sum(right) / len(right)
        if by_axis["retention"] and not base:
            kept = [is_correct(i, a) for i, a in by_axis["retention"]]
            retention = sum(kept) / len(kept)
            examples["retention"] = [{"question": i.question, "answer": a, "reference": i.reference}
                                     for (i, a), ok in zip(by_axis["retention"], kept, strict=True) if not ok][:3]
        elif base and self.retention:
            retention = 1.0  # by definition: the slice is what the base answers right
        if by_axis["leakage"] and self.items.terms is not None:
            leaks = [leaked_terms(a, i.question, self.items.terms) for i, a in by_axis["leakage"]]
            leakage = sum(bool(x) for x in leaks) / len(leaks)
            examples["leakage"] = [{"question": i.question, "answer": a, "terms": ", ".join(x)}
                                   for (i, a), x in zip(by_axis["leakage"], leaks, strict=True) if x][:3]
        counts = {"knowledge": len(by_axis["knowledge"]),
                  "retention": len(self.retention) if base else len(by_axis["retention"]),
                  "leakage": len(by_axis["leakage"])}
        return Scoring(step, AxisScores(knowledge, retention, leakage, counts), seconds, examples)


def choose_interval(scoring_s: float, step_s: float, total_steps: int) -> int:
    """Steps between scorings so that scoring takes at most :data:`SCORING_SHARE` of the training time."""
    if step_s <= 0:
        return max(1, total_steps)
    return max(1, min(total_steps, math.ceil(scoring_s / (SCORING_SHARE * step_s))))


def plateaued_and_forgetting(history: list[Scoring]) -> str | None:
    """Why to stop early, or None: knowledge gained nothing over the last two scorings while retention fell below
    the target and is still falling."""
    if len(history) < 3:
        return None
    a, b, c = history[-3:]
    know = [s.axes.knowledge for s in (a, b, c)]
    ret = [s.axes.retention for s in (b, c)]
    if None in know or None in ret:
        return None
    best_before = max(s.axes.knowledge or 0.0 for s in history[:-2])
    if max(know[1:]) > best_before + PLATEAU:  # type: ignore[type-var]
        return None
    if not (ret[1] < ret[0] and ret[1] < RETENTION_TARGET):  # type: ignore[operator]
        return None
    return (f"knowledge stopped improving ({know[-1]:.2f}) while retention kept falling "
            f"({ret[0]:.2f} -> {ret[1]:.2f})")
