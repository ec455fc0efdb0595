"""Tell images Ground Truth can show from files it cannot, by reading their structure (no decoder needed).

A Lambda function bundles no imaging library, and an image under the raw prefix can be anything: a text
file named `.jpg`, an upload cut short, an empty object. This module reads the header (format, width,
height) and checks that the file ends the way a complete file of that format ends:

* JPEG: starts with SOI (FF D8 FF), a frame header (SOFn) gives the size before the scan starts, and
  the end-of-image marker (FF D9) sits in the last bytes (a little padding after it is tolerated).
* PNG: the 8-byte signature, an IHDR chunk whose CRC matches, and the IEND chunk as the last 12 bytes.

Only what Ground Truth's image tasks take (JPEG and PNG) is accepted.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

IMAGE_SUFFIXES = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}
OTHER_IMAGE_SUFFIXES = frozenset({".bmp", ".gif", ".tif", ".tiff", ".webp", ".heic", ".avif", ".jp2"})
HEAD_BYTES = 64 * 1024
MAX_HEAD_BYTES = 1024 * 1024  # metadata segments (EXIF, ICC) before the JPEG frame header, at most
TAIL_BYTES = 1024  # the JPEG end-of-image marker must lie within the last kilobyte

_JPEG_SOI = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RST0-7 carry no length


class UndecodableImage(ValueError):
    """The bytes are not a complete JPEG or PNG image; the message says what is wrong."""


class NeedMoreBytes(Exception):
    """The header is longer than the bytes read so far; read `size` bytes from the start and ask again."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def skip_reason(key: str, size: int) -> str | None:
    """Why an object under the raw-image prefix cannot go to labeling, judged from its listing entry alone."""
    suffix = PurePosixPath(key).suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        if suffix in OTHER_IMAGE_SUFFIXES:
            return f"unsupported image format {suffix} (Ground Truth takes JPEG and PNG)"
        return f"not an image file ({suffix or 'no extension'})"
    if size == 0:
        return "zero-byte file"
    return None


def inspect_image(head: bytes, tail: bytes, *, size: int, expected: str | None = None) -> ImageInfo:
    """Format and size of a complete image, from its first bytes (`head`) and last bytes (`tail`).

    `size` is the object's total size; `head` may be the whole file. Raises `UndecodableImage` when
    the file is not a complete JPEG or PNG, `NeedMoreBytes` when the header runs past `head`.
    """
    if size <= 0 or not head:
        raise UndecodableImage("empty file")
    if head.startswith(_JPEG_SOI):
        info = _jpeg(head, tail, size=size)
    elif head.startswith(_PNG_SIGNATURE):
        info = _png(head, tail, size=size)
    else:
        raise UndecodableImage(f"neither JPEG nor PNG (starts with {head[:8].hex(' ')})")
    if expected and info.format != expected:
        raise UndecodableImage(f"named as {expected} but contains {info.format}")
    return info


def _jpeg(head: bytes, tail: bytes, *, size: int) -> ImageInfo:
    position = 2
    while True:
        # Markers are FF followed by a code; any number of FF fill bytes may precede the code.
        while position < len(head) and head[position] == 0xFF:
            position += 1
        if position >= len(head):
            _more(head, size)
        marker = head[position]
        position += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker == 0xD9:
            raise UndecodableImage("JPEG ends before its frame header")
        if marker == 0xDA:
            raise UndecodableImage("JPEG scan starts before a frame header gives the image size")
        if position + 2 > len(head):
            _more(head, size)
        (length,) = struct.unpack(">H", head[position : position + 2])
        if length < 2:
            raise UndecodableImage(f"JPEG segment FF{marker:02X} has an invalid length {length}")
        if marker in _JPEG_SOF:
            return _jpeg_frame(head, tail, position, size=size)
        position += length
        if position >= size:
            raise UndecodableImage("JPEG ends inside a header segment")


def _jpeg_frame(head: bytes, tail: bytes, position: int, *, size: int) -> ImageInfo:
    """The size in the frame header at `position`, once the file is known to end with end-of-image."""
    if position + 7 > len(head):
        _more(head, size)
    height, width = struct.unpack(">HH", head[position + 3 : position + 7])
    if width == 0 or height == 0:
        raise UndecodableImage(f"JPEG frame header gives an empty size {width}x{height}")
    window = tail[-TAIL_BYTES:] if len(tail) >= 2 else head[-TAIL_BYTES:]
    if b"\xff\xd9" not in window:
        raise UndecodableImage("JPEG has no end-of-image marker: the file is cut short")
    return ImageInfo("jpeg", width, height)


def _png(head: bytes, tail: bytes, *, size: int) -> ImageInfo:
    if len(head) < 33:
        if size > len(head):
            _more(head, size)
        raise UndecodableImage("PNG is too short to hold its header")
    length, chunk_type = struct.unpack(">I4s", head[8:16])
    if chunk_type != b"IHDR" or length != 13:
        raise UndecodableImage("PNG does not start with an IHDR chunk")
    data = head[16:29]
    (crc,) = struct.unpack(">I", head[29:33])
    if zlib.crc32(b"IHDR" + data) & 0xFFFFFFFF != crc:
        raise UndecodableImage("PNG header checksum does not match")
    width, height = struct.unpack(">II", data[:8])
    if width == 0 or height == 0:
        raise UndecodableImage(f"PNG header gives an empty size {width}x{height}")
    ending = tail[-12:] if len(tail) >= 12 else head[-12:]
    if size < 45 or ending != _PNG_IEND:
        raise UndecodableImage("PNG has no IEND chunk at its end: the file is cut short")
    return ImageInfo("png", width, height)


def _more(head: bytes, size: int) -> None:
    if len(head) >= size:
        raise UndecodableImage("the image header is cut short")
    wanted = min(size, max(2 * len(head), HEAD_BYTES))
    if wanted > MAX_HEAD_BYTES and len(head) >= MAX_HEAD_BYTES:
        raise UndecodableImage(f"no image size in the first {MAX_HEAD_BYTES} bytes")
    raise NeedMoreBytes(min(wanted, MAX_HEAD_BYTES))


def read_image_info(s3: object, *, bucket: str, key: str, size: int) -> ImageInfo:
    """Inspect an S3 object with ranged reads: the first 64 KiB (more if the header needs it) and the last 1 KiB."""
    expected = IMAGE_SUFFIXES.get(PurePosixPath(key).suffix.lower())
    wanted = min(size, HEAD_BYTES)
    while True:
        head = _read_range(s3, bucket, key, f"bytes=0-{wanted - 1}") if size else b""
        tail = head[-TAIL_BYTES:] if wanted >= size else _read_range(s3, bucket, key, f"bytes=-{TAIL_BYTES}")
        try:
            return inspect_image(head, tail, size=size, expected=expected)
        except NeedMoreBytes as more:
            if more.size <= wanted:
                raise UndecodableImage("the image header is cut short") from None
            wanted = more.size


def _read_range(s3: object, bucket: str, key: str, byte_range: str) -> bytes:
    response = s3.get_object(Bucket=bucket, Key=key, Range=byte_range)  # type: ignore[attr-defined]
    body: bytes = response["Body"].read()
    return body
