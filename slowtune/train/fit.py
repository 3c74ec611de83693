"""Will a model train on this Mac? The app's list of models with their badges, and its check before a run starts.

- ``model_rows``: the models to choose from (folders chosen, imported GGUFs, Ollama's, the catalog's), each with
  where it is, whether it fits (``Fit``) and why it could not be exported to GGUF after training, if it could not.
- ``catalog_fit``: a quick estimate from the catalog's figures, for a model that is not downloaded yet.
- ``folder_fit``: the preflight's verdict on a model folder, from its own files (no weights loaded).
- ``preflight_function``: the full preflight for the chosen model and settings, measured on this Mac, as a job's
  function (``slowtune.progress``).

A ``Fit``'s kind is one of ``FIT_LABELS``' keys; its reason is written for the app (its settings, not CLI options:
``gui_text``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from slowtune import system
from slowtune.models import catalog
from slowtune.models.catalog import CatalogModel, ModelError, describe_local
from slowtune.models.check import format_parameters, parameter_count
from slowtune.progress import Progress
from slowtune.train.command import export_problem
from slowtune.train.settings import TrainSettings

__all__ = ["FIT_LABELS", "GB", "Fit", "ModelRow", "PreflightResult", "catalog_fit", "downloaded_folder", "estimate_text", "folder_fit",
           "folder_row", "gb", "gui_text", "model_rows", "preflight_function"]

GB = 1e9
FIT_LABELS = {"memory": "fits in memory", "streamed": "streamed (slower)", "too_large": "too large for this Mac",
              "unsupported": "not supported", "unknown": "cannot tell"}


@dataclass(frozen=True)
class Fit:
    kind: str  # "memory", "streamed", "too_large", "unsupported" (a family slowtune does not train), "unknown"
    reason: str

    @property
    def label(self) -> str:
        return FIT_LABELS[self.kind]


def gb(value: float) -> str:
    return f"{value / GB:.1f} GB" if value >= 0.95 * GB else f"{value / 1e6:,.0f} MB"


def gui_text(reason: str) -> str:
    """The preflight's reasons name CLI options; in the app they are settings of the wizard."""
    return (reason.replace("a shorter --max-seq-len", "a shorter sequence length (Settings › Advanced)")
            .replace("a smaller --batch-size", "a smaller batch size").replace("--max-seq-len", "sequence length")
            .replace("--batch-size", "batch size"))


def _availability(memory: system.Memory) -> str:
    return f"{gb(memory.available_bytes)} of this Mac's {gb(memory.total_bytes)} is available now"


def catalog_fit(model: CatalogModel, memory: system.Memory) -> Fit:
    """A quick estimate from the catalog's figures, for a model that is not downloaded yet.

    The catalog's rule and estimates (slowtune.models.catalog: ``needs_streaming``, ``training_bytes``), as
    ``slowtune models list`` shows them, judged against the memory available now: "fits in memory" only on a Mac
    with at least twice the model's size in memory and the in-memory estimate free now; otherwise streamed when the
    streamed estimate is free, else too large. Once a model is downloaded, ``folder_fit`` asks the preflight itself,
    on the model's files.
    """
    from slowtune.train.preflight import MARGIN

    in_memory, streamed = catalog.training_bytes(model)
    budget = MARGIN * memory.available_bytes
    have = _availability(memory)
    note = " (An estimate; the check before training uses the model's own files.)"
    rule = catalog.needs_streaming(model, memory.total_bytes)
    if in_memory <= budget and not rule:
        return Fit("memory", f"Needs about {gb(in_memory)} to train in memory; {have}.{note}")
    why = (f"At {gb(model.size_bytes)} it is more than half of this Mac's memory" if rule else
           f"Needs about {gb(in_memory)} in memory, more than is free")
    if streamed <= budget:
        return Fit("streamed", f"{why}, so it is trained layer by layer from disk, which is slower: about "
                               f"{gb(streamed)} with batch size 1 (Settings › Advanced); {have}.{note}")
    return Fit("too_large", f"Even streamed from disk it needs about {gb(streamed)}, more than the {gb(budget)} "
                            f"training may use ({MARGIN:.0%} of what is free; {have}). A 4-bit version or a "
                            f"smaller model may fit.{note}")


def folder_fit(folder: Path, memory: system.Memory, settings: TrainSettings | None = None) -> Fit:
    """The preflight's verdict on a local model folder: its own files' shapes, no weights loaded, nothing measured.

    When the settings do not fit, batch size 1 is tried too: the badge says whether the model can be trained here
    at all; the wizard's check then judges the settings chosen.
    """
    from slowtune.train.preflight import architecture_problem, preflight

    try:
        if problem := architecture_problem(folder):
            return Fit("unsupported", problem)
    except ModelError as exc:
        return Fit("unknown", f"The model's files could not be read: {exc}")
    settings = settings or TrainSettings.from_preset("balanced")
    have = _availability(memory)
    tried = [settings] if settings.batch_size == 1 else [settings, replace(settings, batch_size=1)]
    report = None
    for attempt in tried:
        try:
            report = preflight(folder, attempt.config(folder, folder), available_bytes=memory.available_bytes,
                               disk_gbps=1.0, compute_gflops=1.0)
        except (ModelError, OSError, ValueError, KeyError, TypeError) as exc:
            return Fit("unknown", f"The model's files could not be read: {exc}")
        if report.choice is not None:
            break
    assert report is not None
    if report.choice is None:
        return Fit("too_large", gui_text(report.reason))
    estimate = report.estimates["memory+ckpt" if report.grad_checkpoint else report.choice]
    smaller = f" with batch size {attempt.batch_size} (Settings › Advanced)" if attempt is not settings else ""
    if report.choice == "memory":
        return Fit("memory", f"Needs about {gb(estimate.peak_bytes)} to train in memory{smaller}; {have}.")
    return Fit("streamed", f"Too large to train in memory, so it is trained layer by layer from disk, which is "
                           f"slower: about {gb(estimate.peak_bytes)}{smaller}; {have}.")


def downloaded_folder(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of ``repo_id`` if a download completed (file checks only, no hub call)."""
    from huggingface_hub import constants

    root = Path(constants.HF_HUB_CACHE).expanduser() / ("models--" + repo_id.replace("/", "--"))
    try:
        commit = (root / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = root / "snapshots" / commit
    if commit and (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


ENGINE_WORDS = {"memory": "In memory", "memory+ckpt": "In memory, recomputing each block",
                "streamed": "Layer-streamed from disk"}


def estimate_text(report: Any) -> str:
    """The preflight's estimates for each way of training, in words for the app (no options, no caveats meant for
    developers): one line per engine, then the choice."""
    lines = []
    for key, estimate in report.estimates.items():
        fits = "fits" if estimate.fits else "does not fit"
        lines.append(f"{ENGINE_WORDS.get(key, key)}: about {gb(estimate.peak_bytes)} at most ({fits}), up to "
                     f"{estimate.step_seconds:.1f} s a step.")
    if report.reason:
        lines.append(gui_text(report.reason[:1].upper() + report.reason[1:]).rstrip(".") + ".")
    return "\n".join(lines)


@dataclass
class PreflightResult:
    report: Any  # slowtune.train.preflight.PreflightReport
    memory: system.Memory
    steps: int


def preflight_function(model_dir: Path, project_root: Path, settings: TrainSettings,
                       conversations: int) -> Callable[[Progress], PreflightResult]:
    """The check before a run on the project's data: the preflight, measured on this Mac (a job's function)."""

    def run(progress: Progress) -> PreflightResult:
        from slowtune.train.preflight import preflight

        progress.report("preflight", 0, None, status="measuring this Mac", force=True)
        memory = system.memory()
        cfg = settings.config(model_dir, project_root)
        report = preflight(model_dir, cfg, available_bytes=memory.available_bytes,
                           output_dir=project_root / "runs")
        progress.check()
        return PreflightResult(report, memory, settings.total_steps(conversations))

    return run


# --- the models offered ----------------------------------------------------------------------------------------

@dataclass
class ModelRow:
    """A model the app offers to train: where it is, its figures, and whether it fits and can be exported."""

    key: str  # repo id, or the folder's path
    name: str
    params: str
    size: str
    where: str  # "Downloaded", "Folder", "Imported", "Ollama" or ""
    path: Path | None  # where the model is on this Mac
    fit: Fit
    licence: str = ""
    entry: CatalogModel | None = None
    notes: list[str] = field(default_factory=list)
    export_problem: str | None = None  # why the trained model could not be exported to GGUF
    ollama: Any = None  # an Ollama model (slowtune.models.gguf_import.OllamaModel) not imported yet


def folder_row(path: Path, memory: system.Memory) -> ModelRow:
    """A model folder on this Mac, judged from its files."""
    notes = []
    try:
        info = describe_local(path)
    except ModelError as exc:
        return ModelRow(str(path), path.name, "—", "—", "Folder", None, Fit("unknown", str(exc)),
                        notes=[str(exc)])
    quant = f", {info.quantization.bits}-bit" if info.quantization and info.quantization.bits else ""
    try:
        params = f"{format_parameters(parameter_count(info.path))}{quant}"
    except ModelError:
        params = "—"
    if info.problem:  # another family, or a vision-language checkpoint: nothing else about it matters
        return ModelRow(str(path), path.name, params, gb(info.weight_bytes), "Folder", info.path,
                        Fit("unsupported", info.problem))
    if not info.has_chat_template:
        notes.append("This model has no chat template; training needs one (an instruct or chat model).")
    return ModelRow(str(path), path.name, params, gb(info.weight_bytes), "Folder", info.path,
                    folder_fit(info.path, memory), notes=notes, export_problem=export_problem(info.path))


def model_rows(folders: Sequence[Path], memory: system.Memory, offered: Sequence[CatalogModel]) -> list[ModelRow]:
    """The models to choose from, with what is on this Mac and whether each fits its memory now: the ``folders``
    the user chose, the imported GGUF models, the Ollama models not imported yet, then the catalog's ``offered``
    models (those downloaded first)."""
    from slowtune.models.gguf_import import imported_models, ollama_models

    chosen, downloaded, others = [], [], []
    for path in folders:
        chosen.append(folder_row(path, memory))
    shown = set(folders)
    imported_sources = set()
    for model in imported_models():
        imported_sources.add(model.source)
        if model.folder not in shown:
            row = folder_row(model.folder, memory)
            row.where = "Imported"
            came_from = f"Ollama ({model.origin['ollama']})" if model.origin.get("ollama") else model.source
            row.notes.insert(0, f"Imported from {came_from}.")
            chosen.append(row)
    for model in ollama_models():
        if str(model.gguf.resolve()) not in imported_sources:
            chosen.append(ModelRow(f"ollama:{model.name}", model.name, "—", gb(model.size), "Ollama", None,
                                   Fit("unknown", "Import it first: slowtune reads its GGUF and checks it."),
                                   ollama=model))
    for entry in catalog.offered(offered):
        folder = downloaded_folder(entry.repo_id)
        row = ModelRow(entry.repo_id, entry.name, f"{entry.params_b:g} B", f"{entry.download_gb:g} GB",
                       "Downloaded" if folder else "", folder,
                       folder_fit(folder, memory) if folder else catalog_fit(entry, memory), entry.licence, entry,
                       [entry.note] if entry.note else [], export_problem(folder) if folder else None)
        (downloaded if folder else others).append(row)
    return [*chosen, *downloaded, *others]
