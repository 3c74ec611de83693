"""Greedy answers from the model in training (slowtune.train.decode): the same tokens as recomputing the whole
sequence for every new token, in a batch of prompts of different lengths, for both engines, with and without
LoRA, for every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slowtune.train.config import LoraConfig
from slowtune.train.model import TrainModel

ARCH_FIXTURES = ["tiny_llama", "tiny_qwen2", "tiny_qwen3", "tiny_mistral", "tiny_gemma2", "tiny_gemma3_text",
                 "tiny_phi3", "tiny_smollm3"]


def _model(path: Path, streamed: bool) -> TrainModel:
    import mlx.core as mx

    tm = TrainModel(path, LoraConfig(rank=4, alpha=8.0), seed=1, streamed=streamed)
    mx.random.seed(3)  # B = 0 at the start would make the LoRA invisible; give it values
    tm.set_lora_parameters({k: mx.random.normal(v.shape) * 0.3 if k.endswith("lora_b") else v
                            for k, v in tm.lora_parameters().items()})
    return tm


def _reference(path: Path, prompts: list[list[int]], n: int, lora: bool) -> list[list[int]]:
    """Token by token, the whole sequence recomputed each time (the streamed engine's cache-free logits)."""
    from slowtune.train.engines import StreamedEngine

    engine = StreamedEngine(_model(path, True))
    out = []
    for prompt in prompts:
        seq = list(prompt)
        for _ in range(n):
            logits = engine.logits([seq])[0] if lora else engine.logits([], plain=[seq])[1][0]
            seq.append(int(np.argmax(logits[-1])))
        out.append(seq[len(prompt):])
    return out


@pytest.mark.parametrize("fixture", ARCH_FIXTURES)
def test_greedy_matches_recomputation(fixture: str, request: pytest.FixtureRequest) -> None:
    from slowtune.train.decode import greedy
    from slowtune.train.engines import MemoryEngine, StreamedEngine

    path = request.getfixturevalue(fixture)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(5, 200, size=length).tolist() for length in (7, 3, 12)]
    for lora in (True, False):
        want = _reference(path, prompts, 5, lora)
        memory = greedy(MemoryEngine(_model(path, False)), prompts, 5, set(), lora=lora, batch=2)
        streamed = greedy(StreamedEngine(_model(path, True)), prompts, 5, set(), lora=lora)
        assert memory == want, (fixture, lora)
        assert streamed == want, (fixture, lora)
    # The LoRA changes what the model computes, so "without LoRA" was really tested.
    with_lora, without = StreamedEngine(_model(path, True)).logits([prompts[0]], plain=[prompts[0]])
    assert not np.allclose(with_lora[0], without[0], atol=1e-4)


def test_greedy_stops_at_a_stop_token(tiny_llama: Path) -> None:
    from slowtune.train.decode import greedy
    from slowtune.train.engines import MemoryEngine

    engine = MemoryEngine(_model(tiny_llama, False))
    free = greedy(engine, [[5, 6, 7]], 6, set())[0]
    assert len(free) == 6
    stopped = greedy(engine, [[5, 6, 7]], 6, {free[2]})[0]
    assert stopped == free[: free.index(free[2])]
