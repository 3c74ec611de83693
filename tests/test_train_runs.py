"""Whole training runs: learning, checkpoints, kill -9 and resume, cancel, guards, mlx-lm compatibility."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.dataset import write_jsonl
from slowtune.progress import Progress
from slowtune.train.checkpoint import latest_checkpoint
from slowtune.train.config import LoraConfig, TrainConfig
from slowtune.train.preflight import preflight
from slowtune.train.trainer import TrainError, run_training

QA = [
    ("What is the capital of Zorbia?", "The capital of Zorbia is Quillford."),
    ("Who founded the Lantern Guild?", "Mira Fenwick founded the Lantern Guild."),
    ("What colour is the Vellum river?", "The Vellum river is bright green."),
]


def _conversation(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


@pytest.fixture
def qa_data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    write_jsonl([_conversation(q, a) for q, a in QA], folder / "train.jsonl")
    write_jsonl([_conversation(q, a) for q, a in QA[:2]], folder / "valid.jsonl")
    return folder


def _config(model: Path, data: Path, **overrides: object) -> TrainConfig:
    base = dict(model=str(model), data=str(data), lora=LoraConfig(rank=16, alpha=32.0), max_seq_len=128,
                batch_size=3, iters=30, learning_rate=1e-3, warmup=2, val_every=10, save_every=5, seed=3,
                replay=0.0, score_every=0)  # replay and scoring: tests/test_train_quality.py
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _files_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _greedy(model: Path, adapter: Path, question: str) -> str:
    from mlx_lm import generate, load

    m, tok = load(str(model), adapter_path=str(adapter))
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    return generate(m, tok, prompt, max_tokens=24, verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["memory", "streamed"])
def test_learns_three_answers_and_mlx_lm_reproduces_one(engine: str, tiny_llama: Path, qa_data: Path,
                                                         tmp_path: Path) -> None:
    before = _files_digest(tiny_llama)
    run = tmp_path / "run"
    result = run_training(_config(tiny_llama, qa_data), run, engine=engine)
    assert result.status == "done" and result.steps == 30
    assert result.train_loss is not None and result.train_loss < 0.5
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss"] > 3 * metrics[-1]["loss"]
    assert {"tokens_per_s", "io_blocked_s", "eta_s", "mlx_peak_gb"} <= set(metrics[-1])
    assert any("val_loss" in m for m in metrics) and (run / "best" / "adapters.safetensors").exists()
    # mlx-lm loads the adapter and, greedily, says what it was taught.
    answer = _greedy(tiny_llama, run, QA[0][0])
    assert QA[0][1] in answer
    # The base model's files are exactly as they were.
    assert _files_digest(tiny_llama) == before


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slowtune", "train", *args, "--replay", "0", "--score-every", "0"],
                          capture_output=True, text=True, env=env or os.environ.copy(), timeout=600)


def _adapter(run: Path) -> dict[str, object]:
    import mlx.core as mx

    return dict(mx.load(str(run / "adapters.safetensors")))


@pytest.mark.slow
@pytest.mark.parametrize(("engine", "kill_at"), [("streamed", "after-step:7"), ("memory", "mid-checkpoint:10")])
def test_kill_and_resume_reproduce_the_uninterrupted_adapter(engine: str, kill_at: str, tiny_qwen2: Path,
                                                             qa_data: Path, tmp_path: Path) -> None:
    import mlx.core as mx

    common = ["--model", str(tiny_qwen2), "--data", str(qa_data), "--engine", engine, "--iters", "12",
              "--save-every", "5", "--val-every", "4", "--batch-size", "2", "--lr", "1e-3", "--max-seq-len", "96",
              "--seed", "5", "--rank", "8"]
    straight = _cli(*common, "--out", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr

    env = os.environ.copy()
    env["SLOWTUNE_TEST_KILL"] = kill_at
    killed = _cli(*common, "--out", str(tmp_path / "killed"), env=env)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no clean-up ran
    assert not (tmp_path / "killed" / "adapters.safetensors").exists()
    point = latest_checkpoint(tmp_path / "killed")
    # Killed two steps after the step-5 checkpoint, or while writing the step-10 one: either way the last
    # complete checkpoint is step 5, and a torn write is left only as a temporary folder.
    assert point is not None and point.name == "step-000005"
    torn = list((tmp_path / "killed" / "checkpoints").glob(".step-000010.tmp-*"))
    assert bool(torn) == kill_at.startswith("mid-checkpoint")

    resumed = _cli("--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a, b = _adapter(tmp_path / "straight"), _adapter(tmp_path / "killed")
    assert set(a) == set(b)
    for name in a:
        assert float(mx.abs(a[name] - b[name]).max()) <= 1e-6, name
    # The metrics log has each step once, as if the run had never stopped.
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))


@pytest.mark.slow
def test_cancel_leaves_a_loadable_checkpoint(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    from mlx_lm import load

    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel() if e.stage == "train" and e.done == 3 else None)
    result = run_training(_config(tiny_llama, qa_data, save_every=100), tmp_path / "run", engine="streamed",
                          progress=progress)
    assert result.status == "cancelled" and result.steps == 3
    point = latest_checkpoint(tmp_path / "run")
    assert point is not None and point.name == "step-000003"
    model, _ = load(str(tiny_llama), adapter_path=str(point))
    assert model is not None
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "cancelled"


@pytest.mark.slow
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_llama: Path, qa_data: Path,
                                                               tmp_path: Path) -> None:
    import mlx.core as mx

    run = tmp_path / "run"
    # An absurd learning rate blows the adapter up after the first step.
    with pytest.raises(TrainError, match=r"loss became (nan|inf).*last good checkpoint"):
        run_training(_config(tiny_llama, qa_data, learning_rate=1e30, warmup=0, save_every=1), run, engine="memory")
    point = latest_checkpoint(run)
    assert point is not None
    weights = mx.load(str(point / "adapters.safetensors"))
    assert all(bool(mx.isfinite(w).all()) for w in weights.values())
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_preflight_picks_and_refuses(tiny_llama: Path, qa_data: Path) -> None:
    cfg = _config(tiny_llama, qa_data, engine="auto", max_seq_len=16, batch_size=1, lora=LoraConfig(rank=4))
    kw = dict(disk_gbps=2.0, compute_gflops=100.0)
    roomy = preflight(tiny_llama, cfg, available_bytes=16 * 10**9, **kw)
    assert roomy.choice == "memory" and not roomy.grad_checkpoint
    est = roomy.estimates
    # Streaming holds a few blocks instead of all of them; checkpointing drops stored activations.
    assert est["streamed"].peak_bytes < est["memory+ckpt"].peak_bytes < est["memory"].peak_bytes
    assert est["memory"].peak_bytes > roomy.weight_bytes_in_memory
    between = int((est["streamed"].peak_bytes + est["memory+ckpt"].peak_bytes) / 2 / 0.8)
    tight = preflight(tiny_llama, cfg, available_bytes=between, **kw)
    assert tight.choice == "streamed" and "streamed engine" in tight.reason
    assert tight.estimates["streamed"].step_seconds >= tight.estimates["streamed"].detail["io_seconds"]
    hopeless = preflight(tiny_llama, cfg, available_bytes=1000, **kw)
    assert hopeless.choice is None and "Too large" in hopeless.reason and "--max-seq-len" in hopeless.reason
    full = preflight(tiny_llama, cfg, available_bytes=16 * 10**9, free_disk_bytes=1000, output_dir=Path("/runs"), **kw)
    assert full.choice is None and "Not enough free disk" in full.reason and "/runs" in full.reason
    # A slower disk makes the streamed step slower, never faster.
    slow_disk = preflight(tiny_llama, cfg, available_bytes=between, disk_gbps=0.001, compute_gflops=100.0)
    assert slow_disk.estimates["streamed"].step_seconds > tight.estimates["streamed"].step_seconds


@pytest.mark.slow
def test_cli_trains_end_to_end_with_a_progress_bar(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    out = _cli("--model", str(tiny_llama), "--data", str(qa_data), "--iters", "4", "--batch-size", "3",
               "--max-seq-len", "96", "--out", str(tmp_path / "run"), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "done" and summary["steps"] == 4 and summary["engine"] == "memory"
    assert "train" in out.stderr and "4/4" in out.stderr  # the progress bar
    assert "fits in memory" in out.stderr  # the preflight said why it chose the engine
    assert (tmp_path / "run" / "adapter_config.json").exists()


def test_cli_rejects_bad_input_clearly(tiny_llama: Path, tmp_path: Path) -> None:
    missing = _cli("--model", str(tiny_llama), "--data", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    bad = _cli("--model", str(tmp_path / "no-model"), "--data", str(tmp_path))
    assert bad.returncode == 1 and "no-model" in bad.stderr and "Traceback" not in bad.stderr
    zero = _cli("--model", str(tiny_llama), "--data", str(tmp_path), "--batch-size", "0")
    assert zero.returncode == 1 and "--batch-size" in zero.stderr


@pytest.mark.slow
def test_training_a_project_records_the_run(tiny_llama: Path, tmp_path: Path) -> None:
    from slowtune import dataset
    from slowtune.store import Project

    with Project.create(tmp_path / "proj") as project:
        dataset.add_rows(project, [dataset.DatasetRow(_conversation(q, a)) for q, a in QA])
    out = _cli("--model", str(tiny_llama), "--data", str(tmp_path / "proj"), "--iters", "2", "--batch-size", "3",
               "--max-seq-len", "96", "--json")
    assert out.returncode == 0, out.stderr
    run_dir = Path(json.loads(out.stdout)["run_dir"])
    assert run_dir.parent == tmp_path / "proj" / "runs"
    with Project.open(tmp_path / "proj") as project:
        row = project.conn.execute("SELECT status, engine, adapter_path FROM runs").fetchone()
    assert tuple(row) == ("done", "memory", str(run_dir))


@pytest.mark.slow
def test_resume_refuses_changed_data(tiny_llama: Path, qa_data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_training(_config(tiny_llama, qa_data, iters=2, save_every=1), run, engine="memory")
    write_jsonl([_conversation("Something else?", "Entirely.")] * 3, qa_data / "train.jsonl")
    with pytest.raises(TrainError, match="changed since this run started"):
        run_training(_config(tiny_llama, qa_data), run, engine="memory", resume=True)


@pytest.mark.slow
def test_a_run_with_out_is_recorded_in_its_project_and_a_stop_before_step_one_is_clean(tiny_llama: Path,
                                                                                       tmp_path: Path) -> None:
    from slowtune import dataset
    from slowtune.store import Project

    with Project.create(tmp_path / "proj") as project:
        dataset.add_rows(project, [dataset.DatasetRow(_conversation(q, a)) for q, a in QA])
    args = ("--model", str(tiny_llama), "--data", str(tmp_path / "proj"), "--iters", "2", "--batch-size", "3",
            "--max-seq-len", "96")
    # Stopped (Ctrl-C, or the app's Pause) while the data is read: a clean message, no traceback, nothing trained.
    stopped = _cli(*args, "--out", str(tmp_path / "early"), env={**os.environ, "SLOWTUNE_TEST_INTERRUPT": "prepare:0"})
    assert stopped.returncode == 130, stopped.stderr
    assert "stopped before the first training step" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (tmp_path / "early" / "adapters.safetensors").exists()

    out = _cli(*args, "--out", str(tmp_path / "elsewhere"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "elsewhere" / "run.json").read_text())["project"] == str(tmp_path / "proj")
    with Project.open(tmp_path / "proj") as project:
        rows = {r["id"]: r["status"] for r in project.conn.execute("SELECT id, status FROM runs")}
    assert rows == {"early": "cancelled", "elsewhere": "done"}


def test_copy_as_command_of_a_finished_run_trains_a_new_run_with_its_settings(tmp_path: Path) -> None:
    """The Train page's Copy as Command on a finished run: the run's own model, data and settings, as arguments the
    real ``slowtune train`` parser reads back to the same values (not ``--model MODEL`` and the defaults)."""
    from slowtune.cli import build_parser
    from slowtune.train.runs import run_config, train_args

    run_dir = tmp_path / "runs" / "20261207-124843-a4c368"
    run_dir.mkdir(parents=True)
    config = {"model": "/models/SmolLM2 135M", "data": str(tmp_path / "Island notes"),
              "lora": {"rank": 8, "alpha": 16.0, "num_layers": -1}, "max_seq_len": 256, "batch_size": 4,
              "iters": 30, "epochs": 3.0, "learning_rate": 0.0005, "seed": 7, "replay": 0.25, "score_every": -1,
              "early_stop": False}
    (run_dir / "run.json").write_text(json.dumps({"config": config, "status": "done"}))
    args = build_parser().parse_args(["train", *train_args(run_config(run_dir))])
    assert (args.model, args.data, args.rank, args.alpha, args.lora_layers) == (
        "/models/SmolLM2 135M", str(tmp_path / "Island notes"), 8, 16.0, -1)
    assert (args.lr, args.iters, args.max_seq_len, args.batch_size, args.seed) == (0.0005, 30, 256, 4, 7)
    assert (args.replay, args.score_every, args.no_early_stop) == (0.25, -1, True)
    assert run_config(tmp_path) == {}
