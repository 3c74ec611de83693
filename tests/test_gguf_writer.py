"""The GGUF writer: what llama.cpp computes from an exported file must be what MLX computed in training.

Each tiny model is exported and loaded in llama.cpp (llama-cpp-python), and compared with MLX on the same
tokens: logits (F32 export: equal to float rounding; F16: the same next token wherever MLX's choice is
clear), tokenisation (the Hugging Face tokenizer's ids, on the tiny tokenizers and on three real ones with
llama.cpp's own test strings), special tokens and BOS behaviour, and the chat template (stored as given,
rendered by llama-cpp-python as transformers renders it). Then the ways an export must refuse or fail
cleanly.

The comparisons use llama.cpp with a float32 KV cache where exactness is checked: its default cache is
float16, which alone moves logits by ~1e-3.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slowtune.export import gguf_writer
from slowtune.export.gguf_writer import SUPPORTED_ARCHITECTURES, ExportError, write_gguf
from slowtune.models import gguf_spec
from slowtune.progress import Cancelled, Progress
from slowtune.testing import tiny_models

TINY = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral"]
# Their logits are compared in test_gguf_families.py (against slowtune's own forward pass); their tokenizers here.
NEW_FAMILIES = ["tiny_gemma2", "tiny_gemma3_text", "tiny_phi3", "tiny_smollm3"]
REAL = ["real_vocab_llama_spm", "real_vocab_llama_bpe", "real_vocab_qwen2"]
REAL_VOCAB_NAME = {
    "real_vocab_qwen2": "qwen2",
    "real_vocab_llama_bpe": "llama-bpe",
    "real_vocab_llama_spm": "llama-spm",
}

# Spaces (leading, runs, trailing), newlines, CRLF, tabs, digits in runs, several scripts, emoji (incl. a
# multi-codepoint one) and an apostrophe contraction: the places where pre-tokenizers differ.
MULTILINGUAL = (
    "  Hello, world! I'm here.\tTabs\tand   three   spaces\n\nGrüße aus Köln — naïve café. "
    "東京は晴れ。 Привет, мир! مرحبا بالعالم 12345 67.89 1,000,000\r\n"
    "emoji 🙂🦙 👩‍💻 done  \n"
)
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is 2+2? Ünïcödé 🙂"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?\nThanks."},
]


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path, str], Path]:
    """export(model_dir, out_type) -> GGUF path, each (folder, type) exported once per module."""
    folder = tmp_path_factory.mktemp("gguf")
    cache: dict[tuple[Path, str], Path] = {}

    def export(model_dir: Path, out_type: str) -> Path:
        key = (model_dir, out_type)
        if key not in cache:
            cache[key] = write_gguf(
                model_dir, folder / f"{model_dir.name}-{out_type}.gguf", out_type=out_type
            )
        return cache[key]

    return export


@contextlib.contextmanager
def llama(
    path: Path, *, vocab_only: bool = False, f32_cache: bool = False, n_ctx: int = 512
) -> Iterator[Any]:
    import llama_cpp

    cache_types = {"type_k": llama_cpp.GGML_TYPE_F32, "type_v": llama_cpp.GGML_TYPE_F32} if f32_cache else {}
    llm = llama_cpp.Llama(
        str(path), vocab_only=vocab_only, logits_all=not vocab_only, n_ctx=n_ctx, verbose=False, **cache_types
    )
    try:
        yield llm
    finally:
        llm.close()


def llama_logits(path: Path, ids: list[int], *, f32_cache: bool) -> np.ndarray:
    with llama(path, f32_cache=f32_cache, n_ctx=max(256, len(ids))) as llm:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)


def mlx_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    import mlx.core as mx
    import mlx_lm

    model, _ = mlx_lm.load(str(model_dir))
    model.set_dtype(mx.float32)  # bf16 folders: compare against the exact stored values, computed in fp32
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


@functools.cache
def hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def sample_ids(model_dir: Path, n: int) -> list[int]:
    """`n` token ids of real text (the tokenizer's own corpus), as training would feed them."""
    ids = hf_tokenizer(model_dir)(tiny_models.corpus_text()[:20000])["input_ids"]
    assert len(ids) >= n
    return ids[:n]


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def assert_logits_match(model_dir: Path, gguf_path: Path, ids: list[int]) -> tuple[float, float]:
    """F32 export vs MLX: max |difference| <= 1e-4 x max |logit|. Returns (max diff, max |logit|)."""
    ref = mlx_logits(model_dir, ids)
    got = llama_logits(gguf_path, ids, f32_cache=True)
    scale = float(np.abs(ref).max())
    diff = float(np.abs(ref - got).max())
    print(f"{model_dir.name}: max |logit diff| {diff:.3g}, max |logit| {scale:.3g}, ratio {diff / scale:.2g}")
    assert diff <= 1e-4 * scale, f"max |logit diff| {diff} > 1e-4 x {scale}"
    return diff, scale


# --------------------------------------------------------------------------------------------------------
# Weights: logits
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", TINY)
def test_f32_export_gives_mlx_logits(request: pytest.FixtureRequest, exported: Any, fixture: str) -> None:
    model_dir = request.getfixturevalue(fixture)
    assert_logits_match(model_dir, exported(model_dir, "f32"), sample_ids(model_dir, 128))


def test_comparison_catches_unpermuted_llama_qk(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The classic conversion bug, made on purpose: the logit comparison above must be able to see it.
    monkeypatch.setitem(gguf_spec._PERMUTE_QK, "llama", False)
    path = write_gguf(tiny_llama, tmp_path / "unpermuted.gguf", out_type="f32")
    ids = sample_ids(tiny_llama, 64)
    ref, got = mlx_logits(tiny_llama, ids), llama_logits(path, ids, f32_cache=True)
    assert np.abs(ref - got).max() > 0.1 * np.abs(ref).max()
    assert (ref.argmax(-1) == got.argmax(-1)).mean() < 0.9


@pytest.mark.parametrize(
    ("fixture", "out_type"), [*((f, "f16") for f in TINY), ("tiny_llama", "bf16"), ("tiny_qwen2", "bf16")]
)
def test_half_precision_export_predicts_the_same_next_token(
    request: pytest.FixtureRequest, exported: Any, fixture: str, out_type: str
) -> None:
    """Top-1 agreement >= 99% where MLX's choice is clear (top-two margin >= 0.1), llama.cpp's defaults."""
    model_dir = request.getfixturevalue(fixture)
    ids = sample_ids(model_dir, 512)
    ref = mlx_logits(model_dir, ids)
    got = llama_logits(exported(model_dir, out_type), ids, f32_cache=False)
    top2 = np.sort(ref, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.1
    agreement = float((ref.argmax(-1) == got.argmax(-1))[clear].mean())
    rel = float(np.abs(ref - got).max() / np.abs(ref).max())
    print(
        f"{fixture} {out_type}: top-1 agreement {agreement:.4f} on {clear.sum()} positions "
        f"({(~clear).sum()} excluded, margin < 0.1); max diff / max |logit| {rel:.2g}"
    )
    assert clear.sum() >= 300
    assert agreement >= 0.99


@pytest.mark.parametrize(
    ("arch", "rope_scaling"),
    [
        (
            "llama",
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        ("llama", {"type": "linear", "factor": 4.0}),
        ("qwen2", {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}),
    ],
    ids=["llama3", "linear", "yarn"],
)
def test_rope_scaling_gives_mlx_logits(
    request: pytest.FixtureRequest, tmp_path: Path, arch: str, rope_scaling: dict[str, Any]
) -> None:
    base = request.getfixturevalue(f"tiny_{arch}")
    model_dir = copy_model(base, tmp_path / "scaled")
    edit_json(model_dir / "config.json", lambda c: c.update(rope_scaling=rope_scaling))
    ids = [int(i) for i in np.random.default_rng(0).integers(0, 1000, 160)]
    # The scaling must matter for these ids, or the comparison would prove nothing.
    assert np.abs(mlx_logits(model_dir, ids) - mlx_logits(base, ids)).max() > 0.5
    assert_logits_match(model_dir, write_gguf(model_dir, tmp_path / "m.gguf", out_type="f32"), ids)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("qwen3", {"head_dim": 32}),  # explicit head_dim != hidden / heads
        ("llama", {"head_dim": 32, "tie_embeddings": True}),
        # Hidden 512, MQA: rows a multiple of 256, as llama.cpp's K-quants need.
        ("mistral", {"hidden_size": 512, "num_kv_heads": 1, "intermediate_size": 1024, "num_layers": 2}),
        ("llama", {"dtype": "bfloat16", "num_layers": 2}),  # bf16 weights read without numpy bfloat16
        ("qwen2", {"dtype": "float16", "num_layers": 2, "tie_embeddings": True}),
        # More embedding rows than tokens, as real models pad their vocabularies.
        ("qwen2", {"model_vocab_size": 1100, "num_layers": 2}),
    ],
    ids=[
        "qwen3-head_dim",
        "llama-head_dim-tied",
        "mistral-hidden512",
        "llama-bf16-source",
        "qwen2-f16-source",
        "qwen2-padded-vocab",
    ],
)
def test_model_shapes_and_source_dtypes(tmp_path: Path, arch: Any, options: dict[str, Any]) -> None:
    model_dir = tiny_models.build_tiny_model(tmp_path / "model", arch, **options)
    path = write_gguf(model_dir, tmp_path / "m.gguf", out_type="f32")
    assert_logits_match(model_dir, path, [int(i) for i in np.random.default_rng(1).integers(0, 1000, 96)])


def test_sharded_weights(tiny_qwen2: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    model_dir = copy_model(tiny_qwen2, tmp_path / "sharded")
    weights = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for filename, keys in shards.items():
        save_file({k: weights[k] for k in keys}, model_dir / filename, metadata={"format": "pt"})
    weight_map = {k: filename for filename, keys in shards.items() for k in keys}
    (model_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    assert_logits_match(
        model_dir, write_gguf(model_dir, tmp_path / "m.gguf", out_type="f32"), sample_ids(model_dir, 64)
    )


def test_llama_attention_biases_are_permuted_with_their_rows(tiny_llama: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    model_dir = copy_model(tiny_llama, tmp_path / "biased")
    config = json.loads((model_dir / "config.json").read_text())
    edit_json(model_dir / "config.json", lambda c: c.update(attention_bias=True))
    weights = load_file(model_dir / "model.safetensors")
    rng = np.random.default_rng(2)
    for layer in range(config["num_hidden_layers"]):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            rows = weights[f"model.layers.{layer}.self_attn.{proj}.weight"].shape[0]
            bias = rng.standard_normal(rows).astype(np.float32)
            weights[f"model.layers.{layer}.self_attn.{proj}.bias"] = bias
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    ids = sample_ids(model_dir, 64)
    assert np.abs(mlx_logits(model_dir, ids) - mlx_logits(tiny_llama, ids)).max() > 0.5
    assert_logits_match(model_dir, write_gguf(model_dir, tmp_path / "m.gguf", out_type="f32"), ids)


def test_bf16_export_keeps_bf16_weights_bit_for_bit(tmp_path: Path) -> None:
    import gguf
    import mlx.core as mx

    model_dir = tiny_models.build_tiny_model(tmp_path / "model", "llama", dtype="bfloat16", num_layers=1)
    path = write_gguf(model_dir, tmp_path / "m.gguf", out_type="bf16")
    source = {
        k: np.array(v.view(mx.uint16)) for k, v in mx.load(str(model_dir / "model.safetensors")).items()
    }
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}

    def bits(name: str) -> np.ndarray:
        tensor = tensors[name]
        assert tensor.tensor_type == gguf.GGMLQuantizationType.BF16
        return np.asarray(tensor.data).view(np.uint16).reshape(tuple(reversed(tensor.shape)))

    assert np.array_equal(bits("blk.0.ffn_down.weight"), source["model.layers.0.mlp.down_proj.weight"])
    assert np.array_equal(bits("token_embd.weight"), source["model.embed_tokens.weight"])
    # q is permuted per head (4 heads of 64): row 2i of a head is its old row i, row 2i+1 its old row i+32.
    q, q_src = bits("blk.0.attn_q.weight"), source["model.layers.0.self_attn.q_proj.weight"]
    assert np.array_equal(q[64 + 2 * 5], q_src[64 + 5]) and np.array_equal(
        q[64 + 2 * 5 + 1], q_src[64 + 5 + 32]
    )
    # Norms stay float32.
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" in tensors  # untied: llama.cpp must not fall back to token_embd


# --------------------------------------------------------------------------------------------------------
# Tokenizer, special tokens, chat template
# --------------------------------------------------------------------------------------------------------

ALL_VOCABS = [*TINY, *NEW_FAMILIES, *(pytest.param(f, marks=pytest.mark.slow) for f in REAL)]


def tokenizer_strings(request: pytest.FixtureRequest, fixture: str) -> list[str]:
    texts = [MULTILINGUAL, " leading space", "x\r\ny", "", "   ", "\n\n\n", "don't I'LL we'Re 3.14159265"]
    if fixture in REAL_VOCAB_NAME:
        folder = request.getfixturevalue("llama_cpp_vocab_dir")
        inp = (folder / f"ggml-vocab-{REAL_VOCAB_NAME[fixture]}.gguf.inp").read_text(encoding="utf-8")
        texts += inp.split("\n__ggml_vocab_test__\n")
    return texts


@pytest.mark.parametrize("fixture", ALL_VOCABS)
def test_llama_cpp_tokenizes_like_hugging_face(
    request: pytest.FixtureRequest, exported: Any, fixture: str
) -> None:
    model_dir = request.getfixturevalue(fixture)
    hf = hf_tokenizer(model_dir)
    texts = tokenizer_strings(request, fixture)
    mismatches = []
    with llama(exported(model_dir, "f16"), vocab_only=True) as llm:
        for text in texts:
            for add_special in (True, False):
                want = hf(text, add_special_tokens=add_special)["input_ids"]
                got = llm.tokenize(text.encode(), add_bos=add_special, special=False)
                if want != got:
                    mismatches.append((text[:40], add_special, want[:12], got[:12]))
    print(f"{fixture}: {len(texts)} strings, {len(mismatches)} mismatches")
    assert not mismatches


@pytest.mark.parametrize("fixture", ALL_VOCABS)
def test_special_tokens_and_bos_behaviour(
    request: pytest.FixtureRequest, exported: Any, fixture: str
) -> None:
    model_dir = request.getfixturevalue(fixture)
    hf = hf_tokenizer(model_dir)
    hf_adds_bos = hf("hi")["input_ids"][:1] == [hf.bos_token_id]
    with llama(exported(model_dir, "f16"), vocab_only=True) as llm:
        assert llm.token_eos() == hf.eos_token_id
        if hf.bos_token_id is not None:
            assert llm.token_bos() == hf.bos_token_id
        assert (llm.tokenize(b"hi", add_bos=True)[:1] == [llm.token_bos()]) == hf_adds_bos
        assert llm.tokenize(b"hi", add_bos=True)[-1] != llm.token_eos()
        # The end-of-turn token a chat stops at is known to llama.cpp, whatever EOS is.
        for turn_end in ("<|eot_id|>", "<|im_end|>"):
            if turn_end in hf.get_vocab():
                assert llm.metadata["tokenizer.ggml.eot_token_id"] == str(hf.convert_tokens_to_ids(turn_end))
        # A special token in the text is one id for llama.cpp (special=True), as for transformers.
        special = hf.eos_token
        assert llm.tokenize(special.encode(), add_bos=False, special=True) == [hf.eos_token_id]
    assert fixture != "tiny_llama" or hf_adds_bos  # the fixtures do cover both behaviours
    assert fixture != "tiny_qwen2" or not hf_adds_bos


def llama_cpp_render(llm: Any, messages: list[dict[str, str]]) -> str:
    """The prompt llama-cpp-python builds from the GGUF's chat template, as Llama.__init__ sets it up."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    return formatter(messages=messages).prompt


@pytest.mark.parametrize("fixture", ALL_VOCABS)
def test_chat_template_round_trip(request: pytest.FixtureRequest, exported: Any, fixture: str) -> None:
    model_dir = request.getfixturevalue(fixture)
    hf = hf_tokenizer(model_dir)
    with llama(exported(model_dir, "f16"), vocab_only=True) as llm:
        assert llm.metadata["tokenizer.chat_template"] == hf.chat_template
        rendered = llama_cpp_render(llm, CONVERSATION)
        assert rendered == hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
        # ... and the rendered prompt becomes the same ids (special tokens parsed) on both sides.
        assert (
            llm.tokenize(rendered.encode(), add_bos=False, special=True)
            == hf(rendered, add_special_tokens=False)["input_ids"]
        )


def test_chat_template_override_is_stored_exactly(tiny_qwen2: Path, tmp_path: Path) -> None:
    import gguf

    template = (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    )
    assert template != hf_tokenizer(tiny_qwen2).chat_template
    path = write_gguf(tiny_qwen2, tmp_path / "m.gguf", chat_template=template, name="my tuned model")
    reader = gguf.GGUFReader(path)
    assert reader.fields["tokenizer.chat_template"].contents() == template
    assert reader.fields["general.name"].contents() == "my tuned model"
    with llama(path, vocab_only=True) as llm:
        want = hf_tokenizer(tiny_qwen2).apply_chat_template(
            CONVERSATION, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert llama_cpp_render(llm, CONVERSATION) == want


def test_progress_reports_reach_the_total(tiny_qwen3: Path, tmp_path: Path) -> None:
    events = []
    write_gguf(tiny_qwen3, tmp_path / "m.gguf", progress=Progress(events.append, min_interval=0))
    assert events[0].done == 0 and events[-1].done == events[-1].total > 0
    assert {e.stage for e in events} == {"Writing GGUF"}


# --------------------------------------------------------------------------------------------------------
# Refusals and failures
# --------------------------------------------------------------------------------------------------------


def test_unsupported_architecture_names_the_supported_ones(tiny_llama: Path, tmp_path: Path) -> None:
    from slowtune.models import architectures

    assert SUPPORTED_ARCHITECTURES is architectures.SUPPORTED_ARCHITECTURES  # one table for every stage
    model_dir = copy_model(tiny_llama, tmp_path / "neox")
    edit_json(model_dir / "config.json", lambda c: c.update(model_type="gpt_neox"))
    with pytest.raises(ExportError, match=r"config\.json: model_type 'gpt_neox'") as info:
        write_gguf(model_dir, tmp_path / "out.gguf")
    assert all(arch in str(info.value) for arch in SUPPORTED_ARCHITECTURES)
    assert {"gemma2", "gemma3_text", "phi3", "smollm3"} <= set(SUPPORTED_ARCHITECTURES)
    assert not (tmp_path / "out.gguf").exists()


def test_missing_tokenizer_json(tiny_qwen2: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_qwen2, tmp_path / "no-tokenizer")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match=r"tokenizer\.json is missing") as info:
        write_gguf(model_dir, tmp_path / "out.gguf")
    assert str(model_dir) in str(info.value)


def test_mlx_quantised_folder_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_llama, tmp_path / "q4")
    edit_json(model_dir / "config.json", lambda c: c.update(quantization={"group_size": 64, "bits": 4}))
    with pytest.raises(ExportError, match="quantised model folder") as info:
        write_gguf(model_dir, tmp_path / "out.gguf")
    assert "config.json" in str(info.value)


def test_unknown_pre_tokenizer_is_refused(tiny_qwen2: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_qwen2, tmp_path / "odd-regex")

    def change(tokenizer: dict[str, Any]) -> None:
        tokenizer["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}+|\s+|."

    edit_json(model_dir / "tokenizer.json", change)
    with pytest.raises(ExportError, match=r"llama\.cpp") as info:
        write_gguf(model_dir, tmp_path / "out.gguf")
    assert "pre-tokenizer" in str(info.value) and "tokenizer.json" in str(info.value)


def test_unsupported_rope_scaling_is_refused(tiny_llama: Path, tmp_path: Path) -> None:
    model_dir = copy_model(tiny_llama, tmp_path / "dynamic")
    edit_json(model_dir / "config.json", lambda c: c.update(rope_scaling={"type": "dynamic", "factor": 2.0}))
    with pytest.raises(ExportError, match="'dynamic'"):
        write_gguf(model_dir, tmp_path / "out.gguf")


def test_unknown_out_type(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"q4_k_m.*f32, f16, bf16"):
        write_gguf(tiny_llama, tmp_path / "out.gguf", out_type="q4_k_m")


def test_not_enough_disk_space(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir = tmp_path / "exports"
    monkeypatch.setattr(gguf_writer, "_free_disk_bytes", lambda folder: 5_000_000)
    with pytest.raises(ExportError, match="not enough free disk space") as info:
        write_gguf(tiny_llama, out_dir / "out.gguf")
    assert str(out_dir) in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_failure_midway_leaves_no_partial_file(
    tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model.gguf"
    out.write_bytes(b"the previous export")
    convert = gguf_writer._convert
    calls = []

    def failing_convert(planned: Any) -> np.ndarray:
        calls.append(planned.name)
        if len(calls) == 6:
            raise OSError("disk unplugged")
        return convert(planned)

    monkeypatch.setattr(gguf_writer, "_convert", failing_convert)
    with pytest.raises(OSError, match="disk unplugged"):
        write_gguf(tiny_llama, out)
    assert out.read_bytes() == b"the previous export"  # the old file is untouched...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]  # ...and no temporary is left


def test_float16_overflow_is_refused_and_bf16_is_suggested(tiny_qwen3: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    model_dir = copy_model(tiny_qwen3, tmp_path / "huge-weight")
    weights = load_file(model_dir / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][3, 7] = 1e6
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    out_dir = tmp_path / "out"
    with pytest.raises(ExportError, match=r"blk\.1\.ffn_up\.weight.*float16.*bf16"):
        write_gguf(model_dir, out_dir / "m.gguf", out_type="f16")
    assert list(out_dir.iterdir()) == []
    assert write_gguf(model_dir, out_dir / "m.gguf", out_type="bf16").is_file()


def test_cancel_leaves_no_file(tiny_qwen2: Path, tmp_path: Path) -> None:
    progress = Progress(min_interval=0)
    progress.add_listener(lambda event: progress.cancel() if event.done > 0 else None)
    with pytest.raises(Cancelled):
        write_gguf(tiny_qwen2, tmp_path / "model.gguf", progress=progress)
    assert list(tmp_path.iterdir()) == []
