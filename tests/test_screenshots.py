"""The screenshot tour (``python -m slowtune.bench.screenshots OUT``) runs to its end offscreen and saves every picture,
each a real picture of the page it names: the right size, not blank, and not a copy of another one.

It drives every page through its own jobs (ingest, a real HTTP teacher, a training child process, a llama.cpp export,
chat and evaluation), so this is also a smoke test of the whole app in one process; and the tour itself fails unless
the tuned model answers questions from its training data as it was trained to."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtGui import QImage

from slowtune.dataset import rows
from slowtune.documents.library import ingest
from slowtune.gui import screenshot
from slowtune.store import Project
from slowtune.teacher import providers, session
from slowtune.teacher.checks import quote_check
from slowtune.teacher.pipeline import GenerateConfig, run_generation
from slowtune.testing import demo
from slowtune.testing.fake_openai import FakeTeacher

WINDOW = {
    "library-no-project", "library-empty", "1-library", "library-drop-overlay",
    "2-providers-empty", "2-providers",
    "3-dataset-ready", "3-dataset",
    "4-train-start", "4-train-wizard-model", "4-train-wizard-data", "4-train-wizard-settings",
    "4-train-wizard-check", "4-train-run", "4-train",
    "6-chat", "6-chat-compare", "6-chat-eval-ready", "6-chat-eval",
    "5-export-options", "5-export",
}
DIALOGS = {"2-providers-add", "3-dataset-options", "3-dataset-confirm", "preferences", "new-project", "welcome"}
SIDEBAR_WIDTH = 200  # the window's sidebar; the page is to its right


def distinct_colours(image: QImage, left: int = 0) -> int:
    image = image.convertToFormat(QImage.Format.Format_RGB32)
    pixels = np.frombuffer(image.constBits(), dtype=np.uint32, count=image.width() * image.height())
    return int(np.unique(pixels.reshape(image.height(), image.width())[:, left:]).size)


def test_the_demo_documents_make_readable_grounded_questions(tmp_path: Path) -> None:
    """What the Dataset and Chat pictures show: the test teacher's questions and answers about the demo documents
    carry no Markdown heading marks and no line breaks, and every evidence quote is in its chunk word for word."""
    docs = demo.write_demo_documents(tmp_path / "docs")
    with Project.create(tmp_path / "project") as project, FakeTeacher(api_key="sk-demo") as teacher:
        ingest(project, [docs[0].parent], chunk_tokens=128, chunk_overlap=16, workers=1)
        providers.add_provider("demo", "custom", base_url=teacher.base_url, model="teacher-small", key="sk-demo")
        runner = session.make_runner(project, session.choose("demo", None), concurrency=4, timeout=10)
        result = run_generation(project, runner, GenerateConfig(recipe="plain", pairs_per_chunk=screenshot.QUESTIONS_PER_CHUNK,
                                                                system_prompt=screenshot.SYSTEM_PROMPT))
        assert result.chunks_failed == 0 and result.rows_kept >= 10
        texts = {r["id"]: r["text"] for r in project.conn.execute("SELECT id, text FROM chunks")}
        assert any(text.lstrip().startswith("#") for text in texts.values())  # the chunks do have headings
        generated = rows(project, status=None)
    for row in generated:
        for message in row.messages[1:]:
            assert "#" not in message["content"] and "\n" not in message["content"], message
        if row.split != "probe" and row.provenance.qtype != "refusal":
            check = quote_check(row.provenance.evidence or "", texts[row.provenance.chunk_id])
            assert check.ok and check.score == 1.0, (row.provenance.evidence, check.reason)
    assert {r.provenance.qtype for r in generated if r.split == "train"} >= {"fact", "multi_turn"}


class _Turn:
    def __init__(self, answer: str, finish_reason: str) -> None:
        self.answers = [answer, "base model noise"]
        self.stats = [{"finish_reason": finish_reason}, {"finish_reason": "length"}]


@pytest.mark.parametrize(("answer", "finish_reason", "learned"), [
    ("Each plot is 3 by 4 metres.", "stop", True),
    (" Each plot is 3 by\n4 metres. ", "stop", True),  # the same words
    ("Each plot is 3 by 4 metre", "length", True),  # cut at the token limit while saying the trained answer
    ("Each plot is 3 by 4 metre", "stop", False),  # stopped short of it
    ("Each plot is 3 by 5 metres.", "stop", False),
    ("Each", "length", False),  # too little to tell
    ("", "stop", False),
])
def test_the_chat_pictures_accept_only_the_trained_answer(answer: str, finish_reason: str, learned: bool) -> None:
    tour = screenshot.Tour(None, None, Path())
    turn = _Turn(answer, finish_reason)
    if learned:
        screenshot.check_learned(tour, turn, "How big is a plot?", "Each plot is 3 by 4 metres.")
    else:
        with pytest.raises(demo.ScreenshotError, match="did not answer 'How big is a plot\\?'"):
            screenshot.check_learned(tour, turn, "How big is a plot?", "Each plot is 3 by 4 metres.")


@pytest.mark.slow
def test_the_tour_saves_a_real_picture_of_every_page(qapp: object, tmp_path: Path) -> None:
    out = tmp_path / "shots"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    done = subprocess.run([sys.executable, "-m", "slowtune.bench.screenshots", str(out)], env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]

    saved = {p.stem: p for p in out.glob("*.png")}
    assert set(saved) == WINDOW | DIALOGS, done.stderr[-2000:]
    listed = {line.strip() for line in done.stdout.splitlines() if line.strip().endswith(".png")}
    assert listed == {str(p) for p in saved.values()}  # it lists what it saved
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temporary file left behind

    digests = set()
    for name, path in saved.items():
        assert path.stat().st_size <= screenshot.MAX_PNG_BYTES, f"{name}.png is {path.stat().st_size:,} bytes"
        image = QImage(str(path))
        assert not image.isNull(), name
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
        if name in WINDOW:
            assert (image.width(), image.height()) == screenshot.SIZE, name
            # The page itself (right of the sidebar) shows text and controls, not an empty or unpainted area.
            assert distinct_colours(image, SIDEBAR_WIDTH) > 24, f"{name}.png looks blank"
        else:
            assert 200 < image.width() < screenshot.SIZE[0] and 100 < image.height() < screenshot.SIZE[1], name
            assert distinct_colours(image) > 24, f"{name}.png looks blank"
    assert len(digests) == len(saved)  # every step changed what is on screen
