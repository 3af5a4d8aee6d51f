"""Request bodies in, validated example objects and their stored bytes out.

Values must survive the fake exactly. orjson is fast but reads an integer
beyond 64 bits as a float, so a body holding a long run of digits is parsed
with the stdlib `json` instead, which keeps big integers exact; `1.0` stays a
float and key order is kept by both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, Final

import orjson

from ingest.fake.problems import Problem

MAX_EXAMPLES_PER_REQUEST: Final = 1000
# orjson, which writes the stored rows, refuses values nested deeper than 254
# levels. The real API's limit is not documented; the fake states its own and
# refuses a deeper example with a 422 naming it, as the API refuses a value it
# cannot take, rather than failing with a bare 500 after parsing it.
MAX_NESTING: Final = 254
RESERVED_FIELDS: Final = frozenset({"id", "created_at", "updated_at", "time", "count"})
RESERVED_PREFIX: Final = "source_record_"

_MARKER: Final = "\x00ingest.fake row boundary 5f0c2a9e\x00"
_CUT: Final = b"," + orjson.dumps(_MARKER) + b","
# An integer of 16 digits or more may not fit in 64 bits; shorter ones always
# do. Mapping every digit to "0" lets `bytes.find` look for long digit runs at
# memory speed, where a regex would cost more than parsing the body.
_DIGITS_TO_ZERO: Final = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN: Final = b"0" * 16
_NOT_AN_INTEGER: Final = frozenset(b".eE")


def has_long_integer(raw: bytes) -> bool:
    """Whether `raw` may hold an integer too long for orjson to read exactly.

    A run of 16+ digits next to "." or an exponent is part of a float, which
    orjson reads exactly. A run inside a string is a harmless false alarm.
    """
    digits = raw.translate(_DIGITS_TO_ZERO)
    start = digits.find(_LONG_RUN)
    while start != -1:
        end = start + len(_LONG_RUN)
        while end < len(digits) and digits[end] == 0x30:
            end += 1
        before = raw[start - 1] if start else 0
        after = raw[end] if end < len(raw) else 0
        if before not in _NOT_AN_INTEGER and after not in _NOT_AN_INTEGER:
            return True
        start = digits.find(_LONG_RUN, end)
    return False


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text}")
    return value


def _no_constants(text: str) -> float:
    raise ValueError(f"{text} is not valid JSON")


class Body:
    """A parsed JSON body, and how to serialise parts of it without loss."""

    __slots__ = ("exact", "may_hold_prefix", "value")

    def __init__(self, raw: bytes) -> None:
        self.exact = has_long_integer(raw)
        # A key can only be `source_record_…` if those bytes appear, unless
        # it is spelled with \u escapes.
        self.may_hold_prefix = RESERVED_PREFIX.encode() in raw or b"\\u" in raw
        try:
            if self.exact:
                self.value: Any = json.loads(
                    raw, parse_float=_finite_float, parse_constant=_no_constants
                )
            else:
                self.value = orjson.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Problem(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(self.value, dict):
            raise Problem(400, "request body must be a JSON object")

    def get(self, key: str) -> Any:
        """The top-level field `key`, or None."""
        return self.value.get(key)

    def dumper(self) -> Callable[[Any], bytes]:
        """A function that serialises a value parsed from this body exactly."""
        return _dumps_exact if self.exact else orjson.dumps


def encode_examples(body: Body, examples: list[dict[str, Any]]) -> list[bytes]:
    """The compact JSON bytes of each example, as they will be stored.

    Raises a 422 `Problem` for an example nested deeper than `MAX_NESTING`.
    """
    if body.exact:
        refuse_too_deep(examples)  # the stdlib would write it; orjson could not re-read it
        return [_dumps_exact(example) for example in examples]
    # One orjson call for the whole batch costs a tenth of one call per row.
    # A marker string between rows marks where to cut; should a user value
    # hold the marker too, the cut yields too many parts and the slow path runs.
    interleaved: list[Any] = [_MARKER] * (2 * len(examples) - 1)
    interleaved[::2] = examples
    try:
        parts = orjson.dumps(interleaved)[1:-1].split(_CUT)
    except orjson.JSONEncodeError:
        # Depth is the one thing orjson refuses to write that it could parse, so
        # the common case pays nothing for the check. An example exactly at the
        # limit fails only inside the list: the per-row path writes it.
        refuse_too_deep(examples)
        parts = []
    if len(parts) == len(examples):
        return parts
    return [orjson.dumps(example) for example in examples]


def nesting_depth(value: Any) -> int:
    """Levels of objects and arrays in `value` (a flat object is 1), without recursion."""
    depth = 0
    level = [value]
    while level := [item for item in level if isinstance(item, dict | list)]:
        depth += 1
        level = [
            child for item in level for child in (item.values() if isinstance(item, dict) else item)
        ]
    return depth


def refuse_too_deep(examples: list[dict[str, Any]]) -> None:
    """Raise a 422 `Problem` naming the first example nested deeper than `MAX_NESTING`."""
    for index, example in enumerate(examples):
        depth = nesting_depth(example)
        if depth > MAX_NESTING:
            raise Problem(
                422,
                f"examples[{index}] is nested {depth} levels deep; at most {MAX_NESTING} "
                "levels of objects and arrays are accepted",
            )


def _dumps_exact(value: Any) -> bytes:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise Problem(400, "request body holds a lone UTF-16 surrogate") from None


def parse_stored(raw: bytes) -> dict[str, Any]:
    """Parse stored example bytes, keeping big integers exact."""
    if has_long_integer(raw):
        value: dict[str, Any] = json.loads(raw)
        return value
    stored: dict[str, Any] = orjson.loads(raw)
    return stored


def example_list(body: Body, *, allow_id: bool = False) -> list[dict[str, Any]]:
    """Validate `body["examples"]`: 1..1000 non-empty objects without reserved fields."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise Problem(400, "`examples` is required and must be an array of objects")
    count = len(examples)
    if not 1 <= count <= MAX_EXAMPLES_PER_REQUEST:
        raise Problem(
            422, f"`examples` must hold 1 to {MAX_EXAMPLES_PER_REQUEST} items; got {count}"
        )
    reserved = RESERVED_FIELDS - {"id"} if allow_id else RESERVED_FIELDS
    # The common case costs one C-level set test per row; the slow loop only
    # runs to name the offender.
    for index, example in enumerate(examples):
        if type(example) is not dict or not example or not reserved.isdisjoint(example):
            _explain_bad_example(index, example, reserved)
        if allow_id and not isinstance(example.get("id"), str):
            raise Problem(422, f"examples[{index}]: `id` is required and must be a string")
    if not body.may_hold_prefix:
        return examples
    for index, example in enumerate(examples):
        for field in example:
            if field.startswith(RESERVED_PREFIX):
                raise Problem(
                    422,
                    f"examples[{index}]: field `{field}` is reserved "
                    f"(fields starting with `{RESERVED_PREFIX}` are system-managed)",
                )
    return examples


def _explain_bad_example(index: int, example: object, reserved: frozenset[str]) -> None:
    if not isinstance(example, dict):
        raise Problem(422, f"examples[{index}] must be a JSON object")
    if not example:
        raise Problem(422, f"examples[{index}] is empty; an example needs at least one field")
    field = next(field for field in example if field in reserved)
    raise Problem(422, f"examples[{index}]: field `{field}` is reserved and system-managed")


def required_str(body: Body, key: str) -> str:
    """The non-empty string field `key`, else 400."""
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise Problem(400, f"`{key}` is required and must be a non-empty string")
    return value


def optional_str(body: Body, key: str) -> str | None:
    """The string field `key`, None when absent or null, else 400."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise Problem(400, f"`{key}` must be a string")
    return value


def limit_value(raw: object, *, default: int, maximum: int) -> int:
    """A page size from a query string or a body field, within 1..maximum, else 400."""
    if raw is None:
        return default
    if isinstance(raw, str):
        try:
            raw = int(raw)
        except ValueError:
            raise Problem(400, f"`limit` must be an integer; got {raw!r}") from None
    if type(raw) is not int or not 1 <= raw <= maximum:
        raise Problem(400, f"`limit` must be an integer from 1 to {maximum}; got {raw!r}")
    return raw
