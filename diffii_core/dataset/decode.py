"""Image bytes -> upright 8-bit RGB, with the pixel limit checked before anything is decoded.

Decoders are restricted to the accepted formats: a file is judged by its content, and Pillow's rarer
decoders (a larger attack surface) never see uploaded bytes.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_PIL_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
SIGNATURE_REASON = "not a decodable JPEG, PNG, WebP or BMP image"


def has_image_signature(head: bytes) -> bool:
    """Whether the file starts like one of the accepted formats (the same test Pillow's openers make)."""
    return head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


class TooManyPixels(Exception):
    def __init__(self, width: int, height: int) -> None:
        super().__init__(f"{width}x{height}")
        self.width = width
        self.height = height


def skip_reason(data: bytes, max_pixels: int) -> tuple[str | None, tuple[int, int]]:
    """Why the image cannot be used (None when it can), and its upright size when it can."""
    if not has_image_signature(data[:16]):
        return SIGNATURE_REASON, (0, 0)
    try:
        rgb = decode_rgb(data, max_pixels=max_pixels)
    except TooManyPixels as exc:
        return (
            f"image is {exc.width}x{exc.height} = {exc.width * exc.height:,} pixels, over the limit of "
            f"{max_pixels:,} pixels (max_pixels)"
        ), (0, 0)
    except Image.DecompressionBombError as exc:
        return f"image is too large to decode safely: {exc}", (0, 0)
    except Image.UnidentifiedImageError:
        return SIGNATURE_REASON, (0, 0)
    except Exception as exc:  # decoders raise many types on hostile bytes; each is just a bad file
        return f"damaged image, cannot be decoded: {exc or type(exc).__name__}", (0, 0)
    return None, rgb.size


def decode_rgb(data: bytes, max_pixels: int | None = None) -> Image.Image:
    with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
        width, height = im.size  # from the header: nothing decoded yet
        if max_pixels is not None and width * height > max_pixels:
            raise TooManyPixels(width, height)
        im.load()
        orientation = _orientation(im)
        rgb = _to_rgb(im)
    method = _TRANSPOSE.get(orientation)
    return rgb.transpose(method) if method is not None else rgb


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block leaves the picture as stored, it does not lose it
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """A new 8-bit RGB image: 16/32-bit greys scaled (not clipped), transparency laid over white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # Pillow's own conversion clips at 255, turning a 16-bit photograph white.
        grey = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        grey8 = ((grey * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # White, not black: transparent pixels often hold arbitrary colour, and white is the
        # usual "no background" of cut-out product and icon images.
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")
