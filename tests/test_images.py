"""Image preprocessing: EXIF rotation, colour modes, downscaling per detail, caps, bad files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image

from oaipipe.errors import ImageError
from oaipipe.images import load_image, target_size


def decode(data_url: str) -> Image.Image:
    header, _, payload = data_url.partition(",")
    assert header.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif.tobytes())
    prepared = load_image("phone.jpg", tmp_path)
    assert (prepared.width, prepared.height) == (20, 40)
    assert decode(prepared.data_url).size == (20, 40)
    assert prepared.original_size == (20, 40)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "1", "I;16"])
def test_modes_are_converted(tmp_path: Path, mode: str) -> None:
    ext = "tif" if mode in ("CMYK", "I;16") else "png"
    path = tmp_path / f"img.{ext}"
    Image.new(mode, (30, 30)).save(path)
    prepared = load_image(str(path))
    out = decode(prepared.data_url)
    if mode in ("RGBA", "LA"):
        assert prepared.data_url.startswith("data:image/png;base64,")
        assert out.mode == "RGBA"
    else:
        assert prepared.data_url.startswith("data:image/jpeg;base64,")
        assert out.mode == "RGB"


def test_palette_with_transparency_keeps_alpha(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10))
    img.info["transparency"] = 0
    path = tmp_path / "t.png"
    img.save(path, transparency=0)
    prepared = load_image(str(path))
    assert prepared.data_url.startswith("data:image/png")
    assert decode(prepared.data_url).mode == "RGBA"


@pytest.mark.parametrize(
    ("size", "detail", "expected"),
    [
        ((4000, 3000), "low", (512, 384)),
        ((4000, 3000), "high", (1024, 768)),
        ((4000, 3000), "auto", (1024, 768)),
        ((3000, 1000), "high", (2048, 683)),
        ((600, 400), "high", (600, 400)),  # never upscaled
        ((300, 200), "low", (300, 200)),
    ],
)
def test_downscale_per_detail(size: tuple[int, int], detail: str, expected: tuple[int, int]) -> None:
    assert target_size(*size, detail) == expected


def test_downscaled_image_is_what_is_sent(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (10, 200, 10)).save(path)
    low = load_image(str(path), detail="low")
    high = load_image(str(path), detail="high")
    assert decode(low.data_url).size == (512, 256)
    assert decode(high.data_url).size == (1536, 768)
    assert low.tokens == 85
    assert high.tokens == 170 * 3 * 2 + 85
    assert low.original_size == (2000, 1000)


def test_image_tokens_follow_the_model(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (2000, 1000), (10, 200, 10)).save(path)
    high = load_image(str(path), detail="high")
    assert high.tokens_for("gpt-4o") == high.tokens == 170 * 3 * 2 + 85
    assert high.tokens_for("gpt-4o-mini") == 5667 * 3 * 2 + 2833
    assert high.tokens_for("gpt-4.1-mini") == round(48 * 24 * 1.62)
    remote_low = load_image("https://example.com/cat.jpg", detail="low")
    assert remote_low.tokens_for("gpt-4o-mini") == 2833  # low detail on the tile rule: size does not matter
    assert remote_low.tokens_for("gpt-4.1-mini") is None  # the patch rule needs the size


def test_size_cap(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    Image.effect_noise((200, 200), 64).save(path)
    with pytest.raises(ImageError) as info:
        load_image(str(path), max_bytes=1000)
    assert "noise.png" in str(info.value) and "max_image_bytes" in str(info.value)


def test_pixel_cap(tmp_path: Path) -> None:
    path = tmp_path / "wide.png"
    Image.new("L", (1000, 1000)).save(path)
    with pytest.raises(ImageError) as info:
        load_image(str(path), max_pixels=10_000)
    assert "wide.png" in str(info.value) and "max_pixels" in str(info.value)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    buf = io.BytesIO()
    Image.effect_noise((100, 100), 50).save(buf, format="PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as info:
        load_image(str(path))
    assert "cut.png" in str(info.value)
    assert "corrupt" in str(info.value)


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are not pixels")
    with pytest.raises(ImageError) as info:
        load_image(str(path))
    assert "notes.png" in str(info.value) and "not an image" in str(info.value)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        load_image("photos/missing.jpg", tmp_path)
    assert str(tmp_path / "photos" / "missing.jpg") in str(info.value)
    assert "relative to the pipeline file" in str(info.value)


def test_empty_file_and_empty_value(tmp_path: Path) -> None:
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_image("zero.png", tmp_path)
    with pytest.raises(ImageError, match="empty"):
        load_image("   ")


def test_data_url_is_preprocessed(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (3000, 100), (1, 2, 3, 128)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    prepared = load_image(url, detail="low")
    assert decode(prepared.data_url).size == (512, 17)
    assert prepared.source_label.startswith("data URL (image/png")
    assert "base64" not in prepared.source_label


def test_bad_data_url() -> None:
    with pytest.raises(ImageError, match="base64"):
        load_image("data:image/png,rawbytes")
    with pytest.raises(ImageError, match="not an image"):
        load_image("data:image/png;base64," + base64.b64encode(b"hello").decode())


def test_http_url_passes_through() -> None:
    prepared = load_image("https://example.com/cat.jpg", detail="high")
    assert prepared.remote and prepared.data_url == "https://example.com/cat.jpg"
    assert prepared.width is None and prepared.tokens is None
    assert prepared.part() == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                                                  "detail": "high"}}


def test_bad_detail() -> None:
    with pytest.raises(ImageError, match="detail"):
        load_image("x.png", detail="ultra")
