"""HTTP errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, ``code`` a string or null."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


class ApiError(Exception):
    """An error answer: status, a message that says what to fix, and OpenAI's ``type``/``param``/``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.code = None if code is None else str(code)
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self):
        from fastapi.responses import JSONResponse

        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def redact_urls(text: str) -> str:
    """``text`` with the user:password part of every URL in it removed."""
    return _USERINFO.sub(r"\g<scheme>", text)


def public_url(url: str) -> str:
    """``url`` without its userinfo (credentials), for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
