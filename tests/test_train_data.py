"""Chat rendering with assistant-only loss masks, data sources, and length-sorted batches (slowtune.train.data).

The template tests build a small byte-level BPE tokenizer that has each real template's special tokens, so
they run in milliseconds; the real-vocabulary tests rebuild Qwen2's, Llama 3's and Llama 2's tokenizers from
llama.cpp's vocab files. Both skip with a message when the shared fixtures folder is absent.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from slowtune import dataset
from slowtune.dataset import DatasetRow
from slowtune.store import Project
from slowtune.testing import tiny_models as tm
from slowtune.train.data import (
    Batch,
    ChatRenderer,
    DataSourceError,
    Example,
    TemplateRenderError,
    encode_all,
    load_conversations,
    make_batches,
    padding_fraction,
)

SYSTEM = "Answer in one short sentence."
USER_1 = "What colour is the sky on a clear day?"
ANSWER_1 = "Blue, because air scatters blue light the most."
USER_2 = "And the grass?"
ANSWER_2 = "Green, from the chlorophyll in its leaves."
CHAT = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER_1},
    {"role": "assistant", "content": ANSWER_1},
    {"role": "user", "content": USER_2},
    {"role": "assistant", "content": ANSWER_2},
]


@dataclass(frozen=True)
class TemplateCase:
    """A real template and the special tokens a tokenizer needs for it."""

    special_tokens: tuple[str, ...]
    bos: str | None  # the tokenizer's BOS, added in front of plain encodings when set
    eos: str
    end_of_turn: str  # what closes an assistant turn in this template's output
    system_role: bool  # does a training conversation keep its system message as one?


CASES = {
    "Qwen-Qwen2.5-7B-Instruct.jinja": TemplateCase(tm.CHATML_SPECIAL_TOKENS, None, "<|im_end|>", "<|im_end|>", True),
    "Qwen-Qwen3-0.6B.jinja": TemplateCase(
        (*tm.CHATML_SPECIAL_TOKENS, "<think>", "</think>"), None, "<|im_end|>", "<|im_end|>", True
    ),
    "meta-llama-Llama-3.2-3B-Instruct.jinja": TemplateCase(
        tm.LLAMA3_SPECIAL_TOKENS, "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>", True
    ),
    # Nemo writes the system prompt only in front of a *last* user message: a conversation that ends with
    # the assistant's answer loses it, so the renderer folds it into the first user turn.
    "mistralai-Mistral-Nemo-Instruct-2407.jinja": TemplateCase(
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"), "<s>", "</s>", "</s>", False
    ),
    "google-gemma-2-2b-it.jinja": TemplateCase(
        ("<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"), "<bos>", "<eos>", "<end_of_turn>", False
    ),
    "HuggingFaceTB-SmolLM3-3B.jinja": TemplateCase(
        ("<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|end_of_text|>", "<think>", "</think>"),
        None,
        "<|im_end|>",
        "<|im_end|>",
        True,
    ),
}


def _templates_dir() -> Path:
    folder = tm.shared_vocab_dir()
    if folder is None or not (folder / "templates").is_dir():
        pytest.skip(
            "real chat templates not found: expected <project root>/../shared/fixtures/llama.cpp-vocab/templates "
            "or a folder named by SLOWTUNE_VOCAB_FIXTURES"
        )
    return folder / "templates"


@functools.cache
def _tokenizer(special_tokens: tuple[str, ...], bos: str | None, eos: str, template: str):
    from transformers import PreTrainedTokenizerFast

    tokenizer = tm.train_bpe_tokenizer(1024, tm.QWEN2_SPLIT_REGEX, special_tokens, bos_token=bos)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token=eos,
        chat_template=template,
        clean_up_tokenization_spaces=False,
    )


def _case_tokenizer(name: str):
    case = CASES[name]
    template = (_templates_dir() / name).read_text(encoding="utf-8")
    return _tokenizer(case.special_tokens, case.bos, case.eos, template)


def _chatml_tokenizer(template: str = tm.CHATML_CHAT_TEMPLATE, bos: str | None = None):
    special = tm.CHATML_SPECIAL_TOKENS if bos is None else (*tm.CHATML_SPECIAL_TOKENS, bos)
    return _tokenizer(special, bos, "<|im_end|>", template)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _masked_segments(tokenizer, example: Example) -> list[str]:
    return [tokenizer.decode(example.tokens[a:b].tolist()) for a, b in _runs(example.mask)]


def _unmasked_text(tokenizer, example: Example) -> str:
    return tokenizer.decode(example.tokens[~example.mask].tolist())


# --------------------------------------------------------------------------------------------------------
# Real templates
# --------------------------------------------------------------------------------------------------------


def test_every_shared_template_has_a_case() -> None:
    # A template added to the shared folder must be added to CASES, or it would go untested.
    found = {p.name for p in _templates_dir().glob("*.jinja")}
    assert found, "the templates folder is empty"
    assert found <= set(CASES), f"templates with no test case: {sorted(found - set(CASES))}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_template_masks_exactly_each_answer_and_its_end_of_turn(name: str) -> None:
    case = CASES[name]
    tokenizer = _case_tokenizer(name)
    renderer = ChatRenderer(tokenizer)
    assert renderer.supports_system_role is case.system_role
    example = renderer.encode(CHAT, max_seq_len=4096)

    # The loss covers each answer plus the token that ends its turn, in both turns, and nothing else.
    assert _masked_segments(tokenizer, example) == [ANSWER_1 + case.end_of_turn, ANSWER_2 + case.end_of_turn]
    unmasked = _unmasked_text(tokenizer, example)
    for text in (SYSTEM, USER_1, USER_2):
        assert text in unmasked
    assert example.assistant_turns == 2 and example.turns_without_end == 0
    assert not example.truncated and example.original_length == len(example.tokens)
    assert example.tokens.dtype == np.int32 and example.mask.dtype == np.bool_

    # Special tokens are single ids: as many end-of-turn ids as the text has end-of-turn markers.
    text = renderer.render_text(CHAT)
    eot_id = tokenizer.convert_tokens_to_ids(case.end_of_turn)
    assert int((example.tokens == eot_id).sum()) == text.count(case.end_of_turn) >= 2

    # One BOS at most, and where the template wants one, exactly one, in front.
    if case.bos is not None:
        bos_id = tokenizer.convert_tokens_to_ids(case.bos)
        assert example.tokens[0] == bos_id and int((example.tokens == bos_id).sum()) == 1

    # Deterministic: the same text and the same tokens every time, from a fresh renderer too.
    again = ChatRenderer(tokenizer).encode(CHAT, max_seq_len=4096)
    assert renderer.render_text(CHAT) == text
    assert np.array_equal(again.tokens, example.tokens) and np.array_equal(again.mask, example.mask)


def test_templates_without_a_usable_system_role_get_it_folded_into_the_first_user_turn() -> None:
    gemma = ChatRenderer(_case_tokenizer("google-gemma-2-2b-it.jinja"))
    with pytest.raises(Exception, match="System role not supported"):
        gemma.tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert gemma.supports_system_role is False
    assert f"<start_of_turn>user\n{SYSTEM}\n\n{USER_1}<end_of_turn>" in gemma.render_text(CHAT)

    # Mistral Nemo raises nothing, but drops the system prompt of a conversation that ends with an answer.
    nemo = ChatRenderer(_case_tokenizer("mistralai-Mistral-Nemo-Instruct-2407.jinja"))
    assert SYSTEM not in nemo.tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert nemo.supports_system_role is False
    assert f"[INST]{SYSTEM}\n\n{USER_1}[/INST]{ANSWER_1}</s>" in nemo.render_text(CHAT)

    qwen = ChatRenderer(_case_tokenizer("Qwen-Qwen2.5-7B-Instruct.jinja"))
    assert qwen.supports_system_role is True
    assert f"<|im_start|>system\n{SYSTEM}<|im_end|>" in qwen.render_text(CHAT)


def test_a_default_system_prompt_of_the_template_is_not_trained_on() -> None:
    tokenizer = _case_tokenizer("Qwen-Qwen2.5-7B-Instruct.jinja")
    renderer = ChatRenderer(tokenizer)
    chat = CHAT[1:]
    assert "You are Qwen, created by Alibaba Cloud." in renderer.render_text(chat)
    example = renderer.encode(chat, 4096)
    assert _masked_segments(tokenizer, example) == [ANSWER_1 + "<|im_end|>", ANSWER_2 + "<|im_end|>"]
    assert "You are Qwen" in _unmasked_text(tokenizer, example)


def test_qwen3_think_block_is_context_and_prefix_rendering_would_get_it_wrong() -> None:
    tokenizer = _case_tokenizer("Qwen-Qwen3-0.6B.jinja")
    renderer = ChatRenderer(tokenizer)
    text = renderer.render_text(CHAT)
    # Only the answer after the last user message gets the empty think block.
    assert f"<|im_start|>assistant\n{ANSWER_1}<|im_end|>" in text
    assert f"<|im_start|>assistant\n<think>\n\n</think>\n\n{ANSWER_2}<|im_end|>" in text
    # So rendering the conversation up to the first answer is not a prefix of the whole rendering...
    assert not text.startswith(renderer.render_text(CHAT[:3]))
    # ...and "everything after the last generation prompt" would train on the template's think block.
    prompt = renderer.render_prompt(CHAT[:4])
    assert text.startswith(prompt) and text[len(prompt) :].startswith("<think>")

    example = renderer.encode(CHAT, 4096)
    assert _masked_segments(tokenizer, example) == [ANSWER_1 + "<|im_end|>", ANSWER_2 + "<|im_end|>"]
    assert "<think>" in _unmasked_text(tokenizer, example)


def test_qwen3_answers_with_reasoning_are_masked_as_rendered() -> None:
    tokenizer = _case_tokenizer("Qwen-Qwen3-0.6B.jinja")
    renderer = ChatRenderer(tokenizer)
    first = "<think>\nThe sky scatters blue light.\n</think>\n\n" + ANSWER_1
    last = "<think>\nGrass has chlorophyll.\n</think>\n\n" + ANSWER_2
    chat = [*CHAT[:2], {"role": "assistant", "content": first}, CHAT[3], {"role": "assistant", "content": last}]
    example = renderer.encode(chat, 4096)
    # The template drops an earlier turn's reasoning and keeps the last one's: the mask follows the text.
    assert _masked_segments(tokenizer, example) == [ANSWER_1 + "<|im_end|>", last + "<|im_end|>"]


@pytest.mark.parametrize(
    "name", ["Qwen-Qwen2.5-7B-Instruct.jinja", "meta-llama-Llama-3.2-3B-Instruct.jinja", "google-gemma-2-2b-it.jinja"]
)
def test_answers_that_also_occur_in_headers_or_questions_are_found_in_the_right_place(name: str) -> None:
    case = CASES[name]
    tokenizer = _case_tokenizer(name)
    renderer = ChatRenderer(tokenizer)
    # "user" and "system" occur in turn headers, and the second answer repeats the second question.
    chat = [
        {"role": "system", "content": "user"},
        {"role": "user", "content": "Who asks the questions here?"},
        {"role": "assistant", "content": "user"},
        {"role": "user", "content": "model"},
        {"role": "assistant", "content": "model"},
    ]
    example = renderer.encode(chat, 4096)
    assert _masked_segments(tokenizer, example) == ["user" + case.end_of_turn, "model" + case.end_of_turn]
    # The user's turn also ends with the end-of-turn token, so check where the runs are: the first answer
    # after the first question, the second one last (the question "model" stays unmasked).
    (first_start, _), (_, last_end) = _runs(example.mask)
    assert "Who asks the questions here?" in tokenizer.decode(example.tokens[:first_start].tolist())
    assert tokenizer.decode(example.tokens[last_end:].tolist()).strip() == ""
    assert "model" in _unmasked_text(tokenizer, example).replace("<start_of_turn>model", "")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Qwen-Qwen2.5-7B-Instruct.jinja", "  Blue.\n<|im_end|>"),  # written as given
        ("meta-llama-Llama-3.2-3B-Instruct.jinja", "Blue.<|eot_id|>"),  # `| trim`
        ("google-gemma-2-2b-it.jinja", "Blue.<end_of_turn>"),  # `| trim`
    ],
)
def test_answers_with_outer_whitespace_are_masked_as_the_template_writes_them(name: str, expected: str) -> None:
    tokenizer = _case_tokenizer(name)
    chat = [{"role": "user", "content": USER_1}, {"role": "assistant", "content": "  Blue.\n"}]
    example = ChatRenderer(tokenizer).encode(chat, 4096)
    assert _masked_segments(tokenizer, example) == [expected]


# --------------------------------------------------------------------------------------------------------
# Dates
# --------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    """transformers' strftime_now reads this clock: 2 January 2031."""
    from transformers.utils import chat_template_utils

    when = dt.datetime(2031, 1, 2, 12, 0)

    class FakeDatetime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:
            return when

    monkeypatch.setattr(chat_template_utils, "datetime", FakeDatetime)
    return when


def test_llama_date_is_pinned_whatever_the_clock_says(fake_clock: dt.datetime) -> None:
    tokenizer = _case_tokenizer("meta-llama-Llama-3.2-3B-Instruct.jinja")
    # The fake clock really is what an unpinned rendering reads: proof that the check below can fail.
    assert "Today Date: 02 Jan 2031" in tokenizer.apply_chat_template(CHAT, tokenize=False)

    renderer = ChatRenderer(tokenizer)
    assert renderer.date_string == "26 Jul 2024"
    assert "Today Date: 26 Jul 2024\n" in renderer.render_text(CHAT)
    other = ChatRenderer(tokenizer, date_string="01 Feb 2025")
    assert other.date_string == "01 Feb 2025" and "Today Date: 01 Feb 2025\n" in other.render_text(CHAT)


def test_templates_that_call_strftime_now_get_the_pinned_date(fake_clock: dt.datetime) -> None:
    template = "{{ strftime_now('%Y-%m-%d') }}|" + tm.CHATML_CHAT_TEMPLATE
    tokenizer = _chatml_tokenizer(template)
    assert tokenizer.apply_chat_template(CHAT, tokenize=False).startswith("2031-01-02|")
    renderer = ChatRenderer(tokenizer)
    assert renderer.render_text(CHAT).startswith("2024-07-26|")
    assert renderer.pinned_date.date() == dt.date(2024, 7, 26)


def test_a_date_string_that_cannot_be_read_is_refused() -> None:
    with pytest.raises(ValueError, match="26 Jul 2024"):
        ChatRenderer(_chatml_tokenizer(), date_string="2024-07-26")


# --------------------------------------------------------------------------------------------------------
# BOS, special tokens, end of turn
# --------------------------------------------------------------------------------------------------------


def test_bos_is_added_once_when_the_tokenizer_adds_it_and_the_template_does_not() -> None:
    tokenizer = _chatml_tokenizer(bos="<|begin_of_text|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    renderer = ChatRenderer(tokenizer)
    assert renderer.adds_bos
    example = renderer.encode(CHAT, 4096)
    assert example.tokens[0] == bos_id and int((example.tokens == bos_id).sum()) == 1
    assert _masked_segments(tokenizer, example) == [ANSWER_1 + "<|im_end|>", ANSWER_2 + "<|im_end|>"]

    plain = ChatRenderer(_chatml_tokenizer())
    assert not plain.adds_bos
    assert plain.encode(CHAT, 4096).tokens[0] == plain.tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_special_tokens_in_the_template_are_single_ids() -> None:
    tokenizer = _chatml_tokenizer()
    example = ChatRenderer(tokenizer).encode(CHAT, 4096)
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    assert int((example.tokens == start).sum()) == 5 and int((example.tokens == end).sum()) == 5
    # No piece of "<|im_end|>" was spelled out as ordinary text.
    assert "<|" not in tokenizer.decode(example.tokens[(example.tokens != start) & (example.tokens != end)].tolist())


def test_a_template_without_end_of_turn_tokens_is_reported() -> None:
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    tokenizer = _chatml_tokenizer(template)
    examples, report = encode_all(ChatRenderer(tokenizer), [CHAT], 4096)
    assert [e.turns_without_end for e in examples] == [2]
    assert report.turns_without_end_of_turn == 2 and "no end-of-turn token" in report.summary()
    # No special token fences the answers in here, so tokens straddle them (" Blue", ".\n"): still masked.
    assert [s.strip() for s in _masked_segments(tokenizer, examples[0])] == [ANSWER_1, ANSWER_2]


def test_the_first_token_is_never_a_target() -> None:
    # Nothing comes before position 0 to predict it from, even when a template starts with the answer.
    tokenizer = _chatml_tokenizer("{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
    example = ChatRenderer(tokenizer).encode([{"role": "assistant", "content": "Blue sky."}], 4096)
    assert not example.mask[0] and example.mask[1:].all()


def test_a_tokenizer_without_a_chat_template_is_refused() -> None:
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tm.train_bpe_tokenizer(512), eos_token="<|im_end|>")
    with pytest.raises(TemplateRenderError, match="no chat template"):
        ChatRenderer(bare)


def test_mlx_lm_tokenizer_wrapper_is_accepted(tiny_llama: Path) -> None:
    from mlx_lm.utils import load_tokenizer

    wrapper = load_tokenizer(tiny_llama)
    renderer = ChatRenderer(wrapper)
    assert set(wrapper.eos_token_ids) <= renderer.end_of_turn_ids
    example = renderer.encode(CHAT, 4096)
    assert _masked_segments(wrapper, example) == [ANSWER_1 + "<|eot_id|>", ANSWER_2 + "<|eot_id|>"]
    bos_id = wrapper.convert_tokens_to_ids("<|begin_of_text|>")
    assert int((example.tokens == bos_id).sum()) == 1


@pytest.mark.parametrize(
    ("vocab", "end_of_turn"), [("qwen2", "<|im_end|>"), ("llama-bpe", "<|eot_id|>"), ("llama-spm", "</s>")]
)
def test_real_tokenizers_with_their_templates(llama_cpp_vocab_dir: Path, vocab: str, end_of_turn: str) -> None:
    from transformers import PreTrainedTokenizerFast

    spec = tm.tokenizer_from_vocab_gguf(llama_cpp_vocab_dir / f"ggml-vocab-{vocab}.gguf")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=spec.tokenizer,
        bos_token=spec.bos_token,
        eos_token=spec.eos_token,
        pad_token=spec.pad_token,
        chat_template=spec.chat_template,
        clean_up_tokenization_spaces=False,
    )
    answers = ["Blue, I'd say: 1,234 shades 🌤 of it.", "Grün, sûrement — 42."]
    chat = [*CHAT[:2], {"role": "assistant", "content": answers[0]}, CHAT[3],
            {"role": "assistant", "content": answers[1]}]
    renderer = ChatRenderer(tokenizer)
    example = renderer.encode(chat, 4096)
    segments = _masked_segments(tokenizer, example)
    # SentencePiece writes the space in front of an answer into its first token; decoding drops it.
    assert [s.strip() for s in segments] == [a + end_of_turn for a in answers]
    if spec.bos_token is not None and spec.add_bos_token:
        assert int((example.tokens == tokenizer.convert_tokens_to_ids(spec.bos_token)).sum()) == 1
    assert USER_1 in _unmasked_text(tokenizer, example)


# --------------------------------------------------------------------------------------------------------
# Truncation and encode_all
# --------------------------------------------------------------------------------------------------------


def test_truncation_keeps_the_first_tokens_and_says_so() -> None:
    renderer = ChatRenderer(_chatml_tokenizer())
    full = renderer.encode(CHAT, 4096)
    cut = renderer.encode(CHAT, 20)
    assert cut.truncated and not full.truncated
    assert cut.original_length == full.original_length == len(full.tokens) > 20
    assert np.array_equal(cut.tokens, full.tokens[:20]) and np.array_equal(cut.mask, full.mask[:20])
    with pytest.raises(ValueError, match="max_seq_len"):
        renderer.encode(CHAT, 1)


def test_encode_all_counts_truncation_and_drops_with_reasons() -> None:
    renderer = ChatRenderer(_chatml_tokenizer())
    full = renderer.encode(CHAT, 4096)
    second_answer_start = _runs(full.mask)[1][0]
    first_answer_start = _runs(full.mask)[0][0]
    max_len = second_answer_start + 2  # cuts into the second answer

    long_question = [{"role": "user", "content": USER_1 * 20}, {"role": "assistant", "content": ANSWER_1}]
    invalid = [{"role": "user", "content": USER_1}]
    conversations = [CHAT, long_question, invalid, CHAT[1:3]]
    examples, report = encode_all(renderer, conversations, max_len)

    assert first_answer_start < max_len < len(full.tokens)
    assert report.examples == len(examples) == 2
    assert report.truncated == 1 and examples[0].truncated and not examples[1].truncated
    assert [(d.index, d.reason.split(":")[0]) for d in report.dropped] == [
        (1, f"no assistant token left after truncation to {max_len} tokens"),
        (2, "invalid conversation"),
    ]
    assert "last message" in report.dropped[1].reason
    assert report.total_tokens == sum(len(e.tokens) for e in examples)
    assert report.loss_tokens == sum(int(e.mask.sum()) for e in examples) > 0
    assert report.dropped_reasons() == {d.reason: 1 for d in report.dropped}
    assert "2 conversations" in report.summary() and "1 truncated" in report.summary()
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["dropped"][0] == {"index": 1, "reason": report.dropped[0].reason}
    assert as_json["loss_tokens"] == report.loss_tokens


def test_conversations_the_template_refuses_are_dropped_with_the_reason() -> None:
    template = (
        "{% for m in messages %}{% if 'forbidden' in m.content %}{{ raise_exception('no forbidden words') }}"
        "{% endif %}{% endfor %}" + tm.CHATML_CHAT_TEMPLATE
    )
    renderer = ChatRenderer(_chatml_tokenizer(template))
    bad = [{"role": "user", "content": "a forbidden question"}, {"role": "assistant", "content": "No."}]
    examples, report = encode_all(renderer, [bad, CHAT], 4096)
    assert len(examples) == 1
    assert [d.index for d in report.dropped] == [0] and "no forbidden words" in report.dropped[0].reason


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------

QA = [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]


def _qa(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question {n}?"}, {"role": "assistant", "content": f"Answer {n}."}]


def test_load_a_data_folder(tmp_path: Path) -> None:
    dataset.write_jsonl([_qa(1), _qa(2)], tmp_path / "train.jsonl")
    dataset.write_jsonl([_qa(3)], tmp_path / "valid.jsonl")
    dataset.write_jsonl([_qa(4)], tmp_path / "test.jsonl")
    assert load_conversations(tmp_path) == {"train": [_qa(1), _qa(2)], "valid": [_qa(3)], "test": [_qa(4)]}

    only_train = tmp_path / "only"
    only_train.mkdir()
    dataset.write_jsonl([_qa(5)], only_train / "train.jsonl")
    assert load_conversations(str(only_train)) == {"train": [_qa(5)], "valid": [], "test": []}


def test_load_a_single_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    dataset.write_jsonl([_qa(1), _qa(2)], path)
    assert load_conversations(path) == {"train": [_qa(1), _qa(2)], "valid": [], "test": []}


def test_load_a_project_takes_accepted_rows_and_probes_as_test(tmp_path: Path) -> None:
    with Project.create(tmp_path / "proj") as project:
        dataset.add_rows(
            project,
            [
                DatasetRow(_qa(1)),
                DatasetRow(_qa(2), split="valid"),
                DatasetRow(_qa(3), split="probe"),
                DatasetRow(_qa(4), status="rejected", reject_reason="off topic"),
            ],
        )
    assert load_conversations(tmp_path / "proj") == {"train": [_qa(1)], "valid": [_qa(2)], "test": [_qa(3)]}


def test_bad_sources_are_named(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "empty").mkdir()
    for bad, what in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "notes.txt", "not a .jsonl file"),
        (tmp_path / "empty", "no train.jsonl"),
    ]:
        with pytest.raises(DataSourceError, match=what) as info:
            load_conversations(bad)
        assert isinstance(info.value, ValueError) and str(bad) in str(info.value)

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"messages": QA}) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl line 2"):
        load_conversations(broken)


# --------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------


def _examples(lengths: list[int], seed: int = 0) -> list[Example]:
    """Examples whose tokens say which example they are (every token = 1000 + index) with random masks."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        mask = rng.random(n) < 0.5
        mask[0] = False
        mask[-1] = True
        out.append(Example(np.full(n, 1000 + i, np.int32), mask, False, n))
    return out


LENGTHS = [int(n) for n in np.random.default_rng(7).integers(3, 200, size=53)]


def test_batches_are_deterministic_per_seed_and_epoch() -> None:
    examples = _examples(LENGTHS)

    def key(batches: list[Batch]) -> list[tuple[int, ...]]:
        return [b.example_indices for b in batches]

    first = make_batches(examples, 4, seed=1, epoch=0, pad_id=0)
    same = make_batches(examples, 4, seed=1, epoch=0, pad_id=0)
    assert key(first) == key(same)
    assert all(np.array_equal(a.inputs, b.inputs) for a, b in zip(first, same, strict=True))
    assert key(make_batches(examples, 4, seed=1, epoch=1, pad_id=0)) != key(first)
    # The batches come in a shuffled order, not shortest first, and a different one each epoch.
    longest = [max(b.lengths) for b in first]
    assert longest != sorted(longest)
    later = make_batches(examples, 4, seed=1, epoch=1, pad_id=0)
    assert [max(b.lengths) for b in later] != longest
    assert key(make_batches(examples, 4, seed=2, epoch=0, pad_id=0)) != key(first)


def test_every_example_is_used_once_per_epoch_with_right_padding_masked() -> None:
    examples = _examples(LENGTHS)
    pad = 7
    batches = make_batches(examples, 4, seed=3, epoch=5, pad_id=pad)
    assert sorted(i for b in batches for i in b.example_indices) == list(range(len(examples)))
    assert [len(b.example_indices) for b in batches].count(1) == 1  # 53 = 13 x 4 + 1

    total_loss_tokens = 0
    for batch in batches:
        assert batch.inputs.dtype == np.int32 and batch.targets.dtype == np.int32
        assert batch.loss_mask.dtype == np.float32
        assert batch.inputs.shape == batch.targets.shape == batch.loss_mask.shape
        assert batch.inputs.shape[1] == max(batch.lengths) - 1
        for row, index in enumerate(batch.example_indices):
            ex = examples[index]
            n = len(ex.tokens)
            # The row is the example (which says its own index), shifted by one, then padding.
            assert np.array_equal(batch.inputs[row, : n - 1], ex.tokens[:-1])
            assert np.array_equal(batch.targets[row, : n - 1], ex.tokens[1:])
            assert np.array_equal(batch.loss_mask[row, : n - 1], ex.mask[1:].astype(np.float32))
            assert (batch.inputs[row, n:] == pad).all() and (batch.targets[row, n - 1 :] == pad).all()
            assert (batch.loss_mask[row, n - 1 :] == 0).all()
        assert batch.n_loss_tokens == int(batch.loss_mask.sum())
        total_loss_tokens += batch.n_loss_tokens
    assert total_loss_tokens == sum(int(e.mask[1:].sum()) for e in examples)


def test_length_sorting_cuts_padding_compared_with_random_batches() -> None:
    examples = _examples(LENGTHS)
    sorted_batches = make_batches(examples, 4, seed=0, epoch=0, pad_id=0)
    # The same batch size with examples grouped in a random order.
    order = np.random.default_rng(0).permutation(len(examples))
    random_batches = [
        make_batches([examples[i] for i in order[k : k + 4]], 4, seed=0, epoch=0, pad_id=0)[0]
        for k in range(0, len(order), 4)
    ]
    assert padding_fraction(sorted_batches) < 0.5 * padding_fraction(random_batches)
    # Each batch is a run of neighbours in the sorted list of lengths.
    ordered = sorted(LENGTHS)
    runs = {tuple(ordered[k : k + 4]) for k in range(0, len(ordered), 4)}
    assert {tuple(sorted(b.lengths)) for b in sorted_batches} == runs


def test_batch_options_and_edge_cases() -> None:
    examples = _examples([5, 9, 3, 12])
    unshuffled = make_batches(examples, 2, seed=0, epoch=0, pad_id=0, shuffle=False)
    assert [b.lengths for b in unshuffled] == [(3, 5), (9, 12)]
    rounded = make_batches(examples, 2, seed=0, epoch=0, pad_id=0, pad_to_multiple=8, shuffle=False)
    assert [b.inputs.shape[1] for b in rounded] == [7, 15]
    assert make_batches([], 2, seed=0, epoch=0, pad_id=0) == []
    with pytest.raises(ValueError, match="batch_size"):
        make_batches(examples, 0, seed=0, epoch=0, pad_id=0)


def test_encoded_examples_batch_end_to_end() -> None:
    renderer = ChatRenderer(_chatml_tokenizer())
    examples, report = encode_all(renderer, [CHAT, CHAT[1:3], CHAT[3:5], CHAT[:3]], 4096)
    batches = make_batches(examples, 3, seed=0, epoch=0, pad_id=renderer.pad_id)
    assert sum(b.n_loss_tokens for b in batches) == report.loss_tokens
    for batch in batches:
        targets = batch.targets[batch.loss_mask > 0]
        assert renderer.tokenizer.convert_tokens_to_ids("<|im_end|>") in targets
