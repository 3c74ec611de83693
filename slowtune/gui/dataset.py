"""The Dataset page: have the teacher write questions and answers from the chunks, then review them.

Preparing a run (probing the teacher, estimating calls and cost) and the run itself happen in ``Job``s on their
own database connections, through the Qt-free core (``slowtune.teacher.session``, ``pipeline``, ``cost``); before
anything is sent, the user confirms a statement of where the document text goes and what it will cost. Review
(accept, reject, edit) goes through ``slowtune.teacher.review`` on the window's connection: each change is one
small transaction.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor, QFontDatabase, QKeyEvent, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from slowtune.dataset import DatasetError, DatasetRow
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import MessageBanner, RowsTableModel
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import Progress
from slowtune.settings import Settings
from slowtune.store import Project
from slowtune.teacher import review

GENERATE_STAGES = {"generate": "writing questions"}
ROW_LIMIT = 5000  # rows listed at once; the filters narrow a larger dataset
ANSWER_CHARS = 160  # the Answer column shows the start of the answer; the tooltip has all of it
STATUS_COLORS = {"accepted": "#2f9e44", "rejected": "#e03131", "pending": "#868e96"}

NO_PROJECT_TEXT = ("<h2>Dataset</h2><p>No project is open. Create or open one (File › New Project), add documents "
                   "on the Library page, and come back here to have the teacher write questions and answers.</p>")
NO_DOCUMENTS_TEXT = ("<h2>Dataset</h2><p>This project has no documents yet. Add them on the <b>Library</b> page "
                     "first: the teacher writes questions and answers from their chunks.</p>")
NO_TEACHER_TEXT = "No teacher chosen: choose one on the <b>Providers</b> page (select a provider, Use as Teacher)."
COMMAND_HINT = "The same from Terminal: <code>slowtune generate {project}</code>, <code>slowtune dataset report " \
               "{project}</code>."


# --- the core calls, as run in a worker thread ---------------------------------------------------------------

@dataclass
class Prepared:
    """What a run would send and cost, for the confirmation; and what the run needs."""
    choice: Any  # slowtune.teacher.session.TeacherChoice
    chunks: int  # chunks that will be sent
    chunk_tokens: int
    chunks_done: int  # chunks generated before (skipped)
    estimate: Any  # slowtune.teacher.cost.Estimate (teacher and judge together)


def prepare_function(root: Path, provider_id: str, model: str | None) -> Callable[[Progress], Prepared | None]:
    """Probe the teacher (or read the cached probe) and estimate the run; None when every chunk is done."""
    def run(progress: Progress) -> Prepared | None:
        from slowtune.teacher import cost, providers, session
        from slowtune.teacher.pipeline import GenerateConfig, load_jobs, plan_run

        with Project.open(root) as project:
            jobs, done = load_jobs(project, GenerateConfig())
        if not jobs:
            return None
        choice = session.choose(provider_id, model, timeout=30)
        provider = choice.provider
        # A missing key is said now, before the user is asked to send anything.
        if not provider.in_process and provider.needs_key and not providers.api_key(provider):
            raise providers.ProviderError(providers.missing_key_message(provider))
        plan = plan_run(jobs, GenerateConfig())
        est = cost.estimate(choice.model, plan.calls + plan.judge_calls, plan.input_tokens + plan.judge_input_tokens,
                            plan.output_tokens + plan.judge_output_tokens, free=choice.free)
        return Prepared(choice, plan.chunks, plan.chunk_tokens, done, est)
    return run


def generate_function(root: Path, choice: Any) -> Callable[[Progress], Any]:
    """The run, on a connection of its own; the CallRunner is built here too (it runs asyncio in this thread)."""
    def run(progress: Progress) -> Any:
        from slowtune.teacher import session
        from slowtune.teacher.pipeline import GenerateConfig, run_generation

        with Project.open(root) as project:
            runner = session.make_runner(project, choice)
            return run_generation(project, runner, GenerateConfig(), progress=progress)
    return run


def confirmation_text(prepared: Prepared) -> str:
    choice = prepared.choice
    verb = "sent to" if choice.remote else "read by"
    text = (f"Document text from {prepared.chunks:,} chunks (about {prepared.chunk_tokens:,} tokens) will be {verb} "
            f"{choice.destination} for the teacher (model {choice.model}).\n\n"
            f"Estimate: {prepared.estimate.describe()}")
    if prepared.chunks_done:
        text += f"\n\n{prepared.chunks_done:,} chunks generated before are skipped."
    return text


def describe_result(result: Any) -> tuple[str, str]:
    """(level, message) for the banner after a run."""
    spent = f"${result.cost_usd:.4f}" if result.cost_known else "cost unknown"
    message = (f"{result.chunks_done} chunks done, {result.chunks_failed} failed; {result.rows_kept} conversations "
               f"kept, {result.probes} probe questions; {result.calls} calls, {spent}.")
    if result.stopped == "cancelled":
        return "warning", "Generation stopped. " + message + " Click Generate to continue where it stopped."
    if result.stopped:
        return "error" if result.stopped in ("fatal", "unreachable") else "warning", \
            message + (f" {result.message}" if result.message else "")
    return ("warning" if result.chunks_failed else "info"), message


# --- the review table ----------------------------------------------------------------------------------------

def question_of(row: DatasetRow) -> str:
    return next((m["content"] for m in row.messages if m["role"] == "user"), "")


def answer_of(row: DatasetRow) -> str:
    return next((m["content"] for m in reversed(row.messages) if m["role"] == "assistant"), "")


class RowTableModel(RowsTableModel):
    COLUMNS = ("Question", "Answer", "Type", "Split", "Status", "Reason")

    def replace_row(self, position: int, row: DatasetRow) -> None:
        self.rows[position] = row
        emit(self.dataChanged, self.index(position, 0), self.index(position, len(self.COLUMNS) - 1))

    def value(self, row: DatasetRow, column: str) -> str:
        if column == "Question":
            return question_of(row)
        if column == "Answer":
            return answer_of(row)
        return {"Type": row.provenance.qtype or "", "Split": row.split, "Status": row.status,
                "Reason": row.reject_reason or ""}[column]

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        column = self.COLUMNS[index.column()]
        value = self.value(row, column)
        if role == Qt.ItemDataRole.DisplayRole:
            value = " ".join(value.split())  # one line per row
            return value if len(value) <= ANSWER_CHARS else value[:ANSWER_CHARS - 1] + "…"
        if role == Qt.ItemDataRole.ToolTipRole and column in ("Question", "Answer", "Reason") and value:
            return value
        if role == Qt.ItemDataRole.ForegroundRole and column == "Status":
            return QColor(STATUS_COLORS.get(row.status, "#868e96"))
        return None


REVIEW_KEYS = {Qt.Key.Key_A: "accept", Qt.Key.Key_R: "reject", Qt.Key.Key_Return: "edit", Qt.Key.Key_Enter: "edit"}


class ReviewTable(QTableView):
    """The rows, with the review keys: A accept, R reject, Enter edit, J/K next/previous."""

    action = Signal(str)  # "accept", "reject", "edit"

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = Qt.Key(event.key())
        plain = not (event.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.MetaModifier
                                          | Qt.KeyboardModifier.AltModifier))
        if plain and key in (Qt.Key.Key_J, Qt.Key.Key_K):
            self.move(1 if key == Qt.Key.Key_J else -1)
            return
        if plain and key in REVIEW_KEYS:
            emit(self.action, REVIEW_KEYS[key])
            return
        super().keyPressEvent(event)

    def current_row(self) -> int:
        index = self.currentIndex()
        return index.row() if index.isValid() else -1

    def move(self, step: int) -> None:
        count = self.model().rowCount()
        if not count:
            return
        current = self.current_row()
        target = 0 if current < 0 else max(0, min(count - 1, current + step))
        self.selectRow(target)
        self.setCurrentIndex(self.model().index(target, 0))


# --- editing a conversation ----------------------------------------------------------------------------------

class EditDialog(QDialog):
    def __init__(self, question: str, answer: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Edit Conversation")
        self.question = QPlainTextEdit(question)
        self.question.setMaximumHeight(90)
        self.answer = QPlainTextEdit(answer)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow("Question", self.question)
        form.addRow("Answer", self.answer)
        form.addRow(QLabel("An edited row is accepted as it is, and kept when its chunk is generated again."))
        form.addRow(buttons)
        self.resize(640, 420)


def edit_conversation(parent: QWidget, question: str, answer: str) -> tuple[str, str] | None:
    """The edited (question, answer), or None if the user cancelled. Module-level so tests can answer it."""
    dialog = EditDialog(question, answer, parent)
    if dialog.exec() != QDialog.DialogCode.Accepted:
        return None
    return dialog.question.toPlainText().strip(), dialog.answer.toPlainText().strip()


# --- the page ------------------------------------------------------------------------------------------------

STATUS_FILTERS: list[tuple[str, str | None, str | None]] = [
    ("Any status", None, None), ("Accepted", "accepted", None), ("Rejected", "rejected", None),
    ("Pending", "pending", None),
    *[(f"Rejected by {gate}", "rejected", gate) for gate in review.GATES],
]


class DatasetPage(QWidget):
    """Generate with the teacher, review the rows, and read the report."""

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page-dataset")
        self.runner = runner
        self._settings = settings
        self.project: Project | None = None
        self.prepare_job: Job | None = None
        self.generate_job: Job | None = None
        self.last_result: Any = None

        self.banner = MessageBanner()
        self.label = QLabel()  # the empty state, or the title and the equivalent commands
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.teacher_label = QLabel()
        self.generate_button = QPushButton("Generate…")
        self.generate_button.setToolTip("Have the teacher write questions and answers for chunks that have none yet")
        self.generate_button.clicked.connect(self.generate)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.progress_label = QLabel()
        top = QHBoxLayout()
        top.addWidget(self.generate_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.progress_label, 1)
        top.addWidget(self.teacher_label)

        self.document_filter = QComboBox()
        self.type_filter = QComboBox()
        self.status_filter = QComboBox()
        for text, status, gate in STATUS_FILTERS:
            self.status_filter.addItem(text, (status, gate))
        for combo in (self.document_filter, self.type_filter, self.status_filter):
            combo.currentIndexChanged.connect(lambda _i: self.refresh_rows())
        self.count_label = QLabel()
        filters = QHBoxLayout()
        for caption, combo in (("Document", self.document_filter), ("Type", self.type_filter),
                               ("Status", self.status_filter)):
            filters.addWidget(QLabel(caption))
            filters.addWidget(combo)
        filters.addStretch(1)
        filters.addWidget(self.count_label)

        self.model = RowTableModel(self)
        self.table = ReviewTable()
        self.table.setModel(self.model)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        self.table.setColumnWidth(0, 320)
        self.table.setColumnWidth(1, 320)
        self.table.action.connect(self._table_action)
        self.table.doubleClicked.connect(lambda _index: self.edit_current())
        keys_hint = QLabel("Keys: A accept · R reject · Enter edit · J/K next/previous")
        keys_hint.setStyleSheet("color: gray;")

        self.report = QPlainTextEdit()
        self.report.setReadOnly(True)
        self.report.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        review_box = QWidget()
        review_layout = QVBoxLayout(review_box)
        review_layout.setContentsMargins(0, 0, 0, 0)
        review_layout.addLayout(filters)
        review_layout.addWidget(self.table, 1)
        review_layout.addWidget(keys_hint)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(review_box)
        self.splitter.addWidget(self.report)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 8, 24, 16)
        layout.addWidget(self.banner)
        layout.addWidget(self.label)
        layout.addLayout(top)
        layout.addWidget(self.splitter, 1)
        self.refresh()

    # --- showing -------------------------------------------------------------------------------------------
    def set_project(self, project: Project | None) -> None:
        self.project = project
        self.banner.clear()
        self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        self.refresh()  # documents, settings or rows may have changed while the page was hidden

    def has_chunks(self) -> bool:
        if self.project is None:
            return False
        return self.project.conn.execute(
            "SELECT 1 FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.status = 'ok' LIMIT 1"
        ).fetchone() is not None

    def refresh(self) -> None:
        settings = self._settings()
        ready = self.has_chunks()
        name = html.escape(self.project.name) if self.project is not None else "PROJECT"
        hint = "<p style='color:gray'>" + COMMAND_HINT.format(project=name) + "</p>"
        if self.project is None:
            self.label.setText(NO_PROJECT_TEXT + hint)
        elif not ready:
            self.label.setText(NO_DOCUMENTS_TEXT + hint)
        else:
            self.label.setText("<h2 style='margin:0'>Dataset</h2>" + hint)
        for widget in (self.generate_button, self.teacher_label, self.splitter):
            widget.setVisible(ready)
        if settings.teacher_provider:
            model = f", model <b>{html.escape(settings.teacher_model)}</b>" if settings.teacher_model else ""
            self.teacher_label.setText(f"Teacher: <b>{html.escape(settings.teacher_provider)}</b>{model}")
        else:
            self.teacher_label.setText(NO_TEACHER_TEXT)
        self._update_busy()
        if ready:
            self._fill_filters()
            self.refresh_rows()
            self.refresh_report()
        else:
            self.model.set_rows([])
            self.report.clear()

    def _fill_filters(self) -> None:
        assert self.project is not None
        documents = [(None, "All documents")] + [
            (r["id"], r["title"] or Path(r["path"]).name)
            for r in self.project.conn.execute("SELECT id, title, path FROM documents ORDER BY id")]
        types = [(None, "All types")] + [
            (r[0], r[0]) for r in self.project.conn.execute(
                "SELECT DISTINCT qtype FROM dataset_rows WHERE qtype IS NOT NULL ORDER BY 1")]
        for combo, entries in ((self.document_filter, documents), (self.type_filter, types)):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for data, text in entries:
                combo.addItem(text, data)
            combo.setCurrentIndex(max(0, combo.findData(current)))
            combo.blockSignals(False)

    def row_filter(self) -> review.RowFilter:
        status, gate = self.status_filter.currentData() or (None, None)
        return review.RowFilter(status=status, gate=gate, qtype=self.type_filter.currentData(),
                                document_id=self.document_filter.currentData(), limit=ROW_LIMIT)

    def refresh_rows(self) -> None:
        if self.project is None:
            return
        current = self.current_dataset_row()
        rows = review.list_rows(self.project, self.row_filter())
        self.model.set_rows(rows)
        total = self.project.conn.execute("SELECT count(*) FROM dataset_rows").fetchone()[0]
        if not total:
            self.count_label.setText("No rows yet: click Generate to have the teacher write them.")
        else:
            more = " (the first ones; narrow the filters)" if len(rows) >= ROW_LIMIT else ""
            self.count_label.setText(f"{len(rows):,} of {total:,} rows{more}")
        if current is not None:
            for position, row in enumerate(rows):
                if row.id == current.id:
                    self.table.selectRow(position)
                    self.table.setCurrentIndex(self.model.index(position, 0))

    def refresh_report(self) -> None:
        if self.project is not None:
            self.report.setPlainText(review.render_report(review.report(self.project)))

    # --- review --------------------------------------------------------------------------------------------
    def current_dataset_row(self) -> DatasetRow | None:
        position = self.table.current_row()
        return self.model.rows[position] if 0 <= position < len(self.model.rows) else None

    def _table_action(self, action: str) -> None:
        if action == "edit":
            self.edit_current()
        else:
            self.set_current_status("accepted" if action == "accept" else "rejected")

    def set_current_status(self, status: str) -> None:
        row = self.current_dataset_row()
        if self.project is None or row is None or row.id is None:
            return
        try:
            review.set_status(self.project, [row.id], status)
        except DatasetError as exc:
            self.banner.show_message(str(exc), level="error")
            return
        self._reload_row(row.id)
        self.table.move(1)  # on to the next row: reviewing is a walk down the list
        self.refresh_report()

    def edit_current(self) -> None:
        row = self.current_dataset_row()
        if self.project is None or row is None or row.id is None:
            return
        edited = edit_conversation(self, question_of(row), answer_of(row))
        if edited is None:
            return
        question, answer = edited
        messages = [dict(m) for m in row.messages]
        user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        assistant = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)
        if user is None or assistant is None:
            self.banner.show_message("This row has no question and answer to edit.", level="warning")
            return
        messages[user]["content"] = question
        messages[assistant]["content"] = answer
        try:
            review.edit_row(self.project, row.id, messages)
        except DatasetError as exc:
            self.banner.show_message(f"The edit was not saved: {exc}", level="error")
            return
        self._reload_row(row.id)
        self.refresh_report()

    def _reload_row(self, row_id: int) -> None:
        """Show a changed row as it is now; it stays in the list (even if the filter no longer matches) until the
        next refresh, so the review does not jump."""
        assert self.project is not None
        for position, row in enumerate(self.model.rows):
            if row.id == row_id:
                self.model.replace_row(position, review.get_row(self.project, row_id))

    # --- generating ----------------------------------------------------------------------------------------
    def busy(self) -> bool:
        return any(job is not None and not job.is_over for job in (self.prepare_job, self.generate_job))

    def _update_busy(self) -> None:
        busy = self.busy()
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setVisible(busy)

    def generate(self) -> Job | None:
        """Prepare a run (probe and estimate in a job); the confirmation and the run follow when it is done."""
        if self.project is None or self.busy():
            return None
        if not self.has_chunks():
            self.banner.show_message("There is nothing to generate from: add documents on the Library page.",
                                     level="warning")
            return None
        settings = self._settings()
        if not settings.teacher_provider:
            self.banner.show_message("No teacher chosen: choose one on the Providers page (select a provider and "
                                     "click Use as Teacher).", level="warning")
            return None
        self.banner.clear()
        job = Job("Preparing generation", prepare_function(self.project.root, settings.teacher_provider,
                                                           settings.teacher_model), key=str(self.project.root))
        job.finished.connect(self._prepared)
        job.failed.connect(self._failed)
        job.done.connect(self._update_busy)
        self.prepare_job = job
        if not self.runner.submit(job):
            self.prepare_job = None
            return None
        self.progress_label.setText("Asking the teacher what it supports and estimating…")
        self._update_busy()
        return job

    def _prepared(self, prepared: object) -> None:
        self.progress_label.clear()
        if prepared is None:
            self.banner.show_message("Every chunk already has generated rows. The report below shows them.")
            return
        assert isinstance(prepared, Prepared)
        if self.project is None:
            return
        if not ask(self, "Send Document Text?", confirmation_text(prepared), "Send"):
            self.banner.show_message("Nothing was sent.")
            return
        self.start_generation(prepared)

    def start_generation(self, prepared: Prepared) -> Job | None:
        assert self.project is not None
        job = Job("Generating questions", generate_function(self.project.root, prepared.choice),
                  key=str(self.project.root), stage_names=GENERATE_STAGES, min_interval=0.25)
        job.progress.connect(self._progress)
        job.finished.connect(self._generated)
        job.failed.connect(self._failed)
        job.cancelled.connect(lambda: self.banner.show_message("Generation was cancelled.", level="warning"))
        job.done.connect(self._generation_done)
        self.generate_job = job
        # Queued: this is called from the preparing job's `finished`, while the runner still counts it as running.
        if not self.runner.submit(job, queue=True):
            self.generate_job = None
            return None
        self.progress_label.setText(f"Sending {prepared.chunks:,} chunks to {prepared.choice.destination}…")
        self._update_busy()
        return job

    def _progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        m = metrics if isinstance(metrics, dict) else {}
        parts = [f"{done:,.0f}/{total:,.0f} chunks" if isinstance(total, int | float) else f"{done:,.0f} chunks"]
        parts.append(f"{m.get('rows', 0):,} rows")
        parts.append(f"${float(m.get('cost_usd', 0.0)):.4f} so far")
        parts.append(f"{m.get('tokens', 0):,} tokens")
        errors = int(m.get("errors", 0))
        parts.append(f"{errors} error{'s' if errors != 1 else ''}")
        self.progress_label.setText("Generating: " + " · ".join(parts))

    def _generated(self, result: object) -> None:
        self.last_result = result
        level, message = describe_result(result)
        details = "\n".join(f"{f['document']} chunk {f['chunk'][:12]}: {f['reason']}"
                            for f in getattr(result, "failures", [])[:50])
        self.banner.show_message(message, level=level, details=details)

    def _failed(self, message: str, details: str) -> None:
        self.progress_label.clear()
        self.banner.show_message(message, level="error", details=details)

    def _generation_done(self) -> None:
        self.progress_label.clear()
        self.refresh()

    def cancel(self) -> None:
        for job in (self.prepare_job, self.generate_job):
            if job is not None and not job.is_over:
                job.cancel()
