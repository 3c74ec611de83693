"""Build tiny Hugging Face model folders with seeded random weights, in seconds and with no download.

Why: training, export and chat all start from a Hugging Face folder (config.json, model.safetensors and the
tokenizer files). Real models are gigabytes; these are a few megabytes, but they have the same file layout,
tensor names, special tokens and chat templates, so every code path that reads a model can be exercised in
a unit test or a quick benchmark.

Two kinds of tokenizer:
- a tiny byte-level BPE (or SentencePiece-style BPE for `mistral`) trained on `corpus.txt`, with the split
  regex, normaliser, special tokens and chat template of the real family. The pre-tokenizer matters because
  llama.cpp can only express the pre-tokenizers it knows (`tokenizer.ggml.pre`).
- a real tokenizer rebuilt from one of llama.cpp's vocab GGUF files (see `shared_vocab_dir`), so tests can
  catch tokenizer bugs that only show with a real vocabulary.

Only numpy and tokenizers are imported at module level.
"""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

__all__ = [
    "ARCHS",
    "CHATML_CHAT_TEMPLATE",
    "CHATML_SPECIAL_TOKENS",
    "DEEPSEEK_CODER_SPLIT_REGEXES",
    "DEEPSEEK_LLM_SPLIT_REGEXES",
    "FALCON_SPLIT_REGEXES",
    "GEMMA_CHAT_TEMPLATE",
    "GEMMA_SPECIAL_TOKENS",
    "INST_CHAT_TEMPLATE",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_SPECIAL_TOKENS",
    "LLAMA3_SPLIT_REGEX",
    "O200K_SPLIT_REGEX",
    "PHI3_CHAT_TEMPLATE",
    "PHI3_SPECIAL_TOKENS",
    "QWEN2_SPLIT_REGEX",
    "REAL_VOCABS",
    "SPM_SPECIAL_TOKENS",
    "TokenizerSpec",
    "build_real_vocab_model",
    "build_tiny_model",
    "corpus_text",
    "read_gguf_metadata",
    "shared_vocab_dir",
    "tiny_tokenizer_spec",
    "tokenizer_from_vocab_gguf",
    "train_bpe_tokenizer",
    "train_spm_tokenizer",
    "write_safetensors",
]

Arch = Literal["llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "smollm3"]
DType = Literal["float32", "float16", "bfloat16"]
RealVocab = Literal["qwen2", "llama-bpe", "llama-spm"]

ARCHS: tuple[Arch, ...] = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3", "smollm3")

# Published split regexes, from the real models' tokenizer.json. Llama 3 keeps runs of up to three digits
# together; Qwen2 splits every digit. llama.cpp calls these pre-tokenizers "qwen2" and "llama-bpe".
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GPT-4o's o200k split, as tiktoken's o200k_base words it and llama.cpp quotes it as "the original regex from
# tokenizer.json" of GPT-4o (Xenova/gpt-4o); Phi-4-mini's byte-level BPE is of this kind. It cases words: an optional
# run of upper-case letters then lower-case ones, or the reverse, each with an optional contraction. (llama.cpp's
# "gpt-4o" pre-tokenizer words it without case classes: slowtune.models.pretokenizers.)
O200K_SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SPM_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")

# Chat templates written for the tiny models. They follow each family's wire format (what the model sees)
# without the tool-calling and date logic of the real templates, which the tiny models do not need.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
CHATML_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)
# Mistral / Llama 2 style. There is no system role on the wire: a system message is put in front of the
# first user message, which is what those models were trained with.
INST_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '[INST] ' + ns.system + message['content'] + ' [/INST]' }}"
    "{%- set ns.system = '' %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Gemma 2 and 3: no system role on the wire. Gemma 3's own template puts a system message in front of the first
# user message, followed by a blank line; Gemma 2's refuses one (slowtune folds it the same way).
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- set ns = namespace(system='') %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- set ns.system = message['content'] + '\\n\\n' %}"
    "{%- else %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + ns.system + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- set ns.system = '' %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<start_of_turn>model\\n' }}"
    "{%- endif %}"
)
GEMMA_SPECIAL_TOKENS = ("<start_of_turn>", "<end_of_turn>")
# Phi-3.5-mini's wire format: a role tag and a newline, the content, then <|end|> and a newline.
PHI3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|assistant|>\\n' }}"
    "{%- endif %}"
)
PHI3_SPECIAL_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>")

# llama.cpp token types (gguf.TokenType), as stored in tokenizer.ggml.token_type.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Tokens that end a chat turn in the common families, tried in this order.
_END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>")

# Real vocabularies in the shared fixtures folder, and the architecture a tiny model around each one uses.
REAL_VOCABS: dict[RealVocab, Arch] = {"qwen2": "qwen2", "llama-bpe": "llama", "llama-spm": "llama"}

# Fallback chat templates (files in <vocab dir>/templates) for vocab GGUFs that carry none.
_FALLBACK_TEMPLATE_FILES = {
    "llama-bpe": "meta-llama-Llama-3.2-3B-Instruct.jinja",
    "qwen2": "Qwen-Qwen2.5-7B-Instruct.jinja",
}


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer plus the facts the Hugging Face config files need about it.

    `eos_token` is what ends an assistant turn (generation stops there); `extra_eos_tokens` also stop
    generation (e.g. Llama 3's <|end_of_text|> next to <|eot_id|>). The `tokenizer` object is shared when
    it comes from a cache: do not mutate it (no `enable_padding`/`enable_truncation`).
    """

    tokenizer: Tokenizer
    chat_template: str
    bos_token: str | None
    eos_token: str
    pad_token: str | None
    unk_token: str | None = None
    add_bos_token: bool = False
    extra_eos_tokens: tuple[str, ...] = ()

    def token_id(self, token: str) -> int:
        """The id of `token`, which must be in the vocabulary."""
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return token_id

    def eos_token_ids(self) -> list[int]:
        """Every id that should stop generation, main one first."""
        ids = [self.token_id(self.eos_token)]
        ids += [self.token_id(t) for t in self.extra_eos_tokens if self.token_id(t) not in ids]
        return ids


# --------------------------------------------------------------------------------------------------------
# Tiny tokenizers trained on corpus.txt
# --------------------------------------------------------------------------------------------------------


def corpus_text() -> str:
    """The small English corpus shipped with this package (training text for the tiny tokenizers)."""
    return resources.files("slowtune.testing").joinpath("corpus.txt").read_text(encoding="utf-8")


def _byte_level_pre_tokenizer(split_regex: str) -> pre_tokenizers.PreTokenizer:
    # The regex does the word splitting, so ByteLevel must not apply its own GPT-2 regex on top.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _bos_post_processor(bos_token: str, bos_id: int) -> processors.PostProcessor:
    # How real Llama tokenizer.json files add BOS: every loader (tokenizers, transformers, llama.cpp's
    # converter) honours a TemplateProcessing, whatever it thinks of `add_bos_token`.
    return processors.TemplateProcessing(
        single=f"{bos_token}:0 $A:0",
        pair=f"{bos_token}:0 $A:0 {bos_token}:1 $B:1",
        special_tokens=[(bos_token, bos_id)],
    )


def _add_special_tokens(tokenizer: Tokenizer, tokens: Iterable[str]) -> None:
    # normalized=False: a special token must match the raw text, before NFC or the "▁" replacement.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])


def train_bpe_tokenizer(
    vocab_size: int = 1024,
    split_regex: str = QWEN2_SPLIT_REGEX,
    special_tokens: Sequence[str] = CHATML_SPECIAL_TOKENS,
    *,
    nfc: bool = False,
    bos_token: str | None = None,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `corpus_text()`, laid out like Qwen2's or Llama 3's.

    The initial alphabet is all 256 byte symbols, so any text can be encoded with no unknown token. Special
    tokens get the last ids, as in the real families. `vocab_size` counts them; the corpus is small, so the
    result can fall a little short of it. `bos_token`, when given, is added in front of every encoding.
    Training is deterministic: the same arguments give the same tokenizer.
    """
    tokenizer = Tokenizer(models.BPE())
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(split_regex)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size - len(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([corpus_text()], trainer=trainer)
    _add_special_tokens(tokenizer, special_tokens)
    if bos_token is not None:
        tokenizer.post_processor = _bos_post_processor(bos_token, tokenizer.token_to_id(bos_token))
    return tokenizer


def _spm_normalizer() -> normalizers.Normalizer:
    # SentencePiece (Llama 2, Mistral v0.1): a "▁" in front of the text and in place of every space.
    return normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])


def _spm_decoder() -> decoders.Decoder:
    return decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )


def _spm_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], unk_token: str) -> Tokenizer:
    """A SentencePiece-BPE tokenizer in the layout transformers uses for Llama 2: no pre-tokenizer at all."""
    tokenizer = Tokenizer(models.BPE(vocab, merges, unk_token=unk_token, byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = _spm_normalizer()
    tokenizer.decoder = _spm_decoder()
    return tokenizer


def _merges_of(tokenizer: Tokenizer) -> list[tuple[str, str]]:
    # The Python API does not expose a BPE model's merges; its JSON does ("a b" strings in older versions).
    raw = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1]) for m in raw]


def train_spm_tokenizer(vocab_size: int = 1024) -> Tokenizer:
    """Train a SentencePiece-style BPE tokenizer (Llama 2 / Mistral v0.1 layout) on `corpus_text()`.

    Ids 0-2 are <unk>, <s>, </s>; ids 3-258 are the byte tokens <0x00>..<0xFF> that byte fallback uses
    for any character the vocabulary lacks; the learned pieces follow. BOS is added in front of every
    encoding, as Llama 2 does.
    """
    # Train with words split before each "▁": no learned piece then contains an inner "▁", so the final
    # tokenizer (which has no pre-tokenizer, like the real ones) gives the same pieces.
    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.normalizer = _spm_normalizer()
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    fixed = [*SPM_SPECIAL_TOKENS, *(f"<0x{b:02X}>" for b in range(256))]
    trainer = BpeTrainer(vocab_size=vocab_size - len(fixed), show_progress=False)
    trainer_tokenizer.train_from_iterator([corpus_text()], trainer=trainer)

    learned = sorted(trainer_tokenizer.get_vocab().items(), key=lambda item: item[1])
    vocab = {token: i for i, token in enumerate(fixed)}
    for token, _ in learned:
        vocab.setdefault(token, len(vocab))
    tokenizer = _spm_tokenizer(vocab, _merges_of(trainer_tokenizer), unk_token="<unk>")
    _add_special_tokens(tokenizer, SPM_SPECIAL_TOKENS)
    tokenizer.post_processor = _bos_post_processor("<s>", vocab["<s>"])
    return tokenizer


@functools.cache
def tiny_tokenizer_spec(arch: Arch, vocab_size: int = 1024) -> TokenizerSpec:
    """The tiny tokenizer of an architecture's family, trained once per process (cached: do not mutate)."""
    if arch == "llama":
        tokenizer = train_bpe_tokenizer(
            vocab_size, LLAMA3_SPLIT_REGEX, LLAMA3_SPECIAL_TOKENS, bos_token="<|begin_of_text|>"
        )
        return TokenizerSpec(
            tokenizer,
            LLAMA3_CHAT_TEMPLATE,
            bos_token="<|begin_of_text|>",
            eos_token="<|eot_id|>",
            pad_token="<|end_of_text|>",
            add_bos_token=True,
            extra_eos_tokens=("<|end_of_text|>",),
        )
    if arch in ("qwen2", "qwen3"):
        tokenizer = train_bpe_tokenizer(vocab_size, QWEN2_SPLIT_REGEX, CHATML_SPECIAL_TOKENS, nfc=True)
        return TokenizerSpec(
            tokenizer,
            CHATML_CHAT_TEMPLATE,
            bos_token=None,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            extra_eos_tokens=("<|endoftext|>",),
        )
    if arch == "mistral":
        return TokenizerSpec(
            train_spm_tokenizer(vocab_size),
            INST_CHAT_TEMPLATE,
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<unk>",
            unk_token="<unk>",
            add_bos_token=True,
        )
    if arch in ("gemma2", "gemma3_text"):
        return _with_turn_tokens(gemma_style_spm_spec(vocab_size - len(GEMMA_SPECIAL_TOKENS)), GEMMA_SPECIAL_TOKENS, GEMMA_CHAT_TEMPLATE,
                                 eos_token="<end_of_turn>", extra_eos_tokens=("</s>",))
    if arch == "phi3":
        return _with_turn_tokens(_spm_spec(vocab_size - len(PHI3_SPECIAL_TOKENS)), PHI3_SPECIAL_TOKENS, PHI3_CHAT_TEMPLATE,
                                 eos_token="<|end|>", extra_eos_tokens=("<|endoftext|>",), add_bos_token=False,
                                 pad_token="<|endoftext|>")
    if arch == "smollm3":
        # SmolLM3: Llama 3's byte-level BPE with ChatML turns.
        tokenizer = train_bpe_tokenizer(vocab_size, LLAMA3_SPLIT_REGEX, CHATML_SPECIAL_TOKENS)
        return TokenizerSpec(tokenizer, CHATML_CHAT_TEMPLATE, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", extra_eos_tokens=("<|endoftext|>",))
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")


def _spm_spec(vocab_size: int) -> TokenizerSpec:
    """Llama 2's SentencePiece layout without the BOS that Llama adds (Phi-3.5 adds none: its template starts
    with the first turn)."""
    data = json.loads(train_spm_tokenizer(vocab_size).to_str())
    data["post_processor"] = None
    return TokenizerSpec(Tokenizer.from_str(json.dumps(data)), INST_CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>",
                         pad_token="<unk>", unk_token="<unk>", add_bos_token=False)


def _with_turn_tokens(base: TokenizerSpec, tokens: Sequence[str], template: str, *, eos_token: str,
                      extra_eos_tokens: tuple[str, ...] = (), add_bos_token: bool | None = None,
                      pad_token: str | None = None) -> TokenizerSpec:
    """A copy of ``base`` with the family's turn tokens added as special tokens and its chat template."""
    tokenizer = Tokenizer.from_str(base.tokenizer.to_str())
    _add_special_tokens(tokenizer, tokens)
    return TokenizerSpec(tokenizer, template, bos_token=base.bos_token, eos_token=eos_token,
                         pad_token=pad_token or base.pad_token, unk_token=base.unk_token,
                         add_bos_token=base.add_bos_token if add_bos_token is None else add_bos_token,
                         extra_eos_tokens=extra_eos_tokens)


# --------------------------------------------------------------------------------------------------------
# Tokenizer families: each family's own pre-tokenizer, as its tokenizer.json words it
# --------------------------------------------------------------------------------------------------------

# The pre-tokenizer (and normaliser) each byte-level BPE family publishes in its tokenizer.json. They word the same
# behaviour in different ways (GPT-2's ByteLevel applies its regex itself; SmolLM and StarCoder split digits with a
# Digits step; Falcon uses Punctuation and Digits steps), which is why the export identifies them by behaviour.
def _gpt2_style() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_style()])


# The split regexes of Falcon and DeepSeek, as llama.cpp's llama-vocab.cpp lists them for its "falcon",
# "deepseek-llm" and "deepseek-coder" pre-tokenizers (slowtune.models.pretokenizers holds the same lists, which
# tests/test_tokenizer_families.py checks). DeepSeek's tokenizer.json ends with a Digits step instead of llama.cpp's
# last regex, so theirs stop before it. Written with escapes: these character ranges name code points (the Kelvin
# and Ohm signs, Greek with tonos) that an editor's Unicode normalisation would silently change.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-\u02af"
    "\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1\u03a3-\u03f5"
    "\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba"
    "\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45"
    "\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-"
    "\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f"
    "\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d"
    "\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
    "\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb"
    "\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)
_DEEPSEEK_LLM_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
FALCON_SPLIT_REGEXES = (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]")
DEEPSEEK_LLM_SPLIT_REGEXES = ("[\r\n]", _DEEPSEEK_LLM_LETTERS, _DEEPSEEK_LLM_PUNCT, r"\s+$", _CJK)
DEEPSEEK_CODER_SPLIT_REGEXES = ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK)


def _falcon() -> pre_tokenizers.PreTokenizer:
    # Falcon's pre-tokenizer in the Split form llama.cpp documents for it. Its tokenizer.json could not be read here
    # (no model hub); a Punctuation + ByteLevel + Digits + Split wording behaves differently (it cuts " 1" and the
    # byte-level "½"), and the export would refuse that one by name rather than write a GGUF that tokenizes wrongly.
    return _splits_then_bytes(FALCON_SPLIT_REGEXES, digits=None)


def _splits_then_bytes(regexes: Sequence[str], digits: bool | None) -> pre_tokenizers.PreTokenizer:
    steps: list[pre_tokenizers.PreTokenizer] = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    if digits is not None:
        steps.append(pre_tokenizers.Digits(individual_digits=digits))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    return pre_tokenizers.Sequence(steps)


def _deepseek_llm() -> pre_tokenizers.PreTokenizer:
    return _splits_then_bytes(DEEPSEEK_LLM_SPLIT_REGEXES, digits=False)  # then DeepSeek's Digits step


def _deepseek_coder() -> pre_tokenizers.PreTokenizer:
    return _splits_then_bytes(DEEPSEEK_CODER_SPLIT_REGEXES, digits=True)  # its digits: a Digits step


BYTE_LEVEL_FAMILIES: dict[str, tuple[Callable[[], pre_tokenizers.PreTokenizer], bool]] = {  # llama.cpp's name -> (the family's pre-tokenizer, NFC)
    "llama-bpe": (lambda: _byte_level_pre_tokenizer(LLAMA3_SPLIT_REGEX), False),
    "qwen2": (lambda: _byte_level_pre_tokenizer(QWEN2_SPLIT_REGEX), True),
    "smollm": (_digits_then_gpt2, False),
    "starcoder": (_digits_then_gpt2, False),
    "gpt-2": (_gpt2_style, False),
    "phi-2": (_gpt2_style, False),
    "olmo": (_gpt2_style, True),
    "falcon": (_falcon, False),
    "deepseek-llm": (_deepseek_llm, False),
    "deepseek-coder": (_deepseek_coder, False),
    "gpt-4o": (lambda: _byte_level_pre_tokenizer(O200K_SPLIT_REGEX), False),  # Phi-4-mini, GPT-4o (o200k)
}


@functools.cache
def family_tokenizer_spec(family: str, vocab_size: int = 1024) -> TokenizerSpec:
    """A tiny byte-level BPE tokenizer with `family`'s own pre-tokenizer (a key of BYTE_LEVEL_FAMILIES), trained on
    `corpus_text()` with ChatML special tokens (cached: do not mutate)."""
    make, nfc = BYTE_LEVEL_FAMILIES[family]
    tokenizer = Tokenizer(models.BPE(ignore_merges=family == "llama-bpe"))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = make()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size - len(CHATML_SPECIAL_TOKENS),
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([corpus_text()], trainer=trainer)
    _add_special_tokens(tokenizer, CHATML_SPECIAL_TOKENS)
    return TokenizerSpec(tokenizer, CHATML_CHAT_TEMPLATE, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", extra_eos_tokens=("<|endoftext|>",))


@functools.cache
def gemma_style_spm_spec(vocab_size: int = 1024) -> TokenizerSpec:
    """A SentencePiece-style BPE in Gemma's layout: spaces become "▁" but none is put in front of the text
    (no dummy prefix), byte fallback, <bos> added in front (cached: do not mutate)."""
    base = train_spm_tokenizer(vocab_size)
    data = json.loads(base.to_str())
    data["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}]}
    tokenizer = Tokenizer.from_str(json.dumps(data))
    return TokenizerSpec(tokenizer, INST_CHAT_TEMPLATE, bos_token="<s>", eos_token="</s>", pad_token="<unk>",
                         unk_token="<unk>", add_bos_token=True)


# --------------------------------------------------------------------------------------------------------
# Real tokenizers rebuilt from llama.cpp vocab GGUF files
# --------------------------------------------------------------------------------------------------------


def shared_vocab_dir() -> Path | None:
    """The folder of llama.cpp's vocab GGUF files and test vectors, or None when it is not there.

    `SLOWTUNE_VOCAB_FIXTURES` overrides the default, `<project root>/../shared/fixtures/llama.cpp-vocab`
    (where CI puts it). A clone outside that setup has no such folder, and tests that need it skip.
    """
    override = os.environ.get("SLOWTUNE_VOCAB_FIXTURES")
    if override:
        folder = Path(override)
    else:
        project_root = Path(__file__).resolve().parents[2]
        folder = project_root.parent / "shared" / "fixtures" / "llama.cpp-vocab"
    return folder if folder.is_dir() else None


# GGUF value types (the `gguf` package's GGUFValueType) and their struct formats, little-endian.
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


class _GGUFCursor:
    """Reads GGUF key/value data front to back from an in-memory buffer."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("Q")
        self.pos += length
        return self.data[self.pos - length : self.pos].decode("utf-8")

    def value(self, value_type: int) -> Any:
        if value_type == _GGUF_STRING:
            return self.string()
        if value_type != _GGUF_ARRAY:
            return self.unpack(_GGUF_SCALARS[value_type])
        item_type, count = self.unpack("I"), self.unpack("Q")
        if item_type in _GGUF_SCALARS:
            dtype = np.dtype("<" + _GGUF_SCALARS[item_type])
            array = np.frombuffer(self.data, dtype, count, self.pos)
            self.pos += dtype.itemsize * count
            return array.tolist()
        return [self.value(item_type) for _ in range(count)]


def read_gguf_metadata(gguf_path: Path) -> dict[str, Any]:
    """Every key/value field of a GGUF file (version 2 or 3) as plain Python values, lists for arrays.

    A small reader of our own because `gguf.GGUFReader` builds numpy views for every array element and
    takes about 8 seconds on Llama 3's vocabulary (128k tokens, 280k merges); this takes a fraction of
    a second. Tensor infos, if any, are not read.
    """
    data = Path(gguf_path).read_bytes()
    if data[:4] != b"GGUF":
        raise ValueError(f"{gguf_path} is not a GGUF file")
    cursor = _GGUFCursor(data)
    cursor.pos = 4
    version = cursor.unpack("I")
    if version not in (2, 3):
        raise ValueError(f"{gguf_path}: unsupported GGUF version {version}")
    cursor.unpack("Q")  # tensor count
    kv_count = cursor.unpack("Q")
    metadata = {}
    for _ in range(kv_count):
        key = cursor.string()
        metadata[key] = cursor.value(cursor.unpack("I"))
    return metadata


def _byte_level_bpe_from_gguf(tokens: list[str], merges: list[str], pre: str) -> Tokenizer:
    if pre == "qwen2":
        split_regex, nfc, ignore_merges = QWEN2_SPLIT_REGEX, True, False
    elif pre == "llama-bpe":
        # Llama 3 looks a whole pre-token up in the vocabulary before merging; some tokens there cannot
        # be reached by the merges.
        split_regex, nfc, ignore_merges = LLAMA3_SPLIT_REGEX, False, True
    else:
        raise ValueError(f"no recipe for llama.cpp pre-tokenizer {pre!r}")
    vocab = {token: i for i, token in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tokenizer = Tokenizer(models.BPE(vocab, pairs, ignore_merges=ignore_merges))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _byte_level_pre_tokenizer(split_regex)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_from_gguf(tokens: list[str], scores: list[float], types: list[int]) -> Tokenizer:
    """SentencePiece keeps scores, not merges; BPE merges in the same priority order reproduce it.

    Every normal token longer than one character, best score first, contributes each split of itself
    into two vocabulary tokens, those ordered by the pair's ids.
    """
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked = sorted(
        (i for i, t in enumerate(types) if t == _NORMAL and len(tokens[i]) > 1), key=lambda i: -scores[i]
    )
    merges: list[tuple[str, str]] = []
    for i in ranked:
        piece = tokens[i]
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        splits = [s for s in splits if s[0] in vocab and s[1] in vocab]
        merges += sorted(splits, key=lambda s: (vocab[s[0]], vocab[s[1]]))
    unk_id = types.index(_UNKNOWN) if _UNKNOWN in types else 0
    return _spm_tokenizer(vocab, merges, unk_token=tokens[unk_id])


def _fallback_chat_template(pre: str, vocab_dir: Path) -> str:
    filename = _FALLBACK_TEMPLATE_FILES.get(pre)
    if filename and (vocab_dir / "templates" / filename).is_file():
        return (vocab_dir / "templates" / filename).read_text(encoding="utf-8")
    if pre == "qwen2":
        return CHATML_CHAT_TEMPLATE
    if pre == "llama-bpe":
        return LLAMA3_CHAT_TEMPLATE
    return INST_CHAT_TEMPLATE


def tokenizer_from_vocab_gguf(gguf_path: Path) -> TokenizerSpec:
    """Rebuild the exact Hugging Face tokenizer held in a llama.cpp vocab GGUF file.

    Recipes (checked against llama.cpp's test vectors, see the fixtures README): byte-level BPE for
    `tokenizer.ggml.model == "gpt2"` with the split regex named by `tokenizer.ggml.pre`; SentencePiece-BPE
    with merges derived from the scores for `"llama"`. CONTROL tokens are special. BOS, EOS, padding,
    `add_bos_token` and the chat template come from the GGUF; a GGUF without a chat template gets a fitting
    one from `<vocab dir>/templates/` or one of this module's.
    """
    meta = read_gguf_metadata(gguf_path)
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    kind = meta["tokenizer.ggml.model"]
    pre = meta.get("tokenizer.ggml.pre", "default")
    if kind == "gpt2":
        tokenizer = _byte_level_bpe_from_gguf(tokens, meta["tokenizer.ggml.merges"], pre)
        # llama.cpp's own default when the GGUF does not say: Llama 3 adds BOS, Qwen2 does not.
        add_bos_default = pre == "llama-bpe"
    elif kind == "llama":
        tokenizer = _sentencepiece_from_gguf(tokens, meta["tokenizer.ggml.scores"], types)
        add_bos_default = True
    else:
        raise ValueError(f"{gguf_path.name}: no recipe for tokenizer model {kind!r}")
    _add_special_tokens(tokenizer, [tokens[i] for i, t in enumerate(types) if t == _CONTROL])

    def token_at(key: str) -> str | None:
        token_id = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if token_id is None else tokens[token_id]

    bos_token, eos_token = token_at("bos"), token_at("eos")
    if eos_token is None:
        raise ValueError(f"{gguf_path.name} has no tokenizer.ggml.eos_token_id")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default)) and bos_token is not None
    if add_bos:
        tokenizer.post_processor = _bos_post_processor(bos_token, tokenizer.token_to_id(bos_token))
    # Base-model vocabularies name <|endoftext|> as EOS, but chat turns end with another token. Like
    # llama.cpp, look the usual end-of-turn tokens up when the GGUF names none, so generation stops there.
    control = {tokens[i] for i, t in enumerate(types) if t == _CONTROL}
    eot_token = token_at("eot") or next((t for t in _END_OF_TURN_TOKENS if t in control), None)
    return TokenizerSpec(
        tokenizer,
        meta.get("tokenizer.chat_template") or _fallback_chat_template(pre, gguf_path.parent),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=token_at("padding") or eos_token,
        unk_token=token_at("unknown") if kind == "llama" else None,
        add_bos_token=add_bos,
        extra_eos_tokens=(eot_token,) if eot_token and eot_token != eos_token else (),
    )


# --------------------------------------------------------------------------------------------------------
# Model folders
# --------------------------------------------------------------------------------------------------------

_ARCH_CONFIG: dict[Arch, dict[str, Any]] = {
    "llama": {
        "architectures": ["LlamaForCausalLM"],
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "mlp_bias": False,
    },
    "qwen2": {
        "architectures": ["Qwen2ForCausalLM"],
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "use_sliding_window": False,
    },
    "qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "use_sliding_window": False,
    },
    "mistral": {
        "architectures": ["MistralForCausalLM"],
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-5,
        "sliding_window": None,
    },
    # Gemma 2: logit soft-capping, alternate sliding-window layers (a short window here, so that short test
    # sequences cross it), the query scale 1/sqrt(query_pre_attn_scalar) (= head_dim, set in _model_config).
    "gemma2": {
        "architectures": ["Gemma2ForCausalLM"],
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "sliding_window": 16,
        "attention_bias": False,
    },
    # Gemma 3 (text-only: 270M, 1B): q/k norms, sliding-window layers with their own rope base, a full-attention
    # layer every `sliding_window_pattern` layers (6 in the real models, 2 here so that 4 layers have both kinds).
    "gemma3_text": {
        "architectures": ["Gemma3ForCausalLM"],
        "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": 16,
        "sliding_window_pattern": 2,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
    },
    # Phi-4-mini's layout: fused qkv and gate-up projections, partial rotary embeddings, LongRoPE factors.
    "phi3": {
        "architectures": ["Phi3ForCausalLM"],
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "partial_rotary_factor": 0.75,
        "original_max_position_embeddings": 4096,
        "sliding_window": 262144,
        "attention_bias": False,
    },
    # SmolLM3: a Llama with no rotary embedding in every 4th layer.
    "smollm3": {
        "architectures": ["SmolLM3ForCausalLM"],
        "rope_theta": 5000000.0,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "mlp_bias": False,
        "no_rope_layer_interval": 4,
    },
}

# Families whose published small models tie the output matrix to the embedding (Phi-4-mini, SmolLM3).
_TIED_BY_DEFAULT = ("phi3", "smollm3")

# Families whose RMSNorm multiplies by (1 + weight): their stored norm weights are offsets around 0.
_OFFSET_NORM_ARCHS = ("gemma2", "gemma3_text")


def _model_config(
    arch: Arch,
    spec: TokenizerSpec,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    intermediate_size: int,
    head_dim: int,
    tie_embeddings: bool,
    dtype: DType,
    max_position_embeddings: int,
) -> dict[str, Any]:
    eos_ids = spec.eos_token_ids()
    config: dict[str, Any] = {
        "model_type": arch,
        **_ARCH_CONFIG[arch],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "head_dim": head_dim,
        "intermediate_size": intermediate_size,
        "hidden_act": "silu",
        "vocab_size": spec.tokenizer.get_vocab_size(with_added_tokens=True),
        "max_position_embeddings": max_position_embeddings,
        "rope_scaling": None,
        "tie_word_embeddings": tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": dtype,
        "bos_token_id": spec.token_id(spec.bos_token or spec.pad_token or spec.eos_token),
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
    }
    if spec.pad_token is not None:
        config["pad_token_id"] = spec.token_id(spec.pad_token)
    if arch in _OFFSET_NORM_ARCHS:
        config["query_pre_attn_scalar"] = head_dim
    if arch == "phi3":
        # Phi-3 derives the head size from hidden / heads; LongRoPE has one factor per rotated pair.
        config.pop("head_dim")
        pairs = int(head_dim * config["partial_rotary_factor"]) // 2
        config["max_position_embeddings"] = max(max_position_embeddings, 131072)
        config["rope_scaling"] = {
            "type": "longrope",
            "short_factor": [round(1.0 + 0.05 * i, 4) for i in range(pairs)],
            "long_factor": [round(1.0 + 0.5 * i, 4) for i in range(pairs)],
        }
    if arch == "smollm3":
        config["no_rope_layers"] = [int((i + 1) % 4 != 0) for i in range(num_layers)]
    return config


def _weight_layout(config: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...], str]]:
    """(Hugging Face tensor name, shape, kind) in file order; kind is "matrix", "bias" or "norm"."""
    hidden = config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_dim = config["num_attention_heads"] * head_dim
    kv_dim = config["num_key_value_heads"] * head_dim
    inter, arch = config["intermediate_size"], config["model_type"]
    layout = [("model.embed_tokens.weight", (config["vocab_size"], hidden), "matrix")]
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        if arch == "phi3":
            layout += [
                (p + "input_layernorm.weight", (hidden,), "norm"),
                (p + "self_attn.qkv_proj.weight", (q_dim + 2 * kv_dim, hidden), "matrix"),
                (p + "self_attn.o_proj.weight", (hidden, q_dim), "matrix"),
                (p + "post_attention_layernorm.weight", (hidden,), "norm"),
                (p + "mlp.gate_up_proj.weight", (2 * inter, hidden), "matrix"),
                (p + "mlp.down_proj.weight", (hidden, inter), "matrix"),
            ]
            continue
        layout += [
            (p + "input_layernorm.weight", (hidden,), "norm"),
            (p + "self_attn.q_proj.weight", (q_dim, hidden), "matrix"),
            (p + "self_attn.k_proj.weight", (kv_dim, hidden), "matrix"),
            (p + "self_attn.v_proj.weight", (kv_dim, hidden), "matrix"),
        ]
        if arch == "qwen2":
            layout += [
                (p + "self_attn.q_proj.bias", (q_dim,), "bias"),
                (p + "self_attn.k_proj.bias", (kv_dim,), "bias"),
                (p + "self_attn.v_proj.bias", (kv_dim,), "bias"),
            ]
        if arch in ("qwen3", "gemma3_text"):
            layout += [
                (p + "self_attn.q_norm.weight", (head_dim,), "norm"),
                (p + "self_attn.k_norm.weight", (head_dim,), "norm"),
            ]
        layout += [
            (p + "self_attn.o_proj.weight", (hidden, q_dim), "matrix"),
            (p + "post_attention_layernorm.weight", (hidden,), "norm"),
        ]
        if arch in _OFFSET_NORM_ARCHS:
            layout += [
                (p + "pre_feedforward_layernorm.weight", (hidden,), "norm"),
                (p + "post_feedforward_layernorm.weight", (hidden,), "norm"),
            ]
        layout += [
            (p + "mlp.gate_proj.weight", (inter, hidden), "matrix"),
            (p + "mlp.up_proj.weight", (inter, hidden), "matrix"),
            (p + "mlp.down_proj.weight", (hidden, inter), "matrix"),
        ]
    layout.append(("model.norm.weight", (hidden,), "norm"))
    if not config["tie_word_embeddings"]:
        layout.append(("lm_head.weight", (config["vocab_size"], hidden), "matrix"))
    return layout


def _random_weights(config: Mapping[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Seeded float32 weights: N(0, 1/fan_in) for matrices (embeddings included), N(0, 0.02) for biases,
    norms near 1.

    The 1/sqrt(fan_in) scale keeps activations and logits of order one, as in a trained model; with the
    usual 0.02 init a tiny model's logits are almost uniform and LoRA can barely move them, so no test could
    check that training teaches anything.

    Norm weights are 1 + N(0, 0.05) rather than exactly 1, so that an exporter that drops or swaps a
    norm changes the logits and a comparison test notices. One generator, one fixed order: the same seed
    gives the same bytes.
    """
    rng = np.random.default_rng(seed)
    offset_norms = config["model_type"] in _OFFSET_NORM_ARCHS
    weights = {}
    for name, shape, kind in _weight_layout(config):
        values = rng.standard_normal(shape, dtype=np.float32)
        if kind == "matrix":
            values *= 1.0 / np.sqrt(shape[1])
        else:
            values *= 0.05 if kind == "norm" else 0.02
        if kind == "norm" and not offset_norms:
            values += 1.0  # (Gemma stores norm weights as offsets: its RMSNorm multiplies by 1 + weight)
        weights[name] = values
    return weights


_DTYPES: tuple[DType, ...] = ("float32", "float16", "bfloat16")


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray], dtype: DType) -> None:
    """Write float32 `tensors` as a safetensors file in `dtype`.

    numpy has no bfloat16, so bf16 files go through MLX (imported only then); the others through the
    safetensors library. Both write the same bytes for the same inputs.
    """
    if dtype == "bfloat16":
        import mlx.core as mx

        mx.save_safetensors(
            str(path), {k: mx.array(v).astype(mx.bfloat16) for k, v in tensors.items()}, metadata={"format": "pt"}
        )
        return
    from safetensors.numpy import save_file

    np_dtype = np.float16 if dtype == "float16" else np.float32
    save_file({k: np.ascontiguousarray(v.astype(np_dtype)) for k, v in tensors.items()}, str(path),
              metadata={"format": "pt"})


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_tokenizer_files(dest: Path, spec: TokenizerSpec, model_max_length: int) -> None:
    spec.tokenizer.save(str(dest / "tokenizer.json"))
    special = {
        "bos_token": spec.bos_token,
        "eos_token": spec.eos_token,
        "pad_token": spec.pad_token,
        "unk_token": spec.unk_token,
    }
    added_tokens_decoder = {
        str(token_id): {
            "content": token.content,
            "lstrip": token.lstrip,
            "normalized": token.normalized,
            "rstrip": token.rstrip,
            "single_word": token.single_word,
            "special": token.special,
        }
        for token_id, token in sorted(spec.tokenizer.get_added_tokens_decoder().items())
    }
    _write_json(
        dest / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "add_bos_token": spec.add_bos_token,
            "add_eos_token": False,
            # The default (True) would turn " ," into "," on decode and break round trips.
            "clean_up_tokenization_spaces": False,
            "model_max_length": model_max_length,
            "chat_template": spec.chat_template,
            "added_tokens_decoder": added_tokens_decoder,
        },
    )
    _write_json(dest / "special_tokens_map.json", {k: v for k, v in special.items() if v is not None})


def build_tiny_model(
    dest: Path,
    arch: Arch = "llama",
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 512,
    head_dim: int | None = None,
    tie_embeddings: bool | None = None,
    dtype: DType = "float32",
    seed: int = 0,
    tokenizer: TokenizerSpec | Path | None = None,
    vocab_size: int = 1024,
    max_position_embeddings: int = 4096,
    model_vocab_size: int | None = None,
) -> Path:
    """Write a complete Hugging Face model folder for `arch` with seeded random weights into `dest`.

    `tokenizer`: None for the family's tiny tokenizer trained on the corpus (`vocab_size` tokens), the
    path of a llama.cpp vocab GGUF file for a real one (see `tokenizer_from_vocab_gguf`), or a ready
    `TokenizerSpec`. The default hidden size is a multiple of 256 so that llama.cpp's K-quants really
    quantize every row. `model_vocab_size` gives the embedding more rows than the tokenizer has tokens
    (as real models pad their vocabularies), for benchmark models of a realistic size. Returns `dest`.
    """
    if arch not in _ARCH_CONFIG:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHS}")
    if dtype not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {_DTYPES}")
    if num_heads % num_kv_heads:
        raise ValueError("num_heads must be a multiple of num_kv_heads")
    if arch in _OFFSET_NORM_ARCHS:
        tie_embeddings = True  # Gemma has no separate output matrix
    elif tie_embeddings is None:
        tie_embeddings = arch in _TIED_BY_DEFAULT
    if arch == "phi3" and head_dim not in (None, hidden_size // num_heads):
        raise ValueError("phi3's head size is hidden_size / num_heads")
    if tokenizer is None:
        spec = tiny_tokenizer_spec(arch, vocab_size)
    elif isinstance(tokenizer, TokenizerSpec):
        spec = tokenizer
    else:
        spec = tokenizer_from_vocab_gguf(Path(tokenizer))

    config = _model_config(
        arch,
        spec,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        head_dim=head_dim or hidden_size // num_heads,
        tie_embeddings=tie_embeddings,
        dtype=dtype,
        max_position_embeddings=max_position_embeddings,
    )
    if model_vocab_size is not None:
        config["vocab_size"] = max(model_vocab_size, config["vocab_size"])
    dest.mkdir(parents=True, exist_ok=True)
    _write_json(dest / "config.json", config)
    generation_config = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": spec.eos_token_ids(),
        "pad_token_id": config.get("pad_token_id"),
    }
    _write_json(
        dest / "generation_config.json", {k: v for k, v in generation_config.items() if v is not None}
    )
    write_safetensors(dest / "model.safetensors", _random_weights(config, seed), dtype)
    _write_tokenizer_files(dest, spec, max_position_embeddings)
    return dest


def build_real_vocab_model(
    dest: Path, vocab: RealVocab, vocab_dir: Path | None = None, **kwargs: Any
) -> Path:
    """A tiny model (2 layers, hidden 256, tied embeddings) around a real tokenizer from a vocab GGUF.

    The embedding matrix is the bulk of it (Qwen2: 151,936 x 256), hence the tied output layer.
    `kwargs` go to `build_tiny_model`. Raises FileNotFoundError when the vocab folder is missing.
    """
    folder = vocab_dir or shared_vocab_dir()
    gguf_path = folder / f"ggml-vocab-{vocab}.gguf" if folder else None
    if gguf_path is None or not gguf_path.is_file():
        raise FileNotFoundError(f"llama.cpp vocab file ggml-vocab-{vocab}.gguf not found (folder: {folder})")
    options: dict[str, Any] = {"num_layers": 2, "tie_embeddings": True, **kwargs}
    return build_tiny_model(dest, REAL_VOCABS[vocab], tokenizer=gguf_path, **options)
