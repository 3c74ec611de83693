"""Import a GGUF file (or an Ollama model) as a trainable base: ``slowtune.models.gguf_import``.

Tiny models are written to GGUF by slowtune's own writer (which permutes llama's q/k rows as llama.cpp's converter
does), then imported back: the weights must come back exactly (float32), the tokenizer must tokenize as the original
Hugging Face one and as llama.cpp, and the checks against llama.cpp must pass. Bad files get one clear message and
leave nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from slowtune.export.gguf_writer import write_gguf
from slowtune.export.quantize import quantize
from slowtune.models import gguf_import as gi

STRINGS = [*gi.TOKENIZER_PROBES, "<|im_start|>user\nHi<|im_end|>\n", "1234567 + 89 = ?"]


def _weights(folder: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def _no_partial(root: Path) -> bool:
    return not list(root.rglob(".*partial*"))


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral"])
def test_a_float32_gguf_imports_back_exactly(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    original: Path = request.getfixturevalue(fixture)
    gguf = write_gguf(original, tmp_path / "m-F32.gguf", out_type="f32")
    result = gi.import_gguf(gguf, dest=tmp_path / "imported", dtype="float32")

    folder = Path(result.folder)
    assert folder == tmp_path / "imported" and _no_partial(tmp_path)
    assert result.tokens_equal is True and result.tokenizer_mismatches == []
    assert result.top1_agreement == 1.0 and result.max_logit_error < 1e-3
    # Every tensor back where Hugging Face keeps it, bit for bit (q/k un-permuted for llama).
    ours, theirs = _weights(folder), _weights(original)
    if "lm_head.weight" not in ours:
        theirs.pop("lm_head.weight", None)  # a tied head is written once in GGUF
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        np.testing.assert_array_equal(ours[name], value.astype(np.float32), err_msg=name)

    config, source_config = (json.loads((f / "config.json").read_text()) for f in (folder, original))
    # Mistral (dense) is written to GGUF as llama, as llama.cpp's converter does, and comes back as llama.
    assert config["model_type"] == {"mistral": "llama"}.get(source_config["model_type"], source_config["model_type"])
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "rms_norm_eps", "rope_theta"):
        assert config[key] == pytest.approx(source_config[key]), key
    # The rebuilt tokenizer is the original one in behaviour, and the chat template came along.
    rebuilt, before = _tokenizer(folder), _tokenizer(original)
    for text in STRINGS:
        assert rebuilt.encode(text).ids == before.encode(text).ids, text
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == json.loads((original / "tokenizer_config.json").read_text())["chat_template"]
    record = json.loads((folder / gi.RECORD).read_text())
    assert record["source"] == str(gguf.resolve()) and record["checks"]["top1_agreement"] == 1.0


def test_a_quantised_gguf_imports_and_trains_in_mlx(tiny_llama: Path, tmp_path: Path) -> None:
    f32 = write_gguf(tiny_llama, tmp_path / "m-F32.gguf", out_type="f32")
    q8 = quantize(f32, tmp_path / "m-Q8_0.gguf", "Q8_0")
    result = gi.import_gguf(q8, dest=tmp_path / "imported", dtype="float16")
    assert result.tokens_equal and result.top1_agreement_confident is not None
    assert result.top1_agreement_confident >= gi.MIN_TOP1
    assert result.positions > 100 and 0 <= result.set_aside < result.positions
    assert {v.dtype for v in _weights(tmp_path / "imported").values()} == {np.dtype("float16")}
    # Dequantised weights are close to the originals (Q8_0 keeps about 2-3 significant digits).
    ours, theirs = _weights(tmp_path / "imported"), _weights(tiny_llama)
    w = "model.layers.0.mlp.down_proj.weight"
    assert np.abs(ours[w].astype(np.float32) - theirs[w]).max() < 0.02 * np.abs(theirs[w]).max()

    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(tmp_path / "imported"))
    logits = model(mx.array([tokenizer.encode("Hello world")]))
    assert logits.shape[-1] == json.loads((tmp_path / "imported" / "config.json").read_text())["vocab_size"]


def test_the_cli_imports_prints_the_benchmark_keys_and_lists_the_import(tiny_qwen2: Path, tmp_path: Path,
                                                                        slowtune_home: Path) -> None:
    gguf = write_gguf(tiny_qwen2, tmp_path / "qwen-F32.gguf", out_type="f32")
    done = subprocess.run([sys.executable, "-m", "slowtune", "models", "import", str(gguf), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    for key in ("folder", "tokens_equal", "top1_agreement", "seconds"):
        assert key in data
    assert data["tokens_equal"] is True and data["top1_agreement"] == 1.0
    assert Path(data["folder"]) == slowtune_home / "data" / "models" / "qwen-F32"
    listed = subprocess.run([sys.executable, "-m", "slowtune", "models", "list"], capture_output=True, text=True,
                            timeout=120)
    assert "Imported models" in listed.stdout and "qwen-F32" in listed.stdout
    again = subprocess.run([sys.executable, "-m", "slowtune", "models", "import", str(gguf)], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and "already exists" in again.stderr and "--replace" in again.stderr


# --- bad input --------------------------------------------------------------------------------------------------
def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    with pytest.raises(gi.ImportError_, match=r"notes\.gguf: not a GGUF file"):
        gi.import_gguf(bad, dest=tmp_path / "out")
    with pytest.raises(gi.ImportError_, match="no such file"):
        gi.import_gguf(tmp_path / "missing.gguf", dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_truncated_gguf_is_refused_and_nothing_is_written(tiny_llama: Path, tmp_path: Path) -> None:
    gguf = write_gguf(tiny_llama, tmp_path / "m.gguf", out_type="f32")
    torn = tmp_path / "torn.gguf"
    torn.write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 2])
    with pytest.raises(gi.ImportError_, match=r"torn\.gguf: .*(truncated|damaged)"):
        gi.import_gguf(torn, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_partial(tmp_path)


def test_a_split_gguf_is_refused_by_name(tiny_llama: Path, tmp_path: Path) -> None:
    part = tmp_path / "big-model-Q4_K_M-00001-of-00003.gguf"
    shutil.copy(write_gguf(tiny_llama, tmp_path / "m.gguf", out_type="f32"), part)
    with pytest.raises(gi.ImportError_, match=r"part 1 of a GGUF split into 3 files.*llama-gguf-split --merge"):
        gi.import_gguf(part, dest=tmp_path / "out")


def _without_chat_template(source: Path, dest: Path) -> Path:
    """A copy of ``source`` whose metadata lacks the chat template (re-written with the gguf library)."""
    from gguf import GGUFReader, GGUFWriter

    reader = GGUFReader(str(source))
    writer = GGUFWriter(str(dest), arch=reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "tokenizer.chat_template"):
            continue
        value = field.contents()
        vtype = field.types[0]
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.asarray(t.data), raw_shape=list(reversed([int(n) for n in t.shape])),
                          raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def test_a_gguf_without_a_chat_template_needs_one_named(tiny_qwen2: Path, tmp_path: Path) -> None:
    gguf = _without_chat_template(write_gguf(tiny_qwen2, tmp_path / "m.gguf", out_type="f32"),
                                  tmp_path / "plain.gguf")
    with pytest.raises(gi.ImportError_, match=r"plain\.gguf: the GGUF has no chat template.*--chat-template chatml"):
        gi.import_gguf(gguf, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(gi.ImportError_, match=r"--chat-template nope\.jinja: no such file"):
        gi.import_gguf(gguf, dest=tmp_path / "out", chat_template="nope.jinja")
    result = gi.import_gguf(gguf, dest=tmp_path / "out", chat_template="chatml")
    settings = json.loads((Path(result.folder) / "tokenizer_config.json").read_text())
    assert settings["chat_template"] == gi.CHATML and result.tokens_equal


def test_an_architecture_the_import_cannot_read_is_named(tiny_llama: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = write_gguf(tiny_llama, tmp_path / "m.gguf", out_type="f32")
    monkeypatch.setattr(gi, "ARCHITECTURES", {"qwen2": gi.ARCHITECTURES["qwen2"]})
    with pytest.raises(gi.ImportError_, match=r"m\.gguf: architecture 'llama' cannot be imported; the import "
                                              r"reads qwen2 models"):
        gi.import_gguf(gguf, dest=tmp_path / "out")


def test_too_little_disk_space_is_found_before_writing(tiny_llama: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = write_gguf(tiny_llama, tmp_path / "m.gguf", out_type="f32")
    monkeypatch.setattr(gi.shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(gi.ImportError_, match=r"needs .* GB in float32 but only 0\.0 GB is free"):
        gi.import_gguf(gguf, dest=tmp_path / "out")
    assert not (tmp_path / "out").exists() and _no_partial(tmp_path)


# --- Ollama -----------------------------------------------------------------------------------------------------
def _ollama_store(root: Path, gguf: Path, name: str = "tiny", tag: str = "latest") -> Path:
    """An Ollama models folder holding ``gguf`` as ``name:tag``, laid out as Ollama lays it out."""
    data = gguf.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(data)},
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "0" * 64, "size": 10}]}))
    return root


def test_an_ollama_model_is_found_by_name_and_imported(tiny_qwen2: Path, tmp_path: Path,
                                                       slowtune_home: Path) -> None:
    store = _ollama_store(tmp_path / "ollama", write_gguf(tiny_qwen2, tmp_path / "m.gguf", out_type="f32"),
                         "tinyqwen", "0.5b")
    assert [m.name for m in gi.ollama_models(store)] == ["tinyqwen:0.5b"]
    env = {**os.environ, "OLLAMA_MODELS": str(store)}
    done = subprocess.run([sys.executable, "-m", "slowtune", "models", "import", "ollama:tinyqwen:0.5b", "--json"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    folder = Path(json.loads(done.stdout)["folder"])
    assert folder.name == "tinyqwen-0.5b"
    assert json.loads((folder / gi.RECORD).read_text())["origin"] == {"ollama": "tinyqwen:0.5b"}

    missing = subprocess.run([sys.executable, "-m", "slowtune", "models", "import", "ollama:llama3.2"],
                             capture_output=True, text=True, timeout=120, env=env)
    assert missing.returncode == 1
    assert "ollama:llama3.2:latest is not installed (installed: tinyqwen:0.5b)" in missing.stderr
    assert "ollama pull llama3.2:latest" in missing.stderr
