"""The Library page: add documents and folders, see what was read, preview a document's chunks.

Reading happens in ``slowtune.documents.library.ingest``, run by a ``Job`` on its own database connection (SQLite
in WAL mode lets the page keep reading through the window's connection meanwhile). The page shows what the same
module reads back (``list_documents``, ``watched_folders``, ``document_chunks``) on the window's connection.
"""

from __future__ import annotations

import html
import shlex
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QItemSelection,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QColor, QGuiApplication, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTableView,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from slowtune.documents.library import (
    DocumentRow,
    IngestReport,
    document_chunks,
    ingest,
    list_documents,
    watched_folders,
)
from slowtune.gui.page import Page
from slowtune.gui.qtcompat import emit
from slowtune.gui.widgets import RowsTableModel
from slowtune.gui.workers import UNEXPECTED, Job, JobRunner
from slowtune.progress import Progress
from slowtune.settings import Settings
from slowtune.store import Project

# Extensions offered by the Add Files dialog (the reader decides what it can read; this only filters the list).
FILE_FILTER = "Documents (*.pdf *.docx *.html *.htm *.md *.markdown *.txt *.rst *.csv);;All files (*)"
INGEST_STAGES = {"scan": "looking at files", "parse": "reading"}
PREVIEW_CHUNKS = 200  # a long book has thousands of chunks; the preview shows the first ones and says so

# Status colours chosen to stay readable on light and dark backgrounds.
STATUS_COLORS = {"ok": "#2f9e44", "failed": "#e03131", "skipped": "#d9480f", "removed": "#868e96",
                 "pending": "#868e96"}


def ingest_function(root: Path, paths: list[Path], settings: Settings) -> Callable[[Progress], IngestReport]:
    """What the worker thread runs: the core ingest on a connection of its own (a connection is not shared
    between threads while it writes)."""
    def run(progress: Progress) -> IngestReport:
        with Project.open(root) as project:
            return ingest(project, paths, chunk_tokens=settings.chunk_tokens, chunk_overlap=settings.chunk_overlap,
                          max_file_mb=settings.max_file_mb, progress=progress)
    return run


def describe_report(report: IngestReport) -> tuple[str, str, str]:
    """(level, one-line message, details: one line per file that was not read) for the banner."""
    counts = Counter(f.status for f in report.files)
    if not report.files:
        return "warning", "No files were found there.", ""
    parts = []
    for status, words in (("ok", "read"), ("unchanged", "unchanged"), ("duplicate", "duplicate"),
                          ("skipped", "skipped"), ("failed", "failed"), ("removed", "gone from their folder")):
        if counts[status]:
            parts.append(f"{counts[status]} {words}")
    trouble = [f for f in report.files if f.status in ("failed", "skipped", "duplicate")]
    n = len(report.files)
    message = f"{n} file{'s' if n != 1 else ''}: {', '.join(parts)}."
    details = "\n".join(f"{Path(f.path).name}: {f.reason}" for f in trouble)
    if counts["failed"]:
        return "warning", message + " The Reason column says why a file could not be read.", details
    if trouble:
        return "info", message + " The Reason column says why a file was skipped.", details
    return "info", message, ""


class DocumentTableModel(RowsTableModel):
    """The project's documents, one row each. ``Qt.UserRole`` gives raw values so that numbers sort as numbers."""

    COLUMNS = ("Document", "File", "Kind", "Status", "Pages", "Tokens", "Chunks", "Reason")
    NUMERIC = frozenset({"Pages", "Tokens", "Chunks"})

    def value(self, row: DocumentRow, column: str) -> Any:
        return {"Document": row.title, "File": row.file_name, "Kind": row.kind, "Status": row.status,
                "Pages": row.pages, "Tokens": row.tokens, "Chunks": row.chunks, "Reason": row.reason}[column]

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        column = self.COLUMNS[index.column()]
        value = self.value(row, column)
        if role == Qt.ItemDataRole.DisplayRole:
            if column in self.NUMERIC:
                # Failed files have no counts: an empty cell says "nothing" better than a zero.
                return "" if value is None or (row.status != "ok" and not value) else f"{value:,}"
            if column == "Reason" and value:
                # The core words reasons to follow a file name ("is empty"); in a column of their own they
                # read as sentences.
                return value[0].upper() + value[1:]
            return value
        if role == Qt.ItemDataRole.UserRole:
            return (-1 if value is None else value) if column in self.NUMERIC else str(value).lower()
        if role == Qt.ItemDataRole.ToolTipRole:
            if column in ("Document", "File"):
                return row.path
            if column == "Reason" and row.reason:
                return f"{row.file_name} {row.reason}"
            return None
        if role == Qt.ItemDataRole.TextAlignmentRole and column in self.NUMERIC:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole and column == "Status":
            return QColor(STATUS_COLORS.get(row.status, "#868e96"))
        return None


class DocumentTable(QTableView):
    """The table, with Copy (the selected rows as tab-separated text, for a spreadsheet or a bug report)."""

    def copy(self) -> None:
        model = self.model()
        rows = sorted({i.row() for i in self.selectionModel().selectedRows()})
        lines = ["\t".join(DocumentTableModel.COLUMNS)]
        for r in rows:
            cells = [model.index(r, c).data(Qt.ItemDataRole.DisplayRole) for c in range(model.columnCount())]
            lines.append("\t".join("" if v is None else str(v) for v in cells))
        QGuiApplication.clipboard().setText("\n".join(lines) + "\n")

    def keyPressEvent(self, event: Any) -> None:
        if event.matches(QKeySequence.StandardKey.Copy):
            self.copy()
            return
        super().keyPressEvent(event)


def chunk_preview_html(project: Project, doc: DocumentRow) -> str:
    """The selected document's chunks as HTML: heading path, pages and tokens above each chunk's text."""
    esc = html.escape
    head = f"<h3>{esc(doc.title)}</h3><p style='color:gray'>{esc(doc.path)}</p>"
    if doc.status != "ok":
        reason = f"{esc(doc.file_name)} {esc(doc.reason)}." if doc.reason else "It was not read."
        hint = {"removed": "Its chunks are kept so that data made from them stays reviewable."}.get(doc.status, "")
        head += f"<p><b>{esc(doc.status.capitalize())}:</b> {reason} {hint}</p>"
    elif doc.reason:  # notes on a file that was read, e.g. "read as Latin-1"
        head += f"<p><i>Note: {esc(doc.reason)}</i></p>"
    chunks = document_chunks(project, doc.id, PREVIEW_CHUNKS)
    total = doc.chunks or len(chunks)
    if not chunks:
        return head + ("" if doc.status != "ok" else "<p>This document has no chunks.</p>")
    parts = [head]
    if total > len(chunks):
        parts.append(f"<p><i>Showing the first {len(chunks):,} of {total:,} chunks.</i></p>")
    for chunk in chunks:
        headings = " › ".join(chunk.heading_path)
        where = [f"Chunk {chunk.ord + 1} of {total:,}"]
        if headings:
            where.append(esc(headings))
        start, end = chunk.page_start, chunk.page_end
        if start is not None:
            where.append(f"page {start}" if end in (None, start) else f"pages {start}–{end}")
        where.append(f"{chunk.tokens:,} tokens")
        parts.append(
            ("<hr>" if chunk.ord else "") + f"<p><b>{' · '.join(where)}</b></p>"
            f"<p style='white-space:pre-wrap'>{esc(chunk.text)}</p>"
        )
    return "".join(parts)


EMPTY_TITLE = "Add your documents"
EMPTY_TEXT = (
    "<p>Drop files or folders anywhere on this window, or choose them with the buttons below.</p>"
    "<p>PDF, Word (.docx), HTML, Markdown and plain-text files are read here on this Mac; nothing is uploaded. "
    "Each document is split into chunks of about {tokens} tokens, which the teacher later turns into questions "
    "and answers.</p>"
    "<p>Folders you add are remembered: <b>Re-scan Folders</b> picks up new, changed and removed files.</p>"
)
NO_PROJECT_TITLE = "No project open"
NO_PROJECT_TEXT = (
    "<p>A project holds your documents, the dataset made from them, and the models you train.</p>"
    "<p>Create one, or open one you made before. Documents dropped here go into a new project.</p>"
)


class EmptyState(QFrame):
    """What the Library shows when there is nothing to list: a drop zone that says what to do, with the buttons
    that do it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("library-empty")
        # A dashed outline marks the area as a place to drop files (palette(mid) follows light and dark mode).
        self.setStyleSheet("QFrame#library-empty { border: 2px dashed palette(mid); border-radius: 12px; }")
        self.title = QLabel()
        font = self.title.font()
        font.setPointSizeF(font.pointSizeF() * 1.5)
        font.setBold(True)
        self.title.setFont(font)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.text = QLabel()
        self.text.setWordWrap(True)
        # A fixed width lets the wrapped label compute its true height (a free-floating one gets cut off).
        self.text.setFixedWidth(560)
        self.primary = QPushButton()
        self.secondary = QPushButton()
        self.primary.setDefault(True)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.primary)
        buttons.addWidget(self.secondary)
        buttons.addStretch(1)
        column = QVBoxLayout()
        column.addStretch(2)
        column.addWidget(self.title)
        column.addSpacing(8)
        # Centred by stretches, not by an alignment flag: with a flag the layout sizes the label by its plain
        # size hint and the wrapped text is cut off.
        text_row = QHBoxLayout()
        text_row.addStretch(1)
        text_row.addWidget(self.text)
        text_row.addStretch(1)
        column.addLayout(text_row)
        column.addSpacing(12)
        column.addLayout(buttons)
        column.addStretch(3)
        self.setLayout(column)

    def show_state(self, title: str, text: str, primary: str, secondary: str) -> None:
        self.title.setText(title)
        self.text.setText(text)
        self.primary.setText(primary)
        self.secondary.setText(secondary)


class LibraryPage(Page):
    """The documents of the open project.

    Signals: ``project_needed(paths)`` - documents were added with no project open (the window creates one and
    calls ``add_paths`` again); ``documents_changed()`` - after an ingest ended; ``new_project_requested()`` and
    ``open_project_requested()`` - from the buttons shown while no project is open.
    """

    project_needed = Signal(list)
    documents_changed = Signal()
    new_project_requested = Signal()
    open_project_requested = Signal()

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings], parent: QWidget | None = None) -> None:
        super().__init__("library", runner, settings, parent)
        self.jobs: list[Job] = []  # ingests running or queued (documents dropped while one runs wait their turn)
        self.last_report: IngestReport | None = None

        self.title = QLabel("<h2 style='margin:0'>Library</h2>")
        self.summary = QLabel()
        self.summary.setObjectName("library-summary")
        self.add_files_button = QPushButton("Add Files…")
        self.add_files_button.clicked.connect(self.choose_files)
        self.add_folder_button = QPushButton("Add Folder…")
        self.add_folder_button.clicked.connect(self.choose_folder)
        self.rescan_button = QPushButton("Re-scan Folders")
        self.rescan_button.clicked.connect(self.rescan)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Filter documents")
        self.filter.setClearButtonEnabled(True)
        self.filter.setMaximumWidth(240)
        header = QHBoxLayout()
        header.addWidget(self.title)
        header.addSpacing(12)
        header.addWidget(self.summary, 1)
        header.addWidget(self.filter)
        header.addWidget(self.add_files_button)
        header.addWidget(self.add_folder_button)
        header.addWidget(self.rescan_button)

        self.model = DocumentTableModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(Qt.ItemDataRole.UserRole)
        self.proxy.setFilterKeyColumn(-1)
        self.proxy.setFilterCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        self.filter.textChanged.connect(self.proxy.setFilterFixedString)
        self.table = DocumentTable()
        self.table.setModel(self.proxy)
        # The order they were added in, until a header is clicked (-1: no sort column).
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        # Compact rows, as in Finder's list view; the style's default leaves a lot of air around one line of text.
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 10)
        self.table.horizontalHeader().setHighlightSections(False)
        self.table.setAcceptDrops(False)  # drops go to the window, which accepts them anywhere
        self.table.viewport().setAcceptDrops(False)
        self.table.selectionModel().selectionChanged.connect(self._selection_changed)

        self.preview = QTextBrowser()
        self.preview.setObjectName("chunk-preview")
        self.preview.setOpenLinks(False)
        self.preview.setAcceptDrops(False)
        self.preview.viewport().setAcceptDrops(False)
        self.preview.setPlaceholderText("Select a document to see its chunks: the pieces the teacher will read.")

        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.table)
        splitter.addWidget(self.preview)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setChildrenCollapsible(False)
        self.splitter = splitter

        self.empty = EmptyState()
        self.empty.primary.clicked.connect(self._empty_primary)
        self.empty.secondary.clicked.connect(self._empty_secondary)

        self.stack = QStackedWidget()
        self.stack.addWidget(self.empty)
        self.stack.addWidget(splitter)

        layout = self.page_layout()
        layout.addLayout(header)
        layout.addWidget(self.banner)
        layout.addWidget(self.stack, 1)
        self.refresh()

    # --- the project ---------------------------------------------------------------------------------
    def project_set(self, changed: bool) -> None:
        super().project_set(changed)
        self.preview.clear()
        self.filter.clear()

    def refresh_on_show(self) -> bool:
        return False  # only an ingest changes the documents, and the page refreshes when one ends

    def page_jobs(self) -> list[Job]:
        return self.jobs

    def refresh(self) -> None:
        """Read the documents table again (after an ingest, or when the project changes)."""
        selected = self.selected_document()
        rows = list_documents(self.project) if self.project is not None else []
        self.model.set_rows(rows)
        self.table.resizeColumnsToContents()
        self._fit_columns()
        has_docs = bool(rows)
        self.stack.setCurrentIndex(1 if has_docs else 0)
        if self.project is None:
            self.empty.show_state(NO_PROJECT_TITLE, NO_PROJECT_TEXT, "New Project…", "Open Project…")
        else:
            text = EMPTY_TEXT.format(tokens=f"{self._settings().chunk_tokens:,}")
            self.empty.show_state(EMPTY_TITLE, text, "Add Files…", "Add Folder…")
        self.filter.setVisible(has_docs)
        self.summary.setText(self._summary_text(rows))
        self._update_buttons()
        if selected is not None:
            self.select_document(selected.path)

    def _fit_columns(self) -> None:
        header = self.table.horizontalHeader()
        header.setStretchLastSection(True)  # the Reason column takes what is left
        # Long titles and file names would push everything else off screen: cap them; the tooltip has the rest.
        for column in (0, 1):
            if header.sectionSize(column) > 280:
                header.resizeSection(column, 280)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)

    def _summary_text(self, rows: list[DocumentRow]) -> str:
        if self.project is None or not rows:
            return ""
        ok = [r for r in rows if r.status == "ok"]
        pages = sum(r.pages or 0 for r in ok)
        tokens = sum(r.tokens or 0 for r in ok)
        chunks = sum(r.chunks or 0 for r in ok)
        text = f"{len(ok):,} of {len(rows):,} documents read · "
        if pages:
            text += f"{pages:,} pages · "
        text += f"{tokens:,} tokens in {chunks:,} chunks"
        return text

    def _update_buttons(self) -> None:
        busy = bool(self.jobs)
        folders = watched_folders(self.project) if self.project is not None else []
        # With no project the empty state offers New/Open instead; adding would first have to make a project.
        for button in (self.add_files_button, self.add_folder_button, self.rescan_button):
            button.setVisible(self.project is not None)
        self.rescan_button.setEnabled(not busy and bool(folders))
        self.rescan_button.setToolTip(
            "Read the added folders again: " + ", ".join(str(f) for f in folders) if folders
            else "Add a folder first; Re-scan reads the added folders again for new, changed and removed files.")

    def _empty_primary(self) -> None:
        if self.project is None:
            emit(self.new_project_requested)
        else:
            self.choose_files()

    def _empty_secondary(self) -> None:
        if self.project is None:
            emit(self.open_project_requested)
        else:
            self.choose_folder()

    # --- adding documents ----------------------------------------------------------------------------
    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add Documents", str(Path.home()), FILE_FILTER)
        if files:
            self.add_paths([Path(f) for f in files])

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a Folder of Documents", str(Path.home()))
        if folder:
            self.add_paths([Path(folder)])

    def command_line(self) -> str | None:
        """Re-scanning the project's added folders, as a ``slowtune ingest`` command line (Copy as Command); None
        without a project or an added folder."""
        if self.project is None:
            return None
        folders = [str(f) for f in watched_folders(self.project) if f.is_dir()]
        return shlex.join(["slowtune", "ingest", str(self.project.root), *folders]) if folders else None

    def rescan(self) -> Job | None:
        if self.project is None:
            return None
        folders = watched_folders(self.project)
        present = [f for f in folders if f.is_dir()]
        gone = [f for f in folders if not f.is_dir()]
        if gone:
            self.banner.show_message(
                f"{len(gone)} added folder{'s are' if len(gone) > 1 else ' is'} no longer there; "
                "its documents keep their chunks.", level="warning", details="\n".join(map(str, gone)))
        if not present:
            return None
        return self.add_paths(present, title="Re-scanning folders")

    def add_paths(self, paths: list[Path], *, title: str = "Adding documents") -> Job | None:
        """Ingest ``paths`` into the open project in a worker. Returns the job, or None if it did not start."""
        if not paths:
            return None
        if self.project is None:
            emit(self.project_needed, list(paths))
            return None
        job = Job(title, ingest_function(self.project.root, list(paths), self._settings()),
                  key=str(self.project.root), stage_names=INGEST_STAGES)
        # Queued, not refused: a user who drops more files while the first ones are read expects them added too.
        if not self.start_job(job, queue=True, finished=partial(self._ingest_finished, job=job),
                              failed=self._ingest_failed,
                              cancelled=self._ingest_cancelled, done=partial(self._ingest_done, job)):
            return None
        self.jobs.append(job)
        self.banner.clear()
        self._update_buttons()
        return job

    def _ingest_finished(self, report: IngestReport, job: Job | None = None) -> None:
        self.last_report = report
        level, message, details = describe_report(report)
        self.banner.show_message(message, level=level, details=details)
        failed = sum(1 for f in report.files if f.status == "failed")
        if job is not None and failed:  # the status bar says so too, not a bare "done"
            job.note = f"{failed} file{'s' if failed != 1 else ''} could not be read"

    def _ingest_failed(self, message: str, details: str) -> None:
        # An unexpected error's message already names the work ("Adding documents failed unexpectedly. …").
        text = message if message.endswith(UNEXPECTED.format(what="")) else f"Adding documents stopped: {message}"
        self.banner.show_message(text, level="error", details=details)

    def _ingest_cancelled(self) -> None:
        self.banner.show_message("Stopped. The documents read before you cancelled are kept.", level="info")

    def _ingest_done(self, job: Job) -> None:
        if job in self.jobs:
            self.jobs.remove(job)
        self.refresh()
        emit(self.documents_changed)

    # --- selection and preview -----------------------------------------------------------------------
    def selected_document(self) -> DocumentRow | None:
        indexes = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not indexes:
            return None
        source = self.proxy.mapToSource(indexes[0])
        return self.model.rows[source.row()] if 0 <= source.row() < len(self.model.rows) else None

    def select_document(self, path: str) -> bool:
        for row, doc in enumerate(self.model.rows):
            if doc.path == path:
                index = self.proxy.mapFromSource(self.model.index(row, 0))
                if index.isValid():
                    self.table.selectRow(index.row())
                    return True
        return False

    def _selection_changed(self, selected: QItemSelection, deselected: QItemSelection) -> None:
        doc = self.selected_document()
        if doc is None or self.project is None:
            self.preview.clear()
            return
        self.preview.setHtml(chunk_preview_html(self.project, doc))
