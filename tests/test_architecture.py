"""The core never imports Qt, and heavy libraries are imported only by the functions that need them; every import
follows the layers, with no import loops; and a few import directions besides: the test server only from the
benchmarks, the benchmarks only from the command line, the command line never from the self-test.

The layers, lowest first. A module may import modules of its own layer and of the layers before it, never of a layer
after it (a "back-arrow"):

1. utilities: the package itself (``__version__``), paths, fsutil, store, settings, secrets, progress, logs, system,
   resources, the one llama.cpp module (``slowtune.llama``), the safetensors reader (``slowtune.safetensors``),
   the answer scores (``slowtune.scoring``: exact match, F1, key facts, refusals),
   ``selfcmd`` (how to run slowtune itself as a subprocess; standard library only) and the test helpers that need
   nothing above them: the tiny-model builder (``testing.tiny_models``) and the test server (``testing.fake_openai``,
   which imports nothing of slowtune's; who may import it is restricted separately below);
2. models;
3. documents and dataset, the quality sets (``slowtune.quality``: the three axes' questions and scores), and
   ``testing.tiny_project`` (a tiny model and a project with accepted rows, for the tests,
   the benchmarks and the screenshots: it writes dataset rows, so it sits with the dataset);
4. train; 5. teacher; 6. export; 7. chat; 8. eval; 9. gui;
10. bench, selftest and cli, with ``__main__`` and ``doctor`` (the ``slowtune doctor`` report: a command, which only
    the command line imports).

Imports are read from the source with ``ast``, wherever they are: at module level, inside functions (lazy), under
``if TYPE_CHECKING:``, and ``importlib.import_module("slowtune....")`` / ``__import__`` with a literal name. ``from
package import name`` counts as an import of ``package.name`` where that is a module, else of ``package``; a module's
own package ``__init__`` (which Python runs first) is not counted as imported by it.
"""

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


def import_lines(source: str, package: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``source`` (a module of ``package``), anywhere in it: ``import a.b``
    gives ``a.b``; ``from a import b`` gives ``a.b`` (a module, or a name defined in ``a``: see ``resolve``), with
    relative imports made absolute; ``importlib.import_module("a.b")`` and ``__import__("a.b")`` with a literal name
    give ``a.b``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return sorted(found)


def imports_in(source: str, package: str) -> set[str]:
    """Every dotted name ``source`` imports (see ``import_lines``)."""
    return {name for _, name in import_lines(source, package)}


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


def test_only_the_benchmarks_import_the_fake_openai_server() -> None:
    """The fault-injecting test server is a development tool: the benchmarks (and the tests) use it, nothing else."""
    offenders = [path for path in _importers("slowtune.testing.fake_openai")
                 if not path.startswith("slowtune/bench/")]
    assert offenders == []


def test_the_app_and_the_stages_do_not_import_the_benchmarks() -> None:
    # Only the command line registers `slowtune bench`; the benchmarks import the app, never the other way round.
    assert [p for p in _importers("slowtune.bench") if not p.startswith("slowtune/bench/")] == ["slowtune/cli.py"]


def test_the_self_test_does_not_import_the_command_line() -> None:
    # The command line hands the self-test what it needs (the function that builds it): no loop cli <-> selftest.
    assert "slowtune.cli" not in imports_of(SLOWTUNE / "selftest.py")
    assert _importers("slowtune.selftest") == ["slowtune/cli.py"]


# --- the layers (see the module docstring), and no import loops ---
# Each layer: its name, and the modules in it (a name stands for that module and every module under it; the most
# specific name decides, so testing.tiny_project is in the dataset layer while the rest of slowtune.testing is not).
# "slowtune" itself stands for the package's own __init__ only.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("utilities", ("slowtune", "slowtune.paths", "slowtune.fsutil", "slowtune.store", "slowtune.settings",
                   "slowtune.secrets", "slowtune.progress", "slowtune.logs", "slowtune.system", "slowtune.resources",
                   "slowtune.llama", "slowtune.safetensors", "slowtune.selfcmd", "slowtune.scoring",
                   "slowtune.testing")),
    ("models", ("slowtune.models",)),
    ("documents and dataset", ("slowtune.documents", "slowtune.dataset", "slowtune.quality",
                               "slowtune.testing.tiny_project")),
    ("train", ("slowtune.train",)),
    ("teacher", ("slowtune.teacher",)),
    ("export", ("slowtune.export",)),
    ("chat", ("slowtune.chat",)),
    ("eval", ("slowtune.eval",)),
    ("gui", ("slowtune.gui",)),
    ("bench, selftest and cli", ("slowtune.bench", "slowtune.selftest", "slowtune.cli", "slowtune.__main__",
                                 "slowtune.doctor")),
)


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer; None for a module no entry names."""
    best: tuple[int, int] | None = None  # (length of the entry, layer)
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            covers = module == entry or (entry != "slowtune" and module.startswith(entry + "."))
            if covers and (best is None or len(entry) > best[0]):
                best = (len(entry), index)
    return None if best is None else best[1]


def module_files(package_dir: Path) -> dict[str, Path]:
    """Every module of the package in ``package_dir`` (a folder with an __init__.py), by dotted name."""
    files = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module an imported dotted name stands for: the longest of its prefixes that is a module (``slowtune.x.f``,
    a function imported from slowtune.x, is slowtune.x); None for a name outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Module -> (line, module it imports) for every import of one of the package's modules by another."""
    modules = module_files(package_dir)
    graph: dict[str, list[tuple[int, str]]] = {}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = {(line, target) for line, name in import_lines(path.read_text(encoding="utf-8"), package)
                 if (target := resolve(name, modules)) is not None and target != module}
        graph[module] = sorted(edges)
    return graph


def back_arrows(package_dir: Path) -> list[str]:
    """Every import against the layers (or of or by a module that has no layer), one line each."""
    graph, files, problems = import_graph(package_dir), module_files(package_dir), []
    for module in sorted(graph):
        where = files[module].relative_to(package_dir.parent)
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{where}: {module} is in no layer (add it to LAYERS)")
            continue
        for line, target in graph[module]:
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(f"{where}:{line} imports {target}: layer {mine + 1} ({LAYERS[mine][0]}) -> "
                                f"layer {theirs + 1} ({LAYERS[theirs][0]})")
    return problems


def import_loops(package_dir: Path) -> list[str]:
    """Each group of modules that import each other round a loop (a strongly connected component of the import
    graph, found with Tarjan's algorithm): its modules, then the imports between them, one a line."""
    graph = import_graph(package_dir)
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for _, target in graph.get(module, []):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return ["\n".join([", ".join(group) + ":", *(f"  {m}:{line} -> {t}" for m in group for line, t in graph[m]
                                                  if t in group)])
            for group in sorted(groups)]


def test_every_module_has_a_layer_and_imports_only_its_own_and_lower_layers() -> None:
    problems = back_arrows(SLOWTUNE)
    assert not problems, "imports against the layers (tests/test_architecture.py says which layer is which):\n" + \
        "\n".join(problems)


def test_no_module_imports_itself_through_others() -> None:
    loops = import_loops(SLOWTUNE)
    assert not loops, "import loops (each group: the imports between its modules):\n" + "\n".join(loops)


def test_the_layer_check_finds_a_back_arrow_and_a_loop(tmp_path: Path) -> None:
    # Proof that the two checks above can fail: a small package with the same layout, each kind of import once.
    files = {
        "__init__.py": "",
        "paths.py": "import os\n",
        "models/__init__.py": "",
        "models/catalog.py": ("from __future__ import annotations\n\nfrom typing import TYPE_CHECKING\n\n"
                              "from slowtune import paths\n\nif TYPE_CHECKING:\n    from slowtune.train import runs\n\n\n"
                              "def f():\n    import importlib\n\n    importlib.import_module('slowtune.gui.page')\n"
                              "    from ..export import writer\n"),
        "train/__init__.py": "",
        "train/runs.py": "from slowtune.models.catalog import f\n",
        "export/__init__.py": "",
        "export/writer.py": "",
        "gui/__init__.py": "",
        "gui/page.py": "from slowtune.train import runs\n",
        "orphan.py": "",
    }
    for name, text in files.items():
        (tmp_path / "slowtune" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "slowtune" / name).write_text(text)
    assert back_arrows(tmp_path / "slowtune") == [
        "slowtune/models/catalog.py:8 imports slowtune.train.runs: layer 2 (models) -> layer 4 (train)",
        "slowtune/models/catalog.py:14 imports slowtune.gui.page: layer 2 (models) -> layer 9 (gui)",
        "slowtune/models/catalog.py:15 imports slowtune.export.writer: layer 2 (models) -> layer 6 (export)",
        "slowtune/orphan.py: slowtune.orphan is in no layer (add it to LAYERS)",
    ]
    assert import_loops(tmp_path / "slowtune") == ["\n".join([
        "slowtune.gui.page, slowtune.models.catalog, slowtune.train.runs:",
        "  slowtune.gui.page:1 -> slowtune.train.runs",
        "  slowtune.models.catalog:8 -> slowtune.train.runs",
        "  slowtune.models.catalog:14 -> slowtune.gui.page",
        "  slowtune.train.runs:1 -> slowtune.models.catalog",
    ])]
