"""``slowtune doctor``: what a user (or a bug report) needs to know about this machine and install."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from slowtune import __version__, paths, system


def _mlx_info() -> dict[str, Any]:
    try:
        import mlx.core as mx
    except Exception as exc:  # a broken wheel must not stop the rest of the report
        return {"ok": False, "error": f"mlx cannot be imported: {exc}"}
    info: dict[str, Any] = {"ok": True, "version": getattr(mx, "__version__", "?")}
    device = mx.default_device()
    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    info["device"] = "Metal GPU" if metal and device.type == mx.gpu else "CPU"
    if not metal:
        preload = os.environ.get("LD_PRELOAD", "")
        info["blas"] = "OpenBLAS (LD_PRELOAD)" if "openblas" in preload else "the wheel's reference BLAS"
    # One real operation, so "ok" means MLX computes here, not only that it imports.
    a = mx.arange(6, dtype=mx.float32).reshape(2, 3)
    info["check"] = "ok" if float((a @ a.T).sum().item()) == 83.0 else "wrong result"
    try:
        import mlx_lm

        info["mlx_lm"] = getattr(mlx_lm, "__version__", "?")
    except Exception as exc:
        info["mlx_lm"] = f"cannot be imported: {exc}"
    return info


def _llama_info() -> dict[str, Any]:
    try:
        import llama_cpp
    except Exception as exc:
        return {"ok": False, "error": f"llama_cpp cannot be imported: {exc}"}
    system_info = llama_cpp.llama_print_system_info()
    if isinstance(system_info, bytes):
        system_info = system_info.decode("utf-8", "replace")
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    backend = ("Metal" if sys.platform == "darwin" else "GPU") if gpu else "CPU"
    return {
        "ok": True,
        "version": llama_cpp.__version__,
        "gpu_offload": gpu,
        "backend": backend,
        "system_info": " ".join(system_info.split()),
        "chat": _chat_info(backend),
    }


def _chat_info(backend: str) -> str:
    """How `slowtune chat` runs a model here (chat/model.py and llama.py make these choices)."""
    from slowtune.llama import repacking_is_safe

    if backend != "CPU":
        return f"on {backend} with all layers offloaded"
    # llama-cpp-python's default thread count, which the chat engine keeps.
    threads = max((os.cpu_count() or 2) // 2, 1)
    text = f"on the CPU with {threads} thread{'s' if threads > 1 else ''}"
    if not repacking_is_safe():
        text += "; weight repacking off (this CPU has AMX, where repacked quantised weights crash llama.cpp)"
    return text


def _keychain_info() -> dict[str, Any]:
    from slowtune import secrets

    try:
        info = secrets.backend_info()
    except Exception as exc:
        return {"ok": False, "error": f"keyring failed: {type(exc).__name__}"}
    return {"ok": info.usable, "backend": info.name, "os_keychain": info.os_keychain, "note": info.note}


def collect(measure_disk: bool = True, disk_bytes: int = 256 * 2**20) -> dict[str, Any]:
    data_dir = paths.data_dir()
    mem = system.memory()
    report: dict[str, Any] = {
        "slowtune": __version__,
        "python": sys.version.split()[0],
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "apple_silicon": system.is_apple_silicon(),
        "mlx": _mlx_info(),
        "llama_cpp": _llama_info(),
        "memory": {"total_gb": round(mem.total_bytes / 1e9, 1), "available_gb": round(mem.available_bytes / 1e9, 1)},
        "disk": {"free_gb": round(system.free_disk_bytes(data_dir) / 1e9, 1), "folder": str(data_dir)},
        "keychain": _keychain_info(),
        "folders": {k: str(v) for k, v in paths.all_folders().items()},
    }
    if measure_disk:
        speed = system.measure_read_speed(data_dir, size_bytes=disk_bytes)
        report["disk"].update(read_gb_per_s=round(speed.gb_per_second, 2), read_method=speed.method,
                              read_mb=round(speed.bytes_read / 2**20))
    return report


def render(report: dict[str, Any]) -> str:
    lines = [f"slowtune {report['slowtune']}  (Python {report['python']}, {report['platform']})"]
    mlx = report["mlx"]
    if mlx["ok"]:
        extra = f", BLAS: {mlx['blas']}" if "blas" in mlx else ""
        lines.append(f"MLX        {mlx['version']} on {mlx['device']} (check: {mlx['check']}{extra}); mlx-lm {mlx['mlx_lm']}")
    else:
        lines.append(f"MLX        PROBLEM: {mlx['error']}")
    ll = report["llama_cpp"]
    if ll["ok"]:
        lines.append(f"llama.cpp  llama-cpp-python {ll['version']}, runs on {ll['backend']}")
        lines.append(f"           {ll['system_info']}")
        lines.append(f"Chat       runs {ll['chat']}")
    else:
        lines.append(f"llama.cpp  PROBLEM: {ll['error']}")
    mem, disk = report["memory"], report["disk"]
    lines.append(f"Memory     {mem['total_gb']} GB total, {mem['available_gb']} GB available")
    speed = ""
    if "read_gb_per_s" in disk:
        speed = f"; reads {disk['read_gb_per_s']} GB/s ({disk['read_mb']} MB, {disk['read_method']})"
    lines.append(f"Disk       {disk['free_gb']} GB free in {disk['folder']}{speed}")
    kc = report["keychain"]
    if "error" in kc:
        lines.append(f"Keychain   PROBLEM: {kc['error']}")
    else:
        lines.append(f"Keychain   {kc['backend']}: {kc['note']}")
    lines.append("Folders")
    for name, folder in report["folders"].items():
        lines.append(f"  {name:<9}{folder}")
    return "\n".join(lines)


def healthy(report: dict[str, Any]) -> bool:
    """MLX and llama.cpp must work; a missing keychain is reported but is not a failure."""
    return bool(report["mlx"]["ok"] and report["mlx"].get("check") == "ok" and report["llama_cpp"]["ok"])
