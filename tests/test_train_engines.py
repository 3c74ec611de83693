"""The streamed engine computes what the in-memory engine computes, one block at a time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from slowtune.train.config import LoraConfig, StreamConfig
from slowtune.train.model import ModelError, TrainModel


@pytest.fixture(scope="session")
def tiny_llama_q4(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama quantised to MLX 4-bit by mlx-lm itself (a QLoRA base)."""
    from mlx_lm import convert

    out = tmp_path_factory.mktemp("q4") / "tiny-llama-4bit"
    convert(str(tiny_llama), str(out), quantize=True, q_group_size=64, q_bits=4)
    return out


def _batches(vocab: int, n: int = 2, seed: int = 0) -> list[SimpleNamespace]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(0, vocab, size=(2, 25)).astype(np.int32)
        mask = (rng.random((2, 24)) > 0.4).astype(np.float32)
        out.append(SimpleNamespace(inputs=tokens[:, :-1], targets=tokens[:, 1:], loss_mask=mask,
                                   n_loss_tokens=int(mask.sum())))
    return out


def _model(path: Path, streamed: bool, num_layers: int = 3) -> TrainModel:
    import mlx.core as mx

    tm = TrainModel(path, LoraConfig(rank=4, alpha=8.0, num_layers=num_layers), seed=1, streamed=streamed)
    # LoRA starts with B = 0, which makes A's gradient zero; give B values so both gradients are tested.
    mx.random.seed(7)
    tm.set_lora_parameters({k: mx.random.normal(v.shape) * 0.05 if k.endswith("lora_b") else v
                            for k, v in tm.lora_parameters().items()})
    return tm


def _compare(path: Path, num_layers: int = 3) -> None:
    import json

    import mlx.core as mx

    from slowtune.train.engines import MemoryEngine, StreamedEngine

    batches = _batches(json.loads((path / "config.json").read_text())["vocab_size"])
    memory = MemoryEngine(_model(path, False, num_layers), head_chunk=7).loss_and_grads(batches, step=3)
    streamed = StreamedEngine(_model(path, True, num_layers), StreamConfig(head_chunk=16)).loss_and_grads(batches, step=3)
    assert streamed.loss == pytest.approx(memory.loss, rel=1e-5)
    assert set(streamed.grads) == set(memory.grads)
    assert len(memory.grads) == num_layers * 7 * 2  # 7 projections x (A, B) per adapted block
    for name, g in memory.grads.items():
        scale = float(mx.abs(g).max())
        assert scale > 0, f"{name}: zero gradient, the comparison would prove nothing"
        err = float(mx.abs(streamed.grads[name] - g).max()) / scale
        assert err <= 1e-5, f"{name}: relative error {err}"
    assert streamed.bytes_read > 0 and memory.bytes_read == 0


def test_streamed_equals_memory_llama(tiny_llama: Path) -> None:
    _compare(tiny_llama)


def test_streamed_equals_memory_qwen2(tiny_qwen2: Path) -> None:
    _compare(tiny_qwen2)


def test_streamed_equals_memory_qwen3_all_blocks(tiny_qwen3: Path) -> None:
    _compare(tiny_qwen3, num_layers=4)


def test_streamed_equals_memory_quantised_base(tiny_llama_q4: Path) -> None:
    _compare(tiny_llama_q4)


def test_checkpointed_memory_engine_equals_plain(tiny_llama: Path) -> None:
    import mlx.core as mx

    from slowtune.train.engines import MemoryEngine

    batches = _batches(1024)
    plain = MemoryEngine(_model(tiny_llama, False)).loss_and_grads(batches)
    ckpt = MemoryEngine(_model(tiny_llama, False), grad_checkpoint=True).loss_and_grads(batches)
    assert ckpt.loss == pytest.approx(plain.loss, rel=1e-6)
    for name, g in plain.grads.items():
        assert float(mx.abs(ckpt.grads[name] - g).max()) <= 1e-6 * float(mx.abs(g).max())


def test_loss_matches_mlx_lm_forward(tiny_llama: Path) -> None:
    # An independent reference: mlx-lm's own model call and cross-entropy over the masked tokens.
    import mlx.core as mx
    import mlx.nn as nn

    from slowtune.train.engines import MemoryEngine

    tm = _model(tiny_llama, False)
    batch = _batches(1024, n=1)[0]
    logits = tm.model(mx.array(batch.inputs))
    ce = nn.losses.cross_entropy(logits, mx.array(batch.targets), reduction="none")
    reference = float((ce * mx.array(batch.loss_mask)).sum()) / batch.n_loss_tokens
    assert MemoryEngine(tm).loss_and_grads([batch]).loss == pytest.approx(reference, rel=1e-5)


def test_streamed_holds_few_blocks_and_frees_them(tiny_llama: Path) -> None:
    from slowtune.train.engines import StreamedEngine

    tm = _model(tiny_llama, True, num_layers=4)
    engine = StreamedEngine(tm)
    most = 0
    acquire = engine._acquire

    def counting_acquire(key: object) -> None:
        nonlocal most
        acquire(key)
        most = max(most, len(engine._loaded))

    engine._acquire = counting_acquire  # type: ignore[method-assign]
    engine.loss_and_grads(_batches(1024, n=1))
    # One block computing, at most one more (kept at the turnaround), never the whole model.
    assert most <= 2
    # After the step every base weight is a placeholder again: nothing of the model stays in memory.
    from mlx.utils import tree_flatten

    base = [a for n, a in tree_flatten(tm.model.parameters()) if not n.endswith(("lora_a", "lora_b"))]
    assert base and all(a.size == 0 for a in base)
    # Every block was read twice (forward and backward), minus the one kept at the turnaround.
    block_bytes = sum(tm.source.nbytes(names) for names in tm.block_names)
    assert engine.bytes_read >= 2 * block_bytes - tm.source.nbytes(tm.block_names[-1])


@pytest.mark.parametrize("keep", [0, 1])
def test_blocks_below_the_lora_blocks_are_read_once(tiny_llama: Path, keep: int) -> None:
    from slowtune.train.engines import StreamedEngine

    tm = _model(tiny_llama, True, num_layers=1)
    engine = StreamedEngine(tm, StreamConfig(keep_turnaround=keep))
    result = engine.loss_and_grads(_batches(1024, n=1))
    blocks = sum(tm.source.nbytes(names) for names in tm.block_names)
    outer = tm.source.nbytes(tm.embed_names) + tm.source.nbytes(tm.head_names)
    top = tm.source.nbytes(tm.block_names[-1])
    # Forward reads every block once; backward needs only the top (LoRA) block, read again unless kept.
    assert result.bytes_read == blocks + outer + (0 if keep else top)


@pytest.mark.parametrize("streamed", [False, True])
def test_engines_name_unsupported_architectures(tmp_path: Path, tiny_llama: Path, streamed: bool) -> None:
    import json
    import shutil

    folder = tmp_path / "falcon"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "falcon"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config.json: architecture 'falcon' is not one slowtune trains") as info:
        TrainModel(folder, LoraConfig(), streamed=streamed)
    assert "gemma3_text" in str(info.value) and "phi3" in str(info.value)


def test_multimodal_checkpoint_is_refused(tmp_path: Path, tiny_llama: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "gemma3-4b"
    shutil.copytree(tiny_llama, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"],
                  vision_config={"model_type": "siglip_vision_model"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"multimodal checkpoint .*vision_config.*text-only"):
        TrainModel(folder, LoraConfig())


def test_streamed_equals_memory_bfloat16_base(tmp_path: Path) -> None:
    # Weights stored in bf16 are cast to the float32 compute dtype as each block is read.
    from slowtune.testing.tiny_models import build_tiny_model

    path = build_tiny_model(tmp_path / "bf16", "llama", num_layers=3, dtype="bfloat16", seed=4)
    _compare(path)


def test_streamed_equals_memory_mistral(tiny_mistral: Path) -> None:
    _compare(tiny_mistral)


def test_dropout_masks_are_the_same_when_blocks_are_recomputed(tiny_llama: Path) -> None:
    # With dropout, a recomputed block must draw the same masks as its first forward pass, or the
    # gradient is of a different function: checkpointed == plain, streamed == plain.
    import mlx.core as mx

    from slowtune.train.engines import MemoryEngine, StreamedEngine

    def model(streamed: bool) -> TrainModel:
        tm = TrainModel(tiny_llama, LoraConfig(rank=4, alpha=8.0, dropout=0.5, num_layers=2), seed=1,
                        streamed=streamed)
        mx.random.seed(7)
        tm.set_lora_parameters({k: mx.random.normal(v.shape) * 0.05 if k.endswith("lora_b") else v
                                for k, v in tm.lora_parameters().items()})
        return tm

    batches = _batches(1024)
    plain = MemoryEngine(model(False)).loss_and_grads(batches, step=2)
    ckpt = MemoryEngine(model(False), grad_checkpoint=True).loss_and_grads(batches, step=2)
    for name, g in plain.grads.items():
        assert float(mx.abs(ckpt.grads[name] - g).max()) <= 1e-5 * float(mx.abs(g).max()), name
    streamed = StreamedEngine(model(True)).loss_and_grads(batches, step=2)
    assert streamed.loss == pytest.approx(plain.loss, rel=1e-5)
