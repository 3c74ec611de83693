"""Quality gates of the generation pipeline: evidence quotes, refusal verification, duplicate questions."""

from __future__ import annotations

import random
import re

import pytest

from slowtune.teacher.checks import (
    CorpusIndex,
    Deduplicator,
    Duplicate,
    _jaccard,
    _lsh_params,
    _shingles,
    normalise,
    quote_check,
    refusal_check,
)

# --------------------------------------------------------------------------------------------------------
# normalise


def test_normalise_unifies_typography_case_and_whitespace() -> None:
    text = "  \u201cSmart\u201d  \u2018quotes\u2019 \u2014 dashes\u2013and\u2026 ELLIPSIS\u00a0here\n\tnow  "
    assert normalise(text) == "\"smart\" 'quotes' - dashes-and... ellipsis here now"


def test_normalise_folds_ligatures_soft_hyphens_and_eszett() -> None:
    assert normalise("\ufb01le con\u00adtains Stra\u00dfe") == "file contains strasse"
    assert normalise("   ") == ""


# --------------------------------------------------------------------------------------------------------
# quote_check

CHUNK = (
    "The X200 blender comes with a two-year warranty. For more infor-\nmation about cleaning, see the "
    "\u201cCare\u201d section \u2014 never immerse the motor base in water. The jug is dishwasher safe."
)


def test_quote_found_verbatim() -> None:
    result = quote_check("never immerse the motor base in water", CHUNK)
    assert result.ok and result.score == 1.0
    assert result.reason == "evidence quote found in the chunk (verbatim)"


def test_quote_tolerates_quotes_case_whitespace_and_dashes() -> None:
    result = quote_check('see the "care" section -  NEVER immerse the motor\nbase in water', CHUNK)
    assert result.ok and result.score == 1.0


def test_quote_tolerates_pdf_hyphenation_both_ways() -> None:
    assert quote_check("For more information about cleaning", CHUNK).score == 1.0
    # ... and a quote copied with the line-break hyphen matches a chunk where the word is whole.
    assert quote_check("for more infor- mation about cleaning", "Read: for more information on cleaning.").ok


def test_quote_tolerates_a_dropped_word() -> None:
    dropped = quote_check("The X200 blender comes with two-year warranty", CHUNK)  # "a" dropped
    assert dropped.ok and 0.85 <= dropped.score < 1.0
    assert dropped.reason.startswith("evidence quote found in the chunk (") and "% match" in dropped.reason


def test_quote_not_in_chunk_is_rejected_with_best_match() -> None:
    result = quote_check("the motor base must be washed in the dishwasher", CHUNK)
    assert not result.ok
    assert 0.0 < result.score < 0.85
    assert re.fullmatch(r"evidence quote not found in the chunk \(best match \d+%\)", result.reason)


def test_quote_threshold_is_honoured() -> None:
    quote = "The X200 blender comes with two-year warranty"
    score = quote_check(quote, CHUNK).score
    assert quote_check(quote, CHUNK, threshold=score).ok
    assert not quote_check(quote, CHUNK, threshold=min(1.0, score + 0.01)).ok


@pytest.mark.parametrize("quote", ["", "   ", "...", "\u2026"])
def test_empty_quote_is_rejected(quote: str) -> None:
    result = quote_check(quote, CHUNK)
    assert (result.ok, result.score, result.reason) == (False, 0.0, "no evidence quote was given")


def test_short_quote_is_rejected_even_when_present() -> None:
    result = quote_check("warranty", CHUNK)
    assert not result.ok
    assert result.reason == "evidence quote is too short to check (8 characters; at least 12 needed)"
    assert quote_check("warranty", CHUNK, min_chars=5).ok


def test_quote_longer_than_chunk_is_rejected() -> None:
    result = quote_check(CHUNK + " It also comes with a free recipe book and a travel lid.", CHUNK)
    assert not result.ok
    assert result.reason.startswith("evidence quote is longer than the chunk (")
    assert "best match" in result.reason
    # The whole chunk with small differences still counts.
    assert quote_check(CHUNK.upper() + "!", CHUNK).ok


def test_elided_quote_is_checked_part_by_part() -> None:
    good = "comes with a two-year warranty ... never immerse the motor base in water"
    assert quote_check(good, CHUNK).ok
    bad = "comes with a two-year warranty \u2026 the jug must be washed by hand only"
    result = quote_check(bad, CHUNK)
    assert not result.ok and "not found" in result.reason


def test_quote_in_empty_chunk() -> None:
    result = quote_check("some evidence quote here", "  ")
    assert not result.ok and "chunk is empty" in result.reason


def test_quote_check_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="threshold"):
        quote_check("x" * 20, CHUNK, threshold=1.5)
    with pytest.raises(ValueError, match="min_chars"):
        quote_check("x" * 20, CHUNK, min_chars=0)


# --------------------------------------------------------------------------------------------------------
# CorpusIndex and refusal_check

CORPUS = [
    ("m1", "Manual.pdf", "The X200 blender comes with a two-year warranty on the motor."),
    ("m2", "Manual.pdf", "Warranties do not cover damage caused by misuse. The warranty's terms are below."),
    ("m3", "Manual.pdf", "Clean the jug after each use. The blender has five speed settings."),
    ("g1", "Guide.docx", "Our blenders are made in Portugal. The point of boiling water is 100 degrees."),
    ("g2", "Guide.docx", "The boiling point of water drops at altitude; the freezing point barely moves."),
    ("f1", "FAQ.md", "Does the blender crush ice? Yes, on speed five."),
]


@pytest.fixture
def index() -> CorpusIndex:
    return CorpusIndex(CORPUS)


def test_index_finds_whole_words_case_insensitively(index: CorpusIndex) -> None:
    assert index.find(["Portugal"]) == [("g1", "Guide.docx")]
    assert index.find(["jug"]) == [("m3", "Manual.pdf")]
    # Word boundaries: "war" is not "warranty", "ice" is not "device".
    assert index.find(["war"]) == []
    assert index.find(["speed"]) == [("m3", "Manual.pdf"), ("f1", "FAQ.md")]


def test_index_tolerates_plurals_and_possessives(index: CorpusIndex) -> None:
    expected = [("m1", "Manual.pdf"), ("m2", "Manual.pdf")]
    assert index.find(["warranty"]) == expected
    assert index.find(["warranties"]) == expected
    assert index.find(["Warranty's"]) == expected
    assert [c for c, _ in index.find(["blender"])] == ["m1", "m3", "g1", "f1"]  # "blenders" in g1


def test_index_needs_all_terms(index: CorpusIndex) -> None:
    assert index.find(["blender", "warranty"]) == [("m1", "Manual.pdf")]
    assert index.find(["blender", "altitude"]) == []
    assert index.find(["blender", "nonexistentword"]) == []


def test_index_matches_multi_word_terms_as_phrases(index: CorpusIndex) -> None:
    # g1 has both words but not as the phrase "boiling point".
    assert index.find(["boiling point"]) == [("g2", "Guide.docx")]
    assert index.find(["boiling-point", "water"]) == [("g2", "Guide.docx")]
    assert index.find(["freezing point", "boiling point"]) == [("g2", "Guide.docx")]
    assert index.find(["point boiling"]) == []
    assert index.find(["speed five"]) == [("f1", "FAQ.md")]


def test_index_document_frequency(index: CorpusIndex) -> None:
    assert len(index) == 6
    assert index.document_frequency("blender") == 4
    assert index.document_frequency("Warranties") == 2
    assert index.document_frequency("toaster") == 0


def test_index_rejects_empty_search(index: CorpusIndex) -> None:
    with pytest.raises(ValueError, match="no words to search for"):
        index.find([])
    with pytest.raises(ValueError, match="no words to search for"):
        index.find(["  ", "?!"])


def test_empty_index() -> None:
    empty = CorpusIndex([])
    assert len(empty) == 0 and empty.find(["anything"]) == []


def test_index_agrees_with_brute_force_on_a_larger_corpus() -> None:
    rng = random.Random(7)
    vocab = [f"term{i}" for i in range(300)] + [f"term{i}s" for i in range(0, 300, 7)]
    chunks = [
        (f"c{n}", f"Doc{n % 37}.pdf", " ".join(rng.choice(vocab) for _ in range(60))) for n in range(1500)
    ]
    index = CorpusIndex(chunks)

    def stems(text: str) -> list[str]:
        return [w.removesuffix("s") for w in text.split()]

    for _ in range(150):
        terms = [rng.choice(vocab) for _ in range(rng.choice([1, 2]))]
        if rng.random() < 0.3:
            terms = [f"{rng.choice(vocab)} {rng.choice(vocab)}"]
        expected = []
        for chunk_id, title, text in chunks:
            words = stems(text)
            joined = " " + " ".join(words) + " "
            if all(f" {' '.join(stems(t))} " in joined for t in terms):
                expected.append((chunk_id, title))
        assert index.find(terms) == expected, terms


def test_refusal_confirmed_when_no_chunk_has_the_terms(index: CorpusIndex) -> None:
    result = refusal_check("How much does the X200 blender weigh?", ["weight"], index)
    assert result.ok
    assert result.reason == "refusal confirmed: no passage of the documents mentions 'weight'"
    assert result.found_in == [] and result.terms == ["weight"]


def test_refusal_needs_all_terms_together(index: CorpusIndex) -> None:
    result = refusal_check("Is the jug covered by the warranty?", ["jug", "warranty"], index)
    assert result.ok
    assert (
        result.reason
        == "refusal confirmed: no passage of the documents mentions 'jug' and 'warranty' together"
    )


def test_refusal_rejected_when_the_documents_mention_it(index: CorpusIndex) -> None:
    result = refusal_check("How long is the warranty?", ["warranty"], index)
    assert not result.ok
    assert result.reason == "refusal rejected: the documents do mention 'warranty' (Manual.pdf)"
    assert result.found_in == ["Manual.pdf"]


def test_refusal_rejection_lists_each_document_once_and_caps_the_list() -> None:
    chunks = [(f"c{n}", f"Doc{n}.pdf", "Shipping is free.") for n in range(5)]
    chunks.append(("x", "Doc0.pdf", "Free shipping"))
    result = refusal_check("Is shipping free?", ["shipping"], CorpusIndex(chunks))
    assert result.found_in == [f"Doc{n}.pdf" for n in range(5)]
    assert result.reason == (
        "refusal rejected: the documents do mention 'shipping' (Doc0.pdf, Doc1.pdf, Doc2.pdf and 2 more)"
    )


def test_refusal_derives_distinctive_words_from_the_question(index: CorpusIndex) -> None:
    # "blender" is in four chunks, "warranty" in two, "motor" in one: the two rarest are searched.
    result = refusal_check("What does the document say about the blender motor warranty?", [], index)
    assert result.terms == ["motor", "warranty"]
    assert not result.ok and result.found_in == ["Manual.pdf"]
    # A word the corpus never uses makes the refusal right.
    result = refusal_check("Which colours does the blender come in?", [], index)
    assert result.ok and result.terms[0] == "colours"


def test_refusal_derives_three_words_for_a_long_question(index: CorpusIndex) -> None:
    result = refusal_check("Which blender speed setting crushes frozen fruit for smoothies?", [], index)
    assert len(result.terms) == 3
    assert "blender" not in result.terms  # the most common content word is the least distinctive


def test_refusal_ignores_stopword_only_search_terms(index: CorpusIndex) -> None:
    # "the" is in every chunk; searching it would reject every refusal.
    result = refusal_check("Does the blender come with a recipe book?", ["the", "document"], index)
    assert "recipe" in result.terms and "the" not in result.terms
    assert result.ok


def test_refusal_without_searchable_words_is_not_accepted(index: CorpusIndex) -> None:
    result = refusal_check("What is it about?", [], index)
    assert not result.ok
    assert result.reason == (
        "refusal could not be verified: the question has no distinctive words to search for"
    )


# --------------------------------------------------------------------------------------------------------
# Deduplicator


def test_exact_duplicates_ignore_case_punctuation_and_typography() -> None:
    dedup = Deduplicator()
    assert dedup.check_and_add("q1", "What is the boiling point of water?") is None
    assert dedup.check_and_add("q2", "what is the boiling point of water") == Duplicate("q1", "exact", 1.0)
    found = dedup.check_and_add("q3", "What is the boiling\u2011point of water ?!")
    assert found == Duplicate("q1", "exact", 1.0)
    assert len(dedup) == 1 and "q1" in dedup and "q2" not in dedup


@pytest.mark.parametrize(
    "other",
    [
        "What is the boiling point of the water?",  # one small word added
        "What's the boiling point of water?",  # contraction
        "What is a boiling point of water?",  # one small word changed
        "What are the boiling points of water?",  # plural
    ],
)
def test_near_duplicates_differ_by_a_small_word(other: str) -> None:
    dedup = Deduplicator(threshold=0.8)
    dedup.check_and_add("q1", "What is the boiling point of water?")
    found = dedup.check_and_add("q2", other)
    assert found is not None and found.of_key == "q1" and found.kind == "near"
    assert found.similarity >= 0.8


@pytest.mark.parametrize(
    "other",
    [
        "What is the freezing point of water?",
        "What is the boiling point of ethanol?",
        "Where is the boiling point of water?",  # another question word asks something else
        "What is not the boiling point of water?",  # negation
        "Why does the boiling point of water drop?",
    ],
)
def test_different_questions_about_the_same_subject_are_kept(other: str) -> None:
    dedup = Deduplicator(threshold=0.8)
    dedup.check_and_add("q1", "What is the boiling point of water?")
    assert dedup.check_and_add("q2", other) is None
    assert len(dedup) == 2


def test_near_duplicate_with_a_longer_question() -> None:
    dedup = Deduplicator()
    dedup.check_and_add("a", "How long is the warranty on the X200 blender motor in Europe?")
    found = dedup.check_and_add("b", "How long is the warranty for the X200 blender motor in Europe")
    assert found is not None and found.kind == "near" and found.of_key == "a"
    assert dedup.check_and_add("c", "How long is the warranty on the X300 blender motor in Europe?") is None


def test_seed_preloads_existing_questions() -> None:
    dedup = Deduplicator()
    dedup.seed([("old1", "Who founded the company in 1998?"), ("old2", "Where is the head office?")])
    assert len(dedup) == 2
    assert dedup.check_and_add("new1", "Who founded the company in 1998") == Duplicate("old1", "exact", 1.0)
    found = dedup.check_and_add("new2", "Where is the company's head office?")
    assert found is None or found.of_key == "old2"
    assert dedup.check_and_add("new3", "Who led the company in 1998?") is None


def test_duplicate_keys_are_refused() -> None:
    dedup = Deduplicator()
    dedup.check_and_add("k", "What is the capital of France?")
    with pytest.raises(ValueError, match="already added"):
        dedup.check_and_add("k", "What is the capital of Spain?")
    with pytest.raises(ValueError, match="already added"):
        dedup.seed([("k", "Something else entirely?")])


def test_empty_questions_are_exact_duplicates_of_each_other() -> None:
    dedup = Deduplicator()
    assert dedup.check_and_add("a", "  ?  ") is None
    assert dedup.check_and_add("b", "") == Duplicate("a", "exact", 1.0)


def test_bad_threshold() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Deduplicator(threshold=0)


def test_lsh_parameters_find_pairs_at_the_threshold() -> None:
    for threshold in (0.6, 0.7, 0.8, 0.9):
        bands, rows = _lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.99
    assert _lsh_params(0.8, 128) == (21, 6)


def _questions(n: int, seed: int) -> list[str]:
    """Many short questions over a small vocabulary, so that near pairs at every similarity occur."""
    rng = random.Random(seed)
    subjects = [f"widget{i}" for i in range(40)]
    props = ["weight", "price", "colour", "size", "warranty", "voltage", "speed", "capacity"]
    fillers = ["the", "a", "of", "for", "in", "on"]
    out = []
    for _ in range(n):
        words = ["what", rng.choice(fillers), rng.choice(props), rng.choice(fillers), rng.choice(subjects)]
        if rng.random() < 0.5:
            words += [rng.choice(["in", "at"]), rng.choice(["europe", "winter", "stock", "2020", "2021"])]
        out.append(" ".join(words) + "?")
    return out


def test_near_duplicates_are_confirmed_and_found_like_brute_force() -> None:
    questions = _questions(1500, seed=3)
    dedup = Deduplicator(threshold=0.8)
    kept: dict[str, frozenset[str]] = {}
    missed = found_near = 0
    for n, question in enumerate(questions):
        key = f"q{n}"
        shingles = _shingles(question)
        best = max((_jaccard(shingles, s) for s in kept.values()), default=0.0)
        result = dedup.check_and_add(key, question)
        if result is None:
            kept[key] = shingles
            missed += best >= 0.8  # brute force would have called it a duplicate
        elif result.kind == "near":
            found_near += 1
            # No false positives: a reported near-duplicate really has that Jaccard similarity.
            assert result.similarity == _jaccard(shingles, kept[result.of_key]) >= 0.8
            assert result.similarity == pytest.approx(best)
    assert found_near > 50
    assert missed <= 0.02 * found_near


def test_pairs_just_above_the_threshold_are_found() -> None:
    # "what" and five content words, then one more: Jaccard 11/13 ≈ 0.85 over unigrams and bigrams, close
    # to the threshold, where the LSH is least sure to propose a pair (datasketch's default bands for 0.8
    # would miss about a third of them).
    rng = random.Random(2)
    vocab = [f"thing{i}" for i in range(5000)]
    dedup = Deduplicator(threshold=0.8)
    bases = [" ".join(rng.sample(vocab, 5)) for _ in range(300)]
    for n, base in enumerate(bases):
        assert dedup.check_and_add(f"b{n}", f"What about {base}?") is None
    found = [dedup.check_and_add(f"v{n}", f"What about {base} extra{n}?") for n, base in enumerate(bases)]
    assert all(f is not None and f.kind == "near" for f in found)
    assert [f.of_key for f in found if f] == [f"b{n}" for n in range(300)]
    assert {f.similarity for f in found if f} == {11 / 13}


def test_deduplication_is_deterministic() -> None:
    questions = _questions(600, seed=11)

    def run() -> list[Duplicate | None]:
        dedup = Deduplicator()
        return [dedup.check_and_add(str(n), q) for n, q in enumerate(questions)]

    assert run() == run()


def test_thousands_of_questions() -> None:
    rng = random.Random(5)
    vocab = [f"word{i}" for i in range(2000)]
    dedup = Deduplicator()
    for n in range(4000):
        dedup.check_and_add(str(n), " ".join(rng.choice(vocab) for _ in range(12)) + "?")
    assert len(dedup) == 4000
