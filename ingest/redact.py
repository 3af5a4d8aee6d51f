"""Redaction: the API key taken out of any text before a person or a log sees it.

Messages quote what servers answer (a problem's ``detail``, a body's first
bytes, a ``Location``), and a server may echo the Authorization header back.
``Reply`` redacts every text it makes; the CLI's output and the log records
(``RedactFilter``) pass through ``redact`` once more on the way out.

    redact("bad token Bearer s3cret", "s3cret")   # 'bad token Bearer [redacted]'
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import orjson

MARK = "[redacted]"
# A shorter "key" (a test value such as "k") would blank ordinary words in every
# message; no real Arize key is anywhere near this short.
MIN_SECRET = 8


def _forms(secret: str) -> list[str]:
    """The key as a text may quote it: as is, escaped (JSON, repr) or percent-encoded."""
    escaped = (orjson.dumps(secret).decode()[1:-1], repr(secret)[1:-1])
    forms = {secret, *escaped, quote(secret, safe="")}
    return sorted(forms, key=len, reverse=True)  # a longer form may hold a shorter one


def redact(text: str, secret: str, *, limit: int | None = None) -> str:
    """``text`` without ``secret``, cut to ``limit`` characters with no start of it at the cut."""
    if len(secret) < MIN_SECRET:
        return text if limit is None else text[:limit]
    forms = _forms(secret)
    for form in forms:
        text = text.replace(form, MARK)
    if limit is None or len(text) <= limit:
        return text
    # The cut may fall inside a quoted key: drop the part of it that made it in.
    text = text[:limit]
    started = [n for form in forms for n in range(1, len(form)) if text.endswith(form[:n])]
    return text[: -max(started)] if started else text


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
