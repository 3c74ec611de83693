"""Each family's forward pass around the blocks, shared by both engines and the export check.

Both engines drive the model block by block (the streamed engine must: only one block is resident). What happens
before the first block and after the last one differs by family, and so does the mask each block gets; these
functions hold those differences so that the in-memory engine, the streamed engine and the block-by-block
reference logits compute the same function, the one llama.cpp computes for the exported GGUF
(see ``slowtune.models.architectures`` for the list of families).
"""

from __future__ import annotations

import functools
import math
from typing import Any

from slowtune.models.architectures import GEMMA_FAMILIES, gemma3_sliding_layers


def prepare(model: Any, config: dict[str, Any]) -> None:
    """Fix up an mlx-lm model right after loading, where its forward pass differs from the reference one."""
    if config.get("model_type") == "phi3":
        scaling = config.get("rope_scaling") or {}
        if (scaling.get("type") or scaling.get("rope_type")) in ("longrope", "su"):
            for layer in model.layers:
                old = layer.self_attn.rope
                layer.self_attn.rope = _long_rope_class()(config, dims=getattr(old, "dim", None) or _rope_dims(config))


def _rope_dims(config: dict[str, Any]) -> int:
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return int(head_dim * float(config.get("partial_rotary_factor", 1.0)))


@functools.cache
def _long_rope_class() -> type:
    import mlx.core as mx
    import mlx.nn as nn

    class LongRoPE(nn.Module):
        """Phi-3's LongRoPE as Hugging Face and llama.cpp apply it.

        The rotary frequencies are divided by the short factors while the sequence fits the original context
        (``original_max_position_embeddings``), by the long factors beyond it; the rotated dimensions are scaled by
        sqrt(1 + ln(max / original) / ln(original)). (mlx-lm's SuScaledRoPE always uses the long factors, which the
        model never meets in llama.cpp at a context of the original length or less.)
        """

        def __init__(self, config: dict[str, Any], dims: int) -> None:
            super().__init__()
            scaling = config["rope_scaling"]
            base = float(config.get("rope_theta", 10000.0))
            original = int(config.get("original_max_position_embeddings")
                           or scaling.get("original_max_position_embeddings") or 4096)
            factor = float(config.get("max_position_embeddings", original)) / original
            self.dim = dims
            self.original = original
            freqs = base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims)
            self._short = mx.array(scaling["short_factor"], dtype=mx.float32) * freqs
            self._long = mx.array(scaling["long_factor"], dtype=mx.float32) * freqs
            self._scale = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0

        def __call__(self, x: Any, offset: int = 0) -> Any:
            # A batch being decoded has one offset per sequence (an array); the longest decides, as for one.
            last = offset if isinstance(offset, int) else int(mx.max(mx.array(offset)).item())
            length = last + x.shape[-2]
            freqs = self._long if length > self.original else self._short
            return mx.fast.rope(x.at[..., : self.dim].multiply(self._scale), self.dim, traditional=False,
                                base=None, scale=1.0, offset=offset, freqs=freqs)

    return LongRoPE


def embed(tm: Any, inputs: Any) -> Any:
    h = tm.model.model.embed_tokens(inputs)
    if tm.model_type in GEMMA_FAMILIES:
        # Gemma scales the embedding by sqrt(hidden size), as llama.cpp does (in the compute dtype).
        h = h * math.sqrt(tm.config["hidden_size"])
    return h


def sliding_layers(tm: Any) -> list[bool]:
    """Which blocks attend over a sliding window only."""
    config, n = tm.config, tm.num_layers
    if tm.model_type == "gemma2":
        return [i % 2 == 0 for i in range(n)]  # layers 0, 2, 4, ... slide
    if tm.model_type == "gemma3_text":
        return gemma3_sliding_layers(config)
    return [bool(getattr(layer, "use_sliding", False)) for layer in tm.layers]


def masks(tm: Any, h: Any) -> dict[bool, Any]:
    """Attention masks for full (False) and, where the family has them, sliding-window (True) layers."""
    from mlx_lm.models.base import create_attention_mask, create_causal_mask

    length = h.shape[1]
    window = tm.config.get("sliding_window")
    if tm.model_type == "gemma2":
        # mlx-lm's Gemma 2 attention takes array masks only (it applies the soft-cap before masking).
        out = {False: create_causal_mask(length)}
        out[True] = create_causal_mask(length, window_size=int(window)) if window else out[False]
        return out
    out = {False: create_attention_mask(h, None)}
    if any(sliding_layers(tm)):
        out[True] = create_attention_mask(h, None, window_size=window)
    return out


def block_call(tm: Any, i: int, h: Any, block_masks: dict[bool, Any]) -> Any:
    return tm.layers[i](h, block_masks[tm.sliding[i]], cache=None)


def head_logits(tm: Any, h: Any) -> Any:
    """Final norm, output matrix (the embedding where tied) and, where the family has one, the logit soft-cap."""
    import mlx.core as mx

    inner = tm.model.model
    x = inner.norm(h)
    logits = inner.embed_tokens.as_linear(x) if not hasattr(tm.model, "lm_head") else tm.model.lm_head(x)
    cap = tm.config.get("final_logit_softcapping") if tm.model_type in GEMMA_FAMILIES else None
    if cap:
        logits = mx.tanh(logits / cap) * cap
    return logits
