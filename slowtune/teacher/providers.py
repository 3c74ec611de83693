"""Teacher providers: the OpenAI-compatible endpoints (or the local GGUF) that write the training data.

A provider is a named entry in ``config_dir()/providers.json``: a preset (which service it is), the base URL
documents will be sent to, an optional default model, and whether it needs a key. The key itself never lives
in this file; it goes to the keychain through ``slowtune.secrets`` under ``provider:<id>`` (or comes from a
``SLOWTUNE_KEY_PROVIDER_<ID>`` variable for one run when there is no keychain).

The registry follows the settings rules: written atomically, versioned, and a file that cannot be read is
set aside as ``providers.json.bad-<time>`` with a warning, so the app starts and nothing the user had is lost.

Every message built here may end up on screen, in a log or in a bug report, so any text that came back from
a server is scrubbed of the key before it is used (a misbehaving server may echo the key it was sent).
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from slowtune import paths, secrets
from slowtune.fsutil import atomic_write_text, set_aside

log = logging.getLogger(__name__)

REGISTRY_VERSION = 1
REGISTRY_FILE = "providers.json"
GGUF_MAGIC = b"GGUF"
# The openai client refuses to start without some key; servers that need none ignore it.
NO_KEY_PLACEHOLDER = "not-needed"
# Output budget of a check or probe call to a reasoning model, whose hidden reasoning counts against it.
REASONING_TOKEN_BUDGET = 1024

_ID_RE = re.compile(r"^[a-z0-9_-]{1,40}$")
# Read-modify-write of the registry from several threads of one process (GUI, workers) must not interleave.
_registry_lock = threading.RLock()

CHECK_STATUSES = ("ok", "key_rejected", "unreachable", "model_not_found", "no_key", "error")


class ProviderError(ValueError):
    """A provider is unknown, misconfigured or could not be used. The message is written for users and never
    contains a key."""


class KeyNotStoredError(ProviderError):
    """The key could not go to the keychain, so nothing was saved (neither the key nor the provider). The message
    says so in words; the CLI and the app each add what their user can do (``env_var`` gives a key for one run)."""

    def __init__(self, message: str, provider_id: str, env_var: str, no_keychain: bool) -> None:
        super().__init__(message)
        self.provider_id = provider_id
        self.env_var = env_var
        self.no_keychain = no_keychain  # True: there is no usable keychain at all; False: the keychain refused


class NoModelError(ProviderError):
    """No model was given and the provider has no default model. The message names no command-line option: the
    CLI adds its own hint, the app asks for a model."""

    def __init__(self, provider_id: str) -> None:
        super().__init__(f"Provider {provider_id!r} has no default model, and no model was chosen.")
        self.provider_id = provider_id


class MissingKeyError(ProviderError):
    """A provider that needs a key has none. Its text is for the command line (it names the command that stores
    one); ``app_message`` says the same for the app, where the key is added on the Providers page."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(missing_key_message(provider))
        self.provider_id = provider.id
        self.app_message = (f"The teacher {provider.id} has no API key. On the Providers page, select it, click "
                            "Edit… and paste the key.")


@dataclass(frozen=True)
class Preset:
    id: str
    name: str
    base_url: str | None  # None: the user gives one (custom) or there is no URL at all (gguf)
    needs_key: bool
    local: bool  # runs on this machine: document text does not leave it
    key_hint: str  # where to get a key, shown when one is asked for


PRESETS: dict[str, Preset] = {
    p.id: p
    for p in (
        Preset("openai", "OpenAI", "https://api.openai.com/v1", True, False,
               "https://platform.openai.com/api-keys"),
        Preset("openrouter", "OpenRouter", "https://openrouter.ai/api/v1", True, False,
               "https://openrouter.ai/settings/keys"),
        Preset("together", "Together AI", "https://api.together.xyz/v1", True, False,
               "https://api.together.ai/settings/api-keys"),
        Preset("fireworks", "Fireworks AI", "https://api.fireworks.ai/inference/v1", True, False,
               "https://fireworks.ai/account/api-keys"),
        Preset("groq", "Groq", "https://api.groq.com/openai/v1", True, False, "https://console.groq.com/keys"),
        Preset("ollama", "Ollama (local server)", "http://localhost:11434/v1", False, True,
               "no key needed; start Ollama and pull a model first"),
        Preset("lmstudio", "LM Studio (local server)", "http://localhost:1234/v1", False, True,
               "no key needed; start the server in LM Studio's Developer tab"),
        Preset("llamacpp", "llama.cpp server (local)", "http://localhost:8080/v1", False, True,
               "no key needed; start llama-server with your model"),
        Preset("custom", "Any OpenAI-compatible server", None, False, False,
               "the server's own documentation (the key is optional)"),
        Preset("gguf", "Local GGUF file, run in-process", None, False, True,
               "no key needed; give the path of a .gguf model file as the model"),
    )
}


@dataclass
class Provider:
    id: str
    preset: str
    base_url: str | None  # the URL the client talks to; None only for the in-process gguf preset
    default_model: str | None  # for gguf: the absolute path of the .gguf file
    needs_key: bool
    added_at: str  # ISO 8601, UTC
    # Keys written by a newer slowtune: kept so that saving from this version does not drop them.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def in_process(self) -> bool:
        return self.preset == "gguf"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "id": self.id,
            "preset": self.preset,
            "base_url": self.base_url,
            "default_model": self.default_model,
            "needs_key": self.needs_key,
            "added_at": self.added_at,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Provider:
        """Build from a registry entry; raises ValueError naming the first bad field."""
        if not isinstance(raw, dict):
            raise ValueError("the entry is not a JSON object")
        pid = raw.get("id")
        if not isinstance(pid, str) or not _ID_RE.match(pid):
            raise ValueError(f"bad id {pid!r}")
        preset = raw.get("preset")
        if preset not in PRESETS:
            raise ValueError(f"provider {pid!r} has an unknown preset {preset!r}")
        for name in ("base_url", "default_model"):
            if raw.get(name) is not None and not isinstance(raw.get(name), str):
                raise ValueError(f"provider {pid!r}: {name} is not text")
        if preset != "gguf" and not raw.get("base_url"):
            raise ValueError(f"provider {pid!r} has no base_url")
        needs_key = raw.get("needs_key", PRESETS[preset].needs_key)
        if not isinstance(needs_key, bool):
            raise ValueError(f"provider {pid!r}: needs_key is not true/false")
        # Whether a key is needed is the preset's: earlier versions marked an optional key as needed once one was
        # typed, and then refused to call without it after the keychain lost it.
        needs_key = PRESETS[preset].needs_key
        known = {"id", "preset", "base_url", "default_model", "needs_key", "added_at"}
        return cls(
            id=pid,
            preset=preset,
            base_url=raw.get("base_url"),
            default_model=raw.get("default_model"),
            needs_key=needs_key,
            added_at=str(raw.get("added_at") or ""),
            extra={k: v for k, v in raw.items() if k not in known},
        )


@dataclass
class ProvidersLoad:
    providers: list[Provider]
    warnings: list[str]
    set_aside: Path | None = None


@dataclass
class ProviderCheck:
    status: str  # one of CHECK_STATUSES
    message: str  # for users; never contains the key
    latency_ms: float | None = None
    models: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------------------
# The registry file


def registry_file() -> Path:
    return paths.config_dir() / REGISTRY_FILE




def load_providers() -> ProvidersLoad:
    """Read the registry. A file that cannot be read is moved aside; bad entries are dropped after a copy of
    the file is kept. Either way there is a warning (logged, and returned) naming the copy."""
    with _registry_lock:
        return _load_locked()


def _load_locked() -> ProvidersLoad:
    path = registry_file()
    if not path.exists():
        return ProvidersLoad([], [])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("the top level is not a JSON object")
        entries = raw.get("providers", [])
        if not isinstance(entries, list):
            raise ValueError("'providers' is not a list")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        aside = set_aside(path, move=True)
        msg = (f"Provider list {path} could not be read ({exc}); it was kept as {aside.name} and no providers "
               "are configured now. Add them again, or repair that file and rename it back.")
        log.warning(msg)
        return ProvidersLoad([], [msg], aside)

    version = raw.get("version", 1)
    if isinstance(version, int) and version > REGISTRY_VERSION:
        log.info("provider list %s is version %s, newer than this slowtune (%s)", path, version, REGISTRY_VERSION)

    providers: list[Provider] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        try:
            provider = Provider.from_dict(entry)
        except ValueError as exc:
            warnings.append(f"Provider list {path}: entry {i + 1} was skipped ({exc}).")
            continue
        if provider.id in seen:
            warnings.append(f"Provider list {path}: a second entry for {provider.id!r} was skipped.")
            continue
        seen.add(provider.id)
        providers.append(provider)
    aside = None
    if warnings:
        aside = set_aside(path, move=False)
        warnings.append(f"The provider list as it was is kept as {aside.name}.")
        # Rewrite now, so the same warning (and another copy) does not come back on every read.
        _save(providers)
        for w in warnings:
            log.warning(w)
    return ProvidersLoad(providers, warnings, aside)


def _save(providers: list[Provider]) -> None:
    data = {"version": REGISTRY_VERSION, "providers": [p.to_dict() for p in providers]}
    atomic_write_text(registry_file(), json.dumps(data, indent=2) + "\n")


def list_providers() -> list[Provider]:
    return load_providers().providers


def get_provider(provider_id: str) -> Provider:
    providers = list_providers()
    for provider in providers:
        if provider.id == provider_id:
            return provider
    if providers:
        known = ", ".join(p.id for p in providers)
        raise ProviderError(f"No provider {provider_id!r}. Known providers: {known}.")
    raise ProviderError(
        f"No provider {provider_id!r}: none is configured yet. Add one with "
        "`slowtune provider add ID --preset PRESET` (see `slowtune provider presets`)."
    )


# ---------------------------------------------------------------------------------------------------------
# Validation


def id_from_name(name: str) -> str:
    """A provider id from a name a user typed: "Local teacher" is ``local-teacher`` (lowercase; any run of other
    characters a dash; at most 40). What cannot become an id is returned as typed, for :func:`validate_id` to name."""
    slug = re.sub(r"[^a-z0-9_]+", "-", name.strip().lower()).strip("-")[:40].strip("-")
    return slug or name.strip()


def validate_id(provider_id: str) -> str:
    if not isinstance(provider_id, str) or not _ID_RE.match(provider_id):
        raise ProviderError(
            f"Provider id {provider_id!r} is not valid: use 1 to 40 lowercase letters, digits, '-' or '_' "
            "(for example 'openai' or 'my-server')."
        )
    return provider_id


def get_preset(preset_id: str) -> Preset:
    try:
        return PRESETS[preset_id]
    except KeyError:
        raise ProviderError(f"Unknown preset {preset_id!r}. Presets: {', '.join(PRESETS)}.") from None


def validate_base_url(url: str) -> str:
    """A clean http(s) base URL without a trailing slash."""
    url = (url or "").strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderError(
            f"Base URL {url!r} is not valid: it must start with http:// or https:// and name a host "
            "(for example https://api.example.com/v1)."
        )
    # Credentials or tokens in a URL would end up in providers.json, logs and screenshots; keys go to the
    # keychain instead. The message does not repeat the URL, since it holds the secret.
    if parts.username or parts.password:
        raise ProviderError("The base URL contains a user name or password; give the key separately instead.")
    if parts.query or parts.fragment:
        raise ProviderError("The base URL must not have a query string (?...) or fragment (#...); "
                            "give a key separately instead.")
    try:
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ProviderError(f"Base URL {url!r} has a bad port number.") from None
    return url.rstrip("/")


def check_gguf_file(path: str | os.PathLike[str]) -> Path:
    """The absolute path of a readable file that starts with the GGUF magic; ProviderError otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ProviderError(f"GGUF model file {str(p)!r} does not exist (or is not a file).")
    try:
        with p.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise ProviderError(f"GGUF model file {str(p)!r} cannot be read ({exc.strerror or exc}).") from None
    if magic != GGUF_MAGIC:
        raise ProviderError(f"{str(p)!r} is not a GGUF model file (it does not start with the GGUF header).")
    return p.resolve()


# ---------------------------------------------------------------------------------------------------------
# Adding and removing


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def add_provider(
    provider_id: str,
    preset: str,
    *,
    base_url: str | None = None,
    model: str | None = None,
    key: str | None = None,
    replace: bool = False,
) -> Provider:
    """Save a provider (and its key, in the keychain).

    Without ``key`` an existing key for this id is kept, so ``replace=True`` can change the URL or the model
    without asking for the key again. Raises KeyNotStoredError when the key could not go to the keychain; then
    nothing was written (the provider as it was, if any, and its key are unchanged).
    """
    validate_id(provider_id)
    p = get_preset(preset)
    if replace:
        # Replacing keeps what is not given again: `add ID --preset P --replace --key-stdin` only changes the key.
        existing = next((q for q in list_providers() if q.id == provider_id), None)
        if existing is not None and existing.preset == p.id:
            base_url = base_url or (existing.base_url if existing.base_url != p.base_url else None)
            model = model if model is not None else existing.default_model
    if key is not None and not key.strip():
        raise ProviderError("The key given is empty; give the key, or no key at all.")
    key = key.strip() if key is not None else None

    if p.id == "gguf":
        if base_url:
            raise ProviderError("The gguf preset runs a local file in-process and takes no base URL.")
        if not model:
            raise ProviderError("The gguf preset needs the path of a .gguf file as the model.")
        if key:
            raise ProviderError("The gguf preset runs in-process and takes no key.")
        url: str | None = None
        model = str(check_gguf_file(model))
    else:
        if base_url:
            url = validate_base_url(base_url)
        elif p.base_url:
            url = p.base_url
        else:
            raise ProviderError(f"The {p.id} preset needs a base URL (for example --base-url https://host/v1).")
        if model is not None:
            model = model.strip() or None

    key_name = secrets.provider_key_name(provider_id)
    with _registry_lock:
        if not replace and any(q.id == provider_id for q in list_providers()):
            raise ProviderError(f"A provider {provider_id!r} exists already; replace it explicitly (--replace) "
                                "or choose another id.")
        if key:
            # The key first: a provider saved without the key it was given would fail its first check for want
            # of a key the user did type. When the keychain refuses, nothing at all is written.
            try:
                secrets.set_secret(key_name, key)
            except secrets.SecretsError as exc:
                raise KeyNotStoredError(
                    f"The key for provider {provider_id!r} could not be stored in the keychain, so nothing was "
                    f"saved: {exc}", provider_id, secrets.env_var_for(key_name),
                    isinstance(exc, secrets.NoKeychainError)) from None
        provider = _save_provider(provider_id, p, url, model, replace)
    log.info("provider %s saved (preset %s, destination %s)", provider_id, p.id, destination(provider))

    if p.id == "gguf" and secrets.secret_source(key_name) == "keychain":
        # A key left over from an earlier remote provider of this id would otherwise linger unused.
        secrets.delete_secret(key_name)
    return provider


def _save_provider(provider_id: str, p: Preset, url: str | None, model: str | None, replace: bool) -> Provider:
    providers = list_providers()
    existing = next((q for q in providers if q.id == provider_id), None)
    if existing and not replace:
        raise ProviderError(f"A provider {provider_id!r} exists already; replace it explicitly (--replace) "
                            "or choose another id.")
    provider = Provider(
        id=provider_id,
        preset=p.id,
        base_url=url,
        default_model=model,
        # The preset's rule: an optional key is sent when there is one, and its absence never blocks a call
        # (the server says whether it wants one).
        needs_key=p.needs_key,
        added_at=existing.added_at if existing else _now_iso(),
        extra=existing.extra if existing else {},
    )
    if existing:
        _save([provider if q.id == provider_id else q for q in providers])  # keeps the user's order
    else:
        _save([*providers, provider])
    return provider


def remove_provider(provider_id: str) -> bool:
    """Remove a provider and its key. Returns whether a key was deleted; ProviderError for an unknown id."""
    with _registry_lock:
        get_provider(provider_id)
        _save([p for p in list_providers() if p.id != provider_id])
    removed_key = secrets.delete_secret(secrets.provider_key_name(provider_id))
    log.info("provider %s removed%s", provider_id, " with its key" if removed_key else "")
    return removed_key


# ---------------------------------------------------------------------------------------------------------
# Keys and destinations


def api_key(provider: Provider) -> str | None:
    """The key to send, from the keychain or the environment; registered so that logs redact it."""
    if provider.in_process:
        return None
    # get_secret registers the value with remember_secret; doing it here too keeps that promise explicit
    # should get_secret ever change.
    value = secrets.get_secret(secrets.provider_key_name(provider.id))
    if value:
        secrets.remember_secret(value)
    return value


def key_status(provider: Provider) -> str:
    """"keychain", "environment", "missing", "optional" (none, and the server may not want one) or "not needed";
    reads no key out."""
    if provider.in_process:
        return "not needed"
    source = secrets.secret_source(secrets.provider_key_name(provider.id))
    if source:
        return source
    if provider.needs_key:
        return "missing"
    return "not needed" if PRESETS[provider.preset].local else "optional"


def missing_key_message(provider: Provider) -> str:
    env_var = secrets.env_var_for(secrets.provider_key_name(provider.id))
    return (f"No API key for provider {provider.id!r}. Store one with `slowtune provider add {provider.id} "
            f"--preset {provider.preset} --replace`, or set {env_var} for one run.")


def _this_machine() -> str:
    return "this Mac" if sys.platform == "darwin" else "this computer"


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_of(provider: Provider) -> str:
    """The host name the provider's requests go to (no port), for short messages."""
    if provider.base_url is None:
        return _this_machine()
    return urlsplit(provider.base_url).hostname or provider.base_url


def destination(provider: Provider) -> str:
    """Where document text goes, in the words shown before anything is sent."""
    if provider.base_url is None:
        return f"{_this_machine()} (in-process)"
    parts = urlsplit(provider.base_url)
    host = parts.hostname or provider.base_url
    if _is_loopback(host):
        shown = f"[{host}]" if ":" in host else host
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"a server on this machine ({shown}:{port})"
    return parts.netloc.rsplit("@", 1)[-1]


def is_remote(provider: Provider) -> bool:
    """Whether document text leaves this machine."""
    if provider.base_url is None:
        return False
    return not _is_loopback(urlsplit(provider.base_url).hostname or "")


# ---------------------------------------------------------------------------------------------------------
# Clients


def make_client(provider: Provider, *, timeout: float, async_: bool = True) -> Any:
    """An ``openai.AsyncOpenAI`` (or ``openai.OpenAI``) for the provider.

    Retries are off: the generation pipeline retries by itself, with its own back-off and accounting, and
    the client's hidden retries would double every wait and hide rate limits from it.
    """
    if provider.in_process:
        raise ProviderError(f"Provider {provider.id!r} runs a GGUF file in-process; it has no HTTP client.")
    key = api_key(provider)
    if provider.needs_key and not key:
        raise MissingKeyError(provider)
    import openai

    cls = openai.AsyncOpenAI if async_ else openai.OpenAI
    return cls(base_url=provider.base_url, api_key=key or NO_KEY_PLACEHOLDER, max_retries=0, timeout=timeout)


def scrub(text: str, key: str | None) -> str:
    """``text`` with the key (and anything shaped like a key) removed, for messages built from server replies."""
    from slowtune.logs import redact

    if key:
        text = text.replace(key, "[REDACTED]")
    return redact(text)


def connection_reason(exc: BaseException, timeout: float | None = None) -> str:
    """Why a connection failed, in a few words, from the chain of exceptions under the client's error."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return f"timed out after {timeout:g} s" if timeout else "timed out"
    seen: set[int] = set()
    cur: BaseException | None = exc
    texts: list[str] = []
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, TimeoutError):
            return "timed out"
        texts.append(f"{type(cur).__name__} {cur}")
        cur = cur.__cause__ or cur.__context__
    joined = " ".join(texts).lower()
    if "refused" in joined:
        return "connection refused"
    if "gaierror" in joined or "name or service not known" in joined or "nodename nor servname" in joined:
        return "host not found"
    if "ssl" in joined or "certificate" in joined:
        return "TLS/certificate error"
    if "timed out" in joined or "timeout" in joined:
        return "timed out"
    return "connection failed"


def server_message(exc: Any, key: str | None, limit: int = 300) -> str:
    """The server's own error text, short and scrubbed."""
    body = getattr(exc, "body", None)
    text = ""
    if isinstance(body, dict):
        err = body.get("error", body)
        text = str(err.get("message", "")) if isinstance(err, dict) else str(err)
    text = text or str(getattr(exc, "message", "") or exc)
    text = " ".join(text.split())
    return scrub(text[:limit], key)


def _rejects_param(exc: Any, names: tuple[str, ...]) -> bool:
    text = f"{getattr(exc, 'param', '') or ''} {server_message(exc, None)}"
    return any(name in text for name in names)


def tiny_chat(client: Any, model: str, messages: list[dict[str, Any]], *, max_tokens: int, **extra: Any) -> Any:
    """A chat call capped at ``max_tokens``, for checks and probes (sync client).

    Reasoning models (OpenAI's o-series and later) refuse ``max_tokens`` and a set temperature with a 400; that
    is not an answer to what is being checked, so the call is made once more the way they want it: with
    ``max_completion_tokens`` (room for the hidden reasoning too) and no temperature.
    """
    import openai

    try:
        return client.chat.completions.create(model=model, messages=messages, max_tokens=max_tokens, **extra)
    except openai.BadRequestError as exc:
        if not _rejects_param(exc, ("max_tokens", "temperature")):
            raise
    extra.pop("temperature", None)
    return client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=max(max_tokens, REASONING_TOKEN_BUDGET), **extra
    )


# ---------------------------------------------------------------------------------------------------------
# The models a provider offered at its last check (for the model pickers)

MODELS_CACHE_FILE = "provider-models.json"
MODEL_NAMES_SHOWN = 8  # names in a check's message; the full list is in ProviderCheck.models
_models_lock = threading.Lock()


def model_list_text(ids: list[str], limit: int = MODEL_NAMES_SHOWN) -> str:
    """"2 models: judge-small, teacher-small" (the first ``limit`` names, then how many more)."""
    if not ids:
        return "no models listed"
    head = f"{len(ids)} model{'s' if len(ids) != 1 else ''}: " + ", ".join(ids[:limit])
    return head + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def _models_cache() -> Path:
    return paths.cache_dir() / MODELS_CACHE_FILE


def _models_key(provider: Provider) -> str:
    # By URL, not id: the same server under another name, or added again, offers the same models.
    return provider.base_url or f"gguf:{provider.id}"


def _read_models_cache() -> dict[str, Any]:
    try:
        raw = json.loads(_models_cache().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}  # a cache: missing or broken, it is rebuilt by the next check
    return raw if isinstance(raw, dict) else {}


def remember_models(provider: Provider, ids: list[str]) -> None:
    """Keep the models the provider listed, for ``known_models`` (a cache: failing to write it is harmless)."""
    with _models_lock:
        entries = _read_models_cache()
        entries[_models_key(provider)] = {"models": list(ids), "at": _now_iso()}
        try:
            atomic_write_text(_models_cache(), json.dumps(entries, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            log.info("model list cache %s not written (%s)", _models_cache(), exc)


def known_models(provider: Provider) -> list[str]:
    """The models the provider listed at its last check ([] when it was never checked or lists none)."""
    if provider.in_process:
        return [provider.default_model] if provider.default_model else []
    with _models_lock:
        entry = _read_models_cache().get(_models_key(provider))
    models = entry.get("models") if isinstance(entry, dict) else None
    return [m for m in models if isinstance(m, str)] if isinstance(models, list) else []


# ---------------------------------------------------------------------------------------------------------
# Checking that a provider works


def check_provider(provider: Provider, model: str | None = None, *, timeout: float = 15) -> ProviderCheck:
    """Whether the provider answers with this key, and has the model (default: the provider's default model).

    Lists the models (one cheap GET); servers without a model list get a one-token chat call instead.
    """
    model = model or provider.default_model
    if provider.in_process:
        try:
            path = check_gguf_file(model or "")
        except ProviderError as exc:
            return ProviderCheck("model_not_found" if model else "error", str(exc))
        size = path.stat().st_size
        return ProviderCheck("ok", f"OK: {path.name} is a GGUF file ({size / 1e9:.2f} GB), run in-process.",
                             None, [str(path)])

    key = api_key(provider)
    if provider.needs_key and not key:
        return ProviderCheck("no_key", missing_key_message(provider))
    import openai

    client = make_client(provider, timeout=timeout, async_=False)
    host = host_of(provider)
    started = time.perf_counter()
    stage = "list"
    try:
        try:
            page = client.models.list()
            ids = sorted({str(m.id) for m in page.data})
        except openai.NotFoundError:
            ids = None  # no /models on this server
        latency = (time.perf_counter() - started) * 1000
        # An empty list says nothing about a model (some servers list none): ask the model directly below.
        listed = ids is not None and not (model and not ids)
        if ids:
            remember_models(provider, ids)
        if listed and (not model or model in ids):
            what = f"{model} available; " if model else ""
            return ProviderCheck("ok", f"OK: {what}{model_list_text(ids)}; {latency:.0f} ms", latency, ids)
        if listed:
            close = difflib.get_close_matches(model, ids, n=5, cutoff=0.4) or ids[:5]
            return ProviderCheck(
                "model_not_found",
                f"model {model!r} is not offered by {host}; close names: {', '.join(close)}",
                latency,
                ids,
            )
        if not model:
            return ProviderCheck(
                "error",
                f"{host} does not list its models; give the name of a model to test with.",
                latency,
                [],
            )
        stage = "chat"
        started = time.perf_counter()
        tiny_chat(client, model, [{"role": "user", "content": "Say OK."}], max_tokens=1)
        latency = (time.perf_counter() - started) * 1000
        return ProviderCheck("ok", f"OK: {model} answered, {latency:.0f} ms ({host} does not list models)",
                             latency, [model])
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        if not key:
            return ProviderCheck("no_key", f"{host} asks for an API key ({exc.status_code}). "
                                 + missing_key_message(provider))
        return ProviderCheck("key_rejected", f"key rejected by {host} ({exc.status_code})")
    except openai.APIConnectionError as exc:  # includes APITimeoutError
        return ProviderCheck("unreachable",
                             f"cannot reach {provider.base_url} ({connection_reason(exc, timeout)})")
    except openai.NotFoundError as exc:
        # Only the chat call gets here (a missing list is handled above).
        return ProviderCheck("model_not_found",
                             f"model {model!r} not found at {host} ({server_message(exc, key)})")
    except openai.RateLimitError:
        return ProviderCheck("error", f"{host} is rate limiting requests (429); try again in a minute")
    except openai.APIStatusError as exc:
        return ProviderCheck("error", f"{host} answered {exc.status_code} to the {stage} request: "
                             f"{server_message(exc, key)}")
    except openai.OpenAIError as exc:
        return ProviderCheck("error", f"unexpected reply from {host}: {scrub(str(exc)[:300], key)}")
    finally:
        client.close()
