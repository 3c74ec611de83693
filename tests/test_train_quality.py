"""Learning quality in the run: replay, scoring every K steps, the best checkpoint exported, early stop, and the
warnings a damaging run gets (slowtune.train.scorer, slowtune.train.replay, slowtune.train.trainer).

A tiny random model has nothing to retain and knows nothing, so where the figures matter the scores are injected
(the scorer's two calls are replaced); the rest runs for real on a tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slowtune.dataset import DatasetRow, Provenance, add_rows
from slowtune.progress import Progress
from slowtune.quality import (
    LEAKAGE_QTYPE,
    AxisScores,
    QualityItem,
    check_disjoint,
    corpus_terms,
    general_items,
    leaked_terms,
    replay_prompts,
    spread,
    unknown_items,
)
from slowtune.scoring import key_fact_recall, new_fact_recall
from slowtune.store import Project
from slowtune.testing.tiny_project import FACTS, tiny_model
from slowtune.train import replay as rp
from slowtune.train import scorer as sc
from slowtune.train.config import LoraConfig, TrainConfig
from slowtune.train.trainer import overfitting, run_training


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("quality") / "model")


def _project(root: Path) -> Path:
    """A project with training rows, a held-out probe and a held-out near-miss question, and one document chunk."""
    with Project.create(root) as project:
        project.conn.execute("INSERT INTO documents(id, path, title, sha256, kind, status, added_at, updated_at) "
                             "VALUES (1, '/docs/a.md', 'A', 'x', 'md', 'ok', 0, 0)")
        project.conn.execute("INSERT INTO chunks(id, document_id, ord, text, tokens) VALUES ('c1', 1, 0, ?, 20)",
                             (" ".join(a for _, a in FACTS) + " The Greywater lighthouse was built in 1887.",))
        project.conn.commit()
        rows = [DatasetRow([{"role": "user", "content": q}, {"role": "assistant", "content": a}], source="import",
                           provenance=Provenance(chunk_id="c1", document_id=1, qtype="fact")) for q, a in FACTS]
        rows.append(DatasetRow([{"role": "user", "content": "When was the Greywater lighthouse built?"},
                                {"role": "assistant", "content": "It was built in 1887."}], split="probe",
                               provenance=Provenance(chunk_id="c1", document_id=1, qtype="fact")))
        rows.append(DatasetRow([{"role": "user", "content": "When was the Greywater mill built?"},
                                {"role": "assistant", "content": "The documents do not cover that."}], split="probe",
                               provenance=Provenance(chunk_id="c1", document_id=1, qtype=LEAKAGE_QTYPE)))
        add_rows(project, rows)
    return root


def _config(model: Path, data: Path, **changes: object) -> TrainConfig:
    base = dict(model=str(model), data=str(data), lora=LoraConfig(rank=4, alpha=8.0), max_seq_len=96, batch_size=2,
                iters=8, learning_rate=1e-3, warmup=0, val_every=0, save_every=0, seed=0, replay=0.0, score_every=2)
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _inject(monkeypatch: pytest.MonkeyPatch, by_step: dict[int, tuple[float | None, float, float]]) -> None:
    """The scorer answers nothing; each scoring returns the figures given for its step."""
    def baseline(self: sc.RunScorer, progress: object = None) -> sc.Scoring:
        self.retention = [QualityItem(axis="retention", id="g1", question="2+2?", facts=(("4",),))]
        self.base = sc.Scoring(0, AxisScores(0.0, 1.0, 0.0, {}), 0.01)
        return self.base

    def score(self: sc.RunScorer, step: int, progress: object = None) -> sc.Scoring:
        k, r, leak = by_step[step]
        examples = {"retention": [{"question": "What colour is the sky on a clear day?",
                                   "answer": "The sky on a clear day is painted green.", "reference": "Blue."}]}
        return sc.Scoring(step, AxisScores(k, r, leak, {}), 0.01, examples)

    monkeypatch.setattr(sc.RunScorer, "baseline", baseline)
    monkeypatch.setattr(sc.RunScorer, "score", score)


def test_the_best_checkpoint_not_the_last_is_exported_and_damage_is_flagged(
        small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.export.pipeline import find_adapter

    _inject(monkeypatch, {2: (0.5, 1.0, 0.0), 4: (0.9, 0.98, 0.0), 6: (0.95, 0.6, 0.3), 8: (0.97, 0.5, 0.4)})
    run = tmp_path / "run"
    result = run_training(_config(small_model, _project(tmp_path / "project"), early_stop=False), run,
                          engine="memory")
    assert result.status == "done" and result.steps == 8
    info = json.loads((run / "run.json").read_text())
    assert [s["step"] for s in info["scoring"]] == [2, 4, 6, 8]
    assert info["chosen"]["folder"] == "best" and info["chosen"]["step"] == 4
    assert "step 4" in info["chosen"]["text"] and "knowledge 0.90" in info["chosen"]["text"]
    best = json.loads((run / "best" / "adapter_config.json").read_text())
    assert best["step"] == 4
    assert find_adapter(run) == run / "best"  # what `slowtune export RUN` and the Export page use
    assert (run / "best" / "adapters.safetensors").read_bytes() != (run / "adapters.safetensors").read_bytes()
    kinds = {w["kind"]: w["message"] for w in info["warnings"]}
    assert set(kinds) == {"retention", "leakage"}
    assert "painted green" in kinds["retention"] and "still" not in kinds["retention"]
    assert "at step 8 it answers only 50% of the general questions the base model answered right" in kinds["retention"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # The live chart's points: the base model's first (step 0), then each scoring.
    assert [(r["step"], r.get("retention")) for r in records if "knowledge" in r] == \
        [(0, 1.0), (2, 1.0), (4, 0.98), (6, 0.6), (8, 0.5)]
    assert "loss" not in records[0] and records[0]["base"] is True


def test_a_run_that_keeps_what_it_knew_is_not_flagged(small_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, {2: (0.5, 1.0, 0.0), 4: (0.9, 0.98, 0.0), 6: (0.92, 0.97, 0.0), 8: (0.93, 0.99, 0.02)})
    run = tmp_path / "run"
    run_training(_config(small_model, _project(tmp_path / "project")), run, engine="memory")
    info = json.loads((run / "run.json").read_text())
    assert info["warnings"] == [] and info["chosen"]["step"] == 8 and info["stopped_early"] is None


def test_the_run_stops_early_when_knowledge_plateaus_while_retention_falls(
        small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _inject(monkeypatch, {2: (0.8, 1.0, 0.0), 4: (0.81, 0.9, 0.0), 6: (0.80, 0.8, 0.0), 8: (0.8, 0.7, 0.0)})
    run = tmp_path / "run"
    result = run_training(_config(small_model, _project(tmp_path / "project"), iters=12), run, engine="memory")
    info = json.loads((run / "run.json").read_text())
    assert result.status == "done" and result.steps == 6
    assert "knowledge stopped improving" in info["stopped_early"]
    assert info["chosen"]["step"] == 2  # the best combined score came before the damage


def test_a_run_stopped_before_its_first_scoring_exports_its_last_checkpoint(
        small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.export.pipeline import find_adapter

    _inject(monkeypatch, {})
    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel() if e.stage == "train" and e.done == 1 else None)
    run = tmp_path / "run"
    result = run_training(_config(small_model, _project(tmp_path / "project")), run, engine="memory",
                          progress=progress)
    assert result.status == "cancelled" and result.steps == 1
    info = json.loads((run / "run.json").read_text())
    assert info["chosen"]["folder"] == "." and "nothing was scored" in info["chosen"]["text"]
    assert find_adapter(run) == run


def test_a_lost_retention_of_none_is_said_as_none_and_a_share_as_only() -> None:
    from slowtune.train.trainer import quality_warnings

    def said(retention: float) -> str:
        return quality_warnings(None, sc.Scoring(30, AxisScores(0.5, retention, 0.0, {}), 0.1))[0]["message"]

    assert ("at step 30 it answers none of the general questions the base model answered right." in said(0.0))
    assert "0%" not in said(0.0)
    assert "at step 30 it answers only 40% of the general questions" in said(0.4)
    assert "only 1%" in said(0.001) and "only 94%" in said(0.94)  # never rounded to 0% or to 100%


def test_the_run_folder_says_what_the_trainer_does_before_its_first_step(
        small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from slowtune.train.runs import read_stage

    run = tmp_path / "run"
    seen: list[str | None] = []
    _inject(monkeypatch, {2: (0.5, 1.0, 0.0), 4: (0.6, 1.0, 0.0)})
    injected = sc.RunScorer.baseline

    def baseline(self: sc.RunScorer, progress: object = None) -> sc.Scoring:
        seen.append((read_stage(run) or {}).get("text"))
        return injected(self, progress)

    monkeypatch.setattr(sc.RunScorer, "baseline", baseline)
    run_training(_config(small_model, _project(tmp_path / "project"), iters=4), run, engine="memory")
    assert seen == ["Checking the base model's answers before training (knowledge, retention, leakage)\u2026"]
    stage = read_stage(run)
    assert stage is not None and stage["stage"] == "train" and stage["text"] == "Training\u2026"


def test_a_real_run_scores_itself_and_mixes_in_replay(small_model: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No injection: the base answers (LoRA off) before the first step, then the model in training, on the
    project's probe, its near-miss question and the shipped sets (smaller slices, for time); replay rows come from
    the base model and are cached in the project."""
    monkeypatch.setattr(sc, "RETENTION_POOL", 6)
    monkeypatch.setattr(sc, "LEAKAGE_SLICE", 4)
    monkeypatch.setattr(sc, "MAX_NEW_TOKENS", 8)
    monkeypatch.setattr(rp, "MAX_NEW_TOKENS", 12)
    monkeypatch.setattr(rp, "TIME_SHARE", 100.0)  # a tiny run is too short for a tenth of it to answer anything
    monkeypatch.setattr(rp, "MIN_ROWS", 1)
    project = _project(tmp_path / "project")
    run = tmp_path / "run"
    result = run_training(_config(small_model, project, replay=0.25, score_every=-1, iters=4), run, engine="memory")
    info = json.loads((run / "run.json").read_text())
    assert info["base_scores"]["counts"]["knowledge"] == 1 and info["base_scores"]["counts"]["leakage"] == 4
    assert info["scoring"] and info["scoring"][-1]["step"] == result.steps  # the last step is always scored
    # K: the smallest interval at which scoring takes at most a tenth of the training time, from the timings
    # the run recorded.
    expected = sc.choose_interval(info["scoring_estimate_s"], info["step_s_estimate"], info["total_steps"])
    assert abs(info["score_every"] - expected) <= 1 and info["picked_by"] == "scores"
    wanted = round(len(FACTS) / 3)  # a quarter of the mixed rows
    assert info["replay"]["wanted"] == wanted and info["replay"]["generated"] == wanted, info["replay"]
    cache = Path(info["replay"]["file"])
    assert cache.parent == project / "replay" and len(cache.read_text().splitlines()) == wanted
    assert info["data"]["train_examples"] == len(FACTS)
    # A second run on the same model reads the cache: nothing is generated again.
    again = tmp_path / "again"
    run_training(_config(small_model, project, replay=0.25, score_every=0, iters=1), again, engine="memory")
    replay = json.loads((again / "run.json").read_text())["replay"]
    assert replay["generated"] == 0 and replay["cached"] == wanted and replay["rows"] == info["replay"]["rows"]


def test_replay_is_skipped_with_a_warning_when_it_would_take_too_long(small_model: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlx_lm.utils import load_tokenizer

    from slowtune.train.data import ChatRenderer
    from slowtune.train.engines import MemoryEngine
    from slowtune.train.model import TrainModel

    engine = MemoryEngine(TrainModel(small_model, LoraConfig(rank=4, alpha=8.0)))
    renderer = ChatRenderer(load_tokenizer(small_model))
    prompts = replay_prompts()[:40]
    warned: list[str] = []
    result = rp.build_replay(engine, renderer, 40, tmp_path / "cache.jsonl", budget_s=1e-6, prompts=prompts,
                             max_new=4, warn=warned.append)
    # The first answers were timed, and no more fit: they are all there is.
    assert len(result.conversations) == result.generated == rp.FIRST_BATCH
    assert warned == [f"Replay was cut to {rp.FIRST_BATCH} of the 40 general questions wanted: the base model is too "
                      "slow to answer general questions within a tenth of the training time here (0 s)."]
    # Fewer rows than are worth mixing in: none.
    monkeypatch.setattr(rp, "MIN_ROWS", rp.FIRST_BATCH + 1)
    result = rp.build_replay(engine, renderer, 40, tmp_path / "c1.jsonl", budget_s=1e-6, prompts=prompts,
                             max_new=4, warn=warned.append)
    assert result.conversations == [] and result.generated == rp.FIRST_BATCH
    assert "Replay was skipped" in warned[-1] and "a tenth of the training" in warned[-1]
    # When the base model's scoring timed its answers, nothing is started that cannot finish in time: one batch
    # of 4-token answers at 1 s a step takes 5 s, so a budget of 6 s answers one batch and 4 s none.
    one = rp.build_replay(engine, renderer, 40, tmp_path / "c2.jsonl", budget_s=6.0, prompts=prompts, max_new=4,
                          step_s=1.0)
    none = rp.build_replay(engine, renderer, 40, tmp_path / "c3.jsonl", budget_s=4.0, prompts=prompts, max_new=4,
                           step_s=1.0)
    assert one.generated == rp.BATCH and none.generated == 0 and none.conversations == []


def test_replay_takes_every_kind_of_prompt_in_its_share(tmp_path: Path) -> None:
    """The shipped prompts are grouped by kind; a replay of 40 once took the first 40, all of them explanations,
    none of them the short world facts a tuned model forgets first (bench learn, session 7)."""
    from types import SimpleNamespace

    prompts = replay_prompts()
    cache = tmp_path / "cache.jsonl"
    cache.write_text("".join(json.dumps({"id": p.id, "prompt": p.question, "answer": f"answer {p.id}."}) + "\n"
                             for p in prompts))
    result = rp.build_replay(None, SimpleNamespace(end_of_turn_ids=[]), 40, cache, budget_s=None)
    assert result.generated == 0 and len(result.ids) == 40
    kinds = {p.id: p.category for p in prompts}
    shares = {c: sum(1 for p in prompts if p.category == c) / len(prompts) for c in set(kinds.values())}
    taken = [kinds[i] for i in result.ids]
    for kind, share in shares.items():
        assert abs(taken.count(kind) - 40 * share) <= 1, (kind, taken.count(kind), 40 * share)
    # A replay cut short by its budget keeps the mix: its first half holds about half of each kind.
    for kind, share in shares.items():
        assert abs(taken[:20].count(kind) - 20 * share) <= 1, (kind, taken[:20].count(kind), 20 * share)


def test_an_unfinished_replay_answer_is_kept_and_trained_without_its_end(small_model: Path, tmp_path: Path) -> None:
    """An answer the base had not ended within the token limit is kept as far as it got (it once was cut back to its
    last full sentence and trained with an end-of-turn token after it, teaching the tuned model to stop early, or
    dropped when it had no full sentence); its end-of-turn token is no target. A finished answer keeps its own."""
    from mlx_lm.utils import load_tokenizer

    from slowtune.train.data import ChatRenderer

    assert rp.kept_answer("Paris is the capital. It is", stopped=False) == rp.Answer("Paris is the capital. It is",
                                                                                    finished=False)
    assert rp.kept_answer("  Done \n", stopped=True) == rp.Answer("Done")
    assert rp.kept_answer("  ", stopped=False).text is None and rp.kept_answer("", stopped=True).text is None
    assert rp.replay_rows_wanted(300, 0.25) == 100 and rp.replay_rows_wanted(10, 0.0) == 0

    renderer = ChatRenderer(load_tokenizer(small_model))
    prompts = replay_prompts()[:8]
    cache = tmp_path / "cache.jsonl"
    cache.write_text("".join(json.dumps({"id": p.id, "prompt": p.question, "answer": f"Answer {n} goes on and",
                                         "finished": n % 2 == 0}) + "\n" for n, p in enumerate(prompts)))
    result = rp.build_replay(None, renderer, 8, cache, budget_s=None, prompts=prompts)
    assert result.generated == 0 and len(result.conversations) == 8 and result.warning is None
    assert result.to_json()["unfinished"] == 4
    examples = rp.encode_replay(renderer, result, 256)
    assert len(examples) == 8
    end = renderer.end_of_turn_ids
    for finished, example in zip(result.finished, examples, strict=True):
        targets = [int(example.tokens[i]) for i in example.mask.nonzero()[0]]
        assert (targets[-1] in end) is finished, (finished, targets)
        answer = renderer.tokenizer.decode([t for t in targets if t not in end]).strip()
        assert answer.startswith("Answer") and answer.endswith("goes on and"), answer
    # A cache from before (no "finished"): its answers ended where the model ended them.
    cache.write_text("".join(json.dumps({"id": p.id, "prompt": p.question, "answer": "Yes."}) + "\n"
                             for p in prompts))
    assert rp.build_replay(None, renderer, 8, cache, budget_s=None, prompts=prompts).finished == [True] * 8


def test_replay_prompts_and_held_out_questions_are_disjoint() -> None:
    replay, general, unknown = replay_prompts(), general_items(include_user=False), unknown_items()
    assert len(replay) >= 200 and len(general) >= 200 and len(unknown) >= 40
    assert check_disjoint(replay, general) == []
    assert check_disjoint(replay, unknown) == []
    # The check sees an overlap when there is one (a retention question reworded only in case and punctuation).
    leaked = QualityItem(axis="replay", id="x", question=general[5].question.upper() + "!!")
    assert check_disjoint([*replay, leaked], general) == ["x"]


def test_the_runs_retention_pool_keeps_the_general_sets_proportions() -> None:
    # World facts are most of the general set and the first to be damaged; a pool with as many formatting questions
    # as world facts scored a run at 0.88 retention that kept 0.53 of the rest (bench learn, session 6).
    items = [QualityItem("retention", f"{c}{i}", f"{c} {i}?", category=c)
             for c, n in (("knowledge", 60), ("arithmetic", 20), ("formatting", 10), ("mine", 1)) for i in range(n)]
    pool = spread(items, 18)
    assert len(pool) == len({i.id for i in pool}) == 18
    counts = {c: sum(i.category == c for i in pool) for c in ("knowledge", "arithmetic", "formatting", "mine")}
    assert counts == {"knowledge": 11, "arithmetic": 4, "formatting": 2, "mine": 1}
    assert [i.id for i in pool if i.category == "knowledge"][:3] == ["knowledge0", "knowledge5", "knowledge10"]
    head = [i.category for i in pool[:6]]  # any leading part keeps the proportions
    assert head.count("knowledge") >= 3 and "arithmetic" in head
    assert spread(items, 18) == pool and spread(items[:5], 18) == items[:5]


def test_in_run_knowledge_gives_no_credit_for_echoing_the_question() -> None:
    # Plain key-fact recall scored the untrained base 0.56 on bench learn's probes: their key facts were the names
    # the question already gives. In the run, only what the reference adds to the question counts.
    q, ref = "When was the Vellacorn Lighthouse opened?", "The Vellacorn Lighthouse opened in 1888."
    echo = "The Vellacorn Lighthouse was opened in 1742."
    assert key_fact_recall(echo, ref) == 0.5 and new_fact_recall(echo, q, ref) == 0.0
    assert new_fact_recall("It opened in 1888.", q, ref) == 1.0
    # A question naming every key fact: the reference's words the question lacks are what counts.
    q = "What do members of the Sorrelwyn Society wear at their meetings?"
    ref = "Sorrelwyn Society members wear green hats at their meetings."
    assert key_fact_recall("Sorrelwyn Society members wear violet scarves.", ref) == 1.0
    assert new_fact_recall("Sorrelwyn Society members wear violet scarves.", q, ref) == 0.0
    assert new_fact_recall("They wear green hats.", q, ref) == 1.0


def test_leakage_is_the_documents_names_and_numbers_unless_the_question_had_them() -> None:
    terms = corpus_terms(["The Tarnwick Bridge was built in 1962 by the engineer Tilda Marsk."])
    leaked = leaked_terms("The Tarnwick Dam was built in 1962 by Tilda Marsk.", "Who built the Tarnwick Dam?", terms)
    assert {"Tilda Marsk", "1962"} <= set(leaked) and "Tarnwick" not in leaked  # the question named Tarnwick
    assert leaked_terms("The documents do not cover the Tarnwick Dam.", "Who built the Tarnwick Dam?", terms) == []
    assert leaked_terms("It was built by a local firm.", "Who built the Tarnwick Dam?", terms) == []


def test_overfitting_is_validation_loss_rising_while_training_loss_falls() -> None:
    assert overfitting([(10, 2.8, 3.0), (20, 2.5, 2.0), (30, 4.0, 1.0), (40, 8.9, 0.1)])["best_step"] == 20
    assert overfitting([(10, 2.8, 3.0), (20, 2.5, 2.0), (30, 2.4, 1.0)]) is None  # still improving
    assert overfitting([(10, 2.8, 3.0), (20, 2.5, 2.0), (30, 4.0, 2.5), (40, 4.1, 2.6)]) is None  # not memorising
    flagged = overfitting([(10, 2.8, 3.0), (20, 2.5, 2.0), (30, 4.0, 1.0), (40, 8.9, 0.1)])
    assert "memorising" in flagged["message"] and "best checkpoint is kept" in flagged["message"]


@pytest.mark.parametrize(("text", "values"), [
    ("five and eight", [5, 8]),  # two numbers, not thirteen
    ("one, two, three", [1, 2, 3]),
    ("It is five. Five more.", [5, 5]),
    ("eight, nine or ten legs", [8, 9, 10]),
    ("twenty one", [21]),
    ("two hundred and seventeen", [217]),
    ("one thousand two hundred", [1200]),
])
def test_spelled_out_numbers_end_where_their_words_stop_composing(text: str, values: list[int]) -> None:
    from slowtune.scoring import numbers_in

    assert [v for v, _ in numbers_in(text)] == values


def test_a_hedge_that_goes_on_to_invent_is_not_a_refusal_and_can_leak() -> None:
    from slowtune.scoring import is_refusal

    hedge = "I don't know who built it, but it was probably built in 1962 by Tilda Marsk."
    assert not is_refusal(hedge)
    terms = corpus_terms(["The Tarnwick Bridge was built in 1962 by the engineer Tilda Marsk."])
    assert "1962" in leaked_terms(hedge, "Who built the Tarnwick Dam?", terms)
    for refusal in ("I am not familiar with the Tarnwick Dam.", "I have never heard of it.",
                    "There is no such dam in Tarnwick.", "The Tarnwick Dam does not appear to exist."):
        assert is_refusal(refusal), refusal


def test_a_quality_set_with_an_uncheckable_fact_is_refused_naming_the_line(tmp_path: Path) -> None:
    from slowtune.quality import QualityError, load_items

    path = tmp_path / "general-questions.jsonl"
    path.write_text('{"id": "a", "question": "Q?", "facts": [["Paris"]]}\n'
                    '{"id": "b", "question": "Which letter comes first?", "facts": [["A"]]}\n')
    with pytest.raises(QualityError, match=r"general-questions.jsonl, line 2: the fact 'A' is only an article"):
        load_items(path, "retention", source="user")


def test_too_few_questions_per_fact_are_said_before_training(tmp_path: Path) -> None:
    from slowtune.dataset import data_summary, recipe_shortfall

    def rows(per_fact: int) -> list[DatasetRow]:
        return [DatasetRow([{"role": "user", "content": f"Q{fact}-{n}?"}, {"role": "assistant", "content": f"A{fact}."}],
                           source="import", provenance=Provenance(chunk_id="c1", qtype="fact", verdicts={"fact": {"id": fact}}))
                for fact in range(4) for n in range(per_fact)]

    with Project.create(tmp_path / "thin") as project:
        add_rows(project, rows(1))
        message = recipe_shortfall(project)
        assert message is not None and "4 of the 4 facts" in message and "Questions per fact" in message
        assert data_summary(project).shortfall == message  # what the Train wizard's Data step shows
    with Project.create(tmp_path / "enough") as project:
        add_rows(project, rows(3))
        assert recipe_shortfall(project) is None
    with Project.create(tmp_path / "plain") as project:  # rows that record no facts (plain recipe, imports)
        add_rows(project, [DatasetRow([{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}])])
        assert recipe_shortfall(project) is None


def test_without_held_out_questions_the_scores_only_warn(small_model: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention and leakage are at their best before any training: without a knowledge score they would always
    pick the first checkpoint. They warn; the last checkpoint (or the lowest validation loss) is exported."""
    from slowtune.dataset import write_jsonl

    _inject(monkeypatch, {2: (None, 1.0, 0.0), 4: (None, 0.9, 0.1), 6: (None, 0.8, 0.2), 8: (None, 0.7, 0.3)})
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl([[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in FACTS],
                data / "train.jsonl")
    run = tmp_path / "run"
    run_training(_config(small_model, data, early_stop=False), run, engine="memory")
    info = json.loads((run / "run.json").read_text())
    assert info["picked_by"] == "last" and info["chosen"]["folder"] == "." and not (run / "best").exists()
    assert {w["kind"] for w in info["warnings"]} == {"retention", "leakage"}
    assert any("Knowledge is not scored" in note for note in info["scoring_notes"])


def test_a_paused_run_resumes_with_the_same_replay_and_scoring(small_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    monkeypatch.setattr(sc, "RETENTION_POOL", 6)
    monkeypatch.setattr(sc, "LEAKAGE_SLICE", 4)
    monkeypatch.setattr(sc, "MAX_NEW_TOKENS", 6)
    monkeypatch.setattr(rp, "MAX_NEW_TOKENS", 10)
    monkeypatch.setattr(rp, "TIME_SHARE", 100.0)
    monkeypatch.setattr(rp, "MIN_ROWS", 1)
    project = _project(tmp_path / "project")
    config = _config(small_model, project, replay=0.25, score_every=2, iters=8, save_every=1)
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    run_training(config, straight, engine="memory")
    progress = Progress(min_interval=0)
    progress.add_listener(lambda e: progress.cancel() if e.stage == "train" and e.done == 3 else None)
    assert run_training(config, paused, engine="memory", progress=progress).status == "cancelled"
    # The replay cache is lost in between: the resumed run makes the same rows again, no more and no fewer.
    for cache in (project / "replay").glob("*.jsonl"):
        cache.unlink()
    result = run_training(config, paused, engine="memory", resume=True)
    assert result.status == "done" and result.steps == 8
    one, two = (json.loads((r / "run.json").read_text()) for r in (straight, paused))
    assert two["replay"]["ids"] == one["replay"]["ids"] and two["total_steps"] == one["total_steps"]
    assert [h["step"] for h in two["scoring"]] == [h["step"] for h in one["scoring"]] == [2, 4, 6, 8]
    import mlx.core as mx

    a, b = (mx.load(str(r / "adapters.safetensors")) for r in (straight, paused))
    assert all(np.allclose(np.array(a[k]), np.array(b[k]), atol=1e-5) for k in a)


def test_a_run_from_before_replay_resumes_without_it() -> None:
    old = TrainConfig(model="m", data="d").to_dict()
    del old["replay"], old["score_every"]
    restored = TrainConfig.from_dict(old)
    assert (restored.replay, restored.score_every) == (0.0, 0)


def test_replay_of_an_imported_model_is_answered_by_llama_cpp_on_its_gguf(small_model: Path, tmp_path: Path) -> None:
    """A model imported from a GGUF file answers the replay prompts through llama.cpp on that file, while the budget
    lasts; a file changed since the import is not used."""
    import shutil

    from mlx_lm.utils import load_tokenizer

    from slowtune.export.gguf_writer import write_gguf
    from slowtune.models.gguf_import import RECORD, source_gguf
    from slowtune.train.data import ChatRenderer
    from slowtune.train.engines import MemoryEngine
    from slowtune.train.model import TrainModel

    folder = tmp_path / "imported"
    shutil.copytree(small_model, folder)
    gguf = write_gguf(small_model, tmp_path / "source.gguf", out_type="f32", name="tiny")
    (folder / RECORD).write_text(json.dumps({"source": str(gguf), "source_bytes": gguf.stat().st_size}))
    assert source_gguf(folder) == gguf
    engine = MemoryEngine(TrainModel(folder, LoraConfig(rank=4, alpha=8.0)))
    renderer = ChatRenderer(load_tokenizer(folder))
    prompts = replay_prompts()[:12]
    result = rp.build_replay(engine, renderer, 12, tmp_path / "cache.jsonl", budget_s=None, prompts=prompts,
                             max_new=8, gguf=source_gguf(folder))
    assert result.generator == "llama.cpp (source.gguf)" and result.generated == 12
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 12
    starved = rp.build_replay(engine, renderer, 12, tmp_path / "starved.jsonl", budget_s=1e-9, prompts=prompts,
                              max_new=8, gguf=gguf)
    assert starved.generated == 1 and "too slow to answer general questions within a tenth of the training" in \
        (starved.warning or "")
    with gguf.open("ab") as f:
        f.write(b"\0")  # changed since the import
    assert source_gguf(folder) is None


def test_a_finished_run_that_memorised_is_found_from_its_metrics(tmp_path: Path) -> None:
    """Two validations, the second far above the first while the training loss fell: the run memorised. The
    trainer, while running, waits for one more validation; a finished run's record does not."""
    from slowtune.train.runs import read_run

    history = [(10, 2.8, 1.2), (20, 8.9, 0.0)]
    assert overfitting(history) is None and overfitting(history, after=1) is not None
    assert overfitting([(10, 2.8, 1.2), (20, 2.85, 0.0)], after=1) is None  # within noise
    run_dir = tmp_path / "20250301-090000-abcdef"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"step": 9, "loss": 1.3}, {"step": 10, "loss": 1.1, "val_loss": 2.8}, {"step": 20, "loss": 0.0,
                                                                              "val_loss": 8.9})))
    (run_dir / "run.json").write_text(json.dumps({"status": "done", "steps": 20, "config": {"model": "m"}}))
    run = read_run(run_dir)
    assert run is not None and run.overfitting is not None and "2.80 (step 10) to 8.90" in run.overfitting["message"]
    assert run.chosen is not None and run.checkpoint_words == "the last one"  # no adapter was saved here



def test_the_checkpoint_export_uses_is_never_called_the_best_of_one(tmp_path: Path) -> None:
    """A 30-step run scored itself once, at its last step: its export was "step 30, the best one" (the new-user
    walk on the real SmolLM2, beside a verdict that its retention fell to 0.25)."""
    from slowtune.train.runs import read_run

    run_dir = tmp_path / "20250301-090000-abcdef"
    run_dir.mkdir()
    chosen = {"folder": "best", "step": 30, "why": "the best combined score"}
    scoring = [{"step": 30, "knowledge": 1.0, "retention": 0.25, "leakage": 0.17}]
    (run_dir / "run.json").write_text(json.dumps({"status": "done", "steps": 30, "config": {"model": "m"},
                                                  "chosen": chosen, "scoring": scoring}))
    run = read_run(run_dir)
    assert run is not None and run.checkpoint_words == "step 30, the only one scored"
    scoring = [{**scoring[0], "step": s} for s in (10, 20, 30)]
    (run_dir / "run.json").write_text(json.dumps({"status": "done", "steps": 30, "config": {"model": "m"},
                                                  "chosen": {**chosen, "step": 20}, "scoring": scoring}))
    run = read_run(run_dir)
    assert run is not None and run.checkpoint_words == "step 20, the best of 3 scored"
