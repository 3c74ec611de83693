"""The chat engine on tiny random GGUFs: streaming and its OpenAI shapes, greedy determinism, cancel, context
fitting, the ChatML fallback, system-prompt folding, two models side by side, sessions and their exports, and
proof that a whole chat stays on this machine.

Random weights write gibberish, so the tests check mechanics (order, counts, figures, what the prompt holds),
never what the answers say.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from slowtune.chat import sessions
from slowtune.chat.model import (
    ChatError,
    ChatModel,
    Sampling,
    _StopScanner,
    completion_from_chunks,
    stream_side_by_side,
)
from slowtune.store import Project

NO_SYSTEM_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QUESTION = [{"role": "system", "content": "You answer from the pump manual."},
            {"role": "user", "content": "How often are the valves checked?"}]


@dataclass
class Ggufs:
    f16: Path
    q8: Path
    no_template: Path
    no_system: Path
    broken_template: Path


@pytest.fixture(scope="module")
def ggufs(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Ggufs:
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.export.quantize import quantize

    out = tmp_path_factory.mktemp("chat-ggufs")
    f16 = write_gguf(tiny_qwen2, out / "tuned-F16.gguf", out_type="f16")
    return Ggufs(
        f16=f16,
        q8=quantize(f16, out / "tuned-Q8_0.gguf", "Q8_0"),
        no_template=write_gguf(tiny_qwen2, out / "plain.gguf", out_type="f16", chat_template=""),
        no_system=write_gguf(tiny_qwen2, out / "nosys.gguf", out_type="f16", chat_template=NO_SYSTEM_TEMPLATE),
        broken_template=write_gguf(tiny_qwen2, out / "broken.gguf", out_type="f16", chat_template="{% for %}"),
    )


@pytest.fixture(scope="module")
def model(ggufs: Ggufs) -> Any:
    with ChatModel(ggufs.f16, n_ctx=1024) as m:
        yield m


def _no_end(model: ChatModel, max_tokens: int) -> Sampling:
    """Greedy, with every end-of-turn token banned: the answer is exactly ``max_tokens`` long."""
    banned = {model.llm.token_eos(), *model._stop_ids}
    sampling = Sampling.greedy(max_tokens)
    sampling.logit_bias = {t: float("-inf") for t in banned if t >= 0}
    return sampling


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


# --- one model ---------------------------------------------------------------------------------------------


def test_stream_yields_openai_chunks_in_order_with_figures(model: ChatModel) -> None:
    chunks = list(model.stream(QUESTION, _no_end(model, 12)))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["model"] == "tuned-F16.gguf" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    middle = chunks[1:-1]
    assert middle and all(set(c["choices"][0]["delta"]) == {"content"} for c in middle)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    stats = final["slowtune_stats"]
    assert stats["completion_tokens"] == 12  # counted token by token, not re-tokenized from the text
    assert stats["prompt_tokens"] > 10 and stats["dropped_messages"] == 0 and stats["finish_reason"] == "length"
    assert stats["ttft_ms"] > 0 and stats["tokens_per_s"] > 0 and stats["total_ms"] >= stats["ttft_ms"]
    assert "slowtune_stats" not in chunks[0]


def test_chat_returns_a_chat_completion(model: ChatModel) -> None:
    result = model.chat(QUESTION, _no_end(model, 8))
    assert result["object"] == "chat.completion"
    assert result["choices"][0]["message"]["role"] == "assistant"
    assert result["choices"][0]["finish_reason"] == "length"
    assert result["usage"]["completion_tokens"] == 8
    assert result["usage"]["total_tokens"] == result["usage"]["prompt_tokens"] + 8
    assert result["slowtune_stats"]["completion_tokens"] == 8


def test_greedy_is_deterministic_and_samples_as_create_completion_does(model: ChatModel, ggufs: Ggufs) -> None:
    sampling = _no_end(model, 24)
    first = model.chat(QUESTION, sampling)["choices"][0]["message"]["content"]
    assert model.chat(QUESTION, sampling)["choices"][0]["message"]["content"] == first
    with ChatModel(ggufs.f16, n_ctx=1024) as fresh:  # a fresh load (no KV cache to reuse) agrees too
        assert fresh.chat(QUESTION, sampling)["choices"][0]["message"]["content"] == first
    # The engine's own token loop picks the same tokens as llama-cpp-python's create_completion.
    ids, _ = model.fit(QUESTION, 24)
    raw = model.llm.create_completion(ids, max_tokens=24, temperature=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                                      seed=0, logit_bias=sampling.logit_bias)
    assert raw["usage"]["completion_tokens"] == 24
    # create_completion drops bytes that are not UTF-8 where the engine shows U+FFFD; the rest is the same.
    assert raw["choices"][0]["text"] == first.replace("\ufffd", "")


def test_sampled_answers_repeat_with_a_seed(model: ChatModel) -> None:
    sampling = Sampling(temperature=1.0, seed=7, max_tokens=16)
    a = model.chat(QUESTION, sampling)["choices"][0]["message"]["content"]
    assert model.chat(QUESTION, sampling)["choices"][0]["message"]["content"] == a


def test_cancel_stops_mid_answer_with_the_partial_text(model: ChatModel) -> None:
    cancel = threading.Event()
    chunks = []
    for part in model.stream(QUESTION, _no_end(model, 200), cancel=cancel):
        chunks.append(part)
        if len([c for c in chunks if c["choices"][0]["delta"].get("content")]) == 3:
            cancel.set()
    final = chunks[-1]
    assert final["choices"][0]["finish_reason"] == "cancelled"
    assert final["slowtune_stats"]["finish_reason"] == "cancelled"
    assert 3 <= final["slowtune_stats"]["completion_tokens"] < 10
    assert _text(chunks)
    # The model is free again at once: the next answer runs normally.
    assert model.chat(QUESTION, _no_end(model, 4))["usage"]["completion_tokens"] == 4


def test_closing_the_stream_early_frees_the_model(model: ChatModel) -> None:
    stream = model.stream(QUESTION, _no_end(model, 200))
    next(stream), next(stream)
    stream.close()
    assert model.chat(QUESTION, _no_end(model, 3))["usage"]["completion_tokens"] == 3


def test_a_cancel_flag_set_before_the_answer_gives_an_empty_cancelled_answer(model: ChatModel) -> None:
    result = model.chat(QUESTION, _no_end(model, 50), cancel=lambda: True)
    assert result["choices"][0]["finish_reason"] == "cancelled"
    assert result["choices"][0]["message"]["content"] == "" and result["usage"]["completion_tokens"] == 0


def test_bad_sampling_values_are_refused_by_name(model: ChatModel) -> None:
    for bad, word in ((Sampling(temperature=-1), "temperature"), (Sampling(top_p=0), "top-p"),
                      (Sampling(top_k=-2), "top-k"), (Sampling(max_tokens=0), "max tokens"),
                      (Sampling(repeat_penalty=0), "repeat penalty")):
        with pytest.raises(ChatError, match=word):
            list(model.stream(QUESTION, bad))


# --- the context window ----------------------------------------------------------------------------------


def _long_conversation(exchanges: int) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": "SYSTEM-KEEP you answer about the reservoir."}]
    for i in range(exchanges):
        messages.append({"role": "user", "content": f"Question {i}: how much water flows through valve {i} today?"})
        messages.append({"role": "assistant", "content": f"Answer {i}: valve {i} carries the usual morning flow."})
    messages.append({"role": "user", "content": "LAST-QUESTION what is the pressure now?"})
    return messages


def test_old_turns_are_dropped_to_fit_and_the_system_prompt_is_kept(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=256) as small:
        assert small.n_ctx == 256  # llama.cpp rounds the window up to a multiple of 256
        messages = _long_conversation(12)
        assert len(small.tokens(small._render(messages))) > 256
        ids, dropped = small.fit(messages, 16)
        assert dropped > 0 and dropped % 2 == 0  # whole exchanges, so the roles still alternate
        assert len(ids) + 16 <= 256
        prompt = small.llm.detokenize(ids, special=True).decode()
        assert "SYSTEM-KEEP" in prompt and "LAST-QUESTION" in prompt
        assert "Question 0:" not in prompt and "Question 11:" in prompt  # the newest turns stay
        final = list(small.stream(messages, _no_end(small, 16)))[-1]
        assert final["slowtune_stats"]["dropped_messages"] == dropped
        assert final["slowtune_stats"]["prompt_tokens"] == len(ids)


def test_a_message_longer_than_the_context_is_refused(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=256) as small, pytest.raises(ChatError, match=r"context window of tuned-F16\.gguf"):
        list(small.stream([{"role": "user", "content": "valve pressure " * 200}], Sampling.greedy(8)))


def test_the_answer_is_cut_at_the_end_of_the_context(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=256) as small:
        result = small.chat([{"role": "user", "content": "Hello"}], _no_end(small, 500))
        assert result["choices"][0]["finish_reason"] == "length"
        assert result["usage"]["total_tokens"] == 256


# --- templates -------------------------------------------------------------------------------------------


def test_a_gguf_without_a_chat_template_gets_chatml_with_a_warning(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.no_template) as plain:
        assert plain.template_source == "fallback" and plain.describe()["template"] == "fallback"
        assert len(plain.warnings) == 1 and "no chat template" in plain.warnings[0]
        assert "ChatML" in plain.warnings[0] and "plain.gguf" in plain.warnings[0]
        assert "<|im_end|>" in plain.stop
        assert plain.chat(QUESTION, Sampling.greedy(4))["usage"]["completion_tokens"] <= 4
    with ChatModel(ggufs.f16) as tuned:
        assert tuned.template_source == "gguf" and tuned.warnings == []


def test_a_template_without_a_system_role_gets_the_system_prompt_folded_into_the_first_turn(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.no_system) as m:
        result = m.chat(QUESTION, _no_end(m, 4))
        assert result["usage"]["completion_tokens"] == 4
        ids, _ = m.fit(QUESTION, 4)
        prompt = m.llm.detokenize(ids, special=True).decode()
        assert "<|im_start|>system" not in prompt
        assert "<|im_start|>user\nYou answer from the pump manual.\n\nHow often are the valves checked?" in prompt


def test_a_broken_template_or_file_is_a_clear_error(ggufs: Ggufs, tmp_path: Path) -> None:
    with pytest.raises(ChatError, match=r"broken\.gguf.*chat template"):
        ChatModel(ggufs.broken_template)
    with pytest.raises(ChatError, match="no such model file"):
        ChatModel(tmp_path / "missing.gguf")
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(ChatError, match=r"notes\.gguf: not a GGUF"):
        ChatModel(text)


def test_the_stop_scanner_cuts_at_a_stop_string_and_holds_back_only_possible_starts() -> None:
    scanner = _StopScanner(["<|im_end|>"])
    assert scanner.feed("The valve") == ("The valve", False)
    assert scanner.feed(" is open <|im") == (" is open ", False)  # may be the start of the marker
    assert scanner.feed("_end|> and more") == ("", True)
    scanner = _StopScanner(["<|im_end|>"])
    assert scanner.feed("a <") == ("a ", False)
    assert scanner.feed("b") == ("<b", False)  # it was not the marker after all
    assert scanner.feed("<|") == ("", False) and scanner.flush() == "<|"


def test_completion_from_chunks_marks_an_unfinished_stream_as_cancelled() -> None:
    chunks = [{"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"role": "assistant"},
                                                                     "finish_reason": None}]},
              {"id": "x", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": "Hi"},
                                                                     "finish_reason": None}]}]
    result = completion_from_chunks(chunks)
    assert result["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": "Hi"},
                                    "finish_reason": "cancelled"}


# --- two models side by side -----------------------------------------------------------------------------


def test_side_by_side_streams_both_models_interleaved(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=512) as tuned, ChatModel(ggufs.q8, n_ctx=512) as base:
        events = list(stream_side_by_side([tuned, base], QUESTION, _no_end(tuned, 48)))
    by_slot: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for slot, chunk in events:
        by_slot[slot].append(chunk)
    for slot, chunks in by_slot.items():
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}, slot
        assert chunks[-1]["choices"][0]["finish_reason"] == "length", slot
        assert chunks[-1]["slowtune_stats"]["completion_tokens"] == 48, slot
        assert sum(1 for c in chunks if "slowtune_stats" in c) == 1
    assert by_slot[0][0]["model"] == "tuned-F16.gguf" and by_slot[1][0]["model"] == "tuned-Q8_0.gguf"
    # Both ran at once: the second model had started before the first one finished.
    order = [(slot, "slowtune_stats" in chunk) for slot, chunk in events]
    assert order.index((1, False)) < order.index((0, True))
    assert order.index((0, False)) < order.index((1, True))


def test_side_by_side_takes_one_conversation_per_model_and_cancels_both(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=512) as a, ChatModel(ggufs.no_template, n_ctx=512) as b:
        own = [[*QUESTION, {"role": "assistant", "content": "first"}, {"role": "user", "content": "And then?"}],
               [*QUESTION, {"role": "assistant", "content": "other"}, {"role": "user", "content": "And then?"}]]
        cancel = threading.Event()
        finals = {}
        for slot, chunk in stream_side_by_side([a, b], own, _no_end(a, 400), cancel=cancel):
            if chunk["choices"][0]["delta"].get("content"):
                cancel.set()
            if "slowtune_stats" in chunk:
                finals[slot] = chunk["slowtune_stats"]
        assert set(finals) == {0, 1}
        assert all(f["finish_reason"] == "cancelled" and f["completion_tokens"] < 400 for f in finals.values())
        with pytest.raises(ChatError, match="3 conversations for 2 models"):
            list(stream_side_by_side([a, b], [QUESTION, QUESTION, QUESTION]))


def test_closing_side_by_side_early_stops_both_models(ggufs: Ggufs) -> None:
    with ChatModel(ggufs.f16, n_ctx=512) as a, ChatModel(ggufs.q8, n_ctx=512) as b:
        events = stream_side_by_side([a, b], QUESTION, _no_end(a, 400))
        next(events)
        events.close()  # joins both threads, which stop at their next token
        assert a.last_stats.finish_reason == "cancelled" and b.last_stats.finish_reason == "cancelled"


# --- sessions --------------------------------------------------------------------------------------------


MODELS = [{"name": "tuned-Q8_0.gguf", "path": "/m/tuned-Q8_0.gguf", "backend": "CPU", "n_ctx": 4096,
           "template": "gguf", "lora": None},
          {"name": "base-F16.gguf", "path": "/m/base-F16.gguf", "backend": "CPU", "n_ctx": 4096,
           "template": "gguf", "lora": None}]
STATS = {"prompt_tokens": 20, "completion_tokens": 7, "ttft_ms": 42.0, "tokens_per_s": 31.25, "total_ms": 250.0,
         "finish_reason": "stop", "dropped_messages": 0}


def _saved_session(project: Project) -> int:
    sid = sessions.create_session(project, "Pump questions", MODELS, {"sampling": {"temperature": 0.0}, "system": "S"})
    sessions.add_message(project, sid, 0, "system", "Answer from the manual.")
    sessions.add_message(project, sid, 0, "user", "How often are valves checked?")
    sessions.add_message(project, sid, 0, "assistant", "Every spring.", STATS)
    sessions.add_message(project, sid, 1, "assistant", "Valves are checked.", {**STATS, "tokens_per_s": 12.5})
    sessions.add_message(project, sid, 0, "user", "Who logs it?")
    sessions.add_message(project, sid, 0, "assistant", "The engineer on duty", {**STATS, "finish_reason": "cancelled"})
    sessions.add_message(project, sid, 1, "assistant", "A log.", STATS)
    return sid


def test_sessions_round_trip(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        sid = _saved_session(project)
        other = sessions.create_session(project, "  ", MODELS[:1], {})
        session = sessions.get_session(project, sid)
        assert session.title == "Pump questions" and session.models == MODELS
        assert session.settings == {"sampling": {"temperature": 0.0}, "system": "S"}
        assert [(m.slot, m.role) for m in session.messages] == [
            (0, "system"), (0, "user"), (0, "assistant"), (1, "assistant"), (0, "user"), (0, "assistant"),
            (1, "assistant")]
        assert session.messages[2].stats == STATS and session.messages[1].stats is None
        assert session.conversation(1) == [
            {"role": "system", "content": "Answer from the manual."},
            {"role": "user", "content": "How often are valves checked?"},
            {"role": "assistant", "content": "Valves are checked."},
            {"role": "user", "content": "Who logs it?"}, {"role": "assistant", "content": "A log."}]
        listed = sessions.list_sessions(project)
        assert [s.id for s in listed] == [other, sid]  # most recently used first
        assert [s.message_count for s in listed] == [0, 7] and listed[0].title == "Chat" and listed[1].messages == []
        json.dumps([s.to_json() for s in listed])  # plain data, for --json and the GUI
        sessions.rename_session(project, other, "Renamed")
        assert sessions.get_session(project, other).title == "Renamed"
        sessions.delete_session(project, sid)
        assert project.conn.execute("SELECT count(*) FROM chat_messages").fetchone()[0] == 0
        with pytest.raises(sessions.SessionError, match="no chat session 1 "):
            sessions.get_session(project, sid)
        with pytest.raises(sessions.SessionError, match=f"no chat session {sid}"):
            sessions.delete_session(project, sid)


def test_session_writes_are_checked(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        sid = sessions.create_session(project, "t", MODELS[:1], {})
        with pytest.raises(sessions.SessionError, match="no chat session 999"):
            sessions.add_message(project, 999, 0, "user", "hi")
        with pytest.raises(sessions.SessionError, match="role 'tool'"):
            sessions.add_message(project, sid, 0, "tool", "hi")
        with pytest.raises(sessions.SessionError, match="no model in slot 1"):
            sessions.add_message(project, sid, 1, "assistant", "hi")
        with pytest.raises(sessions.SessionError, match="at least one model"):
            sessions.create_session(project, "t", [], {})
        assert sessions.get_session(project, sid).messages == []  # nothing half-written


def test_markdown_export_labels_each_answer_with_its_model_and_speed(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        text = sessions.export_markdown(project, _saved_session(project))
    assert text.startswith("# Pump questions\n")
    assert "**tuned-Q8_0.gguf**: `/m/tuned-Q8_0.gguf`" in text and "**base-F16.gguf**" in text
    assert "temperature 0.0" in text
    assert "## System prompt\n\n> Answer from the manual." in text
    assert "## Turn 1" in text and "## Turn 2" in text and "> Who logs it?" in text
    assert "**tuned-Q8_0.gguf** (31.2 tokens/s · first token 42 ms · 7 tokens):\n\nEvery spring." in text
    assert "**base-F16.gguf** (12.5 tokens/s" in text
    assert "stopped):\n\nThe engineer on duty" in text
    assert text.index("Every spring.") < text.index("Valves are checked.") < text.index("Who logs it?")


def test_markdown_export_tells_apart_two_models_with_the_same_file_name(tmp_path: Path) -> None:
    same = [dict(MODELS[0]), {**MODELS[0], "path": "/other/tuned-Q8_0.gguf"}]
    assert sessions.model_labels(same) == ["tuned-Q8_0.gguf (A)", "tuned-Q8_0.gguf (B)"]


def test_jsonl_export_has_one_chat_line_per_model(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        lines = sessions.export_jsonl(project, _saved_session(project)).splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 2 and all(set(r) == {"messages"} for r in rows)
    assert [m["content"] for m in rows[0]["messages"]] == [
        "Answer from the manual.", "How often are valves checked?", "Every spring.", "Who logs it?",
        "The engineer on duty"]
    assert [m["role"] for m in rows[1]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rows[1]["messages"][2]["content"] == "Valves are checked."


# --- the chat stays on this machine ----------------------------------------------------------------------


class _NetworkGuard:
    """Refuses, and records, every connection (and name lookup) to anything but the loopback interface."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []
        real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
        real_create, real_getaddrinfo = socket.create_connection, socket.getaddrinfo
        guard = self

        def check(address: Any) -> None:
            host = address[0] if isinstance(address, tuple) else address
            if isinstance(host, (bytes, bytearray)):
                host = host.decode()
            if isinstance(host, str) and host.startswith("/"):
                return  # a Unix socket
            if host not in ("127.0.0.1", "::1", "localhost"):
                guard.attempts.append(str(address))
                raise OSError(f"test: no network outside this machine ({address})")

        def connect(sock: socket.socket, address: Any) -> None:
            check(address)
            return real_connect(sock, address)

        def connect_ex(sock: socket.socket, address: Any) -> int:
            check(address)
            return real_connect_ex(sock, address)

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
            check(address)
            return real_create(address, *args, **kwargs)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            if host is not None:
                check((host, 0))
            return real_getaddrinfo(host, *args, **kwargs)

        monkeypatch.setattr(socket.socket, "connect", connect)
        monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
        monkeypatch.setattr(socket, "create_connection", create_connection)
        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_whole_chat_makes_no_network_connection(ggufs: Ggufs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from slowtune.chat import command

    guard = _NetworkGuard(monkeypatch)
    # The guard does see a connection attempt, so an empty record below means something.
    with pytest.raises(OSError, match="no network"):
        socket.create_connection(("203.0.113.7", 443), timeout=0.1)
    assert guard.attempts == ["('203.0.113.7', 443)"]
    guard.attempts.clear()

    with ChatModel(ggufs.q8, n_ctx=512) as tuned, ChatModel(ggufs.f16, n_ctx=512) as base:
        assert tuned.chat(QUESTION, Sampling.greedy(8))["choices"][0]["message"]["role"] == "assistant"
        events = list(stream_side_by_side([tuned, base], QUESTION, Sampling(max_tokens=8, seed=1)))
        assert {slot for slot, _ in events} == {0, 1}
    with Project.create(tmp_path / "p") as project:
        sid = _saved_session(project)
        sessions.export_markdown(project, sid)
        sessions.export_jsonl(project, sid)
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args([str(ggufs.q8), "--compare", str(ggufs.f16), "--prompt", "Hello", "--max-tokens", "6",
                              "--project", str(tmp_path / "q")])
    assert command.run(args) == 0
    assert "tuned-Q8_0.gguf" in capsys.readouterr().err
    assert guard.attempts == []
