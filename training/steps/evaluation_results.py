"""What the evaluation step found: each model's scores, `evaluation.json`, and the whole evaluation.

Read by the step (`training.steps.evaluate`) that makes them and by the HTML report
(`training.steps.report`) that shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import REQUIRED_METRICS
from training.steps.comparison import Comparison, ImageResult, Score
from training.steps.gate import GateDecision
from training.steps.prepare import PreparedDataset

GATE_METRIC = "mAP50-95"
MATCH_IOU = 0.5


@dataclass(frozen=True)
class ModelEvaluation:
    """One model on the test split: what the report shows of it."""

    label: str  # "new model" / "approved model"
    results: list[ImageResult]
    score: Score
    precision: float
    recall: float
    confidence_threshold: float
    input_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "intervals": self.score.to_json()["intervals"],
            "images": self.score.images,
            "confidence_threshold": self.confidence_threshold,
            "input_size": self.input_size,
        }

    @property
    def metrics(self) -> dict[str, float]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "mAP50": self.score.map50,
            "mAP50-95": self.score.map50_95,
        }


@dataclass(frozen=True)
class EvaluationReport:
    """`evaluation.json`: the new model's test metrics with intervals, the comparison and the verdict."""

    metrics: dict[str, float]
    intervals: dict[str, list[float]]
    split: str
    images: int
    instances: int
    input_size: int
    confidence_threshold: float
    iou_threshold: float
    dataset_version: str
    class_names: tuple[str, ...]
    gate: dict[str, Any]
    test_statistics: dict[str, Any]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    champion: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None
    bootstrap: dict[str, Any] = field(default_factory=dict)
    registry_metadata: dict[str, str] = field(default_factory=dict)  # the model package's metadata (strings)
    int8: dict[str, Any] | None = None  # the INT8 model's metrics beside FP32's, or why there is none

    def to_json(self) -> dict[str, Any]:
        return {
            "metrics": dict(self.metrics),
            "intervals": dict(self.intervals),
            "gate_metric": {"name": GATE_METRIC, "value": self.metrics[GATE_METRIC]},
            "gate": dict(self.gate),
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
            "test_statistics": dict(self.test_statistics),
            "champion": self.champion,
            "comparison": self.comparison,
            "bootstrap": dict(self.bootstrap),
            "registry_metadata": dict(self.registry_metadata),
            "int8": self.int8,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EvaluationReport:
        missing = [name for name in REQUIRED_METRICS if name not in raw.get("metrics", {})]
        if missing:
            raise ValueError(f"evaluation report lacks {', '.join(missing)}")
        return cls(
            metrics={k: float(v) for k, v in raw["metrics"].items()},
            intervals={k: [float(x) for x in v] for k, v in raw.get("intervals", {}).items()},
            split=str(raw["split"]),
            images=int(raw["images"]),
            instances=int(raw["instances"]),
            input_size=int(raw["input_size"]),
            confidence_threshold=float(raw["confidence_threshold"]),
            iou_threshold=float(raw["iou_threshold"]),
            dataset_version=str(raw["dataset_version"]),
            class_names=tuple(raw["class_names"]),
            gate=dict(raw.get("gate", {})),
            test_statistics=dict(raw.get("test_statistics", {})),
            per_class=dict(raw.get("per_class", {})),
            champion=raw.get("champion"),
            comparison=raw.get("comparison"),
            bootstrap=dict(raw.get("bootstrap", {})),
            registry_metadata={str(k): str(v) for k, v in raw.get("registry_metadata", {}).items()},
            int8=raw.get("int8"),
        )

    @property
    def verdict(self) -> str:
        return str(self.gate["verdict"])


@dataclass(frozen=True)
class Evaluation:
    """Everything the evaluation step found: what the report, the archive and the gate are made of."""

    report: EvaluationReport
    decision: GateDecision
    challenger: ModelEvaluation
    champion: ModelEvaluation | None
    comparison: Comparison | None
    compared_images: list[str]  # names of the test images both models were compared on
    excluded_images: list[str]  # test images the champion was trained or validated on
    dataset: PreparedDataset
