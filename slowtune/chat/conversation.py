"""A chat on screen (the Chat page's): its models, its turns, answering a turn, and saving it as a session.

- :class:`Conversation` is the chat: the models it is with (by their files), its system prompt, its turns and the
  session (:mod:`slowtune.chat.sessions`) that saves it. :meth:`Conversation.history` is the conversation as one
  model saw it; :meth:`Conversation.save_turn` saves an answered turn (the session is made at the first one);
  :meth:`Conversation.from_session` reopens a saved chat.
- :func:`answer_turn` is what a job runs for one turn: every model answers its conversation (one model, or two
  decoding at once), the text so far goes out as progress, and a cancel stops the answers at the next token.

Nothing here knows about Qt: the page keeps a view per :class:`Turn`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slowtune.chat import sessions
from slowtune.chat.model import ChatModel, Sampling, stream_side_by_side
from slowtune.progress import Progress
from slowtune.store import Project

TITLE_CHARS = 60  # a saved chat is titled by the first line of its first message, cut to this length

ModelKey = tuple[str, str | None]  # a model by its files: (GGUF path, LoRA GGUF path or None), both resolved


def model_key(path: str | Path, lora: str | Path | None = None) -> ModelKey:
    """The key of a model file (and the LoRA applied to it): the paths made absolute, links resolved."""
    return str(Path(path).expanduser().resolve()), (str(Path(lora).expanduser().resolve()) if lora else None)


@dataclass(eq=False)  # a turn is itself: equal texts in two turns do not make them the same turn
class Turn:
    """One message and every model's answer to it (empty until answered), with the ids that save them."""

    user: str
    answers: list[str]
    stats: list[dict[str, Any] | None]  # AnswerStats as JSON, per model; None until answered
    user_id: int | None = None  # the saved user message
    answer_ids: list[int] = field(default_factory=list)  # the saved answers, by slot


@dataclass
class Conversation:
    """The chat on screen: which models it is with, its system prompt, its turns and the session saving it."""

    session_id: int | None = None
    title: str | None = None
    system: str | None = None
    keys: list[ModelKey] = field(default_factory=list)  # the models, by (path, lora)
    models: list[dict[str, Any]] = field(default_factory=list)  # ChatModel.describe(), per slot
    turns: list[Turn] = field(default_factory=list)

    def history(self, slot: int, before: Turn | None = None) -> list[dict[str, str]]:
        """The messages as the model in ``slot`` saw them, up to (not including) ``before``."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns:
            if turn is before:
                break
            messages += [{"role": "user", "content": turn.user},
                         {"role": "assistant", "content": turn.answers[slot] if slot < len(turn.answers) else ""}]
        return messages

    def save_turn(self, project: Project, turn: Turn, sampling: Sampling, *, context_tokens: int,
                  regenerated: bool) -> None:
        """Save an answered ``turn`` in the project. The first one makes the session (titled by the first message,
        with the sampling settings and the system prompt); a regenerated turn's new answers replace its old ones.
        Raises ChatError or sqlite3.Error when it cannot be saved."""
        if self.session_id is None:
            title = self.turns[0].user.strip().splitlines()[0][:TITLE_CHARS]
            settings = {"sampling": asdict(sampling), "system": self.system, "context_tokens": context_tokens}
            self.session_id = sessions.create_session(project, title, self.models, settings)
            self.title = title
            if self.system:
                sessions.add_message(project, self.session_id, 0, "system", self.system)
        session_id = self.session_id
        if regenerated and turn.answer_ids:
            sessions.delete_messages(project, session_id, turn.answer_ids)
        if turn.user_id is None:
            turn.user_id = sessions.add_message(project, session_id, 0, "user", turn.user)
        turn.answer_ids = [sessions.add_message(project, session_id, slot, "assistant", text, stats)
                           for slot, (text, stats) in enumerate(zip(turn.answers, turn.stats, strict=True))]

    @classmethod
    def from_session(cls, session: sessions.ChatSession) -> Conversation:
        """A saved chat, to show and go on with: its models, system prompt and turns with their saved ids."""
        chat = cls(session_id=session.id, title=session.title, models=list(session.models),
                   keys=[model_key(m.get("path", ""), m.get("lora")) for m in session.models])
        count = len(session.models)
        for message in session.messages:
            if message.role == "system":
                chat.system = message.content
            elif message.role == "user":
                chat.turns.append(Turn(message.content, ["" for _ in range(count)], [None for _ in range(count)],
                                       user_id=message.id, answer_ids=[]))
            elif chat.turns and message.slot < count:
                turn = chat.turns[-1]
                turn.answers[message.slot] = message.content
                turn.stats[message.slot] = message.stats
                turn.answer_ids.append(message.id)
        return chat


# --- answering -------------------------------------------------------------------------------------------------

@dataclass
class AnswerResult:
    texts: list[str]
    stats: list[dict[str, Any]]  # AnswerStats as JSON, per model; finish_reason "cancelled" when stopped


def stream_turn(models: list[ChatModel], conversations: list[list[dict[str, str]]], sampling: Sampling,
                cancel: Callable[[], bool]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(slot, chat.completion.chunk)`` from one model, or from two decoding at once."""
    if len(models) == 1:
        for part in models[0].stream(conversations[0], sampling, cancel=cancel):
            yield 0, part
    else:
        yield from stream_side_by_side(models, conversations, sampling, cancel=cancel)


def answer_turn(models: list[ChatModel], conversations: list[list[dict[str, str]]], sampling: Sampling,
                progress: Progress) -> AnswerResult:
    """One turn: every model answers its conversation; the text so far goes out as progress ("answer-<slot>",
    metrics ``slot`` and ``text``). A stop (the progress's cancel) ends the answers at the next token, and they are
    returned as they are."""
    texts = ["" for _ in models]
    pieces = [0 for _ in models]
    stats: list[dict[str, Any] | None] = [None for _ in models]
    for slot, part in stream_turn(models, conversations, sampling, lambda: progress.cancelled):
        choice = part["choices"][0]
        piece = choice["delta"].get("content")
        if piece:
            texts[slot] += piece
            pieces[slot] += 1
            progress.report(f"answer-{slot}", pieces[slot], None, slot=slot, text=texts[slot])
        if choice.get("finish_reason"):
            stats[slot] = part.get("slowtune_stats") or {"finish_reason": choice["finish_reason"]}
    return AnswerResult(texts, [s or {"finish_reason": "cancelled"} for s in stats])
