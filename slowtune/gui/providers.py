"""The Providers page: the teachers (OpenAI-compatible endpoints or a local GGUF) and the Hugging Face token.

Everything here is a thin view over ``slowtune.teacher.providers`` and ``slowtune.secrets``: the registry, the
keychain and the check live in the core, shared with ``slowtune provider ...``. Keys go from a masked field
straight to the keychain and are never read back into a widget; the table shows only where a key comes from.
A check talks to the network, so it runs in a ``Job`` and its result lands in the provider's row.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Callable
from functools import partial

from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from slowtune import secrets
from slowtune.gui.page import Page
from slowtune.gui.widgets import MessageBanner
from slowtune.gui.widgets import ask_yes as ask  # module-level name: tests answer it
from slowtune.gui.workers import Job, JobRunner
from slowtune.progress import Progress
from slowtune.settings import Settings
from slowtune.teacher import providers as pv

EMPTY_TEXT = (
    "<h3>No teacher yet</h3>"
    "<p>A <b>teacher</b> is a large model that reads your documents and writes the questions and answers your "
    "small model is trained on. It can be a service (OpenAI, OpenRouter, Groq, …), a server on this computer "
    "(Ollama, LM Studio, llama.cpp) or a GGUF model file run inside slowtune.</p>"
    "<p>Click <b>Add Provider…</b> to add one. API keys are saved in the system keychain, never in slowtune's "
    "files, and are not shown again once saved.</p>"
)
KEY_STATUS_TEXT = {"keychain": "in the keychain", "environment": "from the environment", "missing": "missing",
                   "optional": "none (optional)", "not needed": "not needed"}
NO_KEY_TEXT = "No API key: click Edit… and paste the key."
NO_KEYCHAIN_TEXT = (
    "The key could not be stored in the keychain, because this computer has no keychain slowtune can use, so "
    "nothing was saved. Set up the system keychain (on Linux: GNOME Keyring or KWallet) and click OK again{optional}.")
KEYCHAIN_REFUSED_TEXT = (
    "The keychain refused to store the key, so nothing was saved. Unlock the keychain (or allow slowtune to use "
    "it when asked) and click OK again{optional}.")
OPTIONAL_KEY_TEXT = "; or, if this server needs no key, empty the API key field"


def check_text(check: pv.ProviderCheck) -> str:
    """A check's result in the app's words: the core's message for a missing key names a command-line way."""
    if check.status != "no_key":
        return check.message
    if "asks for an API key" in check.message:
        return "The server asks for an API key: click Edit… and paste it."
    return NO_KEY_TEXT


def keychain_problem(exc: pv.KeyNotStoredError, preset: pv.Preset) -> str:
    """Why the key was not stored and what to do, in words (no environment variables, no commands)."""
    optional = OPTIONAL_KEY_TEXT if not preset.needs_key else ""
    return (NO_KEYCHAIN_TEXT if exc.no_keychain else KEYCHAIN_REFUSED_TEXT).format(optional=optional)


def fill_models(combo: QComboBox, models: list[str], current: str | None = None) -> None:
    """An editable combo box of model names: the names the provider listed, and whatever the user types."""
    text = combo.currentText() if current is None else current
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(models)
    combo.setEditText(text)
    combo.blockSignals(False)


def model_combo(placeholder: str) -> QComboBox:
    combo = QComboBox()
    combo.setEditable(True)  # a name the list does not have (or a server that lists none) can be typed
    combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
    combo.lineEdit().setPlaceholderText(placeholder)
    return combo
CHECK_COLORS = {"ok": "#2f9e44", "running": "#868e96"}  # anything else failed: red
FAILED_COLOR = "#e03131"
GGUF_FILTER = "GGUF models (*.gguf);;All files (*)"




def hint_html(preset: pv.Preset) -> str:
    """What the dialog says under the fields: where to get a key (a link), where the text goes, where the key goes."""
    hint = preset.key_hint
    if hint.startswith(("https://", "http://")):
        text = f"Get a key at <a href='{html.escape(hint, quote=True)}'>{html.escape(hint)}</a>."
    elif preset.local:
        text = html.escape(hint[:1].upper() + hint[1:]) + "."
    else:
        text = f"Where to get a key: {html.escape(hint)}."
    if preset.base_url and not preset.local:
        text += f" Sends document text to {html.escape(preset.base_url)}."
    if not preset.local:
        text += " The key is saved in the keychain and not shown again."
    return text


class ProviderDialog(QDialog):
    """Add or edit one provider. ``save`` is called on OK; the dialog closes only when it returns True, so a
    mistake (a bad URL, an id in use) can be fixed without typing everything again."""

    def __init__(self, save: Callable[[ProviderDialog], bool], existing: pv.Provider | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.existing = existing
        self._save = save
        self.setWindowTitle("Edit Provider" if existing else "Add Provider")
        self.setMinimumWidth(520)
        self.banner = MessageBanner()
        self.preset = QComboBox()
        for preset in pv.PRESETS.values():
            self.preset.addItem(preset.name, preset.id)
        self.provider_id = QLineEdit()
        self.provider_id.setPlaceholderText("a short name, e.g. openai or my-server")
        self.base_url = QLineEdit()
        self.base_url.setPlaceholderText("https://host/v1")
        # Test is on the page, not in this dialog: the hint says when the list comes.
        self.model = model_combo("e.g. gpt-4o-mini (optional; once added, Test lists the server's models)"
                                 if existing is None else "e.g. gpt-4o-mini (optional; Test lists the server's models)")
        self.gguf_path = QLineEdit()
        self.gguf_path.setPlaceholderText("/path/to/model.gguf")
        browse = QPushButton("Choose…")
        browse.clicked.connect(self.choose_gguf)
        self.gguf_row = QWidget()
        gguf_layout = QHBoxLayout(self.gguf_row)
        gguf_layout.setContentsMargins(0, 0, 0, 0)
        gguf_layout.addWidget(self.gguf_path, 1)
        gguf_layout.addWidget(browse)
        self.key = QLineEdit()
        self.key.setEchoMode(QLineEdit.EchoMode.Password)  # shoulder-surfing and screen sharing
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setTextFormat(Qt.TextFormat.RichText)
        self.hint.setOpenExternalLinks(True)
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)

        self.form = QFormLayout()
        self.form.addRow("Service:", self.preset)
        self.form.addRow("Name:", self.provider_id)
        self.form.addRow("Base URL:", self.base_url)
        self.form.addRow("Default model:", self.model)
        self.form.addRow("Model file:", self.gguf_row)
        self.form.addRow("API key:", self.key)
        self.form.addRow(self.hint)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.banner)
        layout.addLayout(self.form)
        layout.addWidget(buttons)

        if existing is not None:
            self.preset.setCurrentIndex(self.preset.findData(existing.preset))
            self.provider_id.setText(existing.id)
            self.provider_id.setReadOnly(True)  # the id names the keychain entry; a new id is a new provider
            preset = pv.PRESETS[existing.preset]
            if existing.in_process:
                self.gguf_path.setText(existing.default_model or "")
            else:
                fill_models(self.model, pv.known_models(existing), existing.default_model or "")
                # Only a URL the user typed is shown: the preset's own URL follows the preset.
                if existing.base_url and existing.base_url != preset.base_url:
                    self.base_url.setText(existing.base_url)
        else:
            self.provider_id.setText(self.preset_id)
        self._last_preset = self.preset_id
        self.preset.currentIndexChanged.connect(self._preset_changed)
        self.base_url.editingFinished.connect(self._offer_known_models)
        if existing is None:
            self._offer_known_models()
        self._update_fields()

    @property
    def preset_id(self) -> str:
        return str(self.preset.currentData())

    def _preset_changed(self) -> None:
        # A name that was just the previous preset's id follows the preset; one the user typed stays.
        if self.existing is None and self.provider_id.text().strip() in ("", self._last_preset):
            self.provider_id.setText(self.preset_id)
        self._last_preset = self.preset_id
        self._offer_known_models()
        self._update_fields()

    def _offer_known_models(self) -> None:
        """The models a test of this server found before (the same URL under any name), in the model box."""
        preset = pv.PRESETS[self.preset_id]
        url = self.base_url.text().strip() or preset.base_url
        if preset.id == "gguf" or not url:
            return
        probe = pv.Provider(id="new", preset=preset.id, base_url=url.rstrip("/"), default_model=None,
                            needs_key=False, added_at="")
        fill_models(self.model, pv.known_models(probe))

    def _update_fields(self) -> None:
        preset = pv.PRESETS[self.preset_id]
        gguf = preset.id == "gguf"
        self.form.setRowVisible(self.base_url, preset.id == "custom")
        self.form.setRowVisible(self.model, not gguf)
        self.form.setRowVisible(self.gguf_row, gguf)
        # Local servers take no key; a custom server may or may not want one.
        self.form.setRowVisible(self.key, not gguf and not preset.local)
        stored = self.existing is not None and pv.key_status(self.existing) == "keychain"
        if stored:
            self.key.setPlaceholderText("stored in the keychain; leave empty to keep it")
        else:
            self.key.setPlaceholderText("paste the key" if preset.needs_key else "optional")
        self.hint.setText(hint_html(preset))
        if self.isVisible():
            # Rows appeared or went, and the hint may wrap to more lines: grow (or shrink) to fit, not clip.
            QTimer.singleShot(0, self, self._fit_height)

    def _fit_height(self) -> None:
        self.resize(self.width(), max(self.minimumSizeHint().height(), self.heightForWidth(self.width()),
                                      self.sizeHint().height()))

    def choose_gguf(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF model", "", GGUF_FILTER)
        if path:
            self.gguf_path.setText(path)

    def values(self) -> dict[str, str | None]:
        """What add_provider takes; empty fields are None (an empty key means "keep the stored one")."""
        gguf = self.preset_id == "gguf"
        key = self.key.text().strip() if self.form.isRowVisible(self.key) else ""
        return {
            "provider_id": pv.id_from_name(self.provider_id.text()),  # "Local teacher" is local-teacher
            "preset": self.preset_id,
            "base_url": (self.base_url.text().strip() or None) if self.preset_id == "custom" else None,
            "model": (self.gguf_path.text().strip() if gguf else self.model.currentText().strip()) or None,
            "key": key or None,
        }

    def show_error(self, message: str) -> None:
        self.banner.show_message(message, level="error")

    def show_models(self, models: list[str]) -> None:
        """The models a test of this provider found, offered in the model box (what is typed there stays)."""
        fill_models(self.model, models)

    def accept(self) -> None:
        if self._save(self):
            self.key.clear()  # the key is in the keychain now; it does not linger in a widget
            super().accept()

    def reject(self) -> None:
        self.key.clear()
        super().reject()


class ProvidersPage(Page):
    """The teachers, what each costs in trust (where text goes, where the key is), and a check for each."""

    COLUMNS = ("Provider", "Service", "Sends text to", "Default model", "API key", "Last check")

    def __init__(self, runner: JobRunner, settings: Callable[[], Settings],
                 update_settings: Callable[[Callable[[Settings], None]], None], parent: QWidget | None = None) -> None:
        super().__init__("providers", runner, settings, parent)
        self._update_settings = update_settings
        self.providers: list[pv.Provider] = []
        self.checks: dict[str, tuple[str, str]] = {}  # provider id -> (status, message) of its last check
        self.jobs: dict[str, Job] = {}  # running checks, by provider id (kept referenced until done)
        self.dialog: ProviderDialog | None = None

        title = QLabel("<h2>Providers</h2>")
        self.empty = QLabel(EMPTY_TEXT)
        self.empty.setWordWrap(True)
        self.empty.setMaximumWidth(760)
        self.teacher_label = QLabel()
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.itemDoubleClicked.connect(lambda _item: self.edit_selected())

        self.add_button = QPushButton("Add Provider…")
        self.add_button.clicked.connect(self.add_provider)
        self.edit_button = QPushButton("Edit…")
        self.edit_button.clicked.connect(self.edit_selected)
        self.test_button = QPushButton("Test")
        self.test_button.setToolTip("Ask the provider, with this key, whether it answers and has the default model")
        self.test_button.clicked.connect(self.test_selected)
        self.teacher_button = QPushButton("Use as Teacher")
        self.teacher_button.clicked.connect(self.use_selected_as_teacher)
        self.remove_button = QPushButton("Remove…")
        self.remove_button.clicked.connect(self.remove_selected)
        buttons = QHBoxLayout()
        for button in (self.add_button, self.edit_button, self.test_button, self.teacher_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.remove_button)

        # --- the Hugging Face token (for gated base models) -------------------------------------------
        hub = QGroupBox("Hugging Face")
        self.hf_token = QLineEdit()
        self.hf_token.setEchoMode(QLineEdit.EchoMode.Password)
        self.hf_token.setPlaceholderText("hf_… (needed only for gated models such as Llama)")
        self.hf_save = QPushButton("Save Token")
        self.hf_save.clicked.connect(self.save_hf_token)
        self.hf_forget = QPushButton("Forget")
        self.hf_forget.clicked.connect(self.forget_hf_token)
        self.hf_status = QLabel()
        hub_row = QHBoxLayout()
        hub_row.addWidget(self.hf_token, 1)
        hub_row.addWidget(self.hf_save)
        hub_row.addWidget(self.hf_forget)
        hub_layout = QVBoxLayout(hub)
        hub_layout.addLayout(hub_row)
        hub_layout.addWidget(self.hf_status)

        layout = self.page_layout()
        layout.addWidget(self.banner)
        layout.addWidget(title)
        layout.addWidget(self.empty)
        layout.addWidget(self.teacher_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        layout.addWidget(hub)
        # Without providers the table is hidden; this spacer then takes the spare height, so the title, the text
        # and the Hugging Face box keep their natural size at the top instead of spreading over the page.
        layout.addStretch(0)
        self._layout = layout
        self._spacer_index = layout.count() - 1
        for widget in (title, self.empty, self.teacher_label, hub):
            widget.setSizePolicy(widget.sizePolicy().horizontalPolicy(), QSizePolicy.Policy.Maximum)
        self.refresh()

    # --- showing ---------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """The providers and their checks (also when shown: `slowtune provider add` may have changed the list while
        the page was hidden)."""
        loaded = pv.load_providers()
        if loaded.warnings:
            self.banner.show_message("The provider list could not be read completely.", level="warning",
                                     details="\n".join(loaded.warnings))
        selected = self.selected_id()
        self.providers = loaded.providers
        self.checks = {k: v for k, v in self.checks.items() if any(p.id == k for p in self.providers)}
        settings = self._settings()
        self.table.setRowCount(len(self.providers))
        for row, provider in enumerate(self.providers):
            name = provider.id + ("  (teacher)" if provider.id == settings.teacher_provider else "")
            status, message = self.checks.get(provider.id, ("", ""))
            cells = (name, pv.PRESETS[provider.preset].name, pv.destination(provider),
                     provider.default_model or "", KEY_STATUS_TEXT.get(pv.key_status(provider), ""), message)
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(Qt.ItemDataRole.UserRole, provider.id)
                item.setToolTip(text)
                if column == len(cells) - 1 and status:
                    item.setForeground(QColor(CHECK_COLORS.get(status, FAILED_COLOR)))
                self.table.setItem(row, column, item)
            if provider.id == selected:
                self.table.selectRow(row)
        has_any = bool(self.providers)
        self.empty.setVisible(not has_any)
        self.table.setVisible(has_any)
        self._layout.setStretch(self._spacer_index, 0 if has_any else 1)
        teacher = settings.teacher_provider
        self.teacher_label.setText(
            f"Teacher: <b>{html.escape(teacher)}</b>"
            + (f", model <b>{html.escape(settings.teacher_model)}</b>" if settings.teacher_model else "")
            if teacher else "No teacher chosen: select a provider and click Use as Teacher.")
        self.teacher_label.setVisible(has_any)
        self._show_hf_status()
        self._update_buttons()

    def _show_hf_status(self) -> None:
        source = secrets.secret_source(secrets.HUGGINGFACE)
        env_var = secrets.env_var_for(secrets.HUGGINGFACE)
        self.hf_status.setText({
            "keychain": "A token is stored in the keychain.",
            "environment": f"A token comes from {env_var} for this run.",
        }.get(source or "", "No token: public models download without one."))
        self.hf_forget.setEnabled(source == "keychain")

    def _update_buttons(self) -> None:
        provider = self.selected()
        for button in (self.edit_button, self.test_button, self.teacher_button, self.remove_button):
            button.setEnabled(provider is not None)
        if provider is not None:
            self.test_button.setEnabled(provider.id not in self.jobs)

    def command_line(self) -> str | None:
        """Testing the selected provider, as a ``slowtune provider test`` command line (Copy as Command)."""
        provider = self.selected()
        return shlex.join(["slowtune", "provider", "test", provider.id]) if provider is not None else None

    def selected_id(self) -> str | None:
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return str(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def selected(self) -> pv.Provider | None:
        pid = self.selected_id()
        return next((p for p in self.providers if p.id == pid), None)

    def select(self, provider_id: str) -> None:
        for row, provider in enumerate(self.providers):
            if provider.id == provider_id:
                self.table.selectRow(row)

    # --- adding and editing ------------------------------------------------------------------------------
    def add_provider(self) -> ProviderDialog:
        return self._open_dialog(None)

    def edit_selected(self) -> ProviderDialog | None:
        provider = self.selected()
        return self._open_dialog(provider) if provider is not None else None

    def _open_dialog(self, existing: pv.Provider | None) -> ProviderDialog:
        dialog = ProviderDialog(self._save_dialog, existing, self)
        dialog.finished.connect(dialog.deleteLater)
        dialog.finished.connect(lambda _code: setattr(self, "dialog", None) if self.dialog is dialog else None)
        self.dialog = dialog
        dialog.open()  # window-modal and non-blocking, as the welcome dialog
        return dialog

    def _save_dialog(self, dialog: ProviderDialog) -> bool:
        values = dialog.values()
        pid = values["provider_id"] or ""
        try:
            pv.add_provider(pid, values["preset"] or "", base_url=values["base_url"], model=values["model"],
                            key=values["key"], replace=dialog.existing is not None)
        except pv.KeyNotStoredError as exc:
            # Nothing was saved: the dialog stays open with what was typed (the key too), and says why.
            message = keychain_problem(exc, pv.PRESETS[values["preset"] or "custom"])
            dialog.show_error(message)
            self.banner.show_message(message, level="error")
            return False
        except pv.ProviderError as exc:
            dialog.show_error(str(exc))
            self.banner.show_message(str(exc), level="error")
            return False
        self.checks.pop(pid, None)  # an old check says nothing about a changed key or URL
        self.banner.clear()
        self.refresh()
        self.select(pid)
        return True

    # --- checking ----------------------------------------------------------------------------------------
    def page_jobs(self) -> list[Job]:
        return list(self.jobs.values())

    def test_selected(self) -> Job | None:
        provider = self.selected()
        if provider is None or provider.id in self.jobs:
            return None
        model = provider.default_model

        def run(progress: Progress) -> pv.ProviderCheck:
            return pv.check_provider(provider, model)

        # Its own key: a check may run while a project's long job does, and never blocks one.
        job = Job(f"Testing {provider.id}", run, key=f"provider-check:{provider.id}")
        self.jobs[provider.id] = job
        self.checks[provider.id] = ("running", "Testing…")
        if not self.start_job(job, finished=partial(self._check_finished, provider.id, job),
                              failed=partial(self._check_failed, provider.id),
                              done=partial(self._check_done, provider.id)):
            del self.jobs[provider.id]
            self.checks.pop(provider.id, None)
        self.refresh()
        return job

    def _check_finished(self, provider_id: str, job: Job, check: object) -> None:
        if isinstance(check, pv.ProviderCheck):
            text = check_text(check)
            self.checks[provider_id] = (check.status, text)
            if not check.ok:
                job.failure = text  # the status bar says the test failed, not that it is done
            dialog = self.dialog
            if check.models and dialog is not None and dialog.existing is not None \
                    and dialog.existing.id == provider_id and dialog.isVisible():
                dialog.show_models(check.models)

    def _check_failed(self, provider_id: str, message: str, details: str) -> None:
        self.checks[provider_id] = ("error", message)
        self.banner.show_message(f"The check of {provider_id} failed: {message}", level="error", details=details)

    def _check_done(self, provider_id: str) -> None:
        self.jobs.pop(provider_id, None)
        if self.checks.get(provider_id, ("",))[0] == "running":  # cancelled
            self.checks.pop(provider_id, None)
        self.refresh()

    # --- teacher and removal -----------------------------------------------------------------------------
    def use_selected_as_teacher(self) -> None:
        provider = self.selected()
        if provider is None:
            return

        def change(settings: Settings) -> None:
            settings.teacher_provider = provider.id
            settings.teacher_model = provider.default_model

        self._update_settings(change)
        if provider.default_model:
            self.banner.show_message(f"{provider.id} is the teacher now, with {provider.default_model}.")
        else:
            self.banner.show_message(f"{provider.id} is the teacher now. It has no default model: edit it and "
                                     "give one, or generation will ask for a model.", level="warning")
        self.refresh()

    def remove_selected(self) -> None:
        provider = self.selected()
        if provider is None:
            return
        key_note = " and its key in the keychain" if pv.key_status(provider) == "keychain" else ""
        if not ask(self, "Remove Provider", f"Remove the provider “{provider.id}”{key_note}?", "Remove"):
            return
        try:
            pv.remove_provider(provider.id)
        except pv.ProviderError as exc:
            self.banner.show_message(str(exc), level="error")
            self.refresh()
            return
        if self._settings().teacher_provider == provider.id:
            # The settings would otherwise name a teacher that no longer exists.
            def change(settings: Settings) -> None:
                settings.teacher_provider = None
                settings.teacher_model = None

            self._update_settings(change)
        self.checks.pop(provider.id, None)
        self.banner.show_message(f"Removed {provider.id}.")
        self.refresh()

    # --- Hugging Face ------------------------------------------------------------------------------------
    def save_hf_token(self) -> None:
        token = self.hf_token.text().strip()
        if not token:
            self.banner.show_message("Paste a Hugging Face token first (from huggingface.co/settings/tokens).",
                                     level="warning")
            return
        try:
            secrets.set_secret(secrets.HUGGINGFACE, token)
        except secrets.SecretsError as exc:
            self.banner.show_message(str(exc), level="error")
            return
        finally:
            self.hf_token.clear()  # saved or not, the token does not stay on screen
        self.banner.show_message("The Hugging Face token is saved in the keychain.")
        self._show_hf_status()

    def forget_hf_token(self) -> None:
        secrets.delete_secret(secrets.HUGGINGFACE)
        self.banner.show_message("The Hugging Face token was removed from the keychain.")
        self._show_hf_status()
