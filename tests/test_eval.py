"""Evaluation on the held-out probes: the score functions, refusal detection, key facts, the report's arithmetic,
a run on a tiny random GGUF, the LLM judge against the fake OpenAI server (cache, faults, a rejected key),
open-book prompts, saved reports and ``slowtune eval``'s exit codes."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slowtune import quality
from slowtune.dataset import DatasetRow, Provenance, add_rows
from slowtune.eval import command as eval_command
from slowtune.eval.pipeline import evaluate
from slowtune.eval.probes import EvalError, Probe, load_probes, open_book_messages
from slowtune.eval.report import build_report, list_reports, save_report
from slowtune.progress import Cancelled, Progress, ProgressEvent
from slowtune.scoring import (
    CorpusVocabulary,
    ProbeResult,
    corpus_vocabulary,
    is_refusal,
    key_fact_recall,
    key_facts,
    normalise,
    normalised_exact_match,
    token_f1,
)
from slowtune.store import Project
from slowtune.testing.fake_openai import FakeTeacher, Fault

KEY = "fake-judge-credential-51c2"
REFUSAL = "The documents do not cover that, so I can't say."

DOCS = {
    "lighthouse.md": "# Greywater lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt "
                     "outcrop. Its lamp was converted from paraffin to electricity in 1931.\n\nThe stairway has two "
                     "hundred and seventeen cast-iron steps. Guided climbs run every afternoon from April to "
                     "October.\n",
    "bakery.md": "# Marlow's bakery\n\nMarlow's bakery bakes its sourdough with a starter kept alive since 1952. The "
                 "rye loaf contains caraway seeds and a spoon of black treacle.\n\nDough rests overnight in a cool "
                 "cellar at eleven degrees Celsius. The shop opens at six in the morning except on public holidays.\n",
}


# The retention and leakage questions of these tests: a few, written here, in place of the shipped sets.
GENERAL = [quality.QualityItem("retention", "g1", "What is the capital of France?", "Paris.", (("Paris",),),
                               category="knowledge"),
           quality.QualityItem("retention", "g2", "What is 7 times 6?", "42.", (("42",),), category="arithmetic")]
UNKNOWN = [quality.QualityItem("leakage", "u1", "Who founded the Zorvath observatory?", category="unknown")]


@pytest.fixture(autouse=True)
def small_quality_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quality, "general_items", lambda **kw: list(GENERAL))
    monkeypatch.setattr(quality, "unknown_items", lambda: list(UNKNOWN))


# --- exact match and F1 -----------------------------------------------------------------------------------

def test_normalise_drops_case_punctuation_articles_and_number_separators() -> None:
    assert normalise("  The Bridge, at  Tamsin!  ") == "bridge at tamsin"
    assert normalise("1,200 metres") == normalise("1200 metres") == "1200 metres"
    assert normalise("Marlow’s bakery") == "marlow bakery"


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("the old stone bridge.", "Old stone bridge", 1.0),
    ("In 1,200 AD", "in 1200 ad", 1.0),
    ("old stone bridge", "old wooden bridge", 0.0),
    ("", "bridge", 0.0),
])
def test_exact_match(answer: str, reference: str, expected: float) -> None:
    assert normalised_exact_match(answer, reference) == expected


def test_token_f1_matches_squad_arithmetic() -> None:
    assert token_f1("The stone bridge", "the stone bridge!") == 1.0
    assert token_f1("granite tower", "stone bridge") == 0.0
    # answer: built bridge 1820 (3 tokens); reference: bridge built 1820 by masons (5): 3 shared.
    p, r = 3 / 3, 3 / 5
    assert token_f1("Built the bridge, 1820.", "The bridge built 1820 by masons") == pytest.approx(2 * p * r / (p + r))
    # Repeated tokens count only as often as the reference has them.
    assert token_f1("bridge bridge bridge", "bridge") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert token_f1("", "") == 1.0
    assert token_f1("", "bridge") == 0.0
    assert token_f1("a the an", "bridge") == 0.0  # only articles: nothing left to match


# --- key facts --------------------------------------------------------------------------------------------

def _facts(reference: str, **kw: Any) -> list[tuple[str, Any]]:
    return [(f.kind, f.value if f.kind == "number" else f.text) for f in key_facts(reference, **kw)]


def test_key_facts_are_numbers_names_and_quoted_terms() -> None:
    assert _facts("Its oldest tree was planted in 1887 by a clockmaker named Edda Strom.") == [
        ("number", 1887.0), ("name", "Edda Strom")]
    # Spelled-out numbers; "The" opening the sentence is not part of the name.
    assert _facts("The Greywater lighthouse stands forty-two metres tall.") == [("number", 42.0), ("name", "Greywater")]
    assert _facts("The stairway has two hundred and seventeen steps.") == [("number", 217.0)]
    assert _facts("The town spent $1,200 on the 'Lantern Walk' festival, about 3.5 percent of its budget.") == [
        ("number", 1200.0), ("number", 3.5), ("quote", "Lantern Walk")]
    assert _facts("The museum of the Bank of England opened in 1988.") == [("number", 1988.0),
                                                                          ("name", "Bank of England")]
    assert _facts("Marlow's bakery opened in May.") == [("name", "Marlow"), ("name", "May")]


def test_a_sentence_initial_common_word_is_not_a_name() -> None:
    vocabulary = corpus_vocabulary(["the dough rests overnight", "Paris is far", "we went to Paris"])
    assert ("name", "Dough") not in _facts("Dough rests overnight in Paris.", vocabulary=vocabulary)
    assert ("name", "Paris") in _facts("Paris has a bakery.", vocabulary=vocabulary)  # never written in lower case
    assert _facts("Dough rests overnight in a cellar.", vocabulary=vocabulary)[0][0] == "word"


def test_without_facts_the_rarest_content_words_are_used() -> None:
    reference = "Dough rests overnight in a cool cellar."
    # Without corpus statistics, the longest words.
    assert _facts(reference) == [("word", "overnight"), ("word", "cellar"), ("word", "dough")]
    # With them, the words fewest chunks contain.
    common = ["dough overnight cool", "dough overnight", "cool overnight rests", "dough cool rests"]
    vocabulary = corpus_vocabulary([*common, "a cellar"])
    assert _facts(reference, vocabulary=vocabulary)[0] == ("word", "cellar")
    assert isinstance(vocabulary, CorpusVocabulary) and vocabulary.chunks == 5


@pytest.mark.parametrize(("answer", "expected"), [
    ("It is 42 m tall; the Greywater light was electrified in 1931.", 1.0),
    ("The greywater lighthouse is forty two metres high and went electric in 1931.", 1.0),
    ("The Greywater lighthouse is 24 metres tall and went electric in 1913.", 1 / 3),
    ("It is a lighthouse on the coast.", 0.0),
])
def test_key_fact_recall_tolerates_formatting_not_wrong_facts(answer: str, expected: float) -> None:
    reference = "The Greywater lighthouse stands forty-two metres tall; its lamp was converted in 1931."
    assert key_fact_recall(answer, reference) == pytest.approx(expected)


def test_key_fact_recall_on_number_formats_and_plurals() -> None:
    assert key_fact_recall("They spent 1200 dollars.", "The town spent $1,200.") == 1.0
    assert key_fact_recall("They spent 1,300 dollars.", "The town spent $1,200.") == 0.0
    assert key_fact_recall("3.50 percent", "about 3.5 percent") == 1.0
    assert key_fact_recall("It grows many variety of apples", "It grows heritage varieties.") > 0
    assert key_fact_recall("", "It grows heritage varieties.") == 0.0


# --- refusals ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer", [
    REFUSAL,
    "I don't know.",
    "I'm sorry, but the provided text doesn’t mention the ferry schedule.",
    "There is no information about opening hours in the documents.",
    "That isn't covered in the notes I have.",
    "I could not find anything about that.",
    "The documents are silent on this.",
    "Unfortunately I do not have any information on that topic.",
    "I am not sure.",
    "This question is outside the scope of the documents.",
    "The excerpt does not say when it was built.",
    "Nothing in the documents answers that.",
    "I can't say.",
    "I can't answer that.",
    "The documents won't tell you that.",
    "It isn't mentioned.",
    "That is not covered.",
    "No information is available about that.",
    "Sorry, that information isn't available.",
    "The documKts do not cover that, so I can't say.",
])
def test_refusals_are_recognised(answer: str) -> None:
    assert is_refusal(answer)


@pytest.mark.parametrize("answer", [
    "The orchard does not use synthetic pesticides.",
    "It is not open on public holidays.",
    "The bridge was not damaged by the flood of 1901.",
    "This is not covered by the warranty.",
    "The notes say the lighthouse does not have a lift.",
    "No, the museum does not charge for entry.",
    "The records do not go back before 1900.",
    "No data is collected from visitors.",
    "I recommend the rye loaf; it is not sweet.",
    "The pump is not used in the manual mode.",
    "Many customers don't know that the shop opens at six.",
    "There is no record of rain in 1901.",
    "The policy keeps no data about users.",
    "Staff are unable to answer the phone after 6pm.",
    "I am not sure, but I think it is 7:40.",
    "Parking is not available on Sundays.",
    "",
])
def test_answers_that_merely_contain_not_are_not_refusals(answer: str) -> None:
    assert not is_refusal(answer)


# --- the report's arithmetic ------------------------------------------------------------------------------

def _probe(pid: int, doc: str, qtype: str = "fact", reference: str = "ref") -> Probe:
    return Probe(id=pid, question=f"question {pid}?", reference=REFUSAL if qtype == "refusal" else reference,
                 qtype=qtype, document_id=1 if doc == "A" else 2, document=doc, chunk_id=f"c{pid}",
                 chunk_text=f"chunk {pid}")


def _result(pid: int, variant: str, *, f1: float | None = None, refused: bool | None = None,
            judge: int | None = None) -> ProbeResult:
    r = ProbeResult(probe_id=pid, variant=variant, answer=f"{variant} answer {pid}", judge_score=judge)
    if f1 is not None:
        r.f1, r.exact, r.key_fact_recall, r.false_refusal = f1, float(f1 == 1), f1, 0.0
    if refused is not None:
        r.refused, r.refusal_correct = refused, float(refused)
    return r


HAND_PROBES = [_probe(1, "A"), _probe(2, "A"), _probe(3, "B"), _probe(4, "B", "refusal")]


def _hand_results(judged: bool = False) -> dict[str, list[ProbeResult]]:
    tj = (3, 5, 4, 5) if judged else (None,) * 4
    bj = (2, 1, 4, 1) if judged else (None,) * 4
    return {
        "tuned": [_result(1, "tuned", f1=0.9, judge=tj[0]), _result(2, "tuned", f1=0.5, judge=tj[1]),
                  _result(3, "tuned", f1=0.2, judge=tj[2]), _result(4, "tuned", refused=True, judge=tj[3])],
        "base": [_result(1, "base", f1=0.1, judge=bj[0]), _result(2, "base", f1=0.5, judge=bj[1]),
                 _result(3, "base", f1=0.6, judge=bj[2]), _result(4, "base", refused=False, judge=bj[3])],
    }


def test_report_math_by_f1() -> None:
    report = build_report("demo", HAND_PROBES, _hand_results(), models={"tuned": "t.gguf", "base": "b.gguf"})
    assert report.metric == "f1"
    t, b = report.summary("tuned"), report.summary("base")
    assert (t.answerable, t.refusal_probes) == (3, 1)
    assert t.f1 == pytest.approx(1.6 / 3) and b.f1 == pytest.approx(1.2 / 3)
    assert (t.refusal_accuracy, b.refusal_accuracy) == (1.0, 0.0)
    c = report.comparison
    assert c is not None
    assert (c.compared, c.wins, c.losses, c.ties) == (4, 2, 1, 1)
    assert c.deltas["f1"] == pytest.approx(0.4 / 3, abs=1e-4)
    assert c.deltas["refusal_accuracy"] == 1.0
    # Wins by size: the refusal probe (+1.0) before probe 1 (+0.8); the one regression is probe 3.
    assert [(w.probe_id, w.delta) for w in c.biggest_wins] == [(4, 1.0), (1, 0.8)]
    assert [(r.probe_id, r.delta) for r in c.biggest_regressions] == [(3, -0.4)]
    assert c.biggest_regressions[0].answer == "tuned answer 3"
    assert c.biggest_regressions[0].other_answer == "base answer 3"
    assert report.headline == (
        "Tuned beats base on 2 of 4 questions about the documents (3 about facts, 1 that should be refused); base "
        "is better on 1. Tuned vs base: word overlap with the reference 0.53 vs 0.40, refused 1 of 1 vs 0 of 1.")
    assert "F1" not in report.headline
    docs = {d.document: d for d in report.documents}
    assert docs["A"].scores["tuned"]["score"] == pytest.approx(0.7) and docs["A"].delta == pytest.approx(0.4)
    assert docs["B"].scores["base"]["score"] == pytest.approx(0.3) and docs["B"].delta == pytest.approx(0.3)
    markdown = report.to_markdown()
    assert report.headline in markdown and "## Biggest wins" in markdown and "## Biggest regressions" in markdown
    assert "| Tuned (t.gguf) | " in markdown and "question 3?" in markdown
    data = json.loads(json.dumps(report.to_json()))
    assert data["comparison"]["wins"] == 2 and data["probes"][3]["results"]["base"]["refusal_correct"] == 0.0


def test_report_math_by_judge_orders_wins_by_grade() -> None:
    report = build_report("demo", HAND_PROBES, _hand_results(judged=True))
    assert report.metric == "judge"
    c = report.comparison
    assert c is not None
    # Judge deltas (0..1 scale): p1 +0.25, p2 +1.0, p3 0, p4 +1.0: ties broken by probe id; no regression.
    assert [w.probe_id for w in c.biggest_wins] == [2, 4, 1]
    assert c.biggest_regressions == [] and (c.wins, c.losses, c.ties) == (3, 0, 1)
    assert report.summary("tuned").judge_mean == pytest.approx(17 / 4)
    assert c.deltas["judge_mean"] == pytest.approx(17 / 4 - 8 / 4)
    assert "the judge's grade 4.2 vs 2.0 of 5" in report.headline
    assert "Tuned (judge 5/5)" in report.to_markdown()


def test_report_without_base_and_results_that_do_not_match_probes() -> None:
    report = build_report("demo", HAND_PROBES, {"tuned": _hand_results()["tuned"]})
    assert report.comparison is None
    assert report.headline == ("The tuned model on 4 questions about the documents (3 about facts, 1 that should be "
                               "refused): word overlap with the reference 0.53, key facts recalled 0.53, refused 1 of "
                               "1.")
    with pytest.raises(ValueError, match="one to one"):
        build_report("demo", HAND_PROBES, {"tuned": _hand_results()["tuned"][:3]})


def test_open_book_advice_says_when_retrieval_beats_tuning() -> None:
    results = _hand_results()
    results["base_open_book"] = [_result(p, "base_open_book", f1=0.95) for p in (1, 2, 3)]
    results["base_open_book"].append(_result(4, "base_open_book", refused=True))
    report = build_report("demo", HAND_PROBES, results)
    assert any("Retrieval would serve better than tuning" in n and "overlap with the reference of 0.95" in n for n in report.notes)
    assert "Retrieval would serve better" in report.to_markdown()
    # A small gap is no reason to recommend retrieval.
    results["base_open_book"] = [_result(p, "base_open_book", f1=0.55) for p in (1, 2, 3)]
    results["base_open_book"].append(_result(4, "base_open_book", refused=True))
    report = build_report("demo", HAND_PROBES, results)
    assert not any("Retrieval would serve better" in n for n in report.notes)
    assert any("Tuning holds up against retrieval" in n for n in report.notes)
    # When neither answers usefully, saying tuning "holds up" would mislead.
    for variant in ("tuned", "base_open_book"):
        results[variant] = [_result(p, variant, f1=0.1) for p in (1, 2, 3)] + [_result(4, variant, refused=False)]
    report = build_report("demo", HAND_PROBES, results)
    assert [n for n in report.notes if "retrieval" in n] == [
        "Neither retrieval nor tuning works well yet: the base model reaches a word overlap with the reference of "
        "0.10 with the source excerpt in its prompt, the tuned model a word overlap with the reference of 0.10 "
        "without it."]


def test_headline_says_who_is_better() -> None:
    def headline(tuned: list[float], base: list[float]) -> str:
        probes = [_probe(i, "A") for i in range(len(tuned))]
        results = {"tuned": [_result(i, "tuned", f1=f) for i, f in enumerate(tuned)],
                   "base": [_result(i, "base", f1=f) for i, f in enumerate(base)]}
        return build_report("demo", probes, results).headline

    assert headline([0.5, 0.9, 0.1], [0.2, 0.3, 0.1]) == (
        "Tuned beats base on 2 of 3 questions about the documents. Tuned vs base: word overlap with the reference "
        "0.50 vs 0.20.")
    assert headline([0.1, 0.1, 0.4], [0.2, 0.3, 0.1]).startswith(
        "Tuned does not beat base: better on 1 of 3 questions about the documents, worse on 2")
    assert headline([0.5, 0.1], [0.2, 0.3]).startswith(
        "Tuned and base are even: each is better on 1 of 2 questions about the documents")
    assert headline([0.0, 0.0], [0.0, 0.0]).startswith("Tuned and base score the same on all 2 questions about")


# --- a project with probes --------------------------------------------------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    from slowtune.documents.library import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    proj = Project.create(tmp_path / "proj", name="Town notes")
    ingest(proj, [docs], chunk_tokens=40, chunk_overlap=0, workers=1)
    chunks = list(proj.conn.execute("SELECT id, document_id, text FROM chunks ORDER BY document_id, ord"))
    rows = []
    for i, chunk in enumerate(chunks):
        sentence = chunk["text"].split("\n")[-1].split(". ")[0].strip().rstrip(".") + "."
        rows.append(DatasetRow(
            messages=[{"role": "system", "content": "You answer about our town."},
                      {"role": "user", "content": f"Tell me this, number {i}: what does the text say?"},
                      {"role": "assistant", "content": sentence}],
            split="probe", provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"],
                                                 evidence=sentence, qtype="fact", verdicts={"probe_of": 0})))
    rows.append(DatasetRow(
        messages=[{"role": "user", "content": "What does the lighthouse charge for parking?"},
                  {"role": "assistant", "content": REFUSAL}],
        split="probe", provenance=Provenance(document_id=chunks[0]["document_id"], chunk_id=chunks[0]["id"],
                                             qtype="refusal")))
    add_rows(proj, rows)
    yield proj
    proj.close()


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.testing import tiny_models

    root = tmp_path_factory.mktemp("eval-gguf")
    return {arch: write_gguf(tiny_models.build_tiny_model(root / arch, arch), root / f"{arch}.gguf")
            for arch in ("qwen2", "llama")}


class Recording:
    """A ChatModel stand-in (or wrapper): records every prompt; answers from ``answer(messages)``."""

    def __init__(self, name: str, answer: Any = None, inner: Any = None) -> None:
        self.name, self.lora_path, self.answer, self.inner = name, None, answer, inner
        self.prompts: list[list[dict[str, str]]] = []

    def chat(self, messages: list[dict[str, str]], sampling: Any = None) -> dict[str, Any]:
        self.prompts.append(messages)
        if self.inner is not None:
            return self.inner.chat(messages, sampling)
        text = self.answer(messages)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": len(text.split())}}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _knows(project: Project) -> Recording:
    """A model that answers every probe with its reference: what a perfectly tuned model would say."""
    answers = {p.question: p.reference for p in load_probes(project)}
    return Recording("knows.gguf", lambda messages: answers.get(messages[-1]["content"], "no idea"))


def _babbles() -> Recording:
    return Recording("babbles.gguf", lambda messages: "ment-rangeTh ionibr per xtxt")


def test_load_probes(project: Project) -> None:
    probes = load_probes(project)
    assert len(probes) >= 5
    fact = probes[0]
    assert fact.system == "You answer about our town." and fact.qtype == "fact" and not fact.is_refusal
    assert fact.chunk_text and fact.reference.rstrip(".") in fact.chunk_text
    assert fact.document in ("Greywater lighthouse", "Marlow's bakery")
    refusal = probes[-1]
    assert refusal.is_refusal and refusal.system is None and refusal.messages() == [
        {"role": "user", "content": "What does the lighthouse charge for parking?"}]
    # A limit takes probes from every document, not the first document's.
    two = load_probes(project, limit=2)
    assert len({p.document_id for p in two}) == 2


def test_no_probes_is_a_clear_error(tmp_path: Path) -> None:
    with Project.create(tmp_path / "empty", name="Empty one") as empty, pytest.raises(EvalError) as exc:
        load_probes(empty)
    assert str(exc.value) == "no held-out probes in project 'Empty one': run `slowtune generate` first"


def test_a_run_on_tiny_random_ggufs(project: Project, ggufs: dict[str, Path]) -> None:
    from slowtune.chat.model import ChatModel

    events: list[ProgressEvent] = []
    progress = Progress(events.append, min_interval=0)
    probes = load_probes(project)
    with ChatModel(ggufs["qwen2"], n_ctx=1024) as tuned, ChatModel(ggufs["llama"], n_ctx=1024) as base:
        spy = Recording("spy", inner=tuned)
        spy.name = tuned.name
        report = evaluate(project, spy, base=base, open_book=True, max_tokens=12, progress=progress)
    assert list(report.results) == ["tuned", "base", "tuned_open_book", "base_open_book"]
    for variant, results in report.results.items():
        assert [r.probe_id for r in results] == [p.id for p in probes]
        for r, p in zip(results, probes, strict=True):
            assert isinstance(r.answer, str) and r.error is None and r.completion_tokens > 0
            if p.is_refusal:
                assert r.refusal_correct in (0.0, 1.0) and r.f1 is None
            else:
                assert 0 <= r.f1 <= 1 and 0 <= r.key_fact_recall <= 1 and r.false_refusal in (0.0, 1.0)
        assert report.summary(variant).probes == len(probes)
    assert report.summary("tuned").model == "qwen2.gguf" and report.summary("base").model == "llama.gguf"
    # Closed book: the probe's own messages. Open book: the source chunk, delimited, then the question.
    closed, opened = spy.prompts[:len(probes)], spy.prompts[len(probes):2 * len(probes)]
    assert closed[0] == probes[0].messages()
    for prompt, probe in zip(opened, probes, strict=True):
        assert probe.chunk_text and probe.chunk_text.strip() in prompt[-1]["content"]
        assert "--- BEGIN EXCERPT" in prompt[-1]["content"] and prompt[-1]["content"].endswith(probe.question)
        assert prompt == open_book_messages(probe)
    answering = [e for e in events if e.stage == "Answering probes"]
    assert answering[-1].done == answering[-1].total == 4 * len(probes)
    assert report.settings["max_tokens"] == 12 and report.comparison is not None


def test_cancel_stops_between_answers(project: Project) -> None:
    progress = Progress()
    progress.cancel()
    with pytest.raises(Cancelled):
        evaluate(project, _babbles(), progress=progress)


# --- the judge --------------------------------------------------------------------------------------------

@pytest.fixture
def server() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=KEY) as srv:
        yield srv


def _judge(project: Project, server: FakeTeacher, *, key: str = KEY, **kw: Any) -> Any:
    from slowtune.teacher import providers, session

    providers.add_provider("judge", "custom", base_url=server.base_url, model="judge-small", key=key, replace=True)
    choice = session.choose("judge", None, mode="json_schema")  # no capability probe: the calls are counted
    runner = session.make_runner(project, choice, concurrency=4, timeout=10, **kw)
    runner.backoff = 0.01
    return runner


def test_judge_grades_every_answer_and_a_second_run_is_served_from_the_cache(
        project: Project, server: FakeTeacher) -> None:
    n = len(load_probes(project))
    events: list[ProgressEvent] = []
    report = evaluate(project, _knows(project), base=_babbles(), judge_runner=_judge(project, server),
                      progress=Progress(events.append, min_interval=0))
    assert report.metric == "judge"
    for r in report.results["tuned"]:
        assert r.judge_score == 5 and r.judge_rationale and r.judge_error is None
    assert all(r.judge_score == 1 for r in report.results["base"])
    c = report.comparison
    assert c is not None and (c.wins, c.losses) == (n, 0)
    assert report.headline.startswith(f"Tuned beats base on {n} of {n} questions about the documents ({n - 1} about "
                                      "facts, 1 that should be refused). Tuned vs base: word overlap with the "
                                      "reference 1.00 vs 0.00, the judge's grade 5.0 vs 1.0 of 5")
    grade_calls = math.ceil(n / 10) * 2  # ten answers a call, per model
    assert server.stats()["by_task"] == {"grade": grade_calls}
    assert report.judge is not None and (report.judge["calls"], report.judge["cached"]) == (grade_calls, 0)
    assert report.judge["model"] == "judge-small"
    assert [e.done for e in events if e.stage == "Judging answers"][-1] == grade_calls

    paid = server.stats()["paid_count"]
    again = evaluate(project, _knows(project), base=_babbles(), judge_runner=_judge(project, server))
    assert server.stats()["paid_count"] == paid  # the same answers, graded from the project's cache
    assert again.judge is not None and (again.judge["calls"], again.judge["cached"]) == (0, grade_calls)
    assert [r.judge_score for r in again.results["tuned"]] == [r.judge_score for r in report.results["tuned"]]


def test_judge_sees_question_reference_and_answer_and_empty_answers_cost_nothing(
        project: Project, server: FakeTeacher) -> None:
    half = Recording("half.gguf", lambda m: "" if "number 0" in m[-1]["content"] else "The lighthouse is tall.")
    report = evaluate(project, half, judge_runner=_judge(project, server))
    first = report.results["tuned"][0]
    assert (first.answer, first.judge_score, first.judge_rationale) == ("", 1, "The model gave no answer.")
    assert all(1 <= (r.judge_score or 0) <= 5 for r in report.results["tuned"])
    assert report.judge is not None and report.judge["calls"] == 1


def test_judge_failures_are_recorded_per_probe_and_the_run_goes_on(project: Project, server: FakeTeacher) -> None:
    server.set_faults([Fault("server_error", task="grade")])
    report = evaluate(project, _knows(project), judge_runner=_judge(project, server, max_attempts=2))
    assert all(r.judge_score is None and "500" in (r.judge_error or "") for r in report.results["tuned"])
    assert report.summary().judge_failures == report.summary().probes
    assert any("the judge could not grade" in n for n in report.notes)
    # An unusable reply is asked again with the problem stated; the repair is graded.
    server.set_faults([Fault("malformed", task="grade", first_attempt_only=True)])
    repaired = evaluate(project, _knows(project), judge_runner=_judge(project, server))
    assert all(r.judge_score == 5 for r in repaired.results["tuned"])


def test_a_rejected_judge_key_stops_the_run_with_a_clear_message(project: Project, server: FakeTeacher) -> None:
    with pytest.raises(EvalError, match=r"the judge stopped: (the key was rejected|access was refused) by .*\(401\)"):
        evaluate(project, _knows(project), judge_runner=_judge(project, server, key="wrong-key"))
    assert KEY not in str(server.stats())


# --- saved reports ----------------------------------------------------------------------------------------

def test_saved_reports(project: Project) -> None:
    report = evaluate(project, _knows(project), base=_babbles())
    first = save_report(project, report)
    second = save_report(project, report)  # the same second: a folder of its own
    assert first != second and first.parent == second.parent == project.root / "evals"
    data = json.loads((first / "report.json").read_text(encoding="utf-8"))
    assert data["headline"] == report.headline and len(data["probes"]) == len(report.probes)
    assert (first / "report.md").read_text(encoding="utf-8") == report.to_markdown()
    assert not [p for p in first.iterdir() if p.name.startswith(".")]  # no temporary files left
    (project.root / "evals" / "broken").mkdir()
    listed = list_reports(project)
    assert [r.path for r in listed] == [second, first]
    assert listed[0].headline == report.headline and listed[0].models == {"tuned": "knows.gguf",
                                                                           "base": "babbles.gguf"}


# --- slowtune eval ----------------------------------------------------------------------------------------

def _cli(*argv: str) -> int:
    return eval_command.main(list(argv))


def test_cli_bad_input_exits_1_naming_it(project: Project, ggufs: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    model = str(ggufs["qwen2"])
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello", encoding="utf-8")
    cases = [
        ((str(tmp_path / "nowhere"), "--model", model), "there is no project"),
        ((str(project.root), "--model", str(tmp_path / "missing.gguf")), "missing.gguf: no such file"),
        ((str(project.root), "--model", str(not_gguf)), "notes.txt: not a GGUF file"),
        ((str(project.root), "--model", model, "--base", str(not_gguf)), "base model"),
        ((str(project.root), "--model", model, "--lora", str(not_gguf)), "LoRA adapter"),
        ((str(project.root), "--model", model, "--judge", "nobody"), "judge 'nobody'"),
        ((str(project.root), "--model", model, "--max-probes", "0"), "--max-probes must be at least 1"),
    ]
    for argv, message in cases:
        assert _cli(*argv) == 1, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    with Project.create(tmp_path / "bare") as bare:
        root = bare.root
    assert _cli(str(root), "--model", model) == 1
    assert "no held-out probes in project 'bare'" in capsys.readouterr().err


def test_cli_runs_and_saves(project: Project, ggufs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root = str(project.root)
    argv = [root, "--model", str(ggufs["qwen2"]), "--base", str(ggufs["llama"]), "--max-probes", "3",
            "--max-tokens", "8", "--ctx", "512"]
    assert _cli(*argv, "--json") == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert len(data["probes"]) == 3 and set(data["summaries"]) == {"tuned", "base"}
    assert Path(data["saved"], "report.json").is_file() and "Report saved in" in err
    assert _cli(*argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Evaluation on 3 questions about the documents — Town notes") and "\n**Tuned " in out
    assert "Report saved in" in out and len(list_reports(project)) == 2


def test_cli_judge_with_a_rejected_key_exits_1(project: Project, ggufs: dict[str, Path], server: FakeTeacher,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from slowtune.teacher import providers

    providers.add_provider("judge", "custom", base_url=server.base_url, model="judge-small", key="wrong-key")
    assert _cli(str(project.root), "--model", str(ggufs["qwen2"]), "--judge", "judge/judge-small") == 1
    err = capsys.readouterr().err
    assert "judge 'judge/judge-small'" in err and ("rejected" in err or "refused" in err) and "401" in err, err
    assert "Traceback" not in err and "wrong-key" not in err


def test_a_model_error_is_recorded_on_its_probe(project: Project) -> None:
    from slowtune.chat.model import ChatError

    def answer(messages: list[dict[str, str]]) -> str:
        if "number 1" in messages[-1]["content"]:
            raise ChatError("the message is 5000 tokens; the context window of tiny.gguf is 4096")
        return "I don't know."

    report = evaluate(project, Recording("tiny.gguf", answer))
    failed = [r for r in report.results["tuned"] if r.error]
    assert len(failed) == 1 and failed[0].answer == "" and "context window" in (failed[0].error or "")
    assert failed[0].f1 == 0.0
    assert any("1 of" in n and "got no answer" in n for n in report.notes)
    # Every other answer refused: right on the refusal probe, a false refusal on the others.
    t = report.summary()
    assert t.refusal_accuracy == 1.0 and t.false_refusals == t.answerable - 1


def test_cli_lora_without_base_compares_with_the_same_file_without_the_adapter(
        project: Project, ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import slowtune.chat.model

    loaded: list[tuple[str, str | None]] = []

    class FakeChatModel(Recording):
        def __init__(self, path: Path, n_ctx: int = 4096, lora_path: Path | None = None) -> None:
            super().__init__(path.name, lambda m: "The documents do not cover that.")
            self.lora_path, self.warnings = lora_path, []
            loaded.append((path.name, lora_path.name if lora_path else None))

        def close(self) -> None:
            pass

    monkeypatch.setattr(slowtune.chat.model, "ChatModel", FakeChatModel)
    model = str(ggufs["qwen2"])
    assert _cli(str(project.root), "--model", model, "--lora", str(ggufs["llama"]), "--json") == 0
    assert loaded == [("qwen2.gguf", "llama.gguf"), ("qwen2.gguf", None)]
    summaries = json.loads(capsys.readouterr().out)["summaries"]
    assert summaries["tuned"]["model"] == "qwen2.gguf + llama.gguf" and summaries["base"]["model"] == "qwen2.gguf"
