"""Telling complete JPEG/PNG images from files Ground Truth could not show, without an image library."""

from __future__ import annotations

import struct
import zlib

import pytest

from labeling.runtime.images import (
    HEAD_BYTES,
    ImageInfo,
    UndecodableImage,
    inspect_image,
    read_image_info,
    skip_reason,
)
from tests.labeling.conftest import BUCKET, image_bytes


def whole(data: bytes) -> ImageInfo:
    return inspect_image(data, data[-1024:], size=len(data))


def test_complete_images_give_their_format_and_size(jpeg, png):
    assert whole(jpeg) == ImageInfo("jpeg", 320, 240)
    assert whole(png) == ImageInfo("png", 320, 240)
    assert whole(image_bytes(3, width=64, height=480)) == ImageInfo("jpeg", 64, 480)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda data: data[: len(data) // 2], "cut short"),
        (lambda data: data[:2000], "cut short"),
        (lambda data: b"hello, this is a text file\n" * 40, "neither JPEG nor PNG"),
        (lambda data: b"\xff\xd8\xff\xda" + data[4:], "scan starts before a frame header"),
    ],
    ids=["jpeg-truncated", "jpeg-header-only", "text-named-jpg", "jpeg-no-frame-header"],
)
def test_broken_jpegs_are_undecodable(jpeg, mangle, message):
    data = mangle(jpeg)
    with pytest.raises(UndecodableImage, match=message):
        whole(data)


def test_broken_pngs_are_undecodable(png):
    with pytest.raises(UndecodableImage, match="cut short"):
        whole(png[: len(png) - 100])
    corrupted = bytearray(png)
    corrupted[20] ^= 0xFF  # inside IHDR's width: the checksum no longer matches
    with pytest.raises(UndecodableImage, match="checksum"):
        whole(bytes(corrupted))
    with pytest.raises(UndecodableImage, match="too short"):
        whole(png[:20])


def test_a_file_named_png_that_holds_a_jpeg_is_refused(jpeg):
    with pytest.raises(UndecodableImage, match="named as png but contains jpeg"):
        inspect_image(jpeg, jpeg[-1024:], size=len(jpeg), expected="png")


def test_empty_png_header_size_is_refused():
    data = struct.pack(">II", 0, 240) + bytes([8, 2, 0, 0, 0])
    ihdr = struct.pack(">I", 13) + b"IHDR" + data + struct.pack(">I", zlib.crc32(b"IHDR" + data))
    png = b"\x89PNG\r\n\x1a\n" + ihdr + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    with pytest.raises(UndecodableImage, match="empty size"):
        whole(png)


@pytest.mark.parametrize(
    ("key", "size", "reason"),
    [
        ("raw-images/a.jpg", 10, None),
        ("raw-images/a.JPEG", 10, None),
        ("raw-images/a.png", 10, None),
        ("raw-images/a.jpg", 0, "zero-byte file"),
        ("raw-images/notes.txt", 10, "not an image file (.txt)"),
        ("raw-images/README", 10, "not an image file (no extension)"),
        ("raw-images/a.bmp", 10, "unsupported image format .bmp (Ground Truth takes JPEG and PNG)"),
    ],
)
def test_listing_level_skip_reasons(key, size, reason):
    assert skip_reason(key, size) == reason


def test_ranged_reads_fetch_more_header_when_metadata_is_large(s3, jpeg):
    # An APP1 segment of 65,533 bytes (e.g. a big EXIF block) pushes the frame header past the first 64 KiB.
    app1 = b"\xff\xe1" + struct.pack(">H", 65535) + b"\x00" * 65533
    big = jpeg[:2] + app1 + app1 + jpeg[2:]
    s3.put_object(Bucket=BUCKET, Key="raw-images/big.jpg", Body=big)
    assert len(big) > 2 * HEAD_BYTES
    assert read_image_info(s3, bucket=BUCKET, key="raw-images/big.jpg", size=len(big)) == ImageInfo("jpeg", 320, 240)


def test_ranged_reads_detect_a_truncated_upload(s3, jpeg):
    cut = jpeg[: len(jpeg) - 300]
    s3.put_object(Bucket=BUCKET, Key="raw-images/cut.jpg", Body=cut)
    with pytest.raises(UndecodableImage, match="end-of-image"):
        read_image_info(s3, bucket=BUCKET, key="raw-images/cut.jpg", size=len(cut))
