"""The offline token counter and the structure-aware chunker (slowtune.documents.chunking)."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import subprocess
import sys

import pytest

from slowtune.documents.chunking import COUNTER_VERSION, chunk_document, count_tokens
from slowtune.documents.types import Chunk, PageSpan, ParsedDocument

_VOCABULARY = (
    "the a model data page system install configure run alpha beta gamma delta library "
    "document question answer teacher chunk overlap heading paragraph sentence token quickly"
)
WORDS = _VOCABULARY.split()


def sentence(rng: random.Random, lo: int = 6, hi: int = 16) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random, n: int) -> str:
    return " ".join(sentence(rng) for _ in range(n))


def body(rng: random.Random, paragraphs: int, sentences: int = 4) -> str:
    return "\n\n".join(paragraph(rng, sentences) for _ in range(paragraphs))


def doc_of(text: str, pages: list[PageSpan] | None = None) -> ParsedDocument:
    return ParsedDocument(title="t", kind="md" if pages is None else "pdf", text=text, pages=pages)


def check_slices(doc: ParsedDocument, chunks: list[Chunk]) -> None:
    """Invariants every chunking must keep: exact slices, honest token counts, consecutive ords, coverage."""
    covered = bytearray(len(doc.text))
    for i, c in enumerate(chunks):
        assert c.ord == i
        assert c.text == doc.text[c.char_start : c.char_end]
        assert c.text == c.text.strip() and c.text
        assert c.tokens == count_tokens(c.text)
        covered[c.char_start : c.char_end] = b"\x01" * (c.char_end - c.char_start)
    missing = [i for i, ch in enumerate(doc.text) if not ch.isspace() and not covered[i]]
    assert not missing, f"{len(missing)} non-space chars in no chunk, first at {missing[0]}"


# --- count_tokens --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", 0),
        ("   \n\t ", 0),
        ("Hello, world!", 4),
        ("the cat sat on the mat", 6),
        ("tokenization", 3),  # toke|niza|tion
        ("internationalization", 5),
        ("snake_case_name", 5),
        ("café naïve", 2),
    ],
)
def test_count_tokens_english_and_latin(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7", 1), ("123", 1), ("2024", 2), ("1234567", 3), ("1,000,000", 5), ("3.14159", 4), ("v2", 2)],
)
def test_count_tokens_groups_digits_in_threes(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("自然言語処理", 6),  # CJK: one per character
        ("日本語。", 4),
        ("Привет", 2),  # Cyrillic: groups of up to 3 letters
        ("αβγδ", 2),
        ("😀", 1),
        ("a😀b", 3),
        ("👨\u200d👩", 3),  # each code point of a ZWJ sequence
        ("e\u0301", 2),  # a combining mark is a symbol
        ("\ud800", 1),  # a lone surrogate does not crash
    ],
)
def test_count_tokens_unicode(text: str, expected: int) -> None:
    assert count_tokens(text) == expected


def test_count_tokens_is_frozen() -> None:
    """A golden value: if this fails, the counter's rules changed; that changes chunk ids and invalidates the
    generation cache, so COUNTER_VERSION must be bumped together with this number."""
    assert COUNTER_VERSION == 1
    # counted by hand: toke|niza|tion of 1 , 234 . 567|8 items — naïve café 自|然|言|語 😀 При|вет
    # snake _ case _ iden|tifier !
    text = "Tokenization of 1,234.5678 items — naïve café 自然言語 😀 Привет snake_case_identifier!"
    assert count_tokens(text) == 28
    assert count_tokens(body(random.Random(1234), 20)) == 1113


def test_count_tokens_is_deterministic_and_additive_over_whitespace() -> None:
    text = body(random.Random(5), 10)
    assert count_tokens(text) == count_tokens(text)
    parts = text.split("\n\n")
    assert count_tokens(text) == sum(count_tokens(p) for p in parts)


def test_count_tokens_roughly_matches_gpt_on_english() -> None:
    text = (
        "The teacher model reads each chunk of your documents and writes grounded questions with their "
        "answers. Training then adapts a small model on your own machine, so that it can answer questions "
        "about the documents without sending anything to a server. Longer words such as "
        "internationalization or responsibilities are split into several pieces, as a BPE tokenizer would."
    )
    n_words = len(text.split())
    n = count_tokens(text)
    # GPT-style tokenizers give about 1.2-1.4 tokens per English word and about 4 characters per token
    assert 1.0 * n_words <= n <= 1.6 * n_words
    assert 3.0 <= len(text) / n <= 5.5


def test_count_tokens_on_3mb_finishes() -> None:
    page = body(random.Random(7), 6) + "\n\nTable 3: 12,345 rows; p < 0.05 (n = 1024).\n\n"
    text = page * (3_000_000 // len(page) + 1)
    assert len(text) >= 3_000_000
    n = count_tokens(text)
    assert n == count_tokens(page) * (len(text) // len(page))


# --- chunk_document: sizes, coverage, overlap ----------------------------------------------------------------


def big_doc(seed: int = 0) -> ParsedDocument:
    rng = random.Random(seed)
    text = "# Guide\n\n" + body(rng, 12) + "\n\n## Details\n\n" + body(rng, 8, 6) + "\n\n# Appendix\n\n"
    text += paragraph(rng, 40) + "\n\n" + body(rng, 5)  # one paragraph far bigger than a chunk
    return doc_of(text)


@pytest.mark.parametrize(("target", "overlap"), [(32, 0), (64, 16), (128, 32), (512, 64)])
def test_chunks_respect_target_and_cover_text(target: int, overlap: int) -> None:
    doc = big_doc()
    chunks = chunk_document(doc, doc_hash="h", target_tokens=target, overlap_tokens=overlap)
    assert len(chunks) > 1
    check_slices(doc, chunks)
    assert max(c.tokens for c in chunks) <= target
    # and the target is actually used: chunks are not needlessly tiny
    assert sum(c.tokens for c in chunks) / len(chunks) >= 0.5 * target


def test_giant_sentence_and_giant_word_are_split() -> None:
    rng = random.Random(3)
    no_punctuation = " ".join(rng.choice(WORDS) for _ in range(3000))
    blob = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789+/") for _ in range(20_000))
    doc = doc_of(f"# Data\n\n{no_punctuation}\n\n{blob}\n\nThe end.")
    chunks = chunk_document(doc, doc_hash="h", target_tokens=64, overlap_tokens=8)
    check_slices(doc, chunks)
    assert max(c.tokens for c in chunks) <= 64
    assert len(chunks) > count_tokens(blob) // 64


def test_overlap_present_and_bounded() -> None:
    rng = random.Random(11)
    doc = doc_of("# Only\n\n" + body(rng, 30))
    chunks = chunk_document(doc, doc_hash="h", target_tokens=128, overlap_tokens=32)
    assert len(chunks) >= 5
    overlaps = []
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.char_start > prev.char_start  # progress
        assert nxt.char_start < prev.char_end, "consecutive chunks of one section must overlap"
        shared = doc.text[nxt.char_start : prev.char_end]
        overlaps.append(count_tokens(shared))
        assert count_tokens(shared) <= 32
        # whole sentences: the overlap starts a sentence (the generated prose capitalises each one)
        assert shared[0].isupper() and doc.text[nxt.char_start - 2 : nxt.char_start] in (". ", "\n\n")
    assert sum(overlaps) / len(overlaps) >= 8  # not a token or two


def test_zero_overlap_means_disjoint_chunks() -> None:
    doc = doc_of("# Only\n\n" + body(random.Random(12), 30))
    chunks = chunk_document(doc, doc_hash="h", target_tokens=128, overlap_tokens=0)
    check_slices(doc, chunks)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.char_start >= prev.char_end


def test_overlap_of_a_long_last_sentence_uses_its_last_words() -> None:
    rng = random.Random(13)
    long_sentences = " ".join(sentence(rng, 40, 50) for _ in range(20))  # each sentence ~45 tokens
    doc = doc_of(long_sentences)
    chunks = chunk_document(doc, doc_hash="h", target_tokens=128, overlap_tokens=16)
    check_slices(doc, chunks)
    for prev, nxt in itertools.pairwise(chunks):
        assert nxt.char_start < prev.char_end
        assert 0 < count_tokens(doc.text[nxt.char_start : prev.char_end]) <= 16


# --- headings ------------------------------------------------------------------------------------------------

NESTED_SECTIONS = [
    ("# Guide", ("Guide",)),
    ("## Installation", ("Guide", "Installation")),
    ("### On macOS", ("Guide", "Installation", "On macOS")),
    ("### On Linux ###", ("Guide", "Installation", "On Linux")),
    ("## Usage", ("Guide", "Usage")),
    ("# Reference", ("Reference",)),
    ("### Deep without a parent", ("Reference", "Deep without a parent")),
    ("## API", ("Reference", "API")),
]


def nested_doc(paragraphs: int) -> tuple[ParsedDocument, list[tuple[int, int, tuple[str, ...]]]]:
    rng = random.Random(21)
    parts, spans, pos = [], [], 0
    for heading, path in NESTED_SECTIONS:
        section = heading + "\n\n" + body(rng, paragraphs)
        if heading == "### On Linux ###":
            section += "\n\n```sh\n# a comment, not a heading\nmake install\n```"
        parts.append(section)
        spans.append((pos, pos + len(section), path))
        pos += len(section) + 2
    return doc_of("\n\n".join(parts)), spans


def test_heading_paths_on_nested_markdown() -> None:
    doc, spans = nested_doc(paragraphs=4)
    chunks = chunk_document(doc, doc_hash="h", target_tokens=96, overlap_tokens=16)
    check_slices(doc, chunks)
    seen = set()
    for c in chunks:
        inside = [path for start, end, path in spans if start <= c.char_start and c.char_end <= end]
        assert inside, f"chunk {c.ord} crosses a heading: {c.text[:60]!r}"
        assert c.heading_path == inside[0]
        seen.add(c.heading_path)
    assert seen == {path for _, path in NESTED_SECTIONS}
    first_of = {c.heading_path: c for c in reversed(chunks)}
    for heading, path in NESTED_SECTIONS:
        assert first_of[path].text.startswith(heading)  # a section's first chunk starts with its heading line


def test_never_merges_across_top_level_headings() -> None:
    rng = random.Random(22)
    # big sections: each fills more than one chunk, and a short tail is never topped up from the next
    big = "# One\n\n" + body(rng, 5) + "\n\n# Two\n\n" + body(rng, 5) + "\n\n# Three\n\nShort."
    # small sections: each alone is far below the target, but they are different top-level topics
    small = "# One\n\nA line.\n\n# Two\n\nAnother line.\n\n# Three\n\nA third."
    for text in (big, small):
        doc = doc_of(text)
        chunks = chunk_document(doc, doc_hash="h", target_tokens=128, overlap_tokens=16)
        check_slices(doc, chunks)
        for c in chunks:
            assert len(re.findall(r"^# ", c.text, re.MULTILINE)) <= 1
            assert c.text.count("# ") == 0 or c.text.startswith("# ")
            assert len(c.heading_path) == 1
        assert {c.heading_path for c in chunks} == {("One",), ("Two",), ("Three",)}


def test_small_subsections_of_one_topic_are_merged() -> None:
    text = "# Topic\n\nIntro line.\n\n## A\n\nFirst part.\n\n## B\n\nSecond part.\n\n# Other\n\nElse."
    chunks = chunk_document(doc_of(text), doc_hash="h", target_tokens=128, overlap_tokens=16)
    assert [c.heading_path for c in chunks] == [("Topic",), ("Other",)]
    assert chunks[0].text == text[: text.index("\n\n# Other")]


def test_bare_heading_is_glued_to_the_next_section() -> None:
    rng = random.Random(23)
    text = "Preamble line.\n\n# Guide\n\n## Installation\n\n### On macOS\n\n" + body(rng, 2)
    chunks = chunk_document(doc_of(text), doc_hash="h", target_tokens=512, overlap_tokens=64)
    assert [c.heading_path for c in chunks] == [(), ("Guide", "Installation", "On macOS")]
    assert chunks[0].text == "Preamble line."
    assert chunks[1].text.startswith("# Guide\n\n## Installation\n\n### On macOS\n\n")
    assert chunks[1].char_end == len(text)


def test_hash_without_space_is_not_a_heading() -> None:
    text = "#hashtag is text\n\n####### seven is text too\n\n# Real\n\nBody."
    chunks = chunk_document(doc_of(text), doc_hash="h")
    assert [c.heading_path for c in chunks] == [(), ("Real",)]


# --- pages ---------------------------------------------------------------------------------------------------


def three_page_doc() -> ParsedDocument:
    rng = random.Random(31)
    page_texts = [body(rng, 3), body(rng, 3), body(rng, 3)]
    text, spans = "", []
    for n, t in enumerate(page_texts, start=1):
        if text:
            text += "\n\n"
        spans.append(PageSpan(page=n, char_start=len(text), char_end=len(text) + len(t)))
        text += t
    return doc_of(text, spans)


def test_page_spans() -> None:
    doc = three_page_doc()
    assert doc.pages is not None
    chunks = chunk_document(doc, doc_hash="h", target_tokens=64, overlap_tokens=8)
    check_slices(doc, chunks)
    for c in chunks:
        touched = [p.page for p in doc.pages if p.char_start < c.char_end and c.char_start < p.char_end]
        assert (c.page_start, c.page_end) == (min(touched), max(touched))
    assert chunks[0].page_start == 1 and chunks[-1].page_end == 3
    assert {c.page_start for c in chunks} == {1, 2, 3}
    whole = chunk_document(doc, doc_hash="h", target_tokens=4096, overlap_tokens=0)
    assert [(c.page_start, c.page_end) for c in whole] == [(1, 3)]
    straddling = chunk_document(doc, doc_hash="h", target_tokens=200, overlap_tokens=0)
    assert any(c.page_start != c.page_end for c in straddling)


def test_no_pages_gives_none() -> None:
    chunks = chunk_document(doc_of("Some text."), doc_hash="h")
    assert (chunks[0].page_start, chunks[0].page_end) == (None, None)


# --- ids -----------------------------------------------------------------------------------------------------


def test_ids_stable_across_runs_and_processes() -> None:
    doc, _ = nested_doc(paragraphs=3)
    ids = [c.id for c in chunk_document(doc, doc_hash="abc", target_tokens=96, overlap_tokens=16)]
    again = [c.id for c in chunk_document(doc, doc_hash="abc", target_tokens=96, overlap_tokens=16)]
    assert ids == again
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{24}", i) for i in ids)
    script = (
        "import json, sys; from slowtune.documents.chunking import chunk_document;"
        "from slowtune.documents.types import ParsedDocument;"
        "d = ParsedDocument(title='t', kind='md', text=sys.stdin.read());"
        "print(json.dumps([c.id for c in chunk_document(d, doc_hash='abc', target_tokens=96, overlap_tokens=16)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], input=doc.text, capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout) == ids


def test_ids_change_with_text_and_doc_hash() -> None:
    doc, _ = nested_doc(paragraphs=3)
    base = chunk_document(doc, doc_hash="abc", target_tokens=96, overlap_tokens=16)
    other_hash = chunk_document(doc, doc_hash="abd", target_tokens=96, overlap_tokens=16)
    assert not {c.id for c in base} & {c.id for c in other_hash}
    # edit one word in the last section: the chunks that contain it get new ids, the others keep theirs
    pos = doc.text.rindex(" the ")
    edited = doc_of(doc.text[:pos] + " THE " + doc.text[pos + 5 :])
    after = chunk_document(edited, doc_hash="abc", target_tokens=96, overlap_tokens=16)
    assert len(after) == len(base)
    for old, new in zip(base, after, strict=True):
        if old.char_start <= pos < old.char_end:
            assert old.id != new.id
        else:
            assert old.id == new.id


def test_duplicate_chunks_get_distinct_ids() -> None:
    text = "# A\n\nSame words here.\n\n# B\n\nOther.\n\n# A\n\nSame words here."
    chunks = chunk_document(doc_of(text), doc_hash="h")
    assert chunks[0].text == chunks[2].text and chunks[0].heading_path == chunks[2].heading_path
    assert len({c.id for c in chunks}) == 3


# --- edge cases and settings ---------------------------------------------------------------------------------


def test_tiny_doc_is_one_chunk() -> None:
    doc = doc_of("\n\n  Just a short note.  \n")
    chunks = chunk_document(doc, doc_hash="h")
    assert len(chunks) == 1
    c = chunks[0]
    assert (c.text, c.char_start, c.char_end, c.heading_path, c.ord) == ("Just a short note.", 4, 22, (), 0)
    assert c.tokens == 5


@pytest.mark.parametrize("text", ["", "   \n\n\t  "])
def test_empty_text_gives_no_chunks(text: str) -> None:
    assert chunk_document(doc_of(text), doc_hash="h") == []


@pytest.mark.parametrize(
    ("target", "overlap", "setting"),
    [
        (31, 0, "chunk_tokens"),
        (0, 0, "chunk_tokens"),
        (512.0, 64, "chunk_tokens"),
        (512, -1, "chunk_overlap"),
        (512, 512, "chunk_overlap"),
        (64, 100, "chunk_overlap"),
        (512, 6.4, "chunk_overlap"),
    ],
)
def test_bad_settings_name_the_setting(target: int, overlap: int, setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        chunk_document(doc_of("Some text."), doc_hash="h", target_tokens=target, overlap_tokens=overlap)


def test_smallest_settings_are_accepted() -> None:
    doc = big_doc(1)
    chunks = chunk_document(doc, doc_hash="h", target_tokens=32, overlap_tokens=31)
    check_slices(doc, chunks)
    assert max(c.tokens for c in chunks) <= 32


def test_paragraph_boundaries_are_preferred() -> None:
    rng = random.Random(41)
    paragraphs = [paragraph(rng, 3) for _ in range(12)]  # each about 35-50 tokens: two or three fit in 128
    assert all(25 <= count_tokens(p) <= 60 for p in paragraphs)
    text = "\n\n".join(paragraphs)
    chunks = chunk_document(doc_of(text), doc_hash="h", target_tokens=128, overlap_tokens=0)
    assert len(chunks) >= 4
    for c in chunks:
        assert text[c.char_end : c.char_end + 2] in ("\n\n", ""), "a chunk ends inside a paragraph"


def test_sentences_are_not_cut_after_abbreviations() -> None:
    names = ["Watson", "Holmes", "Hudson", "Lestrade", "Moriarty", "Adler"]
    rng = random.Random(42)
    sentences = [
        f"Dr. {rng.choice(names)} met Mr. {rng.choice(names)} at 5 p.m. on Baker street, e.g. near No. 221."
        for _ in range(30)
    ]
    text = " ".join(sentences)
    chunks = chunk_document(doc_of(text), doc_hash="h", target_tokens=48, overlap_tokens=0)
    assert len(chunks) >= 10
    for c in chunks:
        assert c.text.startswith("Dr. ") and c.text.endswith("No. 221."), c.text
