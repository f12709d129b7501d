"""Real, deterministic images for the result URLs, plus the bodies of the file faults.

An image is a smooth colour gradient (a 3x3 grid of seeded colours, upscaled: ~10 ms per MP as
JPEG) with the prompt's first words, the seed and the size drawn on it. Same inputs, same bytes.
"""

from __future__ import annotations

import colorsys
import io
import math
import os
import random
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw, ImageFont

# format name -> (Pillow format, content type, file extension)
FORMATS = {
    "jpeg": ("JPEG", "image/jpeg", "jpeg"),
    "png": ("PNG", "image/png", "png"),
    "webp": ("WEBP", "image/webp", "webp"),
}
ALIASES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}

OVERSIZED_BYTES = 60 * 1024 * 1024
NOT_IMAGE_HTML = (
    b"<!DOCTYPE html>\n<html><head><title>Access denied</title></head>"
    b"<body><h1>Access denied</h1><p>This object is not available. Please sign in.</p></body></html>\n"
)


def normalize_format(name: str) -> str:
    return ALIASES[name.lower()]


def size_for(megapixels: float, ratio_w: int, ratio_h: int) -> tuple[int, int]:
    """Width and height for an area of `megapixels` * 1024^2 at ratio_w:ratio_h, sides multiples of 16."""
    area = megapixels * 1024 * 1024
    width = math.sqrt(area * ratio_w / ratio_h)
    height = width * ratio_h / ratio_w
    return _multiple_of_16(width), _multiple_of_16(height)


def _multiple_of_16(value: float) -> int:
    return max(64, int(round(value / 16)) * 16)


def render(width: int, height: int, fmt: str, prompt: str, seed: int) -> bytes:
    key = (width, height, fmt, _caption(prompt), seed)
    cached = _cache.get(key)
    if cached is None:
        cached = _render(width, height, fmt, key[3], seed)
        _cache.put(key, cached)
    return cached


def render_ahead(width: int, height: int, fmt: str, prompt: str, seed: int) -> None:
    """Render a file in the background as soon as its job is accepted. A provider has the image made before
    it says the job is ready, and a download costs it no rendering; the sandbox, which shares the machine
    with FluxWeb, should not spend its CPU in the moment FluxWeb downloads a burst of results either. A file
    fetched before it is ready is rendered then, as before."""
    _ahead.submit(render, width, height, fmt, prompt, seed)


def _caption(prompt: str) -> str:
    words = " ".join(prompt.split()[:6])
    return words if len(words) <= 48 else words[:47] + "…"


def _render(width: int, height: int, fmt: str, caption: str, seed: int) -> bytes:
    rng = random.Random(seed)
    base_hue = rng.random()
    colours = []
    for i in range(9):
        hue = (base_hue + i * 0.11 + rng.uniform(-0.05, 0.05)) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.7, 1.0))
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    grid = Image.new("RGB", (3, 3))
    grid.putdata(colours)
    # Smooth at a quarter of the size, then a cheap NEAREST upscale: 4-pixel steps in a gradient are
    # invisible, and a full-size BILINEAR resize was half of the render time.
    small = grid.resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BILINEAR)
    image = small.resize((width, height), Image.Resampling.NEAREST)

    draw = ImageDraw.Draw(image)
    font_size = max(10, min(width, height) // 18)
    font = ImageFont.load_default(size=font_size)
    text = f"{caption}\nseed {seed}\n{width}x{height}"
    margin = max(4, font_size // 2)
    box = draw.multiline_textbbox((margin, margin), text, font=font, spacing=font_size // 4)
    draw.rectangle(
        (box[0] - margin // 2, box[1] - margin // 2, box[2] + margin // 2, box[3] + margin // 2),
        fill=(20, 20, 28),
    )
    draw.multiline_text((margin, margin), text, font=font, fill=(255, 255, 255), spacing=font_size // 4)

    out = io.BytesIO()
    pil_format = FORMATS[fmt][0]
    if pil_format == "JPEG":
        image.save(out, "JPEG", quality=85)
    elif pil_format == "PNG":
        image.save(out, "PNG", compress_level=1)  # speed over size: this is a test double
    else:
        image.save(out, "WEBP", quality=80, method=0)
    return out.getvalue()


class _ByteBudgetCache:
    """LRU cache bounded by total bytes; evicted images are simply re-rendered (they are deterministic)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._size = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple, value: bytes) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._size += len(value)
            while self._size > self._budget and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


_cache = _ByteBudgetCache(128 * 1024 * 1024)
_ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-render")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def oversized_png(total: int = OVERSIZED_BYTES, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """A valid PNG signature and IHDR (claiming 20000x20000) followed by junk, `total` bytes in all.

    Produced lazily from one reused block so 60 MB never sits in memory.
    """
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
    header += struct.pack(">I", total - len(header) - 8) + b"IDAT"
    yield header
    block = os.urandom(chunk)
    remaining = total - len(header)
    while remaining > 0:
        piece = block if remaining >= chunk else block[:remaining]
        remaining -= len(piece)
        yield piece
