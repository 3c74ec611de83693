"""Will a model train on this Mac (slowtune.train.fit): the badges from the catalog's figures and from a model's own
files."""

from __future__ import annotations

from pathlib import Path

from slowtune import system
from slowtune.models import catalog
from slowtune.train.fit import catalog_fit, folder_fit, folder_row


def test_fit_badges_follow_this_macs_memory(tiny_llama: Path) -> None:
    roomy, small, starved = (system.Memory(64 * 10**9, 48 * 10**9), system.Memory(16 * 10**9, 12 * 10**9),
                             system.Memory(8 * 10**9, 2 * 10**9))
    assert catalog_fit(catalog.QWEN25_05B, small).kind == "memory"
    assert catalog_fit(catalog.QWEN25_7B, roomy).kind == "memory"
    seven_b = catalog_fit(catalog.QWEN25_7B, small)
    assert seven_b.kind == "streamed" and "layer by layer" in seven_b.reason and "12.0 GB" in seven_b.reason
    assert "more than half of this Mac's memory" in seven_b.reason  # 15.2 GB on a 16 GB Mac
    # Every family streams now: Gemma 2 too.
    assert catalog_fit(catalog.GEMMA2_2B, system.Memory(8 * 10**9, 7 * 10**9)).kind == "streamed"
    assert catalog_fit(catalog.QWEN3_8B, starved).kind == "too_large"
    from slowtune.train.preflight import MARGIN

    assert catalog.MEMORY_MARGIN == MARGIN
    # The list's rule: never "fits in memory" on a Mac with less than twice the model's size, however much is free;
    # and the badge agrees with `slowtune models list` on a Mac with all its memory free.
    for gigabytes in (8, 16, 24, 32, 64, 128, 192):
        mac = system.Memory(gigabytes * 10**9, gigabytes * 10**9)
        for model in catalog.CATALOG:
            fit = catalog_fit(model, mac)
            assert {"in memory": "memory", "streamed": "streamed", "too large": "too_large"}[
                catalog.placement(model, mac.total_bytes)] == fit.kind, (model.repo_id, gigabytes)
            if catalog.needs_streaming(model, mac.total_bytes):
                assert fit.kind != "memory", (model.repo_id, gigabytes)
    big = catalog_fit(catalog.find("mlx-community/Qwen2.5-72B-Instruct-4bit"), system.Memory(16 * 10**9, 14 * 10**9))
    assert big.kind == "streamed", big.reason
    # A folder on disk: the preflight itself, from the model's files.
    assert folder_fit(tiny_llama, small).kind == "memory"
    refused = folder_fit(tiny_llama, system.Memory(8 * 10**9, 1000))
    assert refused.kind == "too_large" and "Too large for this Mac" in refused.reason
    assert "--max-seq-len" not in refused.reason and "sequence length" in refused.reason


def test_a_model_folder_row_says_where_it_is_and_whether_it_fits(tiny_llama: Path, tmp_path: Path) -> None:
    small = system.Memory(16 * 10**9, 12 * 10**9)
    row = folder_row(tiny_llama, small)
    assert row.where == "Folder" and row.path == tiny_llama.resolve() and row.fit.kind == "memory"
    assert row.fit.label == "fits in memory" and row.export_problem is None
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = folder_row(empty, small)
    assert missing.path is None and missing.fit.kind == "unknown" and missing.notes
