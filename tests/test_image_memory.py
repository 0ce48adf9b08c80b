"""Decoding images within bounded memory: pixel cap on the header, reduced decoding, a process-wide budget.

A 7000×7000 single-colour PNG is ~150 KB on disk and ~200 MB decoded; 32 of them at concurrency 16 took
2.6 GB. The guarantees: an image over the pixel cap is refused before it is decoded (that record fails,
the others go on); an image the target size allows is decoded reduced (JPEG ``draft``) or reduced right
after decoding, strip by strip, without any full-size copy; and the pixels being decoded at once in the
process never exceed the budget, whatever the concurrency. Memory itself is measured in bench/images.py.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageFile

from oaipipe import pixels
from oaipipe.cli import main
from oaipipe.engine import vision
from oaipipe.errors import ImageError
from oaipipe.images import load_image, target_size


@functools.cache
def png_bytes(width: int, height: int, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A single-colour RGB PNG written row by row: a decompression bomb's shape, made without decoding it."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(1)  # fastest; still under 1 MB for 8000×8000
    row = b"\x00" + bytes(rgb) * width
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes(width: int, height: int, orientation: int | None = None) -> bytes:
    img = Image.new("RGB", (width, height), (30, 90, 200))
    buf = io.BytesIO()
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, "JPEG", quality=80, exif=exif.tobytes())
    else:
        img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


class Decodes:
    """Instruments Pillow: each real decode (``ImageFile.load`` with tiles left), the pixels being decoded
    at once, and the largest image any ``convert`` produced."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sizes: list[tuple[int, int]] = []
        self.in_flight = 0
        self.images_in_flight = 0
        self.max_in_flight = 0
        self.max_images_in_flight = 0
        self.max_converted = 0
        self.overlap_wait: Callable[[], None] | None = None


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Decodes]:
    seen = Decodes()
    real_load, real_convert = ImageFile.ImageFile.load, Image.Image.convert

    def load(self: ImageFile.ImageFile) -> Any:
        if not getattr(self, "tile", None):
            return real_load(self)
        pixels_now = self.size[0] * self.size[1]
        with seen.lock:
            seen.sizes.append(self.size)
            seen.in_flight += pixels_now
            seen.images_in_flight += 1
            seen.max_in_flight = max(seen.max_in_flight, seen.in_flight)
            seen.max_images_in_flight = max(seen.max_images_in_flight, seen.images_in_flight)
        try:
            if seen.overlap_wait is not None:
                seen.overlap_wait()
            return real_load(self)
        finally:
            with seen.lock:
                seen.in_flight -= pixels_now
                seen.images_in_flight -= 1

    def convert(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        out = real_convert(self, *args, **kwargs)
        with seen.lock:
            seen.max_converted = max(seen.max_converted, out.size[0] * out.size[1])
        return out

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image.Image, "convert", convert)
    yield seen


# --- the pixel cap ------------------------------------------------------------------------------


def test_an_image_over_the_cap_is_refused_from_its_header(tmp_path: Path, decodes: Decodes) -> None:
    (tmp_path / "bomb.png").write_bytes(png_bytes(8000, 8000))  # 64 Mpx in under 1 MB
    with pytest.raises(ImageError) as info:
        load_image("bomb.png", tmp_path)
    text = str(info.value)
    assert "8000x8000" in text and "over the cap of 50,000,000" in text and "max_pixels" in text
    assert decodes.sizes == []  # not a pixel decoded


def test_a_decompression_bomb_fails_its_record_alone(tmp_path: Path, decodes: Decodes,
                                                     capsys: pytest.CaptureFixture) -> None:
    """7000×7000 is under the cap: described, decoded reduced with no full-size copy; 8000×8000 is over
    it: that record fails with the fix, the others are done."""
    Image.new("RGB", (64, 48), (250, 200, 0)).save(tmp_path / "small.png")
    (tmp_path / "big.png").write_bytes(png_bytes(7000, 7000))
    (tmp_path / "bomb.png").write_bytes(png_bytes(8000, 8000))
    (tmp_path / "r.csv").write_text("id,image\n1,small.png\n2,big.png\n3,bomb.png\n4,small.png\n", encoding="utf-8")
    (tmp_path / "p.yaml").write_text(
        "name: bombs\nbackend: {type: local, concurrency: 4}\nsource: {type: csv, path: r.csv, id_column: id}\n"
        "steps: [{type: describe_image, image: '{image}', output: d}]\n"
        "sinks: [{type: jsonl, path: out/records.jsonl}]\n", encoding="utf-8")
    assert main(["run", str(tmp_path / "p.yaml"), "-q", "--json"]) == 1  # finished, one record failed
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"]["done"] == 3 and summary["records"]["failed"] == 1
    errors = [json.loads(line) for line in
              next((tmp_path / "runs" / "bombs").iterdir()).joinpath("errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["3"]
    assert "8000x8000" in errors[0]["error"] and "max_pixels" in errors[0]["error"]
    assert (7000, 7000) in decodes.sizes and (8000, 8000) not in decodes.sizes
    assert decodes.max_converted <= pixels.STRIP_PIXELS  # no full-size RGB copy of the 7000×7000


# --- reduced decoding ---------------------------------------------------------------------------


def test_a_big_jpeg_is_decoded_at_a_fraction_of_its_size(tmp_path: Path, decodes: Decodes) -> None:
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(4000, 3000))
    prepared = load_image("photo.jpg", tmp_path, detail="low")
    assert (prepared.width, prepared.height) == target_size(4000, 3000, "low") == (512, 384)
    assert prepared.original_size == (4000, 3000)
    # asked for at least twice the target (1024×768): the decoder's 1/2 scale is the largest that fits
    assert prepared.decoded_size == (2000, 1500)
    assert decodes.sizes == [(2000, 1500)]


def test_reduced_decoding_keeps_the_exif_rotation(tmp_path: Path) -> None:
    (tmp_path / "phone.jpg").write_bytes(jpeg_bytes(4000, 3000, orientation=6))  # shot in portrait
    prepared = load_image("phone.jpg", tmp_path, detail="low")
    assert prepared.original_size == (3000, 4000)
    assert (prepared.width, prepared.height) == (384, 512)
    assert prepared.decoded_size == (2000, 1500)


def test_a_big_png_is_reduced_strip_by_strip_right_after_decoding(decodes: Decodes) -> None:
    data = png_bytes(4000, 3000)
    decoded = pixels.decode(data, max_pixels=50_000_000, convert=lambda im: im.convert("RGB"),
                            fit=lambda w, h: target_size(w, h, "low"))
    assert decoded.decoded_size == (4000, 3000)  # PNG has no reduced decoding...
    assert decoded.image.size == (1334, 1000)  # ...but is box-reduced by 3 (still >= 2x 512×384) at once
    assert decoded.image.getpixel((700, 500)) == (200, 30, 30)
    assert decodes.max_converted <= pixels.STRIP_PIXELS


def test_the_engine_measures_a_big_image_reduced(decodes: Decodes) -> None:
    facts = vision.measure(png_bytes(7000, 7000, (20, 160, 40)))
    assert (facts.width, facts.height) == (7000, 7000) and facts.format == "PNG"
    assert facts.dominant_colors[0].name == "green"
    assert decodes.max_converted <= pixels.STRIP_PIXELS


# --- the process-wide budget --------------------------------------------------------------------


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def test_the_budget_admits_what_fits_and_queues_the_rest() -> None:
    budget = pixels.PixelBudget(100)
    got: list[str] = []
    done = threading.Event()

    def second_caller() -> None:
        with budget.hold(50):
            got.append("b")
            done.wait(10)

    second = threading.Thread(target=second_caller)
    with budget.hold(60):
        second.start()
        _wait_until(lambda: budget.waiting == 1, "the second caller to queue")
        assert budget.in_use == 60 and got == []  # 60 + 50 > 100: it waits
    _wait_until(lambda: got == ["b"], "the second caller to get its share")
    assert budget.in_use == 50 and budget.peak == 60
    done.set()
    second.join(10)
    assert budget.in_use == 0
    with budget.hold(10_000) as weight:  # over the capacity: counts as all of it (decodes alone)
        assert weight == 100 and budget.in_use == 100


def test_decoding_at_concurrency_16_never_exceeds_the_budget(tmp_path: Path, decodes: Decodes,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """16 threads each decode a 4 Mpx image; the budget is 10 Mpx: at most two are decoded at once."""
    budget = pixels.PixelBudget(10_000_000)
    monkeypatch.setattr(pixels, "BUDGET", budget)
    for i in range(16):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(2000, 2000))

    def overlap() -> None:  # hold each decode until a second one is in flight too (or 5 s), to force overlap
        _wait_until(lambda: decodes.images_in_flight >= 2 or budget.waiting == 0, "a second decode", 5.0)

    decodes.overlap_wait = overlap
    with ThreadPoolExecutor(16) as pool:
        prepared = list(pool.map(lambda i: load_image(f"{i}.png", tmp_path, detail="low"), range(16)))
    assert len(prepared) == 16 and decodes.sizes.count((2000, 2000)) == 16
    assert decodes.max_in_flight <= budget.capacity  # 2 × 4 Mpx, never 16 × 4 Mpx
    assert decodes.max_images_in_flight == 2  # what fits is decoded together
    assert budget.peak <= budget.capacity and budget.in_use == 0
