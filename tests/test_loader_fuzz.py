"""The loader on bad input: a Radiograph with finite pixels in [0, 1], or a RadiographError — nothing else.

Property tests (Hypothesis, deterministic) mutate and truncate valid PNG/TIFF/JPEG/DICOM seeds and write arbitrary
DICOM attributes; the recipe corpus (`tests/bad_inputs.py`) rebuilds every known-bad file and bounds time and memory.
"""

from __future__ import annotations

import io
import resource
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.uid import RLELossless

from tests.bad_inputs import RECIPES, element, gradient, splice
from tests.dicom_factory import as_jpeg_lossless, make_dataset, to_bytes
from xai_core.imaging import RadiographError, load_radiograph

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

settings.register_profile(
    "loader-fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("loader-fuzz")
SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


def _raster(array: np.ndarray, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **options)
    return buf.getvalue()


def _seeds() -> list[tuple[str, bytes]]:
    grey8 = gradient(40, 48, maxval=255, dtype=np.uint8)
    grey16 = gradient(40, 48, maxval=65535)
    rgb = np.stack([grey8, grey8[::-1], grey8[:, ::-1]], -1)
    stored = gradient(32, 40)
    rle = make_dataset(stored, WindowCenter=2048, WindowWidth=4096)
    rle.compress(RLELossless)
    seeds = [
        ("grey.png", _raster(grey8, "PNG")),
        ("sixteen.png", _raster(grey16, "PNG")),
        ("rgba.png", _raster(np.dstack([rgb, grey8]), "PNG")),
        ("grey.jpg", _raster(grey8, "JPEG", quality=90)),
        ("colour.jpg", _raster(rgb, "JPEG", quality=90)),
        ("sixteen.tif", _raster(grey16, "TIFF")),
        ("float.tif", _raster(grey16.astype(np.float32) / 65535.0, "TIFF")),
        ("lzw.tif", _raster(grey8, "TIFF", compression="tiff_lzw")),
        ("plain.dcm", to_bytes(make_dataset(stored, WindowCenter=2048, WindowWidth=4096, RescaleSlope=1,
                                            RescaleIntercept=0))),
        ("mono1.dcm", to_bytes(make_dataset(stored, photometric="MONOCHROME1"))),
        ("lossless.dcm", to_bytes(as_jpeg_lossless(make_dataset(stored), stored))),
        ("rle.dcm", to_bytes(rle)),
    ]
    for folder, pattern in (("images", "*.png"), ("dicom", "*.dcm")):
        seeds += [(path.name, path.read_bytes()) for path in sorted((SAMPLES / folder).glob(pattern))[:1]]
    return seeds


SEEDS = _seeds()
INTERESTING = [0, 1, 2, 15, 16, 255, 256, 4096, 16000, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


def assert_loads_or_refuses(data: bytes, name: str) -> None:
    """The property: a valid Radiograph (finite, [0, 1]) or a one-line RadiographError; anything else fails."""
    try:
        radiograph = load_radiograph(data, name=name)
    except RadiographError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message, message
        return
    pixels = radiograph.pixels
    assert pixels.dtype == np.float32 and pixels.ndim == 2
    assert np.isfinite(pixels).all() and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert np.isfinite(radiograph.raw).all()


def _fix_png_crcs(data: bytearray) -> bytearray:
    """Recompute every chunk CRC, so that mutations reach Pillow's chunk parsers instead of its CRC check."""
    i = 8
    while i + 12 <= len(data):
        length = struct.unpack_from(">I", data, i)[0]
        end = i + 8 + length
        if end + 4 > len(data):
            break
        struct.pack_into(">I", data, end, zlib.crc32(bytes(data[i + 4 : end])))
        i = end + 4
    return data


position = st.one_of(st.integers(0, 1023), st.integers(0, 1 << 24))  # headers sit in front: favour them
mutation = st.one_of(
    st.tuples(st.just("flip"), position, st.integers(0, 7)),
    st.tuples(st.just("byte"), position, st.integers(0, 255)),
    st.tuples(st.just("byte"), st.integers(0, 1 << 24), st.integers(0, 255)),
    st.tuples(st.just("int"), position, st.sampled_from(INTERESTING), st.sampled_from(["<H", ">H", "<I", ">I"])),
    st.tuples(st.just("truncate"), position),
    st.tuples(st.just("delete"), position, st.integers(1, 64)),
    st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=32)),
    st.tuples(st.just("repeat"), position, st.integers(1, 256)),
)


def _mutate(data: bytes, mutations: list[tuple], fix_crc: bool) -> bytes:
    out = bytearray(data)
    for op, raw_pos, *args in mutations:
        pos = raw_pos % (len(out) + 1)
        if op == "flip" and pos < len(out):
            out[pos] ^= 1 << args[0]
        elif op == "byte" and pos < len(out):
            out[pos] = args[0]
        elif op == "int":
            value, fmt = args
            packed = struct.pack(fmt, value & (0xFFFF if fmt.endswith("H") else 0xFFFFFFFF))
            out[pos : pos + len(packed)] = packed
        elif op == "truncate":
            del out[pos:]
        elif op == "delete":
            del out[pos : pos + args[0]]
        elif op == "insert":
            out[pos:pos] = args[0]
        elif op == "repeat":
            out[pos:pos] = out[pos : pos + args[0]]
    if fix_crc and out.startswith(b"\x89PNG"):
        out = _fix_png_crcs(out)
    return bytes(out)


@FUZZ
@given(seed=st.sampled_from(SEEDS), mutations=st.lists(mutation, min_size=1, max_size=3), fix_crc=st.booleans())
def test_mutated_files_load_or_refuse(seed: tuple[str, bytes], mutations: list[tuple], fix_crc: bool) -> None:
    name, data = seed
    assert_loads_or_refuses(_mutate(data, mutations, fix_crc), name)


def test_every_truncation_point_of_every_header_loads_or_refuses() -> None:
    for name, data in SEEDS:
        cuts = {*range(0, min(len(data), 400), 3), *range(0, len(data), max(1, len(data) // 40))}
        for cut in sorted(cuts):
            assert_loads_or_refuses(data[:cut], name)


number_text = st.one_of(
    st.sampled_from(["2048", "4096", "1", "0", "-1024", "0.5", "40\\400"]),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda f: repr(f)[:16]),
    st.integers(-(10**15), 10**15).map(str),
    st.sampled_from(["", "abc", "nan", "-inf", "1e300", "-1e300", "-0", "0", "1", "1\\2", " 7 ", "1e-300", "4096\\"]),
    st.text(alphabet="0123456789+-.eE\\ abc", max_size=16),
)
us_value = st.one_of(
    st.sampled_from([0, 1, 3, 8, 12, 16, 32, 40, 64, 65535]).map(lambda v: struct.pack("<H", v)),
    st.integers(0, 65535).map(lambda v: struct.pack("<H", v)),
    st.binary(max_size=6),
)
VALUES = {
    "WindowCenter": number_text,
    "WindowWidth": number_text,
    "RescaleSlope": number_text,
    "RescaleIntercept": number_text,
    "NumberOfFrames": number_text,
    "VOILUTFunction": st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID", "BOGUS", ""]),
    "PhotometricInterpretation": st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "X", ""]),
    "Rows": us_value,
    "Columns": us_value,
    "BitsAllocated": us_value,
    "BitsStored": us_value,
    "HighBit": us_value,
    "PixelRepresentation": us_value,
    "SamplesPerPixel": us_value,
}


@st.composite
def dicom_attributes(draw: st.DrawFn) -> dict[str, object]:
    """A few attributes at a time (each example breaks little, so the later pipeline stages are reached too)."""
    keys = draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=3, unique=True))
    return {key: draw(VALUES[key]) for key in keys}


lut = st.tuples(st.integers(0, 70000), st.integers(-70000, 70000), st.integers(0, 64), st.integers(0, 5000))
base_pixels = st.sampled_from(["uint16", "uint8", "int16", "lossless"])


def _attribute_file(pixels_kind: str, attributes: dict[str, object], voi_lut: tuple | None,
                    modality_lut: tuple | None) -> bytes:
    stored = {"uint16": gradient(32, 40), "uint8": gradient(32, 40, maxval=255, dtype=np.uint8),
              "int16": (gradient(32, 40).astype(np.int16) - 2048), "lossless": gradient(32, 40)}[pixels_kind]
    ds = make_dataset(stored, bits_stored=8 if stored.dtype == np.uint8 else 12)
    if pixels_kind == "lossless":
        ds = as_jpeg_lossless(ds, stored)
    for keyword, descriptor in (("VOILUTSequence", voi_lut), ("ModalityLUTSequence", modality_lut)):
        if descriptor is not None:
            entries, first, bits, count = descriptor
            item = pydicom.Dataset()
            item.add_new("LUTDescriptor", "US", [entries & 0xFFFF, first & 0xFFFF, bits])
            item.add_new("LUTData", "OW", (np.arange(count, dtype="<u2") * 7).tobytes())
            setattr(ds, keyword, pydicom.Sequence([item]))
    new = {}
    for keyword, value in attributes.items():
        tag = tag_for_keyword(keyword)
        new[tag] = element(tag, value, "US") if isinstance(value, bytes) else element(tag, value)
    return splice(to_bytes(ds), new)


@FUZZ
@given(pixels_kind=base_pixels, attributes=dicom_attributes(), voi_lut=st.none() | lut, modality_lut=st.none() | lut)
def test_arbitrary_dicom_attributes_load_or_refuse(pixels_kind: str, attributes: dict[str, object],
                                                   voi_lut: tuple | None, modality_lut: tuple | None) -> None:
    assert_loads_or_refuses(_attribute_file(pixels_kind, attributes, voi_lut, modality_lut), "attributes.dcm")


# --- the recipe corpus ---------------------------------------------------------------------------------------------

MAX_SECONDS = 5.0
MAX_TRACED_BYTES = 200 * 2**20
MAX_RSS_GROWTH = 500 * 2**20


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_known_bad_file_is_refused_fast_and_small(recipe: str) -> None:
    data, filename = RECIPES[recipe]()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(RadiographError) as info:
            load_radiograph(data, name=filename)
        seconds = time.perf_counter() - start
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert seconds < MAX_SECONDS, f"{recipe}: {seconds:.1f} s"
    assert traced_peak < MAX_TRACED_BYTES, f"{recipe}: {traced_peak / 2**20:.0f} MB traced"
    assert rss_growth < MAX_RSS_GROWTH, f"{recipe}: process grew by {rss_growth / 2**20:.0f} MB"
