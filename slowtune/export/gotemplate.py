"""A small renderer for the subset of Go's text/template that Ollama chat templates use.

Why: the Modelfile's TEMPLATE is a Go template, which Ollama renders for every request. To test that the
TEMPLATE slowtune writes gives the model exactly the text it was trained on, we render it here, the way
Ollama does, and compare with the model's own (Jinja) chat template. No Go toolchain or Ollama is needed.

Supported, with Go's semantics:
- text, and actions ``{{ pipeline }}``; ``{{- `` and `` -}}`` trim all spaces, tabs and newlines before or
  after the action; comments ``{{/* ... */}}`` (also ``{{- /* ... */ -}}``);
- ``if`` / ``else if`` / ``else`` / ``end``; ``range PIPELINE``, ``range $x := ...`` and
  ``range $i, $x := ...`` over lists (with an optional ``else`` for an empty list);
- fields ``.Name`` (chained: ``.A.B``), the dot ``.``, ``$`` (the data) and ``$.Name``, variables
  ``$name := ...`` (declare) and ``$name = ...`` (assign), with Go's scoping;
- string literals ("..." with Go escapes, and `raw`), integers, ``true`` and ``false``, parentheses;
- the functions ``eq`` (one or more right-hand values), ``ne``, ``and``, ``or`` (short-circuit, returning
  the deciding value), ``not``, ``len`` and ``slice``.

Anything else (``|`` pipelines, ``with``, ``define``/``template``/``block``, ``break``/``continue``, other
functions such as ``printf`` or Ollama's ``json``) raises GoTemplateError naming it, as do unknown fields
and variables, and printing a list or nothing. Data are dicts (Go maps and structs), lists, str, int and bool.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FUNCTIONS", "GoTemplate", "GoTemplateError", "parse", "render"]

_SPACE = " \t\r\n"  # what Go's trim markers remove, and what may stand next to a trim marker
FUNCTIONS = ("and", "eq", "len", "ne", "not", "or", "slice")
_UNSUPPORTED_KEYWORDS = ("with", "define", "template", "block", "break", "continue")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "a": "\a", "b": "\b",
            "f": "\f", "v": "\v"}


class GoTemplateError(ValueError):
    """The template uses syntax this renderer does not support, is malformed, or fails on the data."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"Go template, line {line}: {message}" if line else f"Go template: {message}")
        self.line = line


# --- lexing --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tok:
    kind: str  # string, number, bool, ident, field, var, dot, "(", ")", "|", ",", ":=", "="
    value: Any = None
    chain: tuple[str, ...] = ()  # field names after a variable, or the field path of a field token


@dataclass(frozen=True)
class _TextItem:
    text: str


@dataclass(frozen=True)
class _ActionItem:
    tokens: tuple[_Tok, ...]
    line: int


def _is_ident_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _lex(src: str) -> list[_TextItem | _ActionItem]:
    items: list[_TextItem | _ActionItem] = []
    pos, trim_next = 0, False
    while True:
        start = src.find("{{", pos)
        text = src[pos:] if start < 0 else src[pos:start]
        if trim_next:
            text = text.lstrip(_SPACE)
        if start < 0:
            if text:
                items.append(_TextItem(text))
            return items
        line = 1 + src.count("\n", 0, start)
        i = start + 2
        if src[i : i + 1] == "-" and src[i + 1 : i + 2] and src[i + 1] in _SPACE:
            text = text.rstrip(_SPACE)
            i += 2
        if text:
            items.append(_TextItem(text))
        if src.startswith("/*", i):
            end = src.find("*/", i + 2)
            if end < 0:
                raise GoTemplateError("unclosed comment", line)
            j = end + 2
            if src.startswith("}}", j):
                pos, trim_next = j + 2, False
            elif src[j : j + 1] and src[j] in _SPACE and src.startswith("-}}", j + 1):
                pos, trim_next = j + 4, True
            else:
                raise GoTemplateError("comment ends before closing delimiter", line)
            continue
        tokens, pos, trim_next = _lex_action(src, i, line)
        items.append(_ActionItem(tuple(tokens), line))


def _lex_action(src: str, i: int, line: int) -> tuple[list[_Tok], int, bool]:
    tokens: list[_Tok] = []
    n = len(src)
    while True:
        if i >= n:
            raise GoTemplateError("unclosed action: no closing }}", line)
        c = src[i]
        if c in _SPACE and src.startswith("-}}", i + 1):
            return tokens, i + 4, True
        if src.startswith("}}", i):
            return tokens, i + 2, False
        if c in _SPACE:
            i += 1
        elif c == '"':
            value, i = _lex_string(src, i + 1, line)
            tokens.append(_Tok("string", value))
        elif c == "`":
            end = src.find("`", i + 1)
            if end < 0:
                raise GoTemplateError("unterminated raw string", line)
            tokens.append(_Tok("string", src[i + 1 : end]))
            i = end + 1
        elif c in "()|,":
            if c == ")" and src[i + 1 : i + 2] == ".":
                raise GoTemplateError("fields of a parenthesised value, '(...).Name', are not supported", line)
            tokens.append(_Tok(c))
            i += 1
        elif src.startswith(":=", i):
            tokens.append(_Tok(":="))
            i += 2
        elif c == "=":
            tokens.append(_Tok("="))
            i += 1
        elif c == "$":
            j = i + 1
            while j < n and _is_ident_char(src[j]):
                j += 1
            name = src[i:j]
            chain, i = _lex_chain(src, j, line)
            tokens.append(_Tok("var", name, chain))
        elif c == ".":
            if i + 1 < n and (src[i + 1].isalpha() or src[i + 1] == "_"):
                chain, i = _lex_chain(src, i, line)
                tokens.append(_Tok("field", None, chain))
            else:
                tokens.append(_Tok("dot"))
                i += 1
        elif c.isdigit() or (c in "+-" and src[i + 1 : i + 2].isdigit()):
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "._"):
                j += 1
            literal = src[i:j]
            try:
                tokens.append(_Tok("number", int(literal, 10)))
            except ValueError:
                raise GoTemplateError(f"number {literal!r}: only decimal integers are supported", line) from None
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and _is_ident_char(src[j]):
                j += 1
            word = src[i:j]
            if src[j : j + 1] == ".":
                raise GoTemplateError(f"'{word}.' : fields of a function's result are not supported", line)
            tokens.append(_Tok("bool", word == "true") if word in ("true", "false") else _Tok("ident", word))
            i = j
        else:
            raise GoTemplateError(f"unexpected {c!r} in action", line)


def _lex_chain(src: str, i: int, line: int) -> tuple[tuple[str, ...], int]:
    """Field names ``.A.B`` starting at src[i] (which may not be a dot: then there are none)."""
    chain: list[str] = []
    while i < len(src) and src[i] == ".":
        j = i + 1
        while j < len(src) and _is_ident_char(src[j]):
            j += 1
        name = src[i + 1 : j]
        if not name or name[0].isdigit():
            raise GoTemplateError(f"bad field name after '.': {src[i:j + 1]!r}", line)
        chain.append(name)
        i = j
    return tuple(chain), i


def _lex_string(src: str, i: int, line: int) -> tuple[str, int]:
    out: list[str] = []
    while True:
        if i >= len(src) or src[i] == "\n":
            raise GoTemplateError("unterminated quoted string", line)
        c = src[i]
        if c == '"':
            return "".join(out), i + 1
        if c != "\\":
            out.append(c)
            i += 1
            continue
        e = src[i + 1 : i + 2]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 2
        elif e in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = src[i + 2 : i + 2 + width]
            try:
                out.append(chr(int(digits, 16)) if len(digits) == width else "")
            except ValueError:
                digits = ""
            if len(digits) != width:
                raise GoTemplateError(f"bad escape \\{e}{digits} in string", line)
            i += 2 + width
        else:
            raise GoTemplateError(f"unsupported escape \\{e} in string", line)


# --- parsing -------------------------------------------------------------------------------------------
@dataclass
class _Call:
    name: str
    args: list[Any]  # operands
    line: int


@dataclass
class _Pipe:
    """``$x := cmd``, ``$x = cmd`` or ``cmd``. cmd is a _Call or a single operand (a _Tok or a nested _Pipe)."""

    cmd: Any
    line: int
    declare: tuple[str, ...] = ()
    assign: str | None = None


@dataclass
class _Text:
    text: str


@dataclass
class _Output:
    pipe: _Pipe


@dataclass
class _If:
    branches: list[tuple[_Pipe, list[Any]]]
    else_body: list[Any] | None


@dataclass
class _Range:
    pipe: _Pipe  # declare holds the loop variables: () or ($x,) or ($i, $x)
    body: list[Any]
    else_body: list[Any] | None = None


class _Parser:
    def __init__(self, items: list[_TextItem | _ActionItem]) -> None:
        self.items, self.pos = items, 0

    def parse_list(self, closers: tuple[str, ...]) -> tuple[list[Any], str | None, _ActionItem | None]:
        """Nodes up to one of the closing keywords (else, end); returns them, the keyword and its action."""
        nodes: list[Any] = []
        while self.pos < len(self.items):
            item = self.items[self.pos]
            self.pos += 1
            if isinstance(item, _TextItem):
                nodes.append(_Text(item.text))
                continue
            toks = item.tokens
            if not toks:
                raise GoTemplateError("missing value for command: empty action {{ }}", item.line)
            head = toks[0].value if toks[0].kind == "ident" else None
            if head in ("else", "end"):
                if head not in closers:
                    raise GoTemplateError(f"unexpected {{{{ {head} }}}} outside if or range", item.line)
                return nodes, head, item
            if head == "if":
                nodes.append(self.parse_if(item))
            elif head == "range":
                nodes.append(self.parse_range(item))
            elif head in _UNSUPPORTED_KEYWORDS:
                raise GoTemplateError(f"{{{{ {head} }}}} is not supported by this renderer", item.line)
            else:
                nodes.append(_Output(_parse_pipe(list(toks), item.line)))
        if closers:
            raise GoTemplateError("unexpected end of template: an if or range has no {{ end }}")
        return nodes, None, None

    def parse_if(self, item: _ActionItem) -> _If:
        branches: list[tuple[_Pipe, list[Any]]] = []
        pipe = _parse_pipe(list(item.tokens[1:]), item.line, keyword="if")
        while True:
            body, closer, action = self.parse_list(("else", "end"))
            branches.append((pipe, body))
            if closer == "end":
                _expect_bare(action, "end")
                return _If(branches, None)
            assert action is not None
            rest = list(action.tokens[1:])
            if rest and rest[0].kind == "ident" and rest[0].value == "if":
                pipe = _parse_pipe(rest[1:], action.line, keyword="else if")
                continue
            if rest:
                raise GoTemplateError("{{ else }} takes nothing, or 'if' and a condition", action.line)
            else_body, closer, action = self.parse_list(("end",))
            _expect_bare(action, "end")
            return _If(branches, else_body)

    def parse_range(self, item: _ActionItem) -> _Range:
        toks = list(item.tokens[1:])
        names: tuple[str, ...] = ()
        if ":=" in [t.kind for t in toks]:
            split = [t.kind for t in toks].index(":=")
            head, toks = toks[:split], toks[split + 1 :]
            ok = (len(head) == 1 and head[0].kind == "var" and not head[0].chain) or (
                len(head) == 3 and head[1].kind == "," and all(t.kind == "var" and not t.chain for t in head[::2])
            )
            if not ok:
                raise GoTemplateError("range takes '$x :=' or '$i, $x :=' before its list", item.line)
            names = tuple(t.value for t in head[::2])
        pipe = _parse_pipe(toks, item.line, keyword="range")
        pipe.declare = names
        body, closer, action = self.parse_list(("else", "end"))
        if closer == "end":
            _expect_bare(action, "end")
            return _Range(pipe, body)
        _expect_bare(action, "else")
        else_body, closer, action = self.parse_list(("end",))
        _expect_bare(action, "end")
        return _Range(pipe, body, else_body)


def _expect_bare(action: _ActionItem | None, word: str) -> None:
    if action is not None and len(action.tokens) != 1:
        raise GoTemplateError(f"{{{{ {word} }}}} takes nothing after it", action.line)


def _parse_pipe(toks: list[_Tok], line: int, keyword: str | None = None) -> _Pipe:
    declare: tuple[str, ...] = ()
    assign: str | None = None
    if len(toks) >= 2 and toks[0].kind == "var" and not toks[0].chain and toks[1].kind in (":=", "="):
        if toks[1].kind == ":=":
            declare = (toks[0].value,)
        else:
            assign = toks[0].value
        if toks[0].value == "$":
            raise GoTemplateError("cannot declare or assign $", line)
        toks = toks[2:]
    if not toks:
        raise GoTemplateError(f"missing value{' for ' + keyword if keyword else ''}", line)
    cmd, rest = _parse_command(toks, line)
    if rest:
        if rest[0].kind == "|":
            raise GoTemplateError("pipelines with '|' are not supported; call the function instead: (f x)", line)
        raise GoTemplateError(f"unexpected {rest[0].kind!r} in action", line)
    return _Pipe(cmd, line, declare, assign)


def _parse_command(toks: list[_Tok], line: int) -> tuple[Any, list[_Tok]]:
    """One command (a function call or a single operand) from the front of toks, and what is left."""
    operands: list[Any] = []
    while toks and toks[0].kind not in ("|", ")"):
        tok = toks.pop(0)
        if tok.kind == "(":
            inner, toks = _parse_command(toks, line)
            if not toks or toks[0].kind != ")":
                if toks and toks[0].kind == "|":
                    raise GoTemplateError("pipelines with '|' are not supported", line)
                raise GoTemplateError("unclosed '(' in action", line)
            toks = toks[1:]
            operands.append(_Pipe(inner, line))
        elif tok.kind in ("string", "number", "bool", "field", "var", "dot"):
            operands.append(tok)
        elif tok.kind == "ident":
            if operands:
                raise GoTemplateError(f"function {tok.value!r} as an argument: put it in parentheses", line)
            if tok.value in ("if", "else", "end", "range", *_UNSUPPORTED_KEYWORDS):
                raise GoTemplateError(f"unexpected keyword {tok.value!r}", line)
            if tok.value == "nil":
                raise GoTemplateError("nil is not a command", line)
            if tok.value not in FUNCTIONS:
                raise GoTemplateError(
                    f"function {tok.value!r} is not supported by this renderer (supported: {', '.join(FUNCTIONS)})", line
                )
            operands.append(tok)
        else:
            raise GoTemplateError(f"unexpected {tok.kind!r} in action", line)
    if not operands:
        raise GoTemplateError("missing value in action", line)
    first = operands[0]
    if isinstance(first, _Tok) and first.kind == "ident":
        return _Call(first.value, operands[1:], line), toks
    if len(operands) > 1:
        raise GoTemplateError("can't give arguments to a non-function", line)
    return first, toks


# --- execution -----------------------------------------------------------------------------------------
def _truth(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (bool, int, str, list, tuple, dict)):
        return bool(value)
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "nil"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, Sequence):
        return "slice"
    return type(value).__name__


class _State:
    def __init__(self, data: Any) -> None:
        self.vars: list[list[Any]] = [["$", data]]
        self.out: list[str] = []

    def lookup(self, name: str, line: int) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        raise GoTemplateError(f"undefined variable {name}", line)

    def set(self, name: str, value: Any, line: int) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        raise GoTemplateError(f"undefined variable {name}", line)

    def walk(self, nodes: list[Any], dot: Any) -> None:
        for node in nodes:
            if isinstance(node, _Text):
                self.out.append(node.text)
            elif isinstance(node, _Output):
                value = self.pipe(node.pipe, dot)
                if not (node.pipe.declare or node.pipe.assign):
                    self.out.append(_print(value, node.pipe.line))
            elif isinstance(node, _If):
                self.walk_if(node, dot)
            else:
                self.walk_range(node, dot)

    def walk_if(self, node: _If, dot: Any) -> None:
        mark = len(self.vars)
        try:
            for pipe, body in node.branches:
                if _truth(self.pipe(pipe, dot)):
                    self.walk(body, dot)
                    return
            if node.else_body is not None:
                self.walk(node.else_body, dot)
        finally:
            del self.vars[mark:]

    def walk_range(self, node: _Range, dot: Any) -> None:
        line = node.pipe.line
        value = self.command(node.pipe.cmd, dot, line)
        if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
            raise GoTemplateError(f"range over {_kind(value)} is not supported (only over lists)", line)
        if not value:
            if node.else_body is not None:
                self.walk(node.else_body, dot)
            return
        for index, element in enumerate(value):
            mark = len(self.vars)
            names = node.pipe.declare
            if len(names) == 1:
                self.vars.append([names[0], element])
            elif len(names) == 2:
                self.vars.extend([[names[0], index], [names[1], element]])
            self.walk(node.body, element)
            del self.vars[mark:]

    def pipe(self, pipe: _Pipe, dot: Any) -> Any:
        value = self.command(pipe.cmd, dot, pipe.line)
        if pipe.declare:
            self.vars.append([pipe.declare[0], value])
        elif pipe.assign:
            self.set(pipe.assign, value, pipe.line)
        return value

    def command(self, cmd: Any, dot: Any, line: int) -> Any:
        if isinstance(cmd, _Call):
            return self.call(cmd, dot)
        return self.operand(cmd, dot, line)

    def operand(self, op: Any, dot: Any, line: int) -> Any:
        if isinstance(op, _Pipe):
            return self.command(op.cmd, dot, line)
        assert isinstance(op, _Tok)
        if op.kind in ("string", "number", "bool"):
            return op.value
        if op.kind == "dot":
            return dot
        if op.kind == "field":
            return _fields(dot, op.chain, line)
        if op.kind == "var":
            return _fields(self.lookup(op.value, line), op.chain, line)
        raise GoTemplateError(f"unexpected {op.kind!r}", line)

    def call(self, call: _Call, dot: Any) -> Any:
        name, line = call.name, call.line

        def arg(i: int) -> Any:
            return self.operand(call.args[i], dot, line)

        def need(low: int, high: int | None = None) -> None:
            n = len(call.args)
            if n < low or (high is not None and n > high):
                want = str(low) if high == low else f"{low} or more" if high is None else f"{low} to {high}"
                raise GoTemplateError(f"{name} takes {want} arguments, got {n}", line)

        if name in ("and", "or"):
            need(1)
            value = None
            for i in range(len(call.args)):  # short-circuit, returning the deciding value (Go 1.18+)
                value = arg(i)
                if _truth(value) != (name == "and"):
                    return value
            return value
        if name == "not":
            need(1, 1)
            return not _truth(arg(0))
        if name in ("eq", "ne"):
            need(2, None if name == "eq" else 2)
            left = arg(0)
            for i in range(1, len(call.args)):
                right = arg(i)
                if _kind(left) != _kind(right) or _kind(left) not in ("bool", "int", "string"):
                    raise GoTemplateError(
                        f"{name}: incompatible types for comparison: {_kind(left)} and {_kind(right)}", line
                    )
                if left == right:
                    return name == "eq"
            return name == "ne"
        if name == "len":
            need(1, 1)
            value = arg(0)
            if isinstance(value, str):
                return len(value.encode())  # Go counts bytes
            if isinstance(value, (Mapping, Sequence)):
                return len(value)
            raise GoTemplateError(f"len of {_kind(value)}", line)
        # slice
        need(1, 4)
        value = arg(0)
        indexes = [arg(i) for i in range(1, len(call.args))]
        if any(_kind(i) != "int" for i in indexes):
            raise GoTemplateError("slice: indexes must be integers", line)
        if isinstance(value, str):
            if len(indexes) > 2:
                raise GoTemplateError("slice: cannot 3-index slice a string", line)
            data: Any = value.encode()
        elif isinstance(value, Sequence) and not isinstance(value, Mapping):
            data = list(value)
        else:
            raise GoTemplateError(f"slice: can't slice {_kind(value)}", line)
        low = indexes[0] if indexes else 0
        high = indexes[1] if len(indexes) >= 2 else len(data)
        if not 0 <= low <= high <= len(data) or (len(indexes) == 3 and not high <= indexes[2] <= len(data)):
            raise GoTemplateError(f"slice: index out of range: {indexes} for length {len(data)}", line)
        part = data[low:high]
        if isinstance(value, str):
            try:
                return part.decode()
            except UnicodeDecodeError:
                raise GoTemplateError("slice: cuts a character of the string in two", line) from None
        return part


def _fields(value: Any, chain: tuple[str, ...], line: int) -> Any:
    for name in chain:
        if not isinstance(value, Mapping):
            raise GoTemplateError(f"can't evaluate field {name} in type {_kind(value)}", line)
        if name not in value:
            known = ", ".join(sorted(str(k) for k in value)) or "none"
            raise GoTemplateError(f"no field {name!r} (fields here: {known})", line)
        value = value[name]
    return value


def _print(value: Any, line: int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, str)):
        return str(value)
    raise GoTemplateError(f"printing a {_kind(value)} is not supported (print strings, numbers or booleans)", line)


# --- public API ----------------------------------------------------------------------------------------
class GoTemplate:
    """A parsed template. Parsing checks the syntax; rendering checks fields and variables against the data."""

    def __init__(self, source: str) -> None:
        self.source = source
        parser = _Parser(_lex(source))
        self._nodes, _, _ = parser.parse_list(())

    def render(self, data: Any) -> str:
        state = _State(data)
        state.walk(self._nodes, data)
        return "".join(state.out)


def parse(source: str) -> GoTemplate:
    """Parse ``source``; raises GoTemplateError on malformed or unsupported syntax."""
    return GoTemplate(source)


def render(source: str, data: Any) -> str:
    """Render ``source`` with ``data`` as the dot (and ``$``)."""
    return GoTemplate(source).render(data)
