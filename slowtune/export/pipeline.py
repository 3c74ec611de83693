"""``slowtune export``: adapter -> fused model -> GGUF (F16) -> quantised GGUFs, verified, with a Modelfile.

The export folder gets ``<name>-F16.gguf`` and one file per quantisation, ``base-F16.gguf`` (the unmodified
base, for side-by-side chat and evaluation), a ``Modelfile`` for Ollama, a README and ``export.json`` with
the verification results; ``slowtune.export.folder`` names the files and reads the folder back. Work files live
in a hidden folder that is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slowtune.fsutil import atomic_write_text
from slowtune.progress import Cancelled, Progress, ensure
from slowtune.train.runs import RUN_JSON, chosen_checkpoint


class ExportFailed(RuntimeError):
    pass


def make_destination(out_dir: Path) -> None:
    """Create the export folder, or say in words why it cannot be: a part of its path is a file, or the folder cannot
    be written (the message names the path and what to do)."""
    for part in [out_dir, *out_dir.parents]:
        if part.exists():
            if not part.is_dir():
                raise ExportFailed(f"The export cannot go to {out_dir}: {part} is a file, not a folder. Choose a "
                                   "folder for the files.")
            break
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise ExportFailed(f"The export cannot go to {out_dir}: this account may not write there. Choose a folder "
                           "you can write to, such as one in your home folder.") from None
    except OSError as e:  # a system folder that takes no new folders (/proc), a full or read-only disk, ...
        why = (e.strerror or "it could not be created").rstrip(".").lower()
        raise ExportFailed(f"The export cannot go to {out_dir}: a folder could not be made there ({why}). Choose "
                           "another folder, such as one in your home folder.") from None


@dataclass
class ExportResult:
    out_dir: Path
    files: dict[str, Path]
    verifications: list[Any]
    adapter_effect: float | None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)  # fuse, write, quantise, verify


class _Steps:
    """Seconds spent in each named step of an export."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._name: str | None = None
        self._since = time.perf_counter()

    def start(self, name: str | None) -> None:
        now = time.perf_counter()
        if self._name is not None:
            self.seconds[self._name] = round(self.seconds.get(self._name, 0.0) + now - self._since, 2)
        self._name, self._since = name, now


def find_adapter(path: Path) -> Path:
    """A run folder or an adapter folder -> the folder holding adapters.safetensors.

    A run folder gives the checkpoint the run chose (:func:`~slowtune.train.runs.chosen_checkpoint`: its best one
    when it kept one, else its last)."""
    if (path / RUN_JSON).exists():
        chosen = path / chosen_checkpoint(path)["folder"]
        if (chosen / "adapters.safetensors").exists() and (chosen / "adapter_config.json").exists():
            return chosen
    for candidate in (path, path / "adapter"):
        if (candidate / "adapters.safetensors").exists() and (candidate / "adapter_config.json").exists():
            return candidate
    raise ExportFailed(f"{path} holds no adapter (adapters.safetensors + adapter_config.json): give a training "
                       "run folder or an adapter folder.")


def _adapter_and_base(adapter_or_run: Path, model: Path | None) -> tuple[Path, Path]:
    """The adapter folder, and its base model: ``model`` when given, else the one it was trained on."""
    adapter = find_adapter(adapter_or_run)
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    base = Path(model) if model else Path(adapter_config.get("base_model", ""))
    if not (base / "config.json").exists():
        raise ExportFailed(f"The base model of {adapter} was expected at {base or '(not recorded)'}, and it is not "
                           "there (moved or deleted?). Pass its folder with --model.")
    return adapter, base


def verification_prompts(base: Path, adapter: Path, limit: int = 4) -> list[list[int]]:
    """Token ids of prompts to compare on: the run's held-out probes, else its validation or training
    conversations, rendered exactly as in training up to the assistant's turn."""
    from mlx_lm.utils import load_tokenizer

    from slowtune.train.data import ChatRenderer, load_conversations

    tokenizer = load_tokenizer(base)
    renderer = ChatRenderer(tokenizer)
    conversations: list[list[dict[str, str]]] = []
    run_json = adapter / "run.json"
    if run_json.exists():
        data = json.loads(run_json.read_text())["config"]["data"]
        try:
            splits = load_conversations(Path(data))
            conversations = splits.get("test") or splits.get("valid") or splits.get("train") or []
        except (OSError, ValueError):
            conversations = []
    prompts = []
    for messages in conversations[:limit]:
        upto = messages[: max(i for i, m in enumerate(messages) if m["role"] == "assistant")]
        text = renderer.render_prompt(upto)
        prompts.append(list(tokenizer.encode(text, add_special_tokens=False)))
    if not prompts:
        for text in ("The quick brown fox", "What does the document say about"):
            prompts.append(list(tokenizer.encode(text)))
    return prompts


UNVERIFIED_SUFFIX = ".unverified"


@contextlib.contextmanager
def _unverified_on_cancel(files: dict[str, Path]) -> Iterator[None]:
    """A cancel during the check leaves no unchecked file under a final name: each file this export wrote is renamed
    to ``NAME.gguf.unverified`` (complete, but not checked), and the Cancelled exception says which."""
    try:
        yield
    except (Cancelled, KeyboardInterrupt):  # the app's Cancel, or Ctrl-C in a terminal
        moved = []
        for path in files.values():
            if path.exists():
                os.replace(path, path.with_name(path.name + UNVERIFIED_SUFFIX))
                moved.append(path.name)
        raise Cancelled(f"Stopped while checking the files. Complete but not checked: {', '.join(moved)} (kept as "
                        f"NAME{UNVERIFIED_SUFFIX}; export again to check them).") from None


def export_run(adapter_or_run: Path, out_dir: Path, *, model: Path | None = None, quants: list[str] | None = None,
               name: str = "model", with_base: bool = True, ollama: bool = True,
               progress: Progress | None = None) -> ExportResult:
    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.names import BASE_KIND, export_file_name
    from slowtune.export.quantize import parse_quant_types, quantize_many
    from slowtune.export.verify import (
        VerificationError,
        adapter_changed_model,
        compare,
        llama_reference,
        teacher_forced_references,
    )

    started = time.perf_counter()
    steps = _Steps()
    progress = ensure(progress)
    quants = parse_quant_types(",".join(quants or ["Q4_K_M"]))
    adapter, base = _adapter_and_base(Path(adapter_or_run), model)

    make_destination(out_dir)
    work = out_dir / f".work-{int(time.time())}"
    files: dict[str, Path] = {}
    try:
        progress.report("export", 0, 5, status="fusing the adapter")
        steps.start("fuse")
        fused = fuse(base, adapter, work / "fused", progress=progress)
        progress.report("export", 1, 5, status="writing GGUF")
        steps.start("write")
        files["F16"] = write_gguf(fused, out_dir / export_file_name(name, "F16"), out_type="f16", name=name,
                                  progress=progress)
        if with_base:
            base_plain = fuse(base, None, work / "base", progress=progress)
            files[BASE_KIND] = write_gguf(base_plain, out_dir / export_file_name(name, BASE_KIND), out_type="f16",
                                          name=f"{name}-base", progress=progress)
            shutil.rmtree(base_plain, ignore_errors=True)
        progress.report("export", 2, 5, status="quantising")
        steps.start("quantise")
        others = [q for q in quants if q != "F16"]
        files.update(quantize_many(files["F16"], out_dir, name, others, progress=progress))

        progress.report("export", 3, 5, status="verifying")
        steps.start("verify")
        prompts = verification_prompts(base, adapter)
        # llama.cpp on each file in turn (memory-mapped, closed before the next), then the trained model block by
        # block (as the streamed trainer runs forward): the export never holds the whole model in memory.
        checked = [(q, path) for q, path in files.items() if not q.startswith("base")]
        with _unverified_on_cancel(files):
            runs = []
            for _quant, path in checked:
                progress.check()
                progress.report("verify", len(runs), len(checked), status=path.name)
                runs.append(llama_reference(path, prompts))
            # The base model's logits come from the same pass, with the adapter switched off block by block.
            references, plain = teacher_forced_references(base, adapter, prompts, runs, progress=progress,
                                                          base_too=True)
        effect = adapter_changed_model(plain, references[0][0])
        results = [compare(ref, run, file=path.name, quant=q)
                   for (q, path), ref, run in zip(checked, references, runs, strict=True)]
        notes = [n for r in results for n in r.notes]
        run_dir = Path(adapter_or_run)
        checkpoint = chosen_checkpoint(run_dir) if (run_dir / RUN_JSON).exists() else None
        if checkpoint is not None:
            notes.insert(0, f"Exported {checkpoint['text']}.")
        if effect < 1e-4:
            notes.append("The adapter does not change the model's output (largest logit change "
                         f"{effect:.1e}): was it trained?")

        steps.start(None)
        modelfile_notes: list[str] = []
        if ollama:
            from slowtune.export.modelfile import export_readme, render_modelfile

            chat_template = _chat_template(fused)
            target = files.get("Q4_K_M", files["F16"]).name
            text, modelfile_notes = render_modelfile(target, chat_template or "")
            atomic_write_text(out_dir / "Modelfile", text)
            from slowtune.export.modelfile import detect_family

            atomic_write_text(out_dir / "README.md", export_readme(
                [p.name for p in files.values()] + ["Modelfile"],
                family=detect_family(chat_template or ""), system=None))
        report = {"adapter": str(adapter), "base": str(base),
                  "checkpoint": checkpoint, "files": {k: str(v) for k, v in files.items()},
                  "sizes": {k: v.stat().st_size for k, v in files.items()}, "adapter_effect": effect,
                  "verification": [r.to_dict() for r in results], "notes": notes + modelfile_notes,
                  "step_seconds": steps.seconds}
        atomic_write_text(out_dir / "export.json", json.dumps(report, indent=2))
        progress.report("export", 5, 5, status="done")
        failed = [r for r in results if r.required and not r.passed]
        if failed:
            raise VerificationError(
                "The export does not behave like the trained model: " + "; ".join(n for r in failed for n in r.notes)
                + f". Details in {out_dir / 'export.json'}.")
        return ExportResult(out_dir, files, results, effect, notes + modelfile_notes, time.perf_counter() - started,
                            steps.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def export_lora_only(adapter_or_run: Path, out_dir: Path, *, model: Path | None = None, name: str = "model",
                     ollama: bool = True, progress: Progress | None = None) -> ExportResult:
    """``slowtune export --lora-only``: ``base-F16.gguf`` plus ``<name>-lora.gguf`` (llama.cpp's LoRA GGUF),
    verified together (llama.cpp applying the adapter to the base GGUF) against MLX base + adapter, with the
    margin rule an F16 export must pass; a Modelfile with an ``ADAPTER`` line and a README."""
    import dataclasses

    from slowtune.export.fuse import fuse
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.lora_gguf import lora_readme_section, write_lora_gguf
    from slowtune.export.names import BASE_KIND, LORA_KIND, export_file_name
    from slowtune.export.verify import (
        VerificationError,
        adapter_changed_model,
        compare,
        llama_reference,
        teacher_forced_references,
    )

    started = time.perf_counter()
    progress = ensure(progress)
    adapter, base = _adapter_and_base(Path(adapter_or_run), model)
    run_dir = Path(adapter_or_run)
    checkpoint = chosen_checkpoint(run_dir) if (run_dir / RUN_JSON).exists() else None

    make_destination(out_dir)
    work = out_dir / f".work-{int(time.time())}"
    files: dict[str, Path] = {}
    try:
        progress.report("export", 0, 3, status="writing the LoRA GGUF")
        # First: it checks the adapter against the base, before the (long) base export.
        lora = write_lora_gguf(adapter, base, out_dir / export_file_name(name, LORA_KIND), progress=progress)
        progress.report("export", 1, 3, status="writing the base GGUF")
        base_plain = fuse(base, None, work / "base", progress=progress)
        files[BASE_KIND] = write_gguf(base_plain, out_dir / export_file_name(name, BASE_KIND), out_type="f16",
                                      name=f"{name}-base", progress=progress)
        files[LORA_KIND] = lora
        shutil.rmtree(base_plain, ignore_errors=True)

        progress.report("export", 2, 3, status="verifying")
        prompts = verification_prompts(base, adapter)
        with _unverified_on_cancel(files):
            run = llama_reference(files[BASE_KIND], prompts, lora=lora)
            (reference,), plain = teacher_forced_references(base, adapter, prompts, [run], progress=progress,
                                                            base_too=True)
        effect = adapter_changed_model(plain, reference[0])
        # Judged like an F16 export (required, same rules), labelled as what it is.
        checked = compare(reference, run, file=lora.name, quant="F16")
        label = f"LoRA on {files[BASE_KIND].name}"
        result = dataclasses.replace(checked, quant="LoRA",
                                     notes=[n.replace("F16:", f"{label}:", 1) for n in checked.notes])
        notes = list(result.notes)
        if effect < 1e-4:
            notes.append("The adapter does not change the model's output (largest logit change "
                         f"{effect:.1e}): was it trained?")
        notes.append(f"Use: llama-cli -m {files[BASE_KIND].name} --lora {lora.name}; Ollama: the Modelfile's "
                     f"ADAPTER ./{lora.name} line.")

        modelfile_notes: list[str] = []
        if ollama:
            from slowtune.export.modelfile import render_modelfile

            text, modelfile_notes = render_modelfile(files[BASE_KIND].name, _chat_template(base) or "")
            lines = text.splitlines()
            at = next(i for i, line in enumerate(lines) if line.startswith("FROM ")) + 1
            lines.insert(at, f"ADAPTER ./{lora.name}")
            atomic_write_text(out_dir / "Modelfile", "\n".join(lines) + "\n")
            atomic_write_text(out_dir / "README.md", lora_readme_section(files[BASE_KIND].name, lora.name, name))
        report = {"adapter": str(adapter), "base": str(base),
                  "checkpoint": checkpoint, "lora_only": True,
                  "files": {k: str(v) for k, v in files.items()},
                  "sizes": {k: v.stat().st_size for k, v in files.items()}, "adapter_effect": effect,
                  "verification": [result.to_dict()], "notes": notes + modelfile_notes}
        atomic_write_text(out_dir / "export.json", json.dumps(report, indent=2))
        progress.report("export", 3, 3, status="done")
        if result.required and not result.passed:
            raise VerificationError(
                "The LoRA GGUF on the base GGUF does not behave like the trained model: " + "; ".join(result.notes)
                + f". Details in {out_dir / 'export.json'}.")
        return ExportResult(out_dir, files, [result], effect, notes + modelfile_notes, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _chat_template(model_dir: Path) -> str | None:
    template_file = model_dir / "chat_template.jinja"
    if template_file.exists():
        return template_file.read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.exists():
        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def record_export(project_root: Path, run_id: str | None, result: ExportResult) -> None:
    """One row per file in the project's exports table, for the GUI."""
    import uuid

    from slowtune.store import Project

    by_file = {v.file: v for v in result.verifications}
    with Project.open(project_root) as project, project.transaction() as conn:
        if run_id is not None and conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            run_id = None  # a run the project has no record of (trained outside the CLI): keep the export anyway
        for quant, path in result.files.items():
            v = by_file.get(path.name)
            conn.execute(
                "INSERT INTO exports(id, run_id, kind, quant, path, size_bytes, verified, report_json, created_at) "
                "VALUES (?, ?, 'gguf', ?, ?, ?, ?, ?, ?)",
                (uuid.uuid4().hex, run_id, quant, str(path), path.stat().st_size, int(bool(v and v.passed)),
                 json.dumps(v.to_dict() if v else {}), time.time()),
            )
