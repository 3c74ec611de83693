"""Convert a Hugging Face model folder into a GGUF file that llama.cpp loads, with our own code on `gguf`.

Why our own writer: the export must be verifiable and must fail with messages a user can act on, and it
must handle exactly what slowtune trains (the families of ``slowtune.models.architectures``, in folders
written by the fuse step).
The facts it relies on are llama.cpp's (key names, tensor names, tokenizer types); the `gguf` package
supplies the constants and the file format, so no name is spelled by hand where the library has it.

What has to survive the trip, and why each piece is here:
- **Weights**, streamed one tensor at a time (a model may be larger than memory), with the q/k rows of
  llama-family models (Llama, Mistral, SmolLM3) permuted: Hugging Face (and MLX) rotate the two halves of
  each head ("rotate half"), llama.cpp's llama graph rotates adjacent pairs. Qwen2/Qwen3, Gemma and Phi-3
  use the half layout in llama.cpp too (NEOX rope), so they are written as they are. Gemma's RMSNorm
  multiplies by (1 + weight), llama.cpp's by the weight: Gemma's norm weights are written plus one.
  Phi-3's fused matrices keep their layout: ``attn_qkv`` (q, k, v rows) and ``ffn_up`` (gate rows, then
  up rows, the halves llama.cpp's SwiGLU takes in that order).
- **Hyperparameters** llama.cpp reads for the architecture, including explicit head sizes (Qwen3, Gemma),
  rope scaling (linear, yarn, and llama3 as a `rope_freqs` tensor of per-frequency factors), Gemma's
  sliding windows, soft-caps and local rope base, and Phi-3's partial rotation and LongRoPE factors
  (`rope_factors_short` / `rope_factors_long` tensors).
- **The tokenizer**, so llama.cpp splits text into the same ids as the tokenizer used in training:
  byte-level BPE with the right pre-tokenizer name, or SentencePiece-style BPE with scores that reproduce
  the merge order; special tokens, BOS/EOS behaviour and the chat template.

The file is written under a temporary name in the destination folder and renamed at the end, so a
failure or a cancel never leaves a partial file under the final name.

Only the standard library and numpy are imported at module level; `gguf` is imported by the functions
that need it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slowtune import safetensors
from slowtune.fsutil import default_file_mode, fsync_dir
from slowtune.models.architectures import (
    GEMMA_FAMILIES,
    SUPPORTED_ARCHITECTURES,
    ArchitectureError,
    check_config,
    gemma3_sliding_layers,
)
from slowtune.progress import ensure

if TYPE_CHECKING:
    from slowtune.progress import Progress

__all__ = [
    "OUT_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "ExportError",
    "GGUFVocab",
    "read_vocab",
    "write_gguf",
]

log = logging.getLogger(__name__)

OUT_TYPES = ("f32", "f16", "bf16")

# model_type -> the llama.cpp architecture it is written as. Mistral (v0.1-v0.3, dense) is a Llama with
# another name; llama.cpp's own converter writes it as "llama" too.
_GGUF_ARCH = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "smollm3": "smollm3",
}

# llama.cpp's llama and smollm3 graphs rotate adjacent pairs (rope "normal"); the others rotate halves
# ("neox"), like Hugging Face. Only the former need the q/k permutation.
_PERMUTE_QK = {
    "llama": True,
    "mistral": True,
    "smollm3": True,
    "qwen2": False,
    "qwen3": False,
    "gemma2": False,
    "gemma3_text": False,
    "phi3": False,
}

# Layer counts for which llama.cpp scales Gemma's queries by 1/sqrt(hidden / heads) instead of
# 1/sqrt(head_dim) (its "27B" models).
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3_text": 62}

# Tokens that end a chat turn in the common families, tried in this order when the EOS token is not one.
_END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")

# llama.cpp token types (gguf.TokenType), as plain ints so this module need not import gguf at top level.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Safetensors dtypes we can read, as the numpy dtype of their raw bytes. BF16 is read as uint16: numpy
# has no bfloat16, and a bfloat16 is the top half of a float32.
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

# Checkpoint entries that carry no weights llama.cpp needs (it computes rope itself).
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)

# Free space kept on top of the file's size, so an export never fills the disk to the last byte.
_DISK_RESERVE = 64 * 1024 * 1024
# Rows are converted in chunks of about this many float32 bytes, so a big embedding matrix is never held
# twice (source + float32 copy) in memory.
_CHUNK_BYTES = 16 * 1024 * 1024
# numpy dtype of the values written for each GGUF tensor type (bfloat16 as its raw 16 bits).
_NUMPY_OUT_DTYPE = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


class ExportError(ValueError):
    """The model folder cannot be exported as it is; the message names the folder, file or setting."""


# --------------------------------------------------------------------------------------------------------
# Reading the folder
# --------------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path.parent}: {path.name} is missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


@dataclass(frozen=True)
class _StoredTensor:
    """Where one tensor's bytes are in a safetensors file (a header entry: no data is read)."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # from the start of the file

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(_SAFETENSORS_DTYPES[self.dtype])

    def open(self) -> np.ndarray:
        """A read-only memory map of the tensor's raw values (BF16 as uint16). Pages are read on use."""
        if not self.shape or math.prod(self.shape) == 0:
            return np.zeros(self.shape, self.np_dtype)
        return np.memmap(self.path, dtype=self.np_dtype, mode="r", offset=self.offset, shape=self.shape)


def _read_safetensors_header(path: Path) -> dict[str, _StoredTensor]:
    """The tensors of one safetensors file, from its header (:func:`slowtune.safetensors.read_header`).

    Each tensor's absolute byte range gives memory-mapped access to every dtype, bfloat16 included, which the
    safetensors library's numpy backend refuses.
    """
    try:
        header = safetensors.read_header(path)
        entries = header.tensors()
    except safetensors.HeaderError as exc:
        raise ExportError(f"{path}: not a safetensors file ({exc.reason})") from exc
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the safetensors header ({exc})") from exc
    tensors = {}
    for name, entry in entries.items():
        if entry.dtype not in _SAFETENSORS_DTYPES:
            raise ExportError(
                f"{path}: tensor {name} is stored as {entry.dtype}; only float tensors (F32, F16, BF16) can be "
                "exported. Is this a quantised checkpoint?"
            )
        if entry.end > header.file_size:
            raise ExportError(
                f"{path}: the file is truncated (tensor {name} ends past its end); download it again"
            )
        tensors[name] = _StoredTensor(name, path, entry.dtype, entry.shape, entry.start)
    return tensors


def _index_weights(model_dir: Path) -> dict[str, _StoredTensor]:
    """Every tensor of the model, from model.safetensors.index.json or the model*.safetensors files.

    The same files mlx-lm loads: other safetensors in the folder (an adapters.safetensors, say) are not
    part of the model.
    """
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.is_file():
        weight_map = _read_json(index_path, "the index of the weight shards").get("weight_map", {})
        files = sorted({model_dir / f for f in weight_map.values()})
    else:
        files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise ExportError(f"{model_dir}: no model*.safetensors weights found")
    tensors: dict[str, _StoredTensor] = {}
    for path in files:
        if not path.is_file():
            raise ExportError(f"{model_dir}: weight shard {path.name} named in the index is missing")
        tensors.update(_read_safetensors_header(path))
    return tensors


# --------------------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hparams:
    model_type: str
    gguf_arch: str
    n_layers: int
    hidden: int
    intermediate: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    permute_qk: bool
    rope_scaling: dict[str, Any] | None
    rope_dims: int  # dimensions of each head that are rotated (Phi-4-mini: 3/4 of them)
    norm_offset: float = 0.0  # added to every norm weight (Gemma: 1, for its (1 + weight) RMSNorm)
    sliding_window: int | None = None
    sliding_pattern: int | None = None  # Gemma: a full-attention layer every N layers, the others slide
    rope_theta_swa: float | None = None  # Gemma: rope base of the sliding-window layers
    attn_softcap: float | None = None
    final_softcap: float | None = None
    original_context: int | None = None  # Phi-3: the context LongRoPE's short factors are for


def _require(config: Mapping[str, Any], key: str, config_path: Path) -> Any:
    value = config.get(key)
    if value is None:
        raise ExportError(f"{config_path}: the setting {key!r} is missing")
    return value


def _check_not_quantised(config: Mapping[str, Any], config_path: Path) -> None:
    # MLX writes "quantization"; transformers (GPTQ, AWQ, bitsandbytes) writes "quantization_config".
    key = next((k for k in ("quantization", "quantization_config") if k in config), None)
    if key is not None:
        raise ExportError(
            f"{config_path}: this is a quantised model folder ({key!r} in config.json). The GGUF export "
            "needs float weights: fuse the adapter into a dequantised base (the fuse step does this) and "
            "export that folder; quantise afterwards with llama.cpp."
        )


def _rope_settings(config: Mapping[str, Any]) -> tuple[float | None, dict[str, Any] | None]:
    """rope theta and the rope scaling dict, from either config layout.

    transformers 4 writes `rope_theta` and `rope_scaling`; transformers 5 writes `rope_parameters`
    (with `rope_type: "default"` when there is no scaling), per layer kind for Gemma 3 (the
    full-attention layers' settings are the model's; see `_swa_rope_theta` for the others).
    """
    theta = config.get("rope_theta")
    scaling = config.get("rope_scaling")
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and isinstance(params.get("full_attention"), Mapping):
        params = params["full_attention"]
    if isinstance(params, Mapping):
        theta = theta if theta is not None else params.get("rope_theta")
        if scaling is None and (params.get("rope_type") or params.get("type") or "default") != "default":
            scaling = dict(params)
    if isinstance(scaling, Mapping):
        kind = scaling.get("rope_type") or scaling.get("type") or "default"
        scaling = None if kind == "default" else {**scaling, "rope_type": kind}
    else:
        scaling = None
    return theta, scaling


def _swa_rope_theta(config: Mapping[str, Any]) -> float:
    """Gemma 3's rope base for the sliding-window layers (10000 in every released model)."""
    value = config.get("rope_local_base_freq")
    params = config.get("rope_parameters")
    if value is None and isinstance(params, Mapping) and isinstance(params.get("sliding_attention"), Mapping):
        value = params["sliding_attention"].get("rope_theta")
    return float(value if value is not None else 10000.0)


def _hparams(config: Mapping[str, Any], config_path: Path) -> _Hparams:
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ExportError(
            f"{config_path}: model_type {model_type!r} cannot be exported to GGUF by slowtune; supported "
            f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    try:
        # The family's own limits (a multimodal checkpoint, SmolLM3's rope-less layers elsewhere than every
        # 4th, Gemma 3 layer kinds off the pattern): the same refusals as when the model is chosen.
        check_config(config, config_path)
    except ArchitectureError as exc:
        raise ExportError(str(exc)) from None
    _check_not_quantised(config, config_path)
    hidden = int(_require(config, "hidden_size", config_path))
    n_heads = int(_require(config, "num_attention_heads", config_path))
    n_kv_heads = int(config.get("num_key_value_heads") or n_heads)
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    if n_heads % n_kv_heads:
        raise ExportError(f"{config_path}: num_attention_heads must be a multiple of num_key_value_heads")
    if head_dim % 2:
        raise ExportError(f"{config_path}: head_dim {head_dim} is odd; rotary embeddings need an even size")
    theta, scaling = _rope_settings(config)
    rms_eps = config.get("rms_norm_eps")
    if rms_eps is None:
        raise ExportError(f"{config_path}: the setting 'rms_norm_eps' is missing")
    n_layers = int(_require(config, "num_hidden_layers", config_path))
    rotary = float(config.get("partial_rotary_factor", 1.0))
    rope_dims = head_dim
    extra: dict[str, Any] = {}
    if model_type == "phi3":
        if head_dim * n_heads != hidden:
            # llama.cpp's phi3 graph sizes the attention by the hidden size.
            raise ExportError(
                f"{config_path}: head_dim {head_dim} x {n_heads} heads is not hidden_size {hidden}; llama.cpp's "
                "Phi-3 needs hidden_size = heads x head size"
            )
        rope_dims = int(head_dim * rotary)
        if rope_dims <= 0 or rope_dims % 2:
            raise ExportError(
                f"{config_path}: partial_rotary_factor {rotary} rotates {rope_dims} of {head_dim} dimensions a "
                "head; rotary embeddings need an even, positive number"
            )
        original = config.get("original_max_position_embeddings") or (scaling or {}).get(
            "original_max_position_embeddings"
        )
        extra["original_context"] = int(original) if original else None
        extra["sliding_window"] = int(config.get("sliding_window") or 0)
    elif rotary != 1.0:
        raise ExportError(f"{config_path}: partial_rotary_factor is not supported for {model_type}")
    if model_type in GEMMA_FAMILIES:
        extra.update(_gemma_settings(config, config_path, model_type, n_layers, hidden, n_heads, head_dim))
    return _Hparams(
        model_type=model_type,
        gguf_arch=_GGUF_ARCH[model_type],
        n_layers=n_layers,
        hidden=hidden,
        intermediate=int(_require(config, "intermediate_size", config_path)),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=head_dim,
        context_length=int(_require(config, "max_position_embeddings", config_path)),
        rope_theta=float(theta if theta is not None else 10000.0),
        rms_eps=float(rms_eps),
        vocab_size=int(_require(config, "vocab_size", config_path)),
        # mlx-lm honours `rope_traditional: true` (adjacent pairs, llama.cpp's layout already).
        permute_qk=_PERMUTE_QK[model_type] and not config.get("rope_traditional", False),
        rope_scaling=scaling,
        rope_dims=rope_dims,
        **extra,
    )


def _gemma_settings(
    config: Mapping[str, Any], config_path: Path, model_type: str, n_layers: int, hidden: int, n_heads: int,
    head_dim: int,
) -> dict[str, Any]:
    """Gemma 2 / Gemma 3 settings llama.cpp reads, refusing those its graphs would compute differently."""
    # llama.cpp scales the queries by 1/sqrt(head_dim) (by 1/sqrt(hidden / heads) at the 27B layer count);
    # Hugging Face by 1/sqrt(query_pre_attn_scalar).
    scalar = config.get("query_pre_attn_scalar")
    llama_cpp_scalar = hidden // n_heads if n_layers == _GEMMA_27B_LAYERS[model_type] else head_dim
    if scalar is None or float(scalar) != float(llama_cpp_scalar):
        what = "is missing" if scalar is None else f"is {scalar}"
        raise ExportError(
            f"{config_path}: query_pre_attn_scalar {what}; llama.cpp scales a {model_type} model's queries by "
            f"1/sqrt({llama_cpp_scalar}) (head_dim), so this model cannot be exported faithfully"
        )
    window = config.get("sliding_window")
    out: dict[str, Any] = {"norm_offset": 1.0, "sliding_window": int(window) if window else None}
    attn_cap, final_cap = config.get("attn_logit_softcapping"), config.get("final_logit_softcapping")
    if model_type == "gemma2":
        # llama.cpp's Gemma 2 always soft-caps both (50 and 30 when the file does not say) and always has
        # sliding-window layers (0, 2, 4, ...).
        for key, value in (("attn_logit_softcapping", attn_cap), ("final_logit_softcapping", final_cap),
                           ("sliding_window", window)):
            if not value:
                raise ExportError(
                    f"{config_path}: {key} is {value!r}; llama.cpp's Gemma 2 always applies it, so this "
                    "model cannot be exported faithfully"
                )
        out.update(attn_softcap=float(attn_cap), final_softcap=float(final_cap), sliding_pattern=2)
    else:
        if attn_cap:
            raise ExportError(
                f"{config_path}: attn_logit_softcapping is {attn_cap}; llama.cpp's Gemma 3 does not soft-cap "
                "attention scores, so this model cannot be exported faithfully"
            )
        sliding = gemma3_sliding_layers(config)
        pattern = next((i + 1 for i, s in enumerate(sliding) if not s), len(sliding) + 1)
        out.update(final_softcap=float(final_cap) if final_cap else None, sliding_pattern=pattern,
                   rope_theta_swa=_swa_rope_theta(config))
    return out


def _llama3_rope_factors(hp: _Hparams, scaling: Mapping[str, Any]) -> np.ndarray:
    """Per-frequency divisors of llama3 rope scaling, as llama.cpp's `rope_freqs.weight` expects.

    Llama 3.1+ stretches only the low frequencies: where the wavelength is longer than original context /
    low_freq_factor the frequency is divided by `factor`, where it is shorter than original context /
    high_freq_factor it is kept, and the band between is interpolated smoothly. llama.cpp applies the
    factors as theta_i / rope_freqs[i]; mlx-lm's Llama3RoPE computes the same frequencies.
    """
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_context = float(scaling.get("original_max_position_embeddings", 8192))
    dims = hp.head_dim
    inv_freq = 1.0 / (hp.rope_theta ** (np.arange(0, dims, 2, dtype=np.float64) / dims))
    wavelen = 2 * math.pi / inv_freq
    low_wavelen, high_wavelen = old_context / low, old_context / high
    smooth = (old_context / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < high_wavelen,
        1.0,
        np.where(wavelen > low_wavelen, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------


@dataclass
class GGUFVocab:
    """A tokenizer in the terms llama.cpp stores it (`tokenizer.ggml.*`).

    `model` is "gpt2" (byte-level BPE, with `merges` and the pre-tokenizer name `pre`) or "llama"
    (SentencePiece-style, with `scores`). Token ids index `tokens`/`types`/`scores`.
    """

    model: str
    tokens: list[str]
    types: list[int]
    pre: str | None = None
    merges: list[str] | None = None
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eot_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    # Whether llama.cpp must drop the whitespace after special tokens the way Phi-3's tokenizer does, which
    # it decides by the model's name (see `_general_name`).
    phi3_rstrip: bool = False
    notes: list[str] = field(default_factory=list)


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json writes special tokens as a string or as a serialised AddedToken."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _merges_as_strings(raw: Sequence[Any], path: Path) -> list[str]:
    merges = []
    for merge in raw:
        if isinstance(merge, str):
            merges.append(merge)
        else:
            left, right = merge
            if " " in left or " " in right:
                raise ExportError(f"{path}: BPE merge {merge!r} contains a space, which GGUF cannot store")
            merges.append(f"{left} {right}")
    return merges


def _as_list(node: Mapping[str, Any] | None, key: str) -> list[Mapping[str, Any]]:
    """A tokenizer.json component as a flat list (a `Sequence` unwrapped, None as empty)."""
    if not node:
        return []
    if node.get("type") == "Sequence":
        items = node.get(key, [])
        return [leaf for item in items for leaf in _as_list(item, key)]
    return [node]


def _byte_level_pre(tokenizer_json: Mapping[str, Any], path: Path) -> str:
    """llama.cpp's name for the pre-tokenizer that splits text as this tokenizer's does (compared by behaviour)."""
    from slowtune.models import pretokenizers

    try:
        return pretokenizers.identify(tokenizer_json.get("pre_tokenizer")).name
    except pretokenizers.UnknownPreTokenizer as exc:
        raise ExportError(f"{path}: unsupported byte-level pre-tokenizer: {exc}") from exc


def _spm_space_prefix(tokenizer_json: Mapping[str, Any]) -> bool | None:
    """True/False when tokenizer.json is SentencePiece-style ("▁" for spaces), None when it is not.

    Two layouts exist: the normaliser Prepend("▁") + Replace(" ", "▁") (transformers' Llama converter)
    or a Metaspace pre-tokenizer (Mistral's files). The return value says whether a "▁" is put in front
    of the text, which llama.cpp calls add_space_prefix.
    """
    normalizers = _as_list(tokenizer_json.get("normalizer"), "normalizers")
    replaces_space = any(
        n.get("type") == "Replace" and n.get("pattern", {}).get("String") == " " and n.get("content") == "▁"
        for n in normalizers
    )
    prepends = any(n.get("type") == "Prepend" and n.get("prepend") == "▁" for n in normalizers)
    if replaces_space:
        return prepends
    for step in _as_list(tokenizer_json.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace" and step.get("replacement", "▁") == "▁":
            scheme = step.get("prepend_scheme")
            if scheme is None:
                return bool(step.get("add_prefix_space", True))
            return scheme in ("always", "first")
    return None


def _template_processing(tokenizer_json: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for step in _as_list(tokenizer_json.get("post_processor"), "processors"):
        if step.get("type") == "TemplateProcessing":
            return step
    return None


def _template_special(item: Mapping[str, Any]) -> str | None:
    special = item.get("SpecialToken")
    return special.get("id") if isinstance(special, Mapping) else None


def read_vocab(model_dir: Path, n_vocab: int | None = None) -> GGUFVocab:
    """Read tokenizer.json (+ tokenizer_config.json, config.json) into llama.cpp's vocabulary terms.

    `n_vocab` is the number of rows of the embedding matrix; the token list is padded to it with unused
    "[PAD<id>]" tokens (real models pad their vocabularies; llama.cpp wants one token per row).

    BOS/EOS addition follows tokenizer.json's post-processor (a TemplateProcessing with the BOS token in
    front), which is what transformers 5 and the tokenizers library do when encoding; `add_bos_token` in
    tokenizer_config.json is not consulted by them for these files, so it is not here either.
    """
    tokenizer_path = model_dir / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ExportError(
            f"{model_dir}: tokenizer.json is missing. The GGUF export reads the tokenizer from it; save the "
            "tokenizer with transformers (AutoTokenizer.save_pretrained) to create it."
        )
    tj = _read_json(tokenizer_path, "the tokenizer")
    tc_path = model_dir / "tokenizer_config.json"
    tc = _read_json(tc_path, "tokenizer settings") if tc_path.is_file() else {}
    config_path = model_dir / "config.json"
    config = _read_json(config_path, "the model configuration") if config_path.is_file() else {}

    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"{tokenizer_path}: tokenizer model {model.get('type')!r} is not supported; only BPE tokenizers "
            "(byte-level like Llama 3 and Qwen, or SentencePiece-style like Llama 2 and Mistral) are"
        )
    by_id: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
    for token_id, entry in added.items():
        by_id[token_id] = entry["content"]
    size = max(by_id) + 1 if by_id else 0
    if n_vocab is not None and size > n_vocab:
        raise ExportError(
            f"{tokenizer_path}: the tokenizer has {size} tokens but the model's embedding has only "
            f"{n_vocab} rows"
        )
    size = max(size, n_vocab or 0)
    tokens: list[str] = []
    types: list[int] = []
    for token_id in range(size):
        token = by_id.get(token_id)
        if token is None:
            tokens.append(f"[PAD{token_id}]")
            types.append(_UNUSED)
        elif token_id in added:
            tokens.append(token)
            types.append(_CONTROL if added[token_id].get("special") else _USER_DEFINED)
        else:
            tokens.append(token)
            types.append(_NORMAL)
    if len(set(tokens)) != len(tokens):
        seen: set[str] = set()
        twice = next(t for t in tokens if t in seen or seen.add(t))
        raise ExportError(
            f"{tokenizer_path}: the token {twice!r} appears under two ids; llama.cpp looks tokens up by their "
            "text and needs each one once"
        )

    merges = _merges_as_strings(model.get("merges", []), tokenizer_path)
    space_prefix = _spm_space_prefix(tj)
    vocab = GGUFVocab(model="", tokens=tokens, types=types)
    if model.get("byte_fallback") and space_prefix is not None:
        vocab.model = "llama"
        vocab.add_space_prefix = space_prefix
        vocab.scores = _spm_scores(tokens, merges)
        for token_id, token in enumerate(tokens):
            is_byte = len(token) == 6 and token.startswith("<0x") and token.endswith(">")
            if is_byte and types[token_id] == _NORMAL:
                types[token_id] = _BYTE
        unk = model.get("unk_token")
        if unk is not None and unk in tokens:
            types[tokens.index(unk)] = _UNKNOWN
            vocab.unk_id = tokens.index(unk)
        if sum(t == _BYTE for t in types) != 256:
            vocab.notes.append("SentencePiece vocabulary without all 256 byte tokens")
        if any(s.get("type") == "Metaspace" for s in _as_list(tj.get("pre_tokenizer"), "pretokenizers")):
            # Measured: with a Metaspace pre-tokenizer, Hugging Face adds no "▁" to text that starts with a
            # space, and with prepend_scheme "first" none after a special token either; llama.cpp adds
            # one in both cases (the behaviour of the Prepend-normaliser layout, which matches exactly).
            vocab.notes.append(
                "tokenizer.json uses a Metaspace pre-tokenizer: llama.cpp will tokenize text that starts "
                "with a space (and, with prepend_scheme 'first', text after a special token) slightly "
                "differently from the Hugging Face tokenizer"
            )
    else:
        vocab.model = "gpt2"
        vocab.pre = _byte_level_pre(tj, tokenizer_path)
        vocab.merges = merges
        normalizers = [n.get("type") for n in _as_list(tj.get("normalizer"), "normalizers")]
        if any(n != "NFC" for n in normalizers):
            raise ExportError(
                f"{tokenizer_path}: normaliser {normalizers} is not one llama.cpp applies for byte-level BPE"
            )

    ids = {t: i for i, t in enumerate(tokens)}

    def token_id(value: Any) -> int | None:
        content = _token_content(value)
        return ids.get(content) if content is not None else None

    def config_id(key: str) -> int | None:
        value = config.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return int(value) if isinstance(value, int) and 0 <= value < size else None

    # tokenizer_config.json first (what the HF tokenizer reports), config.json where it says nothing:
    # llama.cpp falls back to arbitrary defaults (e.g. BOS 11 for BPE) for ids the GGUF does not give.
    vocab.bos_id = token_id(tc.get("bos_token"))
    if vocab.bos_id is None:
        vocab.bos_id = config_id("bos_token_id")
    vocab.eos_id = token_id(tc.get("eos_token"))
    if vocab.eos_id is None:
        vocab.eos_id = config_id("eos_token_id")
    vocab.pad_id = token_id(tc.get("pad_token"))
    if vocab.pad_id is None:
        vocab.pad_id = config_id("pad_token_id")
    if vocab.unk_id is None:
        vocab.unk_id = token_id(tc.get("unk_token"))
    if vocab.eos_id is not None and tokens[vocab.eos_id] in _END_OF_TURN_TOKENS:
        vocab.eot_id = vocab.eos_id
    else:
        vocab.eot_id = next(
            (ids[t] for t in _END_OF_TURN_TOKENS if t in ids and types[ids[t]] == _CONTROL), None
        )

    # transformers takes the added tokens' flags from tokenizer_config.json where it lists them.
    rstrip = {i: bool(entry.get("rstrip")) for i, entry in added.items()}
    for key, entry in (tc.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, Mapping) and str(key).isdigit():
            rstrip[int(key)] = bool(entry.get("rstrip"))
    vocab.phi3_rstrip = _phi3_rstrip(tokens, types, {i for i, on in rstrip.items() if on}, vocab.notes)

    template = _template_processing(tj)
    if template is not None:
        single = template.get("single", [])
        first = _template_special(single[0]) if single else None
        last = _template_special(single[-1]) if single else None
        if first is not None:
            vocab.add_bos = True
            if ids.get(first) != vocab.bos_id:
                vocab.notes.append(f"the post-processor adds {first!r}, used as BOS")
                vocab.bos_id = ids[first]
        if last is not None and len(single) > 1:
            vocab.add_eos = True
            if ids.get(last) != vocab.eos_id:
                raise ExportError(
                    f"{tokenizer_path}: the post-processor appends {last!r}, which is not the EOS token; "
                    "llama.cpp can only append EOS"
                )
    return vocab


# llama.cpp (llama-vocab.cpp) sets per-token attributes by the model's name: in a model whose general.name
# contains one of these, every special token strips the whitespace after it while text is tokenized,
# except these three (Phi-3's tokenizer.json marks its added tokens "rstrip" that way).
_PHI3_NAMES = re.compile(r"(phi)-?(3)", re.IGNORECASE)
_PHI3_NO_RSTRIP = ("<unk>", "<s>", "<|endoftext|>")


def _phi3_rstrip(tokens: list[str], types: list[int], rstrip: set[int], notes: list[str]) -> bool:
    """Whether llama.cpp's Phi-3 rule (chosen by the model's name) gives this tokenizer's rstrip behaviour.

    Hugging Face drops the whitespace after an added token marked ``rstrip`` (the ids in `rstrip`);
    llama.cpp has no such setting in a GGUF, only the name rule. Returns whether to apply it, and notes
    where neither choice is exact.
    """
    special = {i for i, kind in enumerate(types) if kind in (_CONTROL, _USER_DEFINED, _UNKNOWN)}
    hf = {tokens[i] for i in special & rstrip}
    if not hf:
        return False
    ids = set(tokens)
    feasible = all(t in ids for t in (*_PHI3_NO_RSTRIP, "</s>"))  # llama.cpp fails to load the model otherwise
    rule = ({tokens[i] for i in special} | {"</s>"}) - set(_PHI3_NO_RSTRIP)
    use_rule = feasible and len(hf ^ rule) < len(hf)
    wrong = sorted(hf ^ rule) if use_rule else sorted(hf)
    if wrong:
        notes.append(
            "llama.cpp cannot strip the whitespace after special tokens the way tokenizer.json does (its "
            f"'rstrip' setting) for {', '.join(wrong[:5])}{' and more' if len(wrong) > 5 else ''}"
        )
    return use_rule


def _general_name(name: str, vocab: GGUFVocab) -> str:
    """`name` as the GGUF's general.name, changed where llama.cpp's name rule for Phi-3 tokenizers (see
    `_PHI3_NAMES`) would otherwise tokenize differently from the tokenizer: " (Phi-3)" is added for a
    tokenizer that needs the rule, and "phi3"/"phi-3" in the name of one that must not have it (where it
    could also stop llama.cpp from loading the file) is written "phi 3"."""
    named = _PHI3_NAMES.search(name) is not None
    if vocab.phi3_rstrip and not named:
        return f"{name} (Phi-3)"
    if named and not vocab.phi3_rstrip:
        return _PHI3_NAMES.sub(r"\1 \2", name)
    return name


def _spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """Scores that make llama.cpp's SentencePiece merging follow the BPE merge order of tokenizer.json.

    llama.cpp merges, at each step, the adjacent pair whose joined text is the vocabulary token with the
    highest score; tokenizer.json's BPE merges the pair with the lowest rank. A token made by merge rank r
    gets score -r. Tokens no merge produces (single characters, bytes, specials) get a score below every
    merge, so that llama.cpp prefers any real merge to joining into one of them.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    floor = -float(len(merges) + 1)
    scores = [floor] * len(tokens)
    for rank, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        token_id = ids.get(left + right)
        if token_id is not None and scores[token_id] == floor:
            scores[token_id] = -float(rank)
    return scores


def _chat_template(model_dir: Path, override: str | None) -> str | list[dict[str, str]] | None:
    """The override, else tokenizer_config.json's chat_template, else chat_template.jinja (where recent
    transformers versions save it)."""
    if override is not None:
        return override
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.is_file():
        template = _read_json(tc_path, "tokenizer settings").get("chat_template")
        if template:
            return template
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return None


# --------------------------------------------------------------------------------------------------------
# Tensor plan
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlannedTensor:
    """One GGUF tensor: its name, shape and type, and where its values come from."""

    name: str
    shape: tuple[int, ...]
    ggml_type: Any  # gguf.GGMLQuantizationType
    nbytes: int
    source: _StoredTensor | None = None
    row_order: np.ndarray | None = None  # q/k permutation: rows (elements, for 1-D) taken in this order
    values: np.ndarray | None = None  # computed tensors (rope_freqs, rope factors)
    offset: float = 0.0  # added to every value (Gemma's norm weights: llama.cpp multiplies by w, Gemma by 1 + w)


def _rope_permutation(rows: int, n_heads: int, name: str) -> np.ndarray:
    """The row order that turns Hugging Face's q/k layout into llama.cpp's.

    Per head, HF keeps the first halves of the rotated pairs in the first half of the rows (x_i pairs with
    x_{i+d/2}); llama.cpp's rope pairs adjacent rows (x_{2i}, x_{2i+1}). New row 2i of a head is old row i,
    new row 2i+1 is old row i + d/2.
    """
    if rows % n_heads or (rows // n_heads) % 2:
        raise ExportError(f"tensor {name}: {rows} rows cannot be split into {n_heads} heads of even size")
    head_dim = rows // n_heads
    order = np.arange(rows).reshape(n_heads, 2, head_dim // 2).swapaxes(1, 2)
    return order.reshape(rows)


def _plan_tensors(
    hp: _Hparams, stored: dict[str, _StoredTensor], config: Mapping[str, Any], model_dir: Path, out_type: str
) -> list[_PlannedTensor]:
    import gguf

    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == hp.gguf_arch)
    allowed = set(gguf.MODEL_TENSORS[arch_enum])
    name_map = gguf.get_tensor_name_map(arch_enum, hp.n_layers)
    matrix_type = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }[out_type]

    tie = config.get("tie_word_embeddings")
    if hp.model_type == "gemma2":
        tie = True  # Gemma 2's output is its embedding, in mlx-lm and llama.cpp alike (an lm_head is unused)
    elif hp.model_type == "gemma3_text":
        tie = "lm_head.weight" not in stored  # as mlx-lm decides; llama.cpp takes an output.weight if there is one
    elif tie is None:
        # Hugging Face's Llama/Qwen default is untied; an absent lm_head can only mean tied.
        tie = "lm_head.weight" not in stored
    if not tie and "lm_head.weight" not in stored:
        raise ExportError(
            f"{model_dir}: config.json says tie_word_embeddings is false but there is no lm_head.weight"
        )

    expected_shapes = _matrix_shapes(hp)

    plan: list[_PlannedTensor] = []
    unknown = []
    for hf_name, tensor in stored.items():
        if hf_name.endswith(_IGNORED_SUFFIXES) or (tie and hf_name == "lm_head.weight"):
            continue
        found = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            unknown.append(hf_name)
            continue
        kind, gguf_name = found
        base = gguf.TENSOR_NAMES[kind]
        short = base.split(".")[-1] if base.startswith("blk.") else base
        expected = expected_shapes.get(short)
        if expected is not None and gguf_name.endswith(".weight") and tensor.shape != expected:
            raise ExportError(
                f"{model_dir}: tensor {hf_name} has shape {list(tensor.shape)}, config.json implies "
                f"{list(expected)}"
            )
        row_order = None
        if hp.permute_qk and kind in (gguf.MODEL_TENSOR.ATTN_Q, gguf.MODEL_TENSOR.ATTN_K):
            heads = hp.n_heads if kind == gguf.MODEL_TENSOR.ATTN_Q else hp.n_kv_heads
            row_order = _rope_permutation(tensor.shape[0], heads, hf_name)
        # Every RMSNorm weight of a Gemma model (the block norms, the final norm, Gemma 3's q/k norms).
        offset = hp.norm_offset if hf_name.endswith("norm.weight") else 0.0
        ggml_type = matrix_type if len(tensor.shape) == 2 else gguf.GGMLQuantizationType.F32
        itemsize = 4 if ggml_type == gguf.GGMLQuantizationType.F32 else 2
        nbytes = math.prod(tensor.shape) * itemsize
        plan.append(_PlannedTensor(gguf_name, tensor.shape, ggml_type, nbytes, tensor, row_order, offset=offset))
    if unknown:
        listed = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise ExportError(
            f"{model_dir}: tensors that a {hp.model_type} GGUF has no place for: {listed}. "
            "Is this folder a fused model (no LoRA or quantisation tensors left)?"
        )
    required = [gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT_NORM]
    t = gguf.MODEL_TENSOR
    if hp.model_type == "phi3":
        per_block = [t.ATTN_NORM, t.ATTN_QKV, t.ATTN_OUT, t.FFN_NORM, t.FFN_UP, t.FFN_DOWN]
    else:
        per_block = [t.ATTN_NORM, t.ATTN_Q, t.ATTN_K, t.ATTN_V, t.ATTN_OUT, t.FFN_NORM, t.FFN_GATE, t.FFN_UP,
                     t.FFN_DOWN]
    if hp.model_type in GEMMA_FAMILIES:
        per_block += [t.ATTN_POST_NORM, t.FFN_POST_NORM]
    if hp.model_type in ("qwen3", "gemma3_text"):
        per_block += [t.ATTN_Q_NORM, t.ATTN_K_NORM]
    names = {p.name for p in plan}
    wanted = [gguf.TENSOR_NAMES[k] + ".weight" for k in required]
    wanted += [gguf.TENSOR_NAMES[k].format(bid=i) + ".weight" for i in range(hp.n_layers) for k in per_block]
    missing = [n for n in wanted if n not in names]
    if missing:
        raise ExportError(f"{model_dir}: weights missing for {', '.join(missing[:8])}")

    if hp.rope_scaling is not None and hp.rope_scaling["rope_type"] == "llama3":
        factors = _llama3_rope_factors(hp, hp.rope_scaling)
        plan.append(
            _PlannedTensor(
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                factors.shape,
                gguf.GGMLQuantizationType.F32,
                factors.nbytes,
                values=factors,
            )
        )
    if hp.model_type == "phi3" and hp.rope_scaling is not None:
        for kind, key in ((t.ROPE_FACTORS_LONG, "long_factor"), (t.ROPE_FACTORS_SHORT, "short_factor")):
            factors = np.asarray(hp.rope_scaling[key], dtype=np.float32)
            plan.append(
                _PlannedTensor(
                    gguf.TENSOR_NAMES[kind] + ".weight",
                    factors.shape,
                    gguf.GGMLQuantizationType.F32,
                    factors.nbytes,
                    values=factors,
                )
            )
    return plan


def _matrix_shapes(hp: _Hparams) -> dict[str, tuple[int, int]]:
    """(out, in) of each matrix, by the short GGUF name (attn_q, ffn_up, ...), as the config implies."""
    q_dim, kv_dim = hp.n_heads * hp.head_dim, hp.n_kv_heads * hp.head_dim
    fused = hp.model_type == "phi3"  # gate and up in one matrix: gate rows, then up rows
    return {
        "token_embd": (hp.vocab_size, hp.hidden),
        "output": (hp.vocab_size, hp.hidden),
        "attn_q": (q_dim, hp.hidden),
        "attn_k": (kv_dim, hp.hidden),
        "attn_v": (kv_dim, hp.hidden),
        "attn_qkv": (q_dim + 2 * kv_dim, hp.hidden),
        "attn_output": (hp.hidden, q_dim),
        "ffn_gate": (hp.intermediate, hp.hidden),
        "ffn_up": ((2 if fused else 1) * hp.intermediate, hp.hidden),
        "ffn_down": (hp.hidden, hp.intermediate),
    }


def _convert(planned: _PlannedTensor) -> np.ndarray:
    """The planned tensor's values, in its GGUF type, read in row chunks from the memory-mapped source."""
    import gguf

    if planned.values is not None:
        return planned.values
    assert planned.source is not None
    source = planned.source.open()
    f16, bf16 = gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16
    out_dtype = _NUMPY_OUT_DTYPE[planned.ggml_type.name]
    out = np.empty(planned.shape, dtype=out_dtype)
    rows = planned.shape[0] if planned.shape else 1
    row_elems = max(1, math.prod(planned.shape[1:]))
    step = max(1, _CHUNK_BYTES // (4 * row_elems))
    src_is_bf16 = planned.source.dtype == "BF16"
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        index = planned.row_order[start:stop] if planned.row_order is not None else slice(start, stop)
        raw = np.asarray(source[index])
        if src_is_bf16 and planned.ggml_type == bf16 and not planned.offset:
            out[start:stop] = raw  # already bfloat16: copy the bits
            continue
        if src_is_bf16:
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.astype(np.float32, copy=False)
        if planned.offset:
            values = values + np.float32(planned.offset)
        if planned.ggml_type == bf16:
            out[start:stop] = gguf.quants.quantize(np.ascontiguousarray(values), bf16).view(np.uint16)
        elif planned.ggml_type == f16:
            with np.errstate(over="ignore"):  # detected just below, with a message that names the tensor
                converted = values.astype(np.float16)
            if not np.isfinite(converted).all() and np.isfinite(values).all():
                raise ExportError(
                    f"tensor {planned.name}: values beyond float16's range (±65504); export as bf16 or f32"
                )
            out[start:stop] = converted
        else:
            out[start:stop] = values
    del source
    return out


# --------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------


def _free_disk_bytes(folder: Path) -> int:
    """Free bytes on the file system of `folder` (a function of its own so tests can stand in for it)."""
    return shutil.disk_usage(folder).free


def _add_hparams(writer: Any, hp: _Hparams, out_type: str) -> None:
    import gguf

    writer.add_context_length(hp.context_length)
    writer.add_embedding_length(hp.hidden)
    writer.add_block_count(hp.n_layers)
    writer.add_feed_forward_length(hp.intermediate)
    writer.add_head_count(hp.n_heads)
    writer.add_head_count_kv(hp.n_kv_heads)
    # Explicit head size: Qwen3 (and some Mistral models) have head_dim != hidden / heads, which is
    # llama.cpp's default when these keys are absent.
    writer.add_key_length(hp.head_dim)
    writer.add_value_length(hp.head_dim)
    writer.add_rope_dimension_count(hp.rope_dims)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.rms_eps)
    writer.add_vocab_size(hp.vocab_size)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        }[out_type]
    )
    if hp.sliding_window is not None:
        writer.add_sliding_window(hp.sliding_window)
    if hp.sliding_pattern is not None:
        writer.add_sliding_window_pattern(hp.sliding_pattern)
    if hp.rope_theta_swa is not None:
        writer.add_rope_freq_base_swa(hp.rope_theta_swa)
    if hp.attn_softcap is not None:
        writer.add_attn_logit_softcapping(hp.attn_softcap)
    if hp.final_softcap is not None:
        writer.add_final_logit_softcapping(hp.final_softcap)
    scaling = hp.rope_scaling
    if hp.model_type == "phi3":
        if hp.original_context:
            writer.add_rope_scaling_orig_ctx_len(hp.original_context)
        if scaling is not None:
            # LongRoPE: the factors are tensors (see _plan_tensors); llama.cpp takes the short ones up to
            # the original context and the long ones beyond.
            writer.add_rope_scaling_attn_factors(_long_rope_attn_factor(hp))
        return
    if scaling is None:
        return
    kind = scaling["rope_type"]
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        original = scaling.get("original_max_position_embeddings") or hp.context_length
        writer.add_rope_scaling_orig_ctx_len(int(original))
        if "beta_fast" in scaling:
            writer.add_rope_scaling_yarn_beta_fast(float(scaling["beta_fast"]))
        if "beta_slow" in scaling:
            writer.add_rope_scaling_yarn_beta_slow(float(scaling["beta_slow"]))
    elif kind == "llama3":
        pass  # written as the rope_freqs tensor (see _llama3_rope_factors)


def _check_rope_scaling(hp: _Hparams, config_path: Path) -> None:
    scaling = hp.rope_scaling
    if scaling is None:
        return
    kind = scaling["rope_type"]
    if hp.model_type == "phi3":
        _check_long_rope(hp, scaling, config_path)
        return
    if hp.model_type in GEMMA_FAMILIES and (kind != "linear" or hp.model_type == "gemma2"):
        # Gemma 3 (4B and up) scales its full-attention layers linearly; mlx-lm's Gemma 2 never scales.
        raise ExportError(
            f"{config_path}: rope scaling {kind!r} is not supported for {hp.model_type} by the GGUF export"
            + (" (supported: linear)" if hp.model_type == "gemma3_text" else "")
        )
    if kind in ("linear", "yarn") or (kind == "llama3" and hp.gguf_arch == "llama"):
        if "factor" not in scaling:
            raise ExportError(f"{config_path}: rope_scaling of type {kind!r} has no 'factor'")
        if kind == "llama3" and scaling.get("high_freq_factor", 4.0) <= scaling.get("low_freq_factor", 1.0):
            raise ExportError(f"{config_path}: llama3 rope scaling needs high_freq_factor > low_freq_factor")
        if kind == "yarn" and any(k in scaling for k in ("mscale", "mscale_all_dim", "attention_factor")):
            raise ExportError(
                f"{config_path}: yarn rope scaling with mscale/attention_factor settings is not supported"
            )
        return
    raise ExportError(
        f"{config_path}: rope scaling {kind!r} is not supported for {hp.model_type} by the GGUF export "
        "(supported: linear, yarn, and llama3 for llama-family models)"
    )


def _check_long_rope(hp: _Hparams, scaling: Mapping[str, Any], config_path: Path) -> None:
    """Phi-3's LongRoPE: short and long factors, one per rotated pair, and the original context."""
    kind = scaling["rope_type"]
    if kind not in ("longrope", "su"):
        raise ExportError(
            f"{config_path}: rope scaling {kind!r} is not supported for phi3 by the GGUF export (supported: "
            "longrope)"
        )
    if not hp.original_context:
        raise ExportError(f"{config_path}: LongRoPE needs original_max_position_embeddings")
    for key in ("short_factor", "long_factor"):
        factors = scaling.get(key)
        if not isinstance(factors, Sequence) or len(factors) != hp.rope_dims // 2:
            count = len(factors) if isinstance(factors, Sequence) else factors
            raise ExportError(
                f"{config_path}: rope_scaling.{key} has {count} values; the {hp.rope_dims} rotated dimensions "
                f"of a head need {hp.rope_dims // 2}"
            )
        if not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in factors):
            raise ExportError(f"{config_path}: rope_scaling.{key} holds values that are not positive numbers")


def _long_rope_attn_factor(hp: _Hparams) -> float:
    """How much LongRoPE scales the rotated dimensions: sqrt(1 + ln(context / original) / ln(original))."""
    assert hp.original_context
    factor = hp.context_length / hp.original_context
    return math.sqrt(1 + math.log(factor) / math.log(hp.original_context)) if factor > 1.0 else 1.0


def _add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    else:
        writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    for token_id, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.unk_id, writer.add_unk_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
        (vocab.eot_id, writer.add_eot_token_id),
    ):
        if token_id is not None:
            add(token_id)
    # Always explicit: llama.cpp's defaults differ by tokenizer type (SentencePiece and llama-bpe add BOS).
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)


@contextlib.contextmanager
def _temporary_sibling(out_path: Path) -> Iterator[Path]:
    """A temporary file next to `out_path`, removed unless the body renamed it."""
    fd, name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, default_file_mode())  # mkstemp's 0600 would hide the export from other accounts (Ollama)
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def finish_gguf_writer(writer: Any, tmp: Path, out_path: Path) -> None:
    """After a successful write: flush and fsync the file, close it, and rename it into place."""
    try:
        writer.flush()
        assert writer.fout is not None
        for handle in writer.fout:
            os.fsync(handle.fileno())
    finally:
        writer.close()
    os.replace(tmp, out_path)
    fsync_dir(out_path.parent)


EXPORT_HINT = ("Pick a model of a family the export writes ({families}), for example Qwen2.5 0.5B Instruct or "
               "SmolLM2 135M Instruct from the catalog, or import a GGUF of one.")


def check_exportable(model_dir: Path) -> list[str]:
    """Raise ExportError when the GGUF export could not write this model (its architecture, RoPE scaling or
    tokenizer), reading only its small files; otherwise return the notes the export would log.

    The same checks ``write_gguf`` makes before it writes anything, so a model that passes here is refused later
    only for its weights (a missing or torn file). Run it when a model is chosen, before training.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    try:
        config = dict(_read_json(config_path, "the model configuration"))
        config.pop("quantization", None)  # an MLX-quantised base: the fuse step dequantises it before the export
        hp = _hparams(config, config_path)
        _check_rope_scaling(hp, config_path)
        vocab = read_vocab(model_dir, hp.vocab_size)
    except ExportError as exc:
        raise ExportError(f"{exc}. {EXPORT_HINT.format(families=', '.join(SUPPORTED_ARCHITECTURES))}") from exc
    return list(vocab.notes)


def write_gguf(
    model_dir: Path,
    out_path: Path,
    *,
    out_type: str = "f16",
    chat_template: str | None = None,
    name: str | None = None,
    progress: Progress | None = None,
) -> Path:
    """Write the Hugging Face model in `model_dir` as a GGUF file at `out_path`; returns `out_path`.

    `out_type` is the type of the 2-D weight matrices ("f32", "f16" or "bf16"); norms, biases and other
    1-D tensors are always float32, as llama.cpp computes them in float32 anyway. `chat_template`
    overrides the folder's template: pass the exact template the model was trained with, so that chat in
    llama.cpp renders conversations the way training did. `name` is `general.name` (default: the folder's
    name). `progress` gets ("Writing GGUF", bytes written, total bytes) reports, and a cancel request
    stops the export between tensors (raising `Cancelled`), leaving no file behind.

    Raises ExportError, naming the folder, file or setting, for anything that cannot be exported
    faithfully: an unsupported architecture, a quantised folder, an unknown pre-tokenizer, missing files,
    not enough free disk space.
    """
    import gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    if out_type not in OUT_TYPES:
        raise ExportError(f"unknown out_type {out_type!r}; expected one of {', '.join(OUT_TYPES)}")
    if not model_dir.is_dir():
        raise ExportError(f"{model_dir}: model folder not found")
    progress = ensure(progress)

    config_path = model_dir / "config.json"
    config = _read_json(config_path, "the model configuration")
    hp = _hparams(config, config_path)
    _check_rope_scaling(hp, config_path)
    stored = _index_weights(model_dir)
    embed = stored.get("model.embed_tokens.weight")
    if embed is None:
        raise ExportError(f"{model_dir}: model.embed_tokens.weight is missing from the weights")
    if embed.shape[0] != hp.vocab_size:
        raise ExportError(
            f"{config_path}: vocab_size {hp.vocab_size} differs from the embedding's {embed.shape[0]} rows"
        )
    vocab = read_vocab(model_dir, hp.vocab_size)
    for note in vocab.notes:
        log.warning("%s: %s", model_dir, note)
    template = _chat_template(model_dir, chat_template)
    plan = _plan_tensors(hp, stored, config, model_dir, out_type)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_bytes = sum(gguf.GGUFWriter.ggml_pad(p.nbytes, gguf.GGUF_DEFAULT_ALIGNMENT) for p in plan)
    metadata_bytes = (model_dir / "tokenizer.json").stat().st_size * 2 + 1024 * 1024
    needed = data_bytes + metadata_bytes
    free = _free_disk_bytes(out_path.parent)
    if free < needed + _DISK_RESERVE:
        raise ExportError(
            f"{out_path.parent}: not enough free disk space for the GGUF export: it needs about "
            f"{(needed + _DISK_RESERVE) / 1e9:.2f} GB, {free / 1e9:.2f} GB is free"
        )

    with _temporary_sibling(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, hp.gguf_arch, use_temp_file=False)
        try:
            writer.add_name(_general_name(name or model_dir.name, vocab))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            _add_hparams(writer, hp, out_type)
            _add_vocab(writer, vocab)
            if template:
                writer.add_chat_template(template)
            for p in plan:
                # Tensor infos first: GGUF puts them all in front of the data. The data then follows one
                # tensor at a time, in the same order.
                dtype = np.dtype(_NUMPY_OUT_DTYPE[p.ggml_type.name])
                writer.add_tensor_info(p.name, p.shape, dtype, p.nbytes, raw_dtype=p.ggml_type)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            done, total = 0, sum(p.nbytes for p in plan)
            progress.report("Writing GGUF", done, total, force=True)
            for p in plan:
                progress.check()
                writer.write_tensor_data(_convert(p))
                done += p.nbytes
                progress.report("Writing GGUF", done, total, tensor=p.name)
        except BaseException:
            writer.close()
            raise
        finish_gguf_writer(writer, tmp, out_path)
    size_mb = out_path.stat().st_size / 1e6
    log.info("wrote %s (%s, %d tensors, %.1f MB)", out_path, out_type, len(plan), size_mb)
    return out_path
