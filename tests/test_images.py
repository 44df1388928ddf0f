"""The image loader: every kind of bad input gets ImageLoadError naming the input; odd modes become RGB."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ssl_core.data.images import ResizePolicy, expand_image_paths, load_image, load_images_reporting
from ssl_core.errors import ImageLoadError


def _png_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", **kw)
    return buf.getvalue()


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"this is a text file, not an image\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "corrupt"),
])
def test_bad_files_raise_one_error_type_naming_the_input(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_truncated_jpeg_is_reported_as_truncated(tmp_path):
    data = _jpeg_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="not a regular file"):
        load_image(tmp_path)


def test_decompression_bomb_refused_from_header_without_decoding(tmp_path):
    bomb = Image.new("1", (12_000, 12_000))  # 144 Mpx, a few KB as PNG
    path = tmp_path / "bomb.png"
    bomb.save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageLoadError, match="too many pixels"):
        load_image(path)
    with pytest.raises(ImageLoadError, match="too many pixels"):
        load_image(_png_bytes(Image.new("RGB", (100, 100))), max_pixels=5_000)


def test_exif_orientation_is_applied():
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _jpeg_bytes(image, exif=exif, quality=95)
    loaded = load_image(data)
    assert loaded.size == (20, 40)  # width and height swapped
    top = np.asarray(loaded)[:5].mean((0, 1))
    assert top[0] > 200 and top[1] < 60  # the red half is now on top


def test_cmyk_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(_jpeg_bytes(cmyk, quality=100))
    assert loaded.mode == "RGB"
    r, g, b = np.asarray(loaded).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_16bit_grayscale_scaled_from_full_range():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    loaded = np.asarray(load_image(_png_bytes(image)))
    assert loaded.shape == (1, 3, 3)
    assert loaded[0, :, 0].tolist() == [0, 100, 255]
    assert (loaded[..., 0] == loaded[..., 1]).all()


def test_alpha_and_transparent_palette_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert np.asarray(load_image(_png_bytes(rgba))).tolist()[0][0] == [255, 255, 255]
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert abs(int(np.asarray(load_image(_png_bytes(half)))[0, 0, 0]) - 127) <= 1
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.info["transparency"] = 0
    assert np.asarray(load_image(_png_bytes(palette, transparency=0)))[0, 0].tolist() == [0, 0, 255]
    la = Image.new("LA", (2, 2), (10, 255))
    assert np.asarray(load_image(_png_bytes(la)))[0, 0].tolist() == [10, 10, 10]


def test_grayscale_and_bilevel_become_three_channels():
    assert np.asarray(load_image(Image.new("L", (3, 3), 77)))[1, 1].tolist() == [77, 77, 77]
    assert np.asarray(load_image(Image.new("1", (3, 3), 1)))[0, 0].tolist() == [255, 255, 255]


def test_arrays():
    assert load_image(np.full((4, 5, 3), 9, np.uint8)).size == (5, 4)
    assert np.asarray(load_image(np.full((2, 2), 0.5, np.float32)))[0, 0, 0] == 128
    assert np.asarray(load_image(np.full((2, 2, 3), 65535, np.uint16)))[0, 0, 0] == 255
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((2, 2), np.nan, np.float32))


def test_resize_policy_keeps_aspect_and_caps_panoramas():
    policy = ResizePolicy(short_side=224, patch_size=16, max_aspect=3.0)
    assert policy.target_size(517, 333) == (352, 224)  # short side to 224, long side rounded to 16
    w, h = policy.target_size(10_000, 100)  # a 100:1 panorama
    assert w == 672 and h == 16  # long side capped at 3 x 224; short side shrinks (at least one patch)
    assert policy.target_size(7, 5) == (320, 224)  # tiny images are enlarged to the model's size


def test_folder_listing_and_reporting(tmp_path, image_file):
    good = image_file("a.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("not listed")
    paths = expand_image_paths([tmp_path])
    assert [p.name for p in paths] == ["a.png", "b.jpg"]
    loaded, failed = load_images_reporting(paths)
    assert [name for name, _ in loaded] == [good]
    assert len(failed) == 1 and "b.jpg" in failed[0]
