"""The tiny model builder: the folders load in mlx_lm, the tokenizers are the ones we claim, the weights are
seeded, and the real-vocab tokenizers reproduce llama.cpp's own test vectors."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from slowtune.testing import tiny_models as tm

UNICODE_SAMPLE = "naïve café in Zürich — 東京, Ελλάδα 🦙🚲 ½\n\ttabbed  two  spaces 12345 3.14159\n\n"
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "When does the garden club meet?"},
    {"role": "assistant", "content": "On the first Saturday of each month."},
]

# arch -> (start of a rendered chat, what comes right before the user's words, the end of the assistant
# turn, the generation prompt). Mistral has no system role: the system text opens the first user turn.
CHAT_FORMAT = {
    "llama": (
        "<|begin_of_text|>",
        "<|start_header_id|>user<|end_header_id|>\n\n",
        "month.<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "qwen2": ("<|im_start|>system\n", "<|im_start|>user\n", "month.<|im_end|>\n", "<|im_start|>assistant\n"),
    "qwen3": ("<|im_start|>system\n", "<|im_start|>user\n", "month.<|im_end|>\n", "<|im_start|>assistant\n"),
    "mistral": ("<s>[INST] ", "[INST] Answer briefly.\n\n", " month.</s>", "meet? [/INST]"),
    "gemma2": ("<s><start_of_turn>user\n", "<start_of_turn>user\nAnswer briefly.\n\n", "month.<end_of_turn>\n",
               "<start_of_turn>model\n"),
    "gemma3_text": ("<s><start_of_turn>user\n", "<start_of_turn>user\nAnswer briefly.\n\n",
                    "month.<end_of_turn>\n", "<start_of_turn>model\n"),
    "phi3": ("<|system|>\n", "<|user|>\n", "month.<|end|>\n", "<|assistant|>\n"),
    "smollm3": ("<|im_start|>system\n", "<|im_start|>user\n", "month.<|im_end|>\n", "<|im_start|>assistant\n"),
}
SPECIAL_TOKENS = {
    "llama": tm.LLAMA3_SPECIAL_TOKENS,
    "qwen2": tm.CHATML_SPECIAL_TOKENS,
    "qwen3": tm.CHATML_SPECIAL_TOKENS,
    "mistral": ("<s>", "</s>"),
    "gemma2": ("<s>", *tm.GEMMA_SPECIAL_TOKENS),
    "gemma3_text": ("<s>", *tm.GEMMA_SPECIAL_TOKENS),
    "phi3": tm.PHI3_SPECIAL_TOKENS,
    "smollm3": tm.CHATML_SPECIAL_TOKENS,
}
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "smollm3": "SmolLM3ForCausalLM",
}
REAL_VOCABS = tuple(tm.REAL_VOCABS)


@functools.cache
def _load(path: Path) -> tuple[Any, Any]:
    """mlx_lm.load, once per folder: every folder is read-only for the whole session."""
    import mlx_lm

    return mlx_lm.load(str(path))


def _config(path: Path) -> dict[str, Any]:
    return json.loads((path / "config.json").read_text())


def _tiny(request: pytest.FixtureRequest, arch: str) -> Path:
    return request.getfixturevalue(f"tiny_{arch}")


def _real(request: pytest.FixtureRequest, vocab: str) -> Path:
    return request.getfixturevalue(f"real_vocab_{vocab.replace('-', '_')}")


def _vectors(vocab_dir: Path, vocab: str) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors: each string with its expected ids (without BOS, as llama.cpp writes them)."""
    # Bytes, not read_text(): universal newlines would turn a "\r\n" in a vector into "\n".
    inp = (vocab_dir / f"ggml-vocab-{vocab}.gguf.inp").read_bytes().decode("utf-8")
    out = (vocab_dir / f"ggml-vocab-{vocab}.gguf.out").read_bytes().decode("utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    assert texts[-1] == "", "the .inp file should end with a separator"
    texts = texts[:-1]
    lines = out.split("\n")[: len(texts)]
    assert len(lines) == len(texts)
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines, strict=True)]


def _mismatches(encode: Any, vectors: list[tuple[str, list[int]]]) -> list[str]:
    return [
        f"{text!r}: expected {expected}, got {got}"
        for text, expected in vectors
        if (got := list(encode(text))) != expected
    ]


def _forward(model: Any, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    logits = model(mx.array([ids]))
    return np.array(logits.astype(mx.float32))


# ---------------------------------------------------------------------------------------------------------
# Tiny models
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_tiny_model_loads_runs_and_generates(request: pytest.FixtureRequest, arch: str) -> None:
    import mlx_lm

    path = _tiny(request, arch)
    model, tokenizer = _load(path)
    ids = tokenizer.encode("The café opens at 8:00.")
    logits = _forward(model, ids)
    assert logits.shape == (1, len(ids), _config(path)["vocab_size"])
    assert np.isfinite(logits).all()
    # Small weights give near-uniform predictions, not saturated ones.
    assert 0.01 < logits.std() < 5

    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    responses = list(mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=4))
    assert responses
    assert all(0 <= r.token < _config(path)["vocab_size"] for r in responses)


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_tiny_model_chat_template(request: pytest.FixtureRequest, arch: str) -> None:
    _, tokenizer = _load(_tiny(request, arch))
    start, user_turn, assistant_end, generation_prompt = CHAT_FORMAT[arch]

    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered.startswith(start)
    assert user_turn + "When does the garden club meet?" in rendered
    assert rendered.rstrip("\n").endswith(assistant_end.rstrip("\n"))
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    assert prompt.endswith(generation_prompt)

    # Every special token in the text becomes one id (not pieces of "<|", "im", ...), and BOS appears once.
    ids = tokenizer.encode(rendered, add_special_tokens=False)
    for token in SPECIAL_TOKENS[arch]:
        if token in rendered:
            assert tokenizer.convert_tokens_to_ids(token) in ids, token
    if tokenizer.bos_token and arch != "phi3":  # Phi-3's turns start the text; it has no BOS
        assert ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("arch", tm.ARCHS)
def test_tiny_model_tokenizer_round_trips(request: pytest.FixtureRequest, arch: str) -> None:
    path = _tiny(request, arch)
    _, tokenizer = _load(path)
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for text in (tm.corpus_text(), UNICODE_SAMPLE):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == raw.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids) == text
    # BOS is added by the Llama-family tokenizers only, through transformers as through tokenizers.
    with_bos = tokenizer.encode("hello")
    adds_bos = arch in ("llama", "mistral", "gemma2", "gemma3_text")
    assert (with_bos[0] == tokenizer.bos_token_id) is adds_bos
    assert raw.encode("hello").ids == with_bos


@pytest.mark.parametrize(
    ("arch", "regex", "digits"),
    [
        ("llama", tm.LLAMA3_SPLIT_REGEX, ["123", "45"]),
        ("qwen2", tm.QWEN2_SPLIT_REGEX, ["1", "2", "3", "4", "5"]),
        ("qwen3", tm.QWEN2_SPLIT_REGEX, ["1", "2", "3", "4", "5"]),
    ],
)
def test_tiny_bpe_pre_tokenizer(
    request: pytest.FixtureRequest, arch: str, regex: str, digits: list[str]
) -> None:
    path = _tiny(request, arch)
    saved = json.loads((path / "tokenizer.json").read_text())
    split, byte_level = saved["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"] == {"Regex": regex}
    assert split["behavior"] == "Isolated"
    assert byte_level["type"] == "ByteLevel" and byte_level["use_regex"] is False
    assert saved["normalizer"] == ({"type": "NFC"} if arch.startswith("qwen") else None)

    _, tokenizer = _load(path)
    for backend in (Tokenizer.from_file(str(path / "tokenizer.json")), tokenizer.backend_tokenizer):
        assert [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str("12345")] == digits
        # No token crosses a digit group: each lies within one pre-token's span.
        spans = [(0, len(digits[0]))]
        for piece in digits[1:]:
            spans.append((spans[-1][1], spans[-1][1] + len(piece)))
        offsets = backend.encode("12345", add_special_tokens=False).offsets
        assert all(any(a <= s and e <= b for a, b in spans) for s, e in offsets)


def test_llama_tokenizer_learns_digit_groups_and_qwen2_does_not() -> None:
    # The corpus has "00" often enough: the llama tokenizer merges digits, Qwen2's regex never lets it.
    llama = tm.tiny_tokenizer_spec("llama").tokenizer.encode("10000", add_special_tokens=False).tokens
    qwen2 = tm.tiny_tokenizer_spec("qwen2").tokenizer.encode("10000", add_special_tokens=False).tokens
    assert "".join(llama) == "10000" and any(len(t) > 1 for t in llama)
    assert qwen2 == list("10000")


def test_tiny_tokenizers_are_deterministic() -> None:
    assert tm.train_bpe_tokenizer().to_str() == tm.train_bpe_tokenizer().to_str()
    assert tm.train_spm_tokenizer().to_str() == tm.train_spm_tokenizer().to_str()
    # Rust hash maps are seeded per process: train again in a fresh interpreter.
    code = (
        "import hashlib\n"
        "from slowtune.testing.tiny_models import train_bpe_tokenizer, train_spm_tokenizer\n"
        "print(hashlib.sha256(train_bpe_tokenizer().to_str().encode()).hexdigest())\n"
        "print(hashlib.sha256(train_spm_tokenizer().to_str().encode()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = [
        hashlib.sha256(tm.train_bpe_tokenizer().to_str().encode()).hexdigest(),
        hashlib.sha256(tm.train_spm_tokenizer().to_str().encode()).hexdigest(),
    ]
    assert out.stdout.split() == here


def test_tiny_tokenizers_have_the_requested_size_and_special_tokens_last() -> None:
    for arch in tm.ARCHS:
        tokenizer = tm.tiny_tokenizer_spec(arch).tokenizer
        assert tokenizer.get_vocab_size() == 1024, arch
    llama = tm.tiny_tokenizer_spec("llama").tokenizer
    assert [llama.token_to_id(t) for t in tm.LLAMA3_SPECIAL_TOKENS] == list(range(1019, 1024))
    spm = tm.tiny_tokenizer_spec("mistral").tokenizer
    assert [spm.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0xFF>")] == [0, 1, 2, 3, 258]
    # Byte fallback: a character the corpus never had still round-trips.
    assert "<0xF0>" in spm.encode("🦙").tokens


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_tiny_model_files_and_tensor_names(request: pytest.FixtureRequest, arch: str) -> None:
    path = _tiny(request, arch)
    config = _config(path)
    assert config["model_type"] == arch
    assert config["architectures"] == [ARCHITECTURES[arch]]
    assert (config["hidden_size"], config["num_hidden_layers"], config["head_dim"]) == (256, 4, 64)
    assert config["vocab_size"] == Tokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()

    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert tokenizer_config["chat_template"]
    for name in ("special_tokens_map.json", "generation_config.json"):
        assert json.loads((path / name).read_text())

    weights = load_file(path / "model.safetensors")
    layer0 = {name.removeprefix("model.layers.0.") for name in weights if name.startswith("model.layers.0.")}
    expected = {
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        *(f"self_attn.{p}_proj.weight" for p in "qkvo"),
        *(f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")),
    }
    if arch == "qwen2":
        expected |= {f"self_attn.{p}_proj.bias" for p in "qkv"}
    if arch == "qwen3":
        expected |= {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}
    assert layer0 == expected
    assert len(weights) == 3 + 4 * len(expected)  # embeddings, final norm, lm_head
    vocab, hidden = config["vocab_size"], config["hidden_size"]
    assert weights["model.embed_tokens.weight"].shape == (vocab, hidden)
    assert weights["lm_head.weight"].shape == (vocab, hidden)
    assert weights["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 64, hidden)
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (2 * 64, hidden)
    assert weights["model.layers.0.mlp.down_proj.weight"].shape == (hidden, 512)
    assert all(w.dtype == np.float32 for w in weights.values())
    # Matrices are N(0, 1/fan_in): activations and logits of order one, so LoRA can learn on them.
    assert abs(weights["model.embed_tokens.weight"].std() - hidden**-0.5) < 0.002
    assert abs(weights["model.layers.0.mlp.down_proj.weight"].std() - 512**-0.5) < 0.002
    assert abs(weights["model.norm.weight"].mean() - 1) < 0.02


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "phi3", "smollm3"])
def test_tiny_model_layouts_of_the_newer_families(request: pytest.FixtureRequest, arch: str) -> None:
    path = _tiny(request, arch)
    config = _config(path)
    weights = load_file(path / "model.safetensors")
    layer0 = {name.removeprefix("model.layers.0.") for name in weights if name.startswith("model.layers.0.")}
    assert "lm_head.weight" not in weights and config["tie_word_embeddings"] is True
    if arch == "phi3":
        assert "head_dim" not in config  # Phi-3 derives it: 256 / 4
        assert layer0 == {"input_layernorm.weight", "post_attention_layernorm.weight", "self_attn.qkv_proj.weight",
                          "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"}
        assert weights["model.layers.0.self_attn.qkv_proj.weight"].shape == ((4 + 2 + 2) * 64, 256)
        assert weights["model.layers.0.mlp.gate_up_proj.weight"].shape == (2 * 512, 256)
        scaling = config["rope_scaling"]
        assert scaling["type"] == "longrope" and len(scaling["short_factor"]) == len(scaling["long_factor"]) == 24
        return
    if arch == "smollm3":
        assert config["no_rope_layers"] == [1, 1, 1, 0]
        assert abs(weights["model.norm.weight"].mean() - 1) < 0.02
        return
    # Gemma: the norms before and after attention and the MLP, stored as offsets around 0 (scale 1 + weight).
    assert {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"} <= layer0
    assert ("self_attn.q_norm.weight" in layer0) is (arch == "gemma3_text")
    assert abs(weights["model.norm.weight"].mean()) < 0.02
    assert config["query_pre_attn_scalar"] == 64 and config["sliding_window"] == 16


def _small(dest: Path, **kwargs: Any) -> Path:
    options = {
        "hidden_size": 64,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 128,
    }
    return tm.build_tiny_model(dest, **{**options, **kwargs})


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = _small(tmp_path / "a", seed=7)
    again = _small(tmp_path / "b", seed=7)
    other = _small(tmp_path / "c", seed=8)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    a, c = load_file(first / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == c.keys()
    assert all(not np.array_equal(a[k], c[k]) for k in a)


def test_half_precision_weights(tmp_path: Path) -> None:
    import mlx.core as mx

    full = load_file(_small(tmp_path / "f32", seed=3) / "model.safetensors")
    half = load_file(_small(tmp_path / "f16", seed=3, dtype="float16") / "model.safetensors")
    assert all(half[k].dtype == np.float16 for k in half)
    for name, values in full.items():
        np.testing.assert_allclose(half[name].astype(np.float32), values, rtol=1e-3, atol=1e-6)

    bf16_path = _small(tmp_path / "bf16", seed=3, dtype="bfloat16")
    assert _config(bf16_path)["torch_dtype"] == "bfloat16"
    brain = mx.load(str(bf16_path / "model.safetensors"))
    assert brain.keys() == full.keys()
    for name, values in full.items():
        assert brain[name].dtype == mx.bfloat16
        np.testing.assert_allclose(np.array(brain[name].astype(mx.float32)), values, rtol=1 / 128, atol=1e-6)

    model, tokenizer = _load(bf16_path)
    assert np.isfinite(_forward(model, tokenizer.encode("Weather log, week 14"))).all()


def test_tied_embeddings(tmp_path: Path) -> None:
    path = _small(tmp_path / "tied", arch="qwen2", tie_embeddings=True)
    assert _config(path)["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(path / "model.safetensors")
    model, tokenizer = _load(path)
    ids = tokenizer.encode("Bed 3 grows potatoes.")
    assert _forward(model, ids).shape == (1, len(ids), 1024)


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="architecture"):
        tm.build_tiny_model(tmp_path, "gpt2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dtype"):
        tm.build_tiny_model(tmp_path, dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_kv_heads"):
        tm.build_tiny_model(tmp_path, num_heads=4, num_kv_heads=3)
    assert not list(tmp_path.iterdir())


def test_shared_vocab_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLOWTUNE_VOCAB_FIXTURES", str(tmp_path))
    assert tm.shared_vocab_dir() == tmp_path
    monkeypatch.setenv("SLOWTUNE_VOCAB_FIXTURES", str(tmp_path / "missing"))
    assert tm.shared_vocab_dir() is None
    with pytest.raises(FileNotFoundError, match=r"ggml-vocab-qwen2\.gguf"):
        tm.build_real_vocab_model(tmp_path / "model", "qwen2")


# ---------------------------------------------------------------------------------------------------------
# Real vocabularies (skip without the shared fixtures folder)
# ---------------------------------------------------------------------------------------------------------


def test_read_gguf_metadata_agrees_with_gguf_reader(llama_cpp_vocab_dir: Path) -> None:
    from gguf import GGUFReader

    path = llama_cpp_vocab_dir / "ggml-vocab-llama-spm.gguf"  # the small one: GGUFReader is slow
    ours = tm.read_gguf_metadata(path)
    theirs = {name: field.contents() for name, field in GGUFReader(path).fields.items()}
    assert ours.keys() == {k for k in theirs if not k.startswith("GGUF.")}
    for key, value in ours.items():
        assert value == pytest.approx(theirs[key]) if key.endswith("scores") else value == theirs[key], key


@pytest.mark.parametrize("vocab", REAL_VOCABS)
def test_real_vocab_tokenizer_reproduces_llama_cpp(
    request: pytest.FixtureRequest, llama_cpp_vocab_dir: Path, vocab: str
) -> None:
    vectors = _vectors(llama_cpp_vocab_dir, vocab)
    assert len(vectors) >= 40
    rebuilt = Tokenizer.from_file(str(_real(request, vocab) / "tokenizer.json"))
    failures = _mismatches(lambda text: rebuilt.encode(text, add_special_tokens=False).ids, vectors)
    assert not failures, "\n".join(failures)
    # And decoding llama.cpp's ids gives the text back (Qwen2 normalises to NFC first).
    for text, expected in vectors:
        assert rebuilt.decode(expected) == (unicodedata.normalize("NFC", text) if vocab == "qwen2" else text)
    # The vectors cannot tell everything apart (Qwen2's vocabulary has no multi-digit tokens, and no vector
    # needs NFC), so check the pipeline itself as well.
    saved = json.loads(rebuilt.to_str())
    if vocab == "llama-spm":
        assert saved["pre_tokenizer"] is None
        assert [n["type"] for n in saved["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
        assert saved["model"]["byte_fallback"] is True
    else:
        regex = tm.QWEN2_SPLIT_REGEX if vocab == "qwen2" else tm.LLAMA3_SPLIT_REGEX
        assert saved["pre_tokenizer"]["pretokenizers"][0]["pattern"] == {"Regex": regex}
        assert saved["normalizer"] == ({"type": "NFC"} if vocab == "qwen2" else None)
        assert saved["model"]["ignore_merges"] is (vocab == "llama-bpe")
    # Special tokens in the text are parsed as single tokens.
    some_control = next(t for t in rebuilt.get_added_tokens_decoder().values() if t.special).content
    assert len(rebuilt.encode(f"a{some_control}b", add_special_tokens=False).ids) == 3


@pytest.mark.slow
@pytest.mark.parametrize("vocab", REAL_VOCABS)
def test_real_vocab_model_in_mlx_lm(
    request: pytest.FixtureRequest, llama_cpp_vocab_dir: Path, vocab: str
) -> None:
    import mlx_lm

    path = _real(request, vocab)
    model, tokenizer = _load(path)
    # Through transformers (as mlx_lm uses it) the ids are llama.cpp's too.
    vectors = _vectors(llama_cpp_vocab_dir, vocab)
    failures = _mismatches(lambda text: tokenizer.encode(text, add_special_tokens=False), vectors)
    assert not failures, "\n".join(failures)

    config = _config(path)
    prompt = tokenizer.apply_chat_template(CONVERSATION[:2], add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    logits = _forward(model, ids)
    assert logits.shape == (1, len(ids), config["vocab_size"])
    assert np.isfinite(logits).all()
    marker = {"qwen2": "<|im_start|>", "llama-bpe": "<|start_header_id|>", "llama-spm": "[INST]"}[vocab]
    assert marker in prompt
    assert (tokenizer.encode("Hello")[0] == config["bos_token_id"]) is (vocab != "qwen2")
    assert list(mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=2))


@pytest.mark.parametrize("vocab", REAL_VOCABS)
def test_real_vocab_config_matches_gguf(
    request: pytest.FixtureRequest, llama_cpp_vocab_dir: Path, vocab: str
) -> None:
    path = _real(request, vocab)
    meta = tm.read_gguf_metadata(llama_cpp_vocab_dir / f"ggml-vocab-{vocab}.gguf")
    tokens = meta["tokenizer.ggml.tokens"]
    config = _config(path)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    generation_config = json.loads((path / "generation_config.json").read_text())

    assert config["model_type"] == tm.REAL_VOCABS[vocab]
    assert config["vocab_size"] == len(tokens)
    assert (config["num_hidden_layers"], config["hidden_size"], config["tie_word_embeddings"]) == (
        2,
        256,
        True,
    )
    assert config["bos_token_id"] == meta["tokenizer.ggml.bos_token_id"]
    eos_ids = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    assert eos_ids[0] == meta["tokenizer.ggml.eos_token_id"]
    assert generation_config["eos_token_id"] == eos_ids
    assert tokenizer_config["eos_token"] == tokens[meta["tokenizer.ggml.eos_token_id"]]
    # Chat turns end with a token of their own; generation must stop there too.
    turn_end = {"qwen2": "<|im_end|>", "llama-bpe": "<|eot_id|>", "llama-spm": "</s>"}[vocab]
    assert tokens.index(turn_end) in eos_ids
    assert tokenizer_config["add_bos_token"] is (vocab != "qwen2")
    if "tokenizer.chat_template" in meta:
        assert tokenizer_config["chat_template"] == meta["tokenizer.chat_template"]
    assert load_file(path / "model.safetensors")["model.embed_tokens.weight"].shape == (len(tokens), 256)
