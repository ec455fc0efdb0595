"""The YOLOv8 ONNX detector: image decoding, letterbox, inference and class-aware NMS.

Runs with onnxruntime, numpy and Pillow only; the letterbox and the post-processing also in compiled
code (native.py, native.c) where the device's C compiler builds it, with the same arithmetic. Every
step reproduces Ultralytics' own prediction path for ONNX models, so the boxes match
`YOLO("model.onnx").predict(...)` on the same files:

- decoding: Pillow, EXIF orientation applied, any colour mode turned into 8-bit RGB the way
  OpenCV's `IMREAD_COLOR` does (alpha dropped, 16-bit samples keep their high byte);
- letterbox: the same scale, rounding and centred padding (value 114) as `LetterBox`, and a resize
  that is bit-exact with OpenCV's `INTER_LINEAR` (fixed-point coefficients, the 2x2 averaging
  OpenCV switches to for an exact 2x reduction, and the rounded mean of 1, 2 or 4 taps its
  arithmetic comes down to when a frame shrinks by a whole factor, as 1920x1080 does into 320 px);
- post-processing: the float32 arithmetic of `non_max_suppression` (best class per box, strict
  thresholds, class offsets of 7680 px, greedy NMS ordered by score) and of `scale_boxes`.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import native
from .config import DEFAULTS, PRECISION_SETTINGS

LOG = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
FP32, INT8 = "fp32", "int8"
DEFAULT_INT8_MAX_MAP50_LOSS = DEFAULTS["int8MaxMap50Loss"]  # auto serves INT8 losing at most one mAP50 point
# The execution providers the configuration may name, by onnxruntime's names; CPU is always the last resort.
# CUDA and TensorRT need the onnxruntime-gpu build, OpenVINO the onnxruntime-openvino build.
EXECUTION_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU_PROVIDER = EXECUTION_PROVIDERS["cpu"]
# Providers on which an INT8 (QDQ) model runs in integer kernels; the CUDA provider runs it in float, slower.
_INT8_PROVIDERS = frozenset({"CPUExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider"})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CONFIDENCE = 0.25  # Ultralytics' predict defaults
DEFAULT_IOU = 0.7
MAX_DETECTIONS = 300
_MAX_NMS_CANDIDATES = 30000
_PAIRWISE_NMS = 512  # up to this many candidates NMS compares all pairs at once (a 512 x 512 matrix)
_CLASS_OFFSET = np.float32(7680)  # max_wh: keeps boxes of different classes apart in one NMS pass
_PAD_VALUE = 114
_COEF_BITS = 11  # OpenCV INTER_RESIZE_COEF_BITS
_COEF_SCALE = np.float32(1 << _COEF_BITS)


class DetectorError(Exception):
    """Base class of the detector's errors; the message says what is wrong and where."""


class ImageError(DetectorError):
    """A frame that cannot be read as an image (corrupt, truncated, not an image, unsupported mode)."""


class ModelError(DetectorError):
    """A model that cannot be served (unreadable, or not a YOLOv8 detection export)."""


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(source: str | Path | bytes, *, name: str | None = None) -> np.ndarray:
    """Decode a file or encoded bytes into an (H, W, 3) uint8 RGB array; raise ImageError if it is not one."""
    label = name or (str(source) if not isinstance(source, bytes) else "frame")
    try:
        handle: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as image:
            image.load()  # decode now: truncated and corrupt data fail here, not later
            upright = ImageOps.exif_transpose(image)
            return to_rgb_array(upright if upright is not None else image)
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (unknown or unsupported file format)") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{label}: image too large ({error})") from None
    except ImageError as error:
        raise ImageError(f"{label}: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        # Pillow raises OSError for truncated data ("image file is truncated"), SyntaxError and
        # ValueError for broken headers, EOFError for cut-off multi-frame files.
        raise ImageError(f"{label}: corrupt or truncated image ({type(error).__name__}: {error})") from None


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> (H, W, 3) uint8 RGB, the way OpenCV's IMREAD_COLOR reads the same file."""
    mode = image.mode
    if mode == "RGB":
        array = np.asarray(image)
    elif mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit integer) grey: keep the high byte of 16-bit samples, like OpenCV.
        values = np.asarray(image).astype(np.int64, copy=False)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        array = np.repeat(grey[..., None], 3, axis=2)
    elif mode == "F":
        grey = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        array = np.repeat(grey[..., None], 3, axis=2)
    else:
        try:
            array = np.asarray(image.convert("RGB"))
        except (ValueError, OSError) as error:
            raise ImageError(f"colour mode {mode} cannot be converted to RGB ({error})") from None
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ImageError(f"colour mode {mode} decoded to an unexpected array {array.dtype}{array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError("image has no pixels")
    return array


def encode_jpeg(image: np.ndarray, *, quality: int = 95) -> bytes:
    """An RGB array as JPEG bytes (for uploading frames that did not arrive as JPEG)."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Letterbox
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Letterbox:
    """Where a source image lands in the model input: resized to (width, height) at (left, top)."""

    width: int
    height: int
    left: int
    top: int
    gain_x: float
    gain_y: float


def letterbox_geometry(source_height: int, source_width: int, input_height: int, input_width: int) -> Letterbox:
    """Ultralytics' LetterBox (centred, no auto-stride, scale-up allowed) and scale_boxes, as numbers."""
    ratio = min(input_height / source_height, input_width / source_width)
    width = max(round(source_width * ratio), 1)
    height = max(round(source_height * ratio), 1)
    left = round((input_width - width) / 2 - 0.1)
    top = round((input_height - height) / 2 - 0.1)
    return Letterbox(
        width=width, height=height, left=left, top=top, gain_x=width / source_width, gain_y=height / source_height
    )


@lru_cache(maxsize=32)
def _linear_taps(source: int, target: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV INTER_LINEAR source indices and 11-bit fixed-point weights along one axis."""
    scale = 1.0 / (target / source)
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(position)
    fraction = (position - index).astype(np.float32)
    index = index.astype(np.int64)
    if clamp:  # OpenCV clamps the horizontal taps at the borders; vertical rows are clamped below
        low, high = index < 0, index >= source - 1
        fraction[low | high] = 0
        index[low] = 0
        index[high] = source - 1
    weight0 = np.rint((np.float32(1) - fraction) * _COEF_SCALE).astype(np.int32)
    weight1 = np.rint(fraction * _COEF_SCALE).astype(np.int32)
    first = np.clip(index, 0, source - 1)
    second = np.clip(index + 1, 0, source - 1)
    for array in (first, second, weight0, weight1):
        array.setflags(write=False)
    return first, second, weight0, weight1


class LinearResizer:
    """OpenCV's INTER_LINEAR for one source and one target size, bit-exact, with buffers reused between frames.

    OpenCV interpolates each needed source row horizontally (11-bit weights, then >> 4), then between two
    such rows (>> 16 each, + 2, >> 2). Here each horizontal tap pair is one gather: the 8 bytes from a
    pixel's first byte hold its R, G, B and the next pixel's (the right-hand tap is always the next pixel,
    or has weight 0 at the border). Rows are copied into a padded buffer first so the last pixel's 8-byte
    read stays inside it. The arithmetic runs on rows of 4 lanes per pixel (R, G, B and one ignored) so
    every numpy pass is one long contiguous loop.
    """

    def __init__(self, source_height: int, source_width: int, height: int, width: int) -> None:
        x0, x1, wx0, wx1 = _linear_taps(source_width, width, True)
        y0, y1, wy0, wy1 = _linear_taps(source_height, height, False)
        if not np.all((x1 == x0 + 1) | (wx1 == 0)):  # _linear_taps guarantees it; the gather relies on it
            raise RuntimeError("horizontal taps are not neighbours")
        rows = np.union1d(y0, y1)  # the source rows the output needs, each interpolated horizontally once
        position = np.zeros(source_height, dtype=np.intp)
        position[rows] = np.arange(rows.size)
        self.source_shape = (source_height, source_width)
        self.shape = (height, width)
        self._rows, self._top_rows, self._bottom_rows = rows.astype(np.intp), position[y0], position[y1]
        self._columns = x0.astype(np.intp)
        stride = source_width * 3 + 8
        self._source = np.zeros((rows.size, stride), dtype=np.uint8)
        self._pixels = np.ndarray((rows.size, source_width), dtype="<u8", buffer=self._source, strides=(stride, 3))
        self._left_weights, self._right_weights = np.repeat(wx0, 4), np.repeat(wx1, 4)
        self._top_weights, self._bottom_weights = wy0[:, None], wy1[:, None]
        self._taps = np.empty((rows.size, width), dtype=np.uint64)
        self._lanes = np.empty((rows.size, width), dtype=np.uint32)
        self._left = np.empty((rows.size, width * 4), dtype=np.int32)
        # The vertical pass writes its top rows where the right taps were (dead by then): less to keep in cache.
        shared = np.empty((max(rows.size, height), width * 4), dtype=np.int32)
        self._right, self._top = shared[: rows.size], shared[:height]
        self._bottom = np.empty((height, width * 4), dtype=np.int32)

    def _interpolate(self, image: np.ndarray) -> np.ndarray:
        """(height, width * 4) int32: the resized pixels as R, G, B, ignored."""
        source_height, source_width = self.source_shape
        lines = image.reshape(source_height, source_width * 3)
        np.take(lines, self._rows, axis=0, out=self._source[:, : source_width * 3], mode="clip")
        taps, lanes, left, right = self._taps, self._lanes, self._left, self._right
        np.copyto(taps, self._pixels[:, self._columns])  # fancy indexing: the fast gather for unaligned items
        np.copyto(lanes, taps, casting="unsafe")  # bytes 0-3: the left pixel's R, G, B
        np.copyto(left, lanes.view(np.uint8).reshape(left.shape))
        taps >>= np.uint64(24)
        np.copyto(lanes, taps, casting="unsafe")  # bytes 3-6: the right pixel's R, G, B
        np.copyto(right, lanes.view(np.uint8).reshape(right.shape))
        left *= self._left_weights
        right *= self._right_weights
        left += right
        left >>= 4  # OpenCV's vertical pass works on (value >> 4) in 16 bits
        top, bottom = self._top, self._bottom
        np.take(left, self._top_rows, axis=0, out=top, mode="clip")
        top *= self._top_weights
        top >>= 16
        np.take(left, self._bottom_rows, axis=0, out=bottom, mode="clip")
        bottom *= self._bottom_weights
        bottom >>= 16
        top += bottom
        top += 2
        top >>= 2
        return top

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The resized (height, width, 3) uint8 image (a new array)."""
        height, width = self.shape
        return self._interpolate(image).reshape(height, width, 4)[:, :, :3].astype(np.uint8)

    def resize_into(self, image: np.ndarray, out: np.ndarray) -> None:
        """Write the resized image, divided by 255, into `out`: a (3, height, width) float32 (CHW) view."""
        height, width = self.shape
        pixels = self._interpolate(image).reshape(height, width, 4)[:, :, :3]
        np.divide(pixels.transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32, casting="unsafe")


_BYTE_LANES = np.uint64(0x00FF00FF00FF00FF)  # bytes 0, 2, 4, 6 of a word as four 16-bit lanes
_LANE_ONES = 0x0001000100010001


def _regular_taps(source: int, target: int, clamp: bool) -> tuple[int, int, int] | None:
    """(first tap, step, taps per output) when an axis shrinks by a whole factor, else None.

    Then every output pixel reads the same one tap (odd factor: weights 2048, 0) or the same two
    neighbouring taps (even factor: 1024, 1024), `step` source pixels apart.
    """
    if source % target:
        return None
    first, second, weight0, weight1 = _linear_taps(source, target, clamp)
    step = source // target
    if not np.array_equal(first, step * np.arange(target) + first[0]):
        return None
    if np.all(weight0 == 1 << _COEF_BITS) and not weight1.any():
        return int(first[0]), step, 1
    if np.all(weight0 == 1 << (_COEF_BITS - 1)) and np.all(weight1 == weight0) and np.all(second == first + 1):
        return int(first[0]), step, 2
    return None


class BlockResizer:
    """OpenCV's INTER_LINEAR, bit-exact, for a shrink by a whole factor on both axes (1920x1080 -> 320x180).

    With the weights of such a shrink OpenCV's fixed-point arithmetic reduces to the rounded mean of the
    1, 2 or 4 taps of each output pixel: (sum + n / 2) >> log2(n) (1024 * 64 >> 16 and the like are exact).
    No gather is needed: the taps of one source row are a strided view of the frame, one 8-byte word
    per output pixel holding both horizontal taps' R, G, B. The sums run on those words as four 16-bit
    lanes (bytes 0, 2, 4, 6 and bytes 1, 3, 5, 7), which never carry into each other (at most 4 * 255).
    """

    def __init__(
        self,
        source_height: int,
        source_width: int,
        height: int,
        width: int,
        *,
        rows: tuple[int, int, int],
        columns: tuple[int, int, int],
    ) -> None:
        (top, row_step, row_taps), (left, column_step, column_taps) = rows, columns
        self.source_shape = (source_height, source_width)
        self.shape = (height, width)
        line = source_width * 3
        self._words = [((top + tap) * line + 3 * left, (row_step * line, 3 * column_step)) for tap in range(row_taps)]
        self._pairs = column_taps == 2
        taps = row_taps * column_taps
        self._shift = np.uint64(taps.bit_length() - 1)
        self._round = np.uint64(taps // 2 * _LANE_ONES)
        self._even = np.empty(self.shape, dtype=np.uint64)
        self._odd = np.empty(self.shape, dtype=np.uint64)
        self._spare = np.empty(self.shape, dtype=np.uint64)

    @classmethod
    def fits(cls, source_height: int, source_width: int, height: int, width: int) -> BlockResizer | None:
        rows, columns = _regular_taps(source_height, height, False), _regular_taps(source_width, width, True)
        if rows is None or columns is None:
            return None
        # The last word read must end inside the frame (an 8-byte word holds 6 bytes of taps).
        last = (rows[0] + rows[2] - 1 + rows[1] * (height - 1)) * source_width * 3 + 3 * (
            columns[0] + columns[1] * (width - 1)
        )
        if last + 8 > source_height * source_width * 3:
            return None
        return cls(source_height, source_width, height, width, rows=rows, columns=columns)

    def _channels(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The resized R, G, B planes as (height, width) uint8 views."""
        if image.shape[:2] != self.source_shape or not image.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous {self.source_shape} frame, got {image.shape}")
        rows, width = self.shape
        even, odd, spare = self._even, self._odd, self._spare
        for index, (offset, strides) in enumerate(self._words):
            words = np.ndarray(self.shape, dtype="<u8", buffer=image, offset=offset, strides=strides)
            if index == 0:  # lanes of even: R0, B0, G1, -; of odd: G0, R1, B1, -
                np.bitwise_and(words, _BYTE_LANES, out=even)
                np.right_shift(words, np.uint64(8), out=odd)
                odd &= _BYTE_LANES
            else:
                np.bitwise_and(words, _BYTE_LANES, out=spare)
                even += spare
                np.right_shift(words, np.uint64(8), out=spare)
                spare &= _BYTE_LANES
                odd += spare
        even += self._round
        if self._pairs:  # R0 + R1 and B0 + B1 in lanes 0 and 1 of spare; G0 + G1 in lane 0 of even
            np.right_shift(odd, np.uint64(16), out=spare)
            spare += even
            even >>= np.uint64(32)
            even += odd
            red_blue, green = spare, even
        else:
            odd += self._round
            red_blue, green = even, odd
        red_blue >>= self._shift  # the neighbouring lane's low bits land above bit 8: the low byte is exact
        green >>= self._shift
        red_blue_bytes = red_blue.view(np.uint8).reshape(rows, width, 8)
        return red_blue_bytes[..., 0], green.view(np.uint8).reshape(rows, width, 8)[..., 0], red_blue_bytes[..., 2]

    def resize(self, image: np.ndarray) -> np.ndarray:
        """The resized (height, width, 3) uint8 image (a new array)."""
        return np.stack(self._channels(image), axis=2)

    def resize_into(self, image: np.ndarray, out: np.ndarray) -> None:
        """Write the resized image, divided by 255, into `out`: a (3, height, width) float32 (CHW) view."""
        for plane, values in zip(out, self._channels(image), strict=True):
            np.divide(values, np.float32(255), out=plane, dtype=np.float32)


@lru_cache(maxsize=4)
def linear_resizer(source_height: int, source_width: int, height: int, width: int) -> LinearResizer | BlockResizer:
    """The resizer of one size pair (cached: a camera sends frames of one size; the buffers are reused)."""
    block = BlockResizer.fits(source_height, source_width, height, width)
    return block if block is not None else LinearResizer(source_height, source_width, height, width)


@lru_cache(maxsize=4)
def tensor_resizer(
    source_height: int, source_width: int, height: int, width: int
) -> native.CompiledResizer | LinearResizer | BlockResizer:
    """The letterbox's resizer of one size pair: compiled where native.library() loads, else numpy's."""
    lib, _ = native.library()
    if lib is None:
        return linear_resizer(source_height, source_width, height, width)
    taps = (*_linear_taps(source_width, width, True), *_linear_taps(source_height, height, False))
    return native.CompiledResizer(lib, taps, (source_height, source_width))


def resize_linear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 like cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)."""
    source_height, source_width = image.shape[:2]
    if (source_width, source_height) == (width, height):
        return image
    if source_width == 2 * width and source_height == 2 * height:
        # OpenCV takes its INTER_AREA path for an exact 2x reduction: the rounded mean of 2x2 blocks,
        # (sum + 2) >> 2, which is what Pillow's reduce(2) computes too, in C.
        return np.asarray(Image.fromarray(image).reduce(2))
    return linear_resizer(source_height, source_width, height, width).resize(np.ascontiguousarray(image))


# --------------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS in float32 like torchvision.ops.nms on (n, 4) boxes x1, y1, x2, y2: indices kept, best first."""
    return _nms_columns(np.ascontiguousarray(boxes.T), scores, iou_threshold)


def _nms_columns(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """nms on (4, n) boxes (rows x1, y1, x2, y2: the layout the model's output comes in).

    Up to _PAIRWISE_NMS boxes (every frame of a trained model at a device's threshold) the IoU of every
    pair is computed at once, with the same float32 arithmetic as box against box; beyond, box by box.
    torchvision compares the float IoU with the double threshold; NaN (two empty boxes) never suppresses.
    """
    count = scores.size
    if count <= 1:
        return np.zeros(count, dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, order]
    areas = (x2 - x1) * (y2 - y1)
    threshold = np.float64(iou_threshold)
    if count <= _PAIRWISE_NMS:
        width = np.minimum(x2[:, None], x2)
        width -= np.maximum(x1[:, None], x1)
        np.maximum(width, np.float32(0), out=width)
        height = np.minimum(y2[:, None], y2)
        height -= np.maximum(y1[:, None], y1)
        np.maximum(height, np.float32(0), out=height)
        width *= height  # the intersections
        union = areas[:, None] + areas
        union -= width
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 for two empty boxes: NaN
            suppresses = np.divide(width, union, out=width) > threshold
        removed = np.zeros(count, dtype=bool)
        kept = []
        for index in range(count):
            if not removed[index]:
                kept.append(index)
                removed |= suppresses[index]
        return order[kept]
    keep = []
    rank = np.arange(count)
    while rank.size:
        i = rank[0]
        keep.append(i)
        rest = rank[1:]
        width = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        height = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = width * height
        with np.errstate(invalid="ignore", divide="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        rank = rest[~(overlap > threshold)]
    return order[np.asarray(keep, dtype=np.int64)]


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in source-image pixels
    class_id: int
    class_name: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(value, 2) for value in self.box],
            "class_id": self.class_id,
            "class_name": self.class_name,
            "score": round(self.score, 5),
        }


@dataclass(frozen=True)
class DetectionResult:
    detections: tuple[Detection, ...]
    top_score: float  # the highest class score of any candidate box, before thresholds and NMS
    width: int  # source image size
    height: int
    latency_ms: float  # letterbox + inference + post-processing


# --------------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelVariant:
    """A model file of the archive at one precision and its recorded test mAP50 (model.json `precisions`)."""

    precision: str
    file: str
    map50: float | None


@dataclass(frozen=True)
class ModelInfo:
    """What model.json (beside model.onnx) and the ONNX metadata say about a model."""

    class_names: tuple[str, ...] | None = None
    input_size: int | None = None
    confidence_threshold: float | None = None
    iou_threshold: float | None = None
    variants: tuple[ModelVariant, ...] = ()  # FP32 first when the manifest lists precisions
    problem: str | None = None  # why `precisions` could not be read (then only model.onnx is served)

    def variant(self, precision: str) -> ModelVariant | None:
        return next((variant for variant in self.variants if variant.precision == precision), None)


def read_manifest(path: Path) -> ModelInfo:
    """model.json (shared/contracts.py): class names, input size, thresholds, precisions; ModelError when malformed.

    A malformed `precisions` entry does not make the model unusable: model.onnx (FP32) still serves, and
    `problem` says why no other precision can.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{path}: cannot read the model manifest ({error})") from None
    if not isinstance(raw, Mapping):
        raise ModelError(f"{path}: the model manifest must be a JSON object")
    try:
        names = tuple(str(name) for name in raw["class_names"])
        info = ModelInfo(
            class_names=names,
            input_size=int(raw["input_size"]),
            confidence_threshold=float(raw["confidence_threshold"]),
            iou_threshold=float(raw["iou_threshold"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelError(f"{path}: missing or invalid field ({type(error).__name__}: {error})") from None
    if not names:
        raise ModelError(f"{path}: class_names is empty")
    for key in ("confidence_threshold", "iou_threshold"):
        if not 0.0 <= getattr(info, key) <= 1.0:  # NaN fails this too
            raise ModelError(f"{path}: {key} must be between 0 and 1, got {raw[key]!r}")
    try:
        variants = _manifest_variants(raw)
    except (TypeError, ValueError) as error:
        return replace(info, problem=f"{path}: precisions cannot be read ({error})")
    return replace(info, variants=variants)


def _manifest_variants(raw: Mapping[str, Any]) -> tuple[ModelVariant, ...]:
    precisions = raw.get("precisions")
    if precisions is None:
        return ()
    if not isinstance(precisions, Mapping):
        raise TypeError("precisions must be an object keyed by precision")
    variants = []
    for precision, entry in precisions.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("file"), str):
            raise ValueError(f"precisions.{precision} needs a file")
        name = entry["file"]
        if Path(name).name != name or not name.endswith(".onnx"):
            raise ValueError(f"precisions.{precision}.file {name!r} is not an .onnx file beside model.json")
        metrics = entry.get("metrics") or {}
        map50 = metrics.get("mAP50") if isinstance(metrics, Mapping) else None
        variants.append(ModelVariant(str(precision), name, float(map50) if map50 is not None else None))
    variants.sort(key=lambda variant: variant.precision != FP32)
    return tuple(variants)


def _metadata_names(metadata: Mapping[str, str]) -> tuple[str, ...] | None:
    """Class names from an Ultralytics export's ONNX metadata (`names`: a dict literal)."""
    raw = metadata.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict) and names and all(isinstance(key, int) for key in names):
        if sorted(names) != list(range(len(names))):
            return None
        return tuple(str(names[index]) for index in range(len(names)))
    if isinstance(names, (list, tuple)) and names:
        return tuple(str(name) for name in names)
    return None


def _check_threshold(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Execution providers and precision
# --------------------------------------------------------------------------------------------------


def provider_names(requested: Sequence[str]) -> tuple[str, ...]:
    """Configuration names (cpu, cuda, tensorrt, openvino) as onnxruntime's, in order, CPU last.

    Raises ValueError for an unknown name.
    """
    names = []
    for name in requested:
        key = str(name).strip().lower()
        if key not in EXECUTION_PROVIDERS:
            raise ValueError(f"unknown execution provider {name!r} (known: {', '.join(EXECUTION_PROVIDERS)})")
        if EXECUTION_PROVIDERS[key] not in names:
            names.append(EXECUTION_PROVIDERS[key])
    if CPU_PROVIDER in names:
        names.remove(CPU_PROVIDER)
    return (*names, CPU_PROVIDER)


def select_providers(requested: Sequence[str], available: Sequence[str]) -> tuple[list[str], list[str]]:
    """The providers to give onnxruntime (CPU last) and, for each requested one left out, why."""
    chosen, reasons = [], []
    for name in provider_names(requested):
        if name == CPU_PROVIDER or name in available:
            chosen.append(name)
        else:
            reasons.append(
                f"{name} is not available in this onnxruntime build (available: {', '.join(available) or 'none'})"
            )
    return chosen, reasons


def choose_precision(info: ModelInfo, setting: str, *, max_map50_loss: float, provider: str) -> tuple[str, str]:
    """(precision to serve, why) for a precision setting of auto, int8 or fp32.

    auto: INT8 when model.json lists an INT8 file whose test mAP50 is at most `max_map50_loss` below FP32's
    and the provider runs INT8 in integer kernels; FP32 otherwise. int8: INT8 when there is a file.
    """
    if setting not in PRECISION_SETTINGS:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_SETTINGS)}, got {setting!r}")
    if setting == FP32:
        return FP32, "precision fp32 configured"
    int8, fp32 = info.variant(INT8), info.variant(FP32)
    if int8 is None:
        missing = info.problem or "model.json lists no INT8 model"
        return FP32, f"precision {setting} configured but {missing}: FP32 serves"
    if setting == INT8:
        return INT8, "precision int8 configured"
    if provider not in _INT8_PROVIDERS:
        return FP32, f"auto: {provider} runs INT8 (QDQ) models in float, slower than FP32"
    if int8.map50 is None or fp32 is None or fp32.map50 is None:
        return FP32, "auto: model.json records no test mAP50 for both INT8 and FP32"
    loss = fp32.map50 - int8.map50
    verdict = (
        f"auto: INT8 test mAP50 {int8.map50:.4f} vs FP32 {fp32.map50:.4f} ({loss * 100:+.2f} points lost, "
        f"tolerance {max_map50_loss * 100:.2f})"
    )
    return (INT8, verdict) if loss <= max_map50_loss + 1e-12 else (FP32, verdict + ": FP32 serves")


class Detector:
    """A loaded YOLOv8 ONNX model that turns RGB images into detections in source pixels.

    Not thread-safe (it reuses its input buffers): use one per thread. `precision`, `precision_reason`,
    `execution_provider` and `warnings` say what serves and why (load_detector fills in the reasons).
    `compiled`: the letterbox and post-processing run in compiled code where native.library() loads
    (same tensors, same detections), else in numpy; False: numpy in any case.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        class_names: Sequence[str] | None = None,
        confidence_threshold: float | None = None,
        iou_threshold: float | None = None,
        input_size: int | None = None,
        threads: int = 0,
        max_detections: int = MAX_DETECTIONS,
        providers: Sequence[str] = ("cpu",),
        compiled: bool = True,
    ) -> None:
        import onnxruntime  # noqa: PLC0415 - keep `import detector` cheap for tools that only decode images

        self.model_path = Path(model_path)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only; our own log says what happened
        if threads > 0:
            options.intra_op_num_threads = threads
        chosen, self.warnings = select_providers(providers, onnxruntime.get_available_providers())
        try:
            self.session = onnxruntime.InferenceSession(str(self.model_path), sess_options=options, providers=chosen)
        except Exception as error:  # onnxruntime raises its own (pybind) exception types
            raise ModelError(f"{self.model_path}: cannot load the ONNX model ({error})") from None
        active = self.session.get_providers()
        self.execution_provider = active[0] if active else CPU_PROVIDER
        if chosen[0] != self.execution_provider:
            self.warnings.append(
                f"{chosen[0]} could not be initialised (see onnxruntime's log); running on {self.execution_provider}"
            )
        for warning in self.warnings:
            LOG.warning("%s: %s", self.model_path.name, warning)
        metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if metadata.get("task", "detect") != "detect":
            raise ModelError(f"{self.model_path}: a {metadata['task']!r} model, expected a detection model")
        if str(metadata.get("end2end", "False")).lower() == "true":
            raise ModelError(f"{self.model_path}: an end-to-end export with NMS inside; expected raw YOLOv8 output")
        self.precision = INT8 if metadata.get("precision") == INT8 else FP32
        self.precision_reason = "the model file given"
        self.input_name, self.input_height, self.input_width = self._input_shape(input_size)
        outputs = self.session.get_outputs()
        self.output_name = outputs[0].name
        self.max_detections = max_detections
        self.confidence_threshold = _check_threshold(
            "confidence threshold", DEFAULT_CONFIDENCE if confidence_threshold is None else confidence_threshold
        )
        self.iou_threshold = _check_threshold("IoU threshold", DEFAULT_IOU if iou_threshold is None else iou_threshold)
        lib = native.library()[0] if compiled else None
        # The letterbox and post-processing in compiled code where it could be built (native.py), else numpy's.
        self.compiled = lib is not None
        self._compiled_postprocess = native.CompiledPostprocessor(lib) if lib is not None else None
        self._tensor = np.zeros((1, 3, self.input_height, self.input_width), dtype=np.float32)
        self._geometry: Letterbox | None = None  # of the frame in _tensor; its padding is filled in
        # One warm-up run: checks the real output shape and takes the first-run cost out of frame one.
        output = self._run(self._tensor)
        self.num_classes = self._check_output(output, class_names)
        names = tuple(class_names) if class_names else _metadata_names(metadata)
        if names is not None and len(names) != self.num_classes:
            names = None  # metadata that does not fit the output is ignored (a manifest mismatch raised above)
        self.class_names: tuple[str, ...] = names or tuple(f"class_{index}" for index in range(self.num_classes))

    # -- loading ------------------------------------------------------------------------------------

    def _input_shape(self, input_size: int | None) -> tuple[str, int, int]:
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{self.model_path}: expected one input (images), found {len(inputs)}")
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ModelError(f"{self.model_path}: input shape {shape} is not [batch, 3, height, width]")
        if "float" not in inputs[0].type:
            raise ModelError(f"{self.model_path}: input type {inputs[0].type}, expected float32")
        height, width = shape[2], shape[3]
        if not (isinstance(height, int) and isinstance(width, int)):
            if input_size is None:
                raise ModelError(
                    f"{self.model_path}: the model's input size is dynamic ({shape}); give the input size "
                    f"(model.json input_size) to run it"
                )
            height = width = int(input_size)
        if height < 32 or width < 32:
            raise ModelError(f"{self.model_path}: input size {height}x{width} is too small")
        return inputs[0].name, height, width

    def _check_output(self, output: np.ndarray, class_names: Sequence[str] | None) -> int:
        expected = "[1, 4 + number of classes, number of boxes] (a YOLOv8 detection export without NMS)"
        if output.ndim != 3 or output.shape[0] != 1 or output.shape[1] < 5 or output.shape[2] < 1:
            raise ModelError(f"{self.model_path}: unexpected output shape {list(output.shape)}; expected {expected}")
        num_classes = int(output.shape[1]) - 4
        if class_names is not None and len(class_names) != num_classes:
            raise ModelError(
                f"{self.model_path}: output shape {list(output.shape)} has {num_classes} class scores but "
                f"{len(class_names)} class names were given; expected {expected}"
            )
        return num_classes

    # -- inference ----------------------------------------------------------------------------------

    def _run(self, tensor: np.ndarray) -> np.ndarray:
        try:
            outputs = self.session.run([self.output_name], {self.input_name: tensor})
        except Exception as error:  # onnxruntime's pybind exceptions
            raise ModelError(f"{self.model_path}: inference failed ({error})") from None
        return np.asarray(outputs[0])

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """Letterbox an (H, W, 3) uint8 RGB image into the model's input tensor (reused buffer)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ImageError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype}{list(image.shape)}")
        height, width = image.shape[:2]
        geometry = letterbox_geometry(height, width, self.input_height, self.input_width)
        tensor = self._tensor
        if geometry != self._geometry:  # the padding stays from one frame to the next of the same size
            tensor.fill(np.float32(_PAD_VALUE) / np.float32(255))
            self._geometry = geometry
        region = tensor[
            0, :, geometry.top : geometry.top + geometry.height, geometry.left : geometry.left + geometry.width
        ]
        if (geometry.width, geometry.height) == (width, height) or (width, height) == (
            2 * geometry.width,
            2 * geometry.height,
        ):
            resized = resize_linear(image, geometry.width, geometry.height)
            np.divide(resized.transpose(2, 0, 1), np.float32(255), out=region)
        else:
            resizer = (tensor_resizer if self.compiled else linear_resizer)(
                height, width, geometry.height, geometry.width
            )
            resizer.resize_into(np.ascontiguousarray(image), region)
        return tensor, geometry

    def detect(self, image: np.ndarray) -> DetectionResult:
        """Detections in an (H, W, 3) uint8 RGB image, boxes in its pixels."""
        started = time.perf_counter()
        tensor, geometry = self.prepare(image)
        output = self._run(tensor)
        if output.ndim != 3 or output.shape[:2] != (1, 4 + self.num_classes):
            raise ModelError(f"{self.model_path}: output shape changed to {list(output.shape)}")
        detections, top_score = self.postprocess(output[0], geometry, image.shape[0], image.shape[1])
        latency = (time.perf_counter() - started) * 1000.0
        return DetectionResult(
            detections=detections, top_score=top_score, width=image.shape[1], height=image.shape[0], latency_ms=latency
        )

    def detect_file(self, source: str | Path | bytes, *, name: str | None = None) -> DetectionResult:
        return self.detect(load_image(source, name=name))

    def postprocess(
        self, prediction: np.ndarray, geometry: Letterbox, height: int, width: int
    ) -> tuple[tuple[Detection, ...], float]:
        """(4 + classes, boxes) raw output -> detections in source pixels, and the top candidate score."""
        if prediction.shape[1] == 0:
            return (), 0.0
        boxes, labels, confidences, top_score = (self._compiled_postprocess or postprocess)(
            prediction,
            confidence=self.confidence_threshold,
            iou=self.iou_threshold,
            max_candidates=_MAX_NMS_CANDIDATES,
            max_detections=self.max_detections,
            class_offset=float(_CLASS_OFFSET),
            padding=(geometry.left, geometry.top),
            gain=(geometry.gain_x, geometry.gain_y),
            size=(height, width),
        )
        names = self.class_names
        return (
            tuple(
                Detection(box=(box[0], box[1], box[2], box[3]), class_id=label, class_name=names[label], score=score)
                for box, label, score in zip(boxes, labels, confidences, strict=True)
            ),
            top_score,
        )


def postprocess(
    prediction: np.ndarray,
    *,
    confidence: float,
    iou: float,
    max_candidates: int,
    max_detections: int,
    class_offset: float,
    padding: tuple[float, float],
    gain: tuple[float, float],
    size: tuple[int, int],
) -> tuple[list[list[float]], list[int], list[float], float]:
    """(boxes, classes, scores, top candidate score) of a (4 + classes, boxes) raw output, in numpy.

    native.CompiledPostprocessor computes the same in compiled code, operation for operation.
    """
    scores = prediction[4:]
    classes = None if scores.shape[0] == 1 else scores.argmax(axis=0)
    best = scores[0] if classes is None else np.take_along_axis(scores, classes[None, :], axis=0)[0]
    top_score = float(best.max()) + 0.0  # -0.0 counts as 0.0 (numpy's max of zeros depends on their order)
    candidates = np.flatnonzero(best > np.float32(confidence))
    if not candidates.size:
        return [], [], [], top_score
    if candidates.size > max_candidates:
        candidates = candidates[np.argsort(-best[candidates], kind="stable")[:max_candidates]]
    chosen = prediction[:4, candidates]  # (4, n): centre x, centre y, width, height
    half = chosen[2:4] / np.float32(2)
    boxes = np.concatenate((chosen[:2] - half, chosen[:2] + half))  # (4, n): x1, y1, x2, y2
    confidences = best[candidates]
    if classes is None:
        keep = _nms_columns(boxes, confidences, iou)[:max_detections]
        labels = [0] * keep.size
    else:
        offsets = classes[candidates].astype(np.float32) * np.float32(class_offset)
        keep = _nms_columns(boxes + offsets, confidences, iou)[:max_detections]
        labels = classes[candidates[keep]].tolist()
    boxes = boxes[:, keep]
    xs, ys = boxes[0::2], boxes[1::2]  # views: x1, x2 and y1, y2
    xs -= np.float32(padding[0])
    ys -= np.float32(padding[1])
    xs /= np.float32(gain[0])
    ys /= np.float32(gain[1])
    np.maximum(boxes, np.float32(0), out=boxes)
    boxes += np.float32(0)  # -0.0 becomes 0.0 whichever zero numpy's maximum returned
    np.minimum(xs, np.float32(size[1]), out=xs)
    np.minimum(ys, np.float32(size[0]), out=ys)
    return boxes.T.tolist(), labels, confidences[keep].tolist(), top_score


def load_detector(
    model_path: str | Path,
    *,
    confidence_threshold: float | None = None,
    iou_threshold: float | None = None,
    threads: int = 0,
    precision: str | None = None,
    int8_max_map50_loss: float = DEFAULT_INT8_MAX_MAP50_LOSS,
    providers: Sequence[str] = ("cpu",),
    compiled: bool = True,
) -> Detector:
    """A detector for model.onnx (or a folder holding it), with model.json beside it when there is one.

    Thresholds: the arguments, else model.json's, else Ultralytics' defaults (0.25, 0.7). Class names:
    model.json's, else the ONNX metadata's, else class_<id>. `precision` None serves the file given;
    auto, int8 or fp32 choose among the files model.json lists (choose_precision). An INT8 model that
    does not load or does not give the detection output is replaced by the FP32 model, and the
    detector's `warnings` say why. `compiled`: as Detector's.
    """
    path = Path(model_path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    manifest_path = path.with_name(MANIFEST_FILE)
    info = read_manifest(manifest_path) if manifest_path.is_file() else ModelInfo()

    confidence = confidence_threshold if confidence_threshold is not None else info.confidence_threshold

    def load(file: Path) -> Detector:
        return Detector(
            file,
            class_names=info.class_names,
            confidence_threshold=confidence,
            iou_threshold=iou_threshold if iou_threshold is not None else info.iou_threshold,
            input_size=info.input_size,
            threads=threads,
            providers=providers,
            compiled=compiled,
        )

    if precision is None:
        detector = load(path)
        listed = next((variant for variant in info.variants if variant.file == path.name), None)
        if listed is not None and listed.precision in (FP32, INT8):
            detector.precision = listed.precision
        return detector
    if not 0.0 <= int8_max_map50_loss <= 1.0:
        raise ValueError(f"INT8 mAP50 tolerance must be between 0 and 1, got {int8_max_map50_loss}")
    provider = select_providers(providers, _available_providers())[0][0]
    serve = partial(_load_precision, path, info, setting=precision, max_map50_loss=int8_max_map50_loss, load=load)
    detector = serve(provider=provider)
    if detector.execution_provider != provider:
        # A provider can be listed and still fail to start (no driver): onnxruntime runs the next one, and
        # the precision (and its reason) must be chosen for that one.
        detector = serve(provider=detector.execution_provider)
    return detector


def _load_precision(
    path: Path, info: ModelInfo, *, setting: str, max_map50_loss: float, provider: str, load: Callable[[Path], Detector]
) -> Detector:
    """The detector of the precision choose_precision picks for `provider`, FP32 when the INT8 file fails."""
    chosen, reason = choose_precision(info, setting, max_map50_loss=max_map50_loss, provider=provider)
    fallback: str | None = None
    if chosen == INT8:
        int8 = info.variant(INT8)
        assert int8 is not None
        try:
            if not path.with_name(int8.file).is_file():
                raise ModelError(f"{path.with_name(int8.file)}: model file not found")
            detector = load(path.with_name(int8.file))
            detector.precision = INT8
        except ModelError as error:
            fallback = f"the INT8 model could not be served ({error}): FP32 serves"
            LOG.error("%s", fallback)
            detector = load(path)
            detector.precision = FP32
    else:
        detector = load(path)
        detector.precision = FP32
        if info.problem:  # a malformed `precisions` entry is the warning, whatever the setting
            fallback = info.problem if setting == FP32 else reason
        elif setting == INT8:
            fallback = reason
    detector.precision_reason = reason
    if fallback:
        detector.warnings.append(fallback)
    return detector


def _available_providers() -> list[str]:
    import onnxruntime  # noqa: PLC0415

    return list(onnxruntime.get_available_providers())
