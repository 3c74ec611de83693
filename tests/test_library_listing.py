"""What the library holds, read back as the Library page shows it: a row per document, the added folders, and a
document's chunks in order."""

from __future__ import annotations

from pathlib import Path

from slowtune.documents import library
from slowtune.store import Project


def test_documents_folders_and_chunks_are_listed(tmp_path: Path) -> None:
    folder = tmp_path / "Garden club"
    folder.mkdir()
    sections = "".join(f"## Part {i}\n\n" + f"Plot {i} is watered in the morning by its holder. " * 8 + "\n\n"
                       for i in range(1, 4))
    (folder / "guide.md").write_text("# Guide\n\n" + sections)
    (folder / "empty.txt").write_text("")
    single = tmp_path / "note.txt"
    single.write_text("The gates open at 7:00.\n")
    with Project.create(tmp_path / "p") as project:
        library.ingest(project, [folder], chunk_tokens=48, chunk_overlap=0)
        library.ingest(project, [single])

        rows = {row.file_name: row for row in library.list_documents(project)}
        assert set(rows) == {"guide.md", "empty.txt", "note.txt"}
        guide, empty, note = rows["guide.md"], rows["empty.txt"], rows["note.txt"]
        assert (guide.status, guide.title, guide.kind, guide.watched_root) == ("ok", "Guide", "md", str(folder))
        assert empty.status == "skipped" and "empty" in empty.reason and empty.chunks in (None, 0)
        assert note.watched_root is None  # added on its own, not as a folder
        assert library.watched_folders(project) == [folder]

        chunks = library.document_chunks(project, guide.id)
        assert guide.chunks == len(chunks) > 1
        assert [c.ord for c in chunks] == list(range(len(chunks)))
        assert chunks[0].heading_path[0] == "Guide" and all(c.tokens > 0 for c in chunks)
        assert library.document_chunks(project, guide.id, limit=1) == chunks[:1]
        assert library.document_chunks(project, empty.id) == []
