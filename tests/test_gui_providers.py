"""The Providers page, driven as a user would: add a provider with a key, test it against a real HTTP server,
choose it as the teacher, remove it, save a Hugging Face token, and see mistakes in the banner.

Keys are checked to land in the (test) keyring and nowhere else: not in providers.json, not in any widget.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    dialog.model.setText(model)
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
    edit.model.setText("judge-small")
    edit.ok_button.click()
    assert pv.get_provider("fake").default_model == "judge-small"
    assert secrets.get_secret(secrets.provider_key_name("fake")) == key

    # Test, off the GUI thread, against a real HTTP server.
    page.select("fake")
    job = page.test_selected()
    assert job is not None and column(page, "Last check") == "Testing…"
    qtbot.waitUntil(lambda: not page.jobs, timeout=TIMEOUT_MS)
    result = column(page, "Last check")
    assert result.startswith("OK: 2 models (judge-small available)") and result.endswith(" ms")
    assert key not in widget_texts(page)


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
    dialog = add_through_dialog(page, "custom", "Bad Id!", base_url="https://example.com/v1", key=key)
    assert dialog.isVisible() and dialog.result() != ProviderDialog.DialogCode.Accepted
    assert page.banner.isVisibleTo(page) and page.banner.level == "error"
    assert "is not valid" in page.banner.text.text() and "is not valid" in dialog.banner.text.text()
    dialog.provider_id.setText("mine")
    dialog.base_url.setText("ftp://example.com")
    dialog.ok_button.click()
    assert dialog.isVisible() and "Base URL" in page.banner.text.text()
    assert pv.list_providers() == [] and secrets.get_secret(secrets.provider_key_name("mine")) is None
    dialog.reject()
    assert dialog.key.text() == ""

    add_through_dialog(page, "openai", "openai", key=key)
    again = add_through_dialog(page, "openai", "openai", key=key)
    assert again.isVisible() and "exists already" in page.banner.text.text()
    again.reject()


def test_a_key_the_keychain_refuses_is_a_warning_not_a_traceback(
        page: ProvidersPage, key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(name: str, value: str) -> None:
        raise secrets.NoKeychainError(f"Cannot save the key for {name}: no keychain.")

    monkeypatch.setattr(secrets, "set_secret", refuse)
    dialog = add_through_dialog(page, "openai", "no-keychain", key=key)
    assert dialog.result() == ProviderDialog.DialogCode.Accepted  # the provider itself was saved
    assert page.banner.level == "warning" and "SLOWTUNE_KEY_PROVIDER_NO_KEYCHAIN" in page.banner.text.text()
    assert column(page, "API key") == "missing" and key not in widget_texts(page)


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
