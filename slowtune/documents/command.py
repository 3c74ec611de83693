"""``slowtune ingest PROJECT PATH...``: add documents and folders to a project and report on every file."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("project", help="a project name (under slowtune's projects folder) or a project folder")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files and folders (searched recursively)")
    p.add_argument("--chunk-tokens", type=int, help="target chunk size in tokens (default: settings, 512)")
    p.add_argument("--chunk-overlap", type=int, help="overlap between chunks in tokens (default: settings, 64)")
    p.add_argument("--max-file-mb", type=int, help="larger files are not read (default: settings, 100)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> int:
    from slowtune.documents.library import ingest
    from slowtune.progress import Cancelled, Progress, RichProgressBar
    from slowtune.settings import load_settings
    from slowtune.store import StoreError, open_or_create

    settings = load_settings().settings
    tokens = args.chunk_tokens or settings.chunk_tokens
    overlap = settings.chunk_overlap if args.chunk_overlap is None else args.chunk_overlap
    max_mb = args.max_file_mb or settings.max_file_mb
    if tokens < 32 or not 0 <= overlap < tokens or max_mb < 1:
        print("slowtune ingest: --chunk-tokens must be >= 32, 0 <= --chunk-overlap < --chunk-tokens, "
              "--max-file-mb >= 1", file=sys.stderr)
        return 1
    try:
        project = open_or_create(args.project)
    except StoreError as exc:
        print(f"slowtune ingest: {exc}", file=sys.stderr)
        return 1
    progress = Progress()
    previous = signal.signal(signal.SIGINT, lambda *_: progress.cancel())
    try:
        with project, RichProgressBar(transient=True) as bar:
            progress.add_listener(bar)
            report = ingest(project, args.paths, chunk_tokens=tokens, chunk_overlap=overlap, max_file_mb=max_mb,
                            progress=progress)
    except Cancelled:
        print("slowtune ingest: stopped; documents read so far are kept.", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    missing = [str(p) for p in args.paths if not p.exists() and not p.is_symlink()]
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 1 if missing else 0
    from rich.console import Console
    from rich.table import Table

    table = Table("file", "status", "pages", "tokens", "chunks", "reason")
    for f in report.files:
        table.add_row(f.path, f.status, "" if f.pages is None else str(f.pages), str(f.tokens), str(f.chunks),
                      f.reason or "")
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    console.print(table)
    if missing:
        console.print(f"Not found: {', '.join(missing)}")
    s = report.summary
    docs = ", ".join(f"{n} {status}" for status, n in sorted(s["documents"].items()))
    console.print(f"Project {project.root} now holds: {docs}; {s['pages']} pages, {s['tokens']:,} tokens in {s['chunks']} chunks "
                  f"({report.seconds:.1f} s).")
    return 1 if missing else 0
