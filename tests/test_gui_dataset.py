"""The Dataset page, driven as a user would: Generate against a fake teacher over real HTTP, confirm (or decline)
sending the text, then review rows with the keyboard and read the report."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from slowtune import secrets
from slowtune.documents.library import ingest
from slowtune.gui import dataset as page_module
from slowtune.gui.app import MainWindow, make_app
from slowtune.gui.dataset import DatasetPage
from slowtune.settings import load_settings, save_settings
from slowtune.store import Project
from slowtune.teacher import providers as pv
from slowtune.teacher import review
from slowtune.testing.fake_openai import FakeTeacher

KEY = "fake-teacher-credential-d4t4s3t"
TIMEOUT_MS = 20_000
DOCS = {
    "orchard.md": "# Orchard\n\nThe Hollow Oak orchard grows eleven varieties of heritage apples on the north slope. "
                  "Its oldest tree was planted in 1887 by a clockmaker named Edda Strom.\n",
    "lighthouse.md": "# Lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt outcrop. "
                     "Its lamp was converted from paraffin to electricity in 1931.\n",
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


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    with Project.create(tmp_path / "proj") as project:
        ingest(project, [docs], chunk_tokens=40, chunk_overlap=0, workers=1)
    return tmp_path / "proj"


@pytest.fixture
def with_teacher(teacher: FakeTeacher) -> FakeTeacher:
    pv.add_provider("fake", "custom", base_url=teacher.base_url, model="teacher-small", key=KEY, replace=True)
    settings = load_settings().settings
    settings.teacher_provider, settings.teacher_model = "fake", "teacher-small"
    save_settings(settings)
    return teacher


@pytest.fixture
def window(qtbot, project_root: Path) -> Iterator[MainWindow]:
    make_app(["slowtune"])
    win = MainWindow(open_last_project=False)
    qtbot.addWidget(win)
    assert win.open_project(project_root)
    win.show_page(2)
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
    assert "slowtune generate" in page.label.text()


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
    assert with_teacher.stats()["by_task"].get("generate")
    assert page.banner.level != "error", page.banner.text.text()
    model = page.model
    assert model.rowCount() > 1
    assert model.index(0, 0).data()  # a question
    report = page.report.toPlainText()
    assert "accepted" in report and "chunks:" in report and "teacher:" in report

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
    assert "user 1" in page.report.toPlainText()
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
