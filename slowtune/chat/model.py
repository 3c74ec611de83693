"""A GGUF model to chat with: its own chat template, streaming, stop, context fitting and speed figures.

Built on :func:`slowtune.llama.load_gguf` (the one place llama.cpp models are opened). The prompt is
rendered here from the chat template in the GGUF's metadata, the same template training used, and token ids
go to llama.cpp's ``create_completion``: so the prompt that is counted (to fit the context window) is exactly
the prompt that is decoded, and nothing is re-guessed by llama-cpp-python's format detection, which maps
some templates to built-in formats that differ from the model's own (a Qwen template without its default
system prompt, for one). The answers are OpenAI-shaped ``chat.completion`` / ``chat.completion.chunk``
dicts, as llama-cpp-python's own chat API returns.

A GGUF without a chat template gets ChatML with a warning (the user sees it in the chat header).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

Cancel = Callable[[], bool] | threading.Event | None


class ChatError(RuntimeError):
    """The model cannot answer (bad file, prompt too long for the context, template error)."""


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    max_tokens: int = 512
    seed: int | None = None
    logit_bias: dict[int, float] | None = None

    @classmethod
    def greedy(cls, max_tokens: int = 256) -> Sampling:
        """Deterministic decoding: always the most likely token."""
        return cls(temperature=0.0, top_p=1.0, top_k=1, repeat_penalty=1.0, max_tokens=max_tokens, seed=0)

    def validate(self) -> None:
        if not 0 <= self.temperature <= 5:
            raise ChatError("temperature must be between 0 and 5")
        if not 0 < self.top_p <= 1:
            raise ChatError("top-p must be above 0 and at most 1")
        if self.top_k < 0:
            raise ChatError("top-k must be 0 (off) or more")
        if self.max_tokens < 1:
            raise ChatError("max tokens must be at least 1")
        if self.repeat_penalty <= 0:
            raise ChatError("repeat penalty must be above 0 (1 is off)")


@dataclass
class AnswerStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None  # from the request to the first token of the answer
    tokens_per_s: float | None = None  # decoding speed after the first token
    total_ms: float = 0.0
    finish_reason: str | None = None  # stop, length, cancelled
    dropped_messages: int = 0  # oldest turns left out to fit the context window

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _is_cancelled(cancel: Cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


def backend() -> str:
    """Where llama.cpp runs here: "Metal" on a Mac, "GPU" for other offload builds, else "CPU"."""
    import sys

    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return "Metal" if sys.platform == "darwin" else "GPU"
    return "CPU"


def logit_bias_processor(bias: dict[int, float], n_vocab: int) -> Callable[[Any, Any], Any]:
    """A llama-cpp-python logits processor adding ``bias`` (token id -> value; -inf bans a token).

    One dense vector added per token: ``create_completion``'s own ``logit_bias`` loops over the entries in
    Python, which costs milliseconds per token once thousands of tokens are banned.
    """
    import numpy as np

    ids = np.array(list(bias.keys()), dtype=np.int64)
    values = np.array(list(bias.values()), dtype=np.single)
    inside = (ids >= 0) & (ids < n_vocab)
    dense = np.zeros(n_vocab, dtype=np.single)
    np.add.at(dense, ids[inside], values[inside])

    def add_bias(_input_ids: Any, scores: Any) -> Any:
        scores += dense  # scores: llama.cpp's candidates, in token-id order, changed in place
        return scores

    return add_bias


class _StopScanner:
    """Cuts the answer at the first stop string, holding back only text that may be the start of one."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to show now, whether a stop string was reached)."""
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if self.pending.endswith(stop[:k]):
                    keep = k
                    break
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class ChatModel:
    """One loaded GGUF. Thread-safe: one answer at a time per model (two models can answer together)."""

    path: Path
    n_ctx: int = 4096
    lora_path: Path | None = None
    n_gpu_layers: int | None = None  # None: every layer on the GPU when llama.cpp has one, else the CPU
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from slowtune.llama import load_gguf

        self.path = Path(self.path).expanduser().resolve()
        if not self.path.is_file():
            raise ChatError(f"{self.path}: no such model file")
        with self.path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ChatError(f"{self.path}: not a GGUF file")
        layers = self.n_gpu_layers
        if layers is None:
            layers = -1 if backend() != "CPU" else 0
        from jinja2 import TemplateError

        try:
            self.llm = load_gguf(self.path, n_ctx=self.n_ctx, lora_path=self.lora_path, n_gpu_layers=layers)
        except TemplateError as exc:
            # llama-cpp-python compiles the GGUF's chat template while loading and fails on a broken one.
            raise ChatError(f"{self.path.name}: its chat template cannot be read ({exc})") from None
        except (ValueError, RuntimeError) as exc:
            raise ChatError(f"llama.cpp could not load {self.path}: {exc}") from None
        self.n_ctx = self.llm.n_ctx()
        self.backend = backend() if layers != 0 else "CPU"
        self.name = self.path.name
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.template_source = "gguf"
        if not template:
            template = FALLBACK_TEMPLATE
            self.template_source = "fallback"
            self.warnings.append(f"{self.path.name} has no chat template in its metadata; using ChatML, which may not "
                                 "be what the model was trained with")
        eos_id, bos_id = self.llm.token_eos(), self.llm.token_bos()
        self.eos_text = self.llm._model.token_get_text(eos_id) if eos_id != -1 else ""
        self.bos_text = self.llm._model.token_get_text(bos_id) if bos_id != -1 else ""
        try:
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=self.eos_text,
                                                  bos_token=self.bos_text)
        except Exception as exc:  # jinja2 syntax errors and friends
            raise ChatError(f"{self.path.name}: its chat template cannot be read ({exc})") from None
        self.template = template
        self._fold_system = False
        self.stop = self._end_of_turn_markers()
        self._stop_ids = set()
        for marker in self.stop:
            marker_ids = self.llm.tokenize(marker.encode("utf-8"), add_bos=False, special=True)
            if len(marker_ids) == 1:
                self._stop_ids.add(marker_ids[0])
        self._lock = threading.Lock()

    # --- the prompt ---------------------------------------------------------------------------------------
    def _render(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._fold_system and messages and messages[0]["role"] == "system":
            system, rest = messages[0]["content"], messages[1:]
            if rest and rest[0]["role"] == "user":
                rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
            messages = rest
        self._formatter.add_generation_prompt = add_generation_prompt
        try:
            return self._formatter(messages=messages).prompt
        except ValueError as exc:
            # Templates without a system role (some Mistral and Gemma ones) raise; training folded the system
            # prompt into the first user turn for them, so do the same here.
            if not self._fold_system and messages and messages[0]["role"] == "system":
                self._fold_system = True
                return self._render(messages, add_generation_prompt=add_generation_prompt)
            raise ChatError(f"{self.path.name}: the chat template refused the conversation ({exc})") from None
        except Exception as exc:
            raise ChatError(f"{self.path.name}: the chat template failed ({exc})") from None

    def _end_of_turn_markers(self) -> list[str]:
        """What the template writes after an assistant turn (``<|im_end|>``, ``<|eot_id|>``, ...): generation
        stops there even when the GGUF does not mark that token as end-of-generation."""
        probe = "\ue000probe\ue001"
        try:
            text = self._render([{"role": "user", "content": "hi"}, {"role": "assistant", "content": probe}],
                                add_generation_prompt=False)
        except ChatError:
            return [self.eos_text] if self.eos_text else []
        after = text.split(probe, 1)[1] if probe in text else ""
        marker = after.strip().split("\n", 1)[0].strip() if after.strip() else ""
        stops = [s for s in {marker, self.eos_text} if s]
        return sorted(stops)

    def tokens(self, prompt: str) -> list[int]:
        add_bos = not (self.bos_text and prompt.startswith(self.bos_text))
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    def fit(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[list[int], int]:
        """Prompt tokens for ``messages``, leaving out the oldest turns (never the system prompt or the last
        user message) until the prompt and the answer fit in the context window. Returns (tokens, dropped)."""
        system = [m for m in messages[:1] if m["role"] == "system"]
        turns = messages[len(system):]
        dropped = 0
        while True:
            ids = self.tokens(self._render(system + turns))
            # Room for the answer: all of max_tokens when it fits, but never more than a quarter of the window,
            # so a large --max-tokens does not push a short conversation out; a long answer stops at the end.
            if len(ids) + min(max_tokens, self.n_ctx // 4) <= self.n_ctx or len(turns) <= 1:
                break
            # Drop a whole exchange (user + assistant) so the conversation still alternates.
            cut = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
            turns = turns[cut:]
            dropped += cut
        if len(ids) + 1 > self.n_ctx:
            raise ChatError(f"the message is {len(ids)} tokens; the context window of {self.name} is {self.n_ctx}")
        return ids, dropped

    # --- answering ----------------------------------------------------------------------------------------
    def _ends_turn(self, token: int) -> bool:
        """End-of-generation tokens, and end-of-turn markers that are a single token: a control token such as
        ``<|im_end|>`` detokenizes to no text, so a stop *string* would never see it when the GGUF does not mark
        it as end-of-generation."""
        import llama_cpp

        return token in self._stop_ids or bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def _generate(self, ids: list[int], sampling: Sampling) -> Iterator[int]:
        """Token ids from llama.cpp for the prompt ``ids``, sampled as ``create_completion`` would sample them
        (the same sampler chain and defaults, min-p 0.05 included; a logit bias goes in as a logits processor,
        as there)."""
        import random

        from llama_cpp import LogitsProcessorList

        self.llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**32))
        processors = None
        if sampling.logit_bias:
            processors = LogitsProcessorList([logit_bias_processor(sampling.logit_bias, self.llm.n_vocab())])
        return self.llm.generate(ids, top_k=sampling.top_k, top_p=sampling.top_p, min_p=0.05,
                                 temp=sampling.temperature, repeat_penalty=sampling.repeat_penalty,
                                 logits_processor=processors)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling | None = None, *,
               cancel: Cancel = None) -> Iterator[dict[str, Any]]:
        """``chat.completion.chunk`` dicts: a role chunk, content chunks, then a chunk with ``finish_reason``
        and the answer's figures under ``slowtune_stats``. ``cancel`` stops the answer between tokens.

        The loop runs over llama.cpp's token generator rather than ``create_completion(stream=True)``: that
        way every token is counted exactly (re-tokenizing the text does not give the same count), text is
        sent as soon as it is complete UTF-8 (``create_completion`` holds back text it cannot yet rule out as
        a stop string, sometimes until the end), and each token costs O(1) work instead of re-detokenizing
        the whole answer so far.
        """
        import codecs

        sampling = sampling or Sampling()
        sampling.validate()
        with self._lock:
            started = time.perf_counter()
            ids, dropped = self.fit(messages, sampling.max_tokens)
            max_tokens = min(sampling.max_tokens, self.n_ctx - len(ids))
            chunk_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            created = int(time.time())

            def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
                return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": self.name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            yield chunk({"role": "assistant"})
            stats = AnswerStats(prompt_tokens=len(ids), dropped_messages=dropped)
            first = last = None
            sampled = 0  # every token llama.cpp produced, the one that ended the turn included
            finish = "length"
            hit_stop = False
            stops = _StopScanner(self.stop)
            utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character can span tokens
            tokens = self._generate(ids, sampling)
            try:
                if _is_cancelled(cancel):
                    finish = "cancelled"
                else:
                    for token in tokens:
                        last = time.perf_counter()
                        first = first or last
                        sampled += 1
                        if _is_cancelled(cancel):
                            finish = "cancelled"
                            break
                        if self._ends_turn(token):
                            finish = "stop"
                            break
                        stats.completion_tokens += 1
                        text, hit_stop = stops.feed(utf8.decode(self.llm.detokenize([token])))
                        if text:
                            yield chunk({"content": text})
                        if hit_stop:
                            finish = "stop"
                            break
                        if stats.completion_tokens >= max_tokens:
                            break
            finally:
                tokens.close()  # also when the caller closes this generator: llama.cpp stops here
            if not hit_stop:
                tail = stops.feed(utf8.decode(b"", final=True))[0] + stops.flush()
                if tail:
                    yield chunk({"content": tail})
            end = time.perf_counter()
            stats.total_ms = (end - started) * 1000
            stats.finish_reason = finish
            if first is not None and last is not None and stats.completion_tokens > 0:
                stats.ttft_ms = (first - started) * 1000
                if sampled > 1 and last > first:
                    stats.tokens_per_s = (sampled - 1) / (last - first)
            self.last_stats = stats
            final = chunk({}, finish)
            final["slowtune_stats"] = stats.to_json()
            yield final

    def chat(self, messages: list[dict[str, str]], sampling: Sampling | None = None, *,
             cancel: Cancel = None) -> dict[str, Any]:
        """One whole answer as a ``chat.completion`` dict (with ``usage`` and ``slowtune_stats``)."""
        return completion_from_chunks(self.stream(messages, sampling, cancel=cancel), model=self.name)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "n_ctx": self.n_ctx, "backend": self.backend,
                "template": self.template_source, "lora": str(self.lora_path) if self.lora_path else None,
                "warnings": list(self.warnings)}

    def close(self) -> None:
        with self._lock:
            self.llm.close()

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completion_from_chunks(chunks: Iterable[dict[str, Any]], model: str = "") -> dict[str, Any]:
    """The ``chat.completion`` dict that a stream of ``chat.completion.chunk`` dicts adds up to (an answer cut
    short before its last chunk gets finish_reason "cancelled" and no figures)."""
    content: list[str] = []
    final: dict[str, Any] = {}
    for part in chunks:
        content.append(part["choices"][0]["delta"].get("content", ""))
        final = part
    stats = final.get("slowtune_stats") or {}
    finish = final["choices"][0]["finish_reason"] if final else None
    return {
        "id": final.get("id"), "object": "chat.completion", "created": final.get("created"),
        "model": final.get("model", model),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(content)},
                     "finish_reason": finish or "cancelled"}],
        "usage": {"prompt_tokens": stats.get("prompt_tokens", 0),
                  "completion_tokens": stats.get("completion_tokens", 0),
                  "total_tokens": stats.get("prompt_tokens", 0) + stats.get("completion_tokens", 0)},
        "slowtune_stats": stats,
    }


def stream_side_by_side(models: list[ChatModel], messages: list[dict[str, str]] | list[list[dict[str, str]]],
                        sampling: Sampling | None = None, *, cancel: Cancel = None
                        ) -> Iterator[tuple[int, dict[str, Any]]]:
    """The same question to several models at once: ``(slot, chunk)`` as each model produces it.

    ``messages`` is one conversation for every model, or one conversation per model: in a multi-turn
    comparison each model must see its own earlier answers. Each model decodes in its own thread (llama.cpp
    releases the GIL while it computes), so the answers arrive interleaved; slot numbers follow the order of
    ``models``.
    """
    import queue

    events: queue.Queue[tuple[int, Any]] = queue.Queue()
    done = object()
    # Set when the caller stops reading (closes the generator, or Ctrl-C lands in it): both models stop at
    # their next token instead of decoding to the end while holding their locks.
    abandoned = threading.Event()

    def stopped() -> bool:
        return abandoned.is_set() or _is_cancelled(cancel)

    if messages and isinstance(messages[0], list):
        conversations = list(messages)
        if len(conversations) != len(models):
            raise ChatError(f"{len(conversations)} conversations for {len(models)} models")
    else:
        conversations = [messages] * len(models)

    def run(slot: int, model: ChatModel) -> None:
        try:
            for part in model.stream(conversations[slot], sampling, cancel=stopped):  # type: ignore[arg-type]
                events.put((slot, part))
        except Exception as exc:  # handed to the caller's thread
            events.put((slot, exc))
        finally:
            events.put((slot, done))

    threads = [threading.Thread(target=run, args=(i, m), daemon=True, name=f"chat-{i}") for i, m in enumerate(models)]
    for t in threads:
        t.start()
    remaining = len(threads)
    error: Exception | None = None
    try:
        while remaining:
            slot, item = events.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                error = error or item
            else:
                yield slot, item
    finally:
        if remaining:
            abandoned.set()
        for t in threads:
            t.join()
    if error is not None:
        raise error
