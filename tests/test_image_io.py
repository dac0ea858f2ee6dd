"""read_image: one float layout for 8/16-bit, gray/RGB/RGBA/palette, paths and bytes; clear errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from tsp_model.data import image_io
from tsp_model.data.image_io import ImageError, read_image, to_tensor, verify_image


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_8bit_gray_is_divided_by_255_and_replicated(tmp_path):
    arr = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(arr).save(path)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.2], [1.0, 0.4]], atol=1e-6)
    assert np.array_equal(out[..., 0], out[..., 2])


def test_16bit_gray_png_is_rescaled_by_its_own_min_max(tmp_path):
    arr = np.array([[1000, 3000], [2000, 1500]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)
    np.testing.assert_allclose(out[..., 1], [[0.0, 1.0], [0.5, 0.25]], atol=1e-6)


@pytest.mark.parametrize("use_tifffile", [True, False])
def test_32bit_int_mode_i_tiff_and_constant_image(monkeypatch, use_tifffile):
    if not use_tifffile:  # exercise the Pillow path for TIFF too
        monkeypatch.setattr(image_io, "tifffile", None)
    buf = io.BytesIO()
    Image.fromarray(np.array([[-10, 30], [10, 10]], dtype=np.int32)).save(buf, format="TIFF")
    out = read_image(buf.getvalue())
    np.testing.assert_allclose(out[..., 0], [[0.0, 1.0], [0.5, 0.5]], atol=1e-6)
    const = Image.fromarray(np.full((3, 3), 700, dtype=np.uint16))
    assert read_image(_png_bytes(const)).max() == 0.0


def test_rgb_rgba_and_palette(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 51)
    out = read_image(_png_bytes(Image.fromarray(rgb)))
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.2], atol=1e-6)

    rgba = np.concatenate([rgb, np.full((2, 3, 1), 7, dtype=np.uint8)], axis=2)
    out = read_image(_png_bytes(Image.fromarray(rgba)))
    assert out.shape == (2, 3, 3)  # alpha dropped, not blended
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.2], atol=1e-6)

    pal = Image.fromarray(rgb).convert("P")
    assert pal.mode == "P"
    out = read_image(_png_bytes(pal))
    assert out.shape == (2, 3, 3)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_16bit_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = tmp_path / "ct.tif"
    tifffile.imwrite(path, np.array([[0, 400], [100, 200]], dtype=np.uint16))
    out = read_image(path)
    np.testing.assert_allclose(out[..., 0], [[0.0, 1.0], [0.25, 0.5]], atol=1e-6)
    assert verify_image(path) == (2, 2)


def test_bytes_use_the_given_name_in_errors():
    with pytest.raises(ImageError, match="upload.png"):
        read_image(b"not an image at all", name="upload.png")
    with pytest.raises(ImageError, match="<bytes>"):
        read_image(b"\x89PNG garbage")


def test_missing_and_truncated_files_name_the_path(tmp_path):
    with pytest.raises(ImageError, match="nope.png.*not found"):
        read_image(tmp_path / "nope.png")
    data = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)))
    bad = tmp_path / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        read_image(bad)
    with pytest.raises(ImageError, match="cut.png"):
        verify_image(bad)
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(ImageError, match="junk.png"):
        verify_image(tmp_path / "junk.png")


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_to_tensor_layout():
    arr = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    t = to_tensor(arr)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[2, 1, 0] == arr[1, 0, 2]
    with pytest.raises(ValueError):
        to_tensor(np.zeros((2, 2)))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_max_pixels_refuses_from_the_header_before_decoding(fmt, monkeypatch):
    from tsp_model.data.image_io import ImageTooLargeError

    buf = io.BytesIO()
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(buf, format=fmt)
    data = buf.getvalue()
    assert read_image(data, max_pixels=400 * 300).shape == (300, 400, 3)  # at the limit: read
    # any decode past the header would go through these; none may run
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded"))
    if image_io.tifffile is not None:
        monkeypatch.setattr(image_io.tifffile.TiffPage, "asarray", lambda self, *a, **k: pytest.fail("decoded"))
    with pytest.raises(ImageTooLargeError, match=r"big: 400x300 image \(0.1 megapixels\) is above the limit"):
        read_image(data, name="big", max_pixels=400 * 300 - 1)


def test_pillow_decompression_bomb_ceiling_is_an_image_error(monkeypatch):
    from tsp_model.data.image_io import ImageTooLargeError

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        read_image(_png_bytes(Image.fromarray(np.zeros((50, 50), np.uint8))), name="x")
