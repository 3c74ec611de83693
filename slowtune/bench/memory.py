"""What the benchmarks measure memory with: a process's own peak, a process tree's resident memory sampled while
it runs, and the page cache emptied before a cold run."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any


def rss() -> int:
    """This process's resident memory now."""
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss() -> int:
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


def peak_tree_rss(proc: Any, stop: Any, result: dict[str, int]) -> None:
    """Until ``stop`` is set, every 20 ms: the largest process of ``proc``'s tree (``result["max_process"]``) and
    the tree's sum (``result["total"]``), each the peak seen."""
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


def tree_memory(pid: int) -> tuple[int, int]:
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


def drop_page_cache() -> bool:
    """Empty the page cache (root on Linux), so a run reads the model cold, as a Mac that cannot hold it does."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False
