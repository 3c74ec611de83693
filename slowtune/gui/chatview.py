"""The widgets the Chat page is drawn with: the transcript (messages rendered as Markdown, one or two answer columns
per turn), the message box, and the table of evaluation scores.

Nothing here runs models or touches the project: the page (``slowtune.gui.chat``) feeds these widgets text.
"""

from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QKeyEvent, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QScrollArea,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import let_shrink


class MessageView(QFrame):
    """One message: who wrote it, the text (Markdown for answers, as typed for the user's), and a line of figures."""

    def __init__(self, role: str, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.setObjectName(f"message-{role}")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setAutoFillBackground(True)
        palette = self.palette()
        # The user's messages sit on the alternate base colour, answers on the plain one: readable in dark mode too.
        role_colour = QPalette.ColorRole.AlternateBase if role == "user" else QPalette.ColorRole.Base
        palette.setColor(QPalette.ColorRole.Window, palette.color(role_colour))
        self.setPalette(palette)
        self.text = ""
        self.header = QLabel(title)
        font = self.header.font()
        font.setWeight(QFont.Weight.DemiBold)
        self.header.setFont(font)
        self.header.setVisible(bool(title))
        self.body = QLabel()
        self.body.setWordWrap(True)
        self.body.setTextFormat(Qt.TextFormat.MarkdownText if role == "assistant" else Qt.TextFormat.PlainText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse
                                          | Qt.TextInteractionFlag.TextSelectableByKeyboard)
        self.body.setOpenExternalLinks(False)  # the chat is offline; a model's link is text, not a destination
        self.body.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.body.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.footer = QLabel()
        self.footer.setStyleSheet("color: gray;")
        self.footer.setWordWrap(True)
        let_shrink(self.body, self.footer)  # a long unbroken run in an answer must not widen the window
        self.footer.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 6, 10, 6)
        layout.setSpacing(3)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        layout.addWidget(self.footer)
        self.renders = 0  # how often the text was laid out: streaming is throttled, this shows it

    def set_text(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        self.body.setText(text)
        self.renders += 1

    def set_footer(self, text: str) -> None:
        self.footer.setText(text)
        self.footer.setVisible(bool(text))


class TurnView(QWidget):
    """A message from the user and the answer of each model beside it (one column, or two when comparing)."""

    def __init__(self, user_text: str, model_names: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.user = MessageView("user", "You")
        self.user.set_text(user_text)
        titles = model_names if len(model_names) > 1 else [model_names[0] if model_names else ""]
        self.answers = [MessageView("assistant", name) for name in titles]
        row = QHBoxLayout()
        row.setSpacing(8)
        for view in self.answers:
            row.addWidget(view, 1, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.user)
        layout.addLayout(row)


class TranscriptView(QScrollArea):
    """The conversation, newest at the bottom. While the view is scrolled to the end it follows new text; once the
    user scrolls up to read, it stays where they are."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        inner = QWidget()
        self.column = QVBoxLayout(inner)
        self.column.setContentsMargins(4, 4, 12, 4)
        self.column.setSpacing(14)
        self.placeholder = QLabel()
        self.placeholder.setWordWrap(True)
        self.placeholder.setTextFormat(Qt.TextFormat.RichText)
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.placeholder.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.placeholder.setMaximumWidth(720)
        self.column.addWidget(self.placeholder)
        self.column.addStretch(1)
        self.setWidget(inner)
        self.turns: list[TurnView] = []
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(self._scrolled)
        bar.rangeChanged.connect(self._range_changed)

    def set_placeholder(self, html_text: str) -> None:
        """What an empty conversation shows: what to do next."""
        self.placeholder.setText(html_text)
        self.placeholder.setVisible(not self.turns and bool(html_text))

    def add_turn(self, user_text: str, model_names: list[str]) -> TurnView:
        turn = TurnView(user_text, model_names)
        self.column.insertWidget(self.column.count() - 1, turn)  # before the stretch
        self.turns.append(turn)
        self.placeholder.hide()
        self._follow = True
        return turn

    def remove_turn(self, turn: TurnView) -> None:
        if turn in self.turns:
            self.turns.remove(turn)
        self.column.removeWidget(turn)
        turn.hide()  # at once: deleteLater waits for the event loop, and until then it would still be drawn
        turn.deleteLater()
        self.placeholder.setVisible(not self.turns and bool(self.placeholder.text()))

    def clear(self) -> None:
        for turn in list(self.turns):
            self.remove_turn(turn)

    def _scrolled(self, value: int) -> None:
        self._follow = value >= self.verticalScrollBar().maximum() - 8

    def _range_changed(self, _low: int, high: int) -> None:
        if self._follow:
            self.verticalScrollBar().setValue(high)


class MessageInput(QPlainTextEdit):
    """The message box: Return sends, Shift+Return starts a new line."""

    submitted = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("Message — Return sends, Shift+Return adds a line")
        self.setTabChangesFocus(True)
        self.setMaximumHeight(96)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            emit(self.submitted)
            return
        super().keyPressEvent(event)


# --- evaluation scores ---------------------------------------------------------------------------------------

VARIANT_ORDER = ("tuned", "base", "tuned_open_book", "base_open_book")
VARIANT_LABELS = {"tuned": "Tuned", "base": "Base", "tuned_open_book": "Tuned, open book",
                  "base_open_book": "Base, open book"}


def _number(value: Any, digits: int = 2) -> str:
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return f"{value:.{digits}f}"
    return "–"


def _signed(value: Any, digits: int = 2) -> str:
    return f"{value:+.{digits}f}" if isinstance(value, int | float) else "–"


def _count(done: Any, total: Any) -> str:
    return f"{done}/{total}" if isinstance(total, int) and total else "–"


def score_rows(report: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str], str]]]:
    """The score table of a saved report (its JSON): the column titles, then per metric (name, a cell per variant,
    what it means). The last column is tuned minus base, when the report has a base."""
    summaries = report.get("summaries") or {}
    variants = [v for v in VARIANT_ORDER if v in summaries]
    deltas = ((report.get("comparison") or {}).get("deltas")) or {}
    has_base = "tuned" in summaries and "base" in summaries
    columns = [VARIANT_LABELS[v] for v in variants] + (["Tuned − base"] if has_base else [])
    judged = any((summaries[v].get("judged") or 0) > 0 for v in variants)

    def row(name: str, cell: Any, delta_key: str | None, meaning: str) -> tuple[str, list[str], str]:
        cells = [cell(summaries[v]) for v in variants]
        if has_base:
            digits = 1 if delta_key == "judge_mean" else 2
            cells.append(_signed(deltas.get(delta_key), digits) if delta_key else "")
        return name, cells, meaning

    rows = [
        row("Model", lambda s: str(s.get("model") or ""), None, "the GGUF file that answered"),
        row("Exactly right", lambda s: _number(s.get("exact")), "exact",
            "answers equal to the reference answer, ignoring case, punctuation and \"a\", \"the\" (questions the documents "
            "answer; higher is better)"),
        row("Word overlap", lambda s: _number(s.get("f1")), "f1",
            "how many words the answer shares with the reference answer (questions the documents answer; higher "
            "is better)"),
        row("Key-fact recall", lambda s: _number(s.get("key_fact_recall")), "key_fact_recall",
            "numbers, names and rare words of the reference found in the answer (higher is better)"),
        row("Refusals correct", lambda s: _count(s.get("refusals_correct"), s.get("refusal_probes")),
            "refusal_accuracy", "questions the documents do not answer that the model declined (higher is better)"),
        row("False refusals", lambda s: _count(s.get("false_refusals"), s.get("answerable")),
            "false_refusal_rate", "questions the documents answer that the model wrongly declined (lower is better)"),
    ]
    if judged:
        rows.append(row("Judge (1–5)", lambda s: _number(s.get("judge_mean"), 1), "judge_mean",
                        "the LLM judge's mean grade"))
    return columns, rows


class ScoreTable(QTableWidget):
    """Before/after scores of an evaluation report, one column per model."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setWordWrap(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.horizontalHeader().setStretchLastSection(False)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        # As wide as its columns, not the page: a frame stretched past the last column looks like a missing one.
        self.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Preferred)

    def show_report(self, report: dict[str, Any] | None) -> None:
        self.clear()
        if not report:
            self.setRowCount(0)
            self.setColumnCount(0)
            return
        columns, rows = score_rows(report)
        self.setColumnCount(len(columns))
        self.setRowCount(len(rows))
        self.setHorizontalHeaderLabels(columns)
        self.setVerticalHeaderLabels([name for name, _, _ in rows])
        for r, (name, cells, meaning) in enumerate(rows):
            self.verticalHeaderItem(r).setToolTip(meaning)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter if name != "Model"
                                      else Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
                item.setToolTip(meaning)
                self.setItem(r, c, item)
        height = self.horizontalHeader().height() + sum(self.rowHeight(r) for r in range(len(rows))) + 4
        self.setMaximumHeight(max(height, 60))

    def cell_text(self, metric: str, column: str) -> str:
        """The text shown for ``metric`` (a row title) under ``column`` (a column title); '' when absent."""
        rows = [self.verticalHeaderItem(r).text() for r in range(self.rowCount())]
        cols = [self.horizontalHeaderItem(c).text() for c in range(self.columnCount())]
        if metric not in rows or column not in cols:
            return ""
        item = self.item(rows.index(metric), cols.index(column))
        return item.text() if item is not None else ""
