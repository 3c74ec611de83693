"""API keys and tokens: the only module that reads or writes them.

Keys live in the OS keychain through ``keyring`` (service name ``slowtune``), never in settings, the project
store, logs or exceptions. Names are ``provider:<id>`` for a teacher's API key and ``huggingface`` for the
Hugging Face token used for gated models.

keyring picks the best backend it finds. On a machine without an OS keychain it may pick a plain-text file
backend (``keyrings.alt``) or the "fail" backend; slowtune accepts a non-keychain backend only when the user
chose it explicitly (``PYTHON_KEYRING_BACKEND`` or keyring's own config file). Otherwise it says there is no
keychain and takes the key from an environment variable for that run: ``SLOWTUNE_KEY_<NAME>`` with the name
upper-cased and non-alphanumerics as ``_`` (``SLOWTUNE_KEY_PROVIDER_OPENAI``, ``SLOWTUNE_KEY_HUGGINGFACE``).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

SERVICE = "slowtune"
HUGGINGFACE = "huggingface"

# Backends that keep secrets encrypted by the operating system.
_OS_KEYCHAINS = (
    "keyring.backends.macOS",
    "keyring.backends.SecretService",
    "keyring.backends.kwallet",
    "keyring.backends.Windows",
    "keyring.backends.libsecret",
)

_known: set[str] = set()
_known_lock = threading.Lock()


class SecretsError(RuntimeError):
    """A key could not be stored or read. The message never contains the key."""


class NoKeychainError(SecretsError):
    pass


def provider_key_name(provider_id: str) -> str:
    return f"provider:{provider_id}"


def env_var_for(name: str) -> str:
    return "SLOWTUNE_KEY_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def remember_secret(value: str) -> None:
    """Register a secret value so that log output redacts it wherever it appears."""
    if value and len(value) >= 6:
        with _known_lock:
            _known.add(value)


def known_secrets() -> frozenset[str]:
    with _known_lock:
        return frozenset(_known)


@dataclass(frozen=True)
class BackendInfo:
    name: str  # e.g. "keyring.backends.macOS.Keyring"
    usable: bool  # slowtune will store keys with it
    os_keychain: bool  # encrypted by the OS
    explicit: bool  # the user chose it (PYTHON_KEYRING_BACKEND or keyringrc)
    note: str


def _explicitly_configured() -> bool:
    if os.environ.get("PYTHON_KEYRING_BACKEND"):
        return True
    try:
        from keyring.util import platform_

        return (platform_.config_root() / "keyringrc.cfg").exists()
    except Exception:
        return False


def _backend():
    import keyring

    return keyring.get_keyring()


def _backend_names(backend) -> list[str]:
    from keyring.backends import chainer

    parts = backend.backends if isinstance(backend, chainer.ChainerBackend) else [backend]
    return [f"{type(b).__module__}.{type(b).__name__}" for b in parts]


def backend_info() -> BackendInfo:
    try:
        backend = _backend()
    except Exception as exc:  # e.g. PYTHON_KEYRING_BACKEND names a module that is not installed
        return BackendInfo(
            "unavailable", False, False, _explicitly_configured(),
            f"The keychain backend could not be loaded ({type(exc).__name__}: {exc}); check "
            "PYTHON_KEYRING_BACKEND or keyringrc.cfg. Keys cannot be saved; set them for one run through "
            "SLOWTUNE_KEY_<NAME> environment variables.",
        )
    names = _backend_names(backend)
    name = " + ".join(names) if names else "none"
    explicit = _explicitly_configured()
    os_keychain = bool(names) and all(n.startswith(_OS_KEYCHAINS) for n in names)
    failing = not names or any(n.startswith("keyring.backends.fail") for n in names)
    if failing:
        return BackendInfo(
            name, False, False, explicit,
            "No OS keychain was found. Keys cannot be saved; set them for one run through "
            "SLOWTUNE_KEY_<NAME> environment variables.",
        )
    if os_keychain:
        return BackendInfo(name, True, True, explicit, "OS keychain")
    if explicit:
        return BackendInfo(
            name, True, False, True,
            "Chosen through PYTHON_KEYRING_BACKEND or keyringrc.cfg; not an OS keychain (keys may be stored "
            "unencrypted).",
        )
    return BackendInfo(
        name, False, False, False,
        "No OS keychain was found (only a non-keychain backend, which slowtune does not use unless chosen "
        "explicitly). Set keys for one run through SLOWTUNE_KEY_<NAME> environment variables.",
    )


def set_secret(name: str, value: str) -> None:
    """Store ``value`` under ``name`` in the keychain."""
    if not value or not value.strip():
        raise SecretsError(f"The key for {name} is empty; nothing was saved.")
    value = value.strip()
    info = backend_info()
    if not info.usable:
        raise NoKeychainError(f"Cannot save the key for {name}: {info.note}")
    import keyring
    from keyring.errors import KeyringError

    remember_secret(value)
    try:
        keyring.set_password(SERVICE, name, value)
    except KeyringError as exc:
        # The backend's message could echo its input; name the type only.
        raise SecretsError(f"The keychain refused to save the key for {name} ({type(exc).__name__}).") from None


def get_secret(name: str) -> str | None:
    """The key stored under ``name``, the ``SLOWTUNE_KEY_<NAME>`` variable, or None."""
    env_value = os.environ.get(env_var_for(name), "").strip()
    value: str | None = None
    info = backend_info()
    if info.usable:
        import keyring
        from keyring.errors import KeyringError

        try:
            value = keyring.get_password(SERVICE, name)
        except KeyringError as exc:
            raise SecretsError(f"The keychain could not read the key for {name} ({type(exc).__name__}).") from None
    value = value or env_value or None
    if value:
        remember_secret(value)
    return value


def secret_source(name: str) -> str | None:
    """Where the key for ``name`` would come from: "keychain", "environment" or None. Reads no value out."""
    info = backend_info()
    if info.usable:
        import keyring

        if keyring.get_password(SERVICE, name):
            return "keychain"
    if os.environ.get(env_var_for(name), "").strip():
        return "environment"
    return None


def delete_secret(name: str) -> bool:
    """Remove the key for ``name``; False when there was none."""
    info = backend_info()
    if not info.usable:
        return False
    import keyring
    from keyring.errors import PasswordDeleteError

    try:
        keyring.delete_password(SERVICE, name)
    except PasswordDeleteError:
        return False
    return True


def mask(value: str) -> str:
    """What the GUI may show of a stored key: its first 3 and last 2 characters at most."""
    if len(value) < 12:
        return "•" * 8
    return f"{value[:3]}…{value[-2:]}"
