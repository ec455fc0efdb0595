"""SageMaker Ground Truth for the labeling rounds: job names, job requests, worker task files, output manifests.

A round runs two built-in Ground Truth tasks on the same images:

1. **Bounding box** (`BoundingBox`): workers draw a box around every defect.
2. **Review**: either **verification** (`VerificationBoundingBox`: a reviewer approves or rejects each
   image's boxes) or **adjustment** (`AdjustmentBoundingBox`: a reviewer corrects the boxes).

Output manifests are parsed exactly as Ground Truth writes them (see "Labeling job output data" and
"Label verification and adjustment data in the output manifest" in the SageMaker developer guide) and
turned into `LabelRecord`s for the label feature group.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from string import Template
from typing import Any

from labeling.runtime.config import LabelingConfig, Workforce
from labeling.runtime.errors import ConfigurationError, ManifestError, NoLabelsError
from shared.contracts import Annotation, LabelRecord, format_event_time

TASK_UI_DIR = Path(__file__).resolve().parent / "task_ui"
LABEL_CATEGORIES_FILE = TASK_UI_DIR / "label-categories.json"
INSTRUCTIONS_FILE = TASK_UI_DIR / "instructions.html"

BOXES = "boxes"
PRE_LABELED = "pre-labeled"  # the first job when the model's boxes are offered: workers correct them
VERIFICATION = "verification"
ADJUSTMENT = "adjustment"
JOB_KINDS = (BOXES, PRE_LABELED, VERIFICATION, ADJUSTMENT)

# Label attribute names in the manifests (a review job must use another name than the job it reviews).
BOXES_ATTRIBUTE = "defect-boxes"
PRE_LABEL_ATTRIBUTE = "defect-boxes-model"  # the model's boxes in a pre-labeled job's input manifest
REVIEW_ATTRIBUTES = {VERIFICATION: "defect-boxes-verified", ADJUSTMENT: "defect-boxes-adjusted"}

# Built-in task types, as named in the ARNs of their pre-annotation (PRE-) and consolidation (ACS-) functions.
TASK_TYPES = {
    BOXES: "BoundingBox",
    PRE_LABELED: "AdjustmentBoundingBox",
    VERIFICATION: "VerificationBoundingBox",
    ADJUSTMENT: "AdjustmentBoundingBox",
}

# The AWS account that owns Ground Truth's built-in PRE-<task type> and ACS-<task type> Lambda functions in
# each region where the bounding-box, verification and adjustment task types are offered.
# Source: SageMaker API reference, HumanTaskConfig.PreHumanTaskLambdaArn and
# AnnotationConsolidationConfig.AnnotationConsolidationLambdaArn (also in botocore's service model, which
# tests/labeling checks this table against).
BUILT_IN_FUNCTION_ACCOUNTS: dict[str, str] = {
    "us-east-1": "432418664414",
    "us-east-2": "266458841044",
    "us-west-2": "081040173940",
    "ca-central-1": "918755190332",
    "eu-west-1": "568282634449",
    "eu-west-2": "487402164563",
    "eu-central-1": "203001061592",
    "ap-northeast-1": "477331159723",
    "ap-northeast-2": "845288260483",
    "ap-south-1": "565803892007",
    "ap-southeast-1": "377565633583",
    "ap-southeast-2": "454466003867",
}
PUBLIC_WORKFORCE_ACCOUNT = "394669845002"
"""Owner of the Mechanical Turk work team `workteam/public-crowd/default` in every region."""

LABELING_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
TASK_KEYWORDS = ["Images", "bounding boxes", "object detection", "quality inspection"]
FREE_OF_PERSONAL_DATA, FREE_OF_ADULT_CONTENT = "FreeOfPersonallyIdentifiableInformation", "FreeOfAdultContent"
MAX_REPORTED_PROBLEMS = 20


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunIdentity:
    """One labeling round: its id, its folder for job files, and its two job names."""

    id: str
    prefix: str  # e.g. labeling-jobs/20261122-031500-1a2b3c4d/
    boxes_job: str
    review_job: str

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "prefix": self.prefix, "boxes_job": self.boxes_job, "review_job": self.review_job}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RunIdentity:
        return cls(
            id=str(raw["id"]),
            prefix=str(raw["prefix"]),
            boxes_job=str(raw["boxes_job"]),
            review_job=str(raw["review_job"]),
        )


def parse_timestamp(value: str) -> datetime:
    """An ISO-8601 timestamp as Step Functions or Ground Truth write it; naive times are UTC."""
    text = value.strip()
    if re.search(r"[+-]\d{4}$", text):  # +0000 -> +00:00
        text = f"{text[:-2]}:{text[-2:]}"
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_identity(*, project_prefix: str, jobs_prefix: str, execution_arn: str, start_time: str) -> RunIdentity:
    """Names for the round that execution `execution_arn` (started at `start_time`) runs.

    Job names must be unique in the account and region, at most 63 letters, digits and hyphens. They are
    built from the project prefix, the start time and a hash of the execution ARN and start time, so
    they are valid whatever the execution is called and differ between any two executions.
    """
    try:
        started = parse_timestamp(start_time)
    except ValueError:
        raise ConfigurationError(f"execution start time {start_time!r} is not an ISO-8601 timestamp") from None
    digest = hashlib.sha256(f"{execution_arn}|{start_time}".encode()).hexdigest()[:8]
    run_id = f"{started:%Y%m%d-%H%M%S}-{digest}"
    identity = RunIdentity(
        id=run_id,
        prefix=f"{jobs_prefix}{run_id}/",
        boxes_job=f"{project_prefix}-boxes-{run_id}",
        review_job=f"{project_prefix}-review-{run_id}",
    )
    for name in (identity.boxes_job, identity.review_job):
        if not LABELING_JOB_NAME.fullmatch(name):
            raise ConfigurationError(f"labeling job name {name!r} is not valid for SageMaker (prefix too long?)")
    return identity


def built_in_functions(kind: str, region: str) -> tuple[str, str]:
    """(pre-annotation, annotation-consolidation) Lambda ARNs of the built-in task type for `kind`."""
    account = BUILT_IN_FUNCTION_ACCOUNTS.get(region)
    if account is None:
        raise ConfigurationError(
            f"Ground Truth's built-in bounding-box functions are not offered in {region}; "
            f"deploy the labeling app to one of: {', '.join(sorted(BUILT_IN_FUNCTION_ACCOUNTS))}"
        )
    task_type = TASK_TYPES[kind]
    return (
        f"arn:aws:lambda:{region}:{account}:function:PRE-{task_type}",
        f"arn:aws:lambda:{region}:{account}:function:ACS-{task_type}",
    )


def public_work_team_arn(region: str) -> str:
    return f"arn:aws:sagemaker:{region}:{PUBLIC_WORKFORCE_ACCOUNT}:workteam/public-crowd/default"


# --------------------------------------------------------------------------------------------------
# Worker task files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskUi:
    """The worker-facing texts of `task_ui/label-categories.json`, checked against the configured classes."""

    class_names: tuple[str, ...]
    class_descriptions: Mapping[str, str]
    approve: str
    reject: str


def load_task_ui(class_names: Sequence[str], path: Path = LABEL_CATEGORIES_FILE) -> TaskUi:
    """Read the label categories file; every configured class needs a description, and nothing else may be there."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        descriptions = {str(k): str(v) for k, v in dict(raw["classes"]).items()}
        approve, reject = str(raw["verification"]["approve"]), str(raw["verification"]["reject"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ConfigurationError(f"{path}: not a valid label categories file ({error})") from None
    missing = [name for name in class_names if name not in descriptions]
    unknown = sorted(set(descriptions) - set(class_names))
    problems = []
    if missing:
        problems.append(f"no description for class(es) {', '.join(missing)}")
    if unknown:
        problems.append(f"description(s) for class(es) not in project.class_names: {', '.join(unknown)}")
    if not approve.strip() or not reject.strip() or approve == reject:
        problems.append("verification.approve and verification.reject must be two different, non-empty answers")
    if problems:
        raise ConfigurationError(f"{path}: " + "; ".join(problems))
    return TaskUi(tuple(class_names), {name: descriptions[name] for name in class_names}, approve, reject)


def label_category_config(kind: str, ui: TaskUi) -> dict[str, Any]:
    """The label category configuration file of a job (LabelCategoryConfigS3Uri).

    Bounding-box and adjustment jobs list the classes in class-id order (Ground Truth's class_id is the
    index in this list); a verification job lists the reviewer's two answers, approve first.
    """
    labels = [ui.approve, ui.reject] if kind == VERIFICATION else list(ui.class_names)
    return {"document-version": "2018-11-28", "labels": [{"label": label} for label in labels]}


def render_task_template(kind: str, ui: TaskUi) -> str:
    """The worker task template (UiTemplateS3Uri) of a job: a Liquid template with crowd HTML elements."""
    files = {
        BOXES: "bounding-box.liquid.html",
        PRE_LABELED: "adjustment.liquid.html",
        VERIFICATION: "verification.liquid.html",
        ADJUSTMENT: "adjustment.liquid.html",
    }
    headers = {
        BOXES: "Draw a tight box around every defect on the tag",
        PRE_LABELED: "The model's boxes: correct them so that every defect has one tight box",
        VERIFICATION: "Are these boxes correct and complete?",
        ADJUSTMENT: "Correct the boxes so that every defect has one tight box",
    }
    class_list = "\n".join(
        f"  <dt>{html.escape(name)}</dt>\n  <dd>{html.escape(ui.class_descriptions[name])}</dd>"
        for name in ui.class_names
    )
    instructions = Template(INSTRUCTIONS_FILE.read_text(encoding="utf-8")).substitute(class_list=class_list)
    summary = "\n".join(
        f"      <p><b>{html.escape(name)}</b>: {html.escape(ui.class_descriptions[name])}</p>"
        for name in ui.class_names
    )
    values = {
        "header": html.escape(headers[kind]),
        "labels_json": html.escape(json.dumps(list(ui.class_names))),
        "categories_json": html.escape(json.dumps([ui.approve, ui.reject])),
        "approve": html.escape(ui.approve),
        "reject": html.escape(ui.reject),
        "boxes_attribute": PRE_LABEL_ATTRIBUTE if kind == PRE_LABELED else BOXES_ATTRIBUTE,
        "full_instructions": instructions,
        "class_summary": summary,
    }
    return Template((TASK_UI_DIR / files[kind]).read_text(encoding="utf-8")).substitute(values)


# --------------------------------------------------------------------------------------------------
# Job requests
# --------------------------------------------------------------------------------------------------


def usd_amount(price: float) -> dict[str, int]:
    """A price in dollars as Ground Truth's USD structure (dollars, cents, tenths of a cent)."""
    tenths = int((Decimal(str(price)) * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return {"Dollars": tenths // 1000, "Cents": tenths % 1000 // 10, "TenthFractionsOfACent": tenths % 10}


def labeling_job_request(
    kind: str,
    *,
    config: LabelingConfig,
    region: str,
    job_name: str,
    manifest_uri: str,
    output_uri: str,
    template_uri: str,
    categories_uri: str,
) -> dict[str, Any]:
    """The complete CreateLabelingJob request of one job of a round (the state machine sends it as is)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job kind {kind!r}")
    if not config.ground_truth_role_arn:
        raise ConfigurationError("the labeling configuration has no Ground Truth role (ground_truth_role_arn)")
    workforce: Workforce | None = config.workforce if kind in (BOXES, PRE_LABELED) else config.review_workforce
    if workforce is None:
        raise ConfigurationError("a Ground Truth job needs a workforce (labeling.workforce in config.yaml)")
    pre, consolidation = built_in_functions(kind, region)
    classes = ", ".join(config.class_names)
    titles = {
        BOXES: (f"Box defects on metal tags ({classes})", "Draw a tight box around every defect on each tag image."),
        PRE_LABELED: (
            f"Box defects on metal tags ({classes}), starting from a model's boxes",
            "Move, resize, remove or add the suggested boxes until every defect has one tight, correct box.",
        ),
        VERIFICATION: (
            f"Review defect boxes on metal tags ({classes})",
            "Approve the boxes when every defect has a tight, correct box; reject them otherwise.",
        ),
        ADJUSTMENT: (
            f"Correct defect boxes on metal tags ({classes})",
            "Move, resize, remove or add boxes until every defect has one tight, correct box.",
        ),
    }
    title, description = titles[kind]
    human_task: dict[str, Any] = {
        "WorkteamArn": workforce.work_team_arn if workforce.type == "private" else public_work_team_arn(region),
        "UiConfig": {"UiTemplateS3Uri": template_uri},
        "PreHumanTaskLambdaArn": pre,
        "TaskKeywords": list(TASK_KEYWORDS),
        "TaskTitle": title[:128],
        "TaskDescription": description,
        "NumberOfHumanWorkersPerDataObject": config.workers_per_image,
        "TaskTimeLimitInSeconds": config.task_time_limit_seconds,
        "TaskAvailabilityLifetimeInSeconds": config.task_availability_lifetime_seconds,
        "MaxConcurrentTaskCount": config.max_concurrent_tasks,
        "AnnotationConsolidationConfig": {"AnnotationConsolidationLambdaArn": consolidation},
    }
    input_config: dict[str, Any] = {"DataSource": {"S3DataSource": {"ManifestS3Uri": manifest_uri}}}
    if workforce.type == "public":
        human_task["PublicWorkforceTaskPrice"] = {"AmountInUsd": usd_amount(float(workforce.price_usd or 0))}
        input_config["DataAttributes"] = {"ContentClassifiers": public_content_classifiers(workforce)}
    return {
        "LabelingJobName": job_name,
        "LabelAttributeName": BOXES_ATTRIBUTE if kind in (BOXES, PRE_LABELED) else REVIEW_ATTRIBUTES[kind],
        "InputConfig": input_config,
        "OutputConfig": {
            "S3OutputPath": output_uri,
            **({"KmsKeyId": config.output_kms_key} if config.output_kms_key else {}),
        },
        "RoleArn": config.ground_truth_role_arn,
        "LabelCategoryConfigS3Uri": categories_uri,
        "HumanTaskConfig": human_task,
    }


def public_content_classifiers(workforce: Workforce) -> list[str]:
    """What Mechanical Turk is told about the images: exactly what the team declared in its configuration."""
    if not workforce.free_of_personal_data:
        raise ConfigurationError("images with personal data (or undeclared ones) must not go to the public crowd")
    return [FREE_OF_PERSONAL_DATA] + ([FREE_OF_ADULT_CONTENT] if workforce.free_of_adult_content else [])


REQUEST_KEYS = (
    "LabelingJobName",
    "LabelAttributeName",
    "InputConfig",
    "OutputConfig",
    "RoleArn",
    "LabelCategoryConfigS3Uri",
    "HumanTaskConfig",
)
"""Top-level keys of every request `labeling_job_request` builds: the state machine passes exactly these."""


def pre_label_attribute(pre_label: Any, image: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """The model's boxes of one image as a label attribute in Ground Truth's bounding-box format.

    `pre_label` is a `pre_labels.PreLabel` (None: the model was not run on this image, e.g. its size did
    not match its header; the worker then starts from no box); `image` a `rounds.SelectedImage`.
    """
    boxes = list(pre_label.boxes) if pre_label is not None else []
    return {
        PRE_LABEL_ATTRIBUTE: {
            "image_size": [{"width": image.width, "height": image.height, "depth": 3}],
            "annotations": [
                {
                    "class_id": box.class_id,
                    "left": round(box.x1),
                    "top": round(box.y1),
                    "width": max(1, round(box.x2 - box.x1)),
                    "height": max(1, round(box.y2 - box.y1)),
                }
                for box in boxes
            ],
        },
        f"{PRE_LABEL_ATTRIBUTE}-metadata": {
            "objects": [{"confidence": round(box.score, 4)} for box in boxes],
            "class-map": {str(index): name for index, name in enumerate(class_names)},
            "type": "groundtruth/object-detection",
            "human-annotated": "no",
            "creation-date": (pre_label.created if pre_label is not None else format_event_time(datetime.now(UTC))),
            "job-name": f"labeling-job/{pre_label.model_name if pre_label is not None else 'no-model'}",
        },
    }


# --------------------------------------------------------------------------------------------------
# Output manifests
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabeledImage:
    """One image's consolidated boxes from a bounding-box (or adjustment) job, in source pixels."""

    line: int
    image_uri: str
    width: int
    height: int
    annotations: tuple[Annotation, ...]
    created: str  # event time of the answer (ISO-8601 UTC, milliseconds)
    job_name: str | None
    problems: tuple[str, ...] = ()  # boxes that cannot be trained on (the image is labeled again)
    raw: str = ""  # the manifest line as Ground Truth wrote it


@dataclass(frozen=True)
class FailedImage:
    line: int
    image_uri: str
    reason: str


@dataclass
class BoxesOutput:
    labeled: list[LabeledImage] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)


@dataclass
class ReviewOutput:
    records: list[LabelRecord] = field(default_factory=list)
    failed: list[FailedImage] = field(default_factory=list)
    approved: int = 0
    rejected: int = 0
    rejected_for_bad_boxes: int = 0
    adjusted: int = 0

    def summary(self) -> dict[str, int]:
        return {
            "reviewed": len(self.records),
            "approved": self.approved,
            "rejected": self.rejected,
            "rejected_for_bad_boxes": self.rejected_for_bad_boxes,
            "adjusted": self.adjusted,
            "no_verdict": len(self.failed),
        }


class _Problems:
    """Collects malformed lines; raises one ManifestError naming the first few when asked."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, line: int, message: str) -> None:
        self.items.append(f"line {line}: {message}")

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = "; ".join(self.items[:MAX_REPORTED_PROBLEMS])
        more = (
            f" (and {len(self.items) - MAX_REPORTED_PROBLEMS} more)" if len(self.items) > MAX_REPORTED_PROBLEMS else ""
        )
        raise ManifestError(f"{self.source}: {len(self.items)} malformed line(s), nothing was written: {shown}{more}")


class _LineError(ValueError):
    pass


def _lines(text: str, source: str) -> list[tuple[int, str, dict[str, Any] | None]]:
    """(line number, raw text, parsed object or None when not a JSON object) of each non-blank line."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = None
        lines.append((number, raw, value if isinstance(value, dict) else None))
    if not lines:
        raise ManifestError(f"{source}: the output manifest is empty; Ground Truth returned no line")
    return lines


def _job_name(metadata: Mapping[str, Any]) -> str | None:
    name = metadata.get("job-name")
    if not isinstance(name, str) or not name:
        return None
    return name.removeprefix("labeling-job/")


def _created(metadata: Mapping[str, Any], attribute: str) -> str:
    value = metadata.get("creation-date")
    if not isinstance(value, str):
        raise _LineError(f"{attribute}-metadata has no creation-date")
    try:
        return format_event_time(parse_timestamp(value))
    except ValueError:
        raise _LineError(f"{attribute}-metadata creation-date {value!r} is not a timestamp") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _LineError(f"{what} must be a number, got {value!r}")
    return float(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _boxes(
    line: Mapping[str, Any], attribute: str, class_names: Sequence[str]
) -> tuple[int, int, list[Annotation], list[str]]:
    """Image size, boxes (clipped to the image) and box problems of a bounding-box label attribute."""
    label = line.get(attribute)
    metadata = line.get(f"{attribute}-metadata") or {}
    if not isinstance(label, dict) or not isinstance(metadata, dict):
        raise _LineError(f"{attribute} must be an object with image_size and annotations")
    sizes = label.get("image_size")
    if not isinstance(sizes, list) or not sizes or not isinstance(sizes[0], dict):
        raise _LineError(f"{attribute}.image_size must be a list with the image's width and height")
    width, height = sizes[0].get("width"), sizes[0].get("height")
    if not (_positive_int(width) and _positive_int(height)):
        raise _LineError(f"{attribute}.image_size has no positive integer width and height: {sizes[0]!r}")
    assert isinstance(width, int) and isinstance(height, int)
    raw_boxes = label.get("annotations")
    if not isinstance(raw_boxes, list):
        raise _LineError(f"{attribute}.annotations must be a list")
    class_map = metadata.get("class-map")
    if raw_boxes and not isinstance(class_map, dict):
        raise _LineError(f"{attribute}-metadata has boxes but no class-map")
    annotations: list[Annotation] = []
    problems: list[str] = []
    for index, box in enumerate(raw_boxes):
        if not isinstance(box, dict):
            raise _LineError(f"{attribute}.annotations[{index}] is not an object")
        class_id = box.get("class_id")
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < len(class_names):
            raise _LineError(
                f"{attribute}.annotations[{index}].class_id {class_id!r} is not one of the {len(class_names)} classes"
            )
        named = class_map.get(str(class_id)) if isinstance(class_map, dict) else None
        if named != class_names[class_id]:
            raise _LineError(
                f"{attribute}-metadata.class-map names class {class_id} {named!r}, "
                f"but the configured class {class_id} is {class_names[class_id]!r}"
            )
        left = _number(box.get("left"), f"{attribute}.annotations[{index}].left")
        top = _number(box.get("top"), f"{attribute}.annotations[{index}].top")
        box_width = _number(box.get("width"), f"{attribute}.annotations[{index}].width")
        box_height = _number(box.get("height"), f"{attribute}.annotations[{index}].height")
        x1, y1 = max(0.0, left), max(0.0, top)
        x2, y2 = min(float(width), left + box_width), min(float(height), top + box_height)
        if x2 <= x1 or y2 <= y1:
            problems.append(f"box {index} ({left}, {top}, {box_width}x{box_height}) has no area inside the image")
            continue
        annotations.append(Annotation(class_id=class_id, x1=x1, y1=y1, x2=x2, y2=y2))
    return width, height, annotations, problems


def _source(line: Mapping[str, Any]) -> str:
    uri = line.get("source-ref")
    if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) < 8:
        raise _LineError(f"source-ref must be the image's s3:// URI, got {uri!r}")
    return uri


def _failure(line: Mapping[str, Any], attribute: str) -> str | None:
    """Why Ground Truth has no answer for this line (None when it has one)."""
    metadata = line.get(f"{attribute}-metadata")
    if isinstance(metadata, dict) and metadata.get("failure-reason"):
        return str(metadata["failure-reason"])
    if attribute not in line and f"{attribute}-metadata" not in line:
        return "no answer (the task expired or was declined)"
    return None


def parse_boxes_output(
    text: str, *, class_names: Sequence[str], attribute: str = BOXES_ATTRIBUTE, source: str = "output manifest"
) -> BoxesOutput:
    """Parse a bounding-box job's output manifest. Malformed lines raise ManifestError (all named at once)."""
    output = BoxesOutput()
    problems = _Problems(source)
    seen: dict[str, int] = {}
    for number, raw, line in _lines(text, source):
        if line is None:
            problems.add(number, "not a JSON object")
            continue
        try:
            uri = _source(line)
            if uri in seen:
                raise _LineError(f"{uri} is also on line {seen[uri]}")
            seen[uri] = number
            reason = _failure(line, attribute)
            if reason is not None:
                output.failed.append(FailedImage(number, uri, reason))
                continue
            width, height, annotations, box_problems = _boxes(line, attribute, class_names)
            metadata = line[f"{attribute}-metadata"] if isinstance(line.get(f"{attribute}-metadata"), dict) else {}
            output.labeled.append(
                LabeledImage(
                    line=number,
                    image_uri=uri,
                    width=width,
                    height=height,
                    annotations=tuple(annotations),
                    created=_created(metadata, attribute),
                    job_name=_job_name(metadata),
                    problems=tuple(box_problems),
                    raw=raw,
                )
            )
        except _LineError as error:
            problems.add(number, str(error))
    problems.raise_if_any()
    return output


def parse_review_output(
    text: str,
    *,
    mode: str,
    class_names: Sequence[str],
    approve: str,
    reject: str,
    boxes_job: str | None = None,
    review_job: str | None = None,
    boxes_attribute: str = BOXES_ATTRIBUTE,
    review_attribute: str | None = None,
    source: str = "output manifest",
) -> ReviewOutput:
    """Turn a verification or adjustment job's output manifest into label records.

    verification: the reviewer's answer decides; approved boxes become `approved` records, rejected ones
    `rejected` records (labeled again next round). adjustment: the corrected boxes become `approved`.
    In both, boxes with no area inside the image make the record `rejected`. Lines without a verdict
    (expired or declined tasks) are reported and written nowhere. Malformed lines raise ManifestError.
    """
    if mode not in REVIEW_ATTRIBUTES:
        raise ValueError(f"mode must be verification or adjustment, got {mode!r}")
    review_attribute = review_attribute or REVIEW_ATTRIBUTES[mode]
    output = ReviewOutput()
    problems = _Problems(source)
    seen: dict[str, int] = {}
    for number, _raw, line in _lines(text, source):
        if line is None:
            problems.add(number, "not a JSON object")
            continue
        try:
            uri = _source(line)
            if uri in seen:
                raise _LineError(f"{uri} is also on line {seen[uri]}")
            seen[uri] = number
            reason = _failure(line, review_attribute)
            if reason is not None:
                output.failed.append(FailedImage(number, uri, reason))
                continue
            metadata = line.get(f"{review_attribute}-metadata")
            if not isinstance(metadata, dict):
                raise _LineError(f"{review_attribute}-metadata must be an object")
            if mode == VERIFICATION:
                record = _verified_record(
                    line=line,
                    uri=uri,
                    metadata=metadata,
                    class_names=class_names,
                    approve=approve,
                    reject=reject,
                    boxes_job=boxes_job,
                    boxes_attribute=boxes_attribute,
                    review_attribute=review_attribute,
                    output=output,
                )
            else:
                record = _adjusted_record(
                    line=line,
                    uri=uri,
                    metadata=metadata,
                    class_names=class_names,
                    review_job=review_job,
                    review_attribute=review_attribute,
                    output=output,
                )
            output.records.append(record)
        except _LineError as error:
            problems.add(number, str(error))
    problems.raise_if_any()
    return output


def _verdict(value: Any, metadata: Mapping[str, Any], approve: str, reject: str, attribute: str) -> str:
    """The reviewer's answer (`approve` or `reject` text) from the label value and its class-name."""
    answers = [approve, reject]
    by_index: str | None = None
    if value is not None:
        index = value if isinstance(value, int) and not isinstance(value, bool) else None
        if isinstance(value, str) and value.strip().isdigit():
            index = int(value)
        if index is None or not 0 <= index < len(answers):
            raise _LineError(f"{attribute} {value!r} is not the index of a verification answer")
        by_index = answers[index]
    named = metadata.get("class-name")
    if named is not None and named not in answers:
        raise _LineError(f"{attribute}-metadata.class-name {named!r} is neither {approve!r} nor {reject!r}")
    if named is not None and by_index is not None and named != by_index:
        raise _LineError(f"{attribute} {value!r} and its class-name {named!r} disagree")
    verdict = named if named is not None else by_index
    if verdict is None:
        raise _LineError(f"{attribute} has neither a value nor a class-name")
    return str(verdict)


def _verified_record(
    *,
    line: Mapping[str, Any],
    uri: str,
    metadata: Mapping[str, Any],
    class_names: Sequence[str],
    approve: str,
    reject: str,
    boxes_job: str | None,
    boxes_attribute: str,
    review_attribute: str,
    output: ReviewOutput,
) -> LabelRecord:
    if _failure(line, boxes_attribute) is not None:
        raise _LineError(f"a verdict for an image without boxes ({boxes_attribute} is missing)")
    width, height, annotations, box_problems = _boxes(line, boxes_attribute, class_names)
    verdict = _verdict(line.get(review_attribute), metadata, approve, reject, review_attribute)
    approved = verdict == approve and not box_problems
    if approved:
        output.approved += 1
    else:
        output.rejected += 1
        if verdict == approve:
            output.rejected_for_bad_boxes += 1
    return LabelRecord(
        image_uri=uri,
        event_time=_created(metadata, review_attribute),
        image_width=width,
        image_height=height,
        annotations=tuple(annotations),
        review_status="approved" if approved else "rejected",
        labeling_job=boxes_job or _job_name(line.get(f"{boxes_attribute}-metadata") or {}) or "unknown",
    )


def _adjusted_record(
    *,
    line: Mapping[str, Any],
    uri: str,
    metadata: Mapping[str, Any],
    class_names: Sequence[str],
    review_job: str | None,
    review_attribute: str,
    output: ReviewOutput,
) -> LabelRecord:
    width, height, annotations, box_problems = _boxes(line, review_attribute, class_names)
    if metadata.get("adjustment-status") == "adjusted":
        output.adjusted += 1
    approved = not box_problems
    if approved:
        output.approved += 1
    else:
        output.rejected += 1
        output.rejected_for_bad_boxes += 1
    return LabelRecord(
        image_uri=uri,
        event_time=_created(metadata, review_attribute),
        image_width=width,
        image_height=height,
        annotations=tuple(annotations),
        review_status="approved" if approved else "rejected",
        labeling_job=review_job or _job_name(metadata) or "unknown",
    )


def failure_summary(failed: Iterable[FailedImage], limit: int = 5) -> str:
    counts = Counter(item.reason for item in failed)
    return "; ".join(f"{count} x {reason}" for reason, count in counts.most_common(limit))


def require_labels(output: BoxesOutput, *, job_name: str) -> None:
    """A bounding-box job that returned no usable answer ends the round (there is nothing to review)."""
    if not output.labeled:
        raise NoLabelsError(
            f"labeling job {job_name} returned no boxes for any of its {len(output.failed)} image(s): "
            f"{failure_summary(output.failed)}"
        )
