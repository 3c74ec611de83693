"""A new user's path through the app, with the mistakes a new user met (issue 20), in one real main window.

The path: a project and its documents; a custom OpenAI-compatible teacher with no default model and its optional key
left empty, tested (its models listed by name) and chosen; Generate (which asks for the model); the Train wizard, where
a model the export would refuse is flagged before the Data step, and the Advanced fields are typed into key by key
through whatever has the keyboard focus; an export to a folder that cannot be written, then one that works; a chat
with the tuned model; the Evaluation tab.

After every step, no visible widget, open dialog or status-bar message holds developer text: a traceback, a JSON
dump or a command-line flag. Everything runs for real (ingest, HTTP through the openai client, MLX training in a
child process, llama.cpp); only the base model (a tiny random one) and the teacher's answers are made up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QWidget, QWizard
from test_gui_e2e import (
    DOCS,
    LONG_MS,
    PROJECT,
    QUESTION,
    STEP_MS,
    _private_hf_cache,
    drop,
    show,
    small_dataset_options,
    window,
)

from slowtune.gui import dataset as dataset_module
from slowtune.gui import trainwizard as wizard_module
from slowtune.gui.app import MainWindow
from slowtune.gui.dataset import ModelDialog, OptionsDialog
from slowtune.gui.providers import ProviderDialog
from slowtune.gui.widgets import developer_text, visible_texts
from slowtune.settings import load_settings
from slowtune.teacher import providers as pv
from slowtune.testing.fake_openai import FakeTeacher
from slowtune.testing.tiny_project import tiny_model

__all__ = ["_private_hf_cache", "window"]  # fixtures shared with the end-to-end walk


def developer_texts(window: MainWindow) -> list[str]:
    """Whatever a user can see that is meant for a developer: in the window, in any open dialog, in the status bar."""
    shown = [w for w in QApplication.topLevelWidgets() if w.isVisible()]
    texts = [t for w in shown for t in visible_texts(w)] + [window.statusBar().currentMessage()]
    return [t for t in texts if developer_text(t) or "Terminal" in t]


def no_developer_text(window: MainWindow, where: str) -> None:
    found = developer_texts(window)
    assert not found, f"{where}: developer text on screen: {found}"


def type_as_a_user(qtbot, field: QWidget, text: str) -> None:
    """Click into ``field``, select what is there, and type ``text`` one key at a time into whatever has the keyboard
    focus after each key, as a keyboard does (a field that loses the focus while typing loses the keys)."""
    field.activateWindow()
    QTest.mouseClick(field.lineEdit() if hasattr(field, "lineEdit") else field, Qt.MouseButton.LeftButton,
                     pos=QPoint(5, 5))
    qtbot.waitUntil(lambda: QApplication.focusWidget() is not None, timeout=STEP_MS)
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    for ch in text:
        QTest.keyClicks(QApplication.focusWidget(), ch)
        QApplication.processEvents()
    focus = QApplication.focusWidget()
    assert focus is field or focus is getattr(field, "lineEdit", lambda: None)(), (
        f"the keys typed into {field.objectName() or type(field).__name__} went to {type(focus).__name__}")


@pytest.mark.slow
def test_a_new_user_gets_from_documents_to_a_chat_with_no_developer_text(
        qtbot, window: MainWindow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_module, "ask", lambda parent, title, text, yes: True)  # "Send" to the teacher

    # --- a project, and its documents dropped on the window --------------------------------------------------
    qtbot.waitUntil(lambda: window.welcome is not None and window.welcome.isVisible(), timeout=STEP_MS)
    no_developer_text(window, "the welcome")
    window.welcome.name.clear()
    qtbot.keyClicks(window.welcome.name, PROJECT)
    window.welcome.create_button.click()
    assert window.project is not None
    folder = tmp_path / "Harbour"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    with qtbot.waitSignal(window.library.documents_changed, timeout=STEP_MS):
        drop(window.windowHandle(), [folder], window.sidebar.mapTo(window, QPoint(20, 200)))
    qtbot.waitUntil(lambda: not window.runner.active_jobs() and not window.library.jobs, timeout=STEP_MS)
    no_developer_text(window, "the Library")

    # --- Chat before anything is exported: it says what to do, in words --------------------------------------
    show(window, "Chat")
    no_developer_text(window, "Chat with nothing exported")

    with FakeTeacher(api_key=None) as teacher:  # a local server that wants no key
        # --- Providers: a custom server, no default model, the optional key left empty; Test lists its models --
        show(window, "Providers")
        providers = window.providers
        providers.add_button.click()
        dialog = providers.dialog
        assert isinstance(dialog, ProviderDialog)
        dialog.preset.setCurrentIndex(dialog.preset.findData("custom"))
        dialog.provider_id.setText("harbour-teacher")
        qtbot.keyClicks(dialog.base_url, teacher.base_url)
        no_developer_text(window, "the provider dialog")
        dialog.ok_button.click()
        assert dialog.result() == ProviderDialog.DialogCode.Accepted, dialog.banner.text.text()
        providers.select("harbour-teacher")
        providers.test_button.click()
        qtbot.waitUntil(lambda: not providers.jobs, timeout=STEP_MS)
        check = providers.table.item(0, providers.COLUMNS.index("Last check")).text()
        assert check.startswith("OK") and "judge-small" in check and "teacher-small" in check, check
        assert "failed" not in window.statusBar().currentMessage()
        no_developer_text(window, "the provider test")
        providers.edit_button.click()
        edit = providers.dialog
        assert isinstance(edit, ProviderDialog) and edit.isVisible()
        assert sorted(edit.model.itemText(i) for i in range(edit.model.count())) == ["judge-small", "teacher-small"]
        edit.reject()
        providers.teacher_button.click()
        assert load_settings().settings.teacher_provider == "harbour-teacher"
        assert not pv.get_provider("harbour-teacher").default_model

        # --- Dataset: Generate asks for the model, as the banner promised ------------------------------------
        show(window, "Dataset")
        dataset = window.dataset
        options = dataset.open_options()
        assert isinstance(options, OptionsDialog)
        small_dataset_options(options)
        assert options.result() == OptionsDialog.DialogCode.Accepted, options.banner.text.text()
        dataset.generate_button.click()
        ask = dataset.model_dialog
        assert isinstance(ask, ModelDialog) and ask.isVisible(), dataset.banner.text.text()
        qtbot.waitUntil(lambda: ask.model.count() == 2, timeout=STEP_MS)
        no_developer_text(window, "Generate without a model")
        ask.model.setCurrentIndex(ask.model.findText("teacher-small"))
        ask.ok_button.click()
        qtbot.waitUntil(lambda: not dataset.busy() and not window.runner.active_jobs(), timeout=STEP_MS)
        assert dataset.banner.level != "error", dataset.banner.text.text()
        assert teacher.stats()["by_task"].get("generate")
        assert len(dataset.model.rows) >= 4
        no_developer_text(window, "the generated dataset")

    # --- Train: a model the export would refuse is flagged before the Data step -------------------------------
    base = tiny_model(tmp_path / "base")
    odd = tmp_path / "odd-tokenizer"
    shutil.copytree(base, odd)
    tokenizer = json.loads((odd / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Metaspace", "replacement": "_", "prepend_scheme": "never", "split": True}
    (odd / "tokenizer.json").write_text(json.dumps(tokenizer))
    chosen = [odd]
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: chosen[-1])
    show(window, "Train")
    train = window.train
    train.start_view.new_button.click()
    wizard = train.wizard
    models = wizard.model_page
    models.folder_button.click()
    qtbot.waitUntil(models.checked, timeout=STEP_MS)
    assert "cannot be used" in models.detail.text() and "Models that work" in models.detail.text()
    assert not wizard.button(QWizard.WizardButton.NextButton).isEnabled()
    no_developer_text(window, "a model the export refuses")
    chosen.append(base)
    models.folder_button.click()
    qtbot.waitUntil(models.checked, timeout=STEP_MS)
    assert models.isComplete(), models.detail.text()
    wizard.button(QWizard.WizardButton.NextButton).click()
    assert wizard.data_page.isComplete()
    wizard.button(QWizard.WizardButton.NextButton).click()

    # --- the Advanced fields, typed into key by key: the values come out exact, nothing moves ------------------
    settings = wizard.settings_page
    settings.preset_buttons["quick"].click()
    settings.advanced_button.click()
    settings.length_kind.setCurrentIndex(1)  # Steps
    QApplication.processEvents()
    fields = [settings.rank, settings.learning_rate, settings.steps, settings.max_seq_len, settings.batch_size]
    before = [f.mapTo(settings, QPoint(0, 0)) for f in fields]
    type_as_a_user(qtbot, settings.learning_rate, "0.0005")
    type_as_a_user(qtbot, settings.steps, "30")
    type_as_a_user(qtbot, settings.max_seq_len, "128")
    type_as_a_user(qtbot, settings.batch_size, "2")
    assert [f.mapTo(settings, QPoint(0, 0)) for f in fields] == before  # nothing moved under the pointer
    assert settings.learning_rate.text() == "0.0005" and settings.steps.text() == "30"
    no_developer_text(window, "the Advanced settings")
    wizard.button(QWizard.WizardButton.NextButton).click()
    chosen_settings = settings.settings()
    assert (chosen_settings.learning_rate, chosen_settings.iters) == (0.0005, 30)
    preflight = wizard.preflight_page
    qtbot.waitUntil(lambda: preflight.result is not None or preflight.banner.isVisibleTo(preflight), timeout=STEP_MS)
    assert preflight.isComplete(), preflight.banner.text.text()
    no_developer_text(window, "the check before training")
    wizard.button(QWizard.WizardButton.FinishButton).click()
    qtbot.waitUntil(lambda: not train.busy(), timeout=LONG_MS)
    assert train.state == "finished", train.banner.text.text()
    run_dir = train.run_dir
    assert run_dir is not None
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["learning_rate"] == 0.0005 and config["iters"] == 30
    no_developer_text(window, "the finished run")

    # --- Export: a folder that cannot be written is said in words; then the export works -----------------------
    train.run_view.export_button.click()
    export = window.export
    for quant, box in export.quant_boxes.items():
        box.setChecked(quant == "Q8_0")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    export.destination.setText(str(blocked / "export"))
    export.export_button.click()
    qtbot.waitUntil(lambda: not export.busy() and not window.runner.active_jobs(), timeout=LONG_MS)
    assert export.banner.level == "error", export.banner.text.text()
    assert f"{blocked} is a file, not a folder. Choose a folder" in export.banner.text.text()
    no_developer_text(window, "an export to a folder that cannot be written")
    export.destination.setText(str(tmp_path / "exported"))
    export.export_button.click()
    qtbot.waitUntil(lambda: not export.busy() and not window.runner.active_jobs(), timeout=LONG_MS)
    assert export.banner.level != "error", export.banner.text.text()
    no_developer_text(window, "the export")

    # --- Chat with the tuned export, then the Evaluation tab ------------------------------------------------
    export.chat_button.click()
    chat = window.chat
    qtbot.waitUntil(lambda: bool(chat.loaded_models()) and not chat.loading(), timeout=STEP_MS)
    chat.max_tokens.setValue(16)
    qtbot.keyClicks(chat.input, QUESTION)
    qtbot.keyClick(chat.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: not chat.answering(), timeout=STEP_MS)
    assert chat.transcript.turns[0].answers[0].text.strip()
    no_developer_text(window, "the chat")
    chat.tabs.setCurrentIndex(1)
    no_developer_text(window, "the Evaluation tab")
