"""Facts about this machine that decide what a user can train: memory, free disk and disk read speed.

The streamed trainer reads every streamed block twice per step (forward, then again for the backward pass), so
when a model does not fit in memory its speed floor is set by the disk: the read speed is measured, not guessed, on
the folder the models live in.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Memory:
    total_bytes: int
    available_bytes: int


def memory() -> Memory:
    import psutil

    vm = psutil.virtual_memory()
    return Memory(int(vm.total), int(vm.available))


def is_apple_silicon() -> bool:
    return sys.platform == "darwin" and platform.machine() == "arm64"


def free_disk_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


@dataclass(frozen=True)
class DiskSpeed:
    bytes_per_second: float
    bytes_read: int
    seconds: float
    method: str  # how the page cache was kept out of the measurement

    @property
    def gb_per_second(self) -> float:
        return self.bytes_per_second / 1e9


def _drop_from_cache(fd: int) -> str | None:
    """Make the next read of ``fd`` come from the disk; returns how, or None when it cannot."""
    if sys.platform == "darwin":
        import fcntl

        # F_NOCACHE: reads through this descriptor bypass the unified buffer cache.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, getattr(fcntl, "F_NOCACHE", 48), 1)
            return "F_NOCACHE"
        return None
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return "fadvise(DONTNEED)"
    return None


def measure_read_speed(folder: Path, size_bytes: int = 256 * 2**20, block: int = 8 * 2**20) -> DiskSpeed:
    """Write a scratch file in ``folder``, drop it from the page cache, and time reading it back."""
    folder.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(block)
    fd, name = tempfile.mkstemp(prefix=".slowtune-disk-speed-", dir=folder)
    try:
        written = 0
        while written < size_bytes:
            written += os.write(fd, chunk)
        os.fsync(fd)
        method = _drop_from_cache(fd)
        os.close(fd)
        fd = os.open(name, os.O_RDONLY)
        method = _drop_from_cache(fd) or method
        start = time.perf_counter()
        total = 0
        while True:
            data = os.read(fd, block)
            if not data:
                break
            total += len(data)
        seconds = max(time.perf_counter() - start, 1e-9)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name)
    return DiskSpeed(total / seconds, total, seconds, method or "page cache not bypassed: may read too fast")
