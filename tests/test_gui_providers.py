"""The Providers page, driven as a user would: add a provider with a key, test it against a real HTTP server,
choose it as the teacher, remove it, save a Hugging Face token, and see mistakes in the banner.

Keys are checked to land in the (test) keyring and nowhere else: not in providers.json, not in any widget.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from keyring.errors import PasswordDeleteError, PasswordSetError
from PySide6.QtWidgets import QLabel, QLineEdit

from slowtune import secrets
from slowtune.gui import providers as page_module
from slowtune.gui.app import MainWindow, make_app
from slowtune.gui.providers import ProviderDialog, ProvidersPage
from slowtune.settings import load_settings
from slowtune.teacher import providers as pv
from slowtune.testing.fake_openai import FakeTeacher

TIMEOUT_MS = 15_000


@pytest.fixture
def key() -> str:
    return "sk-test" + pysecrets.token_hex(16)


@pytest.fixture
def teacher(key: str) -> Iterator[FakeTeacher]:
    with FakeTeacher(api_key=key) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _forget_keys() -> Iterator[None]:
    """The test keyring outlives SLOWTUNE_HOME: keys a test left would be "stored" in the next one."""
    yield
    for provider in pv.list_providers():
        secrets.delete_secret(secrets.provider_key_name(provider.id))
    secrets.delete_secret(secrets.HUGGINGFACE)


@pytest.fixture
def window(qtbot) -> Iterator[MainWindow]:
    make_app(["slowtune"])
    win = MainWindow(open_last_project=False)
    qtbot.addWidget(win)
    yield win
    win.runner.cancel_all()
    win.runner.wait_all(5)


@pytest.fixture
def page(window: MainWindow) -> ProvidersPage:
    return window.providers


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    asked: list[str] = []

    def ask(parent: object, title: str, text: str, yes: str) -> bool:
        asked.append(text)
        return True

    monkeypatch.setattr(page_module, "ask", ask)
    return asked


def add_through_dialog(page: ProvidersPage, preset: str, pid: str, *, base_url: str = "", model: str = "",
                       key: str = "", gguf: str = "") -> ProviderDialog:
    dialog = page.add_provider()
    dialog.preset.setCurrentIndex(dialog.preset.findData(preset))
    dialog.provider_id.setText(pid)
    dialog.base_url.setText(base_url)
    dialog.model.setEditText(model)
    dialog.gguf_path.setText(gguf)
    dialog.key.setText(key)
    dialog.ok_button.click()
    return dialog


def widget_texts(page: ProvidersPage) -> str:
    texts = [w.text() for w in page.findChildren(QLabel)] + [w.text() for w in page.findChildren(QLineEdit)]
    for row in range(page.table.rowCount()):
        for column in range(page.table.columnCount()):
            item = page.table.item(row, column)
            texts.append(item.text() if item else "")
    texts.append(page.banner.details.toPlainText())
    return "\n".join(texts)


def window_of(page: ProvidersPage) -> MainWindow:
    window = page.window()
    assert isinstance(window, MainWindow)
    return window


def column(page: ProvidersPage, name: str, row: int = 0) -> str:
    item = page.table.item(row, page.COLUMNS.index(name))
    return item.text() if item else ""


def test_the_page_replaces_the_placeholder_and_explains_teachers(window: MainWindow, page: ProvidersPage) -> None:
    assert window.pages.widget(1) is page and page.objectName() == "page-providers"
    assert page.empty.isVisibleTo(page) and not page.table.isVisibleTo(page)
    assert "teacher" in page.empty.text() and "keychain" in page.empty.text()
    assert "No token" in page.hf_status.text()


def test_a_custom_provider_with_a_key_goes_to_the_keychain_only(
        qtbot, page: ProvidersPage, teacher: FakeTeacher, key: str, slowtune_home: Path) -> None:
    dialog = add_through_dialog(page, "custom", "fake", base_url=teacher.base_url, model="teacher-small", key=key)
    assert dialog.result() == ProviderDialog.DialogCode.Accepted and dialog.key.text() == ""
    assert dialog.key.echoMode() == QLineEdit.EchoMode.Password
    assert secrets.get_secret(secrets.provider_key_name("fake")) == key
    assert key not in pv.registry_file().read_text(encoding="utf-8")
    assert all(key not in p.read_bytes().decode("utf-8", "replace") for p in slowtune_home.rglob("*") if p.is_file())
    assert page.table.rowCount() == 1 and not page.empty.isVisibleTo(page)
    assert column(page, "API key") == "in the keychain"
    assert column(page, "Sends text to").startswith("a server on this machine")
    assert key not in widget_texts(page)

    # Editing shows that a key is stored without showing it; an empty field keeps it.
    page.select("fake")
    edit = page.edit_selected()
    assert edit is not None and edit.key.text() == "" and "stored in the keychain" in edit.key.placeholderText()
    assert edit.provider_id.isReadOnly() and edit.base_url.text() == teacher.base_url
    edit.model.setEditText("judge-small")
    edit.ok_button.click()
    assert pv.get_provider("fake").default_model == "judge-small"
    assert secrets.get_secret(secrets.provider_key_name("fake")) == key

    # Test, off the GUI thread, against a real HTTP server.
    page.select("fake")
    job = page.test_selected()
    assert job is not None and column(page, "Last check") == "Testing…"
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    result = column(page, "Last check")
    assert result.startswith("OK: judge-small available; 2 models: judge-small, teacher-small") and result.endswith(" ms")
    assert key not in widget_texts(page)
    assert window_of(page).statusBar().currentMessage() == "Testing fake: done"

    # Edit offers the models the test found, in a box that still takes a typed name.
    page.select("fake")
    edit = page.edit_selected()
    assert edit is not None and edit.model.isEditable()
    assert [edit.model.itemText(i) for i in range(edit.model.count())] == ["judge-small", "teacher-small"]
    assert edit.model.currentText() == "judge-small"
    edit.model.setEditText("a-name-it-does-not-list")
    edit.ok_button.click()
    assert pv.get_provider("fake").default_model == "a-name-it-does-not-list"
    # So does Add, for the same server under another name.
    add = page.add_provider()
    add.preset.setCurrentIndex(add.preset.findData("custom"))
    add.base_url.setText(teacher.base_url)
    add.base_url.editingFinished.emit()
    assert [add.model.itemText(i) for i in range(add.model.count())] == ["judge-small", "teacher-small"]
    add.reject()


def test_a_wrong_key_is_reported_as_rejected(qtbot, page: ProvidersPage, teacher: FakeTeacher) -> None:
    add_through_dialog(page, "custom", "fake", base_url=teacher.base_url, key="sk-wrong-" + "x" * 20)
    page.select("fake")
    page.test_selected()
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    assert "rejected" in column(page, "Last check")


def test_use_as_teacher_and_remove(page: ProvidersPage, answers: list[str], key: str) -> None:
    add_through_dialog(page, "openai", "openai", model="gpt-4o-mini", key=key)
    assert column(page, "Sends text to") == "api.openai.com"
    page.select("openai")
    page.teacher_button.click()
    settings = load_settings().settings
    assert (settings.teacher_provider, settings.teacher_model) == ("openai", "gpt-4o-mini")
    assert "(teacher)" in column(page, "Provider") and "gpt-4o-mini" in page.teacher_label.text()

    page.select("openai")
    page.remove_button.click()
    assert answers and "openai" in answers[0] and "keychain" in answers[0]
    assert pv.list_providers() == [] and page.table.rowCount() == 0
    assert secrets.get_secret(secrets.provider_key_name("openai")) is None
    settings = load_settings().settings
    assert settings.teacher_provider is None and settings.teacher_model is None


def test_a_gguf_provider_takes_a_file_and_no_key(qtbot, page: ProvidersPage, tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    dialog = add_through_dialog(page, "gguf", "local", gguf=str(model))
    assert not dialog.form.isRowVisible(dialog.key) and dialog.form.isRowVisible(dialog.gguf_row)
    assert pv.get_provider("local").default_model == str(model.resolve())
    assert column(page, "API key") == "not needed"
    page.select("local")
    page.test_selected()
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    assert column(page, "Last check").startswith("OK: tiny.gguf")


def test_mistakes_show_in_the_banner_and_keep_the_dialog_open(page: ProvidersPage, key: str) -> None:
    dialog = add_through_dialog(page, "custom", "?!", base_url="https://example.com/v1", key=key)
    assert dialog.isVisible() and dialog.result() != ProviderDialog.DialogCode.Accepted
    assert page.banner.isVisibleTo(page) and page.banner.level == "error"
    assert "is not valid" in page.banner.text.text() and "is not valid" in dialog.banner.text.text()
    # (An id no other test uses: the test keyring outlives each test's SLOWTUNE_HOME.)
    dialog.provider_id.setText("bad-url-server")
    dialog.base_url.setText("ftp://example.com")
    dialog.ok_button.click()
    assert dialog.isVisible() and "Base URL" in page.banner.text.text()
    assert pv.list_providers() == [] and secrets.get_secret(secrets.provider_key_name("bad-url-server")) is None
    dialog.reject()
    assert dialog.key.text() == ""

    add_through_dialog(page, "openai", "openai", key=key)
    again = add_through_dialog(page, "openai", "openai", key=key)
    assert again.isVisible() and "exists already" in page.banner.text.text()
    again.reject()


def test_a_name_as_a_user_writes_it_becomes_the_providers_id(page: ProvidersPage) -> None:
    dialog = add_through_dialog(page, "custom", "  Local teacher ", base_url="http://127.0.0.1:9/v1")
    assert dialog.result() == ProviderDialog.DialogCode.Accepted, dialog.banner.text.text()
    assert [p.id for p in pv.list_providers()] == ["local-teacher"]
    assert pv.id_from_name("Mistral (work) · EU") == "mistral-work-eu" and pv.id_from_name("?!") == "?!"


class RefusingKeyring(KeyringBackend):
    """A keyring backend whose set_password raises, as a locked or broken keychain does."""

    priority = 1  # type: ignore[assignment]

    def get_password(self, service: str, username: str) -> str | None:
        return None

    def set_password(self, service: str, username: str, password: str) -> None:
        raise PasswordSetError("the keychain is locked")

    def delete_password(self, service: str, username: str) -> None:
        raise PasswordDeleteError("nothing stored")


@pytest.mark.parametrize("backend", ["refusing", "none"])
def test_a_key_the_keychain_cannot_store_saves_nothing_and_says_why(
        page: ProvidersPage, key: str, backend: str) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(RefusingKeyring() if backend == "refusing" else fail.Keyring())
    try:
        dialog = add_through_dialog(page, "custom", "srv", base_url="http://127.0.0.1:9/v1", key=key)
    finally:
        keyring.set_keyring(previous)
    # Not half-saved: the dialog stays open with what was typed, and nothing is in the list.
    assert dialog.isVisible() and dialog.result() != ProviderDialog.DialogCode.Accepted
    assert pv.list_providers() == [] and page.table.rowCount() == 0
    said = dialog.banner.text.text()
    assert "could not be stored in the keychain" in said or "refused to store the key" in said
    assert "nothing was saved" in said and "empty the API key field" in said  # the custom preset's key is optional
    assert "SLOWTUNE_KEY" not in said and "export" not in said and "`" not in said
    assert key not in said + page.banner.text.text() and dialog.key.text() == key  # kept, masked, to try again
    dialog.reject()


def test_an_optional_key_left_empty_never_blocks_the_test(qtbot, window: MainWindow, page: ProvidersPage) -> None:
    with FakeTeacher(api_key=None) as open_server:  # a server that wants no key
        add_through_dialog(page, "custom", "open", base_url=open_server.base_url)
        assert column(page, "API key") == "none (optional)"
        page.select("open")
        page.test_selected()
        qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
        assert column(page, "Last check").startswith("OK: 2 models: judge-small, teacher-small")


def test_the_status_bar_says_a_failed_test_failed(qtbot, window: MainWindow, page: ProvidersPage,
                                                  teacher: FakeTeacher) -> None:
    add_through_dialog(page, "custom", "fake", base_url=teacher.base_url, key="sk-wrong-" + "x" * 20)
    page.select("fake")
    page.test_selected()
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    message = window.statusBar().currentMessage()
    assert message.startswith("Testing fake: failed") and "rejected" in message and "done" not in message


def test_a_missing_required_key_is_worded_for_the_app(qtbot, page: ProvidersPage) -> None:
    add_through_dialog(page, "openai", "oa")
    page.select("oa")
    page.test_selected()
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    assert column(page, "Last check") == "No API key: click Edit… and paste the key."


def test_the_hugging_face_token_is_saved_masked_and_forgotten(page: ProvidersPage) -> None:
    token = "hf_" + pysecrets.token_hex(16)
    assert page.hf_token.echoMode() == QLineEdit.EchoMode.Password
    page.hf_token.setText(token)
    page.hf_save.click()
    assert secrets.get_secret(secrets.HUGGINGFACE) == token
    assert secrets.secret_source(secrets.HUGGINGFACE) == "keychain"
    assert "stored in the keychain" in page.hf_status.text() and page.hf_token.text() == ""
    assert token not in widget_texts(page)
    page.hf_forget.click()
    assert secrets.get_secret(secrets.HUGGINGFACE) is None and "No token" in page.hf_status.text()
