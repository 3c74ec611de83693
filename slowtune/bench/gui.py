"""``slowtune bench gui``: how fast the window appears, and how well it keeps answering while a model trains.

Measured side by side in one run, each in fresh processes:

- **cold start**: wall time from starting ``python -m slowtune`` (the same entry point a user starts) to the main
  window's first paint, with a project of a few documents reopened as the last project. The child notes the
  moment of the first paint in a file named by ``SLOWTUNE_BENCH_SHOWN_FILE`` and quits
  (:func:`slowtune.gui.firstpaint.report_when_painted`); it also lists which heavy libraries were loaded by then (none should be: they
  load on first use). The baseline is a bare PySide6 window (``python -m slowtune.bench.gui bare``) started and
  timed the same way: the floor any Qt app pays on this machine. Runs alternate.
- **event-loop latency**: a 10 ms QTimer in the main window's process, first with nothing running (baseline), then
  while the Train page's training job runs on a tiny model (a child process training, this process tailing its
  metrics and drawing the chart), in ``python -m slowtune.bench.gui latency ...``. Reported as the lateness of each
  tick beyond its 10 ms: median, p95, max.

Without a display the children use Qt's offscreen platform (the figures say which). The children's Qt work is in
slowtune.gui.measure and slowtune.gui.firstpaint; this module imports no Qt.
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

from slowtune.gui.firstpaint import SHOWN_MARKER_ENV
from slowtune.gui.measure import TICK_MS
from slowtune.selfcmd import module_command, slowtune_command

TARGET_COLD_START_S = 1.5

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
    done = subprocess.run(command, env={**env, SHOWN_MARKER_ENV: str(marker)}, capture_output=True,
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
        bare_cmd = module_command("slowtune.bench.gui", "bare")
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
        done = subprocess.run(module_command("slowtune.bench.gui", "latency", out, work / "train", str(idle_s),
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
    """The child processes: ``bare`` (the baseline window) and ``latency OUT WORK IDLE_S STEPS``, both run by the Qt
    half in slowtune.gui.measure."""
    if argv[:1] == ["bare"]:
        from slowtune.gui.measure import bare_window

        return bare_window(Path(os.environ[SHOWN_MARKER_ENV]))
    if argv[:1] == ["latency"]:
        from slowtune.gui.measure import event_loop_latency

        out, work, idle_s, steps = argv[1:5]
        return event_loop_latency(Path(out), Path(work), float(idle_s), int(steps))
    print("usage: python -m slowtune.bench.gui bare | latency OUT WORK IDLE_S STEPS", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
