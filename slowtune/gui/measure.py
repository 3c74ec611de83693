"""The Qt half of ``slowtune bench gui``: what is measured inside a window's process (slowtune/bench/gui.py starts
these processes and reports the figures).

- :func:`slowtune.gui.firstpaint.report_when_painted`: the moment a window is first painted, noted in a file, with
  the heavy libraries loaded by then. The app does it on its main window when ``SLOWTUNE_BENCH_SHOWN_FILE`` is set
  (``run_app``);
- :func:`bare_window`: the baseline, a bare PySide6 window timed the same way;
- :func:`event_loop_latency`: how late a 10 ms timer fires in the main window's process, idle and while the Train
  page's job trains a tiny model.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from slowtune.gui.firstpaint import report_when_painted

TICK_MS = 10


def bare_window(marker: Path) -> int:
    """The baseline: the least a PySide6 app does to show a window."""
    from PySide6.QtWidgets import QApplication, QLabel, QMainWindow

    app = QApplication(sys.argv[:1])
    window = QMainWindow()
    window.setCentralWidget(QLabel("bare window"))
    window.resize(1100, 720)
    window.show()
    report_when_painted(window, marker)
    return app.exec()


class _TickMeter:
    """A repeating 10 ms timer that records how late each tick arrives."""

    def __init__(self) -> None:
        from PySide6.QtCore import QElapsedTimer, Qt, QTimer

        self.late_ms: list[float] = []
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(TICK_MS)
        self._timer.timeout.connect(self._tick)
        self._last = 0

    def start(self) -> None:
        self.late_ms = []
        self._clock.start()
        self._last = 0
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed()
        self.late_ms.append(max(0.0, (now - self._last) / 1e6 - TICK_MS))
        self._last = now


def _summary(late: list[float]) -> dict[str, Any]:
    if not late:
        return {"ticks": 0}
    ordered = sorted(late)
    return {"ticks": len(late), "median_late_ms": round(statistics.median(ordered), 2),
            "p95_late_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2), "max_late_ms": round(ordered[-1], 2)}


def event_loop_latency(out: Path, work: Path, idle_s: float, steps: int) -> int:
    """Idle ticks first, then ticks while the Train page's job trains a tiny model to the end; written to ``out``."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from slowtune.gui.app import MainWindow, make_app
    from slowtune.gui.train import start_training_job
    from slowtune.testing.tiny_project import tiny_training_inputs

    app = make_app(sys.argv[:1])
    window = MainWindow()
    window.show()
    meter = _TickMeter()

    def spin(seconds: float) -> None:
        loop = QEventLoop()
        QTimer.singleShot(int(seconds * 1000), loop.quit)
        loop.exec()

    spin(0.5)  # let the window settle
    meter.start()
    spin(idle_s)
    meter.stop()
    idle = _summary(meter.late_ms)

    model_dir, project_root = tiny_training_inputs(work)  # a tiny model folder and a project with a few chat rows
    job = start_training_job(window.runner, project_root=project_root, model_dir=model_dir, iters=steps)
    started = time.perf_counter()
    meter.start()
    loop = QEventLoop()
    job.done.connect(loop.quit)
    loop.exec()
    meter.stop()
    training_s = time.perf_counter() - started
    result = {"idle": idle, "training": _summary(meter.late_ms), "training_s": round(training_s, 2),
              "job_state": job.state, "steps": steps}
    out.write_text(json.dumps(result))
    window.close()
    QApplication.processEvents()
    return app.exit(0) or 0
