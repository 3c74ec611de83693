"""``slowtune --self-test``: does this install (above all, the frozen app) have every part it needs?

Each check does real work with one part and fails when that part is missing or broken:

- documents: builds the command line (which imports every stage; the command line hands the self-test the function
  that builds it, so this module does not import the CLI), creates a project in SQLite and ingests a Markdown and an
  HTML file through the spawned reader processes, as the Library page does;
- resources: reads the bundled price list and icon through ``importlib.resources``;
- mlx: runs one matrix product (on the Metal GPU on a Mac, which also loads MLX's kernel library);
- mlx-lm: writes a tiny model, then loads it and its tokenizer the way training does;
- llama.cpp: loads the llama.cpp library, converts that tiny model to GGUF and evaluates a prompt with it;
- child processes: the quantiser runs as a child process the way export starts it; in the frozen app, the app
  refuses ``-c``, a module that is not one of its own children (``-m keyring``) and a child with foreign arguments;
- keychain: the OS keychain backend is bundled and selected (the macOS Keychain on a Mac); where the machine has
  no keychain it says so and checks what slowtune is configured to use instead;
- window: builds the main window offscreen and draws it, with the app icon rendered from its SVG.

Everything runs in a temporary ``SLOWTUNE_HOME``, so the self-test leaves the user's settings, projects and window
state untouched. It prints one line per check and exits 0 only when all of them pass. In the frozen app it also
reports the size of the bundle.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from slowtune import __version__

MARKDOWN_DOC = """# Ferry timetable

The ferry to Holm leaves the north pier at 07:40 and 16:10 on weekdays.
On Sundays there is one crossing, at noon. Bicycles travel free.
"""
HTML_DOC = """<html><head><title>Harbour office</title></head><body>
<h1>Harbour office</h1><p>The harbour office opens at 08:00 and closes at 17:00. Keys for the boat shed are kept
there and signed out by name.</p></body></html>
"""
PROMPT = "When does the ferry leave on Sundays?"


class CheckFailed(RuntimeError):
    """A check ran and found a problem; the message says which, in words."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float
    trace: str = ""


# Builds slowtune's command line and returns its subcommands (given by slowtune.cli, which imports every stage).
CommandLine = Callable[[], Sequence[str]]


class _Context:
    """What the checks share: a scratch folder, the command line's builder (when given) and the tiny model, built
    once when a check first needs it."""

    def __init__(self, scratch: Path, commands: CommandLine | None = None) -> None:
        self.scratch = scratch
        self.commands = commands
        self._model: Path | None = None

    def tiny_model(self) -> Path:
        if self._model is None:
            from slowtune.testing import tiny_models

            # One small llama block with a 512-token BPE vocabulary: about 0.4 MB, built in well under a second.
            self._model = tiny_models.build_tiny_model(
                self.scratch / "tiny-llama", "llama", hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                intermediate_size=128, vocab_size=512, max_position_embeddings=1024, seed=7,
            )
        return self._model


# --- the checks ----------------------------------------------------------------------------------------------
def check_documents(ctx: _Context) -> str:
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    commands = ctx.commands() if ctx.commands is not None else None
    folder = ctx.scratch / "documents"
    folder.mkdir()
    (folder / "ferry.md").write_text(MARKDOWN_DOC, encoding="utf-8")
    (folder / "harbour.html").write_text(HTML_DOC, encoding="utf-8")
    with Project.create(ctx.scratch / "project", name="self-test") as project:
        report = ingest(project, [folder], workers=1)
        chunks = project.conn.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
    bad = [f"{Path(f.path).name}: {f.status} ({f.reason})" for f in report.files if f.status != "ok"]
    if bad or len(report.files) != 2:
        raise CheckFailed("the documents were not read: " + ("; ".join(bad) or f"{len(report.files)} files seen"))
    if chunks < 2:
        raise CheckFailed(f"the documents were read but gave {chunks} chunk(s)")
    done = f"a project in SQLite; 2 documents read in a worker process, {chunks} chunks"
    return done if commands is None else f"{len(commands)} commands; {done}"


def check_resources(ctx: _Context) -> str:
    from slowtune.resources import resource_path, resources_root
    from slowtune.teacher import cost

    cost.bundled_prices.cache_clear()
    prices = cost.bundled_prices()
    if not prices:
        raise CheckFailed("the bundled price list is empty")
    icon = resource_path("icons", "slowtune.svg")
    if b"<svg" not in icon.read_bytes()[:200]:
        raise CheckFailed(f"{icon} is not an SVG image")
    return f"price list ({len(prices)} models, as of {cost.bundled_as_of()}) and icon, from {resources_root()}"


def check_mlx(ctx: _Context) -> str:
    import mlx.core as mx

    metal = bool(getattr(mx, "metal", None) and mx.metal.is_available())
    if sys.platform == "darwin" and platform.machine() == "arm64" and not metal:
        raise CheckFailed("MLX cannot use the GPU (Metal is not available to it)")
    device = mx.gpu if metal else mx.cpu
    a = mx.arange(6, dtype=mx.float32).reshape(2, 3)
    with mx.stream(device):
        product = a @ a.T
        mx.eval(product)
    got = [[float(v) for v in row] for row in product.tolist()]
    if got != [[5.0, 14.0], [14.0, 50.0]]:
        raise CheckFailed(f"a 2x3 matrix product came out wrong: {got}")
    where = "the Metal GPU (kernels loaded)" if metal else "the CPU"
    return f"MLX {mx.__version__}: a matrix product on {where} is right"


def check_mlx_lm(ctx: _Context) -> str:
    import mlx.core as mx
    from mlx_lm.utils import load_model, load_tokenizer

    folder = ctx.tiny_model()
    model, config = load_model(folder)
    tokenizer = load_tokenizer(folder)
    ids = tokenizer.encode(PROMPT)
    if not ids:
        raise CheckFailed("the tokenizer turned the prompt into no tokens")
    logits = model(mx.array([ids]))
    mx.eval(logits)
    if tuple(logits.shape) != (1, len(ids), config["vocab_size"]) or not bool(mx.all(mx.isfinite(logits)).item()):
        raise CheckFailed(f"the tiny model's output is wrong: shape {tuple(logits.shape)}")
    return f"the tiny {config['model_type']} model and its tokenizer load as training loads them; {len(ids)} tokens in"


def check_llama_cpp(ctx: _Context) -> str:
    import llama_cpp
    import numpy as np

    from slowtune.export.gguf_writer import write_gguf
    from slowtune.llama import load_gguf

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    backend = ("Metal" if sys.platform == "darwin" else "GPU") if gpu else "CPU"
    gguf = write_gguf(ctx.tiny_model(), ctx.scratch / "tiny.gguf", out_type="f32")
    llm = load_gguf(gguf, n_ctx=256, logits_all=True)
    try:
        tokens = llm.tokenize(PROMPT.encode("utf-8"))
        llm.eval(tokens)
        scores = np.asarray(llm.scores[: llm.n_tokens])
        if llm.n_tokens != len(tokens) or not np.isfinite(scores).all():
            raise CheckFailed("llama.cpp evaluated the prompt but its logits are not finite")
    finally:
        llm.close()
    size_kb = gguf.stat().st_size / 1024
    return (f"llama-cpp-python {llama_cpp.__version__} on {backend}: a {size_kb:.0f} KB GGUF made here loads and "
            f"evaluates {len(tokens)} tokens")


# Command lines the frozen app must refuse (packaging/entry.py): code, a foreign module, a known child with arguments
# slowtune never gives it. Each would otherwise run with the app's identity, and so with its Keychain access.
REFUSED_COMMANDS = (
    ("-c", "import keyring"),
    ("-m", "keyring", "get", "slowtune", "openai"),
    ("-m", "slowtune.export.quantize", "--foreign", "argument"),
)


def check_child_processes(ctx: _Context) -> str:
    import subprocess

    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.quantize import quantize
    from slowtune.selfcmd import program_command

    refused = []
    if is_frozen():
        for args in REFUSED_COMMANDS:
            done = subprocess.run(program_command(*args), capture_output=True, text=True, timeout=120,
                                  stdin=subprocess.DEVNULL)
            shown = " ".join(args[:2])
            if done.returncode != 2 or "refused" not in done.stderr or done.stdout:
                raise CheckFailed(f"the app did not refuse `{shown} ...` (exit {done.returncode}, "
                                  f"stderr {done.stderr.strip()[-200:]!r})")
            refused.append(shown)
    f32 = write_gguf(ctx.tiny_model(), ctx.scratch / "child-F32.gguf", out_type="f32")
    q8 = quantize(f32, ctx.scratch / "child-Q8_0.gguf", "Q8_0")
    if q8.read_bytes()[:4] != b"GGUF" or q8.stat().st_size >= f32.stat().st_size:
        raise CheckFailed("the quantiser child process did not write a smaller GGUF")
    ran = "the quantiser ran as a child process"
    if not refused:
        return f"{ran} (from source: the refusal of other code is the frozen app's, and is checked there)"
    return f"{ran}; refused: {'; '.join(f'`{r} ...`' for r in refused)}"


def _os_keychain_module() -> str | None:
    if sys.platform == "darwin":
        return "keyring.backends.macOS"
    if sys.platform.startswith("linux"):
        return "keyring.backends.SecretService"
    if sys.platform == "win32":
        return "keyring.backends.Windows"
    return None


def check_keychain(ctx: _Context) -> str:
    import importlib
    from importlib import metadata

    from slowtune import secrets

    found = sorted({ep.name for ep in metadata.entry_points(group="keyring.backends")})
    if not found:
        raise CheckFailed("keyring finds no backends (its package metadata is missing from this install)")
    os_module = _os_keychain_module()
    if os_module:
        importlib.import_module(os_module)  # the OS backend is there even where this machine cannot use it
    info = secrets.backend_info()
    if sys.platform == "darwin" and not info.name.startswith("keyring.backends.macOS") and not info.explicit:
        # Only a backend the user chose (PYTHON_KEYRING_BACKEND, keyringrc.cfg) may stand in for the Keychain.
        raise CheckFailed(f"the macOS Keychain is not the keyring backend in use ({info.name})")
    if info.os_keychain:
        return f"{info.name} ({info.note}); backends known: {', '.join(found)}"
    name = f"self-test-{uuid.uuid4().hex[:12]}"
    value = f"st-{uuid.uuid4().hex}"
    if info.usable:
        # A backend chosen through PYTHON_KEYRING_BACKEND or keyringrc.cfg: save, read back and remove an entry.
        secrets.set_secret(name, value)
        try:
            if secrets.get_secret(name) != value:
                raise CheckFailed(f"the configured backend {info.name} did not give back what was saved")
        finally:
            secrets.delete_secret(name)
        return f"no OS keychain in use; the configured backend {info.name} saves, reads and removes a key"
    variable = secrets.env_var_for(name)
    os.environ[variable] = value
    try:
        if secrets.get_secret(name) != value:
            raise CheckFailed(f"a key set in {variable} was not found")
    finally:
        del os.environ[variable]
    return (f"no OS keychain on this machine ({info.name}); keys for one run come from SLOWTUNE_KEY_<NAME> "
            f"variables, checked; backends known: {', '.join(found)}")


@dataclass(frozen=True)
class WindowReport:
    """What drawing the main window gave (``slowtune.gui.selfcheck.draw_main_window``)."""

    pages: int
    sidebar_entries: int
    width: int  # of the drawn window; 0 when it could not be drawn
    height: int
    icon_drawn: bool
    platform: str


def check_window(ctx: _Context) -> str:
    from slowtune.gui.selfcheck import draw_main_window  # the Qt half lives in slowtune/gui

    shown = WindowReport(**draw_main_window())
    if shown.pages < 1 or shown.sidebar_entries != shown.pages:
        raise CheckFailed(f"the window has {shown.sidebar_entries} sidebar entries for {shown.pages} pages")
    if shown.width < 100:
        raise CheckFailed("the main window could not be drawn")
    if not shown.icon_drawn:
        raise CheckFailed("the SVG app icon cannot be drawn (Qt's SVG plugins are missing)")
    return (f"main window with {shown.pages} pages drawn {shown.width}x{shown.height} on Qt's {shown.platform} "
            "platform; SVG icon drawn")


CHECKS: dict[str, Callable[[_Context], str]] = {
    "documents": check_documents,
    "resources": check_resources,
    "mlx": check_mlx,
    "mlx-lm": check_mlx_lm,
    "llama.cpp": check_llama_cpp,
    "child processes": check_child_processes,
    "keychain": check_keychain,
    "window": check_window,
}


# --- running and reporting ---------------------------------------------------------------------------------------
def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))


def bundle_root() -> Path | None:
    """The folder the frozen app lives in: ``Slowtune.app`` on a Mac, the ``slowtune/`` folder elsewhere."""
    if not is_frozen():
        return None
    exe = Path(sys.executable).resolve()
    if exe.parent.name == "MacOS" and exe.parent.parent.name == "Contents":
        return exe.parent.parent.parent
    return exe.parent


def folder_size(folder: Path) -> int:
    """Bytes in the files under ``folder``; symbolic links are counted as links, not followed."""
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextlib.contextmanager
def _scratch_home() -> Iterator[Path]:
    """A temporary SLOWTUNE_HOME and scratch folder for the run; both are removed afterwards."""
    from slowtune.paths import HOME_ENV

    previous = os.environ.get(HOME_ENV)
    with tempfile.TemporaryDirectory(prefix="slowtune-self-test-") as tmp:
        os.environ[HOME_ENV] = str(Path(tmp) / "home")
        try:
            scratch = Path(tmp) / "scratch"
            scratch.mkdir()
            yield scratch
        finally:
            if previous is None:
                os.environ.pop(HOME_ENV, None)
            else:
                os.environ[HOME_ENV] = previous


def run_checks(names: list[str] | None = None, *, commands: CommandLine | None = None) -> list[CheckResult]:
    """Run the named checks (all of them by default), in order; one failing does not stop the others.

    ``commands`` builds the command line and returns its subcommands (``slowtune --self-test`` passes it)."""
    chosen = list(CHECKS) if names is None else names
    unknown = [n for n in chosen if n not in CHECKS]
    if unknown:
        raise ValueError(f"unknown self-test check(s): {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    results = []
    with _scratch_home() as scratch:
        ctx = _Context(scratch, commands)
        for name in chosen:
            start = time.perf_counter()
            try:
                detail = CHECKS[name](ctx)
                results.append(CheckResult(name, True, detail, time.perf_counter() - start))
            except Exception as exc:  # a broken part must not stop the report on the others
                message = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
                results.append(CheckResult(name, False, message, time.perf_counter() - start,
                                           traceback.format_exc()))
    return results


def render(results: list[CheckResult], verbose: bool = False) -> str:
    where = f"frozen app at {bundle_root()}" if is_frozen() else "from source"
    lines = [f"slowtune {__version__} self-test ({where}; Python {platform.python_version()}, "
             f"{platform.system()} {platform.machine()})"]
    width = max(len(r.name) for r in results) if results else 0
    for r in results:
        lines.append(f"  {'ok  ' if r.ok else 'FAIL'}  {r.name:<{width}}  {r.detail}  ({r.seconds:.1f} s)")
        if verbose and r.trace:
            lines.extend("        " + line for line in r.trace.rstrip().splitlines())
    root = bundle_root()
    if root is not None:
        lines.append(f"bundle size: {folder_size(root) / 1e6:.0f} MB ({root})")
    passed = sum(r.ok for r in results)
    verdict = "all checks passed" if passed == len(results) else f"{len(results) - passed} check(s) FAILED"
    lines.append(f"{passed} of {len(results)} checks passed: {verdict}")
    return "\n".join(lines)


def main(names: list[str] | None = None, *, verbose: bool = False, out: TextIO | None = None,
         commands: CommandLine | None = None) -> int:
    """Run the self-test, print its report, and return the exit code: 0 only when every check passed."""
    results = run_checks(names, commands=commands)
    print(render(results, verbose=verbose), file=out or sys.stdout, flush=True)
    return 0 if results and all(r.ok for r in results) else 1
