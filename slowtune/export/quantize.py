"""Quantise a GGUF with llama.cpp itself (``llama_model_quantize``), several types from one F16 file.

Each quantisation runs in a child process: llama.cpp logs to stderr, allocates its own buffers, and a
crash in native code must not take the app down. Results are written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from slowtune.export.names import QUANT_TYPES, export_file_name
from slowtune.progress import Progress, ensure
from slowtune.selfcmd import module_command


class QuantizeError(ValueError):
    pass


def parse_quant_types(text: str) -> list[str]:
    """``"q4_k_m,Q8_0"`` -> ``["Q4_K_M", "Q8_0"]``, refusing unknown names with the list of known ones."""
    names = [t.strip().upper() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in QUANT_TYPES]
    if unknown:
        raise QuantizeError(f"Unknown quantisation type {', '.join(unknown)}; choose from {', '.join(QUANT_TYPES)}.")
    if not names:
        raise QuantizeError(f"No quantisation type given; choose from {', '.join(QUANT_TYPES)}.")
    return list(dict.fromkeys(names))


def quantize(source: Path, dest: Path, qtype: str, *, threads: int | None = None) -> Path:
    """Write ``source`` quantised to ``qtype`` at ``dest`` (in a child process)."""
    if qtype not in QUANT_TYPES:
        raise QuantizeError(f"Unknown quantisation type {qtype}; choose from {', '.join(QUANT_TYPES)}.")
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    spec = {"source": str(source), "dest": str(tmp), "ftype": QUANT_TYPES[qtype], "threads": threads or os.cpu_count()}
    try:
        proc = subprocess.run(module_command("slowtune.export.quantize", json.dumps(spec)),
                              capture_output=True, text=True)
        if proc.returncode != 0 or not tmp.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise QuantizeError(f"llama.cpp could not quantise {source.name} to {qtype} (exit {proc.returncode}):\n{tail}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def quantize_many(source: Path, out_dir: Path, stem: str, qtypes: list[str],
                  progress: Progress | None = None) -> dict[str, Path]:
    """Every type in ``qtypes`` from one (F16 or F32) GGUF; files are named ``<stem>-<TYPE>.gguf``, as exports name
    them (``slowtune.export.folder``)."""

    progress = ensure(progress)
    results = {}
    for done, qtype in enumerate(qtypes):
        progress.report("quantise", done, len(qtypes), status=qtype)
        progress.check()
        results[qtype] = quantize(source, out_dir / export_file_name(stem, qtype), qtype)
    progress.report("quantise", len(qtypes), len(qtypes))
    return results


def _child(spec: dict[str, object]) -> int:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, str(spec["ftype"]))
    params.nthread = int(spec["threads"])  # type: ignore[arg-type]
    rc = llama_cpp.llama_model_quantize(str(spec["source"]).encode(), str(spec["dest"]).encode(), ctypes.byref(params))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_child(json.loads(sys.argv[1])))
