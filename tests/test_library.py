"""Ingesting files and folders into a project: statuses, incremental updates, duplicates, removals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.documents import library
from slowtune.store import Project

GUIDE = ("# Garden guide\n\n## Tomatoes\n\n" + "Water tomatoes every morning before the sun is high. " * 6
         + "\n\n## Roses\n\n" + "Prune roses in March, just above an outward-facing bud. " * 6 + "\n")


def _pdf(path: Path, pages: list[str]) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "guide.md").write_text(GUIDE)
    (root / "notes.txt").write_text("Bicycles need oil.\n\nCheck the chain weekly.\n")
    _pdf(root / "manual.pdf", ["Page one talks about pumps.", "Page two talks about valves."])
    (root / "empty.txt").write_text("")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    return root


def _statuses(report: library.IngestReport) -> dict[str, str]:
    return {Path(f.path).name: f.status for f in report.files}


@pytest.mark.slow
def test_a_mixed_folder_gets_a_status_per_file_and_unchanged_files_are_not_parsed(folder: Path, tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with Project.create(tmp_path / "p") as project:
        report = library.ingest(project, [folder], chunk_tokens=32, chunk_overlap=0)
        statuses = _statuses(report)
        assert statuses == {"guide.md": "ok", "notes.txt": "ok", "manual.pdf": "ok", "empty.txt": "skipped",
                            "broken.pdf": "failed"}
        reasons = {Path(f.path).name: f.reason for f in report.files}
        assert "empty" in reasons["empty.txt"] and "PDF" in reasons["broken.pdf"]
        pdf = next(f for f in report.files if f.path.endswith("manual.pdf"))
        assert pdf.pages == 2 and pdf.chunks >= 1
        headings = [json.loads(r["heading_path"]) for r in project.conn.execute(
            "SELECT heading_path FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path LIKE '%guide.md'")]
        assert any("Tomatoes" in h for h in headings)
        assert report.summary["documents"] == {"ok": 3, "skipped": 1, "failed": 1}

        # Again, unchanged: nothing is parsed (the parser is not even called).
        import slowtune.documents.worker as worker

        called = []
        real = worker.parse_many
        monkeypatch.setattr(worker, "parse_many", lambda paths, **kw: (called.extend(paths), real(paths, **kw))[1])
        again = library.ingest(project, [folder], chunk_tokens=32, chunk_overlap=0)
        assert {s for n, s in _statuses(again).items() if n not in ("broken.pdf",)} == {"unchanged"}
        assert [p.name for p in called] == ["broken.pdf"]  # only the failed file is tried again


@pytest.mark.slow
def test_changed_removed_and_identical_files(folder: Path, tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        library.ingest(project, [folder], chunk_tokens=32, chunk_overlap=0)
        before = {r["text"] for r in project.conn.execute("SELECT text FROM chunks")}
        (folder / "notes.txt").write_text("Bicycles need new tyres in spring.\n")
        (folder / "guide.md").unlink()
        (folder / "copy.md").write_text((folder / "notes.txt").read_text())  # identical to notes.txt
        report = library.ingest(project, [folder])
        statuses = _statuses(report)
        assert statuses["notes.txt"] == "ok" and statuses["guide.md"] == "removed"
        assert statuses["copy.md"] == "duplicate" and "identical to" in next(
            f.reason for f in report.files if f.path.endswith("copy.md"))
        texts = {r["text"] for r in project.conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.document_id WHERE d.path LIKE '%notes.txt'")}
        assert any("tyres" in t for t in texts) and not any("oil" in t for t in texts)
        # The removed document's chunks stay for review of what was generated from them.
        kept = project.conn.execute("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id "
                                    "WHERE d.status = 'removed'").fetchone()[0]
        assert kept >= 1 and any("Tomatoes" in t for t in before)


def test_symlink_loops_and_unicode_paths(tmp_path: Path) -> None:
    root = tmp_path / "Dossier été 2026"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "note ü.txt").write_text("Schön ist es hier.\n")
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    (root / "holiday.jpg").write_bytes(b"\xff\xd8\xff\xe0 not text")
    with Project.create(tmp_path / "p") as project:
        report = library.ingest(project, [root])
    statuses = _statuses(report)
    assert statuses == {"note ü.txt": "ok", "dangling.txt": "failed", "holiday.jpg": "skipped"}
    assert "not a supported type" in next(f.reason for f in report.files if f.path.endswith(".jpg"))
    assert "broken link" in next(f.reason for f in report.files if f.path.endswith("dangling.txt"))


@pytest.mark.slow
def test_cli_prints_a_report_for_every_file(folder: Path, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "slowtune", "ingest", str(tmp_path / "proj"), str(folder)],
                         capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr
    for name in ("guide.md", "notes.txt", "manual.pdf", "empty.txt", "broken.pdf"):
        assert name in out.stdout
    assert "3 ok" in out.stdout and "1 failed" in out.stdout and "1 skipped" in out.stdout


def test_a_copy_is_read_once_the_original_changes(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.md").write_text("Original text about gardens.\n")
    (root / "b.md").write_text("Original text about gardens.\n")
    with Project.create(tmp_path / "p") as project:
        assert _statuses(library.ingest(project, [root])) == {"a.md": "ok", "b.md": "duplicate"}
        (root / "a.md").write_text("New text about bicycles.\n")
        assert _statuses(library.ingest(project, [root])) == {"a.md": "ok", "b.md": "ok"}
        texts = {r["text"] for r in project.conn.execute("SELECT text FROM chunks")}
        assert any("gardens" in t for t in texts) and any("bicycles" in t for t in texts)


def test_a_path_that_does_not_exist_is_reported_not_stored(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        report = library.ingest(project, [tmp_path / "typo"])
        assert [(f.status, f.reason) for f in report.files] == [("failed", "does not exist")]
        assert project.counts()["documents"] == 0
