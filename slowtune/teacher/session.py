"""Turning a configured provider and model into a ready :class:`CallRunner` (used by the CLI and the app)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slowtune.store import Project
from slowtune.teacher.client import CallRunner, RemoteTeacher, Teacher


@dataclass
class TeacherChoice:
    provider: Any  # slowtune.teacher.providers.Provider
    model: str
    mode: str  # structured-output mode the run starts with
    context_length: int | None
    free: bool
    destination: str  # where document text goes, in the user's words
    remote: bool


def choose(provider_id: str, model: str | None, *, mode: str | None = None, refresh_probe: bool = False,
           timeout: float = 30) -> TeacherChoice:
    """Resolve the provider and model, and probe (or read from the cache) its structured-output support."""
    from slowtune.teacher import probe, providers

    provider = providers.get_provider(provider_id)
    model = model or provider.default_model
    if not model:
        raise providers.NoModelError(provider.id)
    if provider.in_process:
        providers.check_gguf_file(model)
    if mode is None:
        caps = probe.get_capabilities(provider, model, refresh=refresh_probe, timeout=timeout)
        mode, context = caps.structured, caps.context_length
    else:
        context = None
    free = is_free(provider, model)
    return TeacherChoice(provider=provider, model=model, mode=mode, context_length=context, free=free,
                         destination=providers.destination(provider), remote=providers.is_remote(provider))


def is_free(provider: Any, model: str) -> bool:
    """Whether calls cost nothing: the in-process model, or a server on this computer (localhost, 127.0.0.1, ::1).
    A server on this computer may be a proxy to a paid service; a price the user gave the model (their
    ``prices.json``) then counts, but a list price never does."""
    from slowtune.teacher import cost, providers

    if provider.in_process:
        return True
    if providers.is_remote(provider):
        return False
    return providers.get_preset(provider.preset).local or cost.user_price_for(model) is None


def open_teacher(choice: TeacherChoice, *, timeout: float) -> Teacher:
    from slowtune.teacher import providers

    if choice.provider.in_process:
        from slowtune.teacher.local import LocalTeacher

        return LocalTeacher(choice.model)
    client = providers.make_client(choice.provider, timeout=timeout, async_=True)
    return RemoteTeacher(choice.provider, choice.model, free=choice.free, host=choice.destination, client=client)


def price_function(choice: TeacherChoice) -> Any:
    """(prompt_tokens, completion_tokens) -> USD, or None when the model has no known price."""
    from slowtune.teacher import cost

    def price(prompt_tokens: int, completion_tokens: int) -> float | None:
        return cost.cost_usd(choice.model, prompt_tokens, completion_tokens, free=choice.free)

    return price


def make_runner(project: Project, choice: TeacherChoice, *, concurrency: int = 8, timeout: float = 120.0,
                max_attempts: int = 6) -> CallRunner:
    from slowtune.teacher import probe

    teacher = open_teacher(choice, timeout=timeout)
    if choice.provider.in_process:
        concurrency = 1  # llama.cpp decodes one sequence at a time here

    def remember(mode: str) -> None:
        probe.downgrade(choice.provider, choice.model, mode)

    return CallRunner(project, teacher, concurrency=concurrency, mode=choice.mode, timeout=timeout,
                      max_attempts=max_attempts, price=price_function(choice), on_mode_change=remember,
                      context_length=choice.context_length)
