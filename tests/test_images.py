import cv2
import numpy as np
import pytest
from PIL import Image

from stylemix.images import UnreadableImage, contact_sheet, laplacian_variance, load_image, load_rgb, resize_crop
from stylemix.outputs import atomic_dir


def checkerboard(size: int, cell: int) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(np.stack([board, board // 2, 255 - board], axis=-1))


def test_modes_become_rgb(tmp_path):
    Image.new("L", (20, 30), 128).save(tmp_path / "gray.png")
    Image.new("P", (20, 30), 3).save(tmp_path / "palette.png")
    Image.new("CMYK", (20, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    rgba = Image.new("RGBA", (20, 30), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "rgba.png")
    for name in ("gray.png", "palette.png", "cmyk.jpg", "rgba.png"):
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (20, 30), name
    assert load_rgb(tmp_path / "rgba.png").getpixel((5, 5)) == (255, 255, 255)  # alpha flattened onto white
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # CMYK (0, 255, 255, 0) is red
    # load_image keeps alpha (the filter's copies, a masked loss) only where a pixel is not opaque
    Image.new("RGBA", (20, 30), (255, 0, 0, 255)).save(tmp_path / "opaque.png")
    Image.new("LA", (20, 30), (90, 100)).save(tmp_path / "gray_alpha.png")
    modes = {n: load_image(tmp_path / n).mode for n in ("rgba.png", "gray_alpha.png", "opaque.png", "gray.png", "palette.png")}
    assert modes == {"rgba.png": "RGBA", "gray_alpha.png": "RGBA", "opaque.png": "RGB", "gray.png": "RGB", "palette.png": "RGB"}


def test_exif_orientation_is_honoured(tmp_path):
    upright = Image.new("RGB", (40, 20), "white")
    upright.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.jpg", exif=exif, quality=100)
    img = load_rgb(tmp_path / "r.jpg")
    assert img.size == (40, 20)
    assert img.getpixel((2, 10))[0] > 200 and img.getpixel((2, 10))[1] < 60


@pytest.mark.parametrize(("content", "reason"), [(b"", "empty file"), (b"hello, not a jpeg", "not an image file")])
def test_unreadable_files_say_why(tmp_path, content, reason):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(UnreadableImage, match=reason):
        load_rgb(tmp_path / "x.jpg")


def test_truncated_png_is_unreadable(tmp_path):
    checkerboard(64, 4).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match="cannot decode"):
        load_rgb(tmp_path / "cut.png")


def test_laplacian_separates_sharp_from_blurry():
    sharp = checkerboard(256, 8)
    blurry = Image.fromarray(cv2.GaussianBlur(np.asarray(sharp), (0, 0), 12))
    assert laplacian_variance(sharp, 512) > 100 > laplacian_variance(blurry, 512)


def test_laplacian_is_measured_at_the_analysis_size():
    # The same drawing scanned at 2048 px and at 512 px scores the same once shrunk.
    big, small = checkerboard(2048, 64), checkerboard(512, 16)
    assert laplacian_variance(big, 512) == pytest.approx(laplacian_variance(small, 512), rel=0.05)
    # Unshrunk, the big scan would look about 4x blurrier.
    assert laplacian_variance(big, 4096) < laplacian_variance(small, 512) / 3


def test_resize_crop_center_and_nearest_keeps_pixel_art_crisp():
    sprite = checkerboard(16, 1)
    big, (top, left) = resize_crop(sprite, (128, 128), "nearest")
    assert big.size == (128, 128) and (top, left) == (0, 0)
    assert len(set(big.getdata())) == len(set(sprite.getdata())) == 2  # no in-between colours
    smooth, _ = resize_crop(sprite, (128, 128), "lanczos")
    assert len(set(smooth.getdata())) > 2
    wide, (top, left) = resize_crop(Image.new("RGB", (300, 100)), (64, 64), "lanczos")
    assert wide.size == (64, 64) and (top, left) == (0, (192 - 64) // 2)
    # Into a bucket: covered (300x100 -> 144x48), then the long side cropped.
    bucket, (top, left) = resize_crop(Image.new("RGB", (300, 100)), (80, 48), "lanczos")
    assert bucket.size == (80, 48) and (top, left) == (0, (144 - 80) // 2)


def test_contact_sheet_has_a_tile_per_image():
    sheet = contact_sheet([(checkerboard(32, 4), "a"), (None, "unreadable")] * 4, tile=64, cols=3)
    assert sheet.size == (3 * 64, 3 * (64 + 44))


def test_atomic_dir_leaves_old_output_when_interrupted(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise KeyboardInterrupt  # a killed stage
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp folder left behind
