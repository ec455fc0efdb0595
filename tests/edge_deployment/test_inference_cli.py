"""`python -m edge_deployment.inference`: the device detector over a folder, one JSON line per image."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_deployment.components.inference.inspector.detector import load_detector
from tests.edge_deployment.device_support import constant_model, two_precision_model
from tests.model_fixtures import TinyModel

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_deployment.inference", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def unpacked_model(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model.onnx + model.json from the trained model's archive, as the device receives them."""
    target = tmp_path_factory.mktemp("model")
    with tarfile.open(tiny_model.archive) as archive:
        archive.extractall(target, filter="data")
    assert (target / "model.onnx").is_file() and (target / "model.json").is_file()
    return target / "model.onnx"


@pytest.mark.slow
def test_one_json_line_per_image_with_boxes_in_source_pixels(
    tiny_model: TinyModel, unpacked_model: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for sample in tiny_model.samples[:4]:
        shutil.copy(sample.path, images)
    Image.open(tiny_model.samples[4].path).resize((640, 480)).save(images / "large.png")
    (images / "labels.jsonl").write_text("{}\n")  # not an image: not listed
    output = tmp_path / "out" / "results.jsonl"

    completed = run_cli("--model", unpacked_model, "--images", images, "--output", output, "--conf", "0.001")
    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    expected_images = sorted(p for p in images.iterdir() if p.suffix in (".jpg", ".png"))
    assert [line["image"] for line in lines] == [str(p) for p in expected_images]

    detector = load_detector(unpacked_model, confidence_threshold=0.001)
    boxes = 0
    for line, path in zip(lines, expected_images, strict=True):
        assert set(line) == {"image", "detections"}
        width, height = Image.open(path).size
        for detection in line["detections"]:
            assert set(detection) == {"box", "class_id", "class_name", "score"}
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert isinstance(detection["class_id"], int)
            assert detection["class_name"] == tiny_model.class_names[detection["class_id"]]
            assert 0.001 < detection["score"] <= 1
        assert line["detections"] == [d.to_json() for d in detector.detect_file(path).detections]
        boxes += len(line["detections"])
    assert boxes > 0, "a low threshold should give boxes to check"
    assert "5 image(s) processed, 0 skipped (conf 0.001, iou 0.45)" in completed.stderr  # iou from model.json


def _constant_model(directory: Path) -> Path:
    prediction = np.zeros((1, 5, 1), dtype=np.float32)
    prediction[0, :, 0] = [32, 32, 20, 20, 0.9]
    return constant_model(directory / "model.onnx", prediction)


def test_without_output_lines_go_to_standard_output_and_bad_images_are_skipped(tmp_path: Path) -> None:
    model = _constant_model(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (128, 64), (100, 100, 100)).save(images / "a.jpg")
    (images / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    Image.new("L", (64, 64), 80).save(images / "c.png")

    completed = run_cli("--model", model, "--images", images, "--conf", "0.5", "--iou", "0.6")
    assert completed.returncode == 1  # some images could not be read
    lines = [json.loads(line) for line in completed.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["a.jpg", "c.png"]
    assert lines[0]["detections"] == [
        {"box": [44.0, 12.0, 84.0, 52.0], "class_id": 0, "class_name": "class_0", "score": 0.9}
    ]
    assert "b.jpg" in completed.stderr and "skipped" in completed.stderr
    assert "2 image(s) processed, 1 skipped (conf 0.5, iou 0.6)" in completed.stderr


@pytest.mark.parametrize(
    ("arguments", "score", "served"),
    [
        ([], 0.9, "serving model.onnx (FP32) on CPUExecutionProvider"),
        (["--precision", "auto"], 0.8, "serving model.int8.onnx (INT8) on CPUExecutionProvider"),
        (["--precision", "fp32"], 0.9, "serving model.onnx (FP32)"),
        (
            ["--precision", "int8", "--providers", "cuda,cpu"],
            0.8,
            "(INT8) on CPUExecutionProvider; CUDAExecutionProvider is not available in this onnxruntime build",
        ),
    ],
)
def test_the_precision_and_providers_are_chosen_as_on_a_device(
    tmp_path: Path, arguments: list[str], score: float, served: str
) -> None:
    manifest = {"class_names": ["scratch"], "input_size": 64, "confidence_threshold": 0.25, "iou_threshold": 0.45}
    model = two_precision_model(tmp_path / "model", manifest, fp32_score=0.9, int8_score=0.8) / "model.onnx"
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (64, 64), (100, 100, 100)).save(images / "a.jpg")
    completed = run_cli("--model", model, "--images", images, *arguments)
    assert completed.returncode == 0, completed.stderr
    (line,) = [json.loads(text) for text in completed.stdout.splitlines()]
    assert [detection["score"] for detection in line["detections"]] == [score]
    assert served in completed.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "{tmp}/missing.onnx", "--images", "{tmp}"], "model file not found"),
        (
            ["--model", "{tmp}/model/model.onnx", "--images", "{tmp}", "--providers", "gpu"],
            "unknown execution provider",
        ),
        (["--model", "{tmp}/model/model.onnx", "--images", "{tmp}/nowhere"], "not a folder"),
        (["--model", "{tmp}/model/model.onnx", "--images", "{tmp}", "--conf", "1.5"], "must be between 0 and 1"),
        (["--model", "{tmp}/broken.onnx", "--images", "{tmp}"], "cannot load the ONNX model"),
    ],
)
def test_bad_arguments_exit_2_with_the_problem_named(tmp_path: Path, arguments: list[str], message: str) -> None:
    _constant_model(tmp_path / "model")
    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    completed = run_cli(*[argument.replace("{tmp}", str(tmp_path)) for argument in arguments])
    assert completed.returncode == 2
    assert message in completed.stderr
    assert completed.stdout == ""
