"""Calling the teacher: a cache in front, bounded adaptive concurrency, retries, structured output.

Every call goes through :class:`CallRunner`:

1. Its cache key hashes the endpoint, the model, the prompt version, the exact messages (which hold the
   chunk text), the sampling parameters and the structured-output mode. A response is written to the
   project's ``generation_cache`` the moment it arrives, before anything else is done with it, so a run
   that is interrupted (Ctrl-C, a crash, ``kill -9``) and started again pays for no response it had
   already received. Only the calls in flight at the moment of the kill can be paid twice.
2. An :class:`AdaptiveLimiter` bounds the calls in flight. A 429 halves the limit (at most once per
   retry-after window, so one burst of 429s does not collapse it to 1) and the call waits what the server
   asked; steady successes raise the limit back, one at a time, to the configured maximum.
3. 5xx answers, timeouts and dropped connections are retried with exponential backoff and jitter. 401, 403
   and 404 are not retried: they stop the run with a message that names the endpoint (never the key).
4. When an endpoint rejects the structured-output mode (a 400 naming ``response_format``), the call
   drops to the next mode (JSON schema → JSON mode → plain text) and the probe cache remembers it.

The teacher itself is either a remote OpenAI-compatible endpoint or a GGUF run in-process by llama.cpp;
both answer :meth:`Teacher.complete`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from slowtune.logs import redact
from slowtune.store import Project, dumps
from slowtune.teacher.prompts import PROMPT_VERSION
from slowtune.teacher.providers import NO_KEY_PLACEHOLDER

log = logging.getLogger(__name__)

MODES = ("json_schema", "json_object", "text")
MAX_RETRY_AFTER = 300.0  # longer waits than this stop the run instead: the quota is gone for now
KILL_ENV = "SLOWTUNE_TEST_KILL"


class TeacherError(RuntimeError):
    """A call failed for good. ``fatal`` errors (key rejected, model not found) stop the whole run."""

    def __init__(self, message: str, *, fatal: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status


class ModeRejected(Exception):
    """The endpoint refused the structured-output mode of the request (HTTP 400 about response_format)."""


class Transient(Exception):
    """A failure worth retrying: 429, 5xx, timeout, dropped connection."""

    def __init__(self, message: str, *, retry_after: float | None = None, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.rate_limited = rate_limited


@dataclass
class Completion:
    content: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


class Teacher(Protocol):
    """What the pipeline needs from a teacher, remote or local."""

    endpoint: str  # identity for the cache key: base URL, or the GGUF file's hash
    model: str
    free: bool  # no per-token price (a server on this machine, or in-process)
    host: str  # where document text goes, in the user's words

    async def complete(
        self, messages: list[dict[str, str]], *, schema: dict[str, Any], mode: str, temperature: float,
        max_tokens: int, timeout: float,
    ) -> Completion: ...

    async def aclose(self) -> None: ...


# --- remote endpoints ------------------------------------------------------------------------------

def _retry_after(headers: Any) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            # An HTTP date; rare for APIs. Fall back to the default backoff.
            return None
    return None


def response_format(mode: str, schema: dict[str, Any], name: str = "answer") -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


class RemoteTeacher:
    """An OpenAI-compatible chat-completions endpoint, through ``openai.AsyncOpenAI``."""

    def __init__(self, provider: Any, model: str, *, free: bool, host: str, client: Any) -> None:
        self.provider = provider
        self.endpoint = (provider.base_url or "").rstrip("/")
        self.model = model
        self.free = free
        self.host = host
        self._client = client

    async def complete(
        self, messages: list[dict[str, str]], *, schema: dict[str, Any], mode: str, temperature: float,
        max_tokens: int, timeout: float,
    ) -> Completion:
        import httpx2
        import openai

        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "max_tokens": max_tokens}
        fmt = response_format(mode, schema)
        if fmt is not None:
            body["response_format"] = fmt
        try:
            # The client's documented raw-request path: the same auth, errors and timeouts as
            # ``chat.completions.create``, without its per-call transformation of the (long) messages into typed
            # parameters and back, which costs milliseconds of CPU per call at high concurrency.
            raw = await self._client.post("/chat/completions", cast_to=httpx2.Response, body=body,
                                          options={"timeout": timeout})
            response = raw.json()
        except openai.RateLimitError as exc:
            raise Transient("rate limited (429)", retry_after=_retry_after(exc.response.headers),
                            rate_limited=True) from None
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            # Whether a key went with the request, not whether the preset requires one (a custom server's key is
            # optional, and may have been given).
            sent_key = getattr(self._client, "api_key", None) not in (None, "", NO_KEY_PLACEHOLDER)
            what = "the key was rejected by" if sent_key else "access was refused by"
            # Worded for the app and the CLI alike: a test of the provider is the Test button or `provider test`.
            raise TeacherError(f"{what} {self.host} ({exc.status_code}); test the provider {self.provider.id!r} "
                               "to check it", fatal=True, status=exc.status_code) from None
        except openai.NotFoundError:
            raise TeacherError(f"model {self.model!r} was not found at {self.host} (404); a test of the provider "
                               f"{self.provider.id!r} lists its models", fatal=True, status=404) from None
        except openai.BadRequestError as exc:
            text = redact(str(getattr(exc, "message", "") or ""))
            error_body = exc.body if isinstance(exc.body, dict) else {}
            if fmt is not None and ("response_format" in text or error_body.get("param") == "response_format"):
                raise ModeRejected(text) from None
            raise TeacherError(f"{self.host} refused the request (400): {text[:300]}", status=400) from None
        except openai.APITimeoutError:
            raise Transient(f"no answer from {self.host} within {timeout:g} s") from None
        except openai.APIConnectionError:
            raise Transient(f"connection to {self.host} failed") from None
        except openai.APIStatusError as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409):
                raise Transient(f"{self.host} answered {exc.status_code}",
                                retry_after=_retry_after(exc.response.headers)) from None
            raise TeacherError(f"{self.host} answered {exc.status_code}: {redact(str(exc.message))[:300]}",
                               status=exc.status_code) from None
        except ValueError:
            raise Transient(f"{self.host} sent a reply that is not JSON") from None
        if not isinstance(response, dict):
            raise Transient(f"{self.host} sent a reply that is not a chat completion")
        choices = response.get("choices") or [{}]
        choice = choices[0] or {}
        usage = response.get("usage") or {}
        return Completion(
            content=(choice.get("message") or {}).get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    async def aclose(self) -> None:
        await self._client.close()


# --- concurrency -----------------------------------------------------------------------------------

class AdaptiveLimiter:
    """A semaphore whose size shrinks on rate limits and grows back on success (AIMD)."""

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError("concurrency must be at least 1")
        self.maximum = maximum
        self.limit = maximum
        self.active = 0
        self.lowest = maximum
        self._successes = 0
        self._last_cut = -1e9
        self._cond = asyncio.Condition()
        self.paused_until = 0.0  # monotonic time before which no call starts (a server's retry-after)

    async def acquire(self) -> None:
        while True:
            wait = self.paused_until - time.monotonic()
            if wait > 0:
                # The server asked every client call to wait, not only the one that got the 429.
                await asyncio.sleep(wait)
            async with self._cond:
                await self._cond.wait_for(lambda: self.active < self.limit)
                if self.paused_until > time.monotonic():
                    continue
                self.active += 1
                return

    async def release(self) -> None:
        async with self._cond:
            self.active -= 1
            self._cond.notify_all()

    async def on_success(self) -> None:
        async with self._cond:
            self._successes += 1
            if self.limit < self.maximum and self._successes >= self.limit:
                self.limit += 1
                self._successes = 0
                self._cond.notify_all()

    async def on_rate_limit(self, window: float) -> None:
        async with self._cond:
            now = time.monotonic()
            self.paused_until = max(self.paused_until, now + window)
            self._successes = 0
            # Many calls in flight get their 429 together; cut once per window, not once per call.
            if now - self._last_cut >= max(window, 0.5):
                self.limit = max(1, self.limit // 2)
                self.lowest = min(self.lowest, self.limit)
                self._last_cut = now
                log.info("rate limited: concurrency lowered to %d", self.limit)


# --- the call runner -------------------------------------------------------------------------------

@dataclass
class CallStats:
    calls: int = 0  # network calls answered 2xx
    cached: int = 0  # answers served from the cache
    retries: int = 0
    rate_limited: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    unknown_price: bool = False
    reserved_usd: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def note_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def cache_key(teacher: Teacher, messages: list[dict[str, str]], *, mode: str, temperature: float,
              max_tokens: int, nonce: int = 0) -> str:
    material = {
        "endpoint": teacher.endpoint, "model": teacher.model, "prompt_version": PROMPT_VERSION,
        "messages": messages, "mode": mode, "temperature": temperature, "max_tokens": max_tokens,
    }
    if nonce:
        material["nonce"] = nonce
    return hashlib.sha256(dumps(material).encode("utf-8")).hexdigest()


class CallRunner:
    """Cached, retried, rate-adaptive calls to one teacher, recorded in one project's cache."""

    def __init__(
        self, project: Project, teacher: Teacher, *, concurrency: int = 8, mode: str = "json_schema",
        timeout: float = 120.0, max_attempts: int = 6, backoff: float = 0.5, backoff_cap: float = 30.0,
        price: Any = None, on_mode_change: Any = None, context_length: int | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown structured-output mode {mode!r}")
        self.project = project
        self.teacher = teacher
        self.mode = mode
        self.context_length = context_length  # the model's context window, when the endpoint says it
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_cap = backoff_cap
        self.limiter = AdaptiveLimiter(concurrency)
        self.stats = CallStats()
        self._price = price  # callable (prompt_tokens, completion_tokens) -> float | None
        self._on_mode_change = on_mode_change
        self._sent = 0
        self._kill_at = _kill_point()

    # The cost of a response, by the price table (None when the model's price is unknown).
    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.teacher.free:
            return 0.0
        if self._price is None:
            return None
        return self._price(prompt_tokens, completion_tokens)

    def _lookup(self, key: str) -> Completion | None:
        row = self.project.conn.execute(
            "SELECT response_json FROM generation_cache WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        data = json.loads(row["response_json"])
        return Completion(content=data["content"], finish_reason=data.get("finish_reason"),
                          prompt_tokens=data.get("prompt_tokens", 0),
                          completion_tokens=data.get("completion_tokens", 0), cached=True)

    def _record(self, key: str, messages: list[dict[str, str]], completion: Completion, cost: float | None,
                params: dict[str, Any]) -> None:
        self.project.conn.execute(
            """INSERT OR REPLACE INTO generation_cache
               (key, provider, model, request_json, response_json, prompt_tokens, completion_tokens, cost_usd,
                created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                key, self.teacher.endpoint, self.teacher.model,
                dumps({"model": self.teacher.model, "messages": messages, **params}),
                dumps({"content": completion.content, "finish_reason": completion.finish_reason,
                       "prompt_tokens": completion.prompt_tokens,
                       "completion_tokens": completion.completion_tokens}),
                completion.prompt_tokens, completion.completion_tokens, cost, time.time(),
            ),
        )

    def _maybe_kill(self) -> None:
        # Test-only: SLOWTUNE_TEST_KILL=teacher-call:N kills this process as network call N is about to
        # be sent, so the calls in flight at that moment are the only ones a resumed run may pay twice.
        if self._kill_at is not None and self._sent == self._kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    async def complete(
        self, messages: list[dict[str, str]], *, schema: dict[str, Any], temperature: float, max_tokens: int,
        nonce: int = 0,
    ) -> Completion:
        """One answer: from the cache if this exact request was answered before, else from the teacher."""
        while True:
            mode = self.mode
            key = cache_key(self.teacher, messages, mode=mode, temperature=temperature, max_tokens=max_tokens,
                            nonce=nonce)
            hit = self._lookup(key)
            if hit is not None:
                self.stats.cached += 1
                return hit
            try:
                completion = await self._call(messages, schema=schema, mode=mode, temperature=temperature,
                                              max_tokens=max_tokens)
            except ModeRejected as exc:
                self._downgrade(mode, str(exc))
                continue
            cost = self._cost(completion.prompt_tokens, completion.completion_tokens)
            self._record(key, messages, completion, cost,
                         {"mode": mode, "temperature": temperature, "max_tokens": max_tokens, "nonce": nonce})
            self.stats.calls += 1
            self.stats.prompt_tokens += completion.prompt_tokens
            self.stats.completion_tokens += completion.completion_tokens
            if cost is None:
                self.stats.unknown_price = True
            else:
                self.stats.cost_usd += cost
            return completion

    def _downgrade(self, mode: str, message: str) -> None:
        if self.mode != mode:
            return  # another call already moved down
        lower = MODES[MODES.index(mode) + 1]
        log.warning("%s does not accept %s output (%s); using %s", self.teacher.host, mode, message[:120], lower)
        self.mode = lower
        if self._on_mode_change is not None:
            self._on_mode_change(lower)

    async def _call(self, messages: list[dict[str, str]], *, schema: dict[str, Any], mode: str,
                    temperature: float, max_tokens: int) -> Completion:
        last: Transient | None = None
        for attempt in range(self.max_attempts):
            failure: Transient | None = None
            await self.limiter.acquire()
            try:
                self._sent += 1
                self._maybe_kill()
                completion = await self.teacher.complete(
                    messages, schema=schema, mode=mode, temperature=temperature, max_tokens=max_tokens,
                    timeout=self.timeout,
                )
            except Transient as exc:
                failure = exc
            finally:
                await self.limiter.release()
            if failure is None:
                await self.limiter.on_success()
                return completion
            last = failure
            self.stats.note_error("rate_limited" if failure.rate_limited else "transient")
            delay = min(self.backoff_cap, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
            if failure.retry_after is not None:
                if failure.retry_after > MAX_RETRY_AFTER:
                    raise TeacherError(f"{self.teacher.host} asked to wait {failure.retry_after:.0f} s before the next "
                                       "call (a quota may be used up); run again later", fatal=True)
                delay = failure.retry_after
            if failure.rate_limited:
                self.stats.rate_limited += 1
                await self.limiter.on_rate_limit(delay)
            if attempt + 1 < self.max_attempts:
                self.stats.retries += 1
                log.debug("teacher call failed (%s); retry %d in %.2f s", failure, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise TeacherError(f"{last}; gave up after {self.max_attempts} attempts")


def _kill_point() -> int | None:
    value = os.environ.get(KILL_ENV, "")
    if value.startswith("teacher-call:"):
        try:
            return int(value.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"{KILL_ENV}={value!r}: expected teacher-call:<call number>") from None
    return None
