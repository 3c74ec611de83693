"""The moment the main window is first painted, for ``slowtune bench gui``'s cold start (slowtune/bench/gui.py).

The app calls :func:`report_when_painted` on its main window when ``SLOWTUNE_BENCH_SHOWN_FILE`` is set
(``run_app``); the bench's baseline, a bare PySide6 window (:func:`slowtune.gui.measure.bare_window`), is timed the
same way. Qt is imported inside the function: the bench imports this module's names without loading Qt.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SHOWN_MARKER_ENV = "SLOWTUNE_BENCH_SHOWN_FILE"  # `slowtune bench gui`: note the first paint there, then quit
# Libraries that should load on first use, not before the window shows (the marker lists those already loaded).
HEAVY = ("mlx", "mlx_lm", "llama_cpp", "openai", "transformers", "numpy")


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
