"""Can this model folder be trained and exported? Asked when a model is picked, answered in words for a user.

``check_model`` gathers the core's own checks, those the trainer and the GGUF export make later: the family
(``slowtune.models.architectures``: config.json's model_type, a vision tower), the chat template training needs,
and what the export writes (``slowtune.models.gguf_spec.check_exportable``: RoPE scaling, the tokenizer). Each
problem is one sentence or two a user can act on; ``alternatives`` names catalog models that work.

``parameter_count`` reads a folder's parameters from its weights (the safetensors headers, no data loaded).
Only the standard library and slowtune's own readers are used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from slowtune.models.architectures import FAMILIES, multimodal_reason
from slowtune.models.catalog import CATALOG, CatalogModel, ModelError, describe_local, offered
from slowtune.safetensors import HeaderError, read_header

__all__ = ["alternatives", "check_model", "format_parameters", "parameter_count"]

# Catalog models named as alternatives: small ones that train quickly and export (bf16 weights, no licence gate).
_SUGGESTED = ("HuggingFaceTB/SmolLM2-360M-Instruct", "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct",
              "meta-llama/Llama-3.2-1B-Instruct")


def families_in_words() -> str:
    """The families slowtune trains and exports, as a user knows them: "Llama (Llama 3.1/3.2/3.3, SmolLM2), …"."""
    return ", ".join(f"{f.label} ({f.examples})" for f in FAMILIES.values())


def check_model(path: Path) -> list[str]:
    """What stops the model folder ``path`` from being trained here and exported afterwards, in words; [] when
    nothing does. Reads the folder's small files only (config, tokenizer, safetensors headers)."""
    folder = Path(path).expanduser()
    try:
        info = describe_local(folder)
    except ModelError as exc:
        return [f"Its files could not be read: {exc}"]
    if info.problem:  # another family, or a vision-language checkpoint: nothing else about it matters
        return [_family_problem(folder, info.architecture, info.problem)]
    problems = []
    if not info.has_chat_template:
        problems.append("It has no chat template, so it cannot be trained on conversations: it is a base model. "
                        "Pick its Instruct (or Chat) version.")
    from slowtune.models.gguf_spec import ExportError, check_exportable

    try:
        check_exportable(folder)
    except ExportError as exc:
        problems.append("After training it could not be saved for llama.cpp, Ollama or LM Studio (a GGUF file): "
                        f"{_first_sentence(str(exc))}.")
    return problems


def _family_problem(folder: Path, model_type: str, detail: str) -> str:
    import json

    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if isinstance(config, dict) and multimodal_reason(config):
        return ("It is a model that also reads images (a vision-language model); slowtune trains text-only models. "
                "For Gemma 3, pick the text-only 270M or 1B.")
    if model_type not in FAMILIES:
        return (f"It is a “{model_type}” model, a family slowtune cannot train and export. The families it can: "
                f"{families_in_words()}.")
    # A family slowtune knows, set up in a way it cannot export (SmolLM3 or Gemma 3 layer patterns).
    return f"This version cannot be trained and exported: {_first_sentence(detail.split(': ', 1)[-1])}."


def _first_sentence(text: str) -> str:
    """The reason without the hint that follows it (the wizard names the alternatives itself)."""
    return text.split(". Pick a model", 1)[0].rstrip(". ")


def alternatives(models: Iterable[CatalogModel] = CATALOG, limit: int = 3) -> list[str]:
    """Names of catalog models that can be trained and exported, small ones first."""
    available = {m.repo_id: m for m in offered(models)}
    names = [available[r].name for r in _SUGGESTED if r in available]
    others = sorted((m for m in available.values() if m.name not in names and m.quantization_bits is None
                     and not m.gated), key=lambda m: m.params_b)
    return [*names, *(m.name for m in others)][:limit]


def parameter_count(path: Path) -> int:
    """The number of parameters in the model folder ``path``, summed from its safetensors headers' tensor shapes.

    Packed quantised weights (MLX's integer tensors) count the values they hold (32 / bits per 32-bit word); their
    scales and biases are not parameters. Raises ModelError when the weights cannot be read.
    """
    info = describe_local(path)
    bits = info.quantization.bits if info.quantization and info.quantization.bits else None
    total = 0
    for name in info.weight_files:
        try:
            tensors = read_header(info.path / name).tensors()
        except (HeaderError, OSError) as exc:
            raise ModelError(f"{info.path / name} cannot be read ({exc}).") from None
        packed = {t.rsplit(".", 1)[0] for t in tensors if t.endswith(".scales")} if bits else set()
        for tensor in tensors.values():
            base = tensor.name.rsplit(".", 1)[0]
            if base in packed and tensor.name.endswith((".scales", ".biases")):
                continue
            per_word = 32 // bits if bits and base in packed and tensor.dtype in ("U32", "I32") else 1
            total += tensor.count * per_word
    return total


def format_parameters(count: int) -> str:
    """``135 M``, ``1.5 B``: a parameter count as the catalog shows it."""
    if count >= 1e9:
        return f"{count / 1e9:.3g} B"
    if count >= 1e6:
        return f"{count / 1e6:.3g} M"
    return f"{count:,}"
