"""A fake teacher: a real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions API.

Why a real server: the teacher client is the real ``openai`` package, and what breaks in practice is on the
wire (status codes, ``retry-after`` headers, dropped connections, timeouts, half-written JSON). A mocked
client would test none of that. This server answers deterministically from the prompt text of
``slowtune.teacher.prompts`` (same request, same reply), so tests can check what the pipeline does with
the answers, and faults can be switched on per call number or per task.

Used by the test suite (in-process: ``with FakeTeacher() as t: ... t.base_url``) and by
``slowtune bench teacher`` (out of process: ``python -m slowtune.testing.fake_openai`` prints
``URL <base_url>``; the ``/_control/...`` endpoints read stats and set faults over HTTP).

Standard library only, so importing it costs nothing and it runs wherever slowtune runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import re
import signal
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FAULT_KINDS", "FakeTeacher", "Fault", "fingerprint", "main"]

FAULT_KINDS = (
    "rate_limit",
    "server_error",
    "slow",
    "malformed",
    "truncated",
    "empty",
    "wrong_schema",
    "unauthorized",
    "drop",
)

INJECTION_PHRASE = "ignore previous instructions"
MALFORMED_TEXT = "Sure! Here are some questions about the text."
REFUSAL_ANSWER = "The documents do not cover that, so I can't say."
# Real models put a sentence before a fenced block when they are not forced into JSON mode.
TEXT_MODE_PREAMBLE = "Here is the JSON you asked for."

# The question types of slowtune.teacher.prompts (QTYPES), in its order; this module imports nothing of slowtune's,
# and tests/test_fake_openai.py checks that the two stay equal.
QTYPES = ("fact", "reasoning", "multi_turn", "refusal")
# The ways the facts task asks about each fact (slowtune.teacher.prompts.FACT_KINDS, checked equal as QTYPES is).
FACT_KINDS = ("direct", "reversed", "context", "combination")
# Syllables of the names the fake invents for near-miss entities: four of them, drawn by a hash of the chunk, make a
# name no test corpus uses (the corpus check must find it nowhere).
_NAME_SYLLABLES = ("quor", "vel", "dran", "mib", "tal", "zen", "brox", "kes", "lun", "fey", "gar", "osk", "rin",
                   "thal", "wyv", "xan")
# The schema limits of slowtune.teacher.prompts: a long sentence is cut to them, as a model obeying the
# schema would, so the fake's answers always validate.
_MAX_QUESTION = 400
_MAX_ANSWER = 1500
_MAX_QUOTE = 600

_BEGIN_RE = re.compile(r"^=====BEGIN DOCUMENT (\S+)=====$", re.MULTILINE)
_COUNT_RE = re.compile(r"^- (\w+): (\d+) \(", re.MULTILINE)
_MAX_FACTS_RE = re.compile(r"^List the excerpt's atomic facts: at most (\d+)\.", re.MULTILINE)
_NEAR_MISSES_RE = re.compile(r"^Near-miss questions: exactly (\d+)\.", re.MULTILINE)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+")
# Where a sentence cannot run on: a blank line, a Markdown heading line (dropped, being no sentence) or the start
# of a list item; and the list item's mark, which is no part of its sentence.
_BLOCK_SPLIT_RE = re.compile(
    r"\n[ \t]*\n|^[ \t]{0,3}#{1,6}(?:[ \t].*)?$|\n(?=[ \t]*(?:[-*+]|\d+[.)])[ \t])", re.MULTILINE
)
_LIST_MARK_RE = re.compile(r"^(?:[-*+]|\d+[.)])[ \t]+")
# The JSON payloads of judge, rephrase and grade: data, like the document block, never read for instructions.
_PAYLOAD_MARKERS = ("Candidates (JSON):", "Questions (JSON):", "Answers (JSON):")


@dataclass
class Fault:
    """One switchable misbehaviour; see ``FAULT_KINDS``.

    Which calls it hits: chat-completion call numbers ``n`` (1-based, counted over all chat calls since the
    last ``reset_stats``) with ``n % every == 0``, or ``n in calls``, or ``n <= first`` (any of those that are
    set); with none of them set, every call. ``task`` narrows it to one task, and then ``n`` counts the calls
    of that task only. ``first_attempt_only`` narrows it to the first attempt at a request since the faults
    were set: a retry of the same request, or a repair turn appended to it, goes through.
    """

    kind: str
    every: int | None = None
    calls: frozenset[int] | None = None
    first: int | None = None
    task: str | None = None
    retry_after: float = 1.0
    delay: float = 0.0
    first_attempt_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if self.every is not None and self.every < 1:
            raise ValueError("Fault.every must be at least 1")
        if self.calls is not None:
            # Accept any iterable (a JSON list from the control endpoint) but keep a frozenset.
            self.calls = frozenset(int(c) for c in self.calls)

    def applies_to(self, n: int, task: str | None, n_in_task: int) -> bool:
        """Whether a call is hit: the ``n``-th chat call, the ``n_in_task``-th of its ``task``
        (``first_attempt_only`` is the server's to check)."""
        if self.task is not None:
            if self.task != task:
                return False
            # Numbered among the calls of that task: in a concurrent run the other tasks interleave
            # unpredictably, and "the first generate call" should mean just that.
            n = n_in_task
        selectors = (self.every, self.calls, self.first)
        if all(s is None for s in selectors):
            return True
        return (
            (self.every is not None and n % self.every == 0)
            or (self.calls is not None and n in self.calls)
            or (self.first is not None and n <= self.first)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, the form ``POST /_control/faults`` takes."""
        data = asdict(self)
        data["calls"] = sorted(self.calls) if self.calls is not None else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Fault fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))


def fingerprint(body: Mapping[str, Any]) -> str:
    """What identifies a request in the ``paid`` list: its model and messages (sampling settings left out)."""
    key = json.dumps(
        {"model": body["model"], "messages": body["messages"]}, sort_keys=True, ensure_ascii=False
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _attempt_key(body: Mapping[str, Any]) -> str:
    """What ``first_attempt_only`` compares: the fingerprint of the request up to its task message, so a
    repair turn the client appends after a bad answer counts as a retry of the same request."""
    messages = body["messages"]
    for i, m in enumerate(messages):
        if (
            isinstance(m, dict)
            and m.get("role") == "user"
            and _text_of(m.get("content")).lstrip().startswith("Task:")
        ):
            return fingerprint({"model": body["model"], "messages": messages[: i + 1]})
    return fingerprint(body)


def _tokens(chars: int) -> int:
    # About four characters a token: good enough for cost accounting in tests.
    return math.ceil(chars / 4)


def _text_of(content: Any) -> str:
    """A message's text; content may be a string or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _error(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_AUTH_ERROR = _error("Incorrect API key provided.", "invalid_request_error", code="invalid_api_key")
_SERVER_ERROR = _error(
    "The server had an error while processing your request. Sorry about that!", "server_error"
)


# ---------------------------------------------------------------------------------------------------------
# Reading the prompt


@dataclass
class _Prompt:
    """What the fake reads from one chat request."""

    task: str | None  # from the ``Task:`` line, None for probes and connectivity tests
    instructions: str  # the user message outside the document block and the JSON payload
    document: str | None  # the text between the BEGIN line and the END line with the same tag
    payload: Any  # the parsed JSON after ``Candidates (JSON):`` / ``Questions (JSON):``


def _split_block(content: str) -> tuple[str, str | None, str]:
    """(before, document, after). Only an END line carrying the BEGIN line's tag closes the block, so a forged
    END line with another tag inside the document stays document text."""
    begin = _BEGIN_RE.search(content)
    if begin is None:
        return content, None, ""
    tag = begin.group(1)
    start = begin.end() + 1 if content[begin.end() : begin.end() + 1] == "\n" else begin.end()
    end_line = f"=====END DOCUMENT {tag}====="
    end = content.find("\n" + end_line, start - 1)
    if end < 0:  # never closed: the rest is the document, as a careful model would read it
        return content[: begin.start()], content[start:], ""
    document = content[start:end] if end >= start else ""
    return content[: begin.start()], document, content[end + 1 + len(end_line) :]


def _read_prompt(messages: list[Any]) -> _Prompt:
    users = [_text_of(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    # The task message is the first user message whose first line is "Task: ..."; a repair turn appended
    # after it by the client has none, and the answer is still to the task.
    task_message = next((u for u in users if u.lstrip().startswith("Task:")), None)
    if task_message is None:
        return _Prompt(task=None, instructions=users[-1] if users else "", document=None, payload=None)
    first_line = task_message.lstrip().split("\n", 1)[0]
    task = first_line[len("Task:") :].strip() or None
    before, document, after = _split_block(task_message)
    outside = before + "\n" + after
    payload: Any = None
    for marker in _PAYLOAD_MARKERS:
        at = outside.find(marker)
        if at >= 0:
            payload = _parse_json_prefix(outside[at + len(marker) :])
            outside = outside[:at]
            break
    return _Prompt(task=task, instructions=outside, document=document, payload=payload)


def _parse_json_prefix(text: str) -> Any:
    try:
        value, _ = json.JSONDecoder().raw_decode(text.strip())
    except ValueError:
        return None
    return value


# ---------------------------------------------------------------------------------------------------------
# Deterministic answers


def _sentences(document: str) -> list[str]:
    """The document's sentences of 20 characters or more, as a teacher would quote them: never across a paragraph
    break, without Markdown heading lines ("## Plots") or a leading list mark ("- "). Each is still a stretch of
    the document as written, so it passes the evidence-quote check as a verbatim quote."""
    found = [_LIST_MARK_RE.sub("", s.strip()) for block in _BLOCK_SPLIT_RE.split(document)
             for s in _SENTENCE_SPLIT_RE.split(block)]
    kept = [s for s in found if len(s) >= 20]
    return kept or [document.strip()]


def _head(sentence: str) -> str:
    """The first five words, without trailing punctuation: enough to name the subject of a question."""
    return " ".join(sentence.split()[:5]).rstrip(".,;:!?\"')") or "the topic"


def _flat(sentence: str) -> str:
    """``sentence`` on one line, as an answer is written (a quote keeps the document's line breaks)."""
    return " ".join(sentence.split())


def _fact_question(sentence: str) -> str:
    return f"What is stated about {_head(sentence)}?"[:_MAX_QUESTION]


def _generate(prompt: _Prompt, *, refusal_terms: Sequence[str], ungrounded: bool) -> dict[str, Any]:
    counts = {t: int(n) for t, n in _COUNT_RE.findall(prompt.instructions) if t in QTYPES}
    sentences = _sentences(prompt.document or "")
    terms = list(refusal_terms) or ["unrelated matters"]
    invented = 0

    def quote(s: str) -> str:
        nonlocal invented
        if not ungrounded:
            return s[:_MAX_QUOTE]
        invented += 1
        return f"Completely invented passage number {invented} about nothing in the text."

    items: list[dict[str, Any]] = []
    # Each type starts where the previous one stopped, so the types do not all ask about sentence 0.
    offset = 0
    for qtype in QTYPES:
        for i in range(counts.get(qtype, 0)):
            s = sentences[(offset + i) % len(sentences)]
            nxt = sentences[(offset + i + 1) % len(sentences)]
            item: dict[str, Any] = {"type": qtype, "follow_ups": [], "search_terms": []}
            if qtype == "fact":
                item.update(question=_fact_question(s), answer=_flat(s)[:_MAX_ANSWER], quote=quote(s))
            elif qtype == "reasoning":
                question = f"How does {_head(s)} relate to {_head(nxt)}?"[:_MAX_QUESTION]
                item.update(question=question, answer=_flat(f"{s} {nxt}")[:_MAX_ANSWER], quote=quote(s))
            elif qtype == "multi_turn":
                # Worded unlike a fact question: a short chunk has few sentences, so this one may be about
                # the same sentence as a fact item, and the client drops near-duplicate questions.
                question = f"What should I know about {_head(s)}?"[:_MAX_QUESTION]
                item.update(question=question, answer=_flat(s)[:_MAX_ANSWER], quote=quote(s))
                item["follow_ups"] = [
                    {"question": _fact_question(nxt), "answer": _flat(nxt)[:_MAX_ANSWER], "quote": quote(nxt)}
                ]
            else:  # refusal
                term = terms[i % len(terms)]
                question = f"What does {_head(s)} say about {term}?"[:_MAX_QUESTION]
                item.update(question=question, answer=REFUSAL_ANSWER, quote="", search_terms=[term])
            # Field order as in the schema, which keeps the JSON readable in logs.
            items.append(
                {k: item[k] for k in ("type", "question", "answer", "quote", "follow_ups", "search_terms")}
            )
        offset += counts.get(qtype, 0)
    return {"items": items}


# The facts task's question templates, per kind; the n-th question of a kind about a fact takes the n-th (cycling), so
# a fact's questions of one kind are worded differently and the client's de-duplication keeps them.
_DIRECT = ("What is stated about {h}?", "Tell me the facts about {h}.", "What is true of {h}?")
_REVERSED = ("Which subject is described by the words '{t}'?", "What does the phrase '{t}' refer to?",
             "Who or what is it that '{t}'?")
_CONTEXT = ("I am writing a short guide for visitors and want to get it right: what is stated about {h}?",
            "A friend asked me over dinner about {h}. What should I tell them?",
            "We are planning a trip next month and need one detail: what do we know about {h}?")
_COMBINATION = ("How does {h} relate to {h2}?", "What do {h} and {h2} have in common?",
                "What links {h} with {h2}?")
_NEAR_MISS = ("What is known about {e}?", "When did visitors first hear of {e}?", "Who looks after {e}?")


def _tail(sentence: str) -> str:
    """The last five words, without trailing punctuation: what a reversed question gives to ask for its subject."""
    return " ".join(sentence.split()[-5:]).rstrip(".,;:!?\"')") or "it"


def _invented_name(document: str, index: int) -> str:
    """A name made of four syllables, drawn by a hash of the chunk and ``index``, that the chunk does not contain."""
    for attempt in range(100):
        digest = hashlib.sha256(f"{document}\0{index}\0{attempt}".encode()).digest()
        name = "".join(_NAME_SYLLABLES[b % len(_NAME_SYLLABLES)] for b in digest[:4]).capitalize()
        if name.casefold() not in document.casefold():
            return name
    return f"Zzyq{index}"


def _near_miss_entity(head: str, name: str) -> str:
    """``head`` with its first capitalised word after the first replaced by ``name`` ("The Hollow Oak orchard
    grows" -> "The Quorvel Oak orchard grows"): an entity that resembles the real subject; or ``name`` before it."""
    words = head.split()
    for i, word in enumerate(words[1:], start=1):
        if word[:1].isupper():
            return " ".join([*words[:i], name, *words[i + 1 :]])
    return f"{name}, like {head}"


def _facts(
    prompt: _Prompt, *, near_miss_terms: Sequence[str], ungrounded: bool, short_by: int = 0, leaky: bool = False
) -> dict[str, Any]:
    """The facts task: one fact per sentence (up to the number asked), each with the asked questions of each kind
    (``short_by`` fewer, the last ones, for a teacher that falls short of the quota), and the asked near-miss
    questions about invented entities (or about ``near_miss_terms``, in turn); ``leaky`` near-miss answers go on
    to state the chunk's first fact after refusing."""
    limit = _MAX_FACTS_RE.search(prompt.instructions)
    kinds = {k: int(n) for k, n in _COUNT_RE.findall(prompt.instructions) if k in FACT_KINDS}
    wanted = _NEAR_MISSES_RE.search(prompt.instructions)
    document = prompt.document or ""
    sentences = _sentences(document)[: int(limit.group(1)) if limit else None]
    facts: list[dict[str, Any]] = []
    for i, s in enumerate(sentences):
        h = _head(s)
        questions: list[dict[str, Any]] = []
        for kind in FACT_KINDS:
            for n in range(kinds.get(kind, 0)):
                written = kind
                if kind == "combination" and len(sentences) > 1:
                    j = (i + 1 + n) % len(sentences)
                    j = j if j != i else (j + 1) % len(sentences)
                    question = _COMBINATION[n % len(_COMBINATION)].format(h=h, h2=_head(sentences[j]))
                    answer, with_fact = f"{s} {sentences[j]}", j
                elif kind == "reversed":
                    question, answer, with_fact = _REVERSED[n % len(_REVERSED)].format(t=_tail(s)), s, -1
                elif kind == "context":
                    question, answer, with_fact = _CONTEXT[n % len(_CONTEXT)].format(h=h), s, -1
                else:  # direct, or a combination in a chunk of one fact (a direct one instead, as the prompt says)
                    written = "direct"
                    after = kinds.get("direct", 0) if kind == "combination" else 0  # past the direct ones' wording
                    question, answer, with_fact = _DIRECT[(n + after) % len(_DIRECT)].format(h=h), s, -1
                questions.append({"kind": written, "question": question[:_MAX_QUESTION],
                                  "answer": _flat(answer)[:_MAX_ANSWER], "with_fact": with_fact})
        quote = f"Completely invented passage number {i + 1} about nothing in the text." if ungrounded else s[:_MAX_QUOTE]
        questions = questions[: max(0, len(questions) - short_by)]
        facts.append({"id": i, "subject": h, "fact": _flat(s)[:_MAX_ANSWER], "quote": quote, "questions": questions})
    near_misses = []
    for k in range(int(wanted.group(1)) if wanted else 0):
        name = near_miss_terms[k % len(near_miss_terms)] if near_miss_terms else _invented_name(document, k)
        entity = _near_miss_entity(_head(sentences[k % len(sentences)]), name)
        question = _NEAR_MISS[k % len(_NEAR_MISS)].format(e=entity)
        answer = f"The documents do not cover {entity}, so I can't say."
        if leaky:
            answer += f" But {_flat(sentences[0])}"
        near_misses.append({"entity": entity, "question": question[:_MAX_QUESTION], "answer": answer[:_MAX_ANSWER],
                            "search_terms": [name]})
    return {"facts": facts, "near_misses": near_misses}


def _conversation_text(candidate: Mapping[str, Any]) -> str:
    turns = candidate.get("conversation")
    if not isinstance(turns, list):
        return ""
    return "\n".join(_text_of(t.get("content")) for t in turns if isinstance(t, dict))


def _judge(prompt: _Prompt, *, judge_reject: str | None) -> dict[str, Any]:
    candidates = prompt.payload if isinstance(prompt.payload, list) else []
    verdicts = []
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            continue
        cid = candidate.get("id", index)
        rejected = bool(judge_reject) and judge_reject in _conversation_text(candidate)
        verdicts.append(
            {
                "id": cid,
                "standalone": True,
                "answerable": True,
                "supported": not rejected,
                "complete": True,
                "reason": "claim not supported" if rejected else "ok",
            }
        )
    return {"verdicts": verdicts}


def _rephrase(prompt: _Prompt) -> dict[str, Any]:
    questions = prompt.payload if isinstance(prompt.payload, list) else []
    out = []
    for index, q in enumerate(questions):
        if not isinstance(q, dict):
            continue
        text = str(q.get("question", ""))
        out.append(
            {
                "id": q.get("id", index),
                "question": f"Could you tell me {text[:1].lower()}{text[1:]}"[:_MAX_QUESTION],
            }
        )
    return {"questions": out}


_GRADE_WORD_RE = re.compile(r"\w+")


def _grade(prompt: _Prompt) -> dict[str, Any]:
    """The evaluation judge (``slowtune.eval.judge``): a 1-5 score from how much the answer's words overlap the
    reference's (F1 of the two word sets), so an answer that repeats the reference scores 5 and gibberish 1."""
    items = prompt.payload if isinstance(prompt.payload, list) else []
    grades = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        reference = set(_GRADE_WORD_RE.findall(str(item.get("reference", "")).casefold()))
        answer = set(_GRADE_WORD_RE.findall(str(item.get("answer", "")).casefold()))
        shared = len(reference & answer)
        f1 = 2 * shared / (len(reference) + len(answer)) if shared else 0.0
        grades.append(
            {
                "id": item.get("id", index),
                "score": 1 + round(4 * f1),
                "rationale": f"{shared} of {len(reference)} reference words are in the answer.",
            }
        )
    return {"grades": grades}


# ---------------------------------------------------------------------------------------------------------
# The server


@dataclass
class _Call:
    """A chat call being handled; it leaves ``inflight`` exactly once."""

    n: int  # among all chat calls
    n_in_task: int  # among the calls of its task (or among those without a task)
    open: bool = True


@dataclass
class _Bill:
    """What a paid answer adds to the stats."""

    fingerprint: str
    task: str | None
    prompt_tokens: int
    completion_tokens: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler stuck in a slow fault never keeps the test process alive
    allow_reuse_address = True  # --port N can be reused right after a previous run
    # socketserver's default listen backlog is 5: sixteen clients connecting at once overflow it and the kernel
    # drops their SYNs, which the clients resend only after a second. Real servers listen with a deep backlog.
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-call (the kill-and-resume tests do it on purpose) resets its connection; that
        # is expected, not worth a traceback on stderr.
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)

    def __init__(self, port: int, teacher: FakeTeacher) -> None:
        self.teacher = teacher
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, a DNS query that can stall on some machines;
        # the name is never used here.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = (
        "HTTP/1.1"  # keep-alive, as the openai client expects; so every reply has Content-Length
    )
    server_version = "FakeOpenAI/1"
    sys_version = ""
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits for the client's
    # delayed ACK (about 40 ms on Linux), which would make every call slow.
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.teacher._track(self, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.teacher._track(self, False)

    def log_message(self, format: str, *args: Any) -> None:
        # Silent: tests stay quiet, and nothing a client sent (its key included) is written anywhere.
        return

    def do_GET(self) -> None:
        self.server.teacher._dispatch(self)

    def do_POST(self) -> None:
        self.server.teacher._dispatch(self)

    def read_body(self) -> bytes:
        """The whole request body, read even when the answer is an error, so the next request on this
        keep-alive connection starts at the right byte."""
        length = self.headers.get("Content-Length")
        if length is not None:
            return self.rfile.read(int(length)) if int(length) > 0 else b""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(65537).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        return b""

    def send_json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            # The client went away (a timeout on its side): nothing more to do on this connection.
            self.close_connection = True


class FakeTeacher:
    """A deterministic OpenAI-compatible chat server with switchable faults; see the module docstring.

    ``latency`` is slept before every chat answer; ``supports`` lists the ``response_format`` types it
    accepts; ``refusal_terms`` are the topics of refusal items; ``near_miss_terms``, when given, the names of the
    near-miss entities of the facts task, in turn (else names are invented, found in no test corpus); the facts task
    writes ``short_by`` fewer questions per fact than asked, and with ``leaky_near_misses`` its near-miss answers
    state one of the chunk's facts after refusing; a candidate whose conversation contains
    ``judge_reject`` is judged unsupported; ``ungrounded`` makes every quote an invented one; with
    ``fences_in_text_mode`` a reply without ``response_format`` is wrapped in a fenced block after a sentence.
    ``port`` 0 picks a free one.
    """

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        models: Sequence[str] = ("teacher-small", "judge-small"),
        latency: float = 0.0,
        supports: Sequence[str] = ("json_schema", "json_object"),
        context_length: int | None = 32768,
        refusal_terms: Sequence[str] = ("quuxbarrow",),
        near_miss_terms: Sequence[str] = (),
        short_by: int = 0,
        leaky_near_misses: bool = False,
        judge_reject: str | None = None,
        ungrounded: bool = False,
        fences_in_text_mode: bool = True,
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.models = tuple(models)
        self.latency = latency
        self.supports = tuple(supports)
        self.context_length = context_length
        self.refusal_terms = tuple(refusal_terms)
        self.near_miss_terms = tuple(near_miss_terms)
        self.short_by = short_by
        self.leaky_near_misses = leaky_near_misses
        self.judge_reject = judge_reject
        self.ungrounded = ungrounded
        self.fences_in_text_mode = fences_in_text_mode
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()  # wakes handlers sleeping in latency or a slow fault
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._handlers: dict[_Handler, threading.Thread] = {}
        self._faults: list[Fault] = []
        self._seen: set[str] = set()  # attempt keys seen since the faults were set (first_attempt_only)
        self._inflight = 0
        self._reset_counters()

    # -- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> FakeTeacher:
        if self._server is not None:
            raise RuntimeError("FakeTeacher already started")
        self._stopping.clear()
        self._server = _Server(self._port, self)
        # A short poll interval so stop() returns in a few milliseconds, not the default half second.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        with self._lock:
            handlers = dict(self._handlers)
        # Idle keep-alive connections block their handler in a read: shutting the socket down ends it.
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + 2.0
        for t in handlers.values():
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        self._server = self._thread = None

    def __enter__(self) -> FakeTeacher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeTeacher is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``, what ``openai.OpenAI(base_url=...)`` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:<port>``; the control endpoints are under ``/_control/``."""
        return f"http://127.0.0.1:{self.port}"

    # -- faults and stats ------------------------------------------------------------------------------

    def set_faults(self, faults: Sequence[Fault]) -> None:
        """Replace the faults; the first one in the list that applies to a call wins."""
        with self._lock:
            self._faults = list(faults)
            self._seen.clear()

    def clear_faults(self) -> None:
        self.set_faults([])

    def _reset_counters(self) -> None:
        self._requests = 0
        self._chat_calls = 0
        self._task_calls: dict[str | None, int] = {}
        self._by_status: dict[str, int] = {}
        self._paid: list[str] = []
        self._by_task: dict[str, int] = {}
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._max_inflight = self._inflight
        self._dropped = 0
        self._faults_applied: dict[str, int] = {}

    def reset_stats(self) -> None:
        """Zero the counters and restart call numbering at 1 (``inflight`` is live and stays)."""
        with self._lock:
            self._reset_counters()
            self._seen.clear()

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot.

        ``requests``: HTTP requests to the API (``/_control`` ones are not counted); ``chat_calls``: chat
        calls numbered so far; ``by_status``: responses per status code; ``paid``: fingerprints of the 2xx
        chat answers in the order they were written (``paid_count`` of them, ``by_task`` per ``Task:`` line,
        calls without one left out, and the ``prompt_tokens`` / ``completion_tokens`` sums); ``inflight`` / ``max_inflight``: chat calls being handled; ``dropped``: connections closed
        without a response; ``faults_applied``: how often each fault kind fired. Everything is counted just
        before the response is written, so a client holding its answer finds it counted.
        """
        with self._lock:
            return {
                "requests": self._requests,
                "chat_calls": self._chat_calls,
                "by_status": dict(self._by_status),
                "paid": list(self._paid),
                "paid_count": len(self._paid),
                "inflight": self._inflight,
                "max_inflight": self._max_inflight,
                "by_task": dict(self._by_task),
                "prompt_tokens": self._prompt_tokens,
                "completion_tokens": self._completion_tokens,
                "dropped": self._dropped,
                "faults_applied": dict(self._faults_applied),
            }

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no chat call is being handled (a client that timed out leaves the server still
        working; its answer is paid once written). True when idle."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout)

    # -- request handling ------------------------------------------------------------------------------

    def _track(self, handler: _Handler, alive: bool) -> None:
        with self._lock:
            if alive:
                self._handlers[handler] = threading.current_thread()
            else:
                self._handlers.pop(handler, None)

    def _respond(
        self,
        h: _Handler,
        call: _Call | None,
        status: int,
        obj: Any,
        headers: Mapping[str, str] | None = None,
        *,
        bill: _Bill | None = None,
    ) -> None:
        # Counted just before the bytes go out, so a client holding its answer always finds it in the stats
        # (counting after the write would race with it). A 2xx answer is paid even if the client has gone away
        # by then: a real provider bills an answer it produced.
        with self._lock:
            key = str(status)
            self._by_status[key] = self._by_status.get(key, 0) + 1
            if bill is not None:
                self._paid.append(bill.fingerprint)
                if bill.task is not None:  # probes and connectivity tests are paid but belong to no task
                    self._by_task[bill.task] = self._by_task.get(bill.task, 0) + 1
                self._prompt_tokens += bill.prompt_tokens
                self._completion_tokens += bill.completion_tokens
            if call is not None:
                self._close_call(call)
        h.send_json(status, obj, headers)

    def _dispatch(self, h: _Handler) -> None:
        try:
            raw = h.read_body()
        except (OSError, ValueError):
            h.close_connection = True
            return
        method = h.command
        path = urlsplit(h.path).path.rstrip("/")
        if path.startswith("/_control/"):
            self._control(h, method, path, raw)
            return
        with self._lock:
            self._requests += 1
        if method == "POST" and path == "/v1/chat/completions":
            self._chat(h, raw)
        elif not self._authorized(h):
            self._respond(h, None, 401, _AUTH_ERROR)
        elif method == "GET" and path == "/v1/models":
            self._respond(
                h, None, 200, {"object": "list", "data": [self._model_card(m) for m in self.models]}
            )
        elif method == "GET" and path.startswith("/v1/models/"):
            model = path.removeprefix("/v1/models/")
            if model in self.models:
                self._respond(h, None, 200, self._model_card(model))
            else:
                self._respond(h, None, 404, self._model_missing(model))
        else:
            self._respond(h, None, 404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))

    def _authorized(self, h: _Handler) -> bool:
        if self.api_key is None:
            return True
        return h.headers.get("Authorization", "") == f"Bearer {self.api_key}"

    def _model_card(self, model: str) -> dict[str, Any]:
        card: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "fake"}
        if self.context_length is not None:
            card["context_length"] = self.context_length
        return card

    @staticmethod
    def _model_missing(model: str) -> dict[str, Any]:
        return _error(
            f"The model `{model}` does not exist.",
            "invalid_request_error",
            param="model",
            code="model_not_found",
        )

    def _control(self, h: _Handler, method: str, path: str, raw: bytes) -> None:
        # Control requests are the observer, not the traffic: they are not counted in the stats.
        try:
            if method == "GET" and path == "/_control/stats":
                h.send_json(200, self.stats())
            elif method == "POST" and path == "/_control/reset":
                self.reset_stats()
                h.send_json(200, {"ok": True})
            elif method == "POST" and path == "/_control/faults":
                data = json.loads(raw or b"[]")
                if not isinstance(data, list):
                    raise ValueError("expected a JSON list of faults")
                faults = [Fault.from_dict(d) for d in data]
                self.set_faults(faults)
                h.send_json(200, {"ok": True, "faults": len(faults)})
            else:
                h.send_json(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))
        except (ValueError, TypeError) as exc:
            h.send_json(400, _error(f"bad control request: {exc}", "invalid_request_error"))

    def _chat(self, h: _Handler, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        prompt = _read_prompt(messages if isinstance(messages, list) else [])
        # Numbered on arrival, so concurrent calls get numbers in the order they came in.
        with self._lock:
            self._chat_calls += 1
            n_in_task = self._task_calls[prompt.task] = self._task_calls.get(prompt.task, 0) + 1
            call = _Call(self._chat_calls, n_in_task)
            self._inflight += 1
            self._max_inflight = max(self._max_inflight, self._inflight)
        try:
            self._chat_call(h, body, prompt, call)
        finally:
            with self._lock:
                self._close_call(call)

    def _close_call(self, call: _Call) -> None:
        """Leave ``inflight``, once per call (the lock is held)."""
        if call.open:
            call.open = False
            self._inflight -= 1
            self._idle.notify_all()

    def _chat_call(self, h: _Handler, body: Any, prompt: _Prompt, call: _Call) -> None:
        if not self._authorized(h):
            return self._respond(h, call, 401, _AUTH_ERROR)
        if not isinstance(body, dict):
            return self._respond(
                h,
                call,
                400,
                _error("We could not parse the JSON body of your request.", "invalid_request_error"),
            )
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._respond(
                h,
                call,
                400,
                _error("'messages' is a required property", "invalid_request_error", param="messages"),
            )
        if model not in self.models:
            return self._respond(h, call, 404, self._model_missing(str(model)))
        fmt = body.get("response_format")
        fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
        if fmt_type not in (None, "text") and fmt_type not in self.supports:
            message = (
                f"Invalid parameter: 'response_format' of type '{fmt_type}' is not supported with this model."
            )
            return self._respond(
                h, call, 400, _error(message, "invalid_request_error", param="response_format")
            )
        if body.get("stream"):
            message = "Streaming is not supported by this server."
            return self._respond(h, call, 400, _error(message, "invalid_request_error", param="stream"))

        fp = fingerprint(body)
        if self.latency > 0 and self._stopping.wait(self.latency):
            return self._drop(h, call)
        fault = self._pick_fault(call, prompt.task, _attempt_key(body))
        kind = fault.kind if fault else None
        if fault is not None and kind == "rate_limit":
            seconds = format(fault.retry_after, "g")
            headers = {"retry-after": seconds, "retry-after-ms": str(round(fault.retry_after * 1000))}
            message = f"Rate limit reached for requests. Please try again in {seconds}s."
            return self._respond(
                h, call, 429, _error(message, "requests", code="rate_limit_exceeded"), headers
            )
        if kind == "server_error":
            return self._respond(h, call, 500, _SERVER_ERROR)
        if kind == "unauthorized":
            return self._respond(h, call, 401, _AUTH_ERROR)
        if kind == "drop":
            return self._drop(h, call)
        if fault is not None and kind == "slow" and self._stopping.wait(fault.delay):
            return self._drop(h, call)

        json_mode = fmt_type in ("json_schema", "json_object")
        content, finish = self._answer(prompt, json_mode, kind)
        prompt_tokens = _tokens(sum(len(_text_of(m.get("content"))) for m in messages if isinstance(m, dict)))
        completion_tokens = _tokens(len(content))
        reply = {
            "id": f"chatcmpl-fake-{call.n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        bill = _Bill(fp, prompt.task, prompt_tokens, completion_tokens)
        self._respond(h, call, 200, reply, bill=bill)
        return None

    def _drop(self, h: _Handler, call: _Call) -> None:
        # No byte written: the client sees the connection close without a response.
        h.close_connection = True
        with self._lock:
            self._dropped += 1
            self._close_call(call)

    def _pick_fault(self, call: _Call, task: str | None, attempt: str) -> Fault | None:
        with self._lock:
            first_time = attempt not in self._seen
            self._seen.add(attempt)
            for fault in self._faults:
                if fault.applies_to(call.n, task, call.n_in_task) and (
                    first_time or not fault.first_attempt_only
                ):
                    self._faults_applied[fault.kind] = self._faults_applied.get(fault.kind, 0) + 1
                    return fault
        return None

    def _answer(self, prompt: _Prompt, json_mode: bool, fault_kind: str | None) -> tuple[str, str]:
        """(content, finish_reason) of a 200 reply, faults that change the content included."""
        if fault_kind == "malformed":
            return MALFORMED_TEXT, "stop"
        if fault_kind == "empty":
            return "", "stop"
        obj: Any = None
        text = ""
        if INJECTION_PHRASE in prompt.instructions.lower():
            # A naive model obeys instructions outside the document block; inside it they are data.
            text = "HACKED"
        elif fault_kind == "wrong_schema":
            obj = {"result": "done"}
        elif prompt.task == "generate":
            obj = _generate(prompt, refusal_terms=self.refusal_terms, ungrounded=self.ungrounded)
        elif prompt.task == "facts":
            obj = _facts(prompt, near_miss_terms=self.near_miss_terms, ungrounded=self.ungrounded,
                         short_by=self.short_by, leaky=self.leaky_near_misses)
        elif prompt.task == "judge":
            obj = _judge(prompt, judge_reject=self.judge_reject)
        elif prompt.task == "rephrase":
            obj = _rephrase(prompt)
        elif prompt.task == "grade":
            obj = _grade(prompt)
        elif json_mode:  # a probe or a connectivity test
            obj = {"answer": "ok"}
        else:
            text = "OK"
        fenced = obj is not None and not json_mode and self.fences_in_text_mode
        if obj is not None:
            text = json.dumps(obj, ensure_ascii=False, indent=2 if fenced else None)
        if fault_kind == "truncated":
            cut = text[: len(text) // 2]
            return (f"{TEXT_MODE_PREAMBLE}\n\n```json\n{cut}" if fenced else cut), "length"
        return (f"{TEXT_MODE_PREAMBLE}\n\n```json\n{text}\n```" if fenced else text), "stop"


# ---------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT; print ``URL <base_url>`` once the server listens."""
    parser = argparse.ArgumentParser(
        prog="python -m slowtune.testing.fake_openai", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds slept before each chat answer")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--api-key", default="test-key", help="the key clients must send (default: test-key)")
    auth.add_argument("--no-auth", action="store_true", help="accept any key or none")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)

    done = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    # Installed before the URL line is printed, so a parent may signal as soon as it has read it.
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    teacher = FakeTeacher(
        api_key=None if args.no_auth else args.api_key, latency=args.latency, port=args.port
    )
    teacher.start()
    try:
        print(f"URL {teacher.base_url}", flush=True)
        while not done.wait(0.2):
            pass
    finally:
        teacher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
