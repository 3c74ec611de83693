"""What the app bundle is made of, in one place: the PyInstaller spec, the build script and the tests read it.

This module imports neither PyInstaller nor Qt, so the tests can check it without building anything.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"

APP_NAME = "Slowtune"  # Slowtune.app, the Dock and the menu bar
EXE_NAME = "slowtune"  # the program inside; it also runs every CLI command
BUNDLE_ID = "org.slowtune.Slowtune"
ENTITLEMENTS = PACKAGING / "entitlements.plist"
ICON_SVG = ROOT / "resources" / "icons" / "slowtune.svg"

# mlx 0.32.4 (uv.lock) ships arm64 wheels tagged macosx_14_0, 15_0 and 26_0: the app cannot run below macOS 14.
# The build raises this to whatever the wheels installed on the build Mac need (see macos_minimum); a test checks
# it against uv.lock whenever mlx is updated.
MLX_MACOS_FLOOR = "14.0"

# Files the app reads at run time: (source relative to the repository, folder inside the bundle). Everything in
# resources/ is read through importlib.resources as the package folder slowtune/resources (slowtune.resources),
# and slowtune/testing/corpus.txt trains the tokenizer of the tiny model that the self-test builds.
RESOURCE_DIR = "resources"
PACKAGE_DATA = ("slowtune/testing/corpus.txt",)

# Imported by nothing the app runs, but big or pulled in by optional imports: left out of the bundle.
EXCLUDES = [
    # Qt modules the app does not use (the Essentials wheel already has no WebEngine, 3D or Charts).
    *(f"PySide6.{m}" for m in (
        "Qt3DAnimation", "Qt3DCore", "Qt3DExtras", "Qt3DInput", "Qt3DLogic", "Qt3DRender", "QtBluetooth",
        "QtCharts", "QtConcurrent", "QtDataVisualization", "QtDesigner", "QtGraphs", "QtGraphsWidgets", "QtHelp",
        "QtHttpServer", "QtLocation", "QtMultimedia", "QtMultimediaWidgets", "QtNetworkAuth", "QtNfc",
        "QtOpenGL", "QtOpenGLWidgets", "QtPdf", "QtPdfWidgets", "QtPositioning", "QtPrintSupport", "QtQml",
        "QtQuick", "QtQuick3D", "QtQuickControls2", "QtQuickWidgets", "QtRemoteObjects", "QtScxml", "QtSensors",
        "QtSerialBus", "QtSerialPort", "QtSpatialAudio", "QtSql", "QtStateMachine", "QtSvgWidgets", "QtTest",
        "QtTextToSpeech", "QtUiTools", "QtWebChannel", "QtWebEngineCore", "QtWebEngineQuick",
        "QtWebEngineWidgets", "QtWebSockets", "QtXml",
    )),
    "tkinter", "_tkinter", "turtle", "idlelib", "pydoc_data",
    # Deep-learning stacks transformers can use but slowtune never does.
    "torch", "torchvision", "torchaudio", "tensorflow", "jax", "flax", "keras", "onnxruntime",
    # Development tools and test-only packages (keyrings.alt is the tests' plain-text keyring).
    "pytest", "_pytest", "pytestqt", "ruff", "PyInstaller", "keyrings.alt", "fpdf", "IPython", "matplotlib",
    "tests", "llama_cpp.server", "mlx._distributed_utils",
]

# Extensions the Library reads (slowtune.documents.library.SUPPORTED_SUFFIXES) and the uniform type each one has
# on macOS. Info.plist claims these types (as an "Alternate" handler, never the default app), so documents and
# folders can be dropped on the Dock icon.
SUFFIX_TYPES = {
    ".pdf": "com.adobe.pdf",
    ".docx": "org.openxmlformats.wordprocessingml.document",
    ".html": "public.html",
    ".htm": "public.html",
    ".xhtml": "public.xhtml",
    ".md": "net.daringfireball.markdown",
    ".markdown": "net.daringfireball.markdown",
    ".txt": "public.plain-text",
    ".text": "public.plain-text",
    ".rst": "org.docutils.restructuredtext",
    ".csv": "public.comma-separated-values-text",
}
# Types macOS may not declare itself: imported (declared by their owners, described here so macOS knows them).
IMPORTED_TYPES = [
    {
        "UTTypeIdentifier": "net.daringfireball.markdown",
        "UTTypeDescription": "Markdown document",
        "UTTypeConformsTo": ["public.plain-text"],
        "UTTypeTagSpecification": {"public.filename-extension": ["md", "markdown"]},
    },
    {
        "UTTypeIdentifier": "org.docutils.restructuredtext",
        "UTTypeDescription": "reStructuredText document",
        "UTTypeConformsTo": ["public.plain-text"],
        "UTTypeTagSpecification": {"public.filename-extension": ["rst"]},
    },
]


def app_version() -> str:
    """The version the bundle carries: slowtune.__version__, which the package metadata must agree with."""
    text = (ROOT / "slowtune" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__\s*=\s*"([^"]+)"', text, re.MULTILINE)
    if not match:
        raise ValueError("slowtune/__init__.py has no __version__")
    return match.group(1)


def app_datas(root: Path = ROOT) -> list[tuple[str, str]]:
    """PyInstaller ``datas`` entries, one per file, for everything the app reads at run time."""
    entries = []
    resources = root / RESOURCE_DIR
    for path in sorted(resources.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            relative = path.relative_to(resources)
            entries.append((str(path), str(PurePosixPath("slowtune", "resources", *relative.parent.parts))))
    for name in PACKAGE_DATA:
        entries.append((str(root / name), str(PurePosixPath(name).parent)))
    return entries


def bundled_paths(datas: Iterable[tuple[str, str]]) -> set[str]:
    """Where each ``datas`` entry ends up inside the bundle, as "folder/name" paths."""
    return {str(PurePosixPath(dest) / Path(src).name) for src, dest in datas}


# --- Info.plist ---------------------------------------------------------------------------------------------------
def document_types() -> list[dict[str, object]]:
    groups: dict[str, list[str]] = {
        "PDF document": ["com.adobe.pdf"],
        "Word document": ["org.openxmlformats.wordprocessingml.document"],
        "Web page": ["public.html", "public.xhtml"],
        "Markdown document": ["net.daringfireball.markdown"],
        "Text document": ["public.plain-text", "org.docutils.restructuredtext",
                          "public.comma-separated-values-text"],
        "Folder of documents": ["public.folder"],
    }
    return [
        {"CFBundleTypeName": name, "CFBundleTypeRole": "Viewer", "LSHandlerRank": "Alternate",
         "LSItemContentTypes": types}
        for name, types in groups.items()
    ]


# Shown by macOS when the app first reads a protected folder without the user having picked or dropped the file
# there (re-scanning a library folder later, say). Apple: optional, "but highly recommended".
FOLDER_USAGE = ("Slowtune reads the documents you add to a project's library from this folder, and reads them "
                "again when you re-scan the library.")


def bundle_version(version: str) -> str:
    """``version`` as Info.plist needs it: CFBundleShortVersionString is three period-separated integers (Apple's
    Information Property List reference), so a pre-release or local version cannot be put in a bundle as it is."""
    if not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH (three integers), as macOS needs for "
                         "CFBundleShortVersionString; set a release version in slowtune/__init__.py and pyproject.toml")
    return version


def info_plist(version: str, minimum_macos: str) -> dict[str, object]:
    """The Info.plist keys slowtune sets (PyInstaller adds the executable and icon names)."""
    version = bundle_version(version)
    return {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": BUNDLE_ID,
        "CFBundleShortVersionString": version,
        "CFBundleVersion": version,
        "CFBundlePackageType": "APPL",
        "CFBundleDevelopmentRegion": "en",
        "LSMinimumSystemVersion": minimum_macos,
        "LSArchitecturePriority": ["arm64"],
        "LSRequiresNativeExecution": True,  # Apple silicon only: never start under Rosetta
        "LSApplicationCategoryType": "public.app-category.productivity",
        "NSHighResolutionCapable": True,
        "NSRequiresAquaSystemAppearance": False,  # follows Dark Mode
        "NSSupportsAutomaticGraphicsSwitching": True,
        "NSPrincipalClass": "NSApplication",
        "NSHumanReadableCopyright": "slowtune, Apache License 2.0",
        "CFBundleDocumentTypes": document_types(),
        "UTImportedTypeDeclarations": IMPORTED_TYPES,
        "NSDocumentsFolderUsageDescription": FOLDER_USAGE,
        "NSDesktopFolderUsageDescription": FOLDER_USAGE,
        "NSDownloadsFolderUsageDescription": FOLDER_USAGE,
        "NSRemovableVolumesUsageDescription": FOLDER_USAGE,
        "NSNetworkVolumesUsageDescription": FOLDER_USAGE,
    }


# --- macOS minimum version from the wheels' platform tags ----------------------------------------------------------
_MACOS_TAG = re.compile(r"macosx_(\d+)_(\d+)_(\w+)$")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def wheel_macos_minimum(tags: Sequence[str], arch: str = "arm64") -> str | None:
    """The oldest macOS one installed wheel runs on, from its WHEEL ``Tag:`` lines (None: not macOS-specific)."""
    versions = []
    for tag in tags:
        platform_tag = tag.rsplit("-", 1)[-1]
        for part in platform_tag.split("."):
            match = _MACOS_TAG.match(part)
            if match and match.group(3) in (arch, "universal2"):
                versions.append(f"{int(match.group(1))}.{int(match.group(2))}")
    return min(versions, key=_version_key) if versions else None


def macos_minimum(wheels: Iterable[tuple[str, Sequence[str]]] | None = None,
                  floor: str = MLX_MACOS_FLOOR) -> tuple[str, str]:
    """The macOS version the app needs: the highest minimum over the installed wheels, and which wheel sets it.

    ``wheels``: (distribution name, WHEEL tags) pairs; by default, every distribution installed here. A wheel
    built on the build Mac itself (llama-cpp-python) is tagged with that Mac's deployment target, which counts too.
    """
    if wheels is None:
        wheels = installed_wheel_tags()
    best, why = floor, "mlx (its oldest macOS wheel)"
    for name, tags in wheels:
        version = wheel_macos_minimum(tags)
        if version and _version_key(version) > _version_key(best):
            best, why = version, name
    return best, why


def installed_wheel_tags() -> list[tuple[str, list[str]]]:
    found = []
    for dist in metadata.distributions():
        text = dist.read_text("WHEEL") or ""
        tags = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]
        if tags:
            found.append((dist.metadata["Name"] or "?", tags))
    return found


def locked_mlx_macos_floor(lock_text: str, python_tag: str = "cp311") -> str | None:
    """The oldest arm64 macOS tag among the mlx wheels that uv.lock pins for ``python_tag``."""
    tags = re.findall(rf"/mlx-[\d.]+-{python_tag}-{python_tag}-(macosx_\d+_\d+_arm64)\.whl", lock_text)
    return wheel_macos_minimum([f"{python_tag}-{python_tag}-{t}" for t in tags])


# --- what Analysis collected: fixes and checks ------------------------------------------------------------------
# TOC entries are (name in the bundle, source path or link target, typecode), as PyInstaller 6 makes them.
TocEntry = tuple[str, str, str]

# Shared libraries never to ship: the build machine's CUDA runtime, which transformers names through ctypes.
UNWANTED_BINARIES = re.compile(r"^lib(cuda|cudart|cublas|cublasLt|cudnn|nvrtc|nvidia-ml|nvJitLink)\b")


def _posix(name: str) -> PurePosixPath:
    return PurePosixPath(str(name).replace("\\", "/"))


def drop_unwanted(binaries: Iterable[TocEntry]) -> list[TocEntry]:
    return [entry for entry in binaries if not UNWANTED_BINARIES.match(_posix(entry[0]).name)]


def link_duplicates(binaries: Iterable[TocEntry]) -> tuple[list[TocEntry], list[TocEntry]]:
    """Collect a library that a folder holds under several names once, with links for the other names.

    A wheel cannot hold symbolic links, so llama-cpp-python's lib folder has each library three times over on Linux
    (libllama.so, libllama.so.0, libllama.so.0.5.0: same bytes). Within one folder of the bundle, files with the
    same content become one file (the longest name, the versioned one) and SYMLINK entries for the other names.
    Returns (binaries, links); PyInstaller keeps SYMLINK entries with the data files.
    """
    entries = list(binaries)
    by_size: dict[tuple[str, int], list[TocEntry]] = {}
    for entry in entries:
        dest, src, kind = entry
        if kind in ("BINARY", "EXTENSION") and Path(src).is_file():
            by_size.setdefault((str(_posix(dest).parent), Path(src).stat().st_size), []).append(entry)
    groups: dict[tuple[str, int, str], list[TocEntry]] = {}
    for key, candidates in by_size.items():
        for entry in candidates if len(candidates) > 1 else []:
            groups.setdefault((*key, _digest(Path(entry[1]))), []).append(entry)
    replaced: dict[str, TocEntry] = {}
    for group in groups.values():
        if len(group) < 2:
            continue
        keep = max(group, key=lambda e: (len(_posix(e[0]).name), _posix(e[0]).name))
        for dest, _src, _kind in group:
            if dest != keep[0]:
                replaced[dest] = (dest, _posix(keep[0]).name, "SYMLINK")
    return [e for e in entries if e[0] not in replaced], list(replaced.values())


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def metallib_links(toc: Iterable[TocEntry]) -> list[TocEntry]:
    """SYMLINK entries that put mlx.metallib beside every libmlx in the bundle that has none beside it.

    ``toc``: binaries and datas together. MLX finds its kernels in the folder of the libmlx image it loaded, as the
    loader names it. PyInstaller links libmlx into the top folder and points the extensions' run path there, so that
    link's folder needs the metallib too (a link to it).
    """
    toc = list(toc)
    metallibs = [_posix(d) for d, _s, k in toc if _posix(d).name == "mlx.metallib" and k != "SYMLINK"]
    if not metallibs:
        return []
    have = {_posix(d).parent for d, _s, _k in toc if _posix(d).name == "mlx.metallib"}
    links = []
    for dest, _src, _kind in toc:
        folder = _posix(dest).parent
        if _posix(dest).name.startswith("libmlx.") and folder not in have:
            target = PurePosixPath(os.path.relpath(metallibs[0].as_posix(), folder.as_posix()))
            links.append(((folder / "mlx.metallib").as_posix(), target.as_posix(), "SYMLINK"))
            have.add(folder)
    return links


def layout_problems(toc: Iterable[TocEntry], platform: str = sys.platform) -> list[str]:
    """What would break at run time in the collected files (binaries and datas together), as sentences.

    - libmlx must be collected once (links to it are fine), and on a Mac every folder holding libmlx or a link to
      it must hold mlx.metallib (or a link to it): MLX looks for its kernels beside the libmlx it loaded.
    - llama-cpp-python loads libllama with ctypes, by path, from llama_cpp/lib.
    """
    toc = list(toc)
    problems = []
    libmlx = [(_posix(d), k) for d, _s, k in toc if _posix(d).name.startswith("libmlx.")]
    files = [p for p, k in libmlx if k != "SYMLINK"]
    if not files:
        problems.append("libmlx was not collected: MLX cannot be imported")
    elif len(files) > 1:
        problems.append("libmlx was collected more than once (" + ", ".join(sorted(map(str, files)))
                        + "): MLX looks for its kernels beside whichever copy it loads")
    if platform == "darwin":
        metallibs = {_posix(d).parent for d, _s, _k in toc if _posix(d).name == "mlx.metallib"}
        if not metallibs:
            problems.append("mlx.metallib was not collected: MLX has no Metal kernels")
        for path, _kind in libmlx:
            if metallibs and path.parent not in metallibs:
                problems.append(f"mlx.metallib is not beside {path}: MLX would not find its Metal kernels")
    if not any(_posix(d).parent == PurePosixPath("llama_cpp/lib") and _posix(d).name.startswith("libllama.")
               for d, _s, _k in toc):
        problems.append("libllama was not collected into llama_cpp/lib: llama_cpp cannot load it")
    return problems
