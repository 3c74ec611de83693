"""Every common tokenizer family survives the GGUF export: llama.cpp, loading the written file, tokenizes exactly as
the Hugging Face tokenizer does.

Each byte-level family's tiny tokenizer carries that family's own pre-tokenizer, worded as its tokenizer.json words
it (slowtune.testing.tiny_models.BYTE_LEVEL_FAMILIES); the export must recognise it by behaviour and name the
llama.cpp pre-tokenizer that splits the same way. SentencePiece is checked in Llama's layout (a "▁" put in front)
and Gemma's (none).

GPT-4o's o200k split (Phi-4-mini's tokenizer) is built here from its published regex. llama.cpp applies a rewording
of it that splits a few kinds of word differently (slowtune.models.pretokenizers); that difference is tested as
llama.cpp's, so that it stays documented.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from slowtune.export.gguf_writer import ExportError, write_gguf
from slowtune.llama import load_gguf
from slowtune.models import gguf_import, pretokenizers
from slowtune.testing import tiny_models


def _test_strings() -> list[str]:
    strings = [*gguf_import.TOKENIZER_PROBES, *pretokenizers.PROBE.split("\n"), pretokenizers.PROBE,
               "<|im_start|>user\nWhat is 1234+5678?<|im_end|>\n<|im_start|>assistant\n"]
    folder = tiny_models.shared_vocab_dir()
    if folder is not None:  # llama.cpp's own tokenizer test strings, when the shared fixtures are here
        for inp in sorted(folder.glob("*.inp")):
            strings += inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    return list(dict.fromkeys(strings))


STRINGS = _test_strings()


def _tiny(dest: Path, spec: tiny_models.TokenizerSpec) -> Path:
    return tiny_models.build_tiny_model(dest, "llama", hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                                        intermediate_size=128, tokenizer=spec, max_position_embeddings=512)


def _mismatches(gguf: Path, spec: tiny_models.TokenizerSpec) -> list[str]:
    llm = load_gguf(gguf, n_ctx=64, vocab_only=True)
    try:
        return [text for text in STRINGS
                if llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
                != spec.tokenizer.encode(text, add_special_tokens=False).ids]
    finally:
        llm.close()


@pytest.mark.parametrize("family", list(tiny_models.BYTE_LEVEL_FAMILIES))
def test_llama_cpp_tokenizes_each_byte_level_family_as_hugging_face(family: str, tmp_path: Path) -> None:
    spec = tiny_models.family_tokenizer_spec(family)
    gguf = write_gguf(_tiny(tmp_path / "m", spec), tmp_path / "m.gguf", out_type="f32")
    written = tiny_models.read_gguf_metadata(gguf)["tokenizer.ggml.pre"]
    # The name written splits text exactly as the family's own pre-tokenizer (two names can share a behaviour).
    assert pretokenizers.lookup(written).regexes == pretokenizers.BY_NAME[family].regexes
    assert len(STRINGS) > 20
    assert _mismatches(gguf, spec) == []


@pytest.mark.parametrize("layout", ["llama", "gemma"])
def test_llama_cpp_tokenizes_sentencepiece_as_hugging_face(layout: str, tmp_path: Path) -> None:
    spec = tiny_models.tiny_tokenizer_spec("mistral") if layout == "llama" else tiny_models.gemma_style_spm_spec()
    gguf = write_gguf(_tiny(tmp_path / "m", spec), tmp_path / "m.gguf", out_type="f32")
    meta = tiny_models.read_gguf_metadata(gguf)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.add_space_prefix"] is (layout == "llama")
    assert _mismatches(gguf, spec) == []


def _gpt_4o_spec() -> tiny_models.TokenizerSpec:
    """A tiny byte-level BPE with GPT-4o's o200k split, as Phi-4-mini's tokenizer.json words it, and Phi-3's turn
    tokens."""
    tokenizer = tiny_models.train_bpe_tokenizer(1024, tiny_models.O200K_SPLIT_REGEX, tiny_models.PHI3_SPECIAL_TOKENS)
    return tiny_models.TokenizerSpec(tokenizer, tiny_models.PHI3_CHAT_TEMPLATE, bos_token=None, eos_token="<|end|>",
                                     pad_token="<|endoftext|>", extra_eos_tokens=("<|endoftext|>",))


# Words the o200k regex and llama.cpp's rewording of it split differently: a capital after a small letter, when one
# of them is not ASCII; an accent written as a combining mark.
GPT_4O_DIFFERENCES = ["aÉb", "camelÉcole", "naïveÉtat", "ÉcoleÀpart", "cafe\u0301 resume\u0301", "हिन्दी"]


def test_llama_cpp_tokenizes_gpt_4o_as_hugging_face(tmp_path: Path) -> None:
    spec = _gpt_4o_spec()
    gguf = write_gguf(_tiny(tmp_path / "m", spec), tmp_path / "m.gguf", out_type="f32")
    assert tiny_models.read_gguf_metadata(gguf)["tokenizer.ggml.pre"] == "gpt-4o"
    assert _mismatches(gguf, spec) == []
    # Phi-3's turn tokens stay one token each.
    llm = load_gguf(gguf, n_ctx=64, vocab_only=True)
    try:
        text = "<|system|>S<|end|><|user|>Hi<|end|><|assistant|>"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == spec.tokenizer.encode(text).ids
    finally:
        llm.close()


def test_gpt_4o_in_llama_cpp_splits_by_its_rewording(tmp_path: Path) -> None:
    """Where llama.cpp's "gpt-4o" differs from the o200k regex, it splits as the regex in the table says (the one
    the GGUF import rebuilds), not as the model's own tokenizer: a llama.cpp limitation every such GGUF shares."""
    spec = _gpt_4o_spec()
    gguf = write_gguf(_tiny(tmp_path / "m", spec), tmp_path / "m.gguf", out_type="f32")
    data = json.loads(spec.tokenizer.to_str())
    data["pre_tokenizer"] = pretokenizers.BY_NAME["gpt-4o"].hf_pre_tokenizer()
    as_the_table_says = Tokenizer.from_str(json.dumps(data))
    words = [" ".join(GPT_4O_DIFFERENCES), *GPT_4O_DIFFERENCES]
    llm = load_gguf(gguf, n_ctx=64, vocab_only=True)
    try:
        theirs = [llm.tokenize(w.encode(), add_bos=False, special=True) for w in words]
    finally:
        llm.close()
    assert theirs == [as_the_table_says.encode(w, add_special_tokens=False).ids for w in words]
    own = [spec.tokenizer.encode(w, add_special_tokens=False).ids for w in words]
    # The difference is real: in one piece, "a" merges with the first byte of "É" (the tiny vocabulary has "aÃ").
    assert own != theirs
    pieces = pretokenizers._build(pretokenizers.BY_NAME["gpt-4o"].hf_pre_tokenizer()).pre_tokenize_str("aÉb")
    assert [p for p, _ in spec.tokenizer.pre_tokenizer.pre_tokenize_str("aÉb")] != [p for p, _ in pieces]


def test_the_identification_can_tell_the_families_apart() -> None:
    """Types with different behaviour must be told apart on the probe, or identify() could name the wrong one."""
    pieces = {}
    for pre in pretokenizers.PRE_TOKENIZERS:
        built = pretokenizers._build(pre.hf_pre_tokenizer())
        pieces.setdefault(pre.regexes, [p for p, _ in built.pre_tokenize_str(pretokenizers.PROBE)])
    seen = list(pieces.values())
    assert len(seen) == len({json.dumps(p) for p in seen}) == 8  # eight distinct behaviours among the eleven names


def test_the_tiny_models_copies_of_llama_cpp_regexes_agree_with_the_export() -> None:
    # The tiny-model builder keeps its own copies (it sits below the models layer); they must be llama.cpp's lists,
    # DeepSeek's without the last regex (their tokenizer.json has a Digits step there).
    assert pretokenizers.BY_NAME["falcon"].regexes == tiny_models.FALCON_SPLIT_REGEXES
    assert pretokenizers.BY_NAME["deepseek-llm"].regexes[:-1] == tiny_models.DEEPSEEK_LLM_SPLIT_REGEXES
    assert pretokenizers.BY_NAME["deepseek-coder"].regexes[:-1] == tiny_models.DEEPSEEK_CODER_SPLIT_REGEXES


def test_an_unknown_pre_tokenizer_is_refused_by_name_before_anything_is_written(tmp_path: Path) -> None:
    model = _tiny(tmp_path / "m", tiny_models.family_tokenizer_spec("gpt-2"))
    tokenizer = json.loads((model / "tokenizer.json").read_text())
    # Whitespace-then-bytes: a byte-level BPE no llama.cpp pre-tokenizer splits like.
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                      "use_regex": False}]}
    (model / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ExportError) as exc:
        write_gguf(model, tmp_path / "m.gguf", out_type="f32")
    message = str(exc.value)
    # A sentence for the user, naming the file and the families to pick instead; llama.cpp's names in the details.
    assert "tokenizer.json: this model's tokenizer splits text" in message and "unsupported byte-level" in message
    assert "Tokenizers llama.cpp knows are those of" in message and "Qwen2.5" in message and "SmolLM2" in message
    details = "\n".join(getattr(exc.value, "__notes__", []))
    for name in ("gpt-2", "smollm", "starcoder", "falcon", "deepseek-llm", "deepseek-coder", "phi-2", "olmo",
                 "llama-bpe", "qwen2", "gpt-4o"):
        assert name in details
    assert "known:" not in message
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*partial*"))
