"""The files: guarded download of provider results, verification, storage, thumbnails and metadata.

Provider URLs expire, so results are fetched at once. A download goes only to http(s) on the provider's
documented delivery hosts or its own API host, never to a private, link-local or loopback address (except
loopback when FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS is on, for the sandbox), is streamed with a size cap and an
overall deadline, and Pillow decodes every file fully before it is kept (reliability.md 4).
"""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import struct
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from django.conf import settings
from django.core.files.base import ContentFile
from PIL import Image as PILImage

from .providers import ProviderError
from .providers.http import broke, client

# Flux outputs are at most ~4 MP; refuse anything past 8x that before decoding it (decompression bombs).
PILImage.MAX_IMAGE_PIXELS = 32 * 1024 * 1024
warnings.simplefilter("error", PILImage.DecompressionBombWarning)

FORMATS = ["PNG", "JPEG", "WEBP"]
THUMBNAIL_SIZE = 512
DOWNLOAD_DEADLINE = 30.0  # per image; an ingest of 4 stays under the task timeout

# Where each provider documents its result files (providers.md): never the provider's whole cloud domain.
DELIVERY_HOSTS = {
    "maxapi": {"flux-images.maxapi.ai"},
    "vtrix": {"cdn.vtrix.ai"},
    "apiframe": {"cdn.apiframe.ai", "cdn2.apiframe.ai"},
    "pixeldojo": {"temp.pixeldojo.ai"},
}


class MediaError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Checked:
    data: bytes
    width: int
    height: int
    format: str  # jpeg, png, webp


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return settings.FLUXWEB_ALLOW_LOOPBACK_DOWNLOADS
    # 100.64/10 is neither private nor global in `ipaddress`; `is_global` alone would let it pass.
    return ip.is_global and not ip.is_private and not ip.is_reserved and not ip.is_multicast


def check_url(url: str, kind: str, base_url: str) -> None:
    """Refuse a result URL before any socket opens: scheme, host allowlist, and every address it resolves to."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MediaError("forbidden_url", f"Refused to download from a {parts.scheme or 'schemeless'} URL.")
    if parts.username or parts.password:
        raise MediaError("forbidden_url", "Refused a result URL that carries credentials.")
    host = parts.hostname.lower()
    base = urlsplit(base_url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise MediaError("forbidden_url", "Refused a result URL with a malformed port.") from None
    # A documented CDN only on 443; the account's own host only on the port its base URL names.
    if host in DELIVERY_HOSTS.get(kind, set()):
        expected_port = 443
    elif host and host == (base.hostname or "").lower():
        expected_port = base.port or (443 if base.scheme == "https" else 80)
    else:
        raise MediaError(
            "forbidden_url", f"Refused to download from {host}: not a delivery host of this provider."
        )
    if port != expected_port:
        raise MediaError("forbidden_url", f"Refused to download from {host} on port {port}.")
    if parts.scheme == "http" and not _is_loopback_name(host):
        raise MediaError("forbidden_url", f"Refused to download over plain http from {host}.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise MediaError("download_failed", f"Could not resolve {host}.") from None
    for info in infos:
        if not address_allowed(info[4][0]):
            raise MediaError(
                "forbidden_url", f"Refused to download from {host}: it resolves to {info[4][0]}."
            )


def _is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def download(url: str, kind: str, base_url: str, limit: int | None = None) -> bytes:
    limit = limit or settings.FLUXWEB_MAX_DOWNLOAD_BYTES
    check_url(url, kind, base_url)
    started = time.monotonic()
    chunks, size = [], 0
    try:
        with client().stream("GET", url, timeout=httpx.Timeout(20.0, connect=5.0)) as response:
            if response.status_code in (403, 404, 410):
                raise MediaError(ProviderError.EXPIRED, "The provider's image link has expired or vanished.")
            if response.status_code >= 400:
                raise MediaError(
                    "download_failed", f"The provider's file server answered HTTP {response.status_code}."
                )
            for chunk in response.iter_bytes(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise MediaError(
                        "too_large", f"The image is larger than the {limit // (1024 * 1024)} MB limit."
                    )
                if time.monotonic() - started > DOWNLOAD_DEADLINE:
                    raise MediaError("download_failed", "The image download took too long.")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise MediaError(
            "download_failed", f"The image download failed: the connection {broke(exc)}."
        ) from None
    return b"".join(chunks)


def check_image(data: bytes) -> Checked:
    """Decode fully: `verify()` alone passes a truncated JPEG (performance.md)."""
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
            im.load()
    except MediaError:
        raise
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        raise MediaError("not_image", "The image is too large to decode safely.") from None
    except Exception:
        raise MediaError(
            "not_image", "The provider sent a file that is not a valid PNG, JPEG or WebP image."
        ) from None
    return Checked(data=data, width=width, height=height, format=fmt)


def thumbnail(data: bytes) -> bytes:
    with PILImage.open(io.BytesIO(data), formats=FORMATS) as im:
        im.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # JPEG decodes at a reduced scale: ~2x faster
        if im.mode not in ("RGB", "RGBA", "L"):
            im = im.convert("RGB")  # palette and CMYK images resample badly
        # Shrink first, convert after: converting a full-size RGB image only copies 12 MB for nothing.
        im.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), PILImage.Resampling.BILINEAR, reducing_gap=2.0)
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
    thumb = ContentFile(thumbnail(checked.data), name=stored_name("jpeg").replace(".jpg", "_t.jpg"))
    return original, thumb


def store_image(generation, index: int, checked: Checked, metadata: dict, seed: int | None = None):
    """Keep a verified result: the original with `metadata` embedded, its thumbnail, and the Image row."""
    from .models import Image

    original, thumb = files_for(checked, metadata)
    return Image.objects.create(
        generation=generation,
        index=index,
        file=original,
        thumbnail=thumb,
        width=checked.width,
        height=checked.height,
        format=checked.format,
        bytes=original.size,
        seed=seed,
    )


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
    )
