"""The data that crosses from one app to another, defined once (see DESIGN.md, "Interfaces").

* A **label record** of the label feature group (written by labeling, read by training).
* The **model archive** of a model package (written by training, read by edge deployment and, as
  files, by the device).

Standard library only: Lambda functions and SageMaker step code bundle this module as
`shared/contracts.py` beside their own code, so `from shared.contracts import ...` works everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

# --------------------------------------------------------------------------------------------------
# Label feature group
# --------------------------------------------------------------------------------------------------

LABEL_SCHEMA_VERSION = 1

# Feature name -> Feature Store type. The record identifier is the image's S3 URI.
LABEL_FEATURES: dict[str, str] = {
    "image_uri": "String",
    "event_time": "String",  # ISO-8601 UTC, e.g. 2026-11-22T10:15:00.123Z
    "image_width": "Integral",
    "image_height": "Integral",
    "annotations": "String",  # JSON list of boxes, see Annotation
    "review_status": "String",  # approved | rejected
    "labeling_job": "String",
    "schema_version": "Integral",
}
RECORD_IDENTIFIER = "image_uri"
EVENT_TIME = "event_time"
REVIEW_STATUSES = ("approved", "rejected")


class ContractError(ValueError):
    """Data that does not follow the contract; the message says which field and why."""


@dataclass(frozen=True)
class Annotation:
    """One box in source-image pixels (x1, y1 top-left; x2, y2 bottom-right) with its class id."""

    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float

    def to_json(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Annotation:
        try:
            values = {key: float(raw[key]) for key in ("x1", "y1", "x2", "y2")}
            class_id = raw["class_id"]
        except (KeyError, TypeError, ValueError) as error:
            raise ContractError(f"annotation {dict(raw)!r}: needs numeric class_id, x1, y1, x2, y2 ({error})") from None
        if not isinstance(class_id, int) or isinstance(class_id, bool) or class_id < 0:
            raise ContractError(f"annotation {dict(raw)!r}: class_id must be a non-negative integer")
        if not all(math.isfinite(v) for v in values.values()):
            raise ContractError(f"annotation {dict(raw)!r}: coordinates must be finite numbers")
        return cls(class_id=class_id, **values)

    def problem(self, width: int, height: int, num_classes: int | None = None) -> str | None:
        """Why this box cannot be trained on in a `width` x `height` image, or None if it can."""
        if num_classes is not None and self.class_id >= num_classes:
            return f"unknown class id {self.class_id} (only {num_classes} classes)"
        if self.x2 <= self.x1 or self.y2 <= self.y1:
            return f"degenerate box ({self.x1}, {self.y1}, {self.x2}, {self.y2})"
        if self.x1 < 0 or self.y1 < 0 or self.x2 > width or self.y2 > height:
            return f"box ({self.x1}, {self.y1}, {self.x2}, {self.y2}) outside the {width}x{height} image"
        return None


def format_event_time(moment: datetime) -> str:
    """Feature Store's ISO-8601 form in UTC with milliseconds."""
    if moment.tzinfo is None:
        raise ContractError("event time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_event_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except (AttributeError, ValueError):
        raise ContractError(f"event_time {value!r}: not an ISO-8601 timestamp") from None


@dataclass(frozen=True)
class LabelRecord:
    image_uri: str
    event_time: str
    image_width: int
    image_height: int
    annotations: tuple[Annotation, ...]
    review_status: str
    labeling_job: str
    schema_version: int = LABEL_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.image_uri.startswith("s3://") or len(self.image_uri) < 8:
            raise ContractError(f"image_uri {self.image_uri!r}: must be an s3:// URI")
        parse_event_time(self.event_time)
        if self.image_width <= 0 or self.image_height <= 0:
            raise ContractError(
                f"{self.image_uri}: image size must be positive, got {self.image_width}x{self.image_height}"
            )
        if self.review_status not in REVIEW_STATUSES:
            raise ContractError(
                f"{self.image_uri}: review_status must be one of {REVIEW_STATUSES}, got {self.review_status!r}"
            )
        if not self.labeling_job:
            raise ContractError(f"{self.image_uri}: labeling_job must not be empty")

    @property
    def approved(self) -> bool:
        return self.review_status == "approved"

    def to_feature_store(self) -> list[dict[str, str]]:
        """The `Record` argument of sagemaker-featurestore-runtime PutRecord (all values as strings)."""
        values = {
            "image_uri": self.image_uri,
            "event_time": self.event_time,
            "image_width": str(self.image_width),
            "image_height": str(self.image_height),
            "annotations": json.dumps([a.to_json() for a in self.annotations], separators=(",", ":")),
            "review_status": self.review_status,
            "labeling_job": self.labeling_job,
            "schema_version": str(self.schema_version),
        }
        return [{"FeatureName": name, "ValueAsString": values[name]} for name in LABEL_FEATURES]

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> LabelRecord:
        """From a feature-name -> value mapping (an offline-store row, or a GetRecord answer)."""
        missing = [name for name in LABEL_FEATURES if values.get(name) in (None, "")]
        if missing:
            raise ContractError(f"label record {values.get('image_uri')!r}: missing feature(s) {', '.join(missing)}")
        try:
            raw_annotations = (
                json.loads(values["annotations"]) if isinstance(values["annotations"], str) else values["annotations"]
            )
        except json.JSONDecodeError:
            raise ContractError(f"label record {values['image_uri']!r}: annotations are not JSON") from None
        if not isinstance(raw_annotations, list):
            raise ContractError(f"label record {values['image_uri']!r}: annotations must be a JSON list")
        try:
            width, height, version = (
                int(values["image_width"]),
                int(values["image_height"]),
                int(values["schema_version"]),
            )
        except (TypeError, ValueError):
            raise ContractError(
                f"label record {values['image_uri']!r}: width, height and schema_version must be integers"
            ) from None
        if version > LABEL_SCHEMA_VERSION:
            raise ContractError(
                f"label record {values['image_uri']!r}: schema_version {version} is newer than {LABEL_SCHEMA_VERSION}"
            )
        return cls(
            image_uri=str(values["image_uri"]),
            event_time=str(values["event_time"]),
            image_width=width,
            image_height=height,
            annotations=tuple(Annotation.from_json(item) for item in raw_annotations),
            review_status=str(values["review_status"]),
            labeling_job=str(values["labeling_job"]),
            schema_version=version,
        )

    @classmethod
    def from_feature_store(cls, record: Sequence[Mapping[str, str]]) -> LabelRecord:
        return cls.from_values({item["FeatureName"]: item["ValueAsString"] for item in record})


def latest_per_image(records: Sequence[LabelRecord]) -> dict[str, LabelRecord]:
    """The newest record of each image (by event time; the later one in the list wins a tie)."""
    newest: dict[str, LabelRecord] = {}
    for record in records:
        current = newest.get(record.image_uri)
        if current is None or parse_event_time(record.event_time) >= parse_event_time(current.event_time):
            newest[record.image_uri] = record
    return newest


# --------------------------------------------------------------------------------------------------
# Model archive (model.tar.gz of a model package)
# --------------------------------------------------------------------------------------------------

# 2: the optional `precisions` object (an INT8 file beside the FP32 model); archives of version 1 stay valid.
MODEL_ARCHIVE_SCHEMA_VERSION = 2
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
INT8_MODEL_FILE = "model.int8.onnx"
REQUIRED_METRICS = ("precision", "recall", "mAP50", "mAP50-95")
FP32 = "fp32"
INT8 = "int8"
PRECISIONS = (FP32, INT8)
# The INT8 model's per-channel weights need DequantizeLinear's `axis` attribute, added in ONNX opset 13.
INT8_MIN_ONNX_OPSET = 13


@dataclass(frozen=True)
class ModelVariant:
    """One ONNX file of the archive: the model at one numeric precision, with its own test metrics.

    `details` says how a variant other than FP32 was made (for INT8: the quantization method, the
    number of calibration images, the nodes kept in float); it is informative, nothing reads it.
    """

    precision: str
    file: str
    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"file": self.file, "metrics": dict(self.metrics)}
        if self.details:
            document["details"] = dict(self.details)
        return document

    @classmethod
    def from_json(cls, precision: str, raw: Any) -> ModelVariant:
        where = f"{MANIFEST_FILE}: precisions.{precision}"
        if not isinstance(raw, Mapping):
            raise ContractError(f"{where} must be an object with file and metrics")
        try:
            variant = cls(
                precision=precision,
                file=str(raw["file"]),
                metrics={str(k): float(v) for k, v in dict(raw.get("metrics", {})).items()},
                details=dict(raw.get("details", {})),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ContractError(f"{where}: missing or invalid field ({error})") from None
        variant.check()
        return variant

    def check(self) -> None:
        where = f"{MANIFEST_FILE}: precisions.{self.precision}"
        if self.precision not in PRECISIONS:
            raise ContractError(f"{where}: unknown precision (known: {', '.join(PRECISIONS)})")
        if "/" in self.file or "\\" in self.file or not self.file.endswith(".onnx") or self.file == ".onnx":
            raise ContractError(f"{where}: file must be an .onnx file at the archive root, got {self.file!r}")
        if (self.precision == FP32) != (self.file == MODEL_FILE):
            raise ContractError(f"{where}: the FP32 model is {MODEL_FILE} and only it, got {self.file!r}")
        missing = [metric for metric in REQUIRED_METRICS if metric not in self.metrics]
        if missing:
            raise ContractError(f"{where}: metrics lack {', '.join(missing)}")


@dataclass(frozen=True)
class SplitStatistics:
    """What the model did on its test split, at its deployment threshold: the baseline that the devices'
    behaviour on the line is compared with (share of frames flagged, scores in an uncertainty band)."""

    images: int
    detection_rate: float  # share of test images with at least one detection >= the confidence threshold
    top_scores: tuple[float, ...]  # highest candidate score of each test image (0.0 when nothing was found)

    def share_between(self, low: float, high: float) -> float:
        """Share of test images whose top score is in [low, high) (e.g. a device's uncertainty band)."""
        if not self.top_scores:
            return 0.0
        return sum(1 for score in self.top_scores if low <= score < high) / len(self.top_scores)

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "detection_rate": self.detection_rate,
            "top_scores": [round(score, 4) for score in self.top_scores],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SplitStatistics:
        try:
            statistics = cls(
                images=int(raw["images"]),
                detection_rate=float(raw["detection_rate"]),
                top_scores=tuple(float(score) for score in raw["top_scores"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ContractError(f"{MANIFEST_FILE}: test_statistics: missing or invalid field ({error})") from None
        if statistics.images < 0 or not 0.0 <= statistics.detection_rate <= 1.0:
            raise ContractError(f"{MANIFEST_FILE}: test_statistics: images >= 0 and detection_rate in [0, 1]")
        if not all(0.0 <= score <= 1.0 for score in statistics.top_scores):
            raise ContractError(f"{MANIFEST_FILE}: test_statistics: top_scores must be in [0, 1]")
        return statistics


@dataclass(frozen=True)
class ModelManifest:
    """`model.json` beside `model.onnx` at the root of the model archive.

    `model.onnx` is always the FP32 model and `metrics` are its test metrics (every reader of version 1
    reads these). `variants` are further files of the same model at other precisions (an INT8 model),
    each with its own test metrics; in model.json all of them, FP32 included, are listed under
    `precisions` (`{"fp32": {"file": "model.onnx", "metrics": ...}, "int8": {...}}`).
    """

    class_names: tuple[str, ...]
    input_size: int  # square letterbox side the model was exported and evaluated at
    confidence_threshold: float
    iou_threshold: float
    metrics: dict[str, float] = field(default_factory=dict)
    dataset_version: str = ""
    onnx_opset: int = 17
    test_statistics: SplitStatistics | None = None  # absent in archives made before it existed
    schema_version: int = MODEL_ARCHIVE_SCHEMA_VERSION
    variants: tuple[ModelVariant, ...] = ()  # precisions other than FP32 (model.onnx)

    def to_json(self) -> dict[str, Any]:
        document = {
            "schema_version": self.schema_version,
            "model_file": MODEL_FILE,
            "class_names": list(self.class_names),
            "input_size": self.input_size,
            "confidence_threshold": self.confidence_threshold,
            "iou_threshold": self.iou_threshold,
            "metrics": dict(self.metrics),
            "dataset_version": self.dataset_version,
            "onnx_opset": self.onnx_opset,
            "precisions": {variant.precision: variant.to_json() for variant in self.all_variants()},
        }
        if self.test_statistics is not None:
            document["test_statistics"] = self.test_statistics.to_json()
        return document

    def all_variants(self) -> tuple[ModelVariant, ...]:
        """Every model file of the archive, FP32 (model.onnx) first."""
        return (ModelVariant(precision=FP32, file=MODEL_FILE, metrics=dict(self.metrics)), *self.variants)

    def variant(self, precision: str) -> ModelVariant | None:
        return next((variant for variant in self.all_variants() if variant.precision == precision), None)

    @property
    def model_files(self) -> tuple[str, ...]:
        return tuple(variant.file for variant in self.all_variants())

    def with_variant(self, variant: ModelVariant) -> ModelManifest:
        """This manifest with `variant` added (or replacing the one of the same precision)."""
        variant.check()
        if variant.precision == FP32:
            raise ContractError(f"{MANIFEST_FILE}: the FP32 model is model_file and metrics, not a variant")
        others = tuple(v for v in self.variants if v.precision != variant.precision)
        return replace(self, variants=(*others, variant), schema_version=MODEL_ARCHIVE_SCHEMA_VERSION)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ModelManifest:
        try:
            manifest = cls(
                class_names=tuple(str(name) for name in raw["class_names"]),
                input_size=int(raw["input_size"]),
                confidence_threshold=float(raw["confidence_threshold"]),
                iou_threshold=float(raw["iou_threshold"]),
                metrics={str(k): float(v) for k, v in dict(raw.get("metrics", {})).items()},
                dataset_version=str(raw.get("dataset_version", "")),
                onnx_opset=int(raw.get("onnx_opset", 17)),
                test_statistics=(
                    SplitStatistics.from_json(raw["test_statistics"])
                    if raw.get("test_statistics") is not None
                    else None
                ),
                schema_version=int(raw.get("schema_version", MODEL_ARCHIVE_SCHEMA_VERSION)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ContractError(f"{MANIFEST_FILE}: missing or invalid field ({error})") from None
        if not manifest.class_names:
            raise ContractError(f"{MANIFEST_FILE}: class_names must not be empty")
        if manifest.input_size < 32 or manifest.input_size % 32:
            raise ContractError(
                f"{MANIFEST_FILE}: input_size must be a positive multiple of 32, got {manifest.input_size}"
            )
        for name in ("confidence_threshold", "iou_threshold"):
            if not 0.0 < getattr(manifest, name) < 1.0:
                raise ContractError(f"{MANIFEST_FILE}: {name} must be between 0 and 1")
        missing = [metric for metric in REQUIRED_METRICS if metric not in manifest.metrics]
        if missing:
            raise ContractError(f"{MANIFEST_FILE}: metrics lack {', '.join(missing)}")
        precisions = raw.get("precisions")
        fp32 = precisions.get(FP32) if isinstance(precisions, Mapping) else None
        if fp32 is not None and ModelVariant.from_json(FP32, fp32).metrics != manifest.metrics:
            raise ContractError(f"{MANIFEST_FILE}: precisions.fp32.metrics differ from metrics (both are model.onnx's)")
        return replace(manifest, variants=_variants(precisions))


def _variants(raw: Any) -> tuple[ModelVariant, ...]:
    """The non-FP32 entries of model.json's `precisions` (absent in version 1 manifests)."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ContractError(f"{MANIFEST_FILE}: precisions must be an object keyed by precision")
    return tuple(ModelVariant.from_json(str(name), value) for name, value in raw.items() if name != FP32)


# --------------------------------------------------------------------------------------------------
# Device telemetry: what every device publishes over MQTT (read by the edge app's telemetry store)
# --------------------------------------------------------------------------------------------------

DEVICE_MESSAGE_VERSION = 1
MAX_DEVICE_MESSAGE_BYTES = 128 * 1024  # AWS IoT Core's largest MQTT payload
_THING_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")


def _field(raw: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """raw[name] checked against `kind` (bool is not a number here); None allowed when optional."""
    if name not in raw:
        if optional:
            return None
        raise ContractError(f"{name}: missing")
    value = raw[name]
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ContractError(f"{name}: expected {' or '.join(k.__name__ for k in kinds)}, got a boolean")
    if not isinstance(value, kinds):
        raise ContractError(f"{name}: expected {' or '.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
    return value


def _count(raw: Mapping[str, Any], name: str) -> int:
    value = _field(raw, name, int)
    if value < 0:
        raise ContractError(f"{name}: must not be negative, got {value}")
    return int(value)


def _milliseconds(raw: Mapping[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = _field(raw, name, (int, float), optional=optional)
    if value is None:
        return None
    if not math.isfinite(value) or value < 0:
        raise ContractError(f"{name}: must be a finite number of milliseconds >= 0, got {value}")
    return float(value)


def _score(raw: Mapping[str, Any], name: str, *, optional: bool = False) -> float | None:
    value = _field(raw, name, (int, float), optional=optional)
    if value is not None and not 0.0 <= value <= 1.0:
        raise ContractError(f"{name}: must be in [0, 1], got {value}")
    return None if value is None else float(value)


def _device_header(raw: Any, kind: str) -> tuple[str, datetime]:
    """The fields every device message starts with: its version, the thing and the moment."""
    if not isinstance(raw, Mapping):
        raise ContractError(f"a {kind} must be a JSON object, got {type(raw).__name__}")
    version = _field(raw, "message_version", int)
    if version != DEVICE_MESSAGE_VERSION:
        raise ContractError(f"message_version: {version} is not a version this reader knows ({DEVICE_MESSAGE_VERSION})")
    thing = _field(raw, "thing", str)
    if not 1 <= len(thing) <= 128 or not set(thing) <= _THING_NAME_CHARACTERS:
        raise ContractError(f"thing: {thing[:140]!r} is not an IoT thing name")
    stamp = _field(raw, "timestamp", str)
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(f"timestamp: {stamp[:60]!r} is not an ISO-8601 time") from None
    if moment.tzinfo is None:
        raise ContractError(f"timestamp: {stamp[:60]!r} has no time zone (devices send UTC, ending in Z)")
    return thing, moment.astimezone(UTC)


@dataclass(frozen=True)
class DeviceDetection:
    """One box a device found: source-image pixels (x1, y1, x2, y2), its class and score."""

    box: tuple[float, float, float, float]
    class_id: int
    class_name: str
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"box": list(self.box), "class_id": self.class_id, "class_name": self.class_name, "score": self.score}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> DeviceDetection:
        if not isinstance(raw, Mapping):
            raise ContractError(f"{where}: expected an object")
        try:
            box = _field(raw, "box", list)
            if len(box) != 4 or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in box):
                raise ContractError("box: expected four numbers")
            score = float(_field(raw, "score", (int, float)))
            if not 0.0 <= score <= 1.0:
                raise ContractError(f"score: must be in [0, 1], got {score}")
            detection = cls(
                box=(float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                class_id=_count(raw, "class_id"),
                class_name=_field(raw, "class_name", str),
                score=score,
            )
        except ContractError as error:
            raise ContractError(f"{where}.{error}") from None
        if not all(math.isfinite(v) for v in detection.box):
            raise ContractError(f"{where}.box: coordinates must be finite")
        return detection


@dataclass(frozen=True)
class DeviceResult:
    """The result of one frame (`edge_deployment.results_topic`), published whether or not it found a defect.

    `model_version` is the model component version serving (None before a model has loaded);
    `upload_key` names the frame in the data bucket when it was sent back for labeling.
    """

    thing: str
    image: str
    timestamp: datetime
    model_version: str | None
    latency_ms: float
    detections: tuple[DeviceDetection, ...]
    upload_key: str | None = None
    top_candidate_score: float | None = None  # `top_score`: the best candidate, also below the threshold

    FIELDS = frozenset(
        (
            "message_version", "thing", "image", "timestamp", "model_version", "latency_ms", "detections",
            "upload_key", "top_score",
        )
    )  # fmt: skip

    @property
    def defect(self) -> bool:
        """The frame was flagged: at least one detection at the device's confidence threshold."""
        return bool(self.detections)

    @property
    def top_score(self) -> float:
        """The best candidate's score (the device's `top_score`), else the best detection's, else 0."""
        if self.top_candidate_score is not None:
            return self.top_candidate_score
        return max((detection.score for detection in self.detections), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {
            "message_version": DEVICE_MESSAGE_VERSION,
            "thing": self.thing,
            "image": self.image,
            "timestamp": format_event_time(self.timestamp),
            "model_version": self.model_version,
            "latency_ms": self.latency_ms,
            "detections": [detection.to_json() for detection in self.detections],
            "upload_key": self.upload_key,
            "top_score": self.top_score,
        }

    @classmethod
    def from_json(cls, raw: Any) -> DeviceResult:
        """Parse a result message; ContractError names the field. Unknown fields are ignored (kept raw)."""
        thing, moment = _device_header(raw, "result")
        detections = _field(raw, "detections", list)
        return cls(
            thing=thing,
            image=_field(raw, "image", str),
            timestamp=moment,
            model_version=_field(raw, "model_version", str, optional=True),
            latency_ms=float(_milliseconds(raw, "latency_ms") or 0.0),
            detections=tuple(DeviceDetection.from_json(d, f"detections[{i}]") for i, d in enumerate(detections)),
            upload_key=_field(raw, "upload_key", str, optional=True),
            top_candidate_score=_score(raw, "top_score", optional=True),
        )


@dataclass(frozen=True)
class DeviceHeartbeat:
    """A device's health (`edge_deployment.heartbeat_topic`), every `heartbeat_interval_seconds`.

    Counters (`frames_processed`, `frames_failed`, `publish_failures`, `uploads_*`) count since the
    component started; `frames_since_last_heartbeat` and `mean_latency_ms` cover the last interval.
    """

    thing: str
    timestamp: datetime
    status: str  # "serving" or "waiting for a model"
    model_version: str | None
    model_error: str | None
    model_precision: str | None  # fp32 | int8
    execution_provider: str | None
    frames_processed: int
    frames_failed: int
    frames_since_last_heartbeat: int
    mean_latency_ms: float | None
    publish_failures: int
    uploads_enabled: bool
    uploads_pending: int
    uploads_dropped: int
    uploads_done: int
    model_precision_reason: str | None = None
    model_warning: str | None = None
    upload_error: str | None = None
    uploads_capped: int = 0  # frames not sent back because of the hourly cap
    empty_frame_rate: float | None = None
    expected_empty_frame_rate: float | None = None
    empty_frames_drifting: bool = False
    expected_uncertain_frame_rate: float | None = None  # the test split's share of top scores in the band
    publish_pending: int = 0  # results/heartbeats the nucleus refused, waiting on the device to be published again
    publish_dropped: int = 0  # of those, dropped (the device's outbox full or not writable): lost

    FIELDS = frozenset(
        (
            "message_version", "thing", "timestamp", "status", "model_version", "model_error", "model_precision",
            "model_precision_reason", "execution_provider", "model_warning", "frames_processed", "frames_failed",
            "frames_since_last_heartbeat", "mean_latency_ms", "publish_failures", "uploads_enabled",
            "uploads_pending", "uploads_dropped", "uploads_done", "upload_error", "uploads_capped",
            "empty_frame_rate", "expected_empty_frame_rate", "empty_frames_drifting", "expected_uncertain_frame_rate",
            "publish_pending", "publish_dropped",
        )
    )  # fmt: skip

    @property
    def serving(self) -> bool:
        return self.status == "serving"

    @classmethod
    def from_json(cls, raw: Any) -> DeviceHeartbeat:
        """Parse a heartbeat message; ContractError names the field. Unknown fields are ignored (kept raw)."""
        thing, moment = _device_header(raw, "heartbeat")

        def text(name: str) -> str | None:
            return _field(raw, name, str, optional=True)

        def rate(name: str) -> float | None:
            return _score(raw, name, optional=True)

        return cls(
            thing=thing,
            timestamp=moment,
            status=_field(raw, "status", str),
            model_version=text("model_version"),
            model_error=text("model_error"),
            model_precision=text("model_precision"),
            execution_provider=text("execution_provider"),
            frames_processed=_count(raw, "frames_processed"),
            frames_failed=_count(raw, "frames_failed"),
            frames_since_last_heartbeat=_count(raw, "frames_since_last_heartbeat"),
            mean_latency_ms=_milliseconds(raw, "mean_latency_ms", optional=True),
            publish_failures=_count(raw, "publish_failures"),
            uploads_enabled=_field(raw, "uploads_enabled", bool),
            uploads_pending=_count(raw, "uploads_pending"),
            uploads_dropped=_count(raw, "uploads_dropped"),
            uploads_done=_count(raw, "uploads_done"),
            model_precision_reason=text("model_precision_reason"),
            model_warning=text("model_warning"),
            upload_error=text("upload_error"),
            uploads_capped=_count(raw, "uploads_capped") if raw.get("uploads_capped") is not None else 0,
            empty_frame_rate=rate("empty_frame_rate"),
            expected_empty_frame_rate=rate("expected_empty_frame_rate"),
            empty_frames_drifting=bool(_field(raw, "empty_frames_drifting", bool, optional=True)),
            expected_uncertain_frame_rate=rate("expected_uncertain_frame_rate"),
            publish_pending=_count(raw, "publish_pending") if raw.get("publish_pending") is not None else 0,
            publish_dropped=_count(raw, "publish_dropped") if raw.get("publish_dropped") is not None else 0,
        )
