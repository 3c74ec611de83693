"""The Chat page's conversation without Qt: history per model, saving turns (a regenerated answer replaces the old
one), reopening a saved chat, and answering a turn as a job does (streamed text as progress, a stop keeps it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slowtune.chat import conversation, sessions
from slowtune.chat.conversation import Conversation, Turn, answer_turn, model_key
from slowtune.chat.model import Sampling
from slowtune.progress import Progress
from slowtune.store import Project

MODELS = [{"name": "tuned.gguf", "path": "/models/tuned.gguf"}, {"name": "base.gguf", "path": "/models/base.gguf"}]


def _answered(user: str, answers: list[str]) -> Turn:
    return Turn(user, answers, [{"finish_reason": "stop", "completion_tokens": 3} for _ in answers])


def test_each_model_sees_the_shared_turns_and_its_own_answers() -> None:
    chat = Conversation(system="Be brief.", models=MODELS)
    first, second = _answered("Hi", ["Hello", "Hey"]), _answered("Bye", ["Goodbye", "Later"])
    chat.turns += [first, second]
    assert chat.history(1) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hey"}, {"role": "user", "content": "Bye"},
                               {"role": "assistant", "content": "Later"}]
    assert chat.history(0, before=second)[-1] == {"role": "assistant", "content": "Hello"}
    assert first != _answered("Hi", ["Hello", "Hey"])  # a turn is itself, whatever it says


def test_saved_turns_reopen_as_they_were_and_a_regenerated_answer_replaces_the_old_one(tmp_path: Path) -> None:
    with Project.create(tmp_path / "p") as project:
        chat = Conversation(system="Be brief.", models=MODELS, keys=[model_key(m["path"]) for m in MODELS])
        turn = _answered("Where are the keys?\nAnd the tools?", ["In the shed.", "Ask Amira."])
        chat.turns.append(turn)
        chat.save_turn(project, turn, Sampling(seed=3), context_tokens=4096, regenerated=False)
        assert chat.title == "Where are the keys?"
        turn.answers = ["By the shed.", "Ask Pete."]
        chat.save_turn(project, turn, Sampling(seed=3), context_tokens=4096, regenerated=True)

        assert chat.session_id is not None
        saved = sessions.get_session(project, chat.session_id)
        assert [(m.role, m.slot, m.content) for m in saved.messages] == [
            ("system", 0, "Be brief."), ("user", 0, "Where are the keys?\nAnd the tools?"),
            ("assistant", 0, "By the shed."), ("assistant", 1, "Ask Pete.")]
        assert saved.settings["sampling"]["seed"] == 3 and saved.settings["context_tokens"] == 4096

        reopened = Conversation.from_session(saved)
        assert (reopened.session_id, reopened.title, reopened.system) == (chat.session_id, chat.title, "Be brief.")
        assert reopened.keys == chat.keys
        [again] = reopened.turns
        assert (again.user, again.answers, again.user_id, again.answer_ids) == (
            turn.user, turn.answers, turn.user_id, turn.answer_ids)
        assert again.stats == turn.stats


def _chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"delta": {"content": text} if text else {}, "finish_reason": finish}]}


def test_a_turn_streams_its_text_and_a_stop_keeps_what_was_written(monkeypatch: Any) -> None:
    def two_models(models: Any, conversations: Any, sampling: Any, cancel: Any) -> Iterator[tuple[int, Any]]:
        yield 0, _chunk("Hel")
        yield 1, _chunk("Hey")
        yield 0, _chunk("lo")
        yield 0, {**_chunk(None, "stop"), "slowtune_stats": {"finish_reason": "stop", "completion_tokens": 2}}
        # slot 1 never ends: it was stopped

    monkeypatch.setattr(conversation, "stream_turn", two_models)
    reports: list[tuple[str, dict[str, Any]]] = []
    progress = Progress(lambda event: reports.append((event.stage, dict(event.metrics))), min_interval=0)
    result = answer_turn([object(), object()], [[], []], Sampling(), progress)
    assert result.texts == ["Hello", "Hey"]
    assert result.stats == [{"finish_reason": "stop", "completion_tokens": 2}, {"finish_reason": "cancelled"}]
    assert ("answer-0", {"slot": 0, "text": "Hello"}) in reports and ("answer-1", {"slot": 1, "text": "Hey"}) in reports
