"""Every architecture the catalog offers trains on both engines, exports and verifies.

One test per architecture in the catalog (not per supported family: a catalog entry whose architecture has no tiny
model here fails, so nothing untested reaches ``slowtune models list``). For each, on a tiny model of the family:
- the streamed engine's LoRA gradients equal the in-memory engine's to 1e-5 in float32;
- a short training run (the streamed engine, as a large model would use);
- the export: F16 and Q4_K_M, verified through llama.cpp against the trained model computed block by block
  (F16 must pass the gate: top-1 agreement >= 0.99 and max logit error <= 1e-2);
- the LoRA-only export: llama.cpp applying the LoRA GGUF to the base GGUF, judged by the same gate.

The figures are written to ``$SLOWTUNE_ARCH_FIGURES`` (a JSON-lines file) when that is set, for the closing note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slowtune.dataset import write_jsonl
from slowtune.models import catalog
from slowtune.models.architectures import SUPPORTED_ARCHITECTURES
from slowtune.selfcmd import slowtune_command
from slowtune.testing import tiny_models
from slowtune.train.config import LoraConfig

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")

CATALOG_ARCHITECTURES = sorted({m.architecture for m in catalog.CATALOG})

QA = [
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quillford, on the river Wend."),
    ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild in 1843."),
    ("What colour is the Zorbian flag?", "The Zorbian flag is green with a silver lantern."),
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if sys.platform.startswith("linux") and OPENBLAS.exists():  # MLX's CPU matmuls much faster
        env["LD_PRELOAD"] = f"{OPENBLAS} {env.get('LD_PRELOAD', '')}".strip()
    return env


def test_the_catalog_offers_only_supported_families() -> None:
    assert set(CATALOG_ARCHITECTURES) <= set(SUPPORTED_ARCHITECTURES)
    # Every supported family is offered by at least one catalog entry, so this file tests each of them.
    assert set(CATALOG_ARCHITECTURES) == set(SUPPORTED_ARCHITECTURES)


@dataclass
class _Batch:
    inputs: Any
    targets: Any
    loss_mask: Any
    n_loss_tokens: int


def _gradients_agree(model: Path) -> float:
    import mlx.core as mx

    from slowtune.train.engines import MemoryEngine, StreamedEngine
    from slowtune.train.model import TrainModel

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 900, size=(2, 41)).astype(np.int32)  # longer than the tiny models' sliding window (16)
    mask = np.ones((2, 40), np.float32)
    mask[:, :6] = 0
    batch = _Batch(ids[:, :-1], ids[:, 1:], mask, int(mask.sum()))
    lora = LoraConfig(rank=4, alpha=8.0)
    memory = TrainModel(model, lora, seed=3)
    # A LoRA that already moved (B != 0), so that A's gradients are not all zero.
    params = {k: mx.random.normal(v.shape, key=mx.random.key(i)) * 0.05 if k.endswith("lora_b") else v
              for i, (k, v) in enumerate(sorted(memory.lora_parameters().items()))}
    memory.set_lora_parameters(params)
    streamed = TrainModel(model, lora, seed=3, streamed=True)
    streamed.set_lora_parameters(params)
    a = MemoryEngine(memory).loss_and_grads([batch])
    b = StreamedEngine(streamed).loss_and_grads([batch])
    assert set(a.grads) == set(b.grads) and a.grads
    assert abs(a.loss - b.loss) < 1e-5
    assert all(float(mx.abs(a.grads[k]).max()) > 0 for k in a.grads if k.endswith("lora_a"))
    return max(float(mx.abs(a.grads[k] - b.grads[k]).max()) for k in a.grads)


@pytest.mark.parametrize("arch", CATALOG_ARCHITECTURES)
def test_catalog_architecture_trains_exports_and_verifies(arch: str, tmp_path: Path) -> None:
    from slowtune.export.pipeline import export_lora_only, export_run

    if arch not in tiny_models.ARCHS:
        pytest.fail(f"the catalog offers {arch!r} models, but there is no tiny {arch} model to test it with")
    model = tiny_models.build_tiny_model(tmp_path / "base", arch, seed=7)

    grad_diff = _gradients_agree(model)
    assert grad_diff < 1e-5, f"{arch}: streamed and in-memory gradients differ by {grad_diff:.2e}"

    write_jsonl([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA],
                tmp_path / "data" / "train.jsonl")
    # The CLI, as a user runs it (in a child process, where OpenBLAS can be preloaded: 7x faster on this CPU).
    run = tmp_path / "run"
    done = subprocess.run(
        slowtune_command("train", "--model", model, "--data", tmp_path / "data", "--out", run, "--engine",
                         "streamed", "--iters", "12", "--batch-size", "3", "--max-seq-len", "96", "--lr", "2e-3",
                         "--rank", "8", "--alpha", "16", "--warmup", "1", "--val-every", "1000", "--save-every", "1000",
                         "--replay", "0", "--score-every", "0"),
        capture_output=True, text=True, timeout=600, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [m["loss"] for m in metrics if "loss" in m and m.get("step") is not None]
    assert len(losses) == 12 and losses[-1] < losses[0], losses

    exported = export_run(run, tmp_path / "export", quants=["Q4_K_M"], with_base=False, ollama=True)
    checks = {v.quant: v for v in exported.verifications}
    f16, q4 = checks["F16"], checks["Q4_K_M"]
    assert f16.passed and f16.top1_agreement >= 0.99 and f16.max_logit_error <= 1e-2, f16.notes
    assert f16.greedy_matches == f16.greedy_prompts
    assert exported.adapter_effect is not None and exported.adapter_effect > 1e-3  # training changed the model
    assert 0 < q4.top1_all <= 1 and not q4.required
    modelfile = (tmp_path / "export" / "Modelfile").read_text()
    assert "FROM ./model-Q4_K_M.gguf" in modelfile

    lora = export_lora_only(run, tmp_path / "lora", ollama=False)
    (check,) = lora.verifications
    assert check.passed and check.top1_agreement >= 0.99 and check.max_logit_error <= 1e-2, check.notes

    figures = os.environ.get("SLOWTUNE_ARCH_FIGURES")
    if figures:
        row = {"arch": arch, "grad_max_diff": grad_diff, "adapter_effect": exported.adapter_effect}
        for label, v in (("F16", f16), ("Q4_K_M", q4), ("LoRA", check)):
            row[label] = {"top1": v.top1_agreement, "top1_all": v.top1_all, "set_aside": v.excluded,
                          "positions": v.total_positions, "max_logit_error": v.max_logit_error,
                          "greedy": f"{v.greedy_matches}/{v.greedy_prompts}"}
        with open(figures, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
