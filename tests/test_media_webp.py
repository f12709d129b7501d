"""WebP verification and thumbnails: a WebP is decoded by libwebp's plain decoder through imagecodecs, not by
Pillow's animation decoder (media._decode_webp). It must refuse what Pillow refused, and more: every file is
decoded in full, so a truncated or corrupt one is refused even where its header alone looks fine."""

import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import imagecodecs
import pytest
from PIL import Image as PILImage
from PIL import WebPImagePlugin

from generations import media


def picture(size=(640, 480)) -> PILImage.Image:
    """Smooth fields of a different colour in each channel, and some grain: compresses like a photo, not like
    pure noise, and a swapped channel or a shifted picture shows."""
    red = PILImage.linear_gradient("L").resize(size)
    green = PILImage.radial_gradient("L").resize(size)
    blue = red.transpose(PILImage.Transpose.ROTATE_90).resize(size)
    smooth = PILImage.merge("RGB", (red, green, blue))
    return PILImage.blend(smooth, PILImage.effect_noise(size, 40).convert("RGB"), 0.3)


def webp(image: PILImage.Image | None = None, **params) -> bytes:
    out = io.BytesIO()
    (image or picture()).save(out, "WEBP", **params)
    return out.getvalue()


def with_alpha() -> PILImage.Image:
    image = picture().convert("RGBA")
    image.putalpha(PILImage.linear_gradient("L").resize(image.size))
    return image


KINDS = {
    "lossy": lambda: webp(quality=90),
    "lossless": lambda: webp(lossless=True),
    "lossy with alpha": lambda: webp(with_alpha(), quality=90),
    "lossless with alpha": lambda: webp(with_alpha(), lossless=True),
}


def refused(data: bytes, thumbnail: bool) -> bool:
    try:
        media.check_image(data, thumbnail=thumbnail)
    except media.MediaError as exc:
        assert exc.code == "not_image"
        return True
    return False


@pytest.mark.parametrize("kind", KINDS)
def test_a_whole_webp_is_accepted(kind):
    data = KINDS[kind]()
    checked = media.check_image(data, thumbnail=True)
    assert (checked.width, checked.height, checked.format) == (640, 480, "webp")


@pytest.mark.parametrize("thumbnail", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_a_truncated_webp_is_refused_wherever_it_is_cut(kind, thumbnail):
    data = KINDS[kind]()
    cuts = [12, 30, len(data) // 4, len(data) // 2, len(data) * 9 // 10, len(data) - 10, len(data) - 1]
    assert [cut for cut in cuts if not refused(data[:cut], thumbnail)] == []


def cut_inside_a_consistent_container(data: bytes, keep: int) -> bytes:
    """The image data cut to `keep` bytes, with the RIFF and chunk sizes rewritten to match: the container is
    well formed and only a full decode can tell the image is incomplete."""
    fourcc = data[12:16]
    assert fourcc in (b"VP8 ", b"VP8L")
    body = data[20 : 20 + keep]
    body += b"\0" * (len(body) % 2)
    return b"RIFF" + struct.pack("<I", 12 + len(body)) + b"WEBP" + fourcc + struct.pack("<I", keep) + body


@pytest.mark.parametrize("thumbnail", [False, True])
@pytest.mark.parametrize("kind", ["lossy", "lossless"])
@pytest.mark.parametrize("fraction", [0.5, 0.99])
def test_a_webp_cut_short_inside_a_well_formed_container_is_refused_by_the_decode(kind, fraction, thumbnail):
    data = KINDS[kind]()
    short = cut_inside_a_consistent_container(data, int((len(data) - 20) * fraction))
    with PILImage.open(io.BytesIO(short)) as im:
        assert im.size == (640, 480)  # the header alone looks fine
    assert refused(short, thumbnail)


def replaced(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


CORRUPT = {
    "a lossy frame without its start code": lambda: replaced(webp(quality=90), 23, b"\0\0\0"),
    "a lossy first partition larger than the file": lambda: replaced(webp(quality=90), 20, b"\xff\xff\xff"),
    "a lossless stream without its signature": lambda: replaced(webp(lossless=True), 20, b"\0"),
    "an unknown chunk instead of the image": lambda: replaced(webp(quality=90), 12, b"VP9 "),
    # The header parses (Pillow opens it); the coefficients do not.
    "lossy coefficients overwritten": lambda: (lambda d: d[:30] + b"\xff" * (len(d) - 30))(webp(quality=90)),
}


@pytest.mark.parametrize("thumbnail", [False, True])
@pytest.mark.parametrize("corruption", CORRUPT)
def test_a_corrupt_webp_is_refused(corruption, thumbnail):
    assert refused(CORRUPT[corruption](), thumbnail)


@pytest.mark.parametrize("thumbnail", [False, True])
@pytest.mark.parametrize("lossless", [False, True])
def test_an_animated_webp_is_refused_before_it_is_decoded(monkeypatch, lossless, thumbnail):
    decoded = []
    monkeypatch.setattr(imagecodecs, "webp_decode", lambda *a, **k: decoded.append(a))
    frames = [PILImage.new("RGB", (64, 64), colour) for colour in ("red", "blue", "green")]
    out = io.BytesIO()
    frames[0].save(out, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=lossless)
    with pytest.raises(media.MediaError, match="Animated"):
        media.check_image(out.getvalue(), thumbnail=thumbnail)
    assert decoded == []


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_webp_claiming_too_many_pixels_is_refused_before_it_is_decoded(monkeypatch):
    decoded = []
    monkeypatch.setattr(imagecodecs, "webp_decode", lambda *a, **k: decoded.append(a))
    monkeypatch.setattr(media.PILImage, "MAX_IMAGE_PIXELS", 640 * 480 - 1)
    with pytest.raises(media.MediaError, match="too large"):
        media.check_image(webp(quality=90), thumbnail=True)
    assert decoded == []


@pytest.mark.parametrize(
    "size, expected", [((2048, 2048), (512, 512)), ((768, 1360), (289, 512)), ((1344, 768), (512, 293))]
)
@pytest.mark.parametrize("alpha", [False, True])
def test_a_webp_thumbnail_is_a_512_px_rgb_jpeg_that_looks_like_the_image(size, expected, alpha):
    image = picture(size)
    if alpha:
        image = image.convert("RGBA")
        image.putalpha(200)
    checked = media.check_image(webp(image, quality=90), thumbnail=True)
    assert (checked.width, checked.height) == size
    with PILImage.open(io.BytesIO(checked.thumbnail)) as thumb:
        assert (thumb.format, thumb.mode, thumb.size) == ("JPEG", "RGB", expected)
        # Against Pillow's own full decode, fairly resampled: the same picture, not a shifted or garbled one.
        with PILImage.open(io.BytesIO(webp(image, quality=90))) as original:
            fair = original.convert("RGB").resize(expected, PILImage.Resampling.LANCZOS)
        pairs = zip(thumb.tobytes(), fair.tobytes(), strict=True)
        mean_error = sum(abs(a - b) for a, b in pairs) / (expected[0] * expected[1] * 3)
        assert mean_error < 4, mean_error
    assert checked.thumbnail == media.thumbnail(checked.data)  # the standalone thumbnail takes the same path


def test_a_webp_is_not_decoded_by_pillow(monkeypatch):
    """Pillow's WebP decode (libwebp's animation decoder) costs ~4x the memory: it must not run."""
    monkeypatch.setattr(WebPImagePlugin.WebPImageFile, "load", lambda self: pytest.fail("Pillow decoded it"))
    media.check_image(webp(quality=90), thumbnail=True)
    media.check_image(webp(quality=90))


def test_a_2048_px_webp_check_and_thumbnail_adds_at_most_35_mib(tmp_path):
    """Peak RSS of one check with its thumbnail, in a fresh process (libraries imported first): Pillow's own
    WebP decode added ~65 MiB here."""
    path = tmp_path / "big.webp"
    path.write_bytes(webp(picture((2048, 2048)), quality=90))
    script = (
        "import sys, django; django.setup()\n"
        "from generations import media\n"
        "import imagecodecs  # imported on a process's first WebP: ~20 MiB once, not per check\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "before = hwm(); media.check_image(data, thumbnail=True); print(hwm() - before)\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = os.environ | {"DJANGO_SETTINGS_MODULE": "tests.settings"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    grown_mib = int(done.stdout.split()[-1]) / 1024
    assert grown_mib <= 35, grown_mib
