"""Fusing an adapter into its base: same logits as base + adapter, bounded, refuses what does not fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slowtune.dataset import write_jsonl
from slowtune.export.fuse import FuseError, fuse
from slowtune.progress import Cancelled, Progress
from slowtune.train.config import LoraConfig, TrainConfig
from slowtune.train.trainer import run_training

TOKENS = [[1, 5, 9, 200, 33, 77, 12, 640, 3]]


def _train(model: Path, root: Path) -> Path:
    data = root / "data"
    write_jsonl([[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
                 for i in range(3)], data / "train.jsonl")
    cfg = TrainConfig(model=str(model), data=str(data), lora=LoraConfig(rank=4, alpha=8.0), max_seq_len=64,
                      batch_size=3, iters=4, learning_rate=1e-2, warmup=0, val_every=0, save_every=0,
                      replay=0.0, score_every=0)
    run_training(cfg, root / "run", engine="memory")
    return root / "run"


@pytest.fixture(scope="module")
def llama_adapter(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _train(tiny_llama, tmp_path_factory.mktemp("llama-adapter"))


def _logits(model: Path, adapter: Path | None = None):
    import mlx.core as mx
    from mlx_lm import load

    m, _ = load(str(model), adapter_path=str(adapter) if adapter else None)
    return m(mx.array(TOKENS))


def _max_rel(a, b) -> float:
    import mlx.core as mx

    return float(mx.abs(a - b).max()) / float(mx.abs(a).max())


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_fused_model_equals_base_plus_adapter(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    base = request.getfixturevalue(fixture)
    adapter = _train(base, tmp_path) if fixture != "tiny_llama" else request.getfixturevalue("llama_adapter")
    out = fuse(base, adapter, tmp_path / "fused")
    expected = _logits(base, adapter)
    assert _max_rel(expected, _logits(out)) <= 1e-5
    # The adapter really changed the model: a silent no-op fuse would pass the check above only if the
    # adapter itself did nothing, so compare with the base too.
    assert _max_rel(expected, _logits(base)) > 1e-3
    assert json.loads((out / "slowtune_fuse.json").read_text())["fused_layers"] == 4 * 7
    assert (out / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


@pytest.mark.slow
def test_quantised_base_is_dequantised_and_fused(tiny_llama: Path, tmp_path: Path) -> None:
    from mlx_lm import convert

    q4 = tmp_path / "q4"
    convert(str(tiny_llama), str(q4), quantize=True, q_group_size=64, q_bits=4)
    adapter = _train(q4, tmp_path)
    out = fuse(q4, adapter, tmp_path / "fused", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert "quantization" not in config and config["torch_dtype"] == "float32"
    assert _max_rel(_logits(q4, adapter), _logits(out)) <= 1e-5


def test_base_alone_exports_unchanged(tiny_llama: Path, tmp_path: Path) -> None:
    out = fuse(tiny_llama, None, tmp_path / "base")
    assert _max_rel(_logits(tiny_llama), _logits(out)) == 0.0


def test_adapter_from_another_base_is_refused(llama_adapter: Path, tiny_qwen2: Path, tiny_llama: Path,
                                              tmp_path: Path) -> None:
    with pytest.raises(FuseError, match=rf"{llama_adapter}.*'llama'.*{tiny_qwen2}.*'qwen2'"):
        fuse(tiny_qwen2, llama_adapter, tmp_path / "x")
    # Same architecture, other shapes.
    from slowtune.testing.tiny_models import build_tiny_model

    wider = build_tiny_model(tmp_path / "wider", "llama", hidden_size=512, num_heads=8, num_kv_heads=4)
    with pytest.raises(FuseError, match="trained on a different base"):
        fuse(wider, llama_adapter, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(FuseError, match="is not an adapter folder"):
        fuse(tiny_llama, tmp_path, tmp_path / "z")


def test_not_enough_disk_is_checked_before_writing(tiny_llama: Path, llama_adapter: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    with pytest.raises(FuseError, match="Not enough free disk"):
        fuse(tiny_llama, llama_adapter, tmp_path / "fused")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_fuse_leaves_nothing_behind(tiny_llama: Path, llama_adapter: Path, tmp_path: Path) -> None:
    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel() if e.done == 2 else None)
    with pytest.raises(Cancelled):
        fuse(tiny_llama, llama_adapter, tmp_path / "fused", progress=progress)
    assert list(tmp_path.iterdir()) == []
