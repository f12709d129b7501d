"""Result files under `/<provider>/_files/<name>`: rendered on first fetch, 404 once expired, or faulty."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .images import FORMATS, NOT_IMAGE_HTML, OVERSIZED_BYTES, oversized_png, render
from .wire import Response

if TYPE_CHECKING:
    from .server import Sandbox
    from .state import Store

GONE = b"404 Not Found: this file does not exist or has expired\n"


def serve(store: Store, provider: str, name: str, sandbox: Sandbox | None = None) -> Response:
    for prefix in ("\x01", "%01"):
        name = name.removeprefix(prefix)  # a control_url link, from a client that sends it anyway
    entry = store.file(provider, name)
    job = entry.job if entry else None
    # Unknown, not finished yet, or past its TTL (the `expired` fault: already past it).
    if entry is None or job is None or not job.is_done() or job.urls_expired():
        return Response(404, GONE, {"Content-Type": "text/plain"})
    if job.file_fault == "oversized":
        return Response(
            200, headers={"Content-Type": "image/png"}, stream=oversized_png(), length=OVERSIZED_BYTES
        )
    if job.file_fault == "not_image":
        # An error page served with an image content type: clients must check the bytes.
        return Response(200, NOT_IMAGE_HTML, {"Content-Type": "image/png"})
    data = render(entry.width, entry.height, entry.fmt, job.prompt, entry.seed)
    headers = {"Content-Type": FORMATS[entry.fmt][1], "Cache-Control": "private, max-age=600"}
    if job.file_fault == "truncated":
        return Response(200, data[: len(data) // 2], headers)
    if job.file_fault == "cut_off":
        return Response(
            200, headers=headers, stream=iter([data[: len(data) // 2]]), length=len(data), close=True
        )
    if job.file_fault == "slow_drip" and sandbox is not None:
        return Response(200, headers=headers, stream=drip(data, sandbox), length=len(data))
    return Response(200, data, headers)


def drip(data: bytes, sandbox: Sandbox) -> Iterator[bytes]:
    """One byte at a time, `drip_seconds` apart, until the file is out, the client leaves or the sandbox stops."""
    for i in range(len(data)):
        yield data[i : i + 1]
        if sandbox.wait(float(sandbox.options["drip_seconds"])):
            return
