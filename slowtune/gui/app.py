"""The main window. For now a frame with the app's pages named and a pointer to the working CLI commands;
the desktop-app issue fills the pages in."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QMainWindow,
    QStackedWidget,
    QWidget,
)

from slowtune import __version__
from slowtune.resources import resource_path

PAGES = {
    "Library": "Drop documents and folders here to add them to the project.",
    "Providers": "Add a teacher model (any OpenAI-compatible endpoint) and its API key.",
    "Dataset": "Generate, review and accept the question/answer data.",
    "Train": "Pick a base model and train a LoRA adapter, streamed when it does not fit in memory.",
    "Chat": "Chat offline with the tuned model beside its base.",
    "Export": "Fuse, convert to GGUF, quantise and verify.",
}


class MainWindow(QMainWindow):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("slowtune")
        self.resize(1000, 640)
        self.sidebar = QListWidget()
        self.sidebar.setFixedWidth(160)
        self.pages = QStackedWidget()
        for name, purpose in PAGES.items():
            self.sidebar.addItem(name)
            label = QLabel(
                f"<h2>{name}</h2><p>{purpose}</p>"
                "<p><i>This page is not built yet.</i> Working today: <code>slowtune doctor</code> "
                "(see <code>slowtune --help</code>).</p>"
            )
            label.setObjectName(f"page-{name.lower()}")
            label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
            label.setWordWrap(True)
            label.setMargin(24)
            self.pages.addWidget(label)
        self.sidebar.currentRowChanged.connect(self.pages.setCurrentIndex)
        self.sidebar.setCurrentRow(0)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.addWidget(self.sidebar)
        layout.addWidget(self.pages, 1)
        self.setCentralWidget(central)
        self.statusBar().showMessage(f"slowtune {__version__} — no project open")


def make_app(argv: Sequence[str]) -> QApplication:
    app = QApplication.instance() or QApplication(list(argv))
    app.setApplicationName("slowtune")
    app.setApplicationVersion(__version__)
    app.setWindowIcon(QIcon(str(resource_path("icons", "slowtune.svg"))))
    return app


def run_app(argv: Sequence[str]) -> int:
    app = make_app(argv)
    window = MainWindow()
    window.show()
    return app.exec()
