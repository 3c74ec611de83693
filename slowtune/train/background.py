"""A ``slowtune train`` child process, supervised: started, watched through its run folder, stopped, judged.

The app trains in a child process (``slowtune.selfcmd``), so that the window stays responsive whatever the trainer
does, and an out-of-memory kill of the trainer cannot take the app down. ``training_function`` is the function an
app runs in its job (``slowtune.progress``): it starts the child, tails the run folder's ``metrics.jsonl`` and
``run.json`` and reports progress from them, records the run in the project (``slowtune.train.runs.record_run``) as
it starts and ends, and returns the finished run (``RunInfo``), or raises ``Cancelled`` (stopped: the trainer saved
a checkpoint) or ``TrainingFailed`` (in the trainer's own words).

A stop is SIGINT: the trainer stops after the current step and saves a checkpoint; it is killed only after a long
grace period. The child's output goes to the run folder's ``train.log`` (shown when it fails), and its pid file
(``slowtune.train.runs.write_pid``) tells a later look at the folder that an app started it: ``stop_trainer`` asks
such a trainer, still running after the app that started it was closed, to stop. Nothing here knows about Qt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from slowtune.dataset import training_conversations
from slowtune.progress import Cancelled, Progress
from slowtune.selfcmd import slowtune_command
from slowtune.train.runs import (
    METRICS_NAME,
    RUN_JSON,
    MetricsTail,
    RunInfo,
    read_run,
    read_stage,
    record_run,
    run_json,
    write_pid,
)
from slowtune.train.settings import TrainSettings

__all__ = ["LOG_NAME", "POLL_S", "STOP_GRACE_S", "TrainControl", "TrainingFailed", "failure_message",
           "read_log_tail", "resume_command", "stop_process", "stop_trainer", "train_command", "training_function"]

log = logging.getLogger(__name__)

LOG_NAME = "train.log"
POLL_S = 0.2  # how often the job looks at the run folder and the child
# How long a stop waits for the trainer to finish its step and write the checkpoint before killing it. A streamed
# step of a large model on a slow disk can take minutes; a kill loses only the steps since the last checkpoint.
STOP_GRACE_S = 900.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def train_command(project_root: Path, model: str | Path, run_dir: Path, settings: TrainSettings) -> list[str]:
    """``slowtune train`` of ``model`` on the project's accepted rows into ``run_dir``, with ``settings`` (their
    "validate about 20 times a run" made a step count for the project's data)."""
    if settings.val_every < 0:
        settings = settings.for_conversations(training_conversations(project_root))
    return slowtune_command("train", "--model", str(model), "--data", str(project_root), "--out", str(run_dir),
                            *settings.cli_args())


def resume_command(run_dir: Path) -> list[str]:
    """``slowtune train --resume``: the run in ``run_dir``, continued from its last checkpoint."""
    return slowtune_command("train", "--resume", str(run_dir))


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


class TrainingFailed(RuntimeError):
    """The trainer process ended with an error; the message is what it said (the log is in the job's control)."""


@dataclass
class TrainControl:
    """Shared by the app and a training job: which run, why it is being stopped, and the trainer's last words."""

    run_dir: Path
    project_root: Path
    resume: bool
    stop_reason: str | None = None  # "pause" or "cancel", set by the app before it cancels the job
    log_tail: str = ""
    pid: int | None = None
    grace_s: float = STOP_GRACE_S


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Output goes to a file: unbuffered, without colours or cursor movements, lines wide enough to read.
    env.update(PYTHONUNBUFFERED="1", NO_COLOR="1", TERM="dumb", COLUMNS="120")
    return env


def stop_process(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Ask the trainer to stop (SIGINT) and wait for it; kill it when it has not stopped within ``grace_s``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(OSError):
        process.send_signal(signal.SIGINT)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_trainer(pid: int) -> None:
    """Ask the trainer ``pid`` (one an app started, from its pid file) to stop after this step with a checkpoint."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGINT)


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
        self.stage: tuple[str, str] | None = None  # the trainer's last stage.json (before its first step)
        self.trained = False  # a training step was logged

    def poll(self) -> None:
        try:
            self._poll()
        except (OSError, ValueError, TypeError, KeyError) as exc:  # a torn or odd file: look again next time
            log.debug("reading the run folder failed: %s", exc)

    def _poll(self) -> None:
        stage = read_stage(self.control.run_dir) if not self.trained else None
        if stage is not None and float(stage.get("time") or 0) >= self.started - 1 and stage["stage"] != "train" \
                and (stage["stage"], stage["text"]) != self.stage:
            # What the trainer does before its first step (checking the base model, preparing replay): the
            # metric "stage_text" carries the trainer's words for the run view.
            self.stage = (stage["stage"], stage["text"])
            self.progress.report("prepare", 0, None, force=True, status=stage["text"], stage_key=stage["stage"],
                                 stage_text=stage["text"])
        path = self.control.run_dir / RUN_JSON
        if not self.announced and path.exists() and path.stat().st_mtime >= self.started - 1:
            info = run_json(self.control.run_dir)
            if info.get("status") == "running":  # the trainer has read the data and built the model
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
        # Training steps only: the step-0 line with the base model's scores has no loss.
        steps = [r for r in records if isinstance(r.get("loss"), int | float)]
        if steps:
            self.trained = True
            last = steps[-1]
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
            write_pid(run_dir, process.pid)
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
            stop_process(process, control.grace_s)  # never leave a trainer running unattended
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
            # goes to the app through control.log_tail.
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
