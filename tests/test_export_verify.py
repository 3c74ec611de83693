"""The export's verification: a block-by-block reference of the trained model, and a gate that cannot look away.

- The reference is computed as the streamed trainer runs forward (one block resident at a time, the adapter applied)
  and equals mlx-lm's own logits with the whole model loaded.
- An F16 file whose logits are off by more than 1e-2 of their scale fails, even where every top-1 choice agrees.
- A GGUF whose vocabulary size is not the model's fails loudly instead of being compared over a shared part.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from test_lora_gguf import make_adapter

from slowtune.export.verify import (
    F16_MAX_LOGIT_ERROR,
    VerificationError,
    compare,
    llama_reference,
    mlx_reference,
    streamed_reference,
    teacher_forced_references,
)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_qwen2"])
def test_the_block_by_block_reference_equals_mlx_lm_with_the_whole_model(fixture: str, tmp_path: Path,
                                                                         request: pytest.FixtureRequest) -> None:
    base: Path = request.getfixturevalue(fixture)
    adapter, _ = make_adapter(tmp_path / "adapter", base, rank=4, seed=3)
    prompts = [[5, 17, 99, 3, 250, 7, 64], list(range(40, 90))]
    whole, _greedy = mlx_reference(base, adapter, prompts)
    streamed = streamed_reference(base, adapter, prompts)
    plain = streamed_reference(base, None, prompts)
    for a, b, c in zip(whole, streamed, plain, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
        assert np.abs(c - a).max() > 1e-3  # the adapter really changes the model, so the check above means something
    # The base model from the same pass (the adapter switched off block by block) is the base model.
    base_whole, _ = mlx_reference(base, None, prompts)
    tuned, base_same_pass = streamed_reference(base, adapter, prompts, plain=prompts)
    for a, b, c, d in zip(whole, tuned, base_whole, base_same_pass, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)
        np.testing.assert_allclose(d, c, atol=1e-5, rtol=0)


def _perturbed_copy(gguf: Path, dest: Path, tensor: str, factor: float) -> Path:
    """A copy of ``gguf`` with one float tensor scaled by ``factor`` (written in place with the gguf library)."""
    from gguf import GGUFReader

    dest.write_bytes(gguf.read_bytes())
    reader = GGUFReader(str(dest), "r+")
    target = next(t for t in reader.tensors if t.name == tensor)
    target.data[...] = (np.asarray(target.data, dtype=np.float32) * factor).astype(target.data.dtype)
    reader.data.flush()
    del reader
    return dest


def test_a_slightly_wrong_f16_file_fails_on_its_logit_error_though_top1_agrees(tiny_llama: Path,
                                                                               tmp_path: Path) -> None:
    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.pipeline import verification_prompts

    adapter, _ = make_adapter(tmp_path / "adapter", tiny_llama, rank=4, seed=5)
    good = write_gguf(fuse(tiny_llama, adapter, tmp_path / "fused"), tmp_path / "model-F16.gguf", out_type="f16")
    bad = _perturbed_copy(good, tmp_path / "bad-F16.gguf", "output_norm.weight", 1.06)
    prompts = verification_prompts(tiny_llama, adapter)
    runs = [llama_reference(good, prompts), llama_reference(bad, prompts)]
    good_ref, bad_ref = teacher_forced_references(tiny_llama, adapter, prompts, runs)

    fine = compare(good_ref, runs[0], file=good.name, quant="F16")
    assert fine.passed and fine.max_logit_error < F16_MAX_LOGIT_ERROR and fine.top1_all > 0.95
    wrong = compare(bad_ref, runs[1], file=bad.name, quant="F16")
    # Scaling the final norm by 6% scales every logit by 6%: the ranking, and so top-1, barely moves.
    assert wrong.top1_agreement >= 0.99, wrong.notes
    assert wrong.max_logit_error > F16_MAX_LOGIT_ERROR
    assert not wrong.passed and "largest logit error" in wrong.notes[0]
    assert wrong.excluded + wrong.positions == wrong.total_positions


def test_a_vocabulary_size_that_differs_fails_loudly() -> None:
    rng = np.random.default_rng(0)
    model = ([rng.normal(size=(6, 512)).astype(np.float32)], [[1, 2]])
    gguf = ([rng.normal(size=(6, 520)).astype(np.float32)], [[1, 2]])
    with pytest.raises(VerificationError, match=r"model-F16\.gguf: llama\.cpp gives 520 scores a position, the "
                                                r"trained model 512"):
        compare(model, gguf, file="model-F16.gguf", quant="F16")


def test_the_app_says_all_four_figures_in_plain_words() -> None:
    from slowtune.gui.export import describe_check

    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 64)).astype(np.float32) * 4
    ok = compare(([x], [[1]]), ([x + 0.001], [[1]]), file="model-F16.gguf", quant="F16").to_dict()
    verdict, text = describe_check(ok)
    assert verdict == "pass"
    assert f"Over all {ok['total_positions']} positions" in text and "near-ties" in text
    assert "differ from the trained model's by at most" in text
    bad = compare(([x], [[1]]), ([x * 1.05], [[1]]), file="model-F16.gguf", quant="F16").to_dict()
    verdict, text = describe_check(bad)
    assert verdict == "fail" and "does not compute what the trained model computes" in text
    assert "(at most 1.00% allowed)" in text and "Do not use it" in text
    # Shares in words a user reads, never in exponent notation ("1.4e-03 of their range").
    assert re.search(r"\de-?\d", text) is None and re.search(r"\de-?\d", describe_check(ok)[1]) is None


def test_a_base_model_that_moved_is_named_and_model_is_taken(tiny_llama: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from slowtune.export.pipeline import ExportFailed, _adapter_and_base

    moved_from = tmp_path / "Models" / "tiny"
    shutil.copytree(tiny_llama, moved_from)
    adapter, _ = make_adapter(tmp_path / "adapter", moved_from, rank=2)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model"] == str(moved_from)
    shutil.move(moved_from, tmp_path / "elsewhere")
    with pytest.raises(ExportFailed, match=rf"was expected at {moved_from}, and it is not there .*--model"):
        _adapter_and_base(adapter, None)
    assert _adapter_and_base(adapter, tmp_path / "elsewhere") == (adapter, tmp_path / "elsewhere")
