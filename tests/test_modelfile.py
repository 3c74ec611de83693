"""The Ollama Modelfile (slowtune.export.modelfile) and the Go template renderer it is checked with
(slowtune.export.gotemplate).

The central check: a conversation rendered with the Modelfile's TEMPLATE, the way Ollama renders it, is
exactly the text the model's real Jinja chat template gives (what training showed the model). The real
templates come from ../shared/fixtures/llama.cpp-vocab/templates (those tests skip without it) and from
tests/templates (Gemma 3, Phi-3.5-mini, Phi-4-mini; their sources are in its README); the tiny models' templates
and a few written here run everywhere.

And the round trip (test_training_llama_cpp_and_ollama_render_alike): for each family slowtune trains, a tiny
model carrying the real template is exported to GGUF, and the prompt training renders, the prompt the app's chat
renders from the GGUF with llama.cpp, and the prompt Ollama renders with the Modelfile's TEMPLATE are one text,
and one list of token ids.

Known differences a Go template cannot express are tested as differences, so that they stay documented:
- Qwen3 drops the <think> block of assistant turns before the last user message, and opens a prefilled
  assistant turn with an empty one (test_qwen3_think_handling_is_the_documented_difference).
- Llama 3.x, Gemma and SmolLM3 strip whitespace around message text (test_whitespace_stripping_...).
- Gemma 2 has no system role: training folds the system prompt into the first user turn, and so does the
  TEMPLATE; the reference rendering is of the folded conversation. Gemma 3's template folds it there itself.
- SmolLM3 switches its reasoning mode on "/think" or "/no_think" in the system prompt; the TEMPLATE keeps the
  default mode, the one training renders (test_smollm3_think_switches_are_the_documented_difference).
- Llama 3.2 prints today's date: training pins it, and the TEMPLATE carries the pinned date, so here it
  matches exactly (test_llama_date_is_pinned_as_in_training).
- Templates print BOS; the TEMPLATE does not (llama.cpp adds it when tokenising), so it is cut from the
  reference after checking it is there.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from slowtune.export import gotemplate
from slowtune.export.gotemplate import GoTemplateError
from slowtune.export.modelfile import (
    DEFAULT_DATE_STRING,
    FAMILIES,
    detect_family,
    export_readme,
    ollama_render,
    ollama_template,
    ollama_values,
    render_modelfile,
)
from slowtune.testing.tiny_models import (
    CHATML_CHAT_TEMPLATE,
    GEMMA_CHAT_TEMPLATE,
    INST_CHAT_TEMPLATE,
    LLAMA3_CHAT_TEMPLATE,
    PHI3_CHAT_TEMPLATE,
    shared_vocab_dir,
)

GGUF = "model-Q4_K_M.gguf"
SYSTEM = "You are a careful assistant.\nAnswer in one sentence."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    # Braces in the data must come out as they are: Go templates never re-read data as template text.
    {"role": "user", "content": 'What does {{ .System }} print in a "Go" template?'},
    {"role": "assistant", "content": "The system prompt:\n\n- one line\n- and another"},
    {"role": "user", "content": "And `range`?"},
]


# --- the reference: the real chat template, rendered as transformers and training render it ----------
def jinja_render(template: str, messages: list[dict[str, str]], *, bos: str = "", eos: str = "",
                 add_generation_prompt: bool = True, date_string: str = DEFAULT_DATE_STRING) -> str:
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, **_: Any) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    # Training pins the date (slowtune.train.data.ChatRenderer): both strftime_now and date_string.
    env.globals["strftime_now"] = dt.datetime.strptime(date_string, "%d %b %Y").strftime
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos,
        date_string=date_string, tools=None, documents=None,
    )


@dataclass(frozen=True)
class Spec:
    family: str
    bos: str  # what the template prints first: the runtime adds BOS instead, so the TEMPLATE does not
    eos: str
    end_of_turn: str  # what closes an assistant turn in the template's output
    system_role: bool = True  # False: training folds the system prompt into the first user turn
    strips: bool = False  # strips whitespace around message text (a documented difference)
    file: str | None = None  # in the shared templates folder (or in tests/templates); None: `text` holds it
    text: str | None = None
    here: bool = False  # `file` is in tests/templates


# Mistral 7B Instruct v0.3's layout, written here from the format: "[INST] " with a space, no space before
# "[/INST]", a space before each answer, and the system prompt in the last user message.
MISTRAL_V03_STYLE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + '[/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}{%- endfor %}"
)

CASES: dict[str, Spec] = {
    "qwen2.5": Spec("chatml", "", "<|im_end|>", "<|im_end|>\n", file="Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": Spec("chatml", "", "<|im_end|>", "<|im_end|>\n", file="Qwen-Qwen3-0.6B.jinja"),
    "smollm3": Spec("chatml", "", "<|im_end|>", "<|im_end|>\n", strips=True, file="HuggingFaceTB-SmolLM3-3B.jinja"),
    "llama3.2": Spec("llama3", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", strips=True,
                     file="meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "mistral-nemo": Spec("mistral", "<s>", "</s>", "</s>", file="mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "gemma2": Spec("gemma", "<bos>", "<eos>", "<end_of_turn>\n", system_role=False, strips=True,
                   file="google-gemma-2-2b-it.jinja"),
    # Gemma 3 puts a system message at the start of the first user message itself (and trims only the user's text).
    "gemma3": Spec("gemma", "<bos>", "<eos>", "<end_of_turn>\n", strips=True, file="google-gemma-3-it.jinja",
                   here=True),
    # Phi-3's templates end a conversation that is not waiting for an answer with EOS.
    "phi3.5": Spec("phi3", "", "<|endoftext|>", "<|end|>\n<|endoftext|>",
                   file="microsoft-Phi-3.5-mini-instruct.jinja", here=True),
    "phi4-mini": Spec("phi3", "", "<|endoftext|>", "<|end|><|endoftext|>", file="microsoft-Phi-4-mini-instruct.jinja",
                      here=True),
    "tiny-chatml": Spec("chatml", "", "<|im_end|>", "<|im_end|>\n", text=CHATML_CHAT_TEMPLATE),
    "tiny-llama3": Spec("llama3", "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", strips=True,
                        text=LLAMA3_CHAT_TEMPLATE),
    "tiny-inst": Spec("mistral", "<s>", "</s>", "</s>", text=INST_CHAT_TEMPLATE),
    "tiny-gemma": Spec("gemma", "<bos>", "<eos>", "<end_of_turn>\n", strips=True, text=GEMMA_CHAT_TEMPLATE),
    "tiny-phi3": Spec("phi3", "", "<|endoftext|>", "<|end|>\n", text=PHI3_CHAT_TEMPLATE),
    "mistral-v0.3-style": Spec("mistral", "<s>", "</s>", "</s>", text=MISTRAL_V03_STYLE),
}
REAL = [name for name, spec in CASES.items() if spec.file]
TEMPLATES_HERE = Path(__file__).parent / "templates"


def load(name: str) -> str:
    spec = CASES[name]
    if spec.text is not None:
        return spec.text
    if spec.here:
        return (TEMPLATES_HERE / str(spec.file)).read_text(encoding="utf-8")
    folder = shared_vocab_dir()
    if folder is None or not (folder / "templates" / str(spec.file)).is_file():
        pytest.skip("the real chat templates (../shared/fixtures/llama.cpp-vocab/templates) are not here; "
                    "set SLOWTUNE_VOCAB_FIXTURES to that folder to run this test")
    return (folder / "templates" / str(spec.file)).read_text(encoding="utf-8")


def reference(name: str, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
              date_string: str = DEFAULT_DATE_STRING) -> str:
    """The chat template's rendering, as training builds it, less the BOS the runtime adds itself."""
    spec = CASES[name]
    if not spec.system_role and messages and messages[0]["role"] == "system":
        # Training folds a system prompt into the first user turn for templates without a system role
        # (slowtune.train.data.ChatRenderer._prepare): "<system>\n\n<user>".
        first = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
        messages = [first, *messages[2:]]
    text = jinja_render(load(name), messages, bos=spec.bos, eos=spec.eos,
                        add_generation_prompt=add_generation_prompt, date_string=date_string)
    assert text.startswith(spec.bos)
    return text[len(spec.bos):]


# --- a port of Ollama's Modelfile parser (parser/parser.go, ParseFile), to read back what we write -------
def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama reads them: FROM is "model", PARAMETER lines give the name."""
    commands: list[tuple[str, str]] = []
    state, buf, name = "nil", "", ""

    def unquote(s: str) -> tuple[str, bool]:
        if s.startswith('"""'):
            return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
        if s.startswith('"'):
            return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
        return s, True

    def step(ch: str, state: str) -> tuple[str, str]:
        space, newline = ch in " \t", ch in "\r\n"
        if state == "nil":
            return ("comment", "") if ch == "#" else ("nil", "") if space or newline else ("name", ch)
        if state == "name":
            if ch.isascii() and ch.isalpha():
                return "name", ch
            if space:
                return "value", ""
            raise ValueError(f"invalid command character {ch!r}")
        if state == "value":
            return ("nil", ch) if space or newline else ("value", ch)
        if state == "parameter":
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                return "parameter", ch
            if space:
                return "value", ""
            raise ValueError("unexpected end of parameter name")
        return ("nil", "") if newline else ("comment", "")

    for ch in text:
        nxt, r = step(ch, state)
        if nxt != state:
            if state == "name":
                word = buf.lower()
                assert word in ("from", "template", "system", "parameter", "license", "adapter", "message")
                if word == "parameter":
                    nxt = "parameter"
                else:
                    name = "model" if word == "from" else word
            elif state == "parameter":
                name = buf
            elif state == "value":
                value, ok = unquote(buf.strip())
                if not ok or r in (" ", "\t"):
                    buf += r
                    continue
                commands.append((name, value))
            buf, state = "", nxt
        if r and r.isprintable():
            buf += r
    if state == "value":
        value, ok = unquote(buf.strip())
        assert ok, "unexpected end of file inside a quoted value"
        commands.append((name, value))
    else:
        assert state in ("nil", "comment")
    return commands


def modelfile(template: str, **kwargs: Any) -> tuple[dict[str, list[str]], list[str]]:
    """render_modelfile's output read back as Ollama reads it: {command: [values]}, and the notes."""
    text, notes = render_modelfile(GGUF, template, **kwargs)
    read: dict[str, list[str]] = {}
    for command, value in parse_modelfile(text):
        read.setdefault(command, []).append(value)
    return read, notes


def mismatch_notes(notes: list[str]) -> list[str]:
    return [n for n in notes if "does not reproduce" in n or "Could not learn" in n]


# --- the central check ---------------------------------------------------------------------------------
@pytest.mark.parametrize("system_in", ["messages", "modelfile", "none"])
@pytest.mark.parametrize("name", list(CASES))
def test_template_renders_exactly_like_the_chat_template(name: str, system_in: str) -> None:
    """system + user + assistant + user, rendered for generation. The system prompt comes in the request
    ("messages"), from the Modelfile's SYSTEM line (Ollama adds it when the request has none), or not at all
    (then Qwen2.5 and SmolLM3 write their default system prompt, and Llama 3.2 its date header)."""
    template = load(name)
    read, notes = modelfile(template, system=SYSTEM if system_in == "modelfile" else None)
    assert mismatch_notes(notes) == []
    [go_template] = read["template"]
    modelfile_system = read["system"][0] if "system" in read else None
    conversation = CONVERSATION if system_in == "messages" else CONVERSATION[1:]

    got = ollama_render(go_template, conversation, system=modelfile_system)

    expected = reference(name, CONVERSATION if system_in != "none" else CONVERSATION[1:])
    assert got == expected
    assert got.endswith({"chatml": "<|im_start|>assistant\n", "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
                         "mistral": "[/INST]", "gemma": "<start_of_turn>model\n",
                         "phi3": ("<|end|>\n<|assistant|>\n", "<|end|><|assistant|>")}[CASES[name].family])


@pytest.mark.parametrize("name", [n for n in CASES if n != "qwen3"])
def test_a_final_assistant_message_is_left_open(name: str) -> None:
    """Ollama continues a conversation that ends with an assistant message (a prefill): the TEMPLATE leaves
    that turn open, so it is the chat template's rendering without the end of the last turn.
    (Qwen3 is the exception, see test_qwen3_think_handling_is_the_documented_difference.)"""
    template = load(name)
    go_template = ollama_template(template)[0]
    assert go_template is not None
    conversation = CONVERSATION[:3]
    full = reference(name, conversation, add_generation_prompt=False)
    end = CASES[name].end_of_turn
    assert full.endswith(CONVERSATION[2]["content"] + end)
    assert ollama_render(go_template, conversation) == full[: -len(end)]


def test_qwen3_think_handling_is_the_documented_difference() -> None:
    """Qwen3's template drops the <think> block of assistant turns before the last user message, and gives
    a final (prefilled) assistant turn an empty one. A Go template has no string functions to do that;
    Ollama sends reasoning in its own field, so clients rarely put it in the text. Everything else matches
    (the central test covers conversations without <think> blocks)."""
    template = load("qwen3")
    go_template, notes = ollama_template(template)
    assert go_template is not None
    assert any("<think>" in n for n in notes)
    thought = "<think>\nLet me see.\n</think>\n\n"
    conversation = [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": thought + "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    expected = reference("qwen3", conversation)
    got = ollama_render(go_template, conversation)
    assert "Let me see." not in expected
    assert got == expected.replace("Paris.", thought + "Paris.")  # the one difference

    prefill = [*conversation[:1], {"role": "assistant", "content": "Paris."}]
    expected = reference("qwen3", prefill, add_generation_prompt=False)
    got = ollama_render(go_template, prefill)
    assert expected == got.replace("Paris.", "<think>\n\n</think>\n\nParis.") + "<|im_end|>\n"


@pytest.mark.parametrize("name", list(CASES))
def test_whitespace_stripping_is_the_documented_difference(name: str) -> None:
    """Llama 3.x and Gemma trim message text, SmolLM3 strips the system prompt's end and an answer's leading
    newlines; a Go template cannot. Text without such whitespace (the usual case) renders the same, and a
    note says so; the other templates match even with it."""
    template = load(name)
    go_template, notes = ollama_template(template)
    assert go_template is not None
    padded = [{"role": m["role"], "content": f"\n {m['content']} \n"} for m in CONVERSATION]
    same = ollama_render(go_template, padded) == reference(name, padded)
    assert same is not CASES[name].strips
    assert any("strips spaces or newlines" in n for n in notes) is CASES[name].strips
    if name == "llama3.2":  # trim: the same as sending the trimmed text
        trimmed = [{"role": m["role"], "content": m["content"].strip()} for m in padded]
        assert reference(name, padded) == ollama_render(go_template, trimmed)


def test_llama_date_is_pinned_as_in_training() -> None:
    """Llama 3.2 prints today's date. Training pins it (ChatRenderer's date_string, by default the same as
    here), and the TEMPLATE carries the same date, so the prompts match on every day."""
    from slowtune.train.data import ChatRenderer

    assert inspect.signature(ChatRenderer).parameters["date_string"].default == DEFAULT_DATE_STRING
    template = load("llama3.2")
    go_template, notes = ollama_template(template, date_string="03 Feb 2025")
    assert go_template is not None
    assert "Today Date: 03 Feb 2025\n" in go_template
    assert any("pinned to 03 Feb 2025" in n for n in notes)
    assert ollama_render(go_template, CONVERSATION) == reference("llama3.2", CONVERSATION, date_string="03 Feb 2025")
    assert ollama_render(go_template, CONVERSATION) != reference("llama3.2", CONVERSATION)


def test_reference_rendering_matches_transformers() -> None:
    """The reference above renders like transformers' compiled chat template, which training uses."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    checked = 0
    for name, spec in CASES.items():
        if spec.file and shared_vocab_dir() is None:
            continue
        template = load(name)
        messages = CONVERSATION if spec.system_role else CONVERSATION[1:]
        theirs = _compile_jinja_template(template).render(
            messages=messages, add_generation_prompt=True, bos_token=spec.bos, eos_token=spec.eos,
            date_string=DEFAULT_DATE_STRING, tools=None, documents=None,
        )
        assert jinja_render(template, messages, bos=spec.bos, eos=spec.eos) == theirs, name
        checked += 1
    assert checked >= 4


def test_smollm3_think_switches_are_the_documented_difference() -> None:
    """SmolLM3's template reads "/think" and "/no_think" in the system prompt: it takes them out, and "/no_think"
    switches the metadata to "Reasoning Mode: /no_think" and gives every assistant turn, and the generation prompt,
    an empty <think> block. A Go template cannot look inside the system prompt: the TEMPLATE renders the default
    mode ("/think"), which is what training renders (it keeps every template option at its default), and a note
    says so. A system prompt with neither switch renders the same (the central test)."""
    template = load("smollm3")
    go_template, notes = ollama_template(template)
    assert go_template is not None
    assert any('"/no_think"' in n for n in notes)
    no_think = [{"role": "system", "content": f"{SYSTEM} /no_think"}, *CONVERSATION[1:]]
    expected = reference("smollm3", no_think)
    assert "Reasoning Mode: /no_think" in expected and f"## Custom Instructions\n\n{SYSTEM}\n\n<|im_end|>" in expected
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n")
    got = ollama_render(go_template, no_think)
    assert "Reasoning Mode: /think" in got and f"{SYSTEM} /no_think\n\n" in got
    assert got.endswith("<|im_start|>user\nAnd `range`?<|im_end|>\n<|im_start|>assistant\n")
    # "/think" (the default mode) is only taken out of the text: the same prompt as without it, less the switch.
    think = [{"role": "system", "content": f"{SYSTEM} /think"}, *CONVERSATION[1:]]
    assert reference("smollm3", think) == ollama_render(go_template, CONVERSATION)
    assert ollama_render(go_template, think) == ollama_render(go_template, CONVERSATION).replace(SYSTEM, SYSTEM + " /think")
    # Templates that do not read the switches (Qwen3's model reads them, its template does not) get no such note.
    for name in [n for n in CASES if n != "smollm3" and (CASES[n].here or not CASES[n].file)]:
        assert not any('"/no_think"' in n for n in ollama_template(load(name))[1]), name


# --- the round trip: training, the GGUF in llama.cpp and the Modelfile in Ollama give one prompt ----------------
# The families slowtune trains whose templates are not Llama 3, ChatML-only or [INST] (those are covered by
# tests/test_gguf_writer.py and the central test above), each with the architecture of its tiny model.
ROUND_TRIP = {"gemma2": "gemma2", "gemma3": "gemma3_text", "tiny-gemma": "gemma3_text", "phi3.5": "phi3",
              "phi4-mini": "phi3", "tiny-phi3": "phi3", "smollm3": "smollm3"}


def _tokenizer_for(name: str, arch: str, template: str) -> Any:
    from slowtune.testing import tiny_models

    if name == "phi4-mini":  # Phi-4-mini's tokenizer is byte-level BPE with GPT-4o's split ("gpt-4o" in llama.cpp)
        tokenizer = tiny_models.train_bpe_tokenizer(1024, tiny_models.O200K_SPLIT_REGEX,
                                                    tiny_models.PHI3_SPECIAL_TOKENS)
        return tiny_models.TokenizerSpec(tokenizer, template, bos_token=None, eos_token="<|end|>",
                                         pad_token="<|endoftext|>", extra_eos_tokens=("<|endoftext|>",))
    return replace(tiny_models.tiny_tokenizer_spec(arch), chat_template=template)


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_training_llama_cpp_and_ollama_render_alike(name: str, tmp_path: Path) -> None:
    """The rendering in training (slowtune.train.data.ChatRenderer, the base model's tokenizer), llama.cpp's
    rendering of the exported GGUF's template (slowtune.chat.model.ChatModel, as the app's chat renders it) and
    Ollama's rendering of the Modelfile's TEMPLATE: the same text (less the BOS that llama.cpp adds for Ollama)
    and the same token ids, with the system prompt in the conversation, from the Modelfile, or none. Templates
    without a system role (Gemma 2) get the system prompt folded into the first user message on all three."""
    from transformers import AutoTokenizer

    from slowtune.chat.model import ChatModel
    from slowtune.export.gguf_writer import write_gguf
    from slowtune.testing.tiny_models import build_tiny_model, read_gguf_metadata
    from slowtune.train.data import ChatRenderer

    template = load(name)
    arch = ROUND_TRIP[name]
    model = build_tiny_model(tmp_path / "m", arch, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=128, max_position_embeddings=512,
                             tokenizer=_tokenizer_for(name, arch, template))
    gguf = write_gguf(model, tmp_path / "m.gguf", out_type="f32")
    meta = read_gguf_metadata(gguf)
    assert meta["tokenizer.chat_template"] == template
    assert name != "phi4-mini" or meta["tokenizer.ggml.pre"] == "gpt-4o"
    training = ChatRenderer(AutoTokenizer.from_pretrained(model))
    hf = training.tokenizer
    read, notes = modelfile(template, system=SYSTEM)
    assert mismatch_notes(notes) == []
    [go_template] = read["template"]
    chat = ChatModel(gguf, n_ctx=512, n_gpu_layers=0)
    try:
        assert chat.template_source == "gguf"
        bos = hf.bos_token or ""

        def training_ids(text: str) -> list[int]:  # as ChatRenderer.encode tokenizes
            ids = hf(text, add_special_tokens=False)["input_ids"]
            return [training.bos_id, *ids] if training.adds_bos and ids[:1] != [training.bos_id] else ids

        cases = [  # (conversation for training and llama.cpp, for Ollama, the Modelfile's SYSTEM)
            (CONVERSATION, CONVERSATION, None),
            (CONVERSATION[1:], CONVERSATION[1:], None),
            (CONVERSATION, CONVERSATION[1:], read["system"][0]),
        ]
        for conversation, sent, system in cases:
            text = training.render_prompt(conversation)
            assert chat._render(conversation) == text
            ollama = ollama_render(go_template, sent, system=system)
            assert ollama == (text[len(bos):] if bos and text.startswith(bos) else text)
            ids = training_ids(text)
            assert chat.tokens(text) == ids
            assert chat.llm.tokenize(ollama.encode("utf-8"), add_bos=True, special=True) == ids
        # A whole conversation, as training renders it to learn from (the template's end of turn, and EOS where
        # it writes one): llama.cpp renders it alike.
        whole = [*CONVERSATION, {"role": "assistant", "content": "Repeats a list."}]
        text = training.render_text(whole)
        assert chat._render(whole, add_generation_prompt=False) == text
        example = training.encode(whole, 4096)
        assert chat.tokens(text) == example.tokens.tolist()
        assert (example.assistant_turns, example.turns_without_end) == (2, 0)  # each answer ends with its end of turn
    finally:
        chat.close()


# --- families, detection, learned layouts --------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_detect_family(name: str) -> None:
    assert detect_family(load(name)) == CASES[name].family


def test_detect_family_unknown() -> None:
    assert detect_family("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}") is None
    assert detect_family("") is None


def test_learned_layouts() -> None:
    """What the TEMPLATE takes from each model's own chat template."""
    expect = {
        "qwen2.5": ["You are Qwen, created by Alibaba Cloud. You are a helpful assistant."],
        "smollm3": ["## Metadata\n\nKnowledge Cutoff Date: June 2025\nReasoning Mode: /think\n\n## Custom Instructions\n\n",
                    "You are a helpful AI assistant named SmolLM"],
        "llama3.2": ["Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n{{ .System }}<|eot_id|>"],
        "mistral-nemo": ["[INST]{{ if and $last $.System }}", "[/INST]{{ else if"],
        "mistral-v0.3-style": ["[INST] {{ if and $last $.System }}", '[/INST]{{ else if eq .Role "assistant" }} {{ .Content }}'],
        "tiny-inst": ["[INST] {{ if $system }}", " [/INST]"],
        "gemma2": ["<start_of_turn>user\n{{ if $system }}{{ $system }}\n\n"],
        "gemma3": ["<start_of_turn>user\n{{ if $system }}{{ $system }}\n\n"],
        "phi3.5": ["{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}", "<|user|>\n{{ .Content }}<|end|>\n"],
        "phi4-mini": ["{{ if .System }}<|system|>{{ .System }}<|end|>{{ end }}", "<|user|>{{ .Content }}<|end|>{{"],
    }
    for name, parts in expect.items():
        if CASES[name].file and shared_vocab_dir() is None:
            continue
        go_template = ollama_template(load(name))[0]
        assert go_template is not None
        for part in parts:
            assert part in go_template, (name, part)
    # Qwen3 has no default system prompt: no system turn without one.
    if shared_vocab_dir() is not None:
        go_template = ollama_template(load("qwen3"))[0]
        assert go_template is not None
        assert go_template.startswith("{{ if .System }}<|im_start|>system\n")
        assert ollama_render(go_template, CONVERSATION[1:]).startswith("<|im_start|>user\n")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_template_parses_and_renders(family: str) -> None:
    """The standard templates (used when a chat template cannot be learned from) are valid and render a
    conversation in the family's format."""
    template = FAMILIES[family].template
    gotemplate.parse(template)
    text = ollama_render(template, CONVERSATION)
    assert CONVERSATION[1]["content"] in text and CONVERSATION[3]["content"] in text
    marker = {"chatml": "<|im_start|>user\n", "llama3": "<|start_header_id|>user<|end_header_id|>\n\n",
              "mistral": "[INST]", "gemma": "<start_of_turn>user\n", "phi3": "<|user|>\n"}[family]
    assert text.count(marker) == 2


def test_a_template_that_cannot_be_reproduced_gets_a_note() -> None:
    # ChatML markers, but every turn ends with a blank line: the learned TEMPLATE cannot match it.
    odd = ("{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n\\n' }}"
           "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    template, notes = ollama_template(odd)
    assert template is not None
    assert any("does not reproduce the chat template exactly" in n for n in notes)
    # Llama 2's [INST] layout (a space and BOS between turns) is not Mistral's: standard layout, with a note.
    llama2 = ("{% for m in messages %}{% if m.role == 'user' %}{{ bos_token + '[INST] ' + m.content + ' [/INST]' }}"
              "{% elif m.role == 'assistant' %}{{ ' ' + m.content + ' ' + eos_token }}{% endif %}{% endfor %}")
    template, notes = ollama_template(llama2)
    assert template == FAMILIES["mistral"].template
    assert any("Could not learn" in n for n in notes)


# --- the Modelfile ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_stop_strings(name: str) -> None:
    """The family's end-of-turn strings, then the extra ones given, each once."""
    extra = ["<|endoftext|>", "<|im_end|>"]
    read, _ = modelfile(load(name), stop_tokens=extra)
    stops = read["stop"]
    family = CASES[name].family
    must = {"chatml": ["<|im_end|>"], "llama3": ["<|eot_id|>"], "mistral": ["[INST]", "</s>"],
            "gemma": ["<end_of_turn>"], "phi3": ["<|end|>", "<|user|>"]}[family]
    assert set(must) <= set(stops)
    own = list(FAMILIES[family].stop)
    assert stops == own + [t for t in extra if t not in own]


def test_modelfile_layout_and_quoting() -> None:
    system = 'Quote "this", keep\ttabs\nand lines; end with a quote: "x"'
    text, _ = render_modelfile(GGUF, CHATML_CHAT_TEMPLATE, system=system,
                               parameters={"temperature": 0.7, "num_ctx": 4096, "top_p": 1e-05})
    lines = text.splitlines()
    assert lines[0].startswith("#") and lines[1] == "FROM ./model-Q4_K_M.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines
    read = dict(parse_modelfile(text))
    assert read["model"] == "./model-Q4_K_M.gguf"
    assert read["system"] == system
    assert read["template"] == ollama_template(CHATML_CHAT_TEMPLATE)[0]
    assert (read["temperature"], read["num_ctx"], float(read["top_p"])) == ("0.7", "4096", 1e-05)

    assert dict(parse_modelfile(render_modelfile("my model.gguf", CHATML_CHAT_TEMPLATE)[0]))["model"] == "./my model.gguf"
    assert "FROM /abs/m.gguf\n" in render_modelfile("/abs/m.gguf", CHATML_CHAT_TEMPLATE)[0]
    assert "SYSTEM" not in render_modelfile(GGUF, CHATML_CHAT_TEMPLATE)[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"system": 'Say """hi"""'}, '"""'),
        ({"system": "zero\u200dwidth"}, "U+200D"),
        ({"system": "carriage\rreturn"}, "U+000D"),
        ({"stop_tokens": ['say "x"']}, "'\"'"),
        ({"stop_tokens": ["a\nb"]}, "U+000A"),
        ({"parameters": {"stop": 1}}, "stop_tokens"),
        ({"parameters": {"Temperature": 0.5}}, "parameter name"),
        ({"parameters": {"temperature": True}}, "finite number"),
        ({"parameters": {"temperature": math.nan}}, "finite number"),
    ],
)
def test_modelfile_rejects_what_ollama_would_misread(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        render_modelfile(GGUF, CHATML_CHAT_TEMPLATE, **kwargs)


def test_unknown_template_has_no_template_and_a_note() -> None:
    unknown = "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n{% endfor %}### assistant:\n"
    text, notes = render_modelfile(GGUF, unknown, system="Be brief.", stop_tokens=["###"])
    read = dict(parse_modelfile(text))
    assert "template" not in read and "TEMPLATE" not in text
    assert read["model"] == "./model-Q4_K_M.gguf" and read["system"] == "Be brief." and read["stop"] == "###"
    assert len(notes) == 1 and notes[0].startswith("No TEMPLATE") and "ollama show" in notes[0]
    assert ollama_template(unknown) == (None, notes)
    with pytest.raises(ValueError, match="unknown chat format"):
        ollama_template(unknown, "vicuna")


def test_ollama_render_follows_ollamas_rules() -> None:
    template = ollama_template(CHATML_CHAT_TEMPLATE)[0]
    assert template is not None
    chat = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    # Consecutive messages of one role are merged; the Modelfile's SYSTEM comes first when none is sent.
    assert ollama_render(template, chat, system="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na\n\nb<|im_end|>\n<|im_start|>assistant\n")
    # A system message that starts the request replaces the Modelfile's; one later on does not.
    sent = [{"role": "system", "content": "T"}, *chat]
    assert ollama_render(template, sent, system="S").startswith("<|im_start|>system\nT<|im_end|>\n")
    later = [*chat, {"role": "system", "content": "T"}]
    assert ollama_render(template, later, system="S").startswith("<|im_start|>system\nS\n\nT<|im_end|>\n")


def test_literal_braces_in_learned_text_are_escaped() -> None:
    """Text the TEMPLATE takes from a chat template is Go template text: "{{" in it must print as it is."""
    chat_template = (
        "{% for m in messages %}{% if m.role == 'system' %}"
        "{{ '<|im_start|>system\nRules {{ here }} -}}\n' + m.content + '<|im_end|>\n' }}"
        "{% else %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    template, notes = ollama_template(chat_template)
    assert template is not None and mismatch_notes(notes) == []
    assert '{{ "{{" }}' in template
    expected = jinja_render(chat_template, CONVERSATION)
    assert "Rules {{ here }} -}}\n" in expected
    assert ollama_render(template, CONVERSATION) == expected


def test_module_imports_no_jinja() -> None:
    code = ("import sys, slowtune.export.modelfile, slowtune.export.gotemplate; "
            "print(sorted(m for m in ('jinja2', 'transformers', 'mlx', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- README.md ----------------------------------------------------------------------------------------------
def test_export_readme() -> None:
    files = [GGUF, "model-F16.gguf", "Modelfile", "README.md"]
    text = export_readme(files, family="llama3", system="Answer from the manual.\nIt's fine.")
    for f in files:
        assert f"`{f}`" in text
    for needle in ("llama-cli -m model-Q4_K_M.gguf", "llama-server -m model-Q4_K_M.gguf",
                   "ollama create model -f Modelfile", "ollama run model", "LM Studio", "lms import model-Q4_K_M.gguf",
                   "Llama 3", "(Q4_K_M)", "(F16)", "Answer from the manual.\nIt's fine.",
                   "-sys 'Answer from the manual.\nIt'\"'\"'s fine.'"):
        assert needle in text, needle
    bare = export_readme(["my model.gguf"], family=None, system=None)
    assert "llama-cli -m 'my model.gguf'" in bare and 'FROM "./my model.gguf"' in bare
    assert "-sys" not in bare and "system prompt" not in bare
    with pytest.raises(ValueError, match=r"no \.gguf"):
        export_readme(["Modelfile"], family="chatml", system=None)


# --- the Go template renderer ---------------------------------------------------------------------------
GO_CASES: list[tuple[str, dict[str, Any], str]] = [
        # trim markers take every space, tab, CR and newline on their side, and nothing else
        ("a \t\r\n {{- .X -}} \n\t b", {"X": 1}, "a1b"),
        ("a {{ .X }} b", {"X": 1}, "a 1 b"),
        ("a\n{{- .X }}\nb", {"X": "x"}, "ax\nb"),
        ("a\n{{ .X -}}\nb", {"X": "x"}, "a\nxb"),
        ("{{-3}}", {}, "-3"),  # no space after "{{-": a negative number, not a trim marker
        ("a {{- /* note */ -}} b{{/* c */}}", {}, "ab"),
        # conditions, with Go's truth: empty strings, lists and maps, 0, false are false
        ('{{ if eq .R "u" }}U{{ else if eq .R "a" "b" }}AB{{ else }}X{{ end }}', {"R": "b"}, "AB"),
        ("{{ if .S }}s{{ end }}{{ if .N }}n{{ end }}{{ if .L }}l{{ end }}{{ if .M }}m{{ end }}{{ if .F }}f{{ end }}",
         {"S": "", "N": 0, "L": [], "M": {}, "F": False}, ""),
        ("{{ if not .F }}{{ ne .A .B }}{{ end }}", {"F": False, "A": "x", "B": "y"}, "true"),
        # and/or return the deciding value, and stop evaluating there (Go 1.18+)
        ('{{ or .A "fallback" }}|{{ and .B .A }}|{{ and false .Missing }}', {"A": "", "B": "b"}, "fallback||false"),
        # range: the dot, index and element variables, $ for the data, else for an empty list
        ("{{ range $i, $m := .L }}{{ $i }}{{ . }}{{ $m }}{{ $.X }};{{ end }}", {"L": ["a", "b"], "X": "!"}, "0aa!;1bb!;"),
        ("{{ range .L }}x{{ else }}empty{{ end }}", {"L": []}, "empty"),
        ("{{ range $m := .L }}{{ range $m.In }}{{ . }}{{ end }}{{ end }}", {"L": [{"In": [1, 2]}, {"In": [3]}]}, "123"),
        # variables: assignment reaches the outer variable across iterations
        ('{{ $s := .S }}{{ range .L }}{{ if $s }}[{{ $s }}]{{ $s = "" }}{{ end }}{{ . }}{{ end }}',
         {"S": "sys", "L": ["a", "b"]}, "[sys]ab"),
        # len counts bytes of strings, as Go does; slice
        ('{{ len "é" }} {{ len .L }} {{ len (slice .L 1) }} {{ len (slice .L 1 2) }} {{ slice "hello" 1 3 }}',
         {"L": ["a", "b", "c"]}, "2 3 2 1 el"),
        ("{{ range $i, $_ := .L }}{{ if eq (len (slice $.L $i)) 1 }}last={{ $i }}{{ end }}{{ end }}",
         {"L": [1, 2, 3]}, "last=2"),
        # literals
        ('{{ "tab\\there \\"q\\" \\u00e9" }}{{ `raw\\n` }}{{ true }}{{ 12 }}', {}, 'tab\there "q" éraw\\ntrue12'),
        # data is never template text
        ("{{ .C }}", {"C": "{{ .C }} {{- x"}, "{{ .C }} {{- x"),
]


@pytest.mark.parametrize(("source", "data", "expected"), GO_CASES)
def test_go_renderer(source: str, data: dict[str, Any], expected: str) -> None:
    assert gotemplate.render(source, data) == expected


@pytest.mark.parametrize(
    ("source", "data", "message"),
    [
        ('{{ printf "%s" .X }}', {"X": 1}, "function 'printf' is not supported"),
        ("{{ json .X }}", {"X": 1}, "function 'json' is not supported"),
        ("{{ .X | len }}", {"X": "a"}, "pipelines with '|' are not supported"),
        ("{{ with .X }}{{ . }}{{ end }}", {"X": 1}, "{{ with }} is not supported"),
        ('{{ template "t" }}', {}, "{{ template }} is not supported"),
        ('{{ define "t" }}x{{ end }}', {}, "{{ define }} is not supported"),
        ("{{ range .L }}{{ break }}{{ end }}", {"L": [1]}, "{{ break }} is not supported"),
        ("{{ if .X }}open", {"X": 1}, "has no {{ end }}"),
        ("text {{ end }}", {}, "unexpected {{ end }} outside if or range"),
        ("{{ else }}", {}, "unexpected {{ else }}"),
        ("a {{ .X", {"X": 1}, "unclosed action"),
        ("{{ .Nope }}", {"X": 1}, "no field 'Nope' (fields here: X)"),
        ("{{ .X.Y }}", {"X": "s"}, "can't evaluate field Y in type string"),
        ("{{ $x }}", {}, "undefined variable $x"),
        ("{{ range .L }}{{ $v := . }}{{ end }}{{ $v }}", {"L": [1]}, "undefined variable $v"),
        ('{{ eq .N "1" }}', {"N": 1}, "incompatible types for comparison: int and string"),
        ("{{ eq .N }}", {"N": 1}, "eq takes 2 or more arguments"),
        ("{{ .L }}", {"L": [1]}, "printing a slice is not supported"),
        ("{{ /* c */ }}", {}, "unexpected '/'"),
        ("{{ 1.5 }}", {}, "only decimal integers"),
        ("{{ range .S }}{{ end }}", {"S": "abc"}, "range over string"),
        ('{{ "abc }}', {}, "unterminated quoted string"),
        ("{{ slice .L 2 1 }}", {"L": [1, 2]}, "index out of range"),
        ("{{}}", {}, "empty action"),
        ("{{ .X .Y }}", {"X": 1, "Y": 2}, "can't give arguments to a non-function"),
        ("{{/* unclosed }}", {}, "unclosed comment"),
    ],
)
def test_go_renderer_errors_clearly(source: str, data: dict[str, Any], message: str) -> None:
    with pytest.raises(GoTemplateError, match=re.escape(message)):
        gotemplate.render(source, data)


def test_go_renderer_error_names_the_line() -> None:
    with pytest.raises(GoTemplateError, match=r"line 3: function 'index'") as caught:
        gotemplate.parse("a\nb\n{{ index .L 0 }}")
    assert isinstance(caught.value, ValueError) and caught.value.line == 3


# --- optional: the renderer against Go's own text/template ---------------------------------------------
_GO_PROGRAM = """package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Case struct {
	Template string         `json:"template"`
	Data     map[string]any `json:"data"`
}

func main() {
	var cases []Case
	if err := json.NewDecoder(os.Stdin).Decode(&cases); err != nil {
		panic(err)
	}
	out := []string{}
	for _, c := range cases {
		var sb strings.Builder
		t, err := template.New("").Option("missingkey=zero").Parse(c.Template)
		if err == nil {
			err = t.Execute(&sb, c.Data)
		}
		if err != nil {
			sb.Reset()
			sb.WriteString("ERROR: " + err.Error())
		}
		out = append(out, sb.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def test_renderer_agrees_with_go(tmp_path: Path) -> None:
    """Where a Go toolchain is installed (Debian: golang-go), Go's text/template renders every TEMPLATE, for
    a few conversations, and the renderer test cases above exactly as gotemplate does. Ollama renders with
    text/template and missingkey=zero, as the program here does."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain (`go`) on PATH: this cross-check runs where one is installed")
    names = [n for n in CASES if not CASES[n].file or shared_vocab_dir() is not None]
    conversations = [CONVERSATION, CONVERSATION[1:], CONVERSATION[:3], [], [{"role": "user", "content": "é ü"}]]
    cases, expected = [], []
    for name in names:
        template = ollama_template(load(name))[0]
        assert template is not None
        for conversation in conversations:
            for system in (None, "From the Modelfile."):
                cases.append({"template": template, "data": ollama_values(conversation, system=system)})
                expected.append(ollama_render(template, conversation, system=system))
    for source, data, text in GO_CASES:
        cases.append({"template": source, "data": data})
        expected.append(text)
    (tmp_path / "main.go").write_text(_GO_PROGRAM)
    run = subprocess.run([go, "run", "main.go"], cwd=tmp_path, input=json.dumps(cases), capture_output=True,
                         text=True, timeout=300, env=_go_env(tmp_path))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == expected


def _go_env(tmp_path: Path) -> dict[str, str]:
    """The environment, with Go's cache and path in tmp_path where the user has set none."""
    env = dict(os.environ)
    env.setdefault("GOCACHE", str(tmp_path / "gocache"))
    env.setdefault("GOPATH", str(tmp_path / "gopath"))
    return env
