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

The hyperparameters and the vocabulary are read from the folder's small files by :mod:`slowtune.models.gguf_spec`,
which also makes every refusal that needs no weights (training asks the same checks before it starts); this module
plans, converts and writes the tensors and the file.

The file is written under a temporary name in the destination folder and renamed at the end, so a
failure or a cancel never leaves a partial file under the final name.

Only the standard library and numpy are imported at module level; `gguf` is imported by the functions
that need it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slowtune import safetensors
from slowtune.fsutil import default_file_mode, fsync_dir
from slowtune.models.architectures import GEMMA_FAMILIES, SUPPORTED_ARCHITECTURES
from slowtune.models.gguf_spec import (
    PHI3_NAMES,
    ExportError,
    GGUFVocab,
    Hparams,
    check_rope_scaling,
    read_hparams,
    read_json,
    read_vocab,
)
from slowtune.progress import ensure

if TYPE_CHECKING:
    from slowtune.progress import Progress

__all__ = [
    "OUT_TYPES",
    "SUPPORTED_ARCHITECTURES",
    "ExportError",
    "write_gguf",
]

log = logging.getLogger(__name__)

OUT_TYPES = ("f32", "f16", "bf16")

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


# --------------------------------------------------------------------------------------------------------
# Reading the folder
# --------------------------------------------------------------------------------------------------------


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
        weight_map = read_json(index_path, "the index of the weight shards").get("weight_map", {})
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


def _llama3_rope_factors(hp: Hparams, scaling: Mapping[str, Any]) -> np.ndarray:
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


def _general_name(name: str, vocab: GGUFVocab) -> str:
    """`name` as the GGUF's general.name, changed where llama.cpp's name rule for Phi-3 tokenizers (see
    `PHI3_NAMES`) would otherwise tokenize differently from the tokenizer: " (Phi-3)" is added for a
    tokenizer that needs the rule, and "phi3"/"phi-3" in the name of one that must not have it (where it
    could also stop llama.cpp from loading the file) is written "phi 3"."""
    named = PHI3_NAMES.search(name) is not None
    if vocab.phi3_rstrip and not named:
        return f"{name} (Phi-3)"
    if named and not vocab.phi3_rstrip:
        return PHI3_NAMES.sub(r"\1 \2", name)
    return name


def _chat_template(model_dir: Path, override: str | None) -> str | list[dict[str, str]] | None:
    """The override, else tokenizer_config.json's chat_template, else chat_template.jinja (where recent
    transformers versions save it)."""
    if override is not None:
        return override
    tc_path = model_dir / "tokenizer_config.json"
    if tc_path.is_file():
        template = read_json(tc_path, "tokenizer settings").get("chat_template")
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
    hp: Hparams, stored: dict[str, _StoredTensor], config: Mapping[str, Any], model_dir: Path, out_type: str
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


def _matrix_shapes(hp: Hparams) -> dict[str, tuple[int, int]]:
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


def _add_hparams(writer: Any, hp: Hparams, out_type: str) -> None:
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


def _long_rope_attn_factor(hp: Hparams) -> float:
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
    config = read_json(config_path, "the model configuration")
    hp = read_hparams(config, config_path)
    check_rope_scaling(hp, config_path)
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
