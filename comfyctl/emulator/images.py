"""Tiny, dependency-free image encoders for the emulator.

The emulator's images are always a single solid colour, which keeps every encoder here
trivial: PNG (what SaveImage/PreviewImage write), a baseline JPEG built from DC
coefficients only (WebSocket preview frames, ``/view?preview=jpeg``) and a lossless WebP
whose prefix codes have a single symbol each (``/view?preview=webp``).
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RGB = tuple[int, int, int]


def rgb_from_int(color: int) -> RGB:
    """Split ``0xRRGGBB`` (the EmptyImage ``color`` input) into channels."""
    color = int(color) & 0xFFFFFF
    return (color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF


# --------------------------------------------------------------------------- PNG


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def encode_png(
    width: int,
    height: int,
    rgb: RGB,
    *,
    alpha: int | None = None,
    text: dict[str, str] | None = None,
    compress_level: int = 4,
) -> bytes:
    """A solid-colour 8-bit RGB (or RGBA when ``alpha`` is given) PNG with tEXt chunks."""
    pixel = bytes(rgb) if alpha is None else bytes((*rgb, alpha))
    color_type = 2 if alpha is None else 6
    row = b"\x00" + pixel * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    chunks = [_png_chunk(b"IHDR", ihdr)]
    for key, value in (text or {}).items():
        payload = key.encode("latin-1", "replace") + b"\x00" + value.encode("latin-1", "replace")
        chunks.append(_png_chunk(b"tEXt", payload))
    chunks.append(_png_chunk(b"IDAT", zlib.compress(row * height, compress_level)))
    chunks.append(_png_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def read_png_info(data: bytes) -> tuple[int, int, RGB] | None:
    """(width, height, colour of the first pixel) of a PNG, or None if it is not one we can
    read (only 8-bit RGB/RGBA, unfiltered first row: what :func:`encode_png` writes)."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    pos = len(PNG_SIGNATURE)
    width = height = depth = color_type = 0
    idat = bytearray()
    try:
        while pos + 8 <= len(data):
            (length,) = struct.unpack(">I", data[pos : pos + 4])
            tag = data[pos + 4 : pos + 8]
            body = data[pos + 8 : pos + 8 + length]
            pos += 12 + length
            if tag == b"IHDR":
                width, height, depth, color_type = struct.unpack(">IIBB", body[:10])
            elif tag == b"IDAT":
                idat += body
            elif tag == b"IEND":
                break
        if not width or depth != 8 or color_type not in (2, 6):
            return (width, height, (128, 128, 128)) if width else None
        raw = zlib.decompressobj().decompress(bytes(idat), 8)
        if len(raw) < 4 or raw[0] != 0:
            return width, height, (128, 128, 128)
        return width, height, (raw[1], raw[2], raw[3])
    except (struct.error, zlib.error):
        return None


# --------------------------------------------------------------------------- JPEG


class _BitWriter:
    """MSB-first bit writer with JPEG 0xFF byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def write(self, value: int, nbits: int) -> None:
        for shift in range(nbits - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.count += 1
            if self.count == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0x00)
                self.acc = 0
                self.count = 0

    def flush(self) -> bytes:
        if self.count:
            self.write((1 << (8 - self.count)) - 1, 8 - self.count)
        return bytes(self.out)


def _category(value: int) -> int:
    return abs(value).bit_length()


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", marker, len(payload) + 2) + payload


def encode_jpeg(width: int, height: int, rgb: RGB) -> bytes:
    """A baseline 4:4:4 JFIF JPEG of one solid colour (DC coefficients only)."""
    r, g, b = rgb
    ycc = (
        0.299 * r + 0.587 * g + 0.114 * b,
        128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
        128 + 0.5 * r - 0.418688 * g - 0.081312 * b,
    )
    # With a quantisation table of ones the DC coefficient of a flat 8x8 block is 8*(v-128).
    dcs = [max(-1024, min(1016, round(8 * (v - 128)))) for v in ycc]
    dc_symbols = sorted({_category(d) for d in dcs} | {0})
    dc_codes = {sym: index for index, sym in enumerate(dc_symbols)}  # all codes 3 bits long

    app0 = _segment(0xFFE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    dqt = _segment(0xFFDB, b"\x00" + b"\x01" * 64)
    sof = _segment(
        0xFFC0,
        struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00",
    )
    dc_bits = bytearray(16)
    dc_bits[2] = len(dc_symbols)
    ac_bits = bytearray(16)
    ac_bits[1] = 1  # a single 2-bit code "00": end of block
    dht = _segment(
        0xFFC4,
        b"\x00" + bytes(dc_bits) + bytes(dc_symbols) + b"\x10" + bytes(ac_bits) + b"\x00",
    )
    sos = _segment(0xFFDA, b"\x03\x01\x00\x02\x00\x03\x00\x00\x3f\x00")

    bits = _BitWriter()
    previous = [0, 0, 0]
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    for _ in range(blocks):
        for comp in range(3):
            diff = dcs[comp] - previous[comp]
            previous[comp] = dcs[comp]
            cat = _category(diff)
            bits.write(dc_codes[cat], 3)
            if cat:
                bits.write(diff if diff > 0 else diff + (1 << cat) - 1, cat)
            bits.write(0b00, 2)
    return b"\xff\xd8" + app0 + dqt + sof + dht + sos + bits.flush() + b"\xff\xd9"


# --------------------------------------------------------------------------- WebP


class _LsbWriter:
    def __init__(self) -> None:
        self.value = 0
        self.count = 0

    def write(self, value: int, nbits: int) -> None:
        self.value |= (value & ((1 << nbits) - 1)) << self.count
        self.count += nbits

    def to_bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def encode_webp(width: int, height: int, rgb: RGB, alpha: int = 255) -> bytes:
    """A lossless (VP8L) WebP of one solid colour: five single-symbol prefix codes, so the
    pixel data itself takes zero bits."""
    bits = _LsbWriter()
    bits.write(0x2F, 8)
    bits.write(width - 1, 14)
    bits.write(height - 1, 14)
    bits.write(1 if alpha != 255 else 0, 1)
    bits.write(0, 3)  # version
    bits.write(0, 1)  # no transform
    bits.write(0, 1)  # no colour cache
    bits.write(0, 1)  # no meta prefix codes
    r, g, b = rgb
    for symbol in (g, r, b, alpha, 0):  # green, red, blue, alpha, distance
        bits.write(1, 1)  # simple code
        bits.write(0, 1)  # one symbol
        bits.write(1, 1)  # 8-bit symbol
        bits.write(symbol, 8)
    payload = bits.to_bytes()
    chunk = b"VP8L" + struct.pack("<I", len(payload)) + payload
    if len(payload) % 2:
        chunk += b"\x00"
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk
