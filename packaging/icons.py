"""The app icon for macOS: resources/icons/slowtune.svg rendered with Qt into an .icns file.

An .icns file is a list of PNG images, each tagged with its size: "icns", the file's length, then for each image
its four-letter type, its length (8 bytes of header included) and the PNG data, all lengths big-endian.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

# (type, pixels): the PNG-based sizes of Apple's icon family, from 16 pt to 512 pt @2x.
ICNS_TYPES = (
    ("icp4", 16), ("icp5", 32), ("icp6", 64), ("ic07", 128), ("ic08", 256), ("ic09", 512),
    ("ic10", 1024), ("ic11", 32), ("ic12", 64), ("ic13", 256), ("ic14", 512),
)


def pack_icns(pngs: dict[int, bytes]) -> bytes:
    """An .icns file holding, for each type in ICNS_TYPES, the PNG for its pixel size."""
    body = b""
    for kind, size in ICNS_TYPES:
        data = pngs[size]
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"the {size} px image is not a PNG")
        body += kind.encode("ascii") + struct.pack(">I", len(data) + 8) + data
    return b"icns" + struct.pack(">I", len(body) + 8) + body


def read_icns(data: bytes) -> dict[str, bytes]:
    """The images in an .icns file, by type (for checking what pack_icns wrote)."""
    if data[:4] != b"icns" or struct.unpack(">I", data[4:8])[0] != len(data):
        raise ValueError("not an .icns file")
    images, offset = {}, 8
    while offset < len(data):
        kind = data[offset:offset + 4].decode("ascii")
        length = struct.unpack(">I", data[offset + 4:offset + 8])[0]
        images[kind] = data[offset + 8:offset + length]
        offset += length
    return images


def render_pngs(svg: Path, sizes: set[int]) -> dict[int, bytes]:
    """The SVG drawn at each size, as PNG bytes (Qt, offscreen)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not an SVG image Qt can draw")
    pngs = {}
    for size in sorted(sizes):
        image = QImage(size, size, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        image.save(buffer, "PNG")
        buffer.close()
        pngs[size] = bytes(data.data())
    return pngs


def write_icns(svg: Path, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = pack_icns(render_pngs(svg, {size for _kind, size in ICNS_TYPES}))
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out
