"""Generation options (checked, stored with the project), the teacher and judge of a run and its estimate, and the
queries the Dataset page shows (documents, question types, what regenerating a chunk replaces)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from slowtune.dataset import DatasetRow, Provenance, add_rows, count_rows, question_types
from slowtune.documents import library
from slowtune.store import Project
from slowtune.teacher import cost, options, review, session
from slowtune.teacher.options import (
    GenerateOptions,
    OptionError,
    choose_teachers,
    estimate_run,
    load_options,
    parse_budget,
    save_options,
)
from slowtune.teacher.pipeline import DEFAULT_MIX, GenerateConfig, GenerationError, Plan
from slowtune.teacher.prompts import DEFAULT_STYLE
from slowtune.teacher.providers import ProviderError


@pytest.fixture
def project(tmp_path: Path) -> Any:
    with Project.create(tmp_path / "proj") as p:
        yield p


# --- the options -------------------------------------------------------------------------------------------------

def test_defaults_are_the_pipelines() -> None:
    opts = GenerateOptions()
    opts.validate()
    config = opts.to_config()
    assert config.mix == pytest.approx(DEFAULT_MIX)
    assert config.pairs_per_chunk is None and config.system_prompt is None and config.style == DEFAULT_STYLE
    assert config.judge and config.budget_usd is None
    assert opts.concurrency == options.DEFAULT_CONCURRENCY
    # The facts recipe and its knobs, as the pipeline has them.
    pipeline = GenerateConfig()
    assert config.recipe == pipeline.recipe == opts.recipe == "facts"
    assert (config.questions_per_fact, config.statements, config.near_miss_per_chunk,
            config.near_miss_probes_per_chunk) == (pipeline.questions_per_fact, pipeline.statements,
                                                   pipeline.near_miss_per_chunk,
                                                   pipeline.near_miss_probes_per_chunk) == (6, True, 2, 1)


def test_the_recipes_knobs_reach_the_config() -> None:
    config = GenerateOptions(recipe="facts", questions_per_fact=3, statements=False, near_miss_per_chunk=4,
                             near_miss_probes_per_chunk=0).to_config()
    assert (config.recipe, config.questions_per_fact, config.statements, config.near_miss_per_chunk,
            config.near_miss_probes_per_chunk) == ("facts", 3, False, 4, 0)
    assert GenerateOptions(recipe="plain", pairs_per_chunk=5).to_config().recipe == "plain"
    assert set(options.QTYPE_LABELS) >= {"fact", "reversed", "context", "combination", "statement", "refusal",
                                         "near_miss"}


def test_to_config_normalises_the_mix_and_drops_empty_text() -> None:
    opts = GenerateOptions(budget_usd=2.5, pairs_per_chunk=3, mix={"fact": 30.0, "reasoning": 10.0, "refusal": 0.0},
                           system_prompt="  You help.  ", style="   ", judge=False)
    config = opts.to_config()
    assert config.mix == {"fact": 0.75, "reasoning": 0.25}
    assert config.system_prompt == "You help." and config.style == DEFAULT_STYLE
    assert config.pairs_per_chunk == 3 and config.budget_usd == 2.5 and not config.judge
    assert GenerateOptions(style="Short.").to_config().style == "Short."


@pytest.mark.parametrize(("opts", "field", "words"), [
    (GenerateOptions(budget_usd=-1.0), "budget_usd", "positive"),
    (GenerateOptions(budget_usd=math.inf), "budget_usd", "positive"),
    (GenerateOptions(pairs_per_chunk=0), "pairs_per_chunk", "between 1 and 20"),
    (GenerateOptions(pairs_per_chunk=21), "pairs_per_chunk", "Automatic"),
    (GenerateOptions(mix={"fact": 1.0, "poetry": 1.0}), "mix", "unknown question type poetry"),
    (GenerateOptions(mix={"fact": -1.0, "reasoning": 5.0}), "mix", "negative"),
    (GenerateOptions(mix={"fact": 0.0}), "mix", "add up to 0%"),
    (GenerateOptions(concurrency=0), "concurrency", "between 1 and 64"),
    (GenerateOptions(concurrency=65), "concurrency", "between 1 and 64"),
    (GenerateOptions(recipe="poetry"), "recipe", "“poetry” is not a recipe; choose facts or plain"),
    (GenerateOptions(questions_per_fact=0), "questions_per_fact", "between 1 and 12"),
    (GenerateOptions(questions_per_fact=13), "questions_per_fact", "between 1 and 12"),
    (GenerateOptions(near_miss_per_chunk=-1), "near_miss_per_chunk", "between 0 and 10"),
    (GenerateOptions(near_miss_probes_per_chunk=6), "near_miss_probes_per_chunk", "between 0 and 5"),
])
def test_validate_names_the_field(opts: GenerateOptions, field: str, words: str) -> None:
    with pytest.raises(OptionError) as info:
        opts.to_config()
    assert info.value.field == field
    assert str(info.value).startswith(options.FIELD_LABELS[field] + ":") and words in str(info.value)


def test_parse_budget() -> None:
    assert parse_budget("") is None and parse_budget("  ") is None
    assert parse_budget("2") == 2.0 and parse_budget("$2.50") == 2.5 and parse_budget(" 1,000 ") == 1000.0
    for text in ("ten dollars", "-1", "0", "nan", "inf"):
        with pytest.raises(OptionError, match=r"^Budget:") as info:
            parse_budget(text)
        assert info.value.field == "budget_usd"


def test_from_json_keeps_right_types_and_defaults_wrong_ones() -> None:
    chosen = GenerateOptions(budget_usd=3.0, pairs_per_chunk=2, mix={"fact": 100.0}, system_prompt="S", style="T",
                             judge=False, judge_provider="other", judge_model="big", concurrency=2, recipe="plain",
                             questions_per_fact=3, statements=False, near_miss_per_chunk=0,
                             near_miss_probes_per_chunk=4)
    assert GenerateOptions.from_json(chosen.to_json()) == chosen
    assert GenerateOptions.from_json(json.loads(json.dumps(chosen.to_json()))) == chosen
    assert GenerateOptions.from_json("not a dict") == GenerateOptions()
    wrong = GenerateOptions.from_json({"budget_usd": "3", "pairs_per_chunk": True, "judge": "yes", "concurrency": 2.5,
                                       "mix": {"fact": "a lot"}, "system_prompt": 7, "judge_model": ["x"],
                                       "recipe": 1, "questions_per_fact": 2.0, "statements": "no",
                                       "near_miss_per_chunk": None, "near_miss_probes_per_chunk": True})
    assert wrong == GenerateOptions()
    kept_recipe = GenerateOptions.from_json({"recipe": "poetry", "questions_per_fact": 40})
    assert (kept_recipe.recipe, kept_recipe.questions_per_fact) == ("poetry", 40)  # named by validate
    kept = GenerateOptions.from_json({"budget_usd": -4, "mix": {"fact": 0}})  # named by validate, not changed
    assert kept.budget_usd == -4 and kept.mix == {"fact": 0.0}
    with pytest.raises(OptionError):
        kept.validate()


def test_options_saved_before_the_recipes_load_with_the_facts_defaults(project: Project) -> None:
    # What a project saved before the facts recipe existed: none of its keys.
    old = {"budget_usd": 2.0, "pairs_per_chunk": 3, "mix": {"fact": 60.0, "refusal": 40.0}, "system_prompt": "S",
           "style": "", "judge": True, "judge_provider": None, "judge_model": None, "concurrency": 4}
    project.set_meta(options.OPTIONS_META_KEY, json.dumps(old))
    loaded, problem = load_options(project)
    assert problem is None
    assert (loaded.budget_usd, loaded.pairs_per_chunk, loaded.mix, loaded.concurrency) == (2.0, 3, old["mix"], 4)
    assert (loaded.recipe, loaded.questions_per_fact, loaded.statements, loaded.near_miss_per_chunk,
            loaded.near_miss_probes_per_chunk) == ("facts", 6, True, 2, 1)
    loaded.validate()


def test_options_are_kept_with_the_project(project: Project) -> None:
    assert load_options(project) == (GenerateOptions(), None)
    chosen = GenerateOptions(budget_usd=1.5, pairs_per_chunk=4, judge_model="judge-large", concurrency=3,
                             recipe="plain", questions_per_fact=9, near_miss_probes_per_chunk=2)
    save_options(project, chosen)
    assert load_options(project) == (chosen, None)
    project.set_meta(options.OPTIONS_META_KEY, "{broken")
    opts, problem = load_options(project)
    assert opts == GenerateOptions() and problem is not None and "could not be read" in problem


def test_summary_says_what_the_next_run_does() -> None:
    default = GenerateOptions().summary()
    assert default.startswith("no budget · facts recipe: 6 questions per fact and its statement · 2 near-miss "
                              "refusals and 1 held-out near-miss probe per chunk · ")
    assert "judged by the teacher" in default and default.endswith("8 parallel calls")
    assert "1 question per fact · 0 near-miss refusals and 0 held-out near-miss probes per chunk" in GenerateOptions(
        questions_per_fact=1, statements=False, near_miss_per_chunk=0, near_miss_probes_per_chunk=0).summary()
    plain = GenerateOptions(recipe="plain").summary()
    assert plain.startswith("no budget · plain Q&A · questions per chunk scaled with its length · facts 40%")
    chosen = GenerateOptions(recipe="plain", budget_usd=0.005, pairs_per_chunk=1, mix={"refusal": 1.0},
                             judge_provider="other", judge_model="big", system_prompt="S", concurrency=1).summary()
    assert chosen == ("budget $0.0050 per run · plain Q&A · 1 question per chunk · not in the documents 100% · judge "
                      "big on other · with a system prompt · 1 parallel call")
    assert "no judge" in GenerateOptions(judge=False, judge_model="big").summary()
    assert options.money(1234.5) == "$1,234.50" and options.money(0.001) == "$0.0010"


# --- teacher and judge -------------------------------------------------------------------------------------------

LOCAL = SimpleNamespace(id="local", in_process=True, needs_key=False)


@pytest.fixture
def chosen(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None, str | None]]:
    """session.choose, recorded: (provider, model, mode); a provider's default model is "<provider>-default"."""
    calls: list[tuple[str, str | None, str | None]] = []

    def choose(provider_id: str, model: str | None, *, mode: str | None = None, timeout: float = 30) -> Any:
        calls.append((provider_id, model, mode))
        return SimpleNamespace(provider=LOCAL, model=model or f"{provider_id}-default", free=True)

    monkeypatch.setattr(session, "choose", choose)
    return calls


def test_the_teacher_judges_unless_another_judge_is_chosen(chosen: list) -> None:
    teacher, judge = choose_teachers("t", "m", mode="text")
    assert teacher.model == "m" and judge is None and chosen == [("t", "m", "text")]
    chosen.clear()
    assert choose_teachers("t", "m", judge_provider="t", judge_model="m")[1] is None  # the same: one estimate
    assert choose_teachers("t", None, judge_model="t-default")[1] is None
    assert choose_teachers("t", "m", judge=False, judge_provider="j", judge_model="big")[1] is None
    assert chosen == [("t", "m", None), ("t", None, None), ("t", "m", None)]  # no judge was probed


def test_the_judges_model_defaults_by_provider(chosen: list) -> None:
    _, judge = choose_teachers("t", "m", judge_model="big", mode="json_object")
    assert judge.model == "big" and chosen[-1] == ("t", "big", None)  # the mode is the teacher's only
    _, judge = choose_teachers("t", "m", judge_provider="j")
    assert judge.model == "j-default" and chosen[-1] == ("j", None, None)  # not the teacher's model elsewhere
    _, judge = choose_teachers("t", "m", judge_provider="j", judge_model="big")
    assert judge.model == "big" and chosen[-1] == ("j", "big", None)


def test_a_missing_key_is_said_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    paid = SimpleNamespace(id="paid", preset="openai", in_process=False, needs_key=True)
    monkeypatch.setattr(session, "choose", lambda provider_id, model, **kw: SimpleNamespace(provider=paid, model="m"))
    with pytest.raises(ProviderError, match="No API key for provider 'paid'"):
        choose_teachers("paid", "m")


# --- the estimate ------------------------------------------------------------------------------------------------

PLAN = Plan(chunks=10, calls=15, input_tokens=20_000, output_tokens=5_000, chunk_tokens=4_000, judge_calls=10,
            judge_input_tokens=9_000, judge_output_tokens=1_000)
MINI = SimpleNamespace(model="gpt-4o-mini", free=False)
UNKNOWN = SimpleNamespace(model="mystery-model", free=False)
FREE = SimpleNamespace(model="llama3.1:8b", free=True)


def test_one_estimate_for_teacher_and_judge_together() -> None:
    [(who, e)] = estimate_run(PLAN, MINI, None, None)
    assert who == "teacher and judge" and (e.calls, e.input_tokens, e.output_tokens) == (25, 29_000, 6_000)
    assert e.cost_usd == pytest.approx(cost.estimate("gpt-4o-mini", 25, 29_000, 6_000).cost_usd)
    no_judge = Plan(chunks=10, calls=15, input_tokens=20_000, output_tokens=5_000, chunk_tokens=4_000)
    assert estimate_run(no_judge, MINI, None, None)[0][0] == "teacher"


def test_one_estimate_each_for_another_judge() -> None:
    (teacher, t), (judge, j) = estimate_run(PLAN, FREE, MINI, 5.0)
    assert (teacher, judge) == ("teacher", "judge")
    assert t.free and t.cost_usd == 0.0 and (t.calls, t.input_tokens) == (15, 20_000)
    assert j.model == "gpt-4o-mini" and (j.calls, j.input_tokens, j.output_tokens) == (10, 9_000, 1_000)


def test_a_budget_needs_a_price() -> None:
    assert estimate_run(PLAN, UNKNOWN, None, None)[0][1].cost_usd is None  # no budget: an unknown price is fine
    with pytest.raises(GenerationError) as info:
        estimate_run(PLAN, FREE, UNKNOWN, 1.0, without_budget="leave out --budget")
    message = str(info.value)
    assert message.startswith("A budget needs a price for model mystery-model: add it to ")
    assert str(cost.user_prices_file()) in message and message.endswith("or leave out --budget.")
    assert estimate_run(PLAN, FREE, None, 1.0)[0][1].cost_usd == 0.0


def test_nothing_to_prepare_when_there_are_no_chunks(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "choose", lambda *a, **kw: pytest.fail("nothing should be probed"))
    assert options.prepare_run(project, "t", None, GenerateOptions()) is None
    with pytest.raises(OptionError):
        options.prepare_run(project, "t", None, GenerateOptions(concurrency=0))


# --- what the Dataset page shows ---------------------------------------------------------------------------------

def test_library_and_dataset_queries(tmp_path: Path, project: Project) -> None:
    assert not library.has_chunks(project) and library.document_titles(project) == []
    assert count_rows(project) == 0 and question_types(project) == []
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("The lighthouse is forty-two metres tall. " * 20, encoding="utf-8")
    (docs / "orchard.md").write_text("# Orchard\n\nEleven varieties of apples grow there. " * 10, encoding="utf-8")
    library.ingest(project, [docs], chunk_tokens=40, chunk_overlap=0, workers=1)
    assert library.has_chunks(project)
    assert [title for _, title in library.document_titles(project)] == ["notes", "Orchard"]
    project.conn.execute("UPDATE documents SET title = NULL WHERE path LIKE '%notes.txt'")
    assert [title for _, title in library.document_titles(project)] == ["notes.txt", "Orchard"]  # by its file
    chunk = project.conn.execute("SELECT id, document_id FROM chunks ORDER BY document_id, ord").fetchone()

    def row(question: str, qtype: str | None, **kw: Any) -> DatasetRow:
        return DatasetRow(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": "A."}],
                          provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"], qtype=qtype),
                          **kw)

    add_rows(project, [row("Q1?", "fact"), row("Q2?", "reasoning"), row("Q3?", "fact", split="probe"),
                       row("Q4?", None, source="manual")])
    assert count_rows(project) == 4 and question_types(project) == ["fact", "reasoning"]
    ids = [r.id for r in review.list_rows(project)]
    review.set_status(project, [ids[1]], "rejected")
    review.edit_row(project, ids[0], [{"role": "user", "content": "Q1, edited?"}, {"role": "assistant", "content": "B."}])

    info = review.chunk_rows(project, chunk["id"])
    assert info == review.ChunkRows(chunk["id"], "notes.txt", info.tokens, replaced=2, probes=1, reviewed=1, kept=2)
    assert info.tokens > 0
    review.clear_chunk(project, chunk["id"])  # removes what chunk_rows said it would replace
    assert [r.id for r in review.list_rows(project)] == [ids[0], ids[3]]
    project.conn.execute("UPDATE documents SET status = 'removed' WHERE id = ?", (chunk["document_id"],))
    assert review.chunk_rows(project, chunk["id"]) is None
