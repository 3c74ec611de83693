"""The GGUF export of Gemma 2, Gemma 3 (text-only), Phi-3 and SmolLM3: llama.cpp must compute slowtune's logits.

The reference is slowtune's own forward pass (``verify.streamed_reference``: the streamed engine, block by block,
float32), which applies what each family needs around the blocks (Gemma's embedding scale, sliding-window masks and
logit soft-cap, Phi-3's LongRoPE with the short factors). Each tiny model is exported and run in llama.cpp on 80 tokens
of real text, longer than the tiny Gemma models' 16-token sliding window, and compared by the export check's own
rule (``verify.compare``). Then each thing the writer does for a family is undone on purpose (Gemma's norm weights
plus one, the sliding window, Phi-3's rope factors and gate/up order, SmolLM3's rope-less layers and q/k
permutation) and the same comparison must fail, so the tests above can fail. Then LoRA GGUFs: llama.cpp applying
the adapter to the base GGUF computes what the fused model computes, per family. Then settings llama.cpp cannot
follow, refused before anything is written.

Gemma's F32 figures are ~2e-4, not ~1e-6: llama.cpp's CPU GELU looks its values up in a float16 table.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slowtune.export import gguf_writer, lora_gguf
from slowtune.export.gguf_writer import ExportError, write_gguf
from slowtune.export.lora_gguf import write_lora_gguf
from slowtune.models.architectures import lora_keys
from slowtune.models.gguf_spec import check_exportable
from slowtune.testing import tiny_models

FAMILIES = ["gemma2", "gemma3_text", "phi3", "smollm3"]
GGUF_ARCH = {"gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3", "smollm3": "smollm3"}
N_TOKENS = 80  # > the tiny Gemma models' sliding window of 16
# max |logit difference| / max |logit| allowed for an F32 file: Gemma's GELU runs through a float16 table in llama.cpp.
F32_ERROR = {"gemma2": 1e-3, "gemma3_text": 1e-3, "phi3": 1e-5, "smollm3": 1e-5}
LORA_KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
             "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


# --- helpers ----------------------------------------------------------------------------------------------


def tiny(request: pytest.FixtureRequest, family: str) -> Path:
    return request.getfixturevalue(f"tiny_{family}")


def sample_ids(model_dir: Path, n: int = N_TOKENS) -> list[int]:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_dir)(tiny_models.corpus_text()[:5000])["input_ids"]
    assert len(ids) >= n
    return ids[:n]


def reference(model_dir: Path, ids: list[int], adapter: Path | None = None) -> np.ndarray:
    from slowtune.export.verify import streamed_reference

    return streamed_reference(model_dir, adapter, [ids])[0]


def llama_cpp_logits(gguf_path: Path, ids: list[int], lora: Path | None = None) -> np.ndarray:
    from slowtune.llama import load_gguf

    llm = load_gguf(gguf_path, n_ctx=256, logits_all=True, lora_path=lora, exact=True)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def check(ref: np.ndarray, got: np.ndarray, quant: str, label: str) -> Any:
    """The export check's comparison (near-ties set aside for top-1), with its figures printed."""
    from slowtune.export.verify import compare

    result = compare(([ref], [[]]), ([got], [[]]), file=label, quant=quant)
    print(f"{label}: top-1 {result.top1_agreement:.3f} ({result.positions} positions), all {result.top1_all:.3f}, "
          f"max logit error {result.max_logit_error:.2e} of {result.logit_scale:.2f}")
    return result


@pytest.fixture(scope="module")
def references() -> Callable[[Path], tuple[list[int], np.ndarray]]:
    """reference(model_dir) -> (token ids, slowtune's logits), computed once per folder."""
    cache: dict[Path, tuple[list[int], np.ndarray]] = {}

    def get(model_dir: Path) -> tuple[list[int], np.ndarray]:
        if model_dir not in cache:
            ids = sample_ids(model_dir)
            cache[model_dir] = (ids, reference(model_dir, ids))
        return cache[model_dir]

    return get


def copy_model(src: Path, dest: Path, change: Callable[[dict[str, Any]], None] | None = None) -> Path:
    shutil.copytree(src, dest)
    if change is not None:
        config = json.loads((dest / "config.json").read_text())
        change(config)
        (dest / "config.json").write_text(json.dumps(config))
    return dest


def with_hparams(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Make the writer get these settings wrong (for the tests that the comparison catches it)."""
    right = gguf_writer.read_hparams
    monkeypatch.setattr(gguf_writer, "read_hparams", lambda c, p: dataclasses.replace(right(c, p), **changes))


def gate_up_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    right = gguf_writer._plan_tensors

    def plan(*args: Any) -> list[Any]:
        out = []
        for p in right(*args):
            if p.name.endswith("ffn_up.weight"):
                n = p.shape[0] // 2
                p = dataclasses.replace(p, row_order=np.concatenate([np.arange(n, 2 * n), np.arange(n)]))
            out.append(p)
        return out

    monkeypatch.setattr(gguf_writer, "_plan_tensors", plan)


def make_adapter(dest: Path, base: Path, *, rank: int = 4, scale: float = 2.0, seed: int = 0) -> Path:
    """A made-up adapter in mlx-lm's layout on every linear of `base` (the fused ones for Phi-3)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    config = json.loads((base / "config.json").read_text())
    keys = lora_keys(config["model_type"], LORA_KEYS)
    rng = np.random.default_rng(seed)
    tensors = {}
    with safe_open(str(base / "model.safetensors"), "np") as weights:
        for i in range(config["num_hidden_layers"]):
            for key in keys:
                out_dim, in_dim = weights.get_slice(f"model.layers.{i}.{key}.weight").get_shape()
                tensors[f"model.layers.{i}.{key}.lora_a"] = rng.normal(0, 0.1, (in_dim, rank)).astype(np.float32)
                tensors[f"model.layers.{i}.{key}.lora_b"] = rng.normal(0, 0.1, (rank, out_dim)).astype(np.float32)
    dest.mkdir(parents=True)
    save_file(tensors, str(dest / "adapters.safetensors"))
    (dest / "adapter_config.json").write_text(json.dumps({
        "fine_tune_type": "lora", "num_layers": config["num_hidden_layers"], "model_type": config["model_type"],
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": list(keys)},
    }))
    return dest


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(path)
    return ({name: f.contents() for name, f in reader.fields.items()},
            {t.name: np.array(t.data) for t in reader.tensors})


# --- logits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("out_type", ["f32", "f16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_llama_cpp_computes_slowtunes_logits(request: pytest.FixtureRequest, references: Any, tmp_path: Path,
                                             family: str, out_type: str) -> None:
    model_dir = tiny(request, family)
    ids, ref = references(model_dir)
    path = write_gguf(model_dir, tmp_path / f"{family}-{out_type}.gguf", out_type=out_type)
    result = check(ref, llama_cpp_logits(path, ids), out_type.upper(), f"{family} {out_type}")
    assert result.top1_agreement == 1.0 and result.positions >= N_TOKENS // 2
    assert result.max_logit_error <= (F32_ERROR[family] if out_type == "f32" else 1e-2)
    assert result.passed


WRONG = {
    "gemma2, norms without the +1": ("gemma2", {"norm_offset": 0.0}),
    "gemma2, sliding window left out": ("gemma2", {"sliding_window": None}),
    "gemma3, norms without the +1": ("gemma3_text", {"norm_offset": 0.0}),
    "gemma3, llama.cpp's default pattern (6)": ("gemma3_text", {"sliding_pattern": None}),
    "gemma3, sliding window left out": ("gemma3_text", {"sliding_window": None}),
    "phi3, no LongRoPE factors": ("phi3", {"rope_scaling": None}),
    "phi3, gate and up swapped": ("phi3", "gate_up_swapped"),
    "smollm3, written as a llama (rope in every layer)": ("smollm3", {"gguf_arch": "llama"}),
    "smollm3, q/k not permuted": ("smollm3", {"permute_qk": False}),
}


@pytest.mark.parametrize("wrong", list(WRONG))
def test_the_comparison_catches_a_wrong_export(request: pytest.FixtureRequest, references: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, wrong: str) -> None:
    family, changes = WRONG[wrong]
    model_dir = tiny(request, family)
    ids, ref = references(model_dir)
    if changes == "gate_up_swapped":
        gate_up_swapped(monkeypatch)
    else:
        with_hparams(monkeypatch, **changes)
    path = write_gguf(model_dir, tmp_path / "wrong.gguf", out_type="f32")
    result = check(ref, llama_cpp_logits(path, ids), "F32", wrong)
    assert result.max_logit_error > 0.05 and not result.passed


def test_gemma3_local_rope_base_and_linear_rope_scaling(tiny_gemma3_text: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The tiny model's local base is llama.cpp's default (10000): here one that is not, and Gemma 3 4B's linear
    # scaling (global layers only).
    def change(config: dict[str, Any]) -> None:
        config.update(rope_local_base_freq=1000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})

    model_dir = copy_model(tiny_gemma3_text, tmp_path / "gemma3", change)
    ids = sample_ids(model_dir)
    ref = reference(model_dir, ids)
    right = check(ref, llama_cpp_logits(write_gguf(model_dir, tmp_path / "right.gguf", out_type="f32"), ids), "F32",
                  "gemma3 local base 1000, linear x4")
    assert right.top1_agreement == 1.0 and right.max_logit_error <= F32_ERROR["gemma3_text"]
    fields, _ = read_gguf(tmp_path / "right.gguf")
    assert fields["gemma3.rope.freq_base_swa"] == 1000.0 and fields["gemma3.rope.scaling.factor"] == 4.0
    for label, changes in (("no local base", {"rope_theta_swa": None}), ("no scaling", {"rope_scaling": None})):
        with monkeypatch.context() as m:
            with_hparams(m, **changes)
            path = write_gguf(model_dir, tmp_path / "wrong.gguf", out_type="f32")
        wrong = check(ref, llama_cpp_logits(path, ids), "F32", f"gemma3, {label}")
        assert wrong.max_logit_error > 0.05 and not wrong.passed


@pytest.mark.parametrize("family", FAMILIES)
def test_what_each_family_writes(request: pytest.FixtureRequest, tmp_path: Path, family: str) -> None:
    from safetensors.numpy import load_file

    model_dir = tiny(request, family)
    config = json.loads((model_dir / "config.json").read_text())
    source = load_file(str(model_dir / "model.safetensors"))
    fields, tensors = read_gguf(write_gguf(model_dir, tmp_path / "m.gguf", out_type="f32"))
    arch = GGUF_ARCH[family]
    assert fields["general.architecture"] == arch
    assert "output.weight" not in tensors  # all four tiny models tie the output to the embedding
    norm, embed = source["model.layers.1.input_layernorm.weight"], source["model.embed_tokens.weight"]
    np.testing.assert_array_equal(tensors["token_embd.weight"], embed)
    if family in ("gemma2", "gemma3_text"):
        # llama.cpp multiplies by the norm weight, Gemma by 1 + weight.
        np.testing.assert_array_equal(tensors["blk.1.attn_norm.weight"], norm + 1)
        np.testing.assert_array_equal(tensors["output_norm.weight"], source["model.norm.weight"] + 1)
        np.testing.assert_array_equal(tensors["blk.1.post_ffw_norm.weight"],
                                      source["model.layers.1.post_feedforward_layernorm.weight"] + 1)
        assert fields[f"{arch}.attention.sliding_window"] == 16
        assert fields[f"{arch}.attention.sliding_window_pattern"] == config.get("sliding_window_pattern", 2)
        assert fields[f"{arch}.attention.key_length"] == config["head_dim"]
    else:
        np.testing.assert_array_equal(tensors["blk.1.attn_norm.weight"], norm)
    if family == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == 50.0 and fields["gemma2.final_logit_softcapping"] == 30.0
    if family == "gemma3_text":
        np.testing.assert_array_equal(tensors["blk.1.attn_q_norm.weight"],
                                      source["model.layers.1.self_attn.q_norm.weight"] + 1)
        assert "gemma3.final_logit_softcapping" not in fields  # the config has none
    if family == "phi3":
        scaling = config["rope_scaling"]
        assert fields["phi3.rope.dimension_count"] == 48  # 0.75 of 64
        np.testing.assert_array_equal(tensors["rope_factors_short.weight"], np.float32(scaling["short_factor"]))
        np.testing.assert_array_equal(tensors["rope_factors_long.weight"], np.float32(scaling["long_factor"]))
        assert fields["phi3.rope.scaling.original_context_length"] == 4096
        assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(np.sqrt(1 + np.log(32) / np.log(4096)))
        np.testing.assert_array_equal(tensors["blk.1.attn_qkv.weight"],
                                      source["model.layers.1.self_attn.qkv_proj.weight"])
        np.testing.assert_array_equal(tensors["blk.1.ffn_up.weight"], source["model.layers.1.mlp.gate_up_proj.weight"])
    if family == "smollm3":
        q = source["model.layers.1.self_attn.q_proj.weight"]
        assert np.array_equal(tensors["blk.1.attn_q.weight"][1], q[32])  # rows of each head interleaved (64 a head)


# --- LoRA -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_gguf_on_the_base_gguf_computes_the_fused_model(request: pytest.FixtureRequest, tmp_path: Path,
                                                             family: str) -> None:
    from slowtune.export.fuse import fuse

    base = tiny(request, family)
    adapter = make_adapter(tmp_path / "adapter", base)
    ids = sample_ids(base)
    ref = reference(base, ids, adapter)  # slowtune's forward pass with the adapter, as trained
    base_gguf = write_gguf(base, tmp_path / "base.gguf", out_type="f32")
    fused_gguf = write_gguf(fuse(base, adapter, tmp_path / "fused", dtype="float32"), tmp_path / "fused.gguf",
                            out_type="f32")
    lora = write_lora_gguf(adapter, base, tmp_path / "lora.gguf")
    with_lora = llama_cpp_logits(base_gguf, ids, lora=lora)
    fused = llama_cpp_logits(fused_gguf, ids)

    tolerance = F32_ERROR[family] * 10  # an adapter's update adds rounding in float32 on both sides
    vs_fused = check(fused, with_lora, "F32", f"{family}: base + LoRA GGUF vs fused GGUF")
    vs_ref = check(ref, with_lora, "F32", f"{family}: base + LoRA GGUF vs slowtune with the adapter")
    assert vs_fused.top1_agreement == 1.0 and vs_fused.max_logit_error <= tolerance
    assert vs_ref.top1_agreement == 1.0 and vs_ref.max_logit_error <= tolerance
    alone = check(ref, llama_cpp_logits(base_gguf, ids), "F32", f"{family}: base GGUF alone")
    assert alone.max_logit_error > 0.1  # the adapter matters


def test_phi3_lora_adapts_the_fused_matrices(tiny_phi3: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", tiny_phi3, rank=4, scale=2.5)
    fields, written = read_gguf(write_lora_gguf(adapter, tiny_phi3, tmp_path / "lora.gguf"))
    assert fields["general.architecture"] == "phi3" and fields["adapter.lora.alpha"] == pytest.approx(10.0)
    assert sorted({n.split(".")[2] for n in written}) == ["attn_output", "attn_qkv", "ffn_down", "ffn_up"]
    assert written["blk.0.attn_qkv.weight.lora_b"].shape == (256 + 2 * 128, 4)  # q, k, v rows, as in the base
    assert written["blk.0.ffn_up.weight.lora_b"].shape == (2 * 512, 4)


def test_smollm3_lora_needs_the_q_k_permutation(tiny_smollm3: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = make_adapter(tmp_path / "adapter", tiny_smollm3)
    ids = sample_ids(tiny_smollm3)
    ref = reference(tiny_smollm3, ids, adapter)
    base_gguf = write_gguf(tiny_smollm3, tmp_path / "base.gguf", out_type="f32")
    monkeypatch.setattr(lora_gguf, "_rope_permutation", lambda rows, heads, name: np.arange(rows))
    unpermuted = write_lora_gguf(adapter, tiny_smollm3, tmp_path / "unpermuted.gguf")
    result = check(ref, llama_cpp_logits(base_gguf, ids, lora=unpermuted), "F32", "smollm3: unpermuted LoRA")
    assert result.max_logit_error > 0.05 and not result.passed


# --- what llama.cpp cannot follow is refused ----------------------------------------------------------------


@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_a_gemma_query_scale_other_than_head_dim_is_refused(request: pytest.FixtureRequest, tmp_path: Path,
                                                            family: str) -> None:
    model_dir = copy_model(tiny(request, family), tmp_path / "model", lambda c: c.update(query_pre_attn_scalar=144))
    for call in (lambda: write_gguf(model_dir, tmp_path / "out.gguf"), lambda: check_exportable(model_dir),
                 lambda: write_lora_gguf(make_adapter(tmp_path / "adapter", model_dir), model_dir,
                                         tmp_path / "lora.gguf")):
        with pytest.raises(ExportError, match=r"config\.json: query_pre_attn_scalar is 144.*1/sqrt\(64\)"):
            call()
    assert not (tmp_path / "out.gguf").exists() and not (tmp_path / "lora.gguf").exists()


@pytest.mark.parametrize(
    ("family", "change", "message"),
    [
        ("smollm3", {"no_rope_layers": [1, 1, 0, 1]}, r"config\.json: SmolLM3 .*no_rope_layers"),
        ("gemma2", {"final_logit_softcapping": None}, r"config\.json: final_logit_softcapping is None"),
        ("gemma3_text", {"attn_logit_softcapping": 50.0}, r"config\.json: attn_logit_softcapping is 50"),
        ("phi3", {"rope_scaling": {"type": "longrope", "short_factor": [1.0] * 32, "long_factor": [1.0] * 32}},
         r"config\.json: rope_scaling\.short_factor has 32 values; the 48 rotated dimensions .* need 24"),
        ("phi3", {"rope_scaling": {"type": "yarn", "factor": 2.0}}, r"config\.json: rope scaling 'yarn'"),
        ("gemma2", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, r"config\.json: rope scaling 'linear'"),
        ("gemma3_text", {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, r"rope scaling 'yarn'.*linear"),
        ("gemma2", {"model_type": "gemma3"}, r"config\.json: .*'gemma3'.*gemma3_text"),
    ],
)
def test_settings_llama_cpp_cannot_follow_are_refused(request: pytest.FixtureRequest, tmp_path: Path, family: str,
                                                      change: dict[str, Any], message: str) -> None:
    model_dir = copy_model(tiny(request, family), tmp_path / "model", lambda c: c.update(change))
    with pytest.raises(ExportError, match=message):
        write_gguf(model_dir, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


# --- the model's name and Phi-3's special tokens -------------------------------------------------------------


def test_the_name_keeps_llama_cpp_tokenizing_like_the_tokenizer(tiny_phi3: Path, tmp_path: Path) -> None:
    """llama.cpp drops the whitespace after special tokens when general.name contains "phi3" or "phi-3" (as Phi-3's
    tokenizer marks its tokens "rstrip"); the name written must give the tokenizer's behaviour."""
    from transformers import AutoTokenizer

    from slowtune.llama import load_gguf

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there!\n"}]

    def same_ids(model_dir: Path, name: str) -> tuple[str, bool]:
        path = write_gguf(model_dir, tmp_path / f"{model_dir.name}.gguf", name=name)
        hf = AutoTokenizer.from_pretrained(model_dir)
        text = hf.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        llm = load_gguf(path, vocab_only=True)
        try:
            got = llm.tokenize(text.encode(), add_bos=False, special=True)
            return llm.metadata["general.name"], got == hf(text, add_special_tokens=False)["input_ids"]
        finally:
            llm.close()

    # The tiny Phi-3 tokenizer keeps the whitespace: a name with "Phi-3" in it must not reach llama.cpp as it is.
    assert same_ids(tiny_phi3, "my-Phi-3.5-tune") == ("my-Phi 3.5-tune", True)
    assert same_ids(tiny_phi3, "zorbia") == ("zorbia", True)
    # Phi-3's own layout: every special token strips, but <unk>, <s> and <|endoftext|>.
    stripping = copy_model(tiny_phi3, tmp_path / "stripping")
    tokenizer = json.loads((stripping / "tokenizer.json").read_text())
    settings = json.loads((stripping / "tokenizer_config.json").read_text())
    for token in [*tokenizer["added_tokens"], *settings["added_tokens_decoder"].values()]:
        token["rstrip"] = token["content"] not in ("<unk>", "<s>", "<|endoftext|>")
    (stripping / "tokenizer.json").write_text(json.dumps(tokenizer))
    (stripping / "tokenizer_config.json").write_text(json.dumps(settings))
    assert same_ids(stripping, "zorbia") == ("zorbia (Phi-3)", True)
    assert same_ids(stripping, "phi3-zorbia") == ("phi3-zorbia", True)
    # ... which the two tokenizers do tokenize differently.
    texts = [AutoTokenizer.from_pretrained(d).apply_chat_template(conversation, tokenize=True,
                                                                  add_generation_prompt=True)
             for d in (tiny_phi3, stripping)]
    assert texts[0] != texts[1]
