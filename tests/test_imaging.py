"""Loading radiographs: real samples, synthetic edge cases, DICOM pixel pipelines and bad input."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from tests.dicom_factory import SYNTHETIC_IDENTIFIERS, as_jpeg_lossless, make_dataset, to_bytes
from xai_core.imaging import (
    CorruptImageError,
    EmptyFileError,
    FileTooLargeError,
    ImageShapeError,
    ImageTooLargeError,
    InvalidValueError,
    InvalidWindowError,
    NonFinitePixelsError,
    Radiograph,
    RadiographError,
    UnsupportedDicomError,
    UnsupportedFormatError,
    load_radiograph,
    rewindow,
)


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def gradient(height: int = 64, width: int = 80, maxval: int = 4095, dtype=np.uint16) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 7 + yy * 13) % (maxval + 1)).astype(dtype)


def assert_valid(radiograph, shape=None) -> None:
    assert radiograph.pixels.dtype == np.float32
    assert radiograph.pixels.ndim == 2
    assert radiograph.pixels.min() >= 0.0 and radiograph.pixels.max() <= 1.0
    if shape is not None:
        assert radiograph.pixels.shape == shape


# --- real samples -------------------------------------------------------------------------------------------------


def test_real_png_and_jpeg_load(real_cxr):
    for path in [*sorted((real_cxr / "nih").glob("*.png"))[:3], *sorted((real_cxr / "lung-masks").glob("*.jpg"))]:
        radiograph = load_radiograph(path)
        assert_valid(radiograph)
        assert radiograph.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert radiograph.source_name == path.name
        assert radiograph.pixels.std() > 0.05, "a radiograph has contrast"


def test_real_dicom_monochrome2_and_jpeg_baseline(real_cxr):
    radiograph = load_radiograph(real_cxr / "dicom" / "siim_cr_chest_monochrome2.dcm")
    assert_valid(radiograph, (1024, 1024))
    meta = radiograph.meta
    assert meta["modality"] == "CR" and meta["photometric"] == "MONOCHROME2"
    assert meta["transfer_syntax"] == "JPEG Baseline (Process 1)"
    assert meta["spacing_mm"] == pytest.approx([0.168, 0.168])
    # white = dense: the mediastinum (centre column band) is brighter than the lung fields beside it
    h, w = radiograph.pixels.shape
    centre = radiograph.pixels[h // 3 : 2 * h // 3, int(w * 0.45) : int(w * 0.55)].mean()
    lungs = radiograph.pixels[h // 3 : 2 * h // 3, int(w * 0.25) : int(w * 0.35)].mean()
    assert centre > lungs


def test_real_monochrome1_file_is_inverted(real_cxr):
    mono2 = load_radiograph(real_cxr / "dicom" / "siim_cr_chest_monochrome2.dcm")
    mono1 = load_radiograph(real_cxr / "dicom" / "cr_chest_monochrome1.dcm")
    assert mono1.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, 1.0 - mono2.pixels, atol=1e-6)


def test_true_monochrome1_equals_monochrome2(real_cxr):
    path = real_cxr / "dicom" / "siim_cr_chest_monochrome2.dcm"
    mono2 = load_radiograph(path)
    ds = pydicom.dcmread(path)
    stored = ds.pixel_array.astype(np.uint8)
    maxval = 2 ** int(ds.BitsStored) - 1
    inverted = (maxval - stored).astype(np.uint8)
    written = make_dataset(inverted, bits_stored=int(ds.BitsStored), photometric="MONOCHROME1")
    if "WindowCenter" in ds:
        written.WindowCenter, written.WindowWidth = maxval + 1 - float(ds.WindowCenter), ds.WindowWidth
    mono1 = load_radiograph(to_bytes(written), name="true_mono1.dcm")
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)


def test_metadata_is_deidentified(real_cxr):
    pixels = gradient()
    data = to_bytes(make_dataset(pixels, WindowCenter=2048, WindowWidth=4096))
    radiograph = load_radiograph(data, name="case.dcm")
    dumped = json.dumps(radiograph.meta) + repr(radiograph)
    for value in SYNTHETIC_IDENTIFIERS.values():
        assert value not in dumped
        assert value.split("^")[0] not in dumped
    for path in (real_cxr / "dicom").glob("*.dcm"):
        meta = load_radiograph(path).meta
        ds = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyDate"):
            value = str(ds.get(keyword, "") or "")
            if value:
                assert value not in json.dumps(meta)


# --- raster edge cases ---------------------------------------------------------------------------------------------


def test_16bit_png_keeps_full_precision():
    array = gradient(maxval=65535)
    array[0, 0], array[-1, -1] = 0, 65535
    radiograph = load_radiograph(png_bytes(array), name="sixteen.png")
    assert radiograph.meta["bits"] == 16
    np.testing.assert_array_equal(radiograph.raw, array)
    np.testing.assert_allclose(radiograph.pixels, array / 65535.0, atol=1e-6)


def test_8bit_grey_png_scales_by_255():
    array = gradient(maxval=255, dtype=np.uint8)
    radiograph = load_radiograph(png_bytes(array))
    np.testing.assert_allclose(radiograph.pixels, array / 255.0, atol=1e-6)


def test_rgba_png_drops_alpha_and_converts_to_grey():
    grey = gradient(maxval=255, dtype=np.uint8)
    rgba = np.stack([grey, grey, grey, np.random.default_rng(0).integers(0, 256, grey.shape, dtype=np.uint8)], -1)
    radiograph = load_radiograph(png_bytes(rgba, "RGBA"), name="rgba.png")
    np.testing.assert_allclose(radiograph.pixels, grey / 255.0, atol=1.5 / 255)


def test_rgb_jpeg_and_16bit_tiff():
    grey = gradient(maxval=255, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([grey] * 3, -1)).save(buf, format="JPEG", quality=95)
    assert_valid(load_radiograph(buf.getvalue(), name="colour.jpg"), grey.shape)
    buf = io.BytesIO()
    array = gradient(maxval=65535)
    Image.fromarray(array).save(buf, format="TIFF")
    radiograph = load_radiograph(buf.getvalue(), name="scan.tif")
    assert radiograph.meta["format"] == "TIFF"
    np.testing.assert_allclose(radiograph.pixels, array / 65535.0, atol=1e-6)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(
        b"IEND", b"")


@pytest.mark.parametrize("width,height", [(9000, 9000), (40000, 40000)])
def test_huge_dimensions_are_refused_before_decoding(width, height):
    with pytest.raises(ImageTooLargeError, match=r"megapixels|too large"):
        load_radiograph(_png_header_only(width, height), name="bomb.png")


def test_huge_dicom_is_refused_before_decoding():
    ds = make_dataset(gradient(8, 8))
    ds.Rows, ds.Columns = 30000, 30000
    with pytest.raises(ImageTooLargeError, match="megapixels"):
        load_radiograph(to_bytes(ds), name="huge.dcm")


def test_pixel_and_byte_limits_are_configurable(sample_png, tmp_path):
    path = tmp_path / "large.png"
    with Image.open(sample_png) as image:
        image.resize((1400, 1200)).save(path)  # 1.7 megapixels
    with pytest.raises(ImageTooLargeError, match="limit is 1 megapixels"):
        load_radiograph(path, max_pixels=1_000_000)
    limit = path.stat().st_size - 1
    with pytest.raises(FileTooLargeError, match="limit"):
        load_radiograph(path, max_bytes=limit)
    with pytest.raises(FileTooLargeError):
        load_radiograph(path.read_bytes(), max_bytes=limit)
    assert load_radiograph(path, max_pixels=2_000_000).shape == (1200, 1400)


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", EmptyFileError),
        (b"patient notes, not an image\n" * 20, UnsupportedFormatError),
        (b"%PDF-1.7\n" + b"0" * 500, UnsupportedFormatError),
    ],
)
def test_empty_and_non_image_bytes(data, error):
    with pytest.raises(error) as info:
        load_radiograph(data, name="notes.txt")
    assert "PNG" in str(info.value) and "DICOM" in str(info.value), "the message says what is accepted"


def test_truncated_png_and_jpeg():
    data = png_bytes(gradient(256, 256, maxval=255, dtype=np.uint8))
    with pytest.raises(CorruptImageError):
        load_radiograph(data[: len(data) // 2], name="cut.png")
    buf = io.BytesIO()
    Image.fromarray(gradient(256, 256, maxval=255, dtype=np.uint8)).save(buf, format="JPEG")
    with pytest.raises(RadiographError):
        load_radiograph(buf.getvalue()[:300], name="cut.jpg")


def test_missing_file_is_a_radiograph_error(tmp_path):
    with pytest.raises(RadiographError, match="no such file"):
        load_radiograph(tmp_path / "absent.png")


# --- DICOM pixel pipeline ------------------------------------------------------------------------------------------


def test_rescale_slope_intercept_and_multi_valued_window():
    stored = gradient(maxval=4095).astype(np.uint16)
    ds = make_dataset(stored, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=[1000, 40],
                      WindowWidth=[2000, 400])
    radiograph = load_radiograph(to_bytes(ds), name="ct_like.dcm")
    np.testing.assert_allclose(radiograph.raw, stored * 2.0 - 1024.0)
    assert radiograph.meta["window"] == [1000.0, 2000.0]
    expected = np.clip((radiograph.raw - 999.5) / 1999.0 + 0.5, 0, 1)
    np.testing.assert_allclose(radiograph.pixels, expected, atol=1e-6)


def test_voi_lut_sequence_is_applied():
    stored = gradient(maxval=4095).astype(np.uint16)
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    ds = make_dataset(stored)
    ds.VOILUTSequence = pydicom.Sequence([item])
    radiograph = load_radiograph(to_bytes(ds), name="lut.dcm")
    np.testing.assert_allclose(radiograph.pixels, lut[stored] / 65535.0, atol=1e-6)
    assert radiograph.meta["voi_function"] == "LUT"


def test_no_window_uses_full_range():
    stored = gradient(maxval=4095).astype(np.uint16)
    radiograph = load_radiograph(to_bytes(make_dataset(stored)), name="nowin.dcm")
    assert radiograph.pixels.min() == pytest.approx(0.0, abs=1e-6)
    assert radiograph.pixels.max() == pytest.approx(1.0, abs=1e-6)


def test_jpeg_lossless_dicom_decodes_exactly():
    stored = gradient(48, 56, maxval=4095).astype(np.uint16)
    stored[10:20, 10:30] = 4095
    reference = load_radiograph(to_bytes(make_dataset(stored, WindowCenter=2048, WindowWidth=4096)))
    ds = as_jpeg_lossless(make_dataset(stored, WindowCenter=2048, WindowWidth=4096), stored)
    compressed = load_radiograph(to_bytes(ds), name="lossless.dcm")
    assert compressed.meta["transfer_syntax"].startswith("JPEG Lossless")
    np.testing.assert_array_equal(compressed.raw, reference.raw)
    np.testing.assert_array_equal(compressed.pixels, reference.pixels)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_other_lossless_codecs(syntax):
    stored = gradient(maxval=4095).astype(np.uint16)
    ds = make_dataset(stored, WindowCenter=2048, WindowWidth=4096)
    ds.compress(syntax)
    radiograph = load_radiograph(to_bytes(ds), name="codec.dcm")
    np.testing.assert_array_equal(radiograph.raw, stored.astype(np.float32))


def test_truncated_dicom():
    data = to_bytes(make_dataset(gradient(128, 128)))
    with pytest.raises(CorruptImageError):
        load_radiograph(data[: len(data) - 9000], name="cut.dcm")
    with pytest.raises(RadiographError):
        load_radiograph(data[:200], name="cut.dcm")


def test_dicom_without_pixel_data():
    ds = make_dataset(gradient(8, 8))
    del ds.PixelData
    with pytest.raises(UnsupportedDicomError, match="without pixel data"):
        load_radiograph(to_bytes(ds), name="sr.dcm")


def test_multi_frame_is_refused():
    frames = np.stack([gradient(16, 16)] * 3)
    ds = make_dataset(gradient(16, 16))
    ds.NumberOfFrames = 3
    ds.PixelData = frames.tobytes()
    with pytest.raises(UnsupportedDicomError, match="multi-frame"):
        load_radiograph(to_bytes(ds), name="cine.dcm")


def test_unsupported_transfer_syntax_names_it():
    ds = make_dataset(gradient(16, 16))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnsupportedDicomError) as info:
        load_radiograph(to_bytes(ds), name="video.dcm")
    assert "MPEG2" in str(info.value) and "Supported:" in str(info.value)


# --- re-windowing --------------------------------------------------------------------------------------------------


def test_rewindow_round_trip_and_monochrome1():
    stored = gradient(maxval=4095).astype(np.uint16)
    radiograph = load_radiograph(to_bytes(make_dataset(stored, WindowCenter=2048, WindowWidth=4096)))
    same = rewindow(radiograph, 2048, 4096)
    np.testing.assert_allclose(same.pixels, radiograph.pixels, atol=1e-6)
    narrow = rewindow(radiograph, 1000, 200)
    assert narrow.meta["window"] == [1000.0, 200.0]
    expected = np.clip((radiograph.raw - 999.5) / 199.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(narrow.pixels, expected, atol=1e-6)
    assert 0 < (narrow.pixels == 1).mean() < 1
    assert radiograph.meta["window"] == [2048.0, 4096.0], "the original is not modified"
    mono1 = load_radiograph(to_bytes(make_dataset(stored, photometric="MONOCHROME1", WindowCenter=2048,
                                                  WindowWidth=4096)))
    np.testing.assert_allclose(rewindow(mono1, 1000, 200).pixels, 1.0 - narrow.pixels, atol=1e-6)
    with pytest.raises(ValueError):
        rewindow(radiograph, 100, 0)


def test_rewindow_refuses_non_finite_and_non_positive_windows():
    radiograph = load_radiograph(to_bytes(make_dataset(gradient(), WindowCenter=2048, WindowWidth=4096)))
    for center, width in [(2048, float("inf")), (float("nan"), 100), (float("inf"), 100), (2048, -5), (2048, 0.5),
                          (1e300, 100), (2048, 1e300)]:
        with pytest.raises(InvalidWindowError):
            rewindow(radiograph, center, width)
    assert np.isfinite(rewindow(radiograph, 2048, 1).pixels).all(), "width 1 is a valid (threshold) LINEAR window"


# --- robustness (issue 29): one error hierarchy, bounded work, no cycles -------------------------------------------


def test_radiograph_errors_are_input_errors():
    from xai_core import radiograph
    from xai_core.errors import InputError, XaiError

    for cls in (RadiographError, EmptyFileError, FileTooLargeError, ImageTooLargeError, UnsupportedFormatError,
                CorruptImageError, UnsupportedDicomError, ImageShapeError, NonFinitePixelsError, InvalidWindowError):
        assert issubclass(cls, InputError) and issubclass(cls, XaiError) and issubclass(cls, ValueError)
        assert getattr(radiograph, cls.__name__) is cls, "imaging re-exports the classes of xai_core.radiograph"



@pytest.mark.parametrize("height,width", [(8, 64), (64, 15), (1, 1000), (20, 420), (2000, 50)])
def test_degenerate_shapes_are_refused(height, width):
    with pytest.raises(ImageShapeError, match=r"at least 16 pixels|at most 20:1"):
        load_radiograph(png_bytes(gradient(height, width, maxval=255, dtype=np.uint8)), name="thin.png")


@pytest.mark.parametrize("height,width", [(16, 16), (16, 320), (320, 16)])
def test_smallest_and_most_elongated_accepted_shapes(height, width):
    assert_valid(load_radiograph(png_bytes(gradient(height, width, maxval=255, dtype=np.uint8))), (height, width))


def test_float_tiff_decodes_but_non_finite_pixels_are_refused():
    array = gradient(maxval=65535).astype(np.float32) / 65535.0
    buf = io.BytesIO()
    Image.fromarray(array, mode="F").save(buf, format="TIFF")
    radiograph = load_radiograph(buf.getvalue(), name="float.tif")
    assert_valid(radiograph, array.shape)
    assert np.isfinite(radiograph.raw).all()
    for bad in (np.nan, np.inf, -np.inf, 1e30):
        array[3, 4] = bad
        buf = io.BytesIO()
        Image.fromarray(array, mode="F").save(buf, format="TIFF")
        with pytest.raises(NonFinitePixelsError):
            load_radiograph(buf.getvalue(), name="float.tif")


def test_from_array_refuses_nan():
    with pytest.raises(NonFinitePixelsError):
        Radiograph.from_array(np.full((32, 32), np.nan, np.float32))


def test_two_page_tiff_is_refused():
    buf = io.BytesIO()
    pages = [Image.fromarray(gradient(maxval=255, dtype=np.uint8)) for _ in range(2)]
    pages[0].save(buf, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(UnsupportedFormatError, match="more than one"):
        load_radiograph(buf.getvalue(), name="stack.tif")


@pytest.mark.parametrize(
    "attributes,error",
    [
        ({"WindowCenter": "abc", "WindowWidth": "400"}, InvalidWindowError),
        ({"WindowCenter": "40", "WindowWidth": "-400"}, InvalidWindowError),
        ({"WindowCenter": "40", "WindowWidth": "0"}, InvalidWindowError),
        ({"WindowCenter": "NaN", "WindowWidth": "400"}, InvalidWindowError),
        ({"RescaleSlope": "inf", "RescaleIntercept": "0"}, InvalidValueError),
        ({"RescaleSlope": "1", "RescaleIntercept": "1e300"}, InvalidValueError),
        ({"RescaleSlope": "1e9", "RescaleIntercept": "0"}, NonFinitePixelsError),
    ],
)
def test_unusable_dicom_numbers_are_refused(attributes, error):
    from tests.bad_inputs import dicom

    with pytest.raises(error):
        load_radiograph(dicom(raw=attributes), name="numbers.dcm")


def test_sigmoid_and_linear_exact_windows():
    stored = gradient(maxval=4095).astype(np.uint16)
    for function in ("SIGMOID", "LINEAR_EXACT"):
        radiograph = load_radiograph(to_bytes(make_dataset(stored, WindowCenter=2048, WindowWidth=0.5,
                                                           VOILUTFunction=function)))
        assert_valid(radiograph)
        assert radiograph.meta["voi_function"] == function


def test_deflated_dicom_decodes_like_the_plain_file():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    stored = gradient(maxval=4095).astype(np.uint16)
    plain = load_radiograph(to_bytes(make_dataset(stored, WindowCenter=2048, WindowWidth=4096)))
    ds = make_dataset(stored, WindowCenter=2048, WindowWidth=4096)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = load_radiograph(to_bytes(ds), name="deflated.dcm")
    assert deflated.meta["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    np.testing.assert_array_equal(deflated.pixels, plain.pixels)
    with pytest.raises(FileTooLargeError, match="inflates to more than"):
        load_radiograph(to_bytes(ds), name="deflated.dcm", max_bytes=4096)


def test_compressed_dicom_whose_stream_disagrees_with_rows_columns_is_refused():
    stored = gradient(48, 56, maxval=4095).astype(np.uint16)
    ds = as_jpeg_lossless(make_dataset(stored), stored)
    ds.Rows, ds.Columns = 24, 28
    with pytest.raises(CorruptImageError, match=r"declares 28 x 24 pixels but its JPEG stream holds 56 x 48"):
        load_radiograph(to_bytes(ds), name="lie.dcm")
    ds = make_dataset(stored)
    ds.compress(JPEG2000Lossless)
    ds.Rows = 40
    with pytest.raises(CorruptImageError, match="JPEG 2000 stream holds 56 x 48"):
        load_radiograph(to_bytes(ds), name="lie.dcm")


def test_nesting_depth_is_bounded_before_parsing():
    from tests.bad_inputs import nested_sequences

    assert_valid(load_radiograph(nested_sequences(8), name="nested.dcm"))
    with pytest.raises(CorruptImageError, match="nested more than 64 levels"):
        load_radiograph(nested_sequences(65), name="nested.dcm")


@pytest.mark.parametrize(
    "failure,error",
    [(RecursionError, CorruptImageError), (MemoryError, ImageTooLargeError), (KeyError, CorruptImageError)],
)
def test_unexpected_failures_inside_decoders_become_radiograph_errors(monkeypatch, failure, error):
    import xai_core.dicom
    import xai_core.imaging

    def fail(*args, **kwargs):
        raise failure("deep inside a library\nsecond line")

    monkeypatch.setattr(xai_core.dicom, "_to_radiograph", fail)
    monkeypatch.setattr(xai_core.imaging, "_to_grey_array", fail)
    for data, name in ((to_bytes(make_dataset(gradient())), "x.dcm"), (png_bytes(gradient()), "x.png")):
        with pytest.raises(error) as info:
            load_radiograph(data, name=name)
        assert "\n" not in str(info.value) and name in str(info.value)
