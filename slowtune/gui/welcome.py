"""The first-start welcome: what slowtune does, in the order a user will do it, and a first project to start in."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QVBoxLayout, QWidget

from slowtune.gui.projects import check_new_name

STEPS = (
    ("Library", "Drop your documents and folders (PDF, Word, HTML, Markdown, text) on the window. They are read and "
     "split into chunks here on your Mac."),
    ("Providers", "Add a teacher: an API key for a large model, or a local model. Keys stay in the keychain."),
    ("Dataset", "The teacher writes questions and answers grounded in your chunks. You review what it wrote."),
    ("Train", "A small model learns from that data on your Mac, layer by layer if it does not fit in memory."),
    ("Export", "Save the tuned model as a GGUF file, for the chat here and for llama.cpp, Ollama or LM Studio."),
    ("Chat", "Talk to the exported model offline, next to the model it started from."),
)


class WelcomeDialog(QDialog):
    """Shown once, on the first start with no project. Accepting it creates the first project."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Welcome to slowtune")
        self.setObjectName("welcome")
        steps = "".join(f"<li><b>{name}</b> — {text}</li>" for name, text in STEPS)
        self.intro = intro = QLabel(
            "<h2>Welcome to slowtune</h2>"
            "<p>slowtune turns a folder of your documents into a small private model you can chat with offline. "
            "The sidebar takes you through it, top to bottom:</p>"
            f"<ol style='margin-left:-16px'>{steps}</ol>"
            "<p>Everything you make is kept in a <b>project</b>. Name your first one to begin.</p>"
        )
        intro.setWordWrap(True)
        intro.setTextFormat(Qt.TextFormat.RichText)
        self.name = QLineEdit("My documents")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.buttons = QDialogButtonBox()
        self.create_button = self.buttons.addButton("Create Project", QDialogButtonBox.ButtonRole.AcceptRole)
        self.buttons.addButton("Not Now", QDialogButtonBox.ButtonRole.RejectRole)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        form = QFormLayout()
        form.addRow("Project name:", self.name)
        form.addRow("", self.hint)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(560)
        self.name.textChanged.connect(self._validate)
        self._validate()

    def _validate(self) -> None:
        root, hint = check_new_name(self.name.text())
        self.hint.setText(hint)
        self.create_button.setEnabled(root is not None)
