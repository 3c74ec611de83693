"""The main window: a sidebar of pages, a project switcher, the running job in the status bar, and a native menu bar.

The window owns the open project (one SQLite connection, for reading), the settings, and the ``JobRunner``
every page hands its long work to. Pages (``slowtune.gui.page.Page``) receive the project through
``set_project``.

Where things are remembered:
- the user's preferences and recent projects: ``slowtune.settings`` (settings.json, shared with the CLI);
- window geometry, splitter positions and "the welcome was shown": a ``QSettings`` INI file beside it
  (``window.ini`` in the config folder). These are Qt's opaque view-state blobs, so they stay out of the
  Qt-free settings file; and a file under the config folder (rather than the OS's native Qt store) follows
  ``SLOWTUNE_HOME``, so tests and users who keep everything on another disk get their own copy.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, QObject, QSettings, Qt, QTimer
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDragMoveEvent,
    QDropEvent,
    QFileOpenEvent,
    QGuiApplication,
    QIcon,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QMenu,
    QMessageBox,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from slowtune import __version__, paths
from slowtune.gui.chat import ChatPage
from slowtune.gui.dataset import DatasetPage
from slowtune.gui.export import ExportPage
from slowtune.gui.firstpaint import SHOWN_MARKER_ENV, report_when_painted
from slowtune.gui.library import LibraryPage
from slowtune.gui.page import Page
from slowtune.gui.preferences import PreferencesDialog
from slowtune.gui.projects import (
    NewProjectDialog,
    OpenProjectDialog,
    ProjectSwitcher,
    check_new_name,
    is_project,
)
from slowtune.gui.providers import ProvidersPage
from slowtune.gui.train import TrainPage
from slowtune.gui.welcome import WelcomeDialog
from slowtune.gui.widgets import DropOverlay, JobStatusWidget, MessageBanner
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.workers import Job, JobRunner
from slowtune.resources import resource_path
from slowtune.settings import Settings, add_recent_project, load_settings, save_settings
from slowtune.store import Project, StoreError, list_projects

PAGES = {
    "Library": "Drop documents and folders to add them to the project.",
    "Providers": "Add a teacher: any OpenAI-compatible endpoint (OpenAI, OpenRouter, Groq, a local Ollama or LM Studio "
                 "server) or a GGUF model run on this Mac. API keys go to the keychain, nowhere else.",
    "Dataset": "Have the teacher write grounded questions and answers from your chunks, then review, accept or reject "
               "them before training.",
    "Train": "Pick a base model, check that it fits, and train a LoRA adapter with a live loss chart. Models larger "
             "than memory are trained layer by layer from disk.",
    # Export before Chat: the chat runs the exported GGUF file.
    "Export": "Fuse the adapter into the base model, convert it to GGUF, quantise it, and verify the files against the "
              "trained model. Ollama Modelfile included.",
    "Chat": "Chat offline with the tuned model beside its base, and score both on held-out questions.",
}
STOP_WAIT_S = 10.0  # how long quitting waits for a cancelled job to reach a safe point
DEFAULT_SIZE = (1180, 760)


def window_state() -> QSettings:
    """Qt view state (geometry, splitters, the welcome flag); see the module docstring for why it lives here."""
    return QSettings(str(paths.config_dir() / "window.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    def __init__(self, *, open_last_project: bool = True) -> None:
        super().__init__()
        self.setWindowTitle("slowtune")
        self.setObjectName("main-window")
        loaded = load_settings()
        self.settings: Settings = loaded.settings
        self.project: Project | None = None
        self.runner = JobRunner(self)
        self.welcome: WelcomeDialog | None = None
        self._welcome_checked = False

        # --- sidebar: the project, then the pages in the order a user works through them --------------
        self.switcher = ProjectSwitcher(lambda: list(self.settings.recent_projects))
        self.switcher.new_requested.connect(self.choose_new_project)
        self.switcher.open_requested.connect(self.choose_project_to_open)
        self.switcher.recent_chosen.connect(self.open_project)
        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFrameShape(QListWidget.Shape.NoFrame)
        self.sidebar.setStyleSheet("QListWidget#sidebar::item { padding: 7px 8px; }")
        sidebar_box = QWidget()
        sidebar_box.setFixedWidth(180)
        side = QVBoxLayout(sidebar_box)
        side.setContentsMargins(8, 10, 0, 8)
        project_caption = QLabel("PROJECT")
        project_caption.setStyleSheet("color: gray; font-size: 10px; font-weight: bold;")
        side.addWidget(project_caption)
        side.addWidget(self.switcher)
        side.addSpacing(8)
        side.addWidget(self.sidebar, 1)

        # --- pages -----------------------------------------------------------------------------------
        self.pages = QStackedWidget()
        self.library = LibraryPage(self.runner, lambda: self.settings)
        self.library.project_needed.connect(self._project_for_paths)
        self.library.new_project_requested.connect(self.choose_new_project)
        self.library.open_project_requested.connect(self.choose_project_to_open)
        self.providers = ProvidersPage(self.runner, lambda: self.settings, self.update_settings)
        self.dataset = DatasetPage(self.runner, lambda: self.settings, self.update_settings)
        self.train = TrainPage(self.runner, lambda: self.settings)
        self.export = ExportPage(self.runner, lambda: self.settings)
        self.chat = ChatPage(self.runner, lambda: self.settings)
        self.train.export_requested.connect(self._export_run)
        self.export.chat_requested.connect(self._chat_with)
        built: dict[str, QWidget] = {"Library": self.library, "Providers": self.providers, "Dataset": self.dataset,
                                     "Train": self.train, "Chat": self.chat, "Export": self.export}
        for name in PAGES:
            self.sidebar.addItem(name)
            self.pages.addWidget(built[name])
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        self.banner = MessageBanner()  # messages about the window as a whole: projects, settings, jobs refused
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.addWidget(self.banner)
        right_layout.addWidget(self.pages, 1)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(sidebar_box)
        layout.addWidget(right, 1)
        self.setCentralWidget(central)

        # --- status bar: the project on the left, the running job on the right ---------------------------
        self.project_label = QLabel()
        self.job_status = JobStatusWidget()
        self.statusBar().addWidget(self.project_label, 1)
        self.statusBar().addPermanentWidget(self.job_status)
        self.runner.job_started.connect(self.job_status.track)
        self.runner.job_done.connect(self._job_done)
        self.runner.refused.connect(lambda message: self.banner.show_message(message, level="warning"))

        # --- dropping files anywhere -----------------------------------------------------------------
        self.setAcceptDrops(True)
        self.overlay = DropOverlay(central)

        self._build_menus()
        self._restore_window_state()
        if loaded.warnings:
            self.banner.show_message("Some settings could not be read; defaults are used for them.",
                                     level="warning", details="\n".join(loaded.warnings))
        if open_last_project and self.settings.last_project and is_project(Path(self.settings.last_project)):
            self.open_project(self.settings.last_project, remember=False)
        self._show_project()

    # --- menus -----------------------------------------------------------------------------------------
    def _action(self, menu: QMenu, text: str, slot: Callable[[], object], shortcut: object = None,
                role: QAction.MenuRole | None = None, fallback: str = "") -> QAction:
        """A menu action. A standard key gets the platform's own bindings (Cmd+, on a Mac); where the platform
        has none (Preferences and Quit on some Linux desktops) ``fallback`` is used, so the shortcut still works."""
        action = QAction(text, self)
        if isinstance(shortcut, QKeySequence.StandardKey):
            bindings = QKeySequence.keyBindings(shortcut)
            action.setShortcuts(bindings or ([QKeySequence(fallback)] if fallback else []))
        elif shortcut:
            action.setShortcut(QKeySequence(str(shortcut)))
        if role is not None:
            action.setMenuRole(role)
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        return action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        keys = QKeySequence.StandardKey
        role = QAction.MenuRole
        file = bar.addMenu("&File")
        self.new_action = self._action(file, "New Project…", self.choose_new_project, keys.New)
        self.open_action = self._action(file, "Open Project…", self.choose_project_to_open, keys.Open)
        self.recent_menu = file.addMenu("Open Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file.addSeparator()
        # Ctrl is Cmd on a Mac: Qt maps it.
        self.add_files_action = self._action(file, "Add Documents…", self._add_documents, "Ctrl+Shift+A")
        self._action(file, "Add Folder…", self._add_folder)
        file.addSeparator()
        # QuitRole puts it in the application menu on a Mac; closing the window asks first if a job is running.
        self.quit_action = self._action(file, "Quit slowtune", self.close, keys.Quit, role.QuitRole, "Ctrl+Q")

        edit = bar.addMenu("&Edit")
        self._action(edit, "Copy", lambda: self._focused_call("copy"), keys.Copy)
        self._action(edit, "Select All", lambda: self._focused_call("selectAll"), keys.SelectAll)
        edit.addSeparator()
        # The page's work as a slowtune command line, for scripts and Terminal; pages do not show commands.
        self.copy_command_action = self._action(edit, "Copy as Command", self.copy_command)
        edit.aboutToShow.connect(self._update_copy_command)
        self.pages.currentChanged.connect(lambda _index: self._update_copy_command())
        self._update_copy_command()
        edit.addSeparator()
        # On a Mac PreferencesRole moves it into the application menu, as Cmd+, expects.
        self.preferences_action = self._action(edit, "Preferences…", self.show_preferences, keys.Preferences,
                                               role.PreferencesRole, "Ctrl+,")

        view = bar.addMenu("&View")
        for row, name in enumerate(PAGES):
            self._action(view, name, lambda row=row: self.show_page(row), f"Ctrl+{row + 1}")
        view.addSeparator()
        self._action(view, "Enter Full Screen", self._toggle_full_screen, keys.FullScreen)

        window = bar.addMenu("&Window")
        self._action(window, "Minimize", self.showMinimized, "Ctrl+M")
        self._action(window, "Zoom", self._toggle_zoom)

        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "Welcome Guide", self.show_welcome)
        self.about_action = self._action(help_menu, "About slowtune", self.show_about, role=role.AboutRole)

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        for path in self.settings.recent_projects:
            action = self.recent_menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setEnabled(is_project(Path(path)))
            action.triggered.connect(lambda _checked=False, p=path: self.open_project(p))
        if not self.settings.recent_projects:
            self.recent_menu.addAction("No recent projects").setEnabled(False)

    def current_command(self) -> str | None:
        """The shown page's work as a command line (``Page.command_line``), or None."""
        page = self.pages.currentWidget()
        return page.command_line() if isinstance(page, Page) else None

    def _update_copy_command(self) -> None:
        command = self.current_command()
        self.copy_command_action.setEnabled(command is not None)
        self.copy_command_action.setToolTip(command or "This page has no command-line equivalent")

    def copy_command(self) -> None:
        """Edit › Copy as Command: the shown page's command line to the clipboard."""
        command = self.current_command()
        if command is None:
            self.statusBar().showMessage("This page has no command-line equivalent.", 6000)
            return
        QGuiApplication.clipboard().setText(command)
        self.statusBar().showMessage("Copied the command for this page.", 6000)

    def _focused_call(self, method: str) -> None:
        widget = QApplication.focusWidget()
        if widget is not None and callable(getattr(widget, method, None)):
            getattr(widget, method)()

    def _toggle_full_screen(self) -> None:
        self.showNormal() if self.isFullScreen() else self.showFullScreen()

    def _toggle_zoom(self) -> None:
        self.showNormal() if self.isMaximized() else self.showMaximized()

    def show_page(self, row: int) -> None:
        self.sidebar.setCurrentRow(row)

    def _export_run(self, run_dir: str) -> None:
        """The Train page's "Export this model…": the Export page, with that run selected."""
        self.show_page(list(PAGES).index("Export"))
        self.export.select_run(run_dir)

    def _chat_with(self, model: str, compare: str) -> None:
        """The Export page's "Chat with It": the Chat page, with the exported model (and its base beside it)."""
        self.show_page(list(PAGES).index("Chat"))
        self.chat.open_model(model, compare or None)

    def _add_documents(self) -> None:
        self.show_page(0)
        self.library.choose_files()

    def _add_folder(self) -> None:
        self.show_page(0)
        self.library.choose_folder()

    # --- settings --------------------------------------------------------------------------------------
    def update_settings(self, change: Callable[[Settings], None]) -> None:
        """Apply ``change`` to the settings file as it is now (the CLI may have written it since) and save."""
        fresh = load_settings().settings
        change(fresh)
        save_settings(fresh)
        self.settings = fresh

    def show_preferences(self) -> None:
        dialog = PreferencesDialog(self.settings, self)
        if dialog.exec() == QDialog.DialogCode.Accepted:
            self.apply_preferences(dialog.values())

    def apply_preferences(self, values: dict[str, int | bool]) -> None:
        def change(settings: Settings) -> None:
            for key, value in values.items():
                setattr(settings, key, value)

        self.update_settings(change)
        self.library.refresh()  # the empty state names the chunk size

    # --- projects --------------------------------------------------------------------------------------
    def choose_new_project(self) -> None:
        root = self.prompt_new_project()
        if root is not None:
            self.new_project(root.name)

    def prompt_new_project(self, name: str = "") -> Path | None:
        """Ask for a name (a dialog); where the project would go, or None if the user cancelled."""
        dialog = NewProjectDialog(self, name=name)
        return dialog.project_path() if dialog.exec() == QDialog.DialogCode.Accepted else None

    def choose_project_to_open(self) -> None:
        dialog = OpenProjectDialog(self)
        if dialog.exec() == QDialog.DialogCode.Accepted and dialog.chosen is not None:
            self.open_project(dialog.chosen)

    def new_project(self, name: str) -> bool:
        root, problem = check_new_name(name)
        if root is None:
            self.banner.show_message(problem, level="warning")
            return False
        if not self._stop_jobs("Switching projects"):
            return False
        try:
            project = Project.create(root, name=name.strip())
        except (StoreError, OSError) as exc:
            self.banner.show_message(f"The project could not be created: {exc}", level="error")
            return False
        self._set_project(project)
        return True

    def open_project(self, path: str | Path, *, remember: bool = True) -> bool:
        root = Path(path).expanduser().resolve()
        if self.project is not None and self.project.root == root:
            return True
        if not is_project(root):
            self.banner.show_message(f"There is no slowtune project in {root}.", level="warning")
            return False
        if not self._stop_jobs("Switching projects"):
            return False
        try:
            project = Project.open(root)
        except (StoreError, OSError) as exc:
            self.banner.show_message(f"The project could not be opened: {exc}", level="error")
            return False
        self._set_project(project, remember=remember)
        return True

    def _set_project(self, project: Project, *, remember: bool = True) -> None:
        if self.project is not None:
            self.project.close()
        self.project = project
        self.banner.clear()
        if remember:
            self.update_settings(lambda s: add_recent_project(s, str(project.root)))
        self._show_project()

    def _show_project(self) -> None:
        project = self.project
        self.library.set_project(project)
        self.dataset.set_project(project)
        self.train.set_project(project)
        self.export.set_project(project)
        self.chat.set_project(project)
        if project is None:
            self.switcher.set_project(None, None)
            self.setWindowTitle("slowtune")
            self.project_label.setText("No project open — use File › New Project or Open Project")
        else:
            self.switcher.set_project(project.name, str(project.root))
            self.setWindowTitle(f"{project.name} — slowtune")
            self.project_label.setText(f"{project.name}  ·  {project.root}")

    def _project_for_paths(self, dropped: list[Path]) -> None:
        """Documents arrived with no project open: make one for them (named after a dropped folder)."""
        default = dropped[0].name if len(dropped) == 1 and dropped[0].is_dir() else "My documents"
        root = self.prompt_new_project(default)
        if root is not None and self.new_project(root.name):
            self.library.add_paths(dropped)

    # --- jobs --------------------------------------------------------------------------------------------
    def _job_done(self, job: Job) -> None:
        outcome = {"finished": "done", "failed": "failed", "cancelled": "cancelled"}[job.state]
        if job.state == "failed" and job.error:
            outcome = f"failed: {job.error[0]}"
        elif job.state == "finished" and job.failure:
            outcome = f"failed: {job.failure}"
        elif job.state == "finished" and job.note:
            outcome = f"done, but {job.note}"
        self.statusBar().showMessage(f"{job.title}: {outcome}", 6000)

    def _stop_jobs(self, action: str) -> bool:
        """Before quitting or switching projects: ask, cancel, and wait (bounded) for running jobs to stop.
        True when nothing is running any more, or the user chose to go on anyway."""
        jobs = self.runner.active_jobs()
        if not jobs:
            return True
        titles = ", ".join(f"“{job.title}”" for job in jobs)
        if not ask(self, action, f"{titles} is still running. Stop it? Work it has finished is kept.",
                   f"Stop and {'Quit' if action == 'Quit' else 'Continue'}"):
            return False
        self.runner.cancel_all()
        QApplication.setOverrideCursor(Qt.CursorShape.WaitCursor)
        try:
            stopped = self.runner.wait_all(STOP_WAIT_S)
        finally:
            QApplication.restoreOverrideCursor()
        # The threads have ended; let their "done" signals reach the pages before the project changes.
        QApplication.sendPostedEvents()
        if not stopped:
            self.banner.show_message(f"{titles} did not stop within {STOP_WAIT_S:.0f} s.", level="error")
        return stopped or action == "Quit"

    def jobs_still_running(self) -> bool:
        return any(job.thread_alive for job in self.runner.active_jobs())

    # --- dropping files ------------------------------------------------------------------------------------
    @staticmethod
    def _local_paths(event: QDropEvent | QDragEnterEvent | QDragMoveEvent) -> list[Path]:
        mime = event.mimeData()
        if mime is None or not mime.hasUrls():
            return []
        return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        dropped = self._local_paths(event)
        if not dropped:
            event.ignore()
            return
        event.acceptProposedAction()
        what = f"“{dropped[0].name}”" if len(dropped) == 1 else f"{len(dropped)} items"
        where = f"to “{self.project.name}”" if self.project is not None else "to a new project"
        self.overlay.show_message(f"Drop to add {what} {where}")

    def dragMoveEvent(self, event: QDragMoveEvent) -> None:
        event.acceptProposedAction()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self.overlay.hide()

    def dropEvent(self, event: QDropEvent) -> None:
        self.overlay.hide()
        dropped = self._local_paths(event)
        if not dropped:
            event.ignore()
            return
        event.acceptProposedAction()
        # Handle it after the drop returns: the drag source (Finder) is not kept waiting for a dialog.
        QTimer.singleShot(0, lambda: self.add_paths(dropped))

    def add_paths(self, paths: list[Path]) -> None:
        """Documents dropped on the window or on the Dock icon (or opened with the app from Finder)."""
        self.show_page(0)
        self.library.add_paths(paths)

    # --- dialogs ---------------------------------------------------------------------------------------
    def show_about(self) -> None:
        QMessageBox.about(
            self, "About slowtune",
            f"<h3>slowtune {__version__}</h3><p>Turn your documents into a small private model you can chat with "
            "offline.</p><p>Your documents are read on this Mac. Text goes to a teacher model only when you "
            "generate a dataset, and only to the provider you chose.</p>")

    def _maybe_show_welcome(self) -> None:
        """Once ever, on a first start with no project anywhere."""
        if self._welcome_checked:
            return
        self._welcome_checked = True
        state = window_state()
        if state.value("welcome/shown", False, type=bool):
            return
        if self.project is None and not list_projects():
            self.show_welcome()

    def show_welcome(self) -> None:
        state = window_state()
        state.setValue("welcome/shown", True)
        state.sync()
        welcome = WelcomeDialog(self)
        welcome.accepted.connect(lambda: self.new_project(welcome.name.text()))
        self.welcome = welcome
        welcome.open()  # window-modal and non-blocking: the window stays drawn behind it

    # --- window state --------------------------------------------------------------------------------------
    def _restore_window_state(self) -> None:
        state = window_state()
        geometry = state.value("window/geometry")
        if not (isinstance(geometry, QByteArray) and self.restoreGeometry(geometry)):
            # First start: the default size, but never larger than the screen (a 13" laptop, a projector).
            screen = QGuiApplication.primaryScreen()
            available = screen.availableGeometry() if screen is not None else None
            width, height = DEFAULT_SIZE
            if available is not None:
                width, height = min(width, int(available.width() * 0.95)), min(height, int(available.height() * 0.9))
            self.resize(width, height)
        splitter = state.value("library/splitter")
        if isinstance(splitter, QByteArray):
            self.library.splitter.restoreState(splitter)

    def save_window_state(self) -> None:
        state = window_state()
        state.setValue("window/geometry", self.saveGeometry())
        state.setValue("library/splitter", self.library.splitter.saveState())
        state.sync()

    def showEvent(self, event: QEvent) -> None:
        super().showEvent(event)
        QTimer.singleShot(0, self._maybe_show_welcome)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._stop_jobs("Quit"):
            event.ignore()
            return
        self.save_window_state()
        self.chat.unload()
        if self.project is not None:
            self.project.close()
            self.project = None
        event.accept()


def make_app(argv: Sequence[str]) -> QApplication:
    app = QApplication.instance() or QApplication(list(argv))
    assert isinstance(app, QApplication)
    app.setApplicationName("slowtune")
    app.setApplicationDisplayName("slowtune")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("slowtune")
    app.setWindowIcon(QIcon(str(resource_path("icons", "slowtune.svg"))))
    QGuiApplication.setDesktopFileName("slowtune")
    return app


class FileOpenForwarder(QObject):
    """macOS: files dropped on the Dock icon, or opened with the app from Finder, arrive as ``QFileOpenEvent``s
    on the application; they go to the window's Library like a drop on the window."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.FileOpen and isinstance(event, QFileOpenEvent):
            path = event.file() or event.url().toLocalFile()
            if path:
                self.window.add_paths([Path(path)])
                return True
        return False


def run_app(argv: Sequence[str]) -> int:
    app = make_app(argv)
    window = MainWindow()
    app.installEventFilter(FileOpenForwarder(window))
    window.show()
    if marker := os.environ.get(SHOWN_MARKER_ENV):
        report_when_painted(window, Path(marker))
    code = app.exec()
    if window.jobs_still_running():
        # A job that would not stop at a safe point within STOP_WAIT_S: its open transaction is rolled back by
        # SQLite, and ending the process is the only way to stop a thread that does not return.
        os._exit(code)
    return code
