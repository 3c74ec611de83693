from __future__ import annotations

import io
import logging
import logging.handlers
from pathlib import Path

import pytest

from slowtune import logs
from slowtune.progress import Cancelled, Progress, ProgressEvent, RichProgressBar, ensure


def test_reports_are_throttled_but_start_and_end_always_arrive() -> None:
    seen: list[ProgressEvent] = []
    progress = Progress(seen.append, min_interval=3600)
    for i in range(101):
        progress.report("train", i, 100, loss=1.0 / (i + 1))
    assert [e.done for e in seen] == [0, 100]
    assert seen[-1].fraction == 1.0 and seen[-1].metrics["loss"] == pytest.approx(1 / 101)
    progress.report("export", 1, 10)
    progress.report("export", 2, 10, force=True)
    assert [(e.stage, e.done) for e in seen[2:]] == [("export", 1), ("export", 2)]
    assert progress.last is not None and progress.last.done == 2


def test_cancel_is_cooperative() -> None:
    progress = ensure(None)
    progress.check()
    progress.cancel()
    assert progress.cancelled
    with pytest.raises(Cancelled):
        progress.check()


def test_rich_bar_renders_events() -> None:
    from rich.console import Console

    out = io.StringIO()
    bar = RichProgressBar(console=Console(file=out, force_terminal=True, width=120))
    with bar:
        progress = Progress(bar, min_interval=0)
        progress.report("download", 5, 10, status="model.safetensors")
        progress.report("download", 10, 10)
    assert "download" in out.getvalue() and "10/10" in out.getvalue()


def test_log_file_rotates_in_the_logs_folder(slowtune_home: Path) -> None:
    path = logs.setup_logging()
    assert path.parent == slowtune_home / "logs"
    logging.getLogger("slowtune.x").debug("a debug line")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "a debug line" in path.read_text()
    handler = next(h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler))
    assert handler.maxBytes > 0 and handler.backupCount > 0


def test_a_new_status_is_never_throttled_away() -> None:
    seen: list[str] = []
    progress = Progress(lambda e: seen.append(e.status), min_interval=60)
    progress.report("export", 1, 5, status="converting")
    progress.report("export", 1, 5, status="converting")  # throttled: nothing new
    progress.report("export", 2, 5, status="verifying")  # a new step: always shown
    assert seen == ["converting", "verifying"]
