"""Small widgets shared by the window and its pages: a message banner, the job status, the drop overlay."""

from __future__ import annotations

from functools import partial
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QEvent,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QPainter, QPalette, QPen
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from slowtune.gui.qtcompat import emit
from slowtune.gui.workers import Job

# Banner tints, mixed into the window colour so they read in light and dark mode alike.
_TINTS = {"info": QColor("#3b82f6"), "warning": QColor("#f59e0b"), "error": QColor("#ef4444")}


def _mix(base: QColor, tint: QColor, amount: float) -> QColor:
    return QColor.fromRgbF(
        base.redF() * (1 - amount) + tint.redF() * amount,
        base.greenF() * (1 - amount) + tint.greenF() * amount,
        base.blueF() * (1 - amount) + tint.blueF() * amount,
    )


class MessageBanner(QFrame):
    """A readable message in the page it belongs to, with the details (a traceback, a file list) one click away.

    Errors from the core land here instead of in a traceback dialog.
    """

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
        self.details_button = QPushButton("Show Details")
        self.details_button.setCheckable(True)
        self.details_button.toggled.connect(self._toggle_details)
        self.close_button = QPushButton("Dismiss")
        self.close_button.clicked.connect(self.clear)
        self.details = QPlainTextEdit()
        self.details.setReadOnly(True)
        self.details.setMaximumHeight(160)
        self.details.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.details.hide()
        row = QHBoxLayout()
        row.addWidget(self.text, 1)
        row.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignTop)
        row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 8, 8, 8)
        layout.addLayout(row)
        layout.addWidget(self.details)
        self.hide()

    def show_message(self, message: str, *, level: str = "info", details: str = "") -> None:
        self.level = level
        self.text.setText(message)
        self.details.setPlainText(details)
        self.details_button.setVisible(bool(details))
        self.details_button.setChecked(False)
        palette = self.palette()
        window = self.window().palette().color(QPalette.ColorRole.Window) if self.window() else QColor("white")
        palette.setColor(QPalette.ColorRole.Window, _mix(window, _TINTS[level], 0.18))
        self.setPalette(palette)
        self.show()

    def clear(self) -> None:
        self.text.clear()
        self.details.clear()
        self.hide()

    def _toggle_details(self, shown: bool) -> None:
        self.details.setVisible(shown)
        self.details_button.setText("Hide Details" if shown else "Show Details")


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
