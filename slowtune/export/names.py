"""The names of the files an export writes: one scheme for every reader and writer (the pipeline, the quantiser,
the README and Modelfile, the Export and Chat pages).

``NAME-QUANT.gguf`` for the tuned model in each type (``model-F16.gguf``, ``model-Q4_K_M.gguf``), ``base-F16.gguf``
for the unmodified base and ``NAME-lora.gguf`` for a LoRA adapter. llama.cpp, Ollama, LM Studio and the user's own
scripts are pointed at these names, so they never change. ``export_file_name`` makes them, ``parse_export_file_name``
reads them back; a file's *kind* is its key in ``export.json``'s ``files`` ("F16", "Q4_K_M", ..., "base-F16",
"LoRA"). ``QUANT_TYPES`` are the types an export can write, with llama.cpp's name for each.
"""

from __future__ import annotations

from typing import NamedTuple

# User-facing names -> llama.cpp's ftype constant names.
QUANT_TYPES = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}

BASE_KIND = "base-F16"  # the unmodified base model, in F16
LORA_KIND = "LoRA"  # the LoRA adapter of a --lora-only export
BASE_NAME = "base"  # the NAME of the base model's files: base-F16.gguf
RECOMMENDED = "Q4_K_M"  # the quantisation an export writes unless told otherwise
# The model file to chat with, most preferred first: small, then exact.
CHAT_PREFERENCE = ("Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16", "BF16", "F32")


class ExportFileName(NamedTuple):
    """A file name an export writes, read back: ``model-Q4_K_M.gguf`` is ("model", "Q4_K_M")."""

    name: str  # NAME, the stem the user chose ("base" for the base model's file)
    kind: str  # its key in export.json: a quantisation, "base-F16" (also "base-QUANT"), or "LoRA"

    @property
    def quant(self) -> str | None:
        """The GGUF's type: "F16" for base-F16.gguf, None for a LoRA adapter."""
        return None if self.kind == LORA_KIND else self.kind.removeprefix(f"{BASE_NAME}-")

    @property
    def is_base(self) -> bool:
        return self.kind.startswith(f"{BASE_NAME}-")


def export_file_name(name: str, kind: str) -> str:
    """The file an export writes for ``kind``: ``NAME-QUANT.gguf`` (a quantisation), ``base-F16.gguf`` (the base;
    ``name`` is not used) or ``NAME-lora.gguf`` (the LoRA adapter)."""
    if kind == LORA_KIND:
        return f"{name}-lora.gguf"
    if kind.startswith(f"{BASE_NAME}-"):
        return f"{kind}.gguf"
    return f"{name}-{kind}.gguf"


def parse_export_file_name(file_name: str) -> ExportFileName | None:
    """The NAME and kind of a file name ``export_file_name`` makes (``base-Q4_K_M.gguf``, the base quantised by the
    user as the LoRA README suggests, is a base too); None for any other name (a GGUF the user put there)."""
    stem = file_name.removesuffix(".gguf")
    if stem == file_name:
        return None
    if stem.endswith("-lora"):
        return ExportFileName(stem.removesuffix("-lora"), LORA_KIND)
    for quant in QUANT_TYPES:
        if stem.endswith(f"-{quant}"):
            name = stem.removesuffix(f"-{quant}")
            return ExportFileName(name, f"{BASE_NAME}-{quant}" if name == BASE_NAME else quant)
    return None


BASE_FILE = export_file_name(BASE_NAME, BASE_KIND)
