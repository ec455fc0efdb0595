"""The device detector (onnxruntime + numpy + Pillow) against what Ultralytics predicts on the same ONNX file.

- parity on the tiny model the project's own training code trains (`tiny_model`), on the held-out
  synthetic tags and on copies of other sizes and colour modes;
- parity of the post-processing (multi-class NMS, thresholds, scaling back) on a hand-made model
  whose raw output is known, through Ultralytics' whole prediction path;
- the pre-processing step by step against OpenCV and Ultralytics' LetterBox;
- bad images and bad models: a clear error, never a crash.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge_deployment.components.inference.inspector import native
from edge_deployment.components.inference.inspector.detector import (
    BlockResizer,
    Detection,
    Detector,
    ImageError,
    LinearResizer,
    ModelError,
    letterbox_geometry,
    linear_resizer,
    load_detector,
    load_image,
    nms,
    resize_linear,
)
from tests.edge_deployment.device_support import constant_model, iou, restore_pillow_open
from tests.model_fixtures import TinyModel

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPONENT_DIR = REPO_ROOT / "edge_deployment" / "components" / "inference"
PARITY_CONF = 0.001  # the tiny model is barely trained: a low threshold gives boxes to compare
PARITY_IOU = 0.45
CLASS_NAMES = ("scratch", "dent", "stain")
ULTRALYTICS_METADATA = {  # what an Ultralytics export writes, so Ultralytics can load the hand-made models
    "stride": "32",
    "task": "detect",
    "batch": "1",
    "imgsz": "[64, 64]",
    "names": "{0: 'scratch', 1: 'dent', 2: 'stain'}",
}


@pytest.fixture(autouse=True)
def _device_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_pillow_open(monkeypatch)


def ultralytics_boxes(model: Path, image: Path, *, conf: float, iou_threshold: float, size: int) -> list[Detection]:
    from ultralytics import YOLO

    result = YOLO(str(model), task="detect").predict(
        str(image), conf=conf, iou=iou_threshold, imgsz=size, verbose=False, device="cpu"
    )[0]
    return [
        Detection(
            box=tuple(float(v) for v in box), class_id=int(cls), class_name=result.names[int(cls)], score=float(s)
        )
        for box, cls, s in zip(
            result.boxes.xyxy.numpy(), result.boxes.cls.numpy(), result.boxes.conf.numpy(), strict=True
        )
    ]


def assert_same_detections(ours: list[Detection], theirs: list[Detection], where: str) -> None:
    """Same number of boxes; each of theirs has one of ours: same class, score within 1e-3, IoU >= 0.99."""
    assert len(ours) == len(theirs), f"{where}: {len(ours)} boxes, Ultralytics found {len(theirs)}"
    unmatched = list(ours)
    for expected in theirs:
        candidates = [d for d in unmatched if d.class_id == expected.class_id]
        assert candidates, f"{where}: no box of class {expected.class_id} left for {expected}"
        best = max(candidates, key=lambda d: iou(d.box, expected.box))
        assert iou(best.box, expected.box) >= 0.99, f"{where}: {best.box} vs Ultralytics {expected.box}"
        assert abs(best.score - expected.score) <= 1e-3, f"{where}: score {best.score} vs {expected.score}"
        assert best.class_name == expected.class_name
        unmatched.remove(best)


# --------------------------------------------------------------------------------------------------
# Parity on the model trained by the project's training code
# --------------------------------------------------------------------------------------------------


# Every parity test below runs on both ways the detector works: its compiled letterbox and post-processing
# (native.c, where this machine has a C compiler) and numpy's.
BOTH_PATHS = pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])


def _detector(*args: Any, compiled: bool, **options: Any) -> Detector:
    detector = load_detector(*args, compiled=compiled, **options)
    assert detector.compiled == (compiled and native.compiler() is not None)
    return detector


def _variants(source: Path, target: Path) -> list[Path]:
    """The held-out tag as it is, and as frames of other sizes and colour modes."""
    image = Image.open(source).convert("RGB")
    target.mkdir(parents=True, exist_ok=True)
    variants = {
        "large.jpg": image.resize((640, 480)),
        "exact-2x.png": image.resize((192, 144)),  # exactly twice the letterboxed size: OpenCV's area path
        "portrait.png": image.resize((150, 400)),
        "grey.png": image.convert("L"),
        "alpha.png": image.convert("RGBA"),
        "tiny.bmp": image.resize((31, 17)),
    }
    paths = []
    for name, variant in variants.items():
        path = target / f"{source.stem}-{name}"
        variant.save(path, quality=92) if name.endswith(".jpg") else variant.save(path)
        paths.append(path)
    return paths


@pytest.mark.slow
@BOTH_PATHS
def test_detector_matches_ultralytics_on_the_projects_trained_model(
    tiny_model: TinyModel, tmp_path: Path, compiled: bool
) -> None:
    detector = _detector(
        tiny_model.onnx_path, confidence_threshold=PARITY_CONF, iou_threshold=PARITY_IOU, compiled=compiled
    )
    assert (detector.input_height, detector.input_width) == (tiny_model.input_size, tiny_model.input_size)
    images = [sample.path for sample in tiny_model.samples]
    images += _variants(images[0], tmp_path / "variants") + _variants(images[1], tmp_path / "variants")
    compared = 0
    for image in images:
        ours = list(detector.detect_file(image).detections)
        theirs = ultralytics_boxes(
            tiny_model.onnx_path, image, conf=PARITY_CONF, iou_threshold=PARITY_IOU, size=tiny_model.input_size
        )
        assert_same_detections(ours, theirs, image.name)
        compared += len(theirs)
    assert compared > 0, "no boxes were compared: lower PARITY_CONF"


@pytest.mark.slow
@BOTH_PATHS
@pytest.mark.parametrize("conf", [0.25, 0.1])
def test_detector_matches_ultralytics_at_device_thresholds_on_a_model_that_detects(
    trained_model: TinyModel, conf: float, tmp_path: Path, compiled: bool
) -> None:
    """Parity where it matters on a device: real detections, at the thresholds a device runs with."""
    detector = _detector(trained_model.onnx_path, confidence_threshold=conf, iou_threshold=0.7, compiled=compiled)
    images = [sample.path for sample in trained_model.samples]
    images += _variants(images[0], tmp_path / "variants")
    top_scores = []
    compared = 0
    for image in images:
        result = detector.detect_file(image)
        top_scores.append(result.top_score)
        theirs = ultralytics_boxes(
            trained_model.onnx_path, image, conf=conf, iou_threshold=0.7, size=trained_model.input_size
        )
        assert_same_detections(list(result.detections), theirs, image.name)
        compared += len(theirs)
    assert max(top_scores) >= 0.25, f"the model should detect scratches by now; top scores {top_scores}"
    assert compared > 0, f"no box at confidence {conf} to compare; top scores {top_scores}"


@pytest.mark.slow
@BOTH_PATHS
@pytest.mark.parametrize("conf", [0.25, 0.1])
def test_detector_matches_ultralytics_on_the_int8_model_the_training_code_makes(
    trained_model: TinyModel, int8_trained_model: Path, conf: float, tmp_path: Path, compiled: bool
) -> None:
    """The other precision a device may serve: same decoding, NMS and scaling on the quantized file."""
    detector = _detector(int8_trained_model, confidence_threshold=conf, iou_threshold=0.7, compiled=compiled)
    assert detector.precision == "int8"
    assert detector.class_names == trained_model.class_names  # from the metadata the quantizer keeps
    images = [sample.path for sample in trained_model.samples]
    images += _variants(images[0], tmp_path / "variants")
    compared = 0
    for image in images:
        theirs = ultralytics_boxes(
            int8_trained_model, image, conf=conf, iou_threshold=0.7, size=trained_model.input_size
        )
        assert_same_detections(list(detector.detect_file(image).detections), theirs, image.name)
        compared += len(theirs)
    assert compared > 0, f"no box at confidence {conf} to compare"


@pytest.mark.slow
def test_a_frame_with_nothing_found_is_an_empty_result_like_ultralytics(tiny_model: TinyModel) -> None:
    # At the thresholds it was evaluated with, the barely trained model finds nothing on these tags.
    detector = load_detector(tiny_model.onnx_path, confidence_threshold=0.99)
    image = tiny_model.samples[0].path
    result = detector.detect_file(image)
    assert result.detections == ()
    assert 0.0 <= result.top_score < 0.99
    assert ultralytics_boxes(tiny_model.onnx_path, image, conf=0.99, iou_threshold=0.7, size=detector.input_width) == []


# --------------------------------------------------------------------------------------------------
# Post-processing parity on a model whose raw output is known
# --------------------------------------------------------------------------------------------------


def _crowded_prediction(seed: int, *, count: int = 300) -> np.ndarray:
    """Overlapping boxes of three classes with random scores, as a 64 px model would answer."""
    rng = np.random.default_rng(seed)
    prediction = np.zeros((1, 7, count), dtype=np.float32)
    prediction[0, 0:2] = rng.uniform(10, 54, (2, count))
    prediction[0, 2:4] = rng.uniform(4, 40, (2, count))
    prediction[0, 4:] = rng.uniform(0, 1, (3, count))
    return prediction


@BOTH_PATHS
@pytest.mark.parametrize(
    ("seed", "size", "conf", "iou_threshold"),
    [(1, (320, 240), 0.25, 0.45), (2, (97, 203), 0.5, 0.7), (3, (64, 64), 0.05, 0.3)],
)
def test_multi_class_nms_and_scaling_match_ultralytics(
    tmp_path: Path, seed: int, size: tuple[int, int], conf: float, iou_threshold: float, *, compiled: bool
) -> None:
    model = constant_model(tmp_path / "model.onnx", _crowded_prediction(seed), metadata=ULTRALYTICS_METADATA)
    image = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(image)
    detector = _detector(model, confidence_threshold=conf, iou_threshold=iou_threshold, compiled=compiled)
    assert detector.class_names == CLASS_NAMES  # from the ONNX metadata (no model.json here)
    ours = list(detector.detect_file(image).detections)
    theirs = ultralytics_boxes(model, image, conf=conf, iou_threshold=iou_threshold, size=64)
    assert len({d.class_id for d in theirs}) == 3, "the case should exercise class-aware NMS"
    assert_same_detections(ours, theirs, f"seed {seed}")
    for detection in ours:
        x1, y1, x2, y2 = detection.box
        assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]


@pytest.mark.parametrize("count", [1, 40, 512, 700])  # all pairs at once up to 512 boxes, box by box beyond
def test_nms_keeps_what_torchvision_keeps(count: int) -> None:
    import torch
    import torchvision

    rng = np.random.default_rng(count)
    corner = rng.uniform(0, 300, (count, 2)).astype(np.float32)
    boxes = np.concatenate([corner, corner + rng.uniform(0, 60, (count, 2)).astype(np.float32)], axis=1)
    boxes[::7, 2:] = boxes[::7, :2]  # some empty boxes (IoU NaN: never suppress)
    scores = rng.choice(np.linspace(0.3, 0.9, 13), count).astype(np.float32)  # ties keep the input order
    for threshold in (0.3, 0.45, 0.7):
        expected = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).numpy()
        np.testing.assert_array_equal(nms(boxes, scores, threshold), expected)


def test_nms_is_class_aware_and_boxes_come_back_in_source_pixels(tmp_path: Path) -> None:
    # Two identical boxes of different classes both stay; a weaker overlapping box of the same class goes.
    prediction = np.zeros((1, 6, 4), dtype=np.float32)
    prediction[0, :4, 0] = [32, 32, 20, 20]
    prediction[0, 4, 0] = 0.9  # class 0
    prediction[0, :4, 1] = [32, 32, 20, 20]
    prediction[0, 5, 1] = 0.8  # class 1, same place
    prediction[0, :4, 2] = [33, 32, 20, 20]
    prediction[0, 4, 2] = 0.6  # class 0, overlaps the first: suppressed
    prediction[0, :4, 3] = [10, 10, 4, 4]
    prediction[0, 4, 3] = 0.2  # under the threshold
    model = constant_model(tmp_path / "model.onnx", prediction)
    detector = load_detector(model, confidence_threshold=0.25, iou_threshold=0.5)
    # A 128 x 64 frame: scaled by 0.5 into 64 x 32, padded 16 px above and below.
    result = detector.detect(np.zeros((64, 128, 3), dtype=np.uint8))
    assert [(d.class_id, d.class_name, round(d.score, 3)) for d in result.detections] == [
        (0, "class_0", 0.9),
        (1, "class_1", 0.8),
    ]
    assert result.detections[0].box == pytest.approx((44.0, 12.0, 84.0, 52.0))
    assert result.top_score == pytest.approx(0.9)
    assert (result.width, result.height) == (128, 64)


# --------------------------------------------------------------------------------------------------
# Pre-processing, step by step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((240, 320), (72, 96)),
        ((480, 640), (240, 320)),
        ((100, 37), (96, 36)),
        ((50, 60), (300, 360)),
        ((7, 9), (96, 96)),
        ((479, 641), (96, 128)),
        ((2, 2), (1, 1)),
        ((1080, 1920), (540, 960)),
        ((1080, 1920), (360, 640)),
    ],
)
def test_resize_is_bit_exact_with_opencv_inter_linear(source: tuple[int, int], target: tuple[int, int]) -> None:
    import cv2

    image = np.random.default_rng(sum(source)).integers(0, 256, (*source, 3), dtype=np.uint8)
    expected = cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_linear(image, target[1], target[0]), expected)


@pytest.mark.parametrize(
    ("source", "target", "path"),
    [
        ((1080, 1920), (180, 320), BlockResizer),  # full HD into a 320 model: 2 x 2 taps, 6 apart
        ((720, 1280), (180, 320), BlockResizer),
        ((2160, 3840), (180, 320), BlockResizer),
        ((1080, 1920), (360, 640), BlockResizer),  # odd factor: one tap
        ((63, 96), (21, 32), BlockResizer),
        ((90, 120), (30, 40), BlockResizer),  # odd rows, even columns
        ((5, 8), (5, 2), BlockResizer),  # rows kept, columns shrunk
        ((1080, 1920), (1080, 640), LinearResizer),  # the last 8-byte word would end past the frame
        ((300, 450), (213, 320), LinearResizer),  # the reference photos: no whole factor
        ((1081, 1920), (180, 320), LinearResizer),
    ],
)
def test_whole_factor_shrinks_take_the_block_path_and_stay_bit_exact(
    source: tuple[int, int], target: tuple[int, int], path: type
) -> None:
    import cv2

    image = np.random.default_rng(sum(source) + sum(target)).integers(0, 256, (*source, 3), dtype=np.uint8)
    resizer = linear_resizer(*source, *target)
    assert type(resizer) is path
    expected = cv2.resize(image, (target[1], target[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_linear(image, target[1], target[0]), expected)
    tensor = np.full((3, *target), -1, dtype=np.float32)
    resizer.resize_into(image, tensor)
    np.testing.assert_array_equal(tensor, expected.transpose(2, 0, 1).astype(np.float32) / np.float32(255))


def test_the_block_path_refuses_a_frame_of_another_size_or_layout() -> None:
    resizer = linear_resizer(1080, 1920, 180, 320)
    assert isinstance(resizer, BlockResizer)
    frame = np.zeros((1080, 1920, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="C-contiguous"):
        resizer.resize(np.zeros((720, 1280, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        resizer.resize(np.asfortranarray(frame))


@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (720, 1280), (300, 450), (1920, 1080)])
def test_letterbox_of_camera_and_reference_sizes_equals_ultralytics(tmp_path: Path, height: int, width: int) -> None:
    """The device's own sizes (full HD, HD, the reference photos) into a 320 px model, tensor for tensor."""
    import cv2
    from ultralytics.data.augment import LetterBox

    model = constant_model(tmp_path / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32), input_shape=(1, 3, 320, 320))
    detector = load_detector(model)
    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    bgr = LetterBox((320, 320), auto=False, stride=32)(image=cv2.imread(str(path)))
    expected = bgr[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    for _ in range(2):  # the second frame of a size reuses the buffers and the padding
        tensor, _geometry = detector.prepare(load_image(path))
        np.testing.assert_array_equal(tensor, expected)


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [
        ("RGB", "jpg"),
        ("L", "png"),
        ("RGBA", "png"),
        ("P", "png"),
        ("LA", "png"),
        ("I;16", "png"),
        ("RGB", "bmp"),
        ("RGB", "tif"),
    ],
)
def test_decoding_any_colour_mode_matches_opencv(tmp_path: Path, mode: str, suffix: str) -> None:
    import cv2

    rng = np.random.default_rng(5)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / f"frame.{suffix}"
    image.save(path)
    expected = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(load_image(path), expected)
    np.testing.assert_array_equal(load_image(path.read_bytes()), expected)


def test_exif_orientation_is_applied_like_opencv(tmp_path: Path) -> None:
    import cv2

    image = Image.fromarray(np.random.default_rng(6).integers(0, 256, (20, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    decoded = load_image(path)
    assert decoded.shape == (50, 20, 3)
    np.testing.assert_array_equal(decoded, cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1])


@pytest.mark.parametrize(("height", "width"), [(240, 320), (320, 240), (64, 64), (17, 300), (1000, 3)])
def test_letterbox_tensor_equals_ultralytics_preprocessing(tmp_path: Path, height: int, width: int) -> None:
    import cv2
    from ultralytics.data.augment import LetterBox

    model = constant_model(tmp_path / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32), input_shape=(1, 3, 64, 96))
    detector = load_detector(model)
    assert (detector.input_height, detector.input_width) == (64, 96)  # read from the model
    path = tmp_path / "frame.png"
    Image.fromarray(np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    tensor, geometry = detector.prepare(load_image(path))
    bgr = LetterBox((64, 96), auto=False, stride=32)(image=cv2.imread(str(path)))
    expected = bgr[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    np.testing.assert_array_equal(tensor, expected)
    assert geometry == letterbox_geometry(height, width, 64, 96)


def test_frames_of_changing_sizes_each_get_their_own_letterbox(tmp_path: Path) -> None:
    """The padding is kept from frame to frame of one size: a frame of another size must not see the old one."""
    from ultralytics.data.augment import LetterBox

    model = constant_model(tmp_path / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32), input_shape=(1, 3, 64, 96))
    detector = load_detector(model)
    rng = np.random.default_rng(7)
    for height, width in [(48, 200), (48, 200), (200, 48), (64, 96), (640, 960), (48, 200)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        tensor, _ = detector.prepare(image)
        bgr = LetterBox((64, 96), auto=False, stride=32)(image=np.ascontiguousarray(image[..., ::-1]))
        expected = bgr[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
        np.testing.assert_array_equal(tensor, expected, err_msg=f"{width}x{height}")
    # A frame that is a view (a camera's BGR-to-RGB flip) is letterboxed like a copy of it.
    frame = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    flipped = frame[..., ::-1]
    np.testing.assert_array_equal(detector.prepare(flipped)[0].copy(), detector.prepare(flipped.copy())[0])


# --------------------------------------------------------------------------------------------------
# Models: where thresholds and names come from, and models that cannot be served
# --------------------------------------------------------------------------------------------------


def test_thresholds_and_class_names_come_from_model_json_unless_given(tmp_path: Path) -> None:
    prediction = np.zeros((1, 5, 2), dtype=np.float32)
    prediction[0, :, 0] = [32, 32, 10, 10, 0.4]
    prediction[0, :, 1] = [10, 10, 6, 6, 0.2]
    model = constant_model(tmp_path / "model.onnx", prediction)
    (tmp_path / "model.json").write_text(
        json.dumps({"class_names": ["scratch"], "input_size": 64, "confidence_threshold": 0.3, "iou_threshold": 0.5})
    )
    from_manifest = load_detector(tmp_path)  # the folder works too
    assert (from_manifest.confidence_threshold, from_manifest.iou_threshold) == (0.3, 0.5)
    assert [d.class_name for d in from_manifest.detect(np.zeros((64, 64, 3), np.uint8)).detections] == ["scratch"]
    overridden = load_detector(model, confidence_threshold=0.1, iou_threshold=0.9)
    assert len(overridden.detect(np.zeros((64, 64, 3), np.uint8)).detections) == 2
    with pytest.raises(ValueError, match="confidence threshold must be between 0 and 1"):
        load_detector(model, confidence_threshold=1.5)


def test_a_dynamic_input_size_is_taken_from_model_json(tmp_path: Path) -> None:
    model = constant_model(
        tmp_path / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32), input_shape=(1, 3, "height", "width")
    )
    with pytest.raises(ModelError, match="input size is dynamic"):
        load_detector(model)
    (tmp_path / "model.json").write_text(
        json.dumps({"class_names": ["scratch"], "input_size": 96, "confidence_threshold": 0.25, "iou_threshold": 0.45})
    )
    assert load_detector(model).input_width == 96


@pytest.mark.parametrize(
    ("output_shape", "message"),
    [
        ((1, 4, 100), "unexpected output shape \\[1, 4, 100\\]"),
        ((1, 100), "unexpected output shape \\[1, 100\\]"),
        ((2, 6, 100), "unexpected output shape \\[2, 6, 100\\]"),
        ((1, 7, 100), "3 class scores but 1 class names"),
    ],
)
def test_a_model_with_an_unexpected_output_shape_is_refused_with_a_clear_error(
    tmp_path: Path, output_shape: tuple[int, ...], message: str
) -> None:
    constant_model(tmp_path / "model.onnx", np.zeros(output_shape, dtype=np.float32))
    (tmp_path / "model.json").write_text(json.dumps(tiny_manifest_like(input_size=64)))
    with pytest.raises(ModelError, match=message) as caught:
        load_detector(tmp_path / "model.onnx")
    assert "model.onnx" in str(caught.value)


def tiny_manifest_like(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "class_names": ["scratch"],
        "input_size": 64,
        "confidence_threshold": 0.25,
        "iou_threshold": 0.45,
    }
    document.update(overrides)
    return document


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"not a model"), "cannot load the ONNX model"),
        (lambda d: None, "model file not found"),
        (
            lambda d: constant_model(d / "model.onnx", np.zeros((1, 5, 8), np.float32), extra_input=True),
            "expected one input",
        ),
        (
            lambda d: constant_model(d / "model.onnx", np.zeros((1, 5, 8), np.float32), input_shape=(1, 1, 64, 64)),
            "is not \\[batch, 3, height, width\\]",
        ),
        (
            lambda d: constant_model(d / "model.onnx", np.zeros((1, 5, 8), np.float32), metadata={"task": "segment"}),
            "a 'segment' model",
        ),
        (
            lambda d: (
                constant_model(d / "model.onnx", np.zeros((1, 5, 8), np.float32)),
                (d / "model.json").write_text("{ not json"),
            ),
            "cannot read the model manifest",
        ),
        (
            lambda d: (
                constant_model(d / "model.onnx", np.zeros((1, 5, 8), np.float32)),
                (d / "model.json").write_text(json.dumps({"class_names": ["scratch"]})),
            ),
            "missing or invalid field",
        ),
    ],
    ids=[
        "not-onnx",
        "missing",
        "two-inputs",
        "one-channel",
        "segmentation",
        "manifest-not-json",
        "manifest-incomplete",
    ],
)
def test_models_that_cannot_be_served_raise_model_error_naming_the_problem(tmp_path: Path, make, message: str) -> None:
    make(tmp_path)
    with pytest.raises(ModelError, match=message):
        load_detector(tmp_path / "model.onnx")


# --------------------------------------------------------------------------------------------------
# Bad frames
# --------------------------------------------------------------------------------------------------


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


BAD_FRAMES = {
    "truncated-jpeg": (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "corrupt or truncated"),
    "corrupt-jpeg": (lambda: _jpeg_bytes()[:20] + b"\x00" * 200, "corrupt or truncated|not an image"),
    "text-file": (lambda: b"serial,result\nA-1,ok\n", "not an image"),
    "empty-file": (lambda: b"", "not an image"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FRAMES))
def test_unreadable_frames_raise_image_error_naming_the_frame(tmp_path: Path, kind: str) -> None:
    data, message = BAD_FRAMES[kind][0](), BAD_FRAMES[kind][1]
    path = tmp_path / f"{kind}.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=message) as caught:
        load_image(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ImageError, match=message):
        load_image(data, name="camera frame 7")


def test_a_folder_or_a_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "gone.jpg")


def test_detect_refuses_arrays_that_are_not_rgb_images(tmp_path: Path) -> None:
    detector = load_detector(constant_model(tmp_path / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32)))
    with pytest.raises(ImageError, match="expected an \\(H, W, 3\\) uint8 RGB image"):
        detector.detect(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ImageError, match="float32"):
        detector.detect(np.zeros((10, 10, 3), dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# Device code imports nothing heavy
# --------------------------------------------------------------------------------------------------


def test_the_device_package_runs_without_the_repository_torch_or_ultralytics(tmp_path: Path) -> None:
    """`python -m inspector.cli` from the component folder alone, as on a device: no torch/ultralytics/cv2 loaded."""
    model = constant_model(tmp_path / "model" / "model.onnx", np.zeros((1, 5, 8), dtype=np.float32))
    (tmp_path / "model" / "model.json").write_text(json.dumps(tiny_manifest_like()))
    frames = tmp_path / "frames"
    frames.mkdir()
    Image.new("RGB", (80, 60), (90, 90, 90)).save(frames / "a.jpg")
    script = (
        "import sys, runpy\n"
        "sys.argv = ['inspector.cli', '--model', sys.argv[1], '--images', sys.argv[2]]\n"
        "try:\n    runpy.run_module('inspector.cli', run_name='__main__')\n"
        "except SystemExit as done:\n    code = done.code\n"
        "heavy = sorted(m for m in ('torch', 'ultralytics', 'cv2', 'edge_deployment', 'shared') if m in sys.modules)\n"
        "print('HEAVY', heavy, 'CODE', code)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(model), str(frames)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(COMPONENT_DIR), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert "HEAVY [] CODE 0" in completed.stdout, completed.stdout + completed.stderr
    line = json.loads(completed.stdout.splitlines()[0])
    assert line == {"image": str(frames / "a.jpg"), "detections": []}
