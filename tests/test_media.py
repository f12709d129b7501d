"""The file guard: downloads refused before any socket opens (reliability.md 4.1, test plan 22), size caps,
Pillow hardening (4.2, test plan 25), thumbnails and embedded metadata."""

import io
import json
import socket
import struct
import zlib

import pytest
from PIL import Image as PILImage
from PIL import ImageFile, features

from generations import media
from generations.providers import GenerationRequest
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
