"""What a teacher model can do: structured output mode and context length, probed once and cached.

The generation pipeline asks for JSON. The best a server offers is ``json_schema`` (the reply is made to
fit the schema), then ``json_object`` (valid JSON, shape not enforced), then plain text (JSON asked for in
the prompt and repaired after). Servers differ, and many OpenAI-compatible ones accept a ``response_format``
they then ignore, so the probe checks the reply as well as the status code.

Results live in ``cache_dir()/capabilities.json`` keyed by base URL and model, for a week. When the pipeline
finds at run time that a mode is rejected after all, ``downgrade`` records the lower mode so later runs do
not pay for the same failure.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slowtune import paths
from slowtune.fsutil import atomic_write_text
from slowtune.teacher.providers import (
    Provider,
    ProviderError,
    api_key,
    connection_reason,
    host_of,
    make_client,
    missing_key_message,
    scrub,
    server_message,
    tiny_chat,
)

log = logging.getLogger(__name__)

MODES = ("json_schema", "json_object", "text")  # best first
CACHE_VERSION = 1
CACHE_FILE = "capabilities.json"
TTL_SECONDS = 7 * 24 * 3600
# Field names under which OpenAI-compatible servers report a model's context window.
_CONTEXT_FIELDS = ("context_length", "max_context_length", "context_window", "max_model_len")

PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
_PROBE_MESSAGES = [
    {"role": "user", "content": 'Reply with exactly this JSON object and nothing else: {"answer": "ok"}'},
]
_PROBE_MAX_TOKENS = 20

# Threads of one process (pipeline workers, the GUI) may downgrade at the same time; the file is shared.
_cache_lock = threading.Lock()


class ProbeError(RuntimeError):
    """The probe could not run (key rejected, server unreachable, unknown model). The message is for users and
    never contains the key."""


@dataclass
class Capabilities:
    structured: str  # one of MODES
    context_length: int | None
    probed_at: float

    def stale(self, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.probed_at > TTL_SECONDS


def _mode_rank(mode: str) -> int:
    if mode not in MODES:
        raise ValueError(f"Unknown structured-output mode {mode!r}; expected one of {', '.join(MODES)}.")
    return MODES.index(mode)


def _context_length(entry: Any) -> int | None:
    """The context window from a /models entry, whichever field the server used for it."""
    if entry is None:
        return None
    data: dict[str, Any]
    if isinstance(entry, dict):
        data = entry
    else:
        # openai's Model keeps unknown fields as pydantic extras.
        data = dict(getattr(entry, "model_extra", None) or {})
        if hasattr(entry, "model_dump"):
            data = {**entry.model_dump(), **data}
    candidates: list[Any] = [data.get(name) for name in _CONTEXT_FIELDS]
    top = data.get("top_provider")  # OpenRouter
    if isinstance(top, dict):
        candidates.append(top.get("context_length"))
    for value in candidates:
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and value > 0:
            return int(value)
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _reply_ok(content: str | None, *, exact: bool) -> bool:
    """Whether the probe reply is the JSON asked for. ``exact``: no other keys (what a schema enforces)."""
    if not content:
        return False
    try:
        data = json.loads(content.strip())
    except ValueError:
        return False
    if not isinstance(data, dict) or not isinstance(data.get("answer"), str):
        return False
    return set(data) == {"answer"} if exact else True


def probe(provider: Provider, model: str, *, timeout: float = 30) -> Capabilities:
    """Ask the model, with tiny requests, which structured-output mode works; read its context length."""
    now = time.time()
    if provider.in_process:
        # llama.cpp constrains the output with a grammar built from the schema; the engine knows the context.
        return Capabilities("json_schema", None, now)
    key = api_key(provider)
    if provider.needs_key and not key:
        raise ProbeError(missing_key_message(provider))
    import openai

    host = host_of(provider)
    client = make_client(provider, timeout=timeout, async_=False)
    try:
        context_length = None
        try:
            entry = next((m for m in client.models.list().data if m.id == model), None)
            context_length = _context_length(entry)
        except openai.NotFoundError:
            pass  # a server without /models: the context length stays unknown

        attempts: list[tuple[str, dict[str, Any]]] = [
            ("json_schema", {"type": "json_schema",
                             "json_schema": {"name": "probe", "strict": True, "schema": PROBE_SCHEMA}}),
            ("json_object", {"type": "json_object"}),
        ]
        structured = "text"
        for mode, response_format in attempts:
            try:
                reply = tiny_chat(client, model, _PROBE_MESSAGES, max_tokens=_PROBE_MAX_TOKENS,
                                  response_format=response_format, temperature=0)
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                log.info("%s at %s: %s rejected (%s)", model, host, mode, server_message(exc, key, 200))
                continue
            choice = reply.choices[0] if reply.choices else None
            content = choice.message.content if choice else None
            if _reply_ok(content, exact=mode == "json_schema"):
                structured = mode
                break
            if choice is not None and choice.finish_reason == "length" and not (content or "").strip():
                # A reasoning model spent the whole budget thinking: the format was accepted, and nothing
                # says it would not be followed; the pipeline downgrades if it is not.
                structured = mode
                break
            log.info("%s at %s: %s accepted but the reply did not follow it", model, host, mode)
        return Capabilities(structured, context_length, now)
    except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
        if not key:
            raise ProbeError(f"{host} asks for an API key ({exc.status_code}). "
                             + missing_key_message(provider)) from None
        raise ProbeError(f"key rejected by {host} ({exc.status_code})") from None
    except openai.APIConnectionError as exc:
        raise ProbeError(f"cannot reach {provider.base_url} ({connection_reason(exc, timeout)})") from None
    except openai.NotFoundError as exc:
        raise ProbeError(f"model {model!r} not found at {host} ({server_message(exc, key, 200)})") from None
    except openai.APIStatusError as exc:
        # A 429 or 5xx says nothing about the model's abilities: fail rather than cache a wrong "text".
        raise ProbeError(
            f"{host} answered {exc.status_code} while probing {model!r}: {server_message(exc, key, 200)}"
        ) from None
    except openai.OpenAIError as exc:
        raise ProbeError(f"unexpected reply from {host} while probing {model!r}: "
                         f"{scrub(str(exc)[:300], key)}") from None
    finally:
        client.close()


# ---------------------------------------------------------------------------------------------------------
# The cache


def cache_file() -> Path:
    return paths.cache_dir() / CACHE_FILE


def _cache_key(provider: Provider, model: str) -> str:
    return f"{provider.base_url} {model}"


def _read_cache() -> dict[str, dict[str, Any]]:
    path = cache_file()
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw.get("entries") if isinstance(raw, dict) else None
        if not isinstance(entries, dict):
            raise ValueError("no 'entries' object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        # Only probe results: probing again rebuilds them, so a bad file is simply replaced.
        log.info("capability cache %s unreadable (%s); it will be rebuilt", path, exc)
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, dict)}


def _write_cache(entries: dict[str, dict[str, Any]]) -> None:
    data = {"version": CACHE_VERSION, "entries": entries}
    atomic_write_text(cache_file(), json.dumps(data, indent=2, sort_keys=True) + "\n")


def _from_entry(entry: dict[str, Any]) -> Capabilities | None:
    try:
        structured = str(entry["structured"])
        _mode_rank(structured)
        length = entry.get("context_length")
        return Capabilities(structured, int(length) if length is not None else None, float(entry["probed_at"]))
    except (KeyError, TypeError, ValueError):
        return None


def cached_capabilities(provider: Provider, model: str) -> Capabilities | None:
    """What the cache holds for this model, stale or not (None when nothing)."""
    with _cache_lock:
        entry = _read_cache().get(_cache_key(provider, model))
    return _from_entry(entry) if entry else None


def get_capabilities(provider: Provider, model: str, *, refresh: bool = False, timeout: float = 30) -> Capabilities:
    """The cached capabilities, probing when there are none, they are over a week old, or ``refresh``."""
    if provider.in_process:
        return probe(provider, model, timeout=timeout)
    if not model:
        raise ProviderError(f"No model given for provider {provider.id!r}, and it has no default model.")
    if not refresh:
        cached = cached_capabilities(provider, model)
        if cached is not None and not cached.stale():
            return cached
    caps = probe(provider, model, timeout=timeout)
    with _cache_lock:
        entries = _read_cache()
        entries[_cache_key(provider, model)] = asdict(caps)
        _write_cache(entries)
    return caps


def downgrade(provider: Provider, model: str, structured: str) -> Capabilities:
    """Record that ``structured`` is the best mode that works for this model (never raises a cached mode)."""
    _mode_rank(structured)
    if provider.in_process:
        return Capabilities("json_schema", None, time.time())
    with _cache_lock:
        entries = _read_cache()
        key = _cache_key(provider, model)
        current = _from_entry(entries.get(key) or {})
        if current is not None and _mode_rank(current.structured) >= _mode_rank(structured):
            return current
        caps = Capabilities(structured, current.context_length if current else None, time.time())
        entries[key] = asdict(caps)
        _write_cache(entries)
    log.info("%s at %s: structured output downgraded to %s", model, host_of(provider), structured)
    return caps
