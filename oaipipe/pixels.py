"""Memory-bounded image decoding, for every image oaipipe decodes (:mod:`oaipipe.images` before a request,
:mod:`oaipipe.engine.vision` in the embedded engine and ``oaipipe serve``).

A 143 KB PNG can hold 7000×7000 pixels: 196 MB once decoded (Pillow keeps RGB in 4 bytes a pixel), and
each mode conversion, EXIF rotation or resize of it another copy. Four guards, one function
(:func:`decode`):

1. **A pixel cap, checked on the header.** ``Image.open`` reads only the header; an image with more
   pixels than the caller's cap is refused (:class:`TooManyPixels`) before a byte is decoded.
2. **Decode reduced.** The caller says what size it needs (``fit``). A JPEG is decoded at 1/2, 1/4 or
   1/8 scale by its own decoder (``draft``); any other format is decoded once and at once box-reduced
   (``Image.reduce``) strip by strip, so that no full-size copy is ever made by a mode conversion or an
   EXIF rotation. The result stays at least ``reducing_gap`` (2) times the size asked for, so the caller's
   final high-quality resize sees enough pixels (the way Pillow's ``thumbnail`` does it).
3. **Memory given back.** Pillow's block size is raised to 64 MB (:data:`PILLOW_BLOCK_SIZE`), so that
   a big image's memory is mapped from the OS and returned when freed, instead of staying in the malloc
   arena of whichever worker thread decoded it.
4. **A process-wide budget of pixels being decoded** (:data:`BUDGET`, a semaphore weighted by pixels,
   first come first served): at most :data:`DEFAULT_DECODE_PIXELS` pixels (50 Mpx, about 200 MB; set
   ``OAIPIPE_DECODE_PIXELS`` to change it) are decoded at once, whatever the concurrency; an image larger
   than the budget decodes alone.

Pillow's own decompression-bomb check still applies beyond its limits (a warning over ~89 Mpx, an error
over ~179 Mpx); oaipipe's default caps are below both.

This module imports nothing from oaipipe (the engine uses it too).
"""

from __future__ import annotations

import functools
import io
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .lazy import lazy_module

if TYPE_CHECKING:
    from PIL import Image
else:
    Image = lazy_module("PIL.Image")

__all__ = ["BUDGET", "DEFAULT_DECODE_PIXELS", "Decoded", "PixelBudget", "TooManyPixels", "decode"]

#: pixels decoded at once in the process (all threads): ~200 MB of RGB
DEFAULT_DECODE_PIXELS = 50_000_000
#: pixels per strip when a decoded image is converted and reduced strip by strip (~4 MB of RGBA)
STRIP_PIXELS = 1_000_000
#: Pillow allocates an image in blocks of this many bytes (its default is 16 MB). Blocks over glibc's
#: largest mmap threshold (32 MB) are mapped from the OS and given back when freed; 16 MB blocks stay in
#: the malloc arena of the thread that decoded them, so 6 worker threads that each decoded one big image
#: once kept ~1.3 GB between them although the budget let one decode at a time.
PILLOW_BLOCK_SIZE = 64 * 1024 * 1024

#: EXIF orientation -> the transpose that makes the image upright (as ``ImageOps.exif_transpose``)
#: (names of ``Image.Transpose`` members: Pillow is imported on first use)
_UPRIGHT = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}


class TooManyPixels(ValueError):
    """The header says the image has more pixels than allowed (``width``/``height`` ``None`` when Pillow's
    own bomb check refused it before its size could be read)."""

    def __init__(self, width: int | None, height: int | None, cap: int, detail: str = "") -> None:
        self.width, self.height, self.cap = width, height, cap
        if width is not None and height is not None:
            text = f"{width}x{height} = {width * height:,} pixels, over the cap of {cap:,}"
        else:
            text = f"over Pillow's decompression-bomb limit ({detail})"
        super().__init__(text)


class PixelBudget:
    """A semaphore weighted by pixels, first come first served: :meth:`hold` waits until ``pixels`` fit
    in ``capacity`` next to those already held (a weight over the capacity counts as the capacity, so
    such an image decodes alone). ``in_use``, ``peak`` and ``waiting`` are there to be observed."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget must be >= 1, not {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def waiting(self) -> int:
        """Callers queued for the budget (not yet holding it)."""
        with self._cond:
            return len(self._queue)

    @contextmanager
    def hold(self, pixels: int) -> Iterator[int]:
        """Hold ``pixels`` of the budget for the ``with`` block; yields the weight held."""
        weight = max(1, min(int(pixels), self.capacity))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self.in_use + weight > self.capacity:
                    self._cond.wait()
            except BaseException:
                self._queue.remove(ticket)
                self._cond.notify_all()
                raise
            self._queue.popleft()
            self.in_use += weight
            self.peak = max(self.peak, self.in_use)
            self._cond.notify_all()  # the next in line may fit too
        try:
            yield weight
        finally:
            with self._cond:
                self.in_use -= weight
                self._cond.notify_all()


@functools.cache
def _map_big_blocks() -> None:
    """Raise Pillow's block size to :data:`PILLOW_BLOCK_SIZE` (never lower it: a process that chose a
    larger one keeps it). Done once, before the first decode (Pillow is imported on first use)."""
    core = Image.core
    try:
        if core.get_block_size() < PILLOW_BLOCK_SIZE:
            core.set_block_size(PILLOW_BLOCK_SIZE)
    except (AttributeError, ValueError):  # pragma: no cover - a Pillow without the block allocator
        pass



def _budget_from_env() -> int:
    raw = os.environ.get("OAIPIPE_DECODE_PIXELS", "")
    try:
        value = int(raw.replace("_", "")) if raw.strip() else DEFAULT_DECODE_PIXELS
    except ValueError:
        value = DEFAULT_DECODE_PIXELS
    return value if value >= 1 else DEFAULT_DECODE_PIXELS


#: the process-wide budget every :func:`decode` holds while it decodes
BUDGET = PixelBudget(_budget_from_env())


@dataclass
class Decoded:
    """A decoded image: converted, reduced and upright (EXIF orientation applied)."""

    image: Image.Image
    #: the full size the file holds, upright
    size: tuple[int, int]
    format: str
    #: the mode of the file's pixels (before ``convert``)
    mode: str
    #: the size the decoder produced (smaller than ``size`` when a JPEG was decoded at 1/2, 1/4 or 1/8)
    decoded_size: tuple[int, int]
    #: True when the EXIF orientation turned the image by 90° (width and height swapped)
    exif_rotated: bool = False


def _factors(size: tuple[int, int], target: tuple[int, int] | None, gap: float) -> tuple[int, int]:
    """Integer box-reduction factors that keep ``size`` at least ``gap`` times ``target``."""
    if target is None:
        return 1, 1
    return (max(1, int(size[0] / max(target[0], 1) / gap)), max(1, int(size[1] / max(target[1], 1) / gap)))


def _reduce_in_strips(img: Image.Image, factors: tuple[int, int],
                      convert: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``convert(img).reduce(factors)`` without a full-size converted copy: strip by strip (each strip a
    multiple of the vertical factor high, so the boxes are the same as for the whole image)."""
    fx, fy = factors
    width, height = img.size
    rows = max(fy, (STRIP_PIXELS // max(width, 1)) // fy * fy)
    out: Image.Image | None = None
    for top in range(0, height, rows):
        strip = convert(img.crop((0, top, width, min(height, top + rows))))
        small = strip.reduce((fx, fy))
        if out is None:
            out = Image.new(small.mode, (-(-width // fx), -(-height // fy)))
        out.paste(small, (0, top // fy))
    assert out is not None
    return out


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in _UPRIGHT else 1
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the image
        return 1


def decode(
    data: bytes,
    *,
    max_pixels: int,
    convert: Callable[[Image.Image], Image.Image],
    fit: Callable[[int, int], tuple[int, int]] | None = None,
    budget: PixelBudget | None = None,
    reducing_gap: float = 2.0,
) -> Decoded:
    """Decode ``data`` within the pixel cap and the process's budget (see the module docstring).

    ``fit(width, height)`` gives the size the caller will make of the image (it must not depend on which
    side is which: it is asked with the file's size, before the EXIF rotation); ``None`` keeps the full
    size. ``convert`` turns (a strip of) the decoded image into the mode the caller wants, e.g.
    ``lambda im: im.convert("RGB")``. Raises :class:`TooManyPixels`, and Pillow's own errors for what is
    not an image (``UnidentifiedImageError``) or is corrupt (``OSError``, ``SyntaxError``, ``ValueError``).
    """
    _map_big_blocks()
    try:
        img = Image.open(io.BytesIO(data))  # the header only
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(None, None, max_pixels, str(exc)) from None
    out: Image.Image | None = None
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise TooManyPixels(width, height, max_pixels)
        fmt, mode = img.format or "unknown", img.mode
        target = fit(width, height) if fit is not None else None
        if target is not None and fmt == "JPEG":
            img.draft(img.mode, (max(1, int(target[0] * reducing_gap)), max(1, int(target[1] * reducing_gap))))
        decoded_size = img.size
        with (budget or BUDGET).hold(decoded_size[0] * decoded_size[1]):
            img.load()
            orientation = _orientation(img)
            factors = _factors(decoded_size, target, reducing_gap)
            out = _reduce_in_strips(img, factors, convert) if factors != (1, 1) else convert(img)
    finally:
        if out is not img:
            img.close()
    assert out is not None
    if orientation != 1:
        out = out.transpose(Image.Transpose[_UPRIGHT[orientation]])
    turned = orientation in (5, 6, 7, 8)
    return Decoded(image=out, size=(height, width) if turned else (width, height), format=fmt, mode=mode,
                   decoded_size=decoded_size, exif_rotated=turned)
