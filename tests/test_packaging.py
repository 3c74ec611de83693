"""The app build (packaging/) and ``slowtune --self-test``.

Fast tests check what the spec is made of without building: every resource the app reads is declared, the
Info.plist, the macOS minimum against uv.lock, the fixes and checks applied to what PyInstaller collects, the
signing order and commands, the icon. The slow test builds the Linux bundle with the same spec and build script
CI uses, runs the frozen ``--self-test`` in a clean environment, starts a stage as a child process of the frozen
program, and then breaks the bundle to see the self-test fail.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType

import pytest
from conftest import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "packaging"))
import buildinfo
import icons

from slowtune import __version__, selftest
from slowtune.documents.library import SUPPORTED_SUFFIXES

SPEC = PROJECT_ROOT / "packaging" / "slowtune.spec"


def _load_build_script() -> ModuleType:
    # Loaded by path under its own name: "build" is also the name of a PyPI package.
    spec = importlib.util.spec_from_file_location("slowtune_build_script", PROJECT_ROOT / "packaging" / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pbuild = _load_build_script()
MACHO = bytes.fromhex("cffaedfe") + b"\0" * 60  # a 64-bit little-endian Mach-O header, as on arm64


# --- every resource the app reads is declared in the spec -----------------------------------------------------
def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {target.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}


def resources_read_by(source: str) -> set[str]:
    """Bundle paths of the files ``source`` reads: ``resource_path("a", "b")`` (names or module constants) and
    ``importlib.resources.files("pkg").joinpath("file")``."""
    tree = ast.parse(source)
    constants = _module_constants(tree)

    def text(node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        raise AssertionError(f"a resource named by an expression this test cannot follow: {ast.unparse(node)}")

    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "resource_path":
            found.add(str(PurePosixPath("slowtune", "resources", *(text(a) for a in node.args))))
        elif name == "joinpath" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Call):
            inner = func.value
            if getattr(inner.func, "attr", getattr(inner.func, "id", "")) == "files" and inner.args:
                package = text(inner.args[0]).replace(".", "/")
                found.add(str(PurePosixPath(package, *(text(a) for a in node.args))))
    return found


def _resources_read_by_the_app() -> set[str]:
    found = set()
    for path in (PROJECT_ROOT / "slowtune").rglob("*.py"):
        found |= resources_read_by(path.read_text(encoding="utf-8"))
    for path in (PROJECT_ROOT / "resources").rglob("*"):
        if path.is_file() and not path.name.startswith("."):
            found.add(str(PurePosixPath("slowtune", "resources", *path.relative_to(PROJECT_ROOT / "resources").parts)))
    return found


def _spec_datas_expression() -> str:
    tree = ast.parse(SPEC.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "Analysis":
            return next(ast.unparse(k.value) for k in node.keywords if k.arg == "datas")
    raise AssertionError("the spec has no Analysis(...) call")


def test_every_resource_the_app_reads_is_declared_in_the_spec() -> None:
    read = _resources_read_by_the_app()
    # The scan must really see the app's readers, or the check below would pass vacuously.
    assert {"slowtune/resources/prices.json", "slowtune/resources/icons/slowtune.svg",
            "slowtune/testing/corpus.txt"} <= read
    assert _spec_datas_expression() == "buildinfo.app_datas()"
    declared = buildinfo.bundled_paths(buildinfo.app_datas())
    assert read - declared == set(), "read by the app but missing from the bundle"
    for src, _dest in buildinfo.app_datas():
        assert Path(src).is_file(), src


def test_the_resource_scan_sees_an_undeclared_file() -> None:
    source = 'from slowtune.resources import resource_path\nNAME = "templates"\nresource_path(NAME, "judge.txt")\n'
    read = resources_read_by(source)
    assert read == {"slowtune/resources/templates/judge.txt"}
    assert read - buildinfo.bundled_paths(buildinfo.app_datas()) == read


# --- Info.plist, document types, the macOS minimum ------------------------------------------------------------
def test_info_plist_describes_a_high_resolution_arm64_app_with_document_types() -> None:
    plist = buildinfo.info_plist(buildinfo.app_version(), "14.0")
    assert plistlib.loads(plistlib.dumps(plist)) == plist  # every value is plist-serialisable
    assert plist["CFBundleShortVersionString"] == plist["CFBundleVersion"] == __version__
    assert re.fullmatch(r"[a-z]+(\.[A-Za-z0-9-]+){2,}", str(plist["CFBundleIdentifier"]))
    assert plist["LSMinimumSystemVersion"] == "14.0"
    assert plist["NSHighResolutionCapable"] is True
    assert plist["LSArchitecturePriority"] == ["arm64"]
    claimed = {t for group in plist["CFBundleDocumentTypes"] for t in group["LSItemContentTypes"]}  # type: ignore[union-attr]
    # Every extension the Library reads can be dropped on the Dock icon, and folders too.
    assert set(buildinfo.SUFFIX_TYPES) == SUPPORTED_SUFFIXES
    assert set(buildinfo.SUFFIX_TYPES.values()) | {"public.folder"} == claimed
    for group in plist["CFBundleDocumentTypes"]:  # type: ignore[union-attr]
        assert group["LSHandlerRank"] == "Alternate"  # never takes over as the default app
    imported = {t["UTTypeIdentifier"] for t in plist["UTImportedTypeDeclarations"]}  # type: ignore[union-attr]
    assert imported <= claimed
    # The prompts macOS shows before a protected folder is read say why.
    for key in ("NSDocumentsFolderUsageDescription", "NSDesktopFolderUsageDescription",
                "NSDownloadsFolderUsageDescription"):
        assert "Slowtune" in str(plist[key]), key


def test_the_bundle_version_is_the_package_version_as_three_integers() -> None:
    from importlib import metadata

    # The version the bundle carries is the one the installed package reports (pyproject.toml), not a stale copy.
    assert buildinfo.app_version() == metadata.version("slowtune") == __version__
    assert buildinfo.bundle_version("1.2.3") == "1.2.3"
    for bad in ("0.2.0rc1", "1.0", "1.2.3.4", "1.2.3+local", "0.2.0.dev0"):
        with pytest.raises(ValueError, match="three integers"):
            buildinfo.info_plist(bad, "14.0")


def test_the_mlx_floor_matches_the_wheels_uv_lock_pins() -> None:
    lock = (PROJECT_ROOT / "uv.lock").read_text(encoding="utf-8")
    py_tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert buildinfo.locked_mlx_macos_floor(lock, py_tag) == buildinfo.MLX_MACOS_FLOOR


def test_macos_minimum_is_the_highest_any_bundled_wheel_needs() -> None:
    wheels = [
        ("mlx", ["cp311-cp311-macosx_14_0_arm64"]),
        ("PySide6-Essentials", ["cp39-abi3-macosx_13_0_universal2"]),
        ("numpy", ["cp311-cp311-macosx_11_0_arm64"]),
        ("llama-cpp-python", ["py3-none-macosx_15_0_arm64"]),  # built on the build Mac, tagged with its OS
        ("intel-only", ["cp311-cp311-macosx_26_0_x86_64"]),
        ("linux", ["cp311-cp311-manylinux_2_35_x86_64"]),
    ]
    assert buildinfo.macos_minimum(wheels) == ("15.0", "llama-cpp-python")
    assert buildinfo.macos_minimum(wheels[:3]) == ("14.0", "mlx (its oldest macOS wheel)")
    assert buildinfo.wheel_macos_minimum(["cp311-cp311-macosx_10_13_universal2.macosx_11_0_arm64"]) == "10.13"
    # Here (Linux) no installed wheel is macOS-specific: the floor stands.
    assert buildinfo.macos_minimum()[0] == buildinfo.MLX_MACOS_FLOOR


# --- what Analysis collects: fixes and checks -------------------------------------------------------------------
def _mac_toc() -> list[tuple[str, str, str]]:
    """A TOC shaped like PyInstaller's on a Mac: libmlx in mlx/lib, linked from the top folder."""
    return [
        ("mlx/lib/libmlx.dylib", "/sp/mlx/lib/libmlx.dylib", "BINARY"),
        ("libmlx.dylib", "mlx/lib/libmlx.dylib", "SYMLINK"),
        ("mlx/lib/mlx.metallib", "/sp/mlx/lib/mlx.metallib", "DATA"),
        ("llama_cpp/lib/libllama.dylib", "/sp/llama_cpp/lib/libllama.dylib", "BINARY"),
    ]


def test_mlx_metallib_is_put_beside_every_libmlx_on_a_mac() -> None:
    toc = _mac_toc()
    problems = buildinfo.layout_problems(toc, platform="darwin")
    assert problems == ["mlx.metallib is not beside libmlx.dylib: MLX would not find its Metal kernels"]
    links = buildinfo.metallib_links(toc)
    assert links == [("mlx.metallib", "mlx/lib/mlx.metallib", "SYMLINK")]
    assert buildinfo.layout_problems(toc + links, platform="darwin") == []
    assert buildinfo.metallib_links(toc + links) == []


def test_layout_problems_name_what_would_break() -> None:
    toc = _mac_toc() + buildinfo.metallib_links(_mac_toc())
    twice = [*toc, ("libmlx.dylib", "/sp/other/libmlx.dylib", "BINARY")]
    assert "libmlx was collected more than once" in " ".join(buildinfo.layout_problems(twice, platform="darwin"))
    no_metallib = [e for e in toc if not e[0].endswith("mlx.metallib")]
    assert "mlx.metallib was not collected" in " ".join(buildinfo.layout_problems(no_metallib, platform="darwin"))
    assert buildinfo.layout_problems(no_metallib, platform="linux") == []  # the CPU build has no kernels file
    no_llama = [e for e in toc if "llama" not in e[0]]
    assert buildinfo.layout_problems(no_llama, platform="darwin") == [
        "libllama was not collected into llama_cpp/lib: llama_cpp cannot load it"]


def test_duplicate_library_copies_become_links(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in ("libllama.so", "libllama.so.0", "libllama.so.0.5.0"):
        (lib / name).write_bytes(b"\x7fELF same bytes")
    (lib / "libggml.so.0").write_bytes(b"\x7fELF other bytes")  # same size, other content: kept
    toc = [(f"llama_cpp/lib/{p.name}", str(p), "BINARY") for p in sorted(lib.iterdir())]
    toc.append(("libcudart.so", "/usr/local/cuda/lib/libcudart.so", "BINARY"))
    kept, links = buildinfo.link_duplicates(buildinfo.drop_unwanted(toc))
    assert sorted(e[0] for e in kept) == ["llama_cpp/lib/libggml.so.0", "llama_cpp/lib/libllama.so.0.5.0"]
    assert sorted(links) == [("llama_cpp/lib/libllama.so", "libllama.so.0.5.0", "SYMLINK"),
                             ("llama_cpp/lib/libllama.so.0", "libllama.so.0.5.0", "SYMLINK")]


# --- signing, notarisation, the DMG (macOS steps, checked here without a Mac) ------------------------------------
def _fake_app(root: Path) -> Path:
    app = root / "Slowtune.app"
    contents = app / "Contents"
    (contents / "MacOS").mkdir(parents=True)
    (contents / "MacOS" / "slowtune").write_bytes(MACHO)
    fw = contents / "Frameworks"
    (fw / "mlx" / "lib").mkdir(parents=True)
    (fw / "mlx" / "lib" / "libmlx.dylib").write_bytes(MACHO)
    (fw / "mlx" / "core.cpython-311-darwin.so").write_bytes(MACHO)
    (fw / "libpython3.11.dylib").write_bytes(MACHO)
    qt = fw / "PySide6" / "Qt" / "lib" / "QtCore.framework" / "Versions" / "A"
    qt.mkdir(parents=True)
    (qt / "QtCore").write_bytes(MACHO)
    res = contents / "Resources"
    (res / "mlx" / "lib").mkdir(parents=True)
    (res / "mlx" / "lib" / "mlx.metallib").write_bytes(b"MTLB not code")
    (fw / "mlx" / "lib" / "mlx.metallib").symlink_to("../../../Resources/mlx/lib/mlx.metallib")
    (fw / "libmlx.dylib").symlink_to("mlx/lib/libmlx.dylib")
    (fw / "slowtune").symlink_to("../Resources/slowtune")
    (res / "slowtune").mkdir()
    (res / "slowtune" / "prices.json").write_text("{}")
    return app


def test_signing_goes_inside_out_and_skips_links_and_data(tmp_path: Path) -> None:
    app = _fake_app(tmp_path)
    order = [str(p.relative_to(tmp_path)) for p in pbuild.signing_order(app)]
    fw = "Slowtune.app/Contents/Frameworks"
    assert order == [
        f"{fw}/mlx/lib/libmlx.dylib",  # deepest loose code first
        f"{fw}/mlx/core.cpython-311-darwin.so",
        f"{fw}/libpython3.11.dylib",
        f"{fw}/PySide6/Qt/lib/QtCore.framework",  # frameworks as bundles, after loose code
        "Slowtune.app",  # last, which also signs Contents/MacOS/slowtune
    ]


def test_codesign_uses_the_hardened_runtime_a_timestamp_and_entitlements_on_the_app_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = _fake_app(tmp_path)
    commands: list[list[str]] = []
    monkeypatch.setattr(pbuild, "run", lambda cmd, **kw: commands.append(list(cmd)))
    identity = "Developer ID Application: Example (ABCDE12345)"
    signed = pbuild.sign_app(app, identity)
    signs = [c for c in commands if "--sign" in c]
    assert len(signs) == signed == 5
    for cmd in signs:
        assert cmd[:4] == ["codesign", "--force", "--sign", identity]
        assert "--timestamp" in cmd and cmd[cmd.index("--options") + 1] == "runtime"
        assert "--deep" not in cmd
    assert [c for c in signs if "--entitlements" in c] == [signs[-1]]
    assert signs[-1][-1] == str(app)
    assert signs[-1][signs[-1].index("--entitlements") + 1] == str(buildinfo.ENTITLEMENTS)
    assert commands[-1][:2] == ["codesign", "--verify"]
    ad_hoc = pbuild.codesign_command(app, None, None)
    assert ad_hoc == ["codesign", "--force", "--sign", "-", str(app)]


def test_entitlements_are_a_valid_plist_of_hardened_runtime_exceptions() -> None:
    entitlements = plistlib.loads(buildinfo.ENTITLEMENTS.read_bytes())
    assert entitlements, "no entitlements at all"
    for key, value in entitlements.items():
        assert key.startswith("com.apple.security.cs."), key  # runtime exceptions only: no sandbox, no groups
        assert value is True  # Apple: include an entitlement only when it is true


def test_notary_credentials_come_from_the_environment_and_the_password_is_masked() -> None:
    assert pbuild.notary_credentials({}) is None
    assert pbuild.notary_credentials({"SLOWTUNE_NOTARY_APPLE_ID": "me@example.com"}) is None
    assert pbuild.notary_credentials({"SLOWTUNE_NOTARY_PROFILE": "slowtune"}) == (
        ["--keychain-profile", "slowtune"], [])
    args, secrets = pbuild.notary_credentials({"SLOWTUNE_NOTARY_APPLE_ID": "me@example.com",
                                               "SLOWTUNE_NOTARY_TEAM_ID": "ABCDE12345",
                                               "SLOWTUNE_NOTARY_PASSWORD": "abcd-efgh-ijkl-mnop"}) or ([], [])
    assert secrets == ["abcd-efgh-ijkl-mnop"]
    shown = pbuild._shown(["xcrun", "notarytool", "submit", "x.zip", *args], secrets)
    assert "abcd-efgh-ijkl-mnop" not in shown and "****" in shown and "me@example.com" in shown


def _fake_notarytool(monkeypatch: pytest.MonkeyPatch, returncode: int, stdout: str) -> list[list[str]]:
    calls: list[list[str]] = []

    def fake_subprocess_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, returncode, stdout, "Conducting pre-submission checks...\n")

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0, '{"issues": [{"path": "Slowtune.app/x.dylib"}]}', "")

    monkeypatch.setattr(pbuild.subprocess, "run", fake_subprocess_run)
    monkeypatch.setattr(pbuild, "run", fake_run)
    return calls


def test_notarisation_reads_apples_verdict_not_notarytools_exit_code(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    credentials = (["--keychain-profile", "slowtune"], [])
    accepted = '{"id": "2efe2717-52ef-43a5-96dc-0797e4ca1041", "message": "Processing complete", "status": "Accepted"}'
    calls = _fake_notarytool(monkeypatch, 0, accepted)
    pbuild.notarise(tmp_path / "Slowtune.zip", credentials)
    assert len(calls) == 1 and calls[0][:3] == ["xcrun", "notarytool", "submit"] and "--wait" in calls[0]

    # notarytool exits 0 on an "Invalid" verdict: the build must still fail, with Apple's log in the message.
    calls = _fake_notarytool(monkeypatch, 0, accepted.replace("Accepted", "Invalid"))
    with pytest.raises(pbuild.BuildError, match="'Invalid'") as exc:
        pbuild.notarise(tmp_path / "Slowtune.zip", credentials)
    assert calls[-1][:3] == ["xcrun", "notarytool", "log"] and "2efe2717" in calls[-1][3]
    assert "x.dylib" in str(exc.value)

    # No verdict at all (bad credentials): what notarytool printed, not a JSON traceback.
    _fake_notarytool(monkeypatch, 1, "Error: HTTP status code: 401. Unable to authenticate.\n")
    with pytest.raises(pbuild.BuildError, match=r"(?s)without a verdict.*401"):
        pbuild.notarise(tmp_path / "Slowtune.zip", credentials)


def test_the_notarised_app_is_stapled_and_assessed_as_gatekeeper_would(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = _fake_app(tmp_path)
    steps: list[list[str]] = []
    monkeypatch.setattr(pbuild, "run", lambda cmd, **kw: steps.append([str(c) for c in cmd]))
    monkeypatch.setattr(pbuild, "notarise", lambda path, creds: steps.append(["notarise", str(path)]))
    pbuild.notarise_app(app, (["--keychain-profile", "slowtune"], []), tmp_path)
    zipped = str(tmp_path / "Slowtune-notarise.zip")
    assert steps == [
        ["ditto", "-c", "-k", "--sequesterRsrc", "--keepParent", str(app), zipped],  # Apple: zip with ditto
        ["notarise", zipped],
        ["xcrun", "stapler", "staple", str(app)],
        ["xcrun", "stapler", "validate", str(app)],
        ["spctl", "--assess", "--type", "execute", "--verbose=2", str(app)],
    ]


def test_the_dmg_holds_the_app_and_a_link_to_applications(tmp_path: Path) -> None:
    settings = pbuild.dmg_settings(tmp_path / "Slowtune.app")
    assert settings["files"] == [str(tmp_path / "Slowtune.app")]
    assert settings["symlinks"] == {"Applications": "/Applications"}
    assert set(settings["icon_locations"]) == {"Slowtune.app", "Applications"}  # type: ignore[arg-type]


def test_on_linux_the_build_says_which_mac_steps_it_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Path] = []

    def fake_pyinstaller(dist: Path, work: Path, clean: bool) -> None:
        (dist / "slowtune").mkdir(parents=True)
        (dist / "slowtune" / "slowtune").write_bytes(b"\x7fELF")
        built.append(dist)

    monkeypatch.setattr(pbuild, "pyinstaller", fake_pyinstaller)
    monkeypatch.setattr(pbuild, "self_test", lambda program: built.append(program) or "")
    report = pbuild.build(tmp_path / "dist", tmp_path / "work", platform="linux", env={})
    assert built == [tmp_path / "dist", tmp_path / "dist" / "slowtune" / "slowtune"]
    assert [s.split(":")[0] for s in report.skipped] == list(pbuild.MAC_STEPS)


def test_the_frozen_app_is_self_tested_without_the_build_pythons_settings() -> None:
    env = {"HOME": "/home/me", "PATH": "/usr/bin", "PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
           "PYTHONPATH": "/src", "VIRTUAL_ENV": "/src/.venv", "SLOWTUNE_HOME": "/data"}
    assert pbuild.user_environment(env) == {"HOME": "/home/me", "PATH": "/usr/bin", "SLOWTUNE_HOME": "/data"}


def test_the_icns_icon_holds_every_size_rendered_from_the_svg(qapp: object, tmp_path: Path) -> None:
    out = icons.write_icns(buildinfo.ICON_SVG, tmp_path / "Slowtune.icns")
    images = icons.read_icns(out.read_bytes())
    assert set(images) == {kind for kind, _size in icons.ICNS_TYPES}
    from PySide6.QtGui import QImage

    for kind, size in icons.ICNS_TYPES:
        image = QImage.fromData(images[kind], "PNG")
        assert (image.width(), image.height()) == (size, size), kind
        tile = image.pixelColor(round(size * 0.15), size // 2)  # left of the spiral, inside the rounded tile
        assert tile.alpha() == 255 and tile.blue() > tile.red() + 50, kind  # the blue tile, not transparency
        corner = image.pixelColor(0, 0)
        assert corner.alpha() == 0, kind  # outside the rounded corner
    with pytest.raises(ValueError, match="not a PNG"):
        icons.pack_icns({size: b"GIF89a" for _kind, size in icons.ICNS_TYPES})


# --- the self-test, in this process ------------------------------------------------------------------------------
def test_self_test_checks_pass_here_and_leave_no_key_behind(qapp: object, keyring_root: Path) -> None:
    results = selftest.run_checks(["resources", "keychain", "window"])
    assert [(r.name, r.ok) for r in results] == [("resources", True), ("keychain", True), ("window", True)], \
        selftest.render(results, verbose=True)
    # The test keyring is chosen through PYTHON_KEYRING_BACKEND: the configured backend was round-tripped.
    assert "saves, reads and removes a key" in results[1].detail
    stored = "".join(p.read_text(errors="replace") for p in keyring_root.rglob("*") if p.is_file())
    assert "self-test-" not in stored


def test_self_test_fails_and_says_why_when_a_resource_is_missing(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune import resources

    monkeypatch.setattr(resources, "resources_root", lambda: tmp_path)  # an install without its resources
    out_file = tmp_path / "report.txt"
    with out_file.open("w") as out:
        code = selftest.main(["resources"], out=out)
    report = out_file.read_text()
    assert code == 1
    assert re.search(r"FAIL\s+resources\s+.*prices\.json is missing", report), report
    assert "0 of 1 checks passed" in report


def test_self_test_refuses_a_command() -> None:
    from slowtune import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["--self-test", "doctor"])
    assert exc.value.code == 2


def test_the_command_line_hands_the_self_test_its_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune import cli

    seen: dict[str, object] = {}
    monkeypatch.setattr(selftest, "main", lambda **kwargs: seen.update(kwargs) or 0)
    assert cli.main(["--self-test"]) == 0
    assert seen["commands"] is cli.command_names
    assert {"ingest", "generate", "train", "export", "chat", "bench", "doctor"} <= set(cli.command_names())


def test_the_documents_check_counts_the_commands_it_builds() -> None:
    built: list[int] = []
    results = selftest.run_checks(["documents"], commands=lambda: built.append(1) or ["ingest", "train"])
    assert results[0].ok, selftest.render(results, verbose=True)
    assert built == [1] and results[0].detail.startswith("2 commands; a project in SQLite")


# --- the frozen entry runs only slowtune (packaging/entry.py) ----------------------------------------------------
ENTRY = PROJECT_ROOT / "packaging" / "entry.py"


def _load_entry() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slowtune_frozen_entry", ENTRY)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


entry = _load_entry()


def test_the_entry_allows_exactly_the_modules_slowtune_starts() -> None:
    from slowtune import selfcmd
    from slowtune.bench import worker

    assert set(entry.ALLOWED) == set(selfcmd.CHILD_MODULES)
    assert not set(entry.ALLOWED) & set(selfcmd.SOURCE_ONLY_MODULES)
    assert entry.BENCH_VARIANTS == worker.VARIANTS
    with pytest.raises(ValueError, match="keyring is not one of slowtune's child-process modules"):
        selfcmd.module_command("keyring")


def test_the_test_teacher_is_started_only_from_a_source_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune import selfcmd

    assert selfcmd.module_command("slowtune.testing.fake_openai", "--no-auth")[1:3] == [
        "-m", "slowtune.testing.fake_openai"]
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    with pytest.raises(ValueError, match="fake_openai is started only from a source checkout"):
        selfcmd.module_command("slowtune.testing.fake_openai", "--no-auth")


def test_the_entry_script_neither_compiles_nor_executes_code() -> None:
    source = ENTRY.read_text()
    assert not re.search(r"exec\(|compile\(|eval\(", source)


def test_no_child_process_is_started_outside_selfcmd() -> None:
    """Every child command line comes from slowtune.selfcmd, so the frozen entry's allow-list sees every one."""
    offenders = []
    for path in (PROJECT_ROOT / "slowtune").rglob("*.py"):
        if path.name == "selfcmd.py":
            continue
        text = path.read_text()
        for pattern in (r"sys\.executable,\s*\"-[cm]\"", r"\[\s*sys\.executable\s*,"):
            offenders += [f"{path.relative_to(PROJECT_ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []


@pytest.mark.parametrize("args, named", [
    (["-c", "import keyring; print(keyring.get_password('slowtune', 'openai'))"], "-c"),
    (["-cimport os"], "-c"),
    (["-m", "keyring", "get", "slowtune", "openai"], "-m keyring"),
    (["-mkeyring"], "-m keyring"),
    (["-m", "runpy"], "-m runpy"),
    (["-m"], "-m (no module)"),
    (["-m", "slowtune.export.quantize", "--foreign"], "-m slowtune.export.quantize with arguments"),
    (["-m", "slowtune.export.quantize", json.dumps({"source": "a", "dest": "b", "ftype": "x", "threads": 1})],
     "-m slowtune.export.quantize with arguments"),
    (["-m", "slowtune.bench.worker", json.dumps({"variant": "anything"})], "-m slowtune.bench.worker with arguments"),
    (["-m", "slowtune.bench.worker", json.dumps({"variant": "memory", "x": {"nested": 1}})],
     "-m slowtune.bench.worker with"),
    (["-m", "slowtune.bench.gui", "latency", "a", "b"], "-m slowtune.bench.gui with arguments"),
    (["-m", "slowtune.bench", json.dumps({"variant": "memory"})], "-m slowtune.bench (not one of"),
    (["-m", "slowtune.testing.fake_openai", "--no-auth"], "-m slowtune.testing.fake_openai (not one of"),
])
def test_the_entry_refuses_code_foreign_modules_and_foreign_arguments(args: list[str], named: str) -> None:
    why = entry.refusal(args)
    assert why is not None and why.startswith("slowtune: refused: ") and named in why, why


def test_the_entry_lets_slowtune_itself_and_its_children_through(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    from slowtune.export import quantize as quantize_module
    from slowtune.selfcmd import module_command

    # The command line the export really builds for its quantiser child.
    seen: list[list[str]] = []

    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "not run")

    monkeypatch.setattr(quantize_module.subprocess, "run", fake_run)
    with pytest.raises(quantize_module.QuantizeError):
        quantize_module.quantize(tmp_path / "a.gguf", tmp_path / "b.gguf", "Q4_K_M")
    assert seen and seen[0][1:3] == ["-m", "slowtune.export.quantize"]
    assert entry.refusal(seen[0][1:]) is None
    for args in ([], ["--self-test"], ["-v", "doctor"], ["train", "--resume", "run"], ["--help"]):
        assert entry.refusal(args) is None, args
    for cmd in (module_command("slowtune.bench.worker", json.dumps({"variant": "ingest_big", "project": "p",
                                                                     "file": "f"})),
                module_command("slowtune.bench.worker", json.dumps({"variant": "streamed_cold", "model": "m",
                                                                     "steps": 3, "hidden_size": 256})),
                module_command("slowtune.bench.gui", "bare"),
                module_command("slowtune.bench.gui", "latency", "out.json", "work", "1.5", "40")):
        assert entry.refusal(cmd[1:]) is None, cmd


def test_a_refusal_is_one_line_exit_2_and_imports_nothing_first() -> None:
    """Run the entry script as the frozen app runs it: the refusal comes before slowtune, keyring or json load."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(ENTRY), "-m", "keyring", "get", "slowtune", "x"],
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert lines == ["slowtune: refused: -m keyring (not one of slowtune's own child processes)"]
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "python -X importtime printed nothing"
    for module in ("keyring", "slowtune", "json", "runpy"):
        assert module not in imported and not any(m.startswith(module + ".") for m in imported), module
    assert done.stdout == ""

    code = subprocess.run([sys.executable, str(ENTRY), "-c", "print('ran')"], capture_output=True, text=True,
                          timeout=60, cwd=PROJECT_ROOT)
    assert code.returncode == 2 and code.stdout == ""
    assert code.stderr.strip() == "slowtune: refused: -c (this app runs no code it is handed)"


# --- the self-test from source, as `uv run slowtune --self-test` runs it ----------------------------------------
def _slowtune_self_test(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "--self-test"], capture_output=True, text=True,
                          env=env, timeout=600, cwd=PROJECT_ROOT)


@pytest.mark.slow
def test_self_test_from_source_passes_every_check(tmp_path: Path) -> None:
    done = _slowtune_self_test({**os.environ, "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stdout + done.stderr
    for name in selftest.CHECKS:
        assert re.search(rf"^  ok  \s+{re.escape(name)}\s", done.stdout, re.MULTILINE), done.stdout
    assert f"{len(selftest.CHECKS)} of {len(selftest.CHECKS)} checks passed" in done.stdout


@pytest.mark.slow
def test_self_test_from_source_fails_without_the_llama_cpp_library(tmp_path: Path) -> None:
    empty = tmp_path / "no-llama-lib"
    empty.mkdir()
    done = _slowtune_self_test({**os.environ, "LLAMA_CPP_LIB_PATH": str(empty)})
    assert done.returncode == 1
    assert re.search(r"^  FAIL\s+llama\.cpp\s", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  ok  \s+mlx\s", done.stdout, re.MULTILINE), done.stdout  # the others still ran


# --- the frozen Linux bundle -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """Build the bundle with packaging/build.py, as a developer or CI would; removed after the module."""
    root = tmp_path_factory.mktemp("frozen")
    done = subprocess.run([sys.executable, str(PROJECT_ROOT / "packaging" / "build.py"), "--dist", str(root / "dist"),
                           "--work", str(root / "work")], capture_output=True, text=True, timeout=1800,
                          cwd=PROJECT_ROOT)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    try:
        yield root / "dist" / "slowtune", done.stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _clean_env(home: Path) -> dict[str, str]:
    """What a user's session gives the app: no venv, no test keyring, no SLOWTUNE_HOME."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen"}


@pytest.mark.slow
def test_the_frozen_linux_bundle_passes_its_self_test(frozen: tuple[Path, str], tmp_path: Path,
                                                      tiny_llama: Path) -> None:
    bundle, build_log = frozen
    program = bundle / "slowtune"
    # The build script ran the self-test itself and named each macOS step it skipped.
    assert "build: the frozen app passed its self-test" in build_log
    for step in pbuild.MAC_STEPS:
        assert f"build: skipped: {step} (macOS only" in build_log

    done = subprocess.run([str(program), "--self-test"], capture_output=True, text=True, timeout=600,
                          env=_clean_env(tmp_path / "home"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"(frozen app at {bundle};" in done.stdout
    for name in selftest.CHECKS:
        assert re.search(rf"^  ok  \s+{re.escape(name)}\s", done.stdout, re.MULTILINE), done.stdout
    assert "no OS keychain on this machine" in done.stdout  # no test keyring here: the app's own view
    assert f"from {bundle}/_internal/slowtune/resources" in done.stdout  # read from the bundle, not the checkout
    size = re.search(r"^bundle size: (\d+) MB", done.stdout, re.MULTILINE)
    assert size and 100 < int(size.group(1)) < 1500, done.stdout
    # Nothing the self-test does is left in the user's folders.
    assert not (tmp_path / "home" / ".local" / "share" / "slowtune" / "projects").exists() or not any(
        (tmp_path / "home" / ".local" / "share" / "slowtune" / "projects").iterdir())

    # Unused Qt modules, Tk, the tests' keyring and the build machine's CUDA stay out.
    names = {p.name for p in bundle.rglob("*")}
    for unwanted in ("libQt6Qml.so.6", "libQt6Quick.so.6", "libQt6Pdf.so.6", "QtQml.abi3.so", "_tkinter",
                     "libcudart.so", "keyrings"):
        assert not any(n.startswith(unwanted) for n in names), unwanted

    # The self-test checked the refusals itself; check them here too, in a user's environment.
    assert re.search(r"^  ok  \s+child processes\s+.*refused: `-c import keyring ...`; `-m keyring ...`; "
                     r"`-m slowtune.export.quantize ...`", done.stdout, re.MULTILINE), done.stdout
    for args in (["-c", "import keyring; print(keyring.get_keyring())"], ["-m", "keyring", "diagnose"],
                 ["-m", "slowtune.export.quantize", "not-a-spec"]):
        refused = subprocess.run([str(program), *args], capture_output=True, text=True, timeout=120,
                                 env=_clean_env(tmp_path / "home"))
        assert refused.returncode == 2 and refused.stdout == "", (args, refused.stdout, refused.stderr)
        assert refused.stderr.startswith("slowtune: refused: ") and len(refused.stderr.splitlines()) == 1

    # A stage run as a child process of the frozen program (`sys.executable -m ...`), as export does to quantise.
    from slowtune.export.gguf_writer import write_gguf

    f16 = write_gguf(tiny_llama, tmp_path / "tiny-F16.gguf")
    spec = {"source": str(f16), "dest": str(tmp_path / "tiny-Q8_0.gguf"), "ftype": "LLAMA_FTYPE_MOSTLY_Q8_0",
            "threads": 2}
    child = subprocess.run([str(program), "-m", "slowtune.export.quantize", json.dumps(spec)], capture_output=True,
                           text=True, timeout=300, env=_clean_env(tmp_path / "home"))
    assert child.returncode == 0, child.stderr
    q8 = tmp_path / "tiny-Q8_0.gguf"
    assert q8.read_bytes()[:4] == b"GGUF" and q8.stat().st_size < f16.stat().st_size


@pytest.mark.slow
def test_the_frozen_self_test_fails_when_the_bundle_lacks_a_part(frozen: tuple[Path, str], tmp_path: Path) -> None:
    bundle, _log = frozen
    internal = bundle / "_internal"
    # Break two parts, as a bad spec would: llama.cpp's library and the bundled price list.
    for lib in (internal / "llama_cpp" / "lib").glob("libllama.so*"):
        lib.unlink()
    (internal / "slowtune" / "resources" / "prices.json").unlink()
    done = subprocess.run([str(bundle / "slowtune"), "--self-test"], capture_output=True, text=True, timeout=600,
                          env=_clean_env(tmp_path / "home"))
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"^  FAIL\s+llama\.cpp\s", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  FAIL\s+child processes\s", done.stdout, re.MULTILINE), done.stdout  # the quantiser
    assert re.search(r"^  FAIL\s+resources\s+.*prices\.json is missing", done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^  ok  \s+mlx\s", done.stdout, re.MULTILINE), done.stdout
    assert f"{len(selftest.CHECKS) - 3} of {len(selftest.CHECKS)} checks passed" in done.stdout
