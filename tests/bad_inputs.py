"""Known-bad radiograph files, each BUILT in memory by a small recipe (no binary blobs in the repository).

One recipe per cause measured on the loader (issue 29, item 2). `RECIPES` maps a name to a function returning
`(file bytes, file name)`; `tests/test_loader_fuzz.py` asserts each is refused with a `RadiographError` within a
bounded time and memory. The byte helpers (`png`, `tiff`, `splice`, `element`) are shared with the fuzz test.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pydicom
from PIL import Image
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from tests.dicom_factory import make_dataset, to_bytes

Recipe = Callable[[], tuple[bytes, str]]
RECIPES: dict[str, Recipe] = {}


def recipe(name: str) -> Callable[[Recipe], Recipe]:
    def register(fn: Recipe) -> Recipe:
        RECIPES[name] = fn
        return fn

    return register


def gradient(height: int = 32, width: int = 32, maxval: int = 4095, dtype: type = np.uint16) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return ((xx * 7 + yy * 13) % (maxval + 1)).astype(dtype)


# --- byte helpers --------------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(ihdr: bytes, before_idat: bytes = b"", idat: bytes | None = None) -> bytes:
    """A PNG from a raw IHDR payload, extra chunks and an IDAT payload (default: a 32 x 32 grey image)."""
    if idat is None:
        idat = zlib.compress(b"".join(b"\x00" + bytes(range(32)) for _ in range(32)))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + before_idat + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def ihdr(width: int = 32, height: int = 32, depth: int = 8, colour: int = 0) -> bytes:
    return struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)


def tiff_entry(tag: int, kind: int, count: int, value: int | bytes) -> bytes:
    """One 12-byte little-endian TIFF directory entry (value packed left-aligned into 4 bytes)."""
    if isinstance(value, int):
        value = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
    return struct.pack("<HHI", tag, kind, count) + value


def tiff(entries: list[bytes], pixel_bytes: bytes, next_ifd: int = 0) -> bytes:
    """A one-page TIFF: header, one directory at offset 8, then the pixel strip (entries may say offset 0 = strip)."""
    entries = sorted(entries, key=lambda entry: struct.unpack_from("<H", entry)[0])
    directory = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", next_ifd)
    strip = 8 + len(directory)
    directory = directory.replace(struct.pack("<HHI", 273, 4, 1) + b"\x00\x00\x00\x00",
                                  struct.pack("<HHII", 273, 4, 1, strip))
    return b"II*\x00" + struct.pack("<I", 8) + directory + pixel_bytes


def grey_tiff_entries(width: int = 32, height: int = 32, bits: int = 8,
                      sample_format: int | None = None) -> list[bytes]:
    entries = [
        tiff_entry(256, 3, 1, width),
        tiff_entry(257, 3, 1, height),
        tiff_entry(258, 3, 1, bits),
        tiff_entry(259, 3, 1, 1),
        tiff_entry(262, 3, 1, 1),
        tiff_entry(273, 4, 1, 0),
        tiff_entry(277, 3, 1, 1),
        tiff_entry(278, 3, 1, height),
        tiff_entry(279, 4, 1, width * height * bits // 8),
    ]
    if sample_format is not None:
        entries.append(tiff_entry(339, 3, 1, sample_format))
    return entries


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def element(keyword_or_tag: str | int, value: bytes | str, vr: str | None = None, length: int | None = None) -> bytes:
    """One explicit-VR little-endian element; `value` is padded to even length; `length` overrides the header."""
    tag = tag_for_keyword(keyword_or_tag) if isinstance(keyword_or_tag, str) else keyword_or_tag
    vr = vr or dictionary_VR(tag).split(" ")[0]
    raw = value.encode("latin-1") if isinstance(value, str) else value
    if len(raw) % 2:
        raw += b" " if isinstance(value, str) else b"\x00"
    size = len(raw) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    head += struct.pack("<HI", 0, size) if vr.encode() in _LONG_VRS else struct.pack("<H", size & 0xFFFF)
    return head + raw


def _dataset_start(data: bytes) -> int:
    return 144 + struct.unpack_from("<I", data, 140)[0]


def _top_level(data: bytes) -> list[tuple[int, int, int]]:
    """(tag, start, end) of the top-level elements of an explicit-VR little-endian Part 10 file (defined lengths)."""
    out, i = [], _dataset_start(data)
    while i + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, i)
        if data[i + 4 : i + 6] in _LONG_VRS:
            end = i + 12 + struct.unpack_from("<I", data, i + 8)[0]
        else:
            end = i + 8 + struct.unpack_from("<H", data, i + 6)[0]
        out.append(((group << 16) | elem, i, end))
        i = end
    return out


def splice(data: bytes, new: dict[int, bytes], drop: tuple[int, ...] = ()) -> bytes:
    """Replace/insert encoded top-level elements (keyed by tag, kept in tag order) in a Part 10 file."""
    parts = {tag: data[start:end] for tag, start, end in _top_level(data) if tag not in drop}
    parts.update(new)
    return data[: _dataset_start(data)] + b"".join(parts[tag] for tag in sorted(parts))


def dicom(pixels: np.ndarray | None = None, *, raw: dict[str, bytes | str] | None = None,
          **attributes: object) -> bytes:
    """A DICOM file from `make_dataset`, with `raw` values (any bytes/text, e.g. 'abc' for a DS) spliced in."""
    data = to_bytes(make_dataset(gradient() if pixels is None else pixels, **attributes))
    if raw:
        data = splice(data, {tag_for_keyword(k): element(k, v) for k, v in raw.items()})
    return data


def raw_deflate(*parts: tuple[bytes, int]) -> bytes:
    """A raw deflate stream of each `(chunk, repeat)` in turn, built in O(total compressed) time and memory.

    Each chunk is compressed once and ended with a full flush (no back-references across it), so its
    compressed form can simply be repeated."""
    out = []
    for chunk, repeat in parts:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
        out.append((compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)) * repeat)
    out.append(zlib.compressobj(9, zlib.DEFLATED, -15).flush())
    return b"".join(out)


def zlib_stream(*parts: tuple[bytes, int]) -> bytes:
    """`raw_deflate` wrapped as a zlib stream (header + Adler-32), as PNG IDAT needs."""
    adler = 1
    for chunk, repeat in parts:
        for _ in range(repeat):
            adler = zlib.adler32(chunk, adler)
    return b"\x78\xda" + raw_deflate(*parts) + struct.pack(">I", adler)


# --- DICOM LUTs and number strings -----------------------------------------------------------------------------------


def _lut_item(descriptor: list[int], entries: int) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.LUTDescriptor = descriptor
    item.add_new("LUTData", "OW", (np.arange(entries, dtype="<u2") * 16).tobytes())
    return item


@recipe("voi_lut_zero_bits")
def voi_lut_zero_bits() -> tuple[bytes, str]:
    """A VOI LUT whose descriptor says 0 bits per entry (the display scale divides by 2**0 - 1 = 0)."""
    ds = make_dataset(gradient())
    ds.VOILUTSequence = pydicom.Sequence([_lut_item([4096, 0, 0], 4096)])
    return to_bytes(ds), "voi_zero_bits.dcm"


@recipe("voi_lut_short_data")
def voi_lut_short_data() -> tuple[bytes, str]:
    """A VOI LUT declaring 4096 entries that holds 10."""
    ds = make_dataset(gradient())
    ds.VOILUTSequence = pydicom.Sequence([_lut_item([4096, 0, 16], 10)])
    return to_bytes(ds), "voi_short.dcm"


@recipe("modality_lut_bad_bits")
def modality_lut_bad_bits() -> tuple[bytes, str]:
    """A Modality LUT with 12 bits per entry (only 8 or 16 exist)."""
    ds = make_dataset(gradient())
    ds.ModalityLUTSequence = pydicom.Sequence([_lut_item([4096, 0, 12], 4096)])
    return to_bytes(ds), "modality_bits.dcm"


@recipe("modality_lut_short_data")
def modality_lut_short_data() -> tuple[bytes, str]:
    """A Modality LUT declaring 4096 entries that holds 10."""
    ds = make_dataset(gradient())
    ds.ModalityLUTSequence = pydicom.Sequence([_lut_item([4096, 0, 16], 10)])
    return to_bytes(ds), "modality_short.dcm"


@recipe("window_center_text")
def window_center_text() -> tuple[bytes, str]:
    """WindowCenter = 'abc' (a DS that is not a number)."""
    return dicom(raw={"WindowCenter": "abc", "WindowWidth": "4096"}), "wc_abc.dcm"


@recipe("rescale_slope_text")
def rescale_slope_text() -> tuple[bytes, str]:
    """RescaleSlope = 'abc'."""
    return dicom(raw={"RescaleSlope": "abc", "RescaleIntercept": "0"}), "slope_abc.dcm"


@recipe("rows_wrong_length")
def rows_wrong_length() -> tuple[bytes, str]:
    """Rows as a US element of 3 bytes (a length error)."""
    data = dicom()
    tag = tag_for_keyword("Rows")
    return splice(data, {tag: element(tag, b"\x20\x00\x00", "US", length=3) + b"\x00"}), "rows_len3.dcm"


@recipe("rows_empty")
def rows_empty() -> tuple[bytes, str]:
    """Rows present with an empty value."""
    tag = tag_for_keyword("Rows")
    return splice(dicom(), {tag: element(tag, b"", "US")}), "rows_empty.dcm"


@recipe("bits_allocated_wrong_vr")
def bits_allocated_wrong_vr() -> tuple[bytes, str]:
    """BitsAllocated written with VR 'FD' and a 2-byte value (a VR error)."""
    tag = tag_for_keyword("BitsAllocated")
    return splice(dicom(), {tag: element(tag, b"\x10\x00", "FD")}), "bits_vr.dcm"


@recipe("unknown_vr")
def unknown_vr() -> tuple[bytes, str]:
    """WindowWidth with the VR bytes 'ZZ' in an explicit-VR file."""
    data = dicom(WindowCenter=2048, WindowWidth=4096)
    tag = tag_for_keyword("WindowWidth")
    return splice(data, {tag: element(tag, "4096", "ZZ")}), "vr_zz.dcm"


@recipe("element_length_past_end")
def element_length_past_end() -> tuple[bytes, str]:
    """A private OB element declaring 2 GB just before the pixel data: the file ends long before."""
    data = dicom()
    return splice(data, {0x00091010: element(0x00091010, b"\x00" * 64, "OB", length=0x7FFFFFF0)}), "length.dcm"


def nested_sequences(depth: int) -> bytes:
    """A valid DICOM with `depth` nested undefined-length sequences (0040,0260) before the pixel data."""
    sq = struct.pack("<HH", 0x0040, 0x0260) + b"SQ\x00\x00" + b"\xff\xff\xff\xff"
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return splice(dicom(), {0x00400260: (sq + item) * depth + end * depth})


@recipe("nested_sequences_5000")
def nested_sequences_5000() -> tuple[bytes, str]:
    """5,000 nested undefined-length sequences (a recursion bomb: RecursionError)."""
    return nested_sequences(5000), "nested.dcm"


@recipe("dicom_1x1_with_128x128_data")
def dicom_1x1_with_128x128_data() -> tuple[bytes, str]:
    """Rows = Columns = 1 over 128 x 128 pixels of data."""
    ds = make_dataset(gradient(128, 128))
    ds.Rows, ds.Columns = 1, 1
    return to_bytes(ds), "one_by_one.dcm"


def _dicom_number(keyword: str, text: str) -> Recipe:
    def build() -> tuple[bytes, str]:
        raw = {"WindowCenter": "2048", "WindowWidth": "4096"} if keyword.startswith("Window") else {
            "RescaleSlope": "1", "RescaleIntercept": "0"}
        raw[keyword] = text
        return dicom(raw=raw), f"{keyword}_{text}.dcm"

    build.__doc__ = f"{keyword} = {text!r} (displays as NaN/inf or a blank image: a false all-clear)."
    return build


for _keyword in ("WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept"):
    for _text in ("NaN", "inf", "1e300"):
        RECIPES[f"{_keyword.lower()}_{_text.lower()}"] = _dicom_number(_keyword, _text)
RECIPES["windowwidth_negative"] = _dicom_number("WindowWidth", "-100")
RECIPES["windowwidth_zero"] = _dicom_number("WindowWidth", "0")
RECIPES["rescaleslope_zero"] = _dicom_number("RescaleSlope", "0")


# --- rasters -------------------------------------------------------------------------------------------------------


@recipe("png_truncated_ihdr")
def png_truncated_ihdr() -> tuple[bytes, str]:
    """An IHDR chunk of 12 bytes instead of 13 (Pillow: ValueError)."""
    return png(ihdr()[:12]), "ihdr.png"


@recipe("png_truncated_trns")
def png_truncated_trns() -> tuple[bytes, str]:
    """A 1-byte tRNS chunk in an RGB PNG (Pillow: ValueError)."""
    return png(ihdr(colour=2), png_chunk(b"tRNS", b"\x00")), "trns.png"


@recipe("png_ztxt_over_text_limit")
def png_ztxt_over_text_limit() -> tuple[bytes, str]:
    """A zTXt chunk inflating to 2 MB, over Pillow's 1 MB text limit."""
    return png(ihdr(), png_chunk(b"zTXt", b"k\x00\x00" + zlib_stream((b"a" * 65536, 32)))), "ztxt.png"


@recipe("png_iccp_over_text_limit")
def png_iccp_over_text_limit() -> tuple[bytes, str]:
    """An iCCP (colour profile) chunk inflating to 2 MB, over Pillow's 1 MB limit."""
    return png(ihdr(), png_chunk(b"iCCP", b"p\x00\x00" + zlib_stream((b"a" * 65536, 32)))), "iccp.png"


@recipe("png_1_x_49999999")
def png_1_x_49999999() -> tuple[bytes, str]:
    """A ~97 KB PNG of 1 x 49,999,999 pixels (under 50 MP; decoding used to cost 1.2 GB)."""
    rows = 49_999_999
    block = b"\x00\x00" * 1_000_000
    idat = zlib_stream((block, rows // 1_000_000), (b"\x00\x00" * (rows % 1_000_000), 1))
    return png(ihdr(1, rows), idat=idat), "needle.png"


@recipe("tiff_width_ascii")
def tiff_width_ascii() -> tuple[bytes, str]:
    """ImageWidth stored as ASCII text (Pillow: ValueError 'Invalid dimensions')."""
    entries = [e if e[:2] != struct.pack("<H", 256) else tiff_entry(256, 2, 4, b"ab\x00\x00")
               for e in grey_tiff_entries()]
    return tiff(entries, b"\x80" * 1024), "width.tif"


@recipe("tiff_strip_offsets_ascii")
def tiff_strip_offsets_ascii() -> tuple[bytes, str]:
    """StripOffsets stored as ASCII text (Pillow: TypeError)."""
    entries = [e if e[:2] != struct.pack("<H", 273) else tiff_entry(273, 2, 4, b"ab\x00\x00")
               for e in grey_tiff_entries()]
    return tiff(entries, b"\x80" * 1024), "strips.tif"


def _float_tiff(value: float) -> tuple[bytes, str]:
    pixels = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    pixels[5, 7] = value
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="F").save(buf, format="TIFF")
    return buf.getvalue(), f"float_{value}.tif"


@recipe("tiff_float_nan_pixel")
def tiff_float_nan_pixel() -> tuple[bytes, str]:
    """A float TIFF with one NaN pixel."""
    return _float_tiff(float("nan"))


@recipe("tiff_float_inf_pixel")
def tiff_float_inf_pixel() -> tuple[bytes, str]:
    """A float TIFF with one +inf pixel."""
    return _float_tiff(float("inf"))


@recipe("tiff_100000_pages")
def tiff_100000_pages() -> tuple[bytes, str]:
    """A 7.8 MB TIFF of 100,000 16 x 16 pages sharing one strip (counting pages used to take 88 s)."""
    pages, entries = 100_000, 6
    size = 2 + 12 * entries + 4
    strip = 8 + pages * size
    head = struct.pack("<H", entries) + b"".join([
        tiff_entry(256, 3, 1, 16), tiff_entry(257, 3, 1, 16), tiff_entry(262, 3, 1, 1),
        tiff_entry(273, 4, 1, strip), tiff_entry(278, 3, 1, 16), tiff_entry(279, 4, 1, 32),
    ])
    directories = b"".join(head + struct.pack("<I", 8 + (i + 1) * size if i + 1 < pages else 0) for i in range(pages))
    return b"II*\x00" + struct.pack("<I", 8) + directories + b"\x55" * 32, "pages.tif"


# --- size lies inside DICOM ----------------------------------------------------------------------------------------


@recipe("deflated_dicom_1gib_private_element")
def deflated_dicom_1gib_private_element() -> tuple[bytes, str]:
    """A ~1 MB deflated DICOM whose data set inflates to over 1 GiB (a private OB element of 1 GiB)."""
    plain = splice(dicom(), {0x00090010: element(0x00090010, "XAI TEST", "LO")})
    body = plain[_dataset_start(plain):]
    gib = 1 << 30
    header = element(0x00091010, b"", "OB", length=gib)
    split = body.index(struct.pack("<HH", 0x0010, 0x0010))  # the private group 0009 sorts before PatientName
    meta = make_dataset(gradient()).file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    fp = DicomBytesIO()
    fp.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(fp, meta)
    stream = raw_deflate((body[:split] + header, 1), (b"\x00" * (1 << 20), gib >> 20), (body[split:], 1))
    return fp.getvalue() + stream, "deflated.dcm"


def _jpeg_dicom(declared: int, stream: int) -> tuple[bytes, str]:
    pixels = gradient(declared, declared, maxval=255, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    jpeg = bytearray(buf.getvalue())
    struct.pack_into(">HH", jpeg, jpeg.index(b"\xff\xc0") + 5, stream, stream)
    ds = make_dataset(pixels, bits_stored=8)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([bytes(jpeg)])
    ds["PixelData"].VR = "OB"
    return to_bytes(ds), f"jpeg_{declared}_{stream}.dcm"


@recipe("dicom_16x16_holding_16000x16000_jpeg")
def dicom_16x16_holding_16000x16000_jpeg() -> tuple[bytes, str]:
    """Rows = Columns = 16 but the JPEG frame header inside the pixel data says 16000 x 16000 (was 1.2 GB)."""
    return _jpeg_dicom(16, 16000)


@recipe("dicom_16x16_holding_4000x4000_jpeg")
def dicom_16x16_holding_4000x4000_jpeg() -> tuple[bytes, str]:
    """Rows = Columns = 16 but the JPEG frame says 4000 x 4000 (16 MP: under the pixel limit, still a lie)."""
    return _jpeg_dicom(16, 4000)


@recipe("dicom_64x64_holding_16000x16000_j2k")
def dicom_64x64_holding_16000x16000_j2k() -> tuple[bytes, str]:
    """Rows = Columns = 64 but the JPEG 2000 SIZ segment says 16000 x 16000."""
    ds = make_dataset(gradient(64, 64), WindowCenter=2048, WindowWidth=4096)
    ds.compress(JPEG2000Lossless)
    fragment = bytearray(list(generate_fragments(ds.PixelData))[1])  # [0] is the basic offset table
    at = fragment.index(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", fragment, at + 8, 16000, 16000)
    ds.PixelData = encapsulate([bytes(fragment)])
    return to_bytes(ds), "j2k_lie.dcm"
