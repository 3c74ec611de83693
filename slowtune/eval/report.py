"""The evaluation report: per-model summaries, tuned against base probe by probe, per document, in words.

:func:`build_report` turns per-probe results into an :class:`EvalReport`: a headline saying who is better,
the summaries, the biggest wins and regressions, the scores by document, and notes in words. When the base
model with the source excerpt (open book) beats the tuned model without it by a clear margin, the notes say
that retrieval would serve the user better than tuning, in those words. The three closed-book axes (knowledge,
retention, leakage: :mod:`slowtune.eval.axes`) are its ``axes`` section, shown first. The report renders as JSON
and Markdown, and is saved in the project's ``evals/`` folder (:func:`save_report`, :func:`list_reports`); reports
saved before the axes existed have no ``axes`` and still load.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slowtune.eval.axes import EvalAxes
from slowtune.eval.probes import LABELS, VARIANTS, Probe
from slowtune.scoring import ProbeResult
from slowtune.store import Project

__all__ = [
    "Comparison",
    "DocumentScores",
    "EvalReport",
    "ModelSummary",
    "ProbeChange",
    "SavedReport",
    "axes_of",
    "build_report",
    "compare",
    "headline_tone",
    "latest_report",
    "list_reports",
    "probe_score",
    "save_report",
    "summarise",
]

# How much better (0..1 scale: F1, or the judge's 1-5 mapped to 0..1) the base model with the source excerpt
# must be than the tuned model without it before the report recommends retrieval over tuning. Smaller gaps
# are within what a few probes' noise can produce.
RETRIEVAL_MARGIN = 0.10
# Below this (0..1 scale) a model is not answering usefully, so "holds up against retrieval" would be hollow.
USEFUL_SCORE = 0.25
TOP_CHANGES = 5  # wins and regressions listed in the report
REPORTS_DIR = "evals"


# --- summaries and comparisons ---------------------------------------------------------------------------

def _mean(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _judge_unit(score: int | None) -> float | None:
    return None if score is None else (score - 1) / 4


def probe_score(result: ProbeResult, metric: str) -> float | None:
    """The one 0..1 figure a probe is compared on: the judge's grade, or F1 (refusal probes: refused or not)."""
    if metric == "judge":
        return _judge_unit(result.judge_score)
    return result.refusal_correct if result.f1 is None else result.f1


@dataclass
class ModelSummary:
    variant: str
    label: str
    model: str  # the GGUF file (and adapter) that answered
    probes: int
    answerable: int  # probes the documents answer
    refusal_probes: int
    exact: float | None
    f1: float | None
    key_fact_recall: float | None
    refusal_accuracy: float | None  # share of refusal probes refused
    refusals_correct: int
    false_refusal_rate: float | None  # share of answerable probes wrongly refused
    false_refusals: int
    judge_mean: float | None  # 1..5
    judged: int
    judge_failures: int
    errors: int
    score: float | None  # mean probe_score under the report's metric (0..1)
    seconds: float
    completion_tokens: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarise(variant: str, model: str, probes: list[Probe], results: list[ProbeResult],
              metric: str) -> ModelSummary:
    refusal = [r for p, r in zip(probes, results, strict=True) if p.is_refusal]
    answerable = [r for p, r in zip(probes, results, strict=True) if not p.is_refusal]
    judged = [r.judge_score for r in results if r.judge_score is not None]
    return ModelSummary(
        variant=variant, label=LABELS[variant], model=model, probes=len(results), answerable=len(answerable),
        refusal_probes=len(refusal),
        exact=_mean(r.exact for r in answerable), f1=_mean(r.f1 for r in answerable),
        key_fact_recall=_mean(r.key_fact_recall for r in answerable),
        refusal_accuracy=_mean(r.refusal_correct for r in refusal),
        refusals_correct=sum(1 for r in refusal if r.refusal_correct),
        false_refusal_rate=_mean(r.false_refusal for r in answerable),
        false_refusals=sum(1 for r in answerable if r.false_refusal),
        judge_mean=_mean(judged), judged=len(judged),
        judge_failures=sum(1 for r in results if r.judge_error),
        errors=sum(1 for r in results if r.error),
        score=_mean(probe_score(r, metric) for r in results),
        seconds=round(sum(r.seconds for r in results), 3),
        completion_tokens=sum(r.completion_tokens for r in results),
    )


@dataclass
class ProbeChange:
    """One probe where two models differ: what was asked, what each answered, and the scores."""

    probe_id: int
    question: str
    reference: str
    document: str
    qtype: str | None
    answer: str  # the first model's (tuned)
    other_answer: str  # the second model's (base)
    score: float  # 0..1, by the comparison's metric
    other_score: float
    delta: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Comparison:
    """``variant`` against ``other`` (tuned against base), probe by probe."""

    variant: str
    other: str
    metric: str  # judge or f1
    compared: int  # probes both have a score for
    wins: int  # probes where ``variant`` scores higher
    losses: int
    ties: int
    deltas: dict[str, float | None]  # summary figure -> variant minus other
    biggest_wins: list[ProbeChange]
    biggest_regressions: list[ProbeChange]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["biggest_wins"] = [c.to_json() for c in self.biggest_wins]
        data["biggest_regressions"] = [c.to_json() for c in self.biggest_regressions]
        return data


_DELTA_FIELDS = ("exact", "f1", "key_fact_recall", "refusal_accuracy", "false_refusal_rate", "judge_mean", "score")


def compare(variant: str, other: str, probes: list[Probe], results: Mapping[str, list[ProbeResult]],
            summaries: Mapping[str, ModelSummary], metric: str, *, top: int = TOP_CHANGES) -> Comparison:
    changes: list[ProbeChange] = []
    ties = 0
    for probe, mine, theirs in zip(probes, results[variant], results[other], strict=True):
        a, b = probe_score(mine, metric), probe_score(theirs, metric)
        if a is None or b is None:
            continue
        if math.isclose(a, b, abs_tol=1e-9):
            ties += 1
            continue
        changes.append(ProbeChange(probe.id, probe.question, probe.reference, probe.document, probe.qtype,
                                   mine.answer, theirs.answer, round(a, 4), round(b, 4), round(a - b, 4)))
    wins = sorted((c for c in changes if c.delta > 0), key=lambda c: (-c.delta, c.probe_id))
    losses = sorted((c for c in changes if c.delta < 0), key=lambda c: (c.delta, c.probe_id))
    s, o = summaries[variant], summaries[other]
    deltas = {}
    for name in _DELTA_FIELDS:
        x, y = getattr(s, name), getattr(o, name)
        deltas[name] = None if x is None or y is None else round(x - y, 4)
    return Comparison(variant, other, metric, len(changes) + ties, len(wins), len(losses), ties, deltas,
                      wins[:top], losses[:top])


@dataclass
class DocumentScores:
    document_id: int | None
    document: str
    probes: int
    scores: dict[str, dict[str, float | None]]  # variant -> f1, key_fact_recall, refusal_accuracy, judge_mean, score
    delta: float | None  # tuned minus base, by the report's metric

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _per_document(probes: list[Probe], results: Mapping[str, list[ProbeResult]], models: Mapping[str, str],
                  metric: str) -> list[DocumentScores]:
    groups: dict[Any, list[int]] = {}
    for i, p in enumerate(probes):
        groups.setdefault((p.document, p.document_id), []).append(i)
    out = []
    for (title, doc_id), indexes in sorted(groups.items(), key=lambda kv: (kv[0][0].casefold(), kv[0][1] or 0)):
        sub = [probes[i] for i in indexes]
        scores = {}
        for variant, rs in results.items():
            s = summarise(variant, models[variant], sub, [rs[i] for i in indexes], metric)
            scores[variant] = {"f1": s.f1, "key_fact_recall": s.key_fact_recall, "refusal_accuracy": s.refusal_accuracy,
                               "judge_mean": s.judge_mean, "score": s.score}
        delta = None
        if "tuned" in scores and "base" in scores:
            a, b = scores["tuned"]["score"], scores["base"]["score"]
            delta = None if a is None or b is None else round(a - b, 4)
        out.append(DocumentScores(doc_id, title, len(indexes), scores, delta))
    return out


# --- the report ------------------------------------------------------------------------------------------

def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def _cell(text: str, limit: int = 0) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if not limit or len(text) <= limit else text[:limit - 1] + "…"


@dataclass
class EvalReport:
    project: str
    created_at: float
    metric: str  # what probes are compared on: "judge" (when a judge graded) or "f1"
    probes: list[Probe]
    results: dict[str, list[ProbeResult]]  # variant -> one result per probe, in probe order
    summaries: dict[str, ModelSummary]
    documents: list[DocumentScores]
    comparison: Comparison | None  # tuned against base, when there is a base
    headline: str
    notes: list[str]  # advice in words: retrieval vs tuning, failures
    settings: dict[str, Any] = field(default_factory=dict)
    judge: dict[str, Any] | None = None  # judge model, calls, cost
    axes: EvalAxes | None = None  # knowledge, retention and leakage, tuned against base

    def summary(self, variant: str = "tuned") -> ModelSummary:
        return self.summaries[variant]

    def set_axes(self, axes: EvalAxes | None) -> None:
        """Attach the three axes, and write the headline again: it leads with what tuning damaged."""
        self.axes = axes
        self.headline = _headline(self.summaries, self.comparison, self.metric, axes)

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "created_at": self.created_at,
            "headline": self.headline,
            "notes": list(self.notes),
            "metric": self.metric,
            "settings": self.settings,
            "judge": self.judge,
            "axes": self.axes.to_json() if self.axes is not None else None,
            "summaries": {v: s.to_json() for v, s in self.summaries.items()},
            "comparison": self.comparison.to_json() if self.comparison else None,
            "documents": [d.to_json() for d in self.documents],
            "probes": [
                {**p.to_json(), "results": {v: rs[i].to_json() for v, rs in self.results.items()}}
                for i, p in enumerate(self.probes)
            ],
        }

    # -- Markdown, for the terminal and the app --
    def _score_text(self, value: float, probe_refusal: bool) -> str:
        if self.metric == "judge":
            return f"judge {1 + 4 * value:.0f}/5"
        if probe_refusal:
            return "refused" if value >= 1 else "did not refuse"
        return f"word overlap {value:.2f}"

    def to_markdown(self) -> str:
        variants = [v for v in VARIANTS if v in self.summaries]
        judged = any(s.judged for s in self.summaries.values())
        lines = [f"# Evaluation on {_plural(len(self.probes), 'question')} about the documents — {self.project}", "",
                 f"**{self.headline}**", ""]
        lines += [f"{note}" for note in self.notes]
        if self.notes:
            lines.append("")
        if self.axes is not None:
            lines += self.axes.to_markdown()
        lines += ["## Scores", ""]
        head = ["Model", "Exactly right", "Word overlap", "Key facts", "Refusals correct", "False refusals"]
        head += ["Judge (1–5)"] if judged else []
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in variants:
            s = self.summaries[v]
            row = [f"{s.label} ({_cell(s.model)})", _f(s.exact), _f(s.f1), _f(s.key_fact_recall),
                   f"{s.refusals_correct}/{s.refusal_probes}" if s.refusal_probes else "–",
                   f"{s.false_refusals}/{s.answerable}" if s.answerable else "–"]
            if judged:
                row.append(_f(s.judge_mean, 1) + (f" ({s.judged} graded)" if s.judged < s.probes else ""))
            lines.append("| " + " | ".join(row) + " |")
        c = self.comparison
        if c is not None:
            d = c.deltas
            row = ["Tuned − base", _signed(d["exact"]), _signed(d["f1"]), _signed(d["key_fact_recall"]),
                   _signed(d["refusal_accuracy"]), _signed(d["false_refusal_rate"])]
            if judged:
                row.append(_signed(d["judge_mean"], 1))
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", "Exactly right, word overlap (with the reference answer) and key facts are over the questions "
                  "the documents answer; refusals over the questions they do not answer, which should be refused "
                  "(higher is better); false refusals: questions the documents answer that the model refused (lower "
                  "is better).", ""]

        if len(self.documents) > 1 or c is not None:
            name = "judge (1–5)" if self.metric == "judge" else "score"
            lines += ["## By document", ""]
            head = ["Document", "Questions"] + [f"{LABELS[v]} {name}" for v in variants] + (["Change"] if c else [])
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for doc in self.documents:
                cells = []
                for v in variants:
                    value = doc.scores[v]["judge_mean" if self.metric == "judge" else "score"]
                    cells.append(_f(value, 1 if self.metric == "judge" else 2))
                delta = doc.delta if self.metric != "judge" or doc.delta is None else doc.delta * 4
                lines.append("| " + " | ".join([_cell(doc.document, 60), str(doc.probes), *cells]
                                               + ([_signed(delta, 1 if self.metric == "judge" else 2)] if c else []))
                             + " |")
            if self.metric != "judge":
                lines += ["", "Score: word overlap with the reference on the questions the documents answer, 1 or 0 "
                          "on the questions that should be refused (refused or not)."]
            lines.append("")

        if c is not None:
            for title, changes in (("Biggest wins", c.biggest_wins), ("Biggest regressions", c.biggest_regressions)):
                lines += [f"## {title}", ""]
                if not changes:
                    lines.append("None.")
                for n, ch in enumerate(changes, 1):
                    refusal = ch.qtype == "refusal"
                    lines += [f"{n}. **{_cell(ch.question)}** ({_cell(ch.document)})",
                              f"   - Reference: {_cell(ch.reference, 400)}",
                              f"   - Tuned ({self._score_text(ch.score, refusal)}): "
                              f"{_cell(ch.answer, 400) or '(empty)'}",
                              f"   - Base ({self._score_text(ch.other_score, refusal)}): "
                              f"{_cell(ch.other_answer, 400) or '(empty)'}"]
                lines.append("")

        lines += ["## Settings", ""]
        for v in variants:
            lines.append(f"- {LABELS[v]}: {self.summaries[v].model} ({self.summaries[v].seconds:.1f} s, "
                         f"{self.summaries[v].completion_tokens} tokens)")
        lines.append(f"- The most likely answer each time (greedy decoding), at most "
                     f"{self.settings.get('max_tokens', '?')} tokens an answer")
        if self.judge:
            cost = self.judge.get("cost_usd")
            lines.append(f"- Judge: {self.judge.get('model')} at {self.judge.get('host')}: "
                         f"{self.judge.get('calls', 0)} calls, {self.judge.get('cached', 0)} from the cache"
                         + (f", ${cost:.4f}" if isinstance(cost, (int, float)) and cost else ""))
        lines.append(f"- {time.strftime('%Y-%m-%d %H:%M', time.localtime(self.created_at))}")
        return "\n".join(lines).rstrip() + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _about_documents(t: ModelSummary, n: int | None = None) -> str:
    """'2 questions about the documents (1 about facts, 1 that should be refused)': the probes, counted as the
    knowledge axis (facts) and the refusal figures count them."""
    whole = t.answerable + t.refusal_probes
    text = f"{_plural(whole if n is None else n, 'question')} about the documents"
    if (n is None or n == whole) and t.answerable and t.refusal_probes:
        text += f" ({t.answerable} about facts, {t.refusal_probes} that should be refused)"
    elif (n is None or n == whole) and t.refusal_probes:
        text += f" ({'it' if whole == 1 else 'all'} should be refused)"
    return text


def _figures(t: ModelSummary, b: ModelSummary | None) -> list[str]:
    """The probe figures in words, tuned (vs base)."""
    def vs(value: float | None, other: float | None, digits: int = 2) -> str:
        return f"{value:.{digits}f}" + (f" vs {other:.{digits}f}" if b is not None and other is not None else "")

    parts = []
    if t.f1 is not None:
        parts.append(f"word overlap with the reference {vs(t.f1, b.f1 if b else None)}")
        if b is None and t.key_fact_recall is not None:
            parts.append(f"key facts recalled {t.key_fact_recall:.2f}")
    if t.judge_mean is not None and (b is None or b.judge_mean is not None):
        parts.append(f"the judge's grade {vs(t.judge_mean, b.judge_mean if b else None, 1)} of 5")
    if t.refusal_probes:
        parts.append(f"refused {t.refusals_correct} of {t.refusal_probes}"
                     + (f" vs {b.refusals_correct} of {b.refusal_probes}" if b is not None else ""))
    return parts


def _headline(summaries: Mapping[str, ModelSummary], comparison: Comparison | None, metric: str,
              axes: EvalAxes | None = None) -> str:
    """The report's first sentence. When tuning damaged the model (it lost what it knew, or it invents answers with
    the documents' facts: :attr:`EvalAxes.damaged`) it says so first; only an undamaged model that beats its base
    reads as a win. Then the probe figures, in words."""
    t = summaries["tuned"]
    b = summaries.get("base") if comparison is not None else None
    figures = _figures(t, b)
    damage = axes.damage_words() if axes is not None else ""
    if damage:
        if comparison is not None and comparison.wins > comparison.losses:
            text = f"The tuned model learned the documents but {damage}."
        elif comparison is not None:
            text = f"The tuned model did not learn the documents better than the base, and {damage}."
        else:
            text = f"The tuned model {damage}."
        details = []
        if comparison is not None:
            w, lost, n = comparison.wins, comparison.losses, comparison.compared
            details.append(f"it is better than the base on {w} of {n}" + (f" and worse on {lost}" if lost else ""))
        if figures:
            details.append(("tuned vs base: " if b is not None else "") + ", ".join(figures))
        if details:
            text += f" On the {_about_documents(t)}, " + "; ".join(details) + "."
        return text
    if comparison is not None:
        w, lost, n = comparison.wins, comparison.losses, comparison.compared
        about = _about_documents(t, n)
        if w > lost:
            text = f"Tuned beats base on {w} of {about}" + (f"; base is better on {lost}" if lost else "")
        elif lost > w:
            text = f"Tuned does not beat base: better on {w} of {about}, worse on {lost}"
        elif w:
            text = f"Tuned and base are even: each is better on {w} of {about}"
        elif n:
            text = f"Tuned and base score the same on all {about}"
        else:
            text = "No question could be compared (no scores for both models)"
        text += "." + (" Tuned vs base: " + ", ".join(figures) + "." if figures else "")
    else:
        text = f"The tuned model on {_about_documents(t)}: " + ", ".join(figures) + "."
    if axes is not None and axes.tuned.retention is not None:
        c = axes.tuned.counts
        text += (f" It kept {c.get('kept', 0)} of the {_plural(c.get('retention', 0), 'general question')} the "
                 "base answered right.")
    return text


def headline_tone(report: Mapping[str, Any] | None) -> str:
    """How a saved report's headline should be shown: "damaged" (tuning damaged the model: a warning), "better"
    (the tuned model beats its base and nothing is damaged: a success), or "" (neither)."""
    if not report:
        return ""
    axes = axes_of(report)
    if axes is not None and axes.damaged:
        return "damaged"
    comparison = report.get("comparison") or {}
    wins, losses = comparison.get("wins"), comparison.get("losses")
    if isinstance(wins, int) and isinstance(losses, int) and wins > losses:
        return "better"
    return ""


def _figure(s: ModelSummary, metric: str) -> tuple[float | None, str]:
    """The figure open-book advice compares, and how to say it: judge mean, or F1 (word overlap) on answerable
    probes."""
    if metric == "judge" and s.judge_mean is not None:
        return (s.judge_mean - 1) / 4, f"a judge grade of {s.judge_mean:.1f}/5"
    if s.f1 is not None:
        return s.f1, f"a word overlap with the reference of {s.f1:.2f}"
    return s.score, f"a score of {_f(s.score)}"


def _notes(summaries: Mapping[str, ModelSummary], metric: str, margin: float) -> list[str]:
    notes = []
    tuned, _ = _figure(summaries["tuned"], metric)
    if "base_open_book" in summaries and tuned is not None:
        ob, ob_text = _figure(summaries["base_open_book"], metric)
        _, t_text = _figure(summaries["tuned"], metric)
        if ob is not None and ob - tuned >= margin:
            notes.append(
                f"Retrieval would serve better than tuning here: the base model with the source excerpt in its "
                f"prompt reaches {ob_text}, the tuned model without it {t_text}. An app that looks up the "
                "relevant passage and puts it in the prompt would answer these questions better; more or better "
                "training data, or more training steps, may close the gap.")
        elif ob is not None and max(ob, tuned) < USEFUL_SCORE:
            notes.append(f"Neither retrieval nor tuning works well yet: the base model reaches {ob_text} with the "
                         f"source excerpt in its prompt, the tuned model {t_text} without it.")
        elif ob is not None and tuned - ob >= -margin / 2:
            notes.append(f"Tuning holds up against retrieval: without the excerpt the tuned model reaches {t_text}, "
                         f"the base model with it {ob_text}.")
    if "tuned_open_book" in summaries and tuned is not None:
        tob, tob_text = _figure(summaries["tuned_open_book"], metric)
        _, t_text = _figure(summaries["tuned"], metric)
        if tob is not None and tob - tuned >= margin:
            notes.append(f"With the source excerpt in its prompt the tuned model reaches {tob_text} instead of "
                         f"{t_text}: it has not fully learned these documents yet.")
    for s in summaries.values():
        if s.errors:
            notes.append(f"{s.label}: {s.errors} of {s.probes} questions got no answer (see the errors of each question).")
        if s.judge_failures:
            notes.append(f"{s.label}: the judge could not grade {s.judge_failures} of {s.probes} answers.")
    return notes


def build_report(project: str, probes: list[Probe], results: Mapping[str, list[ProbeResult]], *,
                 models: Mapping[str, str] | None = None, metric: str | None = None,
                 settings: Mapping[str, Any] | None = None, judge: Mapping[str, Any] | None = None,
                 created_at: float | None = None, margin: float = RETRIEVAL_MARGIN,
                 axes: EvalAxes | None = None) -> EvalReport:
    """The report from per-probe results (``results[variant][i]`` answers ``probes[i]``; "tuned" is required).

    ``metric`` defaults to "judge" when any result has a judge grade, else "f1".
    """
    if "tuned" not in results:
        raise ValueError("results need the tuned model's answers")
    for variant, rs in results.items():
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}")
        if [r.probe_id for r in rs] != [p.id for p in probes]:
            raise ValueError(f"{variant}: results do not match the probes one to one")
    ordered = {v: list(results[v]) for v in VARIANTS if v in results}
    if metric is None:
        # The judge's grades rank the answers only when the judge really graded them: every answer of every model
        # has a grade (empty answers get 1 without a call, so "any grade" would also count a judge that failed).
        graded = [r for rs in ordered.values() for r in rs if r.answer.strip()]
        metric = "judge" if graded and all(r.judge_score is not None for r in graded) else "f1"
    models = dict(models or {})
    names = {v: models.get(v, LABELS[v]) for v in ordered}
    summaries = {v: summarise(v, names[v], probes, rs, metric) for v, rs in ordered.items()}
    comparison = compare("tuned", "base", probes, ordered, summaries, metric) if "base" in ordered else None
    return EvalReport(
        project=project, created_at=created_at if created_at is not None else time.time(), metric=metric,
        probes=list(probes), results=ordered, summaries=summaries,
        documents=_per_document(probes, ordered, names, metric), comparison=comparison,
        headline=_headline(summaries, comparison, metric, axes), notes=_notes(summaries, metric, margin),
        settings=dict(settings or {}), judge=dict(judge) if judge else None, axes=axes,
    )



# --- saved reports ---------------------------------------------------------------------------------------

@dataclass
class SavedReport:
    id: str  # the folder name: a timestamp
    path: Path  # the folder with report.json and report.md
    created_at: float
    headline: str
    probes: int
    models: dict[str, str]  # variant -> model name
    axes: EvalAxes | None = None  # None for a report saved before the three axes existed


def axes_of(report: Mapping[str, Any] | None) -> EvalAxes | None:
    """The three axes of a saved report (its JSON); None when it has none (saved before they existed)."""
    return EvalAxes.from_json(report.get("axes")) if report else None


def save_report(project: Project, report: EvalReport) -> Path:
    """Write ``<project>/evals/<timestamp>/report.json`` and ``report.md`` (each atomically); returns the folder.

    The JSON goes last: a folder with report.json holds a complete report.
    """
    from slowtune.fsutil import atomic_write_text

    root = project.root / REPORTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.created_at))
    folder = root / stamp
    n = 1
    while True:
        try:
            folder.mkdir()
            break
        except FileExistsError:
            n += 1
            folder = root / f"{stamp}-{n}"
    atomic_write_text(folder / "report.md", report.to_markdown())
    atomic_write_text(folder / "report.json", json.dumps(report.to_json(), ensure_ascii=False, indent=1) + "\n")
    return folder


def list_reports(project: Project) -> list[SavedReport]:
    """The saved reports of ``project``, newest first. Folders without a readable report.json are skipped."""
    root = project.root / REPORTS_DIR
    found = []
    for folder in root.iterdir() if root.is_dir() else []:
        try:
            data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        summaries = data.get("summaries") or {}
        found.append(SavedReport(
            id=folder.name, path=folder, created_at=float(data.get("created_at") or 0),
            headline=data.get("headline", ""),
            probes=len(data.get("probes") or []),
            models={v: s.get("model", "") for v, s in summaries.items() if isinstance(s, dict)},
            axes=axes_of(data),
        ))
    return sorted(found, key=lambda r: (r.created_at, r.id), reverse=True)


def latest_report(project: Project) -> tuple[dict[str, Any], str, Path] | None:
    """The newest saved evaluation report of ``project``: (its JSON, its Markdown, its folder), or None."""
    for saved in list_reports(project):
        try:
            data = json.loads((saved.path / "report.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        try:
            markdown = (saved.path / "report.md").read_text(encoding="utf-8")
        except OSError:
            markdown = ""
        return data, markdown, saved.path
    return None
