"""RFC 9457 problem responses, shaped like the ones the Arize API sends.

Handlers raise `Problem`; the app's middleware turns it into an
`application/problem+json` response carrying the request path as `instance`.
"""

from __future__ import annotations

import uuid
from http import HTTPStatus
from typing import Final

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"

_ERROR_CODES: Final = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    422: "UNPROCESSABLE_ENTITY",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


class Problem(Exception):
    """Raised by a handler to answer with a problem+json body."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}

    def response(self, instance: str) -> web.Response:
        """Render the problem for the request whose path is `instance`."""
        title = HTTPStatus(self.status).phrase
        body = {
            "status": self.status,
            "title": title,
            "type": f"https://arize.com/docs/api/problems/{title.lower().replace(' ', '-')}",
            "detail": self.detail,
            "instance": instance,
            "error_code": _ERROR_CODES.get(self.status, "UNKNOWN"),
            "request_id": str(uuid.uuid4()),
        }
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type=PROBLEM_CONTENT_TYPE,
            headers=self.headers,
        )
