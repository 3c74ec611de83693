"""Preferences (Cmd+,): a small form over the fields of ``slowtune.settings.Settings`` that the app uses so far.

Each field's ``help`` metadata becomes its tooltip, so the dataclass stays the one place that describes a setting.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from slowtune.settings import Settings

_HELP = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(Settings)}


def _spin(minimum: int, maximum: int, value: int, suffix: str, field: str) -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setValue(value)
    box.setSuffix(suffix)
    box.setToolTip(_HELP[field].capitalize())
    box.setObjectName(field)
    return box


class PreferencesDialog(QDialog):
    """Edits a copy of the settings; ``values()`` gives the changed fields for the window to save."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        # Same limits as `slowtune ingest` checks: chunks of at least 32 tokens, overlap smaller than a chunk.
        self.chunk_tokens = _spin(32, 8192, settings.chunk_tokens, " tokens", "chunk_tokens")
        self.chunk_overlap = _spin(0, 8191, settings.chunk_overlap, " tokens", "chunk_overlap")
        self.max_file_mb = _spin(1, 100_000, settings.max_file_mb, " MB", "max_file_mb")
        self.confirm_before_upload = QCheckBox("Ask before document text is sent to a teacher")
        self.confirm_before_upload.setChecked(settings.confirm_before_upload)
        self.confirm_before_upload.setToolTip(_HELP["confirm_before_upload"].capitalize())
        self.chunk_tokens.valueChanged.connect(self._limit_overlap)
        self._limit_overlap()

        documents = QGroupBox("Documents")
        form = QFormLayout(documents)
        form.addRow("Chunk size:", self.chunk_tokens)
        form.addRow("Overlap between chunks:", self.chunk_overlap)
        form.addRow("Skip files larger than:", self.max_file_mb)
        note = QLabel("New chunk sizes apply to documents added or changed from now on.")
        note.setWordWrap(True)
        form.addRow(note)
        teacher = QGroupBox("Teacher")
        teacher_layout = QVBoxLayout(teacher)
        teacher_layout.addWidget(self.confirm_before_upload)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(documents)
        layout.addWidget(teacher)
        layout.addWidget(buttons)

    def _limit_overlap(self) -> None:
        self.chunk_overlap.setMaximum(self.chunk_tokens.value() - 1)

    def values(self) -> dict[str, int | bool]:
        return {
            "chunk_tokens": self.chunk_tokens.value(),
            "chunk_overlap": self.chunk_overlap.value(),
            "max_file_mb": self.max_file_mb.value(),
            "confirm_before_upload": self.confirm_before_upload.isChecked(),
        }
