from __future__ import annotations

import json
from pathlib import Path

import pytest

from slowtune import dataset
from slowtune.dataset import DatasetError, DatasetRow, Provenance
from slowtune.store import Project

QA = [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."}]


@pytest.mark.parametrize(
    ("messages", "problem"),
    [
        ([], "non-empty"),
        ([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}], "role 'robot'"),
        ([{"role": "user", "content": "  "}, {"role": "assistant", "content": "y"}], "no text"),
        ([{"role": "user", "content": "q"}], "last message"),
        ([{"role": "assistant", "content": "a"}], "start with a user"),
        ([{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}], "alternate"),
        ([{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "only the first"),
    ],
)
def test_bad_conversations_are_named(messages: list, problem: str) -> None:
    problems = dataset.validate_messages(messages)
    assert any(problem in p for p in problems), problems


def test_good_conversations_pass() -> None:
    assert dataset.validate_messages(QA) == []
    assert dataset.validate_messages([{"role": "system", "content": "Be brief."}, *QA, *QA]) == []


def test_jsonl_round_trip_and_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert dataset.write_jsonl([QA, [*QA[:1], {"role": "assistant", "content": "Bleu, en français."}]], path) == 2
    assert list(dataset.read_jsonl(path)) == [QA, [QA[0], {"role": "assistant", "content": "Bleu, en français."}]]
    assert "français" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": QA}) + "\n\n" + '{"messages": [}\n')
    with pytest.raises(DatasetError, match=rf"{bad} line 3: not valid JSON"):
        list(dataset.read_jsonl(bad))
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1.*messages"):
        list(dataset.read_jsonl(bad))
    with pytest.raises(DatasetError, match="cannot be read"):
        list(dataset.read_jsonl(tmp_path / "missing.jsonl"))


def test_store_rows_deduplicate_and_export_splits(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        project.conn.execute("INSERT INTO documents(id, path, status, added_at, updated_at) VALUES (1, '/d.md', 'ok', 0, 0)")
        project.conn.execute("INSERT INTO chunks(id, document_id, ord, text, tokens) VALUES ('c1', 1, 0, 'x', 1)")
        rows = [
            DatasetRow(QA, split="train", provenance=Provenance(chunk_id="c1", evidence="the sky is blue", qtype="fact")),
            # About a chunk no longer in the library (its document changed): stale, left out.
            DatasetRow([{"role": "user", "content": "Q0"}, {"role": "assistant", "content": "A0"}],
                       provenance=Provenance(chunk_id="gone")),
            DatasetRow(QA, split="train"),  # the same conversation again
            DatasetRow([{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}], split="valid"),
            DatasetRow([{"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}], split="probe"),
            DatasetRow([{"role": "user", "content": "Q4"}, {"role": "assistant", "content": "A4"}], status="rejected"),
        ]
        assert dataset.add_rows(project, rows) == (5, 1)
        assert [r.provenance.evidence for r in dataset.rows(project, "train")] == ["the sky is blue"]
        assert len(dataset.rows(project, "train", current=False)) == 2
        counts = dataset.export_jsonl(project, tmp_path / "data", provenance=True)
    assert counts == {"train": 1, "valid": 1, "probe": 1}
    assert list(dataset.read_jsonl(tmp_path / "data" / "train.jsonl")) == [QA]
    assert next(iter(dataset.read_jsonl(tmp_path / "data" / "test.jsonl")))[0]["content"] == "Q3"
    sidecar = [json.loads(line) for line in (tmp_path / "data" / "train.provenance.jsonl").read_text().splitlines()]
    assert sidecar[0]["chunk_id"] == "c1" and sidecar[0]["qtype"] == "fact"


def test_bad_row_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        with pytest.raises(DatasetError, match="split 'test'"):
            dataset.add_rows(project, [DatasetRow(QA), DatasetRow([*QA[:1], {"role": "assistant", "content": "x"}], split="test")])
        assert project.counts()["dataset_rows"] == 0


@pytest.mark.slow
def test_mlx_lm_reads_the_exported_files(tmp_path: Path, tiny_llama: Path) -> None:
    # The JSONL is the format mlx-lm's own trainer loads, rendered with the model's chat template.
    from mlx_lm import load
    from mlx_lm.tuner.datasets import load_local_dataset

    with Project.create(tmp_path / "p") as project:
        other = [{"role": "user", "content": "And the grass?"}, {"role": "assistant", "content": "Green."}]
        third = [{"role": "user", "content": "And snow?"}, {"role": "assistant", "content": "White."}]
        dataset.add_rows(project, [DatasetRow(QA), DatasetRow(other, split="valid"), DatasetRow(third, split="probe")])
        dataset.export_jsonl(project, tmp_path / "data")
    _model, tokenizer = load(str(tiny_llama))
    from types import SimpleNamespace

    train, valid, test = load_local_dataset(tmp_path / "data", tokenizer, SimpleNamespace(mask_prompt=True))
    assert len(train) == len(valid) == len(test) == 1
    tokens, offset = train.process(train[0])
    text = tokenizer.decode(tokens)
    assert "What colour is the sky?" in text and "Blue." in text
    assert 0 < offset < len(tokens)
