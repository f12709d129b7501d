"""Images out of FluxWeb: an original without our metadata, and a zip of many streamed as it is written.

The zip is written by `zipfile` into a sink that the response drains after every chunk, so memory holds one
chunk of one file, never the archive (issue 8, item 7). Images are already compressed: they are stored, only
the manifest is deflated.
"""

from __future__ import annotations

import csv
import io
import struct
import zipfile
from collections.abc import Iterable, Iterator

from django.utils import timezone

from . import media

CHUNK = 64 * 1024
MANIFEST_FIELDS = ["file", "prompt", "seed", "model", "provider", "size", "cost", "author", "created"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OUR_PNG_KEYWORD = b"fluxweb\x00"  # media.embed_metadata's tEXt chunk


class Sink:
    """A write-only, unseekable file for zipfile: it keeps what was written until `take()`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def file_name(image) -> str:
    extension = "jpg" if image.format == "jpeg" else image.format
    return f"fluxweb-{image.generation_id}-{image.index}.{extension}"


def cost_of(image) -> int:
    """Credits one image cost: the job's price per image, else its charge shared by its images."""
    generation = image.generation
    per_image = generation.params.get("credits_per_image") if isinstance(generation.params, dict) else None
    if isinstance(per_image, int):
        return per_image
    return generation.credits_charged // max(generation.n, 1)


def seed_of(image) -> int | None:
    return image.seed if image.seed is not None else image.generation.seed


def manifest_row(image) -> dict:
    seed = seed_of(image)
    return {
        "file": file_name(image),
        "prompt": image.generation.prompt.text,
        "seed": "" if seed is None else seed,
        "model": image.model,
        "provider": image.account.slug,
        "size": f"{image.width}x{image.height}",
        "cost": cost_of(image),
        "author": image.user.get_username(),
        "created": timezone.localtime(image.created_at).isoformat(timespec="seconds"),
    }


def zip_stream(images: Iterable) -> Iterator[bytes]:
    """The zip of `images` (rows with generation__prompt, user and account loaded) with a manifest.csv."""
    sink = Sink()
    rows = []
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for image in images:
            created = timezone.localtime(image.created_at)
            info = zipfile.ZipInfo(
                file_name(image), date_time=max(created.timetuple()[:6], (1980, 1, 1, 0, 0, 0))
            )
            info.compress_type = zipfile.ZIP_STORED
            with archive.open(info, "w") as target:
                for chunk in media.read_chunks(image.file, CHUNK):
                    target.write(chunk)
                    yield sink.take()
            rows.append(manifest_row(image))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        archive.writestr("manifest.csv", text.getvalue().encode(), compress_type=zipfile.ZIP_DEFLATED)
    yield sink.take()


def strip_metadata(data: bytes, fmt: str) -> bytes:
    """The file without the metadata media.embed_metadata wrote (a PNG tEXt chunk keyed "fluxweb", a JPEG
    COM segment holding our JSON); every other byte as stored, so nothing is re-encoded."""
    if fmt == "png" and data.startswith(PNG_SIGNATURE):
        out, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
        while at + 8 <= len(data):
            (length,) = struct.unpack(">I", data[at : at + 4])
            end = at + 12 + length
            kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
            if not (kind == b"tEXt" and body.startswith(OUR_PNG_KEYWORD)):
                out.append(data[at:end])
            at = end
        out.append(data[at:])
        return b"".join(out)
    if fmt == "jpeg" and data.startswith(b"\xff\xd8"):
        out, at = [data[:2]], 2
        while at + 4 <= len(data) and data[at] == 0xFF:
            marker = data[at + 1]
            if marker == 0xDA:  # start of scan: the rest is image data
                break
            (length,) = struct.unpack(">H", data[at + 2 : at + 4])
            end = at + 2 + length
            if not (marker == 0xFE and data[at + 4 : at + 5] == b"{"):
                out.append(data[at:end])
            at = end
        out.append(data[at:])
        return b"".join(out)
    return data
