"""The one llama.cpp module of the app: every GGUF (export verification, GGUF import, chat, the local teacher,
the self-test) is opened here, so workarounds and defaults live in one place.

Workaround: on x86 CPUs with AMX, llama.cpp's extra CPU buffer types (weight repacking for quantised
tensors) crash while decoding small quantised models (llama-cpp-python 0.3.36, seen on Q8_0 and Q4_K_M
exports). ``use_extra_bufts`` turns that repacking off; llama-cpp-python's ``Llama`` does not expose the
setting, so it is set on the default model parameters while ``Llama`` is built. Macs are not affected.
"""

from __future__ import annotations

import contextlib
import functools
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_patch_lock = threading.Lock()


@functools.cache
def repacking_is_safe() -> bool:
    """Whether llama.cpp's CPU weight repacking can stay on here (not on x86 with AMX: see the module docstring)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    info = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return not (platform.machine().lower() in ("x86_64", "amd64") and "AMX_INT8 = 1" in info)


@contextlib.contextmanager
def _model_defaults(use_extra_bufts: bool) -> Iterator[None]:
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def defaults() -> Any:
        params = original()
        params.use_extra_bufts = use_extra_bufts
        return params

    with _patch_lock:
        low.llama_model_default_params = defaults
        try:
            yield
        finally:
            low.llama_model_default_params = original


@functools.cache
def default_threads() -> int | None:
    """llama.cpp's own default: one thread per physical core (llama-cpp-python's is half the logical cores, which
    on a 2-core Linux machine is one thread and about 30% slower). On a Mac, None keeps llama-cpp-python's choice:
    half the cores is the performance cores there, and Metal does the work."""
    if platform.system() == "Darwin":
        return None
    import psutil

    return psutil.cpu_count(logical=False) or None


def load_gguf(path: Path, *, n_ctx: int = 4096, logits_all: bool = False, lora_path: Path | None = None,
              exact: bool = False, **kwargs: Any) -> Any:
    """A ``llama_cpp.Llama`` for ``path``.

    ``exact``: keep the KV cache in float32 (llama.cpp's default is float16, which alone moves logits by
    ~1e-3 relative), for comparisons against MLX.
    """
    import llama_cpp

    if (threads := default_threads()) is not None:
        kwargs.setdefault("n_threads", threads)
        kwargs.setdefault("n_threads_batch", threads)
    if exact:
        kwargs.setdefault("type_k", llama_cpp.GGML_TYPE_F32)
        kwargs.setdefault("type_v", llama_cpp.GGML_TYPE_F32)
    with _model_defaults(repacking_is_safe()):
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, logits_all=logits_all, verbose=False,
                              lora_path=str(lora_path) if lora_path else None, **kwargs)
    # llama-cpp-python 0.3.36 checks a failed adapter load with ``is None``, but gets a NULL pointer object back,
    # and decoding with it then crashes the process. Catch it here, where a clear message can still be given.
    if lora_path and not getattr(llm, "_lora_adapter", None):
        llm._lora_adapter = None
        llm.close()
        raise ValueError(f"{lora_path} is not a LoRA adapter that fits {Path(path).name} (llama.cpp could not load "
                         "it: wrong file, or an adapter made for another model)")
    return llm


def json_grammar(schema: dict[str, Any], *, max_string_chars: int = 1500) -> Any:
    """A llama.cpp grammar for JSON matching ``schema``.

    llama-cpp-python's converter spells ``maxLength: N`` as N nested optional groups, which overflows
    llama.cpp's grammar parser for answers of realistic length. So string lengths are dropped from the schema
    and every string is bounded instead with one flat ``{0,N}`` repetition.
    """
    import json

    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k not in ("maxLength", "minLength")}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    gbnf = json_schema_to_gbnf(json.dumps(strip(schema)))
    unbounded = 'string ::= "\\"" char* "\\"" space'
    if unbounded in gbnf:
        gbnf = gbnf.replace(unbounded, f'string ::= "\\"" char{{0,{max_string_chars}}} "\\"" space')
    return llama_cpp.LlamaGrammar.from_string(gbnf, verbose=False)


def complete_chat(llm: Any, messages: list[dict[str, str]], *, schema: dict[str, Any] | None = None,
                  temperature: float = 0.7, max_tokens: int = 512, seed: int | None = None,
                  max_string_chars: int = 1500) -> dict[str, Any]:
    """One chat completion, OpenAI-shaped (llama-cpp-python's own result: choices, usage).

    With ``schema`` the output is constrained by a llama.cpp grammar built from the JSON schema, so it always
    parses (a small model then writes schema-valid text that may still be nonsense; callers check content).
    The model's own chat template (GGUF metadata) formats the messages.
    """
    grammar = json_grammar(schema, max_string_chars=max_string_chars) if schema else None
    return llm.create_chat_completion(
        messages=messages, temperature=temperature, max_tokens=max_tokens, grammar=grammar, seed=seed,
    )
