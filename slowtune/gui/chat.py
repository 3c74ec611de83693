"""The Chat page: talk to a GGUF model offline, alone or beside another one, and score the tuned model against its
base on the project's held-out probes.

- The model picker lists the project's exported GGUFs (newest run first, by run and quantisation), the base GGUF
  written beside each export (both from :func:`slowtune.export.folder.list_models`), and any GGUF file the user
  opens. Loading a model is a ``Job``; the loaded models stay loaded between messages and are unloaded when the
  project changes.
- An answer is a ``Job`` too (:func:`slowtune.chat.conversation.answer_turn`). The tokens come from
  :mod:`slowtune.chat.model` in the job's thread; the growing text reaches the GUI as the job's progress reports
  (throttled to about 20 a second per model, coalesced when the GUI is busy) and is rendered as Markdown. Stop
  asks the models to stop at their next token; the partial answer is kept, marked as stopped. Chat jobs use their
  own key (``chat:<project>``), so a chat is never refused because training or generation is running in the same
  project.
- The chat on screen is a :class:`slowtune.chat.conversation.Conversation` (the page keeps a view per turn). Every
  answered turn is saved through :mod:`slowtune.chat.sessions` on the window's connection (a few small
  transactions, in the GUI thread); saved chats are listed and can be reopened and continued.
- The Evaluation tab runs :func:`slowtune.eval.pipeline.run` in a ``Job`` (its own connection and its own
  model instances), which saves the report under the project's ``evals/`` folder; the page shows the scores side
  by side: first the three closed-book axes (knowledge, retention, leakage: :class:`slowtune.eval.axes.EvalAxes`)
  for the tuned model and the base, in words, with warnings and a few examples, then the probe scores.
"""

from __future__ import annotations

import html
import re
import shlex
import sqlite3
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QAbstractScrollArea,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from slowtune.chat import sessions
from slowtune.chat.conversation import AnswerResult, Conversation, Turn, answer_turn, model_key
from slowtune.chat.model import ChatError, ChatModel, Sampling
from slowtune.eval.axes import DEFAULT_MAX_GENERAL, EvalAxes
from slowtune.eval.report import axes_of, headline_tone, latest_report
from slowtune.export.folder import ModelChoice, list_models
from slowtune.fsutil import atomic_write_text
from slowtune.gui.chatview import MessageInput, ScoreTable, TranscriptView, TurnView
from slowtune.gui.page import Page
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.widgets import let_shrink
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import Progress, format_duration
from slowtune.settings import Settings

if TYPE_CHECKING:
    from slowtune.eval.pipeline import EvalResult

CHAT_CTX = 4096  # tokens of context for chat models (the CLI's default); long chats drop their oldest turns
EVAL_CTX = 4096
STREAM_INTERVAL_S = 0.05  # the growing answer is re-rendered at most ~20 times a second per model
OPEN_FILE = "open-file"  # the "Open GGUF file…" item of the pickers

ANSWER_STAGES = {"answer-0": "writing", "answer-1": "writing"}
EVAL_STAGES = {"Loading models": "loading the models", "Answering probes": "answering the questions about the documents",
               "Answering general questions": "answering general questions",
               "Answering unknown-entity questions": "answering questions about things the documents do not mention"}
AXIS_ROWS = (("knowledge", "Knowledge", "key facts recalled in the answers to the questions about the documents' "
                                        "facts (higher is better)"),
             ("retention", "Retention", "general questions the base answered right that the tuned model still "
                                        "answers right (higher is better)"),
             ("leakage", "Leakage", "questions about things the documents do not mention answered with the "
                                    "documents' names or numbers (lower is better)"))
WARNING_COLOR = "#d9480f"
SUCCESS_COLOR = "#2b8a3e"  # the headline of a tuned model that beats its base and damaged nothing
EVAL_EXAMPLES = 2  # examples shown beside the axes (the report has them all)

NO_PROJECT_TEXT = ("<h3>Chat</h3><p>Chat with a model offline: nothing you type leaves this Mac.</p>"
                   "<p>Open a project (File › Open Project) to chat with the models exported from it, or choose "
                   "<b>Open GGUF file…</b> in the Model list above to chat with any GGUF file.</p>")
NO_EXPORTS_TEXT = ("<h3>Chat</h3><p>This project has no exported model yet. Train it on the <b>Train</b> page and "
                   "export it on the <b>Export</b> page; the exported files then appear in the Model list above.</p><p>You can also choose <b>Open GGUF "
                   "file…</b> in the Model list to chat with any GGUF file.</p>")
CHOOSE_TEXT = ("<h3>Chat</h3><p>Choose a model in the list above: a tuned export of this project, its base model, or "
               "any GGUF file. Add a model under <b>Compare with</b> to see two answers side by side.</p>")
EVAL_NO_PROJECT = "<p>Open a project to evaluate its models on questions kept out of training.</p>"
EVAL_NO_PROBES = ("<p>This project has no questions kept out of training yet. They are made with the dataset: "
                  "generate it on the "
                  "<b>Dataset</b> page, and the teacher keeps some rephrased questions out of training for this "
                  "test.</p>")
EVAL_NO_MODELS = ("<p>There is no model to evaluate yet: train and export one first (the <b>Train</b> and "
                  "<b>Export</b> pages), or choose <b>Open GGUF file…</b> in the Tuned model list.</p>")
EVAL_ABOUT = ("<h3>Evaluation</h3>Each question about the documents that was kept out of training is answered by the "
              "tuned model and by the base, and compared with the teacher's reference answer. Both also answer general questions "
              "(has the tuned model kept what it knew?) and questions about things the documents do not mention "
              "(does it invent answers from them?). Nothing is sent anywhere.")


def probes_text(facts: int, refused: int) -> str:
    """'4 questions about the documents (3 about facts, 1 that should be refused)'."""
    whole = facts + refused
    text = f"{whole:,} question{'' if whole == 1 else 's'} about the documents"
    if facts and refused:
        text += f" ({facts:,} about facts, {refused:,} that should be refused)"
    return text


# --- what can be chatted with ----------------------------------------------------------------------------------

def choose_gguf_file(parent: QWidget) -> str | None:
    """Ask for a GGUF file (a dialog); its path, or None. Module-level so tests can answer it."""
    path, _ = QFileDialog.getOpenFileName(parent, "Open a GGUF Model", str(Path.home()),
                                          "GGUF models (*.gguf);;All files (*)")
    return path or None


def choose_export_path(parent: QWidget, suggested: str) -> str | None:
    """Ask where to save a chat (a dialog); the path, or None. Module-level so tests can answer it."""
    path, _ = QFileDialog.getSaveFileName(parent, "Export Chat", str(Path.home() / suggested),
                                          "Markdown (*.md);;JSON Lines (*.jsonl)")
    return path or None


def _safe_file_name(title: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in " -_" else " " for c in title)
    return " ".join(cleaned.split())[:60] or "chat"


# --- the work done in jobs ---------------------------------------------------------------------------------------

def load_function(choices: list[ModelChoice], n_ctx: int) -> Callable[[Progress], list[ChatModel]]:
    """Load each chosen GGUF (llama.cpp cannot be interrupted while it reads a file: a cancel lands between files
    and closes what was loaded)."""
    def run(progress: Progress) -> list[ChatModel]:
        models: list[ChatModel] = []
        try:
            for i, choice in enumerate(choices):
                progress.check()
                progress.report("Loading", i, len(choices), status=choice.name, force=True)
                models.append(ChatModel(Path(choice.path), n_ctx=n_ctx,
                                        lora_path=Path(choice.lora) if choice.lora else None))
            progress.check()
        except BaseException:
            for model in models:
                model.close()
            raise
        return models
    return run


def eval_function(root: Path, tuned: ModelChoice, base: ModelChoice | None, *, max_probes: int | None,
                  max_tokens: int, open_book: bool, n_ctx: int = EVAL_CTX,
                  max_general: int | None = DEFAULT_MAX_GENERAL) -> Callable[[Progress], EvalResult]:
    """``slowtune eval`` in a job (:func:`slowtune.eval.pipeline.run`): its own connection and its own model
    instances (llama.cpp maps the weights, so a model that is also loaded for chatting is not read into memory
    twice)."""
    from slowtune.eval.pipeline import EvalOptions, ModelFile, run

    def model_file(choice: ModelChoice) -> ModelFile:
        return ModelFile(Path(choice.path), Path(choice.lora) if choice.lora else None)

    options = EvalOptions(root, model_file(tuned), model_file(base) if base is not None else None,
                          open_book=open_book, max_probes=max_probes, max_tokens=max_tokens, n_ctx=n_ctx,
                          max_general=max_general)
    return partial(run, options)


class AxesTable(QTableWidget):
    """The three axes of an evaluation: a row each, a column for the tuned model and one for the base."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setWordWrap(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        self.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Maximum)

    def show_axes(self, axes: EvalAxes | None) -> None:
        self.clear()
        if axes is None:
            self.setRowCount(0)
            self.setColumnCount(0)
            return
        models = [m for m in ("tuned", "base") if axes.scores(m) is not None]
        self.setColumnCount(len(models))
        self.setRowCount(len(AXIS_ROWS))
        self.setHorizontalHeaderLabels([m.capitalize() for m in models])
        self.setVerticalHeaderLabels([title for _, title, _ in AXIS_ROWS])
        for r, (axis, _, meaning) in enumerate(AXIS_ROWS):
            self.verticalHeaderItem(r).setToolTip(meaning)
            for c, model in enumerate(models):
                item = QTableWidgetItem(axes.cell(axis, model))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setToolTip(meaning)
                self.setItem(r, c, item)
        self.setMaximumHeight(self.horizontalHeader().height() + sum(self.rowHeight(r) for r in range(3)) + 4)

    def cell_text(self, axis: str, column: str) -> str:
        """The text shown for ``axis`` (a row title: Knowledge, ...) under ``column`` (Tuned, Base); '' when absent."""
        rows = [self.verticalHeaderItem(r).text() for r in range(self.rowCount())]
        cols = [self.horizontalHeaderItem(c).text() for c in range(self.columnCount())]
        if axis not in rows or column not in cols:
            return ""
        item = self.item(rows.index(axis), cols.index(column))
        return item.text() if item is not None else ""


def _set_combo_items(combo: QComboBox, items: list[tuple[str, Any, str]], selected: Any) -> None:
    """Refill ``combo`` with (text, data, tooltip) items ("-" is a separator) and select the item whose data
    equals ``selected`` (ModelChoice entries compare by key)."""
    combo.blockSignals(True)
    combo.clear()
    found = -1
    for text, data, tip in items:
        if text == "-":
            combo.insertSeparator(combo.count())
            continue
        combo.addItem(text, data)
        if tip:
            combo.setItemData(combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        if isinstance(selected, ModelChoice):
            same = isinstance(data, ModelChoice) and data.key == selected.key
        else:
            same = data is None
        if same and found < 0:
            found = combo.count() - 1
    combo.setCurrentIndex(max(found, 0))
    combo.blockSignals(False)


# --- the page ------------------------------------------------------------------------------------------------

class ChatPage(Page):
    """Chat with exported models (streamed, Markdown, stop, regenerate, side by side) and evaluate them."""

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__("chat", runner, settings, parent)
        self._epoch = 0  # grows when the project changes: results of older jobs are dropped
        self._choices: list[ModelChoice] = []  # the project's exports and bases
        self._files: list[ModelChoice] = []  # GGUF files the user opened (kept across projects)
        self._selected: list[ModelChoice | None] = [None, None]  # the model, and the one compared with it
        self._loaded: list[tuple[ModelChoice, ChatModel]] = []
        self._retired: list[ChatModel] = []  # models to close once the answer using them has ended
        self._eval_selected: list[ModelChoice | None] = [None, None]  # tuned, base
        self._eval_touched = False
        self._eval_clock: tuple[float, float] | None = None
        self.load_job: Job | None = None
        self.answer_job: Job | None = None
        self.eval_job: Job | None = None
        self.chat = Conversation()
        self.views: dict[Turn, TurnView] = {}  # how each turn of the chat is shown
        self.partial_updates = 0  # streamed renders of the current answer (tests and curious users)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._build_chat_tab(), "Chat")
        self.tabs.addTab(self._build_eval_tab(), "Evaluation")
        layout = self.page_layout()
        layout.addWidget(self.banner)
        layout.addWidget(self.tabs, 1)
        self.refresh()

    # --- building ----------------------------------------------------------------------------------------------
    def _build_chat_tab(self) -> QWidget:
        self.model_combo = QComboBox()
        self.model_combo.setMinimumContentsLength(28)
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_combo.activated.connect(partial(self._picked, 0))
        self.compare_combo = QComboBox()
        self.compare_combo.setMinimumContentsLength(22)
        self.compare_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.compare_combo.activated.connect(partial(self._picked, 1))
        self.new_chat_button = QPushButton("New Chat")
        self.new_chat_button.setToolTip("Start a new conversation with the same models (this one stays saved)")
        self.new_chat_button.clicked.connect(self.new_chat)
        pickers = QHBoxLayout()
        pickers.addWidget(QLabel("Model"))
        pickers.addWidget(self.model_combo, 2)
        pickers.addSpacing(8)
        pickers.addWidget(QLabel("Compare with"))
        pickers.addWidget(self.compare_combo, 1)
        pickers.addWidget(self.new_chat_button)
        self.model_status = QLabel()
        self.model_status.setStyleSheet("color: gray;")
        self.model_status.setWordWrap(True)

        self.sessions_list = QListWidget()
        self.sessions_list.setMinimumWidth(160)
        # Long titles end in "…" (the tooltip has all of it) rather than scrolling the list sideways.
        self.sessions_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.sessions_list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.sessions_list.setSpacing(2)
        self.sessions_list.itemActivated.connect(self._session_item_chosen)
        self.sessions_list.itemClicked.connect(self._session_item_chosen)
        self.delete_session_button = QPushButton("Delete…")
        self.delete_session_button.clicked.connect(self.delete_selected_session)
        self.export_session_button = QPushButton("Export…")
        self.export_session_button.setToolTip("Save the selected chat as Markdown (to read or share) or JSONL")
        self.export_session_button.clicked.connect(lambda: self.export_selected_session())
        side = QWidget()
        side_layout = QVBoxLayout(side)
        side_layout.setContentsMargins(0, 0, 0, 0)
        side_layout.addWidget(QLabel("Saved chats"))
        side_layout.addWidget(self.sessions_list, 1)
        session_buttons = QHBoxLayout()
        session_buttons.addWidget(self.export_session_button)
        session_buttons.addWidget(self.delete_session_button)
        side_layout.addLayout(session_buttons)

        self.transcript = TranscriptView()
        self.input = MessageInput()
        self.input.submitted.connect(self.send)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(lambda: self.send())
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the answer here; what was written so far is kept (Esc)")
        self.stop_button.clicked.connect(self.stop)
        stop_key = QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        stop_key.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Answer the last message again, replacing the last answer")
        self.regenerate_button.clicked.connect(lambda: self.regenerate())
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.regenerate_button)
        buttons.addStretch(1)
        entry = QHBoxLayout()
        entry.addWidget(self.input, 1)
        entry.addLayout(buttons)
        self.saved_label = QLabel()
        self.saved_label.setStyleSheet("color: gray;")
        middle = QWidget()
        middle_layout = QVBoxLayout(middle)
        middle_layout.setContentsMargins(0, 0, 0, 0)
        middle_layout.addWidget(self.transcript, 1)
        middle_layout.addLayout(entry)
        middle_layout.addWidget(self.saved_label)

        defaults = Sampling()
        self.system_edit = QPlainTextEdit()
        self.system_edit.setPlaceholderText("Optional: how the model should answer")
        self.system_edit.setMaximumHeight(90)
        self.system_edit.textChanged.connect(self._update_system_note)
        self.system_note = QLabel("Used from the next new chat.")
        self.system_note.setStyleSheet("color: gray;")
        self.system_note.setWordWrap(True)
        self.system_note.hide()
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setValue(defaults.temperature)
        self.temperature.setToolTip("0 always picks the most likely word: the same answer every time")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(defaults.top_p)
        self.top_p.setToolTip("Sample only from the most likely words that add up to this share")
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 8192)
        self.max_tokens.setValue(defaults.max_tokens)
        self.max_tokens.setToolTip("The longest answer, in tokens")
        self.seed = QSpinBox()
        self.seed.setRange(-1, 2**31 - 1)
        self.seed.setSpecialValueText("Random")
        self.seed.setValue(-1)
        self.seed.setToolTip("A fixed seed makes sampled answers repeatable")
        settings_box = QGroupBox("Settings")
        box_layout = QVBoxLayout(settings_box)
        box_layout.addWidget(QLabel("System prompt"))
        box_layout.addWidget(self.system_edit)
        box_layout.addWidget(self.system_note)
        form = QFormLayout()
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)
        box_layout.addLayout(form)
        box_layout.addStretch(1)

        self.chat_splitter = QSplitter(Qt.Orientation.Horizontal)
        self.chat_splitter.addWidget(side)
        self.chat_splitter.addWidget(middle)
        self.chat_splitter.addWidget(settings_box)
        self.chat_splitter.setStretchFactor(0, 0)
        self.chat_splitter.setStretchFactor(1, 1)
        self.chat_splitter.setStretchFactor(2, 0)
        self.chat_splitter.setSizes([190, 640, 240])

        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addLayout(pickers)
        layout.addWidget(self.model_status)
        layout.addWidget(self.chat_splitter, 1)
        return tab

    def _build_eval_tab(self) -> QWidget:
        self.eval_about = QLabel()
        self.eval_about.setWordWrap(True)
        self.eval_about.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.eval_empty = QLabel()
        self.eval_empty.setWordWrap(True)
        self.eval_model_combo = QComboBox()
        self.eval_model_combo.activated.connect(partial(self._eval_picked, 0))
        self.eval_base_combo = QComboBox()
        self.eval_base_combo.activated.connect(partial(self._eval_picked, 1))
        self.eval_probes = QSpinBox()
        self.eval_probes.setRange(0, 100_000)
        self.eval_probes.setSpecialValueText("All")
        self.eval_probes.setToolTip("Ask at most this many of the questions about the documents kept out of "
                                    "training, spread over the documents")
        self.eval_tokens = QSpinBox()
        self.eval_tokens.setRange(8, 4096)
        self.eval_tokens.setValue(200)
        self.eval_tokens.setToolTip("The longest answer per probe, in tokens")
        self.eval_general = QSpinBox()
        self.eval_general.setRange(0, 100_000)
        self.eval_general.setSpecialValueText("All")
        self.eval_general.setValue(DEFAULT_MAX_GENERAL)
        self.eval_general.setToolTip("Ask at most this many general questions (retention), spread over their "
                                     "categories, and at most as many about made-up things (leakage)")
        self.eval_open_book = QCheckBox("Also with the source excerpt (open book)")
        self.eval_open_book.setToolTip("Answers each question about the documents again with its source passage in the prompt, to see "
                                       "whether looking passages up would serve better than tuning")
        self.eval_button = QPushButton("Run Evaluation")
        self.eval_button.clicked.connect(lambda: self.run_evaluation())
        self.eval_cancel_button = QPushButton("Cancel")
        self.eval_cancel_button.clicked.connect(self.cancel_evaluation)
        self.eval_cancel_button.hide()
        form = QFormLayout()
        form.addRow("Tuned model", self.eval_model_combo)
        form.addRow("Compared with", self.eval_base_combo)
        options = QHBoxLayout()
        options.addWidget(QLabel("Document questions"))  # short: the row sets the page's minimum width
        options.addWidget(self.eval_probes)
        options.addSpacing(12)
        options.addWidget(QLabel("Max tokens"))
        options.addWidget(self.eval_tokens)
        options.addSpacing(12)
        options.addWidget(QLabel("General questions"))
        options.addWidget(self.eval_general)
        options.addStretch(1)
        form.addRow(options)
        # The check box and the button on a row of their own: on one row with the counts they set the window's
        # minimum width beyond a 1280-pixel screen.
        actions = QHBoxLayout()
        actions.addWidget(self.eval_open_book)
        actions.addStretch(1)
        actions.addWidget(self.eval_button)
        actions.addWidget(self.eval_cancel_button)
        form.addRow(actions)
        self.eval_form = QWidget()
        self.eval_form.setLayout(form)
        self.eval_progress = QProgressBar()
        self.eval_progress.setTextVisible(False)
        self.eval_progress.hide()
        self.eval_status = QLabel()
        self.eval_headline = QLabel()
        self.eval_headline.setWordWrap(True)
        self.eval_headline.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.axes_table = AxesTable()
        self.axes_text = QLabel()
        self.axes_text.setWordWrap(True)
        self.axes_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.axes_text.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.axes_table.hide()
        self.axes_text.hide()
        self.scores = ScoreTable()
        tables = QVBoxLayout()  # the axes above the probe scores, and beside them the axes in words
        tables.addWidget(self.axes_table)
        tables.addWidget(self.scores)
        tables.addStretch(1)
        figures = QHBoxLayout()
        figures.setContentsMargins(0, 0, 0, 0)
        figures.addLayout(tables)
        figures.addSpacing(8)
        # The axes in words with their warnings and examples can be longer than the tables are tall: they scroll
        # (a QLabel alone was cut off mid-sentence in the new-user walk).
        self.axes_scroll = QScrollArea()
        self.axes_scroll.setWidget(self.axes_text)
        self.axes_scroll.setWidgetResizable(True)
        self.axes_scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.axes_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.axes_scroll.hide()
        figures.addWidget(self.axes_scroll, 1)
        self.eval_notes = QLabel()
        self.eval_notes.setWordWrap(True)
        self.eval_notes.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.eval_report = QTextBrowser()
        self.eval_report.setOpenExternalLinks(False)
        self.eval_report.setMinimumHeight(140)
        self.eval_saved = QLabel()
        let_shrink(self.eval_headline, self.axes_text, self.eval_notes, self.eval_saved)  # answers, paths: never wider
        self.eval_saved.setStyleSheet("color: gray;")
        self.eval_saved.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        tab = QWidget()
        layout = QVBoxLayout(tab)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(self.eval_about)
        layout.addWidget(self.eval_empty)
        layout.addWidget(self.eval_form)
        layout.addWidget(self.eval_progress)
        layout.addWidget(self.eval_status)
        layout.addWidget(self.eval_headline)
        layout.addLayout(figures)
        layout.addWidget(self.eval_notes)
        layout.addWidget(self.eval_report, 1)
        layout.addWidget(self.eval_saved)
        layout.addStretch(0)  # keeps the empty state at the top while there is no report to fill the page
        return tab

    # --- the project ---------------------------------------------------------------------------------------------
    def project_set(self, changed: bool) -> None:
        if changed:  # the same project set again keeps its chat, its models and the banner
            self._epoch += 1
            for job in self.page_jobs():
                if job is not None and not job.is_over:
                    job.cancel()
            self.unload()
            self._selected = [None, None]
            self._eval_selected = [None, None]
            self._files = [c for c in self._files if c.kind == "file"]  # entries of the old project's exports go
            self._eval_touched = False
            self._clear_conversation()
            self.banner.clear()

    def page_jobs(self) -> Iterable[Job | None]:
        return self.answer_job, self.load_job, self.eval_job

    def unload(self) -> None:
        """Close the loaded models (at once, or when the answer using them ends). The window calls it on quit."""
        self._retire([model for _, model in self._loaded])
        self._loaded = []
        self._update_status()

    def _retire(self, models: list[ChatModel]) -> None:
        for model in {id(m): m for m in models}.values():
            if self.answer_job is not None and self.answer_job.thread_alive:
                self._retired.append(model)  # its answer holds it until the next token; closed when that ends
            else:
                model.close()

    def refresh(self) -> None:
        """The pickers, the saved chats and the evaluation (also when shown: an export, a new probe set or a
        report may have appeared while the page was hidden)."""
        self._choices = list_models(self.project) if self.project is not None else []
        self._fill_pickers()
        self.refresh_sessions()
        self._refresh_eval()
        self._update_status()

    def _all_choices(self) -> list[ModelChoice]:
        keys = {c.key for c in self._choices}
        return self._choices + [c for c in self._files if c.key not in keys]

    def _picker_items(self, none_text: str | None) -> list[tuple[str, Any, str]]:
        items: list[tuple[str, Any, str]] = []
        if none_text is not None:
            items += [(none_text, None, ""), ("-", None, "")]
        choices = self._all_choices()
        for kind in ("tuned", "base", "file"):
            group = [c for c in choices if c.kind == kind]
            if group and items and items[-1][0] != "-":
                items.append(("-", None, ""))
            items += [(c.label, c, c.path + (f"\nLoRA: {c.lora}" if c.lora else "")) for c in group]
        if items and items[-1][0] != "-":
            items.append(("-", None, ""))
        items.append(("Open GGUF file…", OPEN_FILE, "Chat with any GGUF model file on this Mac"))
        return items

    def _fill_pickers(self) -> None:
        # A chosen file that is no longer listed (its export was removed) stays in the pickers while it is chosen.
        listed = {c.key for c in self._all_choices()}
        for choice in [*self._selected, *self._eval_selected]:
            if choice is not None and choice.key not in listed:
                self._files.append(choice)
                listed.add(choice.key)
        model_none = "Choose a model…" if self._selected[0] is None else None
        _set_combo_items(self.model_combo, self._picker_items(model_none), self._selected[0])
        _set_combo_items(self.compare_combo, self._picker_items("No comparison"), self._selected[1])
        if not self._eval_touched:  # until the user picks there, evaluate the tuned model being chatted with
            self._default_eval_models()
        eval_none = "Choose the tuned model…" if self._eval_selected[0] is None else None
        _set_combo_items(self.eval_model_combo, self._picker_items(eval_none), self._eval_selected[0])
        _set_combo_items(self.eval_base_combo, self._picker_items("Nothing (the tuned model alone)"),
                         self._eval_selected[1])

    # --- choosing models -----------------------------------------------------------------------------------------
    def _choice_for(self, path: str, lora: str | None = None) -> ModelChoice:
        """The picker entry for a file (an export, a base or a file opened before), or a new "file" entry."""
        path, lora = model_key(path, lora)
        for choice in self._all_choices():
            if choice.key == (path, lora):
                return choice
        if lora is None:  # a LoRA GGUF named on its own: the export entry that applies it to its base
            for choice in self._all_choices():
                if choice.lora == path:
                    return choice
        name = Path(lora).name + " on " + Path(path).name if lora else Path(path).name
        choice = ModelChoice(path, f"{name} — {Path(path).parent}", "file", lora=lora)
        self._files.append(choice)
        return choice

    def _ask_for_file(self) -> ModelChoice | None:
        path = choose_gguf_file(self)
        return self._choice_for(path) if path else None

    def _picked(self, slot: int, index: int) -> None:
        combo = self.model_combo if slot == 0 else self.compare_combo
        data = combo.itemData(index)
        if data == OPEN_FILE:
            data = self._ask_for_file()
            if data is None:  # cancelled: the pickers show what was chosen before
                self._fill_pickers()
                return
        self._selected[slot] = data if isinstance(data, ModelChoice) else None
        self._fill_pickers()
        self._sync_models()

    def open_model(self, path: str, compare: str | None = None) -> None:
        """Select a GGUF to chat with (and one to compare it with) and load them: the Export page's "Chat with it".
        A LoRA GGUF of an export is applied to its base."""
        self.tabs.setCurrentIndex(0)
        self._selected = [self._choice_for(path), self._choice_for(compare) if compare else None]
        self._fill_pickers()
        self._sync_models()

    # --- loading -------------------------------------------------------------------------------------------------
    def _chat_key(self) -> str:
        return f"chat:{self.project.root}" if self.project is not None else "chat:"

    def _wanted(self) -> list[ModelChoice]:
        model, compare = self._selected
        if model is None:
            return []
        return [model] + ([compare] if compare is not None else [])

    def loaded_models(self) -> list[ChatModel]:
        return [model for _, model in self._loaded]

    def loading(self) -> bool:
        return self.load_job is not None and not self.load_job.is_over

    def answering(self) -> bool:
        return self.answer_job is not None and not self.answer_job.is_over

    def _sync_models(self) -> None:
        """Load what the pickers name and unload what they no longer name. While a model loads or answers this
        waits: it runs again when that job is done."""
        if self.loading() or self.answering():
            self._update_status()
            return
        wanted = self._wanted()
        if [c.key for c in wanted] == [c.key for c, _ in self._loaded]:
            self._update_status()
            return
        loaded = {c.key: m for c, m in self._loaded}
        to_load = list({c.key: c for c in wanted if c.key not in loaded}.values())
        if not to_load:
            self._install(wanted, {})
            return
        epoch = self._epoch
        names = " and ".join(c.name for c in to_load)
        job = Job(f"Loading {names}", load_function(to_load, CHAT_CTX), key=self._chat_key())
        self.load_job = job
        # Queued: this runs from the previous chat job's `done`, while the runner still counts that job as running.
        if not self.start_job(job, queue=True, finished=partial(self._models_loaded, wanted, to_load, epoch),
                              failed=self._load_failed, done=self._load_done):
            self.load_job = None
        self._update_status()

    def _install(self, wanted: list[ModelChoice], fresh: dict[tuple[str, str | None], ChatModel]) -> None:
        loaded = {c.key: m for c, m in self._loaded}
        new = [(c, fresh.get(c.key) or loaded[c.key]) for c in wanted]
        kept = {id(m) for _, m in new}
        self._retire([m for _, m in self._loaded if id(m) not in kept])
        self._loaded = new
        warnings = [w for _, m in new for w in m.warnings]
        if warnings:
            self.banner.show_message(" ".join(warnings), level="warning")
        self._update_status()

    def _models_loaded(self, wanted: list[ModelChoice], to_load: list[ModelChoice], epoch: int,
                       models: object) -> None:
        assert isinstance(models, list)
        if epoch != self._epoch:  # the project changed while they loaded
            for model in models:
                model.close()
            return
        self._install(wanted, {c.key: m for c, m in zip(to_load, models, strict=True)})

    def _load_failed(self, message: str, details: str) -> None:
        self.banner.show_message(f"The model could not be loaded. {message}", level="error", details=details)
        # The pickers go back to what is loaded, so they never name a model that is not there.
        loaded = [c for c, _ in self._loaded]
        self._selected = [loaded[0] if loaded else None, loaded[1] if len(loaded) > 1 else None]
        self._fill_pickers()

    def _load_done(self) -> None:
        self._update_status()
        self._sync_models()

    def _update_status(self) -> None:
        if self.loading():
            self.model_status.setText("Loading the model… (larger models take a few seconds)")
        elif self._loaded:
            parts = []
            for _choice, model in self._loaded:
                template = "" if model.template_source == "gguf" else ", ChatML (no template in the file)"
                parts.append(f"{model.name} ({model.backend}, context {model.n_ctx:,} tokens{template})")
            text = "Loaded: " + " · side by side with ".join(parts)
            if [c.key for c in self._wanted()] != [c.key for c, _ in self._loaded]:
                text += " — the new choice loads when the answer ends"
            self.model_status.setText(text)
        else:
            self.model_status.setText("No model loaded.")
        self._update_placeholder()
        self._update_buttons()

    def _update_placeholder(self) -> None:
        if self.loading():
            text = "<h3>Chat</h3><p>Loading the model…</p>"
        elif self._loaded:
            names = " and ".join(f"<b>{html.escape(m.name)}</b>" for _, m in self._loaded)
            text = (f"<h3>Chat with {names}</h3><p>Type a message below: Return sends it, Shift+Return adds a "
                    "line. The answers are written on this Mac; nothing is sent anywhere.</p>")
            if len(self._loaded) > 1:
                text += "<p>Both models answer every message, side by side.</p>"
        elif self.project is None:
            text = NO_PROJECT_TEXT
        elif not self._choices:
            text = NO_EXPORTS_TEXT
        else:
            text = CHOOSE_TEXT
        self.transcript.set_placeholder(text)

    def _update_buttons(self) -> None:
        answering = self.answering()
        ready = bool(self._loaded) and not self.loading() and not answering
        self.send_button.setEnabled(ready)
        stopping = answering and self.answer_job is not None and self.answer_job.cancel_requested
        self.stop_button.setVisible(answering)
        self.stop_button.setEnabled(answering and not stopping)
        self.stop_button.setText("Stopping…" if stopping else "Stop")
        self.regenerate_button.setEnabled(ready and bool(self.chat.turns) and self._continues())
        self.new_chat_button.setEnabled(not answering and bool(self.chat.turns))
        self.sessions_list.setEnabled(not answering)
        self.delete_session_button.setEnabled(not answering and self.sessions_list.currentItem() is not None)

    def _continues(self) -> bool:
        """The loaded models are the ones this conversation is with."""
        return self.chat.keys == [c.key for c, _ in self._loaded]

    # --- settings ------------------------------------------------------------------------------------------------
    def sampling(self) -> Sampling:
        seed = self.seed.value()
        sampling = Sampling(temperature=round(self.temperature.value(), 3), top_p=round(self.top_p.value(), 3),
                            max_tokens=self.max_tokens.value(), seed=None if seed < 0 else seed)
        sampling.validate()
        return sampling

    def _system_text(self) -> str | None:
        return self.system_edit.toPlainText().strip() or None

    def _update_system_note(self) -> None:
        self.system_note.setVisible(bool(self.chat.turns) and self._system_text() != self.chat.system)

    # --- chatting ------------------------------------------------------------------------------------------------
    def send(self, text: str | None = None) -> Job | None:
        """Send the message box's text (or ``text``) to the loaded model(s); the answer streams in."""
        message = (self.input.toPlainText() if text is None else text).strip()
        if not message or self.answering():
            return None
        if self.loading():
            self.banner.show_message("The model is still loading; send the message when it is ready.")
            return None
        if not self._loaded:
            self.banner.show_message("Choose a model to chat with first (the Model list above).", level="warning")
            return None
        try:
            sampling = self.sampling()
        except ChatError as exc:
            self.banner.show_message(str(exc), level="warning")
            return None
        if (self.chat.turns or self.chat.session_id is not None) and not self._continues():
            had_turns = bool(self.chat.turns)
            self._clear_conversation()
            if had_turns:
                self.banner.show_message("The models changed, so a new chat started (the earlier one is under "
                                         "Saved chats).")
        if not self.chat.turns and self.chat.session_id is None:
            self.chat.keys = [c.key for c, _ in self._loaded]
            self.chat.models = [m.describe() for _, m in self._loaded]
            self.chat.system = self._system_text()
            self._update_system_note()
        if text is None:
            self.input.clear()
        turn = Turn(message, ["" for _ in self._loaded], [None for _ in self._loaded])
        self.views[turn] = self.transcript.add_turn(message, sessions.model_labels(self.chat.models))
        self.chat.turns.append(turn)
        return self._answer(turn, sampling, previous=None)

    def regenerate(self) -> Job | None:
        """Answer the last message again; the new answer replaces the last one (on screen and in the session)."""
        if self.answering() or self.loading() or not self.chat.turns:
            return None
        if not self._continues():
            self.banner.show_message("The models changed since this answer: send the message again to ask them.",
                                     level="warning")
            return None
        try:
            sampling = self.sampling()
        except ChatError as exc:
            self.banner.show_message(str(exc), level="warning")
            return None
        turn = self.chat.turns[-1]
        return self._answer(turn, sampling, previous=(list(turn.answers), list(turn.stats)))

    def _answer(self, turn: Turn, sampling: Sampling,
                previous: tuple[list[str], list[dict[str, Any] | None]] | None) -> Job | None:
        models = self.loaded_models()
        conversations = [[*self.chat.history(slot, before=turn), {"role": "user", "content": turn.user}]
                         for slot in range(len(models))]
        for view in self.views[turn].answers:
            view.set_text("")
            view.set_footer("Writing…")
        self.partial_updates = 0
        self.banner.clear()
        epoch = self._epoch
        title = "Answering" if len(models) == 1 else f"Answering with {len(models)} models"
        job = Job(title, partial(answer_turn, models, conversations, sampling), key=self._chat_key(),
                  stage_names=ANSWER_STAGES, min_interval=STREAM_INTERVAL_S)
        self.answer_job = job
        if not self.start_job(job, queue=True, progress=partial(self._streamed, turn),
                              finished=partial(self._answered, turn, sampling, previous, epoch),
                              failed=partial(self._answer_failed, turn, previous, epoch),
                              cancelled=partial(self._answer_failed, turn, previous, epoch,
                                                "The answer was cancelled.", ""),
                              done=self._answer_done):
            self.answer_job = None
            self._answer_failed(turn, previous, epoch, "", "")
            return None
        self._update_buttons()
        return job

    def _current(self, turn: Turn) -> bool:
        return any(t is turn for t in self.chat.turns)

    def _streamed(self, turn: Turn, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if not self._current(turn) or not isinstance(metrics, dict):
            return
        slot = int(metrics.get("slot", 0))
        answers = self.views[turn].answers
        if 0 <= slot < len(answers):
            answers[slot].set_text(str(metrics.get("text", "")))
            self.partial_updates += 1

    def stop(self) -> None:
        """End the answer now: the models stop at their next token and the text so far is kept, marked stopped."""
        if self.answering():
            assert self.answer_job is not None
            self.answer_job.cancel()
            self._update_buttons()

    def _answered(self, turn: Turn, sampling: Sampling, previous: Any, epoch: int, result: object) -> None:
        if epoch != self._epoch or not self._current(turn):
            return  # the project changed, or the chat was cleared, while it answered
        assert isinstance(result, AnswerResult)
        turn.answers = list(result.texts)
        turn.stats = list(result.stats)
        self._show_answers(turn)
        self._save(turn, sampling, regenerated=previous is not None)

    def _show_answers(self, turn: Turn) -> None:
        for view, text, stats in zip(self.views[turn].answers, turn.answers, turn.stats, strict=True):
            stopped = bool(stats) and stats.get("finish_reason") == "cancelled"
            view.set_text(text if text.strip() else ("*(stopped before the first word)*" if stopped
                                                     else "*(no text)*"))
            view.set_footer(sessions.stats_line(stats))

    def _answer_failed(self, turn: Turn, previous: Any, epoch: int, message: str, details: str) -> None:
        if epoch != self._epoch or not self._current(turn):
            return  # about a conversation that is no longer on screen
        if details:  # a failure (a cancel has no details): say what failed
            message = f"The model could not answer: {message}"
        if previous is not None:  # a failed regenerate: the earlier answer stands
            turn.answers, turn.stats = previous
            self._show_answers(turn)
        else:
            # A message that got no answer leaves the conversation and goes back to the box, to send again.
            self.chat.turns.remove(turn)
            self.transcript.remove_turn(self.views.pop(turn))
            if not self.input.toPlainText().strip():
                self.input.setPlainText(turn.user)
                message += " The message is back in the box."
        if message.strip():
            self.banner.show_message(message.strip(), level="error", details=details)

    def _answer_done(self) -> None:
        retired, self._retired = self._retired, []
        for model in retired:
            model.close()
        self._update_status()
        self._sync_models()  # a model chosen while the answer was written loads now

    # --- sessions ------------------------------------------------------------------------------------------------
    def _save(self, turn: Turn, sampling: Sampling, *, regenerated: bool) -> None:
        project = self.project
        if project is None:
            self.saved_label.setText("Not saved: no project is open.")
            return
        try:
            self.chat.save_turn(project, turn, sampling, context_tokens=CHAT_CTX, regenerated=regenerated)
        except (ChatError, sqlite3.Error) as exc:
            self.banner.show_message(f"This answer was not saved in the project: {exc}", level="error")
            return
        self.saved_label.setText(f"Saved in this project as “{self.chat.title}”.")
        self.refresh_sessions()

    def refresh_sessions(self) -> None:
        self.sessions_list.blockSignals(True)
        self.sessions_list.clear()
        if self.project is not None:
            try:
                saved = sessions.list_sessions(self.project)
            except sqlite3.Error:
                saved = []
            for session in saved:
                when = time.strftime("%d %b %H:%M", time.localtime(session.updated_at))
                item = QListWidgetItem(f"{session.title}\n{session.message_count} messages · {when}")
                item.setData(Qt.ItemDataRole.UserRole, session.id)
                item.setToolTip(f"{session.title}\n{', '.join(sessions.model_labels(session.models))}")
                self.sessions_list.addItem(item)
                if session.id == self.chat.session_id:
                    self.sessions_list.setCurrentItem(item)
        self.sessions_list.blockSignals(False)
        self._update_buttons()

    def _session_item_chosen(self, item: QListWidgetItem) -> None:
        session_id = item.data(Qt.ItemDataRole.UserRole)
        if session_id is not None and session_id != self.chat.session_id:
            self.open_session(int(session_id))
        self._update_buttons()

    def open_session(self, session_id: int) -> None:
        """Show a saved chat; when its model files are still there they are loaded, and the chat goes on."""
        if self.project is None or self.answering():
            return
        try:
            session = sessions.get_session(self.project, session_id)
        except (ChatError, sqlite3.Error) as exc:
            self.banner.show_message(str(exc), level="error")
            return
        self._clear_conversation()
        self.banner.clear()
        chat = self.chat = Conversation.from_session(session)
        names = sessions.model_labels(session.models)
        for turn in chat.turns:
            self.views[turn] = self.transcript.add_turn(turn.user, names)
        for turn in chat.turns:
            self._show_answers(turn)
        self._restore_settings(session.settings, chat.system)
        self.saved_label.setText(f"Saved in this project as “{session.title}”.")
        files = [f for key in chat.keys for f in key if f]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            self.banner.show_message(
                "This chat can be read but not continued: its model file is gone (" + ", ".join(missing) + "). "
                "Sending a message starts a new chat with the model chosen above.", level="warning")
        else:
            self._selected = [self._choice_for(p, lo) for p, lo in chat.keys][:2] + [None] * (2 - len(chat.keys))
            self._fill_pickers()
            self._sync_models()
        self._update_status()

    def _restore_settings(self, settings: dict[str, Any], system: str | None) -> None:
        sampling = settings.get("sampling") or {}
        for key, box in (("temperature", self.temperature), ("top_p", self.top_p)):
            if isinstance(sampling.get(key), int | float):
                box.setValue(float(sampling[key]))
        if isinstance(sampling.get("max_tokens"), int):
            self.max_tokens.setValue(sampling["max_tokens"])
        seed = sampling.get("seed")
        self.seed.setValue(seed if isinstance(seed, int) else -1)
        self.system_edit.setPlainText(system or "")

    def delete_selected_session(self) -> None:
        item = self.sessions_list.currentItem()
        if self.project is None or item is None or self.answering():
            return
        session_id = int(item.data(Qt.ItemDataRole.UserRole))
        title = item.text().split("\n", 1)[0]
        if not ask(self, "Delete Chat?", f"Delete the saved chat “{title}” and its messages? This cannot be undone.",
                   "Delete"):
            return
        try:
            sessions.delete_session(self.project, session_id)
        except (ChatError, sqlite3.Error) as exc:
            self.banner.show_message(str(exc), level="error")
            return
        if session_id == self.chat.session_id:
            self._clear_conversation()
        self.refresh_sessions()
        self._update_status()

    def export_selected_session(self) -> Path | None:
        """Write the selected saved chat to a file the user names: Markdown, or JSONL when the name ends so."""
        item = self.sessions_list.currentItem()
        if self.project is None or item is None:
            return None
        session_id = int(item.data(Qt.ItemDataRole.UserRole))
        title = item.text().split("\n", 1)[0]
        target = choose_export_path(self, _safe_file_name(title) + ".md")
        if target is None:
            return None
        path = Path(target)
        try:
            text = (sessions.export_jsonl if path.suffix.lower() == ".jsonl" else sessions.export_markdown)(
                self.project, session_id)
            atomic_write_text(path, text)
        except (ChatError, sqlite3.Error) as exc:
            self.banner.show_message(str(exc), level="error")
            return None
        except OSError as exc:
            self.banner.show_message(f"Could not write {path}: {exc.strerror or exc}", level="error")
            return None
        self.banner.show_message(f"Saved “{title}” to {path}.", level="info")
        return path

    def new_chat(self) -> None:
        """A new conversation with the same models; the current one stays saved."""
        if self.answering():
            return
        self._clear_conversation()
        self.refresh_sessions()
        self._update_status()
        self.input.setFocus()

    def _clear_conversation(self) -> None:
        self.transcript.clear()
        self.chat = Conversation()
        self.views.clear()
        self.saved_label.clear()
        self.sessions_list.clearSelection()
        self.sessions_list.setCurrentItem(None)
        self._update_system_note()

    # --- evaluation ----------------------------------------------------------------------------------------------
    def _default_eval_models(self) -> None:
        tuned = self._selected[0] if self._selected[0] is not None and self._selected[0].kind == "tuned" else None
        tuned = tuned or next((c for c in self._choices if c.kind == "tuned"), None)
        self._eval_selected = [tuned, self._base_for(tuned)]

    def _base_for(self, tuned: ModelChoice | None) -> ModelChoice | None:
        if tuned is None or tuned.base is None:
            return None
        return self._choice_for(tuned.base)

    def _eval_picked(self, slot: int, index: int) -> None:
        combo = self.eval_model_combo if slot == 0 else self.eval_base_combo
        data = combo.itemData(index)
        if data == OPEN_FILE:
            data = self._ask_for_file()
            if data is None:
                self._fill_pickers()
                return
        choice = data if isinstance(data, ModelChoice) else None
        self._eval_selected[slot] = choice
        self._eval_touched = True
        if slot == 0 and choice is not None and choice.base is not None:
            self._eval_selected[1] = self._base_for(choice)  # compare a tuned export with its own base
        self._fill_pickers()
        self._refresh_eval_buttons()

    def probe_counts(self) -> tuple[int, int]:
        """The project's held-out probes: (about facts, to be refused); not its near-miss questions, which measure
        leakage."""
        if self.project is None:
            return 0, 0
        from slowtune.eval.probes import probe_counts

        try:
            return probe_counts(self.project)
        except sqlite3.Error:
            return 0, 0

    def probe_count(self) -> int:
        """How many held-out probes the project has (questions about the documents kept out of training)."""
        return sum(self.probe_counts())

    def command_line(self) -> str | None:
        """What the tab shown does, as a command line (the window's Copy as Command): ``slowtune chat`` with the
        models chosen, or ``slowtune eval`` of the project with the tuned model and its base. None when no model
        is chosen (or, for the evaluation, no project is open)."""
        def with_lora(choice: ModelChoice) -> list[str]:
            return [choice.path] + (["--lora", choice.lora] if choice.lora else [])

        if self.tabs.currentIndex() == 0:
            model, compare = self._selected
            if model is None:
                return None
            parts = ["slowtune", "chat", *with_lora(model)]
            if compare is not None:
                parts += ["--compare", compare.path]
            if self.project is not None:
                parts += ["--project", str(self.project.root)]
            return shlex.join(parts)
        tuned, base = self._eval_selected
        if tuned is None or self.project is None:
            return None
        parts = ["slowtune", "eval", str(self.project.root), "--model", *with_lora(tuned)]
        if base is not None:
            parts += ["--base", base.path]
        return shlex.join(parts)

    def evaluating(self) -> bool:
        return self.eval_job is not None and not self.eval_job.is_over

    def _refresh_eval(self) -> None:
        self.eval_about.setText(EVAL_ABOUT)
        facts, refused = self.probe_counts()
        probes = facts + refused
        if self.project is None:
            empty = EVAL_NO_PROJECT
        elif not probes:
            empty = EVAL_NO_PROBES
        elif not self._all_choices():
            empty = EVAL_NO_MODELS
        else:
            empty = f"<p>{probes_text(facts, refused)} kept out of training in this project.</p>"
        self.eval_empty.setText(empty)
        self.eval_form.setVisible(self.project is not None and probes > 0)
        if not self.evaluating():
            self.show_report(latest_report(self.project) if self.project is not None else None, latest=True)
        self._refresh_eval_buttons()

    def _refresh_eval_buttons(self) -> None:
        busy = self.evaluating()
        self.eval_button.setEnabled(not busy and self.project is not None and self._eval_selected[0] is not None)
        self.eval_cancel_button.setVisible(busy)
        self.eval_progress.setVisible(busy)

    def show_report(self, saved: tuple[dict[str, Any], str, Path] | None, *, latest: bool = False) -> None:
        if saved is None:
            self.eval_headline.clear()
            self.show_axes(None)
            self.scores.show_report(None)
            self.scores.hide()
            self.eval_notes.clear()
            self.eval_report.clear()
            self.eval_report.hide()
            self.eval_saved.clear()
            return
        report, markdown, folder = saved
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(report.get("created_at") or 0)))
        prefix = f"Latest report ({when}): " if latest else ""
        tone = headline_tone(report)
        colour = {"damaged": WARNING_COLOR, "better": SUCCESS_COLOR}.get(tone)
        text = html.escape(prefix + str(report.get("headline", "")), quote=False)
        if tone == "damaged":
            text = f"⚠ {text}"
        self.eval_headline.setText(f"<b>{text}</b>" if colour is None
                                   else f"<span style='color:{colour}'><b>{text}</b></span>")
        self.eval_headline.setProperty("tone", tone)
        self.show_axes(axes_of(report))
        self.scores.show_report(report)
        self.scores.show()
        self.eval_notes.setText("<br>".join(html.escape(n) for n in report.get("notes") or []))
        # The report's own headings are for the file; inside the page they are sub-headings of the figures above.
        self.eval_report.setMarkdown(re.sub(r"(?m)^(#{1,4}) ", r"##\1 ", markdown))
        self.eval_report.show()
        self.eval_saved.setText(f"The full report is saved in {folder}.")

    def show_axes(self, axes: EvalAxes | None) -> None:
        """The three axes, tuned and base side by side, in words, with the warnings and a few examples (none: a
        report saved before they existed, and nothing is shown)."""
        self.axes_table.show_axes(axes)
        self.axes_table.setVisible(axes is not None)
        self.axes_text.setVisible(axes is not None)
        self.axes_scroll.setVisible(axes is not None)
        if axes is None:
            self.axes_text.clear()
            return
        parts = ["<br>".join(html.escape(line) for line in axes.lines)]
        parts += [f"<span style='color:{WARNING_COLOR}'><b>⚠</b> {html.escape(w)}</span>" for w in axes.warnings]
        # A few examples, one of each kind, besides the ones the warnings quote (the report below has them all).
        quoted = " ".join(axes.warnings)
        examples: dict[str, str] = {}
        for example in axes.examples:
            if example.axis not in examples and f"'{example.question}'" not in quoted:
                examples[example.axis] = example.text
        if examples:
            parts.append("<i>For example:</i><br>" + "<br>".join(f"• {html.escape(text)}"
                                                                 for text in list(examples.values())[:EVAL_EXAMPLES]))
        self.axes_text.setText("<p>" + "</p><p>".join(parts) + "</p>")

    def run_evaluation(self) -> Job | None:
        """Score the tuned model (and the one it is compared with) on the held-out probes, in a job."""
        if self.project is None or self.evaluating():
            return None
        tuned, base = self._eval_selected
        if tuned is None:
            self.banner.show_message("Choose the tuned model to evaluate.", level="warning")
            return None
        if base is not None and base.key == tuned.key:
            base = None
        self.banner.clear()
        job = Job("Evaluating", eval_function(self.project.root, tuned, base,
                                              max_probes=self.eval_probes.value() or None,
                                              max_tokens=self.eval_tokens.value(),
                                              open_book=self.eval_open_book.isChecked(),
                                              max_general=self.eval_general.value() or None),
                  key=f"eval:{self.project.root}", stage_names=EVAL_STAGES)
        epoch = self._epoch
        self.eval_job = job
        if not self.start_job(job, progress=self._eval_progress, finished=partial(self._evaluated, epoch),
                              failed=partial(self._eval_failed, epoch),
                              cancelled=partial(self._eval_failed, epoch, "", ""), done=self._eval_done):
            self.eval_job = None
            return None
        self.eval_progress.setRange(0, 0)
        self._eval_clock = None  # (when, answers done) at the first answer: the time left is measured from there
        self.eval_status.setText("Loading the models…")
        self._refresh_eval_buttons()
        return job

    def _eval_progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        m = metrics if isinstance(metrics, dict) else {}
        overall, whole = m.get("overall_done"), m.get("overall_total")
        if isinstance(overall, int | float) and isinstance(whole, int | float) and whole > 0:
            # One bar for the whole evaluation (it was three bars in turn, each starting again from nothing),
            # and the time left from the answers so far.
            self.eval_progress.setRange(0, 1000)
            self.eval_progress.setValue(round(1000 * min(1.0, overall / whole)))
            now = time.monotonic()
            if self._eval_clock is None or overall <= 0:
                self._eval_clock = (now, float(overall))
            started, at = self._eval_clock
            left = (now - started) / (overall - at) * (whole - overall) if overall - at >= 5 else None
            detail = f"answer {overall:,.0f} of {whole:,.0f}" + (f", about {format_duration(left)} left" if left else "")
        elif isinstance(total, int | float) and total > 0:
            self.eval_progress.setRange(0, 1000)
            self.eval_progress.setValue(round(1000 * min(1.0, done / total)))
            detail = f"{done:,.0f} of {total:,.0f}"
        else:
            self.eval_progress.setRange(0, 0)
            detail = status or m.get("model") or ""
        label = EVAL_STAGES.get(stage, stage)
        self.eval_status.setText(f"{label[:1].upper()}{label[1:]}" + (f": {detail}" if detail else ""))

    def _eval_failed(self, epoch: int, message: str, details: str) -> None:
        if epoch != self._epoch:
            return
        if message:
            self.banner.show_message(f"The evaluation stopped: {message}", level="error", details=details)
        else:
            self.banner.show_message("The evaluation was cancelled; no report was saved.", level="warning")

    def _evaluated(self, epoch: int, outcome: object) -> None:
        from slowtune.eval.pipeline import EvalResult

        if epoch != self._epoch:
            return
        assert isinstance(outcome, EvalResult)
        self.show_report((outcome.report.to_json(), outcome.report.to_markdown(), outcome.folder))

    def _eval_done(self) -> None:
        self.eval_status.clear()
        self._refresh_eval_buttons()

    def cancel_evaluation(self) -> None:
        if self.evaluating():
            assert self.eval_job is not None
            self.eval_job.cancel()
            self.eval_status.setText("Stopping after the current answer…")

