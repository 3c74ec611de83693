"""``slowtune bench train``: the streamed training engine against the in-memory one, side by side.

It generates (once, in the cache folder) a llama-architecture model of realistic shape with random float32 weights
and runs the same batch through each engine, each in its own process (``slowtune.bench.worker``) so that peak
memory is measured cleanly: in memory with and without gradient checkpointing, streamed with a warm page cache,
streamed cold (each block's bytes dropped from the page cache after use, as on a Mac whose memory cannot cache the
model), and the weight loader alone (cold) for its raw read throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slowtune.bench.memory import peak_rss, rss
from slowtune.selfcmd import module_command

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")

# The benchmark model: ~1.9 GB of float32 weights.
FULL = {"hidden_size": 1024, "intermediate_size": 2816, "num_layers": 32, "num_heads": 16, "num_kv_heads": 16,
        "vocab": 32000, "batch": 2, "seq_len": 256}
QUICK = {"hidden_size": 256, "intermediate_size": 704, "num_layers": 8, "num_heads": 4, "num_kv_heads": 4,
         "vocab": 8000, "batch": 2, "seq_len": 64}
VARIANTS = ("memory_ckpt", "memory", "streamed_warm", "streamed_cold", "loader_cold")


def add_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--steps", type=int, default=2, help="timed steps per engine after one warm-up step")
    t.add_argument("--quick", action="store_true", help="a small model: a smoke test of the benchmark itself")
    t.add_argument("--blas", choices=("auto", "openblas", "reference"), default="auto",
                   help="Linux CPU only: preload OpenBLAS (auto: when installed)")
    t.add_argument("--only", help="comma-separated variants to run (default: all)")


def bench_model(shape: dict[str, int]) -> Path:
    """A llama model of ``shape`` with seeded random float32 weights, made once and kept in the cache folder.

    The same shape is the same model: ``bench train``, ``bench export`` and ``bench chat`` share it."""
    from slowtune import paths
    from slowtune.testing.tiny_models import build_tiny_model

    name = "llama-h{hidden_size}-i{intermediate_size}-l{num_layers}-v{vocab}-f32".format(**shape)
    folder = paths.cache_dir() / "bench-models" / name
    if not (folder / "model.safetensors").exists():
        tmp = folder.with_name(name + f".partial-{os.getpid()}")
        build_tiny_model(tmp, "llama", hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                         num_heads=shape["num_heads"], num_kv_heads=shape["num_kv_heads"],
                         intermediate_size=shape["intermediate_size"], model_vocab_size=shape["vocab"],
                         max_position_embeddings=4096)
        os.replace(tmp, folder)
    return folder


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    from slowtune import system

    if args.steps < 1:
        raise SystemExit("slowtune bench train: --steps must be at least 1")
    only = set(args.only.split(",")) if args.only else set(VARIANTS)
    if unknown := only - set(VARIANTS):
        raise SystemExit(f"slowtune bench train: unknown variant {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(VARIANTS)}")
    shape = QUICK if args.quick else FULL
    model = bench_model(shape)
    env = dict(os.environ)
    blas = "the mlx-cpu wheel's reference BLAS"
    if sys.platform == "darwin":
        blas = "Apple Accelerate / Metal"
    elif args.blas in ("auto", "openblas") and OPENBLAS.exists():
        env["LD_PRELOAD"] = f"{OPENBLAS} {env.get('LD_PRELOAD', '')}".strip()
        blas = f"OpenBLAS ({OPENBLAS}, LD_PRELOAD)"
    elif args.blas == "openblas":
        raise SystemExit(f"OpenBLAS is not installed at {OPENBLAS} (Debian: libopenblas0-pthread)")
    disk = system.measure_read_speed(model, size_bytes=256 * 2**20)
    results: dict[str, Any] = {}
    for variant in VARIANTS:
        if variant not in only:
            continue
        spec = {"variant": variant, "model": str(model), "steps": args.steps, **shape}
        proc = subprocess.run(module_command("slowtune.bench.worker", json.dumps(spec)), env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"bench worker {variant} failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    weight_bytes = results[next(iter(results))]["weight_bytes"]

    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["step_s"] / results[b]["step_s"], 3)
        return None

    def peak_fraction(v: str) -> float | None:
        if v not in results:
            return None
        r = results[v]
        return round(max(r["rss_peak_above_baseline"], r["mlx_peak"]) / weight_bytes, 3)

    warm = results.get("streamed_warm", {})
    cold = results.get("streamed_cold", {})
    return {
        "model": {**shape, "weight_bytes": weight_bytes, "path": str(model)},
        "blas": blas,
        "device": results[next(iter(results))]["device"],
        "streamed_over_memory_ckpt": ratio("streamed_warm", "memory_ckpt"),
        "streamed_over_memory": ratio("streamed_warm", "memory"),
        "streamed_cold_over_memory_ckpt": ratio("streamed_cold", "memory_ckpt"),
        "streamed_peak_fraction": peak_fraction("streamed_warm"),
        "memory_peak_fraction": peak_fraction("memory"),
        "io_blocked_fraction": {"warm": warm.get("io_blocked_fraction"), "cold": cold.get("io_blocked_fraction")},
        "read_gbps": {"loader_cold": results.get("loader_cold", {}).get("read_gbps"),
                      "streamed_warm_effective": warm.get("read_gbps"), "streamed_cold_effective": cold.get("read_gbps")},
        "disk_gbps": round(disk.gb_per_second, 3),
        "disk_method": disk.method,
        "variants": results,
    }


# --- the worker: one engine in a fresh process ------------------------------------------------------------

def train_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant of ``VARIANTS`` on the model of ``spec``: step times, losses, reads and peak memory."""
    import mlx.core as mx
    import mlx.nn  # noqa: F401  (imported before the baseline: libraries are not the engine's memory)
    import mlx_lm.tuner.utils
    import mlx_lm.utils  # noqa: F401
    import numpy as np

    from slowtune.train.config import LoraConfig, StreamConfig
    from slowtune.train.engines import MemoryEngine, StreamedEngine
    from slowtune.train.model import TrainModel

    baseline = rss()
    variant, model = spec["variant"], Path(spec["model"])
    streamed = variant.startswith("streamed") or variant == "loader_cold"
    cold = variant.endswith("_cold")
    if cold:
        from slowtune.train.model import WeightSource

        source = WeightSource(model)
        source.drop_from_page_cache(list(source.tensors))
    lora = LoraConfig(rank=8, alpha=16.0)
    tm = TrainModel(model, lora, seed=0, streamed=streamed)
    device = "Metal GPU" if mx.metal.is_available() else "CPU"
    out: dict[str, Any] = {"variant": variant, "weight_bytes": tm.source.total_bytes, "device": device}

    if variant == "loader_cold":
        engine = StreamedEngine(tm, StreamConfig(cold=True))
        start = time.perf_counter()
        for key in ["embed", *range(tm.num_layers), "head"]:
            engine._acquire(key)
            engine._free(key)
        seconds = time.perf_counter() - start
        out.update(read_gbps=round(engine.bytes_read / seconds / 1e9, 3), seconds=seconds,
                   bytes_read=engine.bytes_read, rss_peak_above_baseline=peak_rss() - baseline,
                   mlx_peak=mx.get_peak_memory(), step_s=seconds)
        return out

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec["vocab"], size=(spec["batch"], spec["seq_len"] + 1)).astype(np.int32)

    class Batch:
        inputs = tokens[:, :-1]
        targets = tokens[:, 1:]
        loss_mask = np.ones((spec["batch"], spec["seq_len"]), dtype=np.float32)
        n_loss_tokens = spec["batch"] * spec["seq_len"]

    if streamed:
        engine = StreamedEngine(tm, StreamConfig(cold=cold))
    else:
        engine = MemoryEngine(tm, grad_checkpoint=variant == "memory_ckpt")
    engine.loss_and_grads([Batch], step=0)  # warm-up: compile, allocate, first touch
    times, blocked, read = [], [], 0
    for step in range(spec["steps"]):
        start = time.perf_counter()
        result = engine.loss_and_grads([Batch], step=step + 1)
        times.append(time.perf_counter() - start)
        blocked.append(result.io_blocked_s)
        read += result.bytes_read
    step_s = sorted(times)[len(times) // 2]
    out.update(
        step_s=round(step_s, 3), step_times=[round(t, 3) for t in times], loss=result.loss,
        io_blocked_fraction=round(sum(blocked) / sum(times), 4) if streamed else None,
        read_gbps=round(read / sum(times) / 1e9, 3) if streamed else None,
        rss_peak_above_baseline=peak_rss() - baseline, mlx_peak=mx.get_peak_memory(),
        tokens_per_s=round(spec["batch"] * spec["seq_len"] / step_s, 1),
    )
    return out
