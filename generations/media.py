"""The files: guarded download of provider results, verification, storage, thumbnails and metadata.

Provider URLs expire, so results are fetched at once. A download goes only to http(s) on the provider's
documented delivery hosts or its own API host, never to a private, link-local or loopback address (except
loopback when FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS is on, for the sandbox), is streamed with a size cap and an
overall deadline, and every file is decoded fully before it is kept (reliability.md 4): by Pillow, a WebP by
libwebp's plain decoder through imagecodecs (`_decode_webp`).
"""

from __future__ import annotations

import contextvars
import io
import ipaddress
import json
import logging
import socket
import struct
import threading
import time
import uuid
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.http import FileResponse, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.utils.http import content_disposition_header
from PIL import Image as PILImage

from .providers import PROVIDERS, ProviderError
from .providers import http as provider_http
from .providers.http import broke, client
from .refusal import Refusal

log = logging.getLogger(__name__)

# Flux outputs are at most ~4 MP; refuse anything past 8x that before decoding it (decompression bombs).
PILImage.MAX_IMAGE_PIXELS = 32 * 1024 * 1024
warnings.simplefilter("error", PILImage.DecompressionBombWarning)

FORMATS = ["PNG", "JPEG", "WEBP"]
THUMBNAIL_SIZE = 512
DOWNLOAD_DEADLINE = 30.0  # per image; an ingest of 4 stays under the task timeout


def delivery_hosts(kind: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Where a provider of `kind` delivers result files: the hosts its adapter declares (`result_hosts`,
    providers.md), plus `extra` ones an admin allowed for the account. Never the provider's whole domain."""
    adapter = PROVIDERS.get(kind)
    declared = adapter.result_hosts if adapter is not None else frozenset()
    return declared | {host.strip().lower() for host in extra if host and host.strip()}


class MediaError(Refusal):
    """An image file refused or lost: an upload FluxWeb will not keep (413 when it is too big to keep), or
    a result download that failed inside ingest, whose code and message become the job's error."""

    def __init__(self, code: str, message: str, *, host: str = ""):
        super().__init__(code, message, status=413 if code in ("too_large", "storage_full") else 400)
        self.host = host  # set when the only fault is a host not allowed: an admin may allow it


@dataclass(frozen=True)
class Checked:
    data: bytes
    width: int
    height: int
    format: str  # jpeg, png, webp
    thumbnail: bytes = field(default=b"", repr=False)  # made from the check's own decode, when asked


def address_allowed(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS
    # 100.64/10 is neither private nor global in `ipaddress`; `is_global` alone would let it pass.
    return ip.is_global and not ip.is_private and not ip.is_reserved and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A result URL that passed `check_url`: the host as the HTTP client will connect to it, and the
    addresses it resolved to, every one of them allowed. The download connects to these, never to a second
    lookup's answer (DNS rebinding)."""

    host: str
    port: int
    addresses: tuple[str, ...]


def check_url(url: str, kind: str, base_url: str, extra_hosts: Iterable[str] = ()) -> Target:
    """Refuse a result URL before any socket opens: scheme, host allowlist (the provider's delivery hosts,
    `extra_hosts`, the account's own host), and every address it resolves to. A URL that does not parse, or
    that the standard library and the HTTP client read differently, is refused too."""
    try:
        if not isinstance(url, str):
            raise TypeError(url)
        target = httpx.URL(url)
        parts = urlsplit(url)
        split = (parts.scheme, parts.hostname or "", parts.port, parts.username, parts.password)
        base = urlsplit(base_url)
        base_host, base_port = (base.hostname or "").lower(), base.port
        connect_host = target.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError, TypeError):
        raise MediaError("forbidden_url", "Refused a malformed result URL.") from None
    scheme, split_host, split_port, username, password = split
    if scheme not in ("http", "https") or not split_host:
        raise MediaError("forbidden_url", f"Refused to download from a {scheme or 'schemeless'} URL.")
    if username or password or target.userinfo:
        raise MediaError("forbidden_url", "Refused a result URL that carries credentials.")
    host = split_host.lower()
    default_port = 443 if scheme == "https" else 80
    port = split_port or default_port
    if (target.scheme, target.host, target.port or default_port) != (scheme, host, port):
        raise MediaError("forbidden_url", "Refused an ambiguous result URL.")
    # A documented CDN only on 443; the account's own host only on the port its base URL names.
    own_port = base_port or (443 if base.scheme == "https" else 80)
    extra_hosts = delivery_hosts("", extra_hosts)  # lower-cased, blanks dropped
    if host in delivery_hosts(kind):
        expected_port = 443
    elif host == base_host:
        expected_port = own_port
    elif (
        host in extra_hosts
    ):  # an account's extra result hosts (admin-allowed, issue 9.2): 443 or its own port
        expected_port = port if port in (443, own_port) else 443
    else:
        raise MediaError(
            "forbidden_url",
            f"Refused to download from {host}: not a delivery host of this provider.",
            host=host,
        )
    if port != expected_port:
        raise MediaError("forbidden_url", f"Refused to download from {host} on port {port}.")
    if scheme == "http" and not _is_loopback_name(host):
        raise MediaError("forbidden_url", f"Refused to download over plain http from {host}.")
    try:
        infos = socket.getaddrinfo(connect_host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise MediaError("download_failed", f"Could not resolve {host}.") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        if not address_allowed(address):
            raise MediaError("forbidden_url", f"Refused to download from {host}: it resolves to {address}.")
    if not addresses:
        raise MediaError("download_failed", f"Could not resolve {host}.")
    return Target(connect_host, port, addresses)


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# The download in progress in this thread: its deadline and its checked target.
_download: contextvars.ContextVar[tuple[float, Target] | None] = contextvars.ContextVar(
    "fluxweb_download", default=None
)


def _time_left(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout`, cut to what is left of the current download's deadline: every connect, write and read of a
    download waits at most until the deadline, whatever the server does (a slow drip, or silence)."""
    current = _download.get()
    if current is None:
        return timeout
    left = current[0] - time.monotonic()
    if left <= 0:
        raise expired("The download deadline has passed.")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        left = _time_left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _PinnedBackend(httpcore.SyncBackend):
    """Connects only to the addresses `check_url` allowed for the current download, within its deadline."""

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        current = _download.get()
        if current is None or (host, port) != (current[1].host, current[1].port):
            raise httpcore.ConnectError(f"Refused to connect to {host}:{port}: not the checked download.")
        error: Exception = httpcore.ConnectError(f"Could not connect to {host}.")
        for address in current[1].addresses:
            left = _time_left(timeout, httpcore.ConnectTimeout)
            try:
                stream = super().connect_tcp(address, port, left, local_address, socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream)
        raise error


class _DownloadTransport(httpx.HTTPTransport):
    def __init__(self):
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), network_backend=_PinnedBackend()
        )


_download_lock = threading.Lock()
_download_client: httpx.Client | None = None


def _download_http() -> httpx.Client:
    """The client downloads use: pinned and deadline-bound; or, when a test has swapped the provider seam's
    transport, the seam's client (no sockets)."""
    global _download_client
    if provider_http._transport is not None:
        return client()
    with _download_lock:
        if _download_client is None:
            _download_client = httpx.Client(transport=_DownloadTransport(), follow_redirects=False)
        return _download_client


def download(
    url: str, kind: str, base_url: str, limit: int | None = None, *, extra_hosts: Iterable[str] = ()
) -> bytes:
    """The result at `url`, within `limit` bytes and DOWNLOAD_DEADLINE seconds overall. Never follows a
    redirect. Every failure is a MediaError: `forbidden_url`, `expired`, `too_large` or `download_failed`."""
    limit = limit or settings.FLUXWEB_MAX_DOWNLOAD_BYTES
    deadline = time.monotonic() + DOWNLOAD_DEADLINE
    target = check_url(url, kind, base_url, extra_hosts)
    token = _download.set((deadline, target))
    chunks, size = [], 0
    try:
        timeout = httpx.Timeout(min(20.0, DOWNLOAD_DEADLINE), connect=min(5.0, DOWNLOAD_DEADLINE))
        # Raw bytes as they arrive (never decoded, so never inflated), each one against the clock.
        headers = {"Accept-Encoding": "identity"}
        with _download_http().stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code in (403, 404, 410):
                raise MediaError(ProviderError.EXPIRED, "The provider's image link has expired or vanished.")
            if 300 <= response.status_code < 400:
                raise MediaError(
                    "download_failed",
                    f"The provider's file server answered a redirect (HTTP {response.status_code}); "
                    "redirects are not followed.",
                )
            if response.status_code != 200:
                raise MediaError(
                    "download_failed", f"The provider's file server answered HTTP {response.status_code}."
                )
            for piece in response.iter_raw():
                size += len(piece)
                if size > limit:
                    raise MediaError(
                        "too_large", f"The image is larger than the {limit // (1024 * 1024)} MB limit."
                    )
                if time.monotonic() > deadline:
                    raise MediaError("download_failed", "The image download took too long.")
                chunks.append(piece)
    except httpx.TimeoutException:
        if time.monotonic() >= deadline:
            raise MediaError("download_failed", "The image download took too long.") from None
        raise MediaError("download_failed", "The provider's file server did not answer in time.") from None
    except httpx.HTTPError as exc:
        raise MediaError(
            "download_failed", f"The image download failed: the connection {broke(exc)}."
        ) from None
    except (httpx.InvalidURL, httpx.StreamError, ValueError, OSError):
        raise MediaError("download_failed", "The image download failed.") from None
    finally:
        _download.reset(token)
    return b"".join(chunks)


def check_image(data: bytes, *, thumbnail: bool = False) -> Checked:
    """Decode fully: `verify()` alone passes a truncated JPEG (performance.md). With `thumbnail`, the
    thumbnail is made from this same decode (issue 9.5: the ingest decoded each image twice), and a JPEG is
    decoded at the smallest DCT scale the thumbnail allows: every byte of it is still read and checked. A WebP
    is decoded by libwebp's plain decoder, not Pillow's (`_decode_webp`), after Pillow's header checks."""
    thumb = b""
    try:
        with PILImage.open(io.BytesIO(data), formats=FORMATS) as im:
            fmt = im.format.lower()
            width, height = im.size
            # Explicitly, not only through the warnings filter above: code that resets the filters (pytest
            # does, per test) would let an image between 1x and 2x the limit be decoded.
            if width * height > PILImage.MAX_IMAGE_PIXELS:
                raise MediaError("not_image", "The image is too large to decode safely.")
            if getattr(im, "n_frames", 1) > 1:
                raise MediaError("not_image", "Animated images are not accepted.")
            if thumbnail:
                thumb = _thumbnail_of_opened(data, im)
            elif fmt == "webp":
                _decode_webp(data, im)
            else:
                im.load()
    except MediaError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise MediaError("not_image", "The image is too large to decode safely.") from None
    except Exception:
        raise MediaError(
            "not_image", "The provider sent a file that is not a valid PNG, JPEG or WebP image."
        ) from None
    return Checked(data=data, width=width, height=height, format=fmt, thumbnail=thumb)


def _decode_webp(data: bytes, im: PILImage.Image) -> PILImage.Image:
    """Every pixel of a single-frame WebP that Pillow has opened (and sized) but not decoded, by libwebp's plain
    WebPDecode through imagecodecs. Pillow decodes WebP only through libwebp's animation API, which holds two
    full-size RGBA canvases and a copy: for 2048 x 2048, ~65 MiB and ~55 ms, against ~16 MiB and ~28 ms here.
    The pixels are the same; a truncated or corrupt file fails here as it fails in Pillow."""
    # Imported here: numpy comes with it, ~20 MiB resident, paid only by processes that check a WebP.
    from imagecodecs import webp_decode

    rgba = webp_decode(data, hasalpha=True)  # 4 bytes a pixel, Pillow's own layout: no copy below
    if rgba.shape != (im.height, im.width, 4):
        raise ValueError(f"decoded {rgba.shape}, the header said {im.size}")
    # An opaque WebP is mode RGB to Pillow: RGBX (alpha ignored) keeps it off the premultiplied RGBA resize.
    mode = "RGBA" if im.mode == "RGBA" else "RGBX"
    return PILImage.frombuffer(mode, im.size, rgba, "raw", mode, 0, 1)


def _thumbnail_of_opened(data: bytes, im: PILImage.Image) -> bytes:
    """Decode `im`, opened from `data` and not yet loaded, for its thumbnail: a JPEG at the smallest DCT scale
    the thumbnail allows (draft), a still WebP by `_decode_webp` with a whole-factor box reduce() straight to
    the size (WebP has no draft; 2048 -> 512 is one 4x4 average, nearer LANCZOS than reduce(2) + BILINEAR and
    ~8 ms cheaper)."""
    if im.format == "WEBP" and getattr(im, "n_frames", 1) == 1:
        return thumbnail_of(_decode_webp(data, im), reducing_gap=1.0)
    im.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG decodes at a reduced scale: ~2x faster
    im.load()
    return thumbnail_of(im)


def thumbnail(data: bytes) -> bytes:
    with PILImage.open(io.BytesIO(data), formats=FORMATS) as im:
        return _thumbnail_of_opened(data, im)


def thumbnail_of(im: PILImage.Image, reducing_gap: float = 2.0) -> bytes:
    """The JPEG thumbnail of an opened (perhaps already decoded) image."""
    if im.mode not in ("RGB", "RGBA", "RGBX", "L"):
        im = im.convert("RGB")  # palette and CMYK images resample badly
    # Shrink first, convert after: converting a full-size RGB image only copies 12 MB for nothing.
    # reducing_gap: a whole-factor box reduce() down to `reducing_gap` times the size, then one resample.
    im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), PILImage.Resampling.BILINEAR, reducing_gap=reducing_gap)
    if im.mode != "RGB":
        im = im.convert("RGB")
    out = io.BytesIO()
    im.save(out, "JPEG", quality=82, optimize=False)
    return out.getvalue()


def embed_metadata(checked: Checked, metadata: dict) -> bytes:
    """Write the generation's parameters into the file without re-encoding it: a PNG tEXt chunk after
    IHDR, a JPEG COM segment after SOI. WebP is stored as delivered."""
    text = json.dumps(metadata, separators=(",", ":"), ensure_ascii=True).encode()
    data = checked.data
    if checked.format == "png":
        payload = b"fluxweb\x00" + text
        chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
        chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload) & 0xFFFFFFFF)
        ihdr_end = 8 + 4 + 4 + 13 + 4
        return data[:ihdr_end] + chunk + data[ihdr_end:]
    if checked.format == "jpeg" and len(text) < 65000:
        segment = b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text
        return data[:2] + segment + data[2:]
    return data


def stored_name(fmt: str) -> str:
    return f"{uuid.uuid4().hex}.{'jpg' if fmt == 'jpeg' else fmt}"


def files_for(checked: Checked, metadata: dict) -> tuple[ContentFile, ContentFile]:
    original = ContentFile(embed_metadata(checked, metadata), name=stored_name(checked.format))
    thumb = ContentFile(
        checked.thumbnail or thumbnail(checked.data), name=stored_name("jpeg").replace(".jpg", "_t.jpg")
    )
    return original, thumb


@dataclass(frozen=True)
class Saved:
    """A result written to storage but not yet recorded: the ingest records every image of a job, or
    none, in the transaction that settles it, and deletes these files when it does not."""

    index: int
    file: str
    thumbnail: str
    width: int
    height: int
    format: str
    bytes: int


def save_files(index: int, checked: Checked, metadata: dict) -> Saved:
    """Write the original (with `metadata` embedded) and its thumbnail to storage; no database."""
    from django.core.files.storage import default_storage
    from django.utils import timezone

    folder = f"images/{timezone.now():%Y/%m}"
    original, thumb = files_for(checked, metadata)
    name = default_storage.save(f"{folder}/{original.name}", original)
    try:
        thumb_name = default_storage.save(f"{folder}/{thumb.name}", thumb)
    except BaseException:
        default_storage.delete(name)
        raise
    return Saved(index, name, thumb_name, checked.width, checked.height, checked.format, original.size)


def delete_files(saved: list[Saved]) -> None:
    from django.core.files.storage import default_storage

    for item in saved:
        for name in (item.file, item.thumbnail):
            try:
                default_storage.delete(name)
            except Exception:  # best effort: a disk's OSError, or a bucket's botocore error
                log.warning("could not delete %s from storage", name, exc_info=True)


def record(generation, saved: Saved, seed: int | None = None):
    """The Image row for files `save_files` wrote."""
    from .models import Image

    return Image.objects.create(
        generation=generation,
        user_id=generation.user_id,
        model=generation.model,
        account_id=generation.account_id,
        prompt_id=generation.prompt_id,
        index=saved.index,
        file=saved.file,
        thumbnail=saved.thumbnail,
        width=saved.width,
        height=saved.height,
        format=saved.format,
        bytes=saved.bytes,
        seed=seed,
    )


def store_image(generation, index: int, checked: Checked, metadata: dict, seed: int | None = None):
    """Keep a verified result: the original with `metadata` embedded, its thumbnail, and the Image row."""
    saved = save_files(index, checked, metadata)
    try:
        return record(generation, saved, seed)
    except BaseException:
        delete_files([saved])
        raise


# -- reading and serving stored files, on disk or in a bucket -----------------------------------------------------
CHUNK = 64 * 1024
CACHE = "private, max-age=86400"


def on_disk(field) -> bool:
    return isinstance(field.storage, FileSystemStorage)


def read_chunks(field, size: int = CHUNK) -> Iterator[bytes]:
    """The stored file's bytes, `size` at a time, whatever the storage. From a bucket the object's body is
    streamed as it arrives (django-storages' own `read()` first copies the whole object to a spool)."""
    with field.storage.open(field.name, "rb") as source:
        remote = getattr(source, "obj", None)  # django-storages' S3File: the boto3 Object behind it
        if remote is None:
            while chunk := source.read(size):
                yield chunk
            return
        body = remote.get()["Body"]
        try:
            yield from body.iter_chunks(size)
        finally:
            body.close()


def read_bytes(field) -> bytes:
    return b"".join(read_chunks(field))


def signed_url(field, content_type: str, disposition: str) -> str:
    """A short-lived (FLUXWEB_S3_URL_EXPIRE) signed URL of a file in a bucket, which makes the bucket answer
    with our type, disposition and caching rather than whatever the object carries."""
    return field.storage.url(
        field.name,
        parameters={
            "ResponseContentType": content_type,
            "ResponseContentDisposition": disposition,
            "ResponseCacheControl": CACHE,
        },
    )


def serve(
    field, content_type: str, filename: str, *, attachment: bool = False, redirect: bool = True
) -> HttpResponse:
    """The response for a stored file whose access the caller has already checked. On disk: the bytes, or
    FLUXWEB_SENDFILE_HEADER for the web server to send them. In a bucket: a redirect to a short-lived signed
    URL (the bucket stays private), X-Accel-Redirect to nginx's internal `/_s3/` location proxying that URL,
    or, with `redirect=False` (a provider fetching a reference may not follow one), the bytes streamed."""
    disposition = content_disposition_header(attachment, filename)
    header = settings.FLUXWEB_SENDFILE_HEADER
    cache = CACHE
    if on_disk(field):
        if header == "X-Accel-Redirect":
            response = HttpResponse(content_type=content_type)
            response[header] = f"/_media/{field.name}"
        elif header == "X-Sendfile":
            response = HttpResponse(content_type=content_type)
            response[header] = field.path
        else:
            response = FileResponse(field.storage.open(field.name, "rb"), content_type=content_type)
    elif header == "X-Accel-Redirect":
        url = urlsplit(signed_url(field, content_type, disposition))
        response = HttpResponse(content_type=content_type)
        response[header] = f"/_s3/{url.netloc}{url.path}?{url.query}"
    elif redirect:
        response = HttpResponseRedirect(signed_url(field, content_type, disposition))
        # The browser may reuse the redirect, never past the signed URL's life.
        cache = f"private, max-age={getattr(field.storage, 'querystring_expire', 300) // 2}"
    else:
        response = StreamingHttpResponse(read_chunks(field), content_type=content_type)
        response["Content-Length"] = str(field.storage.size(field.name))
    response["Cache-Control"] = cache
    return as_media(response, filename, attachment=attachment)


def as_media(response: HttpResponse, filename: str, *, attachment: bool = False) -> HttpResponse:
    """Every media response: the browser keeps to the declared type (nosniff, said here too because a web
    server sending the file for X-Accel-Redirect keeps only some of our headers) and gets a file name it
    cannot misread (quoted, or RFC 5987-encoded where it is not plain ASCII)."""
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = content_disposition_header(attachment, filename)
    return response


REFERENCE_SALT = "fluxweb.reference"
REFERENCE_MAX_AGE = 3600


def link_token(key: str, expires: int) -> str:
    """A signed, expiring token for a reference ("image:12" or "upload:3"). Deterministic for the same key
    and expiry, so a resent submit carries the same body (Apiframe refuses a changed body under the same
    Idempotency-Key)."""
    from django.core import signing

    return signing.Signer(salt=REFERENCE_SALT).sign_object({"k": key, "e": expires})


def from_token(token: str, kind: str) -> int | None:
    """The id a valid, unexpired token names, when it names a reference of `kind`."""
    from django.core import signing

    try:
        data = signing.Signer(salt=REFERENCE_SALT).unsign_object(token)
    except (signing.BadSignature, ValueError, TypeError):
        return None
    found, _, pk = str(data.get("k", "")).partition(":")
    if found != kind or not pk.isdigit() or int(data.get("e", 0)) < time.time():
        return None
    return int(pk)


def signed_link(key: str, expires: float | None = None) -> str:
    """The URL a provider fetches a reference from, without a login, until `expires` (unix time; an hour
    from now by default)."""
    from django.urls import reverse

    token = link_token(key, int(expires or time.time() + REFERENCE_MAX_AGE))
    view = "reference" if key.startswith("image:") else "reference-upload"
    return settings.SITE_URL + reverse(view, args=[token])


def reference_url(image) -> str:
    return signed_link(f"image:{image.pk}")


def reference_from_token(token: str) -> int | None:
    return from_token(token, "image")


def upload_url(upload) -> str:
    return signed_link(f"upload:{upload.pk}")


def upload_from_token(token: str) -> int | None:
    return from_token(token, "upload")


def check_upload(upload) -> Checked:
    """An uploaded reference image: capped in size, decoded fully by Pillow, PNG/JPEG/WebP only."""
    limit = settings.FLUXWEB_MAX_UPLOAD_BYTES
    if upload.size > limit:
        raise MediaError("too_large", f"{upload.name} is larger than {limit // (1024 * 1024)} MB.")
    data = b"".join(upload.chunks())
    try:
        return check_image(data)
    except MediaError:
        raise MediaError("not_image", f"{upload.name} is not a PNG, JPEG or WebP image.") from None


def reference_keys(images, uploads) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Stable keys ("image:12", "upload:3") for the chosen references, and their megapixels for the price.
    The engine turns keys into signed links at submit, so a link's hour starts when the provider needs it."""
    items = [(f"image:{i.pk}", i) for i in images] + [(f"upload:{u.pk}", u) for u in uploads]
    return tuple(key for key, _ in items), tuple(i.width * i.height / (1024 * 1024) for _, i in items)


def store_reference(upload, user):
    from .models import Reference

    checked = check_upload(upload)
    return Reference.objects.create(
        user=user,
        file=ContentFile(checked.data, name=stored_name(checked.format)),
        width=checked.width,
        height=checked.height,
        format=checked.format,
        bytes=len(checked.data),
    )
