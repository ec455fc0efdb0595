"""The work around the model in compiled code: native.c built with the device's C compiler, loaded with ctypes.

The letterbox (CompiledResizer) and the post-processing (CompiledPostprocessor) do what detector.py's numpy
code does, with the same arithmetic: the same tensors, the same detections, about 1.5 ms less per frame on
a 2-core x86 machine. No library is added for it: OpenCV, the library made for the letterbox, would more
than double the device's dependencies. Where there is no C compiler, or the build or the load fails,
`library()` says why and numpy serves.

The shared library is built once per source, compiler and machine, into `INSPECTOR_NATIVE_DIR` (the
recipe points it into the component's work folder; the install phase builds it through
`python -m inspector --check`), else a folder in the user's cache. `INSPECTOR_NATIVE=off` turns it off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

LOG = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
DIRECTORY_VARIABLE = "INSPECTOR_NATIVE_DIR"
SWITCH_VARIABLE = "INSPECTOR_NATIVE"
# -ffp-contract=off: no fused multiply-adds, so the float arithmetic rounds as numpy's does.
FLAGS = ("-O3", "-std=c99", "-ffp-contract=off", "-fPIC", "-shared")
TUNING = ("-march=native",)  # tried first; a compiler that does not know it builds without
BUILD_TIMEOUT_S = 60


class NativeError(Exception):
    """The compiled code cannot be built or loaded; the message says why."""


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang on the PATH."""
    configured = os.environ.get("CC")
    if configured:
        return shutil.which(configured) or configured
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def build_directory() -> Path:
    configured = os.environ.get(DIRECTORY_VARIABLE)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tag-inspection" / "native"


def cpu_fingerprint() -> bytes:
    """What a -march=native build depends on: the CPU's model and instruction set extensions (Linux), so a
    library built on one CPU is never loaded on another from a shared folder or a copied disk image."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    keys = ("flags", "features", "model name", "cpu implementer", "cpu architecture", "cpu variant", "cpu part")
    wanted = {line.split(":", 1)[0].strip().lower(): line for line in reversed(lines) if ":" in line}
    return "\n".join([platform.machine(), platform.processor(), *(wanted.get(key, "") for key in keys)]).encode()


def _build_error(stderr: str, status: int) -> str:
    """The compiler's first error line (its last lines are often 'compilation terminated.')."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit status {status}"])[0]


def build(directory: Path | None = None, *, cc: str | None = None) -> Path:
    """The shared library for this source, compiler and CPU: built now unless it is there already."""
    cc = cc or compiler()
    if cc is None:
        raise NativeError("no C compiler (cc, gcc or clang on the PATH, or $CC)")
    folder: Path | str = directory or "the build folder"
    try:
        folder = directory or build_directory()
        identity = hashlib.sha256(SOURCE.read_bytes())
        for part in (cc, " ".join(FLAGS), " ".join(TUNING)):
            identity.update(b"\0" + part.encode())
        identity.update(b"\0" + cpu_fingerprint())
        library = folder / f"native-{identity.hexdigest()[:16]}.so"
        if library.is_file():
            return library
        folder.mkdir(parents=True, exist_ok=True)
        # Built under a temporary name and renamed: a library is either complete or absent.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".build-") as work:
            partial = Path(work) / library.name
            errors = []
            for tuning in (TUNING, ()):
                command = [cc, *FLAGS, *tuning, "-o", str(partial), str(SOURCE)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False)  # noqa: S603
                if done.returncode == 0:
                    os.replace(partial, library)
                    return library
                errors.append(_build_error(done.stderr, done.returncode))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:  # RuntimeError: Path.home() unknown
        raise NativeError(f"cannot build {SOURCE.name} with {cc} in {folder}: {error}") from None
    raise NativeError(f"{cc} cannot build {SOURCE.name}: {errors[-1]}")


def load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as error:
        raise NativeError(f"cannot load {path}: {error}") from None
    pointer, integer = ctypes.c_void_p, ctypes.c_int64
    single, double = ctypes.c_float, ctypes.c_double
    lib.letterbox_linear.argtypes = [pointer, integer, pointer, integer, integer, integer, integer, *[pointer] * 9]
    lib.letterbox_linear.restype = None
    lib.postprocess.argtypes = [
        pointer,
        integer,
        integer,
        single,
        double,
        integer,
        integer,
        *[single] * 7,
        *[pointer] * 8,
    ]
    lib.postprocess.restype = integer
    return lib


@lru_cache(maxsize=1)
def library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, or None; what serves and why). Built and loaded once per process."""
    if os.environ.get(SWITCH_VARIABLE, "").strip().lower() in ("off", "0", "false", "no"):
        return None, f"numpy letterbox and post-processing ({SWITCH_VARIABLE} is off)"
    try:
        path = build()
        try:
            lib = load(path)
        except NativeError:  # a library cut short (power lost while it was written): built again, once
            path.unlink(missing_ok=True)
            lib = load(build())
        return lib, f"compiled letterbox and post-processing ({path})"
    except Exception as error:  # whatever goes wrong, numpy serves and the reason is logged
        reason = str(error) if isinstance(error, NativeError) else f"{type(error).__name__}: {error}"
        LOG.warning("compiled code unavailable, numpy letterboxes and post-processes: %s", reason)
        return None, f"numpy letterbox and post-processing (compiled code unavailable: {reason})"


class CompiledResizer:
    """OpenCV's INTER_LINEAR for one source and one target size, in compiled code, into the float tensor.

    Same interface as detector.LinearResizer.resize_into; the taps and weights are detector._linear_taps'.
    """

    def __init__(self, lib: ctypes.CDLL, taps: tuple[np.ndarray, ...], source_shape: tuple[int, int]) -> None:
        x0, x1, wx0, wx1, y0, y1, wy0, wy1 = taps
        self._lib = lib
        self.source_shape = source_shape
        self.shape = (int(y0.size), int(x0.size))
        # Byte offsets of the taps within a row, and the arrays kept alive while their addresses are used.
        self._arrays: list[np.ndarray] = [
            np.ascontiguousarray(x0 * 3, dtype=np.int32),
            np.ascontiguousarray(x1 * 3, dtype=np.int32),
            np.ascontiguousarray(wx0, dtype=np.int32),
            np.ascontiguousarray(wx1, dtype=np.int32),
            np.ascontiguousarray(y0, dtype=np.int64),
            np.ascontiguousarray(y1, dtype=np.int64),
            np.ascontiguousarray(wy0, dtype=np.int32),
            np.ascontiguousarray(wy1, dtype=np.int32),
            np.empty(6 * self.shape[1], dtype=np.int32),
        ]
        self._addresses = [array.ctypes.data for array in self._arrays]

    def resize_into(self, image: np.ndarray, out: np.ndarray) -> None:
        """Write the resized image, divided by 255, into `out`: a (3, height, width) float32 (CHW) view."""
        if image.shape != (*self.source_shape, 3) or image.dtype != np.uint8 or not image.flags.c_contiguous:
            raise ValueError(f"expected a C-contiguous {self.source_shape} uint8 RGB frame, got {image.shape}")
        if (
            out.shape != (3, *self.shape)
            or out.dtype != np.float32
            or not out.flags.writeable
            or out.strides[2] != 4
            or out.strides[0] % 4
            or out.strides[1] % 4
        ):
            raise ValueError(f"expected a writable (3, {self.shape[0]}, {self.shape[1]}) float32 view, unit stride")
        height, width = self.shape
        plane, stride = out.strides[0] // 4, out.strides[1] // 4
        self._lib.letterbox_linear(
            image.ctypes.data, self.source_shape[1], out.ctypes.data, plane, stride, height, width, *self._addresses
        )


_CANDIDATE = np.dtype([("score", "<f4"), ("index", "<i8")], align=True)  # native.c's candidate_t


class CompiledPostprocessor:
    """detector.Detector.postprocess's arithmetic in compiled code, with scratch space kept between frames."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        self._size = (-1, -1)

    def _scratch(self, boxes: int, max_detections: int) -> None:
        if (boxes, max_detections) == self._size:
            return
        self._size = (boxes, max_detections)
        self._order = np.empty(boxes, dtype=_CANDIDATE)
        self._label = np.empty(boxes, dtype=np.int64)
        self._corners = np.empty(5 * boxes, dtype=np.float32)
        self._removed = np.empty(boxes, dtype=np.uint8)
        self._boxes = np.empty((max_detections, 4), dtype=np.float32)
        self._classes = np.empty(max_detections, dtype=np.int64)
        self._scores = np.empty(max_detections, dtype=np.float32)
        self._top = np.empty(1, dtype=np.float32)
        arrays = (self._order, self._label, self._corners, self._removed, self._boxes, self._classes, self._scores)
        self._addresses = [array.ctypes.data for array in (*arrays, self._top)]

    def __call__(
        self,
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
        """(boxes, classes, scores, top score) of `prediction`, a (4 + classes, boxes) float32 array."""
        shape = prediction.shape
        if prediction.ndim != 2 or shape[0] < 5 or shape[1] < 1 or prediction.dtype != np.float32:
            raise ValueError(f"expected a (4 + classes, boxes) float32 output, got {prediction.dtype}{list(shape)}")
        prediction = np.ascontiguousarray(prediction)
        rows, boxes = prediction.shape
        self._scratch(boxes, max_detections)
        count = self._lib.postprocess(
            prediction.ctypes.data,
            rows - 4,
            boxes,
            confidence,
            iou,
            max_candidates,
            max_detections,
            class_offset,
            *padding,
            *gain,
            float(size[1]),
            float(size[0]),
            *self._addresses,
        )
        return (
            self._boxes[:count].tolist(),
            self._classes[:count].tolist(),
            self._scores[:count].tolist(),
            float(self._top[0]),
        )
