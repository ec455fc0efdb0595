"""Which model file the device serves (precision auto | int8 | fp32) and on which execution provider.

The model files here are hand-made stand-ins whose constant answers tell FP32 from INT8; the real
INT8 model (quantized by the training code) is checked against Ultralytics in test_detector.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from edge_deployment.components.inference.inspector.config import EXECUTION_PROVIDER_NAMES, PRECISION_SETTINGS
from edge_deployment.components.inference.inspector.detector import (
    EXECUTION_PROVIDERS,
    ModelError,
    ModelInfo,
    ModelVariant,
    choose_precision,
    load_detector,
    provider_names,
    read_manifest,
    select_providers,
)
from tests.edge_deployment.device_support import precisions_manifest, two_precision_model

MANIFEST = {"class_names": ["scratch"], "input_size": 64, "confidence_threshold": 0.25, "iou_threshold": 0.45}
FP32_SCORE, INT8_SCORE = 0.9, 0.8  # what the stand-ins answer for their one box
CPU = "CPUExecutionProvider"


def model_folder(directory: Path, *, int8_map50: float | None = 0.845, int8: str | None = "good") -> Path:
    return two_precision_model(
        directory, MANIFEST, fp32_score=FP32_SCORE, int8_score=INT8_SCORE, int8_map50=int8_map50, int8=int8
    )


def served_score(detector) -> float:
    (detection,) = detector.detect(np.zeros((64, 64, 3), np.uint8)).detections
    return round(detection.score, 3)


# --------------------------------------------------------------------------------------------------
# Precision: the choice
# --------------------------------------------------------------------------------------------------

WITH_INT8 = ModelInfo(
    variants=(ModelVariant("fp32", "model.onnx", 0.85), ModelVariant("int8", "model.int8.onnx", 0.845))
)
WORSE_INT8 = ModelInfo(
    variants=(ModelVariant("fp32", "model.onnx", 0.85), ModelVariant("int8", "model.int8.onnx", 0.83))
)
NO_INT8 = ModelInfo(variants=(ModelVariant("fp32", "model.onnx", 0.85),))
NO_METRICS = ModelInfo(
    variants=(ModelVariant("fp32", "model.onnx", None), ModelVariant("int8", "model.int8.onnx", 0.8))
)


@pytest.mark.parametrize(
    ("info", "setting", "provider", "precision", "reason"),
    [
        (
            WITH_INT8,
            "auto",
            CPU,
            "int8",
            "auto: INT8 test mAP50 0.8450 vs FP32 0.8500 (+0.50 points lost, tolerance 1.00)",
        ),
        (WORSE_INT8, "auto", CPU, "fp32", "(+2.00 points lost, tolerance 1.00): FP32 serves"),
        (WITH_INT8, "auto", "CUDAExecutionProvider", "fp32", "CUDAExecutionProvider runs INT8 (QDQ) models in float"),
        (WITH_INT8, "auto", "TensorrtExecutionProvider", "int8", "auto: INT8 test mAP50"),
        (WITH_INT8, "auto", "OpenVINOExecutionProvider", "int8", "auto: INT8 test mAP50"),
        (NO_INT8, "auto", CPU, "fp32", "precision auto configured but model.json lists no INT8 model: FP32 serves"),
        (ModelInfo(), "auto", CPU, "fp32", "model.json lists no INT8 model"),
        (NO_METRICS, "auto", CPU, "fp32", "auto: model.json records no test mAP50 for both INT8 and FP32"),
        (WORSE_INT8, "int8", CPU, "int8", "precision int8 configured"),
        (WORSE_INT8, "int8", "CUDAExecutionProvider", "int8", "precision int8 configured"),
        (NO_INT8, "int8", CPU, "fp32", "precision int8 configured but model.json lists no INT8 model: FP32 serves"),
        (WITH_INT8, "fp32", CPU, "fp32", "precision fp32 configured"),
    ],
)
def test_the_precision_served_for_each_setting(info, setting, provider, precision, reason) -> None:
    chosen, why = choose_precision(info, setting, max_map50_loss=0.01, provider=provider)
    assert chosen == precision
    assert reason in why


def test_the_tolerance_is_inclusive_and_configurable() -> None:
    assert choose_precision(WORSE_INT8, "auto", max_map50_loss=0.02, provider=CPU)[0] == "int8"
    assert choose_precision(WORSE_INT8, "auto", max_map50_loss=0.0199, provider=CPU)[0] == "fp32"
    better = ModelInfo(
        variants=(ModelVariant("fp32", "model.onnx", 0.80), ModelVariant("int8", "model.int8.onnx", 0.81))
    )
    assert choose_precision(better, "auto", max_map50_loss=0.0, provider=CPU)[0] == "int8"
    with pytest.raises(ValueError, match="precision must be one of auto, int8, fp32, got 'int4'"):
        choose_precision(WITH_INT8, "int4", max_map50_loss=0.01, provider=CPU)


def test_the_settings_the_detector_knows_are_the_ones_the_configuration_accepts() -> None:
    assert tuple(EXECUTION_PROVIDERS) == EXECUTION_PROVIDER_NAMES
    assert set(PRECISION_SETTINGS) == {"auto", "int8", "fp32"}


def test_model_json_precisions_are_read_and_a_bad_entry_leaves_fp32_serving(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(precisions_manifest(MANIFEST, int8_map50=0.845)))
    info = read_manifest(path)
    assert info.variants == (ModelVariant("fp32", "model.onnx", 0.85), ModelVariant("int8", "model.int8.onnx", 0.845))
    path.write_text(json.dumps(MANIFEST))  # version 1: model.onnx alone
    assert read_manifest(path).variants == ()
    path.write_text(json.dumps({**MANIFEST, "precisions": {"int8": {"file": "../elsewhere/model.onnx"}}}))
    info = read_manifest(path)
    assert info.variants == () and "is not an .onnx file beside model.json" in (info.problem or "")
    assert "precisions cannot be read" in choose_precision(info, "auto", max_map50_loss=0.01, provider=CPU)[1]


# --------------------------------------------------------------------------------------------------
# Precision: the file served
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "int8_map50", "score", "precision"),
    [
        ("auto", 0.845, INT8_SCORE, "int8"),
        ("auto", 0.83, FP32_SCORE, "fp32"),
        ("int8", 0.83, INT8_SCORE, "int8"),
        ("fp32", 0.845, FP32_SCORE, "fp32"),
        (None, 0.845, FP32_SCORE, "fp32"),  # no setting: the file given (model.onnx)
    ],
)
def test_the_configured_precision_picks_the_file(tmp_path: Path, setting, int8_map50, score, precision) -> None:
    folder = model_folder(tmp_path, int8_map50=int8_map50)
    detector = load_detector(folder, precision=setting)
    assert (served_score(detector), detector.precision, detector.warnings) == (score, precision, [])
    assert detector.model_path.name == ("model.int8.onnx" if precision == "int8" else "model.onnx")


def test_the_int8_file_given_directly_is_served_and_known_as_int8(tmp_path: Path) -> None:
    folder = model_folder(tmp_path)
    detector = load_detector(folder / "model.int8.onnx")
    assert (served_score(detector), detector.precision) == (INT8_SCORE, "int8")


@pytest.mark.parametrize(
    ("int8", "message"),
    [
        ("corrupt", "model.int8.onnx: cannot load the ONNX model"),
        ("wrong-shape", "model.int8.onnx: output shape [1, 6, 8] has 2 class scores but 1 class names were given"),
        ("missing", "model.int8.onnx: model file not found"),
    ],
)
def test_an_int8_model_that_cannot_serve_leaves_fp32_serving_and_says_why(
    tmp_path: Path, int8: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = model_folder(tmp_path, int8=int8)
    with caplog.at_level(logging.ERROR):
        detector = load_detector(folder, precision="auto")
    assert (served_score(detector), detector.precision) == (FP32_SCORE, "fp32")
    (warning,) = detector.warnings
    assert warning.startswith("the INT8 model could not be served (") and warning.endswith("): FP32 serves")
    assert message in warning
    assert any(message in record.getMessage() for record in caplog.records)


def test_int8_configured_without_an_int8_file_serves_fp32_with_a_warning(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, int8_map50=None, int8=None)
    detector = load_detector(folder, precision="int8")
    assert (served_score(detector), detector.precision) == (FP32_SCORE, "fp32")
    assert detector.warnings == ["precision int8 configured but model.json lists no INT8 model: FP32 serves"]
    auto = load_detector(folder, precision="auto")
    assert auto.warnings == [] and "lists no INT8 model" in auto.precision_reason


@pytest.mark.parametrize("setting", ["auto", "int8", "fp32"])
def test_a_malformed_precisions_entry_is_the_warning_whatever_the_setting(tmp_path: Path, setting: str) -> None:
    folder = model_folder(tmp_path)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["precisions"]["int8"]["file"] = "../elsewhere/model.onnx"
    (folder / "model.json").write_text(json.dumps(manifest))
    detector = load_detector(folder, precision=setting)
    assert (served_score(detector), detector.precision) == (FP32_SCORE, "fp32")
    (warning,) = detector.warnings
    assert "precisions cannot be read" in warning and "is not an .onnx file beside model.json" in warning


@pytest.mark.parametrize(
    ("key", "value"), [("confidence_threshold", 1.5), ("iou_threshold", -0.1), ("iou_threshold", "NaN")]
)
def test_thresholds_outside_0_to_1_in_model_json_are_a_model_error_naming_the_key(
    tmp_path: Path, key: str, value: object
) -> None:
    folder = model_folder(tmp_path)
    manifest = json.loads((folder / "model.json").read_text())
    (folder / "model.json").write_text(json.dumps({**manifest, key: value}))
    with pytest.raises(ModelError, match=f"model.json: {key} must be between 0 and 1, got {value!r}"):
        load_detector(folder, precision="auto")


def test_a_broken_fp32_model_is_still_a_model_error(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, int8_map50=0.83)
    (folder / "model.onnx").write_bytes(b"\x08\x07 truncated")
    with pytest.raises(ModelError, match=r"model\.onnx: cannot load the ONNX model"):
        load_detector(folder, precision="auto")
    with pytest.raises(ValueError, match="INT8 mAP50 tolerance must be between 0 and 1"):
        load_detector(folder, precision="auto", int8_max_map50_loss=1.5)


# --------------------------------------------------------------------------------------------------
# Execution providers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "available", "chosen", "left_out"),
    [
        (["cpu"], [CPU], [CPU], []),
        (["cuda"], [CPU], [CPU], ["CUDAExecutionProvider"]),
        (["CUDA", "cpu"], ["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU], []),
        (["cpu", "cuda"], ["CUDAExecutionProvider", CPU], ["CUDAExecutionProvider", CPU], []),  # CPU always last
        (
            ["tensorrt", "cuda"],
            ["CUDAExecutionProvider", CPU],
            ["CUDAExecutionProvider", CPU],
            ["TensorrtExecutionProvider"],
        ),
        (["openvino", "openvino"], ["OpenVINOExecutionProvider", CPU], ["OpenVINOExecutionProvider", CPU], []),
    ],
)
def test_providers_in_order_of_preference_with_cpu_last(requested, available, chosen, left_out) -> None:
    providers, reasons = select_providers(requested, available)
    assert providers == chosen
    assert [reason.split(" ")[0] for reason in reasons] == left_out
    for reason in reasons:
        assert "is not available in this onnxruntime build (available: " in reason


def test_an_unknown_provider_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown execution provider 'gpu' \\(known: tensorrt, cuda, openvino, cpu\\)"):
        provider_names(["gpu"])


def test_a_provider_this_build_lacks_falls_back_to_cpu_with_a_logged_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = model_folder(tmp_path)
    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # the CPU build of the tests
    with caplog.at_level(logging.WARNING):
        detector = load_detector(folder, precision="auto", providers=["cuda", "cpu"])
    assert detector.execution_provider == CPU
    assert detector.precision == "int8"  # on the CPU, auto still takes INT8
    (warning,) = detector.warnings
    assert warning.startswith("CUDAExecutionProvider is not available in this onnxruntime build")
    assert any("CUDAExecutionProvider is not available" in record.getMessage() for record in caplog.records)
    assert served_score(detector) == INT8_SCORE


def test_a_provider_that_fails_to_start_is_reported_and_cpu_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device whose onnxruntime lists CUDA but cannot start it (no driver): onnxruntime runs on the CPU."""
    folder = model_folder(tmp_path)
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider.* not in available provider names"):
        detector = load_detector(folder, precision="auto", providers=["cuda"])
    assert detector.execution_provider == CPU
    # auto chose for CUDA first (FP32: CUDA runs QDQ in float), then again for the CPU that runs: INT8.
    assert (detector.precision, served_score(detector)) == ("int8", INT8_SCORE)
    assert detector.precision_reason.startswith("auto: INT8 test mAP50 0.8450 vs FP32 0.8500")
    assert detector.warnings == [
        "CUDAExecutionProvider could not be initialised (see onnxruntime's log); running on CPUExecutionProvider"
    ]


def test_a_provider_that_fails_to_start_keeps_fp32_where_the_cpu_would_choose_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = model_folder(tmp_path, int8_map50=0.83)  # 2 points lost: FP32 on any provider
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    with pytest.warns(UserWarning, match="CUDAExecutionProvider.* not in available provider names"):
        detector = load_detector(folder, precision="auto", providers=["cuda"])
    assert (detector.execution_provider, detector.precision, served_score(detector)) == (CPU, "fp32", FP32_SCORE)
    assert "(+2.00 points lost, tolerance 1.00): FP32 serves" in detector.precision_reason
