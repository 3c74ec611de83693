"""Import a GGUF file (or an Ollama model) as a base model slowtune can train.

Most models already on a Mac are GGUF files: LM Studio's downloads, Ollama's blobs, llama.cpp's. Training needs a
Hugging Face folder that MLX loads, so the import writes one:

- the tensors, dequantised with the ``gguf`` library one tensor at a time (memory stays near one tensor), with the
  q/k rows put back in Hugging Face's order where llama.cpp's converter permuted them (llama architecture);
- ``config.json`` from the GGUF's metadata;
- ``tokenizer.json`` rebuilt from the GGUF's vocabulary, merges (or SentencePiece scores), token types and
  pre-tokenizer type (``slowtune.models.pretokenizers``);
- ``tokenizer_config.json`` with the GGUF's chat template (or the one the user names) and special tokens;
- ``slowtune-import.json``: where it came from and what the checks found.

Then it checks the result against llama.cpp on the source file, and stores the figures: the rebuilt tokenizer must
tokenize a fixed set of strings exactly as llama.cpp does, and the imported folder's logits in MLX must pick the same
next token as llama.cpp at (nearly) every position of a fixed text. The folder is written under a temporary name and
renamed into place only when it is complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slowtune.fsutil import staged_folder
from slowtune.models import pretokenizers
from slowtune.progress import Progress, ensure

ARCHITECTURES = {  # GGUF general.architecture -> (Hugging Face model_type, architectures entry)
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}
DTYPES = ("float32", "float16", "bfloat16")
RECORD = "slowtune-import.json"
# The check compares MLX on the dequantised weights with llama.cpp on the quantised file. llama.cpp computes a
# quantised matmul against activations it quantises too (Q8 on a CPU), which moves logits by up to a few percent of
# their scale: at a near-tie (top two within NEAR_TIE) the two may then pick different tokens with both right. Such
# positions are counted and reported (set_aside), and the agreement is given both over every position and over the
# rest. Measured on SmolLM2-135M Q4_1: every disagreement had a margin under 0.2, and an F32 GGUF written from the
# imported folder agrees with MLX at every position (max logit difference 2e-4): the import itself is exact.
MIN_TOP1 = 0.99      # over the positions that are not near-ties
MIN_TOP1_ALL = 0.9   # over every position
NEAR_TIE = 0.25
SHARD_BYTES = 2 * 2**30
_DISK_RESERVE = 256 * 2**20

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Strings the rebuilt tokenizer must split exactly as llama.cpp does: several scripts, digit runs, whitespace runs,
# emoji, code, and (added per model) the special tokens inside text.
TOKENIZER_PROBES = (
    "Hello world",
    " Hello world",
    "The year 2024 had 366 days; 1234567890 and 3.14159.",
    "  two spaces,   three,\tone tab,\n\nnew lines\r\n and trailing   ",
    "Ünïcödé café naïve — Ελληνικά, Русский, 中文字符, 日本語, 한국어, हिन्दी, العربية",
    "Emoji: 😀🚀🎉 👍🏽 🇫🇷 and symbols ©®™ ½ ∑ ∞",
    "def f(x):\n    return x ** 2  # it's 'quoted' and \"double\"\n",
    "I'M YOU'LL don't won't they'RE",
    "",
    " ",
)
# A fixed English text for the logits check (its tokens are what the check compares).
LOGIT_TEXT = (
    "The lighthouse on the northern cape was built in 1874 from granite quarried on the island. Its lamp is visible "
    "for twenty nautical miles, and the keeper's cottage beside it is now a small museum about the coastal trade.\n\n"
    "To make bread, mix flour, water, salt and yeast, then knead the dough for ten minutes until it is smooth. Let it "
    "rise in a warm place for an hour, shape it into a loaf, and bake it at 220 degrees for about thirty minutes.\n\n"
    "Question: What is the capital of France?\nAnswer: The capital of France is Paris, a city on the river Seine. "
    "It is known for the Eiffel Tower, the Louvre museum and its cafes. In 2024 it hosted the Summer Olympic Games."
)


class ImportError_(ValueError):
    """The file cannot be imported; the message names the file and says why (and what to do)."""


@dataclass
class ImportResult:
    folder: str
    source: str
    architecture: str
    dtype: str
    parameters: int
    tokens_equal: bool | None = None
    tokenizer_strings: int = 0
    tokenizer_mismatches: list[str] = field(default_factory=list)
    top1_agreement: float | None = None  # over every position of the check text
    top1_agreement_confident: float | None = None  # over the positions that are not near-ties
    set_aside: int = 0  # near-tie positions (MLX's top two within NEAR_TIE)
    max_logit_error: float | None = None  # max |MLX - llama.cpp| / max |llama.cpp logit|
    positions: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_dtype() -> str:
    """float16 on a Mac (Metal computes in it); float32 elsewhere (bf16/f16 matmuls are slow on a CPU)."""
    return "float16" if sys.platform == "darwin" else "float32"


def imported_root() -> Path:
    from slowtune import paths

    return paths.data_dir() / "models"


# --- reading the GGUF ----------------------------------------------------------------------------------------------
_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise ImportError_(f"{path}: no such file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ImportError_(f"{path}: not a GGUF file (it does not start with the GGUF signature)")
    split = _SPLIT_NAME.search(path.name)
    if split and int(split.group(2)) > 1:
        raise ImportError_(
            f"{path}: this is part {int(split.group(1))} of a GGUF split into {int(split.group(2))} files; the import "
            "reads whole files only. Merge the parts first (llama.cpp: llama-gguf-split --merge FIRST-PART OUT.gguf)")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # the gguf library raises ValueError, IndexError or struct errors on a torn file
        raise ImportError_(f"{path}: the GGUF file is damaged or truncated ({type(exc).__name__}: {exc})") from exc
    count = _field(reader, "split.count")
    if count and int(count) > 1:
        raise ImportError_(f"{path}: this GGUF is split into {count} files; merge the parts first "
                           "(llama-gguf-split --merge)")
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > path.stat().st_size:
        raise ImportError_(f"{path}: the file is truncated ({path.stat().st_size} bytes; its tensors need {end})")
    return reader


def _field(reader: Any, key: str) -> Any:
    f = reader.fields.get(key)
    if f is None:
        return None
    value = f.contents()
    return value


# --- the Hugging Face config ---------------------------------------------------------------------------------------
def _config(reader: Any, path: Path, n_vocab: int, dtype: str) -> dict[str, Any]:
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ImportError_(f"{path}: architecture {arch!r} cannot be imported; the import reads "
                           f"{', '.join(ARCHITECTURES)} models")

    def get(key: str, default: Any = None, *, required: bool = False) -> Any:
        value = _field(reader, f"{arch}.{key}")
        if value is None and required:
            raise ImportError_(f"{path}: the GGUF lacks {arch}.{key}, which the import needs")
        return default if value is None else value

    model_type, hf_arch = ARCHITECTURES[arch]
    hidden = int(get("embedding_length", required=True))
    heads = int(get("attention.head_count", required=True))
    kv_heads = int(get("attention.head_count_kv", heads))
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names or get("rope.scaling.type") not in (None, "none"):
        raise ImportError_(f"{path}: the model uses RoPE scaling ({get('rope.scaling.type', 'rope_freqs')}), "
                           "which the import cannot turn back into a Hugging Face config yet")
    if _field(reader, f"{arch}.expert_count"):
        raise ImportError_(f"{path}: mixture-of-experts models cannot be imported")
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", required=True)),
        "num_hidden_layers": int(get("block_count", required=True)),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": int(get("context_length", 2048)),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "vocab_size": n_vocab,
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "torch_dtype": dtype,
    }
    key_length = get("attention.key_length")
    if key_length is not None and int(key_length) != hidden // heads:
        config["head_dim"] = int(key_length)
    elif arch == "qwen3":
        config["head_dim"] = hidden // heads
    if arch == "llama":
        config["attention_bias"] = "blk.0.attn_q.bias" in names
        config["mlp_bias"] = False
    for key, name in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id")):
        value = _field(reader, f"tokenizer.ggml.{name}")
        if value is not None:
            config[key] = int(value)
    return config


# --- tensors -------------------------------------------------------------------------------------------------------
_BLOCK = re.compile(r"^blk\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


def _hf_name(name: str, path: Path) -> str:
    base, _, kind = name.rpartition(".")
    match = _BLOCK.match(base)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.{kind}"
    if base in _TOP_NAMES:
        return f"{_TOP_NAMES[base]}.{kind}"
    raise ImportError_(f"{path}: tensor {name!r} has no place in the model the import writes")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's converter, which interleaves the two rotary halves of each head's rows."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_SAFETENSORS_DTYPE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def _as_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.ascontiguousarray(x, dtype=np.float32)
    if dtype == "float16":
        return np.ascontiguousarray(x, dtype=np.float16)
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even


@dataclass
class _Planned:
    gguf: Any
    name: str
    shape: tuple[int, ...]
    unpermute_heads: int | None


def _plan(reader: Any, path: Path, config: Mapping[str, Any], arch: str) -> list[_Planned]:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize  # noqa: F401  (fails early on a gguf without the quants module)

    readable = _readable_types()
    planned = []
    for t in reader.tensors:
        qtype = GGMLQuantizationType(int(t.tensor_type))
        if qtype not in readable:
            raise ImportError_(f"{path}: tensor {t.name} is stored as {qtype.name}, which the import cannot read; "
                               f"it reads {', '.join(sorted(q.name for q in readable))}")
        name = _hf_name(t.name, path)
        shape = tuple(int(n) for n in reversed(list(t.shape)))
        heads = None
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            heads = int(config["num_attention_heads"] if ".q_proj." in name else config["num_key_value_heads"])
        planned.append(_Planned(t, name, shape, heads))
    return planned


def _readable_types() -> set[Any]:
    from gguf import GGMLQuantizationType, quants

    out = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    for q in GGMLQuantizationType:
        cls = getattr(quants, "_type_traits", {}).get(q)
        if cls is not None:
            out.add(q)
    return out


def _tensor_values(p: _Planned) -> np.ndarray:
    from gguf.quants import dequantize

    values = dequantize(p.gguf.data, p.gguf.tensor_type).astype(np.float32, copy=False).reshape(p.shape)
    if p.unpermute_heads:
        values = _unpermute(values, p.unpermute_heads)
    return values


def _write_tensors(planned: list[_Planned], folder: Path, dtype: str, progress: Progress) -> int:
    """Safetensors shards written tensor by tensor (a header first, then each tensor's bytes as it is made)."""
    shards: list[list[_Planned]] = [[]]
    size = 0
    for p in planned:
        nbytes = int(np.prod(p.shape)) * _ITEMSIZE[dtype]
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(p)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map = {}
    done = total = 0
    for shard_name, shard in zip(names, shards, strict=True):
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for p in shard:
            nbytes = int(np.prod(p.shape)) * _ITEMSIZE[dtype]
            header[p.name] = {"dtype": _SAFETENSORS_DTYPE[dtype], "shape": list(p.shape),
                              "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[p.name] = shard_name
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / shard_name, "wb") as out:
            out.write(len(raw).to_bytes(8, "little"))
            out.write(raw)
            for p in shard:
                progress.check()
                values = _as_dtype(_tensor_values(p), dtype)
                out.write(values.tobytes())
                total += values.size
                done += 1
                progress.report("import", done, len(planned), status=p.name)
                del values
            out.flush()
            os.fsync(out.fileno())
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(int(np.prod(p.shape)) * _ITEMSIZE[dtype] for p in planned)},
                 "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


# --- the tokenizer -------------------------------------------------------------------------------------------------
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def _tokenizer_json(reader: Any, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tokenizer.json, the special-token part of tokenizer_config.json) rebuilt from the GGUF's vocabulary."""
    kind = _field(reader, "tokenizer.ggml.model")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if not tokens:
        raise ImportError_(f"{path}: the GGUF has no vocabulary (tokenizer.ggml.tokens)")
    tokens = [str(t) for t in tokens]
    types = [int(t) for t in (_field(reader, "tokenizer.ggml.token_type") or [_NORMAL] * len(tokens))]
    vocab = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ImportError_(f"{path}: the token {tok!r} appears under ids {vocab[tok]} and {i}")
        vocab[tok] = i

    def special(key: str) -> str | None:
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(value)] if value is not None and 0 <= int(value) < len(tokens) else None

    bos, eos, unk, pad = special("bos"), special("eos"), special("unknown"), special("padding")
    add_bos = bool(_field(reader, "tokenizer.ggml.add_bos_token") or False)
    add_eos = bool(_field(reader, "tokenizer.ggml.add_eos_token") or False)
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == _CONTROL}
             for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)]

    if kind == "gpt2":
        pre_name = _field(reader, "tokenizer.ggml.pre") or "default"
        pre = pretokenizers.lookup(str(pre_name))
        if pre is None:
            raise ImportError_(f"{path}: pre-tokenizer {pre_name!r} is not one the import can rebuild; it rebuilds "
                               f"{pretokenizers.known_names()}")
        merges = [m.split(" ", 1) for m in (_field(reader, "tokenizer.ggml.merges") or [])]
        model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                 "ignore_merges": pre.ignore_merges, "vocab": vocab, "merges": merges}
        normalizer = {"type": "NFC"} if pre.nfc else None
        pre_tokenizer = pre.hf_pre_tokenizer()
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    elif kind == "llama":
        scores = [float(s) for s in (_field(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens))]
        prefix = _field(reader, "tokenizer.ggml.add_space_prefix")
        prefix = True if prefix is None else bool(prefix)
        model = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                 "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                 "vocab": vocab, "merges": _spm_merges(tokens, types, scores, vocab)}
        steps = ([{"type": "Prepend", "prepend": "▁"}] if prefix else []) + [
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
        normalizer = {"type": "Sequence", "normalizers": steps}
        pre_tokenizer = None
        decoder = {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, *([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])]}
    else:
        raise ImportError_(f"{path}: tokenizer model {kind!r} cannot be imported; the import reads byte-level BPE "
                           "(gpt2) and SentencePiece (llama) vocabularies")

    post = None
    if (add_bos and bos) or (add_eos and eos):
        single = ([{"SpecialToken": {"id": bos, "type_id": 0}}] if add_bos and bos else []) + [
            {"Sequence": {"id": "A", "type_id": 0}}] + ([{"SpecialToken": {"id": eos, "type_id": 0}}]
                                                        if add_eos and eos else [])
        pair = [*single, {"Sequence": {"id": "B", "type_id": 1}}]
        specials = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in {bos, eos} if t}
        post = {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                 "normalizer": normalizer, "pre_tokenizer": pre_tokenizer, "post_processor": post,
                 "decoder": decoder, "model": model}
    specials_config = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad,
                       "add_bos_token": add_bos, "add_eos_token": add_eos}
    return tokenizer, specials_config


def _spm_merges(tokens: list[str], types: list[int], scores: list[float], vocab: Mapping[str, int]) -> list[list[str]]:
    """BPE merges that reproduce SentencePiece's score order: every normal token of two or more characters, by
    descending score, split every way into two tokens both in the vocabulary, ordered by the pair's ids."""
    merges: list[list[str]] = []
    order = sorted((i for i, t in enumerate(tokens) if types[i] == _NORMAL and len(t) > 1),
                   key=lambda i: -scores[i])
    for i in order:
        tok = tokens[i]
        pairs = sorted((vocab[tok[:k]], vocab[tok[k:]]) for k in range(1, len(tok))
                       if tok[:k] in vocab and tok[k:] in vocab)
        merges.extend([tokens[a], tokens[b]] for a, b in pairs)
    return merges


def _chat_template(reader: Any, path: Path, override: str | None) -> str:
    if override:
        if override.lower() == "chatml":
            return CHATML
        file = Path(override).expanduser()
        if not file.is_file():
            raise ImportError_(f"--chat-template {override}: no such file (give a Jinja template file or 'chatml')")
        return file.read_text(encoding="utf-8")
    template = _field(reader, "tokenizer.chat_template")
    if not template:
        raise ImportError_(f"{path}: the GGUF has no chat template, so the model's turns cannot be written for "
                           "training. Pass --chat-template chatml, or --chat-template FILE with the model's "
                           "Jinja template")
    return str(template)


# --- the import ----------------------------------------------------------------------------------------------------
def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return name or "model"


def import_gguf(source: Path, *, dest: Path | None = None, dtype: str | None = None,
                chat_template: str | None = None, name: str | None = None, check: bool = True,
                replace: bool = False, progress: Progress | None = None,
                origin: Mapping[str, Any] | None = None) -> ImportResult:
    """Write a trainable Hugging Face folder from the GGUF file ``source`` and check it against llama.cpp."""
    progress = ensure(progress)
    start = time.perf_counter()
    source = Path(source).expanduser().resolve()
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise ImportError_(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    reader = _open(source)
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    arch = _field(reader, "general.architecture")
    config = _config(reader, source, len(tokens), dtype)
    template = _chat_template(reader, source, chat_template)
    tokenizer, specials = _tokenizer_json(reader, source)
    planned = _plan(reader, source, config, arch)

    folder = dest or imported_root() / _safe_name(name or source.stem)
    if folder.exists() and not replace:
        raise ImportError_(f"{folder} already exists (an earlier import?); pass --replace to write it again, or "
                           "--name to choose another name")
    folder.parent.mkdir(parents=True, exist_ok=True)
    need = sum(int(np.prod(p.shape)) for p in planned) * _ITEMSIZE[dtype] + len(json.dumps(tokenizer))
    free = shutil.disk_usage(folder.parent).free
    if need + _DISK_RESERVE > free:
        raise ImportError_(f"{folder.parent}: the imported model needs {need / 1e9:.1f} GB in {dtype} but only "
                           f"{free / 1e9:.1f} GB is free; free some space or choose --dtype float16")

    with staged_folder(folder) as tmp:
        parameters = _write_tensors(planned, tmp, dtype, progress)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
        tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                            "model_max_length": config["max_position_embeddings"], "chat_template": template,
                            **{k: v for k, v in specials.items() if v is not None}}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n")
        result = ImportResult(folder=str(folder), source=str(source), architecture=config["model_type"],
                              dtype=dtype, parameters=parameters)
        if chat_template:
            result.notes.append(f"chat template from --chat-template {chat_template}")
        if check:
            progress.report("check", 0, 2, status="tokenizer")
            _check_tokenizer(result, tmp, source)
            progress.check()
            progress.report("check", 1, 2, status="logits")
            _check_logits(result, tmp, source)
            progress.report("check", 2, 2)
        result.seconds = round(time.perf_counter() - start, 2)
        result.peak_rss_bytes = _peak_rss()
        record = {"source": str(source), "source_bytes": source.stat().st_size,
                  "source_mtime": source.stat().st_mtime, "origin": dict(origin or {}), "imported_at": time.time(),
                  "checks": result.to_dict()}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return result


def _peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _specials_in_text(tokenizer: Any) -> list[str]:
    specials = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special][:4]
    return [f"{s}user\nHi there{s}" for s in specials[:2]] + (
        [f"{specials[0]}assistant\n{specials[-1]}\n"] if specials else [])


def _check_tokenizer(result: ImportResult, folder: Path, source: Path) -> None:
    from tokenizers import Tokenizer

    from slowtune.llama import load_gguf

    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    llm = load_gguf(source, n_ctx=64, vocab_only=True)
    try:
        strings = [*TOKENIZER_PROBES, *_specials_in_text(hf)]
        for text in strings:
            ours = hf.encode(text, add_special_tokens=False).ids
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            if ours != theirs:
                result.tokenizer_mismatches.append(text)
        result.tokenizer_strings = len(strings)
        result.tokens_equal = not result.tokenizer_mismatches
    finally:
        llm.close()
    if result.tokenizer_mismatches:
        shown = "; ".join(repr(t[:40]) for t in result.tokenizer_mismatches[:3])
        raise ImportError_(f"{source}: the rebuilt tokenizer splits {len(result.tokenizer_mismatches)} of "
                           f"{result.tokenizer_strings} test strings differently from llama.cpp ({shown}); "
                           "nothing was imported")


def _check_logits(result: ImportResult, folder: Path, source: Path) -> None:
    import mlx.core as mx
    from mlx_lm import load

    from slowtune.llama import load_gguf

    vocab = load_gguf(source, n_ctx=64, vocab_only=True)
    try:
        tokens = vocab.tokenize(LOGIT_TEXT.encode("utf-8"), add_bos=True, special=False)
    finally:
        vocab.close()
    context = int(json.loads((folder / "config.json").read_text())["max_position_embeddings"])
    tokens = tokens[:context]
    llm = load_gguf(source, n_ctx=len(tokens) + 8, n_batch=len(tokens) + 8, logits_all=True, exact=True, seed=0)
    try:
        llm.eval(tokens)
        theirs = np.asarray(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
    model, tokenizer = load(str(folder))
    ours_tokens = tokenizer.encode(LOGIT_TEXT)[: len(tokens)]
    if list(ours_tokens) != list(tokens):
        result.tokens_equal = False
        raise ImportError_(f"{source}: the imported tokenizer encodes the check text differently from llama.cpp "
                           f"({len(ours_tokens)} against {len(tokens)} tokens); nothing was imported")
    ours = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
    del model
    if ours.shape[-1] != theirs.shape[-1]:
        raise ImportError_(f"{source}: the imported model has {ours.shape[-1]} logits a position, llama.cpp "
                           f"{theirs.shape[-1]}; nothing was imported")
    same = ours.argmax(-1) == theirs.argmax(-1)
    top2 = np.sort(ours, axis=-1)[:, -2:]
    confident = (top2[:, 1] - top2[:, 0]) >= NEAR_TIE
    result.positions = len(tokens)
    result.top1_agreement = round(float(same.mean()), 4)
    result.set_aside = int((~confident).sum())
    result.top1_agreement_confident = round(float(same[confident].mean()), 4) if confident.any() else None
    result.max_logit_error = round(float(np.abs(ours - theirs).max() / np.abs(theirs).max()), 5)
    if (result.top1_agreement_confident or 0.0) < MIN_TOP1 or result.top1_agreement < MIN_TOP1_ALL:
        raise ImportError_(
            f"{source}: the imported model picks the same next token as llama.cpp at only {result.top1_agreement:.1%} "
            f"of {len(tokens)} positions ({result.top1_agreement_confident or 0:.1%} of those that are not near-ties; "
            f"needs {MIN_TOP1:.0%}); nothing was imported. The GGUF's layout is not one the import understands.")


# --- imported models -----------------------------------------------------------------------------------------------
@dataclass
class ImportedModel:
    folder: Path
    source: str
    architecture: str
    dtype: str
    top1_agreement: float | None
    origin: dict[str, Any]


def source_gguf(folder: Path) -> Path | None:
    """The GGUF file an imported folder was made from, when it is still there unchanged (same size); else None.
    llama.cpp answers with it much faster than MLX decodes on a CPU (replay uses it)."""
    try:
        record = json.loads((Path(folder) / RECORD).read_text(encoding="utf-8"))
        source = Path(record["source"])
        if source.is_file() and source.stat().st_size == int(record["source_bytes"]):
            return source
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def imported_models(root: Path | None = None) -> list[ImportedModel]:
    """The folders ``slowtune models import`` wrote, newest first."""
    root = root or imported_root()
    found = []
    for record in sorted(root.glob(f"*/{RECORD}"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        checks = data.get("checks", {})
        found.append(ImportedModel(record.parent, data.get("source", ""), checks.get("architecture", "?"),
                                   checks.get("dtype", "?"), checks.get("top1_agreement"), data.get("origin", {})))
    return found



# --- Ollama --------------------------------------------------------------------------------------------------------
# Ollama keeps each model as a manifest (JSON, one per name and tag) whose layers point at content-addressed blobs;
# the layer of media type ".model" is the GGUF. OLLAMA_MODELS moves the folder, as it does for Ollama itself.
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"


def ollama_root() -> Path:
    custom = os.environ.get("OLLAMA_MODELS")
    return Path(custom).expanduser() if custom else Path.home() / ".ollama" / "models"


@dataclass
class OllamaModel:
    name: str  # as Ollama shows it: "smollm2:135m", "user/model:tag"
    gguf: Path
    size: int
    manifest: Path


def _parse_ollama_name(text: str) -> tuple[str, str, str, str]:
    """``[host/][namespace/]model[:tag]`` -> (host, namespace, model, tag), with Ollama's defaults."""
    name, _, tag = text.partition(":")
    parts = name.split("/")
    if len(parts) == 1:
        host, namespace, model = OLLAMA_REGISTRY, "library", parts[0]
    elif len(parts) == 2:
        host, namespace, model = OLLAMA_REGISTRY, parts[0], parts[1]
    else:
        host, namespace, model = parts[0], "/".join(parts[1:-1]), parts[-1]
    return host, namespace, model, tag or "latest"


def _display_name(host: str, namespace: str, model: str, tag: str) -> str:
    prefix = "" if host == OLLAMA_REGISTRY and namespace == "library" else (
        f"{namespace}/" if host == OLLAMA_REGISTRY else f"{host}/{namespace}/")
    return f"{prefix}{model}:{tag}"


def _model_blob(manifest: Path, root: Path) -> tuple[Path, int]:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ImportError_(f"{manifest}: the Ollama manifest cannot be read ({exc})") from exc
    for layer in data.get("layers", []):
        if layer.get("mediaType") == OLLAMA_MODEL_LAYER:
            digest = str(layer.get("digest", ""))
            blob = root / "blobs" / digest.replace(":", "-")
            if not re.fullmatch(r"sha256-[0-9a-f]{64}", blob.name):
                raise ImportError_(f"{manifest}: the model layer's digest {digest!r} is not a sha256 digest")
            return blob, int(layer.get("size", 0))
    raise ImportError_(f"{manifest}: the Ollama manifest has no model layer (is it an adapter or a projector?)")


def ollama_models(root: Path | None = None) -> list[OllamaModel]:
    """The models Ollama has on this machine (those whose GGUF blob is present)."""
    root = root or ollama_root()
    manifests = root / "manifests"
    found = []
    if not manifests.is_dir():
        return found
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) < 4:
            continue
        host, *namespace, model, tag = parts
        try:
            blob, size = _model_blob(manifest, root)
        except ImportError_:
            continue
        if blob.is_file():
            found.append(OllamaModel(_display_name(host, "/".join(namespace), model, tag), blob, size, manifest))
    return found


def resolve_ollama(name: str, root: Path | None = None) -> OllamaModel:
    """The GGUF blob of an installed Ollama model, by the name ``ollama list`` shows."""
    root = root or ollama_root()
    host, namespace, model, tag = _parse_ollama_name(name)
    manifest = root / "manifests" / host / namespace / model / tag
    display = _display_name(host, namespace, model, tag)
    if not manifest.is_file():
        installed = [m.name for m in ollama_models(root)]
        listed = f"installed: {', '.join(installed)}" if installed else f"no Ollama models are installed in {root}"
        raise ImportError_(f"ollama:{display} is not installed ({listed}). Run `ollama pull {display}` first")
    blob, size = _model_blob(manifest, root)
    if not blob.is_file():
        raise ImportError_(f"ollama:{display}: its model file {blob} is missing (a pull that did not finish?)")
    return OllamaModel(display, blob, size, manifest)
