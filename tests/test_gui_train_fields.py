"""The Train wizard's Settings step as a user types into it: values typed at any speed come out exact, a value is
checked when it is committed (with the message beside the field), and nothing moves under the pointer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget
from test_gui_train import TRAIN, VALID, _page, _rows

from slowtune.dataset import add_rows
from slowtune.gui.train import TrainPage
from slowtune.gui.workers import JobRunner
from slowtune.store import Project


@pytest.fixture
def runner(qapp: object) -> Iterator[JobRunner]:
    jobs = JobRunner()
    yield jobs
    jobs.cancel_all()
    assert jobs.wait_all(60)


@pytest.fixture
def page(qtbot, runner: JobRunner, tmp_path: Path) -> Iterator[TrainPage]:
    with Project.create(tmp_path / "proj") as project:
        add_rows(project, _rows(TRAIN, "train") + _rows(VALID, "valid"))
    page = _page(qtbot, runner, tmp_path / "proj")
    yield page
    if page.project is not None:
        page.project.close()


def _settled() -> None:
    for _ in range(3):
        QApplication.processEvents()


def _type(field: QWidget, text: str) -> None:
    """Replace the field's text by typing ``text`` key by key, as a user does (not committed yet)."""
    field.setFocus()
    editor = field.lineEdit() if hasattr(field, "lineEdit") else field
    editor.selectAll()
    QTest.keyClicks(field, text)


def _commit(field: QWidget) -> None:
    """Leave the field, as a user does with Tab: its value is committed."""
    field.clearFocus()
    _settled()


def test_typed_values_come_out_exact_and_nothing_moves(qtbot, page: TrainPage) -> None:
    page.new_run()
    assert page.wizard.isVisible()
    settings = page.wizard.settings_page
    page.wizard.setStartId(page.wizard.pageIds()[2])
    page.wizard.restart()
    assert page.wizard.currentPage() is settings
    settings.preset_buttons["balanced"].click()
    settings.advanced_button.click()
    _settled()
    fields = [settings.rank, settings.learning_rate, settings.length_kind, settings.max_seq_len,
              settings.batch_size, settings.replay, settings.summary]
    before = [f.mapTo(settings, QPoint(0, 0)) for f in fields]
    assert not settings.custom_label.isVisibleTo(settings)
    settings.length_kind.setCurrentIndex(1)
    _settled()

    _type(settings.learning_rate, "0.0005")
    assert settings.learning_rate.text() == "0.0005"
    _settled()
    assert [f.mapTo(settings, QPoint(0, 0)) for f in fields] == before  # nothing moved while typing
    _commit(settings.learning_rate)
    assert settings.settings().learning_rate == 0.0005

    _type(settings.steps, "30")
    assert settings.steps.text() == "30"
    _commit(settings.steps)
    assert settings.steps.value() == 30 and settings.settings().iters == 30

    _type(settings.learning_rate, "1e-")  # on the way to 1e-4: no message yet, the keys keep coming
    _settled()
    assert settings.learning_rate.text() == "1e-" and not settings.learning_rate_error.isVisibleTo(settings)
    QTest.keyClicks(settings.learning_rate, "4")
    _commit(settings.learning_rate)
    assert settings.settings().learning_rate == 1e-4 and not settings.learning_rate_error.isVisibleTo(settings)

    # Custom values are shown in the place kept for them: still nothing has moved.
    assert settings.custom_label.isVisibleTo(settings) and settings.settings().preset == "custom"
    assert [f.mapTo(settings, QPoint(0, 0)) for f in fields] == before
    assert "30 steps" in settings.summary.text()


def test_a_learning_rate_that_is_not_a_number_is_refused_when_committed(qtbot, page: TrainPage) -> None:
    page.new_run()
    wizard = page.wizard
    settings = wizard.settings_page
    wizard.setStartId(wizard.pageIds()[2])
    wizard.restart()
    settings.advanced_button.click()
    _settled()
    position = settings.rank.mapTo(settings, QPoint(0, 0))
    _type(settings.learning_rate, "0.")
    assert not settings.learning_rate_error.isVisibleTo(settings)  # not judged while typing
    assert settings.isComplete()  # Next stays enabled while typing
    _commit(settings.learning_rate)
    assert settings.learning_rate_error.isVisibleTo(settings)
    assert "between 0 and 1" in settings.learning_rate_error.text()
    assert settings.rank.mapTo(settings, QPoint(0, 0)) == position
    # Typing again takes the stale message away (its space stays: nothing moves), until the next commit.
    _type(settings.learning_rate, "0.0005")
    assert not settings.learning_rate_error.isVisibleTo(settings)
    assert settings.rank.mapTo(settings, QPoint(0, 0)) == position
    # Next does not go on with it, and says why beside the field.
    _type(settings.learning_rate, "2")
    wizard.next()
    assert wizard.currentPage() is settings and settings.learning_rate_error.isVisibleTo(settings)
    # A value typed and not committed is taken by Next.
    _type(settings.learning_rate, "3e-4")
    _type(settings.rank, "12")
    assert settings.validatePage()
    assert settings.settings().learning_rate == 3e-4 and settings.settings().rank == 12
    assert not settings.learning_rate_error.isVisibleTo(settings)
    QTest.keyClick(settings.learning_rate, Qt.Key.Key_A)  # still takes keys after all that
    assert settings.learning_rate.text().endswith("a")


# --- the model step: its check, and its parameters ------------------------------------------------------------

def test_a_model_the_export_refuses_is_flagged_before_the_data_step(qtbot, page: TrainPage, tiny_llama: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import shutil

    from slowtune.gui import trainwizard as wizard_module

    folder = tmp_path / "odd-tokenizer"
    shutil.copytree(tiny_llama, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "_", "prepend_scheme": "never", "split": True}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: folder)
    page.new_run()
    wizard = page.wizard
    models = wizard.model_page
    models.folder_button.click()
    row = models.current_row()
    assert row is not None and row.path == folder.resolve()
    assert not models.isComplete() and "Checking" in models.detail.text()
    qtbot.waitUntil(models.checked, timeout=30_000)
    detail = models.detail.text()
    assert "cannot be used" in detail and "llama.cpp" in detail and "Models that work:" in detail
    assert "--" not in detail and "Traceback" not in detail
    assert not models.isComplete()
    assert not wizard.button(wizard.WizardButton.NextButton).isEnabled()  # the Data step is not reached

    # A model that works says so, and Next goes on.
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: tiny_llama)
    models.folder_button.click()
    qtbot.waitUntil(models.checked, timeout=30_000)
    assert "Ready" in models.detail.text() and models.isComplete()
    assert wizard.button(wizard.WizardButton.NextButton).isEnabled()


def test_a_chosen_folder_shows_its_parameters_from_its_weights(qtbot, page: TrainPage, tiny_llama: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.gui import trainwizard as wizard_module
    from slowtune.models.check import format_parameters, parameter_count

    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: tiny_llama)
    page.new_run()
    models = page.wizard.model_page
    models.folder_button.click()
    row = models.current_row()
    assert row is not None and row.params == format_parameters(parameter_count(tiny_llama))
    index = models.rows.index(row)
    assert models.table.item(index, 1).text() == row.params and "llama" not in row.params


# --- a run that memorised ---------------------------------------------------------------------------------------

def _memorised_run(root: Path, *, warned: bool) -> Path:
    """A finished run whose validation loss rose from 2.80 to 8.90 while its training loss fell to 0."""
    import json

    run_dir = root / "runs" / "20250301-090000-abcdef"
    run_dir.mkdir(parents=True)
    lines = []
    for step, loss, val in ((10, 1.2, 2.80), (20, 0.3, 5.1), (30, 0.0, 8.9)):
        lines += [{"step": step - 1, "loss": loss + 0.1}, {"step": step, "loss": loss, "val_loss": val}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    info = {"status": "done", "steps": 30, "total_steps": 30, "engine": "memory", "train_loss": 0.0,
            "val_loss": 8.9, "best_val": 2.8, "config": {"model": "/models/SmolLM2-135M-Instruct"},
            "chosen": {"folder": "best", "step": 10, "why": "the lowest validation loss (2.800)",
                       "text": "the checkpoint of step 10, chosen by the lowest validation loss (2.800)"}}
    if warned:
        info["warnings"] = [{"kind": "overfitting", "step": 30, "best_step": 10,
                             "message": "The model is memorising: validation loss rose from 2.80 (step 10) to 8.90 "
                                        "(step 30) while training loss fell from 1.25 to 0.05. The best checkpoint "
                                        "is kept."}]
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


@pytest.mark.parametrize("warned", [True, False])
def test_a_run_that_memorised_is_not_shown_as_a_plain_success(qtbot, page: TrainPage, warned: bool) -> None:
    run_dir = _memorised_run(page.project.root, warned=warned)
    page.open_run(run_dir)
    view = page.run_view
    assert page.state == "finished"
    assert page.verdict_color != "#2f9e44"  # not green
    status = view.status.text()
    assert "#2f9e44" not in status
    # One verdict line with the run's final figures (the lowest validation loss and the last one).
    assert ("Finished, but the model memorised: validation loss rose from 2.80 to 8.90 while training loss fell. "
            "Export will use step 10, the best one.") in status
    assert not view.advice.isVisibleTo(page)  # no other warning: nothing under the verdict
    assert "--" not in status


def test_a_run_that_learns_is_green_and_has_no_advice(qtbot, page: TrainPage) -> None:
    import json

    run_dir = _memorised_run(page.project.root, warned=False)
    lines = [{"step": s, "loss": 2.0 - s / 20, "val_loss": 2.5 - s / 30} for s in (10, 20, 30)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    page.open_run(run_dir)
    assert page.verdict_color == "#2f9e44" and not page.run_view.advice.isVisibleTo(page)
    assert "memoris" not in page.run_view.status.text()


def test_switching_to_steps_starts_from_the_steps_just_shown(qtbot, page: TrainPage, tiny_llama: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import re

    from slowtune.gui import trainwizard as wizard_module

    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: tiny_llama)
    page.new_run()
    wizard = page.wizard
    wizard.model_page.folder_button.click()
    qtbot.waitUntil(wizard.model_page.checked, timeout=30_000)
    wizard.next()
    assert wizard.data_page.summary is not None and wizard.data_page.summary.train
    wizard.next()
    settings = wizard.settings_page
    assert wizard.currentPage() is settings
    settings.preset_buttons["balanced"].click()
    settings.advanced_button.click()
    shown = int(re.search(r"About <b>([\d,]+) steps</b>", settings.summary.text()).group(1).replace(",", ""))
    assert shown != 100  # the spin box's old starting value would not tell them apart
    settings.length_kind.setCurrentIndex(1)  # Steps
    assert settings.steps.value() == shown and settings.settings().iters == shown
