"""The Ollama Modelfile and the README.md written beside an exported GGUF.

A Modelfile tells ``ollama create`` where the weights are and how to turn a conversation into the model's
prompt::

    FROM ./model-Q4_K_M.gguf
    TEMPLATE \"\"\"...\"\"\"          (a Go text/template, rendered by Ollama for every request)
    PARAMETER stop "<|im_end|>"
    SYSTEM \"\"\"...\"\"\"

Why write a TEMPLATE at all: without one, Ollama guesses a template from the Jinja chat template stored in
the GGUF (the nearest of its built-in ones, by edit distance). The tuned model has only ever seen prompts
rendered by its own chat template, so slowtune writes a Go template that renders the same text.

How: each known family (ChatML, Llama 3, Mistral [INST], Gemma, Phi-3) has a Go template written for its
format. The parts that vary between models of one family are learned from the model's own chat template, by
rendering a few probe conversations with jinja2: the text around the system prompt (Llama 3.1+'s
"Cutting Knowledge Date ... Today Date ..." header, SmolLM3's metadata block), the default system prompt a
template inserts when there is none (Qwen2.5, SmolLM3), the [INST] spacing of Mistral versions, the newline
after Phi-3's role tags (Phi-3.5-mini has one, Phi-4-mini none), and where a template puts the system prompt
when it has no system turn (Gemma 3 opens the first user message with it; Gemma 2 refuses one, and training
folds it there the same way). The date is pinned as in training (``slowtune.train.data.ChatRenderer``), and
every other template option keeps its default, as in training (SmolLM3 renders in its "/think" mode).
Finally the Go template is rendered (``slowtune.export.gotemplate``, the way Ollama does) for the same probes
and compared with the chat template; any difference becomes a note. Behaviour a Go template cannot express
(Qwen3 rewriting <think> blocks of earlier turns, SmolLM3 switching its reasoning mode on "/think" or
"/no_think" in the system prompt, stripping whitespace around messages, tool calling) is reported as notes
too: a Go template has no string functions.

The BOS token is never written: llama.cpp (and so Ollama) adds it when tokenising the prompt, as the GGUF's
``tokenizer.ggml.add_bos_token`` says.

Only the standard library and slowtune's own light modules are imported at module level; jinja2 is imported when
a chat template is rendered.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from slowtune.export.gotemplate import GoTemplate
from slowtune.export.names import parse_export_file_name

__all__ = [
    "DEFAULT_DATE_STRING",
    "FAMILIES",
    "Family",
    "Scaffold",
    "detect_family",
    "export_readme",
    "ollama_render",
    "ollama_template",
    "ollama_values",
    "render_modelfile",
]

# The date slowtune.train.data.ChatRenderer pins by default; templates that print today's date get it.
DEFAULT_DATE_STRING = "26 Jul 2024"

# Probe contents for learning a template's layout: plain words no template strips, trims or tests for.
_P_SYSTEM = "Probe system 41."
_P_USER0 = "Probe question 42?"
_P_ANSWER1 = "Probe answer 43."
_P_USER2 = "Probe question 44?"
# slowtune's training folds a system prompt into the first user turn this way when a template has no
# system role (slowtune.train.data.ChatRenderer._prepare).
_FOLD_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Scaffold:
    """The parts of a family's format that vary between models of the family, learned from the chat template.

    ``system_placement``: "turn" (a system turn of its own), "first-user" (the system prompt opens the
    first user message, followed by ``fold_separator``) or "last-user" (it opens the user message that ends
    the conversation, and is left out otherwise: Mistral's templates).
    """

    system_placement: str = "turn"
    system_prefix: str = ""  # text in the system turn before the system prompt
    system_suffix: str = ""  # and after it
    default_system: str | None = None  # what the turn holds with no system prompt; None: no system turn then
    fold_separator: str = _FOLD_SEPARATOR
    inst_open: str = "[INST]"  # Mistral: what opens a user turn
    inst_close: str = "[/INST]"  # and closes it
    answer_prefix: str = ""  # Mistral: text between [/INST] and the answer
    tag_newline: str = "\n"  # Phi-3: what follows each role tag and each <|end|> (Phi-4-mini: nothing)


@dataclass(frozen=True)
class Family:
    """A chat format: how to recognise it, its Go template, stop strings and the tokens templates print."""

    name: str
    title: str
    markers: tuple[str, ...]  # any of these in a Jinja chat template means this family
    stop: tuple[str, ...]  # PARAMETER stop strings
    bos_token: str  # what the family's templates print first (the runtime adds it instead)
    eos_token: str
    scaffold: Scaffold  # the standard layout, used when nothing can be learned from the chat template
    # the text that opens and closes a system turn in a layout, if the format has one
    system_turn: Callable[[Scaffold], tuple[str, str]] | None = field(repr=False)
    build: Callable[[Scaffold], str] = field(repr=False)

    @property
    def template(self) -> str:
        """The Go template for the family's standard layout."""
        return self.build(self.scaffold)


# --- the Go templates ---------------------------------------------------------------------------------
# Ollama's chat endpoint gives a template .System (all system messages, joined by a blank line) and
# .Messages (every message, system ones included, each with .Role and .Content). The templates print
# .System in the family's place for it, skip system messages in the loop, close every turn, and end with
# the header of the assistant turn the model writes. When the conversation ends with an assistant message,
# that turn is left open instead: Ollama then has the model continue it.
_LOOP = "{{ range $i, $m := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"


def _text(s: str) -> str:
    """Literal text for a Go template: only "{{" needs escaping, as an action printing it."""
    return s.replace("{{", '{{ "{{" }}')


def _fold(s: Scaffold, var: str) -> str:
    """Go code, at the start of a user turn, that writes the system prompt there when the scaffold says so."""
    sep = _text(s.fold_separator)
    if s.system_placement == "first-user":
        return f'{{{{ if {var} }}}}{{{{ {var} }}}}{sep}{{{{ {var} = "" }}}}{{{{ end }}}}'
    if s.system_placement == "last-user":
        return f"{{{{ if and $last $.System }}}}{{{{ $.System }}}}{sep}{{{{ end }}}}"
    return ""


def _head(s: Scaffold, family_turn: Callable[[Scaffold], tuple[str, str]] | None) -> str:
    """What comes before the loop: the system turn, or the variable the first user turn takes it from."""
    if s.system_placement == "first-user":
        return "{{ $system := .System }}"
    if s.system_placement != "turn" or family_turn is None:
        return ""
    open_, close = (_text(t) for t in family_turn(s))
    prefix, suffix = _text(s.system_prefix), _text(s.system_suffix)
    if s.default_system is None:
        return f"{{{{ if .System }}}}{open_}{prefix}{{{{ .System }}}}{suffix}{close}{{{{ end }}}}"
    body = "{{ .System }}"
    if s.default_system:
        body = f"{{{{ if .System }}}}{{{{ .System }}}}{{{{ else }}}}{_text(s.default_system)}{{{{ end }}}}"
    return f"{open_}{prefix}{body}{suffix}{close}"


def _chatml(s: Scaffold) -> str:
    return (
        _head(s, _chatml_turn) + _LOOP
        + '{{- if eq .Role "user" }}<|im_start|>user\n'
        + _fold(s, "$system") + "{{ .Content }}<|im_end|>\n"
        + '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n'
        + "{{ .Content }}{{ if not $last }}<|im_end|>\n{{ end }}\n"
        + "{{- end }}\n"
        + '{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant\n{{ end }}\n'
        + "{{- end }}"
    )


def _llama3(s: Scaffold) -> str:
    return (
        _head(s, _llama3_turn) + _LOOP
        + '{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>\n\n'
        + _fold(s, "$system") + "{{ .Content }}<|eot_id|>\n"
        + '{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n'
        + "{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}\n"
        + "{{- end }}\n"
        + '{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ end }}\n'
        + "{{- end }}"
    )


def _mistral(s: Scaffold) -> str:
    return (
        _head(s, None) + _LOOP
        + '{{- if eq .Role "user" }}' + _text(s.inst_open) + _fold(s, "$system") + "{{ .Content }}"
        + _text(s.inst_close) + '{{ else if eq .Role "assistant" }}' + _text(s.answer_prefix)
        + "{{ .Content }}{{ if not $last }}</s>{{ end }}\n"
        + "{{- end }}\n"
        + "{{- end }}"
    )


def _gemma(s: Scaffold) -> str:
    return (
        _head(s, None) + _LOOP
        + '{{- if eq .Role "user" }}<start_of_turn>user\n'
        + _fold(s, "$system") + "{{ .Content }}<end_of_turn>\n"
        + '{{ else if eq .Role "assistant" }}<start_of_turn>model\n'
        + "{{ .Content }}{{ if not $last }}<end_of_turn>\n{{ end }}\n"
        + "{{- end }}\n"
        + '{{- if and $last (ne .Role "assistant") }}<start_of_turn>model\n{{ end }}\n'
        + "{{- end }}"
    )


def _phi3(s: Scaffold) -> str:
    nl = _text(s.tag_newline)
    return (
        _head(s, _phi3_turn) + _LOOP
        + '{{- if eq .Role "user" }}<|user|>' + nl
        + _fold(s, "$system") + "{{ .Content }}<|end|>" + nl
        + '{{ else if eq .Role "assistant" }}<|assistant|>' + nl
        + "{{ .Content }}{{ if not $last }}<|end|>" + nl + "{{ end }}\n"
        + "{{- end }}\n"
        + '{{- if and $last (ne .Role "assistant") }}<|assistant|>' + nl + "{{ end }}\n"
        + "{{- end }}"
    )


def _chatml_turn(s: Scaffold) -> tuple[str, str]:
    return "<|im_start|>system\n", "<|im_end|>\n"


def _llama3_turn(s: Scaffold) -> tuple[str, str]:
    return "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"


def _phi3_turn(s: Scaffold) -> tuple[str, str]:
    return "<|system|>" + s.tag_newline, "<|end|>" + s.tag_newline


FAMILIES: dict[str, Family] = {
    "chatml": Family(
        "chatml", "ChatML (Qwen2, Qwen2.5, Qwen3, SmolLM)", ("<|im_start|>",), ("<|im_end|>", "<|im_start|>"),
        "", "<|im_end|>", Scaffold(), _chatml_turn, _chatml,
    ),
    "llama3": Family(
        "llama3", "Llama 3", ("<|start_header_id|>",), ("<|eot_id|>", "<|start_header_id|>"),
        "<|begin_of_text|>", "<|eot_id|>", Scaffold(), _llama3_turn, _llama3,
    ),
    "mistral": Family(
        "mistral", "Mistral [INST]", ("[INST]",), ("[INST]", "</s>"),
        "<s>", "</s>", Scaffold(system_placement="last-user"), None, _mistral,
    ),
    "gemma": Family(
        "gemma", "Gemma", ("<start_of_turn>",), ("<end_of_turn>", "<start_of_turn>"),
        "<bos>", "<eos>", Scaffold(system_placement="first-user"), None, _gemma,
    ),
    # Phi-3.5-mini: "<|user|>\n...<|end|>\n"; Phi-4-mini: the same tags with no newlines. Neither prints BOS.
    "phi3": Family(
        "phi3", "Phi-3 (Phi-3.5-mini, Phi-4-mini)", ("<|end|>",), ("<|end|>", "<|user|>", "<|assistant|>"),
        "", "<|endoftext|>", Scaffold(), _phi3_turn, _phi3,
    ),
}
# The order markers are tried in: the most specific first.
_DETECT_ORDER = ("llama3", "gemma", "phi3", "chatml", "mistral")


def detect_family(chat_template: str) -> str | None:
    """The FAMILIES key whose markers the Jinja chat template contains, or None."""
    for name in _DETECT_ORDER:
        if any(marker in chat_template for marker in FAMILIES[name].markers):
            return name
    return None


# --- rendering like Ollama -----------------------------------------------------------------------------
def ollama_values(messages: Sequence[Mapping[str, str]], *, system: str | None = None) -> dict[str, Any]:
    """The data Ollama's chat endpoint renders a template with, for these messages.

    As Ollama does: the Modelfile's SYSTEM (``system``) comes first as a system message unless the
    conversation starts with one; consecutive messages of one role are merged with a blank line between;
    .System holds all system messages joined by a blank line, and .Messages all messages, system ones
    included.
    """
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    collated: list[dict[str, Any]] = []
    for m in msgs:
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append({"Role": m["role"], "Content": m["content"], "Thinking": "", "ToolCalls": [],
                             "ToolName": "", "Images": []})
    return {
        "System": "\n\n".join(m["content"] for m in msgs if m["role"] == "system"),
        "Messages": collated,
        "Tools": [],
        "Response": "",
        "Think": False,
        "IsThinkSet": False,
        "Query": "",
        "Document": "",
        "Instruction": "",
    }


def ollama_render(template: str, messages: Sequence[Mapping[str, str]], *, system: str | None = None) -> str:
    """The prompt Ollama's chat endpoint builds with this Go template for these messages (see ollama_values)."""
    return GoTemplate(template).render(ollama_values(messages, system=system))


# --- learning from the chat template ------------------------------------------------------------------
Render = Callable[[list[dict[str, str]], bool], str]


class _CannotLearn(Exception):
    pass


def _jinja_renderer(chat_template: str, family: Family, date_string: str) -> Render:
    """Renders like transformers' apply_chat_template (the same sandbox, options and helpers), with the
    date pinned and the family's BOS stripped from the front."""
    import datetime as dt
    import json

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    pinned = dt.datetime.strptime(date_string, "%d %b %Y")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = pinned.strftime
    compiled = env.from_string(chat_template)

    def render(messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text = compiled.render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=family.bos_token,
            eos_token=family.eos_token, date_string=date_string, tools=None, documents=None,
        )
        if family.bos_token and text.startswith(family.bos_token):
            text = text[len(family.bos_token):]
        return text

    return render


def _probe(system: bool, variant: str = "plain") -> list[dict[str, str]]:
    """system?, user, assistant, user. Variants: "padded" puts spaces and newlines around every text;
    "think" gives the answer a <think> block, as a reasoning model's earlier turn may have; "no_think" ends the
    system prompt with the "/no_think" switch that reasoning models (SmolLM3, Qwen3) document."""
    chat = [("user", _P_USER0), ("assistant", _P_ANSWER1), ("user", _P_USER2)]
    if system:
        chat.insert(0, ("system", _P_SYSTEM))
    out = []
    for role, text in chat:
        if variant == "padded":
            text = f" \n{text}\n "
        elif variant == "think" and role == "assistant":
            text = f"<think>\nreasoning\n</think>\n\n{text}"
        elif variant == "no_think" and role == "system":
            text = f"{text} /no_think"
        out.append({"role": role, "content": text})
    return out


def _learn(family: Family, render: Render) -> tuple[Scaffold, bool]:
    """The family's scaffold as this chat template writes it, and whether the template has a system role.
    Raises _CannotLearn."""
    scaffold = family.scaffold
    plain = render(_probe(False), True)
    if family.name == "mistral":
        scaffold = _learn_inst(scaffold, family, render(_probe(False), False))
    if family.name == "phi3":
        scaffold = _learn_phi3(scaffold, plain)
    try:
        with_system = render(_probe(True), True)
    except Exception:  # the template rejects a system message (Gemma: "System role not supported")
        with_system = ""
    if _P_SYSTEM not in with_system:
        # No system role: slowtune's training folds the prompt into the first user turn.
        return replace(scaffold, system_placement="first-user", fold_separator=_FOLD_SEPARATOR), False
    if family.system_turn is not None and with_system.startswith(family.system_turn(scaffold)[0]):
        open_, close = family.system_turn(scaffold)
        end = with_system.find(close, len(open_))
        turn = with_system[len(open_):end] if end >= 0 else ""
        if _P_SYSTEM in turn:
            prefix, suffix = turn.split(_P_SYSTEM, 1)
            default: str | None = None
            if plain.startswith(open_):
                end = plain.find(close, len(open_))
                held = plain[len(open_):end] if end >= 0 else ""
                if not (held.startswith(prefix) and held.endswith(suffix) and len(held) >= len(prefix + suffix)):
                    raise _CannotLearn("the system turn without a system prompt does not fit the one with it")
                default = held[len(prefix):len(held) - len(suffix)]
            scaffold = replace(scaffold, system_placement="turn", system_prefix=prefix, system_suffix=suffix,
                               default_system=default)
            return scaffold, True
    for placement, user in (("first-user", _P_USER0), ("last-user", _P_USER2)):
        match = re.search(re.escape(_P_SYSTEM) + "(.*?)" + re.escape(user), with_system, re.DOTALL)
        if match and not match.group(1).strip(" \n"):
            return replace(scaffold, system_placement=placement, fold_separator=match.group(1)), True
    raise _CannotLearn("could not find where the chat template puts the system prompt")


def _learn_inst(scaffold: Scaffold, family: Family, text: str) -> Scaffold:
    """Mistral's [INST] spacing, from a rendering of user, assistant, user."""
    try:
        open_, rest = text.split(_P_USER0, 1)
        middle, rest = rest.split(_P_ANSWER1, 1)
        between, close = rest.split(_P_USER2, 1)
    except ValueError:
        raise _CannotLearn("the probe messages are not all in the rendering") from None
    if "[INST]" not in open_ or "[/INST]" not in close or not middle.startswith(close):
        raise _CannotLearn(f"unexpected [INST] layout: {text!r}")
    if between != family.eos_token + open_:
        raise _CannotLearn(f"an answer is not closed by {family.eos_token} alone: {between!r}")
    return replace(scaffold, inst_open=open_, inst_close=close, answer_prefix=middle[len(close):])


def _learn_phi3(scaffold: Scaffold, text: str) -> Scaffold:
    """Whether Phi-3's role tags and <|end|> are followed by a newline, from a rendering of user, assistant, user
    for generation."""
    for nl in ("\n", ""):
        turns = (("user", _P_USER0), ("assistant", _P_ANSWER1), ("user", _P_USER2))
        if text == "".join(f"<|{role}|>{nl}{content}<|end|>{nl}" for role, content in turns) + f"<|assistant|>{nl}":
            return replace(scaffold, tag_newline=nl)
    raise _CannotLearn(f"unexpected Phi-3 layout: {text!r}")


def _first_difference(a: str, b: str) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"at character {at}: chat template {a[at:at + 40]!r}, TEMPLATE {b[at:at + 40]!r}"


def _compare(template: str, render: Render, has_system_role: bool, variant: str) -> str | None:
    """None when the Go template renders the probe conversations (with and without a system prompt, for
    generation) exactly as the chat template does; else where they first differ."""
    for system in (True, False):
        messages = _probe(system, variant)
        reference = messages
        if system and not has_system_role:  # training folds the system prompt into the first user turn
            first = {"role": "user", "content": messages[0]["content"] + _FOLD_SEPARATOR + messages[1]["content"]}
            reference = [first, *messages[2:]]
        try:
            expected = render(reference, True)
            got = ollama_render(template, messages)
        except Exception as exc:
            return f"rendering failed: {exc}"
        if expected != got:
            return ("with" if system else "without") + " a system prompt, " + _first_difference(expected, got)
    return None


def _notes(template: str, render: Render, scaffold: Scaffold, has_system_role: bool, date_string: str,
           chat_template: str) -> list[str]:
    notes = []
    problem = _compare(template, render, has_system_role, "plain")
    if problem:
        notes.append(f"The TEMPLATE does not reproduce the chat template exactly ({problem}). Check the prompts "
                     "Ollama builds, or delete the TEMPLATE line to let Ollama choose.")
        return notes
    if scaffold.system_placement == "turn" and scaffold.default_system:
        more = "..." if len(scaffold.default_system) > 80 else ""
        notes.append(f"With no system prompt, the TEMPLATE writes the chat template's default one: "
                     f"{scaffold.default_system[:80]!r}{more}.")
    if date_string in scaffold.system_prefix:
        notes.append(f"The chat template prints today's date; the TEMPLATE has it pinned to {date_string}, "
                     "as in training.")
    if not has_system_role:
        notes.append("The chat template has no system role: the TEMPLATE puts the system prompt at the start of "
                     "the first user message, as training did.")
    elif scaffold.system_placement == "last-user":
        notes.append("As in the chat template, the system prompt goes into the last user message, and is left out "
                     "when the conversation ends with an assistant message.")
    elif scaffold.system_placement == "first-user":
        notes.append("As in the chat template, the system prompt opens the first user message.")
    if _compare(template, render, has_system_role, "padded"):
        notes.append("The chat template strips spaces or newlines around message text; the TEMPLATE keeps the "
                     "text as sent (the same for text without them).")
    if has_system_role and _compare(template, render, has_system_role, "no_think"):
        notes.append('The chat template switches its reasoning mode when the system prompt says "/think" or '
                     '"/no_think" (and leaves the switch out of the prompt); the TEMPLATE keeps the template\'s '
                     "default mode, which training used unless its own system prompts switched it, and passes the "
                     "system prompt as it is. The prompts are the same for a system prompt with neither switch.")
    if _compare(template, render, has_system_role, "think"):
        notes.append("The chat template rewrites <think>...</think> reasoning in earlier assistant messages; the "
                     "TEMPLATE passes messages as they are. Ollama sends a model's reasoning separately, so this "
                     "matters only for clients that put it in the message text.")
    if "tools" in chat_template:
        notes.append("The TEMPLATE has no tool calling: tools passed to Ollama are not shown to the model.")
    return notes


def ollama_template(
    chat_template: str, family: str | None = None, *, date_string: str = DEFAULT_DATE_STRING
) -> tuple[str | None, list[str]]:
    """The Go template for this Jinja chat template (None for an unknown format) and notes about it."""
    name = family or detect_family(chat_template)
    if name is not None and name not in FAMILIES:
        raise ValueError(f"unknown chat format {name!r}; known: {', '.join(FAMILIES)}")
    if name is None:
        return None, [
            "No TEMPLATE: the chat template matches none of the known formats ("
            + ", ".join(f.title for f in FAMILIES.values())
            + "). Ollama then picks one of its built-in templates by comparing them with the chat template "
            "stored in the GGUF; check what it chose with `ollama show NAME --template`."
        ]
    fam = FAMILIES[name]
    notes = [f"TEMPLATE written for the {fam.title} format."]
    try:
        render = _jinja_renderer(chat_template, fam, date_string)
        scaffold, has_system_role = _learn(fam, render)
    except Exception as exc:  # jinja2 missing, a template that fails on the probes, an unexpected layout
        notes.append(f"Could not learn the layout from the chat template ({exc}); the TEMPLATE uses the "
                     f"standard {fam.title} layout, unchecked.")
        return fam.template, notes
    template = fam.build(scaffold)
    return template, notes + _notes(template, render, scaffold, has_system_role, date_string, chat_template)


# --- the Modelfile --------------------------------------------------------------------------------------
def _check_value(what: str, text: str, *, multiline: bool = True) -> None:
    """Ollama's Modelfile parser ends a triple-quoted value at the first \"\"\" and drops characters that Go
    does not count as printable; single-quoted values end at a quote."""
    if '"""' in text:
        raise ValueError(f'{what} contains """, which cannot be written into a Modelfile')
    for ch in text:
        if ch in "\n\t" and multiline:
            continue
        if not ch.isprintable() or (not multiline and ch == '"'):
            raise ValueError(f"{what} contains {ch!r} (U+{ord(ch):04X}), which Ollama's Modelfile parser would "
                             "drop or misread")


def _from_value(gguf_name: str) -> str:
    _check_value("the GGUF file name", gguf_name, multiline=False)
    if not gguf_name.strip():
        raise ValueError("the GGUF file name is empty")
    path = PurePosixPath(gguf_name)
    name = gguf_name if path.is_absolute() or gguf_name.startswith(("./", "../", "~")) else f"./{gguf_name}"
    return f'"{name}"' if any(c.isspace() for c in name) else name


def _parameter_lines(parameters: Mapping[str, float | int]) -> list[str]:
    lines = []
    for key, value in parameters.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", key):
            raise ValueError(f"parameter name {key!r}: use Ollama's names, such as temperature or num_ctx")
        if key == "stop":
            raise ValueError("give stop strings through stop_tokens, not parameters")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"parameter {key}: {value!r} is not a finite number")
        lines.append(f"PARAMETER {key} {value!r}")
    return lines


def render_modelfile(
    gguf_name: str,
    chat_template: str,
    *,
    system: str | None = None,
    stop_tokens: list[str] | None = None,
    parameters: dict[str, float | int] | None = None,
    date_string: str = DEFAULT_DATE_STRING,
) -> tuple[str, list[str]]:
    """The Modelfile text for the GGUF ``gguf_name`` (a path relative to the Modelfile's folder) and notes
    for the user.

    ``stop_tokens`` are added after the family's own stop strings. ``parameters`` become PARAMETER lines
    (Ollama's names: temperature, top_p, num_ctx, ...). ``date_string`` is the date training pinned, for
    templates that print today's date. For a chat template of no known family the TEMPLATE is left out (and
    a note says so): Ollama then picks a template itself.
    """
    lines = [
        "# Ollama Modelfile written by slowtune. Create the model: ollama create NAME -f Modelfile",
        f"FROM {_from_value(gguf_name)}",
    ]
    family = detect_family(chat_template)
    template, notes = ollama_template(chat_template, family, date_string=date_string)
    if template is not None:
        try:
            _check_value("the TEMPLATE", template)
        except ValueError as exc:
            notes.append(f"No TEMPLATE: {exc}. Ollama then picks one of its built-in templates.")
            template = None
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    stops: list[str] = list(FAMILIES[family].stop) if family and template is not None else []
    for token in stop_tokens or []:
        _check_value(f"the stop string {token!r}", token, multiline=False)
        if not token:
            raise ValueError("empty stop string")
        if token not in stops:
            stops.append(token)
    lines += [f'PARAMETER stop "{token}"' for token in stops]
    lines += _parameter_lines(parameters or {})
    if system:
        _check_value("the system prompt", system)
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n", notes


# --- README.md -----------------------------------------------------------------------------------------
def _describe(name: str) -> str:
    if name.lower().endswith(".gguf"):
        parsed = parse_export_file_name(name)
        quant = parsed.quant if parsed is not None else None
        return "the model, in GGUF format" + (f" ({quant})" if quant else "")
    if name == "Modelfile":
        return "for Ollama (`ollama create`): the GGUF to use, the chat template and stop strings"
    if name == "README.md":
        return "this file"
    return ""


def export_readme(files: list[str], *, family: str | None, system: str | None) -> str:
    """A short README.md for the export folder: what the files are and how to run the model in llama.cpp,
    Ollama and LM Studio. ``files`` are names in the folder; the first .gguf one is used in the commands."""
    ggufs = [f for f in files if f.lower().endswith(".gguf")]
    if not ggufs:
        raise ValueError("no .gguf file among the exported files")
    gguf = shlex.quote(ggufs[0])
    parsed = parse_export_file_name(ggufs[0])
    stem = parsed.name if parsed is not None else ggufs[0].removesuffix(".gguf").removesuffix(".GGUF")
    name = re.sub(r"[^a-z0-9]+", "-", PurePosixPath(stem).name.lower()).strip("-") or "my-model"
    out = ["# Your tuned model", "", "Exported by slowtune. Files:", ""]
    out += [f"- `{f}`" + (f": {_describe(f)}" if _describe(f) else "") for f in files]
    out.append("")
    if family in FAMILIES:
        out.append(f"Chat format: {FAMILIES[family].title}. The GGUF also holds the model's chat template, which "
                   "llama.cpp and LM Studio use.")
    else:
        out.append("The chat format is the one of the chat template stored in the GGUF, which llama.cpp and "
                   "LM Studio use.")
    if system:
        fence = "```" + "`" * max((len(m) for m in re.findall(r"`{3,}", system)), default=0)
        out += ["", "The model was tuned with this system prompt; give it the same one for the best answers:",
                "", fence, system, fence]
    sys_flag = f" -sys {shlex.quote(system)}" if system else ""
    out += [
        "", "## llama.cpp", "", "```sh",
        f"llama-cli -m {gguf} -cnv --jinja{sys_flag}    # chat in the terminal",
        f"llama-server -m {gguf} --jinja --port 8080    # web chat and an OpenAI-compatible API on http://127.0.0.1:8080",
        "```", "", "## Ollama", "",
    ]
    if "Modelfile" in files:
        out.append("The Modelfile names the GGUF file, its chat template and stop strings"
                   + (" and the system prompt" if system else "") + "; keep the two files in one folder.")
    else:
        out.append(f"Write a file named `Modelfile` beside the GGUF, holding the line `FROM {_from_value(ggufs[0])}`.")
    out += [
        "", "```sh", f"ollama create {name} -f Modelfile", f"ollama run {name}", "```",
        "", "## LM Studio", "",
        f"Import the GGUF (`lms import {gguf}`, or drag the file into LM Studio's My Models), load it and chat."
        + (" Paste the system prompt above into the chat's system prompt field." if system else ""),
        "",
    ]
    return "\n".join(out)
