"""Jobs off the GUI thread: progress as signals, results, readable errors, cancel, one job per project."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from slowtune.gui.widgets import JobStatusWidget
from slowtune.gui.workers import Job, JobRunner, describe_error
from slowtune.progress import Progress
from slowtune.store import StoreError

TIMEOUT_MS = 10_000


def _wait_until_cancelled(progress: Progress) -> None:
    """A job that works until asked to stop, checking the flag as real core functions do."""
    progress.report("work", 1, 4, force=True)
    while True:
        progress.check()
        time.sleep(0.01)


@pytest.fixture
def runner(qapp: object) -> Iterator[JobRunner]:
    runner = JobRunner()
    yield runner
    # A thread still running when its QThread is garbage-collected would abort the test process.
    runner.cancel_all()
    assert runner.wait_all(10)


def test_a_job_reports_progress_and_its_result_in_the_gui_thread(qtbot, runner: JobRunner) -> None:
    threads: list[object] = []
    seen: list[tuple[str, float, object, object, str]] = []

    def work(progress: Progress) -> str:
        threads.append(threading.current_thread())
        for i in range(1, 4):
            progress.report("count", i, 3, force=True, loss=0.5 / i)
        progress.report("finish", 1, 1, status="almost there")
        return "the result"

    job = Job("Counting", work, key="p")
    job.progress.connect(lambda *args: seen.append((*args, threading.current_thread())))
    with qtbot.waitSignal(job.finished, timeout=TIMEOUT_MS) as finished:
        assert runner.submit(job)
    assert finished.args == ["the result"]
    assert job.state == "finished" and job.result == "the result"
    assert threads[0] is not threading.main_thread()  # the work ran off the GUI thread
    assert all(entry[-1] is threading.main_thread() for entry in seen)  # the signals arrived on it
    last = {stage: (done, total, metrics, status) for stage, done, total, metrics, status, _ in seen}
    assert last["count"] == (3.0, 3, {"loss": pytest.approx(0.5 / 3)}, "")  # the last report of a stage arrives
    assert last["finish"][3] == "almost there"
    qtbot.waitUntil(lambda: runner.running("p") is None, timeout=TIMEOUT_MS)


def test_a_flood_of_reports_is_coalesced_and_the_final_one_still_arrives(qtbot, runner: JobRunner) -> None:
    received: list[float] = []

    def chatty(progress: Progress) -> None:
        for i in range(20_000):
            progress.report("spin", i, 19_999, force=True)  # force: bypass the core's own throttle

    job = Job("Spinning", chatty)
    job.progress.connect(lambda stage, done, *_: received.append(done))
    with qtbot.waitSignal(job.done, timeout=TIMEOUT_MS):
        runner.submit(job)
    assert received[-1] == 19_999
    assert len(received) < 20_000  # the GUI got the latest value whenever it was ready, not every report


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StoreError("No slowtune project at /x (no project.sqlite there)."), "No slowtune project at /x"),
        (FileNotFoundError(2, "No such file or directory", "/tmp/gone.pdf"), "No such file or directory: /tmp/gone.pdf"),
        (KeyError("chunk"), "Breaking failed unexpectedly. Copy the details for a bug report."),
        # Python's own ValueError, raised outside slowtune's code: its text is for a developer.
        (ValueError("invalid literal for int() with base 10: '{\"a\": 1}'"), "Breaking failed unexpectedly."),
    ],
)
def test_an_exception_becomes_a_readable_message_with_details(qtbot, runner: JobRunner, error: Exception,
                                                              expected: str) -> None:
    def broken(progress: Progress) -> None:
        raise error

    job = Job("Breaking", broken)
    with qtbot.waitSignal(job.failed, timeout=TIMEOUT_MS) as failed:
        runner.submit(job)
    message, details = failed.args
    assert message.startswith(expected)
    assert "Traceback" not in message and "Traceback" in details and type(error).__name__ in details
    assert type(error).__name__ not in message
    assert job.state == "failed"
    assert describe_error(MemoryError())[0].startswith("Ran out of memory")


def test_a_sentence_slowtune_raises_itself_reaches_the_user_as_it_is(tmp_path) -> None:
    from slowtune.fsutil import atomic_writer

    with pytest.raises(ValueError) as info, atomic_writer(tmp_path / "x", "r"):
        pass
    message, details = describe_error(info.value, "Writing")
    assert message == "atomic_writer needs a write mode, got 'r'" and "Traceback" in details


def test_a_core_error_naming_a_command_says_it_in_the_apps_words(slowtune_home) -> None:
    from slowtune.gui.widgets import developer_text
    from slowtune.teacher import providers as pv

    needs = pv.add_provider("oa", "openai")  # a preset that needs a key, and none stored
    try:
        pv.make_client(needs, timeout=3)
    except pv.MissingKeyError as exc:
        message, details = describe_error(exc, "Generating")
    else:
        raise AssertionError("no missing-key error")
    assert message.startswith("The teacher oa has no API key") and "Providers page" in message
    assert not developer_text(message) and "slowtune provider" not in message
    assert "slowtune provider add oa" in details  # the command-line wording stays in the details


def test_cancel_stops_the_job_at_its_next_check(qtbot, runner: JobRunner) -> None:
    job = Job("Waiting", _wait_until_cancelled)
    with qtbot.waitSignal(job.progress, timeout=TIMEOUT_MS):
        runner.submit(job)
    assert job.is_running and job.thread_alive
    with qtbot.waitSignal(job.cancelled, timeout=TIMEOUT_MS):
        job.cancel()
    assert job.state == "cancelled" and not job.thread_alive


def test_one_job_per_project_a_second_is_refused_or_queued(qtbot, runner: JobRunner) -> None:
    first = Job("Reading documents", _wait_until_cancelled, key="project-a")
    refusals: list[str] = []
    runner.refused.connect(refusals.append)
    with qtbot.waitSignal(first.progress, timeout=TIMEOUT_MS):
        assert runner.submit(first)

    refused = Job("Generating", lambda progress: None, key="project-a")
    assert not runner.submit(refused)
    assert refusals and "Reading documents" in refusals[0] and "still running" in refusals[0]
    assert refused.state == "waiting"

    elsewhere = Job("Other project", lambda progress: "other", key="project-b")
    with qtbot.waitSignal(elsewhere.finished, timeout=TIMEOUT_MS):
        assert runner.submit(elsewhere)  # another project is not blocked

    queued = Job("After it", lambda progress: "queued result", key="project-a")
    dropped = Job("Cancelled while waiting", lambda progress: "never", key="project-a")
    assert runner.submit(queued, queue=True) and runner.submit(dropped, queue=True)
    assert runner.active_jobs() == [first, queued, dropped]
    dropped.cancel()  # cancelling a queued job ends it at once and takes it out of the queue
    assert dropped.state == "cancelled" and runner.active_jobs() == [first, queued]

    with qtbot.waitSignal(queued.finished, timeout=TIMEOUT_MS):
        first.cancel()
    assert first.state == "cancelled" and queued.result == "queued result"
    qtbot.waitUntil(lambda: not runner.active_jobs(), timeout=TIMEOUT_MS)


def test_the_status_widget_shows_stage_and_counts_and_its_cancel_button_stops_the_job(qtbot, runner: JobRunner) -> None:
    status = JobStatusWidget()
    qtbot.addWidget(status)
    status.show()
    runner.job_started.connect(status.track)
    job = Job("Adding documents", _wait_until_cancelled, stage_names={"work": "reading"})
    with qtbot.waitSignal(job.progress, timeout=TIMEOUT_MS):
        runner.submit(job)
    assert status.isVisible()
    assert status.label.text() == "Adding documents: reading 1/4"
    assert (status.bar.minimum(), status.bar.maximum(), status.bar.value()) == (0, 1000, 250)

    with qtbot.waitSignal(job.cancelled, timeout=TIMEOUT_MS):
        status.cancel_button.click()
        assert status.cancel_button.text() == "Stopping…" and not status.cancel_button.isEnabled()
    assert not status.isVisible() and status.job is None


def test_a_long_session_of_qt_calls_cannot_use_up_none(qapp: object) -> None:
    # PySide6 6.12.0 on Python 3.11 drops a reference to None on every Qt call that returns nothing; a few
    # thousand calls (a streamed chat answer makes hundreds) abort the interpreter with "none_dealloc".
    import sys

    import PySide6
    from PySide6.QtWidgets import QLabel

    from slowtune.gui import qtcompat

    label = QLabel()
    before = sys.getrefcount(None)
    for _ in range(5000):
        label.setText("x")
    lost = before - sys.getrefcount(None)
    # The pinned binding has no such bug; if one that does gets installed, qtcompat gave None plenty to lose.
    assert lost < 50 or (qtcompat.VOID_CALLS_DROP_NONE and sys.getrefcount(None) > 1 << 39), (
        f"PySide6 {PySide6.__version__} loses a reference to None per call ({lost} in 5000 calls)")
    assert not qtcompat.VOID_CALLS_DROP_NONE, f"PySide6 {PySide6.__version__} has the None bug: keep it below 6.12"


def test_emitting_signals_leaves_the_true_singleton_alone(qapp: object) -> None:
    # PySide6 6.12 on Python 3.11 drops a reference to True on every Python-side emit, which aborts the
    # interpreter after a few hundred emits (see slowtune/gui/qtcompat.py). Through `emit` the count holds.
    import sys

    from slowtune.gui.qtcompat import emit

    job = Job("Probe", lambda progress: None)
    received: list[str] = []
    job.failed.connect(lambda message, details: received.append(message))
    before = sys.getrefcount(True)
    for _ in range(2000):
        emit(job.failed, "m", "d")
    assert len(received) == 2000
    assert abs(sys.getrefcount(True) - before) < 50


def test_every_python_side_emit_in_the_gui_goes_through_the_workaround() -> None:
    import re
    from pathlib import Path

    import slowtune.gui

    offenders = []
    for path in Path(slowtune.gui.__file__).parent.glob("*.py"):
        if path.name == "qtcompat.py":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"\.emit\b", line) and not line.lstrip().startswith("#"):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert not offenders, "use slowtune.gui.qtcompat.emit(signal, ...):\n" + "\n".join(offenders)
