"""The Chat page, driven as a user would, on real llama.cpp with tiny random GGUFs: pick an export or open any GGUF
file, send a message and watch it stream in, stop it, regenerate it, compare two models side by side, reopen a
saved chat, see a bad file explained in the banner, and run the evaluation on a project with held-out probes.

Random weights write gibberish, so the tests check mechanics (what streams, what is saved, what is shown), never
what the answers say. Where a test needs the GUI to react in the middle of an answer, the answer waits for the
GUI at that point (a handshake through ``stream_turn``), so the test does not depend on the machine's speed.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt

from slowtune.chat import conversation, sessions
from slowtune.dataset import DatasetRow, Provenance, add_rows
from slowtune.gui import chat as page_module
from slowtune.gui.app import make_app
from slowtune.gui.chat import ChatPage, list_models
from slowtune.gui.workers import Job, JobRunner
from slowtune.settings import Settings
from slowtune.store import Project

TIMEOUT_MS = 30_000
OLD_RUN = "20250101-090000-aaaaaa"
NEW_RUN = "20250202-100000-bbbbbb"
DOCS = {
    "lighthouse.md": "# Greywater lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt "
                     "outcrop. Its lamp was converted from paraffin to electricity in 1931.\n\nThe stairway has two "
                     "hundred and seventeen cast-iron steps.\n",
    "bakery.md": "# Marlow's bakery\n\nMarlow's bakery bakes its sourdough with a starter kept alive since 1952. The "
                 "rye loaf contains caraway seeds.\n",
}


@dataclass
class Ggufs:
    tuned: Path  # a tiny qwen2
    base: Path  # a tiny llama: another model, so side-by-side answers differ


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> Ggufs:
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.testing.tiny_project import tiny_model

    root = tmp_path_factory.mktemp("chat-page-ggufs")
    return Ggufs(tuned=write_gguf(tiny_model(root / "qwen2", "qwen2"), root / "tuned.gguf", out_type="f16"),
                 base=write_gguf(tiny_model(root / "llama", "llama"), root / "base.gguf", out_type="f16"))


def _export(root: Path, run: str, files: dict[str, Path], when: float) -> Path:
    folder = root / "runs" / run / "export"
    folder.mkdir(parents=True)
    for name, source in files.items():
        shutil.copyfile(source, folder / name)
        os.utime(folder / name, (when, when))
    return folder


@pytest.fixture
def project_root(tmp_path: Path, ggufs: Ggufs) -> Path:
    """A project with two exported runs: the older one only on disk, the newer one recorded in the exports table
    (its F16 file as one that failed the export's verification)."""
    root = tmp_path / "proj"
    with Project.create(root, name="Harbour notes") as project:
        _export(root, OLD_RUN, {"model-F16.gguf": ggufs.tuned, "base-F16.gguf": ggufs.base}, time.time() - 86400)
        new = _export(root, NEW_RUN, {"model-F16.gguf": ggufs.tuned, "model-Q4_K_M.gguf": ggufs.tuned,
                                      "base-F16.gguf": ggufs.base}, time.time() - 60)
        with project.transaction() as conn:
            conn.execute("INSERT INTO runs(id, base_model, engine, status, config_json, created_at, updated_at) "
                         "VALUES (?, '/models/Tiny-Base-0.1B', 'memory', 'done', '{}', ?, ?)",
                         (NEW_RUN, time.time(), time.time()))
            for quant, name, verified in (("F16", "model-F16.gguf", 0), ("Q4_K_M", "model-Q4_K_M.gguf", 1),
                                          ("base-F16", "base-F16.gguf", 0)):
                conn.execute("INSERT INTO exports(id, run_id, kind, quant, path, size_bytes, verified, created_at) "
                             "VALUES (?, ?, 'gguf', ?, ?, 1, ?, ?)",
                             (f"{quant}-id", NEW_RUN, quant, str(new / name), verified, time.time() - 60))
    return root


@pytest.fixture
def runner(qtbot) -> Iterator[JobRunner]:
    make_app(["slowtune"])
    jobs = JobRunner()
    yield jobs
    jobs.cancel_all()
    jobs.wait_all(10)


def _page(qtbot, runner: JobRunner, project: Project | None) -> ChatPage:
    page = ChatPage(runner, lambda: Settings())
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.set_project(project)
    page.show()
    return page


def visible_texts(page: ChatPage) -> list[str]:
    """Every text a user can see on the page as it is: labels (as plain text), buttons, tables' titles and cells,
    and the report below them."""
    from PySide6.QtGui import QTextDocument
    from PySide6.QtWidgets import QAbstractButton, QLabel, QTableWidget, QTextBrowser

    texts: list[str] = []
    for label in page.findChildren(QLabel):
        if label.isVisibleTo(page) and label.text():
            doc = QTextDocument()
            doc.setHtml(label.text())
            texts.append(doc.toPlainText())
    texts += [b.text() for b in page.findChildren(QAbstractButton) if b.isVisibleTo(page) and b.text()]
    for table in page.findChildren(QTableWidget):
        if not table.isVisibleTo(page):
            continue
        for i in range(table.columnCount()):
            texts.append(table.horizontalHeaderItem(i).text())
        for r in range(table.rowCount()):
            texts.append(table.verticalHeaderItem(r).text())
            texts += [table.item(r, c).text() for c in range(table.columnCount()) if table.item(r, c) is not None]
    texts += [b.toPlainText() for b in page.findChildren(QTextBrowser) if b.isVisibleTo(page)]
    return texts


@pytest.fixture
def project(project_root: Path) -> Iterator[Project]:
    with Project.open(project_root) as opened:
        yield opened


@pytest.fixture
def page(qtbot, runner: JobRunner, project: Project) -> Iterator[ChatPage]:
    chat = _page(qtbot, runner, project)
    yield chat
    runner.cancel_all()
    runner.wait_all(10)
    chat.unload()


@pytest.fixture(autouse=True)
def _every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every piece of an answer goes out as a progress report (the app sends at most ~20 a second)."""
    monkeypatch.setattr(page_module, "STREAM_INTERVAL_S", 0.0)


def _items(combo: Any) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count()) if combo.itemText(i)]


def _wait_loaded(qtbot, page: ChatPage, count: int = 1) -> None:
    qtbot.waitUntil(lambda: len(page.loaded_models()) == count and not page.loading(), timeout=TIMEOUT_MS)


def _wait_answered(qtbot, page: ChatPage) -> None:
    qtbot.waitUntil(lambda: not page.answering(), timeout=TIMEOUT_MS)


def _pick(combo: Any, text: str) -> None:
    """Choose an item as a user does (the picker reacts to `activated`, which only user choices send)."""
    index = combo.findText(text)
    assert index >= 0, f"{text!r} is not in {_items(combo)}"
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def _gate_after_first_piece(monkeypatch: pytest.MonkeyPatch, until: Any) -> None:
    """Make the answer wait, after its first piece of text, until ``until(cancel)`` is true (the GUI has reacted)."""
    original = conversation.stream_turn

    def gated(models: Any, conversations: Any, sampling: Any, cancel: Any) -> Iterator[tuple[int, Any]]:
        waited = False
        for slot, part in original(models, conversations, sampling, cancel):
            yield slot, part
            if not waited and part["choices"][0]["delta"].get("content"):
                waited = True
                released = threading.Event()
                deadline = time.monotonic() + TIMEOUT_MS / 1000
                while not until(cancel) and time.monotonic() < deadline:
                    released.wait(0.005)

    monkeypatch.setattr(conversation, "stream_turn", gated)


def _saved(project: Project, page: ChatPage) -> sessions.ChatSession:
    assert page.chat.session_id is not None
    return sessions.get_session(project, page.chat.session_id)


def _assistant(session: sessions.ChatSession, slot: int = 0) -> list[sessions.ChatMessage]:
    return [m for m in session.messages if m.role == "assistant" and m.slot == slot]


# --- the model picker ------------------------------------------------------------------------------------------

def test_the_picker_lists_exports_newest_run_first_then_bases_then_any_file(page: ChatPage, project_root: Path) -> None:
    items = _items(page.model_combo)
    assert items == [
        "Choose a model…",
        "Tuned · run 2025-02-02 10:00 · Q4_K_M", "Tuned · run 2025-02-02 10:00 · F16 · not verified",
        "Tuned · run 2025-01-01 09:00 · F16",
        "Base · run 2025-02-02 10:00 · Tiny-Base-0.1B", "Base · run 2025-01-01 09:00",
        "Open GGUF file…",
    ]
    assert _items(page.compare_combo)[0] == "No comparison"
    choices = list_models(page.project)  # type: ignore[arg-type]
    tuned_new = choices[0]
    assert tuned_new.path == str((project_root / "runs" / NEW_RUN / "export" / "model-Q4_K_M.gguf").resolve())
    assert tuned_new.base == str((project_root / "runs" / NEW_RUN / "export" / "base-F16.gguf").resolve())
    # The evaluation starts with the newest tuned export against its own base.
    assert page.eval_model_combo.currentText() == "Tuned · run 2025-02-02 10:00 · Q4_K_M"
    assert page.eval_base_combo.currentText() == "Base · run 2025-02-02 10:00 · Tiny-Base-0.1B"
    # A recorded export whose file is gone is not offered.
    (project_root / "runs" / NEW_RUN / "export" / "model-F16.gguf").unlink()
    page.refresh()
    assert "Tuned · run 2025-02-02 10:00 · F16 · not verified" not in _items(page.model_combo)


def test_a_lora_export_is_offered_on_its_base_and_open_file_can_be_cancelled(
        qtbot, page: ChatPage, project_root: Path, ggufs: Ggufs, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _export(project_root, "20250303-080000-cccccc", {"base-F16.gguf": ggufs.base,
                                                             "model-lora.gguf": ggufs.tuned}, time.time())
    page.refresh()
    entry = list_models(page.project)[0]  # type: ignore[arg-type]
    assert entry.label == "Tuned · run 2025-03-03 08:00 · LoRA on the base"
    assert (entry.path, entry.lora) == (str((folder / "base-F16.gguf").resolve()),
                                        str((folder / "model-lora.gguf").resolve()))
    assert "Base · run 2025-03-03 08:00" in _items(page.model_combo)
    # The Export page's "Chat with it" may name the LoRA file alone: it is applied to its base.
    monkeypatch.setattr(page, "_sync_models", lambda: None)  # no loading here: the LoRA file is not a real adapter
    page.open_model(str(folder / "model-lora.gguf"))
    assert page.model_combo.currentText() == entry.label
    # Edit › Copy as Command: the same chat from the command line.
    assert page.command_line() == shlex.join(["slowtune", "chat", entry.path, "--lora", entry.lora,
                                              "--project", str(page.project.root)])  # type: ignore[union-attr]
    # Open GGUF file…, then Cancel in the dialog: the picker shows the model chosen before.
    monkeypatch.setattr(page_module, "choose_gguf_file", lambda parent: None)
    _pick(page.model_combo, "Open GGUF file…")
    assert page.model_combo.currentText() == entry.label


def test_empty_states_say_what_to_do(qtbot, runner: JobRunner, tmp_path: Path) -> None:
    page = _page(qtbot, runner, None)
    assert "Open a project" in page.transcript.placeholder.text()
    assert _items(page.model_combo) == ["Choose a model…", "Open GGUF file…"]
    with Project.create(tmp_path / "bare", name="Bare") as bare:
        page.set_project(bare)
        assert "no exported model yet" in page.transcript.placeholder.text()
        assert "Export" in page.transcript.placeholder.text()
        assert "Terminal" not in page.transcript.placeholder.text() and "--" not in page.eval_about.text()
        assert page.command_line() is None  # no model chosen: nothing to copy as a command
        assert "no questions kept out of training yet" in page.eval_empty.text() and "Dataset" in page.eval_empty.text()
        assert not page.send_button.isEnabled()
        page.set_project(None)


# --- chatting --------------------------------------------------------------------------------------------------

def test_open_a_gguf_file_send_and_the_answer_streams_in_and_is_saved(
        qtbot, page: ChatPage, project: Project, ggufs: Ggufs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_module, "choose_gguf_file", lambda parent: str(ggufs.tuned))
    _pick(page.model_combo, "Open GGUF file…")
    _wait_loaded(qtbot, page)
    assert page.model_combo.currentText().startswith("tuned.gguf")
    assert "tuned.gguf" in page.model_status.text() and "context 4,096" in page.model_status.text()

    seen: list[str] = []
    _gate_after_first_piece(monkeypatch, lambda cancel: len(seen) >= 1)
    page.temperature.setValue(0.0)
    page.max_tokens.setValue(24)
    page.system_edit.setPlainText("Answer briefly.")
    page.input.setPlainText("When does the ferry sail?")
    job = page.send()
    assert job is not None and page.input.toPlainText() == ""
    job.progress.connect(lambda stage, done, total, metrics, status: seen.append(metrics["text"]))
    _wait_answered(qtbot, page)

    view = page.transcript.turns[0].answers[0]
    # More than one partial answer reached the screen, each longer than the one before.
    assert len(seen) >= 2 and page.partial_updates >= 2 and view.renders >= 2
    assert all(len(a) < len(b) for a, b in itertools.pairwise(seen))
    session = _saved(project, page)
    assert session.title == "When does the ferry sail?"
    assert [m.role for m in session.messages] == ["system", "user", "assistant"]
    answer = _assistant(session)[0]
    assert answer.content and view.text == answer.content and seen[-1] == answer.content
    assert answer.stats is not None and answer.stats["finish_reason"] in ("stop", "length")
    assert f"{answer.stats['completion_tokens']} tokens" in view.footer.text()
    assert session.settings["sampling"]["max_tokens"] == 24 and session.settings["system"] == "Answer briefly."
    assert session.models[0]["path"] == str(ggufs.tuned.resolve())
    assert page.sessions_list.count() == 1 and "When does the ferry sail?" in page.sessions_list.item(0).text()
    assert "Saved in this project" in page.saved_label.text()
    # Return in the message box sends too, and the next turn continues the same saved session.
    page.input.setPlainText("And on Sundays?")
    qtbot.keyClick(page.input, Qt.Key.Key_Return)
    _wait_answered(qtbot, page)
    session = _saved(project, page)
    assert [m.role for m in session.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert len(page.transcript.turns) == 2


def test_stop_mid_answer_keeps_the_partial_answer_marked_stopped(
        qtbot, page: ChatPage, project: Project, ggufs: Ggufs, monkeypatch: pytest.MonkeyPatch) -> None:
    page.open_model(str(ggufs.tuned))
    _wait_loaded(qtbot, page)
    _gate_after_first_piece(monkeypatch, lambda cancel: cancel())  # the answer goes on only once Stop was pressed
    page.temperature.setValue(0.0)
    page.max_tokens.setValue(400)
    page.input.setPlainText("Tell me everything about the harbour.")
    assert page.send() is not None
    assert page.stop_button.isVisible() and not page.send_button.isEnabled()
    qtbot.waitUntil(lambda: page.partial_updates >= 1, timeout=TIMEOUT_MS)
    page.stop()
    _wait_answered(qtbot, page)

    answer = _assistant(_saved(project, page))[0]
    assert answer.stats is not None and answer.stats["finish_reason"] == "cancelled"
    assert 1 <= answer.stats["completion_tokens"] < 400
    view = page.transcript.turns[0].answers[0]
    assert answer.content and view.text == answer.content
    assert "stopped" in view.footer.text()
    assert not page.stop_button.isVisible() and page.send_button.isEnabled()


def test_regenerate_replaces_the_last_answer(qtbot, page: ChatPage, project: Project, ggufs: Ggufs) -> None:
    page.open_model(str(ggufs.tuned))
    _wait_loaded(qtbot, page)
    page.max_tokens.setValue(16)
    page.send("What is the rye loaf made with?")
    _wait_answered(qtbot, page)
    first = _assistant(_saved(project, page))
    assert len(first) == 1
    assert page.regenerate_button.isEnabled()

    page.temperature.setValue(1.2)
    assert page.regenerate() is not None
    _wait_answered(qtbot, page)
    session = _saved(project, page)
    now = _assistant(session)
    # Replaced, not added: one answer, written after the first one (SQLite may reuse the deleted row's id).
    assert len(now) == 1 and now[0].created_at > first[0].created_at
    assert [m.role for m in session.messages] == ["user", "assistant"]
    assert len(page.transcript.turns) == 1
    assert page.transcript.turns[0].answers[0].text == now[0].content
    assert page.chat.turns[0].answers == [now[0].content]


def test_side_by_side_compare_streams_two_answers(qtbot, page: ChatPage, project: Project, project_root: Path) -> None:
    _pick(page.model_combo, "Tuned · run 2025-01-01 09:00 · F16")
    _pick(page.compare_combo, "Base · run 2025-01-01 09:00")
    _wait_loaded(qtbot, page, count=2)
    assert "side by side" in page.model_status.text()
    page.max_tokens.setValue(16)
    page.send("Who keeps the lighthouse?")
    _wait_answered(qtbot, page)

    views = page.transcript.turns[0].answers
    assert len(views) == 2
    assert [v.header.text() for v in views] == ["model-F16.gguf", "base-F16.gguf"]
    session = _saved(project, page)
    assert [m["name"] for m in session.models] == ["model-F16.gguf", "base-F16.gguf"]
    for slot in (0, 1):
        saved = _assistant(session, slot)
        assert len(saved) == 1 and saved[0].content and views[slot].text == saved[0].content
        assert saved[0].stats and saved[0].stats["completion_tokens"] > 0
    # The two are different models: the same question gets different text.
    assert views[0].text != views[1].text


def test_a_saved_chat_reopens_goes_on_and_can_be_deleted(qtbot, page: ChatPage, project: Project, ggufs: Ggufs,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    page.open_model(str(ggufs.tuned))
    _wait_loaded(qtbot, page)
    page.max_tokens.setValue(8)
    page.seed.setValue(5)
    page.send("First question")
    _wait_answered(qtbot, page)
    session_id = page.chat.session_id
    page.new_chat()
    assert not page.transcript.turns and page.chat.session_id is None
    page.seed.setValue(-1)

    page.sessions_list.itemClicked.emit(page.sessions_list.item(0))
    assert page.chat.session_id == session_id
    assert [t.user for t in page.chat.turns] == ["First question"]
    assert page.seed.value() == 5  # the chat's settings come back with it
    _wait_loaded(qtbot, page)
    page.send("Second question")
    _wait_answered(qtbot, page)
    session = sessions.get_session(project, session_id)  # type: ignore[arg-type]
    assert [m.content for m in session.messages if m.role == "user"] == ["First question", "Second question"]
    assert page.sessions_list.count() == 1

    # Export… writes the chat as Markdown, or as JSONL when the chosen name ends in .jsonl.
    page.sessions_list.setCurrentRow(0)
    out = Path(project.root) / "exported"
    out.mkdir()
    for name in ("chat.md", "chat.jsonl"):
        monkeypatch.setattr(page_module, "choose_export_path", lambda parent, suggested, n=name: str(out / n))
        assert page.export_selected_session() == out / name
    assert "First question" in (out / "chat.md").read_text() and "Second question" in (out / "chat.md").read_text()
    lines = [json.loads(line) for line in (out / "chat.jsonl").read_text().splitlines()]
    assert lines and all("messages" in line for line in lines)
    assert (out / "chat.jsonl").read_text() == sessions.export_jsonl(project, session_id)

    asked: list[str] = []
    monkeypatch.setattr(page_module, "ask", lambda parent, title, text, yes: asked.append(text) or True)
    page.sessions_list.setCurrentRow(0)
    page.delete_selected_session()
    assert asked and "First question" in asked[0]
    assert sessions.list_sessions(project) == [] and page.sessions_list.count() == 0
    assert page.transcript.turns == [] and page.chat.session_id is None


def test_a_bad_gguf_file_is_explained_in_the_banner(qtbot, page: ChatPage, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("these are my notes, not a model\n", encoding="utf-8")
    monkeypatch.setattr(page_module, "choose_gguf_file", lambda parent: str(text_file))
    _pick(page.model_combo, "Open GGUF file…")
    qtbot.waitUntil(lambda: page.banner.isVisible() and not page.loading(), timeout=TIMEOUT_MS)
    assert page.banner.level == "error"
    assert "could not be loaded" in page.banner.text.text() and "not a GGUF file" in page.banner.text.text()
    assert "notes.gguf" in page.banner.text.text() and "Traceback" not in page.banner.text.text()
    assert page.loaded_models() == [] and page.model_combo.currentText() == "Choose a model…"
    assert not page.send_button.isEnabled()

    broken = tmp_path / "cut-short.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))  # the right magic, then nothing a model is made of
    monkeypatch.setattr(page_module, "choose_gguf_file", lambda parent: str(broken))
    page.banner.clear()
    _pick(page.model_combo, "Open GGUF file…")
    qtbot.waitUntil(lambda: page.banner.isVisible() and not page.loading(), timeout=TIMEOUT_MS)
    assert "llama.cpp could not load" in page.banner.text.text() and "cut-short.gguf" in page.banner.text.text()
    assert page.loaded_models() == []


def test_a_message_too_long_for_the_context_is_explained_and_kept_in_the_box(
        qtbot, page: ChatPage, project: Project, ggufs: Ggufs) -> None:
    page.open_model(str(ggufs.tuned))
    _wait_loaded(qtbot, page)
    long_message = "harbour ferry timetable " * 3000
    page.input.setPlainText(long_message)
    assert page.send() is not None
    _wait_answered(qtbot, page)
    assert page.banner.level == "error" and "context window" in page.banner.text.text()
    assert "Traceback" not in page.banner.text.text() and "Traceback" in page.banner.details.toPlainText()
    assert page.transcript.turns == [] and page.input.toPlainText() == long_message.strip()
    assert page.chat.session_id is None and sessions.list_sessions(project) == []


def test_chat_is_not_refused_while_another_job_of_the_project_runs(qtbot, page: ChatPage, runner: JobRunner,
                                                                   project_root: Path, ggufs: Ggufs) -> None:
    release = threading.Event()
    training = Job("Training", lambda progress: release.wait(TIMEOUT_MS / 1000), key=str(project_root.resolve()))
    refused: list[str] = []
    runner.refused.connect(refused.append)
    assert runner.submit(training)
    try:
        page.open_model(str(ggufs.tuned))
        _wait_loaded(qtbot, page)
        page.max_tokens.setValue(4)
        assert page.send("Still there?") is not None
        _wait_answered(qtbot, page)
        assert not refused and page.chat.turns[0].answers[0]
    finally:
        release.set()
        training.wait(10)


def test_a_new_project_unloads_the_models(qtbot, page: ChatPage, ggufs: Ggufs, tmp_path: Path) -> None:
    page.open_model(str(ggufs.tuned), compare=str(ggufs.base))
    _wait_loaded(qtbot, page, count=2)
    assert [m.name for m in page.loaded_models()] == ["tuned.gguf", "base.gguf"]
    with Project.create(tmp_path / "other", name="Other") as other:
        page.set_project(other)
        assert page.loaded_models() == [] and "No model loaded" in page.model_status.text()
        assert page.model_combo.currentText() == "Choose a model…"
        page.set_project(None)


# --- evaluation ------------------------------------------------------------------------------------------------

GENERAL_QUESTIONS = [("capital", "knowledge", "What is the capital of France?", "Paris"),
                     ("sum", "arithmetic", "What is 7 times 6?", "42"),
                     ("sky", "knowledge", "What colour is the sky on a clear day?", "blue")]


@pytest.fixture
def quality_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """A few general and unknown-entity questions in place of the shipped sets (the tiny models answer gibberish:
    the tests check what is shown, not what is right)."""
    from slowtune import quality

    general = [quality.QualityItem("retention", i, q, f"{fact}.", ((fact,),), category=c)
               for i, c, q, fact in GENERAL_QUESTIONS]
    unknown = [quality.QualityItem("leakage", "u1", "Who founded the Zorvath observatory?", category="unknown")]
    monkeypatch.setattr(quality, "general_items", lambda **kw: list(general))
    monkeypatch.setattr(quality, "unknown_items", lambda: list(unknown))


@pytest.fixture
def probes_project(project_root: Path, tmp_path: Path, quality_sets: None) -> Path:
    """The exported project, with documents and held-out probes (as the teacher stage leaves them)."""
    from slowtune.documents.library import ingest

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    with Project.open(project_root) as project:
        ingest(project, [docs], chunk_tokens=40, chunk_overlap=0, workers=1)
        chunks = list(project.conn.execute("SELECT id, document_id, text FROM chunks ORDER BY document_id, ord"))
        rows = [DatasetRow(messages=[{"role": "user", "content": f"What does part {i} say?"},
                                     {"role": "assistant", "content": chunk["text"].split(". ")[0] + "."}],
                           split="probe", provenance=Provenance(document_id=chunk["document_id"], chunk_id=chunk["id"],
                                                                qtype="fact"))
                for i, chunk in enumerate(chunks[:3])]
        rows.append(DatasetRow(messages=[{"role": "user", "content": "What does parking at the bakery cost?"},
                                         {"role": "assistant", "content": "The documents do not cover that."}],
                               split="probe", provenance=Provenance(document_id=chunks[0]["document_id"],
                                                                    chunk_id=chunks[0]["id"], qtype="refusal")))
        add_rows(project, rows)
    return project_root


def test_evaluation_scores_tuned_and_base_side_by_side_and_keeps_the_report(
        qtbot, runner: JobRunner, probes_project: Path) -> None:
    with Project.open(probes_project) as project:
        page = _page(qtbot, runner, project)
        page.tabs.setCurrentIndex(1)
        assert ("4 questions about the documents (3 about facts, 1 that should be refused) kept out of training"
                in page.eval_empty.text())
        assert page.eval_model_combo.currentText() == "Tuned · run 2025-02-02 10:00 · Q4_K_M"
        assert page.eval_base_combo.currentText() == "Base · run 2025-02-02 10:00 · Tiny-Base-0.1B"
        assert page.scores.isHidden() and page.axes_table.isHidden()  # no report yet
        page.eval_tokens.setValue(8)
        statuses: list[str] = []
        job = page.run_evaluation()
        assert job is not None and page.eval_cancel_button.isVisible()
        job.progress.connect(lambda *args: statuses.append(page.eval_status.text()))
        qtbot.waitUntil(lambda: not page.evaluating(), timeout=TIMEOUT_MS * 2)
        assert not page.banner.isVisible(), page.banner.text.text()

        folders = list((probes_project / "evals").iterdir())
        assert len(folders) == 1
        saved = json.loads((folders[0] / "report.json").read_text(encoding="utf-8"))
        tuned, base = saved["summaries"]["tuned"], saved["summaries"]["base"]
        assert tuned["probes"] == base["probes"] == 4
        assert any(s.startswith("Answering the questions about the documents") for s in statuses)
        assert any(s.startswith("Answering general questions") for s in statuses)
        # The three axes, tuned and base side by side.
        axes = saved["axes"]
        assert not page.axes_table.isHidden() and not page.axes_text.isHidden()
        # The axes in words scroll when they are longer than the tables are tall (they were cut off mid-sentence).
        assert not page.axes_scroll.isHidden() and page.axes_scroll.widget() is page.axes_text
        assert page.axes_table.cell_text("Knowledge", "Tuned") == (
            f"{axes['tuned']['knowledge']:.2f} ({axes['tuned']['counts']['knowledge']} questions)")
        assert page.axes_table.cell_text("Retention", "Base") == f"{axes['base']['counts']['right']} of 3 right"
        assert page.axes_table.cell_text("Leakage", "Base").endswith(" of 1)")
        assert axes["lines"][0] in page.axes_text.text()
        assert page.scores.cell_text("Model", "Tuned") == "model-Q4_K_M.gguf"
        assert page.scores.cell_text("Model", "Base") == "base-F16.gguf"
        assert page.scores.cell_text("Word overlap", "Tuned") == f"{tuned['f1']:.2f}"
        assert page.scores.cell_text("Word overlap", "Base") == f"{base['f1']:.2f}"
        assert page.scores.cell_text("Key-fact recall", "Base") == f"{base['key_fact_recall']:.2f}"
        assert page.scores.cell_text("Refusals correct", "Tuned") == f"{tuned['refusals_correct']}/1"
        assert page.scores.cell_text("Word overlap", "Tuned − base") == (
            f"{tuned['f1'] - base['f1']:+.2f}")
        assert saved["headline"] in page.eval_headline.text()
        assert str(folders[0]) in page.eval_saved.text() and ".json" not in page.eval_saved.text()
        assert "Biggest wins" in page.eval_report.toPlainText()
        page.set_project(None)
        assert page.scores.isHidden()

        # Another time: the latest saved report is shown straight away.
        again = _page(qtbot, runner, project)
        assert "<b>Latest report" in again.eval_headline.text()
        assert again.scores.cell_text("Word overlap", "Base") == f"{base['f1']:.2f}"
        page.set_project(None)
        again.set_project(None)


def test_the_evaluation_tab_shows_the_three_axes_of_a_saved_report(qtbot, runner: JobRunner,
                                                                   probes_project: Path) -> None:
    from slowtune.eval.pipeline import evaluate
    from slowtune.eval.report import save_report

    class Scripted:
        def __init__(self, name: str, answers: dict[str, str]) -> None:
            self.name, self.lora_path, self.answers = name, None, answers

        def chat(self, messages: list[dict[str, str]], sampling: Any = None) -> dict[str, Any]:
            text = self.answers.get(messages[-1]["content"], "I don't know.")
            return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "usage": {}}

    base = {"What is the capital of France?": "Paris.", "What is 7 times 6?": "42.",
            "What colour is the sky on a clear day?": "Blue."}
    tuned = {**base, "What colour is the sky on a clear day?": "The sky on a clear day is painted green.",
             "What is 7 times 6?": "48.", "Who founded the Zorvath observatory?": "Marlow founded it in 1952."}
    with Project.open(probes_project) as project:
        add_rows(project, [DatasetRow(  # a held-out near-miss question: leakage, not a probe
            messages=[{"role": "user", "content": "How tall is the Saltmere lighthouse?"},
                      {"role": "assistant", "content": "The documents do not mention it."}],
            split="probe", provenance=Provenance(qtype="near_miss"))])
        report = evaluate(project, Scripted("tuned.gguf", tuned), base=Scripted("base.gguf", base))
        save_report(project, report)
        page = _page(qtbot, runner, project)
        page.tabs.setCurrentIndex(1)
        assert "4 questions about the documents (3 about facts, 1 that should be refused)" in page.eval_empty.text()
        assert not page.axes_table.isHidden() and not page.axes_text.isHidden()
        assert page.axes_table.cell_text("Knowledge", "Base") == "0.00 (3 questions)"
        assert page.axes_table.cell_text("Retention", "Tuned") == "0.33 (1 of 3 kept)"
        assert page.axes_table.cell_text("Retention", "Base") == "3 of 3 right"
        assert page.axes_table.cell_text("Leakage", "Tuned") == "0.50 (1 of 2)"
        assert page.axes_table.cell_text("Leakage", "Base") == "0.00 (0 of 2)"
        # The headline leads with the damage, in the warning colour, not as a success.
        headline = page.eval_headline.text()
        assert page.eval_headline.property("tone") == "damaged"
        assert f"color:{page_module.WARNING_COLOR}" in headline and page_module.SUCCESS_COLOR not in headline
        assert "beats" not in headline
        assert ("⚠ Latest report") in headline  # the scripted tuned model learned nothing either
        assert ("did not learn the documents better than the base, and lost most of what it knew: it still answers 1 "
                "of 3 general questions the base answered right, and answers 1 of 2 questions about things the "
                "documents never mention") in headline
        assert headline.index("lost most of what it knew") < headline.index("better than the base on")
        # The words on the page are a user's: no F1, no "exact match", no "greedily".
        shown = visible_texts(page)
        assert shown and not [t for t in shown if "F1" in t or "Exact match" in t or "greedily" in t]
        assert "Word overlap" in shown and "Exactly right" in shown
        text = page.axes_text.text()
        assert "Retention: kept 1 of the 3 general questions the base answered right (0.33)." in text
        assert "The tuned model has lost some of what it knew" in text
        assert "The tuned model invents answers with the documents&#x27; facts" in text
        assert "now says &#x27;The sky on a clear day is painted green.&#x27;" in text
        # Beside the warnings (which quote an answer each), an example they do not quote.
        assert "For example:" in text and "Asked &#x27;What is 7 times 6?&#x27;" in text
        # A report saved before the axes existed shows no axes, and the rest as before.
        folder = next((probes_project / "evals").iterdir())
        data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        del data["axes"]
        (folder / "report.json").write_text(json.dumps(data), encoding="utf-8")
        page.refresh()
        assert page.axes_table.isHidden() and page.axes_text.isHidden() and not page.scores.isHidden()
        assert "<b>Latest report" in page.eval_headline.text()
        page.set_project(None)


def test_evaluation_can_be_cancelled_and_saves_nothing(qtbot, runner: JobRunner, probes_project: Path) -> None:
    with Project.open(probes_project) as project:
        page = _page(qtbot, runner, project)
        job = page.run_evaluation()
        assert job is not None
        page.cancel_evaluation()  # stops at its next safe point: after the model being loaded, before any answer
        qtbot.waitUntil(lambda: not page.evaluating(), timeout=TIMEOUT_MS)
        assert job.state == "cancelled"
        assert "cancelled" in page.banner.text.text() and page.banner.level == "warning"
        assert not (probes_project / "evals").exists() or not any((probes_project / "evals").iterdir())
        assert page.eval_button.isEnabled() and not page.eval_cancel_button.isVisible()
        page.set_project(None)


def test_the_evaluation_follows_the_chat_model_until_one_is_picked_there(qtbot, runner: JobRunner,
                                                                        project_root: Path) -> None:
    with Project.open(project_root) as project:
        page = _page(qtbot, runner, project)
        assert page.eval_model_combo.currentText() == "Tuned · run 2025-02-02 10:00 · Q4_K_M"
        _pick(page.model_combo, "Tuned · run 2025-01-01 09:00 · F16")
        _wait_loaded(qtbot, page)
        assert page.eval_model_combo.currentText() == "Tuned · run 2025-01-01 09:00 · F16"
        # Once the user picks the model to evaluate, chatting with another one leaves that choice alone.
        _pick(page.eval_model_combo, "Tuned · run 2025-02-02 10:00 · Q4_K_M")
        _pick(page.model_combo, "Tuned · run 2025-01-01 09:00 · F16")
        assert page.eval_model_combo.currentText() == "Tuned · run 2025-02-02 10:00 · Q4_K_M"


def test_an_answer_with_a_long_unbroken_run_never_widens_the_window(qtbot) -> None:
    """A tiny model's answer with a 400-character run and no space made the main window 19 px wider than the
    screenshot tour's 1280 (a QLabel wraps only at spaces): answers are cut at the label's edge instead."""
    from slowtune.gui.chatview import MessageView

    view = MessageView("Tuned")
    qtbot.addWidget(view)
    view.set_text("x" * 400 + " and then some words")
    assert view.minimumSizeHint().width() < 200
