"""A minimal PNG codec for 16-bit images, the part of PNG that Pillow cannot do.

Why: Pillow reduces 16-bit colour PNGs to 8 bits per channel when it opens them and cannot write them,
so a restored 16-bit photo would silently lose half its bits. This module reads non-interlaced PNGs of
bit depth 16 (grey, grey + alpha, RGB, RGBA; all five row filters) and writes 16-bit grey or RGB PNGs
(filter None or Up, one zlib stream, no ancillary chunks, so the same pixels always give the same
bytes). Everything else (8-bit, palettes, interlacing) is Pillow's job.

Decoding speed: None and Up rows are whole-array numpy operations and Sub rows a cumulative sum along
each row. Average and Paeth depend on the reconstructed left *and* upper neighbours, so no row can be
done in one step; those images are reconstructed along anti-diagonals (a wavefront): every pixel on
the diagonal r + x = d depends only on diagonals d - 1 and d - 2, so each diagonal is one numpy step
over up to min(H, W) pixels, H + W - 1 steps in all.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

from glmha.errors import GlmhaError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
NONE, SUB, UP, AVERAGE, PAETH = range(5)  # row filter types (PNG specification, section 9)
CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel, for the types read here
_COLOUR_NAMES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}
_IDAT_SIZE = 1 << 20  # bytes of compressed data per IDAT chunk written
_KNOWN_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that decide who decodes a PNG."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlaced: bool

    @property
    def colour_name(self) -> str:
        return _COLOUR_NAMES.get(self.colour_type, f"colour type {self.colour_type}")


def is_png(data: bytes) -> bool:
    return data.startswith(SIGNATURE)


def read_header(data: bytes, *, what: str) -> PngHeader:
    """IHDR of a PNG's bytes (at least the first 33); one-line error naming `what` when absent or damaged."""
    if not is_png(data):
        raise _unreadable(what, "not a PNG file")
    if len(data) < 33:
        raise _unreadable(what, "truncated PNG (the file ends inside its header)")
    length, kind = struct.unpack(">I4s", data[8:16])
    if kind != b"IHDR" or length != 13:
        raise _unreadable(what, "corrupt PNG (the first chunk is not a 13-byte IHDR)")
    if zlib.crc32(data[12:29]) != struct.unpack(">I", data[29:33])[0]:
        raise _unreadable(what, "corrupt PNG (CRC mismatch in IHDR)")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if width == 0 or height == 0 or compression != 0 or filtering != 0 or interlace > 1:
        raise _unreadable(what, f"corrupt PNG (invalid IHDR: {width}x{height}, compression {compression}, "
                                f"filter method {filtering}, interlace {interlace})")
    return PngHeader(width, height, depth, colour, bool(interlace))


def decode_png16(data: bytes, *, what: str) -> np.ndarray:
    """The samples of a non-interlaced 16-bit PNG as uint16 (H, W, S), S = 1, 2, 3 or 4 as stored (alpha
    included). CRCs are checked; a file cut off before IEND, a damaged zlib stream or too little image
    data is a one-line GlmhaError naming `what`."""
    header = read_header(data, what=what)
    if header.bit_depth != 16 or header.colour_type not in CHANNELS:
        raise _unreadable(what, f"this decoder reads 16-bit grey/RGB PNGs, not a {header.bit_depth}-bit "
                                f"{header.colour_name} one")
    if header.interlaced:
        raise GlmhaError(f"{what}: interlaced 16-bit PNGs are not supported; save it without interlacing")
    samples = CHANNELS[header.colour_type]
    bpp = 2 * samples  # bytes per pixel
    stride = header.width * bpp
    expected = header.height * (1 + stride)
    stream = _inflate(_idat_data(data, what), expected, what)
    rows = np.frombuffer(stream, dtype=np.uint8).reshape(header.height, 1 + stride)  # filter byte + row
    kinds = rows[:, 0]
    if int(kinds.max()) > PAETH:
        bad = int(np.flatnonzero(kinds > PAETH)[0])
        raise _unreadable(what, f"corrupt PNG (unknown filter type {int(kinds[bad])} in row {bad})")
    raw = unfilter(rows[:, 1:], kinds, bpp)  # (H, W * bpp) bytes
    return raw.view(">u2").astype(np.uint16).reshape(header.height, header.width, samples)  # (H, W, S)


def _idat_data(data: bytes, what: str) -> bytes:
    """The concatenated IDAT payloads; every chunk's CRC is checked, the file must reach IEND."""
    position = 8
    parts = []
    while True:
        if position + 8 > len(data):
            raise _unreadable(what, "truncated PNG (the file ends before its IEND chunk)")
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            raise _unreadable(what, f"truncated PNG (the file ends inside a {_chunk_name(kind)} chunk)")
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[position + 4:end - 4]) != crc:
            raise _unreadable(what, f"corrupt PNG (CRC mismatch in a {_chunk_name(kind)} chunk)")
        if kind == b"IDAT":
            parts.append(data[position + 8:end - 4])
        elif kind == b"IEND":
            break
        elif kind not in _KNOWN_CRITICAL and not kind[:1].islower():  # ancillary chunks start lower case
            raise _unreadable(what, f"unsupported PNG (unknown critical chunk {_chunk_name(kind)})")
        position = end
    if not parts:
        raise _unreadable(what, "corrupt PNG (no IDAT chunk)")
    return b"".join(parts)


def _chunk_name(kind: bytes) -> str:
    return kind.decode("latin-1") if kind.isalpha() else repr(kind)


def _inflate(compressed: bytes, expected: int, what: str) -> bytes:
    """Exactly `expected` bytes of the zlib stream; bytes beyond them are ignored, as libpng does."""
    inflater = zlib.decompressobj()
    try:
        stream = inflater.decompress(compressed, expected)
    except zlib.error as error:
        raise _unreadable(what, f"corrupt PNG (compressed data: {error})") from None
    if len(stream) < expected:
        raise _unreadable(what, f"truncated PNG ({len(stream)} of {expected} bytes of image data)")
    return stream


def _unreadable(what: str, reason: str) -> GlmhaError:
    return GlmhaError(f"{what}: cannot be read ({reason})")


def unfilter(filtered: np.ndarray, kinds: np.ndarray, bpp: int) -> np.ndarray:
    """Undo the PNG row filters: `filtered` (H, W * bpp) uint8 and the rows' filter types (H,) ->
    the raw bytes (H, W * bpp). Average and Paeth take the wavefront (see the module docstring)."""
    height, stride = filtered.shape
    if np.isin(kinds, (AVERAGE, PAETH)).any():
        width = stride // bpp
        pixels = filtered.reshape(height, width, bpp)  # (H, W * bpp) -> (H, W, bpp)
        return _unfilter_wavefront(pixels, kinds).reshape(height, stride)  # (H, W, bpp) -> (H, W * bpp)
    raw = filtered.copy()
    sub = np.flatnonzero(kinds == SUB)
    if sub.size:
        lanes = filtered[sub].reshape(sub.size, stride // bpp, bpp)  # (rows, W, bpp): one sum per byte lane
        raw[sub] = np.cumsum(lanes, axis=1, dtype=np.uint8).reshape(sub.size, stride)  # wraps mod 256
    for row in np.flatnonzero(kinds == UP):  # top to bottom: the row above is final when its turn comes
        if row:  # row 0's upper neighbours are zeros: its bytes are already final
            np.add(filtered[row], raw[row - 1], out=raw[row])  # modulo 256 (a row at a time beats a cumsum)
    return raw


def _unfilter_wavefront(filtered: np.ndarray, kinds: np.ndarray) -> np.ndarray:
    """(H, W, bpp) filtered bytes -> raw bytes, one anti-diagonal d = r + x per step.

    The diagonals are stored skewed, `skew[d + 2, k + 1]` for the pixel (r, x) with d = r + x and k its
    row r (when H <= W) or its column x (otherwise), so each diagonal is a contiguous slice over at most
    min(H, W) pixels and the neighbours a (left), b (up), c (up-left) are the slices of diagonals d - 1
    and d - 2 shifted by one. Cells off the image, and the two leading pad diagonals, stay zero: exactly
    the zeros PNG uses outside the image.
    """
    height, width, bpp = filtered.shape
    by_row = height <= width
    extent, other = (height, width) if by_row else (width, height)
    diagonals = height + width - 1
    filt = np.zeros((diagonals + 2, extent + 1, bpp), dtype=np.uint8)
    _image_view(filt, height, width, by_row)[...] = filtered  # (H, W, bpp) written onto the diagonals
    skew = np.zeros_like(filt)
    present = [kind_id for kind_id in (SUB, UP, AVERAGE, PAETH) if (kinds == kind_id).any()]
    uniform = len(present) == 1 and bool((kinds == present[0]).all())  # one filter for every row
    for d in range(diagonals):
        lo, hi = max(0, d - other + 1), min(extent - 1, d)
        here = slice(lo + 1, hi + 2)  # k + 1 for k in [lo, hi]
        back = slice(lo, hi + 1)  # k for k in [lo, hi]
        a_slice, b_slice = (here, back) if by_row else (back, here)
        a = skew[d + 1, a_slice].astype(np.int16)  # (n, bpp) left neighbours
        b = skew[d + 1, b_slice].astype(np.int16)  # (n, bpp) upper neighbours
        c = skew[d, back].astype(np.int16)  # (n, bpp) upper-left neighbours
        if not uniform:  # each pixel's row filter, (n, 1); by column, the rows are r = d - x
            row_kind = (kinds[lo:hi + 1] if by_row else kinds[d - hi:d - lo + 1][::-1])[:, None]
        if uniform:
            predictor = _PREDICTORS[present[0]](a, b, c)
        else:
            predictor = np.zeros_like(a)
            for kind_id in present:  # a 0/1 mask per pixel times each predictor: far faster than np.choose/where
                predictor += _PREDICTORS[kind_id](a, b, c) * (row_kind == kind_id)
        skew[d + 2, here] = (filt[d + 2, here] + predictor).astype(np.uint8)  # modulo 256
    return _image_view(skew, height, width, by_row).copy()  # (H, W, bpp) read back off the diagonals


def _image_view(skewed: np.ndarray, height: int, width: int, by_row: bool) -> np.ndarray:
    """The (H, W, bpp) view of a skewed (H + W + 1, extent + 1, bpp) array whose element [r, x] is
    skewed[r + x + 2, (r if by_row else x) + 1]: a strided view, no copy."""
    step_d, step_k, step_byte = skewed.strides
    row_step, col_step = (step_d + step_k, step_d) if by_row else (step_d, step_d + step_k)
    return np.lib.stride_tricks.as_strided(skewed[2:, 1:], shape=(height, width, skewed.shape[2]),
                                           strides=(row_step, col_step, step_byte))


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The Paeth predictor (PNG specification, section 9.4) on int16 arrays: of a, b, c the one closest to
    a + b - c, ties to a then b. Written with 0/1 masks instead of np.where, which is several times slower."""
    up_minus_c, left_minus_c = b - c, a - c
    pa, pb = np.abs(up_minus_c), np.abs(left_minus_c)  # |p - a|, |p - b| for p = a + b - c
    pc = np.abs(up_minus_c + left_minus_c)  # |p - c|
    b_or_c = c + up_minus_c * (pb <= pc)
    return b_or_c + (a - b_or_c) * ((pa <= pb) & (pa <= pc))


_PREDICTORS = {
    SUB: lambda a, b, c: a,
    UP: lambda a, b, c: b,
    AVERAGE: lambda a, b, c: (a + b) >> 1,
    PAETH: _paeth,
}


def encode_png16(pixels: np.ndarray, *, row_filter: int = UP, level: int = 6) -> bytes:
    """A PNG of uint16 (H, W, 1) grey or (H, W, 3) RGB pixels (or (H, W) grey): IHDR, IDAT chunks of
    at most 1 MiB, IEND, nothing else. `row_filter` NONE or UP for every row (Up is the cheap filter
    that still helps zlib on photographs); the bytes depend only on the pixels and these arguments."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]  # (H, W) -> (H, W, 1)
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3) or pixels.dtype != np.uint16:
        raise GlmhaError(f"a 16-bit PNG takes uint16 (H, W, 1 or 3) pixels, got {pixels.dtype} {pixels.shape}")
    if row_filter not in (NONE, UP):
        raise GlmhaError(f"PNG row filter must be 0 (None) or 2 (Up), got {row_filter}")
    height, width, samples = pixels.shape
    if height == 0 or width == 0:
        raise GlmhaError(f"a PNG needs at least one pixel, got {height}x{width}")
    raw = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(height, width * samples * 2)  # rows
    rows = np.empty((height, 1 + raw.shape[1]), dtype=np.uint8)  # filter byte + filtered row
    rows[:, 0] = row_filter
    rows[:, 1:] = raw
    if row_filter == UP:
        rows[1:, 1:] -= raw[:-1]  # wraps modulo 256; row 0's upper neighbours are zeros
    colour_type = 0 if samples == 1 else 2
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    compressed = zlib.compress(rows.tobytes(), level)
    chunks = [_chunk(b"IHDR", header)]
    chunks += [_chunk(b"IDAT", compressed[i:i + _IDAT_SIZE]) for i in range(0, len(compressed), _IDAT_SIZE)]
    chunks.append(_chunk(b"IEND", b""))
    return SIGNATURE + b"".join(chunks)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    """length, type, data, CRC-32 of type + data (PNG specification, section 5.3)."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
