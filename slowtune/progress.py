"""One progress and cancel protocol for every long core function.

A long function takes a ``Progress`` (or ``None``, meaning "nobody is watching"), calls
``progress.report(stage, done, total, **metrics)`` as it goes and ``progress.check()`` at safe points, where
a cancel request raises ``Cancelled``. The CLI renders reports with rich; the GUI's workers turn them into
Qt signals. Nothing here knows about either. ``format_duration`` writes an estimate or a measured time for people.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Cancelled(Exception):
    """The user asked to stop. Functions leave their outputs as they were (or resumable) before raising."""


@dataclass(frozen=True)
class ProgressEvent:
    stage: str
    done: float
    total: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = ""

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))


Listener = Callable[[ProgressEvent], None]


class Progress:
    """Progress reports and a cancel flag, shared by a job and whoever watches it.

    Reports are throttled to one per ``min_interval`` seconds per stage, but the first report of a stage,
    the final one (done == total), one whose status text differs from the last one sent for its stage, and any
    report with ``force=True`` always go through, so a watcher never misses where a stage or a step starts or
    ends.
    """

    def __init__(self, listener: Listener | None = None, *, min_interval: float = 0.1) -> None:
        self._listeners: list[Listener] = [listener] if listener else []
        self._cancel = threading.Event()
        self._min_interval = min_interval
        self._last_sent: dict[str, float] = {}
        self._last_status: dict[str, str] = {}
        self.last: ProgressEvent | None = None

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def report(
        self,
        stage: str,
        done: float,
        total: float | None = None,
        *,
        status: str = "",
        force: bool = False,
        **metrics: Any,
    ) -> None:
        event = ProgressEvent(stage, done, total, metrics, status)
        self.last = event
        now = time.monotonic()
        last = self._last_sent.get(stage)
        final = total is not None and done >= total
        new_status = status != self._last_status.get(stage, status)
        if not (force or final or new_status or last is None or now - last >= self._min_interval):
            return
        self._last_sent[stage] = now
        self._last_status[stage] = status
        for listener in self._listeners:
            listener(event)

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check(self) -> None:
        """Raise ``Cancelled`` if a cancel was requested. Call it where stopping leaves things consistent."""
        if self._cancel.is_set():
            raise Cancelled()


def ensure(progress: Progress | None) -> Progress:
    """Let core functions accept ``progress=None`` and still call report/check unconditionally."""
    return progress if progress is not None else Progress()


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


class RichProgressBar:
    """Render ``ProgressEvent``s as rich progress bars, one per stage (the CLI's listener)."""

    def __init__(self, *, transient: bool = False, console: Any = None, max_metrics: int = 4) -> None:
        self.max_metrics = max_metrics
        # stderr by default: stdout stays free for a command's result (e.g. --json).
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RichProgress,
        )

        self._rich = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=transient,
            console=console if console is not None else _stderr_console(),
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgressBar:
        self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._rich.stop()

    def __call__(self, event: ProgressEvent) -> None:
        # A terminal line has room for a few figures; the listener of a GUI gets them all.
        shown = list(event.metrics.items())[: self.max_metrics]
        info = event.status or "  ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown
        )
        task = self._tasks.get(event.stage)
        if task is None:
            task = self._rich.add_task(event.stage, total=event.total, info=info)
            self._tasks[event.stage] = task
        self._rich.update(task, completed=event.done, total=event.total, info=info)


def format_duration(seconds: float, *, exact: bool = False) -> str:
    """A duration for people: an estimate rounded to what matters ("45 s", "12 min", "2 h 05 min"; "—" for none),
    or with ``exact`` a time measured ("45 s", "2 min 5 s", "1 h 3 min")."""
    if exact:
        if seconds < 60:
            return f"{seconds:.0f} s"
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
    if not math.isfinite(seconds) or seconds < 0:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"
