"""The one HTTP seam: every request to a provider goes through here.

Clients are built once per process and reused (building one loads the CA bundle: ~18 ms,
performance.md). Tests swap the transport with `use_transport(httpx.MockTransport(...))`.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from .base import Adapter, HttpCall, ProviderError, Reply

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# httpx's timeouts are per read: a provider that sends one byte every few seconds never trips them. A whole
# call (answer and body) gets this long unless the caller gives its own total, and a reply this big is not
# an API answer (the largest documented one is a few KB).
DEADLINE = 45.0
POLL_DEADLINE = 30.0
MAX_REPLY_BYTES = 2 * 1024 * 1024
_lock = threading.Lock()
_transport: httpx.BaseTransport | None = None
_client: httpx.Client | None = None


def use_transport(transport: httpx.BaseTransport | None) -> None:
    """Route every sync provider call through `transport` (tests), or back to the network (None)."""
    global _transport, _client
    with _lock:
        _transport = transport
        if _client is not None:
            _client.close()
        _client = None


def client() -> httpx.Client:
    global _client
    with _lock:
        if _client is None:
            _client = httpx.Client(timeout=TIMEOUT, transport=_transport, follow_redirects=False)
        return _client


def async_client(limit: int) -> httpx.AsyncClient:
    """A fresh async client for one sweep's event loop (an AsyncClient is bound to the loop it first ran on)."""
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    transport = _transport if isinstance(_transport, httpx.AsyncBaseTransport) else None
    return httpx.AsyncClient(timeout=TIMEOUT, limits=limits, transport=transport, follow_redirects=False)


def url_for(adapter: Adapter, call: HttpCall) -> str:
    if call.path.startswith(("http://", "https://")):
        return call.path
    return adapter.base_url + call.path


def build(adapter: Adapter, call: HttpCall, http: httpx.Client | httpx.AsyncClient, timeout) -> httpx.Request:
    """The request, or a ProviderError when it cannot be made at all: a URL httpx refuses (a provider-given
    status URL holding a control character, an unclosed IPv6 bracket) or a header it cannot encode. Nothing
    was sent."""
    try:
        return http.build_request(
            call.method, url_for(adapter, call), headers=dict(call.headers), json=call.json, timeout=timeout
        )
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError, TypeError):
        if call.path.startswith(("http://", "https://")):
            raise ProviderError(
                ProviderError.MALFORMED,
                f"{adapter.label} gave a job address that cannot be requested.",
                unsent=True,
            ) from None
        raise ProviderError(
            ProviderError.INVALID,
            f"A request to {adapter.label} cannot be made: check the account's base URL and API key.",
            unsent=True,
        ) from None


def body_of(adapter: Adapter, chunk: bytes, body: bytearray, started: float, deadline: float) -> None:
    body += chunk
    if len(body) > MAX_REPLY_BYTES:
        raise ProviderError(
            ProviderError.MALFORMED, f"{adapter.label} sent a reply far larger than any answer."
        )
    if time.monotonic() - started > deadline:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not finish answering in time.")


def send(adapter: Adapter, call: HttpCall, timeout: float | None = None) -> Reply:
    started = time.monotonic()
    deadline = float(timeout) if timeout else DEADLINE
    request = build(adapter, call, client(), timeout or TIMEOUT)
    try:
        response = client().send(request, stream=True)
        try:
            body = bytearray()
            for chunk in response.iter_bytes():
                body_of(adapter, chunk, body, started, deadline)
        finally:
            response.close()
    except httpx.ConnectTimeout:
        raise ProviderError(
            ProviderError.TIMEOUT, f"Could not connect to {adapter.label} in time.", unsent=True
        ) from None
    except httpx.TimeoutException:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not answer in time.") from None
    except httpx.ConnectError:
        raise ProviderError(
            ProviderError.SERVER, f"Could not connect to {adapter.label}.", unsent=True
        ) from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            ProviderError.SERVER, f"The connection to {adapter.label} {broke(exc)}."
        ) from None
    return Reply(response.status_code, response.headers, bytes(body))


def broke(exc: httpx.HTTPError) -> str:
    """What went wrong on the wire, in words a user can act on (never an exception's class name)."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "closed before a complete answer arrived"
    if isinstance(exc, httpx.ConnectError):
        return "could not be opened"
    if isinstance(exc, httpx.ReadError | httpx.WriteError):
        return "broke off mid-answer"
    return "failed"


async def send_async(http: httpx.AsyncClient, adapter: Adapter, call: HttpCall) -> Reply:
    """One poll, answer and body within POLL_DEADLINE however slowly they drip, so one provider cannot hold
    up a sweep round for every other job."""
    started = time.monotonic()
    request = build(adapter, call, http, httpx.USE_CLIENT_DEFAULT)
    try:
        async with asyncio.timeout(POLL_DEADLINE):
            response = await http.send(request, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body_of(adapter, chunk, body, started, POLL_DEADLINE)
            finally:
                await response.aclose()
    except httpx.TimeoutException:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not answer in time.") from None
    except TimeoutError:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            ProviderError.SERVER, f"The connection to {adapter.label} {broke(exc)}."
        ) from None
    return Reply(response.status_code, response.headers, bytes(body))
