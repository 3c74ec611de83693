"""The LoRA GGUF: llama.cpp applying the adapter file to the base GGUF must compute what MLX computed in training.

Fast tests check the file itself on made-up adapters (metadata llama.cpp reads, tensor names, the factors
transposed into llama.cpp's layout, lora_b's q/k rows permuted like the base GGUF's) and the refusals. Slow
tests train a tiny adapter per architecture and compare in llama.cpp: base GGUF + LoRA GGUF against MLX
base + adapter and against the fused F16 GGUF (the export's margin rule), base GGUF alone (the adapter must
matter), a deliberately unpermuted adapter (the permutation must matter), and `slowtune export --lora-only`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slowtune.export import lora_gguf
from slowtune.export.gguf_writer import ExportError
from slowtune.export.lora_gguf import write_lora_gguf
from slowtune.progress import Cancelled, Progress

KEYS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}
QA = [("What is the capital of Zorbia?", "The capital of Zorbia is Quillford."),
      ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild.")]


# --- helpers ----------------------------------------------------------------------------------------------


def _shapes(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted linear, from a Hugging Face config."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    q, kv, inter = heads * head_dim, config["num_key_value_heads"] * head_dim, config["intermediate_size"]
    return {"self_attn.q_proj": (q, hidden), "self_attn.k_proj": (kv, hidden), "self_attn.v_proj": (kv, hidden),
            "self_attn.o_proj": (hidden, q), "mlp.gate_proj": (inter, hidden), "mlp.up_proj": (inter, hidden),
            "mlp.down_proj": (hidden, inter)}


def make_adapter(dest: Path, base: Path, *, rank: int = 4, scale: float = 2.0, layers: int | None = None,
                 hidden: int | None = None, model_type: str | None = "from base", seed: int = 0,
                 keys: tuple[str, ...] = KEYS) -> tuple[Path, dict[str, np.ndarray]]:
    """A made-up adapter in mlx-lm's layout for `base` (random lora_a (in, r) and lora_b (r, out))."""
    from safetensors.numpy import save_file

    config = json.loads((base / "config.json").read_text())
    if hidden is not None:
        config = {**config, "hidden_size": hidden, "head_dim": hidden // config["num_attention_heads"]}
    n_layers = layers if layers is not None else config["num_hidden_layers"]
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for i in range(n_layers):
        for key in keys:
            out_dim, in_dim = _shapes(config)[key]
            tensors[f"model.layers.{i}.{key}.lora_a"] = rng.normal(0, 0.1, (in_dim, rank)).astype(np.float32)
            tensors[f"model.layers.{i}.{key}.lora_b"] = rng.normal(0, 0.1, (rank, out_dim)).astype(np.float32)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "adapters.safetensors"))
    adapter_config: dict[str, Any] = {
        "fine_tune_type": "lora", "num_layers": n_layers,
        "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": list(keys)},
        "base_model": str(base),
    }
    if model_type is not None:
        adapter_config["model_type"] = config["model_type"] if model_type == "from base" else model_type
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config))
    return dest, tensors


def hf_to_llama_rows(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order, written out independently of the writer: per head, row 2i is HF's row i and
    row 2i+1 is HF's row i + head_dim/2."""
    head_dim = rows // heads
    order = []
    for h in range(heads):
        for i in range(head_dim // 2):
            order += [h * head_dim + i, h * head_dim + i + head_dim // 2]
    return np.array(order)


def read_gguf(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    return fields, {t.name: np.array(t.data) for t in reader.tensors}


def assert_same_tensors(a: Path, b: Path) -> None:
    got, want = read_gguf(a)[1], read_gguf(b)[1]
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def no_leftovers(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if "partial" in p.name or p.name.startswith(".")]


# --- the file ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_mistral", "tiny_qwen2"])
def test_the_file_is_the_adapter_in_llama_cpp_layout(fixture: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    base: Path = request.getfixturevalue(fixture)
    config = json.loads((base / "config.json").read_text())
    adapter, tensors = make_adapter(tmp_path / "adapter", base, rank=4, scale=2.5)
    out = write_lora_gguf(adapter, base, tmp_path / "out" / "model-lora.gguf")
    assert out == tmp_path / "out" / "model-lora.gguf" and no_leftovers(out.parent)
    fields, written = read_gguf(out)
    # What llama-adapter.cpp checks, and alpha / rank == mlx-lm's scale.
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}[
        config["model_type"]]
    assert fields["adapter.lora.alpha"] == pytest.approx(2.5 * 4)
    assert len(written) == len(tensors)

    permuted = config["model_type"] in ("llama", "mistral")
    for name, a in tensors.items():
        if not name.endswith(".lora_a"):
            continue
        module = name.removesuffix(".lora_a")
        layer, key = module.split(".")[2], module.split(".", 3)[3]
        gguf_name = f"blk.{layer}.{GGUF_NAMES[key]}.weight"
        b = tensors[f"{module}.lora_b"]
        got_a, got_b = written[f"{gguf_name}.lora_a"], written[f"{gguf_name}.lora_b"]
        assert got_a.dtype == np.float32 and got_a.shape == (4, a.shape[0])  # ggml [in, r]
        np.testing.assert_array_equal(got_a, a.T)
        want_b = b.T  # ggml [r, out]
        if permuted and key in ("self_attn.q_proj", "self_attn.k_proj"):
            heads = config["num_attention_heads"] if key == "self_attn.q_proj" else config["num_key_value_heads"]
            want_b = want_b[hf_to_llama_rows(b.shape[1], heads)]
            assert not np.array_equal(want_b, b.T)
        np.testing.assert_array_equal(got_b, want_b)


def test_update_equals_the_base_gguf_rows_of_the_fused_delta(tiny_llama: Path, tmp_path: Path) -> None:
    # llama.cpp adds (alpha / r) * lora_b @ lora_a to the base GGUF's tensor: that must be the GGUF rows of
    # mlx-lm's scale * (lora_a @ lora_b).T, i.e. the fused weight's change, permuted like the base's q/k.
    adapter, tensors = make_adapter(tmp_path / "adapter", tiny_llama, rank=8, scale=0.75)
    fields, written = read_gguf(write_lora_gguf(adapter, tiny_llama, tmp_path / "lora.gguf"))
    alpha = fields["adapter.lora.alpha"]
    a, b = tensors["model.layers.1.self_attn.k_proj.lora_a"], tensors["model.layers.1.self_attn.k_proj.lora_b"]
    delta_hf = 0.75 * (a @ b).T  # (out, in)
    got = (alpha / 8) * written["blk.1.attn_k.weight.lora_b"] @ written["blk.1.attn_k.weight.lora_a"]
    np.testing.assert_allclose(got, delta_hf[hf_to_llama_rows(delta_hf.shape[0], 2)], rtol=1e-5, atol=1e-7)


def test_a_partial_adapter_and_bfloat16_factors(tiny_qwen2: Path, tmp_path: Path) -> None:
    # Some layers only, attention only, stored as bfloat16 (a bf16 compute dtype): all written as float32.
    adapter, tensors = make_adapter(tmp_path / "adapter", tiny_qwen2, layers=2,
                                    keys=("self_attn.q_proj", "self_attn.v_proj"))
    as_bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in tensors.items()}
    header = {k: {"dtype": "BF16", "shape": list(v.shape)} for k, v in as_bf16.items()}
    raw = b"".join(v.tobytes() for v in as_bf16.values())
    offsets, start = {}, 0
    for k, v in as_bf16.items():
        offsets[k] = [start, start + v.nbytes]
        start += v.nbytes
    blob = json.dumps({k: {**header[k], "data_offsets": offsets[k]} for k in as_bf16}).encode()
    (adapter / "adapters.safetensors").write_bytes(len(blob).to_bytes(8, "little") + blob + raw)
    _, written = read_gguf(write_lora_gguf(adapter, tiny_qwen2, tmp_path / "lora.gguf"))
    assert sorted(written) == sorted(f"blk.{i}.{n}.weight.{p}" for i in (0, 1) for n in ("attn_q", "attn_v")
                                     for p in ("lora_a", "lora_b"))
    want = (as_bf16["model.layers.1.self_attn.v_proj.lora_a"].astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(written["blk.1.attn_v.weight.lora_a"], want.T)


def test_cancel_leaves_no_file(tiny_llama: Path, tmp_path: Path) -> None:
    adapter, _ = make_adapter(tmp_path / "adapter", tiny_llama)
    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel())
    out = tmp_path / "out" / "lora.gguf"
    with pytest.raises(Cancelled):
        write_lora_gguf(adapter, tiny_llama, out, progress=progress)
    assert not out.exists() and no_leftovers(out.parent)


# --- refusals ---------------------------------------------------------------------------------------------


def test_an_adapter_from_another_base_is_refused_naming_both(tiny_llama: Path, tiny_qwen2: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out" / "lora.gguf"
    qwen_adapter, _ = make_adapter(tmp_path / "qwen-adapter", tiny_qwen2)
    with pytest.raises(ExportError) as info:
        write_lora_gguf(qwen_adapter, tiny_llama, out)
    message = str(info.value)
    assert str(qwen_adapter) in message and str(tiny_llama) in message and "'qwen2'" in message

    # Same model type, other shapes (a smaller llama), and no model_type to tell: the shapes refuse it.
    small, _ = make_adapter(tmp_path / "small-adapter", tiny_llama, hidden=128, model_type=None)
    with pytest.raises(ExportError) as info:
        write_lora_gguf(small, tiny_llama, out)
    message = str(info.value)
    assert str(small) in message and str(tiny_llama) in message and "different base model" in message
    assert "model.layers.0." in message and "128" in message

    # More layers than the base has.
    deep, _ = make_adapter(tmp_path / "deep-adapter", tiny_llama, layers=6)
    with pytest.raises(ExportError, match=r"model\.layers\.[45]\..*has no place"):
        write_lora_gguf(deep, tiny_llama, out)
    assert not out.parent.exists() or no_leftovers(out.parent)


def test_unsupported_bases_and_adapters_are_refused(tiny_llama: Path, tmp_path: Path) -> None:
    adapter, _ = make_adapter(tmp_path / "adapter", tiny_llama, model_type=None)
    out = tmp_path / "lora.gguf"
    other = tmp_path / "gemma"
    other.mkdir()
    config = json.loads((tiny_llama / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    with pytest.raises(ExportError, match=r"'gemma'.*llama, mistral, qwen2, qwen3"):
        write_lora_gguf(adapter, other, out)

    dora = tmp_path / "dora"
    shutil.copytree(adapter, dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**cfg, "fine_tune_type": "dora"}))
    with pytest.raises(ExportError, match="only LoRA adapters"):
        write_lora_gguf(dora, tiny_llama, out)

    from safetensors.numpy import save_file

    half = tmp_path / "half"
    shutil.copytree(adapter, half)
    save_file({"model.layers.0.self_attn.q_proj.lora_a": np.zeros((256, 4), np.float32)},
              str(half / "adapters.safetensors"))
    with pytest.raises(ExportError, match=r"q_proj\.lora_b is missing"):
        write_lora_gguf(half, tiny_llama, out)
    assert not out.exists()


def test_missing_files_are_named(tiny_llama: Path, tmp_path: Path) -> None:
    adapter, _ = make_adapter(tmp_path / "adapter", tiny_llama)
    out = tmp_path / "lora.gguf"
    with pytest.raises(ExportError, match="adapter folder not found"):
        write_lora_gguf(tmp_path / "nowhere", tiny_llama, out)
    with pytest.raises(ExportError, match="base model folder not found"):
        write_lora_gguf(adapter, tmp_path / "no-base", out)
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    with pytest.raises(ExportError, match=r"config\.json is missing"):
        write_lora_gguf(adapter, no_config, out)
    for missing in ("adapters.safetensors", "adapter_config.json"):
        broken = tmp_path / f"without-{missing}"
        shutil.copytree(adapter, broken)
        (broken / missing).unlink()
        with pytest.raises(ExportError, match=re.escape(f"{missing} is missing")):
            write_lora_gguf(broken, tiny_llama, out)
    assert not out.exists()


def _export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "export", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


def test_cli_lora_only_refuses_with_clear_messages(tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path) -> None:
    adapter, _ = make_adapter(tmp_path / "adapter", tiny_llama)
    wrong_base = _export(str(adapter), "--lora-only", "--model", str(tiny_qwen2), "--out", str(tmp_path / "a"))
    assert wrong_base.returncode == 1
    assert str(adapter) in wrong_base.stderr and str(tiny_qwen2) in wrong_base.stderr
    no_base = _export(str(adapter), "--lora-only", "--no-base", "--out", str(tmp_path / "b"))
    assert no_base.returncode == 1 and "--no-base" in no_base.stderr
    for result in (wrong_base, no_base):
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "a" / "base-F16.gguf").exists()  # refused before the (long) base export


# --- llama.cpp against MLX, with trained adapters ----------------------------------------------------------


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny adapter trained on the arch's tiny model, the GGUFs (base, fused, LoRA) and the MLX references."""
    from slowtune.dataset import write_jsonl
    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.pipeline import verification_prompts
    from slowtune.export.verify import mlx_reference
    from slowtune.store import Project
    from slowtune.train.config import LoraConfig, TrainConfig
    from slowtune.train.trainer import run_training

    arch = request.param
    base: Path = request.getfixturevalue(f"tiny_{arch}")
    root = tmp_path_factory.mktemp(f"lora-{arch}")
    write_jsonl([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA],
                root / "data" / "train.jsonl")
    Project.create(root / "project").close()
    cfg = TrainConfig(model=str(base), data=str(root / "data"), lora=LoraConfig(rank=8, alpha=16.0),
                      max_seq_len=96, batch_size=2, iters=25, learning_rate=1e-3, warmup=2, val_every=0, save_every=0,
                      replay=0.0, score_every=0)
    run = root / "run"
    run_training(cfg, run, engine="memory", project=root / "project")
    prompts = verification_prompts(base, run)
    return {
        "arch": arch, "base": base, "run": run, "project": root / "project", "root": root, "prompts": prompts,
        "base_gguf": write_gguf(fuse(base, None, root / "base"), root / "base-F16.gguf", out_type="f16"),
        "fused_gguf": write_gguf(fuse(base, run, root / "fused"), root / "model-F16.gguf", out_type="f16"),
        "lora_gguf": write_lora_gguf(run, base, root / "model-lora.gguf"),
        "mlx": mlx_reference(base, run, prompts),
        "mlx_base": mlx_reference(base, None, prompts),
    }


@pytest.mark.slow
def test_lora_on_base_gguf_behaves_like_the_trained_model(trained: dict[str, Any]) -> None:
    from slowtune.export.verify import adapter_changed_model, compare, llama_reference

    prompts = trained["prompts"]
    with_lora = llama_reference(trained["base_gguf"], prompts, lora=trained["lora_gguf"])
    fused = llama_reference(trained["fused_gguf"], prompts)
    base_only = llama_reference(trained["base_gguf"], prompts)
    assert adapter_changed_model(trained["mlx_base"], trained["mlx"]) > 0.1  # the adapter was trained

    # Against MLX base + adapter, and against the fused F16 export: the export's margin rule.
    for reference, label in ((trained["mlx"], "MLX"), (fused, "fused F16 GGUF")):
        check = compare(reference, with_lora, file="model-lora.gguf", quant="F16")
        print(f"{trained['arch']}: LoRA GGUF vs {label}: {check.notes[0]}; max logit diff "
              f"{check.max_logit_diff:.2e} of {check.logit_scale:.1f}; greedy {check.greedy_matches}/"
              f"{check.greedy_prompts}")
        assert check.passed and check.positions >= 20, check.notes
        assert check.greedy_matches == check.greedy_prompts
    # The base GGUF alone is another model: the adapter file really changes llama.cpp's output.
    alone = compare(trained["mlx"], base_only, file="base-F16.gguf", quant="F16")
    assert not alone.passed and alone.top1_agreement < 0.5
    assert adapter_changed_model(base_only, with_lora) > 0.1


@pytest.mark.slow
def test_the_q_k_permutation_is_needed(trained: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.export.verify import compare, llama_reference

    # A writer that forgets to permute lora_b's q/k rows.
    monkeypatch.setattr(lora_gguf, "_rope_permutation", lambda rows, heads, name: np.arange(rows))
    unpermuted = write_lora_gguf(trained["run"], trained["base"], trained["root"] / "unpermuted-lora.gguf")
    got = llama_reference(trained["base_gguf"], trained["prompts"], lora=unpermuted)
    check = compare(trained["mlx"], got, file=unpermuted.name, quant="F16")
    print(f"{trained['arch']}: unpermuted LoRA GGUF: {check.notes[0]}")
    if trained["arch"] == "llama":
        assert not check.passed and check.top1_agreement < 0.9 and check.max_logit_diff > 1.0
    else:  # qwen2's rope rotates halves in llama.cpp too: nothing is permuted, in the base or the adapter
        assert check.passed
        assert_same_tensors(unpermuted, trained["lora_gguf"])


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["llama"], indirect=True)  # the same path for every architecture
def test_cli_lora_only_end_to_end(trained: dict[str, Any], tmp_path: Path) -> None:
    from slowtune.store import Project

    export_dir = tmp_path / "export"
    out = _export(str(trained["run"]), "--lora-only", "--out", str(export_dir), "--name", "zorbia", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    files = {k: Path(v) for k, v in summary["files"].items()}
    assert files == {"base-F16": export_dir / "base-F16.gguf", "LoRA": export_dir / "zorbia-lora.gguf"}
    [check] = summary["verification"]
    assert check["quant"] == "LoRA" and check["required"] and check["passed"]
    assert check["top1_agreement"] >= 0.99 and check["positions"] >= 20
    assert check["notes"][0].startswith("LoRA on base-F16.gguf: top-1 agreement")
    assert summary["adapter_effect"] > 0.1
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "Modelfile", "README.md", "base-F16.gguf", "export.json", "zorbia-lora.gguf"]
    modelfile = (export_dir / "Modelfile").read_text().splitlines()
    assert modelfile[1:3] == ["FROM ./base-F16.gguf", "ADAPTER ./zorbia-lora.gguf"]
    readme = (export_dir / "README.md").read_text()
    assert "llama-cli -m base-F16.gguf --lora zorbia-lora.gguf" in readme and "ADAPTER" in readme
    fields, _ = read_gguf(files["LoRA"])
    assert fields["general.type"] == "adapter"
    with Project.open(trained["project"]) as p:
        rows = p.conn.execute("SELECT quant, verified FROM exports").fetchall()
    assert {r["quant"]: r["verified"] for r in rows} == {"base-F16": 0, "LoRA": 1}


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["llama"], indirect=True)  # only llama-family models permute q/k
def test_a_wrong_lora_fails_the_lora_only_export(trained: dict[str, Any], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.export.pipeline import export_lora_only
    from slowtune.export.verify import VerificationError

    monkeypatch.setattr(lora_gguf, "_rope_permutation", lambda rows, heads, name: np.arange(rows))
    with pytest.raises(VerificationError, match="LoRA GGUF on the base GGUF does not behave"):
        export_lora_only(trained["run"], tmp_path / "export", ollama=False)
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["verification"][0]["passed"] is False
