"""``slowtune bench ingest``: document ingest of 1,000 PDF pages, the re-ingest of the same files, and the peak
memory of one 2,000-page PDF ingested in a fresh process (``slowtune.bench.worker``), its reader workers included.
The PDFs are made once (with fpdf2, a development dependency) and kept in the cache folder."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from slowtune.bench.memory import peak_tree_rss
from slowtune.selfcmd import module_command

_PARAGRAPH = ("The pump station draws water from the reservoir and sends it to the eastern district. Each "
              "valve is checked every spring, and the log records pressure, flow and the name of the engineer. ")


def add_arguments(i: argparse.ArgumentParser) -> None:
    i.add_argument("--quick", action="store_true", help="a small corpus: a smoke test of the benchmark itself")


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
        proc = subprocess.Popen(module_command("slowtune.bench.worker", json.dumps(spec)), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        peak: dict[str, int] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=peak_tree_rss, args=(proc, stop, peak), daemon=True)
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


def ingest_worker(spec: dict[str, Any]) -> str:
    """One file ingested into a new project in this process (``bench ingest`` samples its memory)."""
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    with Project.create(Path(spec["project"])) as project:
        result = ingest(project, [Path(spec["file"])])
    return f"{result.files[0].status} {result.files[0].pages}"
