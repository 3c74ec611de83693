"""Choosing a project: the switcher at the top of the sidebar, and the New and Open dialogs.

Projects are found the way the command line finds them (``slowtune.store``): a name means a folder under the
projects folder, anything else is a path. The recent list lives in the settings file, shared with the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from slowtune import paths
from slowtune.gui.qtcompat import emit
from slowtune.store import DB_NAME, StoreError, list_projects, resolve_project_path


def is_project(path: Path) -> bool:
    return (path / DB_NAME).is_file()


def check_new_name(name: str) -> tuple[Path | None, str]:
    """Where a new project called ``name`` would go, or None and why it cannot be made."""
    name = name.strip()
    if not name:
        return None, "Give the project a name."
    if "/" in name or name.startswith((".", "~")):
        return None, "Use a plain name; the project folder is made for you."
    try:
        root = resolve_project_path(name)
    except StoreError:
        return None, "Use letters, digits, spaces, '.', '-' or '_' (at most 80 characters)."
    if is_project(root):
        return None, f"A project called “{name}” already exists. Open it with File › Open Project…"
    if root.exists() and any(root.iterdir()):
        return None, f"The folder {root} already holds other files."
    return root, f"It will be kept in {root}"


class NewProjectDialog(QDialog):
    """Asks for a name and shows, as the user types, where the project will live or why the name does not work."""

    def __init__(self, parent: QWidget | None = None, *, name: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle("New Project")
        self.name = QLineEdit(name)
        self.name.setPlaceholderText("e.g. Field notes")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setMinimumWidth(420)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Create")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Name:", self.name)
        form.addRow("", self.hint)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("A project holds your documents, the dataset made from them and the models you train."))
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.name.textChanged.connect(self._validate)
        self._validate()

    def project_path(self) -> Path | None:
        return check_new_name(self.name.text())[0]

    def _validate(self) -> None:
        root, hint = check_new_name(self.name.text())
        self.hint.setText(hint)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(root is not None)


class OpenProjectDialog(QDialog):
    """The projects in slowtune's projects folder, plus Browse… for a project folder kept anywhere else."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open Project")
        self.chosen: Path | None = None
        self.list = QListWidget()
        for root in list_projects():
            item = QListWidgetItem(root.name)
            item.setData(Qt.ItemDataRole.UserRole, str(root))
            item.setToolTip(str(root))
            self.list.addItem(item)
        self.list.itemDoubleClicked.connect(lambda _item: self.accept())
        self.list.currentRowChanged.connect(lambda _row: self._update())
        note = QLabel(f"Projects in {paths.projects_dir()}:" if self.list.count() else
                      "There are no projects in slowtune's projects folder yet. Use File › New Project…, or "
                      "Browse… for a project folder kept elsewhere.")
        note.setWordWrap(True)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open | QDialogButtonBox.StandardButton.Cancel)
        browse = QPushButton("Browse…")
        self.buttons.addButton(browse, QDialogButtonBox.ButtonRole.ActionRole)
        browse.clicked.connect(self._browse)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(note)
        layout.addWidget(self.list)
        layout.addWidget(self.buttons)
        self.resize(480, 360)
        if self.list.count():
            self.list.setCurrentRow(0)
        self._update()

    def _update(self) -> None:
        item = self.list.currentItem()
        self.chosen = Path(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None
        self.buttons.button(QDialogButtonBox.StandardButton.Open).setEnabled(self.chosen is not None)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open a Project Folder", str(paths.projects_dir()))
        if folder:
            self.chosen = Path(folder)
            self.accept()


class ProjectSwitcher(QToolButton):
    """The open project's name; its menu lists recent projects and New/Open.

    Signals: ``new_requested()``, ``open_requested()``, ``recent_chosen(path)``.
    """

    new_requested = Signal()
    open_requested = Signal()
    recent_chosen = Signal(str)

    def __init__(self, recent: Callable[[], list[str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("project-switcher")
        self._recent = recent
        self.current: str | None = None
        self.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.menu_ = QMenu(self)
        self.menu_.aboutToShow.connect(self.rebuild_menu)
        self.setMenu(self.menu_)
        self.rebuild_menu()
        self.set_project(None, None)

    def set_project(self, name: str | None, path: str | None) -> None:
        self.current = path
        text = name or "No project"
        # Long names would widen the sidebar: elide them; the tooltip has the whole name and the folder.
        self.setText(self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, 150))
        self.setToolTip(f"{name}\n{path}" if path else "Create or open a project")

    def rebuild_menu(self) -> None:
        menu = self.menu_
        menu.clear()
        recent = self._recent()
        if recent:
            menu.addSection("Recent Projects")
        for path in recent:
            action = menu.addAction(Path(path).name)
            action.setToolTip(path)
            action.setCheckable(True)
            action.setChecked(path == self.current)
            action.setEnabled(is_project(Path(path)))
            action.triggered.connect(lambda _checked=False, p=path: emit(self.recent_chosen, p))
        if recent:
            menu.addSeparator()
        menu.addAction("New Project…", lambda: emit(self.new_requested))
        menu.addAction("Open Project…", lambda: emit(self.open_requested))
