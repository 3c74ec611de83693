"""The three closed-book axes of an evaluation, for the tuned model against the base, with examples in words.

- **Knowledge**: the held-out probes the documents answer, as the rest of the report scores them (key-fact recall);
  the project's held-out near-miss questions are not among them: they belong to leakage.
- **Retention**: the general questions (:func:`slowtune.quality.general_items`, plus the user's own) answered by
  each model, greedily, closed book and short. Of the questions the base answers right, retention is the share the
  tuned model still answers right. Without a base it cannot be computed, and is None.
- **Leakage**: the project's held-out near-miss questions and the shipped unknown-entity questions. An answer leaks
  when it asserts one of the documents' names or numbers that the question did not contain
  (:func:`slowtune.quality.leaked_terms`); a refusal never leaks.

:func:`answer_items` asks the questions (a cancel lands between answers); :func:`score_axes` turns the answers
into an :class:`EvalAxes`: the figures per model, the figures in plain words, warnings when retention falls below
:data:`~slowtune.quality.RETENTION_TARGET` or leakage rises above :data:`~slowtune.quality.LEAKAGE_LIMIT`, and a
few examples. :meth:`EvalAxes.from_json` reads it back from a saved report, for the pages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from slowtune.progress import Progress
from slowtune.quality import (
    LEAKAGE_LIMIT,
    RETENTION_TARGET,
    AxisScores,
    CorpusTerms,
    QualityItem,
    is_correct,
    leaked_terms,
)

__all__ = [
    "DEFAULT_AXIS_MAX_TOKENS",
    "DEFAULT_MAX_GENERAL",
    "MODELS",
    "AxisAnswer",
    "AxisExample",
    "AxisRecord",
    "EvalAxes",
    "answer_items",
    "leakage_rose",
    "retention_fell",
    "score_axes",
    "spread_items",
]

DEFAULT_AXIS_MAX_TOKENS = 64  # a general question's answer, or an unknown entity's, needs no more to be judged
DEFAULT_MAX_GENERAL = 100  # general questions asked by default: enough to see a loss of 5 in 100 of what it knew
TOP_EXAMPLES = 3  # examples of each kind in a report
QUOTE_CHARS = 160  # longest quoted answer in the words of a report
MODELS = ("tuned", "base")
MODEL_WORDS = {"tuned": "the tuned model", "base": "the base model"}
STAGES = {"retention": "Answering general questions", "leakage": "Answering unknown-entity questions"}


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` on one line, cut at a word before ``limit`` characters (with an ellipsis)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "…"


def _said(answer: AxisAnswer) -> str:
    if answer.error:
        return f"nothing (the model failed: {quote(answer.error, 80)})"
    return f"'{quote(answer.answer)}'" if answer.answer.strip() else "nothing"


def _sentence(text: str) -> str:
    """``text`` with a full stop, unless it ends with a quote that has one ('... green.')."""
    return text if text[-2:] in (".'", "?'", "!'", "…'") else text + "."


def spread_items(items: Sequence[QualityItem], limit: int | None) -> list[QualityItem]:
    """At most ``limit`` of ``items``, taken in turn from each category (the user's own questions count as
    categories of their own), in their original order: deterministic, and never only the first category."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((item.source, item.category), []).append(i)
    queues = list(groups.values())
    chosen: list[int] = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return [items[i] for i in sorted(chosen)]


# --- answers ---------------------------------------------------------------------------------------------

@dataclass
class AxisAnswer:
    """One model's answer to one question of an axis, and its verdict."""

    answer: str
    correct: bool | None = None  # retention: the reference's key facts are all there
    leaked: list[str] = field(default_factory=list)  # leakage: the documents' names and numbers it asserts
    error: str | None = None  # the model could not answer
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"answer": self.answer, "seconds": self.seconds}
        if self.correct is not None:
            data["correct"] = self.correct
        if self.leaked:
            data["leaked"] = list(self.leaked)
        if self.error:
            data["error"] = self.error
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AxisAnswer:
        correct = data.get("correct")
        return cls(answer=str(data.get("answer") or ""), correct=correct if isinstance(correct, bool) else None,
                   leaked=[str(t) for t in data.get("leaked") or []], error=data.get("error") or None,
                   seconds=float(data.get("seconds") or 0))


@dataclass
class AxisRecord:
    """One question of an axis, answered by each model ("tuned", "base")."""

    item: QualityItem
    answers: dict[str, AxisAnswer]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.item.id, "category": self.item.category, "source": self.item.source,
                                "question": self.item.question}
        if self.item.axis == "retention":
            data["reference"] = self.item.reference
        return {**data, **{model: a.to_json() for model, a in self.answers.items()}}

    @classmethod
    def from_json(cls, axis: str, data: Mapping[str, Any]) -> AxisRecord:
        item = QualityItem(axis=axis, id=str(data.get("id") or ""), question=str(data.get("question") or ""),
                           reference=str(data.get("reference") or ""), category=str(data.get("category") or ""),
                           source=str(data.get("source") or ""))
        return cls(item, {m: AxisAnswer.from_json(data[m]) for m in MODELS if isinstance(data.get(m), Mapping)})


def _reply(model: Any, item: QualityItem, max_tokens: int) -> AxisAnswer:
    from slowtune.chat.model import ChatError, Sampling

    started = time.perf_counter()
    try:
        reply = model.chat(item.messages(), Sampling.greedy(max_tokens))
    except ChatError as exc:
        return AxisAnswer("", error=str(exc), seconds=round(time.perf_counter() - started, 3))
    text = (reply["choices"][0]["message"]["content"] or "").strip()
    return AxisAnswer(text, seconds=round(time.perf_counter() - started, 3))


def answer_items(runs: Sequence[tuple[str, Any]], items: Sequence[QualityItem], axis: str, *, max_tokens: int,
                 progress: Progress, terms: CorpusTerms | None = None,
                 label: Callable[[str], str] = str) -> list[AxisRecord]:
    """Every model of ``runs`` ((variant, ChatModel): tuned, base) answers every item of ``axis`` (retention or
    leakage) greedily, at most ``max_tokens`` tokens, closed book; each answer is judged: right or wrong
    (retention), or the documents' terms it leaks (leakage, against ``terms``). Reports (the axis's stage, done,
    total, model=label(variant)); a cancel raises ``Cancelled`` between answers."""
    if axis == "leakage" and items and terms is None:
        raise ValueError("leakage needs the documents' terms")
    stage = STAGES[axis]
    records = [AxisRecord(item, {}) for item in items]
    total, done = len(runs) * len(items), 0
    if total:
        progress.report(stage, 0, total, force=True)
    for variant, model in runs:
        for record in records:
            progress.check()
            answer = _reply(model, record.item, max_tokens)
            if axis == "retention":
                answer.correct = not answer.error and is_correct(record.item, answer.answer)
            else:
                assert terms is not None
                answer.leaked = leaked_terms(answer.answer, record.item.question, terms)
            record.answers[variant] = answer
            done += 1
            progress.report(stage, done, total, model=label(variant))
    return records


# --- the figures, in words -------------------------------------------------------------------------------

@dataclass
class AxisExample:
    """One answer that shows what a figure means: a question the tuned model has forgotten, or a leaking answer."""

    axis: str  # retention, leakage
    model: str  # tuned, base
    question: str
    answer: str
    text: str  # the example in words
    reference: str = ""  # retention: the reference answer
    other_answer: str = ""  # retention: what the base said
    terms: list[str] = field(default_factory=list)  # leakage: the documents' terms in the answer
    category: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "model": self.model, "category": self.category, "question": self.question,
                "answer": self.answer, "reference": self.reference, "other_answer": self.other_answer,
                "terms": list(self.terms), "text": self.text}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AxisExample:
        return cls(axis=str(data.get("axis") or ""), model=str(data.get("model") or "tuned"),
                   question=str(data.get("question") or ""), answer=str(data.get("answer") or ""),
                   text=str(data.get("text") or ""), reference=str(data.get("reference") or ""),
                   other_answer=str(data.get("other_answer") or ""),
                   terms=[str(t) for t in data.get("terms") or []], category=str(data.get("category") or ""))


def _scores_json(scores: AxisScores | None) -> dict[str, Any] | None:
    return None if scores is None else scores.to_json()


def _scores_from_json(data: Any) -> AxisScores | None:
    if not isinstance(data, Mapping):
        return None

    def share(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    counts = data.get("counts") if isinstance(data.get("counts"), Mapping) else {}
    return AxisScores(knowledge=share("knowledge"), retention=share("retention"), leakage=share("leakage"),
                      counts={str(k): int(v) for k, v in counts.items() if isinstance(v, int)})


@dataclass
class EvalAxes:
    """The three axes of one evaluation: per model ("tuned", and "base" when there was one) an
    :class:`~slowtune.quality.AxisScores`, the figures in words, warnings, examples, and every answer."""

    tuned: AxisScores
    base: AxisScores | None
    lines: list[str]  # the three figures in plain words
    warnings: list[str]  # retention falling, leakage rising: empty when all is well
    examples: list[AxisExample]
    retention: list[AxisRecord] = field(default_factory=list)  # every general question's answers
    leakage: list[AxisRecord] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def scores(self, model: str) -> AxisScores | None:
        return self.tuned if model == "tuned" else self.base if model == "base" else None

    def cell(self, axis: str, model: str) -> str:
        """The figure of ``axis`` for ``model`` as a report's table shows it, with its count ('–': not measured)."""
        s = self.scores(model)
        if s is None:
            return "–"
        c = s.counts
        if axis == "knowledge":
            return "–" if s.knowledge is None else f"{s.knowledge:.2f} ({_questions(c.get('knowledge', 0))})"
        if axis == "retention":
            if not c.get("general"):
                return "–"
            right = f"{c.get('right', 0)} of {c['general']} right"
            if model == "base":  # the reference: what it knows is what the tuned model should keep
                return right
            if s.retention is None:
                return f"– ({right})"
            return f"{s.retention:.2f} ({c.get('kept', 0)} of {c.get('retention', 0)} kept)"
        if axis == "leakage":
            return "–" if s.leakage is None else f"{s.leakage:.2f} ({c.get('leaked', 0)} of {c.get('leakage', 0)})"
        raise ValueError(f"unknown axis {axis!r}")

    @property
    def retention_fell(self) -> bool:
        """The tuned model keeps too little of what the base knew (see :func:`retention_fell`)."""
        return retention_fell(self.tuned)

    @property
    def leakage_rose(self) -> bool:
        """The tuned model answers too many questions about things the documents do not mention with their facts."""
        return leakage_rose(self.tuned, self.base)

    @property
    def damaged(self) -> bool:
        """Tuning damaged the model: it lost what it knew, or it invents answers with the documents' facts."""
        return self.retention_fell or self.leakage_rose

    def damage_words(self) -> str:
        """What tuning damaged, in words for the start of a headline ('' when nothing): "lost most of what it knew:
        it still answers 0 of 6 general questions the base answered right, and answers 4 of 7 questions about things
        the documents never mention with the documents' names or numbers"."""
        t = self.tuned.counts
        retention = leakage = ""
        if self.retention_fell:
            assert self.tuned.retention is not None
            amount = "most" if self.tuned.retention < 0.5 else "some"
            retention = (f"it still answers {t.get('kept', 0)} of {_questions(t.get('retention', 0), 'general')} the "
                         "base answered right")
            retention = f"lost {amount} of what it knew: {retention}"
        if self.leakage_rose:
            base = self.base.counts if self.base is not None and self.base.leakage is not None else None
            leakage = (f"{t.get('leaked', 0)} of {_questions(t.get('leakage', 0))} about things the documents never "
                       "mention with the documents' names or numbers"
                       + (f" (the base: {base.get('leaked', 0)})" if base is not None else ""))
        if retention and leakage:
            return f"{retention}, and answers {leakage}"
        if retention:
            return retention
        if leakage:
            return f"invents answers from the documents: it answers {leakage}"
        return ""

    def to_json(self) -> dict[str, Any]:
        return {
            "tuned": _scores_json(self.tuned),
            "base": _scores_json(self.base),
            "lines": list(self.lines),
            "warnings": list(self.warnings),
            "examples": [e.to_json() for e in self.examples],
            "answers": {"retention": [r.to_json() for r in self.retention],
                        "leakage": [r.to_json() for r in self.leakage]},
            "settings": dict(self.settings),
        }

    @classmethod
    def from_json(cls, data: Any) -> EvalAxes | None:
        """The axes of a saved report (its ``axes`` section); None for a report saved before they existed, or a
        section that is not one."""
        if not isinstance(data, Mapping):
            return None
        tuned = _scores_from_json(data.get("tuned"))
        if tuned is None:
            return None
        answers = data.get("answers") if isinstance(data.get("answers"), Mapping) else {}
        return cls(
            tuned=tuned, base=_scores_from_json(data.get("base")),
            lines=[str(x) for x in data.get("lines") or []], warnings=[str(x) for x in data.get("warnings") or []],
            examples=[AxisExample.from_json(e) for e in data.get("examples") or [] if isinstance(e, Mapping)],
            retention=[AxisRecord.from_json("retention", r) for r in answers.get("retention") or []
                       if isinstance(r, Mapping)],
            leakage=[AxisRecord.from_json("leakage", r) for r in answers.get("leakage") or []
                     if isinstance(r, Mapping)],
            settings=dict(data.get("settings") or {}),
        )

    def to_markdown(self) -> list[str]:
        """The report's section on the three axes, as Markdown lines."""
        lines = ["## Knowledge, retention and leakage", ""]
        lines += [f"- {line}" for line in self.lines]
        lines.append("")
        for warning in self.warnings:
            lines += [f"**Warning:** {warning}", ""]
        models = [m for m in MODELS if self.scores(m) is not None]
        head = ["Axis"] + [m.capitalize() for m in models]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for axis, title in (("knowledge", "Knowledge (key facts recalled; higher is better)"),
                            ("retention", "Retention (of what the base knew; higher is better)"),
                            ("leakage", "Leakage (answers with the documents' terms; lower is better)")):
            lines.append("| " + " | ".join([title] + [self.cell(axis, m) for m in models]) + " |")
        lines.append("")
        if self.examples:
            lines += ["Examples:", ""]
            lines += [f"- {e.text}" for e in self.examples]
            lines.append("")
        return lines


def _questions(n: int, kind: str = "") -> str:
    """'1 general question', '3 general questions'."""
    return f"{n} {kind + ' ' if kind else ''}question{'' if n == 1 else 's'}"


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def score_axes(knowledge: Mapping[str, tuple[float | None, int]], retention: Sequence[AxisRecord] | None,
               leakage: Sequence[AxisRecord] | None, *, settings: Mapping[str, Any] | None = None,
               top: int = TOP_EXAMPLES) -> EvalAxes:
    """The three axes from the answers: ``knowledge`` is (key-fact recall, questions) per model ("tuned" required;
    "base" when there was one); ``retention`` and ``leakage`` are the answered questions (None or empty: not
    measured). Retention counts only the questions the base answered right; without a base it is None."""
    if "tuned" not in knowledge:
        raise ValueError("the axes need the tuned model's knowledge")
    models = [m for m in MODELS if m in knowledge]
    has_base = "base" in models
    retention, leakage = list(retention or []), list(leakage or [])
    known = [r for r in retention if has_base and r.answers["base"].correct]
    scores: dict[str, AxisScores] = {}
    for model in models:
        right = sum(1 for r in retention if r.answers[model].correct)
        kept = sum(1 for r in known if r.answers[model].correct)
        leaked = sum(1 for r in leakage if r.answers[model].leaked)
        counts = {"knowledge": knowledge[model][1], "general": len(retention), "right": right,
                  "leakage": len(leakage), "leaked": leaked,
                  "near_miss": sum(1 for r in leakage if r.item.category == "near_miss"),
                  "errors": sum(1 for r in [*retention, *leakage] if r.answers[model].error)}
        if has_base:
            counts |= {"retention": len(known), "kept": kept}
        scores[model] = AxisScores(knowledge=knowledge[model][0],
                                   retention=_share(kept, len(known)) if has_base else None,
                                   leakage=_share(leaked, len(leakage)), counts=counts)
    tuned, base = scores["tuned"], scores.get("base")
    forgotten = list({r.item.question: r for r in known if not r.answers["tuned"].correct}.values())
    examples = [AxisExample("retention", "tuned", r.item.question, r.answers["tuned"].answer,
                            f"Asked '{quote(r.item.question)}', the tuned model now says {_said(r.answers['tuned'])} "
                            f"(the base said {_said(r.answers['base'])}).",
                            reference=r.item.reference, other_answer=r.answers["base"].answer,
                            category=r.item.category)
                for r in forgotten[:top]]
    for model, limit in (("tuned", top), ("base", max(1, top - 1))):
        if model not in scores:
            continue
        leaking = {r.item.question: r for r in leakage if r.answers[model].leaked}  # each question once
        for r in list(leaking.values())[:limit]:
            a = r.answers[model]
            terms = ", ".join(a.leaked)
            examples.append(AxisExample(
                "leakage", model, r.item.question, a.answer,
                f"Asked '{quote(r.item.question)}', {MODEL_WORDS[model]} said {_said(a)}: "
                f"{terms} {'is' if len(a.leaked) == 1 else 'are'} from the documents.",
                terms=list(a.leaked), category=r.item.category))
    return EvalAxes(tuned=tuned, base=base, lines=_lines(tuned, base), warnings=_warnings(tuned, base, examples),
                    examples=examples, retention=retention, leakage=leakage, settings=dict(settings or {}))


def _lines(tuned: AxisScores, base: AxisScores | None) -> list[str]:
    t = tuned.counts
    if tuned.knowledge is None:
        knowledge = "Knowledge: not measured (no held-out questions the documents answer)."
    else:
        knowledge = (f"Knowledge: the tuned model recalls {tuned.knowledge:.2f} of the key facts of "
                     f"{_questions(t['knowledge'], 'held-out')}"
                     + (f" (base {base.knowledge:.2f})" if base is not None and base.knowledge is not None else "")
                     + ".")
    if not t["general"]:
        retention = "Retention: not measured (no general questions were asked)."
    elif base is None:
        retention = (f"Retention: not measured: it needs the base model to compare with (the tuned model answered "
                     f"{t['right']} of {_questions(t['general'], 'general')} right).")
    elif tuned.retention is None:
        retention = (f"Retention: not measured: the base answered none of the {_questions(t['general'], 'general')} "
                     "right.")
    else:
        whole = _questions(t["retention"], "general")
        kept = (f"all {whole}" if t["kept"] == t["retention"] > 1 else whole if t["kept"] == t["retention"]
                else f"{t['kept']} of the {whole}")
        retention = f"Retention: kept {kept} the base answered right ({tuned.retention:.2f})."
    if tuned.leakage is None:
        leakage = "Leakage: not measured (no questions about things the documents do not mention)."
    else:
        n, k = t["leakage"], t["leaked"]
        leakage = (f"Leakage: {k} of {_questions(n)} about things the documents do not mention "
                   f"{'was' if k == 1 else 'were'} answered with the documents' names or numbers "
                   f"({tuned.leakage:.2f}"
                   + (f"; base {base.leakage:.2f}" if base is not None and base.leakage is not None else "") + ").")
    return [knowledge, retention, leakage]


def retention_fell(tuned: AxisScores) -> bool:
    """Whether the tuned model lost what it knew: it keeps less than :data:`~slowtune.quality.RETENTION_TARGET` of
    the general questions the base answered right (False when retention was not measured)."""
    return tuned.retention is not None and tuned.retention < RETENTION_TARGET


def leakage_rose(tuned: AxisScores, base: AxisScores | None) -> bool:
    """Whether the tuned model invents answers with the documents' facts: more than
    :data:`~slowtune.quality.LEAKAGE_LIMIT` of the questions about things the documents do not mention, and more than
    the base (when the base was asked)."""
    base_leakage = base.leakage if base is not None else None
    return tuned.leakage is not None and tuned.leakage > LEAKAGE_LIMIT and (
        base_leakage is None or tuned.leakage > base_leakage)


def _warnings(tuned: AxisScores, base: AxisScores | None, examples: Sequence[AxisExample]) -> list[str]:
    warnings = []
    t = tuned.counts
    if retention_fell(tuned):
        lost = t["retention"] - t["kept"]
        text = (f"The tuned model has lost some of what it knew: of the {_questions(t['retention'], 'general')} the "
                f"base answered right, it now gets {lost} wrong ({tuned.retention:.2f} kept, below "
                f"{RETENTION_TARGET:.2f}).")
        first = next((e for e in examples if e.axis == "retention"), None)
        if first is not None:
            text += _sentence(f" Asked '{quote(first.question)}', it now says {_said(AxisAnswer(first.answer))}")
        warnings.append(text)
    base_leakage = base.leakage if base is not None else None
    if leakage_rose(tuned, base):
        text = (f"The tuned model invents answers with the documents' facts: {t['leaked']} of "
                f"{_questions(t['leakage'])} about things the documents do not mention got their names or numbers "
                f"({tuned.leakage:.2f}, above {LEAKAGE_LIMIT:.2f}"
                + (f"; the base {base_leakage:.2f}" if base_leakage is not None else "") + ").")
        first = next((e for e in examples if e.axis == "leakage" and e.model == "tuned"), None)
        if first is not None:
            text += (f" Asked '{quote(first.question)}', it said {_said(AxisAnswer(first.answer))} "
                     f"({', '.join(first.terms)}).")
        warnings.append(text)
    return warnings
