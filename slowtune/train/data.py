"""Training data: conversations rendered with the base model's own chat template, a loss mask over the
assistant's tokens, and length-sorted batches.

Why the model's own template: the tuned model is later prompted through that same template (by mlx-lm,
and by llama.cpp once exported), so training must show it exactly the text it will see at inference.

Why a mask: the loss covers only what the assistant says (each answer, in every turn, plus the
end-of-turn token that closes it, so the model learns to stop). System and user text, and the template's
own scaffolding (headers, default system prompts, empty ``<think>`` blocks), are context, never targets.

How the mask is found. Rendering a prefix of the conversation with ``add_generation_prompt=True`` and
taking its length as "where the answer starts" is what most trainers do, and it is wrong for templates
whose output for earlier turns depends on what follows: Qwen3 gives only the assistant turn after the last
user message an empty ``<think>`` block, and Mistral Nemo writes the system prompt into the *last* user
turn. Instead, the whole conversation is rendered once, and each assistant answer is located in that
text, searching forward in conversation order and anchored on the template's own scaffolding in front of
it (learned by rendering the same conversation with placeholder contents). The answer's character span
is then mapped to tokens through the fast tokenizer's offsets, and extended over the end-of-turn
token(s) that follow it.

Only numpy and slowtune modules are imported at module level; transformers and jinja2 are imported by
the functions that need them (tests check that heavy libraries stay out of module level).
"""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slowtune.dataset import SPLIT_FILES, DatasetError, read_jsonl, rows, validate_messages
from slowtune.store import DB_NAME, Project

__all__ = [
    "END_OF_TURN_TOKENS",
    "Batch",
    "ChatRenderer",
    "DataReport",
    "DataSourceError",
    "Dropped",
    "Example",
    "TemplateRenderError",
    "encode_all",
    "load_conversations",
    "make_batches",
    "padding_fraction",
]

Messages = list[dict[str, str]]

# The splits load_conversations returns, and the dataset split each comes from (probes are the test file).
_SPLITS = {"train": "train", "valid": "valid", "test": "probe"}

# Tokens that close a chat turn in the common families. One of them that follows an answer is part of
# what the assistant must learn to write, whether or not the tokenizer names it as its EOS.
END_OF_TURN_TOKENS = (
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",  # Llama 3, after a tool call
    "<|im_end|>",  # ChatML: Qwen, SmolLM
    "<end_of_turn>",  # Gemma
    "<|end|>",  # Phi-3
    "<|end_of_text|>",
    "<|endoftext|>",
    "</s>",  # Llama 2, Mistral
    "<eos>",
)

# Placeholder contents for learning a template's scaffolding: private-use characters, which no template
# strips, trims or tests for, around the message's index.
_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")
# A system prompt no template could invent, to see whether the template keeps a system message.
_PROBE_SYSTEM = "\ue002system probe\ue003"


class DataSourceError(DatasetError):
    """The training data source is none of the forms load_conversations reads. The message names the path."""


class TemplateRenderError(ValueError):
    """The chat template cannot render a conversation, or its output cannot be lined up with the messages."""


@dataclass(frozen=True, eq=False)
class Example:
    """One rendered conversation, ready to batch.

    ``mask[i]`` is True when ``tokens[i]`` is a loss target: the model, having read ``tokens[:i]``, must
    predict it. ``assistant_turns`` and ``turns_without_end`` (assistant answers with no end-of-turn token
    after them in the full rendering) are counted before truncation.
    """

    tokens: np.ndarray  # int32 [n], the rendered conversation after truncation
    mask: np.ndarray  # bool [n]: True at the assistant's tokens
    truncated: bool  # the rendering was longer than max_seq_len and was cut
    original_length: int  # tokens before truncation
    assistant_turns: int = 0
    turns_without_end: int = 0

    @property
    def n_loss_tokens(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class Dropped:
    index: int  # position of the conversation in the list given to encode_all
    reason: str


@dataclass
class DataReport:
    """What encode_all did with a list of conversations, for the log and the GUI."""

    examples: int = 0
    dropped: list[Dropped] = field(default_factory=list)
    truncated: int = 0
    total_tokens: int = 0  # tokens in the kept examples, after truncation
    loss_tokens: int = 0  # of which loss targets
    # Assistant answers that no end-of-turn token follows in the template's output: a model trained on
    # those does not learn to stop. Non-zero means the template (or the token list) needs a look.
    turns_without_end_of_turn: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (for run metadata and ``--json`` output)."""
        return {
            "examples": self.examples,
            "dropped": [{"index": d.index, "reason": d.reason} for d in self.dropped],
            "truncated": self.truncated,
            "total_tokens": self.total_tokens,
            "loss_tokens": self.loss_tokens,
            "turns_without_end_of_turn": self.turns_without_end_of_turn,
        }

    def dropped_reasons(self) -> dict[str, int]:
        """How many conversations were dropped for each reason."""
        return dict(Counter(d.reason for d in self.dropped))

    def summary(self) -> str:
        parts = [
            f"{self.examples} conversations, {self.total_tokens} tokens of which {self.loss_tokens} are trained on"
        ]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.dropped:
            reasons = "; ".join(f"{n} × {reason}" for reason, n in self.dropped_reasons().items())
            parts.append(f"{len(self.dropped)} dropped ({reasons})")
        if self.turns_without_end_of_turn:
            parts.append(f"{self.turns_without_end_of_turn} answers have no end-of-turn token after them")
        return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------
# Rendering and masking
# --------------------------------------------------------------------------------------------------------


def _unwrap_tokenizer(tokenizer: Any) -> tuple[Any, set[int]]:
    """The transformers tokenizer inside ``tokenizer``, and any extra EOS ids the wrapper knows.

    mlx-lm's TokenizerWrapper keeps the transformers tokenizer in ``_tokenizer`` and knows the stop ids from
    generation_config.json (e.g. Gemma's <end_of_turn> next to <eos>). A transformers tokenizer also has a
    ``_tokenizer`` (the Rust backend), hence the isinstance check.
    """
    from transformers import PreTrainedTokenizerBase

    inner = getattr(tokenizer, "_tokenizer", None)
    if isinstance(inner, PreTrainedTokenizerBase):
        return inner, {int(i) for i in (getattr(tokenizer, "eos_token_ids", None) or ())}
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer, set()
    raise TypeError(
        f"expected a transformers tokenizer or mlx-lm's TokenizerWrapper, got {type(tokenizer).__name__}"
    )


def _content_variants(content: str) -> list[str]:
    """The forms a template may write a message in: as given, or trimmed (Llama 3 and Gemma ``| trim``,
    SmolLM3 ``lstrip("\\n")``). Longest first, so the fullest form that is there wins; for a reasoning answer,
    its part after "</think>" last."""
    forms = [content, content.strip(), content.lstrip(), content.rstrip(), content.lstrip("\n"),
             content.rstrip("\n"), content.strip("\n")]
    unique = sorted((f for i, f in enumerate(forms) if f and f not in forms[:i]), key=len, reverse=True)
    if "</think>" in content:
        # Reasoning templates (Qwen3) keep only the answer after "</think>" in earlier turns.
        answer = content.split("</think>")[-1].lstrip("\n")
        unique += [f for f in (answer, answer.strip()) if f and f not in unique]
    return unique


def _find_content(text: str, content: str, anchor: str, start: int) -> tuple[int, int] | None:
    """The character span of ``content`` (in one of its trimmed forms) in ``text`` at or after ``start``,
    directly after ``anchor``: the earliest match; at the same place, the longest form."""
    best: tuple[int, int] | None = None
    for form in _content_variants(content):
        at = text.find(anchor + form, start)
        if at < 0:
            continue
        span = (at + len(anchor), at + len(anchor) + len(form))
        if best is None or span[0] < best[0]:
            best = span
    return best


class ChatRenderer:
    """Renders conversations with a tokenizer's own chat template and encodes them with a loss mask.

    ``tokenizer``: what ``mlx_lm.load`` / ``mlx_lm.utils.load_tokenizer`` return (a TokenizerWrapper), or a
    transformers fast tokenizer. Its ``chat_template`` is used as is.

    ``date_string``: templates that print today's date (Llama 3.x through ``date_string`` or
    ``strftime_now``) get this date instead, so that a conversation renders the same on every day and a
    run can be repeated. The export should write the same date into the model's template; it is kept
    here as ``date_string`` (and ``pinned_date``).

    ``template_kwargs``: extra variables for the template, e.g. ``{"enable_thinking": False}``. None keeps
    each template's defaults, which is what llama.cpp and transformers use unless told otherwise.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        date_string: str = "26 Jul 2024",
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.tokenizer, wrapper_eos = _unwrap_tokenizer(tokenizer)
        hf = self.tokenizer
        try:
            self.pinned_date = dt.datetime.strptime(date_string, "%d %b %Y")
        except ValueError:
            raise ValueError(f"date_string must look like '26 Jul 2024', got {date_string!r}") from None
        self.date_string = date_string
        self.template_kwargs = dict(template_kwargs or {})
        try:
            self.chat_template: str = hf.get_chat_template()
        except ValueError as exc:
            raise TemplateRenderError(f"the tokenizer has no chat template: {exc}") from None
        self._template = self._compile(self.chat_template)
        self._skeletons: dict[tuple[str, ...], list[tuple[int, str]] | None] = {}

        try:
            hf("a", add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            raise TypeError(
                f"{type(hf).__name__} cannot give character offsets; a fast (tokenizers-backed) tokenizer is "
                "needed to line tokens up with the messages"
            ) from None

        self.special_ids = frozenset(i for i, t in hf.added_tokens_decoder.items() if t.special) | frozenset(
            hf.all_special_ids
        )
        vocab = hf.get_vocab()
        stop = set(wrapper_eos)
        if hf.eos_token_id is not None:
            stop.add(int(hf.eos_token_id))
        stop.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] in self.special_ids)
        # Ids that close an assistant turn: the mask takes them in after each answer.
        self.end_of_turn_ids = frozenset(stop)

        # Encode the rendered text with add_special_tokens=False: templates that write BOS themselves
        # (Llama 3, Gemma, Mistral) would otherwise start with two. A tokenizer that adds BOS to plain text
        # gets one in front when the template wrote none, as llama.cpp does at inference.
        self.bos_id: int | None = None if hf.bos_token_id is None else int(hf.bos_token_id)
        plain = hf("a", add_special_tokens=False)["input_ids"]
        full = hf("a")["input_ids"]
        self.adds_bos = self.bos_id is not None and len(full) > len(plain) and full[0] == self.bos_id

        self.supports_system_role = self._detect_system_role()

    # --- the template ------------------------------------------------------------------------------
    @staticmethod
    def _compile(template: str) -> Any:
        # transformers' own compiled template: the same sandboxed jinja environment and helpers
        # (raise_exception, tojson, the {% generation %} tag) that mlx-lm and transformers render with.
        # A private function, but rendering it ourselves is the one way to hand the template a pinned
        # strftime_now: apply_chat_template turns callables passed as kwargs into inert strings.
        from transformers.utils.chat_template_utils import _compile_jinja_template

        return _compile_jinja_template(template)

    def _strftime_now(self, fmt: str) -> str:
        return self.pinned_date.strftime(fmt)

    def _render(self, messages: Messages, *, add_generation_prompt: bool = False) -> str:
        variables: dict[str, Any] = dict(self.tokenizer.special_tokens_map)
        variables["date_string"] = self.date_string
        variables.update(self.template_kwargs)
        # Passed at render time, these shadow transformers' global strftime_now (which reads the clock).
        variables.update(strftime_now=self._strftime_now, tools=None, documents=None)
        return self._template.render(
            messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **variables
        )

    def _detect_system_role(self) -> bool:
        """Whether the template takes a system message: it renders one without raising, and keeps its text
        (Gemma 2 raises "System role not supported"; some templates drop it silently)."""
        from jinja2 import TemplateError

        chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
        try:
            self._render(chat)
        except TemplateError as exc:
            raise TemplateRenderError(f"the chat template cannot render a simple conversation: {exc}") from exc
        try:
            text = self._render([{"role": "system", "content": _PROBE_SYSTEM}, *chat])
        except TemplateError:
            return False
        return _PROBE_SYSTEM in text

    def _prepare(self, messages: Sequence[Mapping[str, str]]) -> Messages:
        """Plain role/content copies; a system prompt folded into the first user turn when the template has
        no system role, the way those models' makers advise: "<system>\\n\\n<user>"."""
        prepared = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self.supports_system_role or not prepared or prepared[0]["role"] != "system":
            return prepared
        system, rest = prepared[0]["content"], prepared[1:]
        if rest and rest[0]["role"] == "user":
            rest[0] = {"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}
        return rest

    def render_text(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The conversation as the template writes it (with the pinned date, so the same on every day)."""
        return self._render(self._prepare(messages))

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The conversation so far plus the template's generation prompt: what the tuned model is asked to
        continue (for evaluation), rendered exactly like the training text."""
        return self._render(self._prepare(messages), add_generation_prompt=True)

    # --- lining messages up with the rendered text -------------------------------------------------
    def _skeleton(self, roles: tuple[str, ...]) -> list[tuple[int, str]] | None:
        """For conversations with these roles: (message index, template text just before it) in the order
        the template writes them, learned by rendering placeholder contents. None when that fails."""
        if roles not in self._skeletons:
            placeholders = [{"role": r, "content": _PLACEHOLDER.format(i)} for i, r in enumerate(roles)]
            order: list[tuple[int, str]] | None = []
            try:
                text = self._render(placeholders)
            except Exception:
                # Only a hint (the real rendering is what counts): a template that chokes on placeholder
                # text, whatever the error, just means searching without anchors.
                order = None
            else:
                seen: set[int] = set()
                previous_end = 0
                for match in _PLACEHOLDER_RE.finditer(text):
                    index = int(match.group(1))
                    if index < len(roles) and index not in seen:
                        seen.add(index)
                        order.append((index, text[previous_end : match.start()]))
                    previous_end = match.end()
            self._skeletons[roles] = order
        return self._skeletons[roles]

    def assistant_spans(self, text: str, messages: Messages) -> list[tuple[int, int]]:
        """Character spans of the assistant answers in ``text`` (the rendering of ``messages``), in order.

        Messages are looked for in the order the template writes them, each after the previous one, and
        directly after the scaffolding the template puts in front of it. Anchoring matters: an answer such
        as "user" or a repeat of the question must not be found inside a header or the user's text. When
        the real rendering differs from the placeholder one (a template that branches on the content, such
        as Qwen3 on "</think>"), an answer is looked for on its own, after the previous message.
        """
        roles = tuple(m["role"] for m in messages)
        assistants = {i for i, r in enumerate(roles) if r == "assistant"}
        skeleton = self._skeleton(roles)
        if skeleton is None or not assistants <= {i for i, _ in skeleton}:
            skeleton, anchored = [(i, "") for i in range(len(messages))], False
        else:
            anchored = True

        spans: list[tuple[int, int]] = []
        cursor = 0
        for index, before in skeleton:
            content = messages[index]["content"]
            found = _find_content(text, content, before, cursor) if before else None
            if found is None and (index in assistants or not before or not anchored):
                found = _find_content(text, content, "", cursor)
            if found is None:
                if index in assistants:
                    raise TemplateRenderError(
                        f"assistant message {index} is not in the template's output as written; the template "
                        "changes assistant text, so the loss mask cannot be placed"
                    )
                continue  # a system or user text the template rewrote: not needed for the mask
            if index in assistants:
                spans.append(found)
            cursor = found[1]
        return spans

    # --- tokens ------------------------------------------------------------------------------------
    def _mask(
        self, ids: list[int], offsets: list[tuple[int, int]], text: str, spans: list[tuple[int, int]]
    ) -> tuple[np.ndarray, int]:
        """Loss mask over ``ids`` for the answer spans, each extended over its end-of-turn token(s); also
        the number of answers that have none after them."""
        n = len(ids)
        starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=n)
        ends = np.fromiter((o[1] for o in offsets), dtype=np.int64, count=n)
        mask = np.zeros(n, dtype=bool)
        without_end = 0
        for a, b in spans:
            # Every token with a character of the answer: a token that straddles the boundary (SentencePiece's
            # "▁Hello" after "[/INST]") is one the model must write.
            hit = np.flatnonzero((starts < b) & (ends > a))
            if hit.size == 0:
                continue
            mask[hit[0] : hit[-1] + 1] = True
            after = j = int(hit[-1]) + 1
            # Whitespace the template writes between an answer and its end token is the assistant's too.
            while j < n and ids[j] not in self.special_ids and text[starts[j] : ends[j]].isspace():
                j += 1
            if j < n and ids[j] in self.end_of_turn_ids:
                while j < n and ids[j] in self.end_of_turn_ids:
                    j += 1
                mask[after:j] = True
            else:
                without_end += 1
        return mask, without_end

    def encode(self, messages: Sequence[Mapping[str, str]], max_seq_len: int) -> Example:
        """Render, tokenize and mask one conversation; keep its first ``max_seq_len`` tokens.

        Raises TemplateRenderError (or jinja2's TemplateError) when the template cannot render it.
        """
        if max_seq_len < 2:
            raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
        prepared = self._prepare(messages)
        text = self._render(prepared)
        spans = self.assistant_spans(text, prepared)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [int(i) for i in encoded["input_ids"]]
        offsets = [(int(s), int(e)) for s, e in encoded["offset_mapping"]]
        if self.adds_bos and (not ids or ids[0] != self.bos_id):
            ids.insert(0, self.bos_id)  # type: ignore[arg-type]
            offsets.insert(0, (0, 0))
        mask, without_end = self._mask(ids, offsets, text, spans)
        # Position 0 has nothing before it to predict it from.
        mask[:1] = False
        keep = min(len(ids), max_seq_len)
        return Example(
            tokens=np.asarray(ids[:keep], dtype=np.int32),
            mask=mask[:keep].copy(),
            truncated=len(ids) > max_seq_len,
            original_length=len(ids),
            assistant_turns=len(spans),
            turns_without_end=without_end,
        )

    @property
    def pad_id(self) -> int:
        """A token id to pad batches with: the tokenizer's pad token, else its EOS (padding is never a
        target, so which id it is does not matter to the loss)."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0


def encode_all(
    renderer: ChatRenderer, conversations: Iterable[Sequence[Mapping[str, str]]], max_seq_len: int
) -> tuple[list[Example], DataReport]:
    """Encode conversations; those that cannot be trained on are dropped, each with its reason.

    Dropped: conversations that fail validation, that the template refuses or cannot be lined up with,
    and those with no assistant token left after truncation. Truncated ones are kept and counted.
    """
    from jinja2 import TemplateError

    examples: list[Example] = []
    report = DataReport()
    for index, messages in enumerate(conversations):
        problems = validate_messages(messages)
        if problems:
            report.dropped.append(Dropped(index, f"invalid conversation: {'; '.join(problems)}"))
            continue
        try:
            example = renderer.encode(messages, max_seq_len)
        except (TemplateError, TemplateRenderError) as exc:
            report.dropped.append(Dropped(index, f"chat template: {exc}"))
            continue
        if example.n_loss_tokens == 0:
            reason = (
                f"no assistant token left after truncation to {max_seq_len} tokens"
                if example.truncated
                else "no assistant token in the rendering"
            )
            report.dropped.append(Dropped(index, reason))
            continue
        examples.append(example)
        report.examples += 1
        report.truncated += example.truncated
        report.total_tokens += len(example.tokens)
        report.loss_tokens += example.n_loss_tokens
        report.turns_without_end_of_turn += example.turns_without_end
    return examples, report


# --------------------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------------------


def load_conversations(source: Path | str) -> dict[str, list[Messages]]:
    """Conversations by split ("train", "valid", "test"; missing splits are empty lists).

    ``source`` is one of:
    - a slowtune project folder (has project.sqlite): its accepted rows, probes as "test";
    - a folder with train.jsonl, and optionally valid.jsonl and test.jsonl;
    - a single .jsonl file, all of it "train".
    """
    path = Path(source).expanduser()
    result: dict[str, list[Messages]] = {split: [] for split in _SPLITS}
    if path.is_dir() and (path / DB_NAME).is_file():
        with Project.open(path) as project:
            for split, stored in _SPLITS.items():
                result[split] = [
                    [{"role": m["role"], "content": m["content"]} for m in row.messages]
                    for row in rows(project, stored)
                ]
        return result
    expected = (
        "expected a folder with train.jsonl (and optionally valid.jsonl and test.jsonl), "
        f"a .jsonl file, or a slowtune project folder (with {DB_NAME})"
    )
    if path.is_dir():
        files = {split: path / SPLIT_FILES[stored] for split, stored in _SPLITS.items()}
        if not files["train"].is_file():
            raise DataSourceError(f"{path}: no train.jsonl or {DB_NAME} in this folder; {expected}")
        for split, file in files.items():
            if file.is_file():
                result[split] = list(read_jsonl(file))
        return result
    if path.is_file() and path.suffix.lower() == ".jsonl":
        result["train"] = list(read_jsonl(path))
        return result
    if not path.exists():
        raise DataSourceError(f"{path}: does not exist; {expected}")
    raise DataSourceError(f"{path}: not a .jsonl file; {expected}")


# --------------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Batch:
    """One micro-batch, right-padded. Position t of ``inputs`` predicts ``targets[:, t]``."""

    inputs: np.ndarray  # int32 [B, T] = tokens[:, :-1] of the padded batch
    targets: np.ndarray  # int32 [B, T] = tokens[:, 1:]
    loss_mask: np.ndarray  # float32 [B, T] = mask[:, 1:]; 0 on padding
    n_loss_tokens: int
    example_indices: tuple[int, ...] = ()  # which examples (positions in the list given), row by row
    lengths: tuple[int, ...] = ()  # each row's example length in tokens, before padding


def _collate(examples: Sequence[Example], indices: Sequence[int], pad_id: int, multiple: int) -> Batch:
    length = max(len(examples[i].tokens) for i in indices)
    length = -(-length // multiple) * multiple
    tokens = np.full((len(indices), length), pad_id, dtype=np.int32)
    mask = np.zeros((len(indices), length), dtype=bool)
    for row, i in enumerate(indices):
        n = len(examples[i].tokens)
        tokens[row, :n] = examples[i].tokens
        mask[row, :n] = examples[i].mask
    loss_mask = np.ascontiguousarray(mask[:, 1:], dtype=np.float32)
    return Batch(
        inputs=np.ascontiguousarray(tokens[:, :-1]),
        targets=np.ascontiguousarray(tokens[:, 1:]),
        loss_mask=loss_mask,
        n_loss_tokens=int(mask[:, 1:].sum()),
        example_indices=tuple(int(i) for i in indices),
        lengths=tuple(len(examples[i].tokens) for i in indices),
    )


def make_batches(
    examples: Sequence[Example],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    pad_id: int,
    pad_to_multiple: int = 1,
    shuffle: bool = True,
) -> list[Batch]:
    """One epoch of batches: every example exactly once, examples of similar length together.

    Examples are sorted by length (ties in a random order drawn from (seed, epoch), so groups vary a
    little between epochs) and cut into groups of ``batch_size`` (the last may be smaller); the order of
    the groups is shuffled from (seed, epoch). The same arguments always give the same batches, so a
    resumed run sees what the interrupted one would have. ``shuffle=False`` keeps the groups shortest
    first (for validation). ``pad_to_multiple`` rounds padded lengths up (fewer distinct shapes to compile).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be at least 1, got {pad_to_multiple}")
    if not examples:
        return []
    rng = np.random.default_rng([seed, epoch])
    lengths = np.array([len(e.tokens) for e in examples])
    order = np.lexsort((rng.random(len(examples)), lengths))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle:
        groups = [groups[g] for g in rng.permutation(len(groups))]
    return [_collate(examples, group, pad_id, pad_to_multiple) for group in groups]


def padding_fraction(batches: Iterable[Batch]) -> float:
    """The share of input positions that are padding, over ``batches`` (for logs and benchmarks)."""
    total = real = 0
    for batch in batches:
        total += batch.inputs.size
        real += sum(n - 1 for n in batch.lengths)
    return 0.0 if total == 0 else 1.0 - real / total
