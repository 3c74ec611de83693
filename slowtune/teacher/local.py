"""The in-process teacher: a GGUF model run by llama.cpp, so private documents never leave the Mac.

It answers the same calls as a remote endpoint. Its JSON is constrained by a grammar built from each task's
schema (through the one llama.cpp module, ``slowtune.llama``), so replies always parse; whether
they are any good is for the pipeline's quote check and judge to decide, as for any teacher. llama.cpp runs
one sequence at a time here, so calls are serialised and run in a worker thread to keep the event loop free.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

from slowtune.teacher.client import Completion, TeacherError
from slowtune.teacher.prompts import MAX_ANSWER_CHARS


def file_identity(path: Path) -> str:
    """A cheap content identity for a (possibly many-GB) model file: size plus hashes of its ends."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        if size > 2 << 20:
            handle.seek(size - (1 << 20))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:32]


class LocalTeacher:
    free = True
    host = "this Mac (in-process, nothing is sent anywhere)"

    def __init__(self, path: str | Path, *, n_ctx: int = 8192, seed: int = 0,
                 max_string_chars: int = MAX_ANSWER_CHARS) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise TeacherError(f"the local teacher model {self.path} does not exist", fatal=True)
        self.model = self.path.name
        self.endpoint = f"gguf:{file_identity(self.path)}"
        self.n_ctx = n_ctx
        self.seed = seed
        self.max_string_chars = max_string_chars
        self._llm: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._llm is None:
            from slowtune.llama import load_gguf

            try:
                self._llm = load_gguf(self.path, n_ctx=self.n_ctx, seed=self.seed)
            except (ValueError, RuntimeError) as exc:
                raise TeacherError(f"llama.cpp could not load {self.path}: {exc}", fatal=True) from None
        return self._llm

    def _complete(self, messages: list[dict[str, str]], schema: dict[str, Any], mode: str, temperature: float,
                  max_tokens: int) -> Completion:
        from slowtune.llama import complete_chat

        with self._lock:
            llm = self._load()
            try:
                result = complete_chat(llm, messages, schema=self._at_least_one(schema) if mode != "text" else None,
                                       temperature=temperature, max_tokens=max_tokens, seed=self.seed,
                                       max_string_chars=self.max_string_chars)
            except ValueError as exc:
                # e.g. the prompt is longer than the context window
                raise TeacherError(f"the local teacher could not answer: {exc}") from None
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(content=choice["message"].get("content") or "", finish_reason=choice.get("finish_reason"),
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)))

    @staticmethod
    def _at_least_one(schema: dict[str, Any]) -> dict[str, Any]:
        # An unconstrained small model takes the grammar's shortest way out, an empty list. Asked for items,
        # it must write at least one, so that what it writes meets the same checks as any teacher's. (A schema of
        # several lists, the facts task's, needs only its first: a chunk may well have no near miss to ask about.)
        key = schema["required"][0]
        prop = schema["properties"][key]
        if prop.get("type") != "array":
            return schema
        return {**schema, "properties": {**schema["properties"], key: {**prop, "minItems": 1}}}

    async def complete(self, messages: list[dict[str, str]], *, schema: dict[str, Any], mode: str,
                       temperature: float, max_tokens: int, timeout: float) -> Completion:
        # No timeout: a local model cannot be slow on purpose, and cancelling llama.cpp mid-decode is unsafe.
        return await asyncio.to_thread(self._complete, messages, schema, mode, temperature, max_tokens)

    async def aclose(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None
