"""Redaction: the API key taken out of any text before a person or a log sees it.

Messages quote what servers answer (a problem's ``detail``, a body's first
bytes, a ``Location``), and a server may echo the Authorization header back.
``Reply`` redacts every text it makes; the CLI's output and the log records
(``RedactFilter``) pass through ``redact`` once more on the way out.

    redact("bad token Bearer s3cret-key", "s3cret-key")   # 'bad token Bearer [redacted]'
"""

from __future__ import annotations

import functools
import logging
import re

MARK = "[redacted]"
# A shorter "key" (a test value such as "k") would blank ordinary words in every
# message; no real Arize key is anywhere near this short.
MIN_SECRET = 8

# Whatever the key, the token after "Bearer" or an Authorization header name is
# one: a server may echo a header the key was sent in, or a key we do not know
# (a proxy's). A backslash goes with the character after it (a JSON "\/"), but
# an escaped quote ends the token as a quote does.
_TOKEN = r"""(?!\[redacted\])(?:[^\s"'<>,;&\\]|\\[^\s"'\\]|\\\\)+"""
_GAP = r"(?:\s|%20|\+|\\u0020)+"
_BEARER = re.compile(rf"\b(Bearer{_GAP}){_TOKEN}", re.IGNORECASE)
_AUTHORIZATION = re.compile(
    rf"""\b(authorization(?:\\?["'])?\s*(?::|=|%3A)\s*(?:\\?["'])?"""
    rf"(?:(?:Bearer|Basic|Token|ApiKey|Key){_GAP})?+){_TOKEN}",  # ?+: a scheme is no token
    re.IGNORECASE,
)
# Backslash escapes of JSON and repr, "&#39;" of older HTML escapers, quote_plus's space.
_ESCAPES = {
    "/": r"\\/",
    "'": r"\\'|&\#39;",
    '"': r'\\"',
    "\\": r"\\\\",
    "\n": r"\\n",
    "\r": r"\\r",
    "\t": r"\\t",
    "\b": r"\\b",
    "\f": r"\\f",
    " ": r"\+",
}
# What html.escape makes of a character (the module costs ~6 ms to import, at every run's
# summary): the rest it leaves as they are.
_HTML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}
# The end of a text cut inside an escape: a "%2", a "\u00", an "&am".
_PARTIAL_ESCAPE = r"(?:%[0-9A-Fa-f]?|\\(?:u[0-9A-Fa-f]{0,3}|x[0-9A-Fa-f]?)?|&#?[0-9A-Za-z]*)?"


def _hex(digits: str) -> str:
    """Hex digits as a pattern of either case: encoders differ (``%2f``, ``%2F``)."""
    return "".join(f"[{d.upper()}{d.lower()}]" if d.isalpha() else d for d in digits)


def _char_forms(char: str) -> str:
    """A pattern for every way a text may quote one character of the key.

    Percent-encoded or not (any ``safe`` set of ``quote``), JSON-escaped
    (``\\/``, ``\\uXXXX``), repr-escaped or HTML-escaped: each character on its
    own, as encoders choose per character.
    """
    forms = {re.escape(char), re.escape(_HTML_ESCAPES.get(char, char))}
    forms.add("".join(f"%{_hex(f'{b:02X}')}" for b in char.encode()))
    units = char.encode("utf-16-be")  # \uXXXX escapes name UTF-16 units
    forms.add("".join(rf"\\u{_hex(units[i : i + 2].hex())}" for i in range(0, len(units), 2)))
    for escaped in (repr(char)[1:-1], ascii(char)[1:-1]):  # ascii: "\xe9", "\u20ac"
        if escaped != char:
            forms.add(re.escape(escaped))
    if char in _ESCAPES:
        forms.add(_ESCAPES[char])
    return "(?:" + "|".join(sorted(forms, key=len, reverse=True)) + ")"


@functools.lru_cache(maxsize=8)
def _key(secret: str) -> re.Pattern[str]:
    """The key in any of its forms."""
    return re.compile("".join(_char_forms(c) for c in secret))


@functools.lru_cache(maxsize=8)
def _key_starts(secret: str) -> list[re.Pattern[str]]:
    """Each start of the key, in any of its forms, at a text's end (made only for a cut)."""
    chars = [_char_forms(c) for c in secret]
    return [re.compile("".join(chars[:n]) + _PARTIAL_ESCAPE + r"\Z") for n in range(1, len(chars))]


def _longest_form(secret: str) -> int:
    """How long the key can get quoted: 12 characters for one, as in "%F0%9F%98%80"."""
    return 12 * len(secret) + 8


def redact(text: str, secret: str, *, limit: int | None = None, ellipsis: str = "") -> str:
    """``text`` without ``secret``, cut to ``limit`` characters with no start of it at the cut.

    The key is taken out before the cut, so a cut never halves a key into a part
    that no longer reads as one; ``ellipsis`` marks where a text was cut.
    """
    if limit is None:
        return _scrub(text, secret)
    # Enough beyond the cut for a key starting before it to be seen whole, so a
    # megabyte refusal costs what its quoted start costs.
    long_key = len(secret) >= MIN_SECRET
    room = limit + (_longest_form(secret) if long_key else 64)
    head = _scrub(text[:room], secret)
    if len(text) <= room and len(head) <= limit:
        return head
    head = head[:limit]
    if long_key:
        # The cut may fall inside a key the text quoted in part: drop what made it in.
        tail = head[-_longest_form(secret) :]
        found = [m.start() for pattern in _key_starts(secret) if (m := pattern.search(tail))]
        if found:
            head = head[: len(head) - len(tail) + min(found)]
    return head + ellipsis


def _scrub(text: str, secret: str) -> str:
    """``text`` with the key in any form, and any bearer token or Authorization value, marked."""
    if len(secret) >= MIN_SECRET:
        text = _key(secret).sub(MARK, text)
    return _AUTHORIZATION.sub(lambda m: m[1] + MARK, _BEARER.sub(lambda m: m[1] + MARK, text))


class RedactFilter(logging.Filter):
    """Takes the key out of every log record it sees, traceback included.

    handler.addFilter(RedactFilter(api_key))   # or logger.addFilter(...)
    """

    def __init__(self, secret: str) -> None:
        super().__init__()
        self._secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self._secret)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self._secret)
        return True
