"""The compiled letterbox and post-processing (inspector/native.py, native.c): bit-exact with OpenCV and
with the numpy code, built once, and numpy serving whenever they cannot be built or loaded."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_deployment.components.inference.inspector import detector, native
from edge_deployment.components.inference.inspector.detector import (
    BlockResizer,
    LinearResizer,
    _linear_taps,
    letterbox_geometry,
    linear_resizer,
    load_detector,
)
from edge_deployment.components.inference.inspector.native import CompiledResizer, NativeError
from tests.edge_deployment.device_support import two_precision_model

COMPILER = native.compiler()
needs_compiler = pytest.mark.skipif(COMPILER is None, reason="no C compiler on this machine")
NUMPY = "numpy letterbox and post-processing"
MANIFEST = {"class_names": ["scratch"], "input_size": 64, "confidence_threshold": 0.25, "iou_threshold": 0.45}


@pytest.fixture
def fresh_library() -> Iterator[None]:
    """native.library() and the detector's resizers chosen again, and again after the test."""
    native.library.cache_clear()
    detector.tensor_resizer.cache_clear()
    yield
    native.library.cache_clear()
    detector.tensor_resizer.cache_clear()


def compiled(source: tuple[int, int], target: tuple[int, int]) -> CompiledResizer:
    lib = native.load(native.build())
    taps = (*_linear_taps(source[1], target[1], True), *_linear_taps(source[0], target[0], False))
    return CompiledResizer(lib, taps, source)


def fake_compiler(path: Path, script: str) -> str:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


# --------------------------------------------------------------------------------------------------
# Bit-exact
# --------------------------------------------------------------------------------------------------


@needs_compiler
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((300, 450), (213, 320)),  # the reference photos into 320 px
        ((1080, 1920), (180, 320)),  # full HD: a whole factor (the numpy block path)
        ((720, 1280), (180, 320)),
        ((480, 640), (240, 320)),  # an exact 2x reduction
        ((333, 517), (206, 320)),
        ((100, 37), (320, 118)),  # enlarged: taps clamped at the borders
        ((37, 100), (118, 320)),
        ((7, 9), (96, 96)),
        ((1, 1), (4, 4)),
        ((2, 2), (1, 1)),
        ((1081, 1920), (180, 320)),
    ],
)
def test_the_compiled_letterbox_is_bit_exact_with_opencv_and_numpy(
    source: tuple[int, int], target: tuple[int, int]
) -> None:
    import cv2

    image = np.random.default_rng(sum(source) + sum(target)).integers(0, 256, (*source, 3), dtype=np.uint8)
    expected = cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_LINEAR)
    expected_tensor = expected.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    # Into the picture area of a padded tensor, as the detector writes it: the padding is left alone.
    canvas = np.full((1, 3, target[0] + 5, target[1] + 7), -1.0, dtype=np.float32)
    area = canvas[0, :, 2 : 2 + target[0], 3 : 3 + target[1]]
    compiled(source, target).resize_into(image, area)
    np.testing.assert_array_equal(area, expected_tensor)
    outside = np.ones(canvas.shape, dtype=bool)
    outside[0, :, 2 : 2 + target[0], 3 : 3 + target[1]] = False
    assert (canvas[outside] == -1.0).all()
    numpy_tensor = np.empty((3, *target), dtype=np.float32)
    resizer = linear_resizer(*source, *target)
    assert isinstance(resizer, BlockResizer | LinearResizer)
    resizer.resize_into(image, numpy_tensor)
    np.testing.assert_array_equal(area, numpy_tensor)


@needs_compiler
def test_the_detector_letterboxes_with_the_compiled_code_and_the_same_tensor(tmp_path: Path, fresh_library) -> None:
    model = two_precision_model(tmp_path, MANIFEST, fp32_score=0.9, int8_score=0.8)
    served = load_detector(model, precision="fp32")
    image = np.random.default_rng(3).integers(0, 256, (300, 450, 3), dtype=np.uint8)
    geometry = letterbox_geometry(300, 450, 64, 64)
    assert isinstance(detector.tensor_resizer(300, 450, geometry.height, geometry.width), CompiledResizer)
    with_compiled = np.array(served.prepare(image)[0])
    served._geometry = None  # the padding is written again
    numpy_resizer = linear_resizer(300, 450, geometry.height, geometry.width)
    detector.tensor_resizer.cache_clear()
    original = native.library
    native.library = lambda: (None, "numpy letterbox (test)")  # type: ignore[assignment]
    try:
        assert detector.tensor_resizer(300, 450, geometry.height, geometry.width) is numpy_resizer
        np.testing.assert_array_equal(served.prepare(image)[0], with_compiled)
    finally:
        native.library = original  # type: ignore[method-assign]


@needs_compiler
def test_a_frame_or_tensor_of_another_shape_is_refused() -> None:
    resizer = compiled((300, 450), (213, 320))
    tensor = np.empty((3, 213, 320), dtype=np.float32)
    with pytest.raises(ValueError, match=r"C-contiguous \(300, 450\) uint8 RGB frame"):
        resizer.resize_into(np.zeros((301, 450, 3), np.uint8), tensor)
    with pytest.raises(ValueError, match=r"C-contiguous"):
        resizer.resize_into(np.asfortranarray(np.zeros((300, 450, 3), np.uint8)), tensor)
    frame = np.zeros((300, 450, 3), np.uint8)
    with pytest.raises(ValueError, match=r"writable \(3, 213, 320\) float32 view, unit stride"):
        resizer.resize_into(frame, np.empty((3, 213, 320), dtype=np.float64))
    with pytest.raises(ValueError, match=r"float32 view, unit stride"):
        resizer.resize_into(frame, np.empty((3, 213, 640), np.float32)[:, :, ::2])
    read_only = np.empty((3, 213, 320), np.float32)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match=r"writable"):
        resizer.resize_into(frame, read_only)


# --------------------------------------------------------------------------------------------------
# Post-processing: the same detections as numpy's, operation for operation
# --------------------------------------------------------------------------------------------------


def options(**changes: object) -> dict[str, object]:
    """Post-processing settings: a device's defaults at 320 px, a 450x300 frame, with `changes`."""
    settings: dict[str, object] = {
        "confidence": 0.25,
        "iou": 0.7,
        "max_candidates": 30000,
        "max_detections": 300,
        "class_offset": 7680.0,
        "padding": (0, 53),
        "gain": (320 / 450, 213 / 300),
        "size": (300, 450),
    }
    return {**settings, **changes}


def compiled_postprocessor() -> native.CompiledPostprocessor:
    return native.CompiledPostprocessor(native.load(native.build()))


def bits(result: tuple) -> tuple:
    """A post-processing result with every float as its bytes: == on floats cannot tell 0.0 from -0.0."""
    boxes, classes, scores, top = result
    return np.array(boxes, np.float32).tobytes(), classes, np.array(scores, np.float32).tobytes(), repr(top)


def crowded_prediction(seed: int, *, classes: int, boxes: int) -> np.ndarray:
    """A raw output with what NMS must get right: overlapping boxes, equal scores, duplicates, empty boxes,
    boxes beyond the frame, scores on the threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 330, (2, boxes)).astype(np.float32)
    sizes = rng.choice([0.0, 1.0, 8.0, 40.0, 400.0], (2, boxes)).astype(np.float32) * rng.uniform(0.5, 1.5, (2, boxes))
    scores = rng.choice([0.1, 0.25, 0.3, 0.5, 0.5, 0.7, 0.9], (classes, boxes)) + rng.choice(
        [0.0, 0.0, 1e-3], (classes, boxes)
    )
    prediction = np.concatenate((centres, sizes.astype(np.float32), scores.astype(np.float32)))
    prediction[:, boxes // 2 : boxes // 2 + 5] = prediction[:, boxes // 3 : boxes // 3 + 5]  # exact duplicates
    return np.ascontiguousarray(prediction, dtype=np.float32)


@needs_compiler
@pytest.mark.parametrize("classes", [1, 2, 5])
@pytest.mark.parametrize(
    "limits",  # confidence, IoU, most NMS candidates, most detections
    [
        (0.25, 0.7, 30000, 300),
        (0.001, 0.45, 30000, 300),
        (0.25, 0.45, 7, 300),
        (0.001, 0.5, 30000, 3),
        (0.5, 0, 50, 10),
    ],
)
@pytest.mark.parametrize("seed", range(4))
def test_the_compiled_post_processing_gives_numpys_detections(classes: int, limits: tuple, seed: int) -> None:
    confidence, iou, max_candidates, max_detections = limits
    # Up to 512 candidates numpy compares all pairs at once, beyond box by box: both are checked.
    prediction = crowded_prediction(seed, classes=classes, boxes=400 if seed % 2 else 1200)
    settings = options(confidence=confidence, iou=iou, max_candidates=max_candidates, max_detections=max_detections)
    expected = detector.postprocess(prediction, **settings)
    assert bits(compiled_postprocessor()(prediction, **settings)) == bits(expected)
    assert len(expected[0]) > 0 or confidence == 0.5


@needs_compiler
@pytest.mark.parametrize("seed", range(6))
def test_the_compiled_post_processing_of_odd_numbers_gives_numpys_too(seed: int) -> None:
    """NaN and infinite scores and coordinates, signed zeros: what a broken model could answer."""
    rng = np.random.default_rng(seed)
    prediction = crowded_prediction(seed, classes=3, boxes=300)
    odd = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32), 60)
    prediction.flat[rng.choice(prediction.size, 60, replace=False)] = odd
    settings = options(confidence=0.2, iou=0.5, padding=(3, 0), gain=(0.5, 0.5), size=(640, 480))
    with np.errstate(invalid="ignore"):
        expected = detector.postprocess(prediction, **settings)
    assert bits(compiled_postprocessor()(prediction, **settings)) == bits(expected)


@needs_compiler
@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        (np.zeros((4, 10), np.float32), r"float32\[4, 10\]"),  # no class score
        (np.zeros((5, 0), np.float32), r"float32\[5, 0\]"),  # no box
        (np.zeros((5, 10), np.float64), r"float64\[5, 10\]"),
        (np.zeros((1, 5, 10), np.float32), r"float32\[1, 5, 10\]"),
    ],
)
def test_the_compiled_post_processing_refuses_what_is_not_an_output(prediction: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match="expected a \\(4 \\+ classes, boxes\\) float32 output, got " + message):
        compiled_postprocessor()(prediction, **options())


@needs_compiler
def test_the_compiled_post_processing_of_an_empty_or_nan_output() -> None:
    compiled, settings = compiled_postprocessor(), options()
    quiet = np.zeros((5, 84), dtype=np.float32)
    assert compiled(quiet, **settings) == detector.postprocess(quiet, **settings) == ([], [], [], 0.0)
    quiet[4, 7] = np.nan
    boxes, classes, scores, top = compiled(quiet, **settings)
    assert (boxes, classes, scores) == ([], [], []) and np.isnan(top)
    assert np.isnan(detector.postprocess(quiet, **settings)[3])


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


@needs_compiler
def test_the_library_is_built_once_per_source_compiler_and_cpu(tmp_path: Path, monkeypatch) -> None:
    calls = tmp_path / "calls"
    counting = fake_compiler(tmp_path / "counting-cc", f'echo x >> "{calls}"\nexec {COMPILER} "$@"\n')
    first = native.build(tmp_path / "native", cc=counting)
    built = calls.read_text().count("x")
    second = native.build(tmp_path / "native", cc=counting)
    assert first == second and first.is_file() and first.name.startswith("native-")
    assert calls.read_text().count("x") == built, "built again"
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [first.name]  # no build leftovers
    assert native.build(tmp_path / "native", cc=COMPILER) != first  # another compiler: another library
    # A library built for another CPU (a shared folder, a copied disk image) is not this CPU's.
    monkeypatch.setattr(native, "cpu_fingerprint", lambda: b"another cpu: flags sse2")
    assert native.build(tmp_path / "native", cc=counting) != first


def test_the_cpu_fingerprint_names_the_instruction_sets() -> None:
    fingerprint = native.cpu_fingerprint().decode()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = [
            line for line in cpuinfo.read_text().splitlines() if line.split(":")[0].strip() in ("flags", "Features")
        ]
        assert flags and flags[-1] in fingerprint


@needs_compiler
def test_a_library_cut_short_is_built_again_once(tmp_path: Path, monkeypatch, fresh_library) -> None:
    monkeypatch.setenv("INSPECTOR_NATIVE_DIR", str(tmp_path / "native"))
    library = native.build()
    library.write_bytes(library.read_bytes()[:100])  # power lost while it was written
    lib, why = native.library()
    assert lib is not None and why == f"compiled letterbox and post-processing ({library})"
    assert library.stat().st_size > 100


def test_without_a_home_folder_numpy_serves_and_says_why(tmp_path: Path, monkeypatch, fresh_library) -> None:
    for name in ("INSPECTOR_NATIVE_DIR", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    monkeypatch.setattr(native, "compiler", lambda: "/usr/bin/cc")
    lib, why = native.library()
    assert lib is None
    assert why.startswith(f"{NUMPY} (compiled code unavailable: cannot build native.c with /usr/bin/cc")
    assert "Could not determine home directory" in why


@needs_compiler
def test_a_compiler_without_march_native_builds_without_it(tmp_path: Path) -> None:
    picky = fake_compiler(
        tmp_path / "picky-cc",
        'for a in "$@"; do [ "$a" = "-march=native" ] && { echo "unknown flag -march=native" >&2; exit 1; }; done\n'
        f'exec {COMPILER} "$@"\n',
    )
    library = native.build(tmp_path / "native", cc=picky)
    assert library.is_file()
    native.load(library)


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            'echo "native.c:1: error: broken toolchain" >&2\nexit 1\n',
            "cannot build native.c: native.c:1: error",
        ),
        ("exit 3\n", "cannot build native.c: exit status 3"),
        (  # a compiler without the C library's headers: the error, not the last line
            'printf "native.c:10:10: fatal error: math.h: No such file or directory\\ncompilation terminated.\\n" >&2\n'
            "exit 1\n",
            "cannot build native.c: native.c:10:10: fatal error: math.h: No such file or directory$",
        ),
    ],
    ids=["error", "silent", "no-headers"],
)
def test_a_compiler_that_fails_is_a_native_error_naming_why(tmp_path: Path, script: str, message: str) -> None:
    failing = fake_compiler(tmp_path / "failing-cc", script)
    with pytest.raises(NativeError, match=message):
        native.build(tmp_path / "native", cc=failing)
    assert not list((tmp_path / "native").glob("*.so"))


def test_a_library_that_does_not_load_is_a_native_error(tmp_path: Path) -> None:
    broken = tmp_path / "native-broken.so"
    broken.write_bytes(b"not a shared library")
    with pytest.raises(NativeError, match=f"cannot load {broken}"):
        native.load(broken)


# --------------------------------------------------------------------------------------------------
# numpy serves when the compiled code cannot
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environment", "reason"),
    [
        (
            {"CC": "/nonexistent/cc"},
            "numpy letterbox and post-processing (compiled code unavailable: cannot build native.c with",
        ),
        ({"PATH": "", "CC": ""}, "numpy letterbox and post-processing (compiled code unavailable: no C compiler"),
        ({"INSPECTOR_NATIVE": "off"}, "numpy letterbox and post-processing (INSPECTOR_NATIVE is off)"),
    ],
    ids=["compiler-missing", "no-compiler", "switched-off"],
)
def test_without_the_compiled_code_numpy_serves_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_library, environment: dict[str, str], reason: str
) -> None:
    monkeypatch.setenv("INSPECTOR_NATIVE_DIR", str(tmp_path / "native"))  # nothing built there
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    lib, why = native.library()
    assert lib is None and why.startswith(reason)
    model = two_precision_model(tmp_path / "model", MANIFEST, fp32_score=0.9, int8_score=0.8)
    served = load_detector(model, precision="fp32")
    image = np.random.default_rng(5).integers(0, 256, (300, 450, 3), dtype=np.uint8)
    (detection,) = served.detect(image).detections
    assert round(detection.score, 3) == 0.9
    geometry = letterbox_geometry(300, 450, 64, 64)
    assert isinstance(detector.tensor_resizer(300, 450, geometry.height, geometry.width), LinearResizer)
    assert not served.compiled


def test_the_install_check_builds_the_compiled_code_and_says_what_serves(tmp_path: Path) -> None:
    import subprocess
    import sys

    component = Path(detector.__file__).parents[1]
    environment = {**os.environ, "PYTHONPATH": str(component), "INSPECTOR_NATIVE_DIR": str(tmp_path / "native")}
    done = subprocess.run(
        [sys.executable, "-m", "inspector", "--check"], capture_output=True, text=True, env=environment, check=True
    )
    last = done.stdout.strip().splitlines()[-1]
    if COMPILER is None:
        assert last.startswith(f"{NUMPY} (compiled code unavailable: no C compiler")
    else:
        library = next((tmp_path / "native").glob("native-*.so"))
        assert last == f"compiled letterbox and post-processing ({library})"
