"""The deterministic scores of one answer against its reference, each 0..1.

- normalised exact match and SQuAD-style token F1 (:func:`normalise` is SQuAD's answer normalisation, with
  number separators and possessives handled);
- key-fact recall: the numbers, names and quoted terms of the reference (or, without any, its rarest words by
  the project's :class:`CorpusVocabulary`) that the answer contains;
- refusals: :func:`is_refusal` says whether an answer declines ("the documents do not cover that"); refusal
  probes are scored on it, every other probe records whether the model wrongly refused.

:func:`score_answer` applies them to one probe's answer and returns a :class:`ProbeResult`.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol


class ScoredProbe(Protocol):
    """What scoring needs of a probe (slowtune.eval.probes.Probe has it): metrics imports no probe module."""

    id: Any
    reference: str

    @property
    def is_refusal(self) -> bool: ...

__all__ = [
    "STOPWORDS",
    "CorpusVocabulary",
    "KeyFact",
    "ProbeResult",
    "corpus_vocabulary",
    "fact_found",
    "is_refusal",
    "key_fact_recall",
    "key_facts",
    "names_in",
    "normalise",
    "normalised_exact_match",
    "numbers_in",
    "score_answer",
    "token_f1",
]


# --- text normalisation ----------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'"})


def _strip_punctuation(text: str) -> str:
    return "".join(" " if unicodedata.category(ch).startswith("P") or ch in "$€£¥^+<=>|~" else ch
                   for ch in text)


def normalise(text: str) -> str:
    """SQuAD's answer normalisation: casefold, drop punctuation and articles, collapse whitespace.

    Punctuation is removed outright (not replaced by a space) between digits, so "1,200" and "1200" agree.
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_APOSTROPHES)
    text = re.sub(r"(?<=\d)[,.'](?=\d)", "", text)
    text = re.sub(r"'s\b", "", text)  # possessives: "Marlow's" and "Marlow" are one name
    text = _strip_punctuation(text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalised_exact_match(answer: str, reference: str) -> float:
    """1.0 when the answer equals the reference after :func:`normalise`, else 0.0."""
    return 1.0 if normalise(answer) == normalise(reference) else 0.0


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token F1 of the normalised texts (0..1): harmonic mean of token precision and recall."""
    a, r = normalise(answer).split(), normalise(reference).split()
    if not a or not r:
        return 1.0 if a == r else 0.0
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


# --- key facts -------------------------------------------------------------------------------------------

# Function words and common sentence openers: a capitalised one at the start of a sentence is not a name.
_STOPWORD_TEXT = """
a about above after again against all also although am an and any are as at be because been before being
below between both but by can could did do does doing down during each either else even ever every few for
from further had has have having he her here hers herself him himself his how however i if in into is it its
itself just least less many may me might more most much must my myself neither never no nor not now of off
often on once one only or other our ours ourselves out over own per perhaps quite rather same shall she
should since so some still such than that the their theirs them themselves then there therefore these they
this those though through thus to too under until up upon us very was we well were what when where whether
which while who whom whose why will with within without would yes yet you your yours yourself yourselves
according after again already always another anyone anything around because besides despite during each
everyone everything first here instead later like meanwhile moreover nevertheless next nobody none nothing
otherwise overall please second since someone something sometimes soon today together tomorrow yesterday
"""
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

# Lower-case words that may sit inside a name ("Bank of England", "Leonardo da Vinci").
_NAME_CONNECTORS = frozenset({"of", "de", "da", "del", "der", "den", "di", "du", "la", "le", "van", "von", "y"})

_UNIT_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
               "sixteen seventeen eighteen nineteen")
_TEN_WORDS = "twenty thirty forty fifty sixty seventy eighty ninety"
_UNITS = {w: i for i, w in enumerate(_UNIT_WORDS.split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate(_TEN_WORDS.split())}
_SCALES = {"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}

_DIGITS_RE = re.compile(
    r"(?<![\w.])(?:\d{1,3}(?:[,\u00a0\u202f\u2009']\d{3})+|\d+)(?:\.\d+)?(?![\d])"
)
_WORD_RE = re.compile(r"[^\W\d_][\w'’\-]*")
_SENTENCE_END_RE = re.compile(r"[.!?:;]+[\"'”’)\]]*\s+|\n+")
_QUOTED_RE = re.compile(
    r"\"([^\"\n]{1,80})\"|“([^”\n]{1,80})”|«([^»\n]{1,80})»|(?<![\w'])'([^'\n]{1,60})'(?![\w])"
)


@dataclass(frozen=True)
class KeyFact:
    """Something a correct answer must contain: a number, a name, a quoted term, or a rare word."""

    kind: str  # number, name, quote, word
    text: str  # as written in the reference
    value: float | None = None  # numbers only

    def key(self) -> tuple[str, Any]:
        return ("number", self.value) if self.kind == "number" else ("text", tuple(_fact_tokens(self.text)))


@dataclass
class CorpusVocabulary:
    """Word statistics of the project's documents: what makes a word rare, and which words are not names."""

    document_frequency: dict[str, int]  # casefolded word -> number of chunks containing it
    chunks: int
    lowercase: frozenset[str]  # words seen in lower case somewhere: common words, not names

    def rarity(self, word: str) -> float:
        return math.log((self.chunks + 1) / (self.document_frequency.get(word, 0) + 1))


def corpus_vocabulary(texts: Iterable[str]) -> CorpusVocabulary:
    """Word statistics over ``texts`` (the project's chunks)."""
    df: Counter[str] = Counter()
    lowercase: set[str] = set()
    n = 0
    for text in texts:
        n += 1
        words = _WORD_RE.findall(text.translate(_APOSTROPHES))
        df.update({w.casefold() for w in words})
        lowercase.update(w for w in words if w.islower())
    return CorpusVocabulary(dict(df), n, frozenset(lowercase))


def _number_value(text: str) -> float:
    return float(re.sub(r"[,\u00a0\u202f\u2009']", "", text))


def _word_numbers(text: str) -> list[tuple[float, str]]:
    """Numbers spelled out ("forty-two", "two hundred and seventeen"), as (value, the words).

    A number ends at punctuation and where its words stop composing: "five and eight" and "one, two, three" are
    several numbers, "twenty one" and "two hundred and five" one."""
    found: list[tuple[float, str]] = []
    total = group = 0
    words: list[str] = []

    def emit() -> None:
        nonlocal total, group, words
        if words:
            while words and words[-1] == "and":
                words.pop()
            found.append((float(total + group), " ".join(words)))
        total = group = 0
        words = []

    for token in re.findall(r"[a-z]+|[^a-z\s]", text.casefold().replace("-", " ")):
        last = words[-1] if words else None
        if token in _UNITS:
            if last in _UNITS:  # "five five", "eight nine": two numbers
                emit()
            group += _UNITS[token]
        elif token in _TENS:
            if last in _UNITS or last in _TENS:
                emit()
            group += _TENS[token]
        elif token == "hundred" and words and last != "and":
            group = max(group, 1) * 100
        elif token in _SCALES and token != "hundred" and words and last != "and":
            total += max(group, 1) * _SCALES[token]
            group = 0
        elif token == "and" and last in _SCALES:  # "two hundred and five", not "five and eight"
            words.append(token)
            continue
        else:
            emit()
            continue
        words.append(token)
    emit()
    return found


def numbers_in(text: str) -> list[tuple[float, str]]:
    out = [(_number_value(m.group(0)), m.group(0)) for m in _DIGITS_RE.finditer(text)]
    return out + _word_numbers(text)


def _stem(word: str) -> str:
    """A very light stemmer, enough for "varieties"/"variety" and "floods"/"flood" to meet."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _fact_tokens(text: str) -> list[str]:
    return [_stem(t) for t in normalise(text).split()]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END_RE.split(text) if s.strip()]


def names_in(text: str, vocabulary: CorpusVocabulary | None) -> list[str]:
    """Runs of capitalised words, minus common words that are capitalised only because a sentence starts."""
    names = []
    text = text.translate(_APOSTROPHES)
    lowercase = {w for w in _WORD_RE.findall(text) if w.islower()}
    for sentence in _sentences(text):
        tokens = _WORD_RE.findall(sentence)
        i = 0
        while i < len(tokens):
            if not tokens[i][0].isupper():
                i += 1
                continue
            start, run = i, [tokens[i]]
            i += 1
            while i < len(tokens):
                if tokens[i][0].isupper():
                    run.append(tokens[i])
                    i += 1
                elif tokens[i] in _NAME_CONNECTORS and i + 1 < len(tokens) and tokens[i + 1][0].isupper():
                    run += tokens[i:i + 2]
                    i += 2
                else:
                    break
            if start == 0:
                # The sentence's first word is capitalised anyway. Alone, it is a name only when the corpus never
                # writes it in lower case ("Paris", not "Dough"); without a corpus, it is not trusted at all.
                # At the head of a longer run, function words go ("The Greywater lighthouse").
                # A possessive ("Marlow's bakery") is taken as a name.
                first = run[0].casefold()
                bare = first.removesuffix("'s")
                common = bare in STOPWORDS or first in lowercase or (
                    first in vocabulary.lowercase if vocabulary is not None else len(run) == 1 and bare == first)
                if common:
                    run = run[1:]
            run = [w for w in run if w != "I"]
            while run and run[-1] in _NAME_CONNECTORS:
                run.pop()
            if run:  # mid-sentence, a capital means a name, even for "May" or "Will"
                names.append(" ".join(run).removesuffix("'s"))
    return names


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g).strip() for m in _QUOTED_RE.finditer(text)]


def _content_words(text: str) -> list[str]:
    words = [w.casefold().removesuffix("'s") for w in _WORD_RE.findall(text.translate(_APOSTROPHES))]
    return [w for w in words if len(w) >= 3 and w not in STOPWORDS and w not in _UNITS and w not in _TENS]


def key_facts(reference: str, *, vocabulary: CorpusVocabulary | None = None, max_words: int = 3) -> list[KeyFact]:
    """The facts a correct answer must repeat: numbers (years, decimals, "1,200", "forty-two"), capitalised
    names and phrases, and quoted terms. A reference with none of these falls back to its rarest content
    words (by document frequency in ``vocabulary``; without one, the longest words)."""
    facts: list[KeyFact] = []
    seen: set[tuple[str, Any]] = set()

    def add(fact: KeyFact) -> None:
        key = fact.key()
        if key not in seen and (fact.kind == "number" or key[1]):
            seen.add(key)
            facts.append(fact)

    for value, text in numbers_in(reference):
        if text != "one":  # "one of the ..." is rarely a fact
            add(KeyFact("number", text, value))
    for term in _quoted(reference):
        add(KeyFact("quote", term))
    for name in names_in(reference, vocabulary):
        add(KeyFact("name", name))
    if facts:
        return facts
    words = sorted(set(_content_words(reference)),
                   key=lambda w: (-(vocabulary.rarity(w) if vocabulary else 0.0), -len(w), w))
    for word in words[:max_words]:
        add(KeyFact("word", word))
    return facts


def _contains(haystack: list[str], needle: list[str]) -> bool:
    n = len(needle)
    return n > 0 and any(haystack[i:i + n] == needle for i in range(len(haystack) - n + 1))


def fact_found(fact: KeyFact, answer: str) -> bool:
    """Whether ``answer`` states ``fact``: numbers compared by value, text case- and plural-insensitively."""
    if fact.kind == "number":
        assert fact.value is not None
        return any(math.isclose(v, fact.value, rel_tol=1e-9, abs_tol=1e-9) for v, _ in numbers_in(answer))
    return _contains(_fact_tokens(answer), _fact_tokens(fact.text))


def key_fact_recall(answer: str, reference: str, *, vocabulary: CorpusVocabulary | None = None) -> float:
    """Share (0..1) of the reference's :func:`key_facts` that the answer contains. A reference with nothing
    to recall (no facts, no content words) gives 1.0 when the answer is not empty."""
    facts = key_facts(reference, vocabulary=vocabulary)
    if not facts:
        return 1.0 if answer.strip() else 0.0
    return sum(fact_found(f, answer) for f in facts) / len(facts)


def new_fact_recall(answer: str, question: str, reference: str, *,
                    vocabulary: CorpusVocabulary | None = None, max_words: int = 3) -> float:
    """:func:`key_fact_recall` over what the reference adds to the question: its key facts that the question does
    not already state, or when the question states them all, its rarest content words that the question lacks.
    Echoing the question's own names ("The Sorrelwyn Society wears violet hats") earns nothing."""
    facts = [f for f in key_facts(reference, vocabulary=vocabulary) if not fact_found(f, question)]
    if not facts:
        asked = set(_content_words(question))
        words = sorted({w for w in _content_words(reference) if w not in asked},
                       key=lambda w: (-(vocabulary.rarity(w) if vocabulary else 0.0), -len(w), w))
        facts = [KeyFact("word", w) for w in words[:max_words]]
    if not facts:
        return 1.0 if answer.strip() else 0.0
    return sum(fact_found(f, answer) for f in facts) / len(facts)


# --- refusals --------------------------------------------------------------------------------------------

_DOCS = (r"(?:(?:the|these|those|this|that|your|my|our|any|provided|available|given|uploaded|supplied)\s+)*"
         r"(?:documents?|docs|texts?|sources?|context|materials?|notes|excerpts?|passages?|documentation|"
         r"knowledge base)")
_DOC_VERBS = (r"(?:cover|mention|say|state|specify|contain|include|discuss|address|describe|provide|tell|give|"
              r"explain|answer|indicate|detail|talk|offer|list|reveal|show)")
# Words allowed between "the documents" and its negated verb ("the documents you provided do not say").
_DOC_FILLER = r"(?:\s+(?:provided|given|available|here|i|you|we|have|had|shared|uploaded|at|hand|in|question|so|far))*"
# Negated auxiliaries, spelled out: "can't" is "ca" + "n't", "won't" is "wo" + "n't".
_NOT = (r"(?:don't|doesn't|didn't|can't|cannot|couldn't|won't|wouldn't|"
        r"(?:do|does|did|can|could|will|would)\s+not)")

_REFUSAL_PATTERNS = [re.compile(p) for p in (
    # "The documents don't cover that", "the notes you gave me do not say"
    rf"\b{_DOCS}{_DOC_FILLER}\s+{_NOT}\s+(?:\w+\s+)?{_DOC_VERBS}",
    # "that is not in the documents." (the documents end the clause, so "not used in the documents' examples" is not)
    rf"(?:\b(?:not|nothing|never)\b|n't\b)[^.?!]{{0,40}}?\b(?:in|by|from|within|among|inside)\s+{_DOCS}"
    r"\s*(?:[.,;!?]|$)",
    # "I'm not sure" (but not "I'm not sure, but I think it is 7:40"), "we are unable to"
    r"\b(?:i|we)(?:'m|'re|\s+am|\s+are)\s+(?:not\s+(?:sure|certain|aware)|unable|not able)\b(?![^.?!]*\bbut\b)",
    # "I can't say", "we don't know", "I cannot find that" (but not "I don't know who, but it was John Smith")
    rf"\b(?:i|we)\s+(?:really\s+|simply\s+|just\s+)?{_NOT}\s+(?:\w+\s+){{0,2}}?"
    r"(?:know|say|answer|tell|find|determine|confirm|locate|see|help|access|information|details)\b"
    r"(?![^.?!]*\bbut\b)",
    # "I am not familiar with", "I have never heard of it", "there is no such ship", "it does not appear to exist"
    r"\b(?:i|we)(?:'m|'re|\s+am|\s+are)\s+not\s+familiar\s+with\b(?![^.?!]*\bbut\b)",
    r"\b(?:i|we)(?:'ve|\s+have)\s+never\s+heard\s+of\b(?![^.?!]*\bbut\b)",
    r"\bthere(?:'s|\s+is|\s+are)\s+no\s+such\b",  # ("there is no record of rain in 1901" answers)
    r"\b(?:does|do)(?:n't|\s+not)\s+(?:appear|seem)\s+to\s+exist\b",
    r"\b(?:seems|appears)\s+to\s+be\s+(?:fictional|made\s+up|fictitious)\b",
    r"\b(?:i|we)\s+(?:have|has)\s+(?:no|not\s+(?:got\s+)?(?:any|enough))\s+(?:\w+\s+)?"
    r"(?:information|details|data|knowledge|record|idea|way)\b",
    # "No information is available about that", "there is no mention of it"
    r"\bno\s+(?:information|mention|details?|data|indication|reference)s?\b"
    r"(?:\s+(?:is|was)\s+(?:available|provided|given)|\s+(?:about|on|regarding|of)\s+(?:that|this|it|them)\b)",
    r"\bthere(?:'s|\s+is)\s+no\s+(?:mention|information)\b",
    # "It isn't mentioned", "that is not covered", "that information isn't available"
    r"\b(?:is|was|are|were)(?:n't|\s+not)\s+(?:mentioned|specified|stated|covered|described|discussed|addressed)"
    r"\b(?!\s+by\b)",
    r"\b(?:information|details|that|this|it)\s+(?:is|was)(?:n't|\s+not)\s+available\b",
    r"\b(?:not enough|insufficient|no relevant|too little) (?:information|detail|details|data|context)\b",
    r"\b(?:beyond|outside)\s+(?:of\s+)?(?:the\s+)?scope\b",
    r"\bno idea\b",
    r"\b(?:cannot|can't|can\s+not) be (?:determined|answered|found|confirmed)\b",
    rf"\b{_DOCS}\s+(?:is|are)\s+(?:silent|unclear)\s+(?:on|about)\b",
    rf"\bnothing\s+(?:in|from)\s+{_DOCS}\s+{_DOC_VERBS}",
)]


def is_refusal(answer: str) -> bool:
    """Whether the answer says it does not know, or that the documents do not cover the question.

    A phrase-level check, not a negation check: "the orchard does not use pesticides" answers the question.
    """
    text = " ".join(unicodedata.normalize("NFKC", answer).casefold().translate(_APOSTROPHES).split())
    return any(p.search(text) for p in _REFUSAL_PATTERNS)


# --- one answer's scores ---------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """One model's answer to one probe, with its scores. Scores that do not apply are None: exact/F1/key facts
    and false_refusal on refusal probes, refusal_correct on the others."""

    probe_id: int
    variant: str
    answer: str
    refused: bool = False
    exact: float | None = None
    f1: float | None = None
    key_fact_recall: float | None = None
    refusal_correct: float | None = None
    false_refusal: float | None = None
    judge_score: int | None = None  # 1..5
    judge_rationale: str | None = None
    judge_error: str | None = None
    error: str | None = None  # the model could not answer (prompt too long for its context, ...)
    completion_tokens: int = 0
    seconds: float = 0.0
    finish_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProbeResult:
        return cls(**dict(data))


def score_answer(probe: ScoredProbe, answer: str, variant: str, *,
                 vocabulary: CorpusVocabulary | None = None) -> ProbeResult:
    """The deterministic scores of ``answer`` to ``probe``."""
    refused = is_refusal(answer)
    result = ProbeResult(probe_id=probe.id, variant=variant, answer=answer, refused=refused)
    if probe.is_refusal:
        result.refusal_correct = 1.0 if refused else 0.0
    else:
        result.exact = normalised_exact_match(answer, probe.reference)
        result.f1 = token_f1(answer, probe.reference)
        result.key_fact_recall = key_fact_recall(answer, probe.reference, vocabulary=vocabulary)
        result.false_refusal = 1.0 if refused else 0.0
    return result

