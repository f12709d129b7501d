"""One type for everything FluxWeb refuses a user: a create it may not make, a request a provider cannot
serve, an upload it will not keep, a date range it cannot report. The API renders it as its JSON error
(`status`, `code`, `message`, `field`, and Retry-After when `retry_after` is set); the studio shows the
message. Subclasses exist only where a caller must tell them apart (`Unsupported`, `MediaError`)."""

from __future__ import annotations


class Refusal(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int = 400,
        field: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.field = field
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, status={self.status})"
