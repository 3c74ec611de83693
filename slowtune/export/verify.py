"""Prove an export behaves like the model that was trained, before the user gets it.

The same prompts go through llama.cpp (each GGUF, one file at a time, memory-mapped) and through MLX (base + adapter,
exactly as trained). The MLX side runs the way the streamed trainer runs forward: one block read from the model's own
files at a time, every sequence through it while it is loaded (``streamed_reference``), so verifying an export never
needs more memory than training did. llama.cpp's greedy continuation of each prompt is checked against the trained
model by teacher forcing: MLX's next-token choice at each step of that same continuation (one forward pass, not one a
token).

Reported per file, over every position of the prompts:

- ``top1_agreement``: next-token agreement over the positions whose MLX top-two margin is at least ``MARGIN``;
- ``top1_all``: the same over every position;
- ``excluded``: how many positions were near-ties, set aside from the first figure (and counted in the second);
- ``max_logit_error``: the largest logit difference, divided by the largest |logit| of the trained model;
- whether the 32-token greedy continuations match.

An F16 (or BF16) file fails the export when ``top1_agreement`` < 0.99 or ``max_logit_error`` > 1e-2; an F32 file when
``max_logit_error`` > 1e-3 or a continuation differs. Quantised files only report. A GGUF whose vocabulary size differs
from the trained model's fails loudly: nothing is compared over a silently shared part.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MARGIN = 0.1
F16_MIN_AGREEMENT = 0.99
F16_MAX_LOGIT_ERROR = 1e-2  # max |difference| / max |logit|
F32_LOGIT_TOLERANCE = 1e-3  # max |difference| / max |logit|
GREEDY_TOKENS = 32


class VerificationError(RuntimeError):
    pass


@dataclass
class Verification:
    file: str
    quant: str
    positions: int  # positions compared for top1_agreement (the near-ties left out)
    excluded: int  # near-ties set aside (MLX's top-two margin below MARGIN)
    top1_agreement: float
    max_logit_diff: float
    logit_scale: float
    greedy_prompts: int
    greedy_matches: int
    passed: bool
    required: bool  # whether this file must pass for the export to succeed
    notes: list[str] = field(default_factory=list)
    top1_all: float = 0.0  # agreement over every position
    total_positions: int = 0
    max_logit_error: float = 0.0  # max_logit_diff / logit_scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


Reference = tuple[list[np.ndarray], list[list[int]]]  # logits at each prompt position, a greedy continuation each


def mlx_reference(model_dir: Path, adapter_dir: Path | None, prompts: list[list[int]]) -> Reference:
    """Logits and 32-token greedy continuations from mlx-lm with the whole model loaded (tests compare the streamed
    reference against it; the export itself uses ``streamed_reference``)."""
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


def _lora_config(adapter_dir: Path | None) -> Any:
    import json

    from slowtune.train.config import LoraConfig

    if adapter_dir is None:
        return LoraConfig(rank=1, num_layers=1)  # LoRA's B starts at zero: the layer adds nothing
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    lora = config.get("lora_parameters", {})
    return LoraConfig(rank=int(lora.get("rank", 8)), alpha=float(lora.get("scale", 2.0)) * int(lora.get("rank", 8)),
                      dropout=0.0, num_layers=int(config.get("num_layers", -1)),
                      keys=tuple(lora.get("keys") or LoraConfig().keys))


def streamed_reference(model_dir: Path, adapter_dir: Path | None, sequences: list[list[int]],
                       progress: Any = None, plain: list[list[int]] | None = None) -> Any:
    """The trained model's logits at every position of each sequence, block by block from the base model's files
    with the adapter applied (as the streamed engine runs forward), in float32.

    ``plain``: sequences to run through the same loaded blocks without the adapter (the base model); then the
    result is (adapted logits, plain logits), from one read of the model."""
    import mlx.core as mx

    from slowtune.train.engines import StreamedEngine
    from slowtune.train.model import TrainModel

    tm = TrainModel(Path(model_dir), _lora_config(adapter_dir), streamed=True, compute_dtype="float32")
    if adapter_dir is not None:
        weights = mx.load(str(Path(adapter_dir) / "adapters.safetensors"))
        trainable = tm.lora_parameters()
        missing = sorted(set(trainable) - set(weights))
        if missing:
            raise VerificationError(f"{adapter_dir}: the adapter lacks {missing[0]} (and {len(missing) - 1} more), "
                                    "which the model it was trained on has")
        tm.set_lora_parameters({k: weights[k].astype(mx.float32) for k in trainable})
    return StreamedEngine(tm).logits(sequences, progress=progress, plain=plain)


def llama_reference(gguf: Path, prompts: list[list[int]], lora: Path | None = None) -> Reference:
    """Logits at every prompt position and a 32-token greedy continuation, from llama.cpp (optionally with a LoRA
    GGUF on top). The file is memory-mapped and closed before this returns."""
    from slowtune.llama import load_gguf

    n_ctx = max(len(p) for p in prompts) + GREEDY_TOKENS + 8
    llm = load_gguf(gguf, n_ctx=n_ctx, logits_all=True, lora_path=lora, exact=True, seed=0)
    logits, greedy = [], []
    try:
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
    finally:
        llm.close()
    return logits, greedy


def teacher_forced_references(model_dir: Path, adapter_dir: Path | None, prompts: list[list[int]],
                              runs: list[Reference], progress: Any = None,
                              base_too: bool = False) -> Any:
    """For each llama.cpp run (one per file): the trained model's logits at the prompt positions, and its next-token
    choice at each step of that run's greedy continuation. One block-by-block pass serves every file.

    ``base_too``: the base model's logits at the prompt positions come from the same pass (the adapter switched off
    block by block); the result is then (references, base logits)."""
    sequences = [p + run[1][i][:-1] for run in runs for i, p in enumerate(prompts)] or [list(p) for p in prompts]
    logits = streamed_reference(model_dir, adapter_dir, sequences, progress=progress,
                                plain=[list(p) for p in prompts] if base_too else None)
    base = None
    if base_too:
        logits, base = logits
    out = []
    for r in range(len(runs)):
        chunk = logits[r * len(prompts):(r + 1) * len(prompts)]
        out.append(([x[: len(p)] for x, p in zip(chunk, prompts, strict=True)],
                    [x[len(p) - 1:].argmax(-1).tolist() for x, p in zip(chunk, prompts, strict=True)]))
    return (out, base) if base_too else out


def compare(reference: Reference, got: Reference, *, file: str, quant: str) -> Verification:
    ref_logits, ref_greedy = reference
    got_logits, got_greedy = got
    positions = excluded = agree = agree_all = total = 0
    max_diff = scale = 0.0
    for r, g in zip(ref_logits, got_logits, strict=True):
        if r.shape[-1] != g.shape[-1]:
            raise VerificationError(
                f"{file}: llama.cpp gives {g.shape[-1]:,} scores a position, the trained model {r.shape[-1]:,}: the "
                "GGUF's vocabulary is not the model's. The export is wrong; nothing was compared.")
        max_diff = max(max_diff, float(np.abs(r - g).max()))
        scale = max(scale, float(np.abs(r).max()))
        top2 = np.sort(r, axis=-1)[:, -2:]
        confident = (top2[:, 1] - top2[:, 0]) >= MARGIN
        same = r.argmax(-1) == g.argmax(-1)
        excluded += int((~confident).sum())
        positions += int(confident.sum())
        agree += int(same[confident].sum())
        agree_all += int(same.sum())
        total += len(same)
    agreement = agree / positions if positions else 0.0
    agreement_all = agree_all / total if total else 0.0
    error = max_diff / scale if scale else float("inf")
    greedy_matches = sum(a == b for a, b in zip(ref_greedy, got_greedy, strict=True))
    required = quant.upper() in ("F32", "F16", "BF16")
    figures = (f"top-1 agreement {agreement:.2%} on {positions} positions, {agreement_all:.2%} on all {total} "
               f"({excluded} near-ties set aside); largest logit error {error:.1e} of the logit scale")
    notes = []
    if quant.upper() == "F32":
        passed = error <= F32_LOGIT_TOLERANCE and greedy_matches == len(ref_greedy)
        notes.append(f"F32: largest logit difference {max_diff:.2e} against a logit scale of {scale:.2f} "
                     f"(allowed {F32_LOGIT_TOLERANCE:g} of the scale); {figures}")
    elif required:
        passed = agreement >= F16_MIN_AGREEMENT and error <= F16_MAX_LOGIT_ERROR
        notes.append(f"{quant}: {figures} (needs {F16_MIN_AGREEMENT:.0%} and at most {F16_MAX_LOGIT_ERROR:g})")
    else:
        passed = True
        notes.append(f"{quant}: {figures} (quantised: reported, not required)")
    return Verification(file, quant, positions, excluded, agreement, max_diff, scale, len(ref_greedy),
                        greedy_matches, passed, required, notes, agreement_all, total, error)


def adapter_changed_model(base: list[np.ndarray] | Reference, tuned: list[np.ndarray] | Reference) -> float:
    """Largest logit change the adapter makes; ~0 means a fuse (or training) that did nothing."""
    a_logits = base[0] if isinstance(base, tuple) else base
    b_logits = tuned[0] if isinstance(tuned, tuple) else tuned
    return max(float(np.abs(a - b).max()) for a, b in zip(a_logits, b_logits, strict=True))
