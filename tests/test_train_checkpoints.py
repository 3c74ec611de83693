from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.train import checkpoint as ckpt


def _save(run: Path, step: int) -> Path:
    import mlx.core as mx

    params = {"model.layers.0.self_attn.q_proj.lora_a": mx.full((4, 2), float(step))}
    state = {"step": mx.array(step, dtype=mx.uint64), "model.layers.0.self_attn.q_proj.lora_a": {
        "m": mx.zeros((4, 2)), "v": mx.zeros((4, 2))}}
    return ckpt.save_checkpoint(run, ckpt.TrainState(step=step), params, state, {"fine_tune_type": "lora"}, {})


def test_saving_the_same_step_twice_keeps_a_checkpoint(tmp_path: Path) -> None:
    first = _save(tmp_path, 5)
    again = _save(tmp_path, 5)
    assert first == again and ckpt.latest_checkpoint(tmp_path) == first
    loaded = ckpt.load_checkpoint(first)
    assert loaded.state.step == 5 and int(loaded.optimizer_state["step"].item()) == 5


def test_a_dangling_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path: Path) -> None:
    _save(tmp_path, 5)
    _save(tmp_path, 10)
    (tmp_path / "checkpoints" / "latest").write_text("step-000015\n")  # a crash left it naming nothing
    (tmp_path / "checkpoints" / "step-000010" / "optimizer.safetensors").unlink()  # and step 10 torn
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000005"


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-000003", "step-000004"]


def _train(*args: str) -> subprocess.CompletedProcess[str]:
    # Replay and scoring are off: they are tested in tests/test_train_quality.py.
    return subprocess.run([sys.executable, "-m", "slowtune", "train", *args, "--replay", "0", "--score-every", "0"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=300)


@pytest.mark.parametrize(("flags", "message"), [
    (["--lora-layers", "0"], "--lora-layers"), (["--rank", "0"], "--rank"), (["--dropout", "1.5"], "--dropout"),
    (["--save-every", "-1"], "--save-every"),
])
def test_bad_lora_settings_are_refused(flags: list[str], message: str, tiny_llama: Path, tmp_path: Path) -> None:
    out = _train("--model", str(tiny_llama), "--data", str(tmp_path), *flags)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_an_existing_run_folder_is_not_reused(tiny_llama: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    (tmp_path / "data.jsonl").write_text('{"messages": [{"role": "user", "content": "q"}, '
                                         '{"role": "assistant", "content": "a"}]}\n')
    out = _train("--model", str(tiny_llama), "--data", str(tmp_path / "data.jsonl"), "--out", str(run))
    assert out.returncode == 1 and "--resume" in out.stderr
