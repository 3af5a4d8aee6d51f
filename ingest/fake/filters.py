"""The filter language of `POST /v2/datasets/{id}/examples/search`, compiled to a predicate.

A small SQL-like subset of what Arize accepts:

    filter     := conjunction ("OR" conjunction)*
    conjunction:= term ("AND" term)*
    term       := "(" filter ")" | field operator literal
    operator   := = | != | <> | < | <= | > | >=
    literal    := 'text' ('' escapes a quote) | number | true | false | null
    field      := name(.name)* | "quoted name" | `quoted name`

AND binds tighter than OR; keywords are case-insensitive. A dotted field is
looked up as one key first, then as a path into nested objects. A missing or
null field only matches `= null`; values of different types are never ordered
and never equal.
"""

from __future__ import annotations

import operator
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Final

Record = Mapping[str, Any]
Predicate = Callable[[Record], bool]

_MISSING: Final = object()
_TOKEN: Final = re.compile(
    r"""\s*(?:
        (?P<paren>[()])
      | (?P<op><=|>=|!=|<>|=|<|>)
      | (?P<string>'(?:[^']|'')*')
      | (?P<number>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<name>[A-Za-z_][\w.]*|"(?:[^"]|"")+"|`[^`]+`)
    )""",
    re.VERBOSE,
)
_ORDERINGS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_KEYWORDS: Final = {"and", "or", "true", "false", "null"}
_LITERALS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}


class FilterError(ValueError):
    """Raised when a filter expression is not in the supported language."""


def compile_filter(text: str) -> Predicate:
    """Compile `text` to a predicate over a record's fields; FilterError if invalid."""
    tokens = _tokenize(text)
    parser = _Parser(tokens)
    predicate = parser.disjunction()
    if parser.position != len(tokens):
        raise FilterError(f"unexpected {tokens[parser.position][1]!r} in filter")
    return predicate


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise FilterError(f"cannot read filter at character {position}: {text[position:]!r}")
        kind, value = match.lastgroup, match.group(match.lastgroup)
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value))
        position = match.end()
    if not tokens:
        raise FilterError("filter is empty")
    return tokens


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, what: str) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterError(f"filter ends where {what} was expected")
        self.position += 1
        return token

    def disjunction(self) -> Predicate:
        parts = [self.conjunction()]
        while self.peek() == ("keyword", "or"):
            self.position += 1
            parts.append(self.conjunction())
        if len(parts) == 1:
            return parts[0]
        one_of = _one_of(parts)
        if one_of is not None:
            return one_of
        return lambda record: any(part(record) for part in parts)

    def conjunction(self) -> Predicate:
        parts = [self.term()]
        while self.peek() == ("keyword", "and"):
            self.position += 1
            parts.append(self.term())
        if len(parts) == 1:
            return parts[0]
        return lambda record: all(part(record) for part in parts)

    def term(self) -> Predicate:
        kind, value = self.take("a field or '('")
        if (kind, value) == ("paren", "("):
            inner = self.disjunction()
            if self.take("')'") != ("paren", ")"):
                raise FilterError("missing ')' in filter")
            return inner
        if kind != "name":
            raise FilterError(f"expected a field name, got {value!r}")
        path = _field_name(value)
        op_kind, op = self.take("an operator")
        if op_kind != "op":
            raise FilterError(f"expected an operator after {value!r}, got {op!r}")
        return _comparison(path, op, self.literal())

    def literal(self) -> object:
        kind, value = self.take("a value")
        if kind == "string":
            return value[1:-1].replace("''", "'")
        if kind == "number":
            return int(value) if re.fullmatch(r"-?\d+", value) else float(value)
        if kind == "keyword" and value in _LITERALS:
            return _LITERALS[value]
        raise FilterError(f"expected a quoted string, number, true, false or null, got {value!r}")


def _field_name(token: str) -> str:
    if token[0] == '"':
        return token[1:-1].replace('""', '"')
    if token[0] == "`":
        return token[1:-1]
    return token


def _lookup(record: Record, path: str) -> object:
    if path in record:
        return record[path]
    value: object = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


class _TextEquals:
    """`field = 'text'`, kept apart so an OR of many of them can become one set look-up."""

    __slots__ = ("expected", "path")

    def __init__(self, path: str, expected: str) -> None:
        self.path, self.expected = path, expected

    def __call__(self, record: Record) -> bool:
        value = _lookup(record, self.path)
        return type(value) is str and value == self.expected


def _one_of(parts: list[Predicate]) -> Predicate | None:
    """An OR of text equalities on one field as a set look-up: a search for row keys ORs
    50 of them, and checking each against every stored example made the fake slow."""
    if not all(isinstance(p, _TextEquals) for p in parts):
        return None
    equals = typing.cast(list[_TextEquals], parts)
    path = equals[0].path
    if any(p.path != path for p in equals):
        return None
    values = frozenset(p.expected for p in equals)

    def matches(record: Record) -> bool:
        value = _lookup(record, path)
        return type(value) is str and value in values

    return matches


def _comparison(path: str, op: str, expected: object) -> Predicate:
    if op == "=" and type(expected) is str:
        return _TextEquals(path, expected)
    if expected is None:
        if op not in ("=", "!=", "<>"):
            raise FilterError(f"null can only be compared with = or !=, not {op}")
        wants_null = op == "="
        return lambda record: (_lookup(record, path) in (None, _MISSING)) == wants_null
    expected_kind = _kind(expected)
    if op in _ORDERINGS and expected_kind == "bool":
        raise FilterError(f"true and false can only be compared with = or !=, not {op}")

    def matches(record: Record) -> bool:
        value = _lookup(record, path)
        if value is None or value is _MISSING:
            return False
        same_kind = _kind(value) == expected_kind
        if op == "=":
            return same_kind and value == expected
        if op in ("!=", "<>"):
            return not (same_kind and value == expected)
        return same_kind and _ORDERINGS[op](value, expected)

    return matches
