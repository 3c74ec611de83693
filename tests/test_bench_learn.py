"""``slowtune bench learn`` compares the tuned model with the base in the same GGUF type.

The tuned model is exported to Q8_0. Quantising alone changes a 135M model's greedy answers to about a tenth of the
general questions (session 11), so a base scored in F16 would charge the tuning with that loss. The full bench is not
part of the suite; these check the two pieces that keep the comparison fair."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from slowtune.bench import learn
from slowtune.quality import QualityItem


def test_the_base_is_scored_in_the_tuned_models_type(tiny_qwen2: Path, tmp_path: Path) -> None:
    from slowtune.export.gguf_writer import write_gguf

    f16 = write_gguf(tiny_qwen2, tmp_path / "base-F16.gguf", out_type="f16")
    base = learn._base_as_tuned(f16, tmp_path)
    assert base.name == f"base-{learn.QUANT}.gguf"
    types = {t.tensor_type.name for t in gguf.GGUFReader(base).tensors}
    assert learn.QUANT in types and "F16" not in types, types
    assert learn._base_as_tuned(f16, tmp_path) == base  # quantised once, reused while the F16 file is unchanged


def _item(i: str) -> QualityItem:
    return QualityItem(axis="retention", id=i, question=f"question {i}", category="facts")


def test_the_quantization_floor_is_what_the_quantised_base_kept_of_the_f16_bases_right_answers() -> None:
    f16 = {"general_right": [_item(i) for i in ("a", "b", "c", "d")], "leakage": 0.0, "knowledge": 0.0,
           "open_book_knowledge": 0.5}
    floor = learn._quantization_floor(f16, [_item("a"), _item("c"), _item("e")], 0.25)
    assert floor["retention"] == pytest.approx(0.5)  # e was right only after quantising: not counted as kept
    assert (floor["kept"], floor["f16_right_general"], floor["leakage"], floor["f16_leakage"]) == (2, 4, 0.25, 0.0)
