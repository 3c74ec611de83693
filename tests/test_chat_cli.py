"""``slowtune chat`` as a user runs it, in a subprocess: one-shot answers, JSON, two models, saved sessions and
their exports, bad input, the interactive session fed through stdin, and Ctrl-C (stopping an answer keeps
the session; twice at the prompt leaves)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slowtune.chat import sessions
from slowtune.store import Project


def _chat_argv() -> list[str]:
    return [sys.executable, "-m", "slowtune", "chat"]


@dataclass
class Files:
    f16: Path
    q8: Path
    lora: Path


@pytest.fixture(scope="module")
def files(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Files:
    from test_lora_gguf import make_adapter

    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.lora_gguf import write_lora_gguf
    from slowtune.export.quantize import quantize

    out = tmp_path_factory.mktemp("chat-cli")
    f16 = write_gguf(tiny_qwen2, out / "tuned-F16.gguf", out_type="f16")
    adapter, _ = make_adapter(out / "adapter", tiny_qwen2, rank=4)
    return Files(f16=f16, q8=quantize(f16, out / "tuned-Q8_0.gguf", "Q8_0"),
                 lora=write_lora_gguf(adapter, tiny_qwen2, out / "adapter.gguf"))


def chat(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_chat_argv(), *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


STATS_LINE = re.compile(r"^\[(?:(?P<name>[\w.-]+): )?[\d.]+ tokens/s · first token \d+ ms · (?P<tokens>\d+) tokens",
                        re.MULTILINE)


# --- one message -----------------------------------------------------------------------------------------


def test_one_shot_streams_the_answer_and_its_figures(files: Files) -> None:
    out = chat(str(files.f16), "--prompt", "Hello", "--greedy", "--max-tokens", "12")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "tuned-F16.gguf · CPU · context 4096 tokens · chat template from the GGUF" in out.stderr
    stats = STATS_LINE.findall(out.stderr)
    assert len(stats) == 1 and 1 <= int(stats[0][1]) <= 12
    assert "Traceback" not in out.stderr
    again = chat(str(files.f16), "--prompt", "Hello", "--greedy", "--max-tokens", "12")
    assert again.stdout == out.stdout  # greedy: the same answer every time


def test_json_prints_the_openai_shaped_result(files: Files) -> None:
    out = chat(str(files.f16), "--prompt", "Hello", "--greedy", "--max-tokens", "8", "--ctx", "512", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["object"] == "chat.completion" and result["model"] == "tuned-F16.gguf"
    assert result["choices"][0]["message"]["role"] == "assistant"
    assert result["choices"][0]["finish_reason"] in ("stop", "length")
    assert result["usage"]["completion_tokens"] == result["slowtune_stats"]["completion_tokens"] <= 8
    assert result["slowtune_model"]["n_ctx"] == 512 and result["slowtune_model"]["backend"] == "CPU"
    both = chat(str(files.q8), "--compare", str(files.f16), "--prompt", "Hello", "--max-tokens", "8", "--seed", "3",
                "--json")
    assert both.returncode == 0, both.stderr
    results = json.loads(both.stdout)
    assert [r["model"] for r in results] == ["tuned-Q8_0.gguf", "tuned-F16.gguf"]
    assert all(r["object"] == "chat.completion" and "slowtune_stats" in r for r in results)


def test_compare_shows_each_answer_under_its_model_with_its_figures(files: Files) -> None:
    out = chat(str(files.q8), "--compare", str(files.f16), "--prompt", "Hello", "--greedy", "--max-tokens", "10")
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.index("── tuned-Q8_0.gguf ──\n"), out.stdout.index("── tuned-F16.gguf ──\n")
    assert first == 0 and second > first + len("── tuned-Q8_0.gguf ──\n")  # the first answer sits between
    assert [m[0] for m in STATS_LINE.findall(out.stderr)] == ["tuned-Q8_0.gguf", "tuned-F16.gguf"]
    assert out.stderr.count("chat template from the GGUF") == 2


def test_a_lora_adapter_is_applied_and_named(files: Files) -> None:
    out = chat(str(files.f16), "--lora", str(files.lora), "--prompt", "Hello", "--greedy", "--max-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert "tuned-F16.gguf + LoRA adapter.gguf · CPU" in out.stderr


# --- saved sessions --------------------------------------------------------------------------------------


def test_project_saves_the_session_which_can_be_listed_and_exported(files: Files, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    out = chat(str(files.q8), "--compare", str(files.f16), "--prompt", "How often are valves checked?", "--greedy",
               "--max-tokens", "6", "--system", "Answer from the manual.", "--project", str(project),
               "--title", "Valves", "--json")
    assert out.returncode == 0, out.stderr
    sid = json.loads(out.stdout)[0]["slowtune_session"]
    with Project.open(project) as p:
        saved = sessions.get_session(p, sid)
    assert saved.title == "Valves" and [m["name"] for m in saved.models] == ["tuned-Q8_0.gguf", "tuned-F16.gguf"]
    assert saved.settings["system"] == "Answer from the manual." and saved.settings["sampling"]["temperature"] == 0
    assert [(m.slot, m.role) for m in saved.messages] == [(0, "system"), (0, "user"), (0, "assistant"),
                                                          (1, "assistant")]
    assert all(m.stats["tokens_per_s"] is not None for m in saved.messages if m.role == "assistant")

    listed = chat("--project", str(project), "--list-sessions")
    assert listed.returncode == 0 and re.search(rf"^\s*{sid}\s.*4 messages\s+tuned-Q8_0.gguf vs tuned-F16.gguf\s+Valves",
                                                listed.stdout, re.MULTILINE), listed.stdout
    as_json = json.loads(chat("--project", str(project), "--list-sessions", "--json").stdout)
    assert as_json[0]["id"] == sid and as_json[0]["message_count"] == 4

    md = tmp_path / "valves.md"
    exported = chat("--project", str(project), "--export-session", str(sid), "--format", "md", "-o", str(md))
    assert exported.returncode == 0, exported.stderr
    text = md.read_text()
    assert text.startswith("# Valves\n") and "**tuned-Q8_0.gguf** (" in text and "tokens/s" in text
    jsonl = chat("--project", str(project), "--export-session", str(sid), "--format", "jsonl")
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert len(rows) == 2 and [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}", "--prompt", "hi"], "missing.gguf: no such model file"),
        (["{text}", "--prompt", "hi"], "notes.gguf: not a GGUF file"),
        (["{model}", "--prompt", "hi", "--temperature", "-1"], "bad sampling setting: temperature"),
        (["{model}", "--prompt", "hi", "--top-p", "2"], "top-p"),
        (["{model}", "--prompt", "hi", "--max-tokens", "0"], "max tokens"),
        (["{model}", "--prompt", "hi", "--ctx", "8"], "--ctx must be at least 64"),
        (["{model}", "--prompt", "hi", "--lora", "{missing}"], "missing.gguf: no such LoRA adapter file"),
        # A whole model given as the adapter: llama.cpp fails to load it; once that crashed the process.
        (["{model}", "--prompt", "hi", "--lora", "{model}"], "is not a LoRA adapter that fits"),
        (["{model}", "--prompt", "hi", "--lora", "{text}"], "notes.gguf"),
        (["--project", "{project}", "--export-session", "1", "-o", "{tmp}"], "is a folder"),
        (["{model}", "--prompt", "hi", "--compare", "{text}"], "notes.gguf: not a GGUF file"),
        (["{model}", "--prompt", " "], "the message is empty"),
        (["{model}", "--json"], "--json needs --prompt"),
        (["--prompt", "hi"], "name a MODEL.gguf"),
        (["--list-sessions"], "--list-sessions needs --project"),
        (["--project", "{tmp}/nowhere", "--list-sessions"], "No slowtune project"),
        (["--project", "{project}", "--export-session", "42"], "no chat session 42"),
    ],
)
def test_bad_input_exits_1_with_a_message_naming_what_is_wrong(files: Files, tmp_path: Path, args: list[str],
                                                                message: str) -> None:
    (tmp_path / "notes.gguf").write_text("not a model")
    Project.create(tmp_path / "proj").close()
    names = {"missing": tmp_path / "missing.gguf", "text": tmp_path / "notes.gguf", "model": files.f16,
             "tmp": tmp_path, "project": tmp_path / "proj"}
    out = chat(*[a.format(**names) for a in args])
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert message in out.stderr
    assert "Traceback" not in out.stderr


# --- the interactive session -----------------------------------------------------------------------------


def _saved(project: Path) -> list[sessions.ChatSession]:
    with Project.open(project) as p:
        return [sessions.get_session(p, s.id) for s in reversed(sessions.list_sessions(p))]


def test_interactive_session_keeps_the_conversation_and_obeys_its_commands(files: Files, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    script = "Hello\nAnd then?\n/reset\nAgain\n/system Be terse.\n/save Terse one\nThird\n/save\n/nonsense\n/exit\n"
    out = chat(str(files.f16), "--greedy", "--max-tokens", "8", "--project", str(project), stdin=script)
    assert out.returncode == 0, out.stderr
    assert len(STATS_LINE.findall(out.stderr)) == 4
    assert "(conversation cleared)" in out.stderr and "(system prompt set; conversation cleared)" in out.stderr
    assert "unknown command /nonsense" in out.stderr
    assert re.search(r"\(session \d+ is saved in project proj;", out.stderr)
    saved = _saved(project)
    assert [s.title for s in saved] == ["Hello", "Again", "Terse one"]  # /reset and /system start a new session
    first = saved[0].messages
    assert [m.role for m in first] == ["user", "assistant", "user", "assistant"]
    # The second question was asked with the first exchange in the prompt.
    assert first[3].stats["prompt_tokens"] > first[1].stats["prompt_tokens"] + first[1].stats["completion_tokens"]
    assert saved[2].conversation(0)[0] == {"role": "system", "content": "Be terse."}


def test_ctrl_d_ends_the_session(files: Files) -> None:
    out = chat(str(files.f16), "--greedy", "--max-tokens", "4", stdin="Hello\n")
    assert out.returncode == 0, out.stderr
    assert len(STATS_LINE.findall(out.stderr)) == 1


def test_ctrl_c_while_an_answer_streams_stops_it_and_keeps_the_session(files: Files, tmp_path: Path) -> None:
    project = tmp_path / "proj"
    out = chat(str(files.f16), "--greedy", "--max-tokens", "400", "--project", str(project),
               stdin="Hello\nAgain\n/exit\n", env={"SLOWTUNE_TEST_CHAT_INTERRUPT_AFTER": "3"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(" [stopped]\n") == 1
    assert re.search(r"^\[[\d.]+ tokens/s · first token \d+ ms · \d+ tokens · stopped\]$", out.stderr, re.MULTILINE)
    assert len(STATS_LINE.findall(out.stderr)) == 2  # and the session went on to answer the second message
    (session,) = _saved(project)
    stopped, finished = (m for m in session.messages if m.role == "assistant")
    assert stopped.stats["finish_reason"] == "cancelled" and stopped.content
    assert 3 <= stopped.stats["completion_tokens"] < 20
    assert finished.stats["finish_reason"] in ("stop", "length")


def test_ctrl_c_stops_both_answers_of_a_comparison(files: Files) -> None:
    out = chat(str(files.q8), "--compare", str(files.f16), "--greedy", "--max-tokens", "400", "--prompt", "Hello",
               env={"SLOWTUNE_TEST_CHAT_INTERRUPT_AFTER": "3"})
    assert out.returncode == 130, out.stderr  # a one-shot answer that was stopped
    assert out.stdout.count(" [stopped]\n") == 2
    assert out.stdout.index("── tuned-Q8_0.gguf ──") < out.stdout.index("── tuned-F16.gguf ──")
    assert len(re.findall(r"· stopped\]$", out.stderr, re.MULTILINE)) == 2


class _Reader:
    """Collects a pipe's text in a thread, so a test can wait for a given text to appear."""

    def __init__(self, pipe: Any) -> None:
        self.text = ""
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: Any) -> None:
        while chunk := os.read(pipe.fileno(), 4096):
            with self._changed:
                self.text += chunk.decode("utf-8", "replace")
                self._changed.notify_all()

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.text.count(text) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"never saw {text!r} x{count} in {self.text!r}"
                self._changed.wait(left)


def _wait_until_blocked(pid: int, timeout: float = 30) -> None:
    """Until the process sleeps (in input()'s read): a SIGINT that lands between input() writing its prompt
    and starting to read is only noticed after the read returns, which in this test would be never."""
    stat = Path(f"/proc/{pid}/stat")
    if not stat.exists():  # not Linux: give input() a moment to start reading
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "S":
        assert time.monotonic() < deadline, "the chat never waited for input"
        time.sleep(0.01)


def test_ctrl_c_at_the_prompt_asks_to_press_again_then_ends_cleanly(files: Files) -> None:
    proc = subprocess.Popen([*_chat_argv(), str(files.f16), "--greedy", "--max-tokens", "4"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = _Reader(proc.stdout), _Reader(proc.stderr)
        stdout.wait_for("> ")  # written by input(), which then waits for a line
        _wait_until_blocked(proc.pid)
        proc.send_signal(signal.SIGINT)
        stderr.wait_for("press Ctrl-C again")
        stdout.wait_for("> ", count=2)
        _wait_until_blocked(proc.pid)
        assert proc.poll() is None  # one Ctrl-C did not end it
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        stderr._thread.join(timeout=10)
        assert "Traceback" not in stderr.text and "KeyboardInterrupt" not in stderr.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
