"""The one HTTP seam: every request to a provider goes through here.

Clients are built once per process and reused (building one loads the CA bundle: ~18 ms,
performance.md). Tests swap the transport with `use_transport(httpx.MockTransport(...))`.
"""

from __future__ import annotations

import threading

import httpx

from .base import Adapter, HttpCall, ProviderError, Reply

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
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


def send(adapter: Adapter, call: HttpCall, timeout: float | None = None) -> Reply:
    try:
        response = client().request(
            call.method,
            url_for(adapter, call),
            headers=dict(call.headers),
            json=call.json,
            timeout=timeout or TIMEOUT,
        )
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
    return Reply(response.status_code, response.headers, response.content)


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
    try:
        response = await http.request(
            call.method, url_for(adapter, call), headers=dict(call.headers), json=call.json
        )
    except httpx.TimeoutException:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not answer in time.") from None
    except TimeoutError:
        raise ProviderError(ProviderError.TIMEOUT, f"{adapter.label} did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            ProviderError.SERVER, f"The connection to {adapter.label} {broke(exc)}."
        ) from None
    return Reply(response.status_code, response.headers, response.content)
