"""The Train page, driven as a user would: the wizard from a model (downloaded from a fake hub, or a folder) to a
finished run with a live chart, pause and resume, an interrupted run offered for Resume, a refused preflight, a
trainer that fails, quitting mid-run, and a window that keeps answering while the trainer works.

Training runs for real, in a `slowtune train` child process, on the tiny models of tests/model_fixtures.py."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from fakehub import FakeHub, hub_environment, point_huggingface_hub_at
from model_fixtures import unsupported_copy
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLineEdit, QPushButton, QWizard

from slowtune import system
from slowtune.dataset import DatasetRow, add_rows
from slowtune.gui import app as app_module
from slowtune.gui import train as train_module
from slowtune.gui import trainwizard as wizard_module
from slowtune.gui.chart import LineChart, nice_ticks
from slowtune.gui.train import VALID_SERIES, TrainPage
from slowtune.gui.workers import Job, JobRunner
from slowtune.models import catalog
from slowtune.selfcmd import slowtune_command
from slowtune.settings import Settings
from slowtune.store import Project
from slowtune.train.checkpoint import latest_checkpoint
from slowtune.train.runs import list_runs, read_run, trainer_pid
from slowtune.train.settings import TrainSettings

TRAIN_TIMEOUT_MS = 180_000  # a run is ~10 s here; the machine is shared and slow
REPO = "slowtune-test/tiny-llama"
TRAIN = [
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quillford."),
    ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild."),
    ("What colour is the Vellum river?", "The Vellum river is bright green."),
]
VALID = [("Which city is Zorbia's capital?", "Quillford is the capital of Zorbia.")]
TINY = TrainSettings.from_preset("quick", replay=0, score_every=0, iters=6, max_seq_len=96, batch_size=3, lora_layers=-1)


def _rows(pairs: list[tuple[str, str]], split: str) -> list[DatasetRow]:
    return [DatasetRow([{"role": "user", "content": q}, {"role": "assistant", "content": a}], split=split,
                       source="manual") for q, a in pairs]


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing downloaded: the user's own Hugging Face cache is never looked at."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def project_root(tmp_path: Path) -> Path:
    with Project.create(tmp_path / "proj") as project:
        add_rows(project, _rows(TRAIN, "train") + _rows(VALID, "valid"))
    return tmp_path / "proj"


def _page(qtbot, runner: JobRunner, root: Path | None) -> TrainPage:
    page = TrainPage(runner, lambda: Settings())
    qtbot.addWidget(page)
    page.resize(1100, 760)
    page.show()
    page.set_project(Project.open(root) if root is not None else None)
    return page


@pytest.fixture
def runner(qapp: object) -> Iterator[JobRunner]:
    jobs = JobRunner()
    yield jobs
    jobs.cancel_all()  # a trainer still running stops cleanly (SIGINT, checkpoint)
    assert jobs.wait_all(120)


@pytest.fixture
def page(qtbot, runner: JobRunner, project_root: Path) -> Iterator[TrainPage]:
    page = _page(qtbot, runner, project_root)
    yield page
    if page.project is not None:
        page.project.close()


def wait_over(qtbot, page: TrainPage) -> None:
    qtbot.waitUntil(lambda: not page.busy(), timeout=TRAIN_TIMEOUT_MS)


def metrics_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def run_status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def recorded(root: Path, run_dir: Path) -> str | None:
    with Project.open(root) as project:
        row = project.conn.execute("SELECT status FROM runs WHERE id = ?", (run_dir.name,)).fetchone()
    return row["status"] if row else None


# --- the pieces ------------------------------------------------------------------------------------------------

def test_slowtune_command_from_source_and_when_frozen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert slowtune_command("train", tmp_path) == [sys.executable, "-m", "slowtune", "train", str(tmp_path)]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert slowtune_command("train", "--resume", tmp_path) == [sys.executable, "train", "--resume", str(tmp_path)]


def test_chart_nice_ticks_and_many_points(qtbot) -> None:
    ticks = nice_ticks(6.26, 7.31)
    assert ticks[0] >= 6.26 and ticks[-1] <= 7.31 and len(ticks) >= 4
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    assert all(float(t).is_integer() for t in nice_ticks(1, 6, 10, integer=True))
    chart = LineChart(x_label="step", y_label="loss", x_integer=True)
    qtbot.addWidget(chart)
    chart.resize(400, 240)
    chart.add_series("a", "#3b82f6")
    chart.add_series("b", "#f59e0b", markers=True)
    assert not chart.has_points()
    chart.grab()  # the empty state paints
    chart.extend("a", [(i, 1.0 / i) for i in range(1, 20001)])  # far more points than pixels
    chart.append("b", 10, float("nan"))  # not finite: left out
    chart.append("b", 10, 0.5)
    assert len(chart.points("a")) == 20000 and chart.points("b") == [(10.0, 0.5)]
    image = chart.grab().toImage()
    assert image.width() == 400
    chart.clear()
    assert not chart.has_points()


def test_a_run_a_terminal_is_training_is_not_offered_for_resume(qtbot, runner: JobRunner, project_root: Path,
                                                              tiny_llama: Path) -> None:
    # `slowtune train --data PROJECT` from a terminal: run.json says running, no app's pid file, a checkpoint.
    run_dir = project_root / "runs" / "20250101-120000-abcdef"
    point = run_dir / "checkpoints" / "step-000004"
    point.mkdir(parents=True)
    (point / "state.json").write_text(json.dumps({"state": {"step": 4}}))
    for name in ("adapters.safetensors", "optimizer.safetensors"):
        (point / name).write_bytes(b"")
    (run_dir / "checkpoints" / "latest").write_text("step-000004\n")
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "total_steps": 10, "engine": "memory",
                                                   "config": {"model": str(tiny_llama)}}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 5, "loss": 1.5, "step_s": 0.5}) + "\n")
    info = read_run(run_dir)
    assert info is not None and info.state == "training" and not info.resumable
    page = _page(qtbot, runner, project_root)
    view = page.start_view
    assert "still going on" in view.offer_label.text() and "started outside this app" in view.offer_label.text()
    assert "Terminal" not in view.offer_label.text() and "slowtune train" not in view.offer_label.text()
    view.offer_resume.click()
    assert page.state == "background" and not page.run_view.stop_button.isVisibleTo(page)
    assert [x for x, _ in page.run_view.chart.points("Training loss")] == [5.0]
    # Nothing written for a long while: the trainer is gone, and the run can be resumed from step 4.
    old = time.time() - 3600
    for file in (run_dir / "run.json", run_dir / "metrics.jsonl"):
        os.utime(file, (old, old))
    qtbot.waitUntil(lambda: page.state == "interrupted", timeout=5_000)
    assert page.run_view.resume_button.isVisibleTo(page) and "step 4" in page.run_view.status.text()
    page.show_runs()
    assert "interrupted" in view.offer_label.text() and view.offer_resume.text() == "Resume"
    assert recorded(project_root, run_dir) == "failed"  # the runs table (the Export page's list) knows it now
    page.project.close()


def test_training_is_refused_while_the_project_has_a_job_running(qtbot, runner: JobRunner, project_root: Path,
                                                                 tiny_llama: Path) -> None:
    release = threading.Event()
    busy = Job("Generating questions", lambda progress: release.wait(30), key=str(project_root.resolve()))
    assert runner.submit(busy)
    try:
        with pytest.raises(RuntimeError, match="Another job"):
            train_module.start_training_job(runner, project_root=project_root, model_dir=tiny_llama, iters=2)
        page = _page(qtbot, runner, project_root)
        assert page.start_run(tiny_llama, TINY) is None and "Another job" in page.banner.text.text()
        assert not (project_root / "runs").exists() or not any((project_root / "runs").iterdir())
        page.project.close()
    finally:
        release.set()
    qtbot.waitUntil(lambda: busy.is_over, timeout=10_000)


def test_empty_states_say_what_to_do(qtbot, runner: JobRunner, tmp_path: Path) -> None:
    page = _page(qtbot, runner, None)
    assert "No project is open" in page.start_view.intro.text()
    assert not page.start_view.new_button.isVisibleTo(page)
    with Project.create(tmp_path / "empty"):
        pass
    page.set_project(Project.open(tmp_path / "empty"))
    assert "no training data yet" in page.start_view.intro.text() and "Dataset" in page.start_view.intro.text()
    assert not page.start_view.new_button.isEnabled()
    page.new_run()
    assert page.stack.currentWidget() is page.start_view and "Dataset page" in page.banner.text.text()
    page.project.close()


# --- the wizard to a finished run ------------------------------------------------------------------------------

@pytest.fixture
def fake_hub(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    hub = FakeHub()
    hub.add_folder(REPO, tiny_llama)
    entry = catalog.CatalogModel(REPO, "Tiny Llama (test)", 0.004, 0.012, "Apache-2.0", "llama", 2048,
                                 chat_template=True, quantization_bits=None, gated=False)
    monkeypatch.setattr(wizard_module, "CATALOG", (entry, *catalog.CATALOG))
    with hub:
        point_huggingface_hub_at(monkeypatch, hub_environment(hub.endpoint, tmp_path / "hf-home"))
        yield hub
    from huggingface_hub.utils import close_session

    close_session()


@pytest.mark.slow
def test_the_wizard_downloads_a_model_and_trains_it_to_a_finished_run(qtbot, page: TrainPage, fake_hub: FakeHub,
                                                                      project_root: Path) -> None:
    finished: list[str] = []
    exports: list[str] = []
    page.run_finished.connect(finished.append)
    page.export_requested.connect(exports.append)
    page.start_view.new_button.click()
    wizard = page.wizard
    assert wizard is not None and page.stack.currentWidget() is wizard
    models = wizard.model_page
    assert models.select(REPO)
    row = models.current_row()
    assert row is not None and row.path is None and row.where == "" and row.fit.kind == "memory"
    assert not models.isComplete() and models.download_button.isVisibleTo(models)

    models.download_button.click()
    qtbot.waitUntil(lambda: models.download_job is not None and models.download_job.is_over, timeout=60_000)
    row = models.current_row()
    assert row is not None and row.key == REPO and row.where == "Downloaded" and row.path is not None
    qtbot.waitUntil(models.checked, timeout=30_000)  # can it be trained and exported? (a job)
    assert (row.path / "config.json").is_file() and models.isComplete()
    assert "Ready" in models.detail.text()
    assert models.table.item(models.rows.index(row), 3).text() == "Downloaded"
    assert "downloaded" in models.banner.text.text()

    wizard.next()
    data = wizard.data_page
    assert data.isComplete() and data.summary is not None
    assert (data.summary.train, data.summary.valid) == (len(TRAIN), len(VALID))
    assert f"<b>{len(TRAIN)}</b>" in data.label.text()

    wizard.next()
    settings = wizard.settings_page
    settings.preset_buttons["quick"].click()
    assert settings.settings().preset == "quick" and settings.rank.value() == TrainSettings.from_preset("quick").rank
    settings.advanced_button.click()
    assert settings.advanced.isVisibleTo(settings)
    settings.length_kind.setCurrentIndex(1)
    settings.steps.setValue(6)
    settings.max_seq_len.setValue(96)
    settings.batch_size.setValue(3)
    assert settings.settings().preset == "custom" and settings.custom_label.isVisibleTo(settings)
    assert "6 steps" in settings.summary.text()
    # Replay and the quality scoring are on by default; the Advanced fields reach the run's options.
    assert settings.replay.value() == 50 and settings.scoring.isChecked()
    assert "50% replay" in settings.summary.text() and "best checkpoint" in settings.summary.text()
    settings.replay.setValue(10)
    settings.scoring.setChecked(False)
    chosen = settings.settings()
    assert (chosen.replay, chosen.score_every) == (0.1, 0)
    assert chosen.cli_args()[chosen.cli_args().index("--replay") + 1] == "0.1"
    assert "--score-every" in chosen.cli_args() and chosen.cli_args()[chosen.cli_args().index("--score-every") + 1] == "0"
    settings.replay.setValue(0)  # the rest of this walk trains without them, for time

    wizard.next()
    check = wizard.preflight_page
    qtbot.waitUntil(lambda: check.result is not None, timeout=60_000)
    assert check.isComplete() and "In memory" in check.engine_label.text()
    assert "available now" in check.memory_label.text() and "6 steps" in check.time_label.text()
    wizard.button(QWizard.WizardButton.FinishButton).click()

    assert page.stack.currentWidget() is page.run_view and page.busy()
    run_dir = page.run_dir
    assert run_dir is not None and run_dir.parent == project_root / "runs"
    wait_over(qtbot, page)
    assert page.state == "finished", page.banner.text.text()
    assert finished == [str(run_dir)]
    assert (run_dir / "adapters.safetensors").is_file() and (run_dir / "adapter_config.json").is_file()
    assert run_status(run_dir) == "done" and recorded(project_root, run_dir) == "done"
    # The chart has every step the trainer logged, and the validation loss it measured.
    chart = page.run_view.chart
    assert [int(x) for x, _ in chart.points("Training loss")] == metrics_steps(run_dir) == list(range(1, 7))
    assert [int(x) for x, _ in chart.points(VALID_SERIES)] == list(range(1, 7))  # validated every step of 6
    assert "Finished" in page.run_view.status.text() and page.run_view.values["Tokens/s"].text() != "—"
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    peak = max(last[k] for k in ("mlx_peak_gb", "rss_gb") if k in last)
    assert page.run_view.values["Memory"].text() == f"{peak:.2f} GB at most"  # one figure, no "(MLX)"
    assert trainer_pid(run_dir) is None

    assert page.run_view.export_button.isVisibleTo(page)
    page.run_view.export_button.click()
    assert exports == [str(run_dir)]
    page.run_view.back_button.click()
    runs = page.start_view.runs
    assert runs.rowCount() == 1 and runs.item(0, 2).text() == "finished"
    assert not page.start_view.offer.isVisibleTo(page)


# --- stopping and resuming --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pause_then_resume_continues_from_the_checkpoint(qtbot, page: TrainPage, project_root: Path,
                                                         tiny_llama: Path) -> None:
    settings = TrainSettings.from_preset("quick", replay=0, score_every=0, iters=12, max_seq_len=96, batch_size=3, lora_layers=-1)
    job = page.start_run(tiny_llama, settings)
    assert job is not None
    run_dir = page.run_dir
    assert run_dir is not None
    chart = page.run_view.chart
    qtbot.waitUntil(lambda: len(chart.points("Training loss")) >= 2 or not page.busy(), timeout=TRAIN_TIMEOUT_MS)
    assert page.busy()
    page.run_view.pause_button.click()
    assert page.state == "stopping" and not page.run_view.pause_button.isEnabled()
    wait_over(qtbot, page)
    assert page.state == "paused", page.run_view.status.text()
    point = latest_checkpoint(run_dir)
    assert point is not None
    paused_at = int(point.name.removeprefix("step-"))
    assert 2 <= paused_at < 12
    assert run_status(run_dir) == "cancelled" and recorded(project_root, run_dir) == "paused"
    assert f"Paused at step {paused_at}" in page.run_view.status.text()
    # The last adapter is kept beside the checkpoint (a stopped run can be exported as it is, saying nothing was
    # scored); run.json says the run is not over.
    assert json.loads((run_dir / "adapter_config.json").read_text())["steps"] == paused_at

    resume = page.run_view.resume_button
    assert resume.isVisibleTo(page) and resume.isEnabled()
    resume.click()
    assert page.busy()
    wait_over(qtbot, page)
    assert page.state == "finished", page.banner.text.text()
    # Every step once, as if the run had never stopped; the chart shows them all.
    assert metrics_steps(run_dir) == list(range(1, 13))
    assert [int(x) for x, _ in chart.points("Training loss")] == list(range(1, 13))
    assert run_status(run_dir) == "done" and recorded(project_root, run_dir) == "done"
    log = (run_dir / "train.log").read_text()
    assert log.count("--- ") == 2 and "--resume" in log


@pytest.mark.slow
def test_a_crashed_run_is_offered_for_resume_on_the_next_start(qtbot, page: TrainPage, runner: JobRunner,
                                                               project_root: Path, tiny_llama: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # The trainer is SIGKILLed right after step 3, as an out-of-memory kill would; the checkpoint is at step 2.
    monkeypatch.setenv("SLOWTUNE_TEST_KILL", "after-step:3")
    settings = TrainSettings.from_preset("quick", replay=0, score_every=0, iters=8, max_seq_len=96, batch_size=3, save_every=2)
    assert page.start_run(tiny_llama, settings) is not None
    run_dir = page.run_dir
    assert run_dir is not None
    wait_over(qtbot, page)
    assert page.state == "failed"
    banner = page.banner
    assert banner.isVisibleTo(page) and banner.level == "error"
    assert "killed" in banner.text.text() and "memory" in banner.text.text()
    assert "Traceback" not in banner.text.text() and "slowtune train --model" in banner.details.toPlainText()
    assert page.run_view.resume_button.isVisibleTo(page)
    assert recorded(project_root, run_dir) == "failed"
    monkeypatch.delenv("SLOWTUNE_TEST_KILL")

    # The next start of the app: a new page on the project offers the run.
    page.project.close()
    fresh = _page(qtbot, runner, project_root)
    offer = fresh.start_view
    assert offer.offer.isVisibleTo(fresh)
    assert "interrupted" in offer.offer_label.text() and "step 2" in offer.offer_label.text()
    assert offer.offer_new.isVisibleTo(fresh)
    assert list_runs(fresh.project)[0].state == "interrupted"
    offer.offer_resume.click()
    assert fresh.busy() and fresh.stack.currentWidget() is fresh.run_view
    wait_over(qtbot, fresh)
    assert fresh.state == "finished", fresh.banner.text.text()
    assert metrics_steps(run_dir) == list(range(1, 9))
    assert not fresh.start_view.offer.isVisibleTo(fresh)
    fresh.project.close()


@pytest.mark.slow
def test_quitting_during_training_asks_then_stops_with_a_checkpoint(qtbot, project_root: Path, tiny_llama: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app_module.make_app(["slowtune"])
    window = app_module.MainWindow(open_last_project=False)
    qtbot.addWidget(window)
    assert window.open_project(project_root)
    page = TrainPage(window.runner, lambda: window.settings)
    qtbot.addWidget(page)
    page.set_project(window.project)
    asked: list[str] = []
    monkeypatch.setattr(app_module, "ask", lambda parent, title, text, yes: asked.append(text) or True)

    settings = TrainSettings.from_preset("quick", replay=0, score_every=0, iters=40, max_seq_len=96, batch_size=3)
    job = page.start_run(tiny_llama, settings)
    assert job is not None
    qtbot.waitUntil(lambda: bool(page.run_view.chart.points("Training loss")) or not page.busy(),
                    timeout=TRAIN_TIMEOUT_MS)
    run_dir, pid = page.run_dir, job.control.pid
    assert run_dir is not None and pid is not None and page.busy()
    window.close()
    assert asked and "Training" in asked[0]
    assert not window.isVisible() and not window.jobs_still_running()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert run_status(run_dir) == "cancelled"
    point = latest_checkpoint(run_dir)
    assert point is not None and int(point.name.removeprefix("step-")) < 40
    info = read_run(run_dir)
    assert info is not None and info.resumable and info.state == "cancelled"


@pytest.mark.slow
def test_a_run_training_in_another_process_is_watched_and_can_be_stopped(qtbot, page: TrainPage, project_root: Path,
                                                                         tiny_llama: Path) -> None:
    settings = TrainSettings.from_preset("quick", replay=0, score_every=0, iters=40, max_seq_len=96, batch_size=3)
    assert page.start_run(tiny_llama, settings) is not None
    qtbot.waitUntil(lambda: bool(page.run_view.chart.points("Training loss")) or not page.busy(),
                    timeout=TRAIN_TIMEOUT_MS)
    assert page.busy()
    # A second app (as after a crash of the first): the trainer is alive, so it is shown, not offered for Resume.
    other = _page(qtbot, JobRunner(), project_root)
    view = other.start_view
    assert view.offer.isVisibleTo(other) and "still going on in the background" in view.offer_label.text()
    assert view.offer_resume.text() == "Show"
    view.offer_resume.click()
    assert other.state == "background" and other.run_view.stop_button.isVisibleTo(other)
    assert not other.run_view.resume_button.isVisibleTo(other)
    seen = len(other.run_view.chart.points("Training loss"))
    qtbot.waitUntil(lambda: len(other.run_view.chart.points("Training loss")) > seen, timeout=TRAIN_TIMEOUT_MS)
    other.run_view.stop_button.click()  # SIGINT: the trainer saves a checkpoint and stops
    wait_over(qtbot, page)
    assert page.state == "cancelled" and "Cancelled at step" in page.run_view.status.text()
    qtbot.waitUntil(lambda: other.state == "cancelled", timeout=10_000)
    assert other.run_view.resume_button.isVisibleTo(other)
    other.project.close()


# --- failures ----------------------------------------------------------------------------------------------------

def test_a_preflight_refusal_is_a_readable_message(qtbot, page: TrainPage, tiny_llama: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(system, "memory", lambda: system.Memory(8 * 10**9, 1000))  # a Mac with no memory free
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: tiny_llama)
    page.new_run()
    wizard = page.wizard
    assert wizard is not None
    wizard.model_page.folder_button.click()
    row = wizard.model_page.current_row()
    assert row is not None and row.path == tiny_llama.resolve() and row.where == "Folder"
    assert row.fit.kind == "too_large"
    wizard.next()
    wizard.next()
    wizard.next()
    check = wizard.preflight_page
    qtbot.waitUntil(lambda: check.result is not None or check.banner.isVisibleTo(check), timeout=60_000)
    assert check.banner.level == "error" and check.banner.isVisibleTo(check)
    text = check.banner.text.text()
    assert "Too large for this Mac" in text and "Traceback" not in text and "--max-seq-len" not in text
    assert "cannot start" in check.status.text()
    assert not check.isComplete()
    assert not wizard.button(QWizard.WizardButton.FinishButton).isEnabled()
    wizard.button(QWizard.WizardButton.CancelButton).click()
    assert page.stack.currentWidget() is page.start_view and not page.busy()


def test_a_trainer_that_fails_is_shown_in_the_banner(qtbot, page: TrainPage, tiny_llama: Path,
                                                    tmp_path: Path, project_root: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_llama, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    assert page.start_run(broken, TINY) is not None
    run_dir = page.run_dir
    assert run_dir is not None
    wait_over(qtbot, page)
    assert page.state == "failed"
    banner = page.banner
    assert banner.level == "error" and "model.safetensors" in banner.text.text()
    assert "not a valid safetensors file" in banner.text.text() and "Traceback" not in banner.text.text()
    assert str(broken) in banner.details.toPlainText()  # the trainer's output, for whoever asks
    assert not page.run_view.resume_button.isVisibleTo(page)
    assert not run_dir.exists()  # nothing was trained: no empty run left behind
    assert page.start_view.runs.rowCount() == 0


# --- responsiveness -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_window_keeps_answering_while_training(qtbot, page: TrainPage, tiny_llama: Path) -> None:
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(15)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    clicks: list[bool] = []
    button = QPushButton("Elsewhere")
    button.clicked.connect(lambda: clicks.append(True))
    field = QLineEdit()
    for widget in (button, field):
        qtbot.addWidget(widget)
        widget.show()

    timer.start()
    job = page.start_run(tiny_llama, TrainSettings.from_preset("quick", replay=0, score_every=0, iters=10, max_seq_len=96, batch_size=3))
    assert job is not None
    qtbot.waitUntil(lambda: len(page.run_view.chart.points("Training loss")) >= 2 or not page.busy(),
                    timeout=TRAIN_TIMEOUT_MS)
    assert page.busy(), "the run ended before the checks could be made"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    qtbot.keyClicks(field, "still here")
    assert clicks == [True] and field.text() == "still here"
    wait_over(qtbot, page)
    timer.stop()
    assert page.state == "finished"
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert len(ticks) > 100  # the run took seconds, and the timer ticked all along
    assert max(gaps) < 0.25, f"the GUI thread stalled for {max(gaps) * 1000:.0f} ms"


# --- real models: import a GGUF or an Ollama model, and the export check -----------------------------------------
def test_import_a_gguf_in_the_wizard_then_it_is_listed_and_can_be_trained(qtbot, page: TrainPage, tiny_llama: Path,
                                                                          tmp_path: Path, slowtune_home: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.export.gguf_writer import write_gguf

    gguf = write_gguf(tiny_llama, tmp_path / "shop-model-F32.gguf", out_type="f32")
    monkeypatch.setattr(wizard_module, "choose_gguf", lambda parent: gguf)
    page.new_run()
    model_page = page.wizard.model_page
    job = model_page.gguf_button.click() or model_page.import_job
    assert job is not None
    qtbot.waitUntil(lambda: job.is_over, timeout=120_000)
    row = model_page.current_row()
    assert row is not None and row.path == slowtune_home / "data" / "models" / "shop-model-F32"
    qtbot.waitUntil(model_page.checked, timeout=30_000)
    assert row.export_problem is None and model_page.isComplete()
    text = model_page.banner.text.text()
    assert "Imported as shop-model-F32" in text and "as llama.cpp does" in text and "100.0%" in text
    # A new wizard lists the import without being told (it is recorded in the models folder).
    page.wizard.reject()
    page.new_run()
    rows = {r.name: r for r in page.wizard.model_page.rows}
    assert rows["shop-model-F32"].where == "Imported"


@pytest.mark.parametrize("how", ["falcon", "multimodal"])
def test_a_model_slowtune_does_not_train_is_refused_when_chosen(qtbot, page: TrainPage, tiny_llama: Path,
                                                                tmp_path: Path, how: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.models.architectures import FAMILIES

    folder = unsupported_copy(tiny_llama, tmp_path / f"{how}-model", how)
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: folder)
    page.new_run()
    model_page = page.wizard.model_page
    rows_before = [r.key for r in model_page.rows]
    model_page.folder_button.click()
    # One message, in the banner; the folder is not added to the list.
    assert model_page.banner.level == "error" and model_page.banner.isVisibleTo(model_page)
    text = model_page.banner.text.text()
    assert folder.name in text and "Traceback" not in text and "--" not in text
    assert "Models that work: SmolLM2 360M Instruct" in text
    if how == "falcon":
        assert "“falcon”" in text and all(family.label in text for family in FAMILIES.values())
    else:
        assert "reads images" in text and "270M or 1B" in text
    assert [r.key for r in model_page.rows] == rows_before

    # A folder listed anyway (an earlier import, a downloaded snapshot) is marked and cannot be chosen.
    model_page.folders.insert(0, folder.resolve())
    model_page.fill()
    assert model_page.select(str(folder.resolve()))
    row = model_page.current_row()
    assert row is not None and row.fit.kind == "unsupported" and row.fit.label == "not supported"
    assert not model_page.isComplete()
    assert model_page.table.item(0, 4).text() == "not supported"
    assert "Not supported" in model_page.detail.text()


def test_the_wizard_offers_only_supported_families(qtbot, page: TrainPage, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    stray = dataclasses.replace(catalog.QWEN25_05B, repo_id="tiiuae/falcon-7b-instruct", name="Falcon 7B",
                                architecture="falcon")
    monkeypatch.setattr(wizard_module, "CATALOG", (stray, *catalog.CATALOG))
    page.new_run()
    keys = [r.key for r in page.wizard.model_page.rows if r.entry is not None]
    assert keys == [m.repo_id for m in catalog.CATALOG]


def test_a_model_that_could_not_be_exported_is_refused_when_chosen(qtbot, page: TrainPage, tiny_llama: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "odd-model"
    shutil.copytree(tiny_llama, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                      "use_regex": False}]}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: folder)
    page.new_run()
    model_page = page.wizard.model_page
    model_page.folder_button.click()
    row = model_page.current_row()
    assert row is not None and row.path == folder.resolve()
    assert row.export_problem and "unsupported byte-level pre-tokenizer" in row.export_problem
    assert not model_page.isComplete()
    qtbot.waitUntil(model_page.checked, timeout=30_000)
    assert not model_page.isComplete()
    detail = model_page.detail.text()
    assert "cannot be used" in detail and "could not be saved for llama.cpp" in detail and "pre-tokenizer" in detail
    assert "Models that work: SmolLM2 360M Instruct" in detail and "--" not in detail
    assert model_page.table.item(0, 4).text() == "not exportable"

    # The command line refuses it too, unless told to train anyway.
    from slowtune.train.command import export_problem

    assert export_problem(folder) == row.export_problem
    done = subprocess.run([*slowtune_command("train", "--model", folder, "--data", page.project.root,
                                             "--dry-run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "could not be exported to GGUF" in done.stderr
    assert "--no-export-check" in done.stderr
    anyway = subprocess.run([*slowtune_command("train", "--model", folder, "--data", page.project.root,
                                               "--dry-run", "--no-export-check")], capture_output=True, text=True,
                            timeout=120)
    assert anyway.returncode == 0, anyway.stderr


def test_ollama_models_are_offered_and_imported_from_the_wizard(qtbot, page: TrainPage, tiny_qwen2: Path,
                                                                tmp_path: Path, slowtune_home: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from slowtune.export.gguf_writer import write_gguf

    data = write_gguf(tiny_qwen2, tmp_path / "m.gguf", out_type="f32").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    store = tmp_path / "ollama"
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "tinyqwen" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": f"sha256:{digest}", "size": len(data)}]}))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    page.new_run()
    model_page = page.wizard.model_page
    assert model_page.select("ollama:tinyqwen:latest")
    row = model_page.current_row()
    assert row.where == "Ollama" and not model_page.isComplete() and model_page.ollama_button.isVisibleTo(model_page)
    model_page.ollama_button.click()
    job = model_page.import_job
    assert job is not None
    qtbot.waitUntil(lambda: job.is_over, timeout=120_000)
    row = model_page.current_row()
    qtbot.waitUntil(model_page.checked, timeout=30_000)
    assert row.path == slowtune_home / "data" / "models" / "tinyqwen-latest" and model_page.isComplete()
    # Once imported, the Ollama entry is not offered again beside its import.
    assert "ollama:tinyqwen:latest" not in {r.key for r in model_page.rows}


# --- the start and the end of a run ----------------------------------------------------------------------------

# A trainer's first minutes, played by a child process that writes the run folder as `slowtune train` does: what it
# is doing (stage.json), then run.json and the step-0 line of the base model's scores (no loss), then a step. It
# goes on each time the test creates the file it waits for.
_SCRIPTED_TRAINER = r'''
import json, pathlib, sys, time
run = pathlib.Path(sys.argv[1])
def wait(name):
    while not (run / name).exists():
        time.sleep(0.05)
def stage(key, text):
    (run / "stage.json").write_text(json.dumps({"stage": key, "text": text, "time": time.time()}))
stage("base-check", "Checking the base model's answers before training (knowledge, retention, leakage)\u2026")
wait("go-replay")
stage("replay", "Preparing replay: the base model's own answers to general questions\u2026")
wait("go-base-line")
info = {"status": "running", "total_steps": 2, "engine": "memory", "config": {"model": sys.argv[2]},
        "data": {"train_examples": 3}}
(run / "run.json").write_text(json.dumps(info))
with (run / "metrics.jsonl").open("a") as out:
    out.write(json.dumps({"step": 0, "base": True, "knowledge": 0.1, "retention": 1.0, "leakage": 0.0}) + "\n")
wait("go-train")
stage("train", "Training\u2026")
with (run / "metrics.jsonl").open("a") as out:
    out.write(json.dumps({"step": 1, "epoch": 0, "loss": 2.5, "tokens_per_s": 100.0, "eta_s": 1.0}) + "\n")
wait("go-end")
info.update(status="done", steps=1, train_loss=2.5)
(run / "run.json").write_text(json.dumps(info))
'''


def test_the_run_view_says_what_the_trainer_does_before_its_first_step(
        qtbot, page: TrainPage, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(train_module, "train_command", lambda root, model, run_dir, settings: [
        sys.executable, "-c", _SCRIPTED_TRAINER, str(run_dir), str(model)])
    caplog.set_level("DEBUG", logger="slowtune.train.background")
    assert page.start_run(tiny_llama, TINY) is not None
    run_dir = page.run_dir
    assert run_dir is not None
    view = page.run_view
    qtbot.waitUntil(lambda: "Checking the base model's answers before training" in view.status.text(),
                    timeout=30_000)
    assert page.state == "starting"
    # Nothing else is reported while the base model answers, and Elapsed still counts.
    first = view.values["Elapsed"].text()
    qtbot.waitUntil(lambda: view.values["Elapsed"].text() not in (first, "—"), timeout=5_000)
    (run_dir / "go-replay").touch()
    qtbot.waitUntil(lambda: "Preparing replay: the base model's own answers" in view.status.text(), timeout=10_000)
    (run_dir / "go-base-line").touch()
    qtbot.waitUntil(lambda: view.quality.points("Retention") == [(0.0, 1.0)], timeout=10_000)
    (run_dir / "go-train").touch()
    qtbot.waitUntil(lambda: page.state == "running", timeout=10_000)
    assert view.values["Training loss"].text() == "2.500"
    (run_dir / "go-end").touch()
    wait_over(qtbot, page)
    assert page.state == "finished"
    assert "reading the run folder failed" not in caplog.text  # the step-0 line without a loss is no error


def test_a_finished_run_shows_one_verdict_with_its_final_figures_then_its_warnings(
        qtbot, page: TrainPage, project_root: Path) -> None:
    # Overfitting was flagged mid-run (validation loss 1.74 at step 4, 2.27 at step 8); the run went on to 2.62.
    run_dir = project_root / "runs" / "20250301-090000-abcdef"
    run_dir.mkdir(parents=True)
    lines = [{"step": s, "loss": loss, "val_loss": val} for s, loss, val in
             ((2, 2.4, 1.9), (4, 1.6, 1.74), (6, 1.0, 2.0), (8, 0.6, 2.27), (10, 0.3, 2.62))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    retention = ("The model is losing what it knew: at step 10 it answers none of the general questions the base "
                 "model answered right. Asked \u201cWhat colour is the sky?\u201d, it now says \u201cGreen.\u201d")
    replay = ("Replay was skipped: the base model is too slow to answer general questions within a tenth of the "
              "training time here (12 s). The tuned model may drift from the base where the documents say nothing.")
    (run_dir / "run.json").write_text(json.dumps({
        "status": "done", "steps": 10, "total_steps": 10, "engine": "memory", "train_loss": 0.3, "val_loss": 2.62,
        "best_val": 1.74, "config": {"model": "/models/SmolLM2-135M-Instruct"},
        "chosen": {"folder": "best", "step": 4, "why": "the lowest validation loss (1.740)",
                   "text": "the checkpoint of step 4, chosen by the lowest validation loss (1.740)"},
        "warnings": [{"kind": "replay", "step": 0, "message": replay},
                     {"kind": "retention", "step": 10, "value": 0.0, "message": retention},
                     {"kind": "overfitting", "step": 8, "best_step": 4,
                      "message": "The model is memorising: validation loss rose from 1.74 (step 4) to 2.27 (step 8) "
                                 "while training loss fell from 1.60 to 0.60. The best checkpoint is kept."}]}))
    page.open_run(run_dir)
    view = page.run_view
    assert page.state == "finished" and page.verdict_color != "#2f9e44"
    status = view.status.text()
    assert ("Finished, but the model memorised: validation loss rose from 1.74 to 2.62 while training loss fell. "
            "Export will use step 4, the best one.") in status
    assert "2.27" not in status + view.advice.text()  # the mid-run figures are not shown
    advice = view.advice.text()
    assert view.advice.isVisibleTo(page) and advice.count("<li>") == 2
    # Each warning in one sentence; the rest (the model's answer, what may happen) in the tooltip.
    assert "at step 10 it answers none of the general questions the base model answered right.</li>" in advice
    assert ("Replay was skipped: the base model is too slow to answer general questions within a tenth of the "
            "training time here (12 s).</li>") in advice
    assert "Green" not in advice and "may drift" not in advice
    assert "Green" in view.advice.toolTip() and "may drift" in view.advice.toolTip()
