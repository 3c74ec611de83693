"""The Train page: a wizard from a base model to a running LoRA training, and the run's live view.

The wizard (``slowtune.gui.trainwizard``, embedded in the page) takes the user from a base model, the data and the
settings to a check that the run fits this Mac; then the page starts the run and shows it.

The training itself runs in a child process, ``slowtune train``, supervised by ``slowtune.train.background`` in a
``Job``: it tails the run folder and reports progress; on cancel the trainer stops after the current step and saves a
checkpoint. So the window stays responsive whatever the trainer does, and an out-of-memory kill of the trainer cannot
take the app down. Pause is that same clean stop, shown as "Paused — Resume"; Cancel keeps the checkpoint too, so a
cancelled run can still be resumed. Resume runs ``slowtune train --resume RUN``. The runs listed, the one a later
start of the app finds still training (from its pid file) or interrupted, and their rows in the project are
``slowtune.train.runs``; a run still training in the background is watched by a timer.

Starting a training run from code (for ``slowtune bench gui``, or a script)::

    job = start_training(runner, project_root, model_folder, TrainSettings.from_preset("quick"))  # None if refused
    job = start_training_job(runner, project_root=root, model_dir=folder, iters=40)  # raises if refused
    # job.progress / finished(RunInfo) / failed / cancelled, as for any Job; job.control.run_dir is the run folder
"""

from __future__ import annotations

import html
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from slowtune.dataset import has_training_data
from slowtune.gui.chart import LineChart
from slowtune.gui.page import Page
from slowtune.gui.qtcompat import emit
from slowtune.gui.trainwizard import TrainWizard, new_table, table_item
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import format_duration
from slowtune.settings import Settings
from slowtune.train.background import (
    TrainControl,
    resume_command,
    stop_trainer,
    train_command,
    training_function,
)
from slowtune.train.runs import (
    METRICS_NAME,
    MetricsTail,
    RunInfo,
    history_from_records,
    list_runs,
    model_name,
    new_run_dir,
    overfitting,
    read_run,
    reconcile_runs,
    run_config,
    run_json,
    train_args,
)
from slowtune.train.settings import TrainSettings

TRAIN_STAGES = {"prepare": "starting", "train": "training", "stopping": "stopping"}
TRAIN_SERIES, VALID_SERIES = "Training loss", "Validation loss"
TRAIN_COLOR, VALID_COLOR = "#3b82f6", "#f59e0b"
# The three quality axes scored during the run (slowtune.train.scorer), on a chart of their own (0..1).
QUALITY_SERIES = {"knowledge": ("Knowledge", "#2f9e44"), "retention": ("Retention", "#7048e8"),
                  "leakage": ("Leakage", "#e03131")}
WARNING_COLOR = "#d9480f"
STATE_COLORS = {"finished": "#2f9e44", "failed": "#e03131", "interrupted": "#d9480f", "training": "#3b82f6"}

NO_PROJECT_TEXT = ("<h2>Train</h2><p>No project is open. Create or open one (File › New Project), add documents on "
                   "the Library page and generate questions on the Dataset page; then train a model on them "
                   "here.</p>")
NO_DATA_TEXT = ("<p><b>This project has no training data yet.</b> Generate questions and answers on the "
                "<b>Dataset</b> page and accept them; then come back here to train.</p>")
INTRO_TEXT = ("<h2 style='margin:0'>Train</h2><p>Train a small LoRA adapter on this project's accepted questions "
              "and answers. The base model stays as it is; the adapter holds what it learned. Models larger than "
              "this Mac's memory are trained layer by layer from disk.</p>")


# --- the training job -----------------------------------------------------------------------------------------

def training_job(project_root: Path, run_dir: Path, command: list[str], *, title: str, resume: bool) -> Job:
    control = TrainControl(run_dir=run_dir, project_root=project_root, resume=resume)
    job = Job(title, training_function(command, control), key=str(project_root), stage_names=TRAIN_STAGES)
    job.control = control  # type: ignore[attr-defined]
    return job


def start_training(runner: JobRunner, project_root: Path, model: str | Path, settings: TrainSettings | None = None,
                   *, run_dir: Path | None = None, queue: bool = False) -> Job | None:
    """Train on the project's accepted rows in a child process; the Job, or None if the runner refused it."""
    root = Path(project_root).expanduser().resolve()
    run_dir = run_dir or new_run_dir(root)
    command = train_command(root, model, run_dir, settings or TrainSettings.from_preset("balanced"))
    job = training_job(root, run_dir, command, title=f"Training {model_name(model)}", resume=False)
    return job if runner.submit(job, queue=queue) else None


def start_training_job(runner: JobRunner, *, project_root: Path, model_dir: str | Path, iters: int = 0,
                       settings: TrainSettings | None = None) -> Job:
    """``start_training`` for scripts and ``slowtune bench gui``: the Quick preset (``iters`` steps when given) unless
    ``settings`` say otherwise. Raises RuntimeError when another job of the project is running."""
    settings = settings or TrainSettings.from_preset("quick")
    if iters:
        settings = replace(settings, iters=iters)
    job = start_training(runner, project_root, model_dir, settings)
    if job is None:
        raise RuntimeError(f"Another job is running in the project {project_root}; training was not started.")
    return job


def resume_training(runner: JobRunner, project_root: Path, run_dir: Path) -> Job | None:
    """Continue the run in ``run_dir`` from its last checkpoint; the Job, or None if the runner refused it."""
    model = (run_json(run_dir).get("config") or {}).get("model", run_dir.name)
    job = training_job(Path(project_root).resolve(), run_dir, resume_command(run_dir),
                       title=f"Training {model_name(model)}", resume=True)
    return job if runner.submit(job) else None


# --- the page --------------------------------------------------------------------------------------------------

class StartView(QWidget):
    """The runs of the project, the offer to resume an interrupted one, and New Training Run."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.intro = QLabel()
        self.intro.setWordWrap(True)
        self.intro.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.offer = QFrame()
        self.offer.setObjectName("resume-offer")
        self.offer.setFrameShape(QFrame.Shape.StyledPanel)
        self.offer_label = QLabel()
        self.offer_label.setWordWrap(True)
        self.offer_resume = QPushButton("Resume")
        self.offer_new = QPushButton("Start a New Run")
        offer_layout = QHBoxLayout(self.offer)
        offer_layout.addWidget(self.offer_label, 1)
        offer_layout.addWidget(self.offer_resume)
        offer_layout.addWidget(self.offer_new)
        self.new_button = QPushButton("New Training Run…")
        self.new_button.setDefault(True)
        self.runs_label = QLabel("<b>Runs</b>")
        self.runs = new_table(("Started", "Base model", "Status", "Steps", "Loss", "Validation loss"), stretch=1)
        self.open_button = QPushButton("Open")
        self.resume_button = QPushButton("Resume")
        top = QHBoxLayout()
        top.addWidget(self.new_button)
        top.addStretch(1)
        runs_buttons = QHBoxLayout()
        runs_buttons.addWidget(self.open_button)
        runs_buttons.addWidget(self.resume_button)
        runs_buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.intro)
        layout.addWidget(self.offer)
        layout.addLayout(top)
        layout.addWidget(self.runs_label)
        layout.addWidget(self.runs, 1)
        layout.addLayout(runs_buttons)
        # Without runs the table is hidden; this spacer then takes the spare height, so the text and the button stay
        # together at the top instead of spreading over the page.
        layout.addStretch(0)
        self._layout = layout
        self._spacer_index = layout.count() - 1

    def show_runs_table(self, shown: bool) -> None:
        for widget in (self.runs_label, self.runs, self.open_button, self.resume_button):
            widget.setVisible(shown)
        self._layout.setStretch(self._spacer_index, 0 if shown else 1)


class RunView(QWidget):
    """One run: the live chart, its figures, and what can be done with it now."""

    STATS = ("Step", "Training loss", "Validation loss", "Quality", "Tokens/s", "Memory", "Elapsed", "Time left")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel()
        self.status.setWordWrap(True)
        # While the run trains: said plainly when validation loss rises while training loss falls (the model
        # memorises). When it has finished: its other warnings, a sentence each, under the verdict.
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setStyleSheet(f"color: {WARNING_COLOR};")
        self.advice.hide()
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(12)
        self.chart = LineChart(x_label="step", y_label="loss", x_integer=True,
                               placeholder="The loss curve appears here after the first training step.")
        self.chart.add_series(TRAIN_SERIES, TRAIN_COLOR)
        self.chart.add_series(VALID_SERIES, VALID_COLOR, markers=True)
        self.quality = LineChart(x_label="step", y_label="share", x_integer=True,
                                 placeholder="Knowledge, retention and leakage appear here when the run scores "
                                             "itself.")
        for name, color in QUALITY_SERIES.values():
            self.quality.add_series(name, color, markers=True)
        self.quality.setToolTip("Every few steps the model answers held-out questions about the documents "
                                "(knowledge), general questions the base model knew (retention), and questions about "
                                "things the documents do not mention (leakage: lower is better). Export uses the "
                                "checkpoint with the best balance of the three.")
        self.values: dict[str, QLabel] = {}
        stats = QGridLayout()
        for i, name in enumerate(self.STATS):
            caption = QLabel(name)
            caption.setStyleSheet("color: gray;")
            value = QLabel("—")
            value.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self.values[name] = value
            stats.addWidget(caption, 0, i)
            stats.addWidget(value, 1, i)
        self.pause_button = QPushButton("Pause")
        self.pause_button.setToolTip("Stop after this step and save a checkpoint; Resume continues from it")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after this step; the checkpoint is kept, so the run can still be resumed")
        self.resume_button = QPushButton("Resume")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Ask the trainer to stop after this step and save a checkpoint")
        self.export_button = QPushButton("Export this model…")
        self.folder_button = QPushButton("Show in Finder" if sys.platform == "darwin" else "Show Folder")
        self.new_button = QPushButton("New Run…")
        self.back_button = QPushButton("All Runs")
        buttons = QHBoxLayout()
        for button in (self.pause_button, self.cancel_button, self.resume_button, self.stop_button,
                       self.export_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        for button in (self.folder_button, self.new_button, self.back_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.status)
        layout.addWidget(self.advice)
        layout.addWidget(self.bar)
        charts = QHBoxLayout()
        charts.addWidget(self.chart, 3)
        charts.addWidget(self.quality, 2)
        layout.addLayout(charts, 1)
        layout.addLayout(stats)
        layout.addLayout(buttons)


class TrainPage(Page):
    """Pick a base model, check the fit, train with a live loss chart; pause, cancel and resume."""

    run_finished = Signal(str)  # the run folder, when a run ends with status done
    export_requested = Signal(str)  # the run folder

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__("train", runner, settings, parent)
        self.job: Job | None = None
        self.run: RunInfo | None = None  # the run shown in the run view
        self.run_dir: Path | None = None
        self.state = "none"  # the run view's: starting, running, stopping, paused, cancelled, failed, finished, ...
        self.tail: MetricsTail | None = None
        self.total_steps: int | None = None
        self._started_at = 0.0
        self._last_record: dict[str, Any] = {}
        self._best_val: float | None = None
        self._job_title = ""
        self.wizard: TrainWizard | None = None

        self.start_view = StartView()
        self.start_view.new_button.clicked.connect(self.new_run)
        self.start_view.offer_new.clicked.connect(self.new_run)
        self.start_view.offer_resume.clicked.connect(self._resume_offered)
        self.start_view.open_button.clicked.connect(self._open_selected)
        self.start_view.resume_button.clicked.connect(self._resume_selected)
        self.start_view.runs.itemSelectionChanged.connect(self._runs_selection_changed)
        self.start_view.runs.itemDoubleClicked.connect(lambda _item: self._open_selected())
        self.offered: RunInfo | None = None

        self.wizard = TrainWizard(self)
        self.wizard.closed.connect(self._wizard_closed)

        self.run_view = RunView()
        rv = self.run_view
        rv.pause_button.clicked.connect(self.pause)
        rv.cancel_button.clicked.connect(self.cancel)
        rv.resume_button.clicked.connect(lambda: self.resume(self.run_dir) if self.run_dir else None)
        rv.stop_button.clicked.connect(self.stop_background)
        rv.export_button.clicked.connect(
            lambda: emit(self.export_requested, str(self.run_dir)) if self.run_dir else None)
        rv.folder_button.clicked.connect(
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.run_dir))) if self.run_dir else None)
        rv.new_button.clicked.connect(self.new_run)
        rv.back_button.clicked.connect(self.show_runs)
        # A run still training in another process (started before the app was last closed) is watched by a timer.
        self.background_timer = QTimer(self)
        self.background_timer.setInterval(1000)
        self.background_timer.timeout.connect(self._watch_background)
        # Elapsed counts every second while the run shown trains, whether or not the trainer reports anything.
        self.elapsed_timer = QTimer(self)
        self.elapsed_timer.setInterval(1000)
        self.elapsed_timer.timeout.connect(self._show_elapsed)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.start_view)
        self.stack.addWidget(self.wizard)
        self.stack.addWidget(self.run_view)
        layout = self.page_layout()
        layout.addWidget(self.banner)
        layout.addWidget(self.stack, 1)
        self.refresh()

    # --- showing -------------------------------------------------------------------------------------------
    def project_set(self, changed: bool) -> None:
        super().project_set(changed)
        if not self.busy():
            self.background_timer.stop()
            self.run = None
            self.run_dir = None
            self.stack.setCurrentWidget(self.start_view)

    def refresh_on_show(self) -> bool:
        # Rows may have been accepted, or a run made from Terminal, while the page was hidden.
        return self.stack.currentWidget() is self.start_view

    def page_jobs(self) -> tuple[Job | None]:
        return (self.job,)

    def has_data(self) -> bool:
        if self.project is None:
            return False
        return has_training_data(self.project)

    def refresh(self) -> None:
        """The start view: runs, the resume offer, and the empty states."""
        view = self.start_view
        project = self.project
        if project is None:
            view.intro.setText(NO_PROJECT_TEXT)
            view.offer.hide()
            view.new_button.hide()
            view.show_runs_table(False)
            return
        has_data = self.has_data()
        view.intro.setText(INTRO_TEXT + ("" if has_data else NO_DATA_TEXT))
        view.new_button.show()
        view.new_button.setEnabled(has_data and not self.busy())
        runs = list_runs(project)
        reconcile_runs(project.root, runs)
        view.show_runs_table(bool(runs))
        view.runs.setRowCount(len(runs))
        for i, run in enumerate(runs):
            loss = f"{run.loss:.3f}" if isinstance(run.loss, int | float) else "—"
            valid = run.validation_loss
            steps = f"{run.step:,}" + (f" of {run.total_steps:,}" if run.total_steps else "")
            values = (run.started_text, model_name(run.model), run.state, steps, loss,
                      f"{valid:.3f}" if isinstance(valid, int | float) else "—")
            for column, text in enumerate(values):
                tooltip = {0: str(run.run_dir), 2: run.error or ""}.get(column, "")
                item = table_item(text, data=str(run.run_dir) if column == 0 else None,
                              color=STATE_COLORS.get(run.state) if column == 2 else None, tooltip=tooltip)
                view.runs.setItem(i, column, item)
        self._runs_selection_changed()
        own = self.run_dir if self.busy() else None
        offer = next((r for r in runs if r.run_dir != own and (r.resumable or r.training)), None)
        self.offered = offer
        if offer is None:
            view.offer.hide()
        else:
            view.offer.show()
            view.offer_new.setVisible(has_data)
            view.offer_new.setEnabled(not self.busy())
            if offer.training:
                how = ("slowtune was closed while it trained" if offer.live_pid is not None else
                       "it was started outside this app")
                view.offer_label.setText(
                    f"<b>A training run is still going on in the background</b> ({html.escape(model_name(offer.model))}"
                    f", started {offer.started_text}): {how}.")
                view.offer_resume.setText("Show")
                view.offer_resume.setEnabled(True)
            else:
                what = {"paused": "A paused training run", "cancelled": "A cancelled training run",
                        "failed": "A training run that stopped with an error"}.get(offer.state,
                                                                                   "A training run was interrupted")
                total = f" of {offer.total_steps:,}" if offer.total_steps else ""
                error = f" ({html.escape(offer.error)})" if offer.state == "failed" and offer.error else ""
                view.offer_label.setText(
                    f"<b>{what}</b>{error}: {html.escape(model_name(offer.model))}, started {offer.started_text}. "
                    f"Its checkpoint is at step {offer.checkpoint_step:,}{total}; Resume continues from there.")
                view.offer_resume.setText("Resume")
                view.offer_resume.setEnabled(not self.busy())

    def command_line(self) -> str | None:
        """What the page does, as a ``slowtune train`` command line (the window's Copy as Command): resuming the
        run shown or selected when it can be resumed, else a new run on the project (with the model of its latest
        run, or MODEL to fill in). None without a project."""
        if self.project is None:
            return None
        shown = read_run(self.run_dir) if self.run_dir is not None and not self.busy() else None
        run = shown or (self._selected_run() if self.stack.currentWidget() is self.start_view else None)
        if run is not None and run.resumable:
            return shlex.join(["slowtune", "train", "--resume", str(run.run_dir)])
        config = run_config(run.run_dir) if run is not None else {}
        if config.get("model"):  # a new run with the settings of the run shown
            return shlex.join(["slowtune", "train", *train_args(config)])
        runs = list_runs(self.project)
        model = str(runs[0].model) if runs and runs[0].model else "MODEL"
        return shlex.join(["slowtune", "train", "--model", model, "--data", str(self.project.root)])

    def _selected_run(self) -> RunInfo | None:
        runs = self.start_view.runs
        rows = runs.selectionModel().selectedRows() if runs.selectionModel() else []
        if not rows:
            return None
        item = runs.item(rows[0].row(), 0)
        return read_run(Path(item.data(Qt.ItemDataRole.UserRole))) if item is not None else None

    def _runs_selection_changed(self) -> None:
        runs = self.start_view.runs
        selected = bool(runs.selectionModel() and runs.selectionModel().selectedRows())
        self.start_view.open_button.setEnabled(selected)
        run = self._selected_run() if selected else None
        self.start_view.resume_button.setEnabled(run is not None and run.resumable and not self.busy())

    def _open_selected(self) -> None:
        run = self._selected_run()
        if run is not None:
            self.open_run(run.run_dir)

    def _resume_selected(self) -> None:
        run = self._selected_run()
        if run is not None and run.resumable:
            self.resume(run.run_dir)

    def _resume_offered(self) -> None:
        offer = self.offered
        if offer is None:
            return
        if offer.training:
            self.open_run(offer.run_dir)
        else:
            self.resume(offer.run_dir)

    def show_runs(self) -> None:
        self.background_timer.stop()
        self.stack.setCurrentWidget(self.start_view)
        self.refresh()

    # --- the wizard ----------------------------------------------------------------------------------------
    def new_run(self) -> None:
        if self.project is None or self.busy() or self.wizard is None:
            return
        if not self.has_data():
            self.banner.show_message("There is nothing to train on yet: accept some conversations on the Dataset "
                                     "page first.", level="warning")
            return
        self.banner.clear()
        self.background_timer.stop()
        self.wizard.restart()
        self.stack.setCurrentWidget(self.wizard)

    def _wizard_closed(self, start: bool) -> None:
        wizard = self.wizard
        assert wizard is not None
        model = wizard.model_page.model_path()
        if start and model is not None and self.start_run(model, wizard.settings_page.settings()) is not None:
            return
        self.show_runs()

    # --- running -------------------------------------------------------------------------------------------
    def start_run(self, model: Path | str, settings: TrainSettings) -> Job | None:
        """Start a new run on the open project; it shows in the run view."""
        if self.project is None or self.busy():
            return None
        job = start_training(self.runner, self.project.root, model, settings)
        if job is None:
            self.banner.show_message("Another job is running in this project. Wait for it to finish, or cancel it "
                                     "in the status bar, then start training.", level="warning")
            return None
        self._watch(job, title=f"{model_name(model)} · {settings.describe()}")
        return job

    def resume(self, run_dir: Path) -> Job | None:
        if self.project is None or self.busy():
            return None
        run = read_run(run_dir)
        if run is None or not run.resumable:
            self.banner.show_message("This run has no checkpoint to resume from.", level="warning")
            return None
        self.banner.clear()
        job = resume_training(self.runner, self.project.root, run_dir)
        if job is None:
            self.banner.show_message("Another job is running in this project. Wait for it to finish, or cancel it "
                                     "in the status bar, then resume.", level="warning")
            return None
        self._watch(job, title=f"{model_name(run.model)} · resumed from step {run.checkpoint_step:,}")
        return job

    def _watch(self, job: Job, *, title: str) -> None:
        control: TrainControl = job.control  # type: ignore[attr-defined]
        self.job = job
        self.run_dir = control.run_dir
        self.run = None
        self.banner.clear()
        self.background_timer.stop()
        job.progress.connect(partial(self._progress, job))
        job.finished.connect(partial(self._finished, job))
        job.failed.connect(partial(self._failed, job))
        job.cancelled.connect(partial(self._cancelled, job))
        job.done.connect(partial(self._job_done, job))
        self._job_title = title
        self._begin_view(control.run_dir, title)
        info = run_json(control.run_dir)
        self.total_steps = int(info["total_steps"]) if info.get("total_steps") else None
        self.run_view.chart.set_x_max_hint(self.total_steps)
        self._started_at = time.monotonic()
        self._set_state("starting", "Starting the trainer: loading the model and the data…")
        self._read_metrics()
        self._show_elapsed()
        self.elapsed_timer.start()

    def _begin_view(self, run_dir: Path, title: str) -> None:
        rv = self.run_view
        rv.title.setText(f"<h3 style='margin:0'>Run {html.escape(run_dir.name)}</h3>{html.escape(title)}")
        rv.chart.clear()
        rv.chart.set_x_max_hint(None)
        rv.quality.clear()
        rv.quality.set_x_max_hint(None)
        for label in rv.values.values():
            label.setText("—")
        self.tail = MetricsTail(run_dir / METRICS_NAME)
        self._last_record = {}
        self._last_scores: dict[str, Any] = {}
        self._best_val = None
        self._loss_records: list[dict[str, Any]] = []  # step, loss, val_loss: is the model memorising?
        rv.advice.hide()
        self.stack.setCurrentWidget(rv)

    def open_run(self, run_dir: Path) -> None:
        """Show a stored run, or the one training now."""
        job = self.job
        if self.busy() and job is not None and run_dir == job.control.run_dir:  # type: ignore[attr-defined]
            if self._viewing(job):
                self.stack.setCurrentWidget(self.run_view)
                return
            self.run, self.run_dir = None, run_dir
            self._begin_view(run_dir, self._job_title)
            info = run_json(run_dir)
            self.total_steps = int(info["total_steps"]) if info.get("status") == "running" and \
                info.get("total_steps") else None
            self.run_view.chart.set_x_max_hint(self.total_steps)
            if job.cancel_requested:
                self._set_state("stopping", "Stopping after this step and saving a checkpoint…")
            else:
                self._set_state("running", "Training…")
            self._read_metrics()
            return
        self.background_timer.stop()
        run = read_run(run_dir)
        if run is None:
            return
        self.run = run
        self.run_dir = run_dir
        self._begin_view(run_dir, f"{model_name(run.model)} · {run.engine} engine · started {run.started_text}")
        self.total_steps = run.total_steps
        self.run_view.chart.set_x_max_hint(run.total_steps)
        self._read_metrics()
        self._show_stored(run)

    def _show_stored(self, run: RunInfo) -> None:
        at = f"step {run.checkpoint_step:,}" if run.checkpoint_step is not None else "the start"
        if run.training:
            if run.live_pid is not None:
                text = ("Training in another process (started before slowtune was last closed). Stop asks it to "
                        "save a checkpoint and stop; you can resume it later.")
            else:
                text = ("Training in another process, started outside this app. It can be stopped only where it "
                        "was started; stopping it there saves a checkpoint, and you can resume it here.")
            self._set_state("background", text)
            self.run_view.stop_button.setVisible(run.live_pid is not None)
            self.background_timer.start()
            return
        self.background_timer.stop()
        texts = {
            "finished": self._finished_text(run),
            "paused": f"Paused. Resume continues from {at}.",
            "cancelled": f"Cancelled. The checkpoint at {at} is kept: Resume continues from it.",
            "failed": f"Stopped by an error: {run.error or 'see the log in the run folder'}."
                      + (f" Resume continues from {at}." if run.resumable else ""),
            "interrupted": f"Interrupted (the app or the trainer stopped unexpectedly). Resume continues from {at}.",
        }
        self._set_state(run.state, texts.get(run.state, run.state))

    def _finished_text(self, run: RunInfo | None) -> str:
        """The finished run's verdict in one line, from its final figures (its other warnings are listed under it)."""
        if run is None:
            return "Finished."
        export = f" Export will use {run.checkpoint_words}." if run.chosen else ""
        if run.overfitting is not None:
            rose = (f": validation loss rose from {run.best_val:.2f} to {run.val_loss:.2f} while training loss fell"
                    if run.best_val is not None and run.val_loss is not None and run.val_loss > run.best_val
                    else ": validation loss rose while training loss fell")
            return f"Finished, but the model memorised{rose}.{export}"
        parts = [f"{run.step:,} steps"]
        if run.loss is not None:
            parts.append(f"training loss {run.loss:.3f}")
        if run.best_val is not None:
            parts.append(f"best validation loss {run.best_val:.3f}")
        lead = "Finished with warnings" if run.warnings else "Finished"
        return f"{lead}: {', '.join(parts)}.{export}"

    def _finished_notes(self, run: RunInfo) -> list[tuple[str, str]]:
        """The finished run's warnings but the memorising one (said in the verdict): (one sentence, all of it)."""
        notes = [(_first_sentence(w["message"]), str(w["message"])) for w in run.warnings
                 if w is not run.overfitting]
        if run.stopped_early:
            notes.append((f"It stopped early: {run.stopped_early}.", ""))
        return notes

    def _set_state(self, state: str, text: str) -> None:
        self.state = state
        rv = self.run_view
        color = {"finished": "#2f9e44", "failed": "#e03131", "stopping": WARNING_COLOR}.get(state)
        if state == "finished" and self.run is not None and self.run.warnings:
            color = WARNING_COLOR  # a run that memorised, forgot or leaks is not shown as a plain success
        self.verdict_color = color
        self._show_advice()
        style = f" style='color:{color}'" if color else ""
        rv.status.setText(f"<b{style}>{html.escape(text, quote=False)}</b>")
        live = state in ("starting", "running")
        resumable = self.run is not None and self.run.resumable
        rv.pause_button.setVisible(live or state == "stopping")
        rv.cancel_button.setVisible(live or state == "stopping")
        rv.pause_button.setEnabled(live)
        rv.cancel_button.setEnabled(live)
        rv.resume_button.setVisible(state in ("paused", "cancelled", "failed", "interrupted") and resumable)
        rv.resume_button.setEnabled(not self.busy())
        rv.stop_button.setVisible(state == "background")
        rv.export_button.setVisible(state == "finished")
        rv.new_button.setVisible(state not in ("starting", "running", "stopping", "background"))
        rv.new_button.setEnabled(self.has_data() and not self.busy())
        rv.bar.setVisible(state in ("starting", "running", "stopping", "background"))
        if state == "starting":
            rv.bar.setRange(0, 0)

    def _viewing(self, job: Job | None) -> bool:
        """The run view shows ``job``'s run (the user may be looking at an older run meanwhile)."""
        return job is not None and job is self.job and self.run_dir == job.control.run_dir  # type: ignore[attr-defined]

    def _progress(self, job: Job, stage: str, done: float, total: object, metrics: object, status: str) -> None:
        if not self._viewing(job):
            return
        if stage == "stopping":
            self._set_state("stopping", "Stopping after this step and saving a checkpoint…")
        elif stage == "prepare" and self.state == "starting":
            said = metrics.get("stage_text") if isinstance(metrics, dict) else None
            if isinstance(said, str) and said:
                self._set_state("starting", said)  # the trainer's words: checking the base model, replay, ...
            elif done >= 1:
                self._set_state("starting", f"Preparing: {status}…")
        elif stage == "train" and self.state != "stopping":
            if isinstance(total, int | float) and total > 0:
                self.total_steps = int(total)
                self.run_view.chart.set_x_max_hint(self.total_steps)
                self.run_view.quality.set_x_max_hint(self.total_steps)
            if self.state != "running":
                self._set_state("running", "Training…")
        self._read_metrics()

    def _read_metrics(self) -> None:
        """New lines of the run's metrics file: the chart's points and the figures under it."""
        if self.tail is None:
            return
        reset, records = self.tail.read()
        chart = self.run_view.chart
        if reset:
            chart.clear()
            self.run_view.quality.clear()
            self._best_val = None
        for record in records:
            step = float(record["step"])
            if isinstance(record.get("loss"), int | float):
                chart.append(TRAIN_SERIES, step, float(record["loss"]))
            if isinstance(record.get("val_loss"), int | float):
                chart.append(VALID_SERIES, step, float(record["val_loss"]))
                value = float(record["val_loss"])
                self._best_val = value if self._best_val is None else min(self._best_val, value)
            for key, (name, _) in QUALITY_SERIES.items():
                if isinstance(record.get(key), int | float):
                    self.run_view.quality.append(name, step, float(record[key]))
            if any(isinstance(record.get(k), int | float) for k in QUALITY_SERIES):
                self._last_scores = record
        if records:
            self._last_record = records[-1]
        self._loss_records += [{k: r[k] for k in ("step", "loss", "val_loss") if k in r} for r in records]
        if reset or any("val_loss" in r for r in records):
            self._show_advice()
        self._show_figures()

    def memorising(self) -> dict[str, Any] | None:
        """The warning that the model shown memorises: the finished run's, else from the losses charted so far."""
        if self.run is not None and self.run.overfitting is not None:
            return self.run.overfitting
        return overfitting(history_from_records(getattr(self, "_loss_records", []))[0])

    def _show_advice(self) -> None:
        advice = self.run_view.advice
        run = self.run
        if run is not None and run.state == "finished":
            notes = self._finished_notes(run)
            advice.setVisible(bool(notes))
            advice.setText("<ul style='margin:0'>" + "".join(f"<li>{html.escape(short)}</li>" for short, _ in notes)
                           + "</ul>")
            advice.setToolTip("\n\n".join(full for short, full in notes if full and full != short))
            return
        advice.setToolTip("")
        warning = self.memorising()
        if warning is None:
            advice.hide()
            return
        uses = "Export will use the best checkpoint, not the last."
        advice.setText(f"<b>Validation loss is rising while training loss falls.</b> {html.escape(warning['message'])}"
                       f" {html.escape(uses)} Fewer steps or a lower learning rate (Settings › Advanced) may help "
                       "next time.")
        advice.show()

    def _show_figures(self) -> None:
        record = self._last_record
        values = self.run_view.values
        total = self.total_steps
        if record:
            step = int(record["step"])
            values["Step"].setText(f"{step:,}" + (f" of {total:,}" if total else "")
                                   + (f" · epoch {int(record['epoch']) + 1}" if "epoch" in record else ""))
            values["Training loss"].setText(f"{record['loss']:.3f}" if "loss" in record else "—")
            if total and self.state in ("running", "stopping", "starting"):
                self.run_view.bar.setRange(0, total)
                self.run_view.bar.setValue(min(step, total))
            if "tokens_per_s" in record:
                values["Tokens/s"].setText(f"{record['tokens_per_s']:,.0f}")
            # One figure a user can hold against the Mac's memory: the larger of the framework's peak and the
            # training process's own size.
            used = [float(record[k]) for k in ("mlx_peak_gb", "rss_gb") if isinstance(record.get(k), int | float)]
            values["Memory"].setText(f"{max(used):.2f} GB at most" if used else "—")
            if self.state in ("running", "stopping") and "eta_s" in record:
                values["Time left"].setText(format_duration(float(record["eta_s"])))
            elif self.state == "finished":
                values["Time left"].setText("—")
        points = self.run_view.chart.points(VALID_SERIES)
        if points:
            latest = points[-1][1]
            best = f" (best {self._best_val:.3f})" if self._best_val is not None and self._best_val < latest else ""
            values["Validation loss"].setText(f"{latest:.3f}{best}")
        scores = getattr(self, "_last_scores", None)  # set by show_run
        if scores:
            values["Quality"].setText(" · ".join(
                f"{name[0]} {scores[key]:.2f}" for key, (name, _) in QUALITY_SERIES.items()
                if isinstance(scores.get(key), int | float)))
            values["Quality"].setToolTip("K: knowledge, R: retention, L: leakage (at the last scoring)")
        self._show_elapsed()

    def _show_elapsed(self) -> None:
        if self.busy() and self._viewing(self.job):
            self.run_view.values["Elapsed"].setText(format_duration(time.monotonic() - self._started_at))
        elif not self.busy():
            self.elapsed_timer.stop()

    def _finished(self, job: Job, result: object) -> None:
        if job is not self.job:
            return
        assert isinstance(result, RunInfo)
        emit(self.run_finished, str(result.run_dir))
        if not self._viewing(job):
            return
        self.run = result
        self._read_metrics()
        self._set_state("finished", self._finished_text(result))
        self.run_view.values["Time left"].setText("—")

    def _failed(self, job: Job, message: str, details: str) -> None:
        if job is not self.job:
            return
        control: TrainControl = job.control  # type: ignore[attr-defined]
        self.banner.show_message(message, level="error", details=control.log_tail or details)
        if not self._viewing(job):
            return
        self.run = read_run(control.run_dir)
        self._read_metrics()
        at = f" Resume continues from step {self.run.checkpoint_step:,}." if self.run and self.run.resumable else ""
        self._set_state("failed", f"Training stopped with an error.{at}")

    def _cancelled(self, job: Job) -> None:
        if not self._viewing(job):
            return
        control: TrainControl = job.control  # type: ignore[attr-defined]
        self.run = read_run(control.run_dir)
        self._read_metrics()
        run = self.run
        if run is None or run.checkpoint_step is None:
            self._set_state("stopped", "Stopped before the first training step; nothing was kept.")
            return
        if control.stop_reason == "pause":
            self._set_state("paused", f"Paused at step {run.checkpoint_step:,}. Resume continues from there.")
        else:
            self._set_state("cancelled", f"Cancelled at step {run.checkpoint_step:,}. The checkpoint is kept: Resume "
                                         "continues from it, or start a new run.")

    def _job_done(self, job: Job) -> None:
        if job is not self.job:
            return
        self.elapsed_timer.stop()
        if self._viewing(job):
            self.run_view.values["Elapsed"].setText(format_duration(time.monotonic() - self._started_at))
        self.refresh()

    def _stop(self, reason: str) -> None:
        if not self.busy():
            return
        job = self.job
        assert job is not None
        job.control.stop_reason = reason  # type: ignore[attr-defined]
        job.cancel()
        self._set_state("stopping", "Stopping after this step and saving a checkpoint…")

    def pause(self) -> None:
        self._stop("pause")

    def cancel(self) -> None:
        self._stop("cancel")

    # --- a run training in another process ------------------------------------------------------------------
    def stop_background(self) -> None:
        run = self.run
        if run is None or run.live_pid is None:
            return
        stop_trainer(run.live_pid)
        self._set_state("background", "Asked the trainer to stop after this step and save a checkpoint…")
        self.run_view.stop_button.setEnabled(False)

    def _watch_background(self) -> None:
        if self.run is None or self.run_dir is None or self.stack.currentWidget() is not self.run_view:
            self.background_timer.stop()
            return
        self._read_metrics()
        run = read_run(self.run_dir)
        if run is None or not run.training:
            self.background_timer.stop()
            self.run_view.stop_button.setEnabled(True)
            if run is not None:
                self.run = run
                self._show_stored(run)


_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Z\u201c\"])")


def _first_sentence(text: str) -> str:
    """A warning's first sentence (the rest, an example answer or advice, goes in the tooltip)."""
    return _SENTENCE_BREAK.split(str(text).strip(), maxsplit=1)[0]

