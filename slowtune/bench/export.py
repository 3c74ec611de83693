"""``slowtune bench export``: the whole ``slowtune export`` measured as a process tree.

On ``bench train``'s model with a seeded random LoRA adapter: fuse + F16 write alone in a fresh process (its own
peak memory), then the whole export as the user runs it (fuse, F16, Q4_K_M, verification; the quantiser is a child
process), its tree's anonymous and file-backed memory sampled every 20 ms over cold-cache runs, and the same export
under a cgroup memory cap of ``CAP_FRACTION`` x the model (root, Linux, cgroup v1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from slowtune.bench.memory import drop_page_cache, peak_rss, rss, tree_memory
from slowtune.bench.train import FULL, QUICK, bench_model
from slowtune.selfcmd import module_command

CAP_FRACTION = 0.35
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--quick", action="store_true", help="a small model: a smoke test of the benchmark itself")
    e.add_argument("--repeats", type=int, default=3, help="whole-export runs (min, median and max are reported)")
    e.add_argument("--no-cap", action="store_true", help="skip the run under a cgroup memory cap")
    e.add_argument("--json", action="store_true", help="print JSON (it always does; accepted for scripts)")


def _bench_adapter(model: Path) -> Path:
    """A seeded random rank-8 LoRA adapter on every projection of every block (cached beside the model)."""
    import mlx.core as mx

    from slowtune.train.config import DEFAULT_KEYS
    from slowtune.train.model import WeightSource, read_config, save_adapter

    folder = model.with_name(model.name + "-adapter")
    if (folder / "adapters.safetensors").exists():
        return folder
    config = read_config(model)
    source = WeightSource(model)
    mx.random.seed(0)
    params = {}
    for i in range(int(config["num_hidden_layers"])):
        for key in DEFAULT_KEYS:
            out_dim, in_dim = source.tensors[f"model.layers.{i}.{key}.weight"].shape
            params[f"model.layers.{i}.{key}.lora_a"] = mx.random.normal((in_dim, 8)) * in_dim**-0.5
            params[f"model.layers.{i}.{key}.lora_b"] = mx.random.normal((8, out_dim)) * 0.02
    save_adapter(folder, params, {"fine_tune_type": "lora", "num_layers": int(config["num_hidden_layers"]),
                                  "lora_parameters": {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": list(DEFAULT_KEYS)},
                                  "base_model": str(model), "model_type": config["model_type"]})
    return folder


def _run_export_tree(cmd: list[str], *, cgroup: Path | None = None) -> dict[str, Any]:
    """Run ``cmd`` (one whole `slowtune export`), sampling its process tree's memory every 20 ms."""
    import threading

    def join_cgroup() -> None:  # in the child, before it runs anything: all its memory is charged to the cap
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=join_cgroup if cgroup is not None else None)
    peak = {"anon": 0, "file": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            anon, file = tree_memory(proc.pid)
            peak["anon"], peak["file"] = max(peak["anon"], anon), max(peak["file"], file)
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    seconds = time.perf_counter() - start
    result: dict[str, Any] = {"returncode": proc.returncode, "seconds": seconds, "peak_anon": peak["anon"],
                              "peak_file": peak["file"], "stderr_tail": err.strip().splitlines()[-3:]}
    if proc.returncode == 0:
        result["summary"] = json.loads(out[out.index("{"):])
    return result


def _capped(weight_bytes: int, cmd: list[str]) -> dict[str, Any]:
    """The same export under a cgroup v1 memory cap of CAP_FRACTION x the model, page cache dropped first."""
    limit = int(CAP_FRACTION * weight_bytes)
    if not (CGROUP_MEMORY / "memory.limit_in_bytes").exists():
        return {"capped_export_ok": None, "cap_note": f"no cgroup v1 memory controller at {CGROUP_MEMORY}"}
    if os.geteuid() != 0:
        return {"capped_export_ok": None, "cap_note": "not root: a cgroup memory cap needs root"}
    group = CGROUP_MEMORY / f"slowtune-bench-export-{os.getpid()}"
    group.mkdir(exist_ok=True)
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        cold = drop_page_cache()
        run = _run_export_tree(cmd, cgroup=group)
        max_usage = int((group / "memory.max_usage_in_bytes").read_text())
        failcnt = int((group / "memory.failcnt").read_text())
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()
    verified = run["returncode"] == 0 and all(v["passed"] for v in run["summary"]["verification"] if v["required"])
    return {"capped_export_ok": int(verified), "cap_bytes": limit, "cap_fraction": CAP_FRACTION,
            "capped_cold_cache": cold, "capped_export_s": round(run["seconds"], 2),
            "capped_max_usage_fraction": round(max_usage / weight_bytes, 3), "capped_limit_hits": failcnt,
            "capped_returncode": run["returncode"],
            **({} if run["returncode"] == 0 else {"capped_stderr": run["stderr_tail"]})}


def _spread(values: list[float], digits: int = 3) -> dict[str, float]:
    import statistics

    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits),
            "max": round(max(values), digits)}


def bench_export(args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from slowtune import paths, system
    from slowtune.selfcmd import slowtune_command

    if args.repeats < 1:
        raise SystemExit("slowtune bench export: --repeats must be at least 1")
    shape = QUICK if args.quick else FULL
    model = bench_model(shape)
    adapter = _bench_adapter(model)
    out = paths.cache_dir() / "bench-export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    disk = system.measure_read_speed(model, size_bytes=256 * 2**20)

    # Fuse + F16 write alone, in a fresh process (the figure other checks read: peak_rss_fraction).
    spec = {"variant": "export", "model": str(model), "adapter": str(adapter), "out": str(out / "fuse-write")}
    proc = subprocess.run(module_command("slowtune.bench.worker", json.dumps(spec)), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench export worker failed:\n{proc.stderr[-3000:]}")
    phase = json.loads(proc.stdout.strip().splitlines()[-1])
    weight_bytes = phase["weight_bytes"]
    shutil.rmtree(out / "fuse-write", ignore_errors=True)

    # The whole `slowtune export`, as the user runs it, measured over its process tree (the quantiser is a child).
    def export_cmd(dest: Path) -> list[str]:
        return slowtune_command("export", adapter, "--model", model, "--quant", "Q4_K_M", "--out", dest, "--no-base",
                                "--no-ollama", "--json")

    runs = []
    cold = False
    for n in range(args.repeats):
        shutil.rmtree(out / "whole", ignore_errors=True)
        cold = drop_page_cache()
        run = _run_export_tree(export_cmd(out / "whole"))
        if run["returncode"] != 0:
            raise SystemExit(f"bench export: `slowtune export` failed (run {n + 1}):\n" + "\n".join(run["stderr_tail"]))
        runs.append(run)
    last = runs[-1]["summary"]
    checks = {v["quant"]: v for v in last["verification"]}
    f16, q4 = checks["F16"], checks["Q4_K_M"]
    anon = [r["peak_anon"] / weight_bytes for r in runs]
    file = [r["peak_file"] / weight_bytes for r in runs]
    seconds = [r["seconds"] for r in runs]
    steps = {k: _spread([r["summary"]["step_seconds"][k] for r in runs], 2) for k in last.get("step_seconds", {})}
    result: dict[str, Any] = {
        "model": {**shape, "weight_bytes": weight_bytes, "path": str(model)},
        "whole_peak_anon_fraction": round(max(anon), 3),
        "whole_peak_anon_fraction_runs": _spread(anon),
        "whole_peak_file_fraction": round(max(file), 3),
        "whole_export_s": round(sorted(seconds)[len(seconds) // 2], 2),
        "whole_export_s_runs": _spread(seconds, 2),
        "step_seconds": steps,
        "repeats": args.repeats, "cold_cache": cold,
        "f16_top1_agreement": round(f16["top1_agreement"], 4), "f16_top1_all": round(f16["top1_all"], 4),
        "f16_set_aside": f16["excluded"], "f16_positions": f16["total_positions"],
        "f16_max_logit_error": float(f"{f16['max_logit_error']:.3g}"),
        "q4_k_m_top1_agreement": round(q4["top1_agreement"], 4), "q4_k_m_top1_all": round(q4["top1_all"], 4),
        "greedy_matches": {q: f"{c['greedy_matches']}/{c['greedy_prompts']}" for q, c in checks.items()},
        "export_s": round(phase["seconds"], 2),
        "peak_rss_fraction": round(phase["rss_peak_above_baseline"] / weight_bytes, 3),
        "mlx_peak_fraction": round(phase["mlx_peak"] / weight_bytes, 3),
        "mb_per_s": round(weight_bytes / phase["seconds"] / 1e6, 1),
        "disk_gbps": round(disk.gb_per_second, 3),
        "sizes_mb": {Path(p).name: round(Path(p).stat().st_size / 1e6, 1) for p in last["files"].values()},
    }
    if not args.no_cap:
        shutil.rmtree(out / "whole", ignore_errors=True)
        result.update(_capped(weight_bytes, export_cmd(out / "capped")))
    shutil.rmtree(out, ignore_errors=True)
    return result


# --- the worker: fuse + F16 write in a fresh process --------------------------------------------------------

def export_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Fuse + GGUF write in a fresh process: its peak memory is the export's own."""
    import mlx.core as mx
    import mlx_lm.utils  # noqa: F401  (libraries are loaded before the baseline is taken)

    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.train.model import WeightSource

    baseline = rss()
    out = Path(spec["out"])
    start = time.perf_counter()
    fused = fuse(Path(spec["model"]), Path(spec["adapter"]), out / "fused")
    write_gguf(fused, out / "model-F16.gguf", out_type="f16")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "weight_bytes": WeightSource(Path(spec["model"])).total_bytes,
            "rss_peak_above_baseline": peak_rss() - baseline, "mlx_peak": mx.get_peak_memory()}
