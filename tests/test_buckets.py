"""Aspect-ratio buckets: kohya's sizes, the nearest bucket of an image, and the crop beyond them."""
import pytest

from stylemix import params
from stylemix.data import buckets


def base(resolution: int, **cfg) -> params.Base:
    return params.Base(resolution=resolution, buckets=params.Buckets(enabled=True, **cfg))


def test_sd15_buckets_are_kohyas():
    """kohya's defaults at 512 px (min 256, max 1024, steps of 64): the same 17 sizes."""
    got = buckets.sizes(base(512))
    expected = {(512, 512), (256, 1024), (320, 768), (384, 640), (448, 576), (576, 448), (640, 384), (704, 320),
                (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256), (320, 704), (256, 832), (256, 896), (256, 960)}
    assert set(got) == expected and got == sorted(got)
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in got)


def test_off_is_the_square_alone_and_the_demo_has_three_shapes_for_its_photos():
    assert buckets.sizes(params.Base(resolution=64)) == [(64, 64)]
    demo = buckets.sizes(base(64, step=16))
    assert (64, 64) in demo and (80, 48) in demo and (48, 80) in demo
    assert buckets.nearest((416, 416), demo) == (64, 64)
    assert buckets.nearest((739, 416), demo) == (80, 48)  # 16:9
    assert buckets.nearest((277, 416), demo) == (48, 80)  # 2:3


def test_an_image_beyond_the_widest_bucket_says_how_much_the_crop_cuts():
    sizes = buckets.sizes(base(64, step=16))  # widest 128x32: 4:1
    assert buckets.beyond((400, 100), sizes) == 0 and buckets.beyond((100, 400), sizes) == 0
    assert buckets.beyond((500, 100), sizes) == pytest.approx(0.2)  # 5:1 cropped to 4:1 loses a fifth of its width
    assert buckets.beyond((100, 800), sizes) == pytest.approx(0.5)
    assert buckets.nearest((500, 100), sizes) == (128, 32)


def test_bad_bucket_params_are_one_line_errors():
    from stylemix.errors import StyleMixError

    with pytest.raises(StyleMixError, match="base.buckets.step = 12: must be divisible by 8"):
        params.validate({"base": {"resolution": 64, "buckets": {"enabled": True, "step": 12}}})
    with pytest.raises(StyleMixError, match="min_side 128 to max_side 256 must hold the square bucket of resolution 64"):
        params.validate({"base": {"resolution": 64, "buckets": {"enabled": True, "step": 16, "min_side": 128, "max_side": 256}}})
