"""Image decoding: modes, resize-and-crop geometry, and the tensor round trip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from omni.data.images import load_rgb, to_pil, to_tensor


def test_resize_shorter_side_then_center_crop():
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 0, 0), (0, 0, 16, 32))  # left quarter red: cropped away
    img.paste((0, 255, 0), (16, 0, 48, 32))  # middle half green: kept
    t = to_tensor(img, 16)
    assert t.shape == (3, 16, 16)
    assert torch.allclose(t[:, 8, 8], torch.tensor([-1.0, 1.0, -1.0]))
    assert t[0, :, 1:].max() == -1.0  # red is cropped away (antialiasing bleeds into column 0 only)


def test_round_trip_is_exact_at_native_resolution():
    arr = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    (back,) = to_pil(to_tensor(Image.fromarray(arr), 8))
    assert np.array_equal(np.asarray(back), arr)


def test_load_rgb_from_bytes_path_and_pil(tmp_path):
    img = Image.new("LA", (4, 4), (200, 255))
    path = tmp_path / "x.png"
    img.save(path)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    for source in (path, str(path), buf.getvalue(), img):
        out = load_rgb(source)
        assert out.mode == "RGB" and out.getpixel((0, 0)) == (200, 200, 200)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((4, 4), 32768, dtype=np.uint16)
    out = load_rgb(Image.fromarray(arr))
    assert out.getpixel((0, 0)) == (128, 128, 128)


def test_garbage_bytes_raise_pil_error():
    with pytest.raises(Exception, match="cannot identify"):
        load_rgb(b"garbage")
