"""The whole export, from a trained run: fuse, GGUF, quantise, verify, Modelfile, project records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.dataset import write_jsonl
from slowtune.store import Project
from slowtune.train.config import LoraConfig, TrainConfig
from slowtune.train.trainer import run_training

QA = [("What is the capital of Zorbia?", "The capital of Zorbia is Quillford."),
      ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild.")]


@pytest.fixture(scope="module")
def trained_run(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("export-run")
    write_jsonl([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA],
                root / "data" / "train.jsonl")
    Project.create(root / "project").close()
    cfg = TrainConfig(model=str(tiny_llama), data=str(root / "data"), lora=LoraConfig(rank=8, alpha=16.0),
                      max_seq_len=96, batch_size=2, iters=25, learning_rate=1e-3, warmup=2, val_every=0, save_every=0,
                      replay=0.0, score_every=0)
    run_training(cfg, root / "run", engine="memory", project=root / "project")
    return root / "run", root / "project"


def _export(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "export", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=600)


@pytest.mark.slow
def test_cli_exports_verified_f16_and_q4_k_m(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    import gguf

    run, project = trained_run
    out = _export(str(run), "--quant", "Q4_K_M,Q8_0", "--out", str(tmp_path / "export"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    files = {k: Path(v) for k, v in summary["files"].items()}
    assert set(files) == {"F16", "base-F16", "Q4_K_M", "Q8_0"} and all(p.exists() for p in files.values())
    checks = {v["quant"]: v for v in summary["verification"]}
    assert checks["F16"]["passed"] and checks["F16"]["top1_agreement"] >= 0.99 and checks["F16"]["positions"] > 20
    assert checks["F16"]["greedy_matches"] == checks["F16"]["greedy_prompts"] == len(QA)
    assert 0 < checks["Q4_K_M"]["top1_agreement"] <= 1 and not checks["Q4_K_M"]["required"]
    assert summary["adapter_effect"] > 0.1  # the adapter really changed the model
    # K-quants were really used (hidden size 256 is a multiple of the 256-value K block).
    types = {t.tensor_type.name for t in gguf.GGUFReader(files["Q4_K_M"]).tensors}
    assert "Q4_K" in types
    export_dir = tmp_path / "export"
    assert "FROM ./model-Q4_K_M.gguf" in (export_dir / "Modelfile").read_text()
    assert "ollama create" in (export_dir / "README.md").read_text()
    assert not list(export_dir.glob(".work-*")) and not list(export_dir.glob(".*partial*"))
    # The project that trained the run knows about its exports.
    with Project.open(project) as p:
        rows = p.conn.execute("SELECT quant, verified FROM exports").fetchall()
    assert {r["quant"]: r["verified"] for r in rows} == {"F16": 1, "base-F16": 0, "Q4_K_M": 1, "Q8_0": 1}


@pytest.mark.slow
def test_an_export_that_lost_the_adapter_fails_loudly(trained_run: tuple[Path, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # A fuse that silently drops the adapter writes a perfectly loadable GGUF of the base model.
    from slowtune.export import fuse as fuse_module
    from slowtune.export.pipeline import export_run
    from slowtune.export.verify import VerificationError

    real = fuse_module.fuse
    monkeypatch.setattr(fuse_module, "fuse", lambda base, adapter, out, **kw: real(base, None, out, **kw))
    with pytest.raises(VerificationError, match="does not behave like the trained model"):
        export_run(trained_run[0], tmp_path / "export", quants=["F16"], with_base=False, ollama=False)


def test_bad_input_gets_clear_messages(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = trained_run
    unknown = _export(str(run), "--quant", "Q3_XYZ", "--out", str(tmp_path / "a"))
    assert unknown.returncode == 1 and "Q3_XYZ" in unknown.stderr and "Q4_K_M" in unknown.stderr
    nothing = _export(str(tmp_path), "--out", str(tmp_path / "b"))
    assert nothing.returncode == 1 and "holds no adapter" in nothing.stderr
    no_base = _export(str(run), "--model", str(tmp_path / "gone"), "--out", str(tmp_path / "c"))
    assert no_base.returncode == 1 and "gone" in no_base.stderr
    lora = _export(str(run), "--lora-only", "--no-base", "--out", str(tmp_path / "d"))
    assert lora.returncode == 1 and "--no-base" in lora.stderr
    for result in (unknown, nothing, no_base, lora):
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_an_interrupted_export_leaves_nothing_half_written(trained_run: tuple[Path, Path], tmp_path: Path) -> None:
    from slowtune.export.pipeline import export_run
    from slowtune.progress import Cancelled, Progress

    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel() if e.stage == "quantise" else None)
    out = tmp_path / "export"
    with pytest.raises(Cancelled):
        export_run(trained_run[0], out, quants=["Q4_K_M"], with_base=False, progress=progress)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["model-F16.gguf"]  # finished before the cancel, and whole: no work folder, no partials
    import gguf

    assert len(gguf.GGUFReader(out / "model-F16.gguf").tensors) > 0


def test_a_destination_that_cannot_be_a_folder_is_said_in_words(tmp_path: Path) -> None:
    from slowtune.export.pipeline import ExportFailed, make_destination

    notes = tmp_path / "ferry.md"
    notes.write_text("a file")
    with pytest.raises(ExportFailed, match=r"ferry\.md is a file, not a folder\. Choose a folder"):
        make_destination(notes / "export" / "deeper")
    assert notes.read_text() == "a file"  # nothing the user had is touched
    make_destination(tmp_path / "new" / "export")
    assert (tmp_path / "new" / "export").is_dir()
    # A system folder that takes no new folders: the OS's bare "No such file or directory: /proc/x" was the whole
    # message in the new-user walk.
    if Path("/proc/self").is_dir():
        with pytest.raises(ExportFailed, match=r"cannot go to /proc/x/export: a folder could not be made there "
                                               r"\(no such file or directory\)\. Choose another folder"):
            make_destination(Path("/proc/x/export"))
