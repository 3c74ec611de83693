"""``slowtune chat``: talk to a GGUF model offline, alone or side by side with another one.

- ``slowtune chat MODEL.gguf --prompt TEXT``: one answer streamed to stdout, its figures on stderr
  (``--json``: the OpenAI-shaped result instead).
- ``slowtune chat MODEL.gguf``: an interactive session (``/reset``, ``/system TEXT``, ``/save``, ``/exit``).
  Ctrl-C while an answer streams stops that answer and keeps the session; Ctrl-C twice at the prompt ends it.
- ``--compare OTHER.gguf``: both models answer each message; the answers are shown one under the other.
- ``--project P``: the session and every message are saved in the project; ``--list-sessions`` and
  ``--export-session ID --format md|jsonl`` read them back.

Text goes to stdout, everything about the text (header, warnings, figures) to stderr, so that
``slowtune chat M --prompt ... > answer.txt`` keeps only the answer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

# Test-only: raise SIGINT (as a user's Ctrl-C would) once, after this many pieces of answer text, so that the
# stop-the-answer path can be tested deterministically rather than against the clock.
_INTERRUPT_HOOK = "SLOWTUNE_TEST_CHAT_INTERRUPT_AFTER"

HELP = ("Type a message. /reset starts over, /system TEXT sets the system prompt (and starts over), "
        "/save [TITLE] saves (with --project), /exit or Ctrl-D ends. Ctrl-C stops an answer.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", type=Path, metavar="MODEL.gguf", help="the GGUF model to chat with")
    p.add_argument("--prompt", help="ask this one message, print the answer and exit (default: interactive)")
    p.add_argument("--compare", type=Path, metavar="OTHER.gguf",
                   help="a second model (the base model, say) answering the same messages")
    p.add_argument("--lora", type=Path, metavar="ADAPTER.gguf", help="a GGUF LoRA adapter applied to MODEL")
    p.add_argument("--system", help="the system prompt")
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, help="0 to 5 (default 0.7)")
    g.add_argument("--top-p", type=float, help="above 0, at most 1 (default 0.95)")
    g.add_argument("--top-k", type=int, help="0 (off) or more (default 40)")
    g.add_argument("--repeat-penalty", type=float, help="1 is off (default 1.1)")
    g.add_argument("--max-tokens", type=int, help="the longest answer, in tokens (default 512)")
    g.add_argument("--seed", type=int, help="a fixed seed makes sampled answers repeatable")
    g.add_argument("--greedy", action="store_true",
                   help="always the most likely token: the same answer every time (other sampling options ignored)")
    p.add_argument("--ctx", type=int, default=4096, help="the context window, in tokens (default 4096)")
    s = p.add_argument_group("sessions")
    s.add_argument("--project", help="save the session in this project (a name or a folder)")
    s.add_argument("--title", help="the session's title (default: the first message)")
    s.add_argument("--list-sessions", action="store_true", help="list the project's saved chat sessions")
    s.add_argument("--export-session", type=int, metavar="ID", help="write a saved session out")
    s.add_argument("--format", choices=("md", "jsonl"), default="md",
                   help="export format: md (to read) or jsonl (one chat-format line per model)")
    s.add_argument("-o", "--output", type=Path, metavar="FILE", help="export to this file (default: stdout)")
    p.add_argument("--json", action="store_true", help="print OpenAI-shaped JSON instead of text")


def run(args: argparse.Namespace) -> int:
    from slowtune.chat.model import ChatError
    from slowtune.store import StoreError

    try:
        if args.list_sessions or args.export_session is not None:
            if args.output and Path(args.output).is_dir():
                print(f"slowtune chat: {args.output} is a folder; give a file name, e.g. "
                      f"{Path(args.output) / 'chat.md'}", file=sys.stderr)
                return 1
            return _sessions_command(args)
        return _chat_command(args)
    except (ChatError, StoreError) as exc:
        print(f"slowtune chat: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # while a model loads, say: answers handle Ctrl-C themselves
        print("\nslowtune chat: stopped", file=sys.stderr)
        return 130


# --- saved sessions -----------------------------------------------------------------------------------------

def _open_project(name: str) -> Any:
    from slowtune.store import Project, resolve_project_path

    return Project.open(resolve_project_path(name))


def _sessions_command(args: argparse.Namespace) -> int:
    from slowtune.chat import sessions
    from slowtune.fsutil import atomic_write_text

    if not args.project:
        what = "--list-sessions" if args.list_sessions else "--export-session"
        print(f"slowtune chat: {what} needs --project (the project the sessions were saved in)", file=sys.stderr)
        return 1
    with _open_project(args.project) as project:
        if args.list_sessions:
            found = sessions.list_sessions(project)
            if args.json:
                print(json.dumps([s.to_json() for s in found], indent=2, ensure_ascii=False))
                return 0
            if not found:
                print(f"No chat sessions in project {project.name} yet.", file=sys.stderr)
                return 0
            import time

            for s in found:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(s.updated_at))
                models = " vs ".join(sessions.model_labels(s.models))
                print(f"{s.id:>4}  {when}  {s.message_count:>3} messages  {models}  {s.title}")
            return 0
        if args.format == "md":
            text = sessions.export_markdown(project, args.export_session)
        else:
            text = sessions.export_jsonl(project, args.export_session)
    if args.output:
        try:
            atomic_write_text(args.output, text)
        except OSError as exc:
            print(f"slowtune chat: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"Session {args.export_session} written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# --- chatting -----------------------------------------------------------------------------------------------

def _sampling(args: argparse.Namespace) -> Any:
    from slowtune.chat.model import ChatError, Sampling

    given = {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k,
             "repeat_penalty": args.repeat_penalty, "seed": args.seed}
    if args.greedy:
        sampling = Sampling.greedy()
    else:
        sampling = Sampling(**{k: v for k, v in given.items() if v is not None})
    if args.max_tokens is not None:
        sampling.max_tokens = args.max_tokens
    try:
        sampling.validate()
    except ChatError as exc:
        raise ChatError(f"bad sampling setting: {exc}") from None
    return sampling


def _load(path: Path, args: argparse.Namespace, lora: Path | None = None) -> Any:
    from slowtune.chat.model import ChatModel

    return ChatModel(path, n_ctx=args.ctx, lora_path=lora)


def _header(model: Any) -> str:
    template = "from the GGUF" if model.template_source == "gguf" else "ChatML fallback"
    lora = f" + LoRA {model.lora_path.name}" if model.lora_path else ""
    return f"{model.name}{lora} · {model.backend} · context {model.n_ctx} tokens · chat template {template}"


def _chat_command(args: argparse.Namespace) -> int:
    from slowtune.chat.model import ChatError

    if args.model is None:
        print("slowtune chat: name a MODEL.gguf to chat with (or --project P with --list-sessions or "
              "--export-session ID)", file=sys.stderr)
        return 1
    if args.json and args.prompt is None:
        print("slowtune chat: --json needs --prompt (an interactive session prints text)", file=sys.stderr)
        return 1
    if args.title and not args.project:
        print("slowtune chat: --title needs --project (only saved sessions have titles)", file=sys.stderr)
        return 1
    sampling = _sampling(args)
    if args.ctx < 64:
        raise ChatError(f"--ctx must be at least 64 tokens (got {args.ctx})")
    if args.lora is not None and not args.lora.expanduser().is_file():
        raise ChatError(f"{args.lora}: no such LoRA adapter file")
    models = [_load(args.model, args, args.lora)]
    try:
        if args.compare is not None:
            models.append(_load(args.compare, args))
        for model in models:
            print(_header(model), file=sys.stderr)
            for warning in model.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        project = None
        if args.project:
            from slowtune.store import open_or_create

            project = open_or_create(args.project)
        try:
            chat = Chat(models, sampling, system=args.system, project=project, title=args.title)
            if args.prompt is not None:
                return _one_shot(chat, args)
            return _interactive(chat)
        finally:
            if project is not None:
                project.close()
    finally:
        for model in models:
            model.close()


def _one_shot(chat: Chat, args: argparse.Namespace) -> int:
    turn = chat.ask(args.prompt, show=not args.json)
    if args.json:
        results = []
        for model, answer in zip(chat.models, turn.answers, strict=True):
            result = answer.completion(model.name)
            result["slowtune_model"] = model.describe()
            if chat.session_id is not None:
                result["slowtune_session"] = chat.session_id
            results.append(result)
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2, ensure_ascii=False))
    if turn.error:
        return 1
    return 130 if turn.stopped else 0


def _interactive(chat: Chat) -> int:
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    # Python leaves SIGINT ignored when it started ignored (a child of a shell script or of a background job);
    # this session promises that Ctrl-C at the prompt works, so it installs the usual handler itself.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _conversation(chat)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _conversation(chat: Chat) -> int:
    print(HELP, file=sys.stderr)
    if chat.system:
        print(f"System prompt: {chat.system}", file=sys.stderr)
    ctrl_c_once = False
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            break
        except KeyboardInterrupt:
            if ctrl_c_once:
                print(file=sys.stderr)
                break
            ctrl_c_once = True
            print("\n(press Ctrl-C again, type /exit or press Ctrl-D to leave)", file=sys.stderr)
            continue
        ctrl_c_once = False
        try:
            if not _handle(chat, line.strip()):
                break
        except KeyboardInterrupt:  # outside an answer (saving, say): back to the prompt
            print("\n(interrupted)", file=sys.stderr)
    if chat.saved_sessions:
        ids = ", ".join(str(i) for i in chat.saved_sessions)
        print(f"Saved in project {chat.project.name}: session {ids}.", file=sys.stderr)
    return 0


def _handle(chat: Chat, text: str) -> bool:
    """One line typed at the prompt; False when it ends the session."""
    from slowtune.chat.model import ChatError

    if not text:
        return True
    if not text.startswith("/"):
        chat.ask(text)
        return True
    command, _, rest = text.partition(" ")
    if command in ("/exit", "/quit"):
        return False
    if command == "/reset":
        chat.reset()
        print("(conversation cleared)", file=sys.stderr)
    elif command == "/system":
        chat.set_system(rest.strip() or None)
        print(f"(system prompt {'set' if chat.system else 'removed'}; conversation cleared)", file=sys.stderr)
    elif command == "/save":
        try:
            print(chat.save(rest.strip() or None), file=sys.stderr)
        except ChatError as exc:
            print(f"slowtune chat: {exc}", file=sys.stderr)
    elif command == "/help":
        print(HELP, file=sys.stderr)
    else:
        print(f"unknown command {command}. {HELP}", file=sys.stderr)
    return True


@contextlib.contextmanager
def _ctrl_c_stops(cancel: threading.Event) -> Iterator[None]:
    """While an answer streams, Ctrl-C asks the models to stop at their next token (the answer then ends
    normally, marked stopped, with its figures); a second Ctrl-C raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Answer:
    """One model's answer to one message, as it streams."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.chunks: list[dict[str, Any]] = []
        self.stats: dict[str, Any] | None = None
        self.finished = False  # its last chunk (with the figures) has arrived
        self.shown = 0  # how many parts are already on the screen
        self.header_shown = False
        self.closed = False  # its end and figures are on the screen

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def completion(self, model: str) -> dict[str, Any]:
        from slowtune.chat.model import completion_from_chunks

        return completion_from_chunks(self.chunks, model=model)

    def final_stats(self) -> dict[str, Any]:
        # An answer cut off by a second Ctrl-C never got its last chunk: say at least that it was stopped.
        return self.stats or {"finish_reason": "cancelled", "completion_tokens": None}


class Turn:
    def __init__(self, count: int) -> None:
        self.answers = [Answer() for _ in range(count)]
        self.error: str | None = None
        self.stopped = False


class Chat:
    """A conversation with one model, or two side by side, shown on a terminal and saved when asked."""

    def __init__(self, models: list[Any], sampling: Any, *, system: str | None = None, project: Any = None,
                 title: str | None = None, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.models = models
        self.sampling = sampling
        self.project = project
        self.title = title
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.session_id: int | None = None
        self.saved_sessions: list[int] = []  # every session this chat wrote to its project
        self.system = system or None
        self.histories: list[list[dict[str, str]]] = []
        self.reset()
        hook = os.environ.get(_INTERRUPT_HOOK)
        self._interrupt_after = int(hook) if hook else None
        self._showing = True
        self._live = 0  # the model whose answer is printed as it comes; the other one is buffered
        self._pieces = 0

    def reset(self) -> None:
        """Start the conversation over (keeping the system prompt). A saved session ends here; the next
        message starts a new one."""
        start = [{"role": "system", "content": self.system}] if self.system else []
        self.histories = [list(start) for _ in self.models]
        self.session_id = None
        self._next_title = self.title

    def set_system(self, system: str | None) -> None:
        """A new system prompt belongs at the start of a conversation, so the conversation starts over."""
        self.system = system or None
        self.reset()

    def save(self, title: str | None = None) -> str:
        """What /save says: with a project every message is already saved; a title renames the session."""
        from slowtune.chat import sessions

        if self.project is None:
            return "(not saved: start the chat with --project NAME to keep sessions)"
        if self.session_id is None:
            self._next_title = title or self._next_title
            return "(nothing to save yet: the session is saved from its first message on)"
        if title:
            sessions.rename_session(self.project, self.session_id, title)
        return (f"(session {self.session_id} is saved in project {self.project.name}; "
                f"slowtune chat --project {shlex.quote(str(self.project.root))} --export-session {self.session_id} "
                "writes it out)")

    # --- one message -------------------------------------------------------------------------------------
    def ask(self, text: str, *, show: bool = True) -> Turn:
        from slowtune.chat.model import ChatError, stream_side_by_side

        user = {"role": "user", "content": text}
        conversations = [[*history, user] for history in self.histories]
        if not text.strip():
            raise ChatError("the message is empty")
        turn = Turn(len(self.models))
        self._showing = show
        self._live = 0
        self._pieces = 0
        cancel = threading.Event()
        try:
            with _ctrl_c_stops(cancel):
                if len(self.models) == 1:
                    parts = ((0, part) for part in self.models[0].stream(conversations[0], self.sampling,
                                                                         cancel=cancel))
                else:
                    parts = stream_side_by_side(self.models, conversations, self.sampling, cancel=cancel)
                for slot, part in parts:
                    self._receive(turn, slot, part)
        except KeyboardInterrupt:
            cancel.set()  # a second Ctrl-C: the answers end where they are
        except ChatError as exc:
            turn.error = str(exc)
            self._print_err(f"slowtune chat: {exc}")
            return turn
        turn.stopped = cancel.is_set() or any(a.final_stats().get("finish_reason") == "cancelled"
                                              for a in turn.answers)
        for slot in range(len(self.models)):  # whatever was not on the screen yet (stopped answers)
            self._finish_slot(turn, slot)
        for slot, answer in enumerate(turn.answers):
            self.histories[slot] += [user, {"role": "assistant", "content": answer.text}]
        self._save_turn(text, turn)
        return turn

    def _receive(self, turn: Turn, slot: int, part: dict[str, Any]) -> None:
        answer = turn.answers[slot]
        answer.chunks.append(part)
        choice = part["choices"][0]
        content = choice["delta"].get("content")
        if content:
            answer.parts.append(content)
            self._pieces += 1
            if slot == self._live:
                self._show_pending(slot, answer)
            if self._interrupt_after is not None and self._pieces >= self._interrupt_after:
                self._interrupt_after = None
                signal.raise_signal(signal.SIGINT)
        if choice.get("finish_reason"):
            answer.stats = part.get("slowtune_stats")
            answer.finished = True
            if slot == self._live:
                self._advance(turn)

    def _show_pending(self, slot: int, answer: Answer) -> None:
        if not self._showing:
            return
        if not answer.header_shown and len(self.models) > 1:
            answer.header_shown = True
            self.out.write(f"── {self.models[slot].name} ──\n")
        self.out.write("".join(answer.parts[answer.shown:]))
        answer.shown = len(answer.parts)
        self.out.flush()

    def _advance(self, turn: Turn) -> None:
        """The live answer is complete: close it, then show the next one (as far as it has come)."""
        while self._live < len(turn.answers) and turn.answers[self._live].finished:
            self._finish_slot(turn, self._live)
            self._live += 1
        if self._live < len(turn.answers):
            self._show_pending(self._live, turn.answers[self._live])

    def _finish_slot(self, turn: Turn, slot: int) -> None:
        from slowtune.chat.sessions import stats_line

        answer = turn.answers[slot]
        if answer.closed:
            return
        answer.closed = True
        if not self._showing:
            return
        self._show_pending(slot, answer)
        stats = answer.final_stats()
        self.out.write(" [stopped]\n" if stats.get("finish_reason") == "cancelled" else "\n")
        self.out.flush()
        name = f"{self.models[slot].name}: " if len(self.models) > 1 else ""
        self._print_err(f"[{name}{stats_line(stats)}]")
        if stats.get("dropped_messages"):
            self._print_err(f"(the {stats['dropped_messages']} oldest messages were left out: the conversation is "
                            f"longer than the {self.models[slot].n_ctx}-token context; /reset starts over)")

    def _print_err(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()

    def _save_turn(self, text: str, turn: Turn) -> None:
        from slowtune.chat import sessions

        if self.project is None:
            return
        if self.session_id is None:
            title = self._next_title or text.strip().splitlines()[0][:60]
            settings = {"sampling": asdict(self.sampling), "system": self.system,
                        "context_tokens": self.models[0].n_ctx}
            self.session_id = sessions.create_session(self.project, title, [m.describe() for m in self.models],
                                                      settings)
            self.saved_sessions.append(self.session_id)
            if self.system:
                sessions.add_message(self.project, self.session_id, 0, "system", self.system)
        sessions.add_message(self.project, self.session_id, 0, "user", text)
        for slot, answer in enumerate(turn.answers):
            sessions.add_message(self.project, self.session_id, slot, "assistant", answer.text, answer.final_stats())
