"""Greedy answers from the model being trained, block by block, with or without its LoRA.

Training scores its checkpoints on short closed-book questions, and replay needs the base model's own answers to
general prompts; both come from here. The decoding drives the blocks the way the engines do (``arch``), so it
works for the in-memory and the streamed engine alike: for every decoding step each block is taken once
(``engine.hold``: loaded from disk when streamed, a no-op in memory) and every sequence of the batch goes through
it, with a key/value cache per block (mlx-lm's ``BatchKVCache``: left-padded prompts, one batch).

A streamed model is read once per generated token, so callers keep answers short and batches large.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from slowtune.progress import Progress, ensure
from slowtune.train import arch

__all__ = ["greedy"]


@contextlib.contextmanager
def _lora(tm: Any, enabled: bool) -> Iterator[None]:
    if enabled:
        yield
        return
    from slowtune.train.engines import _lora_off

    with contextlib.ExitStack() as stack:
        for layer in tm.layers:
            stack.enter_context(_lora_off(layer))
        yield


def _forward(engine: Any, tokens: Any, caches: list[Any], progress: Progress) -> Any:
    """Last-position logits of ``tokens`` [B, N], extending ``caches``; each block taken once."""
    from mlx_lm.models.base import create_attention_mask

    tm = engine.tm
    window = tm.config.get("sliding_window")
    with engine.hold("embed"):
        h = arch.embed(tm, tokens)
    for i in range(tm.num_layers):
        progress.check()
        with engine.hold(i):
            mask = create_attention_mask(h, caches[i], window_size=window if tm.sliding[i] and window else None,
                                         return_array=True)
            if tm.model_type == "gemma2":
                mask = mask[:, :, None]  # its scores carry a separate axis for the query heads sharing a key head
            h = tm.layers[i](h, mask, cache=caches[i])
            engine.settle(h)
    with engine.hold("head"):
        logits = arch.head_logits(tm, h[:, -1:, :])
        engine.settle(logits)
    return logits[:, -1, :]


def greedy(engine: Any, prompts: Sequence[Sequence[int]], max_new: int, stop: set[int], *, lora: bool = True,
           batch: int = 32, progress: Progress | None = None) -> list[list[int]]:
    """The greedy continuation (at most ``max_new`` tokens, without the stop token) of each prompt.

    ``lora=False`` answers as the base model. ``batch`` prompts share one pass over the blocks. A cancel (through
    ``progress``) raises ``Cancelled`` between blocks.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    progress = ensure(progress)
    tm = engine.tm
    out: list[list[int]] = [[] for _ in prompts]
    order = sorted(range(len(prompts)), key=lambda k: len(prompts[k]))  # similar lengths pad less
    was_training = tm.model.training
    tm.model.eval()
    try:
        with _lora(tm, lora):
            for start in range(0, len(order), batch):
                group = order[start:start + batch]
                longest = max(len(prompts[k]) for k in group)
                pads = [longest - len(prompts[k]) for k in group]
                rows = [[0] * p + list(prompts[k]) for p, k in zip(pads, group, strict=True)]
                caches = [BatchKVCache(pads) for _ in range(tm.num_layers)]
                logits = _forward(engine, mx.array(rows), caches, progress)
                done = [False] * len(group)
                for _ in range(max_new):
                    nxt = mx.argmax(logits, axis=-1)
                    mx.eval(nxt)
                    ids = nxt.tolist()
                    for j, token in enumerate(ids):
                        if done[j]:
                            continue
                        if token in stop:
                            done[j] = True
                        else:
                            out[group[j]].append(int(token))
                    if all(done):
                        break
                    logits = _forward(engine, nxt[:, None], caches, progress)
    finally:
        engine.release_all()
        if was_training:
            tm.model.train()
    return out
