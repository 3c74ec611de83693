"""Run folders (slowtune.train.runs): run ids, one model of a run for every page, the project's runs row and its
one writer, the metrics tail; and the one duration format (slowtune.progress)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from slowtune.progress import format_duration
from slowtune.store import Project
from slowtune.train.runs import (
    MetricsTail,
    default_run_dir,
    list_runs,
    new_run_id,
    parse_run_id,
    read_run,
    reconcile_runs,
    record_run,
    run_id_time,
)


def _run(folder: Path, **info: object) -> Path:
    folder.mkdir(parents=True)
    data = {"config": {"model": "/models/tiny"}, "engine": "memory", "total_steps": 10, **info}
    (folder / "run.json").write_text(json.dumps(data))
    return folder


def _row(project: Project, run_id: str) -> dict[str, object] | None:
    row = project.conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    return dict(row) if row else None


def test_run_ids_are_made_and_read_in_one_place(tmp_path: Path) -> None:
    run_id = new_run_id()
    parsed = parse_run_id(run_id)
    assert parsed is not None and abs(run_id_time(run_id) - time.time()) < 5
    assert time.strftime("%Y-%m-%d %H:%M", parsed) == time.strftime("%Y-%m-%d %H:%M",
                                                                    time.localtime(run_id_time(run_id)))
    assert parse_run_id("20250301-090000") is not None and parse_run_id("20250301-090000-f1n15h") is not None
    for other in ("run", "my-run", "20251301-090000-abc", "20250301-0900"):
        assert parse_run_id(other) is None and run_id_time(other) is None
    with Project.create(tmp_path / "proj"):
        pass
    run_dir, project = default_run_dir(tmp_path / "proj")
    assert project == tmp_path / "proj" and run_dir.parent == tmp_path / "proj" / "runs" and not run_dir.exists()
    assert parse_run_id(run_dir.name) is not None


def test_read_run_from_the_folder(tmp_path: Path) -> None:
    assert read_run(tmp_path) is None  # training never started there
    run_dir = _run(tmp_path / "20250101-120000-abcdef", status="cancelled", steps=4, train_loss=1.25, val_loss=1.5,
                   best_val=1.4)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 1.3}) + "\n")
    run = read_run(run_dir)
    assert run is not None and run.run_id == "20250101-120000-abcdef"
    assert (run.status, run.model, run.engine, run.steps, run.total_steps) == ("cancelled", "/models/tiny", "memory",
                                                                               4, 10)
    assert run.started == time.mktime((2025, 1, 1, 12, 0, 0, 0, 0, -1))
    assert run.state == "cancelled" and not run.resumable  # no checkpoint
    assert (run.loss, run.validation_loss, run.base_label) == (1.25, 1.4, "tiny")
    # A run still training: nothing recorded yet, the metrics file says how far it is.
    live = _run(tmp_path / "20250102-120000-abcdef", status="running")
    (live / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 2.5, "step_s": 0.1}) + "\n")
    run = read_run(live)
    assert run is not None and run.steps is None and run.train_loss is None
    assert (run.step, run.loss) == (2, 2.5) and run.state == "training" and run.elsewhere


def test_list_runs_for_the_train_page_and_with_the_projects_records(tmp_path: Path) -> None:
    with Project.create(tmp_path / "proj") as project:
        runs = project.root / "runs"
        paused = _run(runs / "20250101-120000-aaaaaa", status="cancelled", steps=3)
        copied = _run(runs / "20250102-120000-bbbbbb", status="done", steps=10)
        record_run(project, paused, "paused")
        elsewhere = _run(tmp_path / "elsewhere" / "20250103-120000-cccccc", status="done", steps=10)
        record_run(project, elsewhere, "done")
        gone = _run(tmp_path / "gone" / "20250104-120000-dddddd", status="done", steps=10)
        record_run(project, gone, "done")
        for file in gone.iterdir():
            file.unlink()
        gone.rmdir()
        listed = list_runs(project)
        assert [r.run_dir for r in listed] == [copied, paused]  # the folders, newest started first
        assert [r.state for r in listed] == ["finished", "paused"] and listed[1].recorded == "paused"
        everything = {r.run_id: r for r in list_runs(project, with_records=True)}
        assert set(everything) == {paused.name, copied.name, elsewhere.name, gone.name}
        assert everything[gone.name].status == "done" and everything[gone.name].model == "/models/tiny"
        assert everything[copied.name].recorded is None
        # The folder the project never heard of gets its record.
        reconcile_runs(project, listed)
        assert _row(project, copied.name)["status"] == "done" and listed[0].recorded == "done"
        assert _row(project, paused.name)["status"] == "paused"  # a paused run stays paused


def test_record_run_is_the_one_writer_of_the_row(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Project.create(tmp_path / "proj") as project:
        run_dir = project.root / "runs" / "20250101-120000-abcdef"
        # The CLI, before the trainer wrote run.json (stopped while reading the data): what it knows.
        record_run(project.root, run_dir, "cancelled", config={"model": "/models/tiny", "iters": 4}, engine="memory")
        row = _row(project, run_dir.name)
        assert row is not None and (row["base_model"], row["engine"], row["status"]) == ("/models/tiny", "memory",
                                                                                         "cancelled")
        assert json.loads(row["config_json"]) == {"model": "/models/tiny", "iters": 4}
        assert row["adapter_path"] == str(run_dir) and row["error"] is None
        created = row["created_at"]
        # The trainer wrote run.json and failed: the row takes its figures and its error.
        _run(run_dir, status="failed", steps=3, error="ValueError: bad data")
        record_run(project, run_dir, "failed")
        row = _row(project, run_dir.name)
        assert row["status"] == "failed" and row["error"] == "ValueError: bad data" and row["created_at"] == created
        assert json.loads(row["metrics_json"]) == {"steps": 3, "train_loss": None, "val_loss": None,
                                                   "best_val": None}
        record_run(project, run_dir, "failed", error="The trainer was killed")
        assert _row(project, run_dir.name)["error"] == "The trainer was killed"
        (run_dir / "run.json").write_text(json.dumps({"config": {"model": "/models/tiny"}, "engine": "streamed",
                                                      "status": "done", "steps": 4, "train_loss": 0.5,
                                                      "val_loss": 0.7, "best_val": 0.6}))
        record_run(project, run_dir, "done")
        row = _row(project, run_dir.name)
        assert (row["status"], row["engine"], row["error"]) == ("done", "streamed", None)
        assert json.loads(row["metrics_json"]) == {"steps": 4, "train_loss": 0.5, "val_loss": 0.7, "best_val": 0.6}
    # A project that cannot be written to never fails the run.
    record_run(tmp_path / "no-project", run_dir, "done")
    assert "Could not record run" in caplog.text


def test_metrics_tail_follows_appends_and_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == (False, [])
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    reset, records = tail.read()
    assert not reset and [r["step"] for r in records] == [1]  # the half-written line waits
    with path.open("a") as handle:
        handle.write('ss": 1.5}\n')
    assert [r["step"] for r in tail.read()[1]] == [2]
    # A resume rewrites the file under the same name, keeping the lines up to its checkpoint.
    replacement = tmp_path / "new"
    replacement.write_text('{"step": 1, "loss": 2.0}\n')
    replacement.replace(path)
    reset, records = tail.read()
    assert reset and [r["step"] for r in records] == [1]


def test_one_duration_format_for_estimates_and_measured_times() -> None:
    assert [format_duration(s) for s in (12, 89, 600, 5399, 5400, 7380)] == \
        ["12 s", "89 s", "10 min", "90 min", "1 h 30 min", "2 h 03 min"]
    assert format_duration(float("inf")) == format_duration(-1) == "—"
    assert [format_duration(s, exact=True) for s in (12, 59.4, 125, 3600, 3780)] == \
        ["12 s", "59 s", "2 min 5 s", "1 h 0 min", "1 h 3 min"]
