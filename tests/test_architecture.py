"""The core never imports Qt, and heavy libraries are imported only by the functions that need them; and a few import
directions (found by reading every module's imports, lazy ones included): the test server only from the benchmarks,
the benchmarks only from the command line, the command line never from the self-test."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

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


# --- who imports whom: an AST scan of every module, lazy imports (inside functions) and importlib calls included ---
SLOWTUNE = Path(slowtune.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SLOWTUNE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    module = _module_name(path)
    return imports_in(path.read_text(encoding="utf-8"), module if path.name == "__init__.py" else
                      module.rpartition(".")[0])


def imports_in(source: str, package: str) -> set[str]:
    """Every module ``source`` (a module of ``package``) imports, anywhere in it: ``import a.b``, ``from a import b``
    (as ``a`` and ``a.b``), relative imports resolved, and ``importlib.import_module("a.b")`` / ``__import__("a.b")``
    with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def _importers(target: str) -> list[str]:
    return sorted(str(path.relative_to(SLOWTUNE.parent)) for path in SLOWTUNE.rglob("*.py")
                  if any(name == target or name.startswith(target + ".") for name in imports_of(path)))


def test_the_import_scan_sees_lazy_and_importlib_imports() -> None:
    # Proof that the checks below can fail: each spelling of an import is seen.
    source = ("import importlib\n\ndef f():\n    from slowtune.testing import fake_openai\n"
              "    importlib.import_module('slowtune.bench.gui')\n    __import__('slowtune.cli')\n"
              "    from ..bench import worker\n")
    found = imports_in(source, "slowtune.gui")
    assert {"slowtune.testing.fake_openai", "slowtune.bench.gui", "slowtune.cli", "slowtune.bench.worker"} <= found


# Modules outside slowtune/bench/ still allowed to import the test server, each with why. The screenshot tour is a
# development tool (run from a source checkout) that drives the whole app against the test teacher; it is Qt code,
# so it cannot move under slowtune/bench/. Remove an entry when its module stops importing the server.
FAKE_OPENAI_ALSO_IMPORTED_BY = {"slowtune/gui/screenshot.py"}


def test_only_the_benchmarks_import_the_fake_openai_server() -> None:
    """The fault-injecting test server is a development tool: the benchmarks (and the tests) use it, nothing else."""
    offenders = [path for path in _importers("slowtune.testing.fake_openai")
                 if not path.startswith("slowtune/bench/")]
    assert set(offenders) == FAKE_OPENAI_ALSO_IMPORTED_BY


def test_the_app_and_the_stages_do_not_import_the_benchmarks() -> None:
    # Only the command line registers `slowtune bench`; the benchmarks import the app, never the other way round.
    assert [p for p in _importers("slowtune.bench") if not p.startswith("slowtune/bench/")] == ["slowtune/cli.py"]


def test_the_self_test_does_not_import_the_command_line() -> None:
    # The command line hands the self-test what it needs (the function that builds it): no loop cli <-> selftest.
    assert "slowtune.cli" not in imports_of(SLOWTUNE / "selftest.py")
    assert _importers("slowtune.selftest") == ["slowtune/cli.py"]
