"""What Pillow really measures about an image, and a sentence that describes it.

Nothing is invented: size, format, mode, orientation (after EXIF rotation), dominant colours (median-cut
quantisation into a few colours, each named after the nearest colour of a small palette) and mean brightness.
Colours and brightness are measured on a 96×96 thumbnail, so a big image is decoded reduced, within the
process's decoding budget (:mod:`oaipipe.pixels`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..lazy import lazy_module
from ..pixels import TooManyPixels, decode
from .errors import ImageURLNotSupported, InvalidImage

if TYPE_CHECKING:
    from PIL import Image, ImageStat
else:  # Pillow is imported on first use
    Image = lazy_module("PIL.Image")
    ImageStat = lazy_module("PIL.ImageStat")

__all__ = ["ColorShare", "ImageFacts", "color_name", "describe", "load_image_url", "measure"]

#: the palette colour names are chosen from (sRGB)
PALETTE: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
    "silver": (192, 192, 192),
    "red": (220, 20, 30),
    "maroon": (128, 0, 0),
    "orange": (255, 140, 0),
    "yellow": (255, 220, 0),
    "olive": (128, 128, 0),
    "green": (30, 160, 40),
    "teal": (0, 128, 128),
    "cyan": (0, 220, 230),
    "blue": (20, 60, 220),
    "navy": (0, 0, 128),
    "purple": (128, 0, 160),
    "pink": (255, 150, 200),
    "brown": (140, 80, 30),
    "beige": (225, 210, 170),
}
MAX_PIXELS = 80_000_000


@dataclass(frozen=True)
class ColorShare:
    hex: str
    name: str
    share: float  # 0..1 of the pixels


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    format: str
    mode: str
    orientation: str  # landscape | portrait | square
    dominant_colors: list[ColorShare] = field(default_factory=list)
    brightness: float = 0.0  # mean luminance 0..1
    brightness_word: str = ""
    exif_rotated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def color_name(rgb: tuple[int, int, int]) -> str:
    """The palette name nearest to ``rgb`` (weighted Euclidean distance, close to perceived difference)."""
    r, g, b = rgb[:3]

    def dist(ref: tuple[int, int, int]) -> float:
        rm = (r + ref[0]) / 2
        dr, dg, db = r - ref[0], g - ref[1], b - ref[2]
        return (2 + rm / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rm) / 256) * db * db

    return min(PALETTE, key=lambda name: dist(PALETTE[name]))


def _brightness_word(value: float) -> str:
    if value < 0.2:
        return "dark"
    if value < 0.4:
        return "dim"
    if value < 0.6:
        return "moderately bright"
    if value < 0.85:
        return "bright"
    return "very bright"


def measure(data: bytes, *, colors: int = 4) -> ImageFacts:
    """Measure an encoded image. Raises :class:`InvalidImage` for bytes Pillow cannot decode."""
    if not data:
        raise InvalidImage("The image is empty (0 bytes); pass the bytes of a PNG, JPEG, GIF or WebP file.")
    try:
        decoded = decode(data, max_pixels=MAX_PIXELS, convert=_on_white, fit=_thumbnail_size)
    except TooManyPixels as exc:
        size = f"{exc.width}x{exc.height} pixels" if exc.width is not None else str(exc)
        raise InvalidImage(f"The image is too large ({size}); downscale it below 80 megapixels.") from None
    except (Image.UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        detail = "unrecognised format" if isinstance(exc, Image.UnidentifiedImageError) else f"{type(exc).__name__}: {exc}"
        raise InvalidImage(f"The image cannot be read ({detail}); it is corrupt or not an image. "
                           "Pass a valid PNG, JPEG, GIF or WebP file.") from exc
    rgb, fmt, mode, rotated = decoded.image, decoded.format, decoded.mode, decoded.exif_rotated
    width, height = decoded.size
    orientation = "square" if width == height else ("landscape" if width > height else "portrait")
    small = rgb.copy()
    small.thumbnail((96, 96))
    brightness = ImageStat.Stat(small.convert("L")).mean[0] / 255.0
    quant = small.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    palette: list[int] = quant.getpalette() or []
    counts = sorted(quant.getcolors() or [], key=lambda c: (-c[0], c[1]))
    total = sum(c for c, _ in counts) or 1
    merged: dict[str, list[Any]] = {}
    for count, index in counts:
        start = cast(int, index) * 3  # a palette image's colours are palette indexes
        rgb_val = tuple(palette[start: start + 3])
        name = color_name(rgb_val)  # type: ignore[arg-type]
        if name in merged:
            merged[name][1] += count
        else:
            merged[name] = ["#{:02x}{:02x}{:02x}".format(*rgb_val), count]
    dominant = [ColorShare(hex=h, name=n, share=round(c / total, 3))
                for n, (h, c) in sorted(merged.items(), key=lambda kv: (-kv[1][1], kv[0]))]
    return ImageFacts(width=width, height=height, format=fmt, mode=mode, orientation=orientation,
                      dominant_colors=dominant, brightness=round(brightness, 3),
                      brightness_word=_brightness_word(brightness), exif_rotated=rotated)


def _on_white(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels count as the white page they sit on."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return img.convert("RGB")


def _thumbnail_size(width: int, height: int) -> tuple[int, int]:
    """The size the colours and brightness are measured at: fitting a 96×96 box (decoding is reduced to
    about twice that; images smaller than 4× the box are decoded as they are)."""
    scale = min(1.0, 96 / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def describe(facts: ImageFacts, prompt: str = "") -> str:
    """One readable sentence about the measured facts (``prompt`` is accepted for future use)."""
    colours = [c for c in facts.dominant_colors if c.share >= 0.05][:3] or facts.dominant_colors[:1]
    parts = [f"{c.name} ({round(c.share * 100)}%)" for c in colours]
    if len(parts) > 1:
        colour_text = ", ".join(parts[:-1]) + " and " + parts[-1]
    else:
        colour_text = parts[0] if parts else "no measurable colour"
    return (f"A {facts.width}\u00d7{facts.height} {facts.orientation} {facts.format} image, mostly "
            f"{colour_text}, {facts.brightness_word} (mean brightness {facts.brightness:.2f}).")


def load_image_url(url: str) -> bytes:
    """Bytes of a ``data:`` URL, a ``file://`` URL or a local path. http(s) URLs are refused: no network."""
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if not payload:
            raise InvalidImage("The data URL has no payload; use data:image/png;base64,<base64 bytes>.")
        try:
            if header.endswith(";base64"):
                return base64.b64decode(payload, validate=False)
            from urllib.parse import unquote_to_bytes

            return unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise InvalidImage(f"The data URL is not valid base64 ({exc}); re-encode the image.") from exc
    if url.startswith(("http://", "https://")):
        raise ImageURLNotSupported(
            "The local engine cannot fetch image URLs (it has no network access): pass a file path or a "
            "data URL (data:image/png;base64,...) instead.", param="image_url")
    path = Path(url.removeprefix("file://")).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"Cannot read image file {path}: {exc.strerror or exc}; check the path.") from exc
