"""The Export page: turn a finished training run into GGUF files that were checked against the trained model.

The user picks a run (the project's runs, newest first; unfinished ones are listed but disabled, with the reason),
the quantisations, the destination and file name, and whether to write only the LoRA adapter and an Ollama
Modelfile. The export itself is the Qt-free core (``slowtune.export.folder.run_export`` of an ``ExportRequest``) run
in a ``Job``: stage progress, Cancel, and errors from the core shown in the page's banner. What the export wrote is
read back from its folder (``slowtune.export.folder.read_export``: ``export.json``), so the result of a fresh export
and the exports made earlier (also from the command line) are shown the same way: the files with their sizes, the
verification in plain words, Reveal in Finder and Chat.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace as replace_fields
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QGuiApplication, QTextDocument
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from slowtune.export.folder import (
    BASE_KIND,
    LORA_KIND,
    RECOMMENDED,
    ExportFile,
    ExportInfo,
    ExportOutcome,
    ExportRequest,
    exports_of,
    read_export,
    run_export,
)
from slowtune.export.pipeline import ExportFailed, find_adapter
from slowtune.gui.page import PAGE_MARGINS, Page
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.widgets import bug_report_text, plain_text
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import format_duration
from slowtune.safetensors import parameter_count
from slowtune.settings import Settings
from slowtune.store import Project
from slowtune.train.runs import RunInfo, json_object, list_runs, number_or_none, read_run

ON_MAC = sys.platform == "darwin"
REVEAL_LABEL = "Reveal in Finder" if ON_MAC else "Show in Folder"

# The quantisations offered besides F16 (always written: it is what the others are made from and checked
# against), smallest first, each with what it trades. Bits per weight are llama.cpp's averages for these types.
QUANT_CHOICES: list[tuple[str, str]] = [
    ("Q4_K_M", "Recommended. About a quarter of F16's size; answers change a little. Runs on most Macs."),
    ("Q5_K_M", "A little larger than Q4_K_M and a little closer to F16."),
    ("Q6_K", "Very close to F16 at about 40% of its size."),
    ("Q8_0", "Practically F16 quality at about half its size."),
    ("BF16", "Full quality in bfloat16, the same size as F16."),
    ("F32", "Exact, twice F16's size: for checking, rarely worth the space."),
]
BITS_PER_WEIGHT = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.69,
                   "Q4_K_M": 4.85}
F16_NOTE = "Always written: full quality, the file the others are made from and checked against."
# Below this top-1 agreement a quantised file is reported with a warning (the core only reports it).
QUANT_GOOD_AGREEMENT = 0.9
# An adapter whose largest logit change is below this did nothing (the core's threshold for its note).
NO_EFFECT = 1e-4

EXPORT_STAGES = {"export": "exporting", "fuse": "fusing the adapter", "Writing GGUF": "writing GGUF",
                 "quantise": "quantising", "Writing LoRA GGUF": "writing the LoRA GGUF"}
NAME_PATTERN = re.compile(r"^[\w][\w.+-]*$")

NO_PROJECT_TEXT = ("<h2>Export</h2><p>No project is open. Open a project (File › Open Project) whose model you "
                   "trained on the <b>Train</b> page, then come back here to turn it into GGUF files for llama.cpp, "
                   "Ollama and LM Studio.</p>")
NO_RUNS_TEXT = ("<h2>Export</h2><p>This project has no training runs yet. Train a model on the <b>Train</b> page "
                "first; its finished runs appear here, ready to export.</p>")
NONE_READY_TEXT = "None of the runs can be exported yet: the State column says why."
RUN_ROWS_SHOWN = 5  # the run list grows to this many rows, then scrolls
NO_EXPORTS_TEXT = "This run has not been exported yet. Choose what to write above and click <b>Export</b>."


# --- module-level actions, replaced by tests -----------------------------------------------------------------

def choose_folder(parent: QWidget, title: str, start: str) -> str | None:
    """A folder the user picks, or None if they cancelled."""
    folder = QFileDialog.getExistingDirectory(parent, title, start)
    return folder or None


def reveal(path: str | Path) -> None:
    """Show ``path`` in the file manager: selected in Finder on a Mac, selected in Explorer on Windows, and its
    folder opened elsewhere (file managers there have no common way to select a file)."""
    target = Path(path)
    if ON_MAC:
        subprocess.Popen(["open", "-R", str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elif sys.platform == "win32":
        subprocess.Popen(["explorer", f"/select,{target}"])
    else:
        folder = target if target.is_dir() else target.parent
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            raise OSError(f"No file manager could open {folder}.")


# --- formatting ------------------------------------------------------------------------------------------------

def format_size(size: float) -> str:
    """Decimal units, as Finder shows them."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(size)} bytes"


def format_time(seconds: float) -> str:
    t = time.localtime(seconds)
    return f"{t.tm_mday} {time.strftime('%b %Y, %H:%M', t)}"


def percent(fraction: float) -> str:
    """97%, but never "100%" for what is not all of it."""
    text = f"{fraction:.0%}"
    if fraction < 1 and text == "100%":
        text = f"{fraction:.1%}"
        if text == "100.0%":
            text = "over 99.9%"
    return text


def small_share(fraction: float) -> str:
    """A small difference as a share a reader knows: "0.14%", "less than 0.01%" (never "1.4e-03")."""
    if fraction <= 0:
        return "0%"
    if fraction < 0.0001:
        return "less than 0.01%"
    return f"{fraction:.2%}" if fraction < 0.1 else f"{fraction:.0%}"


def default_name(project: Project | None) -> str:
    """A file name stem from the project's name ("Field notes" -> "field-notes"), else "model"."""
    if project is None:
        return "model"
    slug = re.sub(r"[^\w.+-]+", "-", project.name.strip().lower()).strip("-.")
    return slug or "model"


# --- runs ------------------------------------------------------------------------------------------------------

def _json_or_empty(path: Path) -> dict[str, Any]:
    try:
        return json_object(path.read_text(encoding="utf-8"))
    except OSError:
        return {}


def _judged(run: RunInfo) -> RunInfo:
    """``run`` (``slowtune.train.runs``) with why it cannot be exported (``problem``, "" when it can) and the base
    model folder its adapter names (``base_dir``) filled in."""
    run.problem = _run_problem(run)
    return run


def _run_problem(run: RunInfo) -> str:
    if not run.run_dir.is_dir():
        return f"The run folder is gone ({run.run_dir})."
    if run.status in ("running", "created"):
        return "Not finished: training is still running, or stopped unexpectedly. Resume it on the Train page."
    if run.status in ("cancelled", "paused"):
        where = f" at step {run.steps} of {run.total_steps}" if run.steps is not None and run.total_steps else ""
        return f"Stopped{where}: resume it on the Train page to finish it."
    if run.status == "failed":
        error = (run.error or "").strip()
        return f"Training failed{': ' + error if error else '.'}"
    try:
        adapter = find_adapter(run.run_dir)
    except ExportFailed:
        return "The adapter files (adapters.safetensors, adapter_config.json) are missing from the run folder."
    config = _json_or_empty(adapter / "adapter_config.json")
    if not config:
        return "The run's adapter_config.json cannot be read: the run folder is damaged."
    base = config.get("base_model")
    run.base_dir = Path(base) if isinstance(base, str) and base else None
    if run.base_dir is None or not (run.base_dir / "config.json").exists():
        return (f"Its base model is no longer at {run.base_dir or '(unknown)'}: download {run.model} again (Train "
                "page, New Training Run…, Download) to export this run.")
    return ""


# --- verification in plain words -------------------------------------------------------------------------------

def describe_check(check: dict[str, Any]) -> tuple[str, str]:
    """("pass" | "warn" | "fail", a sentence) for one file's verification (a ``Verification.to_dict()``)."""
    from slowtune.export.verify import F16_MAX_LOGIT_ERROR, F16_MIN_AGREEMENT, F32_LOGIT_TOLERANCE

    quant = str(check.get("quant", "?"))
    file = str(check.get("file", "?"))
    agreement = float(check.get("top1_agreement") or 0.0)
    positions = int(check.get("positions") or 0)
    subject = ("The LoRA adapter on the base model" if quant == "LoRA" else f"The {quant} file") + f" ({file})"
    prompts, matches = int(check.get("greedy_prompts") or 0), int(check.get("greedy_matches") or 0)
    same = f", and it continues {matches} of {prompts} test prompts exactly as the trained model does" if prompts else ""
    agree = f"{percent(agreement)} of next-token choices agree with the trained model"
    if quant == "F32":
        scale = float(check.get("logit_scale") or 0.0)
        relative = float(check.get("max_logit_diff") or 0.0) / scale if scale else 0.0
        if check.get("passed"):
            return "pass", f"{subject} gives the trained model's scores (largest difference " \
                           f"{small_share(relative)} of their range){same}."
        return "fail", f"{subject} does not give the trained model's scores: they differ by " \
                       f"{small_share(relative)} of their range (at most {small_share(F32_LOGIT_TOLERANCE)} " \
                       f"allowed){same}. Do not use it."
    if positions == 0:
        return ("fail" if check.get("required") else "warn"), \
            f"{subject} could not be compared: on the test prompts the trained model never clearly preferred one " \
            "next token."
    total = int(check.get("total_positions") or 0)
    error = check.get("max_logit_error")
    figures = ""
    if total:
        figures = (f" Over all {total} positions, {percent(float(check.get('top1_all') or 0.0))} agree "
                   f"({int(check.get('excluded') or 0)} near-ties, where either choice is right, are left out of the "
                   "first figure)")
        if error is not None:
            figures += f"; its scores differ from the trained model's by at most {small_share(float(error))} of " \
                       "their range"
        figures += "."
    if not check.get("passed"):
        if check.get("required") and error is not None and float(error) > F16_MAX_LOGIT_ERROR \
                and agreement >= F16_MIN_AGREEMENT:
            return "fail", f"{subject} does not compute what the trained model computes: its scores differ by " \
                           f"{small_share(float(error))} of their range (at most " \
                           f"{small_share(F16_MAX_LOGIT_ERROR)} allowed), though " \
                           f"{agree}.{figures} Do not use it."
        return "fail", f"{subject} does not behave like the trained model: only {agree} " \
                       f"({F16_MIN_AGREEMENT:.0%} needed){same}.{figures} Do not use it."
    if check.get("required") or agreement >= QUANT_GOOD_AGREEMENT:
        return "pass", f"{subject} answers like the trained model: {agree}{same}.{figures}"
    return "warn", f"{subject} answers noticeably differently from the trained model: {agree}{same}.{figures} " \
                   "Small models lose more to quantisation; if quality matters more than size, use Q6_K or Q8_0."


def describe_export(export: ExportInfo) -> tuple[str, str, list[tuple[str, str]]]:
    """(level, a headline, [(level, sentence)] per file and for the adapter) for the result panel."""
    if not export.finished:
        return "warn", ("This export did not finish (it was cancelled or interrupted), so these files were not "
                        "checked. Export again to replace them."), []
    lines = [describe_check(v) for v in export.checks]
    effect = number_or_none(export.report.get("adapter_effect"))
    if effect is not None and effect < NO_EFFECT:
        lines.append(("warn", f"The adapter barely changes the model (largest change {effect:.1e}): was the run "
                              "really trained? The files behave like the base model."))
    levels = {level for level, _ in lines}
    if not lines:
        return "warn", "This export has no verification results.", lines
    if "fail" in levels:
        return "fail", "Not verified: the export does not behave like the trained model.", lines
    if effect is not None and effect < NO_EFFECT:
        return "warn", "Verified, but the adapter barely changes the model: was the run really trained?", lines
    differing = [str(v.get("quant")) for v in export.checks if describe_check(v)[0] == "warn"]
    if differing:
        verb = "differs" if len(differing) == 1 else "differ"
        return "warn", (f"Verified: the export behaves like the trained model, though {' and '.join(differing)} "
                        f"{verb} from it more than usual (see below)."), lines
    return "pass", "Verified: the files behave like the trained model.", lines


LEVEL_MARKS = {"pass": ("✓", "#2f9e44"), "warn": ("⚠", "#e8590c"), "fail": ("✗", "#e03131")}


def _marked(level: str, text: str) -> str:
    mark, color = LEVEL_MARKS[level]
    return f"<span style='color:{color}'>{mark}</span> {html.escape(text)}"


# --- the export, as run in a worker thread ---------------------------------------------------------------------

def estimate_parameters(model_dir: Path) -> int | None:
    """The number of weights in a (not quantised) Hugging Face model folder, from its safetensors headers."""
    config = _json_or_empty(model_dir / "config.json")
    if not config or "quantization" in config or "quantization_config" in config:
        return None
    try:
        total = parameter_count(sorted(model_dir.glob("*.safetensors")))
    except (OSError, ValueError):
        return None
    return total or None


# --- the page --------------------------------------------------------------------------------------------------

def _hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setStyleSheet("color: gray;")
    return label


class ExportPage(Page):
    """Pick a finished run and what to write; export it in a job; see what was written and how it checked out."""

    chat_requested = Signal(str, str)  # the exported GGUF, and a GGUF to compare with (the base) or ""

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__("export", runner, settings, parent)
        self.runs: list[RunInfo] = []
        self._outside_runs: dict[Path, RunInfo] = {}  # runs handed to select_run that the project does not list
        self.exports: list[ExportInfo] = []
        self.shown_export: ExportInfo | None = None
        self.job: Job | None = None
        self.request: ExportRequest | None = None
        self._job_started = 0.0
        self._step: tuple[float, float, str] = (0.0, 1.0, "")
        self._custom_destination = False
        self._parameters: dict[Path, int | None] = {}

        self.label = QLabel()  # the title, or the empty state
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        # --- the run ---
        self.run_tree = QTreeWidget()
        self.run_tree.setHeaderLabels(["Run", "Base model", "Steps", "Final loss", "State and checkpoint"])
        self.run_tree.setRootIsDecorated(False)
        self.run_tree.setUniformRowHeights(True)
        self.run_tree.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        header = self.run_tree.header()
        header.setStretchLastSection(True)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.run_tree.setColumnWidth(0, 150)
        self.run_tree.setColumnWidth(1, 200)
        self.run_tree.setColumnWidth(2, 60)
        self.run_tree.setColumnWidth(3, 150)
        self.run_tree.currentItemChanged.connect(lambda *_: self._run_changed())
        self.runs_note = _hint("")

        # --- what to write ---
        self.quant_boxes: dict[str, QCheckBox] = {}
        self.quant_notes: dict[str, QLabel] = {}
        self._note_texts = {"F16": F16_NOTE, **dict(QUANT_CHOICES)}
        grid = QGridLayout()
        grid.setHorizontalSpacing(12)
        self.f16_box = QCheckBox("F16")
        self.f16_box.setChecked(True)
        self.f16_box.setEnabled(False)
        self.f16_note = _hint(F16_NOTE)
        grid.addWidget(self.f16_box, 0, 0)
        grid.addWidget(self.f16_note, 0, 1)
        for row, (quant, text) in enumerate(QUANT_CHOICES, start=1):
            box = QCheckBox(quant)
            box.toggled.connect(lambda _checked: self._options_changed())
            note = _hint(text)
            self.quant_boxes[quant] = box
            self.quant_notes[quant] = note
            grid.addWidget(box, row, 0)
            grid.addWidget(note, row, 1)
        grid.setColumnStretch(1, 1)
        self.base_box = QCheckBox("Also export the unchanged base model (base-F16.gguf), to compare answers in Chat")
        self.base_box.setChecked(True)
        self.base_box.toggled.connect(lambda _checked: self._options_changed())
        self.lora_box = QCheckBox("LoRA adapter only")
        self.lora_box.toggled.connect(lambda _checked: self._options_changed())
        self.lora_note = _hint("Instead of a merged model, a small file (a few MB) that llama.cpp, Ollama and LM "
                               "Studio load on top of the base model, base-F16.gguf (exported with it). "
                               "Quantisations do not apply.")
        self.ollama_box = QCheckBox("Ollama Modelfile")
        self.ollama_box.setChecked(True)
        self.ollama_box.toggled.connect(lambda _checked: self._options_changed())
        self.ollama_note = _hint("So that “ollama create” builds a model that formats chats the way this one was "
                                 "trained. A README on using the files is written with it.")
        self.destination = QLineEdit()
        self.destination.textEdited.connect(self._destination_edited)
        self.choose_button = QPushButton("Choose…")
        self.choose_button.clicked.connect(self.choose_destination)
        self.name_edit = QLineEdit("model")
        self.name_edit.setMaximumWidth(260)
        self.name_edit.textChanged.connect(lambda _text: self._options_changed())
        self.files_preview = _hint("")

        options = QGroupBox("What to export")
        form = QVBoxLayout(options)
        form.addWidget(QLabel("<b>Quantisations</b> (smaller files run faster and need less memory; the model "
                              "answers a little less like the trained one)"))
        form.addLayout(grid)
        form.addWidget(self.base_box)
        form.addWidget(self.lora_box)
        form.addWidget(self.lora_note)
        form.addWidget(self.ollama_box)
        form.addWidget(self.ollama_note)
        where = QGridLayout()
        where.addWidget(QLabel("Destination"), 0, 0)
        dest_row = QHBoxLayout()
        dest_row.addWidget(self.destination, 1)
        dest_row.addWidget(self.choose_button)
        where.addLayout(dest_row, 0, 1)
        where.addWidget(QLabel("File name"), 1, 0)
        where.addWidget(self.name_edit, 1, 1)
        where.addWidget(self.files_preview, 2, 1)
        where.setColumnStretch(1, 1)
        form.addLayout(where)
        self.options = options

        # --- running ---
        self.export_button = QPushButton("Export")
        self.export_button.setDefault(True)
        self.export_button.clicked.connect(self.export)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.hide()
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setTextVisible(False)
        self.progress_bar.setMaximumWidth(420)
        self.progress_bar.hide()
        self.progress_label = QLabel()
        self.progress_label.setWordWrap(True)
        run_row = QHBoxLayout()
        run_row.addWidget(self.export_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.progress_bar, 1)
        run_row.addStretch(0)

        # --- results ---
        self.results = QGroupBox("Exports of this run")
        self.export_picker = QComboBox()
        self.export_picker.currentIndexChanged.connect(self._export_picked)
        self.no_exports = QLabel(NO_EXPORTS_TEXT)
        self.no_exports.setWordWrap(True)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.file_tree = QTreeWidget()
        self.file_tree.setHeaderLabels(["File", "What it is", "Size", "Check"])
        self.file_tree.setRootIsDecorated(False)
        self.file_tree.setUniformRowHeights(True)
        self.file_tree.setMaximumHeight(170)
        self.file_tree.setColumnWidth(0, 230)
        self.file_tree.setColumnWidth(1, 240)
        self.file_tree.setColumnWidth(2, 80)
        self.file_tree.itemDoubleClicked.connect(lambda item, _col: self.reveal_selected())
        self.file_tree.currentItemChanged.connect(lambda *_: self._update_result_buttons())
        self.checks_label = QLabel()
        self.checks_label.setWordWrap(True)
        self.checks_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.usage_label = QLabel()
        self.usage_label.setWordWrap(True)
        self.usage_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.reveal_button = QPushButton(REVEAL_LABEL)
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.chat_button = QPushButton("Chat with It")
        self.chat_button.clicked.connect(self.request_chat)
        # The check's figures are for a bug report, not the page: copied (with the folder), never shown.
        self.details = QTextDocument(self)
        # Not "for a bug report": it is shown after an export that went well too.
        self.details_button = QPushButton("Copy the Check's Figures")
        self.details_button.setToolTip("Copy the folder and every figure of the check against the trained model")
        self.details_button.clicked.connect(self.copy_details)
        buttons = QHBoxLayout()
        buttons.addWidget(self.reveal_button)
        buttons.addWidget(self.chat_button)
        buttons.addStretch(1)
        buttons.addWidget(self.details_button)
        self.result_box = QWidget()
        result_layout = QVBoxLayout(self.result_box)
        result_layout.setContentsMargins(0, 0, 0, 0)
        result_layout.addWidget(self.summary)
        result_layout.addWidget(self.file_tree)
        result_layout.addWidget(self.checks_label)
        result_layout.addWidget(self.usage_label)
        result_layout.addLayout(buttons)
        results_layout = QVBoxLayout(self.results)
        results_layout.addWidget(self.export_picker)
        results_layout.addWidget(self.no_exports)
        results_layout.addWidget(self.result_box)

        content = QWidget()
        body = QVBoxLayout(content)
        body.setContentsMargins(*PAGE_MARGINS)
        body.addWidget(self.label)
        self.run_caption = QLabel("<b>Run</b>")
        body.addWidget(self.run_caption)
        body.addWidget(self.run_tree)
        body.addWidget(self.runs_note)
        body.addWidget(options)
        body.addLayout(run_row)
        body.addWidget(self.progress_label)
        body.addWidget(self.results)
        body.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(content)
        self.scroll = scroll
        # The banner stays in view above the scrolling page, inset like the page's content and every other page's.
        banner_row = QVBoxLayout()
        left, top, right, _bottom = PAGE_MARGINS
        banner_row.setContentsMargins(left, top, right, 0)
        banner_row.addWidget(self.banner)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(banner_row)
        layout.addWidget(scroll, 1)
        self._apply_default_quants()
        self.refresh()

    # --- showing -----------------------------------------------------------------------------------------------
    def project_set(self, changed: bool) -> None:
        super().project_set(changed)
        self._outside_runs.clear()
        self._custom_destination = False
        self.name_edit.setText(default_name(self.project))
        self._apply_default_quants()

    def refresh_on_show(self) -> bool:
        # A run may have finished, or an export been made from Terminal, while it was hidden.
        return not self.busy()

    def _apply_default_quants(self) -> None:
        wanted = {q.upper() for q in self._settings().export_quants} or {RECOMMENDED}
        for quant, box in self.quant_boxes.items():
            box.setChecked(quant in wanted)

    def refresh(self) -> None:
        """Re-read the runs and the selected run's exports, keeping the selection."""
        current = self.current_run()
        self.runs = [_judged(r) for r in list_runs(self.project, with_records=True)] if self.project is not None \
            else []
        listed = {r.run_dir for r in self.runs}
        self.runs += [r for p, r in self._outside_runs.items() if p not in listed]
        self.run_tree.blockSignals(True)
        self.run_tree.clear()
        for run in self.runs:
            self.run_tree.addTopLevelItem(self._run_item(run))
        target = next((i for i, r in enumerate(self.runs) if current is not None and r.run_dir == current.run_dir
                       and r.exportable), None)
        if target is None:
            target = next((i for i, r in enumerate(self.runs) if r.exportable), None)
        if target is not None:
            self.run_tree.setCurrentItem(self.run_tree.topLevelItem(target))
        self.run_tree.blockSignals(False)
        self._fit_run_tree()
        self._update_empty_state()
        self._run_changed()

    def _fit_run_tree(self) -> None:
        """As tall as its runs (up to RUN_ROWS_SHOWN, then it scrolls), its columns as wide as what they say."""
        tree = self.run_tree
        for column in range(tree.columnCount() - 1):
            tree.resizeColumnToContents(column)
            tree.setColumnWidth(column, max(tree.columnWidth(column) + 16, 70))
        rows = min(max(len(self.runs), 2), RUN_ROWS_SHOWN)
        row_height = tree.sizeHintForRow(0) if self.runs else tree.fontMetrics().height() + 6
        tree.setFixedHeight(tree.header().sizeHint().height() + rows * max(row_height, 1) + 2 * tree.frameWidth() + 2)

    def _run_item(self, run: RunInfo) -> QTreeWidgetItem:
        loss = f"{run.train_loss:.3f}" if run.train_loss is not None else "–"
        if run.validation_loss is not None:
            loss += f" (best validation {run.validation_loss:.3f})" if run.best_val is not None \
                else f" (validation {run.validation_loss:.3f})"
        steps = str(run.steps) if run.steps is not None else "–"
        if run.exportable:
            # Which checkpoint the export takes; a run that memorised says so (its best checkpoint is the one).
            state = ("Finished, memorised" if run.overfitting else "Finished") + f" · exports {run.checkpoint_words}"
        else:
            state = run.problem
        item = QTreeWidgetItem([format_time(run.created_at) if run.created_at else run.run_id, run.base_label,
                                steps, loss, state])
        item.setData(0, Qt.ItemDataRole.UserRole, str(run.run_dir))
        item.setToolTip(0, str(run.run_dir))
        item.setToolTip(1, run.model)
        item.setToolTip(4, state if not run.exportable or not run.chosen else
                        f"Export uses {run.chosen.get('text', 'the best checkpoint')}."
                        + (f" {run.overfitting['message']}" if run.overfitting else ""))
        if run.exportable and run.overfitting:
            item.setForeground(4, QColor("#d9480f"))
        if not run.exportable:
            item.setFlags(item.flags() & ~(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable))
            item.setForeground(4, QColor("#e8590c"))
        return item

    def _update_empty_state(self) -> None:
        has_runs = bool(self.runs)
        ready = any(r.exportable for r in self.runs)
        if self.project is None and not has_runs:
            self.label.setText(NO_PROJECT_TEXT)
        elif not has_runs:
            self.label.setText(NO_RUNS_TEXT)
        else:
            self.label.setText("<h2 style='margin:0'>Export</h2><p>Turn a trained run into GGUF files for "
                               "llama.cpp, Ollama and LM Studio. Every file is checked against the trained model "
                               "before you get it.</p>")
        self.runs_note.setText("" if ready else NONE_READY_TEXT)
        self.runs_note.setVisible(has_runs and not ready)
        for widget in (self.run_caption, self.run_tree):
            widget.setVisible(has_runs)
        for widget in (self.options, self.export_button, self.results):
            widget.setVisible(ready)

    def current_run(self) -> RunInfo | None:
        item = self.run_tree.currentItem()
        if item is None or not (item.flags() & Qt.ItemFlag.ItemIsEnabled):
            return None
        path = Path(item.data(0, Qt.ItemDataRole.UserRole))
        return next((r for r in self.runs if r.run_dir == path), None)

    def select_run(self, run_dir: str) -> None:
        """Show ``run_dir`` selected, ready to export (the Train page's "Export this model…")."""
        path = Path(run_dir).expanduser().resolve()
        if not any(r.run_dir == path for r in self.runs):
            self.refresh()
        if not any(r.run_dir == path for r in self.runs):
            # A run this project has no record of: export it anyway.
            self._outside_runs[path] = _judged(read_run(path) or RunInfo(path, "unknown", "?"))
            self.refresh()
        run = next(r for r in self.runs if r.run_dir == path)
        if not run.exportable:
            self.banner.show_message(f"This run cannot be exported: {run.problem}", level="warning")
            return
        self.banner.clear()
        index = self.runs.index(run)
        self.run_tree.setCurrentItem(self.run_tree.topLevelItem(index))

    def _run_changed(self) -> None:
        run = self.current_run()
        if run is not None and not self._custom_destination:
            self.destination.setText(str(run.run_dir / "export"))
        self._update_size_notes(run)
        self._options_changed()
        self.refresh_exports()

    def _update_size_notes(self, run: RunInfo | None) -> None:
        params = None
        if run is not None and run.base_dir is not None:
            if run.base_dir not in self._parameters:
                self._parameters[run.base_dir] = estimate_parameters(run.base_dir)
            params = self._parameters[run.base_dir]
        for quant, note in [("F16", self.f16_note), *self.quant_notes.items()]:
            size = f" About {format_size(params * BITS_PER_WEIGHT[quant] / 8)} for this model." if params else ""
            note.setText(self._note_texts[quant] + size)

    # --- options -----------------------------------------------------------------------------------------------
    def _destination_edited(self, _text: str) -> None:
        self._custom_destination = True
        self._options_changed()

    def choose_destination(self) -> None:
        start = self.destination.text() or str(Path.home())
        folder = choose_folder(self, "Export To", start)
        if folder:
            self._custom_destination = True
            self.destination.setText(folder)
            self._options_changed()
            self.refresh_exports()

    def selected_quants(self) -> list[str]:
        return [q for q, box in self.quant_boxes.items() if box.isChecked()]

    def command_line(self) -> str | None:
        """The export the page would start, as a ``slowtune export`` command line (the window's Copy as Command);
        None when nothing can be exported."""
        request, _problem = self.build_request()
        return request.command() if request is not None else None

    def build_request(self) -> tuple[ExportRequest | None, str]:
        """The export the options describe, or (None, what to fix)."""
        run = self.current_run()
        if run is None:
            return None, "Choose a finished run to export."
        name = self.name_edit.text().strip()
        if not name or not NAME_PATTERN.match(name) or name.endswith(".gguf"):
            return None, ("The file name may use letters, digits, “.”, “-”, “_” and “+”, and must not start with a "
                          "dot or end in .gguf: it becomes the start of each file's name.")
        text = self.destination.text().strip()
        if not text:
            return None, "Choose a destination folder."
        out = Path(text).expanduser()
        if not out.is_absolute():
            return None, "The destination must be a full folder path: click Choose… to pick one."
        if out.exists() and not out.is_dir():
            return None, f"The destination {out} is a file, not a folder."
        project_root = run.project if run.run_dir in self._outside_runs else \
            (self.project.root if self.project is not None else None)
        return ExportRequest(run.run_dir, out.resolve(), name, tuple(self.selected_quants()), self.base_box.isChecked(),
                             self.lora_box.isChecked(), self.ollama_box.isChecked(), project_root), ""

    def _options_changed(self) -> None:
        lora = self.lora_box.isChecked()
        busy = self.busy()
        for box in self.quant_boxes.values():
            box.setEnabled(not lora and not busy)
        self.base_box.setEnabled(not lora and not busy)
        for widget in (self.lora_box, self.ollama_box, self.destination, self.choose_button, self.name_edit,
                       self.run_tree):
            widget.setEnabled(not busy)
        request, problem = self.build_request()
        if request is None:
            self.files_preview.setText(problem if self.current_run() is not None else "")
            self.export_button.setEnabled(False)
            return
        self.export_button.setEnabled(not busy)
        names = [n for n in request.planned_files() if n.endswith(".gguf")]
        self.files_preview.setText("Writes " + ", ".join(names) + (" and a Modelfile" if request.ollama else "")
                                   + ".")

    # --- exporting ---------------------------------------------------------------------------------------------
    def page_jobs(self) -> tuple[Job | None]:
        return (self.job,)

    def export(self) -> Job | None:
        """Ask before replacing files, then run the export in a job."""
        if self.busy():
            return None
        request, problem = self.build_request()
        if request is None:
            self.banner.show_message(problem, level="warning")
            return None
        replace = False
        out = request.out_dir
        present = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
        if present:
            existing = read_export(out)
            if existing is not None and not existing.finished:
                existing = None  # files of an export that did not finish: same names are replaced, no more
            if existing is not None:
                names = [f.path.name for f in existing.files if f.size is not None]
                text = (f"{out} already holds an export made {format_time(existing.created_at)}: "
                        f"{', '.join(names)}.\n\nReplace it? Those files are deleted and the new export is written "
                        "in their place. Other files in the folder are left alone.")
            else:
                clash = [n for n in request.planned_files() if n in present]
                text = (f"{out} is not empty ({len(present)} item{'s' if len(present) != 1 else ''}). The export "
                        f"writes {', '.join(request.planned_files())} there"
                        + (f", replacing the files of the same name: {', '.join(clash)}" if clash else "")
                        + ". Other files are left alone.\n\nExport there?")
            if not ask(self, "Replace the Existing Export?" if existing else "Export into This Folder?", text,
                       "Replace" if existing else "Export"):
                self.banner.show_message("Nothing was exported.")
                return None
            replace = existing is not None
        request = replace_fields(request, replace=replace)
        key = str(self.project.root) if self.project is not None else str(request.run_dir)
        # No throttle in the core: the pipeline reports a few hundred times at most, the Job hands the GUI only the
        # latest report per stage, and a throttled report of a new step ("verifying") would never be shown.
        job = Job("Exporting", partial(run_export, request), key=key, stage_names=EXPORT_STAGES, min_interval=0)
        self.job, self.request = job, request
        self._job_started = time.time()
        if not self.start_job(job, progress=self._progress, finished=self._exported, failed=self._failed,
                              cancelled=self._cancelled, done=self._job_done):
            self.job = self.request = None
            return None
        self.banner.clear()
        self._step = (0.0, 1.0, "starting")
        self.progress_bar.setValue(0)
        self.progress_label.setText("Checking the run…")
        self._update_busy()
        return job

    def cancel(self) -> None:
        if self.busy() and self.job is not None:
            self.job.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Stopping…")

    def _update_busy(self) -> None:
        busy = self.busy()
        self.cancel_button.setVisible(busy)
        self.cancel_button.setEnabled(busy and not (self.job is not None and self.job.cancel_requested))
        self.progress_bar.setVisible(busy)
        if not busy:
            self.progress_label.clear()
        self._options_changed()

    def _progress(self, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if self.job is not None and self.job.cancel_requested:
            return
        if stage == "export":
            step_total = float(total) if isinstance(total, int | float) and total else 1.0
            self._step = (done, step_total, status)
            fraction = done / step_total
            detail = ""
        else:
            counted = isinstance(total, int | float) and total > 0
            fraction_in = min(1.0, done / float(total)) if counted else 0.0  # type: ignore[arg-type]
            step_done, step_total, step_status = self._step
            fraction = (step_done + fraction_in) / step_total
            label = EXPORT_STAGES.get(stage, stage)
            parts = [] if label.lower() == step_status.lower() else [label]
            if stage == "quantise" and status and counted:
                parts.append(f"{status}, {min(int(done) + 1, int(total))} of {int(total)}")  # type: ignore[arg-type]
            elif counted:
                parts.append(f"{fraction_in:.0%}")
            detail = (" — " + " ".join(parts)) if parts else ""
        step_done, step_total, step_status = self._step
        self.progress_bar.setValue(round(1000 * min(1.0, fraction)))
        if step_status == "done":
            self.progress_label.setText("Finishing…")
        else:
            number = min(int(step_done) + 1, int(step_total))
            self.progress_label.setText(f"Step {number} of {int(step_total)}: {step_status}{detail}")

    def _exported(self, outcome: object) -> None:
        assert isinstance(outcome, ExportOutcome)
        late = self.job is not None and self.job.cancel_requested
        self.refresh_exports(show=outcome.out_dir)
        export = self.shown_export
        level = "info"
        message = f"Exported to {outcome.out_dir} in {format_duration(outcome.seconds, exact=True)}."
        if late:
            message = "The export had already finished when Cancel arrived. " + message
        if export is not None:
            verdict, headline, _lines = describe_export(export)
            message += " " + headline
            level = {"pass": "info", "warn": "warning", "fail": "error"}[verdict]
        if outcome.notes:
            level = "warning"
            message += " " + " ".join(outcome.notes)
        self.banner.show_message(message, level=level)
        # The files and the verification are what the user waited for: scroll them into view (once laid out).
        QTimer.singleShot(0, self, self.scroll_to_results)

    def scroll_to_results(self) -> None:
        if self.results.isVisible():
            self.scroll.verticalScrollBar().setValue(max(0, self.results.y() - 8))

    def _failed(self, message: str, details: str) -> None:
        out = self.request.out_dir if self.request is not None else None
        written = out is not None and (out / "export.json").exists() and \
            (out / "export.json").stat().st_mtime >= self._job_started - 1
        # A verification failure comes after export.json was written: show what was found, beside the message.
        self.refresh_exports(show=out if written else None)
        self.banner.show_message(message, level="error", details=details)

    def _cancelled(self) -> None:
        out = self.request.out_dir if self.request is not None else None
        kept, unchecked = [], []
        if out is not None and out.is_dir():
            kept = sorted(p.name for p in out.glob("*.gguf") if p.stat().st_mtime >= self._job_started - 1)
            unchecked = sorted(p.name for p in out.glob("*.gguf.unverified")
                               if p.stat().st_mtime >= self._job_started - 1)
        message = "The export was cancelled. No file was left half-written."
        if kept:
            message += (f" Finished before the cancel and kept, but not checked: {', '.join(kept)}. Export again to "
                        "replace them.")
        if unchecked:
            message += (f" It stopped during the check: these files were complete but are not checked, so they are "
                        f"kept under names no app will pick up: {', '.join(unchecked)}. Export again to check them.")
        self.refresh_exports(show=out if kept else None)
        self.banner.show_message(message, level="warning")

    def _job_done(self) -> None:
        self._update_busy()
        self.refresh()  # a run found broken is now listed with the reason; the export shown stays

    # --- results -----------------------------------------------------------------------------------------------
    def refresh_exports(self, show: Path | None = None) -> None:
        """Re-read the exports of the selected run; show the one in ``show`` (else keep the shown one)."""
        run = self.current_run()
        keep = show or (self.shown_export.folder if self.shown_export is not None else None)
        extra = []
        text = self.destination.text().strip()
        if text and Path(text).is_absolute():
            extra.append(Path(text))
        if show is not None:
            extra.append(show)
        self.exports = exports_of(run.run_dir, self.project, extra) if run is not None else []
        self.export_picker.blockSignals(True)
        self.export_picker.clear()
        for export in self.exports:
            state = "not finished" if not export.finished else ("verified" if export.passed() else "not verified")
            kinds = "LoRA adapter" if export.lora_only else \
                ", ".join(f.kind for f in export.files if f.is_model) or "files"
            self.export_picker.addItem(f"{format_time(export.created_at)} — {kinds} — {state} — {export.folder}")
        index = next((i for i, e in enumerate(self.exports) if keep is not None and e.folder == keep), 0)
        if self.exports:
            self.export_picker.setCurrentIndex(index)
        self.export_picker.blockSignals(False)
        self.export_picker.setVisible(len(self.exports) > 0)
        self.no_exports.setVisible(not self.exports)
        self.show_export(self.exports[index] if self.exports else None)

    def _export_picked(self, index: int) -> None:
        if 0 <= index < len(self.exports):
            self.show_export(self.exports[index])

    def show_export(self, export: ExportInfo | None) -> None:
        # Shown again (the page came back into view): the file the user picked stays picked.
        same = export is not None and self.shown_export is not None and export.folder == self.shown_export.folder
        picked = self.selected_file() if same else None
        self.shown_export = export
        self.result_box.setVisible(export is not None)
        self.file_tree.clear()
        if export is None:
            return
        level, headline, lines = describe_export(export)
        self.summary.setText(f"<b>{_marked(level, headline)}</b>")
        checks = {f.path.name: describe_check(f.check) for f in export.files if f.check}
        chat = export.chat_file()
        for f in export.files:
            check = ""
            if f.path.name in checks:
                check_level = checks[f.path.name][0]
                agreement = float(f.check.get("top1_agreement") or 0.0) if f.check else 0.0
                check = f"{LEVEL_MARKS[check_level][0]} {percent(agreement)} agree"
            elif f.kind == BASE_KIND:
                check = "unchanged base"
            elif not export.finished and f.kind != "README":
                check = "not checked"
            size = format_size(f.size) if f.size is not None else "missing"
            item = QTreeWidgetItem([f.path.name, self._kind_text(f), size, check])
            item.setData(0, Qt.ItemDataRole.UserRole, str(f.path))
            item.setToolTip(0, str(f.path))
            if f.path.name in checks:
                item.setToolTip(3, checks[f.path.name][1])
                item.setForeground(3, QColor(LEVEL_MARKS[checks[f.path.name][0]][1]))
            if f.size is None:
                item.setForeground(2, QColor("#e03131"))
            self.file_tree.addTopLevelItem(item)
            if (f.path == picked) if picked is not None else (chat is not None and f.path == chat.path):
                self.file_tree.setCurrentItem(item)
        self.checks_label.setText("<br>".join(_marked(lv, text) for lv, text in lines))
        self.checks_label.setVisible(bool(lines))
        self.usage_label.setText(self._usage_html(export))
        details = [f"Folder: {export.folder}"]
        for v in export.checks:
            details.append(f"{v.get('file')}: top-1 agreement {float(v.get('top1_agreement') or 0):.4f} on "
                           f"{v.get('positions')} positions ({v.get('excluded')} near-ties set aside), largest logit "
                           f"difference {float(v.get('max_logit_diff') or 0):.3g} (scale "
                           f"{float(v.get('logit_scale') or 0):.3g}), greedy {v.get('greedy_matches')}/"
                           f"{v.get('greedy_prompts')}, {'passed' if v.get('passed') else 'did not pass'}"
                           f"{' (required)' if v.get('required') else ''}")
        effect = number_or_none(export.report.get("adapter_effect"))
        if effect is not None:
            details.append(f"Largest change the adapter makes to the base model's scores: {effect:.3g}")
        details += [str(n) for n in export.report.get("notes", [])]
        self.details.setPlainText("\n".join(details))
        self._update_result_buttons()

    def _kind_text(self, f: ExportFile) -> str:
        if f.kind == "F16":
            return "Tuned model, full quality (F16)"
        if f.kind in BITS_PER_WEIGHT:
            return f"Tuned model, {f.kind}" + (" (recommended)" if f.kind == RECOMMENDED else "")
        return {BASE_KIND: "Base model before tuning (F16)", LORA_KIND: "LoRA adapter (load on the base model)",
                "Modelfile": "Ollama Modelfile", "README": "How to use these files"}.get(f.kind, "GGUF file")

    def _usage_html(self, export: ExportInfo) -> str:
        # In words: the commands are in the folder's README (and Copy as Command gives the export's own).
        parts = []
        if (export.folder / "Modelfile").is_file():
            parts.append("Ollama: create a model from the <b>Modelfile</b> in the folder")
        lora, base = export.file(LORA_KIND), export.file(BASE_KIND)
        if lora is not None and base is not None:
            parts.append(f"llama.cpp: load <b>{html.escape(base.path.name)}</b> with the adapter "
                         f"<b>{html.escape(lora.path.name)}</b>")
        chat = export.chat_file()
        if chat is not None:
            parts.append(f"LM Studio or llama.cpp: open <b>{html.escape(chat.path.name)}</b>")
        if parts and (export.folder / "README.md").is_file():
            parts.append("the README in the folder says how, step by step")
        return "<span style='color:gray'>" + " · ".join(parts) + "</span>" if parts else ""

    def selected_file(self) -> Path | None:
        item = self.file_tree.currentItem()
        if item is not None:
            return Path(item.data(0, Qt.ItemDataRole.UserRole))
        return None

    def chat_target(self) -> tuple[Path, Path | None] | None:
        """The model file to chat with (the selected one if it is a tuned model, else the preferred one) and the
        base model file to compare it with."""
        export = self.shown_export
        if export is None or not export.finished:
            return None
        base = export.file(BASE_KIND)
        if export.lora_only:
            # The Chat page applies an export's LoRA GGUF to the base it was exported with; the base alone beside it.
            lora = export.file(LORA_KIND)
            if lora is None or lora.size is None or base is None or base.size is None:
                return None
            return lora.path, base.path
        selected = self.selected_file()
        chosen = next((f for f in export.files if f.path == selected and f.is_model and f.size is not None), None)
        chosen = chosen or export.chat_file()
        if chosen is None:
            return None
        return chosen.path, (base.path if base is not None else None)

    def _update_result_buttons(self) -> None:
        export = self.shown_export
        self.reveal_button.setEnabled(export is not None)
        target = self.chat_target()
        if export is not None and not export.passed():
            self.chat_button.setEnabled(False)
            self.chat_button.setToolTip("These files were not verified to behave like the trained model.")
        else:
            self.chat_button.setEnabled(target is not None)
            tip = ""
            if target is not None:
                model, base = target
                what = f"{model.name} on {base.name}" if export is not None and export.lora_only else model.name
                tip = f"Chat with {what}" + (f" beside {base.name}, the model before tuning" if base else "")
            self.chat_button.setToolTip(tip)

    def reveal_selected(self) -> None:
        export = self.shown_export
        if export is None:
            return
        path = self.selected_file()
        if path is None or not path.exists():
            chat = export.chat_file()
            path = chat.path if chat is not None else export.folder
        try:
            reveal(path)
        except OSError as exc:
            self.banner.show_message(f"Could not show {path}: {exc.strerror or exc}", level="error")

    def request_chat(self) -> None:
        target = self.chat_target()
        if target is None:
            return
        model, base = target
        emit(self.chat_requested, str(model), str(base) if base is not None else "")

    def copy_details(self) -> None:
        QGuiApplication.clipboard().setText(bug_report_text(plain_text(self.summary.text()),
                                                             self.details.toPlainText()))
