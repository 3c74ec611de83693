"""Pages that are not built yet. Each says what it will do and which command does it today, so a user is never
left at a dead end: the command-line stages work and share the project with the app."""

from __future__ import annotations

import html
import shlex
from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from slowtune.store import Project


@dataclass(frozen=True)
class PlannedPage:
    name: str
    purpose: str
    commands: tuple[str, ...]  # "{project}" stands for the open project's name


PLANNED = (
    PlannedPage("Providers", "Add a teacher: any OpenAI-compatible endpoint (OpenAI, OpenRouter, Groq, a local Ollama "
                "or LM Studio server) or a GGUF model run on this Mac. API keys go to the keychain, nowhere else.",
                ("slowtune provider presets", "slowtune provider add openai --preset openai --model gpt-4o-mini",
                 "slowtune provider test openai")),
    PlannedPage("Dataset", "Have the teacher write grounded questions and answers from your chunks, then review, "
                "accept or reject them before training.",
                ("slowtune generate {project} --provider openai --budget 2", "slowtune dataset report {project}",
                 "slowtune dataset list {project} --status rejected")),
    PlannedPage("Train", "Pick a base model, check that it fits, and train a LoRA adapter with a live loss chart. "
                "Models larger than memory are trained layer by layer from disk.",
                ("slowtune models list", "slowtune models download Qwen/Qwen2.5-0.5B-Instruct",
                 "slowtune train --model Qwen/Qwen2.5-0.5B-Instruct --data {project}")),
    PlannedPage("Chat", "Chat offline with the tuned model beside its base, and score both on held-out questions.",
                ("slowtune chat tuned.gguf --compare base-F16.gguf --project {project}",
                 "slowtune eval {project} --model tuned.gguf --base base-F16.gguf")),
    PlannedPage("Export", "Fuse the adapter into the base model, convert it to GGUF, quantise it, and verify the files "
                "against the trained model. Ollama Modelfile included.",
                ("slowtune export RUN_FOLDER --quant Q4_K_M,Q8_0",)),
)


class PlaceholderPage(QWidget):
    """Names the page, says what it will do, and shows the working commands with the open project filled in."""

    def __init__(self, page: PlannedPage, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.page = page
        self.setObjectName(f"page-{page.name.lower()}")
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setMaximumWidth(760)
        self.label.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        # Commands are meant to be copied into a terminal.
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(24, 16, 24, 16)
        layout.addWidget(self.label)
        layout.addStretch(1)
        self.set_project(None)

    def set_project(self, project: Project | None) -> None:
        name = shlex.quote(project.name) if project is not None else "PROJECT"
        commands = "<br>".join(html.escape(c.format(project=name)) for c in self.page.commands)
        self.label.setText(
            f"<h2>{self.page.name}</h2><p>{html.escape(self.page.purpose)}</p>"
            "<p><i>This page comes in a later version.</i> The same step works today from Terminal:</p>"
            f"<pre style='margin-left:12px'>{commands}</pre>"
            "<p>The commands use the same projects as the app: what they make shows up here.</p>"
        )
