"""The model families slowtune trains, exports and verifies, and what differs between them.

One table for every stage: the train wizard and ``slowtune models list`` offer only these, both engines run them,
the GGUF writer writes them and llama.cpp loads what it writes. A ``config.json`` naming anything else is refused
when the model is chosen, with the list below, not after training. Only the standard library is used here.

Per family (``model_type`` in config.json):

- llama, mistral, smollm3: Llama blocks. SmolLM3 leaves out the rotary embedding in every 4th layer.
- qwen2 (q/k/v biases), qwen3 (q/k norms).
- gemma2, gemma3_text: the embedding is scaled by sqrt(hidden size); RMSNorm multiplies by (1 + weight); each block
  has norms before and after attention and the MLP; the output matrix is the embedding (tied). Gemma 2 soft-caps the
  attention scores (tanh, cap 50) and the logits (cap 30), and every other layer attends over a sliding window.
  Gemma 3 has q/k norms and a full-attention layer every ``sliding_window_pattern`` layers, the others sliding, with
  their own rope base. Only Gemma 3's text-only checkpoints (270M, 1B: ``gemma3_text``) are taken: the larger ones
  carry a vision tower (``model_type`` gemma3) and are refused.
- phi3 (Phi-3.5-mini, Phi-4-mini): q, k and v are one fused matrix (``qkv_proj``), and so are the gate and up
  projections (``gate_up_proj``); LoRA adapts the fused matrices. Phi-4-mini rotates only part of each head and both
  use LongRoPE factors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    model_type: str
    label: str  # what the README and messages call it
    examples: str
    # LoRA target renames: the usual Llama names -> this family's module names (fused projections).
    lora_renames: tuple[tuple[str, str], ...] = ()


_FUSED = (
    ("self_attn.q_proj", "self_attn.qkv_proj"),
    ("self_attn.k_proj", "self_attn.qkv_proj"),
    ("self_attn.v_proj", "self_attn.qkv_proj"),
    ("mlp.gate_proj", "mlp.gate_up_proj"),
    ("mlp.up_proj", "mlp.gate_up_proj"),
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        Family("llama", "Llama", "Llama 3.1/3.2/3.3, SmolLM2"),
        Family("mistral", "Mistral", "Mistral 7B v0.3"),
        Family("qwen2", "Qwen2", "Qwen2.5"),
        Family("qwen3", "Qwen3", "Qwen3"),
        Family("gemma2", "Gemma 2", "Gemma 2 2B/9B"),
        Family("gemma3_text", "Gemma 3 (text-only)", "Gemma 3 270M and 1B"),
        Family("phi3", "Phi-3", "Phi-3.5-mini, Phi-4-mini", lora_renames=_FUSED),
        Family("smollm3", "SmolLM3", "SmolLM3 3B"),
    )
}

SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(FAMILIES)

# Gemma-style blocks: scaled embeddings, (1 + weight) norms, pre/post norms, tied output.
GEMMA_FAMILIES = frozenset({"gemma2", "gemma3_text"})


class ArchitectureError(ValueError):
    """A model folder slowtune cannot train: an unknown architecture, or a multimodal checkpoint."""


def supported_list() -> str:
    return ", ".join(f"{f.model_type} ({f.examples})" for f in FAMILIES.values())


def multimodal_reason(config: Mapping[str, Any]) -> str | None:
    """Why a config describes a multimodal checkpoint (a vision or audio tower beside the text model), or None."""
    towers = [k for k in ("vision_config", "audio_config", "vision_tower", "mm_projector_type") if config.get(k)]
    archs = [a for a in config.get("architectures") or [] if "ConditionalGeneration" in str(a)]
    if towers or archs:
        what = ", ".join(towers + archs)
        return (f"it is a multimodal checkpoint ({what}). slowtune trains text-only models and does not take the text "
                "weights out of a vision-language model; for Gemma 3, pick the text-only 270M or 1B.")
    return None


def check_config(config: Mapping[str, Any], where: Path | str) -> str:
    """The family of ``config`` (config.json's model_type), or ArchitectureError naming the file and the families."""
    model_type = config.get("model_type")
    reason = multimodal_reason(config)
    if reason:
        raise ArchitectureError(f"{where}: cannot train this model: {reason}")
    if model_type not in FAMILIES:
        raise ArchitectureError(
            f"{where}: architecture {model_type!r} is not one slowtune trains and exports. Supported: "
            f"{supported_list()}."
        )
    if model_type == "gemma3_text":
        _check_gemma3_layers(config, where)
    if model_type == "smollm3":
        interval = int(config.get("no_rope_layer_interval") or 4)
        layers = config.get("no_rope_layers")
        n = int(config.get("num_hidden_layers") or 0)
        expected = [int((i + 1) % 4 != 0) for i in range(n)]
        if interval != 4 or (layers is not None and list(layers) != expected):
            raise ArchitectureError(
                f"{where}: SmolLM3 with rotary embeddings left out in layers other than every 4th "
                "(no_rope_layers) cannot be exported: llama.cpp only knows every 4th."
            )
    return str(model_type)


def gemma3_sliding_layers(config: Mapping[str, Any]) -> list[bool]:
    """Which Gemma 3 layers attend over the sliding window (the others attend over everything)."""
    n = int(config.get("num_hidden_layers") or 0)
    pattern = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6)
    return [(i + 1) % pattern != 0 for i in range(n)]


def _check_gemma3_layers(config: Mapping[str, Any], where: Path | str) -> None:
    # Newer configs list each layer's kind; mlx-lm (and the export) follow the pattern, so the two must agree.
    layer_types: Sequence[str] | None = config.get("layer_types")
    if layer_types is None:
        return
    sliding = [t == "sliding_attention" for t in layer_types]
    if sliding != gemma3_sliding_layers(config):
        raise ArchitectureError(
            f"{where}: layer_types does not follow sliding_window_pattern (a full-attention layer every "
            f"{config.get('sliding_window_pattern') or 6}); slowtune supports the regular pattern only."
        )


def lora_keys(model_type: str, keys: Sequence[str]) -> tuple[str, ...]:
    """The LoRA target modules for ``model_type``: fused families adapt the fused matrix once."""
    renames = dict(FAMILIES[model_type].lora_renames) if model_type in FAMILIES else {}
    out: list[str] = []
    for key in keys:
        mapped = renames.get(key, key)
        if mapped not in out:
            out.append(mapped)
    return tuple(out)
