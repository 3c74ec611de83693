"""Tiny model folders for tests, built once per test session (conftest.py star-imports this module).

Each fixture returns the Path of a Hugging Face model folder (see slowtune.testing.tiny_models). The folders
are shared by every test in the session: treat them as read-only, and copy one before changing it.

The `real_vocab_*` models need llama.cpp's vocab files from the shared fixtures folder; without it they
skip, with a message saying where the folder was expected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slowtune.testing import tiny_models

__all__ = [
    "llama_cpp_vocab_dir",
    "real_vocab_llama_bpe",
    "real_vocab_llama_spm",
    "real_vocab_qwen2",
    "tiny_gemma2",
    "tiny_gemma3_text",
    "tiny_llama",
    "tiny_mistral",
    "tiny_phi3",
    "tiny_qwen2",
    "tiny_qwen3",
    "tiny_smollm3",
]


def _tiny(factory: pytest.TempPathFactory, arch: tiny_models.Arch) -> Path:
    return tiny_models.build_tiny_model(factory.mktemp(f"tiny-{arch}"), arch)


def _vocab_dir_or_skip() -> Path:
    folder = tiny_models.shared_vocab_dir()
    if folder is None:
        pytest.skip(
            "llama.cpp vocab fixtures not found: expected <project root>/../shared/fixtures/llama.cpp-vocab "
            "or a folder named by SLOWTUNE_VOCAB_FIXTURES"
        )
    return folder


def _real_vocab(factory: pytest.TempPathFactory, vocab: tiny_models.RealVocab) -> Path:
    folder = _vocab_dir_or_skip()
    if not (folder / f"ggml-vocab-{vocab}.gguf").is_file():
        pytest.skip(f"ggml-vocab-{vocab}.gguf is missing from {folder}")
    return tiny_models.build_real_vocab_model(factory.mktemp(f"real-vocab-{vocab}"), vocab, folder)


@pytest.fixture(scope="session")
def llama_cpp_vocab_dir() -> Path:
    """The folder of llama.cpp's vocab GGUF files, test vectors and chat templates (skips when absent)."""
    return _vocab_dir_or_skip()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama 3 layout: byte-level BPE with the llama-bpe split regex, Llama 3 special tokens and template."""
    return _tiny(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 layout: q/k/v biases; byte-level BPE with the qwen2 split regex, NFC, ChatML."""
    return _tiny(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 layout: q_norm/k_norm, no biases; the same tokenizer family as Qwen2."""
    return _tiny(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral v0.1 layout: SentencePiece-style BPE with byte fallback, <s>/</s>, an [INST] template."""
    return _tiny(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def tiny_gemma2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 2 layout: soft-capping, sliding-window layers (window 16), pre/post norms, tied; SentencePiece-style."""
    return _tiny(tmp_path_factory, "gemma2")


@pytest.fixture(scope="session")
def tiny_gemma3_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Gemma 3 text-only layout: q/k norms, sliding layers with their own rope base, a full layer every 2nd."""
    return _tiny(tmp_path_factory, "gemma3_text")


@pytest.fixture(scope="session")
def tiny_phi3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phi-4-mini layout: fused qkv and gate-up, partial rotary (0.75), LongRoPE, tied; Phi-3.5's turn tokens."""
    return _tiny(tmp_path_factory, "phi3")


@pytest.fixture(scope="session")
def tiny_smollm3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM3 layout: a Llama with no rotary embedding in every 4th layer; Llama 3's BPE with ChatML turns."""
    return _tiny(tmp_path_factory, "smollm3")


@pytest.fixture(scope="session")
def real_vocab_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny qwen2 model (2 layers, tied embeddings) with Qwen2's real 151,936-token tokenizer."""
    return _real_vocab(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def real_vocab_llama_bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny llama model (2 layers, tied embeddings) with Llama 3's real 128,256-token tokenizer."""
    return _real_vocab(tmp_path_factory, "llama-bpe")


@pytest.fixture(scope="session")
def real_vocab_llama_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny llama model (2 layers, tied embeddings) with Llama 2's real 32,000-token SentencePiece tokenizer."""
    return _real_vocab(tmp_path_factory, "llama-spm")


def unsupported_copy(tiny: Path, dest: Path, how: str) -> Path:
    """A copy of a tiny model that slowtune must refuse: ``how`` "falcon" (an architecture outside the list) or
    "multimodal" (a vision-language checkpoint, as Gemma 3 4B and larger are)."""
    import json
    import shutil

    shutil.copytree(tiny, dest)
    config = json.loads((dest / "config.json").read_text())
    if how == "falcon":
        config["model_type"] = "falcon"
    else:
        config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
                  "text_config": {**config, "model_type": "gemma3_text"},
                  "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 1152}}
    (dest / "config.json").write_text(json.dumps(config))
    return dest
