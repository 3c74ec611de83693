"""The benchmark commands run and print the figures the issues ask for (timings are not asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "bench", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=900)


@pytest.mark.slow
def test_bench_train_quick_prints_its_figures() -> None:
    out = _bench("train", "--quick", "--steps", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("streamed_over_memory_ckpt", "streamed_over_memory", "streamed_peak_fraction", "memory_peak_fraction",
                "io_blocked_fraction", "read_gbps", "disk_gbps", "blas"):
        assert result[key] is not None, key
    losses = [v["loss"] for v in result["variants"].values() if v.get("loss") is not None]
    assert len(losses) == 4 and max(losses) - min(losses) <= 1e-5 * max(losses)  # same batch, same loss


@pytest.mark.slow
def test_bench_export_quick_prints_its_figures() -> None:
    out = _bench("export", "--quick", "--repeats", "1", "--no-cap", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("export_s", "peak_rss_fraction", "mb_per_s", "f16_top1_agreement", "q4_k_m_top1_agreement",
                "whole_peak_anon_fraction", "whole_peak_file_fraction", "whole_export_s", "f16_top1_all",
                "f16_set_aside", "f16_max_logit_error"):
        assert result[key] is not None, key
    assert result["f16_top1_agreement"] >= 0.99 and result["f16_max_logit_error"] <= 1e-2
    # The whole export's memory covers the process tree, the quantiser child included, and every step is timed.
    assert result["whole_peak_anon_fraction"] > 0 and set(result["step_seconds"]) == {"fuse", "write", "quantise",
                                                                                         "verify"}
    assert "capped_export_ok" not in result  # --no-cap


def test_bench_refuses_bad_arguments() -> None:
    out = _bench("train", "--steps", "0")
    assert out.returncode != 0 and "--steps" in out.stderr
    out = _bench("train", "--only", "warp_drive")
    assert out.returncode != 0 and "warp_drive" in out.stderr


def test_bench_teacher_small_run_prints_its_figures() -> None:
    out = _bench("teacher", "--runs", "1", "--chunks", "12", "--kill-at", "12", "--latency", "0.05",
                 "--concurrency", "4")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("throughput_ratio", "lost_chunks", "repeated_paid_calls", "inflight_at_kill", "calls_per_run"):
        assert result[key] is not None, key
    assert result["lost_chunks"] == 0 and result["repeated_paid_calls"] == 0
    run = result["details"][0]
    assert run["kill_resume"]["killed_returncode"] == -9 and run["kill_resume"]["resumed_returncode"] == 0
    assert run["faults"]["failed_calls"] > 0  # the fault share did reach the server
    assert run["kill_resume"]["inflight_paid_again"] <= 4  # at most the concurrency


def test_bench_teacher_in_the_frozen_app_says_it_needs_a_source_checkout(monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from slowtune import cli

    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(SystemExit, match="slowtune bench teacher needs a source checkout"):
        cli.main(["bench", "teacher", "--runs", "1"])
    assert capsys.readouterr().out == ""  # refused before any server or project was made


def test_the_bench_worker_refuses_an_unknown_variant() -> None:
    from slowtune.bench import worker

    with pytest.raises(ValueError, match="unknown bench worker variant 'warp_drive'"):
        worker.run({"variant": "warp_drive"})


def _bench_chat(*args: str) -> subprocess.CompletedProcess[str]:
    return _bench("chat", *args)


@pytest.mark.slow
def test_bench_chat_quick_prints_its_figures() -> None:
    out = _bench_chat("--quick", "--repeats", "2")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in ("tokens_per_s_ratio", "engine_tokens_per_s", "raw_tokens_per_s", "ttft_ms", "raw_ttft_ms", "params",
                "gguf_bytes", "backend", "threads", "repeats"):
        assert result[key] is not None, key
    assert 5_000_000 < result["params"] < 20_000_000 and result["repeats"] == 2 and len(result["runs"]) == 2
    # Both sides decoded exactly the same tokens: the comparison is like for like.
    assert result["same_tokens"] and result["same_text"]
    for run in result["runs"]:
        assert run["engine"]["decoded_tokens"] == run["raw"]["decoded_tokens"] == result["tokens"]
        assert run["engine"]["completion_tokens"] == result["tokens"]


def test_bench_chat_refuses_bad_arguments() -> None:
    out = _bench_chat("--quick", "--tokens", "1")
    assert out.returncode != 0 and "--tokens" in out.stderr


@pytest.mark.slow
def test_bench_gui_quick_prints_its_figures(slowtune_home: Path) -> None:
    done = _bench("gui", "--quick")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # Two real starts of the app and of a bare Qt window each, timed to their first paint.
    assert len(result["cold_start_runs_s"]) == 2 and all(0 < s < 60 for s in result["cold_start_runs_s"])
    assert result["cold_start_s"] > result["baseline_bare_qt_window_s"] > 0
    assert result["heavy_libraries_loaded_at_show"] == []  # mlx, llama.cpp and openai load on first use
    loop = result["event_loop"]
    assert loop["job_state"] == "finished" and loop["training_steps"] == 6
    assert loop["idle_baseline"]["ticks"] > 20 and loop["during_training"]["ticks"] > 20
