"""Generate the small product pictures the demo pipeline describes (``examples/images/``).

Run from the repository root: ``python examples/make_images.py``. The output is deterministic and
committed, so the demo works without running this; re-run it only to change the pictures. Each image has
a distinct dominant colour and size, and ``yellow_lamp.jpg`` is stored sideways with an EXIF orientation
tag (6: rotate 90° clockwise to display), so a viewer that honours EXIF shows it in portrait, as a
phone photo would be.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "images"
BACKGROUND = (238, 236, 230)


def red_mug() -> Image.Image:
    img = Image.new("RGB", (160, 160), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.rectangle([20, 14, 118, 150], fill=(200, 30, 35))  # body
    d.ellipse([20, 6, 118, 24], fill=(150, 20, 25))  # rim
    d.ellipse([108, 50, 152, 112], outline=(200, 30, 35), width=12)  # handle
    d.rectangle([40, 60, 96, 90], fill=(225, 70, 70))  # label
    return img


def blue_sneaker() -> Image.Image:
    img = Image.new("RGB", (240, 140), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.polygon([(4, 118), (4, 14), (80, 6), (130, 40), (236, 60), (236, 118)], fill=(30, 80, 200))
    d.rectangle([4, 112, 236, 134], fill=(250, 250, 250))  # sole
    for x in range(60, 120, 14):  # laces
        d.line([(x, 16), (x + 10, 44)], fill=(240, 240, 240), width=3)
    return img


def green_plant() -> Image.Image:
    img = Image.new("RGB", (140, 200), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.polygon([(34, 140), (106, 140), (96, 196), (44, 196)], fill=(150, 90, 50))  # pot
    for box in ([6, 10, 80, 110], [60, 0, 134, 100], [24, 50, 116, 146], [0, 70, 60, 140], [80, 60, 140, 140]):
        d.ellipse(box, fill=(40, 150, 60))
    return img


def yellow_lamp_portrait() -> Image.Image:
    img = Image.new("RGB", (150, 220), BACKGROUND)
    d = ImageDraw.Draw(img)
    d.polygon([(0, 130), (150, 130), (128, 0), (22, 0)], fill=(245, 200, 30))  # shade
    d.rectangle([66, 130, 84, 190], fill=(120, 110, 90))  # stem
    d.ellipse([10, 176, 140, 220], fill=(230, 185, 25))  # base
    return img


def dark_laptop() -> Image.Image:
    img = Image.new("RGB", (256, 170), (205, 205, 210))
    d = ImageDraw.Draw(img)
    d.rectangle([28, 6, 228, 132], fill=(35, 35, 40))  # lid
    d.rectangle([38, 16, 218, 122], fill=(20, 25, 45))  # screen
    d.polygon([(4, 140), (252, 140), (240, 166), (16, 166)], fill=(50, 50, 55))  # base
    d.rectangle([104, 146, 152, 158], fill=(70, 70, 75))  # trackpad
    return img


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    red_mug().save(OUT / "red_mug.png", optimize=True)
    blue_sneaker().save(OUT / "blue_sneaker.png", optimize=True)
    green_plant().save(OUT / "green_plant.png", optimize=True)
    dark_laptop().save(OUT / "dark_laptop.png", optimize=True)
    # stored sideways (landscape pixels) + EXIF Orientation=6: displayed upright in portrait
    lamp = yellow_lamp_portrait().transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    lamp.save(OUT / "yellow_lamp.jpg", quality=85, exif=exif.tobytes())
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(OUT.parent.parent)}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
