"""Step 4, evaluate, and the model archive the registered model package points to.

The exported ONNX model (the file the devices run, not the PyTorch weights) is evaluated on the
held-out **test** split, which training never saw (it validates on `val`):

* mAP50 and mAP50-95 are the standard, threshold-free values (Ultralytics' validator, confidence
  0.001, NMS at the deployment IoU threshold);
* precision and recall are measured at the deployment confidence threshold, i.e. what the device
  will actually report, with a detection counted correct at IoU >= 0.5;
* `empty_frame_rate` is the share of test images on which the model reports nothing at that threshold:
  the device compares its own rate of empty frames with it to notice a model going blind.

The report (`evaluation.json`) is the pipeline's property file: the quality gate reads
`gate_metric.value` from it. `build_model_archive()` writes `model.tar.gz` with `model.onnx` and
`model.json` (shared.contracts.ModelManifest) at its root, as the edge deployment expects.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.contracts import MANIFEST_FILE, MODEL_FILE, REQUIRED_METRICS, ModelManifest
from training.steps.dataset import DatasetError
from training.steps.prepare import PreparedDataset, write_data_yaml
from training.steps.train import check_onnx_model, offline_ultralytics

EVALUATION_FILE = "evaluation.json"
ARCHIVE_FILE = "model.tar.gz"
GATE_METRIC = "mAP50-95"
MATCH_IOU = 0.5
EVALUATION_CONFIDENCE = 0.001  # for mAP: the whole precision-recall curve
EMPTY_FRAME_RATE = "empty_frame_rate"


@dataclass(frozen=True)
class EvaluationReport:
    metrics: dict[str, float]
    split: str
    images: int
    instances: int
    input_size: int
    confidence_threshold: float
    iou_threshold: float
    dataset_version: str
    class_names: tuple[str, ...]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "gate_metric": {"name": GATE_METRIC, "value": self.metrics[GATE_METRIC]},
            "split": self.split,
            "images": self.images,
            "instances": self.instances,
            "input_size": self.input_size,
            "confidence_threshold": self.confidence_threshold,
            "iou_threshold": self.iou_threshold,
            "match_iou": MATCH_IOU,
            "dataset_version": self.dataset_version,
            "class_names": list(self.class_names),
            "per_class": self.per_class,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EvaluationReport:
        missing = [name for name in REQUIRED_METRICS if name not in raw.get("metrics", {})]
        if missing:
            raise ValueError(f"evaluation report lacks {', '.join(missing)}")
        return cls(
            metrics={k: float(v) for k, v in raw["metrics"].items()},
            split=str(raw["split"]),
            images=int(raw["images"]),
            instances=int(raw["instances"]),
            input_size=int(raw["input_size"]),
            confidence_threshold=float(raw["confidence_threshold"]),
            iou_threshold=float(raw["iou_threshold"]),
            dataset_version=str(raw["dataset_version"]),
            class_names=tuple(raw["class_names"]),
            per_class=dict(raw.get("per_class", {})),
        )


def precision_recall_at(
    stats: Mapping[str, Any], confidence: float
) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """Mean precision and recall over the classes present in the test labels, keeping detections >= confidence.

    `stats` are Ultralytics' validation statistics: `tp` (N x 10, correct at IoU 0.50:0.95), `conf`,
    `pred_cls` per detection and `target_cls` per labeled box. A class without detections has
    precision 0 (nothing right was found).
    """
    import numpy as np  # noqa: PLC0415

    tp = np.asarray(stats["tp"], dtype=bool).reshape(-1, 10)[:, 0] if len(stats["tp"]) else np.zeros(0, dtype=bool)
    conf = np.asarray(stats["conf"], dtype=float)
    predicted = np.asarray(stats["pred_cls"], dtype=int)
    targets = np.asarray(stats["target_cls"], dtype=int)
    per_class: dict[int, tuple[float, float]] = {}
    for class_id in sorted(set(targets.tolist())):
        kept = (predicted == class_id) & (conf >= confidence)
        correct = int(tp[kept].sum())
        n_predicted, n_labeled = int(kept.sum()), int((targets == class_id).sum())
        precision = correct / n_predicted if n_predicted else 0.0
        per_class[class_id] = (precision, correct / n_labeled)
    if not per_class:
        return 0.0, 0.0, per_class
    return (
        float(np.mean([p for p, _ in per_class.values()])),
        float(np.mean([r for _, r in per_class.values()])),
        per_class,
    )


def _recording_validator() -> type:
    """Ultralytics' detection validator that keeps its raw statistics on the metrics it returns."""
    import numpy as np  # noqa: PLC0415
    from ultralytics.models.yolo.detect import DetectionValidator  # noqa: PLC0415

    class RecordingValidator(DetectionValidator):
        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            # each image's best score (after NMS, where the best box always survives): nothing above the
            # deployment threshold means the device would report an empty frame
            scores = getattr(self, "image_top_scores", [])
            scores.extend(float(pred["conf"].max()) if len(pred["conf"]) else 0.0 for pred in preds)
            self.image_top_scores = scores
            super().update_metrics(preds, batch)

        def get_stats(self) -> dict[str, Any]:
            recorded = {key: (np.concatenate(v, 0) if v else np.zeros(0)) for key, v in self.metrics.stats.items()}
            recorded["image_top_scores"] = np.asarray(getattr(self, "image_top_scores", []), dtype=float)
            setattr(self.metrics, "recorded_stats", recorded)  # noqa: B010 - read back from the returned metrics
            return super().get_stats()

    return RecordingValidator


def evaluate_model(
    onnx_path: str | Path,
    dataset_dir: str | Path,
    *,
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    work_dir: str | Path,
) -> EvaluationReport:
    """Evaluate the ONNX model on the prepared dataset's test split."""
    dataset = PreparedDataset.load(dataset_dir)
    if dataset.counts.get("test", 0) == 0 or dataset.boxes.get("test", 0) == 0:
        raise DatasetError("the test split is empty or has no labeled defect; the model cannot be evaluated")
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
        name="test",
        exist_ok=True,
    )
    stats = results.recorded_stats
    precision, recall, per_class_pr = precision_recall_at(stats, confidence_threshold)
    metrics = {
        "precision": precision,
        "recall": recall,
        "mAP50": float(results.box.map50),
        "mAP50-95": float(results.box.map),
    }
    top_scores = stats["image_top_scores"]
    if len(top_scores):
        metrics[EMPTY_FRAME_RATE] = float((top_scores <= confidence_threshold).mean())
    per_class: dict[str, dict[str, float]] = {}
    for index, class_id in enumerate(results.box.ap_class_index):
        p, r = per_class_pr.get(int(class_id), (0.0, 0.0))
        per_class[dataset.class_names[int(class_id)]] = {
            "precision": p,
            "recall": r,
            "mAP50": float(results.box.ap50[index]),
            "mAP50-95": float(results.box.ap[index]),
        }
    return EvaluationReport(
        metrics=metrics,
        split="test",
        images=int(dataset.counts["test"]),
        instances=len(stats["target_cls"]),
        input_size=image_size,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        dataset_version=dataset.dataset_version,
        class_names=dataset.class_names,
        per_class=per_class,
    )


def write_report(report: EvaluationReport, directory: str | Path) -> Path:
    path = Path(directory) / EVALUATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    return path


def model_manifest(report: EvaluationReport, *, onnx_opset: int) -> ModelManifest:
    """`model.json` for the archive: everything the device needs to run the model as it was evaluated."""
    return ModelManifest(
        class_names=report.class_names,
        input_size=report.input_size,
        confidence_threshold=report.confidence_threshold,
        iou_threshold=report.iou_threshold,
        metrics={
            name: report.metrics[name] for name in (*REQUIRED_METRICS, EMPTY_FRAME_RATE) if name in report.metrics
        },
        dataset_version=report.dataset_version,
        onnx_opset=onnx_opset,
    )


def build_model_archive(
    onnx_path: str | Path,
    manifest: ModelManifest,
    destination: str | Path,
    *,
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write `model.tar.gz`: `model.onnx` and `model.json` at the root, then any extra (small) files."""
    ModelManifest.from_json(manifest.to_json())  # the archive never carries a manifest the reader rejects
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(destination, "w:gz") as archive:
        archive.add(str(onnx_path), arcname=MODEL_FILE)
        data = json.dumps(manifest.to_json(), indent=1).encode()
        info = tarfile.TarInfo(MANIFEST_FILE)
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))
        for name, path in (extra_files or {}).items():
            if name in (MODEL_FILE, MANIFEST_FILE):
                raise ValueError(f"extra file name {name!r} is reserved")
            archive.add(str(path), arcname=name)
    return destination


def read_model_archive(path: str | Path) -> tuple[ModelManifest, bytes, list[str]]:
    """(manifest, ONNX bytes, member names) of a model archive; raises ValueError if it breaks the contract."""
    with tarfile.open(path, "r:gz") as archive:
        names = archive.getnames()
        members = {m.name: m for m in archive.getmembers()}
        for required in (MODEL_FILE, MANIFEST_FILE):
            if required not in members or not members[required].isfile():
                raise ValueError(f"{path}: {required} missing at the archive root")
        manifest_file = archive.extractfile(members[MANIFEST_FILE])
        model_file = archive.extractfile(members[MODEL_FILE])
        if manifest_file is None or model_file is None:
            raise ValueError(f"{path}: unreadable archive members")
        manifest = ModelManifest.from_json(json.loads(manifest_file.read()))
        return manifest, model_file.read(), names


def evaluate_and_package(
    onnx_path: str | Path,
    dataset_dir: str | Path,
    *,
    evaluation_dir: str | Path,
    package_dir: str | Path,
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    onnx_opset: int,
    work_dir: str | Path,
    extra_files: Sequence[str | Path] = (),
) -> tuple[EvaluationReport, Path]:
    """The pipeline's Evaluate step: `evaluation.json` in one folder, `model.tar.gz` in the other."""
    report = evaluate_model(
        onnx_path,
        dataset_dir,
        image_size=image_size,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        work_dir=work_dir,
    )
    report_path = write_report(report, evaluation_dir)
    extras = {EVALUATION_FILE: report_path, **{Path(p).name: Path(p) for p in extra_files}}
    archive = build_model_archive(
        onnx_path,
        model_manifest(report, onnx_opset=onnx_opset),
        Path(package_dir) / ARCHIVE_FILE,
        extra_files=extras,
    )
    return report, archive
