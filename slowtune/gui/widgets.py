"""Small widgets shared by the window and its pages: a message banner, the job status, the drop overlay; and
:func:`visible_texts` / :func:`developer_text`, which tests use to check that a window speaks to its user."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from PySide6 import QtGui
from PySide6.QtCore import (
    QAbstractTableModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QGuiApplication, QPainter, QPalette, QPen, QTextDocument
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractItemView,
    QComboBox,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTabBar,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from slowtune import paths
from slowtune.gui.qtcompat import emit
from slowtune.gui.workers import Job

log = logging.getLogger(__name__)
_LOG_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

# Banner tints, mixed into the window colour so they read in light and dark mode alike.
_TINTS = {"info": QColor("#3b82f6"), "warning": QColor("#f59e0b"), "error": QColor("#ef4444")}


def _mix(base: QColor, tint: QColor, amount: float) -> QColor:
    return QColor.fromRgbF(
        base.redF() * (1 - amount) + tint.redF() * amount,
        base.greenF() * (1 - amount) + tint.greenF() * amount,
        base.blueF() * (1 - amount) + tint.blueF() * amount,
    )


class MessageBanner(QFrame):
    """A message in the page it belongs to, written for the user, with up to two buttons that act on it.

    ``show_message(message, level=..., details=..., actions=...)``:

    - ``message``: what happened and what to do, in a sentence or two (plain words: no traceback, no type names);
    - ``level``: ``"info"``, ``"warning"`` or ``"error"`` (the tint);
    - ``details``: what a developer needs (a traceback, a file list, a program's output). It is never shown: it
      goes to the log, and a "Copy Details for a Bug Report" button puts it on the clipboard;
    - ``actions``: up to :data:`MAX_ACTIONS` ``(label, callback)`` pairs, shown as buttons beside the message
      (``("Choose a Model…", page.choose_model)``); a click calls ``callback()`` and leaves the banner as it is.

    ``clear()`` hides it. ``details`` holds the last details (a ``QTextDocument``: ``details.toPlainText()``), and
    ``action_buttons`` the buttons of the last message. Errors from the core land here instead of in a dialog.
    """

    MAX_ACTIONS = 2
    COPY_LABEL = "Copy Details for a Bug Report"

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("message-banner")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        self.level = "info"
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.text.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.details = QTextDocument(self)  # kept for the clipboard, never drawn
        self.action_buttons: list[QPushButton] = []
        self.copy_button = QPushButton(self.COPY_LABEL)
        self.copy_button.setToolTip("Copy what went wrong, in full, to paste into a bug report")
        self.copy_button.clicked.connect(self.copy_details)
        self.close_button = QPushButton("Dismiss")
        self.close_button.clicked.connect(self.clear)
        self._row = QHBoxLayout()
        self._row.addWidget(self.text, 1)
        self._row.addWidget(self.copy_button, 0, Qt.AlignmentFlag.AlignTop)
        self._row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.addLayout(self._row)
        self.hide()

    def show_message(self, message: str, *, level: str = "info", details: str = "",
                     actions: Sequence[tuple[str, Callable[[], object]]] = ()) -> None:
        if len(actions) > self.MAX_ACTIONS:
            raise ValueError(f"a banner has at most {self.MAX_ACTIONS} actions, got {len(actions)}")
        self.level = level
        self.text.setText(message)
        self.details.setPlainText(details)
        if details:
            log.log(_LOG_LEVELS.get(level, logging.INFO), "%s\n%s", message, details)
        self.copy_button.setText(self.COPY_LABEL)
        self.copy_button.setVisible(bool(details))
        self._set_actions(actions)
        palette = self.palette()
        window = self.window().palette().color(QPalette.ColorRole.Window) if self.window() else QColor("white")
        palette.setColor(QPalette.ColorRole.Window, _mix(window, _TINTS[level], 0.18))
        self.setPalette(palette)
        self.show()

    def clear(self) -> None:
        self.text.clear()
        self.details.clear()
        self._set_actions(())
        self.hide()

    def copy_details(self) -> None:
        """Put the message and its details on the clipboard, as a bug report wants them (keys redacted)."""
        QGuiApplication.clipboard().setText(bug_report_text(self.text.text(), self.details.toPlainText()))
        self.copy_button.setText("Details Copied")

    def _set_actions(self, actions: Sequence[tuple[str, Callable[[], object]]]) -> None:
        for button in self.action_buttons:
            self._row.removeWidget(button)
            button.deleteLater()
        self.action_buttons = []
        for i, (label, callback) in enumerate(actions):
            button = QPushButton(label)
            button.clicked.connect(lambda _checked=False, callback=callback: callback())
            self._row.insertWidget(1 + i, button, 0, Qt.AlignmentFlag.AlignTop)
            button.show()  # a child added to a shown banner is not shown by itself
            self.action_buttons.append(button)
        if self.action_buttons:
            self.action_buttons[0].setDefault(True)


def bug_report_text(message: str, details: str) -> str:
    """What "Copy Details for a Bug Report" copies: the version, the message, the details and where the log is."""
    from slowtune import __version__
    from slowtune.logs import LOG_FILE_NAME, redact

    text = f"slowtune {__version__}\n\n{message}\n\n{details}\n\nLog file: {paths.log_dir() / LOG_FILE_NAME}\n"
    return redact(text)


# --- what a user should never read ------------------------------------------------------------------------------

_DEVELOPER_TEXT = re.compile(
    r"Traceback|File \"|\{\s*\"[^\"\n]*\"\s*:.*\}|(?<![\w-])--[A-Za-z][\w-]*", re.DOTALL)


def let_shrink(*labels: QLabel) -> None:
    """Word-wrapped labels that show text slowtune does not control (a model's answer, a path): their width never
    widens the window. A QLabel wraps only at spaces, so one long unbroken run of characters in a model's answer
    would otherwise set the whole window's minimum width; the run is cut at the label's edge instead."""
    for label in labels:
        label.setSizePolicy(QSizePolicy.Policy.Ignored, label.sizePolicy().verticalPolicy())


def developer_text(text: str) -> bool:
    """Whether ``text`` holds something meant for a developer: a traceback (``Traceback``, ``File "``), a JSON
    dump (a ``{"key": ...}`` block) or a command-line flag (``--something``)."""
    return _DEVELOPER_TEXT.search(text) is not None


def plain_text(text: str) -> str:
    """A label's text as a user reads it (rich text rendered to plain text)."""
    if QtGui.Qt.mightBeRichText(text):  # QtGui's Qt namespace holds it, not QtCore's
        document = QTextDocument()
        document.setHtml(text)
        return document.toPlainText()
    return text


def _model_texts(model: Any, parent: Any) -> list[str]:
    texts: list[str] = []
    try:
        columns = model.columnCount(parent)
    except TypeError:  # a list model: one column (its columnCount is private)
        columns = 1
    for row in range(model.rowCount(parent)):
        for column in range(columns):
            index = model.index(row, column, parent)
            value = index.data()
            if isinstance(value, str):
                texts.append(value)
            try:
                nested = column == 0 and model.hasChildren(index)
            except TypeError:  # private in a list or table model: they have no nested rows
                nested = False
            if nested:
                texts += _model_texts(model, index)
    return texts


def visible_texts(widget: QWidget) -> list[str]:
    """The text of every visible widget in ``widget`` (itself included): labels (as plain text), buttons, group
    titles, line and text edits, combo boxes, tab titles, and the cells of tables, lists and trees (every row of
    their model, scrolled into view or not). Tooltips are not included. Empty texts are left out."""
    texts: list[str] = []
    for child in [widget, *widget.findChildren(QWidget)]:
        if not child.isVisible():
            continue
        if isinstance(child, QLabel):
            text = plain_text(child.text())
        elif isinstance(child, QAbstractButton | QLineEdit):
            text = child.text()
        elif isinstance(child, QGroupBox):
            text = child.title()
        elif isinstance(child, QPlainTextEdit | QTextEdit):
            text = child.toPlainText()
        elif isinstance(child, QComboBox):
            text = child.currentText()
        elif isinstance(child, QTabBar):
            texts += [child.tabText(i) for i in range(child.count()) if child.tabText(i).strip()]
            continue
        elif isinstance(child, QAbstractItemView) and child.model() is not None:
            texts += [t for t in _model_texts(child.model(), child.rootIndex()) if t.strip()]
            continue
        else:
            continue
        if text.strip():
            texts.append(text)
    return texts


def format_count(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


class JobStatusWidget(QWidget):
    """The running job in the status bar: what it is doing, how far it is, and a Cancel button."""

    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job: Job | None = None
        self.label = QLabel()
        self.bar = QProgressBar()
        self.bar.setFixedWidth(180)
        self.bar.setTextVisible(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running job; what it finished so far is kept")
        self.cancel_button.clicked.connect(self.cancel)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 4, 0)
        layout.addWidget(self.label)
        layout.addWidget(self.bar)
        layout.addWidget(self.cancel_button)
        self.hide()

    def track(self, job: Job) -> None:
        """Show ``job`` until it is done (called by the window when the runner starts a job)."""
        self.job = job
        self.label.setText(f"{job.title}…")
        self.bar.setRange(0, 0)  # busy until the first report says how much there is
        self.cancel_button.setEnabled(True)
        self.cancel_button.setText("Cancel")
        job.progress.connect(partial(self._on_progress, job))
        job.done.connect(partial(self._on_done, job))
        self.show()

    def cancel(self) -> None:
        if self.job is not None and not self.job.is_over:
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self.cancel_button.setText("Stopping…")
            emit(self.cancel_requested)

    def _on_progress(self, job: Job, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if job is not self.job:
            return
        text = f"{job.title}: {job.stage_label(stage)}"
        if isinstance(total, int | float) and total > 0:
            text += f" {format_count(done)}/{format_count(total)}"
            # QProgressBar holds ints: scale to per-mille so fractional totals (GB, epochs) still move smoothly.
            self.bar.setRange(0, 1000)
            self.bar.setValue(round(1000 * min(1.0, done / total)))
        else:
            self.bar.setRange(0, 0)
        if status:
            text += f" — {status}"
        self.label.setText(text)

    def _on_done(self, job: Job) -> None:
        if job is self.job:
            self.job = None
            self.hide()


class DropOverlay(QWidget):
    """A translucent panel over the window while files are dragged over it: says where they will go."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.message = "Drop to add"
        parent.installEventFilter(self)
        self.hide()

    def show_message(self, message: str) -> None:
        self.message = message
        self.setGeometry(self.parentWidget().rect())
        self.raise_()
        self.show()
        self.update()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is self.parentWidget() and event.type() == QEvent.Type.Resize:
            self.setGeometry(self.parentWidget().rect())
        return False

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        highlight = self.palette().color(QPalette.ColorRole.Highlight)
        fill = QColor(highlight)
        fill.setAlphaF(0.12)
        painter.setBrush(fill)
        pen = QPen(highlight, 3, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(self.rect().adjusted(12, 12, -12, -12), 14, 14)
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        painter.setFont(font)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.message)


def ask_yes(parent: QWidget, title: str, text: str, yes: str) -> bool:
    """A yes/cancel question. Pages call it through a module-level name, so tests can answer it without a dialog."""
    box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.Cancel, parent)
    yes_button = box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
    box.setDefaultButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    return box.clickedButton() is yes_button


class RowsTableModel(QAbstractTableModel):
    """A table over a list of row objects; subclasses name ``COLUMNS`` and say what each cell shows (``data``)."""

    COLUMNS: tuple[str, ...] = ()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.rows: list[Any] = []

    def set_rows(self, rows: list[Any]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.COLUMNS[section]
        return None
