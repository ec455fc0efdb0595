"""What a job is given: its complete CreateLabelingJob request, and the model's boxes on its input manifest lines."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from labeling.runtime.config import LabelingConfig, Workforce
from labeling.runtime.errors import ConfigurationError
from labeling.runtime.ground_truth.jobs import (
    ADJUSTMENT,
    BOXES,
    BOXES_ATTRIBUTE,
    JOB_KINDS,
    PRE_LABEL_ATTRIBUTE,
    PRE_LABELED,
    REVIEW_ATTRIBUTES,
    VERIFICATION,
    built_in_functions,
    public_work_team_arn,
)
from shared.contracts import format_event_time

TASK_KEYWORDS = ["Images", "bounding boxes", "object detection", "quality inspection"]
FREE_OF_PERSONAL_DATA, FREE_OF_ADULT_CONTENT = "FreeOfPersonallyIdentifiableInformation", "FreeOfAdultContent"


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
