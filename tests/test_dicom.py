"""DICOM reading, HU windowing, de-identification, idempotent export, compressed-syntax errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLosslessSV1, generate_uid

from tests.dicom_helpers import HU_VALUES, IDENTIFYING, write_ct
from tsp_model.data.dicom import (
    KEPT_TAGS,
    DicomDecodeError,
    DicomError,
    apply_window,
    find_dicom_files,
    read_dicom,
    read_dicom_slice,
    render_window,
    stack_windows,
)
from tsp_model.data.slices import export_slices


def test_hu_from_rescale(tmp_path: Path) -> None:
    sl = read_dicom_slice(write_ct(tmp_path / "a.dcm"))
    assert sl.hu.dtype == np.float32
    np.testing.assert_array_equal(sl.hu, HU_VALUES.astype(np.float32))
    # slope 2, intercept -2048: stored 1044 -> HU 40
    sl2 = read_dicom_slice(write_ct(tmp_path / "b.dcm", slope=2.0, intercept=-2048.0))
    np.testing.assert_array_equal(sl2.hu, HU_VALUES.astype(np.float32))


def test_brain_window_values_hand_computed(tmp_path: Path) -> None:
    sl = read_dicom_slice(write_ct(tmp_path / "a.dcm"))
    img = render_window(sl, "brain")
    # lo = 0, width 80: v = round(clip(HU/80, 0, 1) * 255), ties to even
    # -1024 -> 0, -10 -> 0, 0 -> 0, 20 -> 63.75 -> 64, 40 -> 127.5 -> 128, 60 -> 191.25 -> 191,
    # 80 -> 255, 2000 -> 255
    expected = np.array([[0, 0, 0, 64], [128, 191, 255, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(img, expected)
    assert img.dtype == np.uint8


def test_other_windows_and_rgb_stack() -> None:
    hu = np.array([[-800.0, 75.0, 600.0, 2000.0]])
    # bone 600/2800: lo = -800; 75 -> 875/2800*255 = 79.6875 -> 80; 600 -> 127.5 -> 128; 2000 -> 255
    np.testing.assert_array_equal(apply_window(hu, 600, 2800), [[0, 80, 128, 255]])
    rgb = stack_windows(hu)
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 239, 255, 255])  # brain: 75/80*255 = 239.06
    np.testing.assert_array_equal(rgb[0, :, 1], [0, 128, 255, 255])  # subdural 75/215: lo -32.5
    np.testing.assert_array_equal(rgb[0, :, 2], [0, 80, 128, 255])  # bone
    with pytest.raises(ValueError, match="width"):
        apply_window(hu, 40, 0)


def test_monochrome1_inverted_after_windowing(tmp_path: Path) -> None:
    sl = read_dicom_slice(write_ct(tmp_path / "m1.dcm", photometric="MONOCHROME1"))
    assert sl.invert
    np.testing.assert_array_equal(sl.hu, HU_VALUES.astype(np.float32))  # HU keeps its meaning
    img = render_window(sl, "brain")
    np.testing.assert_array_equal(img, [[255, 255, 255, 191], [127, 64, 0, 0]])


def test_identifying_tags_absent_from_provenance(tmp_path: Path) -> None:
    sop = generate_uid()
    sl = read_dicom_slice(write_ct(tmp_path / "a.dcm", sop=sop, instance=7))
    prov = sl.provenance
    assert prov["SOPInstanceUID"] == sop and sl.key == sop
    assert prov["InstanceNumber"] == 7
    assert prov["SeriesInstanceUID"] == "1.2.826.0.1.3680043.8.498.2"
    assert prov["StudyInstanceUID"] == "1.2.826.0.1.3680043.8.498.1"
    assert prov["Modality"] == "CT" and prov["PixelSpacing"] == [0.5, 0.5]
    assert set(prov) <= set(KEPT_TAGS)
    flat = repr(prov)
    for tag, value in IDENTIFYING.items():
        assert tag not in prov
        assert value not in flat


def test_find_sorts_by_series_then_instance(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    write_ct(tmp_path / "s" / "z.dcm", series="1.2.3.2", instance=1)
    write_ct(tmp_path / "s" / "y.dcm", series="1.2.3.1", instance=10)
    write_ct(tmp_path / "s" / "x.dcm", series="1.2.3.1", instance=2)
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    found = find_dicom_files([tmp_path / "s"])
    assert [p.name for p in found] == ["x.dcm", "y.dcm", "z.dcm"]
    with pytest.raises(DicomError, match="notes.txt: not a DICOM file"):
        find_dicom_files([tmp_path / "s" / "notes.txt"])


def test_export_is_idempotent_and_writes_windowed_png(tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    write_ct(series / "1.dcm", instance=1)
    write_ct(series / "2.dcm", instance=2)
    Image.fromarray(np.full((8, 8), 77, np.uint8)).save(tmp_path / "extra.png")
    out = tmp_path / "out"
    first = export_slices([series, tmp_path / "extra.png"], out, progress=False)
    assert [r.kind for r in first] == ["dicom", "dicom", "image"]
    png = np.asarray(Image.open(first[0].image_path))
    np.testing.assert_array_equal(png, [[0, 0, 0, 64], [128, 191, 255, 255]])
    assert first[2].provenance == {"source_name": "extra.png"} and len(first[2].key) == 64
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    # same inputs again (the series folder twice, too): same keys, same files, nothing rewritten
    second = export_slices([series, series / "1.dcm", tmp_path / "extra.png"], out, progress=False)
    assert [r.key for r in second] == [r.key for r in first]
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert len(list(out.iterdir())) == 3


def test_rgb_export_shape(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "a.dcm")
    (rec,) = export_slices([path], tmp_path / "out", window="rgb", progress=False)
    arr = np.asarray(Image.open(rec.image_path))
    assert arr.shape == (2, 4, 3)
    assert rec.image_path.name.endswith(".rgb.png")


def test_multiframe_is_split(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "mf.dcm", hu=np.zeros((4, 4), np.int32))
    ds = pydicom.dcmread(path)
    frames = np.stack([np.full((4, 4), 1024, np.uint16), np.full((4, 4), 1064, np.uint16)])
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(path)
    slices = read_dicom(path)
    assert [s.key.rsplit("/", 1)[1] for s in slices] == ["1", "2"]
    assert [float(s.hu[0, 0]) for s in slices] == [0.0, 40.0]
    with pytest.raises(DicomError, match="2 frames"):
        read_dicom_slice(path)


@pytest.mark.skipif(get_decoder(JPEGLosslessSV1).is_available, reason="a JPEG Lossless decoder is installed")
def test_compressed_without_handler_names_package(tmp_path: Path) -> None:
    path = write_ct(tmp_path / "jpegls.dcm", transfer_syntax=JPEGLosslessSV1)
    with pytest.raises(DicomDecodeError) as info:
        read_dicom_slice(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "JPEG Lossless" in msg and JPEGLosslessSV1 in msg
    assert "pylibjpeg-libjpeg" in msg and "dicom-compressed" in msg
    assert "\n" not in msg


def test_not_dicom_is_clear(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"hello")
    with pytest.raises(DicomError, match="x.dcm: not a readable DICOM file"):
        read_dicom_slice(bad)


def test_bare_dataset_without_preamble_is_read(tmp_path: Path) -> None:
    """Older exports write the dataset without preamble and file meta (implicit VR LE)."""
    path = write_ct(tmp_path / "a.dcm")
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(tmp_path / "bare", implicit_vr=True, little_endian=True, enforce_file_format=False)
    raw = (tmp_path / "bare").read_bytes()
    assert b"DICM" not in raw[:132]
    sl = read_dicom_slice(tmp_path / "bare")
    np.testing.assert_array_equal(sl.hu, HU_VALUES.astype(np.float32))
    assert find_dicom_files([tmp_path]) == sorted([path, tmp_path / "bare"], key=lambda p: str(p))


def test_phantom_slice_as_dicom_round_trips_byte_identical(tmp_path: Path) -> None:
    from tsp_model.synth.phantom import render_slice, window

    ps = render_slice(np.random.default_rng(1), 64, 1)
    hu = np.round(ps.hu).astype(np.int32)
    (rec,) = export_slices([write_ct(tmp_path / "p.dcm", hu=hu)], tmp_path / "out", progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open(rec.image_path)), window(hu.astype(np.float32)))
