"""Background jobs: a core function runs off the GUI thread and its progress arrives as Qt signals.

A ``Job`` owns a ``slowtune.progress.Progress`` and the signals that report on it (the napari/Anki pattern: the
worker owns its signals, the widgets only connect to them). The core function receives the ``Progress`` and
knows nothing about Qt; its reports are collected in the worker thread and handed to the GUI thread, where
they become ``progress`` signals. Cancel is cooperative: ``Job.cancel()`` sets the Progress's cancel flag, and
the core raises ``Cancelled`` at its next safe point.

``JobRunner`` enforces one long job at a time per project: a second one is either queued behind it or refused
with a message the window shows.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QDeadlineTimer, QObject, QThread, Signal, Slot

from slowtune.gui.qtcompat import emit
from slowtune.progress import Cancelled, Progress, ProgressEvent

log = logging.getLogger(__name__)

JobFunction = Callable[[Progress], Any]

# Python's own errors of these types carry a sentence when slowtune's code raises them (the core's error types
# derive from them); raised inside a library, their text is for a developer.
_USER_FACING = (ValueError, RuntimeError)
UNEXPECTED = "{what} failed unexpectedly. Copy the details for a bug report."


def _raised_by_slowtune(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in slowtune's own code (its innermost traceback frame is in the package)."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", "")).startswith("slowtune")


def written_for_user(exc: BaseException) -> bool:
    """Whether the text of ``exc`` is meant for a user: one of the core's own error types (``StoreError``,
    ``ExportError``, ``TeacherError``..., all defined in slowtune), or a ``ValueError``/``RuntimeError`` slowtune
    raised itself with a sentence."""
    if not str(exc).strip():
        return False
    if type(exc).__module__.startswith("slowtune"):
        return True
    return isinstance(exc, _USER_FACING) and _raised_by_slowtune(exc)


def describe_error(exc: BaseException, title: str = "") -> tuple[str, str]:
    """A message a user can read, and the details (type and traceback) for the log and a bug report. A core error
    may carry an ``app_message``: its words for the app, where its text is for the command line.

    ``title`` names the work that failed ("Exporting"), for the message about an unexpected error.
    """
    details = "".join(traceback.format_exception(exc)).rstrip()
    text = str(exc).strip()
    if isinstance(exc, MemoryError):
        message = "Ran out of memory. Close other apps, or work on fewer documents at a time."
    elif isinstance(exc, OSError) and not type(exc).__module__.startswith("slowtune"):
        # OSError's str() reads "[Errno 2] No such file or directory: 'x'"; the parts read better apart.
        what = exc.strerror or text or "The file could not be read or written"
        message = f"{what}: {exc.filename}" if exc.filename else what
    elif written_for_user(exc):
        # A core error whose text names a command says it for the app too (``app_message``).
        message = str(getattr(exc, "app_message", "") or text)
    else:
        message = UNEXPECTED.format(what=title or "The work")
    return message, details


class _JobThread(QThread):
    """Runs the function once and keeps the outcome; the Job reads it in the GUI thread when the thread ends."""

    def __init__(self, fn: JobFunction, progress: Progress, title: str = "") -> None:
        super().__init__()
        self._fn = fn
        self._title = title
        self._progress = progress
        self.outcome: tuple[str, Any] = ("failed", ("The job did not run.", ""))

    def run(self) -> None:
        try:
            result = self._fn(self._progress)
        except Cancelled:
            self.outcome = ("cancelled", None)
        except BaseException as exc:  # a worker must never take the app down; the user gets the message
            log.exception("background job %r failed", self._title)
            self.outcome = ("failed", describe_error(exc, self._title))
        else:
            self.outcome = ("finished", result)


class Job(QObject):
    """One core function run in a QThread. Create it, connect to its signals, then hand it to a JobRunner.

    Signals (all delivered in the GUI thread):
      ``started()``;
      ``progress(stage, done, total, metrics, status)`` - ``total`` is a float or None, ``metrics`` a dict;
      ``finished(result)`` - the function's return value;
      ``failed(message, details)`` - a message written for the user (see :func:`describe_error`), and the
      traceback, which is logged and goes to a banner's ``details`` (copied for a bug report, never shown);
      ``cancelled()`` - the user stopped it (or it was cancelled while still queued);
      ``done()`` - after whichever of the three above, exactly once.
    """

    started = Signal()
    progress = Signal(str, float, object, object, str)
    finished = Signal(object)
    failed = Signal(str, str)
    cancelled = Signal()
    done = Signal()

    # Raised from the worker thread; the connection is queued, so the slot runs in the GUI thread.
    _events_ready = Signal()

    def __init__(
        self,
        title: str,
        fn: JobFunction,
        *,
        key: str | None = None,
        stage_names: dict[str, str] | None = None,
        min_interval: float = 0.1,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.title = title
        self.key = key  # jobs with the same key (a project's folder) never run at the same time
        self.stage_names = stage_names or {}
        self.state = "waiting"  # waiting, running, finished, failed, cancelled
        self.last_event: ProgressEvent | None = None
        self.result: Any = None
        self.error: tuple[str, str] | None = None
        # Set by a page's ``finished`` handler when the job ran to its end but what it found is a failure (a
        # provider test that got no answer): the status bar then says the job failed, and why, not "done".
        self.failure: str | None = None
        # Set by a ``finished`` handler when the job did its work but the user should hear of a problem with part
        # of it ("1 file could not be read"): the status bar says "done, ..." with it.
        self.note: str | None = None
        self._fn = fn
        # The core throttles per stage (first and last reports always pass); see slowtune.progress.
        self._progress = Progress(self._collect, min_interval=min_interval)
        self._thread: _JobThread | None = None
        # Reports waiting for the GUI thread, latest per stage: if the GUI is busy, reports are coalesced instead
        # of piling up in the event queue, and the last report of every stage still arrives.
        self._pending: dict[str, ProgressEvent] = {}
        self._lock = threading.Lock()
        self._delivery_scheduled = False
        self._events_ready.connect(self._deliver)

    # --- state ---------------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self.state == "running"

    @property
    def is_over(self) -> bool:
        return self.state in ("finished", "failed", "cancelled")

    @property
    def thread_alive(self) -> bool:
        """The worker thread is still executing (``state`` changes only when the GUI thread hears it ended)."""
        return self._thread is not None and self._thread.isRunning()

    @property
    def cancel_requested(self) -> bool:
        return self._progress.cancelled

    def stage_label(self, stage: str) -> str:
        return self.stage_names.get(stage, stage)

    # --- control -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the thread. Use ``JobRunner.submit`` instead, so the one-job-per-project rule holds."""
        if self.state != "waiting":
            raise RuntimeError(f"job {self.title!r} was already started")
        self.state = "running"
        self._thread = _JobThread(self._fn, self._progress, self.title)
        self._thread.finished.connect(self._on_thread_finished)
        emit(self.started)
        self._thread.start()

    def cancel(self) -> None:
        """Ask the function to stop at its next safe point. A job still waiting in a queue ends at once."""
        self._progress.cancel()
        if self.state == "waiting":
            self._end("cancelled", None)

    def wait(self, timeout_s: float) -> bool:
        """Block until the thread has ended, at most ``timeout_s``; True when it has (or never started)."""
        if self._thread is None:
            return True
        return self._thread.wait(QDeadlineTimer(int(timeout_s * 1000)))

    # --- worker thread side --------------------------------------------------------------------------
    def _collect(self, event: ProgressEvent) -> None:
        with self._lock:
            self._pending[event.stage] = event
            if self._delivery_scheduled:
                return
            self._delivery_scheduled = True
        emit(self._events_ready)

    # --- GUI thread side -----------------------------------------------------------------------------
    @Slot()
    def _deliver(self) -> None:
        with self._lock:
            events = list(self._pending.values())
            self._pending.clear()
            self._delivery_scheduled = False
        for event in events:
            self.last_event = event
            emit(self.progress, event.stage, float(event.done), event.total, dict(event.metrics), event.status)

    @Slot()
    def _on_thread_finished(self) -> None:
        thread = self._thread
        assert thread is not None
        thread.wait()  # `finished` is emitted just before the thread really ends
        self._deliver()  # reports still in flight come before the outcome
        state, value = thread.outcome
        self._end(state, value)

    def _end(self, state: str, value: Any) -> None:
        if self.is_over:
            return
        self.state = state
        if state == "finished":
            self.result = value
            emit(self.finished, value)
        elif state == "failed":
            self.error = value
            emit(self.failed, *value)
        else:
            emit(self.cancelled)
        emit(self.done)


class JobRunner(QObject):
    """Starts jobs, at most one per key (project) at a time; later ones are queued or refused.

    Signals: ``job_started(job)``, ``job_done(job)``, ``refused(message)``.
    """

    job_started = Signal(object)
    job_done = Signal(object)
    refused = Signal(str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._running: dict[str | None, Job] = {}
        self._queued: dict[str | None, list[Job]] = {}

    def running(self, key: str | None = None) -> Job | None:
        return self._running.get(key)

    def active_jobs(self) -> list[Job]:
        """Running jobs, then queued ones."""
        queued = [job for jobs in self._queued.values() for job in jobs]
        return [*self._running.values(), *queued]

    def submit(self, job: Job, *, queue: bool = False) -> bool:
        """Start ``job`` now, or queue it behind the job running for its key; False (and ``refused``) if refused."""
        current = self._running.get(job.key)
        if current is None:
            self._start(job)
            return True
        if queue:
            self._queued.setdefault(job.key, []).append(job)
            job.done.connect(lambda job=job: self._forget_queued(job))
            return True
        message = f"“{current.title}” is still running. Wait for it to finish, or cancel it first."
        emit(self.refused, message)
        return False

    def cancel_all(self) -> None:
        for job in self.active_jobs():
            job.cancel()

    def wait_all(self, timeout_s: float) -> bool:
        """Wait for every running job's thread to end, at most ``timeout_s`` in all; True if all ended."""
        deadline = QDeadlineTimer(int(timeout_s * 1000))
        return all(job.wait(max(0.0, deadline.remainingTime() / 1000)) for job in list(self._running.values()))

    def _start(self, job: Job) -> None:
        self._running[job.key] = job
        job.done.connect(lambda job=job: self._on_done(job))
        job.start()
        emit(self.job_started, job)

    def _on_done(self, job: Job) -> None:
        if self._running.get(job.key) is job:
            del self._running[job.key]
        emit(self.job_done, job)
        waiting = self._queued.get(job.key)
        if waiting:
            self._start(waiting.pop(0))

    def _forget_queued(self, job: Job) -> None:
        # A queued job that was cancelled before it ran leaves the queue.
        waiting = self._queued.get(job.key, [])
        if job in waiting:
            waiting.remove(job)
