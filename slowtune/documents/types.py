"""What the document stage passes around: a parsed document and its chunks.

Text is normalised Markdown-like plain text: headings as ``#``/``##`` lines, paragraphs separated by a blank
line. Readers produce it, the chunker splits it, the store keeps both.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PageSpan:
    page: int  # 1-based page number in the source PDF
    char_start: int  # offsets of this page's text in ParsedDocument.text
    char_end: int


@dataclass
class ParsedDocument:
    title: str
    kind: str  # pdf, docx, html, md, txt
    text: str
    pages: list[PageSpan] | None = None  # PDFs only
    notes: list[str] = field(default_factory=list)  # e.g. "read as Latin-1", "3 pages had no text"

    @property
    def n_pages(self) -> int | None:
        return len(self.pages) if self.pages is not None else None


class ReadError(Exception):
    """A file that could not be turned into text. ``status`` is "skipped" (nothing to read: empty, scanned,
    unsupported) or "failed" (broken, protected, too big, unreadable); ``reason`` is for the user."""

    def __init__(self, reason: str, status: str = "failed") -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Chunk:
    id: str  # stable: derived from the document's content hash and the chunk's text
    ord: int
    text: str
    tokens: int
    heading_path: tuple[str, ...]
    page_start: int | None
    page_end: int | None
    char_start: int
    char_end: int
