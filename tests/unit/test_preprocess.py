from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import pytest
from PIL import Image

from model_core.config import InputSpec
from service.inference.inputs import InputError, InputFormat, decode_image, parse_item, parse_items

GREY_8 = InputFormat(InputSpec("image", channels=1, height=8, width=8))
RGB_6x4 = InputFormat(InputSpec("image", channels=3, height=6, width=4))
VEC_3 = InputFormat(InputSpec("vector", dim=3))
LIMIT = 1_000_000


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def gradient_rgb(w: int = 16, h: int = 16) -> Image.Image:
    x = np.arange(w * h * 3, dtype=np.uint8).reshape(h, w, 3)
    return Image.fromarray(x, "RGB")


def b64(data: bytes) -> dict[str, Any]:
    return {"image_b64": base64.b64encode(data).decode()}


def test_rgb_png_to_one_channel_input() -> None:
    arr = decode_image(encode(gradient_rgb()), GREY_8, LIMIT)
    assert arr.shape == (1, 8, 8) and arr.dtype == np.float32
    assert arr.min() >= 0.0 and arr.max() <= 1.0
    assert arr.max() > arr.min()  # the gradient survives: not a blank image


def test_grey_png_to_three_channels_repeats_the_channel() -> None:
    grey = Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10) * 2, "L")
    arr = decode_image(encode(grey), RGB_6x4, LIMIT)
    assert arr.shape == (3, 6, 4)
    assert np.array_equal(arr[0], arr[1]) and np.array_equal(arr[1], arr[2])


def test_jpeg_is_decoded() -> None:
    white = Image.new("RGB", (8, 8), (255, 255, 255))
    arr = decode_image(encode(white, "JPEG"), GREY_8, LIMIT)
    assert arr.shape == (1, 8, 8)
    assert np.allclose(arr, 1.0, atol=0.02)


def test_same_size_image_keeps_exact_pixel_values() -> None:
    pixels = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    arr = decode_image(encode(Image.fromarray(pixels, "L")), InputFormat(InputSpec("image", 1, 2, 2)), LIMIT)
    assert np.allclose(arr[0], pixels / 255.0)


def test_image_over_the_pixel_limit_is_refused() -> None:
    data = encode(gradient_rgb(16, 16))
    with pytest.raises(ValueError, match="limit"):
        decode_image(data, GREY_8, max_pixels=255)
    assert decode_image(data, GREY_8, max_pixels=256).shape == (1, 8, 8)  # exactly at the limit is fine


@pytest.mark.parametrize("cut", ["garbage", "truncated"])
def test_corrupt_or_truncated_bytes_are_refused(cut: str) -> None:
    png = encode(gradient_rgb())
    data = b"not an image at all" if cut == "garbage" else png[: len(png) // 2]
    with pytest.raises(ValueError, match="not a decodable image"):
        decode_image(data, GREY_8, LIMIT)


def test_invalid_base64_is_refused() -> None:
    with pytest.raises(ValueError, match="not valid base64"):
        parse_item({"image_b64": "***not base64***"}, GREY_8, LIMIT)


def test_image_item_goes_through_decode_image() -> None:
    data = encode(gradient_rgb())
    assert np.array_equal(parse_item(b64(data), GREY_8, LIMIT), decode_image(data, GREY_8, LIMIT))


def test_valid_vector_is_float32() -> None:
    arr = parse_item({"vector": [1, 2.5, -3]}, VEC_3, LIMIT)
    assert arr.dtype == np.float32 and arr.tolist() == [1.0, 2.5, -3.0]


@pytest.mark.parametrize(
    ("vector", "reason"),
    [
        ([1.0, 2.0], "has 2 values"),
        ([1.0, 2.0, 3.0, 4.0], "has 4 values"),
        ([1.0, "2", 3.0], "list of numbers"),
        ([1.0, True, 3.0], "list of numbers"),
        ([1.0, math.nan, 3.0], "non-finite"),
        ([1.0, math.inf, 3.0], "non-finite"),
        ("1,2,3", "list of numbers"),
    ],
)
def test_bad_vectors_are_refused(vector: Any, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_item({"vector": vector}, VEC_3, LIMIT)


def test_wrong_kind_of_item_is_refused() -> None:
    with pytest.raises(ValueError, match="image_b64"):
        parse_item({"vector": [1, 2, 3]}, GREY_8, LIMIT)
    with pytest.raises(ValueError, match="'vector'"):
        parse_item(b64(encode(gradient_rgb())), VEC_3, LIMIT)
    with pytest.raises(ValueError, match="must be an object"):
        parse_item([1, 2, 3], VEC_3, LIMIT)


def test_parse_items_names_the_first_bad_item() -> None:
    items = [{"vector": [1, 2, 3]}, {"vector": [4, 5, 6]}, {"vector": [1, 2]}, {"vector": ["x", 1, 2]}]
    with pytest.raises(InputError) as info:
        parse_items(items, VEC_3, "eval_samples", LIMIT)
    assert info.value.index == 2 and info.value.field == "eval_samples"
    assert "has 2 values" in info.value.reason and str(info.value).startswith("eval_samples[2]: ")


def test_parse_items_stacks_good_items() -> None:
    out = parse_items([{"vector": [1, 2, 3]}, {"vector": [4, 5, 6]}], VEC_3, "samples", LIMIT)
    assert out.shape == (2, 3) and out.dtype == np.float32 and out[1].tolist() == [4.0, 5.0, 6.0]


def test_same_bytes_give_identical_arrays() -> None:
    item = b64(encode(gradient_rgb(13, 11), "JPEG"))
    learn = parse_items([item], RGB_6x4, "samples", LIMIT)
    predict = parse_items([item], RGB_6x4, "inputs", LIMIT)
    assert learn.shape == (1, 3, 6, 4)
    assert np.array_equal(learn, predict)
    assert np.array_equal(learn[0], parse_item(item, RGB_6x4, LIMIT))


def test_input_format_shape() -> None:
    assert RGB_6x4.shape == (3, 6, 4) and VEC_3.shape == (3,)


@pytest.mark.parametrize("value", [10**400, 1e39, -(10**40)])
def test_values_beyond_float32_are_refused_cleanly(value: float) -> None:
    with pytest.raises(InputError, match="too large"):
        parse_items([{"vector": [value]}], InputFormat(InputSpec("vector", dim=1)), "inputs", 100)
