"""The Train page's wizard: from a base model to a run that is ready to start.

Four steps, embedded in the Train page (``slowtune.gui.train``): the base model (the catalog with sizes and a
"fits" badge, downloads with progress, a local folder, a GGUF file or an Ollama model imported), the data (rows,
tokens, split), the settings (presets Quick / Balanced / Thorough, and an Advanced section with the actual values)
and the check (the engine, the memory estimate against this Mac's memory, the predicted time). Downloads, imports
and the check run as in-process ``Job``s through the Qt-free core: the models offered and their badges are
``slowtune.train.fit``, the presets and settings ``slowtune.train.settings``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from slowtune import system
from slowtune.dataset import DataSummary, data_summary
from slowtune.gui.page import Page
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import MessageBanner
from slowtune.gui.workers import Job
from slowtune.models import catalog
from slowtune.models.catalog import ModelError, describe_local
from slowtune.models.check import alternatives, check_model
from slowtune.progress import Progress, format_duration
from slowtune.train.fit import (
    ModelRow,
    PreflightResult,
    estimate_text,
    gb,
    gui_text,
    model_rows,
    preflight_function,
)
from slowtune.train.settings import PRESETS, TrainSettings

CATALOG = catalog.CATALOG  # module-level name: tests offer a model of the fake hub through it

DOWNLOAD_KEY = "model-download"  # downloads are not tied to a project: one at a time, beside a project's job
CHECK_KEY = "model-check"  # the check of a picked model: queued one behind the other, beside a project's job
PREFLIGHT_STAGES = {"preflight": "checking"}
FIT_COLORS = {"memory": "#2f9e44", "streamed": "#d9480f", "too_large": "#e03131", "unsupported": "#e03131",
              "unknown": "#868e96"}
TOKEN_HINT = ("Accept the model's licence on its Hugging Face page, then save your Hugging Face token on the "
              "Providers page.")


# --- downloads, imports, dialogs and tables ---------------------------------------------------------------------

def download_function(repo_id: str) -> Callable[[Progress], Path]:
    def run(progress: Progress) -> Path:
        from slowtune.models.hub import HubError, download

        try:
            return download(repo_id, progress=progress)
        except HubError as exc:
            if exc.kind in ("gated", "unauthorized", "forbidden"):
                raise HubError(f"{exc} {TOKEN_HINT}", kind=exc.kind, repo_id=exc.repo_id) from exc
            raise

    return run


def choose_folder(parent: QWidget) -> Path | None:
    """A model folder picked by the user, or None. Module-level so tests can answer it."""
    folder = QFileDialog.getExistingDirectory(parent, "Choose a Model Folder", str(Path.home()))
    return Path(folder) if folder else None


def choose_gguf(parent: QWidget) -> Path | None:
    """A GGUF file picked by the user, or None. Module-level so tests can answer it."""
    file, _ = QFileDialog.getOpenFileName(parent, "Import a GGUF Model", str(Path.home()), "GGUF models (*.gguf)")
    return Path(file) if file else None


def check_function(folder: Path) -> Callable[[Progress], list[str]]:
    def run(progress: Progress) -> list[str]:
        return check_model(folder)

    return run


def import_function(source: Path, *, name: str | None = None,
                    origin: dict[str, str] | None = None) -> Callable[[Progress], Any]:
    def run(progress: Progress) -> Any:
        from slowtune.models.gguf_import import import_gguf

        return import_gguf(source, name=name, origin=origin, replace=True, progress=progress)

    return run


def table_item(text: str, *, tooltip: str = "", color: str | None = None, data: object = None) -> QTableWidgetItem:
    """A read-only cell (of the wizard's model list, or the Train page's runs)."""
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if tooltip:
        item.setToolTip(tooltip)
    if color:
        item.setForeground(QColor(color))
    if data is not None:
        item.setData(Qt.ItemDataRole.UserRole, data)
    return item


def new_table(columns: tuple[str, ...], stretch: int = 0) -> QTableWidget:
    """A read-only table of whole rows, one selected at a time; column ``stretch`` takes the spare width."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(list(columns))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.verticalHeader().hide()
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    return table


# --- the wizard ------------------------------------------------------------------------------------------------

class ModelWizardPage(QWizardPage):
    COLUMNS = ("Model", "Parameters", "Size", "On this Mac", "Fits", "Licence")

    def __init__(self, owner: Page, wizard: TrainWizard) -> None:
        super().__init__()
        self.owner = owner  # the Train page: its project and its job runner
        self.train_wizard = wizard  # the wizard this step is part of (being built while the steps are)
        self.setTitle("Base model")
        self.setSubTitle("The model your adapter is trained on. Smaller models train and answer faster; larger ones "
                         "write better answers.")
        self.rows: list[ModelRow] = []
        self.folders: list[Path] = []
        self.download_job: Job | None = None
        self.checks: dict[Path, list[str]] = {}  # what check_model found for each folder picked (a job each)
        self.check_jobs: dict[Path, Job] = {}
        self.banner = MessageBanner()
        self.machine_label = QLabel()
        self.table = new_table(self.COLUMNS)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setOpenExternalLinks(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download)
        self.cancel_download_button = QPushButton("Cancel Download")
        self.cancel_download_button.clicked.connect(self.cancel_download)
        self.folder_button = QPushButton("Choose a Folder…")
        self.folder_button.setToolTip("A model folder on this Mac (Hugging Face or MLX layout, safetensors weights)")
        self.folder_button.clicked.connect(self.choose_folder)
        self.gguf_button = QPushButton("Import a GGUF…")
        self.gguf_button.setToolTip("A GGUF file (from LM Studio, llama.cpp or elsewhere): it is converted into a "
                                    "model folder slowtune trains, and checked against llama.cpp")
        self.gguf_button.clicked.connect(self.import_gguf)
        self.ollama_button = QPushButton("Import from Ollama")
        self.ollama_button.clicked.connect(self.import_ollama)
        self.import_job: Job | None = None
        self.download_bar = QProgressBar()
        self.download_bar.setTextVisible(False)
        self.download_label = QLabel()
        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.ollama_button)
        buttons.addWidget(self.cancel_download_button)
        buttons.addWidget(self.download_bar, 1)
        buttons.addWidget(self.download_label)
        buttons.addStretch(0)
        buttons.addWidget(self.gguf_button)
        buttons.addWidget(self.folder_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.machine_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(self.detail)
        self._show_download(False)

    def initializePage(self) -> None:
        self.banner.clear()
        self.checks.clear()  # the folders may have changed since the last pass
        self.fill()

    def fill(self) -> None:
        """List the models with what is on this Mac and whether each fits its memory now."""
        memory = system.memory()
        self.machine_label.setText(f"This Mac: {gb(memory.total_bytes)} memory, {gb(memory.available_bytes)} "
                                   "available now.")
        current = self.current_row()
        selected = current.key if current else None
        self.rows = model_rows(self.folders, memory, CATALOG)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            fits = "not exportable" if row.export_problem else row.fit.label
            values = (row.name, row.params, row.size, row.where or "—", fits, row.licence)
            for column, text in enumerate(values):
                item = table_item(text, data=row.key if column == 0 else None)
                if column == 4:
                    item.setForeground(QColor(FIT_COLORS["too_large" if row.export_problem else row.fit.kind]))
                    item.setToolTip(row.export_problem or row.fit.reason)
                elif column == 3 and row.where:
                    item.setForeground(QColor(FIT_COLORS["memory"]))
                    item.setToolTip(str(row.path))
                elif column == 0 and row.entry is not None:
                    item.setToolTip(row.entry.repo_id)
                self.table.setItem(i, column, item)
        self.table.blockSignals(False)
        target = next((i for i, r in enumerate(self.rows) if r.key == selected), None)
        if target is None:
            target = next((i for i, r in enumerate(self.rows) if r.path is not None), None)
        if target is None:
            target = next((i for i, r in enumerate(self.rows) if r.key == catalog.QWEN25_05B.repo_id), 0)
        if self.rows:
            self.table.selectRow(target)
        self._selection_changed()

    def current_row(self) -> ModelRow | None:
        selected = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not selected or not self.rows:
            return None
        index = selected[0].row()
        return self.rows[index] if 0 <= index < len(self.rows) else None

    def select(self, key: str) -> bool:
        for i, row in enumerate(self.rows):
            if row.key == key:
                self.table.selectRow(i)
                return True
        return False

    def _selection_changed(self) -> None:
        row = self.current_row()
        downloading = self.download_job is not None and not self.download_job.is_over
        self.download_button.setVisible(row is not None and row.path is None and row.entry is not None)
        self.download_button.setEnabled(not downloading)
        importing = self.import_job is not None and not self.import_job.is_over
        self.ollama_button.setVisible(row is not None and row.ollama is not None)
        self.ollama_button.setEnabled(not importing)
        self.gguf_button.setEnabled(not importing)
        if row is not None and row.path is not None and row.path not in self.checks:
            self.check_model(row.path)
        self.detail.setText(self._describe(row) if row else "Choose a model, or a model folder on this Mac.")
        emit(self.completeChanged)

    # --- can it be trained and exported? -------------------------------------------------------------------
    def check_model(self, folder: Path) -> Job | None:
        """Check ``folder`` in a job (its files are read, the page keeps answering); the answer shows when done."""
        if folder in self.check_jobs and not self.check_jobs[folder].is_over:
            return self.check_jobs[folder]
        job = Job(f"Checking {folder.name}", check_function(folder), key=CHECK_KEY)
        self.check_jobs[folder] = job
        self.owner.start_job(job, queue=True, finished=partial(self._model_checked, folder),
                             failed=partial(self._model_check_failed, folder))
        return job

    def checked(self) -> bool:
        """Whether the chosen model's check is over (whatever it found)."""
        path = self.model_path()
        return path is not None and path in self.checks

    def _model_checked(self, folder: Path, problems: object) -> None:
        self.checks[folder] = list(problems) if isinstance(problems, list) else []
        self._selection_changed()

    def _model_check_failed(self, folder: Path, message: str, _details: str) -> None:
        self.checks[folder] = [f"It could not be checked: {message}"]
        self._selection_changed()

    def _check_text(self, row: ModelRow) -> str:
        assert row.path is not None
        problems = self.checks.get(row.path)
        if problems is None:
            return "<i>Checking that it can be trained and exported…</i>"
        if not problems:
            return (f"<span style='color:{FIT_COLORS['memory']}'>Ready</span>: it can be trained here, then "
                    "exported for llama.cpp, Ollama and LM Studio.")
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        others = ", ".join(alternatives(CATALOG))
        return (f"<span style='color:{FIT_COLORS['too_large']}'><b>This model cannot be used.</b></span>"
                f"<ul style='margin-top:0'>{items}</ul>Models that work: {html.escape(others)} (in the list above; "
                "Download fetches one).")

    def _describe(self, row: ModelRow) -> str:
        parts = [f"<b>{html.escape(row.name)}</b>"]
        if row.entry is not None:
            entry = row.entry
            parts.append(f"<a href='{html.escape(entry.url)}'>{html.escape(entry.repo_id)}</a> · {entry.licence} · "
                         f"context {entry.context_length:,} tokens")
            if entry.gated and row.path is None:
                parts.append(f"Gated: {TOKEN_HINT}")
            if row.path is None:
                parts.append(f"Not on this Mac yet: Download fetches about {entry.download_gb:g} GB once (into the "
                             "Hugging Face cache, shared with other tools); after that it works offline.")
        if row.path is not None:
            parts.append(f"In <code>{html.escape(str(row.path))}</code>")
        if row.ollama is not None:
            parts.append(f"An Ollama model ({html.escape(str(row.ollama.gguf))}). Import from Ollama converts it "
                         "into a model folder slowtune trains (Ollama's copy is not changed).")
        parts.extend(html.escape(n) for n in row.notes)
        parts.append(f"<span style='color:{FIT_COLORS[row.fit.kind]}'>{html.escape(row.fit.label.capitalize())}"
                     f"</span>: {html.escape(row.fit.reason)}")
        if row.path is not None:
            parts.append(self._check_text(row))
        return "<br>".join(parts)

    def isComplete(self) -> bool:
        row = self.current_row()
        return (row is not None and row.path is not None and row.export_problem is None
                and row.fit.kind != "unsupported" and self.checks.get(row.path) == [])

    def model_path(self) -> Path | None:
        row = self.current_row()
        return row.path if row else None

    # --- a local folder ----------------------------------------------------------------------------------
    def choose_folder(self) -> None:
        folder = choose_folder(self)
        if folder is None:
            return
        try:
            info = describe_local(folder)
        except ModelError as exc:
            self.banner.show_message(str(exc), level="error")
            return
        if info.problem:  # refused when chosen, not after training: the family, or the vision tower, and the list
            words = " ".join(check_model(folder)) or info.problem
            self.banner.show_message(f"{folder.name} cannot be used. {words} Models that work: "
                                     f"{', '.join(alternatives(CATALOG))}.", level="error")
            return
        self.banner.clear()
        folder = folder.expanduser().resolve()
        if folder not in self.folders:
            self.folders.insert(0, folder)
        self.fill()
        self.select(str(folder))

    # --- importing a GGUF file or an Ollama model ----------------------------------------------------------
    def import_gguf(self) -> Job | None:
        file = choose_gguf(self)
        if file is None:
            return None
        return self._start_import(file.expanduser().resolve(), file.stem, None)

    def import_ollama(self) -> Job | None:
        row = self.current_row()
        if row is None or row.ollama is None:
            return None
        name = row.ollama.name.replace(":", "-").replace("/", "-")
        return self._start_import(row.ollama.gguf, name, {"ollama": row.ollama.name})

    def _start_import(self, source: Path, name: str, origin: dict[str, str] | None) -> Job | None:
        if self.import_job is not None and not self.import_job.is_over:
            return None
        self.banner.clear()
        job = Job(f"Importing {source.name}", import_function(source, name=name, origin=origin), key=DOWNLOAD_KEY,
                  stage_names={"import": "converting", "check": "checking against llama.cpp"}, min_interval=0.25)
        self.import_job = job
        if not self.owner.start_job(job, progress=self._import_progress, finished=self._imported,
                                    failed=self._download_failed, done=self._download_done,
                                    cancelled=lambda: self.banner.show_message(
                                        "The import was stopped; nothing was written.")):
            self.import_job = None
            self.banner.show_message("A download or import is running; wait for it to finish.", level="warning")
            return None
        self.download_bar.setRange(0, 0)
        self.download_label.setText(f"Reading {source.name}…")
        self._show_download(True)
        self._selection_changed()
        return job

    def _import_progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if isinstance(total, int | float) and total > 0:
            self.download_bar.setRange(0, 1000)
            self.download_bar.setValue(round(1000 * min(1.0, done / total)))
        what = "Checking against llama.cpp" if stage == "check" else "Converting"
        self.download_label.setText(f"{what}… {status}" if status else f"{what}…")

    def _imported(self, result: object) -> None:
        folder = Path(getattr(result, "folder", ""))
        self.fill()  # imported models are listed from the models folder, as "Imported"
        self.select(str(folder))
        r = result
        self.banner.show_message(
            f"Imported as {folder.name}: its tokenizer splits all {r.tokenizer_strings} test texts as llama.cpp "
            f"does, and it picks llama.cpp's next token at {r.top1_agreement:.1%} of {r.positions} positions "
            f"({r.top1_agreement_confident:.1%} of those that are not near-ties).")

    def import_cancel(self) -> None:
        if self.import_job is not None and not self.import_job.is_over:
            self.import_job.cancel()

    # --- downloading -------------------------------------------------------------------------------------
    def _show_download(self, shown: bool) -> None:
        for widget in (self.cancel_download_button, self.download_bar, self.download_label):
            widget.setVisible(shown)

    def download(self) -> Job | None:
        row = self.current_row()
        if row is None or row.entry is None or row.path is not None:
            return None
        if self.download_job is not None and not self.download_job.is_over:
            return None
        self.banner.clear()
        job = Job(f"Downloading {row.name}", download_function(row.entry.repo_id), key=DOWNLOAD_KEY,
                  stage_names={"download": "downloading"}, min_interval=0.25)
        self.download_job = job
        if not self.owner.start_job(job, progress=self._download_progress, finished=partial(self._downloaded, row.key),
                                    failed=self._download_failed, cancelled=self._download_cancelled,
                                    done=self._download_done):
            self.download_job = None
            self.banner.show_message("Another download is running; wait for it to finish.", level="warning")
            return None
        self.download_bar.setRange(0, 0)
        self.download_label.setText(f"Looking up {row.entry.repo_id}…")
        self._show_download(True)
        self._selection_changed()
        return job

    def _download_progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if isinstance(total, int | float) and total > 0:
            self.download_bar.setRange(0, 1000)
            self.download_bar.setValue(round(1000 * min(1.0, done / total)))
            file = metrics.get("file", "") if isinstance(metrics, dict) else ""
            self.download_label.setText(f"{gb(done)} of {gb(total)}" + (f" · {file}" if file else ""))
        elif status:
            self.download_label.setText(status)

    def _download_failed(self, message: str, details: str) -> None:
        self.banner.show_message(message, level="error", details=details)

    def _download_cancelled(self) -> None:
        self.banner.show_message("The download was stopped. Download again continues where it stopped.")

    def _downloaded(self, key: str, _folder: object = None) -> None:
        self.fill()
        self.select(key)
        row = self.current_row()
        name = row.name if row else key
        self.banner.show_message(f"{name} is downloaded. It is kept in the Hugging Face cache and works offline.")

    def _download_done(self) -> None:
        self._show_download(False)
        self._selection_changed()

    def cancel_download(self) -> None:
        if self.download_job is not None and not self.download_job.is_over:
            self.download_job.cancel()
        self.import_cancel()


class DataWizardPage(QWizardPage):
    def __init__(self, owner: Page, wizard: TrainWizard) -> None:
        super().__init__()
        self.owner = owner  # the Train page: its project and its job runner
        self.train_wizard = wizard  # the wizard this step is part of (being built while the steps are)
        self.summary: DataSummary | None = None
        self.setTitle("Data")
        self.setSubTitle("The project's accepted conversations. Review them on the Dataset page.")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextFormat(Qt.TextFormat.RichText)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addStretch(1)

    def initializePage(self) -> None:
        project = self.owner.project
        self.summary = data_summary(project) if project is not None else None
        s = self.summary
        if s is None or not s.train:
            self.label.setText("<p style='color:#e03131'><b>There is nothing to train on yet.</b></p><p>Accept some "
                               "conversations on the <b>Dataset</b> page first (the teacher writes them there).</p>")
        else:
            parts = [
                "<table cellspacing='6'>"
                f"<tr><td align='right'><b>{s.train:,}</b></td><td>conversations for training</td></tr>"
                f"<tr><td align='right'><b>{s.valid:,}</b></td><td>for validation: the validation loss on the "
                "chart, from passages the model does not train on (split by chunk)</td></tr>"
                f"<tr><td align='right'><b>{s.probe:,}</b></td><td>held-out probe questions, kept out of training "
                "for the evaluation on the Chat page</td></tr></table>",
                f"<p>About <b>{s.tokens:,}</b> tokens in all; the longest conversation has about {s.longest:,}. "
                "(Counted by slowtune's own counter; the model's tokenizer counts a little differently.)</p>",
            ]
            if s.shortfall:
                parts.append(f"<p style='color:#d9480f'>{html.escape(s.shortfall)}</p>")
            if not s.valid:
                parts.append("<p>No validation conversations: the chart will show the training loss only.</p>")
            if s.pending:
                parts.append(f"<p>{s.pending:,} conversations still wait for review on the Dataset page and are left "
                             "out.</p>")
            self.label.setText("".join(parts))
        emit(self.completeChanged)

    def isComplete(self) -> bool:
        return self.summary is not None and self.summary.train > 0


LEARNING_RATE_ERROR = "The learning rate must be a number between 0 and 1, such as 0.0001."


def parse_learning_rate(text: str) -> float | None:
    """The learning rate typed (``1e-4``, ``0.0005``), or None when it is not a number between 0 and 1."""
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if 0 < value < 1 and math.isfinite(value) else None


def _keep_space(widget: QWidget) -> None:
    """Hidden, ``widget`` keeps its place in the layout: showing it moves nothing (nothing jumps under the pointer)."""
    policy = widget.sizePolicy()
    policy.setRetainSizeWhenHidden(True)
    widget.setSizePolicy(policy)


class SettingsWizardPage(QWizardPage):
    def __init__(self, owner: Page, wizard: TrainWizard) -> None:
        super().__init__()
        self.owner = owner  # the Train page: its project and its job runner
        self.train_wizard = wizard  # the wizard this step is part of (being built while the steps are)
        self._filling = False
        self.setTitle("Settings")
        self.setSubTitle("Choose how hard to train. Advanced shows the actual values.")
        self.preset_group = QButtonGroup(self)
        self.preset_buttons: dict[str, QRadioButton] = {}
        presets = QVBoxLayout()
        for key, preset in PRESETS.items():
            button = QRadioButton(preset.title)
            self.preset_group.addButton(button)
            self.preset_buttons[key] = button
            button.toggled.connect(lambda on, key=key: on and self.apply_preset(key))
            caption = QLabel(preset.description)
            caption.setWordWrap(True)
            caption.setStyleSheet("color: gray; margin-left: 22px;")
            presets.addWidget(button)
            presets.addWidget(caption)
        self.custom_label = QLabel("Custom values (from Advanced)")
        self.custom_label.setStyleSheet("font-style: italic;")
        _keep_space(self.custom_label)  # shown or not, the fields below never move
        presets.addWidget(self.custom_label)

        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.toggled.connect(self._toggle_advanced)
        self.rank = QSpinBox()
        self.rank.setRange(1, 256)
        self.rank.setToolTip("Size of the adapter: higher learns more, needs more memory")
        self.learning_rate = QLineEdit()
        self.learning_rate.setToolTip("Peak learning rate, e.g. 1e-4 (warm-up, then cosine decay)")
        # Checked when the value is committed (Return, leaving the field, Next), never while typing: "0." and "1e-"
        # are on the way to a number. The message has its own place beside the field, kept while hidden.
        self.learning_rate_error = QLabel(LEARNING_RATE_ERROR)
        self.learning_rate_error.setStyleSheet("color: #e03131;")
        _keep_space(self.learning_rate_error)
        self.learning_rate_error.hide()
        self._committed_rate: float | None = None
        self.length_kind = QComboBox()
        self.length_kind.addItems(["Epochs", "Steps"])
        self.epochs = QDoubleSpinBox()
        self.epochs.setRange(0.1, 100.0)
        self.epochs.setDecimals(1)
        self.epochs.setSingleStep(0.5)
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setGroupSeparatorShown(True)
        self.max_seq_len = QSpinBox()
        self.max_seq_len.setRange(64, 32768)
        self.max_seq_len.setSingleStep(64)
        self.max_seq_len.setSuffix(" tokens")
        self.max_seq_len.setToolTip("Longer conversations are cut short; longer sequences need more memory")
        self.lora_layers = QSpinBox()
        self.lora_layers.setRange(0, 1024)
        self.lora_layers.setSpecialValueText("All blocks")
        self.lora_layers.setToolTip("Adapt only the top N transformer blocks")
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 64)
        self.batch_size.setToolTip("Conversations per step; smaller needs less memory")
        self.replay = QSpinBox()
        self.replay.setRange(0, 75)
        self.replay.setSuffix(" %")
        self.replay.setSpecialValueText("None")
        self.replay.setToolTip("Share of the training rows that are the base model's own answers to general questions, "
                               "written on this Mac before training: they keep the model itself where the documents "
                               "say nothing. Skipped, with a warning, when writing them would take more than a tenth "
                               "of the training.")
        self.scoring = QCheckBox("Check knowledge, retention and leakage as it trains, and keep the best checkpoint")
        self.scoring.setToolTip("Every few steps (at most a tenth of the training time) the model answers held-out "
                                "questions; export uses the checkpoint with the best balance, and the run stops early "
                                "when it stops learning the documents and starts forgetting what it knew.")
        length = QHBoxLayout()
        length.addWidget(self.length_kind)
        length.addWidget(self.epochs)
        length.addWidget(self.steps)
        self.advanced = QFrame()
        form = QFormLayout(self.advanced)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        form.addRow("LoRA rank", self.rank)
        rate = QHBoxLayout()
        rate.addWidget(self.learning_rate)
        rate.addWidget(self.learning_rate_error)
        form.addRow("Learning rate", rate)
        form.addRow("Length", length)
        form.addRow("Sequence length", self.max_seq_len)
        form.addRow("Layers", self.lora_layers)
        form.addRow("Batch size", self.batch_size)
        form.addRow("Replay", self.replay)
        form.addRow("", self.scoring)
        self.advanced.hide()
        for widget in (self.rank, self.epochs, self.steps, self.max_seq_len, self.lora_layers, self.batch_size,
                       self.replay):
            # valueChanged when the value is committed, not at each key: typing "30" is not a 3, then a 30.
            widget.setKeyboardTracking(False)
            widget.valueChanged.connect(self._edited)
        self.scoring.toggled.connect(self._edited)
        # One width for the fields, so they line up and "All blocks" or "1,024 tokens" is not squeezed.
        for widget in (self.rank, self.learning_rate, self.max_seq_len, self.lora_layers, self.batch_size):
            widget.setMinimumWidth(130)
        self.steps.setMinimumWidth(100)
        self.epochs.setMinimumWidth(100)
        self.learning_rate.editingFinished.connect(self.commit_learning_rate)
        # A message about the text before this edit is stale: it goes while typing (its space stays, so nothing
        # moves), and the next commit checks the new text.
        self.learning_rate.textEdited.connect(lambda _text: self.learning_rate_error.hide())
        self.length_kind.currentIndexChanged.connect(self._length_kind_changed)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addLayout(presets)
        layout.addSpacing(8)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self.base = TrainSettings.from_preset("balanced")
        self.fill(self.base)

    def initializePage(self) -> None:
        self._update_summary()

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def apply_preset(self, key: str) -> None:
        if not self._filling:
            self.fill(TrainSettings.from_preset(key))

    def fill(self, settings: TrainSettings) -> None:
        """Show ``settings`` (its preset button checked, or Custom)."""
        self._filling = True
        try:
            self.base = settings
            self.rank.setValue(settings.rank)
            self.learning_rate.setText(f"{settings.learning_rate:g}")
            self._committed_rate = settings.learning_rate
            self.learning_rate_error.hide()
            self.length_kind.setCurrentIndex(1 if settings.iters else 0)
            self.epochs.setValue(settings.epochs)
            self.steps.setValue(settings.iters or 100)
            self.max_seq_len.setValue(settings.max_seq_len)
            self.lora_layers.setValue(max(0, settings.lora_layers))
            self.batch_size.setValue(settings.batch_size)
            self.replay.setValue(round(settings.replay * 100))
            self.scoring.setChecked(settings.score_every != 0)
        finally:
            self._filling = False
        self._edited()

    def _learning_rate(self) -> float | None:
        """The learning rate committed last (None when the text committed is not one)."""
        return self._committed_rate

    def commit_learning_rate(self) -> bool:
        """Check the learning rate's text (Return, leaving the field, Next); the message beside it says what is
        wrong. True when it is a number between 0 and 1."""
        value = parse_learning_rate(self.learning_rate.text())
        changed = value != self._committed_rate
        self._committed_rate = value
        self.learning_rate_error.setVisible(value is None)
        if changed:
            self._edited()
        return value is not None

    def validatePage(self) -> bool:
        for widget in (self.rank, self.epochs, self.steps, self.max_seq_len, self.lora_layers, self.batch_size,
                       self.replay):
            widget.interpretText()  # a value typed and not yet committed counts
        ok = self.commit_learning_rate()
        if not ok:
            self.learning_rate.setFocus()
        return ok

    def settings(self) -> TrainSettings:
        by_steps = self.length_kind.currentIndex() == 1
        values = TrainSettings(
            preset="custom", lora_preset=self.base.lora_preset, rank=self.rank.value(),
            learning_rate=self._learning_rate() or self.base.learning_rate,
            epochs=self.epochs.value(), iters=self.steps.value() if by_steps else 0,
            max_seq_len=self.max_seq_len.value(), lora_layers=self.lora_layers.value() or -1,
            batch_size=self.batch_size.value(), val_every=self.base.val_every, save_every=self.base.save_every,
            seed=self.base.seed, replay=self.replay.value() / 100,
            score_every=(self.base.score_every or -1) if self.scoring.isChecked() else 0,
            early_stop=self.base.early_stop)
        values.preset = values.matching_preset() or "custom"
        return values

    def _length_kind_changed(self, index: int) -> None:
        """Epochs ↔ steps: the other field starts at what was just shown ("about 24 steps"), not at a default."""
        data_page = getattr(self.train_wizard, "data_page", None)
        data = data_page.summary if data_page is not None else None
        if not self._filling and index == 1 and data is not None and data.train:
            by_epochs = replace(self.settings(), iters=0)
            self._filling = True
            try:
                self.steps.setValue(by_epochs.total_steps(data.train))
            finally:
                self._filling = False
        self._edited()

    def _edited(self) -> None:
        if self._filling:
            return
        by_steps = self.length_kind.currentIndex() == 1
        self.epochs.setVisible(not by_steps)
        self.steps.setVisible(by_steps)
        preset = self.settings().preset
        self._filling = True
        try:
            for key, button in self.preset_buttons.items():
                button.setChecked(key == preset)
            if preset not in PRESETS:
                # No preset is checked: let the group have none.
                self.preset_group.setExclusive(False)
                for button in self.preset_buttons.values():
                    button.setChecked(False)
                self.preset_group.setExclusive(True)
        finally:
            self._filling = False
        self.custom_label.setVisible(preset not in PRESETS)
        self._update_summary()
        # No completeChanged here: the page's completeness does not change with its values (Next checks them), and
        # the wizard answers that signal by moving the keyboard focus away from the field being typed into.

    def _update_summary(self) -> None:
        if self._learning_rate() is None:
            self.summary.setText(f"<span style='color:#e03131'>{LEARNING_RATE_ERROR}</span>")
            return
        settings = self.settings()
        data_page = getattr(self.train_wizard, "data_page", None)
        data = data_page.summary if data_page is not None else None
        parts = [html.escape(settings.describe()) + "."]
        if data is not None and data.train:
            steps = settings.total_steps(data.train)
            parts.append(f"About <b>{steps:,} steps</b> over {data.train:,} conversations, "
                         f"{settings.batch_size} per step.")
            cut = data.longer_than(settings.max_seq_len)
            if cut:
                parts.append(f"<span style='color:#d9480f'>{cut:,} conversations are longer than "
                             f"{settings.max_seq_len:,} tokens and will be cut short (their ends are not "
                             "learned).</span>")
        self.summary.setText("<p>" + " ".join(parts) + "</p>")

    # isComplete is not overridden: Next stays enabled while a value is being typed, and validatePage checks it.


class PreflightWizardPage(QWizardPage):
    def __init__(self, owner: Page, wizard: TrainWizard) -> None:
        super().__init__()
        self.owner = owner  # the Train page: its project and its job runner
        self.train_wizard = wizard  # the wizard this step is part of (being built while the steps are)
        self.result: PreflightResult | None = None
        self.job: Job | None = None
        self.abandoned: Job | None = None
        self.setTitle("Check")
        self.setSubTitle("Will it fit, and how long will it take? Measured on this Mac with these settings.")
        self.banner = MessageBanner()
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.engine_label = QLabel()
        self.engine_label.setWordWrap(True)
        self.memory_label = QLabel()
        self.memory_label.setWordWrap(True)
        self.memory_bar = QProgressBar()
        self.memory_bar.setRange(0, 1000)
        self.memory_bar.setTextVisible(False)
        self.memory_bar.setMaximumHeight(10)
        self.time_label = QLabel()
        self.time_label.setWordWrap(True)
        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setStyleSheet("color: gray;")
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.again_button = QPushButton("Check Again")
        self.again_button.clicked.connect(self.check)
        form = QFormLayout()
        form.addRow("<b>Engine</b>", self.engine_label)
        form.addRow("<b>Memory</b>", self.memory_label)
        form.addRow("", self.memory_bar)
        form.addRow("<b>Time</b>", self.time_label)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addWidget(self.status)
        layout.addLayout(form)
        layout.addWidget(self.details)
        row = QHBoxLayout()
        row.addWidget(self.again_button)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(1)

    def initializePage(self) -> None:
        self.check()

    def cleanupPage(self) -> None:  # Back: the answer would be for other settings
        if self.job is not None and not self.job.is_over:
            self.job.cancel()
            self.abandoned = self.job
        self.job = None
        self.result = None

    def _clear(self) -> None:
        self.banner.clear()
        for label in (self.engine_label, self.memory_label, self.time_label, self.details):
            label.clear()
        self.memory_bar.hide()

    def check(self) -> Job | None:
        wizard = self.train_wizard
        project = self.owner.project
        model = wizard.model_page.model_path()
        if project is None or model is None:
            return None
        if self.job is not None and not self.job.is_over:
            return self.job
        self._clear()
        self.result = None
        data = wizard.data_page.summary
        job = Job("Checking that training fits",
                  preflight_function(model, project.root, wizard.settings_page.settings(), data.train if data else 0),
                  key=str(project.root), stage_names=PREFLIGHT_STAGES)
        self.job = job
        # A check abandoned a moment ago (Back, then Next) may still be finishing: this one waits for it.
        behind = self.abandoned is not None and self.owner.runner.running(str(project.root)) is self.abandoned
        if not self.owner.start_job(job, queue=behind, finished=partial(self._checked, job),
                                    failed=partial(self._failed, job), cancelled=partial(self._cancelled, job)):
            self.job = None
            self.status.setText("")
            self.banner.show_message("Another job is running in this project. Wait for it to finish (or cancel it), "
                                     "then click Check Again.", level="warning")
            return None
        self.status.setText("Checking the model's files, this Mac's memory, disk and speed…")
        self.again_button.setEnabled(False)
        emit(self.completeChanged)
        return job

    def _checked(self, job: Job, result: object) -> None:
        if job is not self.job:
            return
        self.again_button.setEnabled(True)
        assert isinstance(result, PreflightResult)
        self.result = result
        report = result.report
        memory = result.memory
        if report.choice is None:
            self.status.setText("<b>Training cannot start with these settings.</b> Go Back to choose a smaller "
                                "model, or lower the sequence length or batch size in Settings › Advanced.")
            self.banner.show_message(gui_text(report.reason), level="error", details=estimate_text(report))
        else:
            key = "memory+ckpt" if report.grad_checkpoint else report.choice
            estimate = report.estimates[key]
            if report.choice == "streamed":
                engine = (f"<b>Layer-streamed.</b> The model does not fit in memory, so it stays on disk and is read "
                          f"one block at a time on every step (disk: {report.disk_gbps:.1f} GB/s). Slower, but it "
                          "fits.")
            elif report.grad_checkpoint:
                engine = ("<b>In memory</b>, recomputing each block in the backward pass (gradient checkpointing) "
                          "to save memory.")
            else:
                engine = "<b>In memory.</b> The whole model is loaded once: the fastest way."
            self.engine_label.setText(engine)
            self.memory_label.setText(f"At most about <b>{gb(estimate.peak_bytes)}</b>, of "
                                      f"{gb(memory.available_bytes)} available now (this Mac has "
                                      f"{gb(memory.total_bytes)}).")
            self.memory_bar.setValue(round(1000 * min(1.0, estimate.peak_bytes / max(memory.available_bytes, 1))))
            self.memory_bar.show()
            total = estimate.step_seconds * result.steps
            self.time_label.setText(f"Up to about <b>{format_duration(total)}</b> for {result.steps:,} steps "
                                    f"(at most {estimate.step_seconds:.1f} s a step; shorter conversations go "
                                    "faster).")
            self.status.setText(html.escape(gui_text(report.reason[:1].upper() + report.reason[1:])) + ".")
            self.details.setText(html.escape(estimate_text(report)).replace("\n", "<br>"))
        emit(self.completeChanged)

    def _failed(self, job: Job, message: str, details: str) -> None:
        if job is not self.job:
            return
        self.again_button.setEnabled(True)
        self.status.setText("")
        self.banner.show_message(message, level="error", details=details)
        emit(self.completeChanged)

    def _cancelled(self, job: Job) -> None:
        if job is self.job:
            self.again_button.setEnabled(True)
            self.status.setText("The check was cancelled. Click Check Again.")

    def isComplete(self) -> bool:
        return self.result is not None and self.result.report.choice is not None


def _accepted(result: object) -> bool:
    return getattr(result, "value", result) == QDialog.DialogCode.Accepted.value


class TrainWizard(QWizard):
    """The four steps, embedded in the page (not a window of its own). ``closed(start)`` replaces accept/reject."""

    closed = Signal(bool)

    def __init__(self, owner: Page) -> None:
        super().__init__()
        self.setObjectName("train-wizard")
        self.setWindowFlags(Qt.WindowType.Widget)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start Training")
        self.model_page = ModelWizardPage(owner, self)
        self.data_page = DataWizardPage(owner, self)
        self.settings_page = SettingsWizardPage(owner, self)
        self.preflight_page = PreflightWizardPage(owner, self)
        for page in (self.model_page, self.data_page, self.settings_page, self.preflight_page):
            self.addPage(page)

    def done(self, result: int) -> None:
        # QDialog would hide the widget; embedded, the page decides what to show next.
        if _accepted(result) and not self.validateCurrentPage():
            return
        emit(self.closed, _accepted(result))
