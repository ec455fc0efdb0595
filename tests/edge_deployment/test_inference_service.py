"""The component's service loop with a fake Greengrass (IPC) and real models, frames and upload queue.

Models sit where Greengrass unpacks the model component (artifacts-unarchived/<name>/<version>/model/),
and the model component's configuration names the version, as on a device.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from edge_deployment.components.inference.inspector.config import ConfigError
from edge_deployment.components.inference.inspector.detector import ModelError, load_detector
from edge_deployment.components.inference.inspector.feedback import (
    UPLOADED,
    FrameUpload,
    UploadError,
    wait_for,
)
from edge_deployment.components.inference.inspector.frame_sources import PROCESSED_DIR, REJECTED_DIR
from edge_deployment.components.inference.inspector.greengrass import GreengrassIpc, IpcError
from edge_deployment.components.inference.inspector.service import DeviceContext, InferenceService, create_service
from tests.edge_deployment.device_support import (
    MODEL_COMPONENT,
    THING,
    FakeGreengrass,
    constant_model,
    model_folder,
    restore_pillow_open,
    tiny_manifest,
    two_precision_model,
)
from tests.model_fixtures import TinyModel

RESULTS = f"inspection/{THING}/results"
HEARTBEAT = f"inspection/{THING}/heartbeat"
BUCKET = "tag-inspect-data-123456789012-eu-west-1"
MANIFEST = {"class_names": ["scratch"], "input_size": 64, "confidence_threshold": 0.25, "iou_threshold": 0.45}


@pytest.fixture(autouse=True)
def _device_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_pillow_open(monkeypatch)


class Store:
    """The S3 uploader's place: records uploads, or fails like a device without a connection."""

    def __init__(self) -> None:
        self.uploads: list[FrameUpload] = []
        self.online = True

    def put(self, upload: FrameUpload) -> str:
        if not self.online:
            raise UploadError(f"s3://{BUCKET}/{upload.key}: <urlopen error [Errno -3] Temporary failure>")
        self.uploads.append(upload)
        return UPLOADED


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def score_model(directory: Path, score: float, *, box: tuple[float, ...] = (32, 32, 20, 20)) -> Path:
    """model.onnx + model.json answering one box with `score` for every frame (64 x 64 input)."""
    prediction = np.zeros((1, 5, 2), dtype=np.float32)
    prediction[0, :4, 0] = box
    prediction[0, 4, 0] = score
    constant_model(directory / "model.onnx", prediction)
    (directory / "model.json").write_text(json.dumps(MANIFEST), encoding="utf-8")
    return directory


class Device:
    """A device folder layout with a fake nucleus: builds the service the way __main__ does."""

    def __init__(self, root: Path, **configuration: Any) -> None:
        self.root = root
        self.models = root / "packages" / "artifacts-unarchived"
        self.work = root / "work" / "com.example.Inspector"
        self.frames = self.work / "frames"
        self.greengrass = FakeGreengrass(
            {"modelComponentName": MODEL_COMPONENT, "uploadBucket": BUCKET, **configuration}, models={}
        )
        self.store = Store()
        self.clock = Clock()

    def model_dir(self, version: str) -> Path:
        return self.models / MODEL_COMPONENT / version / "model"

    def deploy_model(self, version: str, make: Callable[[Path], Any]) -> None:
        """Greengrass unpacks the new model component version, then its configuration changes."""
        make(self.model_dir(version))
        self.greengrass.update(MODEL_COMPONENT, modelVersion=version)

    def service(self, *, rng: random.Random | None = None) -> InferenceService:
        context = DeviceContext(
            thing=THING,
            greengrass=self.greengrass,
            work_dir=self.work,
            model_root=self.models,
            region="eu-west-1",
        )
        created = create_service(context, rng=rng or random.Random(0), clock=self.clock, store=self.store)
        created.watch()
        return created

    def drop(self, name: str, data: bytes | Image.Image) -> Path:
        """A frame written by the camera, old enough to be complete."""
        self.frames.mkdir(parents=True, exist_ok=True)
        path = self.frames / name
        if isinstance(data, Image.Image):
            data.save(path)
        else:
            path.write_bytes(data)
        stamp = time.time() - 5
        os.utime(path, (stamp, stamp))
        return path


def tag(width: int = 320, height: int = 240, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(width * height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_frame_gets_a_result_with_boxes_in_source_pixels(tiny_model: TinyModel, tmp_path: Path) -> None:
    device = Device(tmp_path, confidenceThreshold=0.001)  # the barely trained model scores low
    device.deploy_model("1.0.1", lambda d: model_folder(d, tiny_model.onnx_path, tiny_manifest(tiny_model)))
    service = device.service()
    frames = [tiny_model.samples[0].path, tiny_model.samples[1].path]
    device.drop("a.jpg", frames[0].read_bytes())
    device.drop("b.png", Image.open(frames[1]).resize((640, 480)))
    assert service.step() == 2

    results = device.greengrass.messages(RESULTS)
    assert [r["image"] for r in results] == ["a.jpg", "b.png"]
    reference = load_detector(device.model_dir("1.0.1"), confidence_threshold=0.001)
    for result, source, size in zip(results, frames, [(320, 240), (640, 480)], strict=True):
        assert result["thing"] == THING and result["model_version"] == "1.0.1"
        assert result["latency_ms"] > 0
        datetime.fromisoformat(result["timestamp"])
        image = Image.open(source).resize(size) if size != (320, 240) else Image.open(source)
        expected = [d.to_json() for d in reference.detect(np.asarray(image.convert("RGB"))).detections]
        assert result["detections"] == expected
        assert expected, "the low threshold should give boxes to check"
        for detection in result["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
            assert detection["class_name"] == tiny_model.class_names[detection["class_id"]]
    assert not list(device.frames.glob("*.*")), "processed frames are removed"


def test_a_frame_with_nothing_found_is_a_result_too(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.1))  # under the 0.25 threshold
    service = device.service()
    device.drop("empty.jpg", jpeg(tag()))
    service.step()
    (result,) = device.greengrass.messages(RESULTS)
    assert result["detections"] == []
    assert result["model_version"] == "1.0.1"


def test_detections_are_published_with_class_name_and_score(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    device.drop("scratched.jpg", jpeg(tag(128, 64)))
    service.step()
    (result,) = device.greengrass.messages(RESULTS)
    # The box (32, 32, 20, 20) of the 64 x 64 input, in the 128 x 64 frame's pixels.
    assert result["detections"] == [
        {"box": [44.0, 12.0, 84.0, 52.0], "class_id": 0, "class_name": "scratch", "score": 0.9}
    ]


def test_the_heartbeat_reports_frames_latency_uploads_and_model(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], heartbeatIntervalSeconds=60)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    device.store.online = False
    service.step()  # no frames yet: the first heartbeat goes out at once
    for index in range(3):
        device.drop(f"f{index}.jpg", jpeg(tag()))
    service.step()
    assert len(device.greengrass.messages(HEARTBEAT)) == 1  # not due again yet
    service.uploader.drain()  # type: ignore[union-attr] - offline: nothing leaves
    device.clock.now += 60
    service.step()
    first, second = device.greengrass.messages(HEARTBEAT)
    assert first["frames_processed"] == 0 and first["mean_latency_ms"] is None
    assert second["thing"] == THING
    assert second["status"] == "serving"
    assert second["model_version"] == "1.0.1"
    assert second["model_error"] is None
    assert second["frames_processed"] == 3
    assert second["frames_since_last_heartbeat"] == 3
    assert second["mean_latency_ms"] > 0
    assert second["uploads_pending"] == 3
    assert "Temporary failure" in second["upload_error"]


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def _truncated() -> bytes:
    data = jpeg(tag())
    return data[: len(data) // 3]


BAD_FRAMES: dict[str, Callable[[], bytes]] = {
    "truncated.jpg": _truncated,
    "corrupt.jpg": lambda: b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,
    "notes.txt": lambda: b"line 1 stopped at 10:42\n",
    "empty.png": lambda: b"",
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_a_bad_frame_is_logged_set_aside_and_the_next_frame_is_served(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    device.drop(name, BAD_FRAMES[name]())
    good = device.drop("zz-good.jpg", jpeg(tag()))
    os.utime(good, (time.time() - 1, time.time() - 1))  # newer than the bad one: served after it
    with caplog.at_level(logging.ERROR):
        assert service.step() == 1
    assert [r["image"] for r in device.greengrass.messages(RESULTS)] == ["zz-good.jpg"]
    assert service.frames_failed == 1
    assert (device.frames / REJECTED_DIR / name).is_file()
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert name in record.getMessage() and "bad frame" in record.getMessage()


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("grey.png", tag(200, 100, "L")),
        ("alpha.png", tag(320, 240, "RGBA")),
        ("palette.png", tag(320, 240, "P")),
        ("large.jpg", tag(1280, 960)),
        ("portrait.bmp", tag(90, 300)),
    ],
)
def test_frames_of_other_sizes_and_colour_modes_are_served(tmp_path: Path, name: str, image: Image.Image) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    device.drop(name, image)
    assert service.step() == 1
    (result,) = device.greengrass.messages(RESULTS)
    ((x1, y1, x2, y2),) = [d["box"] for d in result["detections"]]
    assert 0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height


def test_a_publish_failure_is_counted_serving_goes_on_and_the_result_is_published_later(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    device.greengrass.offline = True
    device.drop("a.jpg", jpeg(tag()))
    assert service.step() == 1
    assert service.publish_failures == 2  # the result and the first heartbeat
    assert service.outbox.pending == 2  # kept on disk (outbox/), not lost
    device.greengrass.offline = False
    device.drop("b.jpg", jpeg(tag()))
    service.step()
    # b.jpg went straight through; a.jpg followed from the outbox once the nucleus took messages again
    assert [r["image"] for r in device.greengrass.messages(RESULTS)] == ["b.jpg", "a.jpg"]
    assert len(device.greengrass.messages(HEARTBEAT)) == 1 and service.outbox.pending == 0


# --------------------------------------------------------------------------------------------------
# Model updates
# --------------------------------------------------------------------------------------------------


def test_a_new_model_version_is_served_without_a_restart(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    first_detector = service.models.detector

    device.deploy_model("1.0.2", lambda d: score_model(d, 0.8, box=(16, 16, 8, 8)))
    device.drop("b.jpg", jpeg(tag()))
    service.step()
    first, second = device.greengrass.messages(RESULTS)
    assert (first["model_version"], first["detections"][0]["score"]) == ("1.0.1", 0.9)
    assert (second["model_version"], second["detections"][0]["score"]) == ("1.0.2", 0.8)
    assert service.models.detector is not first_detector


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: constant_model(d / "model.onnx", np.zeros((1, 4, 10), np.float32)), "unexpected output shape"),
        (lambda d: (d.mkdir(parents=True), (d / "model.onnx").write_bytes(b"\x08\x07garbage")), "cannot load"),
        (lambda d: d.mkdir(parents=True), "model file not found"),
    ],
    ids=["wrong-output-shape", "corrupt-file", "missing-file"],
)
def test_a_model_version_that_fails_to_load_leaves_the_previous_one_serving(
    tmp_path: Path, make: Callable[[Path], Any], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    service.step()
    with caplog.at_level(logging.ERROR):
        device.deploy_model("1.0.2", make)
        device.drop("a.jpg", jpeg(tag()))
        service.step()
    (result,) = device.greengrass.messages(RESULTS)
    assert result["model_version"] == "1.0.1"
    heartbeat = service.publish_heartbeat()
    assert heartbeat["model_version"] == "1.0.1" and heartbeat["status"] == "serving"
    assert "model 1.0.2 failed to load" in heartbeat["model_error"]
    assert message in heartbeat["model_error"] and "still serving model 1.0.1" in heartbeat["model_error"]
    assert any(message in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)

    device.deploy_model("1.0.3", lambda d: score_model(d, 0.7))  # the next good version is taken up
    service.step()
    assert (service.models.version, service.models.error) == ("1.0.3", None)


def test_a_failed_version_is_retried_when_its_files_change_not_on_every_poll(tmp_path: Path) -> None:
    device = Device(tmp_path, modelPollSeconds=30)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    service.step()
    loads: list[Path] = []
    load = service.models.load
    service.models.load = lambda directory: (loads.append(directory), load(directory))[1]

    # The configuration names 1.0.2 before its files are there (still being unpacked).
    device.greengrass.update(MODEL_COMPONENT, modelVersion="1.0.2")
    service.step()
    assert (service.models.version, len(loads)) == ("1.0.1", 1)
    device.clock.now += 30
    service.step()
    assert len(loads) == 1, "nothing changed: the failed version is not loaded again"
    score_model(device.model_dir("1.0.2"), 0.8)
    device.clock.now += 30
    service.step()
    assert (service.models.version, service.models.error, len(loads)) == ("1.0.2", None, 2)


def test_an_int8_file_still_being_written_is_served_once_complete_not_reloaded_on_every_poll(
    tmp_path: Path,
) -> None:
    device = Device(tmp_path, modelPollSeconds=30)
    device.deploy_model("1.0.1", two_precisions(0.9, 0.8, int8="missing"))  # model.int8.onnx not there yet
    service = device.service()
    service.step()
    assert service.models.detector.precision == "fp32"
    assert "model.int8.onnx: model file not found" in service.publish_heartbeat()["model_warning"]
    loads: list[Path] = []
    load = service.models.load
    service.models.load = lambda directory: (loads.append(directory), load(directory))[1]
    device.clock.now += 30
    service.step()
    assert loads == [], "nothing changed: the version served is not loaded again"

    complete = two_precisions(0.9, 0.8)(tmp_path / "complete")
    shutil.copy(complete / "model.int8.onnx", device.model_dir("1.0.1"))  # the INT8 file lands, nothing else
    device.clock.now += 30
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    assert (service.models.version, service.models.detector.precision, len(loads)) == ("1.0.1", "int8", 1)
    assert device.greengrass.messages(RESULTS)[-1]["detections"][0]["score"] == 0.8
    assert service.publish_heartbeat()["model_warning"] is None
    device.clock.now += 30
    service.step()
    assert len(loads) == 1, "served without a warning: its files are not watched"


def test_until_a_model_is_deployed_frames_wait_and_the_heartbeat_says_why(tmp_path: Path) -> None:
    device = Device(tmp_path)
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    assert service.step() == 0
    (heartbeat,) = device.greengrass.messages(HEARTBEAT)
    assert heartbeat["status"] == "waiting for a model"
    assert "modelVersion" in heartbeat["model_error"]
    assert (device.frames / "a.jpg").is_file()
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    assert service.step() == 1


# --------------------------------------------------------------------------------------------------
# Precision and execution provider
# --------------------------------------------------------------------------------------------------


def two_precisions(fp32_score: float, int8_score: float, **options: Any) -> Callable[[Path], Path]:
    """A model version with model.onnx (answers fp32_score) and model.int8.onnx (int8_score) listed in model.json."""
    return lambda d: two_precision_model(d, MANIFEST, fp32_score=fp32_score, int8_score=int8_score, **options)


def test_the_heartbeat_says_which_precision_serves_on_which_provider_and_why(tmp_path: Path) -> None:
    device = Device(tmp_path)  # precision auto (the default): INT8 loses 0.5 points, within 1
    device.deploy_model("1.0.1", two_precisions(0.9, 0.8))
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    (result,) = device.greengrass.messages(RESULTS)
    assert result["detections"][0]["score"] == 0.8  # the INT8 file answered
    (heartbeat,) = device.greengrass.messages(HEARTBEAT)
    assert heartbeat["model_precision"] == "int8"
    assert heartbeat["model_precision_reason"].startswith("auto: INT8 test mAP50 0.8450 vs FP32 0.8500")
    assert heartbeat["execution_provider"] == "CPUExecutionProvider"
    assert heartbeat["model_warning"] is None and heartbeat["model_error"] is None


def test_hot_swaps_between_precisions_and_a_broken_int8_file_falls_back_to_fp32(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))  # FP32 only (a version 1 archive)
    service = device.service()
    heartbeats = []
    for version, make in [
        ("1.0.2", two_precisions(0.7, 0.6)),  # INT8 within tolerance: INT8 serves
        ("1.0.3", two_precisions(0.5, 0.4, int8_map50=0.7)),  # INT8 15 points worse: FP32 serves
        ("1.0.4", two_precisions(0.3, 0.2, int8="corrupt")),  # INT8 does not load: FP32 serves, heartbeat says why
        ("1.0.5", two_precisions(0.85, 0.75, int8="wrong-shape")),  # INT8 gives the wrong output: FP32 too
        ("1.0.6", two_precisions(0.95, 0.65)),  # a good INT8 again
    ]:
        device.drop(f"{version}.jpg", jpeg(tag()))
        with caplog.at_level(logging.ERROR):
            service.step()
        heartbeats.append(service.publish_heartbeat())
        device.deploy_model(version, make)
    device.drop("last.jpg", jpeg(tag()))
    service.step()
    served = [(r["model_version"], r["detections"][0]["score"]) for r in device.greengrass.messages(RESULTS)]
    assert served == [
        ("1.0.1", 0.9),
        ("1.0.2", 0.6),
        ("1.0.3", 0.5),
        ("1.0.4", 0.3),
        ("1.0.5", 0.85),
        ("1.0.6", 0.65),
    ]
    beats = {beat["model_version"]: beat for beat in heartbeats}
    assert [beats[v]["model_precision"] for v in ("1.0.1", "1.0.2", "1.0.3", "1.0.4", "1.0.5")] == [
        "fp32",
        "int8",
        "fp32",
        "fp32",
        "fp32",
    ]
    assert "lists no INT8 model" in beats["1.0.1"]["model_precision_reason"] and beats["1.0.1"]["model_warning"] is None
    assert "+15.00 points lost" in beats["1.0.3"]["model_precision_reason"] and beats["1.0.3"]["model_warning"] is None
    for version, cause in (("1.0.4", "cannot load the ONNX model"), ("1.0.5", "2 class scores but 1 class names")):
        beat = beats[version]
        assert beat["status"] == "serving" and beat["model_error"] is None  # this version serves, in FP32
        assert beat["model_warning"].startswith("the INT8 model could not be served (")
        assert cause in beat["model_warning"] and beat["model_warning"].endswith("): FP32 serves")
    assert service.models.detector.precision == "int8" and service.models.detector.warnings == []
    assert any("the INT8 model could not be served" in r.getMessage() for r in caplog.records)


def test_an_int8_model_that_fails_on_real_frames_gives_way_to_fp32_which_serves_the_frame(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path, modelPollSeconds=30)
    device.deploy_model("1.0.1", two_precisions(0.9, 0.8))
    service = device.service()
    service.step()
    assert service.models.detector.precision == "int8"

    class FailingSession:  # onnxruntime failing on real frames after a clean warm-up run
        def run(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : a kernel failed")

    service.models.detector.session = FailingSession()
    device.drop("a.jpg", jpeg(tag()))
    with caplog.at_level(logging.ERROR):
        assert service.step() == 1
    assert [r["detections"][0]["score"] for r in device.greengrass.messages(RESULTS)] == [0.9]  # FP32 answered
    assert service.frames_failed == 0 and not (device.frames / REJECTED_DIR / "a.jpg").exists()
    heartbeat = service.publish_heartbeat()
    assert (heartbeat["status"], heartbeat["model_version"], heartbeat["model_precision"]) == (
        "serving",
        "1.0.1",
        "fp32",
    )
    assert heartbeat["model_warning"].startswith("the INT8 model failed on a frame (")
    assert "a kernel failed" in heartbeat["model_warning"] and heartbeat["model_warning"].endswith("): FP32 serves")
    assert any("the INT8 model failed on a frame" in r.getMessage() for r in caplog.records)
    device.clock.now += 30
    device.drop("b.jpg", jpeg(tag()))
    service.step()
    assert service.models.detector.precision == "fp32", "polls do not bring the failing INT8 model back"


def test_a_frame_the_fp32_model_fails_on_too_is_rejected_once(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", two_precisions(0.9, 0.8))
    service = device.service()
    service.step()
    loads = 0

    def failing_load(*args: Any, **kwargs: Any) -> Any:
        nonlocal loads
        loads += 1
        raise ModelError("model.onnx: cannot load the ONNX model (disk error)")

    service.context = replace(service.context, load_model=failing_load)
    service.models.detector.session = None  # any run fails: 'NoneType' object has no attribute 'run'
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    assert (service.frames_failed, loads) == (1, 1)
    assert (device.frames / REJECTED_DIR / "a.jpg").is_file()  # kept, nothing lost
    assert service.models.detector.precision == "int8"  # no fallback could load: the model stays


def test_changing_precision_or_providers_reloads_the_model_without_a_restart(tmp_path: Path) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", two_precisions(0.9, 0.8))
    service = device.service()
    service.step()
    assert service.models.detector.precision == "int8"
    device.greengrass.update(None, precision="fp32")
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    assert service.models.detector.precision == "fp32"
    assert device.greengrass.messages(RESULTS)[-1]["detections"][0]["score"] == 0.9
    device.greengrass.update(None, precision="auto", int8MaxMap50Loss=0.001)  # INT8 loses 0.5 points: too many
    service.step()
    assert service.models.detector.precision == "fp32"
    assert "tolerance 0.10" in service.models.detector.precision_reason
    device.greengrass.update(None, executionProviders=["openvino", "cpu"])
    service.step()
    assert service.config.execution_providers == ("openvino", "cpu")
    heartbeat = service.publish_heartbeat()
    assert heartbeat["execution_provider"] == "CPUExecutionProvider"
    assert heartbeat["model_warning"].startswith("OpenVINOExecutionProvider is not available in this onnxruntime build")


# --------------------------------------------------------------------------------------------------
# Feedback
# --------------------------------------------------------------------------------------------------


def test_uncertain_frames_are_queued_under_the_raw_image_prefix_and_uploaded(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], confidentSampleRate=0.0)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    original = jpeg(tag())
    device.drop("uncertain.jpg", original)
    device.drop("uncertain.png", tag(100, 80))
    service.step()
    results = device.greengrass.messages(RESULTS)
    assert service.uploader is not None and service.uploader.drain()
    first, second = device.store.uploads
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    for upload, result in zip(device.store.uploads, results, strict=True):
        assert upload.key == result["upload_key"]
        assert upload.key.startswith(f"raw-images/edge/{THING}/")
        assert upload.key.endswith(".jpg")
        assert upload.metadata["reason"] == "uncertain"
        assert upload.metadata["top-score"] == "0.5000"
        assert upload.metadata["model-version"] == "1.0.1"
    assert first.key.split("/")[3] <= today  # the frame's own (capture) date
    assert first.body == original  # a JPEG goes as it came
    assert Image.open(io.BytesIO(second.body)).format == "JPEG"  # other formats are sent as JPEG
    assert second.metadata["source-frame"] == "uncertain.png"


@pytest.mark.parametrize(
    ("score", "sample_rate", "expected"),
    [(0.95, 1.0, ["sample"]), (0.95, 0.0, []), (0.1, 0.0, []), (0.3, 0.0, ["uncertain"]), (0.7, 0.0, ["uncertain"])],
)
def test_which_frames_go_back_depends_on_the_band_and_the_sample_rate(
    tmp_path: Path, score: float, sample_rate: float, expected: list[str]
) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], confidentSampleRate=sample_rate)
    device.deploy_model("1.0.1", lambda d: score_model(d, score))
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    service.uploader.drain()  # type: ignore[union-attr]
    assert [upload.metadata["reason"] for upload in device.store.uploads] == expected
    assert ("upload_key" in device.greengrass.messages(RESULTS)[0]) == bool(expected)


def test_offline_uploads_survive_a_restart_and_leave_when_the_connection_returns(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.0, 1.0], offlineQueueMaxMB=1)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    device.store.online = False
    service = device.service()
    for index in range(4):
        device.drop(f"f{index}.jpg", jpeg(tag()))
    service.step()
    assert not service.uploader.drain()  # type: ignore[union-attr]
    assert service.queue is not None and service.queue.pending == 4

    # The component is killed (no clean stop) and started again; then the connection returns.
    restarted = device.service()
    assert restarted.queue is not None and restarted.queue.pending == 4
    assert restarted.publish_heartbeat()["uploads_pending"] == 4
    device.store.online = True
    assert restarted.uploader.drain()  # type: ignore[union-attr]
    assert len(device.store.uploads) == 4
    assert [u.key for u in device.store.uploads] == [r["upload_key"] for r in device.greengrass.messages(RESULTS)]


def test_the_offline_queue_keeps_to_its_size_and_counts_what_it_dropped(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.0, 1.0], offlineQueueMaxMB=1)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    device.store.online = False
    service = device.service()
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8))
    frame = jpeg(noise)  # about 0.3 MB: four of them do not fit into 1 MB
    for index in range(5):
        device.drop(f"f{index}.jpg", frame)
    service.step()
    heartbeat = service.publish_heartbeat()
    assert heartbeat["uploads_dropped"] >= 2
    assert heartbeat["uploads_pending"] + heartbeat["uploads_dropped"] == 5
    assert service.queue is not None and service.queue.pending_bytes <= 1024 * 1024
    device.store.online = True
    service.uploader.drain()  # type: ignore[union-attr]
    published = [r["upload_key"] for r in device.greengrass.messages(RESULTS)]
    assert [u.key for u in device.store.uploads] == published[-heartbeat["uploads_pending"] :]  # the newest stayed


def test_without_an_upload_bucket_nothing_is_queued(tmp_path: Path) -> None:
    device = Device(tmp_path, uploadBucket="", uncertaintyBand=[0.0, 1.0])
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    assert service.queue is None
    assert "upload_key" not in device.greengrass.messages(RESULTS)[0]
    assert service.publish_heartbeat()["uploads_enabled"] is False


def test_an_upload_bucket_configured_after_the_start_takes_effect_without_a_restart(tmp_path: Path) -> None:
    device = Device(tmp_path, uploadBucket="", uncertaintyBand=[0.0, 1.0])
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    assert service.queue is None
    device.greengrass.update(None, uploadBucket=BUCKET)  # a deployment merges the bucket in
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    (result,) = device.greengrass.messages(RESULTS)
    assert result["upload_key"].startswith(f"raw-images/edge/{THING}/")
    assert service.publish_heartbeat()["uploads_enabled"] is True
    assert service.uploader is not None and service.uploader.drain()
    assert [upload.key for upload in device.store.uploads] == [result["upload_key"]]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"uncertaintyBand": [0.8, 0.2]}, "uncertaintyBand: expected \\[low, high\\]"),
        ({"frameIntervalSeconds": "fast"}, "frameIntervalSeconds: expected a number"),
        ({"resultsTopic": "inspection/#"}, "resultsTopic: must be a concrete MQTT topic"),
        ({"heartbeatTopic": "inspection/x{thing}/hb"}, "heartbeatTopic: .*must be a whole topic level"),
        ({"modelComponentName": ""}, "modelComponentName: required"),
        ({"confidentSampleRate": 2}, "confidentSampleRate: expected a number between 0 and 1"),
        ({"frameSource": "usb"}, "frameSource: expected one of directory, camera"),
        ({"offlineQueueMaxMB": 0}, "offlineQueueMaxMB: must be at least 1"),
        ({"confidenceThreshold": 1.5}, "confidenceThreshold: expected a number between 0 and 1"),
        ({"keepProcessedFrames": "yes"}, "keepProcessedFrames: expected true or false"),
        ({"precision": "int4"}, "precision: expected one of auto, int8, fp32, got 'int4'"),
        ({"int8MaxMap50Loss": -0.01}, "int8MaxMap50Loss: expected a number between 0 and 1"),
        ({"executionProviders": ["gpu"]}, "executionProviders: expected a list of tensorrt, cuda, openvino, cpu"),
        ({"executionProviders": []}, "executionProviders: expected a list of tensorrt, cuda, openvino, cpu"),
    ],
)
def test_an_invalid_configuration_stops_the_start_with_the_key_named(
    tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    device = Device(tmp_path, **values)
    with pytest.raises(ConfigError, match=message):
        device.service()


def test_greengrass_numbers_and_unknown_keys_are_accepted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    device = Device(tmp_path, heartbeatIntervalSeconds=30.0, cameraDevice=1.0, inferenceThreads=2.0, colour="blue")
    with caplog.at_level(logging.WARNING):
        service = device.service()
    assert service.config.heartbeat_interval_s == 30.0 and service.config.camera_device == 1
    assert service.config.frames_directory == device.work / "frames"  # relative to the work folder
    assert any("unknown configuration keys: colour" in r.getMessage() for r in caplog.records)


def test_a_configuration_change_applies_without_a_restart_and_a_bad_one_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    device.drop("a.jpg", jpeg(tag()))
    service.step()
    device.greengrass.update(None, confidenceThreshold=0.6, keepProcessedFrames=True)
    device.drop("b.jpg", jpeg(tag()))
    service.step()
    first, second = device.greengrass.messages(RESULTS)
    assert len(first["detections"]) == 1 and second["detections"] == []  # 0.5 is under the new threshold
    assert (device.frames / PROCESSED_DIR / "b.jpg").is_file()

    with caplog.at_level(logging.ERROR):
        device.greengrass.update(None, uncertaintyBand=[2, 3])
        service.step()
    assert service.config.uncertainty_band == (0.3, 0.7)
    assert any("configuration update not applied" in r.getMessage() for r in caplog.records)


def test_the_device_context_comes_from_the_greengrass_environment(tmp_path: Path) -> None:
    greengrass = FakeGreengrass({})
    decompressed = tmp_path / "packages" / "artifacts-unarchived" / "com.example.Inspector" / "1.2.3"
    context = DeviceContext.from_environment(
        greengrass,
        {
            "AWS_IOT_THING_NAME": THING,
            "AWS_REGION": "eu-west-1",
            "INSPECTOR_DECOMPRESSED_PATH": str(decompressed),
            "INSPECTOR_WORK_DIR": str(tmp_path / "work"),
        },
    )
    assert context.thing == THING and context.region == "eu-west-1"
    assert context.model_root == tmp_path / "packages" / "artifacts-unarchived"
    assert context.work_dir == tmp_path / "work"
    with pytest.raises(ConfigError, match="AWS_IOT_THING_NAME is not set"):
        DeviceContext.from_environment(greengrass, {})


# --------------------------------------------------------------------------------------------------
# The loop as Greengrass runs it
# --------------------------------------------------------------------------------------------------


def test_run_serves_frames_until_stopped(tmp_path: Path) -> None:
    device = Device(tmp_path, frameIntervalSeconds=0.05, uncertaintyBand=[0.0, 1.0])
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    service._clock = time.monotonic  # a real clock for the real loop
    service.models._clock = time.monotonic
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), daemon=True)
    thread.start()
    try:
        device.drop("a.jpg", jpeg(tag()))
        assert wait_for(lambda: len(device.greengrass.messages(RESULTS)) == 1, timeout=30)
        assert wait_for(lambda: len(device.store.uploads) == 1, timeout=30), "the uploader thread runs"
        assert wait_for(lambda: bool(device.greengrass.messages(HEARTBEAT)), timeout=30), (
            "a heartbeat goes out when serving starts"
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def test_an_unexpected_error_in_one_pass_does_not_stop_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    device = Device(tmp_path, frameIntervalSeconds=0.01)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    stop = threading.Event()
    passes: list[int] = []

    def flaky_step(_stop: threading.Event | None = None) -> int:
        passes.append(1)
        if len(passes) == 1:
            raise RuntimeError("disk full")
        stop.set()
        return 0

    monkeypatch.setattr(service, "step", flaky_step)
    with caplog.at_level(logging.ERROR):
        service.run(stop)
    assert len(passes) == 2
    assert any("unexpected error in the inference loop" in r.getMessage() for r in caplog.records)


def test_camera_frames_are_served_through_opencv(tmp_path: Path) -> None:
    """frameSource camera, with a video file standing in for the camera (OpenCV opens both alike)."""
    import cv2

    video = tmp_path / "camera.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    for value in (60, 120, 180):
        writer.write(np.full((120, 160, 3), value, dtype=np.uint8))
    writer.release()
    device = Device(tmp_path, frameSource="camera", cameraDevice=str(video), uncertaintyBand=[0.0, 1.0])
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    for _ in range(3):
        service.step()
    results = device.greengrass.messages(RESULTS)
    assert len(results) == 3
    assert all(r["image"].startswith("camera-") for r in results)
    assert [r["detections"][0]["box"] for r in results] == [[55.0, 35.0, 105.0, 85.0]] * 3
    service.uploader.drain()  # type: ignore[union-attr]
    assert len(device.store.uploads) == 3
    assert Image.open(io.BytesIO(device.store.uploads[0].body)).size == (160, 120)
    service.step()  # the video has ended: no frame, no error
    assert len(device.greengrass.messages(RESULTS)) == 3


def test_the_camera_source_without_opencv_is_a_clear_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "cv2", None)
    device = Device(tmp_path, frameSource="camera")
    with pytest.raises(ConfigError, match="needs OpenCV"):
        device.service()


# --------------------------------------------------------------------------------------------------
# The IPC adapter
# --------------------------------------------------------------------------------------------------


class FakeIpcClient:
    def __init__(self, *, fail: bool = False, hang: bool = False) -> None:
        self.fail = fail
        self.hang = hang
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def publish_to_iot_core_async(self, **kwargs: Any) -> Future[None]:
        """Like the SDK: a future of the nucleus' answer (never answered when `hang`)."""
        self.calls.append(("publish", kwargs))
        future: Future[None] = Future()
        if self.fail:
            future.set_exception(ConnectionError("nucleus went away"))
        elif not self.hang:
            future.set_result(None)
        return future

    def get_configuration(self, **kwargs: Any) -> Any:
        self.calls.append(("get", kwargs))
        if self.fail:
            raise ConnectionError("nucleus went away")
        return type("Response", (), {"value": {"modelVersion": "1.0.1"}})()

    def subscribe_to_configuration_update(self, **kwargs: Any) -> None:
        self.calls.append(("subscribe", kwargs))


def test_the_ipc_adapter_publishes_json_at_least_once_and_reads_configuration() -> None:
    from awsiot.greengrasscoreipc.model import QOS

    client = FakeIpcClient()
    ipc = GreengrassIpc(client)
    ipc.publish(RESULTS, {"image": "a.jpg", "detections": []})
    assert ipc.configuration(MODEL_COMPONENT) == {"modelVersion": "1.0.1"}
    changes: list[int] = []
    ipc.watch_configuration(MODEL_COMPONENT, lambda: changes.append(1))
    (_, publish), (_, get), (_, subscribe) = client.calls
    assert publish["topic_name"] == RESULTS and publish["qos"] == QOS.AT_LEAST_ONCE
    assert json.loads(publish["payload"]) == {"image": "a.jpg", "detections": []}
    assert get == {"component_name": MODEL_COMPONENT, "key_path": []}
    subscribe["on_stream_event"](object())
    assert changes == [1]
    assert subscribe["on_stream_error"](RuntimeError("x")) is False  # the stream stays open

    broken = GreengrassIpc(FakeIpcClient(fail=True))
    with pytest.raises(IpcError, match=f"publish to {RESULTS}: ConnectionError: nucleus went away"):
        broken.publish(RESULTS, {})
    with pytest.raises(IpcError, match="configuration of this component"):
        broken.configuration()
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        ipc.publish(RESULTS, {"latency_ms": float("nan")})


def test_a_publish_the_nucleus_never_answers_times_out_instead_of_stopping_the_loop() -> None:
    import inspect

    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    # The fake's method is the SDK's: same name, same keyword arguments.
    assert {"topic_name", "qos", "payload"} <= set(
        inspect.signature(GreengrassCoreIPCClientV2.publish_to_iot_core_async).parameters
    )
    assert GreengrassIpc(FakeIpcClient()).timeout > 30  # longer than the nucleus' own MQTT operation timeout
    hung = GreengrassIpc(FakeIpcClient(hang=True), timeout=0.05)
    started = time.monotonic()
    with pytest.raises(IpcError, match=f"publish to {RESULTS}: no answer from the nucleus within 0.05 s"):
        hung.publish(RESULTS, {"image": "a.jpg", "detections": []})
    assert time.monotonic() - started < 5


def test_the_entry_point_outside_greengrass_exits_with_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    component = Path(__file__).resolve().parents[2] / "edge_deployment" / "components" / "inference"
    completed = subprocess.run(
        [sys.executable, "-m", "inspector"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(component), "PATH": "/usr/bin:/bin"},
        timeout=120,
        check=False,
    )
    assert completed.returncode == 1
    assert "cannot connect to the Greengrass nucleus over IPC" in completed.stdout


def test_a_full_disk_for_the_upload_queue_keeps_the_frame_and_serving_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from edge_deployment.components.inference.inspector import feedback

    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], confidentSampleRate=0.0)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()

    def disk_full(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feedback.os, "fsync", disk_full)
    device.drop("full.jpg", jpeg(tag()))
    service.step()
    (result,) = device.greengrass.messages(RESULTS)
    assert result["image"] == "full.jpg" and "upload_key" not in result  # the result still goes out
    assert (device.frames / "processed" / "full.jpg").is_file()  # the frame is kept for labeling later
    assert not list(device.work.rglob("*.tmp")), "no half-written queue file takes what space is left"
    monkeypatch.undo()
    device.drop("later.jpg", jpeg(tag()))
    service.step()
    assert [m["image"] for m in device.greengrass.messages(RESULTS)] == ["full.jpg", "later.jpg"]
    assert "upload_key" in device.greengrass.messages(RESULTS)[1]


def test_a_frame_that_cannot_be_moved_off_a_full_disk_stays_and_is_served_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from edge_deployment.components.inference.inspector import frame_sources

    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], confidentSampleRate=0.0, keepProcessedFrames=True)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    service = device.service()
    replace = frame_sources.os.replace

    def disk_full(source: Any, destination: Any) -> None:
        if Path(destination).parent.name == "processed":
            raise OSError(errno.ENOSPC, "No space left on device")
        replace(source, destination)

    monkeypatch.setattr(frame_sources.os, "replace", disk_full)
    stuck = device.drop("stuck.jpg", jpeg(tag()))
    service.step()
    service.step()  # the next pass does not serve it again
    assert [m["image"] for m in device.greengrass.messages(RESULTS)] == ["stuck.jpg"]
    assert stuck.is_file(), "the frame is not lost"
    device.drop("next.jpg", jpeg(tag()))
    service.step()
    assert [m["image"] for m in device.greengrass.messages(RESULTS)] == ["stuck.jpg", "next.jpg"]


# --------------------------------------------------------------------------------------------------
# Effort where it matters: the hourly cap, and a model going blind
# --------------------------------------------------------------------------------------------------


def blind_model(directory: Path, *, empty_on_test_split: float) -> Path:
    """A model that finds nothing on any frame, whose model.json says how often it found nothing on its test split."""
    score_model(directory, 0.01)
    top_scores = [0.0] * round(10 * empty_on_test_split) + [0.9] * round(10 * (1 - empty_on_test_split))
    statistics = {"images": 10, "detection_rate": 1 - empty_on_test_split, "top_scores": top_scores}
    manifest = {**MANIFEST, "test_statistics": statistics}
    (directory / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


@pytest.mark.parametrize(("empty_on_test_split", "drifting"), [(0.2, True), (1.0, False)])
def test_a_model_gone_blind_sends_its_empty_frames_back(
    tmp_path: Path, empty_on_test_split: float, drifting: bool
) -> None:
    device = Device(tmp_path, confidentSampleRate=0.0, driftSampleRate=1.0, driftWindowFrames=10)
    device.deploy_model("1.0.1", lambda d: blind_model(d, empty_on_test_split=empty_on_test_split))
    service = device.service()
    for index in range(30):
        device.drop(f"{index:03d}.jpg", jpeg(tag()))
    assert service.step() == 30
    service.uploader.drain()  # type: ignore[union-attr]
    reasons = [upload.metadata["reason"] for upload in device.store.uploads]
    # from the tenth frame on (a full window), every empty frame goes back while the rate is off
    assert reasons == (["drift"] * 21 if drifting else [])
    heartbeat = service.publish_heartbeat()
    assert heartbeat["empty_frame_rate"] == 1.0 and heartbeat["expected_empty_frame_rate"] == empty_on_test_split
    assert heartbeat["empty_frames_drifting"] is drifting


def test_uploads_are_capped_per_hour_and_the_heartbeat_counts_the_rest(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7], confidentSampleRate=0.0, maxUploadsPerHour=5)
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.5))
    service = device.service()
    for index in range(8):
        device.drop(f"{index:03d}.jpg", jpeg(tag()))
    service.step()
    service.uploader.drain()  # type: ignore[union-attr]
    assert len(device.store.uploads) == 5
    assert {upload.metadata["uncertainty"] for upload in device.store.uploads} == {"1.0000"}  # the band's middle
    assert service.publish_heartbeat()["uploads_capped"] == 3
    device.clock.now += 3600  # an hour later the cap has room again
    device.drop("later.jpg", jpeg(tag()))
    service.step()
    service.uploader.drain()  # type: ignore[union-attr]
    assert len(device.store.uploads) == 6
