"""Build the app: Slowtune.app and a DMG on a Mac, the slowtune/ folder on Linux (where CI smoke-tests the spec).

    uv run python packaging/build.py                 # build, self-test; on a Mac also sign, DMG, notarise
    uv run python packaging/build.py --help

Steps, in order:
1. PyInstaller builds from packaging/slowtune.spec (onedir): dist/Slowtune.app on macOS, dist/slowtune/ on Linux.
2. macOS: every piece of code in the app is signed from the inside out (libraries and extension modules, then the
   Qt frameworks, then the app with packaging/entitlements.plist), with the hardened runtime and a secure
   timestamp, by the identity in SLOWTUNE_SIGN_IDENTITY ("Developer ID Application: Name (TEAMID)"). Without it
   the app is signed ad hoc: it runs on this Mac, but it cannot be notarised or opened elsewhere without a warning.
3. The frozen app runs its own ``--self-test`` (offscreen); the build fails if any check fails.
4. macOS: when notarisation credentials are set (SLOWTUNE_NOTARY_PROFILE, the name given to
   ``xcrun notarytool store-credentials``; or SLOWTUNE_NOTARY_APPLE_ID, SLOWTUNE_NOTARY_TEAM_ID and
   SLOWTUNE_NOTARY_PASSWORD, an app-specific password), the app is submitted and the ticket stapled to it.
5. macOS: dmgbuild makes dist/Slowtune-VERSION.dmg with the app and a link to Applications; with a signing
   identity the DMG is signed, and with credentials it is notarised and stapled too.

On Linux, steps 2, 4 and 5 are skipped, and the script says so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import buildinfo

SPEC = buildinfo.PACKAGING / "slowtune.spec"
DMGBUILD = "dmgbuild==1.6.7"  # run through uv on the build Mac; not a dependency of the app
MACHO_MAGICS = {
    bytes.fromhex(h) for h in ("feedface", "feedfacf", "cefaedfe", "cffaedfe", "cafebabe", "bebafeca")
}
MAC_STEPS = ("sign the app (inside-out, hardened runtime, timestamp)", "notarise and staple the app",
             "build the DMG", "sign, notarise and staple the DMG")


class BuildError(RuntimeError):
    pass


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def step(self, text: str) -> None:
        self.done.append(text)
        print(f"build: {text}", flush=True)

    def skip(self, text: str, why: str) -> None:
        self.skipped.append(f"{text}: {why}")
        print(f"build: skipped: {text} ({why})", flush=True)


# --- running tools --------------------------------------------------------------------------------------------
def _shown(cmd: Sequence[str], secrets: Sequence[str] = ()) -> str:
    return " ".join("****" if part in secrets else part for part in cmd)


def run(cmd: Sequence[str], *, secrets: Sequence[str] = (), capture: bool = False,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool, printing the command (secret arguments masked); a failure raises BuildError."""
    print(f"  $ {_shown(cmd, secrets)}", flush=True)
    proc = subprocess.run(list(cmd), text=True, capture_output=capture, env=dict(env) if env else None)
    if proc.returncode != 0:
        detail = (proc.stdout or "") + (proc.stderr or "") if capture else ""
        raise BuildError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {_shown(cmd, secrets)}\n{detail}")
    return proc


# --- the build ------------------------------------------------------------------------------------------------
def pyinstaller(dist: Path, work: Path, clean: bool) -> None:
    cmd = [sys.executable, "-m", "PyInstaller", str(SPEC), "--noconfirm", "--distpath", str(dist),
           "--workpath", str(work)]
    if clean:
        cmd.append("--clean")
    run(cmd)


def app_path(dist: Path, platform: str = sys.platform) -> Path:
    return dist / (f"{buildinfo.APP_NAME}.app" if platform == "darwin" else buildinfo.EXE_NAME)


def program_path(dist: Path, platform: str = sys.platform) -> Path:
    if platform == "darwin":
        return app_path(dist, platform) / "Contents" / "MacOS" / buildinfo.EXE_NAME
    return app_path(dist, platform) / buildinfo.EXE_NAME


def user_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The environment to start the frozen app in: this shell's, less what configures the build's Python
    (PYTHON* variables such as a development keyring backend, the virtual environment)."""
    return {k: v for k, v in env.items() if not k.startswith("PYTHON") and k not in ("VIRTUAL_ENV", "UV")}


def self_test(program: Path) -> str:
    env = {**user_environment(os.environ), "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run([str(program), "--self-test"], text=True, capture_output=True, env=env)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise BuildError(f"the frozen app's self-test failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def walk(root: Path) -> list[Path]:
    """Every file and link under ``root``, without following linked folders (the .app cross-links its folders)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        found += [here / name for name in filenames]
        found += [here / name for name in dirnames if (here / name).is_symlink()]
    return found


def folder_size(folder: Path) -> int:
    return sum(p.lstat().st_size for p in walk(folder))


# --- signing (macOS) -----------------------------------------------------------------------------------------
def is_macho(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) in MACHO_MAGICS


def signing_order(app: Path) -> list[Path]:
    """Every piece of code in ``app`` that needs its own signature, innermost first, the app itself last.

    Loose Mach-O files (dylibs, extension modules, the Python library) come first, deepest folder first; then each
    nested .framework bundle (signed as a bundle, after anything loose inside it); then the app. The main
    executable is signed with the app. Symbolic links (PyInstaller's cross-links) are never signed themselves.
    """
    contents = app / "Contents"
    main_exe = contents / "MacOS" / buildinfo.EXE_NAME
    frameworks = sorted({Path(d) for d, _dirs, _files in os.walk(contents) if d.endswith(".framework")},
                        key=lambda p: (-len(p.parts), str(p)))

    def in_framework(path: Path) -> bool:
        return any(parent.suffix == ".framework" for parent in path.parents if parent != app)

    loose = [p for p in walk(contents) if p != main_exe and not in_framework(p) and is_macho(p)]
    loose.sort(key=lambda p: (-len(p.parts), str(p)))
    return [*loose, *frameworks, app]


def codesign_command(path: Path, identity: str | None, entitlements: Path | None) -> list[str]:
    """codesign for one item: with a real identity, the hardened runtime and a secure timestamp (both required
    for notarisation); ad hoc ("-") without either, since Apple's timestamp service signs only real identities."""
    cmd = ["codesign", "--force", "--sign", identity or "-"]
    if identity:
        cmd += ["--options", "runtime", "--timestamp"]
    if entitlements is not None:
        cmd += ["--entitlements", str(entitlements)]
    return [*cmd, str(path)]


def sign_app(app: Path, identity: str | None) -> int:
    items = signing_order(app)
    for item in items:
        run(codesign_command(item, identity, buildinfo.ENTITLEMENTS if item == app else None), capture=True)
    run(["codesign", "--verify", "--strict", "--deep", "--verbose=2", str(app)], capture=True)
    return len(items)


# --- notarisation (macOS) -------------------------------------------------------------------------------------
def notary_credentials(env: Mapping[str, str]) -> tuple[list[str], list[str]] | None:
    """notarytool's credential arguments from the environment, and which of them are secret; None when unset."""
    profile = env.get("SLOWTUNE_NOTARY_PROFILE", "").strip()
    if profile:
        return ["--keychain-profile", profile], []
    apple_id = env.get("SLOWTUNE_NOTARY_APPLE_ID", "").strip()
    team = env.get("SLOWTUNE_NOTARY_TEAM_ID", "").strip()
    password = env.get("SLOWTUNE_NOTARY_PASSWORD", "").strip()
    if apple_id and team and password:
        return ["--apple-id", apple_id, "--team-id", team, "--password", password], [password]
    return None


def notary_result(stdout: str) -> dict[str, object]:
    """notarytool's JSON answer (``--output-format json``), or {} when it printed something else."""
    for text in (stdout, stdout.strip().splitlines()[-1] if stdout.strip() else ""):
        try:
            result = json.loads(text)
        except ValueError:
            continue
        if isinstance(result, dict):
            return result
    return {}


def notarise(path: Path, credentials: tuple[list[str], list[str]]) -> None:
    """Submit ``path`` (a .zip of the app, or the DMG), wait for Apple's verdict, and fail with its log if refused.

    ``notarytool submit --wait`` exits 0 whenever Apple gave a verdict, "Invalid" included, so the verdict is read
    from its JSON answer; a non-zero exit (no verdict: bad credentials, network) fails with what it printed.
    """
    args, secrets = credentials
    cmd = ["xcrun", "notarytool", "submit", str(path), "--wait", "--output-format", "json", *args]
    print(f"  $ {_shown(cmd, secrets)}", flush=True)
    proc = subprocess.run(cmd, text=True, capture_output=True)
    result = notary_result(proc.stdout or "")
    if result.get("status") == "Accepted" and proc.returncode == 0:
        return
    log = ""
    if result.get("id"):  # Apple's reasons, file by file
        try:
            log = run(["xcrun", "notarytool", "log", str(result["id"]), *args], secrets=secrets, capture=True).stdout
        except BuildError as exc:
            log = f"(its log could not be fetched: {exc})"
    verdict = f"with the verdict {result['status']!r}" if result.get("status") else "without a verdict"
    raise BuildError(f"notarisation of {path.name} ended {verdict} (notarytool exit {proc.returncode}):\n"
                     f"{proc.stdout}{proc.stderr}{log}")


def notarise_app(app: Path, credentials: tuple[list[str], list[str]], work: Path) -> None:
    archive = work / f"{app.stem}-notarise.zip"
    archive.unlink(missing_ok=True)
    run(["ditto", "-c", "-k", "--sequesterRsrc", "--keepParent", str(app), str(archive)])
    notarise(archive, credentials)
    run(["xcrun", "stapler", "staple", str(app)])
    run(["xcrun", "stapler", "validate", str(app)])
    # What Gatekeeper will say on a user's Mac: "accepted, source=Notarized Developer ID".
    run(["spctl", "--assess", "--type", "execute", "--verbose=2", str(app)])


# --- the disk image (macOS) -----------------------------------------------------------------------------------
def dmg_settings(app: Path) -> dict[str, object]:
    """dmgbuild settings: the app on the left, a link to /Applications on the right, nothing else."""
    return {
        "format": "UDZO",
        "filesystem": "HFS+",
        "files": [str(app)],
        "symlinks": {"Applications": "/Applications"},
        "icon_locations": {app.name: (150, 170), "Applications": (450, 170)},
        "window_rect": ((200, 200), (600, 360)),
        "icon_size": 112,
        "text_size": 13,
        "default_view": "icon-view",
        "show_status_bar": False,
        "show_toolbar": False,
        "show_sidebar": False,
    }


def make_dmg(app: Path, dmg: Path) -> None:
    """dmgbuild runs in its own throwaway environment (uv), so the app's lock file does not carry it."""
    dmg.unlink(missing_ok=True)
    code = ("import json, sys, dmgbuild; "
            "dmgbuild.build_dmg(sys.argv[1], sys.argv[2], settings=json.loads(sys.argv[3]))")
    settings = json.dumps(dmg_settings(app))
    run(["uv", "run", "--no-project", "--with", DMGBUILD, "python", "-c", code, str(dmg), buildinfo.APP_NAME,
         settings])
    run(["hdiutil", "verify", str(dmg)])


# --- main ---------------------------------------------------------------------------------------------------------
def build(dist: Path, work: Path, *, clean: bool = False, dmg: bool = True, notarise_ok: bool = True,
          run_self_test: bool = True, platform: str = sys.platform,
          env: Mapping[str, str] | None = None) -> Report:
    env = os.environ if env is None else env
    report = Report()
    started = time.monotonic()
    pyinstaller(dist, work, clean)
    app = app_path(dist, platform)
    report.step(f"PyInstaller built {app} in {time.monotonic() - started:.0f} s "
                f"({folder_size(app) / 1e6:.0f} MB)")
    if platform != "darwin":
        if run_self_test:
            self_test(program_path(dist, platform))
            report.step("the frozen app passed its self-test")
        for step in MAC_STEPS:
            report.skip(step, "macOS only; this is " + platform)
        return report

    identity = env.get("SLOWTUNE_SIGN_IDENTITY", "").strip() or None
    count = sign_app(app, identity)
    report.step(f"signed {count} items inside-out " + (f"as {identity!r} with the hardened runtime and a timestamp"
                                                        if identity else "ad hoc (no SLOWTUNE_SIGN_IDENTITY)"))
    if run_self_test:
        self_test(program_path(dist, platform))
        report.step("the signed app passed its self-test")
    credentials = notary_credentials(env) if notarise_ok else None
    if credentials and identity:
        notarise_app(app, credentials, work)
        report.step("the app is notarised and its ticket stapled")
    else:
        report.skip(MAC_STEPS[1], "needs SLOWTUNE_SIGN_IDENTITY and notary credentials" if notarise_ok
                    else "--no-notarise")
    if not dmg:
        report.skip(MAC_STEPS[2], "--no-dmg")
        return report
    image = dist / f"{buildinfo.APP_NAME}-{buildinfo.app_version()}.dmg"
    make_dmg(app, image)
    report.step(f"built {image} ({image.stat().st_size / 1e6:.0f} MB)")
    if identity:
        run(["codesign", "--force", "--sign", identity, "--timestamp", str(image)])
        if credentials:
            notarise(image, credentials)
            run(["xcrun", "stapler", "staple", str(image)])
            run(["xcrun", "stapler", "validate", str(image)])
            report.step("the DMG is signed, notarised and stapled")
        else:
            report.step("the DMG is signed")
            report.skip("notarise the DMG", "no notary credentials")
    else:
        report.skip(MAC_STEPS[3], "no SLOWTUNE_SIGN_IDENTITY")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--dist", type=Path, default=buildinfo.ROOT / "dist", help="output folder (default dist/)")
    parser.add_argument("--work", type=Path, default=buildinfo.ROOT / "build",
                        help="PyInstaller's work folder (default build/)")
    parser.add_argument("--clean", action="store_true", help="empty PyInstaller's caches first")
    parser.add_argument("--no-dmg", action="store_true", help="macOS: stop after the signed app")
    parser.add_argument("--no-notarise", action="store_true", help="macOS: do not submit to Apple")
    parser.add_argument("--no-self-test", action="store_true", help="do not run the frozen app's self-test")
    args = parser.parse_args(argv)
    if sys.platform == "darwin" and shutil.which("codesign") is None:
        print("build: codesign not found; install the Xcode command-line tools (xcode-select --install)",
              file=sys.stderr)
        return 1
    try:
        report = build(args.dist.resolve(), args.work.resolve(), clean=args.clean, dmg=not args.no_dmg,
                       notarise_ok=not args.no_notarise, run_self_test=not args.no_self_test)
    except BuildError as exc:
        print(f"build: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"build: done ({len(report.done)} steps, {len(report.skipped)} skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
