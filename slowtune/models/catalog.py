"""Recommended base models, and what a local model folder holds.

``CATALOG`` lists instruct models from 0.5B to 8B parameters that slowtune suggests in the train wizard, with the
MLX 4-bit versions that mlx-community publishes of several of them (QLoRA bases: about 3.5x fewer bytes to read per
streamed step). Facts come from the models' cards and config files as published in 2025:

- ``download_gb`` is approximate: the size of the files slowtune downloads (safetensors weights plus tokenizer and
  config files), rounded. Repos get re-uploaded and re-sharded; the hub's own file sizes are what ``download``
  reports while it runs.
- ``context_length`` is the context the model card states (``max_position_embeddings`` may be larger where a model
  supports YaRN scaling).
- ``gated`` means the Hugging Face repo asks the user to accept a licence (or share contact details) before
  downloading. mlx-community's conversions are not gated, but the original licence still applies to them.
- ``streamed`` says whether slowtune's layer-streamed trainer supports the architecture (``model_type`` llama,
  mistral, qwen2 or qwen3). Other architectures can only be trained when the model fits in memory.

``describe_local`` reads a Hugging Face or MLX folder (config.json, safetensors headers and index,
tokenizer_config.json) without loading any weights. Only the standard library is used here.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune.models.architectures import SUPPORTED_ARCHITECTURES

# Architectures (config.json ``model_type``) that both engines run and the export writes: every supported family.
STREAMED_ARCHITECTURES = frozenset(SUPPORTED_ARCHITECTURES)

# Every architecture the catalog may offer.
KNOWN_ARCHITECTURES = STREAMED_ARCHITECTURES


class ModelError(ValueError):
    """A model folder is missing a file slowtune needs, or a file in it cannot be read."""


def streamed_supported(architecture: str, quantization: Quantization | None = None) -> bool:
    """Whether the streamed trainer can run a model: a supported architecture, unquantised or MLX-quantised.

    Other quantisation formats (GPTQ, AWQ, bitsandbytes, ...) cannot be loaded by MLX at all.
    """
    return architecture in STREAMED_ARCHITECTURES and (quantization is None or quantization.method == "mlx")


# --- the catalog -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogModel:
    repo_id: str
    name: str
    params_b: float  # parameters, billions
    download_gb: float  # approximate, see the module docstring
    licence: str
    architecture: str  # config.json model_type
    context_length: int
    chat_template: bool
    quantization_bits: int | None  # None: bf16 weights; 4: MLX 4-bit (group size 64)
    gated: bool
    streamed: bool  # slowtune's streamed engine supports it (see STREAMED_ARCHITECTURES)
    base_repo: str | None = None  # for a quantised conversion: the repo it was made from
    note: str = ""

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"


_APACHE = "Apache-2.0"
_QWEN_RESEARCH = "Qwen Research License"
_LLAMA_31 = "Llama 3.1 Community License"
_LLAMA_32 = "Llama 3.2 Community License"
_GEMMA = "Gemma Terms of Use"
_MLX_NOTE = "MLX 4-bit conversion by mlx-community (QLoRA base); the original model's licence applies."


def _model(repo_id: str, name: str, params_b: float, download_gb: float, licence: str, architecture: str,
           context_length: int, *, gated: bool = False, note: str = "") -> CatalogModel:
    return CatalogModel(
        repo_id, name, params_b, download_gb, licence, architecture, context_length, chat_template=True,
        quantization_bits=None, gated=gated, streamed=architecture in STREAMED_ARCHITECTURES, note=note,
    )


def _mlx_4bit(repo_id: str, base: CatalogModel, download_gb: float) -> CatalogModel:
    return CatalogModel(
        repo_id, f"{base.name} (MLX 4-bit)", base.params_b, download_gb, base.licence, base.architecture,
        base.context_length, chat_template=True, quantization_bits=4, gated=False,
        streamed=base.architecture in STREAMED_ARCHITECTURES, base_repo=base.repo_id, note=_MLX_NOTE,
    )


QWEN25_05B = _model("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct", 0.49, 1.0, _APACHE, "qwen2", 32768)
QWEN25_15B = _model("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct", 1.54, 3.1, _APACHE, "qwen2", 32768)
QWEN25_3B = _model("Qwen/Qwen2.5-3B-Instruct", "Qwen2.5 3B Instruct", 3.09, 6.2, _QWEN_RESEARCH, "qwen2", 32768,
                   note="Research licence: check it allows your use.")
QWEN25_7B = _model("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct", 7.62, 15.2, _APACHE, "qwen2", 32768)
QWEN3_06B = _model("Qwen/Qwen3-0.6B", "Qwen3 0.6B", 0.6, 1.5, _APACHE, "qwen3", 32768,
                   note="Instruct model with optional thinking mode.")
QWEN3_17B = _model("Qwen/Qwen3-1.7B", "Qwen3 1.7B", 1.7, 4.1, _APACHE, "qwen3", 32768,
                   note="Instruct model with optional thinking mode.")
QWEN3_4B = _model("Qwen/Qwen3-4B", "Qwen3 4B", 4.0, 8.0, _APACHE, "qwen3", 32768,
                  note="Instruct model with optional thinking mode.")
QWEN3_8B = _model("Qwen/Qwen3-8B", "Qwen3 8B", 8.2, 16.4, _APACHE, "qwen3", 32768,
                  note="Instruct model with optional thinking mode.")
LLAMA32_1B = _model("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct", 1.24, 2.5, _LLAMA_32, "llama",
                    131072, gated=True)
LLAMA32_3B = _model("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct", 3.21, 6.4, _LLAMA_32, "llama",
                    131072, gated=True)
LLAMA31_8B = _model("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct", 8.03, 16.1, _LLAMA_31, "llama",
                    131072, gated=True)
MISTRAL_7B = _model("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3", 7.25, 14.5, _APACHE,
                    "mistral", 32768, gated=True,
                    note="The repo asks for contact details before downloading.")
SMOLLM3_3B = _model("HuggingFaceTB/SmolLM3-3B", "SmolLM3 3B", 3.08, 6.2, _APACHE, "smollm3", 65536,
                    note="Architecture smollm3: not supported by the streamed engine (in-memory training only).")
GEMMA2_2B = _model("google/gemma-2-2b-it", "Gemma 2 2B it", 2.61, 5.2, _GEMMA, "gemma2", 8192, gated=True,
                   note="Architecture gemma2: not supported by the streamed engine (in-memory training only).")

CATALOG: tuple[CatalogModel, ...] = (
    QWEN25_05B,
    _mlx_4bit("mlx-community/Qwen2.5-0.5B-Instruct-4bit", QWEN25_05B, 0.3),
    QWEN25_15B,
    _mlx_4bit("mlx-community/Qwen2.5-1.5B-Instruct-4bit", QWEN25_15B, 0.9),
    QWEN25_3B,
    _mlx_4bit("mlx-community/Qwen2.5-3B-Instruct-4bit", QWEN25_3B, 1.7),
    QWEN25_7B,
    _mlx_4bit("mlx-community/Qwen2.5-7B-Instruct-4bit", QWEN25_7B, 4.3),
    QWEN3_06B,
    QWEN3_17B,
    QWEN3_4B,
    _mlx_4bit("mlx-community/Qwen3-4B-4bit", QWEN3_4B, 2.3),
    QWEN3_8B,
    _mlx_4bit("mlx-community/Qwen3-8B-4bit", QWEN3_8B, 4.6),
    LLAMA32_1B,
    _mlx_4bit("mlx-community/Llama-3.2-1B-Instruct-4bit", LLAMA32_1B, 0.7),
    LLAMA32_3B,
    _mlx_4bit("mlx-community/Llama-3.2-3B-Instruct-4bit", LLAMA32_3B, 1.8),
    LLAMA31_8B,
    _mlx_4bit("mlx-community/Meta-Llama-3.1-8B-Instruct-4bit", LLAMA31_8B, 4.5),
    MISTRAL_7B,
    _mlx_4bit("mlx-community/Mistral-7B-Instruct-v0.3-4bit", MISTRAL_7B, 4.1),
    SMOLLM3_3B,
    GEMMA2_2B,
)


def find(repo_id: str) -> CatalogModel | None:
    """The catalog entry for ``repo_id`` (case-insensitive, as the hub treats repo ids), or None."""
    wanted = repo_id.strip().lower()
    return next((m for m in CATALOG if m.repo_id.lower() == wanted), None)


# --- local folders -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantization:
    bits: int | None  # None only for a non-MLX format that does not say
    group_size: int | None
    method: str  # "mlx" for MLX-quantised folders, else the Hugging Face quant_method (gptq, awq, ...)


@dataclass(frozen=True)
class LocalModel:
    path: Path
    architecture: str  # config.json model_type
    hidden_size: int | None
    num_layers: int | None
    vocab_size: int | None
    context_length: int | None  # max_position_embeddings
    dtype: str | None  # of the floating-point tensors on disk ("bfloat16", ...); config's torch_dtype if unreadable
    quantization: Quantization | None
    weight_files: tuple[str, ...]
    weight_bytes: int  # total size of the weight files on disk
    has_chat_template: bool
    streamed_supported: bool


# safetensors dtype codes -> the names torch and config.json use; integer tensors (packed MLX weights) are skipped.
_FLOAT_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
# The safetensors format caps its JSON header at 100 MB; real headers are well under 1 MB.
_MAX_HEADER = 100_000_000


def describe_local(path: Path) -> LocalModel:
    """What a local Hugging Face or MLX model folder holds, read from its small files and safetensors headers.

    Raises ModelError naming the folder and the file at fault: no config.json, a file that is not valid JSON, no
    safetensors weights (or only PyTorch ``.bin`` ones), a shard listed in the index but missing, a truncated
    safetensors file.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"{folder} is not a folder" + ("" if folder.exists() else " (it does not exist)") + ".")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{folder} has no config.json: it is not a Hugging Face or MLX model folder.")
    config = _read_json_object(config_file)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}

    def field(*names: str) -> Any:
        # Multimodal configs keep the language model's sizes under text_config.
        for source in (config, text):
            for name in names:
                if source.get(name) is not None:
                    return source[name]
        return None

    architecture = config.get("model_type")
    if not isinstance(architecture, str) or not architecture:
        raise ModelError(f"{config_file} has no model_type, so the architecture is unknown.")
    quantization = _quantization(config, config_file)
    weight_files = _weight_files(folder)
    dtype = _weights_dtype(folder, weight_files) or field("torch_dtype", "dtype")
    return LocalModel(
        path=folder,
        architecture=architecture,
        hidden_size=_int_or_none(field("hidden_size", "n_embd", "d_model")),
        num_layers=_int_or_none(field("num_hidden_layers", "n_layer", "num_layers")),
        vocab_size=_int_or_none(field("vocab_size")),
        context_length=_int_or_none(field("max_position_embeddings", "n_positions")),
        dtype=str(dtype) if dtype else None,
        quantization=quantization,
        weight_files=tuple(weight_files),
        weight_bytes=sum((folder / name).stat().st_size for name in weight_files),
        has_chat_template=_has_chat_template(folder),
        streamed_supported=streamed_supported(architecture, quantization),
    )


def _read_json_object(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    except UnicodeDecodeError:
        raise ModelError(f"{file} is not valid JSON (it is not UTF-8 text).") from None
    except OSError as exc:
        raise ModelError(f"{file} cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(data, dict):
        raise ModelError(f"{file} is not valid: expected a JSON object, found {type(data).__name__}.")
    return data


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _quantization(config: dict[str, Any], config_file: Path) -> Quantization | None:
    # mlx-lm writes {"group_size", "bits"} under "quantization" (and a copy under "quantization_config");
    # transformers' quantised models have "quantization_config" with a "quant_method".
    mlx = config.get("quantization")
    hf = config.get("quantization_config")
    if isinstance(mlx, dict):
        method = "mlx"
        spec = mlx
    elif isinstance(hf, dict):
        method = str(hf.get("quant_method") or "mlx")
        spec = hf
    else:
        return None
    bits = spec.get("bits", spec.get("w_bit"))
    if method == "mlx" and not _int_or_none(bits):
        raise ModelError(f"{config_file} has a quantization entry without an integer 'bits'.")
    group_size = spec.get("group_size", spec.get("q_group_size"))
    return Quantization(bits=_int_or_none(bits), group_size=_int_or_none(group_size), method=method)


def _weight_files(folder: Path) -> list[str]:
    """The safetensors files that make up the model: those the index names, else every top-level one."""
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = _read_json_object(index_file).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index_file} has no weight_map.")
        names = sorted({str(v) for v in weight_map.values()})
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ModelError(
                f"{folder} is incomplete: {', '.join(missing)} (listed in model.safetensors.index.json) is missing."
            )
        return names
    names = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if names:
        return names
    if any(folder.glob("pytorch_model*.bin")):
        raise ModelError(
            f"{folder} has only PyTorch .bin weights; slowtune needs safetensors weights (model.safetensors)."
        )
    raise ModelError(f"{folder} has no weights: no model.safetensors or other .safetensors file.")


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets), read without the data."""
    try:
        with file.open("rb") as handle:
            size = file.stat().st_size
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ModelError(f"{file} is not a valid safetensors file (it is {size} bytes long).")
            (length,) = struct.unpack("<Q", prefix)
            if length > _MAX_HEADER or 8 + length > size:
                raise ModelError(f"{file} is not a valid safetensors file (truncated, or an incomplete download).")
            header = json.loads(handle.read(length))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{file} is not a valid safetensors file (its header is not JSON).") from None
    except OSError as exc:
        raise ModelError(f"{file} cannot be read ({exc.strerror or exc}).") from None
    if not isinstance(header, dict):
        raise ModelError(f"{file} is not a valid safetensors file (its header is not a JSON object).")
    return header


def _weights_dtype(folder: Path, weight_files: list[str]) -> str | None:
    """The floating-point dtype holding most bytes across the weight files (validating each header)."""
    weight: Counter[str] = Counter()
    for name in weight_files:
        for key, info in read_safetensors_header(folder / name).items():
            if key == "__metadata__" or not isinstance(info, dict):
                continue
            code = info.get("dtype")
            if code in _FLOAT_DTYPES:
                count = 1
                for dim in info.get("shape") or []:
                    count *= int(dim)
                weight[code] += count * _DTYPE_BYTES[code]
    if not weight:
        return None
    return _FLOAT_DTYPES[weight.most_common(1)[0][0]]


def _has_chat_template(folder: Path) -> bool:
    # Newer transformers versions save the template as chat_template.jinja (or chat_template.json) beside
    # tokenizer_config.json instead of inside it.
    if (folder / "chat_template.jinja").is_file():
        return True
    json_template = folder / "chat_template.json"
    if json_template.is_file() and _read_json_object(json_template).get("chat_template"):
        return True
    tokenizer_config = folder / "tokenizer_config.json"
    if not tokenizer_config.is_file():
        return False
    template = _read_json_object(tokenizer_config).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": "..."}]
        return any(isinstance(t, dict) and t.get("template") for t in template)
    return bool(template)
