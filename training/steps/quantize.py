"""Quantize: the exported FP32 ONNX model as an INT8 model for CPUs at the edge, and the archive that carries both.

* **Static quantization, QDQ format** (onnxruntime.quantization): weights int8 per output channel,
  activations uint8 with ranges calibrated on training images, letterboxed exactly as the device and
  Ultralytics feed them. onnxruntime fuses the QuantizeLinear/DequantizeLinear pairs around each
  supported operator into integer kernels (QLinearConv, ...); any runtime that reads ONNX can still
  run the file.
* **The decoding tail stays in float.** A YOLOv8 detection export ends in one output tensor that
  mixes box coordinates in input pixels (0 .. 640) with class scores (0 .. 1): one 8-bit scale
  cannot hold both, and quantizing it scores mAP 0. Every node between the head's last convolutions
  and the output (the per-scale reshapes and concatenations, the DFL softmax and its expectation,
  the box decoding, the class sigmoid) is kept in float; the convolutions before it, head branches
  included, run in INT8. `float_nodes()` finds that tail from the graph's structure alone.
* **Refused before any work**: an output that is the model itself (the FP32 model is never
  overwritten), a model below opset 13 (per-channel QDQ needs DequantizeLinear's `axis`), a model
  without exactly one image input.
* **Checked before it is used**: `compare_outputs()` runs both models on the same frames; an INT8
  model whose output shape differs, or that does not load, is a QuantizationError.

`quantize_model()` makes the INT8 file; `evaluate_int8()` scores it on the FP32 model's test split;
`quantize_and_evaluate()` does both (the pipeline's Evaluate step packages the result beside the FP32
model); `add_int8_variant()` puts it and its metrics into an archive packaged without it (model.json's
`precisions`, shared.contracts.ModelManifest), and `quantize_evaluate_and_add()` does all three.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.contracts import (
    INT8,
    INT8_MIN_ONNX_OPSET,
    INT8_MODEL_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    REQUIRED_METRICS,
    ModelVariant,
)

LOG = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
DEFAULT_CALIBRATION_IMAGES = 100
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
PAD_VALUE = 114  # Ultralytics' letterbox padding, as on the device
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class QuantizationError(Exception):
    """The model cannot be quantized or the INT8 model is unusable; the message says why."""


@dataclass(frozen=True)
class QuantizationResult:
    output: Path
    calibration_images: int
    method: str
    float_nodes: tuple[str, ...]  # nodes kept in float (the decoding tail)
    quantized_nodes: int  # QuantizeLinear / DequantizeLinear nodes in the INT8 graph
    agreement: dict[str, float] = field(default_factory=dict)  # compare_outputs() on calibration frames

    def details(self) -> dict[str, Any]:
        """What model.json records about how the INT8 file was made."""
        return {
            "format": "onnx static quantization, QDQ",
            "weights": "int8, per channel",
            "activations": "uint8",
            "calibration": self.method,
            "calibration_images": self.calibration_images,
            "float_nodes": len(self.float_nodes),
        }


# --------------------------------------------------------------------------------------------------
# Calibration images
# --------------------------------------------------------------------------------------------------


def image_files(directory: str | Path) -> list[Path]:
    """Image files (by suffix) in `directory` and its sub-folders, sorted."""
    root = Path(directory)
    if not root.is_dir():
        raise QuantizationError(f"calibration folder {root} does not exist or is not a folder")
    try:
        return sorted(path for path in root.rglob("*") if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as error:  # a folder that cannot be listed (permissions)
        raise QuantizationError(f"calibration folder {root} cannot be read ({error})") from None


def letterbox(image_rgb: Any, size: int) -> Any:
    """(H, W, 3) uint8 RGB -> (1, 3, size, size) float32 in [0, 1], as Ultralytics' LetterBox and the device."""
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    height, width = image_rgb.shape[:2]
    ratio = min(size / height, size / width)
    new_width, new_height = max(round(width * ratio), 1), max(round(height * ratio), 1)
    if (new_width, new_height) != (width, height):
        image_rgb = cv2.resize(image_rgb, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    top, left = round((size - new_height) / 2 - 0.1), round((size - new_width) / 2 - 0.1)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[top : top + new_height, left : left + new_width] = image_rgb
    return (canvas.transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)).copy()


def read_rgb(path: Path) -> Any | None:
    """An image file as (H, W, 3) uint8 RGB, or None when it cannot be decoded."""
    import cv2  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    return None if image is None else np.ascontiguousarray(image[..., ::-1])


def calibration_frames(directory: str | Path, *, size: int, limit: int = DEFAULT_CALIBRATION_IMAGES) -> list[Any]:
    """Up to `limit` readable images of the folder (spread evenly over its sorted files), letterboxed.

    Unreadable files are skipped with a warning and replaced by other files of the folder; a folder
    without one readable image is an error that names it.
    """
    if limit < 1:
        raise QuantizationError(f"the number of calibration images must be at least 1, got {limit}")
    files = image_files(directory)
    step = max(len(files) / limit, 1.0)
    spread = dict.fromkeys(int(index * step) for index in range(min(limit, len(files))))
    # The evenly spread files first, then the others: each unreadable one is replaced by the next readable.
    ordered = [files[index] for index in spread] + [path for index, path in enumerate(files) if index not in spread]
    frames: list[Any] = []
    unreadable: list[str] = []
    for path in ordered:
        if len(frames) == limit:
            break
        image = read_rgb(path)
        if image is None:
            unreadable.append(path.name)
            continue
        frames.append(letterbox(image, size))
    if unreadable:
        LOG.warning("calibration: %d unreadable image(s) skipped: %s", len(unreadable), ", ".join(unreadable[:10]))
    if not frames:
        found = f"{len(files)} image file(s), none readable" if files else f"no {'/'.join(IMAGE_SUFFIXES)} file"
        raise QuantizationError(f"calibration folder {directory} has no readable image: {found}")
    return frames


def _data_reader(frames: Sequence[Any], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader  # noqa: PLC0415

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._frames: Iterator[Any] = iter(frames)

        def get_next(self) -> dict[str, Any] | None:
            frame = next(self._frames, None)
            return None if frame is None else {input_name: frame}

    return Frames()


# --------------------------------------------------------------------------------------------------
# The graph: what stays in float
# --------------------------------------------------------------------------------------------------


def float_nodes(model: Any) -> list[str]:
    """Names of the nodes between the last convolutions and the outputs: the decoding tail, kept in float.

    Walks back from every graph output and stops at convolutions, except a convolution fed by a Softmax:
    that is the DFL's expectation over distance bins (part of decoding, not of feature extraction).
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    pending = [producers[output.name] for output in model.graph.output if output.name in producers]
    tail: dict[str, Any] = {}
    while pending:
        node = pending.pop()
        if node.name in tail:
            continue
        if node.op_type == "Conv" and not any(
            name in producers and producers[name].op_type == "Softmax" for name in node.input
        ):
            continue
        tail[node.name] = node
        pending.extend(producers[name] for name in node.input if name in producers)
    unnamed = [node for node in tail.values() if not node.name]
    if unnamed:
        raise QuantizationError(f"{len(unnamed)} node(s) of the decoding tail have no name; cannot keep them in float")
    return sorted(tail)


def _input_size(model: Any, source: Path) -> tuple[str, int]:
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:  # calibration feeds one image tensor
        names = ", ".join(i.name for i in inputs) or "none"
        raise QuantizationError(
            f"{source}: the model has {len(inputs)} inputs ({names}); expected one image input [1, 3, S, S], "
            "as a YOLOv8 detection export has"
        )
    (graph_input,) = inputs
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or not dims[2] or dims[2] != dims[3]:
        raise QuantizationError(
            f"{source}: the model's input {graph_input.name} has shape {dims}; expected a static [1, 3, S, S] "
            "image input"
        )
    return graph_input.name, int(dims[2])


def _check_opset(model: Any, source: Path) -> None:
    """Refuse a model older than per-channel QDQ, rather than let onnxruntime fail on DequantizeLinear's axis."""
    opsets = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    opset = max(opsets, default=None)
    if opset is None or opset < INT8_MIN_ONNX_OPSET:
        found = f"ONNX opset {opset}" if opset is not None else "no default (ai.onnx) opset import"
        raise QuantizationError(
            f"{source}: {found}; INT8 quantization (per-channel QDQ) needs opset {INT8_MIN_ONNX_OPSET} or later: "
            "export the model again with a newer opset"
        )


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: any spelling, a symlink (resolve) or a hard link (samefile)."""
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return False


def _refuse_overwriting(source: Path, output: Path, partial: Path) -> None:
    """The FP32 model is never overwritten: neither the output nor its staging file may be the model."""
    if _same_file(output, source):
        raise QuantizationError(
            f"the output {output} is the model {source}: writing it would overwrite the FP32 model; "
            "choose another output path"
        )
    if _same_file(partial, source):
        raise QuantizationError(
            f"the output {output} is staged as {partial}, which is the model {source}: writing it would "
            "overwrite the FP32 model; choose another output path"
        )


# --------------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------------


def quantize_model(
    model_path: str | Path,
    calibration_dir: str | Path,
    output_path: str | Path,
    *,
    max_images: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = "minmax",
    check_frames: int = 8,
) -> QuantizationResult:
    """Write the INT8 (QDQ) model of `model_path` to `output_path`, calibrated on the folder's images.

    The INT8 model keeps the FP32 model's input, output and metadata (class names, stride, image size),
    so the device and Ultralytics run it like the original. It is checked against the FP32 model on up to
    `check_frames` calibration frames before this returns.
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    if method not in CALIBRATION_METHODS:
        raise QuantizationError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    source, output = Path(model_path), Path(output_path)
    partial = output.with_name(output.name + ".partial")
    _refuse_overwriting(source, output, partial)
    try:
        original = onnx.load(str(source))
    except Exception as error:  # onnx raises DecodeError, OSError, ...
        raise QuantizationError(f"{source}: cannot read the ONNX model ({error})") from None
    _check_opset(original, source)
    input_name, size = _input_size(original, source)
    frames = calibration_frames(calibration_dir, size=size, limit=max_images)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-") as work:
        prepared = Path(work) / "prepared.onnx"
        # Shape inference and onnxruntime's basic graph optimizations first, as onnxruntime recommends.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        keep_float = float_nodes(onnx.load(str(prepared)))
        quantize_static(
            str(prepared),
            str(partial),
            _data_reader(frames, input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=keep_float,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[method],
        )
    quantized = onnx.load(str(partial))
    del quantized.metadata_props[:]
    for entry in original.metadata_props:  # class names, stride, image size: Ultralytics and the device read them
        if entry.key != "precision":
            quantized.metadata_props.add(key=entry.key, value=entry.value)
    quantized.metadata_props.add(key="precision", value=INT8)  # the device reports it
    onnx.save(quantized, str(partial))
    qdq = sum(node.op_type in QDQ_OPS for node in quantized.graph.node)
    if not qdq:
        partial.unlink(missing_ok=True)
        raise QuantizationError(f"{source}: no node was quantized (no convolution outside the decoding tail?)")
    try:
        agreement = compare_outputs(source, partial, frames[:check_frames])
    except QuantizationError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(output)
    return QuantizationResult(
        output=output,
        calibration_images=len(frames),
        method=method,
        float_nodes=tuple(keep_float),
        quantized_nodes=qdq,
        agreement=agreement,
    )


def compare_outputs(fp32_path: str | Path, int8_path: str | Path, frames: Sequence[Any]) -> dict[str, float]:
    """Run both models on the same letterboxed frames: how far the INT8 model's raw output is from FP32's.

    Returns the largest absolute difference of any class score, the mean absolute difference of the box
    coordinates (input pixels) of the boxes FP32 scores above 0.25, and the two models' largest scores.
    Raises QuantizationError when the INT8 model does not load, or its output shape differs.
    """
    import numpy as np  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415

    sessions = []
    for path in (fp32_path, int8_path):
        try:
            sessions.append(onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
        except Exception as error:  # onnxruntime's pybind exceptions
            raise QuantizationError(f"{path}: onnxruntime cannot load the model ({error})") from None
    input_name = sessions[0].get_inputs()[0].name
    score_diff, box_diffs, top = 0.0, [], [0.0, 0.0]
    for frame in frames:
        reference, quantized = (np.asarray(s.run(None, {input_name: frame})[0]) for s in sessions)
        if reference.shape != quantized.shape:
            raise QuantizationError(
                f"{int8_path}: output shape {list(quantized.shape)} differs from the FP32 model's "
                f"{list(reference.shape)}"
            )
        scores, int8_scores = reference[0, 4:], quantized[0, 4:]
        score_diff = max(score_diff, float(np.abs(scores - int8_scores).max(initial=0.0)))
        top = [max(top[0], float(scores.max(initial=0.0))), max(top[1], float(int8_scores.max(initial=0.0)))]
        confident = scores.max(axis=0) > 0.25
        if confident.any():
            box_diffs.append(float(np.abs(reference[0, :4, confident] - quantized[0, :4, confident]).mean()))
    return {
        "max_score_difference": score_diff,
        "mean_box_difference_px": float(np.mean(box_diffs)) if box_diffs else 0.0,
        "top_score_fp32": top[0],
        "top_score_int8": top[1],
        "frames": float(len(frames)),
    }


# --------------------------------------------------------------------------------------------------
# Evaluation and the archive
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionComparison:
    """The INT8 model's test metrics beside the FP32 model's, on the same test images and thresholds, and
    (given FP32's per-image results) the paired difference INT8 - FP32 with its 95% interval."""

    fp32: dict[str, float]
    int8: dict[str, float]
    paired: dict[str, Any] | None = None

    @property
    def map50_loss(self) -> float:
        """FP32 mAP50 minus INT8 mAP50 (positive: INT8 is worse), in mAP units (0.01 = one point)."""
        return self.fp32["mAP50"] - self.int8["mAP50"]

    def to_json(self) -> dict[str, Any]:
        return {
            "fp32": dict(self.fp32),
            "int8": dict(self.int8),
            "loss": {name: self.fp32[name] - self.int8[name] for name in REQUIRED_METRICS},
            "int8_minus_fp32": self.paired,
        }


def evaluate_int8(
    int8_path: str | Path,
    dataset_dir: str | Path,
    fp32_metrics: dict[str, float],
    *,
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    work_dir: str | Path,
    fp32_results: Sequence[Any] | None = None,
) -> PrecisionComparison:
    """Score the INT8 model exactly as the FP32 model was (training.steps.evaluate, the test split); with
    FP32's per-image results, the two are compared image by image (a paired bootstrap)."""
    from training.steps import comparison  # noqa: PLC0415 - Ultralytics loads only when evaluating
    from training.steps.prepare import PreparedDataset  # noqa: PLC0415
    from training.steps.scoring import score_images  # noqa: PLC0415

    results, _ = score_images(
        int8_path,
        PreparedDataset.load(dataset_dir),
        image_size=image_size,
        iou_threshold=iou_threshold,
        work_dir=work_dir,
        name="int8",
    )
    map50, map50_95 = comparison.mean_average_precision(results)
    precision, recall = comparison.precision_recall_at(results, confidence_threshold)
    int8 = {"precision": precision, "recall": recall, "mAP50": map50, "mAP50-95": map50_95}
    paired = comparison.compare(results, list(fp32_results)).to_json() if fp32_results else None
    return PrecisionComparison(fp32={k: fp32_metrics[k] for k in REQUIRED_METRICS}, int8=int8, paired=paired)


def int8_variant(result: QuantizationResult, metrics: dict[str, float]) -> ModelVariant:
    """model.json's `precisions.int8` entry for the INT8 file (at the archive root as INT8_MODEL_FILE)."""
    variant = ModelVariant(
        precision=INT8,
        file=INT8_MODEL_FILE,
        metrics={name: float(metrics[name]) for name in REQUIRED_METRICS},
        details=result.details(),
    )
    variant.check()
    return variant


def add_int8_variant(archive: str | Path, int8_path: str | Path, variant: ModelVariant) -> Path:
    """Rewrite `archive` (model.tar.gz) with the INT8 file added and model.json listing it with its metrics.

    Every other member is kept as it was; the new archive replaces the old one only once it is complete.
    """
    from shared.contracts import ModelManifest  # noqa: PLC0415

    path = Path(archive)
    partial = path.with_name(path.name + ".partial")
    try:
        with tarfile.open(path, "r:gz") as source, tarfile.open(partial, "w:gz") as target:
            members = source.getmembers()
            names = {member.name.removeprefix("./"): member for member in members}
            if MANIFEST_FILE not in names or MODEL_FILE not in names:
                raise QuantizationError(f"{path}: no {MODEL_FILE} and {MANIFEST_FILE} at the archive root")
            manifest_file = source.extractfile(names[MANIFEST_FILE])
            assert manifest_file is not None
            manifest = ModelManifest.from_json(json.loads(manifest_file.read())).with_variant(variant)
            document = json.dumps(manifest.to_json(), indent=1).encode()
            for member in members:
                name = member.name.removeprefix("./")
                if name == variant.file:
                    continue  # replaced below
                if name == MANIFEST_FILE:
                    info = tarfile.TarInfo(MANIFEST_FILE)
                    info.size, info.mode = len(document), 0o644
                    target.addfile(info, io.BytesIO(document))
                else:
                    target.addfile(member, source.extractfile(member) if member.isfile() else None)
            target.add(str(int8_path), arcname=variant.file)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(path)
    return path


@dataclass(frozen=True)
class Int8Model:
    """An INT8 model made and scored: its file, its metrics beside FP32's, and its model.json entry."""

    quantization: QuantizationResult
    comparison: PrecisionComparison
    variant: ModelVariant

    def to_json(self) -> dict[str, Any]:
        """The report of the quantization (evaluation.json's `int8`)."""
        return {
            "file": self.variant.file,
            **self.comparison.to_json(),
            "details": self.quantization.details(),
            "agreement_on_calibration_frames": dict(self.quantization.agreement),
        }


def quantize_and_evaluate(
    fp32_onnx: str | Path,
    dataset_dir: str | Path,
    *,
    fp32_metrics: dict[str, float],
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    work_dir: str | Path,
    calibration_split: str = "train",
    max_images: int = DEFAULT_CALIBRATION_IMAGES,
    method: str = "minmax",
    fp32_results: Sequence[Any] | None = None,
) -> Int8Model:
    """Quantize on the prepared dataset's training images and score on its test split, as FP32 was.

    The pipeline's Evaluate step packages the result beside the FP32 model; quantize_evaluate_and_add
    adds it to an archive packaged without it.
    """
    work = Path(work_dir)
    result = quantize_model(
        fp32_onnx,
        Path(dataset_dir) / "images" / calibration_split,
        work / INT8_MODEL_FILE,
        max_images=max_images,
        method=method,
    )
    comparison = evaluate_int8(
        result.output,
        dataset_dir,
        fp32_metrics,
        image_size=image_size,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        work_dir=work / "evaluate-int8",
        fp32_results=fp32_results,
    )
    return Int8Model(quantization=result, comparison=comparison, variant=int8_variant(result, comparison.int8))


def quantize_evaluate_and_add(
    archive: str | Path, fp32_onnx: str | Path, dataset_dir: str | Path, **options: Any
) -> Int8Model:
    """quantize_and_evaluate, then `archive` (packaged without INT8) gains `model.int8.onnx` and model.json its
    `precisions.int8` metrics. `options`: quantize_and_evaluate's."""
    made = quantize_and_evaluate(fp32_onnx, dataset_dir, **options)
    add_int8_variant(archive, made.quantization.output, made.variant)
    return made
