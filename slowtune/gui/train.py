"""The Train page: a wizard from a base model to a running LoRA training, and the run's live view.

The wizard (a QWizard embedded in the page) has four steps: the base model (the catalog with sizes and a "fits"
badge, downloads with progress, or a local folder), the data (rows, tokens, split), the settings (presets Quick /
Balanced / Thorough, and an Advanced section with the actual values) and the preflight (the engine, the memory
estimate against this Mac's memory, the predicted time). Downloads and the preflight run as in-process ``Job``s
through the Qt-free core.

The training itself runs in a child process, ``slowtune train`` (``slowtune.selfcmd``), wrapped in a ``Job`` whose
function starts it, tails the run folder's ``metrics.jsonl`` and ``run.json`` and reports progress from them. On
cancel it sends SIGINT: the trainer stops after the current step and saves a checkpoint (it is killed only after a
long grace period). So the window stays responsive whatever the trainer does, and an out-of-memory kill of the
trainer cannot take the app down. Pause is that same clean stop, shown as "Paused — Resume"; Cancel keeps the
checkpoint too, so a cancelled run can still be resumed. Resume runs ``slowtune train --resume RUN``.

Beside the trainer's own files, the run folder holds ``train.log`` (the trainer's output, shown when it fails) and,
while it runs, ``trainer.pid``: a later start of the app tells an interrupted run (offered for Resume) from one
still training in the background by it.

Starting a training run from code (for ``slowtune bench gui``, or a script)::

    job = start_training(runner, project_root, model_folder, TrainSettings.from_preset("quick"))  # None if refused
    job = start_training_job(runner, project_root=root, model_dir=folder, iters=40)  # raises if refused
    # job.progress / finished(RunInfo) / failed / cancelled, as for any Job; job.control.run_dir is the run folder
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QShowEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QStackedWidget,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWizard,
    QWizardPage,
)

from slowtune import system
from slowtune.dataset import CURRENT_ROW_SQL
from slowtune.dataset import rows as dataset_rows
from slowtune.fsutil import atomic_write_text
from slowtune.gui.chart import LineChart
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import MessageBanner
from slowtune.gui.workers import Job, JobRunner
from slowtune.models import catalog
from slowtune.models.catalog import CatalogModel, ModelError, describe_local
from slowtune.progress import Cancelled, Progress
from slowtune.selfcmd import slowtune_command
from slowtune.settings import Settings
from slowtune.store import Project, StoreError
from slowtune.train import config as train_config

log = logging.getLogger(__name__)

CATALOG = catalog.CATALOG  # module-level name: tests offer a model of the fake hub through it

LOG_NAME = "train.log"
PID_NAME = "trainer.pid"
METRICS_NAME = "metrics.jsonl"
RUN_JSON = "run.json"
VALIDATIONS_PER_RUN = 20
POLL_S = 0.2  # how often the job looks at the run folder and the child
ACTIVE_WINDOW_S = 120.0  # a run folder written to this recently, by a trainer no app started, is still training
# How long a stop waits for the trainer to finish its step and write the checkpoint before killing it. A streamed
# step of a large model on a slow disk can take minutes; a kill loses only the steps since the last checkpoint.
STOP_GRACE_S = 900.0
DOWNLOAD_KEY = "model-download"  # downloads are not tied to a project: one at a time, beside a project's job
TRAIN_STAGES = {"prepare": "starting", "train": "training", "stopping": "stopping"}
PREFLIGHT_STAGES = {"preflight": "checking"}
TRAIN_SERIES, VALID_SERIES = "Training loss", "Validation loss"
TRAIN_COLOR, VALID_COLOR = "#3b82f6", "#f59e0b"
FIT_LABELS = {"memory": "fits in memory", "streamed": "streamed (slower)", "too_large": "too large for this Mac",
              "unsupported": "not supported", "unknown": "cannot tell"}
FIT_COLORS = {"memory": "#2f9e44", "streamed": "#d9480f", "too_large": "#e03131", "unsupported": "#e03131",
              "unknown": "#868e96"}
STATE_COLORS = {"finished": "#2f9e44", "failed": "#e03131", "interrupted": "#d9480f", "training": "#3b82f6"}
TOKEN_HINT = ("Accept the model's licence on its Hugging Face page, then save your Hugging Face token on the "
              "Providers page.")
GB = 1e9
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_RUN_ID_TIME = re.compile(r"^(\d{8}-\d{6})")

NO_PROJECT_TEXT = ("<h2>Train</h2><p>No project is open. Create or open one (File › New Project), add documents on "
                   "the Library page and generate questions on the Dataset page; then train a model on them "
                   "here.</p>")
NO_DATA_TEXT = ("<p><b>This project has no training data yet.</b> Generate questions and answers on the "
                "<b>Dataset</b> page and accept them; then come back here to train.</p>")
INTRO_TEXT = ("<h2 style='margin:0'>Train</h2><p>Train a small LoRA adapter on this project's accepted questions "
              "and answers. The base model stays as it is; the adapter holds what it learned. Models larger than "
              "this Mac's memory are trained layer by layer from disk.</p>")
COMMAND_HINT = ("The same from Terminal: <code>slowtune train --model MODEL --data {project}</code>; "
                "<code>slowtune train --resume RUN_FOLDER</code>.")


# --- presets and settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preset:
    title: str
    description: str
    lora: str  # `slowtune train --preset`: a key of slowtune.train.config.PRESETS
    epochs: float  # --epochs
    learning_rate: float  # --lr


# What each preset passes to `slowtune train`; the Advanced section shows (and edits) the resulting values:
#   Quick     --preset light     (LoRA rank 8 on the q/v projections of the top 8 blocks)  --epochs 1  --lr 2e-4
#   Balanced  --preset standard  (rank 16 on every projection of every block)              --epochs 3  --lr 1e-4
#   Thorough  --preset strong    (rank 32 on every projection of every block)              --epochs 5  --lr 1e-4
# and for all three --max-seq-len 1024 --batch-size 4. The rank is always passed with --alpha 2*rank, the scale
# (alpha / rank = 2) every preset uses, so changing the rank in Advanced does not also change the update's scale.
PRESETS: dict[str, Preset] = {
    "quick": Preset("Quick", "A first result in minutes: a small adapter on the top blocks and one pass over the "
                    "data. Good for tone and answer format.", "light", 1.0, 2e-4),
    "balanced": Preset("Balanced", "Every layer adapted, three passes over the data. Good for teaching the facts "
                       "in your documents.", "standard", 3.0, 1e-4),
    "thorough": Preset("Thorough", "A larger adapter and five passes: learns more detail and takes about twice as "
                       "long as Balanced.", "strong", 5.0, 1e-4),
}


@dataclass
class TrainSettings:
    """A run's settings as the wizard shows them; ``cli_args`` turns them into ``slowtune train`` options."""

    preset: str = "balanced"  # a PRESETS key, or "custom" when the Advanced values differ from every preset
    lora_preset: str = "standard"  # --preset: which LoRA layers are adapted
    rank: int = 16
    learning_rate: float = 1e-4
    epochs: float = 3.0
    iters: int = 0  # optimizer steps; 0: derived from epochs
    max_seq_len: int = 1024
    lora_layers: int = -1  # -1: every block
    batch_size: int = 4
    val_every: int = -1  # -1: about VALIDATIONS_PER_RUN times a run, whatever its length (see start_training)
    save_every: int = 100
    seed: int = 0

    @classmethod
    def from_preset(cls, key: str, **changes: Any) -> TrainSettings:
        preset = PRESETS[key]
        lora = train_config.PRESETS[preset.lora]
        settings = cls(preset=key, lora_preset=preset.lora, rank=lora.rank, learning_rate=preset.learning_rate,
                       epochs=preset.epochs, lora_layers=lora.num_layers)
        for name, value in changes.items():
            setattr(settings, name, value)
        return settings

    def matching_preset(self) -> str | None:
        """The preset these values are, or None (custom)."""
        for key in PRESETS:
            base = TrainSettings.from_preset(key)
            if all(getattr(self, n) == getattr(base, n) for n in
                   ("lora_preset", "rank", "learning_rate", "epochs", "iters", "max_seq_len", "lora_layers",
                    "batch_size")):
                return key
        return None

    def cli_args(self) -> list[str]:
        args = ["--preset", self.lora_preset, "--rank", str(self.rank), "--alpha", f"{2.0 * self.rank:g}",
                "--lr", f"{self.learning_rate:g}", "--max-seq-len", str(self.max_seq_len),
                "--lora-layers", str(self.lora_layers), "--batch-size", str(self.batch_size),
                # -1 ("about 20 times a run") is resolved by start_training, which knows the run's length.
                "--val-every", str(self.val_every if self.val_every >= 0 else 50), "--save-every", str(self.save_every), "--seed", str(self.seed)]
        return [*args, "--iters", str(self.iters)] if self.iters else [*args, "--epochs", f"{self.epochs:g}"]

    def config(self, model_dir: Path, data: Path) -> train_config.TrainConfig:
        """The TrainConfig the CLI builds from ``cli_args`` (its own parser, so the two cannot drift apart)."""
        from slowtune.train import command

        parser = argparse.ArgumentParser(add_help=False)
        command.add_arguments(parser)
        args = parser.parse_args(["--model", str(model_dir), "--data", str(data), *self.cli_args()])
        return command.config_from_args(args, model_dir)

    def total_steps(self, conversations: int) -> int:
        """Optimizer steps of a run over ``conversations`` (the trainer's own rule, gradient accumulation 1)."""
        if self.iters:
            return self.iters
        return max(1, math.ceil(self.epochs * max(1, math.ceil(conversations / self.batch_size))))

    def describe(self) -> str:
        name = PRESETS[self.preset].title if self.preset in PRESETS else "Custom"
        length = f"{self.iters:,} steps" if self.iters else f"{self.epochs:g} epoch{'s' if self.epochs != 1 else ''}"
        layers = "all blocks" if self.lora_layers < 0 else f"top {self.lora_layers} blocks"
        return (f"{name}: rank {self.rank}, learning rate {self.learning_rate:g}, {length}, batch {self.batch_size}, "
                f"up to {self.max_seq_len:,} tokens, {layers}")


# --- will it fit? --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fit:
    kind: str  # "memory", "streamed", "too_large", "unsupported" (a family slowtune does not train), "unknown"
    reason: str

    @property
    def label(self) -> str:
        return FIT_LABELS[self.kind]


def gb(value: float) -> str:
    return f"{value / GB:.1f} GB" if value >= 0.95 * GB else f"{value / 1e6:,.0f} MB"


def gui_text(reason: str) -> str:
    """The preflight's reasons name CLI options; here they are settings of the wizard."""
    return (reason.replace("a shorter --max-seq-len", "a shorter sequence length (Settings › Advanced)")
            .replace("a smaller --batch-size", "a smaller batch size").replace("--max-seq-len", "sequence length")
            .replace("--batch-size", "batch size"))


def _availability(memory: system.Memory) -> str:
    return f"{gb(memory.available_bytes)} of this Mac's {gb(memory.total_bytes)} is available now"


def catalog_fit(model: CatalogModel, memory: system.Memory) -> Fit:
    """A quick estimate from the catalog's figures, for a model that is not downloaded yet.

    The catalog's rule and estimates (slowtune.models.catalog: ``needs_streaming``, ``training_bytes``), as
    ``slowtune models list`` shows them, judged against the memory available now: "fits in memory" only on a Mac
    with at least twice the model's size in memory and the in-memory estimate free now; otherwise streamed when the
    streamed estimate is free, else too large. Once a model is downloaded, ``folder_fit`` asks the preflight itself,
    on the model's files.
    """
    from slowtune.train.preflight import MARGIN

    in_memory, streamed = catalog.training_bytes(model)
    budget = MARGIN * memory.available_bytes
    have = _availability(memory)
    note = " (An estimate; the check before training uses the model's own files.)"
    rule = catalog.needs_streaming(model, memory.total_bytes)
    if in_memory <= budget and not rule:
        return Fit("memory", f"Needs about {gb(in_memory)} to train in memory; {have}.{note}")
    why = (f"It is more than half of this Mac's memory ({gb(model.size_bytes)})" if rule else
           f"Needs about {gb(in_memory)} in memory, more than is free")
    if streamed <= budget:
        return Fit("streamed", f"{why}, so it is trained layer by layer from disk, which is slower: about "
                               f"{gb(streamed)} with batch size 1 (Settings › Advanced); {have}.{note}")
    return Fit("too_large", f"Even streamed from disk it needs about {gb(streamed)}, more than the {gb(budget)} "
                            f"training may use ({MARGIN:.0%} of what is free; {have}). A 4-bit version or a "
                            f"smaller model may fit.{note}")


def folder_fit(folder: Path, memory: system.Memory, settings: TrainSettings | None = None) -> Fit:
    """The preflight's verdict on a local model folder: its own files' shapes, no weights loaded, nothing measured.

    When the settings do not fit, batch size 1 is tried too: the badge says whether the model can be trained here
    at all; the wizard's check then judges the settings chosen.
    """
    from slowtune.train.preflight import architecture_problem, preflight

    try:
        if problem := architecture_problem(folder):
            return Fit("unsupported", problem)
    except ModelError as exc:
        return Fit("unknown", f"The model's files could not be read: {exc}")
    settings = settings or TrainSettings.from_preset("balanced")
    have = _availability(memory)
    tried = [settings] if settings.batch_size == 1 else [settings, replace(settings, batch_size=1)]
    report = None
    for attempt in tried:
        try:
            report = preflight(folder, attempt.config(folder, folder), available_bytes=memory.available_bytes,
                               disk_gbps=1.0, compute_gflops=1.0)
        except (ModelError, OSError, ValueError, KeyError, TypeError) as exc:
            return Fit("unknown", f"The model's files could not be read: {exc}")
        if report.choice is not None:
            break
    assert report is not None
    if report.choice is None:
        return Fit("too_large", gui_text(report.reason))
    estimate = report.estimates["memory+ckpt" if report.grad_checkpoint else report.choice]
    smaller = f" with batch size {attempt.batch_size} (Settings › Advanced)" if attempt is not settings else ""
    if report.choice == "memory":
        return Fit("memory", f"Needs about {gb(estimate.peak_bytes)} to train in memory{smaller}; {have}.")
    return Fit("streamed", f"Too large to train in memory, so it is trained layer by layer from disk, which is "
                           f"slower: about {gb(estimate.peak_bytes)}{smaller}; {have}.")


def downloaded_folder(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of ``repo_id`` if a download completed (file checks only, no hub call)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE).expanduser() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (root / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = root / "snapshots" / commit
    if commit and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


def model_name(path: str | Path) -> str:
    """A model's name as the user knows it: the catalog's name for a downloaded repo, else the folder's name."""
    for part in Path(path).parts:
        if part.startswith("models--"):
            repo = part.removeprefix("models--").replace("--", "/", 1)
            entry = catalog.find(repo)
            return entry.name if entry else repo
    return Path(path).name or str(path)


# --- the data -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSummary:
    train: int
    valid: int
    probe: int
    pending: int
    tokens: int  # train + valid, by slowtune's fixed counter (the model's tokenizer differs a little)
    lengths: tuple[int, ...]  # tokens per training conversation

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def longer_than(self, limit: int) -> int:
        return sum(1 for n in self.lengths if n > limit)


def data_summary(project: Project) -> DataSummary:
    from slowtune.documents.chunking import count_tokens

    def tokens(messages: list[dict[str, str]]) -> int:
        return sum(count_tokens(m["content"]) + 4 for m in messages)  # + a few template tokens per message

    train = [tokens(r.messages) for r in dataset_rows(project, "train")]
    valid = [tokens(r.messages) for r in dataset_rows(project, "valid")]
    probe = len(dataset_rows(project, "probe"))
    pending = project.conn.execute("SELECT count(*) FROM dataset_rows WHERE status = 'pending'").fetchone()[0]
    return DataSummary(len(train), len(valid), probe, int(pending), sum(train) + sum(valid), tuple(train))


# --- runs on disk ---------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_record(path: Path) -> dict[str, Any] | None:
    """The last complete line of a metrics file (read from its end)."""
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 16384))
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "step" in record:
                return record
    return None


def trainer_pid(run_dir: Path) -> int | None:
    """The trainer process still working on ``run_dir`` (from its pid file), or None."""
    import psutil

    data = _read_json(run_dir / PID_NAME)
    if not data:
        return None
    try:
        process = psutil.Process(int(data["pid"]))
        if abs(process.create_time() - float(data["created"])) > 2 or process.status() == psutil.STATUS_ZOMBIE:
            return None  # the number was reused by another process, or the trainer has ended
        return process.pid
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def _write_pid(run_dir: Path, pid: int) -> None:
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        created = time.time()
    atomic_write_text(run_dir / PID_NAME, json.dumps({"pid": pid, "created": created}))


@dataclass
class RunInfo:
    """A run folder as the page shows it, from run.json, the newest checkpoint and the metrics file."""

    run_dir: Path
    status: str  # run.json's: running, done, cancelled, failed
    model: str
    engine: str
    steps: int  # the last step the metrics file has
    total_steps: int | None
    checkpoint_step: int | None  # where Resume continues
    train_loss: float | None
    val_loss: float | None
    best_val: float | None
    error: str | None
    started: float
    live_pid: int | None = None  # the trainer an app started, still alive
    elsewhere: bool = False  # no app started it, but it is being written to: `slowtune train` in a terminal
    recorded: str | None = None  # the status in the project's runs table (it knows "paused")

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def training(self) -> bool:
        return self.live_pid is not None or self.elsewhere

    @property
    def resumable(self) -> bool:
        return not self.training and self.status != "done" and self.checkpoint_step is not None

    @property
    def state(self) -> str:
        """What the user is told: training, finished, paused, cancelled, failed or interrupted."""
        if self.training:
            return "training"
        if self.status == "done":
            return "finished"
        if self.status == "cancelled":
            return "paused" if self.recorded == "paused" else "cancelled"
        if self.status == "failed":
            return "failed"
        return "interrupted"  # run.json still says running and no trainer is alive: a crash, a kill, a power cut

    @property
    def started_text(self) -> str:
        return time.strftime("%d %b %Y %H:%M", time.localtime(self.started))


def read_run(run_dir: Path) -> RunInfo | None:
    """The run in ``run_dir``, or None when training never started there (no run.json)."""
    from slowtune.train.checkpoint import latest_checkpoint

    info = _read_json(run_dir / RUN_JSON)
    if info is None:
        return None
    point = latest_checkpoint(run_dir)
    checkpoint_step = None
    if point is not None:
        state = _read_json(point / "state.json") or {}
        checkpoint_step = int((state.get("state") or {}).get("step", 0))
    last = _last_record(run_dir / METRICS_NAME) or {}
    match = _RUN_ID_TIME.match(run_dir.name)
    try:
        started = time.mktime(time.strptime(match.group(1), "%Y%m%d-%H%M%S")) if match else \
            (run_dir / RUN_JSON).stat().st_mtime
    except (OSError, ValueError):
        started = 0.0
    config = info.get("config") or {}
    status = str(info.get("status", "running"))
    live_pid = trainer_pid(run_dir)
    elsewhere = False
    if status == "running" and live_pid is None and not (run_dir / PID_NAME).exists():
        # No app started this trainer (an app leaves its pid file behind): `slowtune train` from a terminal, or a
        # run that crashed. Files written within the last few steps mean it is still working.
        written = max((p.stat().st_mtime for p in (run_dir / METRICS_NAME, run_dir / RUN_JSON) if p.exists()),
                      default=0.0)
        elsewhere = time.time() - written < max(ACTIVE_WINDOW_S, 3 * float(last.get("step_s") or 0))
    return RunInfo(
        run_dir=run_dir, status=status, model=str(config.get("model", "")),
        engine=str(info.get("engine", "")), steps=int(info.get("steps") or last.get("step") or 0),
        total_steps=int(info["total_steps"]) if info.get("total_steps") else None, checkpoint_step=checkpoint_step,
        train_loss=info.get("train_loss", last.get("loss")), val_loss=info.get("val_loss"),
        best_val=info.get("best_val"), error=info.get("error"), started=started, live_pid=live_pid,
        elsewhere=elsewhere,
    )


def list_runs(project: Project) -> list[RunInfo]:
    """The project's runs, newest first (the folders are the truth; the runs table adds "paused")."""
    recorded = {r["id"]: r["status"] for r in project.conn.execute("SELECT id, status FROM runs")}
    runs = []
    folder = project.root / "runs"
    if folder.is_dir():
        for run_dir in folder.iterdir():
            if run_dir.is_dir() and (info := read_run(run_dir)) is not None:
                info.recorded = recorded.get(run_dir.name)
                runs.append(info)
    return sorted(runs, key=lambda r: (r.started, r.run_id), reverse=True)


def record_run(project_root: Path, run_dir: Path, status: str, *, error: str | None = None) -> None:
    """Write the run's row in the project's runs table (what the Export page lists). Never fails the run."""
    info = _read_json(run_dir / RUN_JSON) or {}
    config = info.get("config") or {}
    metrics = {k: info.get(k) for k in ("steps", "train_loss", "val_loss", "best_val")}
    now = time.time()
    try:
        with Project.open(project_root) as project:
            project.conn.execute(
                """INSERT INTO runs(id, base_model, engine, status, config_json, metrics_json, adapter_path, error,
                                    created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(id) DO UPDATE SET engine = excluded.engine, status = excluded.status,
                       metrics_json = excluded.metrics_json, error = excluded.error, updated_at = excluded.updated_at""",
                (run_dir.name, str(config.get("model", "")), str(info.get("engine") or "auto"), status,
                 json.dumps(config), json.dumps(metrics), str(run_dir), error, now, now),
            )
    except (sqlite3.Error, StoreError, OSError) as exc:
        log.warning("Could not record run %s in the project: %s", run_dir.name, exc)


class MetricsTail:
    """Reads the lines added to a run's metrics.jsonl since the last call.

    A resumed run rewrites the file (lines after its checkpoint are dropped) under the same name; that shows as a
    new file (another inode) or a shorter one, and ``read`` then starts over and says so (``reset``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._inode: int | None = None
        self._partial = b""

    def read(self) -> tuple[bool, list[dict[str, Any]]]:
        """(reset, records): reset is True when earlier records are no longer valid (start the chart over)."""
        try:
            stat = self.path.stat()
        except OSError:
            reset = self._offset > 0
            self._offset, self._inode, self._partial = 0, None, b""
            return reset, []
        reset = self._inode is not None and (stat.st_ino != self._inode or stat.st_size < self._offset)
        if reset:
            self._offset, self._partial = 0, b""
        self._inode = stat.st_ino
        if stat.st_size <= self._offset:
            return reset, []
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read(stat.st_size - self._offset)
        except OSError:
            return reset, []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # a line still being written
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("step"), int | float):
                    records.append(record)
        return reset, records


def read_log_tail(path: Path, lines: int = 200) -> str:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - 65536))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])


def failure_message(returncode: int, log_text: str) -> str:
    """What went wrong, in the trainer's own words where it said them."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("slowtune train: "):
            text = line.removeprefix("slowtune train: ").strip()
            return text[:1].upper() + text[1:]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        if -returncode == getattr(signal, "SIGKILL", 9):
            return ("The trainer was killed (SIGKILL), most often because the Mac ran out of memory. Close other "
                    "apps, or choose a smaller model, sequence length or batch size.")
        return f"The trainer stopped on {name}."
    if lines and not lines[-1].startswith("---"):
        return f"The trainer stopped with an error: {lines[-1]}"
    return f"The trainer stopped with exit code {returncode}."


# --- the training job -----------------------------------------------------------------------------------------

class TrainingFailed(RuntimeError):
    """The trainer process ended with an error; the message is what it said (the log is in the job's control)."""


@dataclass
class TrainControl:
    """Shared by the page and a training job: which run, why it is being stopped, and the trainer's last words."""

    run_dir: Path
    project_root: Path
    resume: bool
    stop_reason: str | None = None  # "pause" or "cancel", set by the page before it cancels the job
    log_tail: str = ""
    pid: int | None = None
    grace_s: float = STOP_GRACE_S


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Output goes to a file: unbuffered, without colours or cursor movements, lines wide enough to read.
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", COLUMNS="120")
    return env


def _stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(OSError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _RunWatcher:
    """In the job's thread: turns the run folder's files into progress reports."""

    SHOWN = ("epoch", "loss", "tokens_per_s", "eta_s", "mlx_peak_gb", "rss_gb", "step_s")

    def __init__(self, control: TrainControl, progress: Progress, started: float) -> None:
        self.control = control
        self.progress = progress
        self.started = started
        self.tail = MetricsTail(control.run_dir / METRICS_NAME)
        self.total: int | None = None
        self.announced = False
        self.last_val: float | None = None

    def poll(self) -> None:
        try:
            self._poll()
        except (OSError, ValueError, TypeError, KeyError) as exc:  # a torn or odd file: look again next time
            log.debug("reading the run folder failed: %s", exc)

    def _poll(self) -> None:
        run_json = self.control.run_dir / RUN_JSON
        if not self.announced and run_json.exists() and run_json.stat().st_mtime >= self.started - 1:
            info = _read_json(run_json)
            if info and info.get("status") == "running":  # the trainer has read the data and built the model
                self.announced = True
                self.total = int(info.get("total_steps") or 0) or None
                data = info.get("data") or {}
                self.progress.report("prepare", 1, 1, force=True,
                                     status=f"{data.get('train_examples', '?')} conversations, "
                                            f"{info.get('engine', '?')} engine")
                record_run(self.control.project_root, self.control.run_dir, "running")
        reset, records = self.tail.read()
        if reset:
            self.last_val = None
        for record in records:
            if record.get("val_loss") is not None:
                self.last_val = float(record["val_loss"])
        if records:
            last = records[-1]
            step = int(last["step"])
            metrics = {k: last[k] for k in self.SHOWN if k in last}
            if self.last_val is not None:
                metrics["val_loss"] = self.last_val
            total = self.total or step
            self.progress.report("train", step, total, status=f"step {step:,}/{total:,} · loss {last['loss']:.3f}",
                                 **metrics)


def training_function(command: list[str], control: TrainControl) -> Callable[[Progress], RunInfo]:
    """The job's function: run ``command`` (a ``slowtune train``) and report on ``control.run_dir`` until it ends.

    Returns the finished run; raises Cancelled when it was stopped (the trainer saved a checkpoint), or
    TrainingFailed with the trainer's own message (its output is in ``control.log_tail``).
    """

    def run(progress: Progress) -> RunInfo:
        run_dir = control.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / LOG_NAME
        progress.report("prepare", 0, None, status="starting the trainer", force=True)
        started = time.time()
        with log_path.open("ab") as out:
            out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n".encode())
            out.flush()
            # A session of its own: a Ctrl-C in the terminal the app was started from does not reach the trainer;
            # only the app decides when it stops.
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                       env=_child_env(), start_new_session=True)
        control.pid = process.pid
        watcher = _RunWatcher(control, progress, started)
        stop_sent: float | None = None
        killed = False
        try:
            _write_pid(run_dir, process.pid)
            while process.poll() is None:
                watcher.poll()
                if stop_sent is None and progress.cancelled:
                    # The trainer's first SIGINT: stop after this step and save a checkpoint.
                    stop_sent = time.monotonic()
                    with contextlib.suppress(OSError):
                        process.send_signal(signal.SIGINT)
                    progress.report("stopping", 0, None, force=True,
                                    status="stopping after this step and saving a checkpoint")
                elif stop_sent is not None and not killed and time.monotonic() - stop_sent > control.grace_s:
                    log.warning("The trainer did not stop within %.0f s; killing it.", control.grace_s)
                    killed = True
                    process.kill()  # the steps since its last checkpoint are lost, nothing else
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(POLL_S)
        except BaseException:
            _stop_process(process, control.grace_s)  # never leave a trainer running unattended
            raise
        # The pid file stays: it tells a later look at the folder that an app ran this trainer and that it has
        # ended (its process is gone), so the run is not mistaken for one still training from a terminal.
        watcher.poll()
        code = process.returncode
        control.log_tail = read_log_tail(log_path)
        trained = (run_dir / RUN_JSON).exists()
        if code == 0 and trained:
            record_run(control.project_root, run_dir, "done")
            info = read_run(run_dir)
            assert info is not None
            return info
        if not trained and not control.resume:
            # Nothing was trained (stopped or failed before the first step): no run to keep. The log's text
            # goes to the page through control.log_tail.
            shutil.rmtree(run_dir, ignore_errors=True)
        if stop_sent is not None or code == 130:
            if trained:
                record_run(control.project_root, run_dir, "paused" if control.stop_reason == "pause" else "cancelled")
            raise Cancelled()
        message = failure_message(code, control.log_tail)
        if trained:
            record_run(control.project_root, run_dir, "failed", error=message)
        raise TrainingFailed(message)

    return run


def new_run_dir(project_root: Path) -> Path:
    """A new run folder's path under the project (the CLI's own naming); nothing is created yet."""
    from slowtune.train.command import _default_run_dir

    return _default_run_dir(project_root)[0]


def training_job(project_root: Path, run_dir: Path, command: list[str], *, title: str, resume: bool) -> Job:
    control = TrainControl(run_dir=run_dir, project_root=project_root, resume=resume)
    job = Job(title, training_function(command, control), key=str(project_root), stage_names=TRAIN_STAGES)
    job.control = control  # type: ignore[attr-defined]
    return job


def validation_interval(total_steps: int) -> int:
    """Steps between validation passes: enough points for the chart's validation line on a short run, and no
    more than one pass every 50 steps on a long one."""
    return max(1, min(50, math.ceil(total_steps / VALIDATIONS_PER_RUN)))


def start_training(runner: JobRunner, project_root: Path, model: str | Path, settings: TrainSettings | None = None,
                   *, run_dir: Path | None = None, queue: bool = False) -> Job | None:
    """Train on the project's accepted rows in a child process; the Job, or None if the runner refused it."""
    root = Path(project_root).expanduser().resolve()
    settings = settings or TrainSettings.from_preset("balanced")
    if settings.val_every < 0:
        with Project.open(root) as project:
            conversations = len(dataset_rows(project, "train"))
        settings = replace(settings, val_every=validation_interval(settings.total_steps(conversations)))
    run_dir = run_dir or new_run_dir(root)
    command = slowtune_command("train", "--model", str(model), "--data", str(root), "--out", str(run_dir),
                               *settings.cli_args())
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
    info = _read_json(run_dir / RUN_JSON) or {}
    model = (info.get("config") or {}).get("model", run_dir.name)
    job = training_job(Path(project_root).resolve(), run_dir, slowtune_command("train", "--resume", str(run_dir)),
                       title=f"Training {model_name(model)}", resume=True)
    return job if runner.submit(job) else None


# --- downloads and the preflight, in-process -------------------------------------------------------------------

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


@dataclass
class PreflightResult:
    report: Any  # slowtune.train.preflight.PreflightReport
    memory: system.Memory
    steps: int


def preflight_function(model_dir: Path, project_root: Path, settings: TrainSettings,
                       conversations: int) -> Callable[[Progress], PreflightResult]:
    def run(progress: Progress) -> PreflightResult:
        from slowtune.train.preflight import preflight

        progress.report("preflight", 0, None, status="measuring this Mac", force=True)
        memory = system.memory()
        cfg = settings.config(model_dir, project_root)
        report = preflight(model_dir, cfg, available_bytes=memory.available_bytes,
                           output_dir=project_root / "runs")
        progress.check()
        return PreflightResult(report, memory, settings.total_steps(conversations))

    return run


# --- small helpers for the views -------------------------------------------------------------------------------

def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def choose_folder(parent: QWidget) -> Path | None:
    """A model folder picked by the user, or None. Module-level so tests can answer it."""
    folder = QFileDialog.getExistingDirectory(parent, "Choose a Model Folder", str(Path.home()))
    return Path(folder) if folder else None


def choose_gguf(parent: QWidget) -> Path | None:
    """A GGUF file picked by the user, or None. Module-level so tests can answer it."""
    file, _ = QFileDialog.getOpenFileName(parent, "Import a GGUF Model", str(Path.home()), "GGUF models (*.gguf)")
    return Path(file) if file else None


def import_function(source: Path, *, name: str | None = None,
                    origin: dict[str, str] | None = None) -> Callable[[Progress], Any]:
    def run(progress: Progress) -> Any:
        from slowtune.models.gguf_import import import_gguf

        return import_gguf(source, name=name, origin=origin, replace=True, progress=progress)

    return run


def export_problem(path: Path) -> str | None:
    from slowtune.train.command import export_problem as problem

    return problem(path)


def _item(text: str, *, tooltip: str = "", color: str | None = None, data: object = None) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    if tooltip:
        item.setToolTip(tooltip)
    if color:
        item.setForeground(QColor(color))
    if data is not None:
        item.setData(Qt.ItemDataRole.UserRole, data)
    return item


def _table(columns: tuple[str, ...], stretch: int = 0) -> QTableWidget:
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

@dataclass
class ModelRow:
    key: str  # repo id, or the folder's path
    name: str
    params: str
    size: str
    where: str  # "Downloaded", "Folder" or ""
    path: Path | None  # where the model is on this Mac
    fit: Fit
    licence: str = ""
    entry: CatalogModel | None = None
    notes: list[str] = field(default_factory=list)
    export_problem: str | None = None  # why the trained model could not be exported to GGUF
    ollama: Any = None  # an Ollama model (slowtune.models.gguf_import.OllamaModel) not imported yet


class ModelWizardPage(QWizardPage):
    COLUMNS = ("Model", "Parameters", "Size", "On this Mac", "Fits", "Licence")

    def __init__(self, owner: TrainPage) -> None:
        super().__init__()
        self.owner = owner
        self.setTitle("Base model")
        self.setSubTitle("The model your adapter is trained on. Smaller models train and answer faster; larger ones "
                         "write better answers.")
        self.rows: list[ModelRow] = []
        self.folders: list[Path] = []
        self.download_job: Job | None = None
        self.banner = MessageBanner()
        self.machine_label = QLabel()
        self.table = _table(self.COLUMNS)
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
        self.fill()

    def fill(self) -> None:
        """List the models with what is on this Mac and whether each fits its memory now."""
        memory = system.memory()
        self.machine_label.setText(f"This Mac: {gb(memory.total_bytes)} memory, {gb(memory.available_bytes)} "
                                   "available now.")
        current = self.current_row()
        selected = current.key if current else None
        from slowtune.models.gguf_import import imported_models, ollama_models

        folders, downloaded, others = [], [], []
        for path in self.folders:
            folders.append(self._folder_row(path, memory))
        shown = set(self.folders)
        imported_sources = set()
        for model in imported_models():
            imported_sources.add(model.source)
            if model.folder not in shown:
                row = self._folder_row(model.folder, memory)
                row.where = "Imported"
                came_from = f"Ollama ({model.origin['ollama']})" if model.origin.get("ollama") else model.source
                row.notes.insert(0, f"Imported from {came_from}.")
                folders.append(row)
        for model in ollama_models():
            if str(model.gguf.resolve()) not in imported_sources:
                folders.append(ModelRow(f"ollama:{model.name}", model.name, "—", gb(model.size), "Ollama", None,
                                        Fit("unknown", "Import it first: slowtune reads its GGUF and checks it."),
                                        ollama=model))
        for entry in catalog.offered(CATALOG):
            folder = downloaded_folder(entry.repo_id)
            row = ModelRow(entry.repo_id, entry.name, f"{entry.params_b:g} B", f"{entry.download_gb:g} GB",
                           "Downloaded" if folder else "", folder,
                           folder_fit(folder, memory) if folder else catalog_fit(entry, memory), entry.licence, entry,
                           [entry.note] if entry.note else [], export_problem(folder) if folder else None)
            (downloaded if folder else others).append(row)
        self.rows = [*folders, *downloaded, *others]
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, row in enumerate(self.rows):
            fits = "not exportable" if row.export_problem else row.fit.label
            values = (row.name, row.params, row.size, row.where or "—", fits, row.licence)
            for column, text in enumerate(values):
                item = _item(text, data=row.key if column == 0 else None)
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

    def _folder_row(self, path: Path, memory: system.Memory) -> ModelRow:
        notes = []
        try:
            info = describe_local(path)
        except ModelError as exc:
            return ModelRow(str(path), path.name, "—", "—", "Folder", None, Fit("unknown", str(exc)),
                            notes=[str(exc)])
        quant = f", {info.quantization.bits}-bit" if info.quantization and info.quantization.bits else ""
        params = f"{info.architecture}{quant}"
        if info.problem:  # another family, or a vision-language checkpoint: nothing else about it matters
            return ModelRow(str(path), path.name, params, gb(info.weight_bytes), "Folder", info.path,
                            Fit("unsupported", info.problem))
        if not info.has_chat_template:
            notes.append("This model has no chat template; training needs one (an instruct or chat model).")
        return ModelRow(str(path), path.name, params, gb(info.weight_bytes), "Folder", info.path,
                        folder_fit(info.path, memory), notes=notes, export_problem=export_problem(info.path))

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
        self.detail.setText(self._describe(row) if row else "Choose a model, or a model folder on this Mac.")
        emit(self.completeChanged)

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
        if row.export_problem:
            parts.append(f"<span style='color:{FIT_COLORS['too_large']}'>Not exportable</span>: after training, this model "
                         f"could not be written as a GGUF for llama.cpp, Ollama or LM Studio. "
                         f"{html.escape(row.export_problem)}")
        parts.append(f"<span style='color:{FIT_COLORS[row.fit.kind]}'>{html.escape(row.fit.label.capitalize())}"
                     f"</span>: {html.escape(row.fit.reason)}")
        return "<br>".join(parts)

    def isComplete(self) -> bool:
        row = self.current_row()
        return (row is not None and row.path is not None and row.export_problem is None
                and row.fit.kind != "unsupported")

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
            self.banner.show_message(info.problem, level="error")
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
        job.progress.connect(self._import_progress)
        job.finished.connect(self._imported)
        job.failed.connect(self._download_failed)
        job.cancelled.connect(lambda: self.banner.show_message("The import was stopped; nothing was written."))
        job.done.connect(self._download_done)
        self.import_job = job
        if not self.owner.runner.submit(job):
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
        job.progress.connect(self._download_progress)
        job.finished.connect(partial(self._downloaded, row.key))
        job.failed.connect(self._download_failed)
        job.cancelled.connect(self._download_cancelled)
        job.done.connect(self._download_done)
        self.download_job = job
        if not self.owner.runner.submit(job):
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
    def __init__(self, owner: TrainPage) -> None:
        super().__init__()
        self.owner = owner
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
            if not s.valid:
                parts.append("<p>No validation conversations: the chart will show the training loss only.</p>")
            if s.pending:
                parts.append(f"<p>{s.pending:,} conversations still wait for review on the Dataset page and are left "
                             "out.</p>")
            self.label.setText("".join(parts))
        emit(self.completeChanged)

    def isComplete(self) -> bool:
        return self.summary is not None and self.summary.train > 0


class SettingsWizardPage(QWizardPage):
    def __init__(self, owner: TrainPage) -> None:
        super().__init__()
        self.owner = owner
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
        length = QHBoxLayout()
        length.addWidget(self.length_kind)
        length.addWidget(self.epochs)
        length.addWidget(self.steps)
        self.advanced = QFrame()
        form = QFormLayout(self.advanced)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.FieldsStayAtSizeHint)
        form.addRow("LoRA rank", self.rank)
        form.addRow("Learning rate", self.learning_rate)
        form.addRow("Length", length)
        form.addRow("Sequence length", self.max_seq_len)
        form.addRow("Layers", self.lora_layers)
        form.addRow("Batch size", self.batch_size)
        self.advanced.hide()
        for widget in (self.rank, self.epochs, self.steps, self.max_seq_len, self.lora_layers, self.batch_size):
            widget.valueChanged.connect(self._edited)
        # One width for the fields, so they line up and "All blocks" or "1,024 tokens" is not squeezed.
        for widget in (self.rank, self.learning_rate, self.max_seq_len, self.lora_layers, self.batch_size):
            widget.setMinimumWidth(130)
        self.steps.setMinimumWidth(100)
        self.epochs.setMinimumWidth(100)
        self.learning_rate.textChanged.connect(self._edited)
        self.length_kind.currentIndexChanged.connect(self._edited)
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
            self.length_kind.setCurrentIndex(1 if settings.iters else 0)
            self.epochs.setValue(settings.epochs)
            self.steps.setValue(settings.iters or 100)
            self.max_seq_len.setValue(settings.max_seq_len)
            self.lora_layers.setValue(max(0, settings.lora_layers))
            self.batch_size.setValue(settings.batch_size)
        finally:
            self._filling = False
        self._edited()

    def _learning_rate(self) -> float | None:
        try:
            value = float(self.learning_rate.text().strip())
        except ValueError:
            return None
        return value if 0 < value < 1 and math.isfinite(value) else None

    def settings(self) -> TrainSettings:
        by_steps = self.length_kind.currentIndex() == 1
        values = TrainSettings(
            preset="custom", lora_preset=self.base.lora_preset, rank=self.rank.value(),
            learning_rate=self._learning_rate() or self.base.learning_rate,
            epochs=self.epochs.value(), iters=self.steps.value() if by_steps else 0,
            max_seq_len=self.max_seq_len.value(), lora_layers=self.lora_layers.value() or -1,
            batch_size=self.batch_size.value(), val_every=self.base.val_every, save_every=self.base.save_every,
            seed=self.base.seed)
        values.preset = values.matching_preset() or "custom"
        return values

    def _edited(self) -> None:
        if self._filling:
            return
        by_steps = self.length_kind.currentIndex() == 1
        self.epochs.setVisible(not by_steps)
        self.steps.setVisible(by_steps)
        ok = self._learning_rate() is not None
        self.learning_rate.setStyleSheet("" if ok else "color: #e03131;")
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
        emit(self.completeChanged)

    def _update_summary(self) -> None:
        if self._learning_rate() is None:
            self.summary.setText("<span style='color:#e03131'>The learning rate must be a number between 0 and 1, "
                                 "such as 1e-4.</span>")
            return
        settings = self.settings()
        data_page = getattr(self.owner.wizard, "data_page", None)
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

    def isComplete(self) -> bool:
        return self._learning_rate() is not None


class PreflightWizardPage(QWizardPage):
    def __init__(self, owner: TrainPage) -> None:
        super().__init__()
        self.owner = owner
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
        wizard = self.owner.wizard
        project = self.owner.project
        model = wizard.model_page.model_path() if wizard is not None else None
        if project is None or wizard is None or model is None:
            return None
        if self.job is not None and not self.job.is_over:
            return self.job
        self._clear()
        self.result = None
        data = wizard.data_page.summary
        job = Job("Checking that training fits",
                  preflight_function(model, project.root, wizard.settings_page.settings(), data.train if data else 0),
                  key=str(project.root), stage_names=PREFLIGHT_STAGES)
        job.finished.connect(partial(self._checked, job))
        job.failed.connect(partial(self._failed, job))
        job.cancelled.connect(partial(self._cancelled, job))
        self.job = job
        # A check abandoned a moment ago (Back, then Next) may still be finishing: this one waits for it.
        behind = self.abandoned is not None and self.owner.runner.running(str(project.root)) is self.abandoned
        if not self.owner.runner.submit(job, queue=behind):
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
            self.banner.show_message(gui_text(report.reason), level="error", details=report.summary())
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
            self.details.setText(html.escape(report.summary()).replace("\n", "<br>"))
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

    def __init__(self, owner: TrainPage) -> None:
        super().__init__()
        self.setObjectName("train-wizard")
        self.setWindowFlags(Qt.WindowType.Widget)
        self.setOption(QWizard.WizardOption.NoBackButtonOnStartPage, True)
        self.setButtonText(QWizard.WizardButton.FinishButton, "Start Training")
        owner.wizard = self
        self.model_page = ModelWizardPage(owner)
        self.data_page = DataWizardPage(owner)
        self.settings_page = SettingsWizardPage(owner)
        self.preflight_page = PreflightWizardPage(owner)
        for page in (self.model_page, self.data_page, self.settings_page, self.preflight_page):
            self.addPage(page)

    def done(self, result: int) -> None:
        # QDialog would hide the widget; embedded, the page decides what to show next.
        if _accepted(result) and not self.validateCurrentPage():
            return
        emit(self.closed, _accepted(result))


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
        self.runs = _table(("Started", "Base model", "Status", "Steps", "Loss", "Validation loss"), stretch=1)
        self.open_button = QPushButton("Open")
        self.resume_button = QPushButton("Resume")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setStyleSheet("color: gray;")
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
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
        layout.addWidget(self.hint)
        # Without runs the table is hidden; this spacer then takes the spare height, so the text, the button and the
        # hint stay together at the top instead of spreading over the page.
        layout.addStretch(0)
        self._layout = layout
        self._spacer_index = layout.count() - 1

    def show_runs_table(self, shown: bool) -> None:
        for widget in (self.runs_label, self.runs, self.open_button, self.resume_button):
            widget.setVisible(shown)
        self._layout.setStretch(self._spacer_index, 0 if shown else 1)


class RunView(QWidget):
    """One run: the live chart, its figures, and what can be done with it now."""

    STATS = ("Step", "Training loss", "Validation loss", "Tokens/s", "Memory", "Elapsed", "Time left")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel()
        self.title.setWordWrap(True)
        self.title.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setTextVisible(False)
        self.bar.setMaximumHeight(12)
        self.chart = LineChart(x_label="step", y_label="loss", x_integer=True,
                               placeholder="The loss curve appears here after the first training step.")
        self.chart.add_series(TRAIN_SERIES, TRAIN_COLOR)
        self.chart.add_series(VALID_SERIES, VALID_COLOR, markers=True)
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
        layout.addWidget(self.bar)
        layout.addWidget(self.chart, 1)
        layout.addLayout(stats)
        layout.addLayout(buttons)


class TrainPage(QWidget):
    """Pick a base model, check the fit, train with a live loss chart; pause, cancel and resume."""

    run_finished = Signal(str)  # the run folder, when a run ends with status done
    export_requested = Signal(str)  # the run folder

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("page-train")
        self.runner = runner
        self._settings = settings
        self.project: Project | None = None
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

        self.banner = MessageBanner()
        self.start_view = StartView()
        self.start_view.new_button.clicked.connect(self.new_run)
        self.start_view.offer_new.clicked.connect(self.new_run)
        self.start_view.offer_resume.clicked.connect(self._resume_offered)
        self.start_view.open_button.clicked.connect(self._open_selected)
        self.start_view.resume_button.clicked.connect(self._resume_selected)
        self.start_view.runs.itemSelectionChanged.connect(self._runs_selection_changed)
        self.start_view.runs.itemDoubleClicked.connect(lambda _item: self._open_selected())
        self.offered: RunInfo | None = None

        TrainWizard(self)  # sets self.wizard
        assert self.wizard is not None
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

        self.stack = QStackedWidget()
        self.stack.addWidget(self.start_view)
        self.stack.addWidget(self.wizard)
        self.stack.addWidget(self.run_view)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 8, 24, 16)
        layout.addWidget(self.banner)
        layout.addWidget(self.stack, 1)
        self.refresh()

    # --- showing -------------------------------------------------------------------------------------------
    def set_project(self, project: Project | None) -> None:
        self.project = project
        self.banner.clear()
        if not self.busy():
            self.background_timer.stop()
            self.run = None
            self.run_dir = None
            self.stack.setCurrentWidget(self.start_view)
        self.refresh()

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self.stack.currentWidget() is self.start_view:
            self.refresh()  # rows may have been accepted, or a run made from Terminal, while the page was hidden

    def busy(self) -> bool:
        return self.job is not None and not self.job.is_over

    def has_data(self) -> bool:
        if self.project is None:
            return False
        return self.project.conn.execute("SELECT 1 FROM dataset_rows WHERE status = 'accepted' AND split = 'train' "
                                         f"AND {CURRENT_ROW_SQL} LIMIT 1").fetchone() is not None

    def refresh(self) -> None:
        """The start view: runs, the resume offer, and the empty states."""
        view = self.start_view
        project = self.project
        name = html.escape(shlex.quote(project.name)) if project is not None else "PROJECT"
        view.hint.setText(COMMAND_HINT.format(project=name))
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
        self._reconcile(runs)
        view.show_runs_table(bool(runs))
        view.runs.setRowCount(len(runs))
        for i, run in enumerate(runs):
            loss = f"{run.train_loss:.3f}" if isinstance(run.train_loss, int | float) else "—"
            valid = run.best_val if run.best_val is not None else run.val_loss
            steps = f"{run.steps:,}" + (f" of {run.total_steps:,}" if run.total_steps else "")
            values = (run.started_text, model_name(run.model), run.state, steps, loss,
                      f"{valid:.3f}" if isinstance(valid, int | float) else "—")
            for column, text in enumerate(values):
                tooltip = {0: str(run.run_dir), 2: run.error or ""}.get(column, "")
                item = _item(text, data=str(run.run_dir) if column == 0 else None,
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
                       "started outside this app, perhaps with slowtune train in Terminal")
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

    def _reconcile(self, runs: list[RunInfo]) -> None:
        """Bring the runs table in line with the folders, where no job could: a run trained while the app was
        closed or quit before its trainer stopped, or one the table never heard of (the Export page reads it)."""
        if self.project is None:
            return
        table = {"finished": "done", "paused": "paused", "cancelled": "cancelled", "failed": "failed",
                 "interrupted": "failed"}
        for run in runs:
            status = table.get(run.state)
            if status is None or run.recorded == status or (run.recorded == "paused" and status == "cancelled"):
                continue
            if run.recorded in (None, "running", "created") or (status == "done" and run.recorded != "done"):
                error = "interrupted: the trainer stopped without finishing" if run.state == "interrupted" else \
                    run.error
                record_run(self.project.root, run.run_dir, status, error=error)
                run.recorded = status

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
        info = _read_json(control.run_dir / RUN_JSON) or {}
        self.total_steps = int(info["total_steps"]) if info.get("total_steps") else None
        self.run_view.chart.set_x_max_hint(self.total_steps)
        self._started_at = time.monotonic()
        self._set_state("starting", "Starting the trainer: loading the model and the data…")
        self._read_metrics()

    def _begin_view(self, run_dir: Path, title: str) -> None:
        rv = self.run_view
        rv.title.setText(f"<h3 style='margin:0'>Run {html.escape(run_dir.name)}</h3>{html.escape(title)}")
        rv.chart.clear()
        rv.chart.set_x_max_hint(None)
        for label in rv.values.values():
            label.setText("—")
        self.tail = MetricsTail(run_dir / METRICS_NAME)
        self._last_record = {}
        self._best_val = None
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
            info = _read_json(run_dir / RUN_JSON) or {}
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
                text = ("Training in another process, started outside this app (perhaps slowtune train in "
                        "Terminal). Ctrl-C there stops it with a checkpoint.")
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
        if run is None:
            return "Finished."
        parts = [f"Finished: {run.steps:,} steps"]
        if run.train_loss is not None:
            parts.append(f"training loss {run.train_loss:.3f}")
        if run.best_val is not None:
            parts.append(f"best validation loss {run.best_val:.3f}")
        return ", ".join(parts) + ". Export turns it into a GGUF file you can chat with."

    def _set_state(self, state: str, text: str) -> None:
        self.state = state
        rv = self.run_view
        color = {"finished": "#2f9e44", "failed": "#e03131", "stopping": "#d9480f"}.get(state)
        style = f" style='color:{color}'" if color else ""
        rv.status.setText(f"<b{style}>{html.escape(text)}</b>")
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
            if done >= 1:
                self._set_state("starting", f"Preparing: {status}…")
        elif stage == "train" and self.state != "stopping":
            if isinstance(total, int | float) and total > 0:
                self.total_steps = int(total)
                self.run_view.chart.set_x_max_hint(self.total_steps)
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
            self._best_val = None
        for record in records:
            step = float(record["step"])
            if isinstance(record.get("loss"), int | float):
                chart.append(TRAIN_SERIES, step, float(record["loss"]))
            if isinstance(record.get("val_loss"), int | float):
                chart.append(VALID_SERIES, step, float(record["val_loss"]))
                value = float(record["val_loss"])
                self._best_val = value if self._best_val is None else min(self._best_val, value)
        if records:
            self._last_record = records[-1]
        self._show_figures()

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
            memory = []
            if "mlx_peak_gb" in record:
                memory.append(f"{record['mlx_peak_gb']:.2f} GB peak (MLX)")
            if "rss_gb" in record:
                memory.append(f"{record['rss_gb']:.2f} GB trainer")
            values["Memory"].setText(" · ".join(memory) or "—")
            if self.state in ("running", "stopping") and "eta_s" in record:
                values["Time left"].setText(format_duration(float(record["eta_s"])))
            elif self.state == "finished":
                values["Time left"].setText("—")
        points = self.run_view.chart.points(VALID_SERIES)
        if points:
            latest = points[-1][1]
            best = f" (best {self._best_val:.3f})" if self._best_val is not None and self._best_val < latest else ""
            values["Validation loss"].setText(f"{latest:.3f}{best}")
        if self.busy() and self._viewing(self.job):
            values["Elapsed"].setText(format_duration(time.monotonic() - self._started_at))

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
        with contextlib.suppress(OSError):
            os.kill(run.live_pid, signal.SIGINT)
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
