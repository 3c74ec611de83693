"""The whole wizard, end to end, in one real main window, driven as a new user would by clicking: from an empty app
to a chat answer from the tuned model, with an export on disk.

Welcome → Create Project; drop a folder of Markdown notes on the window; Providers: add the local test teacher (a
real HTTP server speaking the OpenAI API) with a key, Test, Use as Teacher; Dataset: Options…, Generate, confirm
sending to the named host, review a row each way with the keyboard; Train: New Training Run…, choose a model
folder, Quick with a few steps, check, Start Training; "Export this model…" → Export: Q8_0, Export; "Chat with It"
→ Chat: type a question, Return, read the answer.

Everything runs for real: ingest in worker processes, HTTP through the openai client, MLX training in a
`slowtune train` child process, fuse/GGUF/quantise/verify with llama.cpp, chat with llama.cpp. Only the base model
(a tiny random one) and the teacher's answers are made up. Only the OS's dialogs are answered by the test (the
folder picker, the yes/no questions), through the module-level names the pages call them by.
"""

from __future__ import annotations

import json
import secrets as pysecrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QApplication, QWizard

from slowtune import secrets
from slowtune.chat import sessions
from slowtune.gui import app as app_module
from slowtune.gui import dataset as dataset_module
from slowtune.gui import export as export_module
from slowtune.gui import trainwizard as wizard_module
from slowtune.gui.app import PAGES, MainWindow, make_app, window_state
from slowtune.gui.dataset import OptionsDialog
from slowtune.gui.providers import ProviderDialog
from slowtune.gui.train import TRAIN_SERIES, VALID_SERIES
from slowtune.settings import load_settings
from slowtune.store import DB_NAME
from slowtune.teacher import providers as pv
from slowtune.testing.fake_openai import FakeTeacher
from slowtune.testing.tiny_project import tiny_model

STEP_MS = 60_000  # a quick step (ingest, a check, generation, loading a model); the machine is shared and slow
LONG_MS = 600_000  # training in a child process, and the export with its verification
PROJECT = "Harbour notes"
DOCS = {
    "ferry.md": "# The Quillmoor ferry\n\nThe Quillmoor ferry is painted saffron and named Dorrit. It sails at 7:40 "
                "every morning from the north pier. Its captain is Ysolde Brack.\n",
    "lighthouse.md": "# Greywater lighthouse\n\nThe Greywater lighthouse stands forty-two metres tall on a basalt "
                     "outcrop. Its lamp was converted from paraffin to electricity in 1931.\n",
    "bakery.md": "# Marlow's bakery\n\nMarlow's bakery bakes its sourdough with a starter kept alive since 1952. The "
                 "shop opens at six in the morning except on public holidays.\n",
}
QUESTION = "When does the Quillmoor ferry sail?"


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Train page's model list never looks at this machine's own Hugging Face cache."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture
def key() -> Iterator[str]:
    """The teacher's API key. The test keyring outlives SLOWTUNE_HOME: the key is removed from it afterwards."""
    yield "sk-e2e-" + pysecrets.token_hex(16)
    for provider in pv.list_providers():
        secrets.delete_secret(secrets.provider_key_name(provider.id))


@pytest.fixture
def teacher(key: str) -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=key) as server:
        yield server


@pytest.fixture
def window(qtbot, monkeypatch: pytest.MonkeyPatch) -> Iterator[MainWindow]:
    """The app as a new user first opens it: no project, the welcome not seen yet."""
    monkeypatch.setattr(app_module, "ask", lambda parent, title, text, yes: True)  # "Stop and Quit" at the end
    make_app(["slowtune"])
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.runner.cancel_all()
    assert win.runner.wait_all(60)
    win.close()  # unloads the chat models and closes the project


def drop(target: object, paths: list[Path], at: QPoint) -> tuple[bool, bool]:
    """Drag ``paths`` (file URLs, as Finder sends them) over ``target`` at ``at`` and drop them there."""
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(at, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, enter)
    dropped = QDropEvent(QPointF(at), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                         Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(target, dropped)
    return enter.isAccepted(), dropped.isAccepted()


def small_dataset_options(options: OptionsDialog) -> None:
    """The plain Q&A recipe, four questions per chunk (enough for the tiny model to learn in a walk), and OK."""
    options.recipe.setCurrentIndex(options.recipe.findData("plain"))
    options.pairs.setValue(4)
    options.mix["fact"].setValue(75)
    for qtype in ("reasoning", "multi_turn"):
        options.mix[qtype].setValue(0)
    options.mix["refusal"].setValue(25)
    options.ok_button.click()


def show(window: MainWindow, name: str) -> None:
    """Click the page's entry in the sidebar."""
    item = window.sidebar.item(list(PAGES).index(name))
    window.sidebar.setCurrentItem(item)
    assert window.pages.currentWidget().objectName() == f"page-{name.lower()}"


def statuses(window: MainWindow) -> dict[int, tuple[str, str]]:
    """Row id -> (split, status) as stored in the open project."""
    assert window.project is not None
    return {r["id"]: (r["split"], r["status"])
            for r in window.project.conn.execute("SELECT id, split, status FROM dataset_rows")}


@pytest.mark.slow
def test_from_an_empty_app_to_a_chat_with_the_tuned_model(qtbot, window: MainWindow, teacher: FakeTeacher, key: str,
                                                           tmp_path: Path, slowtune_home: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    # --- 1. The first start: the welcome names the steps and creates the first project ---------------------------
    assert window.project is None and "No project open" in window.project_label.text()
    qtbot.waitUntil(lambda: window.welcome is not None and window.welcome.isVisible(), timeout=STEP_MS)
    welcome = window.welcome
    assert welcome is not None and all(name in welcome.intro.text() for name in PAGES)
    welcome.name.clear()
    qtbot.keyClicks(welcome.name, PROJECT)
    assert welcome.create_button.isEnabled()
    welcome.create_button.click()
    assert window.project is not None and window.project.name == PROJECT
    root = window.project.root
    assert (root / DB_NAME).is_file()
    assert window.windowTitle() == f"{PROJECT} — slowtune"
    assert "Drop files or folders" in window.library.empty.text.text()  # the empty Library says what to do
    lap("project")

    # --- 2. Library: a folder of notes dropped on the window (a real drop event) ----------------------------------
    folder = tmp_path / "Harbour"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    show(window, "Providers")  # a drop anywhere, from any page, goes to the Library
    at = window.sidebar.mapTo(window, QPoint(20, 200))
    with qtbot.waitSignal(window.library.documents_changed, timeout=STEP_MS):
        assert drop(window.windowHandle(), [folder], at) == (True, True)
    qtbot.waitUntil(lambda: not window.runner.active_jobs() and not window.library.jobs, timeout=STEP_MS)
    assert window.pages.currentWidget() is window.library
    table = window.library.proxy
    columns = window.library.model.COLUMNS
    shown = {table.index(r, columns.index("File")).data(): table.index(r, columns.index("Status")).data()
             for r in range(table.rowCount())}
    assert shown == {name: "ok" for name in DOCS}
    assert f"{len(DOCS)} of {len(DOCS)} documents read" in window.library.summary.text()
    chunks = window.project.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert chunks >= len(DOCS)
    lap("ingest")

    # --- 3. Providers: the local test teacher, with a key, tested and chosen as the teacher -----------------------
    show(window, "Providers")
    providers = window.providers
    assert providers.empty.isVisibleTo(providers)
    providers.add_button.click()
    dialog = providers.dialog
    assert isinstance(dialog, ProviderDialog) and dialog.isVisible()
    dialog.preset.setCurrentIndex(dialog.preset.findData("custom"))
    dialog.provider_id.setText("harbour-teacher")
    qtbot.keyClicks(dialog.base_url, teacher.base_url)
    qtbot.keyClicks(dialog.model, "teacher-small")
    qtbot.keyClicks(dialog.key, key)
    dialog.ok_button.click()
    assert dialog.result() == ProviderDialog.DialogCode.Accepted, dialog.banner.text.text()
    assert providers.table.rowCount() == 1
    assert secrets.get_secret(secrets.provider_key_name("harbour-teacher")) == key  # in the keychain ...
    providers.select("harbour-teacher")
    providers.test_button.click()
    qtbot.waitUntil(lambda: not providers.jobs, timeout=STEP_MS)
    check = providers.table.item(0, providers.COLUMNS.index("Last check")).text()
    assert check.startswith("OK:") and "teacher-small available" in check, check
    providers.teacher_button.click()
    settings = load_settings().settings
    assert (settings.teacher_provider, settings.teacher_model) == ("harbour-teacher", "teacher-small")
    assert "(teacher)" in providers.table.item(0, 0).text()
    lap("providers")

    # --- 4. Dataset: options for a small dataset, Generate, confirm the host, review with the keyboard ------------
    asked: list[str] = []
    monkeypatch.setattr(dataset_module, "ask", lambda parent, title, text, yes: asked.append(text) or True)
    show(window, "Dataset")
    dataset = window.dataset
    assert dataset.generate_button.isVisibleTo(dataset) and "harbour-teacher" in dataset.teacher_label.text()
    assert "No rows yet" in dataset.count_label.text()
    dataset.options_button.click()
    options = dataset.options_dialog
    assert isinstance(options, OptionsDialog) and options.isVisible()
    small_dataset_options(options)
    assert options.result() == OptionsDialog.DialogCode.Accepted, options.banner.text.text()
    assert "4 questions per chunk" in dataset.options_label.text()
    dataset.generate_button.click()
    qtbot.waitUntil(lambda: not dataset.busy() and not window.runner.active_jobs(), timeout=STEP_MS)
    assert len(asked) == 1, dataset.banner.text.text()
    # The question named what goes where: the chunks, the receiving host and the model.
    assert f"from {chunks} chunks" in asked[0] and "127.0.0.1" in asked[0] and "teacher-small" in asked[0], asked[0]
    assert dataset.banner.level != "error", dataset.banner.text.text()
    assert teacher.stats()["by_task"].get("generate")
    rows = dataset.model.rows
    stored = statuses(window)
    assert len(rows) == len(stored) >= 4 and dataset.model.index(0, 0).data()
    assert "accepted" in dataset.report.toPlainText()
    train_rows = [i for i, r in enumerate(rows) if r.split == "train" and r.status == "accepted"]
    assert len(train_rows) >= 3, [(r.split, r.status) for r in rows]
    reject_at, accept_at = train_rows[0], train_rows[1]
    review = dataset.table
    review.setFocus()
    review.selectRow(reject_at)
    review.setCurrentIndex(dataset.model.index(reject_at, 0))
    rejected_id = rows[reject_at].id
    qtbot.keyClick(review, Qt.Key.Key_R)
    assert statuses(window)[rejected_id] == ("train", "rejected")
    assert "rejected by you" in dataset.model.index(reject_at, 5).data()
    review.selectRow(accept_at)
    review.setCurrentIndex(dataset.model.index(accept_at, 0))
    accepted_id = dataset.model.rows[accept_at].id
    qtbot.keyClick(review, Qt.Key.Key_A)
    assert statuses(window)[accepted_id] == ("train", "accepted")
    trainable = sum(1 for split, status in statuses(window).values() if split == "train" and status == "accepted")
    assert trainable >= 2
    lap("dataset")

    # --- 5. Train: New Training Run… → a model folder, Quick with a few steps, the check, Start Training -----------
    base = tiny_model(tmp_path / "base")  # the smallest chat model: two blocks, hidden size 64
    monkeypatch.setattr(wizard_module, "choose_folder", lambda parent: base)
    show(window, "Train")
    train = window.train
    assert train.start_view.new_button.isEnabled(), train.start_view.intro.text()
    train.start_view.new_button.click()
    wizard = train.wizard
    assert wizard is not None and train.stack.currentWidget() is wizard
    models = wizard.model_page
    models.folder_button.click()
    row = models.current_row()
    assert row is not None and row.path == base.resolve() and row.where == "Folder", models.banner.text.text()
    qtbot.waitUntil(models.checked, timeout=30_000)
    assert row.fit.kind == "memory" and models.isComplete()
    wizard.button(QWizard.WizardButton.NextButton).click()
    data = wizard.data_page
    assert data.isComplete() and data.summary is not None
    assert data.summary.train == trainable  # the rejected row is left out
    assert f"<b>{trainable}</b>" in data.label.text()
    wizard.button(QWizard.WizardButton.NextButton).click()
    settings_page = wizard.settings_page
    settings_page.preset_buttons["quick"].click()
    settings_page.advanced_button.click()
    settings_page.length_kind.setCurrentIndex(1)  # Steps
    settings_page.steps.setValue(6)
    settings_page.max_seq_len.setValue(128)
    settings_page.batch_size.setValue(2)
    assert "6 steps" in settings_page.summary.text()
    wizard.button(QWizard.WizardButton.NextButton).click()
    preflight = wizard.preflight_page
    qtbot.waitUntil(lambda: preflight.result is not None or preflight.banner.isVisibleTo(preflight), timeout=STEP_MS)
    assert preflight.isComplete(), preflight.banner.text.text()
    assert "6 steps" in preflight.time_label.text()
    finish = wizard.button(QWizard.WizardButton.FinishButton)
    assert finish.isEnabled()
    finish.click()
    assert train.stack.currentWidget() is train.run_view and train.busy()
    run_dir = train.run_dir
    assert run_dir is not None and run_dir.parent == root / "runs"
    qtbot.waitUntil(lambda: not train.busy(), timeout=LONG_MS)
    assert train.state == "finished", train.banner.text.text() + "\n" + train.banner.details.toPlainText()
    assert (run_dir / "adapters.safetensors").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    logged = [r["step"] for r in records if "loss" in r]  # (step 0: the base model's scores, before training)
    assert logged == list(range(1, 7))
    chart = train.run_view.chart
    assert [int(x) for x, _ in chart.points(TRAIN_SERIES)] == logged
    assert bool(chart.points(VALID_SERIES)) == bool(data.summary.valid)  # validation rows give a validation loss
    assert "Finished" in train.run_view.status.text()
    lap("train")

    # --- 6. "Export this model…" → the Export page with the run selected: Q8_0, Export ---------------------------
    assert train.run_view.export_button.isVisibleTo(train)
    train.run_view.export_button.click()
    export = window.export
    assert window.pages.currentWidget() is export and window.sidebar.currentRow() == list(PAGES).index("Export")
    run = export.current_run()
    assert run is not None and run.run_dir == run_dir.resolve()
    for quant, box in export.quant_boxes.items():
        box.setChecked(quant == "Q8_0")
    assert export.selected_quants() == ["Q8_0"]
    out = Path(export.destination.text())
    name = export.name_edit.text()
    assert out == run_dir.resolve() / "export" and name == "harbour-notes"
    export.export_button.click()
    assert export.job is not None, export.banner.text.text()
    qtbot.waitUntil(lambda: not export.busy() and not window.runner.active_jobs(), timeout=LONG_MS)
    assert export.banner.level != "error", export.banner.text.text() + "\n" + export.banner.details.toPlainText()
    assert f"Exported to {out}" in export.banner.text.text() and "Verified" in export.banner.text.text()
    q8 = out / f"{name}-Q8_0.gguf"
    assert q8.is_file() and q8.read_bytes()[:4] == b"GGUF"
    assert (out / f"{name}-F16.gguf").is_file() and (out / "base-F16.gguf").is_file()
    assert (out / "export.json").is_file() and not list(out.glob(".*"))  # whole files only
    report = json.loads((out / "export.json").read_text())
    q8_check = next(v for v in report["verification"] if v["quant"] == "Q8_0")
    checks = export.checks_label.text()  # the verification, in plain words, from what the export measured
    assert f"The Q8_0 file ({q8.name}) answers" in checks
    assert f"{export_module.percent(q8_check['top1_agreement'])} of next-token choices agree with the trained" in checks
    listed = {export.file_tree.topLevelItem(i).text(0) for i in range(export.file_tree.topLevelItemCount())}
    assert {q8.name, "base-F16.gguf"} <= listed
    lap("export")

    # --- 7. "Chat with It" → the Chat page with the model loaded; a question, Return, an answer --------------------
    assert export.chat_button.isEnabled(), export.chat_button.toolTip()
    export.chat_button.click()
    chat = window.chat
    assert window.pages.currentWidget() is chat and window.sidebar.currentRow() == list(PAGES).index("Chat")
    qtbot.waitUntil(lambda: bool(chat.loaded_models()) and not chat.loading(), timeout=STEP_MS)
    assert not chat.banner.isVisible() or chat.banner.level != "error", chat.banner.text.text()
    # The tuned Q8_0 file, beside the base model the export also wrote (the default), to compare answers.
    assert [m.name for m in chat.loaded_models()] == [q8.name, "base-F16.gguf"]
    assert q8.name in chat.model_status.text() and "side by side" in chat.model_status.text()
    assert chat.send_button.isEnabled()
    chat.max_tokens.setValue(24)
    qtbot.keyClicks(chat.input, QUESTION)
    qtbot.keyClick(chat.input, Qt.Key.Key_Return)
    assert len(chat.transcript.turns) == 1 and chat.transcript.turns[0].user.text == QUESTION  # on screen at once
    qtbot.waitUntil(lambda: not chat.answering(), timeout=STEP_MS)
    assert not chat.banner.isVisible() or chat.banner.level != "error", chat.banner.text.text()
    assert len(chat.transcript.turns) == 1 and chat.input.toPlainText() == ""
    answer_view, base_view = chat.transcript.turns[0].answers
    assert answer_view.text.strip(), "the tuned model's answer is empty"
    assert base_view.text.strip(), "the base model's answer is empty"
    assert chat.chat.session_id is not None
    saved = sessions.get_session(window.project, chat.chat.session_id)
    assert saved.title == QUESTION
    assert [m.content for m in saved.messages if m.role == "user"] == [QUESTION]
    answers = [m for m in saved.messages if m.role == "assistant" and m.slot == 0]
    assert len(answers) == 1 and answers[0].content.strip() and answers[0].content == answer_view.text
    assert answers[0].stats is not None and f"{answers[0].stats['completion_tokens']} tokens" in answer_view.footer.text()
    assert saved.models[0]["path"] == str(q8.resolve())
    assert chat.sessions_list.count() == 1 and QUESTION in chat.sessions_list.item(0).text()
    lap("chat")

    # The key went to the keychain and nowhere else: no file the app wrote (settings, project, runs, logs) holds it.
    for path in slowtune_home.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"the API key was written to {path}"
    assert window_state().value("welcome/shown", False, type=bool)
    print(f"\nwhole wizard in {time.monotonic() - started:.1f} s: {timings}")
