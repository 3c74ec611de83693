"""The three closed-book axes of a tuned model, against its base: knowledge, retention and leakage.

- **Knowledge**: held-out rephrasings of the documents' facts (the project's probes, or a held-out slice of the
  user's own data), scored by key-fact recall (:mod:`slowtune.scoring`).
- **Retention**: general questions with reference answers and key facts, shipped in ``resources/quality/``
  (``general.jsonl``) plus the user's own (``general-questions.jsonl`` in the config folder). Of the questions the
  base answers right, retention is the share the tuned model still answers right.
- **Leakage**: questions about entities the documents do not mention: near-miss ones the teacher wrote for the
  project (held out, ``qtype`` ``near_miss``) and unrelated unknown ones shipped in ``unknown.jsonl``. An answer leaks
  when it asserts one of the documents' specific names or numbers that the question did not contain; refusing is
  right.

The replay prompts (``replay.jsonl``: general prompts the base model answers itself, mixed into training so that
the tuned model keeps the base's behaviour) are a separate set: :func:`check_disjoint` holds the two apart.

Formats (JSON Lines, UTF-8):
- ``general.jsonl``: ``{"id", "category", "question", "answer", "facts": [[alternative, ...], ...]}``; a correct answer
  contains one alternative of every group (numbers compared by value, words case- and plural-insensitively); an
  optional ``"pattern"`` is a regular expression the answer must match as well (formatting instructions).
- ``replay.jsonl``: ``{"id", "category", "prompt"}``.
- ``unknown.jsonl``: ``{"id", "question"}``.

Nothing here imports a heavy library: the training loop (which generates the answers) and the evaluation both use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.resources import resource_path
from slowtune.scoring import (
    STOPWORDS,
    CorpusVocabulary,
    KeyFact,
    corpus_vocabulary,
    fact_found,
    is_refusal,
    key_fact_recall,
    names_in,
    normalise,
    numbers_in,
)

__all__ = [
    "AXES",
    "LEAKAGE_QTYPE",
    "USER_GENERAL_NAME",
    "AxisScores",
    "CorpusTerms",
    "QualityError",
    "QualityItem",
    "check_disjoint",
    "combined_score",
    "corpus_terms",
    "general_items",
    "is_correct",
    "knowledge_item",
    "leaked_terms",
    "load_items",
    "replay_prompts",
    "spread",
    "unknown_items",
]

AXES = ("knowledge", "retention", "leakage")
LEAKAGE_QTYPE = "near_miss"  # the teacher's held-out questions about near-miss entities (dataset rows, split probe)
USER_GENERAL_NAME = "general-questions.jsonl"  # the user's own retention questions, in the config folder
RETENTION_TARGET = 0.95  # below this share of what the base knew, the model is losing itself
LEAKAGE_LIMIT = 0.05  # above this share of unknown-entity answers asserting the documents' facts, it invents


class QualityError(ValueError):
    """A quality set cannot be read; the message names the file and the line."""


@dataclass(frozen=True)
class QualityItem:
    """One closed-book question of an axis, with what a right answer contains."""

    axis: str  # knowledge, retention, leakage
    id: str
    question: str
    reference: str = ""  # the reference answer (knowledge, retention); empty for leakage
    facts: tuple[tuple[str, ...], ...] = ()  # every group must be found, any alternative of a group (retention)
    pattern: str | None = None  # a regular expression the answer must match as well (retention)
    category: str = ""  # knowledge, arithmetic, instructions, formatting (retention); near_miss, unknown (leakage)
    source: str = "shipped"  # shipped, user, project, held-out data
    system: str | None = None

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, {"role": "user", "content": self.question}]

    def to_json(self) -> dict[str, Any]:
        return {"axis": self.axis, "id": self.id, "question": self.question, "reference": self.reference,
                "facts": [list(g) for g in self.facts], "pattern": self.pattern, "category": self.category,
                "source": self.source}




def load_items(path: Path, axis: str, *, source: str) -> list[QualityItem]:
    """Read a quality set (see the module docstring); a bad line raises :class:`QualityError` naming it."""
    items: list[QualityItem] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QualityError(f"{path}: cannot be read ({exc})") from None
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise QualityError(f"{where}: not JSON ({exc.args[0]})") from None
        if not isinstance(data, dict):
            raise QualityError(f"{where}: expected a JSON object")
        key = "prompt" if axis == "replay" else "question"
        question = data.get(key)
        if not isinstance(question, str) or not question.strip():
            raise QualityError(f"{where}: {key!r} must be a non-empty string")
        item_id = str(data.get("id") or f"{path.stem}-{number}")
        if item_id in seen:
            raise QualityError(f"{where}: the id {item_id!r} is used twice")
        seen.add(item_id)
        facts: list[tuple[str, ...]] = []
        if axis == "retention":
            raw = data.get("facts")
            if not isinstance(raw, list) or not raw:
                raise QualityError(f"{where}: 'facts' must be a list of groups of alternatives, e.g. [[\"Paris\"]]")
            for group in raw:
                group = [group] if isinstance(group, str) else group
                if not isinstance(group, list) or not group or not all(isinstance(a, str) and a.strip()
                                                                       for a in group):
                    raise QualityError(f"{where}: each group of 'facts' must be a list of non-empty strings")
                if empty := [a for a in group if not normalise(a)]:
                    raise QualityError(f"{where}: the fact {empty[0]!r} is only an article or punctuation, which no "
                                       "answer can be checked for")
                facts.append(tuple(group))
        pattern = data.get("pattern")
        if pattern is not None:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise QualityError(f"{where}: 'pattern' is not a regular expression ({exc})") from None
        answer = data.get("answer", "")
        items.append(QualityItem(axis=axis, id=item_id, question=question.strip(),
                                 reference=answer if isinstance(answer, str) else "", facts=tuple(facts),
                                 pattern=pattern, category=str(data.get("category") or ""), source=source))
    return items


def general_items(*, user_file: Path | None = None, include_user: bool = True) -> list[QualityItem]:
    """The retention questions: the shipped ones, then the user's own (``user_file``, by default
    ``general-questions.jsonl`` in the config folder, when it exists)."""
    items = load_items(resource_path("quality", "general.jsonl"), "retention", source="shipped")
    if include_user:
        if user_file is None:
            from slowtune.paths import config_dir

            user_file = config_dir() / USER_GENERAL_NAME
        if user_file.exists():
            items += load_items(user_file, "retention", source="user")
    return items


def unknown_items() -> list[QualityItem]:
    """The shipped questions about unrelated unknown entities (leakage)."""
    return [QualityItem(axis="leakage", id=i.id, question=i.question, category="unknown", source="shipped")
            for i in load_items(resource_path("quality", "unknown.jsonl"), "leakage", source="shipped")]


def replay_prompts() -> list[QualityItem]:
    """The shipped general prompts the base model answers for replay (never retention questions)."""
    return load_items(resource_path("quality", "replay.jsonl"), "replay", source="shipped")


def spread(items: Sequence[QualityItem], limit: int) -> list[QualityItem]:
    """``limit`` items, each category in proportion to its size, taken evenly through it, interleaved so that any
    leading part of the result keeps the proportions (the retention slice is the first of those the base answers
    right; replay uses the first prompts it needs, so a replay cut short by its time budget keeps them too).
    Deterministic. A category of the general set is as likely to be damaged as its share says: the world facts, the
    largest part, are the ones a model taught new names forgets first."""
    by: dict[str, list[QualityItem]] = {}
    for item in items:
        by.setdefault(item.category, []).append(item)
    if len(items) <= limit:
        return list(items)
    total = len(items)
    exact = {c: limit * len(q) / total for c, q in by.items()}
    quota = {c: max(1, int(x)) for c, x in exact.items()}
    for c in sorted(by, key=lambda c: exact[c] - int(exact[c]), reverse=True):
        if sum(quota.values()) >= limit:
            break
        quota[c] += 1
    while sum(quota.values()) > limit:  # the minimum of one each overran: take from the largest
        quota[max(quota, key=quota.get)] -= 1  # type: ignore[arg-type]
    placed: list[tuple[float, int, QualityItem]] = []
    for order, (c, q) in enumerate(by.items()):
        k = quota[c]
        for j in range(k):
            placed.append(((j + 0.5) / k, order, q[int(j * len(q) / k)]))
    return [item for _, _, item in sorted(placed, key=lambda t: (t[0], t[1]))]


def check_disjoint(replay: Sequence[QualityItem], held_out: Sequence[QualityItem]) -> list[str]:
    """The replay prompts that are also held-out questions (after normalisation): must be none."""
    held = {normalise(i.question) for i in held_out}
    return [i.id for i in replay if normalise(i.question) in held]


def knowledge_item(item_id: str, question: str, reference: str, *, source: str = "project",
                   system: str | None = None, facts: Sequence[Sequence[str]] = ()) -> QualityItem:
    """A held-out question about the documents; without ``facts``, the key facts of ``reference`` are checked."""
    return QualityItem(axis="knowledge", id=item_id, question=question, reference=reference,
                       facts=tuple(tuple(g) for g in facts), category="knowledge", source=source, system=system)


# --- scoring -------------------------------------------------------------------------------------------------

def _fact(text: str) -> KeyFact:
    numbers = numbers_in(text)
    if len(numbers) == 1 and normalise(numbers[0][1]) == normalise(text):
        return KeyFact("number", text, numbers[0][0])
    return KeyFact("word", text)


def is_correct(item: QualityItem, answer: str, *, vocabulary: CorpusVocabulary | None = None) -> bool:
    """Whether ``answer`` answers ``item`` right: the item's fact groups (and pattern) are all there; for an item
    without listed facts (a project's probe), the key facts of its reference are all there (key-fact recall 1.0)."""
    if not answer.strip():
        return False
    if not item.facts:  # a probe without listed facts: the key facts of its reference answer
        return key_fact_recall(answer, item.reference, vocabulary=vocabulary) >= 1.0
    found = all(any(fact_found(_fact(alt), answer) for alt in group) for group in item.facts)
    if found and item.pattern:
        found = re.search(item.pattern, answer) is not None
    return found


@dataclass
class CorpusTerms:
    """The documents' specific names and numbers: what a leaking answer asserts."""

    names: frozenset[str]  # normalised
    numbers: frozenset[float]
    vocabulary: CorpusVocabulary | None = None
    shown: dict[str, str] = field(default_factory=dict)  # normalised -> as written

    def __len__(self) -> int:
        return len(self.names) + len(self.numbers)

    def with_terms(self, extra: Iterable[str]) -> CorpusTerms:
        """These terms plus ``extra`` ones (words a name search does not find: "violet", "amber")."""
        names, numbers, shown = set(self.names), set(self.numbers), dict(self.shown)
        for term in extra:
            values = numbers_in(term)
            if len(values) == 1 and normalise(values[0][1]) == normalise(term):
                numbers.add(values[0][0])
                shown.setdefault(str(values[0][0]), term)
            elif normalise(term):
                names.add(normalise(term))
                shown.setdefault(normalise(term), term)
        return CorpusTerms(frozenset(names), frozenset(numbers), self.vocabulary, shown)


def corpus_terms(texts: Iterable[str]) -> CorpusTerms:
    """The names (runs of capitalised words, and their uncommon words) and the numbers of at least 10 in ``texts``
    (the project's chunks)."""
    texts = list(texts)
    vocabulary = corpus_vocabulary(texts)
    names: set[str] = set()
    numbers: set[float] = set()
    shown: dict[str, str] = {}
    for text in texts:
        for name in names_in(text, vocabulary):
            parts = [name] + [w for w in name.split() if len(w) >= 4 and w.casefold() not in STOPWORDS
                              and w.casefold() not in vocabulary.lowercase]
            for part in parts:
                key = normalise(part)
                if key and key not in STOPWORDS:
                    names.add(key)
                    shown.setdefault(key, part)
        for value, written in numbers_in(text):
            if abs(value) >= 10:
                numbers.add(value)
                shown.setdefault(str(value), written)
    return CorpusTerms(frozenset(names), frozenset(numbers), vocabulary, shown)


def leaked_terms(answer: str, question: str, terms: CorpusTerms) -> list[str]:
    """The documents' names and numbers that ``answer`` asserts and ``question`` did not contain; none for a
    refusal."""
    if not answer.strip() or is_refusal(answer):
        return []
    found: list[str] = []
    for key in sorted(terms.names):
        fact = KeyFact("name", key)
        if fact_found(fact, answer) and not fact_found(fact, question):
            found.append(terms.shown.get(key, key))
    asked = {v for v, _ in numbers_in(question)}
    for value, written in numbers_in(answer):
        if value in terms.numbers and value not in asked and written not in found:
            found.append(written)
    return found


def combined_score(knowledge: float | None, retention: float | None, leakage: float | None) -> float | None:
    """One figure to pick a checkpoint by: the mean of knowledge, retention and 1 - leakage, over the axes that
    were scored."""
    parts = [v for v in (knowledge, retention, None if leakage is None else 1.0 - leakage) if v is not None]
    return sum(parts) / len(parts) if parts else None


@dataclass
class AxisScores:
    """One scoring of the three axes: each a share in 0..1 (None: the axis had no questions)."""

    knowledge: float | None = None
    retention: float | None = None
    leakage: float | None = None
    counts: dict[str, int] = field(default_factory=dict)  # questions scored on each axis

    @property
    def combined(self) -> float | None:
        return combined_score(self.knowledge, self.retention, self.leakage)

    def to_json(self) -> dict[str, Any]:
        return {"knowledge": self.knowledge, "retention": self.retention, "leakage": self.leakage,
                "score": self.combined, "counts": dict(self.counts)}
