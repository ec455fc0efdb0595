"""Helpers of the device (inference component) tests: a fake Greengrass, hand-made ONNX models, frames.

The device code is imported the way the tests of the cloud side import theirs; nothing here needs
Greengrass, AWS or PyTorch.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_deployment.components.inference.inspector.greengrass import IpcError

MODEL_COMPONENT = "com.example.ScratchModel"
THING = "line-1-cam-1"


class FakeGreengrass:
    """The `Greengrass` protocol in memory: configurations per component, recorded publishes, watchers."""

    def __init__(self, configuration: Mapping[str, Any], models: Mapping[str, Any] | None = None) -> None:
        self.configurations: dict[str | None, dict[str, Any]] = {None: dict(configuration)}
        if models is not None:
            self.configurations[MODEL_COMPONENT] = dict(models)
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.watchers: dict[str | None, list[Callable[[], None]]] = {}
        self.offline = False
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        if self.offline:
            raise IpcError(f"publish to {topic}: connection down")
        # Like GreengrassIpc: the payload must be JSON (NaN is not).
        document = json.loads(json.dumps(payload, allow_nan=False))
        with self._lock:
            self.published.append((topic, document))

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        if component not in self.configurations:
            raise IpcError(f"configuration of {component}: ResourceNotFoundError")
        return json.loads(json.dumps(self.configurations[component]))

    def watch_configuration(self, component: str | None, on_change: Callable[[], None]) -> None:
        self.watchers.setdefault(component, []).append(on_change)

    # -- test controls --------------------------------------------------------------------------------

    def update(self, component: str | None, **values: Any) -> None:
        """Change a component's configuration and tell its watchers, as the nucleus does."""
        self.configurations.setdefault(component, {}).update(values)
        for callback in self.watchers.get(component, []):
            callback()

    def messages(self, topic: str) -> list[dict[str, Any]]:
        with self._lock:
            return [payload for name, payload in self.published if name == topic]


def restore_pillow_open(monkeypatch: Any) -> None:
    """Undo Ultralytics' process-wide patch of PIL.Image.open while a device test runs.

    Once any test imported Ultralytics, Image.open tries to install `pi-heif` for files Pillow does
    not recognise, instead of raising UnidentifiedImageError. Devices never load Ultralytics.
    """
    patches = sys.modules.get("ultralytics.utils.patches")
    original = getattr(patches, "_image_open", None)
    if original is not None:
        from PIL import Image

        monkeypatch.setattr(Image, "open", original)


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------


def constant_model(
    path: Path,
    prediction: np.ndarray,
    *,
    input_shape: Sequence[int | str] = (1, 3, 64, 64),
    metadata: Mapping[str, str] | None = None,
    extra_input: bool = False,
) -> Path:
    """An ONNX model that answers `prediction` for every input (plus 0 x the input, so the input is used)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    values = np.asarray(prediction, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["prediction", "nothing"], ["output0"]),
    ]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
    graph = helper.make_graph(
        nodes,
        "constant-detector",
        inputs,
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(values.shape))],
        initializer=[
            numpy_helper.from_array(values, "prediction"),
            numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def raw_prediction(
    boxes: Sequence[tuple[float, float, float, float]],
    scores: Sequence[Sequence[float]],
    *,
    num_boxes: int | None = None,
) -> np.ndarray:
    """A YOLOv8 raw output [1, 4 + classes, boxes] from (cx, cy, w, h) boxes and per-class scores."""
    count = num_boxes or len(boxes)
    classes = len(scores[0])
    output = np.zeros((1, 4 + classes, count), dtype=np.float32)
    for index, (box, row) in enumerate(zip(boxes, scores, strict=True)):
        output[0, :4, index] = box
        output[0, 4:, index] = row
    return output


def model_folder(directory: Path, onnx_path: Path, manifest: Mapping[str, Any] | None = None) -> Path:
    """model.onnx (+ model.json) in `directory`, as the model component unpacks them."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, directory / "model.onnx")
    if manifest is not None:
        (directory / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    return directory


METRICS = {"precision": 0.9, "recall": 0.8, "mAP50": 0.85, "mAP50-95": 0.55}


def precisions_manifest(
    manifest: Mapping[str, Any], *, int8_map50: float | None, fp32_map50: float = METRICS["mAP50"]
) -> dict[str, Any]:
    """`manifest` as model.json version 2: FP32 (model.onnx) metrics, and an INT8 file with its mAP50 unless None."""
    fp32 = {**METRICS, "mAP50": fp32_map50}
    precisions: dict[str, Any] = {"fp32": {"file": "model.onnx", "metrics": fp32}}
    if int8_map50 is not None:
        precisions["int8"] = {"file": "model.int8.onnx", "metrics": {**METRICS, "mAP50": int8_map50}}
    return {**manifest, "schema_version": 2, "metrics": fp32, "precisions": precisions}


def two_precision_model(
    directory: Path,
    manifest: Mapping[str, Any],
    *,
    fp32_score: float,
    int8_score: float,
    int8_map50: float | None = 0.845,
    int8: str | None = "good",
    box: tuple[float, float, float, float] = (32, 32, 20, 20),
) -> Path:
    """model.onnx and model.int8.onnx stand-ins (64 x 64 input) that answer one box with their own score,
    and model.json version 2 listing both. `int8`: "good", "corrupt", "wrong-shape" or None (no file)."""
    constant_model(directory / "model.onnx", raw_prediction([box], [[fp32_score]]))
    if int8 == "good":
        constant_model(
            directory / "model.int8.onnx", raw_prediction([box], [[int8_score]]), metadata={"precision": "int8"}
        )
    elif int8 == "corrupt":
        (directory / "model.int8.onnx").write_bytes(b"\x08\x07 truncated")
    elif int8 == "wrong-shape":
        constant_model(directory / "model.int8.onnx", np.zeros((1, 6, 8), np.float32), metadata={"precision": "int8"})
    (directory / "model.json").write_text(json.dumps(precisions_manifest(manifest, int8_map50=int8_map50)))
    return directory


def tiny_manifest(tiny_model: Any, **overrides: Any) -> dict[str, Any]:
    document = {
        "schema_version": 1,
        "model_file": "model.onnx",
        "class_names": list(tiny_model.class_names),
        "input_size": tiny_model.input_size,
        "confidence_threshold": tiny_model.manifest.confidence_threshold,
        "iou_threshold": tiny_model.manifest.iou_threshold,
    }
    document.update(overrides)
    return document


# --------------------------------------------------------------------------------------------------
# Frames that are not plain RGB tags
# --------------------------------------------------------------------------------------------------


def iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union; two equal empty boxes (clipped to nothing at the frame's edge) count as 1."""
    if tuple(first) == tuple(second):
        return 1.0
    x1, y1 = max(first[0], second[0]), max(first[1], second[1])
    x2, y2 = min(first[2], second[2]), min(first[3], second[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1]) - inter
    return inter / union if union > 0 else 0.0
