"""Image preprocessing before an image is sent to a vision model.

:func:`load_image` takes a local path (relative to the pipeline file), a ``data:`` URL or an
``http(s)://`` URL. Local files and data URLs are opened with Pillow and prepared the way the model will
see them anyway, so no bandwidth or tokens are spent on pixels the model throws away:

1. EXIF orientation applied (``ImageOps.exif_transpose``): a phone photo arrives upright;
2. colour mode normalised: RGB (JPEG, quality 85), or RGBA (PNG) when the image has transparency;
   palette, grayscale, CMYK and 16-bit images are converted;
3. downscaled (never upscaled) for ``detail``: ``low`` fits a 512×512 box; ``high``/``auto`` fit
   2048×2048 and then bring the shortest side down to 768 px (OpenAI's own resizing rule);
4. base64-encoded as a data URL.

Decoding goes through :func:`oaipipe.pixels.decode`: the pixel count is checked on the header before
anything is decoded (``max_pixels``, default 50 Mpx), a JPEG is decoded at 1/2, 1/4 or 1/8 scale when the
target size allows it and any other image is box-reduced right after decoding (no full-size copies), and
a process-wide budget bounds the pixels being decoded at once, whatever the concurrency.

HTTP(S) URLs are passed through untouched (the remote API fetches them; the local engine says it cannot).
A missing, unreadable, corrupt or oversized image raises :class:`~oaipipe.errors.ImageError` naming the
file and the fix: that record fails, the run goes on.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ImageError
from .lazy import lazy_module
from .pixels import TooManyPixels, decode
from .tokens import image_rule, image_tokens

if TYPE_CHECKING:
    from PIL import Image
else:  # Pillow is imported on first use
    Image = lazy_module("PIL.Image")

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "PreparedImage",
    "load_image",
    "target_size",
]

#: refuse source images larger than this many bytes (OpenAI's per-image limit is 20 MB)
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
#: refuse source images with more pixels than this (a decompression-bomb guard; 8K is ~33 Mpx)
DEFAULT_MAX_PIXELS = 50_000_000

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?)(?P<b64>;base64)?,(?P<data>.*)$",
                       re.DOTALL)


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for a request. ``width``/``height`` are what is sent (``None`` for a remote URL)."""

    data_url: str
    width: int | None
    height: int | None
    original_size: tuple[int, int] | None
    source_label: str
    detail: str = "auto"
    remote: bool = False
    #: the size Pillow decoded (a JPEG is decoded at 1/2, 1/4 or 1/8 when the target size allows it)
    decoded_size: tuple[int, int] | None = None

    @property
    def tokens(self) -> int | None:
        """OpenAI's input-token estimate for this image by gpt-4o's rule (``None`` when the size is unknown);
        :meth:`tokens_for` counts for the model the request goes to."""
        return self.tokens_for(None)

    def tokens_for(self, model: str | None) -> int | None:
        """Input tokens of this image for ``model`` (:func:`oaipipe.tokens.image_tokens`; ``None``: gpt-4o's
        rule). ``None`` when the size is unknown (a remote URL), except where the size does not matter
        (``low`` detail on a tile-rule model)."""
        if self.width is None or self.height is None:
            if self.detail == "low" and image_rule(model)[0] == "tile":
                return int(image_rule(model)[1][0])
            return None
        return image_tokens(self.width, self.height, self.detail, model=model)

    def part(self) -> dict:
        """The Chat Completions content part."""
        return {"type": "image_url", "image_url": {"url": self.data_url, "detail": self.detail}}


def target_size(width: int, height: int, detail: str) -> tuple[int, int]:
    """The size the model will work with for ``detail`` (never larger than the input)."""
    w, h = float(width), float(height)
    if detail == "low":
        scale = min(1.0, 512 / max(w, h))
    else:
        scale = min(1.0, 2048 / max(w, h))
        if min(w, h) * scale > 768:
            scale = 768 / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _fix_hint() -> str:
    return ("check the path/field value; in a pipeline, paths are relative to the pipeline file "
            "(for `oaipipe describe`, to the current folder)")


def _read_source(source: str, base_dir: Path | None, max_bytes: int) -> tuple[bytes, str]:
    if source.startswith("data:"):
        m = _DATA_URL.match(source)
        if not m or not m.group("b64"):
            raise ImageError("a data URL image must be base64 (data:image/png;base64,...)",
                             hint="encode the image as base64, or give a file path instead")
        try:
            data = base64.b64decode(m.group("data"), validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ImageError(f"data URL image is not valid base64: {exc}",
                             hint="re-encode the image, or give a file path instead") from None
        label = f"data URL ({m.group('mime') or 'unknown type'}, {len(data)} bytes)"
        if len(data) > max_bytes:
            raise ImageError(f"{label} is {len(data):,} bytes, over the cap of {max_bytes:,}",
                             hint="shrink the image, or raise the step's max_image_bytes")
        return data, label
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    label = str(source)
    if not path.exists():
        raise ImageError(f"image not found: {path}", hint=_fix_hint())
    if not path.is_file():
        raise ImageError(f"image path is not a file: {path}", hint="name an image file, not a folder")
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageError(f"image {path} is {size:,} bytes, over the cap of {max_bytes:,}",
                         hint="shrink the image, or raise the step's max_image_bytes")
    if size == 0:
        raise ImageError(f"image {path} is empty (0 bytes)", hint="replace it with a real image file")
    try:
        return path.read_bytes(), label
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}", hint="check the file's permissions") from None


def load_image(
    source: str,
    base_dir: Path | None = None,
    *,
    detail: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> PreparedImage:
    """Prepare one image for a vision request (see the module docstring)."""
    if detail not in ("auto", "low", "high"):
        raise ImageError(f"detail must be auto, low or high, not {detail!r}", hint="fix the step's `detail:`")
    source = (source or "").strip()
    if not source:
        raise ImageError("the image field is empty", hint="give the record a path, URL or data URL")
    if source.startswith(("http://", "https://")):
        return PreparedImage(data_url=source, width=None, height=None, original_size=None,
                             source_label=source, detail=detail, remote=True)
    data, label = _read_source(source, base_dir, max_bytes)
    where = label if source.startswith("data:") else str(
        (base_dir / source) if base_dir is not None and not Path(source).expanduser().is_absolute() else source
    )
    try:
        decoded = decode(data, max_pixels=max_pixels, convert=_rgb_or_rgba,
                         fit=lambda w, h: target_size(w, h, detail))
    except TooManyPixels as exc:
        raise ImageError(f"image {where} has {exc}",
                         hint=f"downscale it first, or raise the step's max_pixels (default {DEFAULT_MAX_PIXELS:,})"
                         if exc.width is not None else "downscale it first") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"not an image (Pillow cannot identify it): {where}",
                         hint="use a PNG, JPEG, GIF or WebP file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"image {where} is corrupt or truncated: {exc}",
                         hint="re-export or re-download the file") from None
    img = decoded.image
    original = decoded.size
    has_alpha = img.mode == "RGBA"
    size = target_size(*original, detail)
    if size != img.size:
        img = img.resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if has_alpha:
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.save(buf, format="JPEG", quality=85, optimize=True)
        mime = "image/jpeg"
    url = f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"
    return PreparedImage(data_url=url, width=img.width, height=img.height, original_size=original,
                         source_label=label, detail=detail, decoded_size=decoded.decoded_size)


def _rgb_or_rgba(img: Image.Image) -> Image.Image:
    """RGBA when the image has transparency, else RGB (16-bit and float grayscale scaled to 8 bits)."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = img.point(lambda v: v / 256).convert("L")
    elif img.mode == "F":
        img = img.convert("L")
    return img.convert("RGBA" if has_alpha else "RGB")
