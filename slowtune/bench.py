"""``slowtune bench ...``: speed and memory measured side by side in one run, printed as JSON.

``bench train`` generates (once, in the cache folder) a llama-architecture model of realistic shape with
random float32 weights and runs the same batch through each engine, each in its own process so that peak
memory is measured cleanly: in memory with and without gradient checkpointing, streamed with a warm page
cache, streamed cold (each block's bytes dropped from the page cache after use, as on a Mac whose memory
cannot cache the model), and the weight loader alone (cold) for its raw read throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slowtune.selfcmd import module_command

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")

# The benchmark model: ~1.9 GB of float32 weights.
FULL = {"hidden_size": 1024, "intermediate_size": 2816, "num_layers": 32, "num_heads": 16, "num_kv_heads": 16,
        "vocab": 32000, "batch": 2, "seq_len": 256}
QUICK = {"hidden_size": 256, "intermediate_size": 704, "num_layers": 8, "num_heads": 4, "num_kv_heads": 4,
         "vocab": 8000, "batch": 2, "seq_len": 64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    t = sub.add_parser("train", help="streamed vs in-memory training: step time, memory, disk")
    t.add_argument("--steps", type=int, default=2, help="timed steps per engine after one warm-up step")
    t.add_argument("--quick", action="store_true", help="a small model: a smoke test of the benchmark itself")
    t.add_argument("--blas", choices=("auto", "openblas", "reference"), default="auto",
                   help="Linux CPU only: preload OpenBLAS (auto: when installed)")
    t.add_argument("--only", help="comma-separated variants to run (default: all)")


    i = sub.add_parser("ingest", help="document ingest: 1,000 PDF pages, re-ingest, peak memory on 2,000 pages")
    i.add_argument("--quick", action="store_true", help="a small corpus: a smoke test of the benchmark itself")
    e = sub.add_parser("export", help="the whole `slowtune export` (fuse, F16, Q4_K_M, verification) as a process "
                       "tree: peak memory against the model's size, time, the F16 gate's figures, and a run under a "
                       "memory cap of 0.35 x the model")
    e.add_argument("--quick", action="store_true", help="a small model: a smoke test of the benchmark itself")
    e.add_argument("--repeats", type=int, default=3, help="whole-export runs (min, median and max are reported)")
    e.add_argument("--no-cap", action="store_true", help="skip the run under a cgroup memory cap")
    e.add_argument("--json", action="store_true", help="print JSON (it always does; accepted for scripts)")
    from slowtune.chat import bench as chat_bench
    from slowtune.teacher import bench as teacher_bench

    cb = sub.add_parser("chat", help="chat-engine decoding speed against plain llama-cpp-python on a >=100M Q8_0 model")
    chat_bench.add_arguments(cb)

    from slowtune.gui import bench as gui_bench  # imports Qt only inside its child processes

    gb = sub.add_parser("gui", help="app cold start against a bare Qt window; event-loop latency while training")
    gui_bench.add_arguments(gb)

    tb = sub.add_parser("teacher", help="generation against the test server: throughput, faults, kill and resume")
    teacher_bench.add_arguments(tb)


def run(args: argparse.Namespace) -> int:
    from slowtune.chat.bench import bench_chat
    from slowtune.gui.bench import bench_gui
    from slowtune.teacher.bench import bench_teacher

    benches = {"train": bench_train, "export": bench_export, "ingest": bench_ingest, "teacher": bench_teacher,
               "chat": bench_chat, "gui": bench_gui}
    result = benches[args.bench](args)
    print(json.dumps(result, indent=2))
    return 0


_PARAGRAPH = ("The pump station draws water from the reservoir and sends it to the eastern district. Each "
              "valve is checked every spring, and the log records pressure, flow and the name of the engineer. ")


def _bench_pdf(path: Path, pages: int, label: str = "") -> Path:
    """A text PDF of ``pages`` pages (about 1,500 characters each), made once and cached."""
    if path.exists():
        return path
    try:
        from fpdf import FPDF
    except ImportError:
        raise SystemExit("slowtune bench ingest needs fpdf2 to make its PDFs (a development dependency).") from None
    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for n in range(pages):
        pdf.add_page()
        # Every file and page says something different: identical files would be stored once, not parsed.
        pdf.multi_cell(0, 5, f"{label} section {n + 1}\n\n" + f"Station {label}-{n}: " + _PARAGRAPH * 7)
    tmp = path.with_name(path.name + ".partial")
    pdf.output(str(tmp))
    os.replace(tmp, path)
    return path


def _peak_tree_rss(proc: Any, stop: Any, result: dict[str, int]) -> None:
    import psutil

    top = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            members = [top, *top.children(recursive=True)]
            sizes = [m.memory_info().rss for m in members]
        except psutil.Error:
            sizes = []
        if sizes:
            result["max_process"] = max(result.get("max_process", 0), *sizes)
            result["total"] = max(result.get("total", 0), sum(sizes))
        stop.wait(0.02)


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    import shutil
    import tempfile
    import threading

    from slowtune import paths
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    files, per_file, big_pages = (4, 25, 200) if args.quick else (20, 50, 2000)
    corpus = paths.cache_dir() / "bench-ingest" / f"corpus-v2-{files}x{per_file}"
    corpus.mkdir(parents=True, exist_ok=True)
    for n in range(files):
        _bench_pdf(corpus / f"report-{n:02d}.pdf", per_file, label=f"Report {n}")
    big = _bench_pdf(paths.cache_dir() / "bench-ingest" / f"big-v2-{big_pages}.pdf", big_pages, label="Annual")

    work = Path(tempfile.mkdtemp(prefix="slowtune-bench-ingest-"))
    try:
        with Project.create(work / "p") as project:
            start = time.perf_counter()
            first = ingest(project, [corpus])
            ingest_s = time.perf_counter() - start
            start = time.perf_counter()
            again = ingest(project, [corpus])
            reingest_s = time.perf_counter() - start
        ok = sum(f.status == "ok" for f in first.files)
        unchanged = sum(f.status == "unchanged" for f in again.files)

        # One big PDF in a fresh process, its memory (and its parser workers') sampled throughout.
        spec = {"variant": "ingest_big", "project": str(work / "big"), "file": str(big)}
        proc = subprocess.Popen(module_command("slowtune.bench", json.dumps(spec)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        peak: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=_peak_tree_rss, args=(proc, stop, peak), daemon=True)
        sampler.start()
        out, err = proc.communicate()
        out = out.strip().splitlines()[-1] if out.strip() else ""
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            raise SystemExit(f"bench ingest: the big PDF failed:\n{err[-2000:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "pages": files * per_file, "files": files, "ok": ok, "ingest_s": round(ingest_s, 2),
        "pages_per_s": round(files * per_file / ingest_s, 1), "reingest_s": round(reingest_s, 3),
        "reingest_unchanged": unchanged, "big_pdf_pages": big_pages, "big_pdf_result": out.strip(),
        "peak_rss_mb": round(peak.get("max_process", 0) / 1e6, 1),
        "peak_rss_all_processes_mb": round(peak.get("total", 0) / 1e6, 1),
    }


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


CAP_FRACTION = 0.35
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")


def _tree_memory(pid: int) -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes summed over the process ``pid`` and all its children.

    Anonymous memory (RssAnon) is what the export really holds; memory-mapped GGUF and safetensors pages are
    file-backed (RssFile) and the kernel can drop them under pressure, so they are reported apart.
    """
    import psutil

    try:
        top = psutil.Process(pid)
        members = [top, *top.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    anon = file = 0
    for member in members:
        try:
            with open(f"/proc/{member.pid}/status") as status:
                fields = dict(line.split(":", 1) for line in status if line.startswith(("RssAnon", "RssFile")))
            anon += int(fields["RssAnon"].split()[0]) * 1024
            file += int(fields["RssFile"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            with contextlib.suppress(psutil.Error):
                anon += member.memory_info().rss  # no /proc (a Mac): resident memory, all of it counted
    return anon, file


def _drop_page_cache() -> bool:
    """Empty the page cache (root on Linux), so a run reads the model cold, as a Mac that cannot hold it does."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


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
            anon, file = _tree_memory(proc.pid)
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
        cold = _drop_page_cache()
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
    model = _bench_model(shape)
    adapter = _bench_adapter(model)
    out = paths.cache_dir() / "bench-export"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    disk = system.measure_read_speed(model, size_bytes=256 * 2**20)

    # Fuse + F16 write alone, in a fresh process (the figure other checks read: peak_rss_fraction).
    spec = {"variant": "export", "model": str(model), "adapter": str(adapter), "out": str(out / "fuse-write")}
    proc = subprocess.run(module_command("slowtune.bench", json.dumps(spec)), capture_output=True, text=True)
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
        cold = _drop_page_cache()
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


def _bench_model(shape: dict[str, int]) -> Path:
    from slowtune import paths
    from slowtune.testing.tiny_models import build_tiny_model

    name = "llama-h{hidden_size}-i{intermediate_size}-l{num_layers}-v{vocab}-f32".format(**shape)
    folder = paths.cache_dir() / "bench-models" / name
    if not (folder / "model.safetensors").exists():
        tmp = folder.with_name(name + ".partial")
        build_tiny_model(tmp, "llama", hidden_size=shape["hidden_size"], num_layers=shape["num_layers"],
                         num_heads=shape["num_heads"], num_kv_heads=shape["num_kv_heads"],
                         intermediate_size=shape["intermediate_size"], model_vocab_size=shape["vocab"],
                         max_position_embeddings=4096)
        os.replace(tmp, folder)
    return folder


VARIANTS = ("memory_ckpt", "memory", "streamed_warm", "streamed_cold", "loader_cold")


def bench_train(args: argparse.Namespace) -> dict[str, Any]:
    from slowtune import system

    if args.steps < 1:
        raise SystemExit("slowtune bench train: --steps must be at least 1")
    only = set(args.only.split(",")) if args.only else set(VARIANTS)
    if unknown := only - set(VARIANTS):
        raise SystemExit(f"slowtune bench train: unknown variant {', '.join(sorted(unknown))}; "
                         f"choose from {', '.join(VARIANTS)}")
    shape = QUICK if args.quick else FULL
    model = _bench_model(shape)
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
        proc = subprocess.run(module_command("slowtune.bench", json.dumps(spec)), env=env,
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

def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _peak_rss() -> int:
    """This process's peak resident memory since it started.

    On Linux, getrusage's ru_maxrss is inherited through fork and exec (a worker started by a parent that
    once held the whole model would report the parent's peak), so read VmHWM, which starts afresh at exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS


def _export_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Fuse + GGUF write in a fresh process: its peak memory is the export's own."""
    import mlx.core as mx
    import mlx_lm.utils  # noqa: F401  (libraries are loaded before the baseline is taken)

    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.train.model import WeightSource

    baseline = _rss()
    out = Path(spec["out"])
    start = time.perf_counter()
    fused = fuse(Path(spec["model"]), Path(spec["adapter"]), out / "fused")
    write_gguf(fused, out / "model-F16.gguf", out_type="f16")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "weight_bytes": WeightSource(Path(spec["model"])).total_bytes,
            "rss_peak_above_baseline": _peak_rss() - baseline, "mlx_peak": mx.get_peak_memory()}


def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    import mlx.core as mx
    import mlx.nn  # noqa: F401  (imported before the baseline: libraries are not the engine's memory)
    import mlx_lm.tuner.utils
    import mlx_lm.utils  # noqa: F401
    import numpy as np

    from slowtune.train.config import LoraConfig, StreamConfig
    from slowtune.train.engines import MemoryEngine, StreamedEngine
    from slowtune.train.model import TrainModel

    baseline = _rss()
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
                   bytes_read=engine.bytes_read, rss_peak_above_baseline=_peak_rss() - baseline,
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
        rss_peak_above_baseline=_peak_rss() - baseline, mlx_peak=mx.get_peak_memory(),
        tokens_per_s=round(spec["batch"] * spec["seq_len"] / step_s, 1),
    )
    return out


def _ingest_worker(spec: dict[str, Any]) -> str:
    """One file ingested into a new project in this process (``bench ingest`` samples its memory)."""
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    with Project.create(Path(spec["project"])) as project:
        result = ingest(project, [Path(spec["file"])])
    return f"{result.files[0].status} {result.files[0].pages}"


if __name__ == "__main__":
    _spec = json.loads(sys.argv[1])
    if _spec["variant"] == "ingest_big":
        print(_ingest_worker(_spec))
    else:
        print(json.dumps(_export_worker(_spec) if _spec["variant"] == "export" else _worker(_spec)))
