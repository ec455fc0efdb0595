"""Model-assisted pre-labels: the newest approved model's boxes for each image a round selected.

The boxes come from the device's own detector (`edge_deployment/components/inference/inspector/detector.py`,
bundled unchanged into the pre-label function with the device's pinned onnxruntime, numpy and Pillow),
run on the model archive of the training app's newest *approved* model package (found by the group's
name, `shared.names`). So a labeler starts from exactly what the devices would report at the model's own
thresholds. No approved model (the first rounds): no pre-labels, and labelers draw from scratch.

`pre_label_images` works through `<round>/selected.jsonl` from a cursor, writes one part file per batch
(`<round>/pre-labels/part-NNNNNN.jsonl`) and hands back the cursor when its time runs low; a retried call
rewrites the same part. `read_pre_labels` gives the backends the result by image URI.

An image the model cannot run on, or whose decoded size differs from its header (EXIF orientation: the
boxes would not fit what labelers see), gets no pre-label and is reported; it is labeled from scratch.
"""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from labeling.runtime.errors import ConfigurationError
from labeling.runtime.s3io import is_missing, list_keys, parse_s3_uri, read_jsonl, write_jsonl
from shared.contracts import MANIFEST_FILE, MODEL_FILE, format_event_time
from shared.runtime.model_registry import model_data_url, newest_approved_package_arn

BATCH = 50  # images per part file
MIN_SECONDS_LEFT = 60.0
APPROVED = "Approved"


def pre_labels_prefix(run_prefix: str) -> str:
    return f"{run_prefix}pre-labels/"


@dataclass(frozen=True)
class Box:
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float
    score: float


@dataclass(frozen=True)
class PreLabel:
    uri: str
    width: int
    height: int
    model: str  # the model package ARN
    model_name: str  # <group>-v<version>, for job names and Label Studio's model_version
    created: str  # when the boxes were computed (Feature Store's time format)
    boxes: tuple[Box, ...] = ()

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["boxes"] = [asdict(box) for box in self.boxes]
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PreLabel:
        return cls(
            uri=str(raw["uri"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            model=str(raw["model"]),
            model_name=str(raw["model_name"]),
            created=str(raw["created"]),
            boxes=tuple(
                Box(**{k: box[k] for k in ("class_id", "x1", "y1", "x2", "y2", "score")}) for box in raw["boxes"]
            ),
        )


@dataclass(frozen=True)
class ModelRef:
    arn: str
    name: str
    model_data_url: str


@dataclass
class PreLabelCursor:
    """Where pre-labeling stands; `model` is empty when no approved model exists (then nothing is done)."""

    next: int = 0
    total: int = 0
    labeled: int = 0
    boxes: int = 0
    skipped: int = 0
    model: str = ""
    model_name: str = ""
    model_data_url: str = ""
    done: bool = False
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        raw["problems"] = self.problems[-5:]  # the state machine's payload stays small; the report has all
        return raw

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> PreLabelCursor:
        return cls(**dict(raw)) if raw else cls()


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


def newest_approved_model(sagemaker: Any, *, group_name: str) -> ModelRef | None:
    """The group's newest approved model package with its archive, None when there is none (yet)."""
    arn = newest_approved_package_arn(sagemaker, group_name=group_name)
    if arn is None:
        return None
    described = sagemaker.describe_model_package(ModelPackageName=arn)
    url = model_data_url(described)
    if not url:
        raise ConfigurationError(f"approved model package {arn} has no model archive (ModelDataUrl)")
    version = described.get("ModelPackageVersion", arn.rsplit("/", 1)[-1])
    return ModelRef(arn=arn, name=f"{group_name}-v{version}", model_data_url=url)


def extract_model_archive(archive: Path, destination: Path) -> Path:
    """Unpack model.onnx and model.json from the root of a model archive (nothing else, no path tricks)."""
    destination.mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name.removeprefix("./")
                if name not in (MODEL_FILE, MANIFEST_FILE) or not member.isfile():
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                (destination / name).write_bytes(source.read())
                found.add(name)
    except (tarfile.TarError, OSError) as error:
        raise ConfigurationError(f"model archive {archive.name} cannot be read: {error}") from None
    missing = {MODEL_FILE, MANIFEST_FILE} - found
    if missing:
        raise ConfigurationError(f"model archive {archive.name} lacks {', '.join(sorted(missing))} at its root")
    return destination


def detector_module() -> Any:
    """The device's detector module: `inspector.detector` in the function bundle, else the repository's copy."""
    try:
        from inspector import detector  # noqa: PLC0415 - the Lambda bundle
    except ImportError:
        from edge_deployment.components.inference.inspector import detector  # noqa: PLC0415
    return detector


_DETECTORS: dict[str, Any] = {}  # one loaded model per archive URL and warm function container


def load_model_detector(s3: Any, model_data_url: str) -> Any:
    """Download and unpack a model archive, and load it with the device's detector (model.json's thresholds)."""
    bucket, key = parse_s3_uri(model_data_url)
    folder = Path(tempfile.mkdtemp(prefix="pre-label-model-"))
    archive = folder / "model.tar.gz"
    s3.download_file(bucket, key, str(archive))
    extract_model_archive(archive, folder / "model")
    archive.unlink()
    return detector_module().load_detector(folder / "model")


# --------------------------------------------------------------------------------------------------
# Pre-labeling a round's selection
# --------------------------------------------------------------------------------------------------


def _never_late() -> float:
    return float("inf")


def pre_label_images(
    s3: Any,
    sagemaker: Any,
    *,
    bucket: str,
    run_prefix: str,
    group_name: str,
    images: list[Any],
    cursor: PreLabelCursor | None = None,
    time_left: Callable[[], float] = _never_late,
    load_detector: Callable[[str], Any] | None = None,
    model: ModelRef | None = None,
) -> PreLabelCursor:
    """Run the newest approved model (or `model`) over `images` (`rounds.SelectedImage`s) from `cursor` on."""
    cursor = PreLabelCursor(**asdict(cursor)) if cursor else PreLabelCursor()
    cursor.total = len(images)
    if cursor.done:
        return cursor
    if not cursor.model_data_url:
        model = model or newest_approved_model(sagemaker, group_name=group_name)
        if model is None:
            cursor.done = True
            return cursor
        cursor.model, cursor.model_name, cursor.model_data_url = model.arn, model.name, model.model_data_url
    if load_detector is not None:
        detector = load_detector(cursor.model_data_url)
    else:
        if cursor.model_data_url not in _DETECTORS:
            _DETECTORS.clear()
            _DETECTORS[cursor.model_data_url] = load_model_detector(s3, cursor.model_data_url)
        detector = _DETECTORS[cursor.model_data_url]
    module = detector_module()
    while cursor.next < len(images):
        batch = images[cursor.next : cursor.next + BATCH]
        rows: list[dict[str, Any]] = []
        for image in batch:
            label, problem = _pre_label(s3, detector, module, image, cursor)
            if label is not None:
                rows.append(label.to_json())
                cursor.labeled += 1
                cursor.boxes += len(label.boxes)
            else:
                cursor.skipped += 1
                cursor.problems.append(f"{image.uri}: {problem}")
        write_jsonl(s3, bucket, f"{pre_labels_prefix(run_prefix)}part-{cursor.next:06d}.jsonl", rows)
        cursor.next += len(batch)
        if time_left() < MIN_SECONDS_LEFT:
            break
    cursor.done = cursor.next >= len(images)
    if cursor.done and cursor.problems:
        write_jsonl(
            s3,
            bucket,
            f"{run_prefix}reports/no-pre-label.jsonl",
            ({"problem": problem} for problem in cursor.problems),
        )
    return cursor


def _pre_label(s3: Any, detector: Any, module: Any, image: Any, cursor: PreLabelCursor) -> tuple[PreLabel | None, str]:
    bucket, key = parse_s3_uri(image.uri)
    try:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as error:
        if is_missing(error):
            return None, "the image is gone"
        raise
    try:
        result = detector.detect(module.load_image(data, name=key))
    except module.DetectorError as error:
        return None, f"the model cannot run on it ({error})"
    if (result.width, result.height) != (image.width, image.height):
        return None, (
            f"decoded as {result.width}x{result.height} but its header says {image.width}x{image.height} "
            "(EXIF orientation); labeled from scratch"
        )
    boxes = tuple(
        Box(
            class_id=detection.class_id,
            x1=round(detection.box[0], 2),
            y1=round(detection.box[1], 2),
            x2=round(detection.box[2], 2),
            y2=round(detection.box[3], 2),
            score=round(detection.score, 4),
        )
        for detection in result.detections
        if detection.box[2] > detection.box[0] and detection.box[3] > detection.box[1]
    )
    label = PreLabel(
        uri=image.uri,
        width=image.width,
        height=image.height,
        model=cursor.model,
        model_name=cursor.model_name,
        created=format_event_time(datetime.now(UTC)),
        boxes=boxes,
    )
    return label, ""


def read_pre_labels(s3: Any, *, bucket: str, run_prefix: str) -> dict[str, PreLabel]:
    """The round's pre-labels by image URI (empty when there was no approved model)."""
    labels: dict[str, PreLabel] = {}
    for part in list_keys(s3, bucket, pre_labels_prefix(run_prefix)):
        for row in read_jsonl(s3, bucket, part):
            label = PreLabel.from_json(row)
            labels[label.uri] = label
    return labels
