"""The export folder model (``slowtune.export.folder``): the one naming scheme of export files, an export read back
from its folder, the exports of a run, the files an export request plans, and the Chat page's model list. No model
is trained here: the files are empty, as only their names and places count."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slowtune.export.folder import (
    BASE_FILE,
    BASE_KIND,
    LORA_KIND,
    ExportFileName,
    ExportRequest,
    export_file_name,
    exports_of,
    list_models,
    parse_export_file_name,
    read_export,
    remove_export,
)
from slowtune.export.quantize import QUANT_TYPES
from slowtune.store import Project


def test_export_file_names_are_the_ones_other_tools_read() -> None:
    assert export_file_name("model", "F16") == "model-F16.gguf"
    assert export_file_name("field-notes", "Q4_K_M") == "field-notes-Q4_K_M.gguf"
    assert export_file_name("model", BASE_KIND) == BASE_FILE == "base-F16.gguf"
    assert export_file_name("model", LORA_KIND) == "model-lora.gguf"
    for quant in QUANT_TYPES:
        name = export_file_name("my.model+2", quant)
        assert name == f"my.model+2-{quant}.gguf"
        assert parse_export_file_name(name) == ExportFileName("my.model+2", quant)
        assert parse_export_file_name(name).quant == quant  # type: ignore[union-attr]
    base = parse_export_file_name("base-F16.gguf")
    assert base == ExportFileName("base", BASE_KIND) and base.is_base and base.quant == "F16"
    lora = parse_export_file_name("model-lora.gguf")
    assert lora == ExportFileName("model", LORA_KIND) and lora.quant is None and not lora.is_base
    # The base quantised by the user (as the LoRA README suggests) is still the base.
    assert parse_export_file_name("base-Q4_K_M.gguf") == ExportFileName("base", "base-Q4_K_M")
    for other in ("model.gguf", "model-q4_k_m.gguf", "model-IQ4_XS.gguf", "model-F16.bin", "model-F16"):
        assert parse_export_file_name(other) is None, other


def test_planned_files_and_command() -> None:
    run = Path("/p/runs/r1")
    request = ExportRequest(run, run / "export", "notes", ("Q4_K_M", "Q8_0"))
    assert request.planned_files() == ["notes-F16.gguf", "notes-Q4_K_M.gguf", "notes-Q8_0.gguf", "base-F16.gguf",
                                       "Modelfile", "README.md", "export.json"]
    assert request.command() == "slowtune export /p/runs/r1 --quant Q4_K_M,Q8_0 --name notes"
    lora = ExportRequest(run, Path("/elsewhere"), lora_only=True, ollama=False)
    assert lora.planned_files() == ["base-F16.gguf", "model-lora.gguf", "export.json"]
    assert lora.command() == "slowtune export /p/runs/r1 --lora-only --out /elsewhere --no-ollama"


def _touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


def test_an_unfinished_export_is_read_from_its_names_and_a_folder_of_ones_own_models_is_not_an_export(
        tmp_path: Path) -> None:
    folder = tmp_path / "export"
    _touch(folder, "model-F16.gguf", "base-F16.gguf", "llama-3.gguf")
    export = read_export(folder)
    assert export is not None and not export.finished
    assert sorted((f.path.name, f.kind) for f in export.files) == [("base-F16.gguf", BASE_KIND),
                                                                   ("model-F16.gguf", "F16")]
    assert export.chat_file().path.name == "model-F16.gguf"  # type: ignore[union-attr]
    _touch(tmp_path / "mine", "llama-3.gguf", "qwen.Q4_0.gguf")
    assert read_export(tmp_path / "mine") is None


def test_exports_of_a_run_and_removing_one(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    run_dir = root / "runs" / "20250101-090000-abcdef"
    own = run_dir / "export"
    _touch(own, "model-F16.gguf", "model-Q4_K_M.gguf", "base-F16.gguf", "Modelfile", "notes.txt")
    (own / "export.json").write_text(json.dumps({
        "adapter": str(run_dir / "adapter"), "files": {"F16": str(own / "model-F16.gguf"),
                                                       "Q4_K_M": str(own / "model-Q4_K_M.gguf"),
                                                       BASE_KIND: str(own / "base-F16.gguf")},
        "verification": [{"file": "model-F16.gguf", "quant": "F16", "passed": True}]}))
    elsewhere = tmp_path / "My models"
    _touch(elsewhere, "x-lora.gguf", "base-F16.gguf")
    (elsewhere / "export.json").write_text(json.dumps({"adapter": str(tmp_path / "another-run"), "lora_only": True,
                                                       "files": {LORA_KIND: "x-lora.gguf", BASE_KIND: "base-F16.gguf"}}))
    with Project.create(root) as project:
        exports = exports_of(run_dir, project, [elsewhere])  # made from another run: not this run's
        assert [e.folder for e in exports] == [own]
        export = exports[0]
        assert export.finished and export.passed() and not export.lora_only
        assert export.chat_file().path.name == "model-Q4_K_M.gguf"  # type: ignore[union-attr]
        assert export.file("F16").check == {"file": "model-F16.gguf", "quant": "F16", "passed": True}  # type: ignore[union-attr]
        project.conn.execute(
            "INSERT INTO exports(id, run_id, kind, quant, path, size_bytes, verified, report_json, created_at) "
            "VALUES ('e1', NULL, 'gguf', 'F16', ?, 1, 1, '{}', ?)", (str(own / "model-F16.gguf"), time.time()))
        project.conn.commit()
    assert sorted(remove_export(own, root)) == ["Modelfile", "base-F16.gguf", "export.json", "model-F16.gguf",
                                                "model-Q4_K_M.gguf"]
    assert sorted(p.name for p in own.iterdir()) == ["notes.txt"]
    with Project.open(root) as project:
        assert project.conn.execute("SELECT COUNT(*) FROM exports").fetchone()[0] == 0


def test_the_model_list_names_each_export_file_by_the_scheme(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    with Project.create(root) as project:
        folder = root / "runs" / "20250202-100000-bbbbbb" / "export"
        _touch(folder, "model-F16.gguf", "model-Q4_K_M.gguf", "base-F16.gguf", "base-Q4_K_M.gguf",
               "model-IQ4_XS.gguf")
        lora = root / "exports" / "adapter"
        _touch(lora, "base-F16.gguf", "model-lora.gguf")
        labels = [(c.label, Path(c.path).name, c.lora and Path(c.lora).name) for c in list_models(project)]
    tuned = [entry for entry in labels if entry[0].startswith("Tuned")]
    assert ("Tuned · run 2025-02-02 10:00 · Q4_K_M", "model-Q4_K_M.gguf", None) in tuned
    assert ("Tuned · run 2025-02-02 10:00 · F16", "model-F16.gguf", None) in tuned
    assert ("Tuned · run 2025-02-02 10:00 · IQ4_XS", "model-IQ4_XS.gguf", None) in tuned  # a GGUF of one's own
    assert ("Tuned · adapter · LoRA on the base", "base-F16.gguf", "model-lora.gguf") in tuned
    assert not any(name.startswith("base-") for label, name, lora_name in tuned if lora_name is None)
    assert len(tuned) == 4
    assert sorted(label for label, _, _ in labels if label.startswith("Base")) == [
        "Base · adapter", "Base · run 2025-02-02 10:00"]


@pytest.mark.parametrize("module", ["slowtune.export.folder", "slowtune.export.modelfile"])
def test_the_folder_model_imports_no_qt_and_no_heavy_library(module: str) -> None:
    code = (f"import sys, {module}; print(sorted(m for m in ('PySide6', 'mlx', 'mlx_lm', 'llama_cpp', 'numpy', "
            "'jinja2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
