"""Crash-safe file writes.

Every file a crash could tear (settings, dataset JSONL, adapter weights, GGUF exports) is written to a
temporary file in the same folder, fsynced, and renamed over the target. A rename within one folder is
atomic on APFS and on Linux file systems, so a reader sees the old file or the new one, never half of each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: Path) -> None:
    # The rename is only durable once the directory entry is on disk too (not possible on Windows).
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def default_file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success it replaces ``path``.

    If the body raises, the temporary file is removed and ``path`` is left exactly as it was.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_writer needs a write mode, got {mode!r}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(OSError):
            # mkstemp makes 0600 files; keep the permissions of the file being replaced, or give a new file
            # the usual ones (another account, such as Ollama's service, may need to read an export).
            os.chmod(tmp, target.stat().st_mode & 0o7777 if target.exists() else default_file_mode())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    with atomic_writer(path, "w", encoding=encoding, newline="") as handle:
        handle.write(text)


def set_aside(path: Path, *, move: bool = False) -> Path:
    """Keep a file that could not be read as ``<name>.bad-<time>`` beside it, so nothing the user had is lost.

    ``move``: take the file away (the next start does not find it again) rather than copy it.
    """
    import shutil
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.bad-{stamp}")
    n = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.bad-{stamp}-{n}")
        n += 1
    if move:
        os.replace(path, aside)
    else:
        shutil.copy2(path, aside)
    return aside


@contextlib.contextmanager
def staged_folder(dest: Path) -> Iterator[Path]:
    """A new, empty ``.<name>.partial-<pid>`` folder beside ``dest`` to fill; when the block ends normally it
    replaces ``dest`` (an earlier one is removed), and when it raises it is removed, so ``dest`` is never half made.
    """
    import shutil

    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
