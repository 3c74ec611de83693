"""The desktop app, driven as a user would: pages, projects, dropping documents, jobs, preferences, quitting.

Qt runs offscreen (conftest) and every test has its own SLOWTUNE_HOME, so settings, projects and the window's
saved state start empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import (
    QAction,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDropEvent,
    QFileOpenEvent,
    QGuiApplication,
    QKeySequence,
)
from PySide6.QtWidgets import QApplication

from slowtune import paths
from slowtune.gui import app as app_module
from slowtune.gui.app import PAGES, MainWindow, make_app, window_state
from slowtune.gui.preferences import PreferencesDialog
from slowtune.gui.projects import NewProjectDialog, OpenProjectDialog
from slowtune.gui.widgets import MessageBanner, developer_text, visible_texts
from slowtune.gui.workers import Job
from slowtune.logs import setup_logging
from slowtune.progress import Progress
from slowtune.settings import load_settings
from slowtune.store import Project, list_projects

TIMEOUT_MS = 20_000
GUIDE = ("# Garden guide\n\n## Tomatoes\n\nWater tomatoes every morning before the sun is high.\n\n"
         "## Roses\n\nPrune roses in March, just above an outward-facing bud.\n")


class Questions:
    """Stands in for the yes/cancel dialog: records what the app asked and gives the prepared answer."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.answer = True

    def __call__(self, parent: object, title: str, text: str, yes: str) -> bool:
        self.asked.append(text)
        return self.answer


@pytest.fixture
def questions(monkeypatch: pytest.MonkeyPatch) -> Questions:
    answers = Questions()
    monkeypatch.setattr(app_module, "ask", answers)
    return answers


@pytest.fixture
def open_window(qtbot, questions: Questions) -> Iterator[Callable[..., MainWindow]]:
    """Open main windows (as at start-up). Jobs are stopped before the windows close at the end of the test."""
    make_app(["slowtune"])
    windows: list[MainWindow] = []

    def make(*, welcome_seen: bool = True) -> MainWindow:
        if welcome_seen:
            state = window_state()
            state.setValue("welcome/shown", True)
            state.sync()
        window = MainWindow()
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        return window

    yield make
    for window in windows:
        window.runner.cancel_all()
        assert window.runner.wait_all(10)
        qtbot.waitUntil(lambda w=window: not w.runner.active_jobs(), timeout=TIMEOUT_MS)


def _documents(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"guide.md": GUIDE, "notes.txt": "Bicycles need oil.\n\nCheck the chain weekly.\n", "empty.txt": ""}
    out = {name: folder / name for name in files}
    for name, text in files.items():
        out[name].write_text(text, encoding="utf-8")
    out["broken.pdf"] = folder / "broken.pdf"
    out["broken.pdf"].write_bytes(b"%PDF-1.4 this is not really a pdf")
    return out


def _drop(target: object, paths: list[Path], at: QPoint) -> tuple[bool, bool]:
    """Drag ``paths`` (file URLs, as Finder sends them) over ``target`` at ``at`` and drop them there."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(at, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, enter)
    drop = QDropEvent(QPointF(at), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, drop)
    return enter.isAccepted(), drop.isAccepted()


def _rows(window: MainWindow) -> dict[str, tuple[str, str]]:
    """File name -> (status, reason) as the table shows them."""
    model = window.library.proxy
    columns = window.library.model.COLUMNS
    out = {}
    for r in range(model.rowCount()):
        cell = {name: model.index(r, c).data() for c, name in enumerate(columns)}
        out[cell["File"]] = (cell["Status"], cell["Reason"])
    return out


def _wait_idle(qtbot, window: MainWindow) -> None:
    qtbot.waitUntil(lambda: not window.runner.active_jobs() and not window.library.jobs, timeout=TIMEOUT_MS)


# --- the window ---------------------------------------------------------------------------------------------
def test_the_window_has_every_page_menus_with_standard_shortcuts_and_the_icon(open_window) -> None:
    app = make_app(["slowtune"])
    assert not app.windowIcon().isNull(), "the app icon from resources/ did not load"
    window = open_window()
    assert [window.sidebar.item(i).text() for i in range(window.sidebar.count())] == list(PAGES)
    # In the order a user works: the chat runs the exported file, so Export comes before Chat.
    assert list(PAGES) == ["Library", "Providers", "Dataset", "Train", "Export", "Chat"]
    view = next(a.menu() for a in window.menuBar().actions() if a.text() == "&View")
    shortcuts = {a.text(): a.shortcut().toString() for a in view.actions()}
    assert shortcuts["Export"] == "Ctrl+5" and shortcuts["Chat"] == "Ctrl+6"
    for row, name in enumerate(PAGES):
        window.sidebar.setCurrentRow(row)
        assert window.pages.currentWidget().objectName() == f"page-{name.lower()}"
    window.sidebar.setCurrentRow(2)
    assert not window.copy_command_action.isEnabled()  # no project: the Dataset page has nothing to generate
    assert "No project open" in window.project_label.text()

    menus = [a.text().replace("&", "") for a in window.menuBar().actions()]
    assert menus == ["File", "Edit", "View", "Window", "Help"]
    keys = QKeySequence.StandardKey
    assert window.new_action.shortcuts() == QKeySequence.keyBindings(keys.New)
    assert window.open_action.shortcuts() == QKeySequence.keyBindings(keys.Open)
    # Cmd+, and Cmd+Q on a Mac; where the platform has no binding, Ctrl+, and Ctrl+Q.
    assert window.preferences_action.shortcuts() == (QKeySequence.keyBindings(keys.Preferences)
                                                     or [QKeySequence("Ctrl+,")])
    assert window.quit_action.shortcuts() == (QKeySequence.keyBindings(keys.Quit) or [QKeySequence("Ctrl+Q")])
    assert window.preferences_action.menuRole() == QAction.MenuRole.PreferencesRole
    assert window.quit_action.menuRole() == QAction.MenuRole.QuitRole
    assert window.about_action.menuRole() == QAction.MenuRole.AboutRole


def test_the_window_opens_without_loading_heavy_libraries(tmp_path: Path) -> None:
    # The first window must be quick: mlx, llama.cpp and openai load on first use, never at start-up.
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "from slowtune.gui.app import MainWindow, make_app\n"
        "app = make_app(['slowtune']); w = MainWindow(); w.show(); app.processEvents()\n"
        "heavy = sorted({'mlx', 'mlx_lm', 'llama_cpp', 'openai', 'transformers', 'torch'} & set(sys.modules))\n"
        "print(heavy, round(time.perf_counter() - t, 2))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    heavy = out.stdout.strip().splitlines()[-1].split("]")[0] + "]"
    assert heavy == "[]", out.stdout


def test_the_app_notes_its_first_paint_for_the_benchmark(tmp_path: Path) -> None:
    # `slowtune bench gui` times the app's start to the first paint of its window: the app notes it (with the heavy
    # libraries loaded by then) in the file the benchmark names, then quits.
    marker = tmp_path / "shown.json"
    env = {**os.environ, "SLOWTUNE_BENCH_SHOWN_FILE": str(marker), "QT_QPA_PLATFORM": "offscreen"}
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "slowtune"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(marker.read_text())
    assert started < shown["painted_at"] < time.time() and shown["heavy_loaded"] == []


# --- projects -----------------------------------------------------------------------------------------------
def test_new_open_and_recent_projects(open_window, tmp_path: Path) -> None:
    window = open_window()
    assert window.new_project("Alpha")
    assert window.project is not None and window.project.name == "Alpha"
    assert window.windowTitle() == "Alpha — slowtune" and window.switcher.text() == "Alpha"
    assert window.new_project("Beta")
    settings = load_settings().settings
    beta, alpha = settings.recent_projects
    assert Path(alpha).name == "Alpha" and settings.last_project == beta

    # A name that is taken, or not a name, is refused with a message instead of an error.
    assert not window.new_project("Alpha")
    assert "already exists" in window.banner.text.text()
    dialog = NewProjectDialog(window, name="Alpha")
    assert not dialog.buttons.button(dialog.buttons.StandardButton.Ok).isEnabled()
    dialog.name.setText("Gamma")
    assert dialog.buttons.button(dialog.buttons.StandardButton.Ok).isEnabled()
    assert dialog.project_path() == list_projects()[0].parent / "Gamma"

    # The switcher's menu lists the recent projects, the open one checked; choosing one opens it.
    window.switcher.rebuild_menu()
    recent = {a.text(): a for a in window.switcher.menu_.actions() if a.isCheckable()}
    assert set(recent) == {"Alpha", "Beta"} and recent["Beta"].isChecked()
    recent["Alpha"].trigger()
    assert window.project.name == "Alpha"
    assert load_settings().settings.recent_projects[0] == alpha

    # Open… lists the projects folder; a folder that holds no project is refused with a message.
    dialog = OpenProjectDialog(window)
    assert [dialog.list.item(i).text() for i in range(dialog.list.count())] == ["Alpha", "Beta"]
    assert not window.open_project(tmp_path)
    assert "no slowtune project" in window.banner.text.text()
    assert window.project.name == "Alpha"

    # The next start opens the last project.
    window.close()
    again = open_window()
    assert again.project is not None and again.project.name == "Alpha"


def test_the_welcome_appears_once_on_a_first_start(qtbot, open_window) -> None:
    first = open_window(welcome_seen=False)
    qtbot.waitUntil(lambda: first.welcome is not None and first.welcome.isVisible(), timeout=TIMEOUT_MS)
    steps = first.welcome.intro.text()
    # The steps in the sidebar's order (Export before Chat), numbered by the list.
    positions = [steps.index(f"<b>{name}</b>") for name in PAGES]
    assert positions == sorted(positions)
    first.welcome.name.setText("First steps")
    first.welcome.accept()
    assert first.project is not None and first.project.name == "First steps"
    first.close()

    second = open_window(welcome_seen=False)
    qtbot.wait(50)  # the welcome would be scheduled right after the window is shown
    assert second.welcome is None


def test_no_welcome_when_a_project_exists(qtbot, open_window) -> None:
    Project.create(paths.projects_dir() / "Existing").close()
    window = open_window(welcome_seen=False)
    qtbot.wait(50)
    assert window.welcome is None


def test_preferences_save_the_settings(qtbot, open_window) -> None:
    window = open_window()

    def fill_in() -> None:
        dialog = QApplication.activeModalWidget()
        assert isinstance(dialog, PreferencesDialog)
        dialog.chunk_tokens.setValue(256)
        dialog.chunk_overlap.setValue(300)  # more than a chunk: held below the chunk size
        dialog.max_file_mb.setValue(20)
        dialog.confirm_before_upload.setChecked(False)
        dialog.accept()

    QTimer.singleShot(0, fill_in)
    window.preferences_action.trigger()
    saved = load_settings().settings
    assert (saved.chunk_tokens, saved.chunk_overlap, saved.max_file_mb, saved.confirm_before_upload) == (
        256, 255, 20, False)
    assert window.settings.chunk_tokens == 256


def test_window_geometry_and_splitter_are_remembered(open_window) -> None:
    window = open_window()
    # Within the offscreen platform's 800×600 screen: a restored window is kept on screen (and its position
    # is moved to fit, so only the size is compared).
    window.resize(780, 540)
    size = window.size()
    window.library.splitter.setSizes([300, 200])
    sizes = window.library.splitter.sizes()
    window.close()
    again = open_window()
    assert again.size() == size
    assert again.library.splitter.sizes() == sizes


# --- the library ----------------------------------------------------------------------------------------------
def test_dropping_files_on_the_window_adds_them_and_shows_status_reason_and_chunks(qtbot, open_window,
                                                                                 tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Docs")
    assert window.library.stack.currentWidget() is window.library.empty  # the empty state says what to do
    assert "Drop files or folders" in window.library.empty.text.text()
    docs = _documents(tmp_path / "docs")
    window.show_page(3)  # a drop anywhere, from any page, goes to the Library

    # Delivered the way a drag from Finder arrives: to the window's native handle, over a child widget that
    # does not take drops itself; Qt hands it up to the main window.
    at = window.sidebar.mapTo(window, QPoint(20, 200))
    with qtbot.waitSignal(window.library.documents_changed, timeout=TIMEOUT_MS):
        entered, dropped = _drop(window.windowHandle(), list(docs.values()), at)
        assert entered and dropped

    assert window.sidebar.currentRow() == 0
    rows = _rows(window)
    assert rows["guide.md"] == ("ok", "") and rows["notes.txt"] == ("ok", "")
    assert rows["empty.txt"] == ("skipped", "Is empty")
    assert rows["broken.pdf"][0] == "failed" and "PDF" in rows["broken.pdf"][1]
    assert "2 of 4 documents read" in window.library.summary.text()
    assert window.library.banner.isVisible() and "1 failed" in window.library.banner.text.text()
    assert "broken.pdf" in window.library.banner.details.toPlainText()
    qtbot.waitUntil(lambda: "Adding documents:" in window.statusBar().currentMessage(), timeout=TIMEOUT_MS)
    assert window.statusBar().currentMessage() == "Adding documents: done, but 1 file could not be read"

    assert window.library.select_document(str(docs["guide.md"]))
    preview = window.library.preview.toPlainText()
    assert "Chunk 1 of 1" in preview and "Water tomatoes every morning" in preview
    assert window.library.select_document(str(docs["empty.txt"]))
    assert "empty.txt is empty." in window.library.preview.toPlainText()

    window.library.table.selectAll()
    window.library.table.copy()
    copied = QGuiApplication.clipboard().text()
    assert copied.splitlines()[0].startswith("Document\tFile\tKind\tStatus") and "guide.md" in copied


def test_a_drop_onto_the_window_itself_and_non_file_drags_are_ignored(qtbot, open_window, tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Direct")
    docs = _documents(tmp_path / "d")
    with qtbot.waitSignal(window.library.documents_changed, timeout=TIMEOUT_MS):
        assert _drop(window, [docs["notes.txt"]], QPoint(400, 300)) == (True, True)
    assert _rows(window)["notes.txt"][0] == "ok"

    # The overlay says where a drag will go while it hovers, and goes away when it leaves.
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(docs["guide.md"]))])
    QApplication.sendEvent(window, QDragEnterEvent(QPoint(50, 50), Qt.DropAction.CopyAction, mime,
                                                   Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))
    assert window.overlay.isVisible() and window.overlay.message == "Drop to add “guide.md” to “Direct”"
    QApplication.sendEvent(window, QDragLeaveEvent())
    assert not window.overlay.isVisible()

    mime = QMimeData()
    mime.setText("just text")
    enter = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(window, enter)
    assert not enter.isAccepted()


def test_files_dropped_on_the_dock_icon_reach_the_library(qtbot, open_window, tmp_path: Path) -> None:
    # On a Mac, a drop on the Dock icon (or Finder's Open With) arrives as a QFileOpenEvent on the application.
    window = open_window()
    window.new_project("Dock")
    window.show_page(4)
    docs = _documents(tmp_path / "dock")
    forwarder = app_module.FileOpenForwarder(window)
    QApplication.instance().installEventFilter(forwarder)
    try:
        with qtbot.waitSignal(window.library.documents_changed, timeout=TIMEOUT_MS):
            QApplication.sendEvent(QApplication.instance(), QFileOpenEvent(str(docs["notes.txt"])))
    finally:
        QApplication.instance().removeEventFilter(forwarder)
    assert window.sidebar.currentRow() == 0 and _rows(window)["notes.txt"][0] == "ok"


def test_rescan_picks_up_new_changed_and_removed_files_in_added_folders(qtbot, open_window, tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Watched")
    docs = _documents(tmp_path / "watched")
    assert not window.library.rescan_button.isEnabled()  # nothing to re-scan before a folder was added
    window.library.add_paths([tmp_path / "watched"])
    _wait_idle(qtbot, window)
    assert window.library.rescan_button.isEnabled()

    docs["notes.txt"].unlink()
    (tmp_path / "watched" / "new.md").write_text("# New\n\nA file added later.\n", encoding="utf-8")
    job = window.library.rescan()
    assert job is not None and job.title == "Re-scanning folders"
    _wait_idle(qtbot, window)
    rows = _rows(window)
    assert rows["new.md"] == ("ok", "")
    assert rows["notes.txt"] == ("removed", "No longer in the folder")


def test_documents_added_while_an_ingest_runs_are_queued_behind_it(qtbot, open_window, tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Queue")
    docs = _documents(tmp_path / "q")
    first = window.library.add_paths([docs["guide.md"]])
    second = window.library.add_paths([docs["notes.txt"]])
    assert first is not None and second is not None
    assert second.state == "waiting"  # one job per project: the second waits its turn instead of being refused
    _wait_idle(qtbot, window)
    assert first.state == second.state == "finished"
    assert {name for name, (status, _) in _rows(window).items() if status == "ok"} == {"guide.md", "notes.txt"}


def test_an_error_in_the_core_shows_in_the_page_with_details(qtbot, open_window, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    log_file = setup_logging()
    window = open_window()
    window.new_project("Errors")

    def fails(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/Volumes/locked")

    monkeypatch.setattr("slowtune.gui.library.ingest", fails)
    window.library.add_paths([tmp_path])
    _wait_idle(qtbot, window)
    banner = window.library.banner
    assert banner.isVisible() and banner.level == "error"
    assert banner.text.text() == "Adding documents stopped: Permission denied: /Volumes/locked"
    # The traceback is never on screen: it is in the log, and one click puts it on the clipboard.
    texts = visible_texts(window)
    assert texts and not [t for t in texts if developer_text(t)], texts
    assert "Traceback" in banner.details.toPlainText() and banner.copy_button.isVisible()
    assert "Traceback" in log_file.read_text(encoding="utf-8")
    QGuiApplication.clipboard().clear()
    banner.copy_button.click()
    copied = QGuiApplication.clipboard().text()
    assert "Adding documents stopped" in copied and "Traceback" in copied and "PermissionError" in copied
    assert str(log_file) in copied and banner.copy_button.text() == "Details Copied"


def test_the_ui_stays_responsive_and_shows_the_job_while_many_files_are_read(qtbot, open_window,
                                                                             tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Many")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(80):
        (folder / f"note-{i:03}.md").write_text(f"# Note {i}\n\n" + "Some words about the garden. " * 40)
    ticks_while_working: list[float] = []
    labels: set[str] = set()

    def tick() -> None:
        job = window.job_status.job
        if job is not None and job.thread_alive:
            ticks_while_working.append(time.monotonic())
            labels.add(window.job_status.label.text())

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    started = time.monotonic()
    job = window.library.add_paths([folder])
    assert job is not None and window.job_status.isVisible()
    _wait_idle(qtbot, window)
    timer.stop()
    print(f"80 files read in {time.monotonic() - started:.2f} s; {len(ticks_while_working)} ticks meanwhile")
    # The event loop kept running while the worker read the files: a frozen window would tick only afterwards.
    assert len(ticks_while_working) >= 3, ticks_while_working
    assert any(label.startswith("Adding documents: reading") for label in labels), labels
    assert not window.job_status.isVisible()
    assert len(_rows(window)) == 80


def test_cancelling_an_ingest_keeps_what_was_read_and_says_so(qtbot, open_window, tmp_path: Path) -> None:
    window = open_window()
    window.new_project("Cancel")
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        (folder / f"n{i:02}.txt").write_text(f"Line {i}.\n")
    job = window.library.add_paths([folder])
    assert job is not None
    qtbot.waitUntil(lambda: job.last_event is not None and job.last_event.stage == "parse", timeout=TIMEOUT_MS)
    window.job_status.cancel_button.click()
    _wait_idle(qtbot, window)
    assert job.state in ("cancelled", "finished")  # the last files may have been read before the cancel landed
    if job.state == "cancelled":
        assert "Stopped" in window.library.banner.text.text()


def test_quitting_during_a_job_asks_then_stops_it(qtbot, open_window, questions: Questions) -> None:
    window = open_window()
    window.new_project("Quit")

    def endless(progress: Progress) -> None:
        progress.report("work", 0, None, force=True)
        while True:
            progress.check()
            time.sleep(0.01)

    job = Job("Training", endless, key=str(window.project.root))
    with qtbot.waitSignal(job.progress, timeout=TIMEOUT_MS):
        window.runner.submit(job)

    questions.answer = False  # "Cancel": the window stays, the job goes on
    assert not window.close()
    assert window.isVisible() and job.is_running and "Training" in questions.asked[0]

    questions.answer = True  # "Stop and Quit"
    assert window.close()
    assert job.state == "cancelled" and not job.thread_alive
    assert len(questions.asked) == 2


def test_switching_projects_during_a_job_asks_first(qtbot, open_window, questions: Questions) -> None:
    window = open_window()
    window.new_project("One")

    def endless(progress: Progress) -> None:
        while True:
            progress.check()
            time.sleep(0.01)

    job = Job("Reading", endless, key=str(window.project.root))
    window.runner.submit(job)
    questions.answer = False
    assert not window.new_project("Two")
    assert window.project.name == "One" and job.is_running
    questions.answer = True
    assert window.new_project("Two")
    assert window.project.name == "Two" and job.state == "cancelled"


def test_documents_dropped_with_no_project_go_into_a_new_one(qtbot, open_window, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window()
    assert window.project is None
    assert window.library.empty.primary.text() == "New Project…"  # the empty state offers the way forward
    docs = _documents(tmp_path / "Field notes")
    asked: list[str] = []

    def prompt(name: str = "") -> Path:
        asked.append(name)
        return paths.projects_dir() / name

    monkeypatch.setattr(window, "prompt_new_project", prompt)
    _drop(window, [docs["guide.md"].parent], QPoint(300, 300))
    _wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: window.project is not None and bool(_rows(window)), timeout=TIMEOUT_MS)
    assert asked == ["Field notes"]  # named after the dropped folder
    assert window.project.name == "Field notes" and _rows(window)["guide.md"][0] == "ok"


def test_an_unexpected_error_is_one_sentence_and_a_banner_button_acts(qtbot, open_window,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    window = open_window()
    window.new_project("Surprises")

    def fails(*args: object, **kwargs: object) -> None:
        raise KeyError({"pre_tokenizer": {"type": "Split"}})  # a library's error, its text a dump

    monkeypatch.setattr("slowtune.gui.library.ingest", fails)
    window.library.add_paths([Path(__file__)])
    _wait_idle(qtbot, window)
    banner = window.library.banner
    assert banner.text.text() == "Adding documents failed unexpectedly. Copy the details for a bug report."
    assert "KeyError" not in banner.text.text() and "pre_tokenizer" in banner.details.toPlainText()
    assert not [t for t in visible_texts(window) if developer_text(t)]

    chosen: list[str] = []
    banner.show_message("No model is chosen.", level="warning",
                        actions=[("Choose a Model…", lambda: chosen.append("model")),
                                 ("Open Settings", lambda: chosen.append("settings"))])
    assert [b.text() for b in banner.action_buttons] == ["Choose a Model…", "Open Settings"]
    assert all(b.isVisible() for b in banner.action_buttons) and not banner.copy_button.isVisible()
    banner.action_buttons[1].click()
    banner.action_buttons[0].click()
    assert chosen == ["settings", "model"]
    banner.show_message("Done.")  # the next message has its own buttons, or none
    qtbot.waitUntil(lambda: not [b for b in banner.findChildren(type(banner.close_button)) if b.text() == "Open Settings"])
    assert banner.action_buttons == []
    with pytest.raises(ValueError):
        MessageBanner().show_message("Too many.", actions=[("A", print)] * 3)


def test_developer_text_is_recognised() -> None:
    for text in ('Traceback (most recent call last):', '  File "/x.py", line 3', 'use --judge PROVIDER',
                 'tokenizer {"type": "Split", "pattern": {"Regex": "x"}}'):
        assert developer_text(text), text
    for text in ("Exporting failed unexpectedly. Copy the details for a bug report.", "Q4_K_M — 1.2 GB",
                 "a {curly} word", "2024-06-01 — done", "well-known"):
        assert not developer_text(text), text


def test_no_page_shows_commands_and_copy_as_command_gives_the_pages_command(qtbot, open_window,
                                                                          tmp_path: Path) -> None:
    window = open_window()
    for row, name in enumerate(PAGES):  # no project: the empty states
        window.show_page(row)
        texts = visible_texts(window.pages.currentWidget())
        assert not [t for t in texts if developer_text(t) or "Terminal" in t or "slowtune " in t], (name, texts)
    window.new_project("Garden club")
    root = window.project.root
    expected = {"Library": None, "Providers": None,
                "Dataset": f"slowtune generate '{root}'",
                "Train": f"slowtune train --model MODEL --data '{root}'"}
    for row, name in enumerate(PAGES):
        window.show_page(row)
        texts = visible_texts(window.pages.currentWidget())
        assert texts and not [t for t in texts if developer_text(t) or "Terminal" in t], (name, texts)
        if name in expected:
            assert window.copy_command_action.isEnabled() == (expected[name] is not None), name
            QGuiApplication.clipboard().setText("before")
            window.copy_command_action.trigger()
            assert QGuiApplication.clipboard().text() == (expected[name] or "before"), name
    # With a folder added and a provider selected, the Library and Providers pages have theirs too.
    notes = tmp_path / "notes folder"
    notes.mkdir()
    (notes / "a.md").write_text("# A\n\nThe ferry is painted saffron.\n", encoding="utf-8")
    window.library.add_paths([notes])
    _wait_idle(qtbot, window)
    from slowtune.teacher import providers as pv

    pv.add_provider("local", "ollama")
    window.providers.refresh()
    window.providers.select("local")
    for name, command in (("Library", f"slowtune ingest '{root}' '{notes}'"),
                          ("Providers", "slowtune provider test local")):
        window.show_page(list(PAGES).index(name))
        window.copy_command_action.trigger()
        assert QGuiApplication.clipboard().text() == command, name


def test_settings_that_cannot_be_read_are_reported_in_the_window(open_window) -> None:
    paths.settings_file().write_text(json.dumps({"chunk_tokens": "big"}), encoding="utf-8")
    window = open_window()
    assert window.banner.isVisible() and "defaults are used" in window.banner.text.text()
    assert "chunk_tokens" in window.banner.details.toPlainText()
