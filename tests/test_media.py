"""The file guard: downloads refused before any socket opens (reliability.md 4.1, test plan 22), size caps,
Pillow hardening (4.2, test plan 25), thumbnails and embedded metadata."""

import http.server
import io
import json
import socket
import struct
import threading
import time
import zlib
from types import SimpleNamespace

import pytest
from PIL import Image as PILImage
from PIL import ImageFile, features

from generations import engine, media
from generations.providers import Apiframe, GenerationRequest
from generations.providers import http as provider_http
from generations.providers.maxapi import MaxApi

from .conftest import KEYS

APIFRAME = "https://api.apiframe.ai"


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything resolves a name or opens a connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def resolves_to(monkeypatch):
    """Make every name resolve to the given addresses, and fail the test on any connection attempt."""

    def use(*addresses: str) -> list:
        asked = []

        def fake(host, port, *args, **kwargs):
            asked.append(host)
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port, 0, 0) if ":" in a else (a, port),
                )
                for a in addresses
            ]

        monkeypatch.setattr(socket, "getaddrinfo", fake)
        return asked

    def connect(*args, **kwargs):
        raise AssertionError(f"connection attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", connect)
    return use


def encoded(fmt: str, size=(320, 200), **params) -> bytes:
    image = PILImage.effect_noise(size, 64).convert("RGB")
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge canvas (what a decompression bomb looks like before decoding)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )


def sandbox_result(sandbox, fault: str | None = None) -> tuple[str, str]:
    """(result URL, base URL) of a finished MaxAPI job on the sandbox (synchronous: no polling)."""
    sandbox.set_latency(0.0, 0.0)
    if fault:
        sandbox.queue_fault(fault, "maxapi")
    adapter = MaxApi(sandbox.base_url("maxapi"), KEYS["maxapi"])
    call = adapter.build_submit(GenerationRequest(prompt="a lighthouse", model="flux-plus"))
    outcome = adapter.parse_submit(provider_http.send(adapter, call, timeout=10))
    return outcome.image_urls[0], adapter.base_url


# -- refused before any socket opens ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "url, base_url",
    [
        ("file:///etc/passwd", APIFRAME),
        ("gopher://cdn.apiframe.ai/_x", APIFRAME),
        ("ftp://cdn.apiframe.ai/x.png", APIFRAME),
        ("data:image/png;base64,AAAA", APIFRAME),
        ("//cdn.apiframe.ai/x.png", APIFRAME),
        ("https://user:pw@cdn.apiframe.ai/x.png", APIFRAME),  # credentials
        ("https://cdn.apiframe.ai@evil.example/x.png", APIFRAME),  # userinfo that looks like the CDN
        ("https://evil.example/x.png", APIFRAME),
        ("https://cdn.vtrix.ai/x.png", APIFRAME),  # another provider's CDN
        ("https://cdn.apiframe.ai.evil.example/x.png", APIFRAME),
        ("https://apiframe.ai/x.png", APIFRAME),  # the provider's domain, not its delivery host
        ("https://cdn.apiframe.ai:8443/x.png", APIFRAME),  # a delivery host, on another port
        ("https://cdn.apiframe.ai:99999/x.png", APIFRAME),  # a malformed port
        ("https://api.apiframe.ai:444/x.png", APIFRAME),  # the API host, on another port
        ("http://cdn.apiframe.ai/x.png", APIFRAME),  # plain http to a non-loopback host
        ("http://api.example.test/x.png", "http://api.example.test"),  # even the account's own host
        ("https://169.254.169.254/latest/meta-data/", APIFRAME),
        ("https://0x7f000001/x.png", APIFRAME),
        ("https://2130706433/x.png", APIFRAME),
        ("https://127.1/x.png", APIFRAME),
        ("https://0177.0.0.1/x.png", APIFRAME),
        ("https://[::ffff:127.0.0.1]/x.png", APIFRAME),
        (
            "http://127.0.0.3:8765/x.png",
            "http://127.0.0.2:8765",
        ),  # another loopback stand-in, not the account's
        ("http://127.0.0.2:8766/x.png", "http://127.0.0.2:8765"),  # the account's host, another port
    ],
)
def test_it_refuses_a_url_before_any_socket_opens(settings, no_network, url, base_url):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = True  # refused for the URL itself, not for where it points
    with pytest.raises(media.MediaError) as refused:
        media.download(url, "apiframe", base_url)
    assert refused.value.code == "forbidden_url"


@pytest.mark.parametrize(
    "addresses",
    [
        ["10.1.2.3"],
        ["172.16.0.9"],
        ["192.168.1.1"],  # private
        ["169.254.169.254"],
        ["fe80::1"],  # link-local, the cloud metadata service
        ["100.64.0.1"],
        ["100.127.255.254"],  # CGNAT: neither private nor global in `ipaddress`
        ["127.0.0.1"],
        ["127.0.0.2"],
        ["::1"],
        ["::ffff:127.0.0.1"],
        ["::ffff:10.0.0.1"],  # loopback, IPv4-mapped
        ["0.0.0.0"],
        ["fc00::1"],
        ["224.0.0.1"],
        ["192.0.2.10"],
        ["240.0.0.1"],
        ["93.184.215.14", "10.0.0.1"],  # one bad address among good ones is enough
    ],
)
def test_it_refuses_a_host_that_resolves_somewhere_private(settings, resolves_to, addresses):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    asked = resolves_to(*addresses)
    with pytest.raises(media.MediaError) as refused:
        media.download("https://cdn.apiframe.ai/images/x-1.png", "apiframe", APIFRAME)
    assert refused.value.code == "forbidden_url"
    assert addresses[-1] in refused.value.message
    assert asked == ["cdn.apiframe.ai"]


def test_it_passes_a_delivery_host_on_public_addresses(settings, resolves_to):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    resolves_to("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    media.check_url("https://cdn2.apiframe.ai/images/x-1.png", "apiframe", APIFRAME)
    media.check_url("https://api.apiframe.ai/files/x.png", "apiframe", APIFRAME)  # the account's own host


def test_the_delivery_hosts_are_the_ones_the_adapter_declares(settings, resolves_to, monkeypatch):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    resolves_to("93.184.215.14")
    monkeypatch.setattr(Apiframe, "result_hosts", frozenset({"images.apiframe.example"}))
    media.check_url("https://images.apiframe.example/x-1.png", "apiframe", APIFRAME)
    with pytest.raises(media.MediaError) as refused:
        media.check_url("https://cdn2.apiframe.ai/images/x-1.png", "apiframe", APIFRAME)
    assert refused.value.code == "forbidden_url"
    assert media.delivery_hosts("apiframe", ["X.example "]) == {"images.apiframe.example", "x.example"}
    assert "bfldeliveryprod.blob.core.windows.net" in media.delivery_hosts("bfl")
    assert media.delivery_hosts("gone") == frozenset()


def test_an_account_s_extra_hosts_are_allowed_beside_the_adapter_s(settings, resolves_to):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    resolves_to("93.184.215.14")
    url = "https://files.vtrix-cdn.example/out/1.jpeg"
    with pytest.raises(media.MediaError):
        media.check_url(url, "vtrix", "https://cloud.vtrix.ai")
    media.check_url(url, "vtrix", "https://cloud.vtrix.ai", extra_hosts=[" Files.Vtrix-CDN.example ", ""])
    with pytest.raises(media.MediaError) as refused:  # still on 443 only, and never to a private address
        media.check_url(
            "https://files.vtrix-cdn.example:8443/1.jpeg",
            "vtrix",
            "https://cloud.vtrix.ai",
            ["files.vtrix-cdn.example"],
        )
    assert refused.value.code == "forbidden_url"


def test_it_refuses_the_sandbox_when_loopback_downloads_are_off(settings, fresh_sandbox, monkeypatch):
    url, base_url = sandbox_result(fresh_sandbox)
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = False
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected"))

    with pytest.raises(media.MediaError) as refused:
        media.download(url, "maxapi", base_url)

    assert refused.value.code == "forbidden_url"
    assert not any("/_files/" in r.path for r in fresh_sandbox.requests)


# -- over loopback, against the sandbox ------------------------------------------------------------------------------
def test_it_downloads_a_result_from_the_sandbox(fresh_sandbox):
    url, base_url = sandbox_result(fresh_sandbox)
    checked = media.check_image(media.download(url, "maxapi", base_url))
    assert (checked.width, checked.height) == (1024, 1024)


def test_it_stops_a_download_past_the_size_cap(settings, fresh_sandbox):
    settings.FLUXWEB_MAX_DOWNLOAD_BYTES = 2 * 1024 * 1024
    url, base_url = sandbox_result(fresh_sandbox, "oversized")  # a 60 MB body
    with pytest.raises(media.MediaError) as refused:
        media.download(url, "maxapi", base_url)
    assert refused.value.code == "too_large"


def test_it_refuses_a_body_that_is_not_an_image(fresh_sandbox):
    url, base_url = sandbox_result(fresh_sandbox, "not_image")  # an HTML page served as image/png
    data = media.download(url, "maxapi", base_url)
    with pytest.raises(media.MediaError) as refused:
        media.check_image(data)
    assert refused.value.code == "not_image"


def test_it_reports_an_expired_link(fresh_sandbox):
    url, base_url = sandbox_result(fresh_sandbox, "expired")
    with pytest.raises(media.MediaError) as refused:
        media.download(url, "maxapi", base_url)
    assert "expired" in refused.value.message


# -- Pillow hardening ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_it_accepts_the_three_formats(fmt):
    checked = media.check_image(encoded(fmt))
    assert (checked.width, checked.height, checked.format) == (320, 200, fmt.lower())


def test_it_refuses_a_truncated_jpeg():
    data = encoded("JPEG", (512, 512), quality=95)
    with PILImage.open(io.BytesIO(data[: len(data) // 2])) as im:
        assert im.size == (512, 512)  # the header alone looks fine
    with pytest.raises(media.MediaError) as refused:
        media.check_image(data[: len(data) // 2])
    assert refused.value.code == "not_image"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_it_refuses_an_animated_image(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow without WebP")
    frames = [PILImage.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(media.MediaError, match="Animated") as refused:
        media.check_image(out.getvalue())
    assert refused.value.code == "not_image"


# Past 2x the pixel limit, and between 1x and 2x, with the warning ignored: the guard must not depend on it.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(20000, 20000), (6000, 6000)])
def test_it_refuses_a_decompression_bomb_before_decoding(monkeypatch, size):
    decoded = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or original(self))

    with pytest.raises(media.MediaError) as refused:
        media.check_image(png_claiming(*size))

    assert refused.value.code == "not_image" and "too large" in refused.value.message
    assert decoded == []


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><body>Access denied</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"",
    ],
)
def test_it_refuses_what_is_not_an_image(data):
    with pytest.raises(media.MediaError):
        media.check_image(data)


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP", "ICO"])
def test_it_refuses_formats_it_does_not_serve(fmt):
    with pytest.raises(media.MediaError):
        media.check_image(encoded(fmt, (64, 64)))


# -- thumbnails and metadata ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fmt, size, expected",
    [
        ("JPEG", (1360, 768), (512, 289)),
        ("PNG", (2048, 512), (512, 128)),
        ("WEBP", (768, 1360), (289, 512)),
        ("PNG", (200, 120), (200, 120)),
    ],
)
def test_it_makes_thumbnails_no_larger_than_512(fmt, size, expected):
    with PILImage.open(io.BytesIO(media.thumbnail(encoded(fmt, size)))) as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == expected


METADATA = {"prompt": 'a "quoted" lighthouse, ünïcode', "model": "flux-2-max", "seed": 42, "index": 0}


def test_it_embeds_metadata_in_a_png_that_still_decodes():
    original, thumb = media.files_for(media.check_image(encoded("PNG")), METADATA)
    data = original.read()
    with PILImage.open(io.BytesIO(data)) as im:
        im.load()
        assert json.loads(im.text["fluxweb"]) == METADATA
    assert media.check_image(data).format == "png"
    assert original.name.endswith(".png") and thumb.name.endswith("_t.jpg")


def test_it_embeds_metadata_in_a_jpeg_comment_that_still_decodes():
    original, _ = media.files_for(media.check_image(encoded("JPEG")), METADATA)
    data = original.read()
    assert data[:2] == b"\xff\xd8" and data[2:4] == b"\xff\xfe"  # COM right after SOI
    with PILImage.open(io.BytesIO(data)) as im:
        im.load()
        assert json.loads(im.info["comment"]) == METADATA
    checked = media.check_image(data)
    assert (checked.width, checked.height, checked.format) == (320, 200, "jpeg")


# -- hostile file servers on loopback: deadlines, redirects, garbage --------------------------------------------------
class FileServer:
    """A file server on loopback (127.0.0.1 unless told) that misbehaves on purpose. `routes` maps a path to a
    function that writes the whole reply to the raw socket file; each request's path is recorded in
    `requests`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.routes: dict = {}
        self.requests: list[str] = []
        self.closing = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                route = server.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route(self.wfile)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base_url + path

    def pause(self, seconds: float) -> bool:
        """Sleep, unless the test is over; True when it is."""
        return self.closing.wait(seconds)

    def stop(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def file_server(settings):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = True
    servers = []

    def make(host: str = "127.0.0.1", port: int = 0) -> FileServer:
        servers.append(FileServer(host, port))
        return servers[-1]

    yield make
    for server in servers:
        server.stop()


PNG = encoded("PNG", (64, 48))
OTHER_PNG = encoded("PNG", (48, 64))


def reply_with(body: bytes, status: str = "200 OK", headers: str = "Content-Type: image/png\r\n"):
    def write(out):
        out.write(
            f"HTTP/1.1 {status}\r\n{headers}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )

    return write


def head(out, length: int = 1_000_000) -> None:
    out.write(f"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n".encode())


SLOW = 6.0  # how long a hostile server keeps a download going before it gives up and closes


def dripping_body(server):
    def write(out):
        head(out)
        started = time.monotonic()
        while time.monotonic() - started < SLOW and not server.pause(0.05):
            out.write(b"\x89")

    return write


def silent_after_headers(server):
    """Headers late (but within any read timeout), then nothing: each wait alone is shorter than the deadline."""

    def write(out):
        if not server.pause(0.7):
            head(out)
            server.pause(SLOW)

    return write


def trickle_then_silence(server):
    def write(out):
        head(out)
        for _ in range(7):
            if server.pause(0.1):
                return
            out.write(b"\x89")
        server.pause(SLOW)

    return write


def silent(server):
    return lambda out: server.pause(SLOW)


def dripping_headers(server):
    def write(out):
        for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1000:
            if server.pause(0.05):
                return
            out.write(bytes([byte]))

    return write


@pytest.mark.parametrize(
    "behaviour", [dripping_body, silent_after_headers, trickle_then_silence, silent, dripping_headers]
)
def test_a_download_ends_at_its_deadline_whatever_the_server_does(monkeypatch, file_server, behaviour):
    """reliability.md test plan 24: the overall deadline holds against a drip (a byte every 50 ms, which no
    per-read timeout stops) and against silence before or after the headers."""
    monkeypatch.setattr(media, "DOWNLOAD_DEADLINE", 1.0)
    server = file_server()
    server.routes["/x.png"] = behaviour(server)

    started = time.monotonic()
    with pytest.raises(media.MediaError) as failed:
        media.download(server.url("/x.png"), "maxapi", server.base_url)
    elapsed = time.monotonic() - started

    assert failed.value.code == "download_failed"
    assert elapsed < 1.0 + 0.5, f"the download ran {elapsed:.2f} s past a 1 s deadline"
    assert server.requests == ["/x.png"]


def test_a_slow_but_timely_download_arrives_whole(monkeypatch, file_server):
    monkeypatch.setattr(media, "DOWNLOAD_DEADLINE", 2.0)
    server = file_server()

    def write(out):
        head(out, len(PNG))
        for start in range(0, len(PNG), len(PNG) // 5 + 1):
            server.pause(0.05)
            out.write(PNG[start : start + len(PNG) // 5 + 1])

    server.routes["/x.png"] = write
    assert media.download(server.url("/x.png"), "maxapi", server.base_url) == PNG


def test_a_redirect_is_refused_not_followed(file_server):
    """Even to a URL the guard would allow (the same host, a valid image): reliability.md 4.1."""
    server = file_server()
    server.routes["/a.png"] = reply_with(b"", "302 Found", f"Location: {server.url('/b.png')}\r\n")
    server.routes["/b.png"] = reply_with(PNG)
    assert media.check_image(media.download(server.url("/b.png"), "maxapi", server.base_url))
    server.requests.clear()

    with pytest.raises(media.MediaError, match="redirect") as refused:
        media.download(server.url("/a.png"), "maxapi", server.base_url)

    assert refused.value.code == "download_failed"
    assert server.requests == ["/a.png"]


@pytest.mark.parametrize(
    "status", ["301 Moved Permanently", "302 Found", "303 See Other", "307 Temporary Redirect"]
)
def test_a_redirect_to_another_host_is_never_followed(file_server, status):
    server, elsewhere = file_server(), file_server()
    elsewhere.routes["/b.png"] = reply_with(PNG)
    server.routes["/a.png"] = reply_with(b"", status, f"Location: {elsewhere.url('/b.png')}\r\n")

    with pytest.raises(media.MediaError) as refused:
        media.download(server.url("/a.png"), "maxapi", server.base_url)

    assert refused.value.code == "download_failed"
    assert server.requests == ["/a.png"] and elsewhere.requests == []


@pytest.mark.parametrize(
    "reply",
    [
        reply_with(PNG[:100] + b"", headers="Content-Type: image/png\r\nContent-Length: 5000\r\n"),  # lies
        lambda out: out.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + PNG[:100]),  # truncated
        lambda out: out.write(b"HTTP/1.1 abc\r\n\r\n"),  # not HTTP
        lambda out: out.write(b"\x00\xff garbage \r\n\r\n"),
        lambda out: out.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),  # bad chunk
        lambda out: None,  # closed without a word
        reply_with(b"", "500 Internal Server Error"),
        reply_with(PNG, "206 Partial Content"),
    ],
)
def test_a_broken_reply_is_a_download_failure(file_server, reply):
    server = file_server()
    server.routes["/x.png"] = reply
    with pytest.raises(media.MediaError) as failed:
        media.download(server.url("/x.png"), "maxapi", server.base_url)
    assert failed.value.code == "download_failed"


def test_the_download_connects_to_the_address_that_was_checked(file_server, monkeypatch):
    """DNS rebinding (reliability.md test plan 23): the name is resolved once, by the guard, and the
    connection goes to the address it allowed; a second lookup would be free to answer something else."""
    server = file_server()
    server.routes["/x.png"] = reply_with(PNG)
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "localhost":
            return real(host, port, *args, **kwargs)  # a numeric address: no lookup
        lookups.append(host)
        if len(lookups) > 1:
            raise AssertionError("a second lookup: the connection would go wherever it says")
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    base_url = f"http://localhost:{server.port}"

    assert media.download(f"{base_url}/x.png", "maxapi", base_url) == PNG
    assert lookups == ["localhost"]


@pytest.mark.parametrize(("checked", "later"), [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")])
def test_the_connection_goes_to_the_checked_address_whatever_a_later_lookup_says(
    file_server, monkeypatch, checked, later
):
    """DNS pinning (issue 9.6), on loopback only: the name answers `checked` to the guard and `later` to anyone
    who asks again. A file server listens on each address, on the same port, with different bytes; the
    download must bring the checked one's bytes and the other must see no request."""
    servers = {checked: file_server(checked)}
    servers[later] = file_server(later, servers[checked].port)
    servers[checked].routes["/x.png"] = reply_with(PNG)
    servers[later].routes["/x.png"] = reply_with(OTHER_PNG)
    real = socket.getaddrinfo
    lookups = []

    def rebinding(host, port, *args, **kwargs):
        if host != "localhost":
            return real(host, port, *args, **kwargs)  # a numeric address: no lookup
        lookups.append(host)
        return real(checked if len(lookups) == 1 else later, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    base_url = f"http://localhost:{servers[checked].port}"

    assert media.download(f"{base_url}/x.png", "maxapi", base_url) == PNG
    assert servers[checked].requests == ["/x.png"]
    assert servers[later].requests == []


# Defect 2 (issue 7): malformed result URLs escaped as ValueError or httpx.InvalidURL and left the job running.
@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/x.png",
        "http://127.0.0.1:8765/a\x01b.png",
        "http://127.0.0.1:8765/x.png\n",
        "http://127.0.0.1:8765\t/x.png",
        "http://127.0.0.1:8765/\x00.png",
        "http://127.0.0.1\x00.evil.example:8765/x.png",
        "http://127.0.0.1 :8765/x.png",
        " http://127.0.0.1:8765/x.png",
        "http://127.0.0.1:+8765/x.png",
        "http://127.0.0.1:٨٧٦٥/x.png",
        "http://127.0.0.1:8765\\@evil.example/x.png",
        "http://[::1]]:8765/x.png",
        "http://[zz::1]:8765/x.png",
        "http://[::1]x:8765/x.png",
        "http://127.0.0.1:8765/\ud800.png",
        "http:127.0.0.1:8765/x.png",
        "http:///127.0.0.1:8765/x.png",
        "http://" + "a" * 70 + ".example/x.png",
        "",
        None,
        123,
        b"http://127.0.0.1:8765/x.png",
        ["http://127.0.0.1:8765/x.png"],
        {"url": "http://127.0.0.1:8765/x.png"},
    ],
)
def test_a_malformed_url_is_refused_before_any_socket_opens(settings, no_network, url):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = True
    with pytest.raises(media.MediaError) as refused:
        media.download(url, "maxapi", "http://127.0.0.1:8765")
    assert refused.value.code == "forbidden_url"


@pytest.mark.parametrize("base_url", ["http://[::1", "http://127.0.0.1:99999", "", "not a url"])
def test_a_malformed_base_url_refuses_the_download(settings, no_network, base_url):
    settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS = True
    with pytest.raises(media.MediaError) as refused:
        media.download("http://127.0.0.1:8765/x.png", "maxapi", base_url)
    assert refused.value.code == "forbidden_url"


# -- one decode per ingested image (issue 9.5) ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_ingest_decodes_each_image_once(fmt, monkeypatch, settings, tmp_path):
    """The check's decode makes the thumbnail too: one image opened and decoded per stored file."""
    settings.STORAGES = settings.STORAGES | {
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": tmp_path},
        }
    }
    data = encoded(fmt, (1024, 768))
    decodes = []
    real_open = PILImage.open
    monkeypatch.setattr(media.PILImage, "open", lambda *a, **k: decodes.append(a) or real_open(*a, **k))
    monkeypatch.setattr(media, "download", lambda url, kind, base_url, **extra: data)
    account = SimpleNamespace(kind="maxapi", base_url="https://api.example", extra_result_hosts=())
    job = SimpleNamespace(
        pk=7,
        n=1,
        image_urls=["https://cdn.example/a"],
        account=account,
        prompt=SimpleNamespace(text="a lighthouse"),
        model="flux-2-max",
        seed=1,
        params={},
    )
    (saved,), problem = engine.fetch_images(job)
    assert problem is None
    assert len(decodes) == 1, decodes
    with PILImage.open(tmp_path / saved.thumbnail) as thumb:
        assert max(thumb.size) == media.THUMBNAIL_SIZE


def test_a_truncated_jpeg_is_refused_when_decoded_for_its_thumbnail_too():
    data = encoded("JPEG", (2048, 2048), quality=95)
    with pytest.raises(media.MediaError) as refused:
        media.check_image(data[: len(data) // 2], thumbnail=True)
    assert refused.value.code == "not_image"


def test_a_jpeg_is_decoded_at_a_reduced_scale_for_its_thumbnail(monkeypatch):
    sizes = []
    real = PILImage.Image.thumbnail

    def thumbnail(self, size, *args, **kwargs):
        sizes.append(self.size)  # the decoded image the thumbnail starts from
        return real(self, size, *args, **kwargs)

    monkeypatch.setattr(PILImage.Image, "thumbnail", thumbnail)
    checked = media.check_image(encoded("JPEG", (2048, 2048)), thumbnail=True)
    assert (checked.width, checked.height) == (2048, 2048)  # the file's own size, not the draft's
    assert sizes == [(512, 512)]  # DCT scaling: 1/4, never the full 2048 x 2048 in memory
