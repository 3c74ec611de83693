"""``slowtune bench gui``: how fast the window appears, and how well it keeps answering while a model trains.

Measured side by side in one run, each in fresh processes:

- **cold start**: wall time from starting ``python -m slowtune`` (the same entry point a user starts) to the main
  window's first paint, with a project of a few documents reopened as the last project. The child notes the
  moment of the first paint in a file named by ``SLOWTUNE_BENCH_SHOWN_FILE`` and quits; it also lists which heavy
  libraries were loaded by then (none should be: they load on first use). The baseline is a bare PySide6 window
  started and timed the same way: the floor any Qt app pays on this machine. Runs alternate.
- **event-loop latency**: a 10 ms QTimer in the main window's process, first with nothing running (baseline), then
  while the Train page's training job runs on a tiny model (a child process training, this process tailing its
  metrics and drawing the chart). Reported as the lateness of each tick beyond its 10 ms: median, p95, max.

Without a display the children use Qt's offscreen platform (the figures say which).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slowtune.selfcmd import module_command, slowtune_command

HEAVY = ("mlx", "mlx_lm", "llama_cpp", "openai", "transformers", "numpy")
TARGET_COLD_START_S = 1.5
TICK_MS = 10

_DOCS = {
    "handbook.md": "# Volunteer handbook\n\nThe gates open at 7:00 and close at dusk. Keys are held by the two duty "
                   "volunteers listed on the board by the shed.\n\n## Plots\n\nEach plot is 3 by 4 metres.\n",
    "minutes.txt": "Committee minutes, 4 March\n\nThe new water meter was fitted on 28 February. Usage is down 12% on "
                   "last March. Seed swap on Saturday 22 March.\n",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=5, help="cold starts per side, alternating (default 5)")
    p.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle event loop measured (default 3)")
    p.add_argument("--steps", type=int, default=40, help="training steps during the latency measurement (default 40)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and steps: a smoke test of the benchmark")


# --- in the child processes ------------------------------------------------------------------------------------

def report_when_painted(window: Any, marker: Path, *, quit_after: bool = True) -> None:
    """Write the time of ``window``'s first paint (and the heavy modules loaded by then) to ``marker``, then quit."""
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication

    class _FirstPaint(QObject):
        def eventFilter(self, watched: QObject, event: QEvent) -> bool:
            if event.type() == QEvent.Type.Paint and not self.property("seen"):
                self.setProperty("seen", True)
                painted = time.time()
                loaded = sorted(name for name in HEAVY if name in sys.modules)
                marker.write_text(json.dumps({"painted_at": painted, "heavy_loaded": loaded}))
                if quit_after:
                    QTimer.singleShot(0, QApplication.quit)
            return False

    spy = _FirstPaint(window)
    window.installEventFilter(spy)


def _bare_window(marker: Path) -> int:
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


def _latency(out: Path, work: Path, idle_s: float, steps: int) -> int:
    """Idle ticks first, then ticks while the Train page's job trains a tiny model to the end."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from slowtune.gui.app import MainWindow, make_app
    from slowtune.gui.train import start_training_job

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

    model_dir, project_root = _training_inputs(work)
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


def _training_inputs(work: Path) -> tuple[Path, Path]:
    """A tiny model folder and a project with a few accepted chat rows."""
    from slowtune.testing.tiny_project import tiny_training_inputs

    return tiny_training_inputs(work)


# --- the parent ---------------------------------------------------------------------------------------------

def _child_env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["SLOWTUNE_HOME"] = str(home)
    if not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        env["QT_QPA_PLATFORM"] = "offscreen"
    env.update(extra)
    return env


def _prepare_home(work: Path) -> Path:
    """A slowtune home whose last project has a few documents, as a returning user's would."""
    from slowtune.documents.library import ingest
    from slowtune.settings import load_settings, save_settings
    from slowtune.store import Project

    home = work / "home"
    docs = work / "docs"
    docs.mkdir(parents=True)
    for name, text in _DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    previous = os.environ.get("SLOWTUNE_HOME")
    os.environ["SLOWTUNE_HOME"] = str(home)
    try:
        root = home / "projects" / "Bench"
        with Project.create(root) as project:
            ingest(project, [docs], workers=1)
        settings = load_settings().settings
        settings.last_project = str(root)
        save_settings(settings)
    finally:
        if previous is None:
            os.environ.pop("SLOWTUNE_HOME", None)
        else:
            os.environ["SLOWTUNE_HOME"] = previous
    return home


def _time_start(command: list[str], env: dict[str, str], marker: Path) -> dict[str, Any]:
    marker.unlink(missing_ok=True)
    started = time.time()
    done = subprocess.run(command, env={**env, "SLOWTUNE_BENCH_SHOWN_FILE": str(marker)}, capture_output=True,
                          text=True, timeout=120)
    if done.returncode != 0 or not marker.exists():
        raise SystemExit(f"slowtune bench gui: {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    shown = json.loads(marker.read_text())
    return {"s": shown["painted_at"] - started, "heavy_loaded": shown["heavy_loaded"]}


def bench_gui(args: argparse.Namespace) -> dict[str, Any]:
    repeats = 2 if args.quick else args.repeats
    steps = 6 if args.quick else args.steps
    idle_s = 1.0 if args.quick else args.idle_s
    with tempfile.TemporaryDirectory(prefix="slowtune-bench-gui-") as tmp:
        work = Path(tmp)
        home = _prepare_home(work)
        env = _child_env(home)
        app_cmd = slowtune_command()
        bare_cmd = module_command("slowtune.gui.bench", "bare")
        # One unmeasured start of each, so both sides read their files from a warm page cache.
        _time_start(app_cmd, env, work / "shown.json")
        _time_start(bare_cmd, env, work / "shown.json")
        app_runs, bare_runs, heavy = [], [], set()
        for _ in range(repeats):
            run = _time_start(app_cmd, env, work / "shown.json")
            app_runs.append(run["s"])
            heavy.update(run["heavy_loaded"])
            bare_runs.append(_time_start(bare_cmd, env, work / "shown.json")["s"])

        out = work / "latency.json"
        done = subprocess.run(module_command("slowtune.gui.bench", "latency", out, work / "train", str(idle_s),
                                             str(steps)), env=env, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"slowtune bench gui: the latency run failed ({done.returncode}):\n{done.stderr[-3000:]}")
        latency = json.loads(out.read_text())

    cold = statistics.median(app_runs)
    return {
        "platform": env.get("QT_QPA_PLATFORM") or "display",
        "cold_start_s": round(cold, 3),
        "cold_start_target_s": TARGET_COLD_START_S,
        "cold_start_ok": cold <= TARGET_COLD_START_S,
        "cold_start_runs_s": [round(x, 3) for x in app_runs],
        "baseline_bare_qt_window_s": round(statistics.median(bare_runs), 3),
        "baseline_runs_s": [round(x, 3) for x in bare_runs],
        "heavy_libraries_loaded_at_show": sorted(heavy),
        "event_loop": {"tick_ms": TICK_MS, "idle_baseline": latency["idle"], "during_training": latency["training"],
                       "training_s": latency["training_s"], "training_steps": latency["steps"],
                       "job_state": latency["job_state"]},
    }


def main(argv: list[str]) -> int:
    if argv[:1] == ["bare"]:
        return _bare_window(Path(os.environ["SLOWTUNE_BENCH_SHOWN_FILE"]))
    if argv[:1] == ["latency"]:
        out, work, idle_s, steps = argv[1:5]
        return _latency(Path(out), Path(work), float(idle_s), int(steps))
    print("usage: python -m slowtune.gui.bench bare | latency OUT WORK IDLE_S STEPS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
