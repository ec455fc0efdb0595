"""The labeling round on Label Studio: projects, tasks, progress, review and the verified labels.

Two long-lived projects per deployment, `<prefix>-boxes` (labelers draw or correct boxes) and
`<prefix>-review` (reviewers approve or reject each image's boxes, or correct them, as `labeling.review`
says), each with a **view per round** (a Data Manager tab "Round <id>" holding that round's tasks,
most uncertain first). Why not a project per round: labelers keep one bookmark, unfinished tasks stay
where people left them (a half-labeled task is not copied into next week's project), and the history
of every image is in one place.

State lives in Label Studio itself, in each task's data, so a round can be retried or fail at any
point without losing work:

* `data.image` the image's s3:// URI (Label Studio's S3 storage on the data bucket turns it into a
  short presigned URL when a browser shows the task; the images are never copied);
* `data.round` the round that last worked on the task (the view's filter);
* `data.settled` set once the task's outcome is final: its verified label was written to the feature
  group, or its answer was unusable (then the image gets a fresh task in a later round).

A boxes task without `settled` is *live*: the next round takes it over (unfinished work stays), and
an image with a live task never gets a second one. Labels are written only from reviewed answers, and
only after every box was checked against the image (known label, inside the image, the image's size);
a task that fails a check is skipped with a message naming it, never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from string import Template
from typing import Any

from botocore.exceptions import ClientError

from labeling.runtime import ground_truth as gt
from labeling.runtime.config import LabelingConfig
from labeling.runtime.errors import (
    ConfigurationError,
    LabelStudioNotFound,
    LabelStudioProjectError,
    LabelStudioRequestError,
    NoLabelsError,
)
from labeling.runtime.feature_store import approved_images
from labeling.runtime.label_studio_api import LabelStudioClient, Task, data_filter
from labeling.runtime.pre_labels import PreLabel, read_pre_labels
from labeling.runtime.rounds import read_selected, reports_prefix
from labeling.runtime.s3io import is_missing, read_jsonl, s3_uri, write_jsonl
from shared.contracts import Annotation, LabelRecord, format_event_time

IMAGE = "image"  # the object tag's name, and the task data key with the image URI
BOXES = "boxes"  # the RectangleLabels control
VERDICT = "verdict"  # the reviewer's Choices control (verification)
PRE_LABEL_MODEL_VERSION = "pre-label"  # predictions the boxes project shows labelers as a starting point
ANNOTATOR_MODEL_VERSION = "annotator"  # predictions the review project shows: the labeler's boxes
TOLERANCE_PERCENT = 0.5  # a box may stick out this far (rounding in the browser) and is clipped
MANAGED_NOTE = "Managed by the labeling rounds of the labeling app: change its interface in the repository."
_DIGEST = re.compile(r"Configuration ([0-9a-f]{12})")


# --------------------------------------------------------------------------------------------------
# Names, secrets, clients
# --------------------------------------------------------------------------------------------------


def project_titles(prefix: str) -> tuple[str, str]:
    """(boxes project, review project) titles; Label Studio allows 50 characters, prefixes have at most 20."""
    return f"{prefix}-boxes", f"{prefix}-review"


def labeling_job_name(project_title: str, run_id: str) -> str:
    """`labeling_job` of a record: the project that produced the label and the round."""
    return f"{project_title}/{run_id}"


def read_api_token(secretsmanager: Any, secret_id: str) -> str:
    """The API token from Secrets Manager: the secret string, or its `token` (or `api_token`) key when JSON."""
    try:
        value = secretsmanager.get_secret_value(SecretId=secret_id).get("SecretString") or ""
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in (
            "ResourceNotFoundException",
            "AccessDeniedException",
            "DecryptionFailure",
            "InvalidRequestException",
        ):
            raise ConfigurationError(
                f"Label Studio API token secret {secret_id}: {code} ({error}); "
                "create it, or let the round's role read it"
            ) from None
        raise
    value = value.strip()
    if value.startswith("{"):
        try:
            document = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigurationError(f"secret {secret_id} looks like JSON but is not valid JSON") from None
        token = next((document[key] for key in ("token", "api_token", "apiToken") if document.get(key)), "")
        value = str(token).strip()
    if not value:
        raise ConfigurationError(f"secret {secret_id} holds no Label Studio API token")
    return value


def client_for(config: LabelingConfig, secretsmanager: Any) -> LabelStudioClient:
    if config.backend != "label_studio":
        raise ConfigurationError(f"the round's backend is {config.backend}, not label_studio")
    return LabelStudioClient(config.label_studio_url, read_api_token(secretsmanager, config.label_studio_token_secret))


# --------------------------------------------------------------------------------------------------
# Labeling interfaces
# --------------------------------------------------------------------------------------------------


def _labels(class_names: Sequence[str]) -> str:
    palette = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
    return "\n".join(
        f'    <Label value="{html.escape(name, quote=True)}" background="{palette[index % len(palette)]}"/>'
        for index, name in enumerate(class_names)
    )


def boxes_label_config(class_names: Sequence[str]) -> str:
    """The boxes project's interface: the image, and one rectangle tool per class."""
    return (
        "<View>\n"
        '  <Header value="Draw a tight box around every defect on the tag (start from the suggested boxes)"/>\n'
        f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'
        f'  <RectangleLabels name="{BOXES}" toName="{IMAGE}" strokeWidth="2">\n'
        f"{_labels(class_names)}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def review_label_config(mode: str, class_names: Sequence[str], *, approve: str, reject: str) -> str:
    """The review project's interface: the labeler's boxes over the image; a verdict (verification)."""
    header = (
        "Are these boxes correct and complete?"
        if mode == gt.VERIFICATION
        else "Correct the boxes so that every defect has one tight box"
    )
    verdict = (
        f'  <Choices name="{VERDICT}" toName="{IMAGE}" choice="single-radio" required="true" showInline="true">\n'
        f'    <Choice value="{html.escape(approve, quote=True)}"/>\n'
        f'    <Choice value="{html.escape(reject, quote=True)}"/>\n'
        "  </Choices>\n"
        if mode == gt.VERIFICATION
        else ""
    )
    return (
        "<View>\n"
        f'  <Header value="{html.escape(header, quote=True)}"/>\n'
        f"{verdict}"
        f'  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true"/>\n'
        f'  <RectangleLabels name="{BOXES}" toName="{IMAGE}" strokeWidth="2">\n'
        f"{_labels(class_names)}\n"
        "  </RectangleLabels>\n"
        "</View>\n"
    )


def instructions(ui: gt.TaskUi) -> str:
    class_list = "\n".join(
        f"  <dt>{html.escape(name)}</dt>\n  <dd>{html.escape(ui.class_descriptions[name])}</dd>"
        for name in ui.class_names
    )
    return Template(gt.INSTRUCTIONS_FILE.read_text(encoding="utf-8")).substitute(class_list=class_list)


def _normalized(label_config: str) -> str:
    return " ".join(label_config.split())


def config_digest(label_config: str) -> str:
    return hashlib.sha256(_normalized(label_config).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# Projects and storage
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    id: int
    title: str


@dataclass(frozen=True)
class Projects:
    boxes: Project
    review: Project


def ensure_project(
    client: LabelStudioClient, *, title: str, label_config: str, instructions_html: str, model_version: str
) -> Project:
    """The project named `title`, created if missing; fails (naming it) when its interface was edited by hand.

    The description records a digest of the interface the round last set. An interface that matches
    that digest but not today's was changed by a deployment (e.g. a new class) and is updated; one that
    matches neither was edited in Label Studio, and the round stops rather than guess what the boxes mean.
    """
    settings = {
        "label_config": label_config,
        "expert_instruction": instructions_html,
        "show_instruction": True,
        "show_collab_predictions": True,  # labelers start from the predictions
        "model_version": model_version,
        "maximum_annotations": 1,
        "show_skip_button": True,
        "enable_empty_annotation": True,  # "no defect" is an answer: submit without a box
        "description": f"{MANAGED_NOTE} Configuration {config_digest(label_config)}.",
    }
    found = client.projects(title=title)
    if len(found) > 1:
        ids = ", ".join(str(p["id"]) for p in found)
        raise LabelStudioProjectError(
            f"Label Studio at {client.url} has {len(found)} projects titled {title!r} (ids {ids}); the round cannot "
            "tell which is its own. Rename the extra ones; nothing was written"
        )
    if not found:
        created = client.create_project({"title": title, **settings})
        return Project(int(created["id"]), title)
    project = client.project(int(found[0]["id"]))
    project_id = int(project["id"])
    current = str(project.get("label_config") or "")
    changes: dict[str, Any] = {}
    if _normalized(current) != _normalized(label_config):
        applied = _DIGEST.search(str(project.get("description") or ""))
        if applied is None or applied.group(1) != config_digest(current):
            raise LabelStudioProjectError(
                f"Label Studio project {title!r} (id {project_id}) at {client.url} was edited by hand: its labeling "
                "interface is not the one the labeling rounds set, so its boxes cannot be read safely. Restore it "
                "(labeling/README.md, 'Label Studio projects'), or rename the project and the next round creates a "
                "new one; nothing was written"
            )
        changes.update(settings)  # the deployment changed the interface
    for key in ("show_collab_predictions", "model_version", "maximum_annotations", "enable_empty_annotation"):
        if project.get(key) != settings[key]:
            changes[key] = settings[key]
    if changes:
        client.update_project(project_id, changes)
    return Project(project_id, title)


def ensure_storage(
    client: LabelStudioClient,
    project: Project,
    *,
    bucket: str,
    raw_prefix: str,
    region: str,
    presign_ttl_minutes: int,
) -> None:
    """The project's S3 storage on the data bucket: presigned URLs with a short lifetime, never a sync or copy.

    Label Studio reads the bucket with the credentials of its own server (its IAM role on AWS) since
    none are given here; the storage only resolves the tasks' s3:// URIs.
    """
    wanted = {"presign": True, "presign_ttl": presign_ttl_minutes, "use_blob_urls": True}
    for storage in client.s3_import_storages(project.id):
        if storage.get("bucket") == bucket:
            changes = {key: value for key, value in wanted.items() if storage.get(key) != value}
            if changes:
                client.update_s3_import_storage(int(storage["id"]), changes)
            return
    try:
        client.create_s3_import_storage(_storage_settings(project, bucket, raw_prefix, region, wanted))
    except LabelStudioRequestError as error:
        raise ConfigurationError(
            f"Label Studio project {project.title!r} (id {project.id}) cannot connect to bucket {bucket}: {error}. "
            "The server reads the images with its own credentials (its IAM role on AWS): let it list and read "
            f"{raw_prefix} and decrypt with the data key"
        ) from None


def _storage_settings(
    project: Project, bucket: str, raw_prefix: str, region: str, wanted: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "project": project.id,
        "title": f"Data bucket ({raw_prefix})",
        "description": "Images are shown through short presigned URLs; tasks are created by the labeling round.",
        "bucket": bucket,
        "prefix": raw_prefix,
        "region_name": region,
        "recursive_scan": True,
        **wanted,
    }


def ensure_projects(client: LabelStudioClient, *, config: LabelingConfig, region: str) -> Projects:
    ui = gt.load_task_ui(config.class_names)
    boxes_title, review_title = project_titles(config.project_prefix)
    text = instructions(ui)
    boxes = ensure_project(
        client,
        title=boxes_title,
        label_config=boxes_label_config(config.class_names),
        instructions_html=text,
        model_version=PRE_LABEL_MODEL_VERSION,
    )
    review = ensure_project(
        client,
        title=review_title,
        label_config=review_label_config(config.review_mode, config.class_names, approve=ui.approve, reject=ui.reject),
        instructions_html=text,
        model_version=ANNOTATOR_MODEL_VERSION,
    )
    for project in (boxes, review):
        ensure_storage(
            client,
            project,
            bucket=config.data_bucket,
            raw_prefix=config.raw_prefix,
            region=region,
            presign_ttl_minutes=config.label_studio_presign_ttl_minutes,
        )
    return Projects(boxes, review)


def ensure_round_view(client: LabelStudioClient, project: Project, run_id: str) -> int:
    """The project's tab for this round (its tasks, most uncertain first)."""
    title = f"Round {run_id}"
    for view in client.views(project.id):
        if (view.get("data") or {}).get("title") == title:
            return int(view["id"])
    created = client.create_view(
        project.id,
        {
            "title": title,
            "filters": {"conjunction": "and", "items": [data_filter("round", run_id)]},
            "ordering": ["-tasks:data.priority"],
        },
    )
    return int(created["id"])


# --------------------------------------------------------------------------------------------------
# Boxes <-> Label Studio regions
# --------------------------------------------------------------------------------------------------


def to_regions(
    annotations: Iterable[Annotation], *, width: int, height: int, class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Boxes in source pixels as Label Studio rectangle regions (percentages of the image)."""
    regions = []
    for index, box in enumerate(annotations):
        regions.append(
            {
                "id": f"r{index}",
                "from_name": BOXES,
                "to_name": IMAGE,
                "type": "rectanglelabels",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {
                    "x": box.x1 / width * 100.0,
                    "y": box.y1 / height * 100.0,
                    "width": (box.x2 - box.x1) / width * 100.0,
                    "height": (box.y2 - box.y1) / height * 100.0,
                    "rotation": 0,
                    "rectanglelabels": [class_names[box.class_id]],
                },
            }
        )
    return regions


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def from_regions(
    result: Any, *, width: int, height: int, class_names: Sequence[str]
) -> tuple[list[Annotation], list[str]]:
    """An annotation's rectangles in source pixels, and what is wrong with any of them.

    A box must carry exactly one known label, no rotation, lie inside the image (a sliver of
    `TOLERANCE_PERCENT` is clipped), and have been drawn on an image of the recorded size.
    """
    if not isinstance(result, list):
        return [], [f"the annotation's result is not a list ({type(result).__name__})"]
    boxes: list[Annotation] = []
    problems: list[str] = []
    for index, region in enumerate(result):
        if not isinstance(region, dict) or region.get("from_name") != BOXES:
            continue  # the verdict, or a region of another control
        where = f"box {index}"
        if region.get("type") != "rectanglelabels":
            problems.append(f"{where} is a {region.get('type')!r}, not a rectangle with a label")
            continue
        raw_value = region.get("value")
        value: dict[str, Any] = raw_value if isinstance(raw_value, dict) else {}
        labels = value.get("rectanglelabels")
        if not isinstance(labels, list) or len(labels) != 1 or labels[0] not in class_names:
            problems.append(f"{where} has label(s) {labels!r}; expected exactly one of {list(class_names)}")
            continue
        original = (region.get("original_width"), region.get("original_height"))
        if original not in ((None, None), (width, height)):
            problems.append(f"{where} was drawn on a {original[0]}x{original[1]} image, but it is {width}x{height}")
            continue
        rotation = _number(value.get("rotation", 0))
        if rotation is None or abs(rotation) > 0.01:
            problems.append(f"{where} is rotated ({value.get('rotation')!r} degrees); only upright boxes are trained")
            continue
        x, y, w, h = (_number(value.get(key)) for key in ("x", "y", "width", "height"))
        if x is None or y is None or w is None or h is None:
            problems.append(f"{where} has no numeric x, y, width and height")
            continue
        if w <= 0 or h <= 0:
            problems.append(f"{where} has no area ({w} x {h} %)")
            continue
        limit = 100.0 + TOLERANCE_PERCENT
        if x < -TOLERANCE_PERCENT or y < -TOLERANCE_PERCENT or x + w > limit or y + h > limit:
            problems.append(f"{where} ({x:.1f}, {y:.1f}, {w:.1f} x {h:.1f} %) lies outside the image")
            continue
        x1, y1 = max(0.0, x) / 100.0 * width, max(0.0, y) / 100.0 * height
        x2, y2 = min(100.0, x + w) / 100.0 * width, min(100.0, y + h) / 100.0 * height
        boxes.append(Annotation(class_names.index(labels[0]), round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)))
    return boxes, problems


def _latest(annotations: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not annotations:
        return None
    return max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id", 0))))


def _answered_at(annotation: Mapping[str, Any]) -> str:
    raw = annotation.get("updated_at") or annotation.get("created_at")
    try:
        return format_event_time(gt.parse_timestamp(str(raw)))
    except (ValueError, TypeError):
        raise LabelStudioProjectError(
            f"annotation {annotation.get('id')} has no valid time ({raw!r}); nothing was written"
        ) from None


# --------------------------------------------------------------------------------------------------
# The round's files
# --------------------------------------------------------------------------------------------------


def boxes_tasks_key(run_prefix: str) -> str:
    return f"{run_prefix}label-studio/boxes-tasks.jsonl"


def review_tasks_key(run_prefix: str) -> str:
    return f"{run_prefix}label-studio/review-tasks.jsonl"


def _read_rows(s3: Any, bucket: str, key: str) -> list[dict[str, Any]]:
    try:
        return list(read_jsonl(s3, bucket, key))
    except ClientError as error:
        if is_missing(error):
            raise NoLabelsError(f"s3://{bucket}/{key} is missing: the round's earlier step did not run") from None
        raise


def deadline_after(seconds: int, now: datetime) -> str:
    return format_event_time(now + timedelta(seconds=seconds))


# --------------------------------------------------------------------------------------------------
# 1. Labeling tasks
# --------------------------------------------------------------------------------------------------


def _image_of(task: Task, bucket: str) -> str | None:
    uri = task.data.get(IMAGE)
    return uri if isinstance(uri, str) and uri.startswith(f"s3://{bucket}/") else None


def _live_tasks(
    client: LabelStudioClient, project: Project, bucket: str
) -> tuple[dict[str, Task], list[dict[str, Any]]]:
    """The newest unsettled task of each image in the boxes project, and the older duplicates (reported)."""
    live: dict[str, Task] = {}
    duplicates: list[dict[str, Any]] = []
    for task in client.tasks(project.id):
        uri = _image_of(task, bucket)
        if uri is None or task.data.get("settled"):
            continue
        if uri in live:
            older, newer = sorted((live[uri], task), key=lambda t: t.id)
            duplicates.append(
                {"task": older.id, "image": uri, "reason": f"another live task ({newer.id}) has the image"}
            )
            live[uri] = newer
        else:
            live[uri] = task
    return live, duplicates


def prepare_labeling_tasks(
    client: LabelStudioClient,
    s3: Any,
    featurestore: Any,
    *,
    config: LabelingConfig,
    run: gt.RunIdentity,
    region: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Create the round's boxes tasks (with the model's boxes as predictions) and take over the live ones.

    Live tasks of earlier rounds whose image still has no approved label come first (people may have
    started on them); the rest of the budget goes to the round's selection, best first, skipping images
    that already have a live task. A retry finds the tasks it created as live ones: nothing is doubled.
    """
    now = now or datetime.now(UTC)
    bucket = config.data_bucket
    projects = ensure_projects(client, config=config, region=region)
    live, duplicates = _live_tasks(client, projects.boxes, bucket)
    approved = approved_images(featurestore, config.feature_group, list(live))
    for uri in sorted(approved):
        task = live.pop(uri)  # labeled meanwhile by another way (a seed file): settled, not labeled twice
        client.update_task_data(task.id, {**task.data, "settled": f"{run.id}: the image already has an approved label"})
    selected = read_selected(s3, bucket=bucket, run_prefix=run.prefix)
    pre_labels = read_pre_labels(s3, bucket=bucket, run_prefix=run.prefix)
    rows: list[dict[str, Any]] = []
    for uri, found in sorted(live.items(), key=lambda item: item[1].id):
        task = (
            found
            if found.data.get("round") == run.id
            else client.update_task_data(found.id, {**found.data, "round": run.id})
        )
        label = pre_labels.get(uri)
        if label is not None and found.data.get("round") == run.id and not task.total_annotations:
            _offer_pre_label(client, task, label, config)  # created by this round before a retry: offer it again
        rows.append(_task_row(task, carried=True))
    carried = len(rows)
    budget = max(0, config.max_images_per_job - carried)
    created = pre_labeled = 0
    for image in selected:
        if created >= budget:
            break
        if image.uri in live or image.uri in approved:
            continue
        data = {
            IMAGE: image.uri,
            "round": run.id,
            "priority": round(image.uncertainty, 4),
            "source": image.source,
            "width": image.width,
            "height": image.height,
            "uploaded": image.modified,
        }
        label = pre_labels.get(image.uri)
        if label is not None:
            data["pre_label_model"] = label.model_name
        task = client.create_task(projects.boxes.id, data)
        if label is not None:
            _offer_pre_label(client, task, label, config)
            pre_labeled += 1
        rows.append(_task_row(task, carried=False))
        created += 1
    if duplicates:
        write_jsonl(s3, bucket, f"{reports_prefix(run.prefix)}duplicate-tasks.jsonl", duplicates)
    write_jsonl(s3, bucket, boxes_tasks_key(run.prefix), rows)
    view = ensure_round_view(client, projects.boxes, run.id)
    return {
        "project": projects.boxes.id,
        "view": view,
        "tasks": len(rows),
        "carried_over": carried,
        "created": created,
        "pre_labeled": pre_labeled,
        "deadline": deadline_after(config.task_availability_lifetime_seconds, now),
        "url": f"{client.url}/projects/{projects.boxes.id}/data?tab={view}",
    }


def _offer_pre_label(client: LabelStudioClient, task: Task, label: PreLabel, config: LabelingConfig) -> None:
    if task.data.get("pre_label_offered") == label.model_name:
        return
    boxes = [
        Annotation(b.class_id, b.x1, b.y1, b.x2, b.y2) for b in label.boxes if 0 <= b.class_id < len(config.class_names)
    ]
    scores = [b.score for b in label.boxes]
    client.create_prediction(
        task.id,
        result=to_regions(boxes, width=label.width, height=label.height, class_names=config.class_names),
        model_version=PRE_LABEL_MODEL_VERSION,
        score=round(min(scores), 4) if scores else None,
    )
    client.update_task_data(
        task.id, {**task.data, "pre_label_model": label.model_name, "pre_label_offered": label.model_name}
    )


def _task_row(task: Task, *, carried: bool) -> dict[str, Any]:
    return {
        "task": task.id,
        "image": task.data.get(IMAGE),
        "width": task.data.get("width"),
        "height": task.data.get("height"),
        "priority": task.data.get("priority"),
        "carried": carried,
    }


# --------------------------------------------------------------------------------------------------
# 2. Progress (called after each Wait state)
# --------------------------------------------------------------------------------------------------


def progress(
    client: LabelStudioClient, *, project_id: int, run_id: str, deadline: str, now: datetime | None = None
) -> dict[str, Any]:
    """How many of the round's tasks in a project have an answer; done when all have, or time ran out."""
    now = now or datetime.now(UTC)
    tasks = [t for t in client.tasks(project_id, filters=[data_filter("round", run_id)]) if not t.data.get("settled")]
    answered = sum(1 for t in tasks if t.total_annotations > 0)
    timed_out = now >= gt.parse_timestamp(deadline) and answered < len(tasks)
    return {
        "total": len(tasks),
        "answered": answered,
        "done": answered >= len(tasks) or timed_out,
        "timed_out": timed_out,
    }


# --------------------------------------------------------------------------------------------------
# 3. Review tasks
# --------------------------------------------------------------------------------------------------


@dataclass
class _Problems:
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, task: int, image: Any, reason: str) -> None:
        self.rows.append({"task": task, "image": image, "reason": reason})


def _image_size(row: Mapping[str, Any], task: Task) -> tuple[int, int] | None:
    for source in (row, task.data):
        width, height = source.get("width"), source.get("height")
        if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
            return width, height
    return None


def _settle(client: LabelStudioClient, task: Task, outcome: str) -> None:
    with contextlib.suppress(LabelStudioNotFound):  # deleted meanwhile: nothing left to mark
        client.update_task_data(task.id, {**task.data, "settled": outcome})


def _open_reviews(client: LabelStudioClient, project: Project) -> dict[tuple[int, int], Task]:
    """Unsettled review tasks by (boxes task, boxes answer): a retried or later round reuses them."""
    existing: dict[tuple[int, int], Task] = {}
    for task in client.tasks(project.id):
        key = (task.data.get("boxes_task"), task.data.get("boxes_annotation"))
        if not task.data.get("settled") and isinstance(key[0], int) and isinstance(key[1], int):
            existing[(key[0], key[1])] = task
    return existing


def _review_task(
    client: LabelStudioClient,
    project: Project,
    *,
    existing: Mapping[tuple[int, int], Task],
    boxes_task: Task,
    annotation_id: int,
    boxes: Sequence[Annotation],
    size: tuple[int, int],
    run_id: str,
    config: LabelingConfig,
) -> Task:
    """The review task of one answer: reused when it exists, else created with the answer's boxes as prediction."""
    review = existing.get((boxes_task.id, annotation_id))
    if review is not None:
        if review.data.get("round") == run_id:
            return review
        return client.update_task_data(review.id, {**review.data, "round": run_id})
    data = {
        IMAGE: boxes_task.data.get(IMAGE),
        "round": run_id,
        "priority": boxes_task.data.get("priority"),
        "boxes_task": boxes_task.id,
        "boxes_annotation": annotation_id,
        "width": size[0],
        "height": size[1],
    }
    review = client.create_task(project.id, data)
    client.create_prediction(
        review.id,
        result=to_regions(boxes, width=size[0], height=size[1], class_names=config.class_names),
        model_version=ANNOTATOR_MODEL_VERSION,
        score=None,
    )
    return review


def prepare_review_tasks(
    client: LabelStudioClient,
    s3: Any,
    *,
    config: LabelingConfig,
    run: gt.RunIdentity,
    region: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Send every answered boxes task of the round to review (the labeler's boxes as the prediction).

    A boxes task deleted by hand, or whose answer breaks a check (unknown label, box outside the image,
    wrong image size), is skipped and named in `reports/not-reviewed.jsonl`; a broken answer settles the
    task so that the image gets a fresh task next round. Unanswered tasks stay live for the next round.
    """
    now = now or datetime.now(UTC)
    bucket = config.data_bucket
    projects = ensure_projects(client, config=config, region=region)
    existing = _open_reviews(client, projects.review)
    problems = _Problems()
    rows: list[dict[str, Any]] = []
    unanswered = 0
    for row in _read_rows(s3, bucket, boxes_tasks_key(run.prefix)):
        task_id, uri = int(row["task"]), row.get("image")
        try:
            task = client.task(task_id)
        except LabelStudioNotFound:
            problems.add(
                task_id, uri, "the boxes task was deleted in Label Studio; the image gets a new task next round"
            )
            continue
        if task.data.get(IMAGE) != uri:
            problems.add(task_id, uri, f"the task's image was changed by hand to {task.data.get(IMAGE)!r}; skipped")
            continue
        annotation = _latest(task.submitted_annotations())
        if annotation is None:
            unanswered += 1
            continue
        size = _image_size(row, task)
        if size is None:
            problems.add(task_id, uri, "the task has no image width and height; skipped")
            continue
        boxes, box_problems = from_regions(
            annotation.get("result"), width=size[0], height=size[1], class_names=config.class_names
        )
        if box_problems:
            reason = f"answer {annotation.get('id')}: " + "; ".join(box_problems)
            problems.add(task_id, uri, f"{reason}; the image gets a fresh task next round")
            _settle(client, task, f"{run.id}: not reviewed, {reason}")
            continue
        review = _review_task(
            client,
            projects.review,
            existing=existing,
            boxes_task=task,
            annotation_id=int(annotation["id"]),
            boxes=boxes,
            size=size,
            run_id=run.id,
            config=config,
        )
        rows.append(
            {
                "task": review.id,
                "boxes_task": task_id,
                "image": uri,
                "width": size[0],
                "height": size[1],
                "boxes": [box.to_json() for box in boxes],
            }
        )
    if problems.rows:
        write_jsonl(s3, bucket, f"{reports_prefix(run.prefix)}not-reviewed.jsonl", problems.rows)
    write_jsonl(s3, bucket, review_tasks_key(run.prefix), rows)
    if not rows:
        raise NoLabelsError(
            f"no boxes task of round {run.id} in Label Studio project {projects.boxes.title!r} has a usable answer "
            f"({unanswered} unanswered, {len(problems.rows)} skipped, see "
            f"{s3_uri(bucket, reports_prefix(run.prefix))}); unanswered tasks stay open for the next round"
        )
    view = ensure_round_view(client, projects.review, run.id)
    return {
        "project": projects.review.id,
        "view": view,
        "tasks": len(rows),
        "unanswered": unanswered,
        "not_reviewed": len(problems.rows),
        "deadline": deadline_after(config.task_availability_lifetime_seconds, now),
        "url": f"{client.url}/projects/{projects.review.id}/data?tab={view}",
    }


# --------------------------------------------------------------------------------------------------
# 4. Verified labels
# --------------------------------------------------------------------------------------------------


@dataclass
class Verdicts:
    """The review's outcome: records to write, and what to mark in Label Studio once they are written."""

    records: list[LabelRecord] = field(default_factory=list)
    settle: list[tuple[int, int]] = field(default_factory=list)  # (review task, boxes task) per record
    problems: list[dict[str, Any]] = field(default_factory=list)
    unanswered: int = 0
    approved: int = 0
    rejected: int = 0


def review_verdicts(client: LabelStudioClient, s3: Any, *, config: LabelingConfig, run: gt.RunIdentity) -> Verdicts:
    """Turn the round's answered review tasks into label records (checked; nothing is written here)."""
    ui = gt.load_task_ui(config.class_names)
    boxes_title, review_title = project_titles(config.project_prefix)
    verdicts = Verdicts()
    for row in _read_rows(s3, config.data_bucket, review_tasks_key(run.prefix)):
        review_id, uri = int(row["task"]), str(row["image"])
        width, height = int(row["width"]), int(row["height"])
        try:
            task = client.task(review_id)
        except LabelStudioNotFound:
            verdicts.problems.append(
                {
                    "task": review_id,
                    "image": uri,
                    "reason": "the review task was deleted in Label Studio; reviewed again next round",
                }
            )
            continue
        annotation = _latest(task.submitted_annotations())
        if annotation is None:
            verdicts.unanswered += 1
            continue
        where = f"review task {review_id} (answer {annotation.get('id')})"
        if config.review_mode == gt.VERIFICATION:
            choices = [
                region.get("value", {}).get("choices")
                for region in annotation.get("result") or []
                if isinstance(region, dict) and region.get("from_name") == VERDICT
            ]
            answers = [c[0] for c in choices if isinstance(c, list) and len(c) == 1]
            if len(answers) != 1 or answers[0] not in (ui.approve, ui.reject):
                verdicts.problems.append(
                    {
                        "task": review_id,
                        "image": uri,
                        "reason": f"{where}: no single verdict ({ui.approve!r} or {ui.reject!r}), got {choices!r}",
                    }
                )
                _settle(client, task, f"{run.id}: no verdict")
                continue
            boxes = [Annotation.from_json(box) for box in row["boxes"]]
            status = "approved" if answers[0] == ui.approve else "rejected"
            job = labeling_job_name(boxes_title, run.id)
        else:
            boxes, problems = from_regions(
                annotation.get("result"), width=width, height=height, class_names=config.class_names
            )
            if problems:
                verdicts.problems.append(
                    {"task": review_id, "image": uri, "reason": f"{where}: " + "; ".join(problems)}
                )
                _settle(client, task, f"{run.id}: not written, " + "; ".join(problems))
                continue
            status = "approved"
            job = labeling_job_name(review_title, run.id)
        verdicts.records.append(
            LabelRecord(
                image_uri=uri,
                event_time=_answered_at(annotation),
                image_width=width,
                image_height=height,
                annotations=tuple(boxes),
                review_status=status,
                labeling_job=job,
            )
        )
        verdicts.settle.append((review_id, int(row["boxes_task"])))
        if status == "approved":
            verdicts.approved += 1
        else:
            verdicts.rejected += 1
    return verdicts


def settle_written(client: LabelStudioClient, pairs: Iterable[tuple[int, int]], *, run_id: str) -> int:
    """Mark the review and boxes tasks of written records settled; a task deleted meanwhile is passed over."""
    marked = 0
    for review_id, boxes_id in pairs:
        for task_id in (review_id, boxes_id):
            try:
                task = client.task(task_id)
            except LabelStudioNotFound:
                continue
            if not task.data.get("settled"):
                client.update_task_data(task_id, {**task.data, "settled": f"{run_id}: label written"})
                marked += 1
    return marked


def write_labels(
    client: LabelStudioClient,
    s3: Any,
    featurestore: Any,
    *,
    config: LabelingConfig,
    run: gt.RunIdentity,
    cursor: Any = None,
    time_left: Any = None,
) -> Any:
    """Write the round's verified labels in idempotent batches, then mark their tasks settled.

    Returns a `rounds.WriteCursor`; called again while records remain. A retry re-reads the answers and
    writes nothing twice (Feature Store skips records it holds); tasks are marked only after their record
    is stored, so a failure in between leaves them live and the next round writes them.
    """
    from labeling.runtime.feature_store import WRITE_BATCH_DEFAULT, write_records  # noqa: PLC0415
    from labeling.runtime.rounds import MIN_SECONDS_LEFT, WriteCursor  # noqa: PLC0415

    verdicts = review_verdicts(client, s3, config=config, run=run)
    state = WriteCursor(**vars(cursor)) if cursor else WriteCursor()
    state.total, state.approved, state.rejected = len(verdicts.records), verdicts.approved, verdicts.rejected
    state.no_verdict = verdicts.unanswered + len(verdicts.problems)
    while state.next < state.total:
        batch = verdicts.records[state.next : state.next + WRITE_BATCH_DEFAULT]
        report = write_records(featurestore, config.feature_group, batch)
        settle_written(client, verdicts.settle[state.next : state.next + len(batch)], run_id=run.id)
        state.written += report.written
        state.unchanged += report.unchanged
        state.superseded += report.superseded
        state.next += len(batch)
        if time_left is not None and time_left() < MIN_SECONDS_LEFT:
            break
    state.done = state.next >= state.total
    if state.done and verdicts.problems:
        write_jsonl(s3, config.data_bucket, f"{reports_prefix(run.prefix)}no-verdict.jsonl", verdicts.problems)
    return state
