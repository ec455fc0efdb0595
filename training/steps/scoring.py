"""Scoring one model on the test split: each image's detections and labels, and the validator's mAP.

Used by the evaluation step (the new model and the champion) and by the INT8 comparison
(`training.steps.quantize`), so it sits apart from both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.steps.comparison import ImageResult
from training.steps.prepare import PreparedDataset, write_data_yaml
from training.steps.train import check_onnx_model, offline_ultralytics

EVALUATION_CONFIDENCE = 0.001  # for mAP: the whole precision-recall curve


class EvaluationError(Exception):
    """A model could not be evaluated (the champion's archive, most often); the message names it."""


# --------------------------------------------------------------------------------------------------
# Scoring one model on the test split
# --------------------------------------------------------------------------------------------------


def _recording_validator() -> type:
    """Ultralytics' detection validator that also keeps each image's statistics and boxes (batch size 1)."""
    import numpy as np  # noqa: PLC0415
    from ultralytics.models.yolo.detect import DetectionValidator  # noqa: PLC0415
    from ultralytics.utils import ops  # noqa: PLC0415

    class RecordingValidator(DetectionValidator):
        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            super().update_metrics(preds, batch)
            recorded = getattr(self.metrics, "image_results", [])
            stats = self.metrics.stats
            for si, pred in enumerate(preds):
                at = len(stats["tp"]) - len(preds) + si  # the entries super() just appended
                pbatch = self._prepare_batch(si, batch)

                def source_pixels(boxes: Any, pbatch: dict[str, Any] = pbatch) -> np.ndarray:
                    if not len(boxes):
                        return np.zeros((0, 4))
                    scaled = ops.scale_boxes(pbatch["imgsz"], boxes.clone(), pbatch["ori_shape"], pbatch["ratio_pad"])
                    return np.asarray(scaled.cpu() if hasattr(scaled, "cpu") else scaled, dtype=float)

                recorded.append(
                    ImageResult(
                        name=Path(pbatch["im_file"]).name,
                        tp=np.asarray(stats["tp"][at], dtype=bool).reshape(-1, 10),
                        conf=np.asarray(stats["conf"][at], dtype=float),
                        pred_cls=np.asarray(stats["pred_cls"][at], dtype=float),
                        target_cls=np.asarray(stats["target_cls"][at], dtype=float),
                        pred_boxes=source_pixels(pred["bboxes"]),
                        target_boxes=source_pixels(pbatch["bboxes"]),
                    )
                )
            setattr(self.metrics, "image_results", recorded)  # noqa: B010 - read back from the returned metrics

    return RecordingValidator


def score_images(
    onnx_path: str | Path,
    dataset: PreparedDataset,
    *,
    image_size: int,
    iou_threshold: float,
    work_dir: str | Path,
    name: str,
) -> tuple[list[ImageResult], dict[str, float]]:
    """Each test image's detections and labels (sorted by image), and the validator's own mAP values."""
    check_onnx_model(onnx_path, image_size=image_size, num_classes=len(dataset.class_names))
    offline_ultralytics()
    from ultralytics import YOLO  # noqa: PLC0415

    work = Path(work_dir).resolve()  # Ultralytics puts a relative `project` under its own runs folder
    data_yaml = write_data_yaml(dataset.root, dataset.class_names, destination=work / "data.yaml")
    results = YOLO(str(onnx_path), task="detect").val(
        validator=_recording_validator(),
        data=str(data_yaml),
        split="test",
        imgsz=image_size,
        batch=1,
        conf=EVALUATION_CONFIDENCE,
        iou=iou_threshold,
        device="cpu",
        workers=0,
        plots=False,
        verbose=False,
        project=str(work),
        name=name,
        exist_ok=True,
    )
    images = sorted(getattr(results, "image_results", []), key=lambda r: r.name)
    if len(images) != dataset.counts["test"]:
        raise EvaluationError(f"{name}: scored {len(images)} test images of {dataset.counts['test']}")
    return images, {"mAP50": float(results.box.map50), "mAP50-95": float(results.box.map)}
