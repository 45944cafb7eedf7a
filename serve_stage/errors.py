"""The one error type of the server: an HTTP status plus OpenAI's error body.

`ServeError(status, message, param=..., code=...)` becomes
`{"error": {"message", "type", "param", "code"}}` with that status (`app.py`); the engine and
the session store raise it for what a client did wrong (an unknown session, a full queue).
`ServeInputError` is the CLI's refusal before the server starts (exit 2, one line).
"""

from __future__ import annotations

from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class ServeError(Exception):
    """What the client did wrong (4xx) or what stopped the server from answering (5xx)."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape for `status`."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ServeInputError(ValueError):
    """A bad `python -m serve_stage` argument or model, found before the server starts."""
