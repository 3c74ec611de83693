"""The core never imports Qt, and heavy libraries are imported only by the functions that need them."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import slowtune

QT = ("PySide6", "shiboken6")
HEAVY = ("mlx", "mlx_lm", "llama_cpp", "openai", "transformers")


def _core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(slowtune.__path__, prefix="slowtune."):
        if info.name.startswith("slowtune.gui") or info.name == "slowtune.__main__":
            continue
        names.append(info.name)
    return names


def _imported_after(modules: list[str]) -> set[str]:
    """Import ``modules`` in a fresh interpreter; the top-level names of everything that got imported."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_modules_are_found() -> None:
    modules = _core_modules()
    # The walk must really see the stage packages, or the checks below would pass vacuously.
    for expected in ("slowtune.cli", "slowtune.store", "slowtune.secrets", "slowtune.train", "slowtune.export"):
        assert expected in modules


def test_core_imports_no_qt_and_no_heavy_library() -> None:
    imported = _imported_after(_core_modules())
    assert not imported & set(QT), f"Qt imported outside slowtune/gui: {imported & set(QT)}"
    assert not imported & set(HEAVY), f"heavy libraries imported at module level: {imported & set(HEAVY)}"


def test_the_check_sees_qt_when_it_is_imported() -> None:
    # The same detector, pointed at the GUI, must see Qt: proof that the check above can fail.
    assert set(QT) & _imported_after(["slowtune.gui.app"])
