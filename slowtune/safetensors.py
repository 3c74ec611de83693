"""The one reader of safetensors headers: what a ``.safetensors`` file holds, read without its data.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's dtype, shape and byte range
(``data_offsets``, counted from the end of the header; ``__metadata__`` holds string metadata), then the data.
Reading the header here, rather than with the safetensors library, needs nothing but the standard library and gives
each tensor's absolute byte range, which the streamed training engine reads and the GGUF writer memory-maps (every
dtype, bfloat16 included, which the library's numpy backend refuses).

Callers turn a :class:`HeaderError` into their own error in their own words; an ``OSError`` (a missing or unreadable
file) is passed on as it is.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MAX_HEADER_BYTES", "Header", "HeaderError", "TensorEntry", "parameter_count", "read_header"]

# The safetensors format caps its JSON header at 100 MB; real headers are well under 1 MB.
MAX_HEADER_BYTES = 100_000_000


class HeaderError(ValueError):
    """``path`` is not a valid safetensors file; ``reason`` says why in a few words (no path), e.g. "its header is
    not JSON"."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes are in its file (a header entry: no data is read)."""

    name: str
    file: Path
    dtype: str  # the safetensors code: F32, F16, BF16, I32, U32, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets of the data in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def count(self) -> int:
        """Elements in the tensor."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Header:
    """One file's header: the JSON as written (``raw``, ``__metadata__`` included) and where the data starts."""

    path: Path
    file_size: int
    data_start: int  # 8 + the JSON header's length
    raw: dict[str, Any]

    @property
    def metadata(self) -> dict[str, Any]:
        meta = self.raw.get("__metadata__")
        return meta if isinstance(meta, dict) else {}

    def tensors(self) -> dict[str, TensorEntry]:
        """Every tensor, by name, in header order. Raises HeaderError for an entry without a dtype, shape or range."""
        out = {}
        for name, entry in self.raw.items():
            if name == "__metadata__":
                continue
            try:
                start, end = (int(v) for v in entry["data_offsets"])
                shape = tuple(int(d) for d in entry["shape"])
                dtype = str(entry["dtype"])
            except (KeyError, TypeError, ValueError):
                raise HeaderError(self.path, f"its header entry for {name} is malformed") from None
            out[name] = TensorEntry(name, self.path, dtype, shape, self.data_start + start, self.data_start + end)
        return out

    @property
    def data_end(self) -> int:
        """The absolute offset where the last tensor's bytes end (the file is truncated when it is shorter)."""
        return max((t.end for t in self.tensors().values()), default=self.data_start)

    @property
    def parameter_count(self) -> int:
        """Elements in all the file's tensors."""
        return sum(t.count for t in self.tensors().values())


def read_header(path: Path) -> Header:
    """The header of the safetensors file ``path``. Raises HeaderError when it is not one, OSError when it cannot be
    read."""
    path = Path(path)
    with path.open("rb") as handle:
        size = path.stat().st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise HeaderError(path, f"it is {size} bytes long")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise HeaderError(path, "truncated, or an incomplete download")
        text = handle.read(length)
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HeaderError(path, "its header is not JSON") from None
    if not isinstance(raw, dict):
        raise HeaderError(path, "its header is not a JSON object")
    return Header(path, size, 8 + length, raw)


def parameter_count(paths: list[Path]) -> int:
    """Elements in all the tensors of the safetensors files ``paths``, from their headers."""
    return sum(read_header(p).parameter_count for p in paths)
