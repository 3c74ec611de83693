"""Chat sessions kept in a project: the models compared, the settings, every message with its figures.

A session is one conversation with one model, or with two side by side. System and user messages are stored
once, under slot 0, and belong to every model of the session; each assistant message carries the slot of the
model that wrote it (0: the model being tested, 1: the one beside it). So the conversation as one model saw
it is the shared messages plus that model's own answers, which is what :func:`export_jsonl` writes: one
line per model in the dataset's chat format (``{"messages": [{"role": ..., "content": ...}, ...]}``, mlx-lm's
chat format), ready to be read back as training or test data.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from slowtune.chat.model import ChatError
from slowtune.store import Project, dumps

ROLES = ("system", "user", "assistant")


class SessionError(ChatError):
    """A session that does not exist, or a message that cannot be stored."""


@dataclass
class ChatMessage:
    id: int
    slot: int
    role: str
    content: str
    stats: dict[str, Any] | None
    created_at: float


@dataclass
class ChatSession:
    id: int
    title: str
    models: list[dict[str, Any]]  # what ChatModel.describe() says, one per slot
    settings: dict[str, Any]  # sampling settings, system prompt, context size
    created_at: float
    updated_at: float
    message_count: int = 0
    messages: list[ChatMessage] = field(default_factory=list)  # empty in list_sessions()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def conversation(self, slot: int = 0) -> list[dict[str, str]]:
        """The messages as the model in ``slot`` saw them: shared system/user turns plus its own answers."""
        return [{"role": m.role, "content": m.content} for m in self.messages
                if m.role != "assistant" or m.slot == slot]


def create_session(project: Project, title: str, models: list[dict[str, Any]], settings: dict[str, Any]) -> int:
    """A new, empty session; returns its id."""
    if not models:
        raise SessionError("a chat session needs at least one model")
    now = time.time()
    with project.transaction() as conn:
        cursor = conn.execute(
            "INSERT INTO chat_sessions(title, models_json, settings_json, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (title.strip() or "Chat", dumps(models), dumps(settings), now, now),
        )
        return int(cursor.lastrowid or 0)


def add_message(project: Project, session_id: int, slot: int, role: str, content: str,
                stats: dict[str, Any] | None = None) -> int:
    """Store one message (system and user messages under slot 0); returns its id."""
    if role not in ROLES:
        raise SessionError(f"unknown message role {role!r}; expected one of {', '.join(ROLES)}")
    now = time.time()
    with project.transaction() as conn:
        session = conn.execute("SELECT models_json FROM chat_sessions WHERE id = ?", (session_id,)).fetchone()
        if session is None:
            raise SessionError(f"there is no chat session {session_id} in project {project.name}")
        if not 0 <= slot < len(json.loads(session["models_json"])):
            raise SessionError(f"chat session {session_id} has no model in slot {slot}")
        cursor = conn.execute(
            "INSERT INTO chat_messages(session_id, model_slot, role, content, stats_json, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, slot, role, content, dumps(stats) if stats is not None else None, now),
        )
        conn.execute("UPDATE chat_sessions SET updated_at = ? WHERE id = ?", (now, session_id))
        return int(cursor.lastrowid or 0)


def delete_messages(project: Project, session_id: int, message_ids: list[int]) -> None:
    """Remove messages of a session (a regenerated answer's earlier versions); ids of other sessions are left."""
    if not message_ids:
        return
    marks = ",".join("?" * len(message_ids))
    with project.transaction() as conn:
        conn.execute(f"DELETE FROM chat_messages WHERE session_id = ? AND id IN ({marks})",
                     (session_id, *message_ids))


def rename_session(project: Project, session_id: int, title: str) -> None:
    with project.transaction() as conn:
        done = conn.execute("UPDATE chat_sessions SET title = ?, updated_at = ? WHERE id = ?",
                            (title.strip() or "Chat", time.time(), session_id))
        if done.rowcount == 0:
            raise SessionError(f"there is no chat session {session_id} in project {project.name}")


def _session(row: Any, count: int, messages: list[ChatMessage]) -> ChatSession:
    return ChatSession(id=row["id"], title=row["title"], models=json.loads(row["models_json"]),
                       settings=json.loads(row["settings_json"]), created_at=row["created_at"],
                       updated_at=row["updated_at"], message_count=count, messages=messages)


def get_session(project: Project, session_id: int) -> ChatSession:
    """The session with all its messages, oldest first. Raises SessionError naming the id when absent."""
    row = project.conn.execute("SELECT * FROM chat_sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionError(f"there is no chat session {session_id} in project {project.name} "
                           "(slowtune chat --project ... --list-sessions lists them)")
    messages = [
        ChatMessage(id=m["id"], slot=m["model_slot"], role=m["role"], content=m["content"],
                    stats=json.loads(m["stats_json"]) if m["stats_json"] else None, created_at=m["created_at"])
        for m in project.conn.execute("SELECT * FROM chat_messages WHERE session_id = ? ORDER BY id", (session_id,))
    ]
    return _session(row, len(messages), messages)


def list_sessions(project: Project) -> list[ChatSession]:
    """Every session, most recently used first, without their messages (``message_count`` says how many)."""
    rows = project.conn.execute(
        "SELECT s.*, (SELECT count(*) FROM chat_messages m WHERE m.session_id = s.id) AS n "
        "FROM chat_sessions s ORDER BY s.updated_at DESC, s.id DESC"
    ).fetchall()
    return [_session(row, row["n"], []) for row in rows]


def delete_session(project: Project, session_id: int) -> None:
    """Remove a session and its messages."""
    with project.transaction() as conn:
        # Messages go with their session (ON DELETE CASCADE; the store turns foreign keys on).
        done = conn.execute("DELETE FROM chat_sessions WHERE id = ?", (session_id,))
        if done.rowcount == 0:
            raise SessionError(f"there is no chat session {session_id} in project {project.name}")


# --- exports ------------------------------------------------------------------------------------------------

def model_labels(models: list[dict[str, Any]]) -> list[str]:
    """A name per slot for people: the file name, with the slot letter added when two files share a name."""
    names = [str(m.get("name") or m.get("path") or f"model {i}") for i, m in enumerate(models)]
    if len(set(names)) < len(names):
        names = [f"{name} ({'AB'[i] if i < 2 else i})" for i, name in enumerate(names)]
    return names


def stats_line(stats: dict[str, Any] | None) -> str:
    """``12.3 tokens/s · first token 120 ms · 45 tokens`` (plus why it ended, when it did not end by itself)."""
    if not stats:
        return "no figures"
    parts = []
    if stats.get("tokens_per_s") is not None:
        parts.append(f"{stats['tokens_per_s']:.1f} tokens/s")
    if stats.get("ttft_ms") is not None:
        parts.append(f"first token {stats['ttft_ms']:.0f} ms")
    if stats.get("completion_tokens") is not None:
        parts.append(f"{stats['completion_tokens']} tokens")
    reason = stats.get("finish_reason")
    if reason == "cancelled":
        parts.append("stopped")
    elif reason == "length":
        parts.append("cut at the token limit")
    if stats.get("dropped_messages"):
        parts.append(f"{stats['dropped_messages']} older messages left out to fit the context")
    return " · ".join(parts)


def _settings_text(settings: dict[str, Any]) -> list[str]:
    sampling = settings.get("sampling") or {}
    shown = [f"{key.replace('_', ' ')} {value}" for key, value in sampling.items()
             if value is not None and key != "logit_bias"]
    lines = []
    if shown:
        lines.append("- Sampling: " + ", ".join(shown))
    for key, value in settings.items():
        if key not in ("sampling", "system") and value is not None:
            lines.append(f"- {key.replace('_', ' ').capitalize()}: {value}")
    return lines


def _quote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def export_markdown(project: Project, session_id: int) -> str:
    """The session for people to read: title, models, settings, then each turn with every model's answer
    under the model's name and its speed."""
    session = get_session(project, session_id)
    labels = model_labels(session.models)
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(session.created_at))
    lines = [f"# {session.title}", "", f"Chat session {session.id} in project {project.name}, started {started}.", ""]
    lines.append("## Models")
    lines.append("")
    for label, model in zip(labels, session.models, strict=True):
        details = [str(v) for v in (model.get("backend"), f"context {model['n_ctx']}" if model.get("n_ctx") else None,
                                    f"template: {model['template']}" if model.get("template") else None,
                                    f"LoRA: {model['lora']}" if model.get("lora") else None) if v]
        lines.append(f"- **{label}**: `{model.get('path', label)}`" + (f" ({', '.join(details)})" if details else ""))
    lines += ["", "## Settings", ""]
    lines += _settings_text(session.settings) or ["- defaults"]
    lines.append("")
    turn = 0
    for message in session.messages:
        if message.role == "system":
            lines += ["## System prompt", "", _quote(message.content), ""]
        elif message.role == "user":
            turn += 1
            lines += [f"## Turn {turn}", "", "**You:**", "", _quote(message.content), ""]
        else:
            label = labels[message.slot] if message.slot < len(labels) else f"slot {message.slot}"
            lines += [f"**{label}** ({stats_line(message.stats)}):", "", message.content.strip() or "*(no text)*", ""]
    return "\n".join(lines).rstrip() + "\n"


def export_jsonl(project: Project, session_id: int) -> str:
    """One ``{"messages": [...]}`` line per model (the dataset's chat format): the conversation as that model saw it."""
    session = get_session(project, session_id)
    lines = []
    for slot in range(len(session.models)):
        lines.append(json.dumps({"messages": session.conversation(slot)}, ensure_ascii=False))
    return "\n".join(lines) + "\n"
