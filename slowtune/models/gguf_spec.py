"""A Hugging Face model folder in llama.cpp's terms, read from its small files; and whether it can be exported.

What the GGUF export (:mod:`slowtune.export.gguf_writer`, :mod:`slowtune.export.lora_gguf`) writes besides the
weights is decided here, from config.json, tokenizer.json and tokenizer_config.json alone:

- :func:`read_hparams`: the hyperparameters llama.cpp reads for the architecture (:class:`Hparams`): explicit head
  sizes (Qwen3, Gemma), rope base and scaling, Gemma's sliding windows, soft-caps and local rope base, Phi-3's
  partial rotation and original context; :func:`check_rope_scaling` refuses the scalings llama.cpp would compute
  differently;
- :func:`read_vocab`: the tokenizer as llama.cpp stores it (:class:`GGUFVocab`), so that llama.cpp splits text into
  the same ids as the tokenizer used in training: byte-level BPE with the right pre-tokenizer name, or
  SentencePiece-style BPE with scores that reproduce the merge order; special tokens and BOS/EOS behaviour;
- :func:`check_exportable`: every refusal the export makes before it writes anything. Training asks it when a model
  is chosen, so that nobody trains for an hour and is refused at the export; that is why these checks live with the
  models rather than in the export stage.

Every refusal is an :class:`ExportError` naming the folder, file or setting. Only the standard library and
:mod:`slowtune.models.architectures` are imported at module level.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.models.architectures import (
    GEMMA_FAMILIES,
    SUPPORTED_ARCHITECTURES,
    ArchitectureError,
    check_config,
    gemma3_sliding_layers,
)

__all__ = [
    "PHI3_NAMES",
    "ExportError",
    "GGUFVocab",
    "Hparams",
    "check_exportable",
    "check_rope_scaling",
    "read_hparams",
    "read_json",
    "read_vocab",
]

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


class ExportError(ValueError):
    """The model folder cannot be exported as it is; the message names the folder, file or setting."""


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` (``what`` says what the file is, for the message when it is missing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path.parent}: {path.name} is missing ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: cannot be read as JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


# --------------------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hparams:
    """The hyperparameters llama.cpp reads for a model, as :func:`read_hparams` finds them in config.json."""

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


def read_hparams(config: Mapping[str, Any], config_path: Path) -> Hparams:
    """The hyperparameters of ``config`` (read from ``config_path``), refusing what llama.cpp would compute
    differently or cannot load: another architecture, a quantised folder, settings its graphs do not have."""
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
    return Hparams(
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


def check_rope_scaling(hp: Hparams, config_path: Path) -> None:
    """Raise ExportError for rope scaling the export cannot write for this architecture (Phi-3's LongRoPE:
    ``_check_long_rope``)."""
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


def _check_long_rope(hp: Hparams, scaling: Mapping[str, Any], config_path: Path) -> None:
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
    # it decides by the model's name (see `PHI3_NAMES`; the writer names the model accordingly).
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
        # The sentence for the user; what the check found (and llama.cpp's names) in a note, for a bug report.
        error = ExportError(
            f"{path}: this model's tokenizer splits text in a way llama.cpp cannot reproduce (an unsupported "
            "byte-level pre-tokenizer), so the model cannot be exported to GGUF. Tokenizers llama.cpp knows are "
            f"those of {pretokenizers.known_families()}")
        error.add_note(f"Pre-tokenizer check: {exc}")
        raise error from exc


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
    tj = read_json(tokenizer_path, "the tokenizer")
    tc_path = model_dir / "tokenizer_config.json"
    tc = read_json(tc_path, "tokenizer settings") if tc_path.is_file() else {}
    config_path = model_dir / "config.json"
    config = read_json(config_path, "the model configuration") if config_path.is_file() else {}

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
            error = ExportError(
                f"{tokenizer_path}: this model's tokenizer changes text ({', '.join(map(str, normalizers))}) in a "
                "way llama.cpp does not before it splits it, so the model cannot be exported to GGUF"
            )
            error.add_note(f"Normalisers of the byte-level BPE tokenizer: {normalizers}; llama.cpp applies NFC only")
            raise error

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
PHI3_NAMES = re.compile(r"(phi)-?(3)", re.IGNORECASE)
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


# --------------------------------------------------------------------------------------------------------
# Whether the export can write the model
# --------------------------------------------------------------------------------------------------------


EXPORT_HINT = ("Pick a model of a family the export writes ({families}), for example Qwen2.5 0.5B Instruct or "
               "SmolLM2 135M Instruct from the catalog, or import a GGUF of one.")


def check_exportable(model_dir: Path) -> list[str]:
    """Raise ExportError when the GGUF export could not write this model (its architecture, RoPE scaling or
    tokenizer), reading only its small files; otherwise return the notes the export would log.

    The same checks :func:`slowtune.export.gguf_writer.write_gguf` makes before it writes anything, so a model that
    passes here is refused later only for its weights (a missing or torn file). Run it when a model is chosen,
    before training.
    """
    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    try:
        config = dict(read_json(config_path, "the model configuration"))
        config.pop("quantization", None)  # an MLX-quantised base: the fuse step dequantises it before the export
        hp = read_hparams(config, config_path)
        check_rope_scaling(hp, config_path)
        vocab = read_vocab(model_dir, hp.vocab_size)
    except ExportError as exc:
        raise ExportError(f"{exc}. {EXPORT_HINT.format(families=', '.join(SUPPORTED_ARCHITECTURES))}") from exc
    return list(vocab.notes)
