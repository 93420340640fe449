"""Untrusted image bytes: odd but valid images become correct RGB, bad ones one reason."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from roadwork_cache.readers.images import MIN_SIDE, ImageError, decode_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_jpeg_round_trip():
    img = Image.new("RGB", (64, 48), (200, 30, 40))
    out = decode_image(encode(img, "PNG"))
    assert out.mode == "RGB" and out.size == (64, 48)
    assert out.getpixel((5, 5)) == (200, 30, 40)


def test_cmyk_jpeg_becomes_rgb():
    img = Image.new("CMYK", (40, 40), (0, 255, 255, 0))  # pure red in CMYK
    out = decode_image(encode(img, "JPEG", quality=95))
    r, g, b = out.getpixel((20, 20))
    assert out.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((32, 32), 32768, dtype=np.uint16)
    arr[:, 16:] = 65535
    out = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (128, 128, 128)
    assert out.getpixel((31, 0)) == (255, 255, 255)


def test_greyscale_and_palette():
    grey = decode_image(encode(Image.new("L", (20, 20), 77), "PNG"))
    assert grey.getpixel((3, 3)) == (77, 77, 77)
    pal = Image.new("RGB", (20, 20), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    out = decode_image(encode(pal, "PNG"))
    assert out.mode == "RGB" and out.getpixel((3, 3)) == (10, 200, 30)


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red
    img.paste((0, 0, 255, 255), (10, 0, 20, 20))
    out = decode_image(encode(img, "PNG"))
    assert out.getpixel((2, 2)) == (255, 255, 255)
    assert out.getpixel((15, 2)) == (0, 0, 255)


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (60, 30), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 10, 30))  # white band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    out = decode_image(encode(img, "JPEG", exif=exif, quality=95))
    assert out.size == (30, 60)
    assert sum(out.getpixel((15, 3))) > 600  # the band is now on top
    assert sum(out.getpixel((15, 55))) < 100


def test_tiny_image_is_a_documented_error():
    with pytest.raises(ImageError, match=f"minimum side is {MIN_SIDE}"):
        decode_image(encode(Image.new("RGB", (1, 1)), "PNG"))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (None, "empty"),
        (b"this is plain text, not pixels", "not an image"),
    ],
)
def test_bad_bytes(data, reason):
    with pytest.raises(ImageError, match=reason):
        decode_image(data)


def test_truncated_jpeg():
    data = encode(Image.effect_noise((200, 200), 60).convert("RGB"), "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_over_pixel_bound_is_refused_before_decoding(monkeypatch):
    data = encode(Image.new("RGB", (300, 200)), "PNG")

    def no_decode(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    with pytest.raises(ImageError, match="pixel bound"):
        decode_image(data, max_pixels=300 * 200 - 1)


def test_jpeg_draft_keeps_full_size_record_and_enough_resolution():
    img = Image.effect_noise((1600, 1200), 40).convert("RGB")
    out = decode_image(encode(img, "JPEG"), draft_side=400)
    assert min(out.size) >= 400 and out.size[0] < 1600  # decoded at a reduced scale
    assert out.info["full_size"] == (1600, 1200)
