"""Screenshots of every page with real data in it: the tour's steps (``python -m slowtune.bench.screenshots OUT_DIR``
runs them).

Goes through the app the way a new user does, in a throw-away SLOWTUNE_HOME, driving each page through its own
methods and jobs: adds a folder of demo documents (``slowtune.testing.demo``) on the Library page; adds a local
test teacher (a real HTTP server, ``slowtune.testing.fake_openai``, started by the runner and passed in) on the
Providers page with its key in a
throw-away keyring; generates and reviews the dataset; walks the Train wizard with a tiny model built on the spot and trains it (a real
``slowtune train`` child) until it knows its training conversations by heart; exports the run to GGUF (Q8_0 and
Q4_K_M, verified); chats with the Q8_0 file alone and beside its base, asking questions copied from the training
data at temperature 0 and checking that the tuned model answers them as it was trained to; and runs the
evaluation on the held-out probes. Each step is saved as a PNG at 1280×800 (the dialogs at their own size),
quantised to a palette so that the pictures stay small enough to commit. A step that does not reach the state its
picture should show ends the tour with exit status 1 and the reason.

Without a display it uses Qt's offscreen platform; under Xvfb
(``xvfb-run -a -s "-screen 0 1400x900x24" python -m slowtune.bench.screenshots OUT``) it draws the way a Linux
desktop does. It takes about a minute and a half on two CPU cores, most of it training. The pictures in
resources/screenshots are made this way; tests/test_screenshots.py runs it offscreen.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from slowtune.testing.demo import ScreenshotError, write_demo_documents

SIZE = (1280, 800)
MAX_PNG_BYTES = 250_000  # the pictures are committed: each stays below this (tests/test_screenshots.py)
TEACHER_ID = "local-teacher"
TEACHER_MODEL = "teacher-small"
QUESTIONS_PER_CHUNK = 3  # a dozen training conversations: few enough for the tiny model to learn by heart
SYSTEM_PROMPT = "You answer questions about the Harbour Street community garden."
# The base model: random weights and a small real tokenizer, large enough to learn its training conversations by
# heart in TRAIN_STEPS steps at LEARNING_RATE (final training loss 0.1 to 0.2; every answer word for word, whatever the
# order the rows came in), small enough to take about a minute on two CPU cores. A smaller one (hidden 64 or 128)
# does not learn them in that time; a larger rate diverges; with more rows some answers come out a word wrong.
TINY_MODEL = {"hidden_size": 192, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 384}
TRAIN_STEPS = 100
LEARNING_RATE = "1.5e-3"
CHAT_TOKENS = 64
EVAL_TOKENS = 32
JOB_TIMEOUT_S = 600.0

def use_throwaway_keyring(home: Path) -> None:
    """Keys go to a plain-text test keyring file under the throw-away ``home``, never to the user's keychain.

    The same backend the tests use (keyrings.alt, a development dependency), chosen explicitly so slowtune
    accepts it, and pointed at a file inside ``home`` on every platform. Call before anything reads a key.
    """
    os.environ["PYTHON_KEYRING_BACKEND"] = "keyrings.alt.file.PlaintextKeyring"
    for name in [n for n in os.environ if n.startswith("SLOWTUNE_KEY_")]:
        del os.environ[name]  # a key from the environment would show instead of the one stored here
    import keyring
    from keyrings.alt.file import PlaintextKeyring

    backend = PlaintextKeyring()
    backend.file_path = str(home / "keyring" / "keyring_pass.cfg")  # type: ignore[misc]
    keyring.set_keyring(backend)


def optimise_png(path: Path) -> None:
    """Quantise ``path`` to a 256-colour palette (with Pillow, when installed), where that makes it smaller.

    Window pictures have few colours beyond the anti-aliased text, so they look the same at about 40% of the size.
    """
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as image:
        quantised = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                                  dither=Image.Dither.NONE)
    tmp = path.with_name(f".{path.name}.tmp")
    quantised.save(tmp, format="PNG", optimize=True)
    if tmp.stat().st_size < path.stat().st_size:
        tmp.replace(path)
    else:
        tmp.unlink()


class Tour:
    """The window, the pictures taken so far, and waiting for the window's jobs."""

    def __init__(self, app: Any, window: Any, out: Path) -> None:
        self.app = app
        self.window = window
        self.out = out
        self.saved: list[Path] = []

    def pump(self, seconds: float = 0.05) -> None:
        from PySide6.QtCore import QCoreApplication, QEvent

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.app.processEvents()
            # What the event loop does and processEvents does not: delete the widgets given to deleteLater.
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
            time.sleep(0.01)

    def wait(self, until: Callable[[], object], what: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not until():
            if time.monotonic() > deadline:
                raise ScreenshotError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            self.app.processEvents()
            time.sleep(0.02)
        self.pump()

    def wait_idle(self, what: str, timeout_s: float = JOB_TIMEOUT_S) -> None:
        """Until no job of the window runs (the status bar is quiet again)."""
        self.wait(lambda: not self.window.runner.active_jobs(), what, timeout_s)

    def grab(self, widget: Any, name: str) -> Path:
        self.pump()
        path = self.out / f"{name}.png"
        if not widget.grab().save(str(path)):
            raise ScreenshotError(f"could not save {path}")
        optimise_png(path)
        self.saved.append(path)
        print(path, flush=True)
        return path

    def page(self, name: str) -> None:
        from slowtune.gui.app import PAGES

        self.window.show_page(list(PAGES).index(name))
        self.pump()

    @staticmethod
    def check(condition: object, problem: str) -> None:
        if not condition:
            raise ScreenshotError(problem)


def answer_and_grab(tour: Tour, name: str) -> Callable[[Any, str, str, str], bool]:
    """A stand-in for a page's ``ask``: shows the real question box, saves its picture, and answers yes."""
    from PySide6.QtWidgets import QMessageBox

    def ask(parent: Any, title: str, text: str, yes: str) -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.Cancel, parent)
        box.addButton(yes, QMessageBox.ButtonRole.AcceptRole)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.show()
        tour.pump(0.2)
        tour.grab(box, name)
        box.close()
        box.deleteLater()
        return True

    return ask


# --- the pages, in the order a user meets them ---------------------------------------------------------------

def library(tour: Tour, home: Path) -> None:
    window = tour.window
    tour.grab(window, "library-no-project")
    window.new_project("Garden club")
    # Smaller chunks than the default, so that the short demo documents show several chunks each.
    window.apply_preferences({"chunk_tokens": 128, "chunk_overlap": 16})
    tour.grab(window, "library-empty")
    docs = write_demo_documents(home / "Documents" / "Garden club")
    window.library.add_paths([docs[0].parent])
    tour.wait_idle("the documents to be read")
    window.library.select_document(str(docs[0]))  # handbook.md: several chunks with headings
    tour.page("Library")
    tour.grab(window, "1-library")
    # What a drag from Finder looks like while it hovers over the window.
    window.overlay.show_message(f"Drop to add 3 items to “{window.project.name}”")
    tour.grab(window, "library-drop-overlay")
    window.overlay.hide()


def providers(tour: Tour, teacher: Any, key: str) -> None:
    window = tour.window
    page = window.providers
    tour.page("Providers")
    tour.grab(window, "2-providers-empty")
    dialog = page.add_provider()
    dialog.preset.setCurrentIndex(dialog.preset.findData("custom"))
    dialog.provider_id.setText(TEACHER_ID)
    dialog.base_url.setText(teacher.base_url)
    dialog.model.setEditText(TEACHER_MODEL)
    dialog.key.setText(key)
    tour.pump(0.2)
    tour.grab(dialog, "2-providers-add")
    dialog.ok_button.click()
    tour.pump()
    tour.check(page.table.rowCount() == 1, f"the provider was not added: {page.banner.text.text()}")
    page.select(TEACHER_ID)
    page.test_selected()
    tour.wait_idle("the provider check")
    page.use_selected_as_teacher()
    tour.check(window.settings.teacher_provider == TEACHER_ID, "the provider did not become the teacher")
    tour.grab(window, "2-providers")


def dataset(tour: Tour) -> None:
    from slowtune.gui import dataset as dataset_module

    window = tour.window
    page = window.dataset
    tour.page("Dataset")
    tour.grab(window, "3-dataset-ready")
    options = page.open_options()
    tour.check(options is not None, "the options dialog did not open")
    options.system_prompt.setPlainText(SYSTEM_PROMPT)
    tour.pump(0.2)
    tour.grab(options, "3-dataset-options")  # the default: the facts recipe and its knobs
    # The tour then trains a tiny random model for a few seconds: plain Q&A, a few questions per chunk, is what it
    # can learn in that time.
    options.recipe.setCurrentIndex(options.recipe.findData("plain"))
    options.pairs.setValue(QUESTIONS_PER_CHUNK)
    options.ok_button.click()
    tour.pump()
    tour.check(page.options.pairs_per_chunk == QUESTIONS_PER_CHUNK, "the options were not saved")
    dataset_module.ask = answer_and_grab(tour, "3-dataset-confirm")
    page.generate()
    tour.wait(lambda: not page.busy() and not window.runner.active_jobs(), "the dataset generation")
    tour.check(page.model.rowCount() > 0 and page.banner.level != "error",
               f"the generation wrote no rows: {page.banner.text.text()}")
    page.table.selectRow(0)
    page.table.setFocus()
    tour.grab(window, "3-dataset")


def train(tour: Tour, home: Path) -> Path:
    from PySide6.QtWidgets import QWizard

    from slowtune.gui import trainwizard
    from slowtune.testing.tiny_models import build_tiny_model

    window = tour.window
    page = window.train
    model_dir = build_tiny_model(home / "Models" / "Garden-Qwen2-tiny-chat", "qwen2", **TINY_MODEL)
    tour.page("Train")
    tour.grab(window, "4-train-start")
    page.new_run()
    wizard = page.wizard
    tour.check(wizard is not None and page.stack.currentWidget() is wizard, "the wizard did not open")
    models = wizard.model_page
    trainwizard.choose_folder = lambda parent: model_dir  # the folder dialog, answered
    models.folder_button.click()
    tour.wait(models.checked, "the model's check")
    tour.check(models.isComplete(), f"the model folder was not accepted: {models.banner.text.text()}")
    tour.grab(window, "4-train-wizard-model")
    wizard.next()
    tour.grab(window, "4-train-wizard-data")
    wizard.next()
    settings = wizard.settings_page
    settings.preset_buttons["balanced"].click()
    settings.advanced_button.click()
    settings.length_kind.setCurrentIndex(1)
    settings.steps.setValue(TRAIN_STEPS)
    settings.learning_rate.setText(LEARNING_RATE)  # a tiny random model learns its answers quickly at a large step
    settings.commit_learning_rate()
    settings.max_seq_len.setValue(256)
    tour.grab(window, "4-train-wizard-settings")
    wizard.next()
    check = wizard.preflight_page
    tour.wait(lambda: check.result is not None or check.banner.isVisible(), "the preflight")
    tour.wait_idle("the preflight job")
    tour.check(check.isComplete(), f"the preflight refused: {check.banner.text.text()}")
    tour.grab(window, "4-train-wizard-check")
    # The wizard's settings, started through the page as Start Training does. Replay, the quality scoring and the
    # validation loss are off: a tiny random model knows nothing to keep, it memorises its few answers (so its
    # validation loss rises and the lowest one would pick an early checkpoint), and the tour's chat must show the
    # answers it was trained on: the last checkpoint.
    chosen = dataclasses.replace(settings.settings(), val_every=0, replay=0.0, score_every=0)
    model = models.model_path()
    wizard.button(QWizard.WizardButton.CancelButton).click()
    job = page.start_run(model, chosen)
    tour.check(job is not None, f"training did not start: {page.banner.text.text()}")
    tour.wait(lambda: not page.busy(), "the training run")
    tour.wait_idle("the training job")
    tour.check(page.state == "finished", f"the run did not finish: {page.banner.text.text()}")
    tour.grab(window, "4-train-run")
    run_dir = page.run_dir
    assert run_dir is not None
    page.show_runs()
    page.start_view.runs.selectRow(0)
    tour.grab(window, "4-train")
    page.open_run(run_dir)
    tour.pump()
    return run_dir


def export(tour: Tour, run_dir: Path) -> None:
    from slowtune.gui import export as export_module

    window = tour.window
    page = window.export
    tour.page("Train")
    window.train.run_view.export_button.click()  # the Train page hands the run to the Export page
    tour.pump()
    tour.check(page.current_run() is not None and page.current_run().run_dir == run_dir,
               "the Export page did not select the run")
    for quant, box in page.quant_boxes.items():
        box.setChecked(quant in ("Q8_0", "Q4_K_M"))
    tour.grab(window, "5-export-options")
    export_module.ask = answer_and_grab(tour, "5-export-confirm")
    page.export_button.click()
    tour.wait(lambda: not page.busy(), "the export", JOB_TIMEOUT_S)
    tour.wait_idle("the export job")
    tour.check(page.banner.level != "error" and page.shown_export is not None,
               f"the export failed: {page.banner.text.text()}")
    tour.grab(window, "5-export")


def training_conversations(project: Any) -> tuple[str | None, list[tuple[str, str]], tuple[str, str]]:
    """What the chat pictures ask, copied from the conversations the model was trained on: (their system prompt,
    the turns of a multi-turn conversation, the question and answer of a one-question fact)."""
    from slowtune.teacher import review

    def pairs(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
        return [(m["content"], messages[i + 1]["content"]) for i, m in enumerate(messages[:-1])
                if m["role"] == "user" and messages[i + 1]["role"] == "assistant"]

    def train_rows(qtype: str) -> list[Any]:
        return review.list_rows(project, review.RowFilter(split="train", status="accepted", qtype=qtype))

    # The shortest of each kind (the same one whatever order the teacher's answers came in), so that the picture
    # is not a wall of text.
    multi = sorted((r for r in train_rows("multi_turn") if len(pairs(r.messages)) >= 2),
                   key=lambda r: (sum(len(a) for _, a in pairs(r.messages)), pairs(r.messages)))
    Tour.check(bool(multi), "the training data has no multi-turn conversation to ask again")
    facts = sorted((p for r in train_rows("fact") for p in pairs(r.messages)[:1]), key=lambda p: (len(p[1]), p))
    Tour.check(bool(facts), "the training data has no fact question to ask again")
    system = next((m["content"] for m in multi[0].messages if m["role"] == "system"), None)
    return system, pairs(multi[0].messages), facts[0]


def check_learned(tour: Tour, turn: Any, question: str, trained: str) -> None:
    """The tuned model (slot 0) answered ``question`` as its training data does: word for word, or the start of
    it when the answer was cut at the token limit."""
    got = " ".join(turn.answers[0].split())
    want = " ".join(trained.split())
    cut = (turn.stats[0] or {}).get("finish_reason") == "length"
    tour.check(got == want or (cut and len(got) >= 20 and want.startswith(got)),
               f"the tuned model did not answer {question!r} as it was trained to: it said {got!r} instead of "
               f"{want!r}")


def chat(tour: Tour) -> None:
    from PySide6.QtCore import Qt

    from slowtune.gui.qtcompat import emit

    window = tour.window
    page = window.chat
    export_page = window.export
    export = export_page.shown_export
    q8 = export.file("Q8_0") if export is not None else None
    tour.check(q8 is not None, "the export has no Q8_0 file to chat with")
    assert q8 is not None
    # Q8_0: it answers as the trained model does (Q4_K_M of a model this tiny loses too much to quantisation).
    # Selected in the export's file list, as a user picks the file to chat with.
    def select_q8() -> None:
        tree = export_page.file_tree
        item = next((it for it in map(tree.topLevelItem, range(tree.topLevelItemCount()))
                     if Path(it.data(0, Qt.ItemDataRole.UserRole)) == q8.path), None)
        tour.check(item is not None, "the Q8_0 file is not in the export's file list")
        tree.setCurrentItem(item)
        target = export_page.chat_target()
        tour.check(target is not None and target[0] == q8.path, "the export does not offer its Q8_0 file to chat")

    def chatting_with_q8() -> None:
        loaded = page.loaded_models()
        tour.check(bool(loaded) and loaded[0].path == q8.path.resolve(),
                   f"the chat is not with the Q8_0 file but with {[m.path.name for m in loaded]}")

    system, conversation, fact = training_conversations(window.project)

    tour.page("Chat")
    page.temperature.setValue(0.0)  # greedy: the answer the model finds most likely, the same every time
    page.max_tokens.setValue(CHAT_TOKENS)
    page.system_edit.setPlainText(system or "")  # as the conversations it was trained on begin
    page.open_model(str(q8.path))
    tour.wait(lambda: len(page.loaded_models()) == 1 and not page.loading(), "the model to load")
    chatting_with_q8()
    # A conversation from the training data, asked again turn by turn: the tuned model has learned it.
    for question, trained in conversation[:2]:
        page.input.setPlainText(question)
        page.send()
        tour.wait(lambda: not page.answering(), "the answer")
        check_learned(tour, page.chat.turns[-1], question, trained)
    tour.wait_idle("the chat")
    tour.grab(window, "6-chat")

    page.new_chat()
    tour.page("Export")
    select_q8()
    export_page.chat_button.click()  # Chat with It: the selected file beside its base
    tour.wait(lambda: len(page.loaded_models()) == 2 and not page.loading(), "both models to load")
    chatting_with_q8()
    question, trained = fact
    page.input.setPlainText(question)
    page.send()
    tour.wait(lambda: not page.answering(), "the side-by-side answers")
    check_learned(tour, page.chat.turns[-1], question, trained)
    tour.wait_idle("the chat")
    tour.grab(window, "6-chat-compare")

    page.tabs.setCurrentIndex(1)
    # The evaluation of the file chatted with, picked in its list as a user does (it offers Q4_K_M first).
    combo = page.eval_model_combo
    index = next((i for i in range(combo.count()) if getattr(combo.itemData(i), "path", None) == str(q8.path.resolve())
                  and getattr(combo.itemData(i), "lora", None) is None), -1)
    tour.check(index >= 0, "the Evaluation tab does not offer the Q8_0 file")
    combo.setCurrentIndex(index)
    emit(combo.activated, index)
    tour.check(combo.currentIndex() == index and page.eval_base_combo.currentData() is not None,
               "the evaluation is not of the Q8_0 file beside its base")
    page.eval_tokens.setValue(EVAL_TOKENS)
    tour.grab(window, "6-chat-eval-ready")
    page.run_evaluation()
    tour.wait(lambda: not page.evaluating(), "the evaluation")
    tour.wait_idle("the evaluation job")
    tour.check(not page.scores.isHidden(), f"the evaluation has no report: {page.banner.text.text()}")
    tour.grab(window, "6-chat-eval")
    page.tabs.setCurrentIndex(0)


def dialogs(tour: Tour) -> None:
    from slowtune.gui.preferences import PreferencesDialog
    from slowtune.gui.projects import NewProjectDialog

    window = tour.window
    for name, dialog in (("preferences", PreferencesDialog(window.settings, window)),
                         ("new-project", NewProjectDialog(window, name="Garden club"))):
        dialog.show()
        tour.grab(dialog, name)
        dialog.close()
    window.show_welcome()
    if window.welcome is not None:
        tour.wait(lambda: window.welcome.isVisible(), "the welcome")
        tour.grab(window.welcome, "welcome")
        window.welcome.reject()
