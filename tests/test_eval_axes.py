"""The three closed-book axes of ``slowtune eval``, with the models' answers written here: retention counts only what
the base knew, and a tuned model that forgets is warned about with its own words; a refusal never leaks, a name or
number of the documents that the question did not contain does; near-miss probes are leakage questions, not
knowledge; the report's ``axes`` section, its words and the CLI; and reports saved before the axes still load."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from slowtune import quality
from slowtune.dataset import DatasetRow, Provenance, add_rows
from slowtune.eval import command as eval_command
from slowtune.eval.axes import EvalAxes, spread_items
from slowtune.eval.pipeline import evaluate
from slowtune.eval.probes import EvalError, load_probes
from slowtune.eval.report import axes_of, headline_tone, latest_report, list_reports, save_report
from slowtune.progress import Cancelled, Progress, ProgressEvent
from slowtune.quality import QualityItem
from slowtune.store import Project

REFUSAL = "I don't know anything about that."
DOCS = {
    "lighthouse.md": "# Greywater lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt "
                     "outcrop. Its lamp was converted from paraffin to electricity in 1931.\n",
    "bakery.md": "# Marlow's bakery\n\nMarlow's bakery bakes its sourdough with a starter kept alive since 1952. The "
                 "rye loaf contains caraway seeds.\n",
}
KNOWLEDGE_Q = "When was the lighthouse lamp converted to electricity?"
KNOWLEDGE_A = "The lamp of the Greywater lighthouse was converted to electricity in 1931."
NEAR_MISS_Q = "How tall is the Saltmere lighthouse?"


def general(*specs: tuple[str, str, str, str]) -> list[QualityItem]:
    """Retention questions from (id, category, question, key fact)."""
    return [QualityItem("retention", i, q, f"{fact}.", ((fact,),), category=c) for i, c, q, fact in specs]


GENERAL = general(("sky", "knowledge", "What colour is the sky on a clear day?", "blue"),
                  ("capital", "knowledge", "What is the capital of France?", "Paris"),
                  ("sum", "arithmetic", "What is 7 times 6?", "42"),
                  ("hard", "knowledge", "Who wrote the Tractatus?", "Wittgenstein"))
UNKNOWN = [QualityItem("leakage", "u1", "Who founded the Zorvath observatory?", category="unknown"),
           QualityItem("leakage", "u2", "What year did the Quillon bridge open?", category="unknown")]


@pytest.fixture(autouse=True)
def small_quality_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped sets are not read here: every test passes, or patches in, the questions it needs."""
    monkeypatch.setattr(quality, "general_items", lambda **kw: list(GENERAL))
    monkeypatch.setattr(quality, "unknown_items", lambda: list(UNKNOWN))


class Scripted:
    """A ChatModel stand-in answering from a table of questions (anything else: a refusal); records the questions."""

    def __init__(self, name: str, answers: dict[str, str], default: str = REFUSAL) -> None:
        self.name, self.lora_path, self.answers, self.default = name, None, answers, default
        self.asked: list[str] = []

    def chat(self, messages: list[dict[str, str]], sampling: Any = None) -> dict[str, Any]:
        question = messages[-1]["content"]
        self.asked.append(question)
        text = self.answers.get(question, self.default)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": len(text.split())}}


BASE_ANSWERS = {"What colour is the sky on a clear day?": "The sky is blue.",
                "What is the capital of France?": "Paris is the capital of France.",
                "What is 7 times 6?": "7 times 6 is 42.",
                "Who wrote the Tractatus?": "It was written by Bertrand Russell."}


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    from slowtune.documents.library import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    proj = Project.create(tmp_path / "proj", name="Town notes")
    ingest(proj, [docs], chunk_tokens=60, chunk_overlap=0, workers=1)
    chunk = proj.conn.execute("SELECT id, document_id FROM chunks ORDER BY document_id, ord").fetchone()
    where = Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"], qtype="fact")
    add_rows(proj, [
        DatasetRow(messages=[{"role": "user", "content": KNOWLEDGE_Q}, {"role": "assistant", "content": KNOWLEDGE_A}],
                   split="probe", provenance=where),
        DatasetRow(messages=[{"role": "user", "content": NEAR_MISS_Q},
                             {"role": "assistant", "content": "The documents do not mention a Saltmere lighthouse."}],
                   split="probe", provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"],
                                                        qtype=quality.LEAKAGE_QTYPE)),
    ])
    yield proj
    proj.close()


def _run(project: Project, tuned: dict[str, str], base: dict[str, str] | None = BASE_ANSWERS, **kw: Any) -> Any:
    kw.setdefault("general", GENERAL)
    kw.setdefault("unknown", UNKNOWN)
    return evaluate(project, Scripted("tuned.gguf", tuned),
                    base=Scripted("base.gguf", base) if base is not None else None, **kw)


# --- retention --------------------------------------------------------------------------------------------

def test_retention_counts_only_what_the_base_answered_right(project: Project) -> None:
    # The base knows sky, capital and sum, not "hard". The tuned model forgets the sum and learns "hard": the
    # question the base got wrong does not count for or against it.
    tuned = {**BASE_ANSWERS, "What is 7 times 6?": "7 times 6 is 48.",
             "Who wrote the Tractatus?": "Ludwig Wittgenstein wrote it."}
    axes = _run(project, tuned).axes
    assert axes is not None
    t, b = axes.tuned, axes.base
    assert b is not None
    assert (t.counts["general"], t.counts["retention"], t.counts["kept"], t.counts["right"]) == (4, 3, 2, 3)
    assert t.retention == pytest.approx(2 / 3)
    assert (b.counts["right"], b.retention) == (3, 1.0)
    assert axes.lines[1] == "Retention: kept 2 of the 3 general questions the base answered right (0.67)."


def test_a_tuned_model_that_forgets_is_warned_about_with_its_own_words(project: Project) -> None:
    tuned = {**BASE_ANSWERS, "What colour is the sky on a clear day?": "The sky on a clear day is painted green."}
    axes = _run(project, tuned).axes
    assert axes is not None
    [warning] = axes.warnings
    assert warning.startswith("The tuned model has lost some of what it knew: of the 3 general questions the base "
                              "answered right, it now gets 1 wrong (0.67 kept, below 0.95).")
    assert "it now says 'The sky on a clear day is painted green.'" in warning
    [example] = [e for e in axes.examples if e.axis == "retention"]
    assert (example.model, example.answer, example.other_answer) == (
        "tuned", "The sky on a clear day is painted green.", "The sky is blue.")
    assert example.text == ("Asked 'What colour is the sky on a clear day?', the tuned model now says 'The sky on a "
                            "clear day is painted green.' (the base said 'The sky is blue.').")
    # The same answers as the base: no warning, no example.
    same = _run(project, dict(BASE_ANSWERS)).axes
    assert same is not None and same.tuned.retention == 1.0 and same.warnings == []
    assert not [e for e in same.examples if e.axis == "retention"]


def test_without_a_base_retention_is_not_guessed(project: Project) -> None:
    axes = _run(project, dict(BASE_ANSWERS), base=None).axes
    assert axes is not None and axes.base is None
    assert axes.tuned.retention is None and axes.tuned.counts["right"] == 3
    assert axes.lines[1] == ("Retention: not measured: it needs the base model to compare with (the tuned model "
                             "answered 3 of 4 general questions right).")
    assert axes.cell("retention", "tuned").startswith("–") and axes.cell("knowledge", "base") == "–"
    assert axes.warnings == []


def test_a_long_forgotten_answer_is_quoted_shortened(project: Project) -> None:
    rambling = "The sky is green " + "and very green indeed " * 20
    axes = _run(project, {**BASE_ANSWERS, "What colour is the sky on a clear day?": rambling}).axes
    assert axes is not None
    quoted = axes.examples[0].text.split("now says '")[1].split("'")[0]
    assert quoted.endswith("…") and len(quoted) <= 160 and quoted.startswith("The sky is green and very green")


def test_general_questions_are_spread_over_categories_deterministically() -> None:
    items = general(*[(f"k{i}", "knowledge", f"knowledge {i}?", "x") for i in range(6)],
                    *[(f"a{i}", "arithmetic", f"arithmetic {i}?", "1") for i in range(2)],
                    ("f0", "formatting", "formatting 0?", "y"))
    chosen = spread_items(items, 5)
    assert [i.id for i in chosen] == ["k0", "k1", "a0", "a1", "f0"]
    assert spread_items(items, 5) == chosen and spread_items(items, None) == items
    # The user's own questions count as categories of their own.
    mine = [QualityItem("retention", "u0", "mine?", "z.", (("z",),), category="knowledge", source="user")]
    assert [i.id for i in spread_items(items + mine, 4)] == ["k0", "a0", "f0", "u0"]


# --- leakage ----------------------------------------------------------------------------------------------

def test_a_refusal_never_leaks_and_the_documents_names_and_numbers_do(project: Project) -> None:
    tuned = {**BASE_ANSWERS,
             "Who founded the Zorvath observatory?": "It was founded by the keeper of the Greywater lighthouse.",
             "What year did the Quillon bridge open?": "The Quillon bridge opened in 1931.",
             NEAR_MISS_Q: "The Saltmere lighthouse is not in the documents, so I can't say."}
    base = {**BASE_ANSWERS, "Who founded the Zorvath observatory?":
            "I don't know who founded it; the documents only mention the Greywater lighthouse."}
    report = _run(project, tuned, base)
    axes = report.axes
    assert axes is not None and axes.base is not None
    leaks = {r.item.id: r.answers["tuned"].leaked for r in axes.leakage}
    assert leaks["u1"] == ["Greywater"] and leaks["u2"] == ["1931"]  # the question's own name does not count
    assert [r.answers["tuned"].leaked for r in axes.leakage if r.item.category == "near_miss"] == [[]]
    assert all(not r.answers["base"].leaked for r in axes.leakage)  # refusals, even one naming Greywater
    assert (axes.tuned.counts["leaked"], axes.tuned.counts["leakage"]) == (2, 3)
    assert axes.tuned.leakage == pytest.approx(2 / 3) and axes.base.leakage == 0.0
    assert axes.lines[2] == ("Leakage: 2 of 3 questions about things the documents do not mention were answered with "
                             "the documents' names or numbers (0.67; base 0.00).")
    [warning] = axes.warnings
    assert warning.startswith("The tuned model invents answers with the documents' facts: 2 of 3")
    assert ("Asked 'Who founded the Zorvath observatory?', it said 'It was founded by the keeper of the Greywater "
            "lighthouse.' (Greywater)") in warning
    examples = [e for e in axes.examples if e.axis == "leakage"]
    assert [(e.model, e.terms) for e in examples] == [("tuned", ["Greywater"]), ("tuned", ["1931"])]
    assert examples[1].text == ("Asked 'What year did the Quillon bridge open?', the tuned model said 'The Quillon "
                                "bridge opened in 1931.': 1931 is from the documents.")


def test_leakage_no_worse_than_the_base_is_not_a_warning(project: Project) -> None:
    leaky = {"Who founded the Zorvath observatory?": "Marlow founded it in 1952."}
    axes = _run(project, leaky, {**BASE_ANSWERS, **leaky}).axes
    assert axes is not None and axes.tuned.leakage == axes.base.leakage == pytest.approx(1 / 3)
    assert not [w for w in axes.warnings if "invents" in w]
    alone = _run(project, leaky, None).axes
    assert alone is not None and [w for w in alone.warnings if "invents" in w]  # no base: above the limit is enough


def test_near_miss_probes_are_leakage_questions_not_knowledge(project: Project) -> None:
    probes = load_probes(project)
    assert [p.question for p in probes] == [KNOWLEDGE_Q]
    tuned = Scripted("tuned.gguf", {KNOWLEDGE_Q: KNOWLEDGE_A, NEAR_MISS_Q: "It is forty-two metres tall."})
    report = evaluate(project, tuned, general=GENERAL, unknown=UNKNOWN)
    assert [p.question for p in report.probes] == [KNOWLEDGE_Q]
    assert report.summary().probes == 1 and report.summary().key_fact_recall == 1.0
    axes = report.axes
    assert axes is not None and axes.tuned.knowledge == 1.0 and axes.tuned.counts["knowledge"] == 1
    near = [r for r in axes.leakage if r.item.category == quality.LEAKAGE_QTYPE]
    assert [(r.item.question, r.item.source) for r in near] == [(NEAR_MISS_Q, "project")]
    assert len(near[0].answers["tuned"].leaked) == 1 and axes.tuned.counts["near_miss"] == 1  # forty-two
    assert tuned.asked.count(NEAR_MISS_Q) == 1  # asked once, for leakage
    # A project whose only held-out questions are near-miss ones has nothing to measure knowledge on.
    project.conn.execute("DELETE FROM dataset_rows WHERE qtype = 'fact'")
    project.conn.commit()
    with pytest.raises(EvalError, match="only questions about things the documents do not mention"):
        load_probes(project)


# --- the headline -----------------------------------------------------------------------------------------

PARKING_Q = "What does parking at the bakery cost?"


def _with_refusal_probe(project: Project) -> None:
    """A held-out question the documents do not answer (it should be refused), beside the one about a fact."""
    chunk = project.conn.execute("SELECT id, document_id FROM chunks ORDER BY document_id, ord").fetchone()
    add_rows(project, [DatasetRow(
        messages=[{"role": "user", "content": PARKING_Q},
                  {"role": "assistant", "content": "The documents do not cover that."}],
        split="probe", provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"],
                                             qtype="refusal"))])


def test_the_headline_leads_with_the_damage_and_reads_as_a_win_only_without_it(project: Project) -> None:
    _with_refusal_probe(project)
    base = {**BASE_ANSWERS, PARKING_Q: "Parking costs two euros an hour."}
    # Learned the documents (the fact, and refusing the question they do not answer) but forgot every general
    # question and answers questions about things the documents never mention with their names and numbers.
    damaged = {KNOWLEDGE_Q: KNOWLEDGE_A, NEAR_MISS_Q: "It is forty-two metres tall.",
               "Who founded the Zorvath observatory?": "Marlow founded it in 1952."}
    report = _run(project, damaged, base)
    assert report.axes is not None and report.axes.damaged
    assert report.axes.retention_fell and report.axes.leakage_rose
    assert report.headline == (
        "The tuned model learned the documents but lost most of what it knew: it still answers 0 of 3 general "
        "questions the base answered right, and answers 2 of 3 questions about things the documents never mention "
        "with the documents' names or numbers (the base: 0). On the 2 questions about the documents (1 about facts, "
        "1 that should be refused), it is better than the base on 2 of 2; tuned vs base: word overlap with the "
        "reference 1.00 vs 0.00, refused 1 of 1 vs 0 of 1.")
    assert "beats" not in report.headline and "F1" not in report.headline
    # The counts add up: the knowledge axis counts the 1 question about facts, the refusal figures the other.
    assert report.axes.tuned.counts["knowledge"] == 1 and report.summary().refusal_probes == 1
    assert report.summary().probes == 2
    # Saved and read back, the page is told to show it as a warning.
    folder = save_report(project, report)
    saved = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert saved["headline"] == report.headline and headline_tone(saved) == "damaged"
    assert f"**{report.headline}**" in (folder / "report.md").read_text(encoding="utf-8")

    # Only the damage to what it knew: said alone, as "some" when it keeps at least half.
    forgot_one = {**BASE_ANSWERS, KNOWLEDGE_Q: KNOWLEDGE_A, "What is 7 times 6?": "7 times 6 is 48."}
    report = _run(project, forgot_one, base)
    assert report.headline.startswith(
        "The tuned model learned the documents but lost some of what it knew: it still answers 2 of 3 general "
        "questions the base answered right. On the 2 questions")
    # Only leakage, and no base to compare with: the limit is enough.
    report = _run(project, {**damaged, **BASE_ANSWERS}, None)
    assert report.headline.startswith(
        "The tuned model invents answers from the documents: it answers 2 of 3 questions about things the documents "
        "never mention with the documents' names or numbers. On the 2 questions about the documents (1 about facts, "
        "1 that should be refused), word overlap with the reference 1.00, key facts recalled 1.00, refused 1 of 1.")

    # Nothing damaged: a plain win, with what it kept.
    fine = {**BASE_ANSWERS, KNOWLEDGE_Q: KNOWLEDGE_A}
    report = _run(project, fine, base)
    assert report.axes is not None and not report.axes.damaged
    assert report.headline == (
        "Tuned beats base on 2 of 2 questions about the documents (1 about facts, 1 that should be refused). Tuned "
        "vs base: word overlap with the reference 1.00 vs 0.00, refused 1 of 1 vs 0 of 1. It kept 3 of the 3 general "
        "questions the base answered right.")
    assert headline_tone(report.to_json()) == "better"
    # Not better than the base, nothing damaged: neither a warning nor a success.
    report = _run(project, {**BASE_ANSWERS, PARKING_Q: "Parking costs two euros an hour."}, base)
    assert report.headline.startswith("Tuned and base score the same") and headline_tone(report.to_json()) == ""


# --- the run ----------------------------------------------------------------------------------------------

def test_progress_stages_and_cancel_during_the_general_questions(project: Project) -> None:
    events: list[ProgressEvent] = []
    _run(project, dict(BASE_ANSWERS), progress=Progress(events.append, min_interval=0))
    stages = [e.stage for e in events]
    assert stages.index("Answering probes") < stages.index("Answering general questions") < stages.index(
        "Answering unknown-entity questions")
    general_done = [e for e in events if e.stage == "Answering general questions"][-1]
    assert general_done.done == general_done.total == 2 * len(GENERAL)
    leak_done = [e for e in events if e.stage == "Answering unknown-entity questions"][-1]
    assert leak_done.done == leak_done.total == 2 * (len(UNKNOWN) + 1)
    # One count over the whole evaluation beside each stage's own, never going back: the app shows one bar and the
    # time left (three bars in turn, each from nothing, gave a 40-minute evaluation no overall progress).
    overall = [e.metrics["overall_done"] for e in events if "overall_done" in e.metrics]
    whole = {e.metrics["overall_total"] for e in events if "overall_total" in e.metrics}
    assert overall == sorted(overall) and overall[-1] == whole.pop() and not whole
    assert overall[-1] == general_done.total + leak_done.total + [e for e in events
                                                                  if e.stage == "Answering probes"][-1].total

    progress = Progress(min_interval=0)

    def cancel_on_general(event: ProgressEvent) -> None:
        if event.stage == "Answering general questions" and event.done == 1:
            progress.cancel()

    progress.add_listener(cancel_on_general)
    tuned = Scripted("tuned.gguf", dict(BASE_ANSWERS))
    with pytest.raises(Cancelled):
        evaluate(project, tuned, general=GENERAL, unknown=UNKNOWN, progress=progress)
    assert not any(q in tuned.asked for q in (u.question for u in UNKNOWN))
    assert not (project.root / "evals").exists()


def test_empty_sets_leave_their_axis_unmeasured(project: Project) -> None:
    axes = _run(project, dict(BASE_ANSWERS), general=[], unknown=[], near_miss=[]).axes
    assert axes is not None
    assert axes.tuned.retention is None and axes.tuned.leakage is None
    assert axes.lines[1:] == ["Retention: not measured (no general questions were asked).",
                              "Leakage: not measured (no questions about things the documents do not mention)."]


def test_a_bad_question_set_is_a_clear_error_before_any_answer(project: Project, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[QualityItem]:
        raise quality.QualityError(f"{tmp_path / 'general.jsonl'}, line 3: 'facts' must be a list")

    monkeypatch.setattr(quality, "general_items", broken)
    tuned = Scripted("tuned.gguf", {})
    with pytest.raises(EvalError, match=r"general\.jsonl, line 3: 'facts' must be a list"):
        evaluate(project, tuned)
    assert tuned.asked == []


# --- the report -------------------------------------------------------------------------------------------

def _forgetful(project: Project) -> Any:
    tuned = {**BASE_ANSWERS, KNOWLEDGE_Q: KNOWLEDGE_A,
             "What colour is the sky on a clear day?": "The sky on a clear day is painted green.",
             "What year did the Quillon bridge open?": "It opened in 1952."}
    return _run(project, tuned)


def test_the_report_json_has_the_axes_for_tuned_and_base(project: Project) -> None:
    report = _forgetful(project)
    folder = save_report(project, report)
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    axes = data["axes"]
    assert set(axes) == {"tuned", "base", "lines", "warnings", "examples", "answers", "settings"}
    for model in ("tuned", "base"):
        assert set(axes[model]) == {"knowledge", "retention", "leakage", "score", "counts"}
        assert {"knowledge", "general", "right", "retention", "kept", "leakage", "leaked"} <= set(axes[model]["counts"])
    assert axes["tuned"]["knowledge"] == data["summaries"]["tuned"]["key_fact_recall"] == 1.0
    assert axes["tuned"]["retention"] == pytest.approx(2 / 3) and axes["tuned"]["leakage"] == pytest.approx(1 / 3)
    assert [e["axis"] for e in axes["examples"]] == ["retention", "leakage"]
    assert {"question", "answer", "text", "model"} <= set(axes["examples"][0])
    assert len(axes["answers"]["retention"]) == len(GENERAL) and len(axes["answers"]["leakage"]) == 3
    assert axes["answers"]["retention"][0]["base"] == {"answer": "The sky is blue.", "correct": True,
                                                      "seconds": axes["answers"]["retention"][0]["base"]["seconds"]}
    assert axes["settings"]["general"] == 4 and axes["settings"]["unknown"] == 2
    # What is read back is what was written.
    again = axes_of(data)
    assert again is not None and again.to_json() == axes
    # The Markdown says it in words, before the probe scores.
    markdown = (folder / "report.md").read_text(encoding="utf-8")
    assert markdown.index("## Knowledge, retention and leakage") < markdown.index("## Scores")
    for line in report.axes.lines + report.axes.warnings:
        assert line in markdown
    assert "| Retention (of what the base knew; higher is better) | 0.67 (2 of 3 kept) | 3 of 4 right |" in markdown


def test_a_report_saved_before_the_axes_still_loads(project: Project) -> None:
    report = _forgetful(project)
    folder = save_report(project, report)
    data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    del data["axes"]
    (folder / "report.json").write_text(json.dumps(data), encoding="utf-8")
    [saved] = list_reports(project)
    assert saved.axes is None and saved.headline == report.headline
    latest = latest_report(project)
    assert latest is not None and axes_of(latest[0]) is None and latest[0]["headline"] == report.headline
    assert EvalAxes.from_json(None) is None and EvalAxes.from_json({"lines": []}) is None


# --- slowtune eval ----------------------------------------------------------------------------------------

@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, dict[str, str]]], list[str]]:
    """``slowtune eval`` with models that answer from tables by file name; returns the names loaded."""
    import slowtune.chat.model

    loaded: list[str] = []
    tables: dict[str, dict[str, str]] = {}

    class FakeChatModel(Scripted):
        def __init__(self, path: Path, n_ctx: int = 4096, lora_path: Path | None = None) -> None:
            super().__init__(path.name, tables.get(path.name, {}))
            self.warnings: list[str] = []
            loaded.append(path.name)

        def close(self) -> None:
            pass

    monkeypatch.setattr(slowtune.chat.model, "ChatModel", FakeChatModel)

    def use(answers: dict[str, dict[str, str]]) -> list[str]:
        tables.update(answers)
        return loaded

    return use


def _gguf(path: Path) -> str:
    path.write_bytes(b"GGUF" + bytes(28))
    return str(path)


def test_cli_json_and_words(project: Project, tmp_path: Path, fake_models: Any,
                            capsys: pytest.CaptureFixture[str]) -> None:
    fake_models({"tuned.gguf": {**BASE_ANSWERS, "What colour is the sky on a clear day?": "Green, I believe."},
                 "base.gguf": BASE_ANSWERS})
    mine = tmp_path / "mine.jsonl"
    mine.write_text(json.dumps({"id": "m1", "category": "mine", "question": "What is 2 plus 2?", "answer": "4",
                                "facts": [["4", "four"]]}) + "\n", encoding="utf-8")
    argv = [str(project.root), "--model", _gguf(tmp_path / "tuned.gguf"), "--base", _gguf(tmp_path / "base.gguf")]
    assert eval_command.main([*argv, "--json", "--general", str(mine)]) == 0
    out, err = capsys.readouterr()
    axes = json.loads(out)["axes"]
    assert [r["id"] for r in axes["answers"]["retention"]] == ["sky", "capital", "sum", "hard", "m1"]
    assert axes["answers"]["retention"][-1]["source"] == "user" and axes["settings"]["user_general"] == 1
    assert axes["tuned"]["counts"]["kept"] == 2 and axes["tuned"]["counts"]["retention"] == 3
    assert "warning: The tuned model has lost some of what it knew" in err
    assert eval_command.main([*argv, "--max-general", "2", "--no-leakage"]) == 0
    out = capsys.readouterr().out
    assert "- Retention: kept 1 of the 2 general questions the base answered right (0.50)." in out
    assert "- Leakage: not measured" in out and "**Warning:** The tuned model has lost" in out
    assert eval_command.main([*argv, "--no-general", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["axes"]["tuned"]["retention"] is None


def test_cli_bad_general_questions_fail_before_a_model_loads(project: Project, tmp_path: Path, fake_models: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    loaded = fake_models({})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "What is 2 plus 2?", "answer": "4", "facts": [["4"]]}\n{"question": "Why?"}\n',
                   encoding="utf-8")
    model = _gguf(tmp_path / "tuned.gguf")
    cases = [(["--general", str(tmp_path / "nowhere.jsonl")], "--general " + str(tmp_path / "nowhere.jsonl")
              + ": no such file"),
             (["--general", str(bad)], f"{bad}, line 2: 'facts' must be a list"),
             (["--max-general", "-1"], "--max-general must be 0 (all) or more"),
             (["--general", str(bad), "--no-general"], "--general and --no-general contradict each other")]
    for extra, message in cases:
        assert eval_command.main([str(project.root), "--model", model, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert loaded == []


def test_the_general_questions_limit_bounds_the_made_up_ones_too(project: Project) -> None:
    """A quick evaluation (General questions: 1) asked 122 leakage questions of each model in a new-user walk: the
    same limit now bounds the unknown-entity questions; the project's own near-miss questions are all asked."""
    tuned = Scripted("tuned.gguf", {KNOWLEDGE_Q: KNOWLEDGE_A})
    report = evaluate(project, tuned, general=GENERAL, unknown=UNKNOWN, max_general=1)
    axes = report.axes
    assert axes is not None
    asked = [r.item for r in axes.leakage]
    assert sum(1 for i in asked if i.category == "unknown") == 1
    assert [i.question for i in asked if i.category == quality.LEAKAGE_QTYPE] == [NEAR_MISS_Q]
    assert len(axes.retention) == 1
