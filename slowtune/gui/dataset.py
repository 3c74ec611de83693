"""The Dataset page: have the teacher write questions and answers from the chunks, then review them.

Preparing a run (probing the teacher, estimating calls and cost) and the run itself happen in ``Job``s on their
own database connections, through the Qt-free core (``slowtune.teacher.options``); before anything is sent, the
user confirms a statement of where the document text goes and what it will cost. Review (accept, reject, edit)
goes through ``slowtune.teacher.review`` on the window's connection: each change is one small transaction.
Regenerating a chunk is a job too: it asks the teacher afresh for one chunk and keeps the rows the user edited.

The generation options (the recipe and its knobs, budget, system prompt, answer style, judge, parallel calls) are
``slowtune.teacher.options.GenerateOptions``, kept with the project; the Options… dialog edits them, showing the
knobs of the recipe chosen (Facts: questions per fact, fact statements, near misses; Plain Q&A: questions per
chunk and the question mix).
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QPoint, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from slowtune.dataset import DatasetError, DatasetRow, count_rows, question_types
from slowtune.documents import library
from slowtune.gui.page import Page
from slowtune.gui.providers import fill_models, model_combo
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import MessageBanner, RowsTableModel
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import Progress
from slowtune.settings import Settings
from slowtune.store import Project
from slowtune.teacher import options as generation
from slowtune.teacher import prompts, review
from slowtune.teacher.options import (
    MAX_CONCURRENCY,
    MAX_PAIRS_PER_CHUNK,
    QTYPE_LABELS,
    RECIPE_LABELS,
    GenerateOptions,
    OptionError,
    Prepared,
    load_options,
    money,
    parse_budget,
    save_options,
)

GENERATE_STAGES = {"generate": "writing questions"}
REGENERATE_STAGES = {"prepare": "preparing", "generate": "writing questions"}
ROW_LIMIT = 5000  # rows listed at once; the filters narrow a larger dataset
ANSWER_CHARS = 160  # the Answer column shows the start of the answer; the tooltip has all of it
STATUS_COLORS = {"accepted": "#2f9e44", "rejected": "#e03131", "pending": "#868e96"}

NO_PROJECT_TEXT = ("<h2>Dataset</h2><p>No project is open. Create or open one (File › New Project), add documents "
                   "on the Library page, and come back here to have the teacher write questions and answers.</p>")
NO_DOCUMENTS_TEXT = ("<h2>Dataset</h2><p>This project has no documents yet. Add them on the <b>Library</b> page "
                     "first: the teacher writes questions and answers from their chunks.</p>")
NO_TEACHER_TEXT = "No teacher chosen: choose one on the <b>Providers</b> page (select a provider, Use as Teacher)."
NO_TEACHER_MESSAGE = ("No teacher chosen: choose one on the Providers page (select a provider and click Use as "
                      "Teacher).")


# --- the core calls, as run in a worker thread ---------------------------------------------------------------

def prepare_function(root: Path, provider_id: str, model: str | None,
                     options: GenerateOptions | None = None) -> Callable[[Progress], Prepared | None]:
    """Probe the teacher and estimate the run with ``options`` on a connection of its own; None when every chunk
    is done."""
    def run(progress: Progress) -> Prepared | None:
        with Project.open(root) as project:
            return generation.prepare_run(project, provider_id, model, options)
    return run


def generate_function(root: Path, prepared: Prepared) -> Callable[[Progress], Any]:
    """The run, on a connection of its own."""
    def run(progress: Progress) -> Any:
        with Project.open(root) as project:
            return generation.run_prepared(project, prepared, progress)
    return run


def regenerate_function(root: Path, chunk_id: str, provider_id: str, model: str | None,
                        options: GenerateOptions) -> Callable[[Progress], Any]:
    """Ask the teacher afresh for one chunk with ``options``; the rows the user edited are kept."""
    def run(progress: Progress) -> Any:
        with Project.open(root) as project:
            return generation.regenerate(project, chunk_id, provider_id, model, options, progress)
    return run


def confirmation_text(prepared: Prepared) -> str:
    choice = prepared.choice
    verb = "sent to" if choice.remote else "read by"
    text = (f"Document text from {prepared.chunks:,} chunks (about {prepared.chunk_tokens:,} tokens) will be {verb} "
            f"{choice.destination} for the teacher (model {choice.model}).")
    judge = prepared.judge_choice
    if judge is not None:
        if judge.destination != choice.destination:
            text += (f" For the judge it will also be {'sent to' if judge.remote else 'read by'} "
                     f"{judge.destination} (model {judge.model}).")
        else:
            text += f" The judge is model {judge.model} there."
    text += "\n\n" + "\n".join(f"Estimate ({who}): {e.describe()}" for who, e in prepared.estimates)
    budget = prepared.options.budget_usd
    if budget is not None:
        text += f"\n\nBudget: the run stops before it spends more than {money(budget)}."
        estimated = prepared.estimated_cost
        if estimated is not None and estimated > budget:
            text += " The estimate is above it: expect the run to stop early, with chunks left for the next run."
    text += f"\n\nOptions: {prepared.options.summary()}."
    if prepared.chunks_done:
        text += f"\n\n{prepared.chunks_done:,} chunks generated before are skipped."
    return text


def describe_result(result: Any, budget: float | None = None) -> tuple[str, str]:
    """(level, message) for the banner after a run."""
    spent = spent_words(result.cost_usd, result.cost_known)
    message = (f"{result.chunks_done} chunks done, {result.chunks_failed} failed; {result.rows_kept} conversations "
               f"kept, {result.probes} probe questions; {result.calls} calls, {spent}.")
    if result.stopped == "cancelled":
        return "warning", "Generation stopped. " + message + " Click Generate to continue where it stopped."
    if result.stopped == "budget":
        of = f" of its {money(budget)} budget" if budget is not None else ""
        return "warning", (f"Stopped at the budget: this run spent ${result.cost_usd:.4f}{of}, and the next chunk "
                           f"would have gone over; {result.chunks_not_started} chunks are left. " + message
                           + " Click Generate to go on (each run may spend up to the budget), or change the budget "
                             "in Options….")
    if result.stopped:
        return "error" if result.stopped in ("fatal", "unreachable") else "warning", \
            message + (f" {result.message}" if result.message else "")
    return ("warning" if result.chunks_failed else "info"), message


SPLIT_WORDS = (("train", "Training"), ("valid", "Validation"), ("probe", "Held-out questions"))
GATE_WORDS = {"schema": "unreadable answer", "quote": "quote not in the document", "refusal": "refused",
              "judge": "the judge", "duplicate": "duplicate", "user": "you", "other": "other"}


def spent_words(cost_usd: float, known: bool = True) -> str:
    """What the teacher cost, for people: "no cost" for a free (local) teacher, never "$0.0000"."""
    if not known:
        return "cost unknown"
    return "no cost" if cost_usd <= 0 else money(cost_usd)


def describe_report(rep: review.DatasetReport) -> str:
    """The dataset's figures for the page, as short lines of words (HTML): not the terminal's report."""
    def rows(split: str) -> str:
        counts = rep.rows.get(split, {})
        text = f"{counts.get('accepted', 0):,} accepted"
        for status in ("rejected", "pending"):
            if counts.get(status):
                text += f", {counts[status]:,} {status}"
        return text

    lines = [" · ".join(f"<b>{label}:</b> {rows(split)}" for split, label in SPLIT_WORDS)]
    if rep.by_type:
        lines.append("<b>Kinds of rows:</b> " + ", ".join(
            f"{QTYPE_LABELS.get(t, t)} {n:,}" for t, n in sorted(rep.by_type.items(), key=lambda kv: -kv[1])))
    if rep.rejected_by_gate:
        lines.append("<b>Rejected by:</b> " + ", ".join(
            f"{GATE_WORDS.get(g, g)} {n:,}" for g, n in sorted(rep.rejected_by_gate.items(), key=lambda kv: -kv[1])))
    chunks = f"<b>Chunks:</b> {rep.chunks_generated:,} of {rep.chunks_total:,} written by the teacher"
    if rep.chunks_failed_count:
        chunks += f", {rep.chunks_failed_count:,} failed"
    if rep.chunks_without_rows_count:
        chunks += f", {rep.chunks_without_rows_count:,} left with no rows"
    lines.append(chunks)
    if rep.stale_rows:
        lines.append(f"{rep.stale_rows:,} rows are about documents that were removed or changed: they are left out of "
                     "training.")
    for d in rep.documents:
        lines.append(f"&nbsp;&nbsp;{html.escape(str(d['title']))}: {d['rows']:,} rows from {d['chunks_with_rows']} of "
                     f"{d['chunks']} chunks")
    for f in rep.chunks_failed[:10]:
        lines.append(f"&nbsp;&nbsp;A chunk failed: {html.escape(str(f['reason']))}")
    tokens = rep.tokens.get("teacher_input", 0) + rep.tokens.get("teacher_output", 0)
    lines.append(f"<b>Teacher:</b> {rep.teacher_calls:,} calls, {tokens:,} tokens, {spent_words(rep.cost_usd)}")
    return "<br>".join(lines)


def describe_regeneration(result: Any) -> tuple[str, str]:
    """(level, message) for the banner after regenerating a chunk."""
    if result.chunks_failed:
        reason = result.failures[0]["reason"] if result.failures else "the teacher gave no usable answer"
        return "error", (f"The chunk could not be regenerated: {reason}. Its old rows were removed (edited ones "
                         "are kept); Generate or Regenerate Chunk… asks the teacher again.")
    if result.stopped and not result.chunks_done:
        why = "Regeneration was cancelled" if result.stopped == "cancelled" else (result.message or "It stopped")
        level = "error" if result.stopped in ("fatal", "unreachable") else "warning"
        return level, (f"{why.rstrip('.')}. The teacher wrote nothing for the chunk, and its old rows were already "
                       "removed (edited ones are kept): Generate or Regenerate Chunk… asks again.")
    rejected = sum(result.rejected.values())
    spent = spent_words(result.cost_usd, result.cost_known)
    return "info", (f"Chunk regenerated: {result.rows_kept} conversations kept, {rejected} rejected by the checks, "
                    f"{result.probes} probe questions; {result.calls} calls, {spent}.")


def _count(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def regenerate_text(info: review.ChunkRows, destination: str, model: str | None, *, remote: bool = True) -> str:
    text = f"Ask the teacher again for this chunk of “{info.document}” (about {info.tokens:,} tokens)?\n\n"
    if info.replaced:
        details = []
        if info.probes:
            details.append(f"{_count(info.probes, 'probe question')}")
        if info.reviewed:
            details.append(f"{info.reviewed:,} you accepted or rejected by hand")
        text += (f"{_count(info.replaced, 'row')} from this chunk will be replaced"
                 + (f" ({', '.join(details)})" if details else "") + ". ")
    else:
        text += "This chunk has no rows from the teacher to replace. "
    if info.kept:
        text += f"{_count(info.kept, 'row')} you edited {'is' if info.kept == 1 else 'are'} kept."
    else:
        text += "No row of this chunk was edited, so none is kept (edited rows always are)."
    text += f"\n\nThe chunk's text will be {'sent to' if remote else 'read by'} {destination} for the teacher" + (
        f" (model {model})." if model else ".")
    return text


def progress_text(verb: str, done: float, total: object, metrics: object, budget: float | None) -> str:
    m = metrics if isinstance(metrics, dict) else {}
    parts = [f"{done:,.0f}/{total:,.0f} chunks" if isinstance(total, int | float) else f"{done:,.0f} chunks"]
    parts.append(f"{m.get('rows', 0):,} rows")
    spent = float(m.get("cost_usd", 0.0))
    parts.append(f"${spent:.4f} of {money(budget)} budget" if budget is not None else f"${spent:.4f} so far")
    parts.append(f"{m.get('tokens', 0):,} tokens")
    errors = int(m.get("errors", 0))
    parts.append(f"{errors} error{'s' if errors != 1 else ''}")
    return f"{verb}: " + " · ".join(parts)


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
        qtype = row.provenance.qtype or ""
        return {"Type": QTYPE_LABELS.get(qtype, qtype), "Split": row.split, "Status": row.status,
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


# --- the generation options dialog ---------------------------------------------------------------------------

class OptionsDialog(QDialog):
    """The generation options of a project. ``save`` is called on OK; the dialog closes only when it returns True,
    so a bad value can be fixed without setting everything again."""

    def __init__(self, save: Callable[[OptionsDialog], bool], options: GenerateOptions, provider_ids: list[str],
                 parent: QWidget | None = None, *, teacher: str | None = None, teacher_model: str | None = None,
                 models: list[str] | None = None, default_model: str | None = None) -> None:
        super().__init__(parent)
        self._save = save
        self.setWindowTitle("Generation Options")
        self.setMinimumWidth(560)
        self.banner = MessageBanner()

        # The teacher's model: the app's setting (not the project's), beside the options it goes with.
        self.teacher_model = model_combo(
            f"the provider's default model ({default_model})" if default_model
            else "a model name (a test on the Providers page lists them)")
        fill_models(self.teacher_model, models or [], teacher_model or "")
        self.teacher_model.setEnabled(teacher is not None)
        self.teacher_model.setToolTip("The teacher's model for every run; the list is what a test of the provider "
                                      "found, and any name can be typed" if teacher else
                                      "Choose a teacher on the Providers page first")

        self.recipe = QComboBox()
        for recipe in prompts.RECIPES:
            self.recipe.addItem(RECIPE_LABELS[recipe], recipe)
        self.recipe.setToolTip("Facts: the teacher lists each chunk's facts and asks about every fact several ways "
                               "(directly, reversed, in a situation, combined with another fact), states each fact "
                               "plainly too, and writes refusals about look-alike entities the documents never "
                               "mention, so the model learns the facts without making things up about neighbours.\n"
                               "Plain Q&A: a number of questions per chunk in a mix of types.")
        self.recipe.currentIndexChanged.connect(self._update_recipe)
        self.questions_per_fact = QSpinBox()
        self.questions_per_fact.setRange(1, prompts.MAX_QUESTIONS_PER_FACT)
        self.questions_per_fact.setToolTip("Questions about each fact, asked in turn directly, reversed (the "
                                           "answer given, the subject asked for), in a situation, and combined "
                                           "with another fact of the chunk")
        self.statements = QCheckBox("Also state each fact plainly (“What do you know about …?”)")
        self.statements.setToolTip("A row per fact that states it in a sentence, beside the questions: models learn "
                                   "facts better when they see them stated as well as asked")
        self.near_miss = QSpinBox()
        self.near_miss.setRange(0, prompts.MAX_NEAR_MISS)
        self.near_miss.setToolTip("Per chunk: questions about entities that resemble the chunk's subjects but that "
                                  "no document mentions (a sister town, another year's festival), answered with a "
                                  "refusal. Each is checked against the whole library first.")
        self.near_miss_probes = QSpinBox()
        self.near_miss_probes.setRange(0, prompts.MAX_NEAR_MISS_PROBES)
        self.near_miss_probes.setToolTip("Per training chunk: other near-miss questions, never trained on, kept to "
                                         "measure whether the tuned model makes things up about them (leakage)")
        self.budget = QLineEdit()
        self.budget.setPlaceholderText("no budget")
        self.budget.setToolTip("US dollars. A run stops cleanly before its spend would pass this; the next run "
                               "continues where it stopped. Needs the model's price (see the estimate).")
        self.pairs = QSpinBox()
        self.pairs.setRange(0, MAX_PAIRS_PER_CHUNK)
        self.pairs.setSpecialValueText("Automatic (about 4 per 500 tokens)")
        self.pairs.setToolTip("How many questions the teacher writes for each chunk")
        self.mix: dict[str, QSpinBox] = {}
        mix_row = QWidget()
        mix_layout = QGridLayout(mix_row)
        mix_layout.setContentsMargins(0, 0, 0, 0)
        for position, qtype in enumerate(prompts.QTYPES):
            spin = QSpinBox()
            spin.setRange(0, 100)
            spin.setSuffix(" %")
            spin.setToolTip(prompts.QTYPE_HELP.get(qtype, ""))
            spin.valueChanged.connect(self._update_mix_total)
            self.mix[qtype] = spin
            label = QLabel(QTYPE_LABELS.get(qtype, qtype) + ":")
            label.setToolTip(spin.toolTip())
            row, column = divmod(position, 2)
            mix_layout.addWidget(label, row, 2 * column)
            mix_layout.addWidget(spin, row, 2 * column + 1)
        mix_layout.setColumnStretch(4, 1)
        self.mix_total = QLabel()
        self.mix_total.setStyleSheet("color: gray;")
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("none: the conversations have no system message")
        self.system_prompt.setMaximumHeight(70)
        self.style = QPlainTextEdit()
        self.style.setPlaceholderText(prompts.DEFAULT_STYLE)
        self.style.setMaximumHeight(70)
        self.judge = QCheckBox("Have a judge check the answers")
        self.judge.setToolTip("One more call per chunk, at temperature 0: is each question standalone, answerable, "
                              "supported by the chunk and fully answered? Rows that fail are kept as rejected.")
        self.judge.toggled.connect(self._update_judge)
        self.judge_provider = QComboBox()
        self.judge_provider.addItem("Same as the teacher", None)
        for pid in provider_ids:
            self.judge_provider.addItem(pid, pid)
        self.judge_model = QLineEdit()
        self.judge_model.setPlaceholderText("the teacher's model (or the provider's default model)")
        self.concurrency = QSpinBox()
        self.concurrency.setRange(1, MAX_CONCURRENCY)
        self.concurrency.setToolTip("Calls in flight at once; lowered by itself when the provider rate-limits")

        self.form = QFormLayout()
        self.form.addRow("Teacher model:", self.teacher_model)
        self.form.addRow("Recipe:", self.recipe)
        self.form.addRow("Questions per fact:", self.questions_per_fact)
        self.form.addRow("Fact statements:", self.statements)
        self.form.addRow("Near-miss refusals per chunk:", self.near_miss)
        self.form.addRow("Held-out near-miss probes:", self.near_miss_probes)
        self.form.addRow("Questions per chunk:", self.pairs)
        self.form.addRow("Question mix:", mix_row)
        self.form.addRow("", self.mix_total)
        self.recipe_rows = {"facts": [self.questions_per_fact, self.statements, self.near_miss, self.near_miss_probes],
                            "plain": [self.pairs, mix_row, self.mix_total]}
        self.form.addRow("Budget per run (USD):", self.budget)
        self.form.addRow("Student system prompt:", self.system_prompt)
        self.form.addRow("Answer style:", self.style)
        self.form.addRow("Judge:", self.judge)
        self.form.addRow("Judge provider:", self.judge_provider)
        self.form.addRow("Judge model:", self.judge_model)
        self.form.addRow("Parallel calls:", self.concurrency)
        note = QLabel("Saved with the project. Chunks generated before keep their rows; Regenerate Chunk… applies "
                      "these options to one chunk.")
        note.setWordWrap(True)
        note.setStyleSheet("color: gray;")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel
                                   | QDialogButtonBox.StandardButton.RestoreDefaults)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.defaults_button = buttons.button(QDialogButtonBox.StandardButton.RestoreDefaults)
        self.defaults_button.clicked.connect(lambda: self.set_options(GenerateOptions()))
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addLayout(self.form)
        layout.addWidget(note)
        layout.addWidget(buttons)
        self.set_options(options)

    def set_options(self, options: GenerateOptions) -> None:
        index = self.recipe.findData(options.recipe)
        self.recipe.setCurrentIndex(max(0, index))  # an unknown stored recipe shows the default
        self.questions_per_fact.setValue(options.questions_per_fact)
        self.statements.setChecked(options.statements)
        self.near_miss.setValue(options.near_miss_per_chunk)
        self.near_miss_probes.setValue(options.near_miss_probes_per_chunk)
        self.budget.setText(f"{options.budget_usd:g}" if options.budget_usd is not None else "")
        self.pairs.setValue(options.pairs_per_chunk or 0)
        for qtype, spin in self.mix.items():
            spin.setValue(round(options.mix.get(qtype, 0.0)))
        self.system_prompt.setPlainText(options.system_prompt)
        self.style.setPlainText(options.style)
        self.judge.setChecked(options.judge)
        index = self.judge_provider.findData(options.judge_provider)
        if index < 0 and options.judge_provider:  # a provider removed since: shown, so the run names it
            self.judge_provider.addItem(f"{options.judge_provider} (not configured)", options.judge_provider)
            index = self.judge_provider.count() - 1
        self.judge_provider.setCurrentIndex(max(0, index))
        self.judge_model.setText(options.judge_model or "")
        self.concurrency.setValue(options.concurrency)
        self._update_judge()
        self._update_mix_total()
        self._update_recipe()

    def options(self) -> GenerateOptions:
        """The options as set (``OptionError`` for a budget that is not a positive amount)."""
        return GenerateOptions(
            recipe=self.recipe.currentData(),
            questions_per_fact=self.questions_per_fact.value(),
            statements=self.statements.isChecked(),
            near_miss_per_chunk=self.near_miss.value(),
            near_miss_probes_per_chunk=self.near_miss_probes.value(),
            budget_usd=parse_budget(self.budget.text()),
            pairs_per_chunk=self.pairs.value() or None,
            mix={qtype: float(spin.value()) for qtype, spin in self.mix.items()},
            system_prompt=self.system_prompt.toPlainText().strip(),
            style=self.style.toPlainText().strip(),
            judge=self.judge.isChecked(),
            judge_provider=self.judge_provider.currentData(),  # kept while the judge is off, for when it is back
            judge_model=self.judge_model.text().strip() or None,
            concurrency=self.concurrency.value(),
        )

    def chosen_teacher_model(self) -> str | None:
        return self.teacher_model.currentText().strip() or None

    def _update_recipe(self) -> None:
        """Show the knobs of the recipe chosen; the other recipe's keep their values, for when it is chosen again."""
        chosen = self.recipe.currentData()
        for recipe, widgets in self.recipe_rows.items():
            for widget in widgets:
                self.form.setRowVisible(widget, recipe == chosen)

    def _update_judge(self) -> None:
        for widget in (self.judge_provider, self.judge_model):
            widget.setEnabled(self.judge.isChecked())

    def _update_mix_total(self) -> None:
        total = sum(spin.value() for spin in self.mix.values())
        if total == 0:
            self.mix_total.setText("Give at least one type a share.")
        elif total == 100:
            self.mix_total.setText("Total 100%.")
        else:
            self.mix_total.setText(f"Total {total}%: the shares are used in proportion.")

    def show_error(self, message: str) -> None:
        self.banner.show_message(message, level="error")

    def accept(self) -> None:
        if self._save(self):
            super().accept()


class ModelDialog(QDialog):
    """Asked when Generate finds no model: the teacher has no default model and none was chosen. The box offers
    the models the provider lists (filled in when the page's test of the provider comes back); any name can be
    typed. OK keeps the choice as the teacher's model and goes on with Generate."""

    def __init__(self, provider_id: str, models: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Choose the Teacher's Model")
        self.setMinimumWidth(460)
        self.text = QLabel(f"The teacher <b>{html.escape(provider_id)}</b> has no default model. Which of its "
                           "models should write the questions and answers?")
        self.text.setWordWrap(True)
        self.model = model_combo("a model name")
        fill_models(self.model, models, models[0] if len(models) == 1 else "")
        self.status = QLabel("" if models else "Asking the provider for its models…")
        self.status.setStyleSheet("color: gray;")
        self.status.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Use This Model")
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.model.currentTextChanged.connect(lambda _t: self._update_ok())
        form = QFormLayout()
        form.addRow("Model:", self.model)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        layout.addLayout(form)
        layout.addWidget(self.status)
        layout.addWidget(buttons)
        self._update_ok()

    def chosen(self) -> str:
        return self.model.currentText().strip()

    def show_models(self, models: list[str], problem: str = "") -> None:
        fill_models(self.model, models, self.chosen() or (models[0] if len(models) == 1 else ""))
        if models:
            self.status.setText(f"The provider offers {len(models)} model{'s' if len(models) != 1 else ''}.")
        else:
            self.status.setText((problem + " " if problem else "") + "Type the model's name.")
        self._update_ok()

    def _update_ok(self) -> None:
        self.ok_button.setEnabled(bool(self.chosen()))


# --- the page ------------------------------------------------------------------------------------------------

STATUS_FILTERS: list[tuple[str, str | None, str | None]] = [
    ("Any status", None, None), ("Accepted", "accepted", None), ("Rejected", "rejected", None),
    ("Pending", "pending", None),
    *[(f"Rejected by {gate}", "rejected", gate) for gate in review.GATES],
]


class DatasetPage(Page):
    """Generate with the teacher, review the rows, and read the report."""

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings],
                 update_settings: Callable[[Callable[[Settings], None]], None] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__("dataset", runner, settings, parent)
        self._update_settings = update_settings
        self.model_dialog: ModelDialog | None = None
        self.models_job: Job | None = None
        self.prepare_job: Job | None = None
        self.generate_job: Job | None = None
        self.regenerate_job: Job | None = None
        self.last_result: Any = None
        self.options = GenerateOptions()  # the open project's, loaded in set_project
        self.options_problem: str | None = None
        self.options_dialog: OptionsDialog | None = None
        self._run_budget: float | None = None  # the budget of the run in progress, for the progress line
        self._regenerating: str | None = None  # the chunk being regenerated

        self.label = QLabel()  # the empty state, or the title and the equivalent commands
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.teacher_label = QLabel()
        self.generate_button = QPushButton("Generate…")
        self.generate_button.setToolTip("Have the teacher write questions and answers for chunks that have none yet")
        self.generate_button.clicked.connect(self.generate)
        self.options_button = QPushButton("Options…")
        self.options_button.setToolTip("Recipe (facts or plain Q&A) and its knobs, budget, system prompt, answer "
                                       "style, judge and parallel calls, saved with the project")
        self.options_button.clicked.connect(self.open_options)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.progress_label = QLabel()
        top = QHBoxLayout()
        top.addWidget(self.generate_button)
        top.addWidget(self.options_button)
        top.addWidget(self.cancel_button)
        top.addWidget(self.progress_label, 1)
        top.addWidget(self.teacher_label)
        self.options_label = QLabel()  # what the next run will do
        self.options_label.setWordWrap(True)
        self.options_label.setTextFormat(Qt.TextFormat.PlainText)
        self.options_label.setStyleSheet("color: gray;")

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
        # Question and Answer share the width the short columns leave, so the table fits the window at any size
        # instead of scrolling sideways; the short ones can still be resized by hand.
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        for column, width in enumerate((0, 0, 96, 64, 86, 170)):
            if width:
                header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
                self.table.setColumnWidth(column, width)
            else:
                header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        self.table.action.connect(self._table_action)
        self.table.doubleClicked.connect(lambda _index: self.edit_current())
        self.table.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.table.customContextMenuRequested.connect(self._show_context_menu)
        self.table.selectionModel().currentRowChanged.connect(lambda *_: self._update_regenerate())
        self.context_menu: QMenu | None = None
        keys_hint = QLabel("Keys: A accept · R reject · Enter edit · J/K next/previous · right-click for more")
        keys_hint.setStyleSheet("color: gray;")
        self.regenerate_button = QPushButton("Regenerate Chunk…")
        self.regenerate_button.clicked.connect(self.regenerate_current)
        below = QHBoxLayout()
        below.addWidget(keys_hint, 1)
        below.addWidget(self.regenerate_button)

        self.report = QTextBrowser()  # the dataset's figures in words (the terminal's report is for `slowtune`)
        self.report.setOpenLinks(False)
        review_box = QWidget()
        review_layout = QVBoxLayout(review_box)
        review_layout.setContentsMargins(0, 0, 0, 0)
        review_layout.addLayout(filters)
        review_layout.addWidget(self.table, 1)
        review_layout.addLayout(below)
        self.splitter = QSplitter(Qt.Orientation.Vertical)
        self.splitter.addWidget(review_box)
        self.splitter.addWidget(self.report)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)

        layout = self.page_layout()
        layout.addWidget(self.banner)
        layout.addWidget(self.label)
        layout.addLayout(top)
        layout.addWidget(self.options_label)
        layout.addWidget(self.splitter, 1)
        self.refresh()

    # --- showing -------------------------------------------------------------------------------------------
    def project_set(self, changed: bool) -> None:
        super().project_set(changed)
        if self.options_dialog is not None:
            self.options_dialog.reject()  # it belongs to the project that was open
        self.options, self.options_problem = (load_options(self.project) if self.project is not None
                                              else (GenerateOptions(), None))
        if self.options_problem:
            self.banner.show_message(self.options_problem, level="warning")

    def command_line(self) -> str | None:
        """Generating the project's dataset, as a ``slowtune generate`` command line (the window's Copy as
        Command); None without a project."""
        if self.project is None:
            return None
        # Quoted for a shell: a path with a space ("Garden club") must reach the command as one argument.
        settings = self._settings()
        provider, model = settings.teacher_provider, settings.teacher_model
        return shlex.join(["slowtune", "generate", str(self.project.root)]
                          + (["--provider", provider] if provider else [])
                          + (["--model", model] if provider and model else []))

    def has_chunks(self) -> bool:
        if self.project is None:
            return False
        return library.has_chunks(self.project)

    def refresh(self) -> None:
        """Also when shown: documents, settings or rows may have changed while the page was hidden."""
        settings = self._settings()
        ready = self.has_chunks()
        if self.project is None:
            self.label.setText(NO_PROJECT_TEXT)
        elif not ready:
            self.label.setText(NO_DOCUMENTS_TEXT)
        else:
            self.label.setText("<h2 style='margin:0'>Dataset</h2>")
        for widget in (self.generate_button, self.options_button, self.options_label, self.teacher_label,
                       self.splitter):
            widget.setVisible(ready)
        self.options_label.setText(f"Each run: {self.options.summary()}.")
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
        documents: list[tuple[Any, str]] = [(None, "All documents"), *library.document_titles(self.project)]
        types: list[tuple[Any, str]] = [(None, "All types"), *((t, QTYPE_LABELS.get(t, t)) for t in question_types(self.project))]
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
        total = count_rows(self.project)
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
        self._update_regenerate()

    def refresh_report(self) -> None:
        if self.project is not None:
            self.report.setHtml(describe_report(review.report(self.project)))

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

    def build_context_menu(self) -> QMenu:
        """The table's context menu for the current row (shown on right-click)."""
        row = self.current_dataset_row()
        menu = QMenu(self)
        actions: list[tuple[str, Callable[[], None]]] = [
            ("Accept", lambda: self.set_current_status("accepted")),
            ("Reject", lambda: self.set_current_status("rejected")),
            ("Edit…", self.edit_current),
        ]
        for text, slot in actions:
            action = QAction(text, menu)
            action.setEnabled(row is not None)
            action.triggered.connect(slot)
            menu.addAction(action)
        menu.addSeparator()
        regenerate = QAction("Regenerate Chunk…", menu)
        regenerate.setEnabled(self.regenerate_button.isEnabled())
        regenerate.setToolTip(self.regenerate_button.toolTip())
        regenerate.triggered.connect(self.regenerate_current)
        menu.addAction(regenerate)
        menu.setToolTipsVisible(True)
        return menu

    def _show_context_menu(self, pos: QPoint) -> None:
        index = self.table.indexAt(pos)
        if index.isValid():
            self.table.selectRow(index.row())
            self.table.setCurrentIndex(self.model.index(index.row(), 0))
        self.context_menu = self.build_context_menu()
        self.context_menu.popup(self.table.viewport().mapToGlobal(pos))

    # --- regenerating a chunk ------------------------------------------------------------------------------
    def regenerate_state(self) -> tuple[bool, str]:
        """Whether the current row's chunk can be generated again, and why not."""
        row = self.current_dataset_row()
        if self.project is None or row is None:
            return False, "Select a row to ask the teacher again for its chunk"
        if row.provenance.chunk_id is None:
            return False, "This row was not written from a chunk (imported or added by hand): there is nothing " \
                          "to regenerate"
        if self.busy():
            return False, "Wait for the running generation to finish"
        if review.chunk_rows(self.project, row.provenance.chunk_id) is None:
            return False, "This row's chunk is no longer in the library (its document was removed or changed)"
        return True, "Ask the teacher again for this row's chunk; the rows you edited are kept"

    def _update_regenerate(self) -> None:
        enabled, why = self.regenerate_state()
        self.regenerate_button.setEnabled(enabled)
        self.regenerate_button.setToolTip(why)

    def regenerate_current(self) -> Job | None:
        """Ask (naming what is replaced and kept), then regenerate the current row's chunk in a job."""
        enabled, why = self.regenerate_state()
        row = self.current_dataset_row()
        if not enabled or self.project is None or row is None or row.provenance.chunk_id is None:
            if row is not None:
                self.banner.show_message(why + ".", level="warning")
            return None
        settings = self._settings()
        if not settings.teacher_provider:
            self.banner.show_message(NO_TEACHER_MESSAGE, level="warning")
            return None
        try:
            self.options.validate()
        except OptionError as exc:
            self.banner.show_message(f"{exc}. Fix it in Options…; nothing was changed or sent.", level="error")
            return None
        from slowtune.teacher import providers

        try:
            provider = providers.get_provider(settings.teacher_provider)
        except providers.ProviderError as exc:
            self.banner.show_message(str(exc), level="error")
            return None
        chunk_id = row.provenance.chunk_id
        info = review.chunk_rows(self.project, chunk_id)
        if info is None:
            return None
        text = regenerate_text(info, providers.destination(provider), settings.teacher_model or provider.default_model,
                               remote=providers.is_remote(provider))
        if not ask(self, "Regenerate Chunk?", text, "Regenerate"):
            self.banner.show_message("Nothing was changed.")
            return None
        self.banner.clear()
        job = Job("Regenerating a chunk", regenerate_function(self.project.root, chunk_id, settings.teacher_provider,
                                                              settings.teacher_model, self.options),
                  key=str(self.project.root), stage_names=REGENERATE_STAGES, min_interval=0.25)
        self.regenerate_job = job
        self._regenerating = chunk_id
        self._run_budget = self.options.budget_usd
        if not self.start_job(job, progress=self._regenerate_progress, finished=self._regenerated, failed=self._failed,
                              cancelled=lambda: self.banner.show_message(
                                  "Regeneration was cancelled before anything changed.", level="warning"),
                              done=self._regeneration_done):
            self.regenerate_job = None
            self._regenerating = None
            return None
        self.progress_label.setText("Regenerating the chunk…")
        self._update_busy()
        return job

    def _regenerate_progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if stage == "prepare":
            self.progress_label.setText(f"Regenerating the chunk: {status}…" if status else "Regenerating the chunk…")
        else:
            self.progress_label.setText(progress_text("Regenerating the chunk", done, total, metrics,
                                                      self._run_budget))

    def _regenerated(self, result: object) -> None:
        self.last_result = result
        level, message = describe_regeneration(result)
        self.banner.show_message(message, level=level)

    def _regeneration_done(self) -> None:
        chunk_id, self._regenerating = self._regenerating, None
        self.progress_label.clear()
        self.refresh()
        # Show the chunk's new rows: the row that was selected is gone unless it was an edited one.
        if chunk_id is not None and self.current_dataset_row() is None:
            for position, row in enumerate(self.model.rows):
                if row.provenance.chunk_id == chunk_id:
                    self.table.selectRow(position)
                    self.table.setCurrentIndex(self.model.index(position, 0))
                    break
        self._update_regenerate()

    # --- the teacher's model --------------------------------------------------------------------------------
    def set_teacher_model(self, model: str | None) -> None:
        """Keep ``model`` as the teacher's model (the app's settings, shared with the Providers page)."""
        def change(settings: Settings) -> None:
            settings.teacher_model = model

        if self._update_settings is not None:
            self._update_settings(change)

    def ask_for_model(self, provider: Any) -> ModelDialog:
        """The model dialog, filled with the models the provider listed before, and with those it lists now (a
        test of the provider in a job)."""
        from slowtune.teacher import providers

        if self.model_dialog is not None:
            self.model_dialog.reject()
        known = providers.known_models(provider)
        dialog = ModelDialog(provider.id, known, self)
        dialog.accepted.connect(lambda: self._model_chosen(dialog.chosen()))
        dialog.finished.connect(dialog.deleteLater)
        dialog.finished.connect(lambda _code: setattr(self, "model_dialog", None))
        self.model_dialog = dialog
        self.banner.show_message(f"The teacher {provider.id} has no default model: choose one to generate with.",
                                 level="warning")
        dialog.open()
        if not known and self.models_job is None:
            self._list_models(provider)
        return dialog

    def _list_models(self, provider: Any) -> None:
        from slowtune.teacher import providers

        def run(progress: Progress) -> Any:
            return providers.check_provider(provider)

        job = Job(f"Listing the models of {provider.id}", run, key=f"provider-check:{provider.id}")
        self.models_job = job

        def finished(check: object) -> None:
            models = list(getattr(check, "models", []) or [])
            if not getattr(check, "ok", False):
                job.failure = str(getattr(check, "message", ""))
            if self.model_dialog is not None:
                problem = "" if models else "The provider did not list its models."
                self.model_dialog.show_models(models, problem)

        def failed(message: str, _details: str) -> None:
            if self.model_dialog is not None:
                self.model_dialog.show_models([], f"The provider could not be asked ({message}).")

        if not self.start_job(job, finished=finished, failed=failed,
                              done=lambda: setattr(self, "models_job", None)):
            self.models_job = None
            if self.model_dialog is not None:
                self.model_dialog.show_models([])

    def _model_chosen(self, model: str) -> None:
        if not model:
            return
        self.set_teacher_model(model)
        self.refresh()
        self.generate()

    # --- options -------------------------------------------------------------------------------------------
    def open_options(self) -> OptionsDialog | None:
        """The options dialog (window-modal, non-blocking); OK saves the options with the project."""
        if self.project is None:
            return None
        from slowtune.teacher import providers

        try:
            provider_ids = [p.id for p in providers.list_providers()]
        except providers.ProviderError:
            provider_ids = []  # the Providers page says what is wrong with the list; "same as the teacher" works
        settings = self._settings()
        teacher = settings.teacher_provider
        provider = next((p for p in providers.list_providers() if p.id == teacher), None) if teacher else None
        dialog = OptionsDialog(self._save_options, self.options, provider_ids, self, teacher=teacher,
                               teacher_model=settings.teacher_model,
                               models=providers.known_models(provider) if provider is not None else [],
                               default_model=provider.default_model if provider is not None else None)
        dialog.finished.connect(dialog.deleteLater)
        dialog.finished.connect(lambda _code: setattr(self, "options_dialog", None))
        self.options_dialog = dialog
        dialog.open()
        return dialog

    def _save_options(self, dialog: OptionsDialog) -> bool:
        try:
            options = dialog.options()
            options.validate()
        except OptionError as exc:
            dialog.show_error(str(exc) + ".")
            return False
        if self.project is None:
            return False
        model = dialog.chosen_teacher_model()
        if dialog.teacher_model.isEnabled() and model != self._settings().teacher_model:
            self.set_teacher_model(model)
        save_options(self.project, options)
        self.options = options
        self.options_problem = None
        self.refresh()
        return True

    # --- generating ----------------------------------------------------------------------------------------
    def page_jobs(self) -> tuple[Job | None, ...]:
        return self.prepare_job, self.generate_job, self.regenerate_job

    def _update_busy(self) -> None:
        busy = self.busy()
        self.generate_button.setEnabled(not busy)
        self.cancel_button.setVisible(busy)
        self._update_regenerate()

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
            self.banner.show_message(NO_TEACHER_MESSAGE, level="warning")
            return None
        try:
            self.options.validate()
        except OptionError as exc:
            self.banner.show_message(f"{exc}. Fix it in Options… (next to Generate); nothing was sent.",
                                     level="error")
            return None
        from slowtune.teacher import providers

        try:
            provider = providers.get_provider(settings.teacher_provider)
        except providers.ProviderError as exc:
            self.banner.show_message(str(exc), level="error")
            return None
        if not (settings.teacher_model or provider.default_model):
            self.ask_for_model(provider)  # Generate goes on when a model is chosen
            return None
        self.banner.clear()
        job = Job("Preparing generation", prepare_function(self.project.root, settings.teacher_provider,
                                                           settings.teacher_model, self.options),
                  key=str(self.project.root))
        self.prepare_job = job
        if not self.start_job(job, finished=self._prepared, failed=self._failed, done=self._update_busy):
            self.prepare_job = None
            return None
        self.progress_label.setText("Asking the teacher what it supports and estimating…")
        self._update_busy()
        return job

    def _prepared(self, prepared: object) -> None:
        self.progress_label.clear()
        if prepared is None:
            self.banner.show_message("Every chunk already has generated rows. The report below shows them; "
                                     "Regenerate Chunk… asks again for one chunk.")
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
        job = Job("Generating questions", generate_function(self.project.root, prepared),
                  key=str(self.project.root), stage_names=GENERATE_STAGES, min_interval=0.25)
        self.generate_job = job
        self._run_budget = prepared.options.budget_usd
        # Queued: this is called from the preparing job's `finished`, while the runner still counts it as running.
        if not self.start_job(job, queue=True, progress=self._progress, finished=self._generated, failed=self._failed,
                              cancelled=lambda: self.banner.show_message("Generation was cancelled.", level="warning"),
                              done=self._generation_done):
            self.generate_job = None
            return None
        self.progress_label.setText(f"Sending {prepared.chunks:,} chunks to {prepared.choice.destination}…")
        self._update_busy()
        return job

    def _progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        self.progress_label.setText(progress_text("Generating", done, total, metrics, self._run_budget))

    def _generated(self, result: object) -> None:
        self.last_result = result
        level, message = describe_result(result, self._run_budget)
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
        for job in (self.prepare_job, self.generate_job, self.regenerate_job):
            if job is not None and not job.is_over:
                job.cancel()
