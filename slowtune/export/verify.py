"""Prove an export behaves like the model that was trained, before the user gets it.

The same prompts go through MLX (base + adapter, exactly as trained) and through llama.cpp (each GGUF).
Reported per file: top-1 next-token agreement over every position whose MLX top-two margin is at least
``MARGIN`` (random test models have near-ties, where either answer is right; how many positions were set
aside is reported too), the largest logit difference against the logit scale, and whether 32 greedy tokens
match. An F16 (or F32/BF16) export that fails is an error; quantised exports only report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MARGIN = 0.1
F16_MIN_AGREEMENT = 0.99
F32_LOGIT_TOLERANCE = 1e-3  # max |difference| / max |logit|
GREEDY_TOKENS = 32


class VerificationError(RuntimeError):
    pass


@dataclass
class Verification:
    file: str
    quant: str
    positions: int  # positions compared
    excluded: int  # near-ties set aside (MLX's top-two margin below MARGIN)
    top1_agreement: float
    max_logit_diff: float
    logit_scale: float
    greedy_prompts: int
    greedy_matches: int
    passed: bool
    required: bool  # whether this file must pass for the export to succeed
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mlx_reference(model_dir: Path, adapter_dir: Path | None, prompts: list[list[int]]) -> tuple[list[np.ndarray], list[list[int]]]:
    """Logits for every prompt position and a 32-token greedy continuation, from MLX as trained."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(model_dir), adapter_path=str(adapter_dir) if adapter_dir else None)
    logits, greedy = [], []
    for tokens in prompts:
        logits.append(np.array(model(mx.array([tokens]))[0].astype(mx.float32)))
        cache = make_prompt_cache(model)
        out = model(mx.array([tokens]), cache=cache)
        generated = []
        for _ in range(GREEDY_TOKENS):
            nxt = int(mx.argmax(out[0, -1]).item())
            generated.append(nxt)
            out = model(mx.array([[nxt]]), cache=cache)
        greedy.append(generated)
    return logits, greedy


def llama_reference(gguf: Path, prompts: list[list[int]], lora: Path | None = None) -> tuple[list[np.ndarray], list[list[int]]]:
    """The same from llama.cpp, optionally with a LoRA GGUF applied on top."""
    from slowtune.chat.engine import load_gguf

    n_ctx = max(len(p) for p in prompts) + GREEDY_TOKENS + 8
    llm = load_gguf(gguf, n_ctx=n_ctx, logits_all=True, lora_path=lora, exact=True, seed=0)
    logits, greedy = [], []
    for tokens in prompts:
        llm.reset()
        llm.eval(tokens)
        logits.append(np.array(llm.scores[: len(tokens)], dtype=np.float32))
        generated = []
        for _ in range(GREEDY_TOKENS):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            generated.append(nxt)
            llm.eval([nxt])
        greedy.append(generated)
    llm.close()
    return logits, greedy


def compare(reference: tuple[list[np.ndarray], list[list[int]]], got: tuple[list[np.ndarray], list[list[int]]],
            *, file: str, quant: str) -> Verification:
    ref_logits, ref_greedy = reference
    got_logits, got_greedy = got
    positions = excluded = agree = 0
    max_diff = scale = 0.0
    for r, g in zip(ref_logits, got_logits, strict=True):
        vocab = min(r.shape[-1], g.shape[-1])
        r, g = r[:, :vocab], g[:, :vocab]
        max_diff = max(max_diff, float(np.abs(r - g).max()))
        scale = max(scale, float(np.abs(r).max()))
        top2 = np.sort(r, axis=-1)[:, -2:]
        confident = (top2[:, 1] - top2[:, 0]) >= MARGIN
        excluded += int((~confident).sum())
        positions += int(confident.sum())
        agree += int((r.argmax(-1) == g.argmax(-1))[confident].sum())
    agreement = agree / positions if positions else 0.0
    greedy_matches = sum(a == b for a, b in zip(ref_greedy, got_greedy, strict=True))
    required = quant.upper() in ("F32", "F16", "BF16")
    notes = []
    if quant.upper() == "F32":
        passed = max_diff <= F32_LOGIT_TOLERANCE * scale and greedy_matches == len(ref_greedy)
        notes.append(f"F32: largest logit difference {max_diff:.2e} against a logit scale of {scale:.2f} "
                     f"(allowed {F32_LOGIT_TOLERANCE:g} of the scale)")
    elif required:
        passed = agreement >= F16_MIN_AGREEMENT
        notes.append(f"{quant}: top-1 agreement {agreement:.2%} on {positions} positions "
                     f"(needs {F16_MIN_AGREEMENT:.0%}); {excluded} near-tie positions set aside")
    else:
        passed = True
        notes.append(f"{quant}: top-1 agreement {agreement:.2%} (quantised: reported, not required)")
    return Verification(file, quant, positions, excluded, agreement, max_diff, scale, len(ref_greedy),
                        greedy_matches, passed, required, notes)


def adapter_changed_model(base: tuple[list[np.ndarray], Any], tuned: tuple[list[np.ndarray], Any]) -> float:
    """Largest logit change the adapter makes; ~0 means a fuse (or training) that did nothing."""
    return max(float(np.abs(a - b).max()) for a, b in zip(base[0], tuned[0], strict=True))
