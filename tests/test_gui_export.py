"""The Export page, driven as a user would: pick a run trained for real on a tiny model, export it through the
page (fuse, GGUF, quantise, verify in a job), read the verification, reveal the file and ask to chat with it;
LoRA-only; a broken run folder; Cancel in the middle of writing a GGUF."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from slowtune.dataset import write_jsonl
from slowtune.gui import export as page_module
from slowtune.gui.export import ExportPage
from slowtune.gui.widgets import developer_text, visible_texts
from slowtune.gui.workers import JobRunner
from slowtune.progress import Progress
from slowtune.settings import Settings
from slowtune.store import Project
from slowtune.train.config import LoraConfig, TrainConfig
from slowtune.train.runs import record_run
from slowtune.train.trainer import run_training

TIMEOUT_MS = 120_000
QA = [("What is the capital of Zorbia?", "The capital of Zorbia is Quillford."),
      ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild.")]
FINISHED = "20250301-090000-f1n15h"
STOPPED = "20250302-090000-570pp3"


@pytest.fixture(scope="module")
def trained_project(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with two real runs on the tiny Llama: one finished, and a newer one stopped after 2 steps."""
    root = tmp_path_factory.mktemp("export-page")
    write_jsonl([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA],
                root / "data" / "train.jsonl")
    project_root = root / "Field notes"
    with Project.create(project_root) as project:
        for run_id, stop_after in ((FINISHED, None), (STOPPED, 2)):
            cfg = TrainConfig(model=str(tiny_llama), data=str(root / "data"), lora=LoraConfig(rank=8, alpha=16.0),
                              max_seq_len=96, batch_size=2, iters=25, learning_rate=1e-3, warmup=2, val_every=0,
                              save_every=0, replay=0.0, score_every=0)
            progress = Progress(min_interval=0)
            if stop_after:
                progress.add_listener(lambda e, p=progress, n=stop_after: p.cancel() if e.stage == "train"
                                      and e.done >= n else None)
            result = run_training(cfg, project_root / "runs" / run_id, engine="memory", project=project_root,
                                  progress=progress)
            record_run(project, project_root / "runs" / run_id, result.status, config=cfg.to_dict(), engine="memory")
    return project_root


@pytest.fixture
def project_root(trained_project: Path, tmp_path: Path) -> Path:
    """A copy of the trained project for one test, its records pointing at the copy."""
    root = tmp_path / trained_project.name
    shutil.copytree(trained_project, root)
    with Project.open(root) as project:
        for run_id in (FINISHED, STOPPED):
            project.conn.execute("UPDATE runs SET adapter_path = ? WHERE id = ?", (str(root / "runs" / run_id),
                                                                                   run_id))
            run_json = root / "runs" / run_id / "run.json"
            run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "project": str(root)}))
    return root


@pytest.fixture
def page(qtbot, project_root: Path) -> Iterator[ExportPage]:
    runner = JobRunner()
    project = Project.open(project_root)
    settings = Settings(export_quants=["Q4_K_M"])
    widget = ExportPage(runner, lambda: settings)
    qtbot.addWidget(widget)
    widget.set_project(project)
    widget.resize(900, 1200)
    widget.show()
    yield widget
    runner.cancel_all()
    assert runner.wait_all(30)
    project.close()


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Answers questions with yes, unless the test puts False first in the list."""
    texts: list[str] = []

    def ask(parent: object, title: str, text: str, yes: str) -> bool:
        answer = not (texts and texts[0] is False)  # type: ignore[comparison-overlap]
        texts.append(text)
        return answer

    monkeypatch.setattr(page_module, "ask", ask)
    return texts


def run_export(qtbot, page: ExportPage) -> None:
    page.export_button.click()
    assert page.job is not None, page.banner.text.text()
    qtbot.waitUntil(lambda: not page.busy() and not page.runner.active_jobs(), timeout=TIMEOUT_MS)


def shown_files(page: ExportPage) -> dict[str, tuple[str, str]]:
    """File name -> (size, check) as the result panel lists them."""
    tree = page.file_tree
    return {tree.topLevelItem(i).text(0): (tree.topLevelItem(i).text(2), tree.topLevelItem(i).text(3))
            for i in range(tree.topLevelItemCount())}


def test_a_run_that_memorised_says_so_and_names_the_checkpoint_exported(qtbot, page: ExportPage,
                                                                          project_root: Path) -> None:
    run_dir = project_root / "runs" / FINISHED
    info = json.loads((run_dir / "run.json").read_text())
    info["warnings"] = [{"kind": "overfitting", "step": 25, "best_step": 10,
                         "message": "The model is memorising: validation loss rose from 2.80 (step 10) to 8.90 "
                                    "(step 25) while training loss fell from 1.20 to 0.00. The best checkpoint is "
                                    "kept."}]
    info["chosen"] = {"folder": "best", "step": 10, "why": "the lowest validation loss (2.796)",
                      "text": "the checkpoint of step 10, chosen by the lowest validation loss (2.796)"}
    (run_dir / "run.json").write_text(json.dumps(info))
    page.refresh()
    item = next(page.run_tree.topLevelItem(i) for i in range(page.run_tree.topLevelItemCount())
                if Path(page.run_tree.topLevelItem(i).data(0, Qt.ItemDataRole.UserRole)).name == FINISHED)
    assert item.text(4) == "Finished, memorised · exports step 10, the best one"
    assert "step 10, chosen by the lowest validation loss" in item.toolTip(4) and "memorising" in item.toolTip(4)


def test_runs_are_listed_newest_first_and_unfinished_ones_say_why(page: ExportPage, project_root: Path) -> None:
    tree = page.run_tree
    assert tree.topLevelItemCount() == 2
    stopped, finished = tree.topLevelItem(0), tree.topLevelItem(1)
    role = Qt.ItemDataRole.UserRole
    assert Path(stopped.data(0, role)).name == STOPPED and Path(finished.data(0, role)).name == FINISHED
    # The stopped run is there, disabled, with the reason and where it stopped; the finished one is selected.
    assert stopped.isDisabled() and "Stopped at step 2 of 25" in stopped.text(4)
    assert "Train page" in stopped.text(4)
    run_json = json.loads((project_root / "runs" / FINISHED / "run.json").read_text())
    # Which checkpoint the export takes: nothing was validated or scored, so the last one, at step 25.
    assert run_json["chosen"]["folder"] == "." and run_json["chosen"]["step"] == 25
    assert finished.text(4) == "Finished · exports step 25, the last one" and finished.text(2) == "25"
    assert "Export uses the last checkpoint (step 25)" in finished.toolTip(4)
    assert finished.text(3).startswith(f"{run_json['train_loss']:.3f}")
    assert finished.text(1) == Path(run_json["config"]["model"]).name
    assert page.current_run() is not None and page.current_run().run_dir == project_root / "runs" / FINISHED
    # Defaults: RUN/export, a name from the project, the quantisations of the settings, the command it amounts to.
    assert page.destination.text() == str(project_root / "runs" / FINISHED / "export")
    assert page.name_edit.text() == "field-notes"
    assert page.selected_quants() == ["Q4_K_M"] and page.quant_boxes["Q4_K_M"].text() == "Q4_K_M"
    assert "Recommended" in page.quant_notes["Q4_K_M"].text() and "MB for this model" in page.quant_notes["Q4_K_M"].text()
    # The page shows no command; Copy as Command gets it from the page.
    command = page.command_line()
    assert command is not None and command.startswith("slowtune export") and "Q4_K_M" in command
    texts = visible_texts(page)
    assert texts and not [t for t in texts if developer_text(t) or "slowtune export" in t], texts
    assert page.no_exports.isVisibleTo(page) and not page.result_box.isVisibleTo(page)
    # select_run with the stopped run says why it cannot be exported.
    page.select_run(str(project_root / "runs" / STOPPED))
    assert "cannot be exported" in page.banner.text.text() and "Stopped" in page.banner.text.text()


def test_empty_states_say_what_to_do(qtbot, tmp_path: Path) -> None:
    widget = ExportPage(JobRunner(), Settings)
    qtbot.addWidget(widget)
    assert "No project is open" in widget.label.text() and not widget.options.isVisibleTo(widget)
    with Project.create(tmp_path / "empty") as project:
        widget.set_project(project)
        assert "no training runs" in widget.label.text() and "Train" in widget.label.text()
        assert not widget.export_button.isVisibleTo(widget)


@pytest.mark.slow
def test_export_through_the_page(qtbot, page: ExportPage, project_root: Path, asked: list,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.llama import load_gguf

    run_dir = project_root / "runs" / FINISHED
    out = run_dir / "export"
    page.select_run(str(run_dir))
    page.quant_boxes["Q8_0"].setChecked(True)
    run_export(qtbot, page)
    assert page.banner.level != "error", page.banner.text.text()
    assert f"Exported to {out}" in page.banner.text.text() and "Verified" in page.banner.text.text()
    assert not asked  # an empty destination needs no question

    # The files are on disk, whole, and load in llama.cpp; the page lists each with its size.
    names = {"field-notes-F16.gguf", "field-notes-Q4_K_M.gguf", "field-notes-Q8_0.gguf", "base-F16.gguf"}
    assert names <= {p.name for p in out.iterdir()}
    assert "\nFROM ./field-notes-Q4_K_M.gguf\n" in (out / "Modelfile").read_text()
    assert not list(out.glob(".*"))  # no work folder, no partial file
    shown = shown_files(page)
    assert names | {"Modelfile", "README.md"} == set(shown)
    for name in names:
        assert shown[name][0] == page_module.format_size((out / name).stat().st_size)
    llm = load_gguf(out / "field-notes-Q4_K_M.gguf", n_ctx=64)
    try:
        assert len(llm.tokenize(b"The capital of Zorbia")) > 0
        llm.eval(llm.tokenize(b"The capital of Zorbia"))
    finally:
        llm.close()

    # The verification, in plain words, from what the export measured.
    report = json.loads((out / "export.json").read_text())
    checks = {v["quant"]: v for v in report["verification"]}
    assert checks["F16"]["passed"]
    text = page.checks_label.text()
    q4 = page_module.percent(checks["Q4_K_M"]["top1_agreement"])
    close = checks["Q4_K_M"]["top1_agreement"] >= page_module.QUANT_GOOD_AGREEMENT
    verdict = "answers like the trained model:" if close else "answers noticeably differently from the trained model:"
    assert f"The Q4_K_M file (field-notes-Q4_K_M.gguf) {verdict}" in text
    assert f"{q4} of next-token choices agree with the trained model" in text
    assert f"{page_module.percent(checks['F16']['top1_agreement'])} of next-token choices agree" in text
    assert page.summary.text().count("Verified") == 1
    assert shown["field-notes-Q4_K_M.gguf"][1].endswith(f"{q4} agree")
    assert shown["base-F16.gguf"][1] == "unchanged base"

    # The project recorded the files.
    with Project.open(project_root) as project:
        recorded = {Path(r["path"]).name: r["verified"] for r in project.conn.execute("SELECT * FROM exports")}
    assert recorded == {name: int(name != "base-F16.gguf") for name in names}

    # Reveal shows the recommended file; Chat hands it over with the base to compare.
    revealed: list[Path] = []
    monkeypatch.setattr(page_module, "reveal", lambda path: revealed.append(Path(path)))
    assert page.reveal_button.text() in ("Reveal in Finder", "Show in Folder")
    page.reveal_button.click()
    assert revealed == [out / "field-notes-Q4_K_M.gguf"]
    with qtbot.waitSignal(page.chat_requested, timeout=1000) as chat:
        page.chat_button.click()
    assert chat.args == [str(out / "field-notes-Q4_K_M.gguf"), str(out / "base-F16.gguf")]
    # Choosing another file in the list makes it the one to chat with and reveal.
    tree = page.file_tree
    q8 = next(tree.topLevelItem(i) for i in range(tree.topLevelItemCount())
              if tree.topLevelItem(i).text(0) == "field-notes-Q8_0.gguf")
    tree.setCurrentItem(q8)
    with qtbot.waitSignal(page.chat_requested, timeout=1000) as chat:
        page.chat_button.click()
    assert chat.args[0] == str(out / "field-notes-Q8_0.gguf")
    page.reveal_button.click()
    assert revealed[-1] == out / "field-notes-Q8_0.gguf"
    page.refresh()  # what coming back to the page does: the picked file stays picked
    assert page.selected_file() == out / "field-notes-Q8_0.gguf"

    # Exporting again asks first; declining leaves the files as they were.
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    asked.append(False)
    page.export_button.click()
    assert page.job is None or page.job.is_over
    assert len(asked) == 2 and "already holds an export" in asked[1] and "field-notes-Q8_0.gguf" in asked[1]
    assert "Nothing was exported" in page.banner.text.text()
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    # A page opened later lists the export (read from the folder) with its verification.
    later = ExportPage(JobRunner(), Settings)
    qtbot.addWidget(later)
    with Project.open(project_root) as project:
        later.set_project(project)
        later.select_run(str(run_dir))
        assert later.export_picker.count() == 1 and "verified" in later.export_picker.itemText(0)
        assert set(shown_files(later)) == set(shown)
        assert f"{q4} of next-token choices agree" in later.checks_label.text()


@pytest.mark.slow
def test_replacing_an_export_removes_the_old_files(qtbot, page: ExportPage, project_root: Path, asked: list) -> None:
    out = project_root / "runs" / FINISHED / "export"
    page.quant_boxes["Q4_K_M"].setChecked(False)
    page.quant_boxes["Q8_0"].setChecked(True)
    page.base_box.setChecked(False)
    run_export(qtbot, page)
    assert (out / "field-notes-Q8_0.gguf").exists() and not (out / "base-F16.gguf").exists()
    page.quant_boxes["Q8_0"].setChecked(False)
    page.quant_boxes["Q4_K_M"].setChecked(True)
    run_export(qtbot, page)
    assert len(asked) == 1 and "Replace it?" in asked[0]
    assert page.banner.level != "error", page.banner.text.text()
    # The old export's Q8_0 file went with it: what is in the folder is what export.json describes.
    ggufs = {p.name for p in out.glob("*.gguf")}
    assert ggufs == {"field-notes-F16.gguf", "field-notes-Q4_K_M.gguf"}
    assert {Path(p).name for p in json.loads((out / "export.json").read_text())["files"].values()} == ggufs
    with Project.open(project_root) as project:
        recorded = sorted(Path(r["path"]).name for r in project.conn.execute("SELECT path FROM exports"))
    assert recorded == sorted(ggufs)


@pytest.mark.slow
def test_lora_only_export_to_a_folder_of_ones_choice(qtbot, page: ExportPage, project_root: Path, asked: list,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.llama import load_gguf

    out = tmp_path / "My models"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(page_module, "choose_folder", lambda parent, title, start: str(out))
    page.choose_button.click()
    assert page.destination.text() == str(out) and "--out" in page.command_line()
    page.lora_box.setChecked(True)
    assert not page.quant_boxes["Q4_K_M"].isEnabled() and not page.base_box.isEnabled()
    assert "--lora-only" in page.command_line()
    run_export(qtbot, page)
    assert len(asked) == 1 and "is not empty" in asked[0]  # the folder held a file: asked before writing there
    assert page.banner.level == "info", page.banner.text.text()
    assert (out / "notes.txt").read_text() == "mine"
    assert {p.name for p in out.glob("*.gguf")} == {"base-F16.gguf", "field-notes-lora.gguf"}
    lora = out / "field-notes-lora.gguf"
    assert lora.stat().st_size < (out / "base-F16.gguf").stat().st_size
    assert "ADAPTER ./field-notes-lora.gguf" in (out / "Modelfile").read_text()
    llm = load_gguf(out / "base-F16.gguf", n_ctx=64, lora_path=lora)
    llm.close()
    check = json.loads((out / "export.json").read_text())["verification"][0]
    assert check["passed"]
    assert (f"The LoRA adapter on the base model (field-notes-lora.gguf) answers like the trained model: "
            f"{page_module.percent(check['top1_agreement'])} of next-token choices agree") in page.checks_label.text()
    assert page.shown_export is not None and page.shown_export.folder == out
    tree = page.file_tree
    kinds = {tree.topLevelItem(i).text(0): tree.topLevelItem(i).text(1) for i in range(tree.topLevelItemCount())}
    assert kinds["field-notes-lora.gguf"].startswith("LoRA adapter") and kinds["base-F16.gguf"].startswith("Base")
    assert "notes.txt" not in kinds
    # Chat with It hands the Chat page the adapter (applied there to its base) and the base to compare with.
    assert page.chat_button.isEnabled() and "field-notes-lora.gguf on base-F16.gguf" in page.chat_button.toolTip()
    with qtbot.waitSignal(page.chat_requested, timeout=1000) as chat:
        page.chat_button.click()
    assert chat.args == [str(out / "field-notes-lora.gguf"), str(out / "base-F16.gguf")]
    assert "field-notes-lora.gguf" in page.usage_label.text() and "README" in page.usage_label.text()
    texts = visible_texts(page)
    assert texts and not [t for t in texts if developer_text(t)], texts
    page.details_button.click()  # the check's figures go to the clipboard, not the page
    assert "top-1 agreement" in QGuiApplication.clipboard().text()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_broken_run_folder_gives_a_readable_message(qtbot, page: ExportPage, project_root: Path, asked: list,
                                                      damage: str) -> None:
    run_dir = project_root / "runs" / FINISHED
    page.select_run(str(run_dir))
    weights = run_dir / "adapters.safetensors"
    if damage == "deleted":
        weights.unlink()  # deleted in Finder while the page was open
    else:
        weights.write_bytes(weights.read_bytes()[:200])
    run_export(qtbot, page)
    message = page.banner.text.text()
    assert page.banner.level == "error"
    assert "Traceback" not in message and "ExportFailed" not in message
    if damage == "deleted":
        assert "has no adapter any more" in message and str(run_dir) in message
    else:
        assert "adapters.safetensors is damaged" in message
    assert "Traceback" in page.banner.details.toPlainText()  # the details are there for whoever asks
    assert not (run_dir / "export").exists() or not list((run_dir / "export").iterdir())
    if damage == "deleted":
        # The list now says what is wrong with the run, and it can no longer be chosen.
        item = page.run_tree.topLevelItem(1)
        assert item.isDisabled() and "adapter files" in item.text(4) and "missing" in item.text(4)
        assert page.current_run() is None and not page.options.isVisibleTo(page)


@pytest.mark.slow
def test_cancel_while_writing_a_gguf_leaves_no_half_written_file(qtbot, page: ExportPage, project_root: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import gguf

    from slowtune.export import gguf_writer

    out = project_root / "runs" / FINISHED / "export"
    reached, proceed = threading.Event(), threading.Event()
    real_convert = gguf_writer._convert
    calls = []

    def convert(planned: object) -> object:
        # Holds the export in the middle of writing the first GGUF until the test has clicked Cancel.
        calls.append(planned)
        if len(calls) == 3:
            reached.set()
            proceed.wait(60)
        return real_convert(planned)

    monkeypatch.setattr(gguf_writer, "_convert", convert)
    page.export_button.click()
    try:
        qtbot.waitUntil(reached.is_set, timeout=TIMEOUT_MS)
        partial = [p.name for p in out.iterdir() if p.name.endswith(".partial")]
        assert partial, "the export should be in the middle of writing a file"
        assert page.cancel_button.isVisible() and page.cancel_button.isEnabled()
        page.cancel_button.click()
        assert not page.cancel_button.isEnabled() and "Stopping" in page.progress_label.text()
    finally:
        proceed.set()
    qtbot.waitUntil(lambda: not page.busy() and not page.runner.active_jobs(), timeout=TIMEOUT_MS)
    assert page.job is not None and page.job.state == "cancelled"
    assert page.banner.level == "warning" and "cancelled" in page.banner.text.text()
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(".")]  # no partial file, no work folder
    assert not (out / "export.json").exists() and "field-notes-F16.gguf" not in left
    for name in left:  # whatever is there is whole
        assert name.endswith(".gguf") and len(gguf.GGUFReader(out / name).tensors) > 0
    assert not page.chat_button.isEnabled() or page.shown_export is None
    # The page can export again at once.
    assert page.export_button.isEnabled() and not page.cancel_button.isVisible()


@pytest.mark.slow
def test_a_failed_verification_is_shown_in_plain_words(qtbot, page: ExportPage, project_root: Path, asked: list,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A fuse that silently drops the adapter writes a loadable GGUF of the base model: the check must catch it.
    from slowtune.export import fuse as fuse_module

    real = fuse_module.fuse
    monkeypatch.setattr(fuse_module, "fuse", lambda base, adapter, out, **kw: real(base, None, out, **kw))
    page.quant_boxes["Q4_K_M"].setChecked(False)
    run_export(qtbot, page)
    assert page.banner.level == "error" and "does not behave like the trained model" in page.banner.text.text()
    out = project_root / "runs" / FINISHED / "export"
    check = next(v for v in json.loads((out / "export.json").read_text())["verification"] if v["quant"] == "F16")
    assert not check["passed"]
    assert "Not verified" in page.summary.text()
    assert (f"The F16 file (field-notes-F16.gguf) does not behave like the trained model: only "
            f"{page_module.percent(check['top1_agreement'])} of next-token choices agree") in page.checks_label.text()
    assert "Do not use it" in page.checks_label.text()
    assert not page.chat_button.isEnabled()
    assert "not verified" in page.export_picker.itemText(0)


@pytest.mark.slow
def test_cancel_during_the_check_stops_at_the_next_block_and_leaves_no_unchecked_file(
        qtbot, page: ExportPage, project_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check runs the trained model block by block: a cancel stops it at the next block.
    from slowtune.train import engines

    reached, proceed = threading.Event(), threading.Event()
    real = engines.StreamedEngine.logits

    def logits(self: object, *args: object, **kwargs: object) -> object:
        reached.set()
        proceed.wait(60)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(engines.StreamedEngine, "logits", logits)
    page.quant_boxes["Q4_K_M"].setChecked(False)
    page.export_button.click()
    try:
        qtbot.waitUntil(reached.is_set, timeout=TIMEOUT_MS)
        qtbot.waitUntil(lambda: "verifying" in page.progress_label.text(), timeout=TIMEOUT_MS)
        page.cancel_button.click()
        assert page.progress_label.text() == "Stopping…"
    finally:
        proceed.set()
    qtbot.waitUntil(lambda: not page.busy() and not page.runner.active_jobs(), timeout=TIMEOUT_MS)
    assert page.job is not None and page.job.state == "cancelled"
    out = project_root / "runs" / FINISHED / "export"
    assert not list(out.glob("*.gguf")), "an unchecked file is under a final name"
    unchecked = sorted(p.name for p in out.glob("*.gguf.unverified"))
    assert unchecked and all(name in page.banner.text.text() for name in unchecked)
    assert "stopped during the check" in page.banner.text.text()
