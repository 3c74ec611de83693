"""The Dataset page, driven as a user would: Generate against a fake teacher over real HTTP, confirm (or decline)
sending the text, then review rows with the keyboard and read the report."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction

from slowtune import secrets
from slowtune.dataset import DatasetRow, Provenance, add_rows
from slowtune.documents.library import ingest
from slowtune.gui import dataset as page_module
from slowtune.gui.app import MainWindow, make_app
from slowtune.gui.dataset import DatasetPage, OptionsDialog
from slowtune.gui.qtcompat import emit
from slowtune.settings import load_settings, save_settings
from slowtune.store import Project
from slowtune.teacher import cost, review
from slowtune.teacher import providers as pv
from slowtune.teacher.options import GenerateOptions, load_options, save_options
from slowtune.testing.fake_openai import FakeTeacher

KEY = "fake-teacher-credential-d4t4s3t"
TIMEOUT_MS = 20_000
DOCS = {
    "orchard.md": "# Orchard\n\nThe Hollow Oak orchard grows eleven varieties of heritage apples on the north slope. "
                  "Its oldest tree was planted in 1887 by a clockmaker named Edda Strom.\n",
    "lighthouse.md": "# Lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt outcrop. "
                     "Its lamp was converted from paraffin to electricity in 1931.\n",
}
# More text, for a run long enough that a budget stops it part-way: three documents of three short paragraphs.
LONG_DOCS = {
    "orchard.md": "# Orchard\n\nThe Hollow Oak orchard grows eleven varieties of heritage apples on the north slope. "
                  "Its oldest tree was planted in 1887 by a clockmaker named Edda Strom.\n\nHarvest starts in the "
                  "second week of September and lasts about five weeks. Windfall apples are pressed into cider at "
                  "the barn beside the river.\n\nVisitors may pick their own fruit on Saturdays between nine and "
                  "noon. The orchard uses no synthetic pesticides and relies on ladybirds against aphids.\n",
    "lighthouse.md": "# Lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt outcrop. "
                     "Its lamp was converted from paraffin to electricity in 1931.\n\nThe keeper's cottage now "
                     "houses a small museum of shipwreck salvage. A fog signal sounds twice every thirty seconds "
                     "when visibility drops below a mile.\n\nThe stairway has two hundred and seventeen cast-iron "
                     "steps. Guided climbs run every afternoon from April to October.\n",
    "bakery.md": "# Bakery\n\nMarlow's bakery bakes its sourdough with a starter kept alive since 1952. The rye loaf "
                 "contains caraway seeds and a spoon of black treacle.\n\nDough rests overnight in a cool cellar at "
                 "eleven degrees Celsius. The shop opens at six in the morning except on public holidays.\n\n"
                 "Day-old bread is donated to the shelter on Canal Street every evening. Customers can order "
                 "birthday cakes three days in advance.\n",
}


@pytest.fixture
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=KEY) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _forget_keys() -> Iterator[None]:
    yield
    for provider in pv.list_providers():
        secrets.delete_secret(secrets.provider_key_name(provider.id))


def make_project(folder: Path, docs_text: dict[str, str]) -> Path:
    docs = folder / "docs"
    docs.mkdir()
    for name, text in docs_text.items():
        (docs / name).write_text(text, encoding="utf-8")
    with Project.create(folder / "proj") as project:
        ingest(project, [docs], chunk_tokens=40, chunk_overlap=0, workers=1)
    return folder / "proj"


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    return make_project(tmp_path, DOCS)


@pytest.fixture
def with_teacher(teacher: FakeTeacher) -> FakeTeacher:
    pv.add_provider("fake", "custom", base_url=teacher.base_url, model="teacher-small", key=KEY, replace=True)
    settings = load_settings().settings
    settings.teacher_provider, settings.teacher_model = "fake", "teacher-small"
    save_settings(settings)
    return teacher


def open_window(qtbot, root: Path) -> MainWindow:
    make_app(["slowtune"])
    win = MainWindow(open_last_project=False)
    qtbot.addWidget(win)
    assert win.open_project(root)
    win.show_page(2)
    return win


@pytest.fixture
def window(qtbot, project_root: Path) -> Iterator[MainWindow]:
    win = open_window(qtbot, project_root)
    yield win
    win.runner.cancel_all()
    win.runner.wait_all(5)


@pytest.fixture
def page(window: MainWindow) -> DatasetPage:
    return window.dataset


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Answers the confirmation with yes, unless the test puts False first in the list."""
    texts: list[str] = []

    def ask(parent: object, title: str, text: str, yes: str) -> bool:
        answer = not (texts and texts[0] is False)  # type: ignore[comparison-overlap]
        texts.append(text)
        return answer

    monkeypatch.setattr(page_module, "ask", ask)
    return texts


def generate(qtbot, window: MainWindow, page: DatasetPage) -> None:
    page.generate_button.click()
    qtbot.waitUntil(lambda: not page.busy() and not window.runner.active_jobs(), timeout=TIMEOUT_MS)


def statuses(project: Project) -> dict[int, str]:
    return {r.id: r.status for r in review.list_rows(project) if r.id is not None}


def test_the_page_replaces_the_placeholder(window: MainWindow, page: DatasetPage) -> None:
    assert window.pages.widget(2) is page and page.objectName() == "page-dataset"
    # No command on the page; the window's Copy as Command has it.
    assert "slowtune generate" not in page.label.text() and "Terminal" not in page.label.text()
    command = page.command_line()
    assert page.project is not None and command is not None and command.startswith("slowtune generate ")
    assert str(page.project.root) in command


def test_empty_states_say_what_to_do(qtbot, tmp_path: Path) -> None:
    make_app(["slowtune"])
    win = MainWindow(open_last_project=False)
    qtbot.addWidget(win)
    page = win.dataset
    assert "No project is open" in page.label.text()
    assert win.new_project("empty")
    assert "Library" in page.label.text() and not page.generate_button.isVisibleTo(page)


def test_no_teacher_points_to_providers(qtbot, window: MainWindow, page: DatasetPage) -> None:
    assert "Providers" in page.teacher_label.text()
    assert page.generate() is None
    assert "Providers page" in page.banner.text.text()


def test_generate_review_and_report(qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage,
                                   asked: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    generate(qtbot, window, page)
    assert len(asked) == 1 and "127.0.0.1" in asked[0] and "chunks" in asked[0] and "Estimate" in asked[0]
    assert with_teacher.stats()["by_task"].get("facts")  # the default recipe
    assert page.banner.level != "error", page.banner.text.text()
    model = page.model
    assert model.rowCount() > 1
    assert model.index(0, 0).data()  # a question
    report = page.report.toPlainText()
    assert "Training: " in report and "accepted" in report and "Chunks: " in report and "Teacher: " in report
    # In words, not the terminal's report: kinds as the Type column says them, a free local teacher costs nothing.
    assert "Kinds of rows: " in report and "no cost" in report and "$0.0000" not in report + page.banner.text.text()

    project = window.project
    assert project is not None
    table = page.table
    table.setFocus()
    first, second = model.rows[0].id, model.rows[1].id
    qtbot.keyClick(table, Qt.Key.Key_J)  # nothing selected: J goes to the first row
    assert table.current_row() == 0
    qtbot.keyClick(table, Qt.Key.Key_R)  # reject, and move on
    assert statuses(project)[first] == "rejected" and table.current_row() == 1
    assert model.rows[0].status == "rejected" and "rejected by you" in model.index(0, 5).data()
    assert "Rejected by: you 1" in page.report.toPlainText()
    qtbot.keyClick(table, Qt.Key.Key_K)
    assert table.current_row() == 0
    qtbot.keyClick(table, Qt.Key.Key_A)
    assert statuses(project)[first] == "accepted" and table.current_row() == 1
    assert statuses(project)[second] == model.rows[1].status

    edits: list[tuple[str, str]] = []

    def edit(parent: object, question: str, answer: str) -> tuple[str, str]:
        edits.append((question, answer))
        return "Who planted the oldest tree?", "Edda Strom, a clockmaker, in 1887."

    monkeypatch.setattr(page_module, "edit_conversation", edit)
    before = page_module.question_of(model.rows[1])
    qtbot.keyClick(table, Qt.Key.Key_Return)
    assert edits and edits[0][0] == before
    row = review.get_row(project, second)
    assert page_module.question_of(row) == "Who planted the oldest tree?"
    assert page_module.answer_of(row) == "Edda Strom, a clockmaker, in 1887."
    assert model.index(1, 0).data() == "Who planted the oldest tree?"

    # The filters narrow the table.
    page.status_filter.setCurrentIndex(page.status_filter.findText("Rejected"))
    assert all(r.status == "rejected" for r in model.rows)


def test_declining_sends_nothing(qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage,
                                 asked: list) -> None:
    asked.append(False)
    generate(qtbot, window, page)
    assert len(asked) == 2 and "127.0.0.1" in asked[1]
    assert with_teacher.stats()["by_task"] == {}
    assert "Nothing was sent" in page.banner.text.text()
    assert page.model.rowCount() == 0


# --- generation options ------------------------------------------------------------------------------------------

SYSTEM_PROMPT = "You answer questions about the Greywater coast."
STYLE = "Answer in one short sentence, like a tour guide."


def set_options(page: DatasetPage, *, recipe: str | None = None, questions_per_fact: int | None = None,
                statements: bool | None = None, near_miss: int | None = None, near_miss_probes: int | None = None,
                budget: str | None = None, pairs: int | None = None,
                mix: dict[str, int] | None = None, system_prompt: str | None = None, style: str | None = None,
                judge: bool | None = None, judge_model: str | None = None,
                concurrency: int | None = None) -> OptionsDialog:
    """Open Options…, set what is given, and click OK, as a user would (the plain recipe's knobs are set after
    choosing it, as they are shown only then)."""
    dialog = page.open_options()
    assert dialog is not None and dialog.isVisible()
    if recipe is not None:
        dialog.recipe.setCurrentIndex(dialog.recipe.findData(recipe))
    for spin, value in ((dialog.questions_per_fact, questions_per_fact), (dialog.near_miss, near_miss),
                        (dialog.near_miss_probes, near_miss_probes)):
        if value is not None:
            assert spin.isVisibleTo(dialog)
            spin.setValue(value)
    if statements is not None:
        dialog.statements.setChecked(statements)
    if pairs is not None or mix is not None:
        assert dialog.pairs.isVisibleTo(dialog)
    if budget is not None:
        dialog.budget.setText(budget)
    if pairs is not None:
        dialog.pairs.setValue(pairs)
    if mix is not None:
        for qtype, spin in dialog.mix.items():
            spin.setValue(mix.get(qtype, 0))
    if system_prompt is not None:
        dialog.system_prompt.setPlainText(system_prompt)
    if style is not None:
        dialog.style.setPlainText(style)
    if judge is not None:
        dialog.judge.setChecked(judge)
    if judge_model is not None:
        dialog.judge_model.setText(judge_model)
    if concurrency is not None:
        dialog.concurrency.setValue(concurrency)
    dialog.ok_button.click()
    return dialog


def chunk_ids(project: Project) -> list[str]:
    return [r["id"] for r in project.conn.execute("SELECT id FROM chunks ORDER BY document_id, ord")]


def generate_requests(project: Project) -> list[str]:
    """The task message of every generate request the teacher answered (as recorded in the project's cache)."""
    texts = []
    for r in project.conn.execute("SELECT request_json FROM generation_cache"):
        user = json.loads(r["request_json"])["messages"][-1]["content"]
        if user.startswith("Task: generate"):
            texts.append(user)
    return texts


def test_options_shape_what_the_teacher_is_asked_and_persist(
        qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage, asked: list,
        project_root: Path) -> None:
    dialog = set_options(page, recipe="plain", pairs=2, mix={"fact": 100}, system_prompt=SYSTEM_PROMPT, style=STYLE,
                         judge=False, concurrency=1)
    assert dialog.result() == OptionsDialog.DialogCode.Accepted
    assert "2 questions per chunk" in page.options_label.text() and "no judge" in page.options_label.text()
    generate(qtbot, window, page)
    assert len(asked) == 1 and "2 questions per chunk" in asked[0] and "Estimate (teacher):" in asked[0]
    assert page.banner.level == "info", page.banner.text.text()

    stats = with_teacher.stats()
    assert stats["by_task"].get("generate") and "judge" not in stats["by_task"] and "facts" not in stats["by_task"]
    assert stats["max_inflight"] == 1
    project = window.project
    assert project is not None
    requests = generate_requests(project)
    assert len(requests) == len(chunk_ids(project))
    for text in requests:
        assert "Write exactly 2 items:" in text and "- fact: 2 (" in text
        assert "- reasoning:" not in text and "- refusal:" not in text
        assert f"Answer style: {STYLE}" in text
    rows = review.list_rows(project, review.RowFilter(limit=1000))
    written = [r for r in rows if r.split != "probe"]
    assert Counter(r.provenance.chunk_id for r in written) == {c: 2 for c in chunk_ids(project)}
    assert {r.provenance.qtype for r in written} == {"fact"}
    assert all(r.messages[0] == {"role": "system", "content": SYSTEM_PROMPT} for r in rows)

    # The options come back with the project in a new window, and another project has its own.
    chosen = page.options
    other = open_window(qtbot, project_root)
    assert other.dataset.options == chosen
    again = other.dataset.open_options()
    assert again is not None
    assert again.recipe.currentData() == "plain" and again.pairs.isVisibleTo(again)
    assert again.pairs.value() == 2 and again.mix["fact"].value() == 100 and again.mix["refusal"].value() == 0
    assert again.system_prompt.toPlainText() == SYSTEM_PROMPT and again.style.toPlainText() == STYLE
    assert not again.judge.isChecked() and again.concurrency.value() == 1 and again.budget.text() == ""
    again.reject()
    assert other.new_project("elsewhere")
    assert other.dataset.options == GenerateOptions()


def facts_requests(project: Project) -> list[str]:
    """The task message of every facts request the teacher answered."""
    return [json.loads(r["request_json"])["messages"][-1]["content"]
            for r in project.conn.execute("SELECT request_json FROM generation_cache")
            if json.loads(r["request_json"])["messages"][-1]["content"].startswith("Task: facts")]


def test_the_options_show_the_recipe_and_its_knobs_and_save_them(
        qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage, asked: list,
        project_root: Path) -> None:
    dialog = page.open_options()
    assert dialog is not None
    # Facts is the default and recommended recipe; its knobs are shown, the plain recipe's are not.
    assert dialog.recipe.currentData() == "facts" and "recommended" in dialog.recipe.currentText()
    assert [dialog.recipe.itemText(i) for i in range(dialog.recipe.count())] == [
        "Facts: teaches facts and keeps the model itself (recommended)", "Plain Q&A"]
    facts_knobs = (dialog.questions_per_fact, dialog.statements, dialog.near_miss, dialog.near_miss_probes)
    assert all(w.isVisibleTo(dialog) for w in facts_knobs) and not dialog.pairs.isVisibleTo(dialog)
    assert not dialog.form.labelForField(dialog.pairs).isVisibleTo(dialog)
    assert (dialog.questions_per_fact.value(), dialog.statements.isChecked(), dialog.near_miss.value(),
            dialog.near_miss_probes.value()) == (6, True, 2, 1)
    dialog.recipe.setCurrentIndex(dialog.recipe.findData("plain"))
    assert dialog.pairs.isVisibleTo(dialog) and not any(w.isVisibleTo(dialog) for w in facts_knobs)
    dialog.reject()

    set_options(page, recipe="facts", questions_per_fact=4, statements=False, near_miss=1, near_miss_probes=2,
                judge=False)
    assert page.options.recipe == "facts"
    assert (page.options.questions_per_fact, page.options.statements, page.options.near_miss_per_chunk,
            page.options.near_miss_probes_per_chunk) == (4, False, 1, 2)
    assert "4 questions per fact ·" in page.options_label.text()  # no statements
    generate(qtbot, window, page)
    assert page.banner.level == "info", page.banner.text.text()
    project = window.project
    assert project is not None
    requests = facts_requests(project)
    assert len(requests) == len(chunk_ids(project))
    assert all("For each fact write exactly 4 questions:" in t for t in requests)
    near = [re.search(r"^Near-miss questions: exactly (\d+)\.$", t, re.MULTILINE) for t in requests]
    # 1 to train on and 2 held out for a training chunk; 1 for a validation chunk.
    assert "3" in {m.group(1) for m in near if m} and {m.group(1) if m else None for m in near} <= {"3", "1"}
    written = review.list_rows(project, review.RowFilter(limit=1000))
    assert "statement" not in {r.provenance.qtype for r in written}
    assert {"fact", "reversed", "context", "combination", "refusal"} <= {r.provenance.qtype for r in written}
    # The new kinds have labels in the type filter.
    labels = {page.type_filter.itemText(i) for i in range(page.type_filter.count())}
    assert {"Reversed", "In context", "Combined facts", "Near misses (held out)"} <= labels

    # Saved with the project: a new window shows them.
    other = open_window(qtbot, project_root)
    again = other.dataset.open_options()
    assert again is not None and again.recipe.currentData() == "facts"
    assert (again.questions_per_fact.value(), again.statements.isChecked(), again.near_miss.value(),
            again.near_miss_probes.value()) == (4, False, 1, 2)
    again.reject()


def test_the_estimate_uses_the_options(qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage,
                                       asked: list) -> None:
    cost.write_user_price("teacher-small", 0.5, 1.5)
    asked.append(False)  # decline every time: only the statements are wanted
    generate(qtbot, window, page)
    set_options(page, judge=False, budget="$3")
    generate(qtbot, window, page)
    default, chosen = asked[1], asked[2]
    chunks = int(re.search(r"from ([\d,]+) chunks", default).group(1))  # type: ignore[union-attr]

    def calls(text: str) -> int:
        return int(re.search(r"≈ ([\d,]+) calls?", text).group(1).replace(",", ""))  # type: ignore[union-attr]

    assert "Estimate (teacher and judge)" in default and "Budget" not in default
    assert "Estimate (teacher):" in chosen and calls(chosen) == calls(default) - chunks  # no judge call per chunk
    assert "the run stops before it spends more than $3.00" in chosen
    assert with_teacher.stats()["by_task"] == {}


def test_a_budget_stops_the_run_and_shows_in_the_progress(qtbot, with_teacher: FakeTeacher, tmp_path: Path,
                                                          asked: list) -> None:
    cost.write_user_price("teacher-small", 100.0, 400.0)  # absurd prices make a small budget bite fast
    window = open_window(qtbot, make_project(tmp_path, LONG_DOCS))
    page = window.dataset
    set_options(page, budget="0.8", recipe="plain", pairs=2, concurrency=1)
    shown: list[str] = []
    set_text = page.progress_label.setText
    page.progress_label.setText = lambda text: (shown.append(text), set_text(text))  # type: ignore[method-assign]
    generate(qtbot, window, page)
    assert "the run stops before it spends more than $0.80" in asked[0]
    result = page.last_result
    project = window.project
    assert project is not None and result is not None
    total = len(chunk_ids(project))
    assert result.stopped == "budget" and 0 < result.chunks_done < total and result.cost_usd <= 0.8
    assert page.banner.level == "warning"
    assert "Stopped at the budget" in page.banner.text.text() and "of its $0.80 budget" in page.banner.text.text()
    assert any(re.search(r"\$\d+\.\d{4} of \$0\.80 budget", text) for text in shown), shown
    assert review.report(project).chunks_generated == result.chunks_done


def test_a_teacher_on_this_computer_is_free(qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage,
                                           asked: list) -> None:
    """The test teacher listens on 127.0.0.1: no price is needed, even with a budget, and none is asked for."""
    set_options(page, budget="1", recipe="plain", pairs=1, concurrency=1)
    asked.append(False)  # the confirmation is enough; nothing needs sending
    generate(qtbot, window, page)
    assert len(asked) == 2, page.banner.text.text()
    assert "free: runs on this computer" in asked[1]
    assert "prices.json" not in asked[1] and "price" not in asked[1].lower()
    assert with_teacher.stats()["by_task"] == {}


@pytest.fixture
def teacher_without_model(teacher: FakeTeacher) -> FakeTeacher:
    """The test teacher added as a custom server with no default model, and chosen as the teacher."""
    pv.add_provider("fake", "custom", base_url=teacher.base_url, key=KEY, replace=True)
    settings = load_settings().settings
    settings.teacher_provider, settings.teacher_model = "fake", None
    save_settings(settings)
    return teacher


def test_generate_without_a_model_asks_for_one(qtbot, teacher_without_model: FakeTeacher, window: MainWindow,
                                               page: DatasetPage, asked: list) -> None:
    assert page.generate() is None
    dialog = page.model_dialog
    assert dialog is not None and dialog.isVisible()
    # The provider is asked for its models in a job; they fill the box (which still takes a typed name).
    qtbot.waitUntil(lambda: dialog.model.count() == 2, timeout=TIMEOUT_MS)
    assert [dialog.model.itemText(i) for i in range(2)] == ["judge-small", "teacher-small"]
    assert dialog.model.isEditable() and not dialog.ok_button.isEnabled()
    shown = " ".join([dialog.text.text(), dialog.status.text(), page.banner.text.text(),
                      page.banner.details.toPlainText(), window.statusBar().currentMessage()])
    assert "--model" not in shown and "slowtune provider" not in shown and "Traceback" not in shown
    assert "no default model" in page.banner.text.text()
    dialog.model.setCurrentIndex(1)
    assert dialog.ok_button.isEnabled()
    asked.append(False)  # the run's confirmation comes next: the choice went on into Generate
    dialog.ok_button.click()
    qtbot.waitUntil(lambda: len(asked) == 2, timeout=TIMEOUT_MS)
    assert "teacher-small" in asked[1]
    assert load_settings().settings.teacher_model == "teacher-small"
    assert "teacher-small" in page.teacher_label.text()


def test_the_options_choose_the_teachers_model_from_the_listed_ones(
        qtbot, teacher_without_model: FakeTeacher, window: MainWindow, page: DatasetPage) -> None:
    assert pv.check_provider(pv.get_provider("fake")).ok  # a test on the Providers page lists the models
    dialog = page.open_options()
    assert dialog is not None and dialog.teacher_model.isEnabled() and dialog.teacher_model.isEditable()
    assert [dialog.teacher_model.itemText(i) for i in range(dialog.teacher_model.count())] == [
        "judge-small", "teacher-small"]
    assert dialog.teacher_model.currentText() == ""
    dialog.teacher_model.setCurrentIndex(0)
    dialog.ok_button.click()
    assert dialog.result() == OptionsDialog.DialogCode.Accepted
    assert load_settings().settings.teacher_model == "judge-small"
    assert page.command_line().endswith("--provider fake --model judge-small")  # Copy as Command says the model
    again = page.open_options()
    assert again is not None and again.teacher_model.currentText() == "judge-small"
    again.teacher_model.setEditText("typed-by-hand")
    again.ok_button.click()
    assert load_settings().settings.teacher_model == "typed-by-hand"


def test_bad_values_name_the_field_and_send_nothing(qtbot, with_teacher: FakeTeacher, window: MainWindow,
                                                   page: DatasetPage, asked: list) -> None:
    project = window.project
    assert project is not None
    dialog = set_options(page, budget="-1")
    assert dialog.isVisible() and dialog.result() != OptionsDialog.DialogCode.Accepted
    assert dialog.banner.text.text().startswith("Budget:") and "positive" in dialog.banner.text.text()
    dialog.budget.setText("ten dollars")
    dialog.ok_button.click()
    assert dialog.isVisible() and "Budget:" in dialog.banner.text.text()
    dialog.budget.setText("")
    dialog.recipe.setCurrentIndex(dialog.recipe.findData("plain"))
    for spin in dialog.mix.values():
        spin.setValue(0)
    dialog.ok_button.click()
    assert dialog.isVisible() and dialog.banner.text.text().startswith("Question mix:")
    assert "add up to 0%" in dialog.banner.text.text()
    dialog.reject()
    assert load_options(project)[0] == GenerateOptions() and page.options == GenerateOptions()

    # A bad value saved outside the dialog (an older version, a hand edit) is named at Generate.
    save_options(project, GenerateOptions(mix={"fact": 0.0, "refusal": 0.0}))
    page.set_project(project)
    page.generate_button.click()
    assert page.banner.level == "error" and page.banner.text.text().startswith("Question mix:")
    assert "Options…" in page.banner.text.text()
    save_options(project, GenerateOptions(questions_per_fact=0))
    page.set_project(project)
    page.generate_button.click()
    assert page.banner.level == "error" and page.banner.text.text().startswith("Questions per fact: 0 is not between")
    assert page.prepare_job is None and not window.runner.active_jobs() and asked == []
    assert with_teacher.stats()["requests"] == 0


# --- regenerating a chunk ----------------------------------------------------------------------------------------

def select_row(page: DatasetPage, row_id: int | None) -> None:
    position = next(i for i, r in enumerate(page.model.rows) if r.id == row_id)
    page.table.selectRow(position)
    page.table.setCurrentIndex(page.model.index(position, 0))


def regenerate_action(page: DatasetPage) -> QAction:
    return next(a for a in page.build_context_menu().actions() if a.text() == "Regenerate Chunk…")


def test_regenerate_replaces_a_chunks_rows_and_keeps_an_edited_one(
        qtbot, with_teacher: FakeTeacher, window: MainWindow, page: DatasetPage, asked: list,
        monkeypatch: pytest.MonkeyPatch) -> None:
    set_options(page, recipe="plain", pairs=2, mix={"fact": 100})
    generate(qtbot, window, page)
    project = window.project
    assert project is not None
    chunk = next(c for c in chunk_ids(project)
                 if len(review.list_rows(project, review.RowFilter(chunk_id=c, split="train"))) == 2)
    before = review.list_rows(project, review.RowFilter(chunk_id=chunk))
    edited = before[0]
    monkeypatch.setattr(page_module, "edit_conversation",
                        lambda parent, q, a: ("Who planted the oldest tree?", "Edda Strom, in 1887."))
    select_row(page, edited.id)
    page.table.setFocus()
    qtbot.keyClick(page.table, Qt.Key.Key_Return)
    assert review.get_row(project, edited.id).messages[0]["content"] == "Who planted the oldest tree?"

    answers = [False, True]
    texts: list[str] = []

    def ask(parent: object, title: str, text: str, yes: str) -> bool:
        texts.append(text)
        return answers.pop(0)

    monkeypatch.setattr(page_module, "ask", ask)
    select_row(page, edited.id)
    assert page.regenerate_button.isEnabled() and regenerate_action(page).isEnabled()
    calls = with_teacher.stats()["by_task"]["generate"]
    regenerate_action(page).trigger()  # declined: nothing changes
    replaced = len(before) - 1
    assert f"{replaced} rows from this chunk will be replaced" in texts[0] and "1 row you edited is kept" in texts[0]
    assert "127.0.0.1" in texts[0]
    assert "Nothing was changed" in page.banner.text.text()
    assert [r.id for r in review.list_rows(project, review.RowFilter(chunk_id=chunk))] == [r.id for r in before]

    started = time.time()
    page.regenerate_button.click()
    qtbot.waitUntil(lambda: not page.busy() and not window.runner.active_jobs(), timeout=TIMEOUT_MS)
    assert len(texts) == 2 and f"{replaced} rows from this chunk will be replaced" in texts[1]
    assert page.banner.level == "info" and "Chunk regenerated" in page.banner.text.text(), page.banner.text.text()
    assert with_teacher.stats()["by_task"]["generate"] == calls + 1  # asked afresh, not replayed from the cache
    after = {r["id"]: r for r in project.conn.execute(
        "SELECT id, created_at, edited, messages_json FROM dataset_rows WHERE chunk_id = ?", (chunk,))}
    assert after[edited.id]["edited"] == 1 and after[edited.id]["created_at"] < started
    assert "Who planted the oldest tree?" in after[edited.id]["messages_json"]
    fresh = [i for i in after if i != edited.id]
    assert fresh and all(after[i]["created_at"] >= started for i in fresh)  # every other row was written again
    assert {r.id for r in page.model.rows} >= set(after)  # the table shows them
    current = page.current_dataset_row()
    assert current is not None and current.provenance.chunk_id == chunk


def test_regenerate_is_disabled_for_rows_without_a_chunk(qtbot, window: MainWindow, page: DatasetPage,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_module, "ask", lambda *a: pytest.fail("nothing should be asked"))
    project = window.project
    assert project is not None
    chunk = project.conn.execute("SELECT id, document_id FROM chunks ORDER BY document_id, ord").fetchone()
    add_rows(project, [
        DatasetRow(messages=[{"role": "user", "content": "Typed by hand?"}, {"role": "assistant", "content": "Yes."}],
                   source="manual"),
        DatasetRow(messages=[{"role": "user", "content": "How tall is it?"},
                             {"role": "assistant", "content": "Forty-two metres."}],
                   provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"], qtype="fact")),
    ])
    page.refresh()
    manual, written = page.model.rows
    select_row(page, manual.id)
    assert not page.regenerate_button.isEnabled() and not regenerate_action(page).isEnabled()
    assert "added by hand" in page.regenerate_button.toolTip()
    assert page.regenerate_current() is None and page.regenerate_job is None

    # Right-click on a row selects it and shows the menu.
    rect = page.table.visualRect(page.model.index(1, 0))
    emit(page.table.customContextMenuRequested, rect.center())
    assert page.current_dataset_row() == written and page.context_menu is not None
    assert regenerate_action(page).isEnabled() and page.regenerate_button.isEnabled()
    page.context_menu.close()

    # A chunk whose document left the library cannot be generated again.
    project.conn.execute("UPDATE documents SET status = 'removed' WHERE id = ?", (chunk["document_id"],))
    page.refresh()
    select_row(page, written.id)
    assert not page.regenerate_button.isEnabled() and "no longer in the library" in page.regenerate_button.toolTip()
