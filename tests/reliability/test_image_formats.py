"""Every valid image loads as the right upright RGB picture, whatever its format and mode."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vitkit.data import is_image_file, list_images, load_image


def test_grayscale_becomes_rgb(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.mode == "RGB" and img.size == (4, 3) and img.getpixel((0, 0)) == (77, 77, 77)


def test_transparent_area_is_composited_on_white_not_garbage(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, but only pixel (0, 0) opaque
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.getpixel((0, 0)) == (200, 0, 0) and img.getpixel((1, 1)) == (255, 255, 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "d.png")
    img = load_image(tmp_path / "d.png")
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_palette_and_cmyk_become_rgb(tmp_path):
    Image.new("P", (2, 2), 3).save(tmp_path / "p.gif")
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_image(tmp_path / "p.gif").mode == "RGB"
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


def test_image_file_filter_and_recursive_listing(tmp_path):
    assert is_image_file("a.JPEG") and is_image_file("x/b.webp")
    assert not is_image_file(".DS_Store") and not is_image_file("._a.jpg") and not is_image_file("a.txt")
    (tmp_path / "x" / "y").mkdir(parents=True)
    for name in ("x/1.png", "x/y/2.jpg", "x/3.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["1.png", "2.jpg"]


def test_gray_with_alpha_is_composited_gray_on_white(tmp_path):
    Image.fromarray(np.array([[[60, 255], [60, 0]]], np.uint8), "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    assert img.getpixel((0, 0)) == (60, 60, 60) and img.getpixel((1, 0)) == (255, 255, 255)


def test_palette_png_with_a_transparent_colour_is_composited(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.save(tmp_path / "t.png", transparency=0)  # palette entry 0 is transparent
    assert load_image(tmp_path / "t.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "t.png").getpixel((1, 0)) == (10, 200, 30)


@pytest.mark.parametrize("suffix", [".webp", ".bmp", ".tif", ".tiff", ".gif", ".png", ".jpg", ".ppm"])
def test_every_common_format_loads_as_the_same_rgb_picture(suffix, tmp_path):
    pixels = np.zeros((24, 32, 3), np.uint8)
    pixels[:, :16] = (200, 30, 40)  # left half red, right half blue: orientation and channel order show
    pixels[:, 16:] = (20, 40, 210)
    options = {"lossless": True} if suffix == ".webp" else {"quality": 95} if suffix == ".jpg" else {}
    Image.fromarray(pixels).save(tmp_path / f"x{suffix}", **options)
    img = load_image(tmp_path / f"x{suffix}")
    assert img.mode == "RGB" and img.size == (32, 24)
    tolerance = 40 if suffix in (".jpg", ".gif") else 0  # lossy / palette-quantised formats
    assert np.abs(np.asarray(img, np.int16)[4:20, [4, 27]] - pixels[4:20, [4, 27]]).max() <= tolerance


def test_16_bit_grayscale_tiff_is_scaled(tmp_path):
    Image.fromarray(np.array([[0, 65535]], np.uint16)).save(tmp_path / "d.tif")
    img = load_image(tmp_path / "d.tif")
    assert [img.getpixel((x, 0))[0] for x in range(2)] == [0, 255]


def test_hidden_system_and_non_image_files_are_not_listed(tmp_path):
    for name in (".DS_Store", "Thumbs.db", "desktop.ini", "._photo.jpg", "notes.txt", "data.csv", "photo.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "a.jpg").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["photo.jpg"]
