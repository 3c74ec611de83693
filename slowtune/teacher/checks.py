"""Quality gates of the generation pipeline: evidence quotes, refusals and duplicate questions.

Three checks, each cheap enough to run on every item the teacher writes:

- ``quote_check``: the teacher returns a verbatim "evidence quote" with each answer; the quote must really
  occur in the chunk (allowing for whitespace, quote marks, case, a dropped word, PDF hyphenation). A quote
  that is not there is the cheapest sign of an invented answer.
- ``refusal_check``: a "not in the documents" item teaches the model to refuse, so it is wrong when some other
  document does answer the question. A keyword search of the whole corpus (``CorpusIndex``) decides.
- ``Deduplicator``: questions that are the same up to punctuation, case, plurals or a small function word are
  dropped, so the dataset does not repeat itself (MinHash LSH for candidates, exact Jaccard to confirm).

All of them compare text through ``normalise``, so typographic differences between a PDF and what a model
types never matter.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rapidfuzz import fuzz
from rapidfuzz.distance import LCSseq

# Typographic variants that models and PDF extractors swap freely. NFKC already folds ligatures, full-width
# forms and the ellipsis character ("…" → "..."); these are the ones it leaves alone.
_TYPOGRAPHY = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u0060\u00b4", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb\u301d\u301e", '"'),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d", "-"),
        # Soft hyphens and zero-width characters are invisible in a PDF but break string matching.
        **dict.fromkeys("\u00ad\u200b\u200c\u200d\u2060\ufeff", ""),
    }
)


def normalise(text: str) -> str:
    """Text as compared by every check: NFKC, casefolded, one kind of quote/dash/ellipsis, single spaces."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_TYPOGRAPHY)
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------------------
# Evidence quotes

# A word split at a line end by PDF extraction ("infor-\nmation") reads "infor- mation" once whitespace is
# collapsed. Joining "x- y" on both sides makes the quote match whichever way the teacher copied it.
_HYPHEN_BREAK = re.compile(r"(\w)- (\w)")


def _quote_form(text: str) -> str:
    return _HYPHEN_BREAK.sub(r"\1\2", normalise(text))


@dataclass(frozen=True)
class QuoteCheck:
    ok: bool
    score: float  # 0..1: how well the best-matching stretch of the chunk matches the quote
    reason: str


def _best_match(quote: str, chunk: str) -> float:
    if quote in chunk:
        return 1.0
    if len(quote) > len(chunk):
        # partial_ratio would look for the chunk inside the quote. For a quote longer than its chunk, score
        # the share of the quote that the chunk accounts for (their longest common subsequence), as
        # partial_ratio does for a window of the chunk: invented text added to a copy of the chunk counts
        # against it.
        return LCSseq.similarity(quote, chunk) / len(quote)
    return fuzz.partial_ratio_alignment(quote, chunk).score / 100.0


def quote_check(quote: str, chunk_text: str, *, threshold: float = 0.85, min_chars: int = 12) -> QuoteCheck:
    """Whether ``quote`` occurs in ``chunk_text``, allowing small differences (score >= ``threshold``).

    A quote elided with "..." (a habit of models quoting a long passage) is checked part by part: every part
    of at least ``min_chars`` characters must be in the chunk, and the score is that of the worst part.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if min_chars < 1:
        raise ValueError(f"min_chars must be at least 1, got {min_chars}")
    q = _quote_form(quote)
    c = _quote_form(chunk_text)
    if not q.strip(". "):
        return QuoteCheck(False, 0.0, "no evidence quote was given")
    if not c:
        return QuoteCheck(False, 0.0, "the chunk is empty, so the evidence quote cannot be in it")
    parts = [p.strip() for p in q.split("...")]
    parts = [p for p in parts if len(p) >= min_chars]
    if not parts:
        return QuoteCheck(
            False, 0.0,
            f"evidence quote is too short to check ({len(q)} characters; at least {min_chars} needed)",
        )
    score = min(_best_match(p, c) for p in parts)
    if score >= threshold:
        how = "verbatim" if score == 1.0 else f"{score:.0%} match"
        return QuoteCheck(True, score, f"evidence quote found in the chunk ({how})")
    if len(parts) == 1 and len(parts[0]) > len(c):
        return QuoteCheck(
            False, score,
            f"evidence quote is longer than the chunk ({len(parts[0])} vs {len(c)} characters) and does not "
            f"match it (best match {score:.0%})",
        )
    return QuoteCheck(False, score, f"evidence quote not found in the chunk (best match {score:.0%})")


# --------------------------------------------------------------------------------------------------------
# Words: tokens, simple plural/possessive folding, stopwords

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def _word_key(word: str) -> str:
    """Fold possessives and regular plurals ("warranty's", "warranties" → "warranty"; "boxes" → "box").

    Deliberately crude (no dictionary): it only has to map a word and its plural to the same key, and it is
    applied to the corpus and to the search terms alike, so an odd key ("series" → "sery") still matches.
    """
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _keys(text: str) -> list[str]:
    """Word keys of ``text`` in order (normalised, punctuation dropped, plurals folded)."""
    return [_word_key(w) for w in _WORD.findall(normalise(text))]


def _wordset(words: str) -> frozenset[str]:
    # Word lists are written as text: a list literal of 200 quoted words would be unreadable.
    return frozenset(words.split())


# Function words: they say nothing about what a question is about.
_FUNCTION_WORDS = _wordset(
    """a an the this that these those there here of on in into onto at by for from to with without within
    about above below over under between among through during before after since until than then as so such
    and or but nor if whether because while also too very just only even still yet again more most less least
    other another same each every any some all both either neither few many much several own
    is are was were be been being am do does did done doing has have had having can could may might must
    shall should will would ought i me my mine myself you your yours yourself we us our ours ourselves he him
    his himself she her hers herself it its itself they them their theirs themselves one ones someone
    something anyone anything everyone everything get gets got getting make makes made use used using way
    it's that's there's don't doesn't didn't isn't aren't wasn't weren't can't couldn't
    won't wouldn't shouldn't hasn't haven't hadn't"""
)
# Question words and negations: no topic, but they change what is asked ("when" vs "where", "not").
_QUESTION_WORDS = _wordset("what which who whom whose when where why how")
_NEGATIONS = _wordset("no not never none nothing nobody nowhere")
# Words a question uses to talk about the documents themselves rather than their subject.
_META_WORDS = _wordset(
    """document documents doc docs text texts file files page pages section sections chapter chapters passage
    excerpt source sources according say says said mention mentions mentioned state states stated describe
    describes described explain explains explained tell tells told give gives given provide provides
    provided information detail details please"""
)
# Words never searched for when a refusal is verified.
_STOPWORDS = frozenset(_word_key(w) for w in _FUNCTION_WORDS | _QUESTION_WORDS | _NEGATIONS | _META_WORDS)
# Words left out of the de-duplication shingles (question words and negations stay: they change the question).
_DEDUP_IGNORED = frozenset(_word_key(w) for w in _FUNCTION_WORDS | _META_WORDS)


# --------------------------------------------------------------------------------------------------------
# Refusals: a keyword index of the whole corpus


class CorpusIndex:
    """Which chunks contain which words, for refusal checks over the whole corpus.

    Built from ``(chunk_id, document_title, text)`` triples. An inverted index (word key → sorted chunk
    numbers) answers "which chunks have all these words" by intersecting the shortest lists first, and gives
    each word's document frequency for free. The postings of all words live in one uint32 array (a few
    million entries for ~10k chunks, ~4 bytes each) rather than a set per chunk, which would take ~100x the
    memory. Phrases are then checked on the word sequence of only those chunks that have all the words, so
    the chunk texts are kept (referenced, not copied).
    """

    def __init__(self, chunks: Iterable[tuple[str, str, str]]) -> None:
        import numpy as np

        self._ids: list[str] = []
        self._titles: list[str] = []
        self._texts: list[str] = []
        self._key_ids: dict[str, int] = {}
        # Each distinct surface word is folded once; per chunk, only set operations and map() run per word,
        # which keeps building the index close to the cost of tokenising the corpus.
        word_ids: dict[str, int] = {}
        all_words = array("I")
        all_chunks = array("I")
        for number, (chunk_id, title, text) in enumerate(chunks):
            self._ids.append(chunk_id)
            self._titles.append(title)
            self._texts.append(text)
            words = set(_WORD.findall(normalise(text)))
            for word in words.difference(word_ids):
                word_ids[word] = self._key_ids.setdefault(_word_key(word), len(self._key_ids))
            ids = set(map(word_ids.__getitem__, words))
            all_words.extend(ids)
            all_chunks.extend(array("I", [number]) * len(ids))
        word_column = np.frombuffer(all_words, dtype=np.uint32) if all_words else np.zeros(0, np.uint32)
        chunk_column = np.frombuffer(all_chunks, dtype=np.uint32) if all_chunks else np.zeros(0, np.uint32)
        # A stable sort by word keeps each word's chunk numbers ascending (they were appended in order).
        order = np.argsort(word_column, kind="stable")
        self._postings = chunk_column[order]
        counts = np.bincount(word_column, minlength=len(self._key_ids))
        self._starts = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])

    def __len__(self) -> int:
        return len(self._ids)

    def document_frequency(self, word: str) -> int:
        """How many chunks contain ``word`` (plural and possessive forms included)."""
        keys = _keys(word)
        return self._frequency(keys[0]) if len(keys) == 1 else 0

    def _posting(self, key: str) -> Any:
        n = self._key_ids.get(key)
        if n is None:
            return self._postings[:0]
        return self._postings[self._starts[n] : self._starts[n + 1]]

    def _frequency(self, key: str) -> int:
        return len(self._posting(key))

    def find(self, terms: Sequence[str]) -> list[tuple[str, str]]:
        """``(chunk_id, title)`` of every chunk containing all ``terms``, in corpus order.

        Terms are matched as whole words after ``normalise``, tolerant of plural and possessive forms; a
        multi-word term must occur as a phrase (punctuation between its words is ignored).
        """
        import numpy as np

        phrases = [keys for keys in (_keys(t) for t in terms) if keys]
        if not phrases:
            raise ValueError(f"no words to search for in {list(terms)!r}")
        postings = sorted((self._posting(k) for k in {k for keys in phrases for k in keys}), key=len)
        candidates = postings[0]
        for posting in postings[1:]:
            if not len(candidates):
                break
            candidates = np.intersect1d(candidates, posting, assume_unique=True)
        multi = [tuple(keys) for keys in phrases if len(keys) > 1]
        found = []
        for number in candidates.tolist():
            if multi:
                chunk_keys = _keys(self._texts[number])
                if not all(_contains_run(chunk_keys, phrase) for phrase in multi):
                    continue
            found.append((self._ids[number], self._titles[number]))
        return found


def _contains_run(keys: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(keys[i : i + n]) == phrase for i in range(len(keys) - n + 1) if keys[i] == phrase[0])


@dataclass(frozen=True)
class RefusalCheck:
    ok: bool
    reason: str
    found_in: list[str] = field(default_factory=list)  # titles of the documents that mention the terms
    terms: list[str] = field(default_factory=list)  # what was searched for


def _quoted(terms: Sequence[str]) -> str:
    items = [f"'{t}'" for t in terms]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _distinctive_words(question: str, index: CorpusIndex) -> list[str]:
    """The question's rarest content words in the corpus: 2, or 3 for a question with 5+ content words.

    Two words keep a verification from passing just because no single chunk happens to use all of a long
    question's words; a third helps a long question whose two rarest words are still common.
    """
    seen: dict[str, str] = {}
    for word in _WORD.findall(normalise(question)):
        key = _word_key(word)
        if key in _STOPWORDS or (len(key) < 2 and not key.isdigit()):
            continue
        seen.setdefault(key, word)
    order = {key: n for n, key in enumerate(seen)}
    ranked = sorted(seen, key=lambda k: (index._frequency(k), order[k]))
    wanted = 2 if len(ranked) <= 4 else 3
    return [seen[k] for k in ranked[:wanted]]


def refusal_check(question: str, search_terms: Sequence[str], index: CorpusIndex) -> RefusalCheck:
    """Whether a "the documents do not say" answer to ``question`` is right: no chunk has all the terms.

    ``search_terms`` are the teacher's words an answer would have to contain; terms made only of stopwords
    are ignored ("the", "document"). Without usable terms the question's most distinctive words are used.
    """
    terms = [" ".join(t.split()) for t in search_terms if any(k not in _STOPWORDS for k in _keys(t))]
    if not terms:
        terms = _distinctive_words(question, index)
    if not terms:
        return RefusalCheck(
            False, "refusal could not be verified: the question has no distinctive words to search for"
        )
    hits = index.find(terms)
    if not hits:
        together = " together" if len(terms) > 1 else ""
        reason = f"refusal confirmed: no passage of the documents mentions {_quoted(terms)}{together}"
        return RefusalCheck(True, reason, [], terms)
    titles = list(dict.fromkeys(title for _, title in hits))
    shown = ", ".join(titles[:3]) + (f" and {len(titles) - 3} more" if len(titles) > 3 else "")
    return RefusalCheck(
        False, f"refusal rejected: the documents do mention {_quoted(terms)} ({shown})", titles, terms
    )


# --------------------------------------------------------------------------------------------------------
# Duplicate questions

_SEED = 1  # MinHash permutations are derived from it: fixed, so runs are reproducible.


@dataclass(frozen=True)
class Duplicate:
    of_key: str  # the question it duplicates
    kind: Literal["exact", "near"]
    similarity: float  # 1.0 for exact; the Jaccard similarity of the shingle sets for near


def _exact_form(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]|_", " ", normalise(question)).split())


def _shingles(question: str) -> frozenset[str]:
    """Content-word unigrams and bigrams of a question.

    Questions are 10–20 words, too short for the usual character or word n-grams: a dropped "the" or "of"
    changes a quarter of the word bigrams, while "boiling" → "freezing" changes few character 4-grams. So
    function words are left out first (question words and negations stay, "when"/"where" and "not" change
    the question), plurals are folded, and the rest is shingled as single words plus adjacent pairs. A
    different subject word then costs about half the shingles ("What is the boiling/freezing point of
    water?" ≈ 0.4), a different function word or punctuation none, and the pairs keep word order in play.
    """
    keys = _keys(question)
    content = [k for k in keys if k not in _DEDUP_IGNORED] or keys
    return frozenset(content) | frozenset(f"{a} {b}" for a, b in itertools.pairwise(content))


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """Bands and rows for the LSH so that a pair at exactly ``threshold`` becomes a candidate with
    probability >= ``recall``.

    datasketch's own choice balances false positives against false negatives and, at 0.8 with 128
    permutations, finds only ~40% of pairs at 0.8. Here false positives cost one exact Jaccard each, so the
    widest rows that still meet the recall are used.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class Deduplicator:
    """Finds questions that repeat one already kept: exactly (after ``normalise`` and without punctuation)
    or nearly (Jaccard similarity of ``_shingles`` >= ``threshold``). Deterministic: fixed MinHash seed,
    ties broken by the order questions were added."""

    def __init__(self, threshold: float = 0.8, num_perm: int = 128) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self._lsh: Any = MinHashLSH(num_perm=num_perm, params=_lsh_params(threshold, num_perm))
        self._exact: dict[str, str] = {}  # exact form → first key with it
        self._shingles: dict[str, frozenset[str]] = {}  # key → shingles (also: every key added, in order)
        self._order: dict[str, int] = {}
        self._prototype: Any = None

    def __len__(self) -> int:
        return len(self._shingles)

    def __contains__(self, key: object) -> bool:
        return key in self._shingles

    def _minhash(self, shingles: frozenset[str]) -> Any:
        from datasketch import MinHash

        if self._prototype is None:
            # Drawing the permutations is the slow part of a MinHash; they depend only on the seed, so draw once.
            self._prototype = MinHash(num_perm=self.num_perm, seed=_SEED)
        proto = self._prototype
        m = MinHash(num_perm=self.num_perm, seed=_SEED, permutations=proto.permutations, scheme=proto.scheme)
        m.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        return m

    def _add(self, key: str, exact: str, shingles: frozenset[str], minhash: Any | None) -> None:
        if key in self._shingles:
            raise ValueError(f"question key {key!r} was already added")
        self._exact.setdefault(exact, key)
        self._shingles[key] = shingles
        self._order[key] = len(self._order)
        if shingles:
            self._lsh.insert(key, minhash if minhash is not None else self._minhash(shingles))

    def seed(self, items: Iterable[tuple[str, str]]) -> None:
        """Add ``(key, question)`` pairs of the existing dataset without checking them against each other."""
        for key, question in items:
            self._add(key, _exact_form(question), _shingles(question), None)

    def check_and_add(self, key: str, question: str) -> Duplicate | None:
        """The question ``question`` duplicates, or None, in which case it is added under ``key``.

        A duplicate is not added: the pipeline drops it, and later questions are compared with the one kept.
        """
        if key in self._shingles:
            raise ValueError(f"question key {key!r} was already added")
        exact = _exact_form(question)
        if exact in self._exact:
            return Duplicate(self._exact[exact], "exact", 1.0)
        shingles = _shingles(question)
        minhash = None
        if shingles:
            minhash = self._minhash(shingles)
            # The LSH only proposes candidates; the exact Jaccard of the shingle sets decides, so a collision
            # in the sketches never reports a false duplicate.
            best: tuple[float, int, str] | None = None
            for other in self._lsh.query(minhash):
                similarity = _jaccard(shingles, self._shingles[other])
                if similarity >= self.threshold:
                    rank = (-similarity, self._order[other], other)
                    best = rank if best is None or rank < best else best
            if best is not None:
                return Duplicate(best[2], "near", -best[0])
        self._add(key, exact, shingles, minhash)
        return None
