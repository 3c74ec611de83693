"""llama.cpp's byte-level BPE pre-tokenizers, and which one a Hugging Face tokenizer behaves like.

A byte-level BPE tokenizer first splits text into pieces (the pre-tokenizer), then merges bytes inside each piece.
llama.cpp does not read the pre-tokenizer from a model file: it implements a fixed set of them and a GGUF names one
(``tokenizer.ggml.pre``). So the export must name the one that splits text exactly as the model's own
pre-tokenizer does, and the GGUF import must rebuild the pre-tokenizer that name stands for.

Each type below is the list of split regexes llama.cpp applies in turn (facts from llama.cpp's ``llama-vocab.cpp``),
which is the same as a Hugging Face ``Sequence`` of ``Split(regex, "isolated")`` steps followed by a byte-level
mapping. A model's tokenizer is matched by behaviour: its pre-tokenizer splits a fixed probe text, and the type whose
split is the same is the one (``identify``). Regex text and vocabulary hashes are not compared, so a family whose
tokenizer.json words the same behaviour differently is still recognised.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# Written with escapes: these character ranges name code points (the Kelvin and Ohm signs, Greek with tonos)
# that an editor's Unicode normalisation would silently change.
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
# GPT-4o's o200k split (tiktoken's o200k_base; Phi-4-mini's byte-level BPE is of this kind) cases words with \p{Lu} and
# \p{Ll} classes: an optional run of upper-case letters then lower-case ones, or the reverse, each with an optional
# contraction (its published regex: slowtune.testing.tiny_models.O200K_SPLIT_REGEX, which tests build tokenizers with).
# What llama.cpp applies for "gpt-4o": its regex engine has no \p{Lu}/\p{Ll} classes, so "upper" becomes a
# letter other than a-z and "lower" a letter other than A-Z. That is the same split for ASCII words and for words whose
# letters are all of one case, but a non-ASCII letter counts as both cases (o200k splits "aÉb" as "a", "Éb"; llama.cpp
# keeps one piece) and combining marks are not letters (o200k keeps a decomposed "é" in its word; llama.cpp splits the
# accent off). There a GGUF named "gpt-4o" tokenizes differently from Hugging Face, in llama.cpp, Ollama and LM Studio
# alike, whoever wrote the GGUF. identify() still names it: the probe text has no such words.
_GPT4O_CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
_GPT4O = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+" + _GPT4O_CONTRACTIONS
          + r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*" + _GPT4O_CONTRACTIONS
          + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_DEEPSEEK_LLM_PUNCT = "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+"
_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"


@dataclass(frozen=True)
class PreTokenizer:
    """One of llama.cpp's pre-tokenizers: its ``tokenizer.ggml.pre`` name and its split regexes, in order."""

    name: str
    regexes: tuple[str, ...]
    families: str
    nfc: bool = False           # the family's tokenizer.json normalises to NFC (llama.cpp does for these)
    ignore_merges: bool = False  # llama.cpp looks whole pieces up in the vocabulary before merging

    def hf_pre_tokenizer(self) -> dict[str, Any]:
        """The Hugging Face ``pre_tokenizer`` (tokenizer.json) that splits text the way llama.cpp does."""
        steps: list[dict[str, Any]] = [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
            for regex in self.regexes
        ]
        steps.append({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False})
        return {"type": "Sequence", "pretokenizers": steps}


# In the order identify() prefers when two types split the probe alike (llama.cpp treats those the same).
PRE_TOKENIZERS: tuple[PreTokenizer, ...] = (
    PreTokenizer("llama-bpe", (_LLAMA3,), "Llama 3.x", ignore_merges=True),
    PreTokenizer("qwen2", (_QWEN2,), "Qwen2, Qwen2.5, Qwen3", nfc=True),
    PreTokenizer("smollm", (r"\p{N}", _GPT2), "SmolLM, SmolLM2"),
    PreTokenizer("starcoder", (r"\p{N}", _GPT2), "StarCoder, StarCoder2"),
    PreTokenizer("gpt-2", (_GPT2,), "GPT-2"),
    PreTokenizer("phi-2", (_GPT2,), "Phi-2, CodeGen"),
    PreTokenizer("olmo", (_GPT2,), "OLMo (GPT-NeoX tokenizer)"),
    PreTokenizer("falcon", (r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"), "Falcon"),
    PreTokenizer("deepseek-llm", ("[\r\n]", _DEEPSEEK_LLM_LETTERS, _DEEPSEEK_LLM_PUNCT, r"\s+$", _CJK,
                                  r"\p{N}+"), "DeepSeek LLM"),
    PreTokenizer("deepseek-coder", ("[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"), "DeepSeek Coder"),
    PreTokenizer("gpt-4o", (_GPT4O,), "GPT-4o (o200k), Phi-4-mini"),
)
BY_NAME = {p.name: p for p in PRE_TOKENIZERS}
# Other names llama.cpp gives the same behaviour (what a GGUF made elsewhere may say).
ALIASES = {"gpt2": "gpt-2", "llama3": "llama-bpe", "llama-v3": "llama-bpe", "llama4": "gpt-4o"}

# Text that tells the types apart: contractions in both cases, digit runs of every length, runs of spaces, tabs
# and newlines, punctuation runs and symbols, accents, Greek, Cyrillic, CJK, Hangul and emoji.
PROBE = (
    "Hello world! It's 2024-06-01, they'RE here; we'll see 1 12 123 1234 12345 3.14159 and 1,000,000.\n"
    "  Two spaces,\tone tab,\n\n\nthree newlines \r\n and trailing spaces   \n"
    "def f(x):\n    return x**2 + 10 # comment $100 <tag> a+b=c ^~| `code` @user #hash ...!!! ??\n"
    "Ünïcödé café naïve résumé Ελληνικά Русский текст 中文字符测试 日本語のテキスト 한국어 텍스트 😀🚀🎉 👍🏽\n"
    "MixedCASE camelCase snake_case SHOUTING I'M YOU'LL don't won't   \n\n"
)


class UnknownPreTokenizer(ValueError):
    """The tokenizer splits text in a way none of llama.cpp's pre-tokenizers does."""


def lookup(name: str) -> PreTokenizer | None:
    return BY_NAME.get(ALIASES.get(name, name))


def _pieces(pre_tokenizer: Any, text: str) -> list[str]:
    return [piece for piece, _offsets in pre_tokenizer.pre_tokenize_str(text)]


def _build(spec: Mapping[str, Any]) -> Any:
    """A ``tokenizers`` pre-tokenizer object from its tokenizer.json form."""
    from tokenizers import Tokenizer

    carrier = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
               "pre_tokenizer": dict(spec), "post_processor": None, "decoder": None,
               "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                         "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                         "ignore_merges": False, "vocab": {}, "merges": []}}
    return Tokenizer.from_str(json.dumps(carrier)).pre_tokenizer


def identify(pre_tokenizer_json: Mapping[str, Any] | None) -> PreTokenizer:
    """The llama.cpp pre-tokenizer that splits ``PROBE`` exactly as this tokenizer.json ``pre_tokenizer`` does.

    Raises UnknownPreTokenizer, naming the known types, when none does.
    """
    if not pre_tokenizer_json:
        raise UnknownPreTokenizer("the tokenizer has no pre-tokenizer, which no byte-level BPE that llama.cpp "
                                  f"knows lacks; known: {known_names()}")
    try:
        model = _build(pre_tokenizer_json)
    except Exception as exc:  # tokenizers rejects a malformed component with its own exception type
        raise UnknownPreTokenizer(f"the pre-tokenizer cannot be built: {exc}") from exc
    lines = PROBE.split("\n")
    theirs = [_pieces(model, line) for line in lines] + [_pieces(model, PROBE)]
    for candidate in PRE_TOKENIZERS:
        ours = _build(candidate.hf_pre_tokenizer())
        if [_pieces(ours, line) for line in lines] + [_pieces(ours, PROBE)] == theirs:
            return candidate
    raise UnknownPreTokenizer(
        "the pre-tokenizer splits text unlike every pre-tokenizer llama.cpp implements, so llama.cpp could not "
        f"tokenize this model's text the same way; known: {known_names()}")


def known_names() -> str:
    return ", ".join(f"{p.name} ({p.families})" for p in PRE_TOKENIZERS)


def known_families() -> str:
    """The model families whose tokenizers llama.cpp splits text for, in words ("Llama 3.x, Qwen2, ...")."""
    return ", ".join(p.families for p in PRE_TOKENIZERS)
