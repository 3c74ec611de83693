"""The export folder: what an export writes there, under which names, read back from disk and from the project.

- **The names**: one scheme for every reader and writer, in ``slowtune.export.names`` (re-exported here).
- **An export read back** (``read_export``): from its ``export.json``, or, for an export that did not finish, from
  the GGUF files it left; the exports of a run (``exports_of``: its own folder, the folders the project recorded,
  and folders the user named); deleting one (``remove_export``), files and records.
- **An export asked for** (``ExportRequest``): the files it writes and the same export as a command line;
  ``check_run_folder`` says in the user's words what is wrong with a run folder before anything is written, and
  ``run_export`` runs the request (in the app, in a job) and records it in the project.
- **What can be chatted with** (``list_models``): the project's exported GGUFs and the base beside each export, as
  the Chat page's model picker lists them.

The project's ``exports`` table is read and changed here (and written by ``pipeline.record_export``), nowhere else.
"""

from __future__ import annotations

import json
import shlex
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.export.names import (  # noqa: F401  (the naming scheme, re-exported for the pages)
    BASE_FILE,
    BASE_KIND,
    BASE_NAME,
    CHAT_PREFERENCE,
    LORA_KIND,
    QUANT_TYPES,
    RECOMMENDED,
    ExportFileName,
    export_file_name,
    parse_export_file_name,
)
from slowtune.export.pipeline import ExportFailed, find_adapter
from slowtune.progress import Progress
from slowtune.safetensors import read_header
from slowtune.store import Project, StoreError
from slowtune.train.runs import parse_run_id

# --- an export folder, read back -------------------------------------------------------------------------------

@dataclass
class ExportFile:
    path: Path
    kind: str  # F16, Q4_K_M, ..., base-F16 (or base-QUANT), LoRA, Modelfile, README
    size: int | None  # None: the file is gone
    check: dict[str, Any] | None = None  # its verification (export.json), if it had one

    @property
    def is_model(self) -> bool:
        """A full model one can chat with (not the base, not an adapter, not a text file)."""
        return self.kind in QUANT_TYPES


@dataclass
class ExportInfo:
    """An export folder, read back from disk."""

    folder: Path
    created_at: float
    finished: bool  # export.json was written: the export ran to its end (verification passed or not)
    files: list[ExportFile] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def lora_only(self) -> bool:
        return bool(self.report.get("lora_only")) or any(f.kind == LORA_KIND for f in self.files)

    @property
    def checks(self) -> list[dict[str, Any]]:
        return [v for v in self.report.get("verification", []) if isinstance(v, dict)]

    def file(self, kind: str) -> ExportFile | None:
        return next((f for f in self.files if f.kind == kind and f.size is not None), None)

    def chat_file(self) -> ExportFile | None:
        """The model file to chat with: Q4_K_M when there is one, else the next in CHAT_PREFERENCE."""
        for kind in CHAT_PREFERENCE:
            found = self.file(kind)
            if found is not None:
                return found
        return None

    def passed(self) -> bool:
        return self.finished and bool(self.checks) and all(v.get("passed") for v in self.checks)


def _json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object; {} for anything else (no file, damaged, another type)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def read_export(folder: Path) -> ExportInfo | None:
    """The export in ``folder``: from its export.json, or (an export that did not finish) from the GGUF files
    there. None when the folder holds neither."""
    report_path = folder / "export.json"
    report = _json_object(report_path)
    if report and isinstance(report.get("files"), dict):
        checks = {v.get("file"): v for v in report.get("verification", []) if isinstance(v, dict)}
        files = []
        for kind, recorded in report["files"].items():
            path = folder / Path(str(recorded)).name  # the folder may have been moved since
            files.append(ExportFile(path, str(kind), _size(path), checks.get(path.name)))
        for extra, kind in (("Modelfile", "Modelfile"), ("README.md", "README")):
            if (folder / extra).is_file():
                files.append(ExportFile(folder / extra, kind, _size(folder / extra)))
        return ExportInfo(folder, report_path.stat().st_mtime, True, files, report)
    try:
        # Only names an export writes: a folder of the user's own models is not an export.
        named = sorted((p, parsed) for p in folder.glob("*.gguf")
                       if p.is_file() and (parsed := parse_export_file_name(p.name)) is not None)
    except OSError:
        return None
    if not named:
        return None
    files = [ExportFile(p, parsed.kind, _size(p)) for p, parsed in named]
    return ExportInfo(folder, max(p.stat().st_mtime for p, _ in named), False, files)


def _same_path(a: Any, b: Path) -> bool:
    try:
        return Path(str(a)).resolve() == b.resolve()
    except (OSError, ValueError):
        return False


def _recorded_folders(project: Project, run_id: str) -> list[Path]:
    """The folders the project recorded exports of run ``run_id`` in."""
    rows = project.conn.execute("SELECT DISTINCT path FROM exports WHERE run_id = ?", (run_id,))
    return [Path(r["path"]).parent for r in rows]


def exports_of(run_dir: Path, project: Project | None, extra_folders: Sequence[Path] = ()) -> list[ExportInfo]:
    """The exports of the run in ``run_dir``, newest first: its default export folder, the folders the project
    recorded exports of it in, and ``extra_folders`` when the export there was made from this run."""
    folders = [run_dir / "export"]
    if project is not None:
        folders += _recorded_folders(project, run_dir.name)
    found: dict[Path, ExportInfo] = {}
    for folder in [*folders, *extra_folders]:
        key = folder.resolve()
        if key in found or not folder.is_dir():
            continue
        info = read_export(folder)
        if info is None:
            continue
        if folder in extra_folders and folder not in folders:
            adapter = info.report.get("adapter")
            if not (adapter and (_same_path(adapter, run_dir) or _same_path(adapter, run_dir / "adapter"))):
                continue
        found[key] = info
    return sorted(found.values(), key=lambda e: e.created_at, reverse=True)


def remove_export(folder: Path, project_root: Path | None) -> list[str]:
    """Delete the files of the export in ``folder`` (those its export.json lists, its Modelfile and README), and
    their records in the project. Other files in the folder are left alone. The names removed."""
    export = read_export(folder)
    if export is None:
        return []
    removed = []
    for f in [*export.files, ExportFile(folder / "export.json", "report", None)]:
        if f.path.parent == folder and f.path.is_file():
            f.path.unlink()
            removed.append(f.path.name)
    if project_root is not None:
        with Project.open(project_root) as project, project.transaction() as conn:
            conn.executemany("DELETE FROM exports WHERE path = ?", [(str(f.path),) for f in export.files])
    return removed


# --- an export, asked for and run ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportRequest:
    run_dir: Path
    out_dir: Path
    name: str = "model"
    quants: tuple[str, ...] = (RECOMMENDED,)
    with_base: bool = True
    lora_only: bool = False
    ollama: bool = True
    project_root: Path | None = None  # the project to record the export in
    replace: bool = False  # remove the export already in out_dir first (the user agreed)

    def planned_files(self) -> list[str]:
        if self.lora_only:
            names = [BASE_FILE, export_file_name(self.name, LORA_KIND)]
        else:
            names = [export_file_name(self.name, q) for q in ("F16", *(q for q in self.quants if q != "F16"))]
            if self.with_base:
                names.append(BASE_FILE)
        if self.ollama:
            names += ["Modelfile", "README.md"]
        return [*names, "export.json"]

    def command(self) -> str:
        """The same export as a command line."""
        parts = ["slowtune", "export", str(self.run_dir)]
        if self.lora_only:
            parts.append("--lora-only")
        else:
            parts += ["--quant", ",".join(self.quants) or "F16"]
            if not self.with_base:
                parts.append("--no-base")
        if self.out_dir != self.run_dir / "export":
            parts += ["--out", str(self.out_dir)]
        if self.name != "model":
            parts += ["--name", self.name]
        if not self.ollama:
            parts.append("--no-ollama")
        return shlex.join(parts)


@dataclass
class ExportOutcome:
    out_dir: Path
    seconds: float
    notes: list[str]


def check_run_folder(run_dir: Path) -> Path:
    """The run's adapter folder, or ExportFailed saying in the user's words what is wrong with the run folder."""
    if not run_dir.is_dir():
        raise ExportFailed(f"The run folder {run_dir} is gone: it was moved or deleted.")
    try:
        adapter = find_adapter(run_dir)
    except ExportFailed:
        raise ExportFailed(f"The run folder {run_dir} has no adapter any more: adapters.safetensors or "
                           "adapter_config.json is missing. Train the run again, or pick another run.") from None
    try:
        config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ExportFailed(f"The run's adapter_config.json cannot be read ({exc}): the run folder is damaged. "
                           "Train the run again.") from exc
    weights = adapter / "adapters.safetensors"
    try:
        header = read_header(weights)
        if header.data_end > header.file_size:
            raise ValueError("the file is shorter than its tensors")
    except (OSError, ValueError) as exc:
        raise ExportFailed(f"The run's adapters.safetensors is damaged ({exc}): the adapter cannot be read. "
                           "Train the run again.") from exc
    base = config.get("base_model")
    if not (isinstance(base, str) and base and (Path(base) / "config.json").exists()):
        raise ExportFailed(f"The base model this run was trained on is no longer at {base or '(unknown)'}. "
                           "Download it again, then export.")
    return adapter


def run_export(request: ExportRequest, progress: Progress) -> ExportOutcome:
    """The export ``request`` asks for: the run folder checked, the export it replaces removed (when asked), the
    pipeline run and the files recorded in the project (a record that fails is a note: the files are complete)."""
    from slowtune.export.pipeline import export_lora_only, export_run, record_export

    check_run_folder(request.run_dir)
    progress.check()
    if request.replace:
        remove_export(request.out_dir, request.project_root)
    if request.lora_only:
        result = export_lora_only(request.run_dir, request.out_dir, name=request.name, ollama=request.ollama,
                                  progress=progress)
    else:
        result = export_run(request.run_dir, request.out_dir, quants=list(request.quants) or ["F16"],
                            name=request.name, with_base=request.with_base, ollama=request.ollama,
                            progress=progress)
    notes: list[str] = []
    if request.project_root is not None:
        try:
            record_export(request.project_root, request.run_dir.name, result)
        except (sqlite3.Error, StoreError, OSError) as exc:
            notes.append(f"The files are complete, but the project could not record them: {exc}")
    return ExportOutcome(result.out_dir, result.seconds, notes)


# --- what can be chatted with ----------------------------------------------------------------------------------

QUANT_ORDER = (*CHAT_PREFERENCE, LORA_KIND)  # the order of one export's files in the model picker


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model pickers: a GGUF file (and a LoRA GGUF applied to it)."""

    path: str
    label: str
    kind: str = "file"  # tuned (an export), base (the base written beside an export), file (opened by the user)
    lora: str | None = None
    base: str | None = None  # a tuned export's unmodified base GGUF, for comparing and evaluating
    run: str | None = None

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.path, self.lora)

    @property
    def name(self) -> str:
        if self.lora:
            return f"{Path(self.lora).name} on {Path(self.path).name}"
        return Path(self.path).name


def run_label(run_id: str | None, folder: Path) -> str:
    """'run 2025-03-04 14:05' for a training run id, else the export folder's name."""
    if run_id:
        started = parse_run_id(run_id)
        return time.strftime("run %Y-%m-%d %H:%M", started) if started is not None else f"run {run_id}"
    return folder.name


def _picker_kind(file: Path) -> str:
    """How the picker lists a GGUF found in an export folder: "base", "LoRA" or its quantisation."""
    parsed = parse_export_file_name(file.name)
    if parsed is not None:
        return "base" if parsed.is_base else parsed.kind
    # A GGUF the export did not name (the user's own, put in the folder): "base-..." is a base, else the last part
    # of its name ("model-IQ4_XS.gguf": IQ4_XS).
    stem = file.stem
    if stem.startswith(f"{BASE_NAME}-"):
        return "base"
    return stem.rsplit("-", 1)[-1] if "-" in stem else stem


def _base_model_name(folder: Path, fallback: str | None) -> str | None:
    """The base model an export was made from: export.json's ``base`` (a model folder), else the run's record."""
    base = _json_object(folder / "export.json").get("base")
    name = base or fallback
    return Path(str(name)).name if name else None


def _recorded_ggufs(project: Project) -> list[sqlite3.Row]:
    """The GGUF files the project recorded exporting, oldest first, with their run's base model."""
    try:
        return project.conn.execute(
            "SELECT e.path, e.quant, e.run_id, e.created_at, e.verified, r.base_model FROM exports e "
            "LEFT JOIN runs r ON r.id = e.run_id WHERE e.kind LIKE 'gguf%' ORDER BY e.created_at").fetchall()
    except sqlite3.Error:
        return []


def list_models(project: Project) -> list[ModelChoice]:
    """The project's exported GGUFs, newest run first (each run's quantisations in QUANT_ORDER), then the base GGUF
    of each export. Read from the exports table and from the export folders on disk (a file exported before the
    table knew of it, or recorded in a folder since moved, still shows; a recorded file that is gone does not)."""
    folders: dict[Path, dict[str, Any]] = {}

    unverified: set[Path] = set()

    def note(file: Path, quant: str, run: str | None, when: float, base_model: str | None) -> None:
        info = folders.setdefault(file.parent, {"files": {}, "time": 0.0, "run": None, "base_model": None})
        info["files"].setdefault(file, quant)
        info["time"] = max(info["time"], when)
        info["run"] = info["run"] or run
        info["base_model"] = info["base_model"] or base_model

    for row in _recorded_ggufs(project):
        file = Path(row["path"])
        if file.suffix.lower() == ".gguf" and file.is_file():
            quant = str(row["quant"] or _picker_kind(file))
            quant = "base" if quant.startswith("base") else quant
            note(file.resolve(), quant, row["run_id"], float(row["created_at"] or 0), row["base_model"])
            if quant != "base" and not row["verified"]:
                unverified.add(file.resolve())  # the export's check found it does not behave like the trained model
    known = {f for info in folders.values() for f in info["files"]}
    for pattern in ("runs/*/export/*.gguf", "exports/*/*.gguf"):
        for file in sorted(project.root.glob(pattern)):
            file = file.resolve()
            if file in known or not file.is_file():
                continue
            run = file.parent.parent.name if pattern.startswith("runs") else None
            note(file, _picker_kind(file), run, file.stat().st_mtime, None)

    tuned: list[ModelChoice] = []
    bases: list[ModelChoice] = []
    order = {q: i for i, q in enumerate(QUANT_ORDER)}
    for folder, info in sorted(folders.items(), key=lambda kv: (-kv[1]["time"], str(kv[0]))):
        where = run_label(info["run"], folder)
        files: dict[Path, str] = info["files"]
        base_file = next((f for f, q in files.items() if q == "base"), None)
        if base_file is None and (folder / BASE_FILE).is_file():
            base_file = (folder / BASE_FILE).resolve()
        base = str(base_file) if base_file else None
        for file, quant in sorted(files.items(), key=lambda fq: (order.get(fq[1], len(order)), fq[0].name)):
            if quant == "base":
                continue
            flag = " · not verified" if file in unverified else ""
            if quant == LORA_KIND:
                if base is None:
                    continue  # an adapter is loaded on top of its base; without the base it cannot run
                tuned.append(ModelChoice(base, f"Tuned · {where} · LoRA on the base{flag}", "tuned", lora=str(file),
                                         base=base, run=info["run"]))
            else:
                tuned.append(ModelChoice(str(file), f"Tuned · {where} · {quant}{flag}", "tuned", base=base,
                                         run=info["run"]))
        if base is not None:
            model_name = _base_model_name(folder, info["base_model"])
            bases.append(ModelChoice(base, f"Base · {where}" + (f" · {model_name}" if model_name else ""), "base",
                                     run=info["run"]))
    return tuned + bases
