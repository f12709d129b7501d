"""The sandbox's small HTTP vocabulary: a parsed request, a response to write, a recorded request."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

_UNSET: Any = object()


class Headers(dict):
    """Header dict with lower-cased keys and case-insensitive lookups (also serialises as plain JSON)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default)


@dataclass
class Request:
    method: str
    path: str  # the provider's real path: the sandbox prefix is stripped
    query: dict[str, str]
    headers: Headers
    body: bytes
    base_url: str  # this server's own base, e.g. http://127.0.0.1:8765
    _parsed: Any = field(default=_UNSET, repr=False)

    def json(self) -> Any:
        """The parsed body; raises ValueError when it is not JSON."""
        if self._parsed is _UNSET:
            self._parsed = json.loads(self.body.decode("utf-8")) if self.body else None
        return self._parsed

    def json_or_none(self) -> Any:
        try:
            return self.json()
        except ValueError:
            return None

    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # A lazily produced body (the 60 MB "oversized" file) and its announced length.
    stream: Iterator[bytes] | None = None
    length: int | None = None
    # Hold the connection without answering (the "hang" fault).
    hang: bool = False
    # Close the connection once the body is written, however short of `length` it fell (the "cut_off" fault).
    close: bool = False


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, body, {"Content-Type": "application/json", **(headers or {})})


@dataclass
class RecordedRequest:
    """One request the sandbox saw; attribute or item access (`r.path` or `r["path"]`)."""

    provider: str | None
    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    json: Any
    time: float

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
