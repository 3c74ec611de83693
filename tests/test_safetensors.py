"""The one safetensors header reader (slowtune/safetensors.py): byte ranges equal the library's, and every way a
file can fail to be one is named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from slowtune.safetensors import HeaderError, parameter_count, read_header


def _file(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    tensors = {"a.weight": np.arange(12, dtype=np.float32).reshape(3, 4),
               "b.bias": np.arange(5, dtype=np.float16), "scalar": np.array(7, dtype=np.int32)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path, tensors


def test_each_tensor_s_bytes_are_where_the_header_says(tmp_path: Path) -> None:
    path, tensors = _file(tmp_path)
    header = read_header(path)
    assert header.metadata == {"format": "pt"}
    assert header.file_size == path.stat().st_size and header.data_end == header.file_size
    entries = header.tensors()
    assert set(entries) == set(tensors)
    data = path.read_bytes()
    for name, array in tensors.items():
        entry = entries[name]
        assert entry.file == path and entry.shape == array.shape and entry.nbytes == array.nbytes
        assert data[entry.start:entry.end] == array.tobytes()
    assert entries["a.weight"].dtype == "F32" and entries["b.bias"].dtype == "F16"
    assert header.parameter_count == 12 + 5 + 1
    assert parameter_count([path, path]) == 2 * 18


@pytest.mark.parametrize("content, reason", [
    (b"\x01\x02", "it is 2 bytes long"),
    ((10**9).to_bytes(8, "little") + b"{}", "truncated, or an incomplete download"),
    ((50).to_bytes(8, "little") + b"{}", "truncated, or an incomplete download"),
    ((4).to_bytes(8, "little") + b"nope", "its header is not JSON"),
    ((2).to_bytes(8, "little") + b"\xff\xfe", "its header is not JSON"),
    ((2).to_bytes(8, "little") + b"[]", "its header is not a JSON object"),
])
def test_a_file_that_is_not_safetensors_is_named_with_the_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(HeaderError) as caught:
        read_header(path)
    assert caught.value.reason == reason and str(caught.value) == reason and caught.value.path == path


def test_a_malformed_entry_is_a_header_error_and_a_missing_file_an_os_error(tmp_path: Path) -> None:
    raw = json.dumps({"w": {"dtype": "F32", "shape": [2]}}).encode()
    path = tmp_path / "entry.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 8)
    header = read_header(path)
    with pytest.raises(HeaderError, match="entry for w is malformed"):
        header.tensors()
    with pytest.raises(OSError):
        read_header(tmp_path / "missing.safetensors")
