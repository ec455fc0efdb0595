"""The steps of a labeling round, as plain functions over boto3 clients (the Lambda handlers call these).

1. `start_round`: refuse to run beside another round; name the round and its two jobs.
2. `find_unlabeled_images`: list the raw-image prefix page by page and keep the images whose newest label
   is not approved, with what ranks them (upload time; the device's uncertainty from the upload's
   metadata). The list goes to S3 (`<round>/candidates/part-NNNNN.jsonl`), never into the state:
   the step returns a cursor and is called again until the listing is done, so it scales to millions
   of images. Non-images and zero-byte files are skipped and reported (`<round>/reports/`).
3. `select_images`: spend the round's budget (`selection.py`: most uncertain, then newest, fair across
   devices), checking that each image is a complete JPEG or PNG (undecodable ones are reported, never
   sent); the selection goes to `<round>/selected.jsonl` with each image's size. Pre-labels for it are
   computed next (`pre_labels.py`), then the backend takes over:
   `prepare_labeling_job` (Ground Truth: input manifest, worker files, the CreateLabelingJob request of a
   bounding-box job, or of an adjustment job over the model's boxes) or `label_studio.py`.
4. `prepare_review_job`: read the bounding-box job's output manifest (empty or malformed: the round
   fails, nothing is written), keep the images that got boxes and build the review job's request.
5. `write_labels`: read the review job's output manifest, turn it into label records and write them to
   the feature group in batches, idempotently; returns a cursor while records remain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from labeling.runtime import ground_truth as gt
from labeling.runtime.config import LabelingConfig
from labeling.runtime.errors import ConcurrentRoundError, ManifestError, NoLabelsError
from labeling.runtime.feature_store import WRITE_BATCH_DEFAULT, WriteReport, approved_images, write_records
from labeling.runtime.images import UndecodableImage, read_image_info, skip_reason
from labeling.runtime.pre_labels import read_pre_labels
from labeling.runtime.s3io import (
    is_missing,
    list_keys,
    parse_s3_uri,
    read_jsonl,
    read_text,
    s3_uri,
    write_jsonl,
    write_text,
)
from labeling.runtime.selection import Candidate, rank_candidates, source_of, uncertainty_from_metadata

TimeLeft = Callable[[], float]
PAGE_SIZE = 1000
PART_SIZE = 50_000  # candidates per part file
CHECK_BATCH = 64  # images checked in parallel when building a job's input manifest
HEAD_WORKERS = 16  # parallel HeadObject calls reading the devices' upload metadata
MIN_SECONDS_LEFT = 60.0  # a step stops and hands back its cursor when less time than this is left


def _never_late() -> float:
    return float("inf")


# --------------------------------------------------------------------------------------------------
# 1. Start
# --------------------------------------------------------------------------------------------------


def start_round(
    sfn: Any, *, config: LabelingConfig, state_machine_arn: str, execution_arn: str, start_time: str
) -> dict[str, str]:
    """Name this round (see `ground_truth.run_identity`) after checking that no other round is running."""
    others = [
        execution
        for page in sfn.get_paginator("list_executions").paginate(
            stateMachineArn=state_machine_arn, statusFilter="RUNNING"
        )
        for execution in page.get("executions", [])
        if execution["executionArn"] != execution_arn
    ]
    if others:
        other = others[0]
        raise ConcurrentRoundError(
            f"labeling round {other['executionArn']} (started {other.get('startDate')}) is still running; "
            "two rounds would send the same images to labeling twice, so this one stops. "
            "Start it again when the other round has finished."
        )
    run = gt.run_identity(
        project_prefix=config.project_prefix,
        jobs_prefix=config.jobs_prefix,
        execution_arn=execution_arn,
        start_time=start_time,
    )
    return run.to_json()


# --------------------------------------------------------------------------------------------------
# 2. Find images without an approved label
# --------------------------------------------------------------------------------------------------


@dataclass
class FindCursor:
    """Where the listing stands; small whatever the number of images (it is the state machine's payload)."""

    start_after: str | None = None
    part: int = 0
    listed: int = 0
    images: int = 0
    approved: int = 0
    candidates: int = 0
    skipped: int = 0
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> FindCursor:
        return cls(**dict(raw)) if raw else cls()


def candidates_prefix(run_prefix: str) -> str:
    return f"{run_prefix}candidates/"


def reports_prefix(run_prefix: str) -> str:
    return f"{run_prefix}reports/"


def find_unlabeled_images(
    s3: Any,
    featurestore: Any,
    *,
    bucket: str,
    prefix: str,
    feature_group: str,
    run_prefix: str,
    cursor: FindCursor | None = None,
    time_left: TimeLeft = _never_late,
    page_size: int | None = None,
    part_size: int | None = None,
) -> FindCursor:
    """List images under `prefix` from `cursor` on; write the unlabeled ones to part files; return the new cursor.

    Call again with the returned cursor until `done`. A call repeated with the same cursor (a retry)
    writes the same part files again, so retries are safe.
    """
    cursor = FindCursor(**asdict(cursor)) if cursor else FindCursor()
    if cursor.done:
        return cursor
    page_size, part_size = page_size or PAGE_SIZE, part_size or PART_SIZE
    candidates: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []

    def flush() -> None:
        if candidates:
            write_jsonl(s3, bucket, f"{candidates_prefix(run_prefix)}part-{cursor.part:05d}.jsonl", candidates)
        if skipped:
            write_jsonl(s3, bucket, f"{reports_prefix(run_prefix)}skipped-listing-{cursor.part:05d}.jsonl", skipped)
        if candidates or skipped:
            cursor.part += 1
        candidates.clear()
        skipped.clear()

    while True:
        request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
        if cursor.start_after:
            request["StartAfter"] = cursor.start_after
        page = s3.list_objects_v2(**request)
        contents = page.get("Contents", [])
        images = _sort_page(contents, cursor, skipped)
        cursor.images += len(images)
        approved = approved_images(featurestore, feature_group, [s3_uri(bucket, key) for key, _, _ in images])
        unlabeled = [(key, size, modified) for key, size, modified in images if s3_uri(bucket, key) not in approved]
        cursor.approved += len(images) - len(unlabeled)
        for candidate in _with_device_scores(s3, bucket, unlabeled):
            candidates.append(candidate.to_json())
            cursor.candidates += 1
        if contents:
            cursor.start_after = contents[-1]["Key"]
        cursor.done = not page.get("IsTruncated", False) or not contents
        out_of_time = time_left() < MIN_SECONDS_LEFT
        if cursor.done or out_of_time or len(candidates) >= part_size:
            flush()
        if cursor.done or out_of_time:
            return cursor


def list_unlabeled_images(
    s3: Any, featurestore: Any, *, bucket: str, prefix: str, feature_group: str, run_prefix: str
) -> FindCursor:
    """The whole listing in one call (what the state machine's loop does, for scripts and tests)."""
    cursor: FindCursor | None = None
    while cursor is None or not cursor.done:
        cursor = find_unlabeled_images(
            s3,
            featurestore,
            bucket=bucket,
            prefix=prefix,
            feature_group=feature_group,
            run_prefix=run_prefix,
            cursor=cursor,
        )
    return cursor


def _sort_page(
    contents: list[dict[str, Any]], cursor: FindCursor, skipped: list[dict[str, Any]]
) -> list[tuple[str, int, str]]:
    """The page's images (key, size, last modified); non-images and empty files go to `skipped` with their reason."""
    images: list[tuple[str, int, str]] = []
    for item in contents:
        key, size = item["Key"], int(item["Size"])
        cursor.listed += 1
        if key.endswith("/"):
            continue  # a folder marker, not a file
        reason = skip_reason(key, size)
        if reason:
            skipped.append({"key": key, "size": size, "reason": reason})
            cursor.skipped += 1
        else:
            modified: Any = item.get("LastModified")
            images.append((key, size, modified.isoformat() if hasattr(modified, "isoformat") else str(modified or "")))
    return images


def _with_device_scores(s3: Any, bucket: str, images: list[tuple[str, int, str]]) -> list[Candidate]:
    """Candidates with the uncertainty their device recorded (HeadObject of each device upload, in parallel)."""

    def score(image: tuple[str, int, str]) -> Candidate:
        key, size, modified = image
        if source_of(key) == "other":
            return Candidate(key=key, size=size, modified=modified)
        try:
            metadata = s3.head_object(Bucket=bucket, Key=key).get("Metadata", {})
        except ClientError as error:
            if not is_missing(error):
                raise
            metadata = {}  # gone since the listing: ranked as unknown, reported as undecodable when selected
        uncertainty, reason = uncertainty_from_metadata(metadata)
        return Candidate(key=key, size=size, modified=modified, uncertainty=uncertainty, reason=reason)

    if not images:
        return []
    with ThreadPoolExecutor(max_workers=min(HEAD_WORKERS, len(images))) as pool:
        return list(pool.map(score, images))


def iter_candidates(s3: Any, *, bucket: str, run_prefix: str) -> Iterator[tuple[str, int]]:
    """(key, size) of every candidate the listing wrote, in listing order, each image once."""
    for candidate in iter_candidate_rows(s3, bucket=bucket, run_prefix=run_prefix):
        yield candidate.key, candidate.size


def iter_candidate_rows(s3: Any, *, bucket: str, run_prefix: str) -> Iterator[Candidate]:
    """Every candidate the listing wrote, with what ranks it, in listing order, each image once."""
    seen: set[str] = set()
    for part in list_keys(s3, bucket, candidates_prefix(run_prefix)):
        for row in read_jsonl(s3, bucket, part):
            if row["key"] not in seen:
                seen.add(row["key"])
                yield Candidate.from_json(row)


# --------------------------------------------------------------------------------------------------
# 3. The bounding-box job
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectedImage:
    """An image the round sends to labeling: where it is, its size (from its header) and why it was chosen."""

    uri: str
    width: int
    height: int
    uncertainty: float
    reason: str
    source: str
    modified: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SelectedImage:
        return cls(
            uri=str(raw["uri"]),
            width=int(raw["width"]),
            height=int(raw["height"]),
            uncertainty=float(raw["uncertainty"]),
            reason=str(raw.get("reason", "")),
            source=str(raw["source"]),
            modified=str(raw.get("modified", "")),
        )


def selected_key(run_prefix: str) -> str:
    return f"{run_prefix}selected.jsonl"


def read_selected(s3: Any, *, bucket: str, run_prefix: str) -> list[SelectedImage]:
    """The round's selection, best first (empty when nothing was selected)."""
    try:
        return [SelectedImage.from_json(row) for row in read_jsonl(s3, bucket, selected_key(run_prefix))]
    except ClientError as error:
        if is_missing(error):
            return []
        raise


def select_images(s3: Any, *, bucket: str, run_prefix: str, budget: int, workers: int = 16) -> dict[str, Any]:
    """Spend the round's budget on the best candidates that are complete JPEG or PNG images.

    Writes `<round>/selected.jsonl` (best first) and, for unusable files, `reports/undecodable.jsonl`;
    returns counts. A retry writes the same files again.
    """
    ranked = rank_candidates(iter_candidate_rows(s3, bucket=bucket, run_prefix=run_prefix), budget=budget)
    selected: list[SelectedImage] = []
    undecodable: list[dict[str, Any]] = []

    def check(candidate: Candidate) -> tuple[Candidate, SelectedImage | None, str | None]:
        try:
            info = read_image_info(s3, bucket=bucket, key=candidate.key, size=candidate.size)
        except UndecodableImage as error:
            return candidate, None, str(error)
        except ClientError as error:
            if is_missing(error) or error.response.get("Error", {}).get("Code") == "InvalidRange":
                return candidate, None, "the object is gone or shorter than listed"
            raise
        image = SelectedImage(
            uri=s3_uri(bucket, candidate.key),
            width=info.width,
            height=info.height,
            uncertainty=candidate.uncertainty,
            reason=candidate.reason,
            source=candidate.source,
            modified=candidate.modified,
        )
        return candidate, image, None

    remaining = iter(ranked)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while len(selected) < budget:
            batch = [c for _, c in zip(range(CHECK_BATCH), remaining, strict=False)]
            if not batch:
                break
            for candidate, image, problem in pool.map(check, batch):
                if problem:
                    undecodable.append({"key": candidate.key, "reason": f"undecodable image: {problem}"})
                elif image is not None and len(selected) < budget:
                    selected.append(image)
    if undecodable:
        write_jsonl(s3, bucket, f"{reports_prefix(run_prefix)}undecodable.jsonl", undecodable)
    write_jsonl(s3, bucket, selected_key(run_prefix), (image.to_json() for image in selected))
    sources: dict[str, int] = {}
    for image in selected:
        sources[image.source] = sources.get(image.source, 0) + 1
    return {
        "images": len(selected),
        "undecodable": len(undecodable),
        "sources": len(sources),
        "selection": s3_uri(bucket, selected_key(run_prefix)),
        "reports": s3_uri(bucket, reports_prefix(run_prefix)),
    }


def _job_files(
    s3: Any, config: LabelingConfig, run_prefix: str, kind: str, *, folder: str | None = None
) -> tuple[str, str, str]:
    """Upload the worker template and label categories of a job; (template URI, categories URI, output URI)."""
    ui = gt.load_task_ui(config.class_names)
    folder = f"{run_prefix}{folder or kind}/"
    template = write_text(
        s3,
        config.data_bucket,
        f"{folder}template.liquid.html",
        gt.render_task_template(kind, ui),
        content_type="text/html",
    )
    categories = write_text(
        s3,
        config.data_bucket,
        f"{folder}label-categories.json",
        json.dumps(gt.label_category_config(kind, ui), indent=2),
        content_type="application/json",
    )
    return template, categories, s3_uri(config.data_bucket, f"{folder}output/")


def prepare_labeling_job(s3: Any, *, config: LabelingConfig, run: gt.RunIdentity, region: str) -> dict[str, Any]:
    """Input manifest, worker files and the CreateLabelingJob request of the round's first job.

    Without pre-labels, a bounding-box job (workers draw every box); with them, an adjustment job whose
    manifest carries the model's boxes (workers correct them). Either writes its answer under the label
    attribute `defect-boxes`, so the review reads both alike.
    """
    selected = read_selected(s3, bucket=config.data_bucket, run_prefix=run.prefix)
    result: dict[str, Any] = {
        "images": len(selected),
        "pre_labeled": 0,
        "reports": s3_uri(config.data_bucket, reports_prefix(run.prefix)),
    }
    if not selected:
        return result
    pre_labels = read_pre_labels(s3, bucket=config.data_bucket, run_prefix=run.prefix)
    kind = gt.PRE_LABELED if pre_labels else gt.BOXES
    lines = []
    for image in selected:
        line: dict[str, Any] = {"source-ref": image.uri}
        if pre_labels:
            line.update(gt.pre_label_attribute(pre_labels.get(image.uri), image, config.class_names))
        lines.append(line)
    result["pre_labeled"] = sum(1 for image in selected if image.uri in pre_labels)
    manifest = write_jsonl(s3, config.data_bucket, f"{run.prefix}{gt.BOXES}/input.manifest", lines)
    template, categories, output = _job_files(s3, config, run.prefix, kind, folder=gt.BOXES)
    result["request"] = gt.labeling_job_request(
        kind,
        config=config,
        region=region,
        job_name=run.boxes_job,
        manifest_uri=manifest,
        output_uri=output,
        template_uri=template,
        categories_uri=categories,
    )
    return result


# --------------------------------------------------------------------------------------------------
# 4. The review job
# --------------------------------------------------------------------------------------------------


def read_output_manifest(s3: Any, uri: str) -> str:
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as error:
        raise ManifestError(f"output manifest location: {error}") from None
    try:
        return read_text(s3, bucket, key)
    except ClientError as error:
        if is_missing(error):
            raise ManifestError(f"output manifest {uri} does not exist") from None
        raise
    except UnicodeDecodeError:
        raise ManifestError(f"output manifest {uri} is not UTF-8 text") from None


def prepare_review_job(
    s3: Any, *, config: LabelingConfig, run: gt.RunIdentity, boxes_output_uri: str, region: str
) -> dict[str, Any]:
    """Check the bounding-box job's output and build the review job over the images that got boxes."""
    text = read_output_manifest(s3, boxes_output_uri)
    output = gt.parse_boxes_output(text, class_names=config.class_names, source=boxes_output_uri)
    gt.require_labels(output, job_name=run.boxes_job)
    reviewable = [item for item in output.labeled if not item.problems]
    not_reviewed = [{"image": f.image_uri, "reason": f.reason} for f in output.failed] + [
        {"image": item.image_uri, "reason": "; ".join(item.problems)} for item in output.labeled if item.problems
    ]
    if not_reviewed:
        write_jsonl(s3, config.data_bucket, f"{reports_prefix(run.prefix)}not-reviewed.jsonl", not_reviewed)
    if not reviewable:
        raise NoLabelsError(
            f"labeling job {run.boxes_job} returned no usable boxes: every labeled image has a box with no area "
            f"(see {s3_uri(config.data_bucket, reports_prefix(run.prefix))}not-reviewed.jsonl)"
        )
    kind = config.review_mode
    # The review job reads the bounding-box job's lines exactly as Ground Truth wrote them.
    manifest = write_text(
        s3, config.data_bucket, f"{run.prefix}{kind}/input.manifest", "".join(item.raw + "\n" for item in reviewable)
    )
    template, categories, output_uri = _job_files(s3, config, run.prefix, kind)
    return {
        "images": len(reviewable),
        "not_reviewed": len(not_reviewed),
        "request": gt.labeling_job_request(
            kind,
            config=config,
            region=region,
            job_name=run.review_job,
            manifest_uri=manifest,
            output_uri=output_uri,
            template_uri=template,
            categories_uri=categories,
        ),
    }


# --------------------------------------------------------------------------------------------------
# 5. Write the labels
# --------------------------------------------------------------------------------------------------


@dataclass
class WriteCursor:
    next: int = 0
    total: int = 0
    written: int = 0
    unchanged: int = 0
    superseded: int = 0
    approved: int = 0
    rejected: int = 0
    no_verdict: int = 0
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> WriteCursor:
        return cls(**dict(raw)) if raw else cls()


def _review_answers(s3: Any, *, config: LabelingConfig, run: gt.RunIdentity) -> tuple[str, str]:
    """The reviewer's two answers as the round's review job had them (its label categories file)."""
    ui = gt.load_task_ui(config.class_names)
    if config.review_mode != gt.VERIFICATION:
        return ui.approve, ui.reject
    try:
        categories = json.loads(
            read_text(s3, config.data_bucket, f"{run.prefix}{gt.VERIFICATION}/label-categories.json")
        )
        approve, reject = (str(item["label"]) for item in categories["labels"])
    except ClientError as error:
        if is_missing(error):
            return ui.approve, ui.reject  # not prepared by this round (e.g. parsed by hand): today's answers
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise ManifestError(
            f"{run.prefix}{gt.VERIFICATION}/label-categories.json is not the review's categories file"
        ) from None
    return approve, reject


def review_records(s3: Any, *, config: LabelingConfig, run: gt.RunIdentity, review_output_uri: str) -> gt.ReviewOutput:
    """Parse the review job's output manifest; fails (writing nothing) when it is empty, malformed or verdict-less."""
    text = read_output_manifest(s3, review_output_uri)
    approve, reject = _review_answers(s3, config=config, run=run)
    output = gt.parse_review_output(
        text,
        mode=config.review_mode,
        class_names=config.class_names,
        approve=approve,
        reject=reject,
        boxes_job=run.boxes_job,
        review_job=run.review_job,
        source=review_output_uri,
    )
    if not output.records:
        raise NoLabelsError(
            f"review job {run.review_job} returned no verdict for any of its {len(output.failed)} image(s): "
            f"{gt.failure_summary(output.failed)}"
        )
    return output


def write_labels(
    s3: Any,
    featurestore: Any,
    *,
    config: LabelingConfig,
    run: gt.RunIdentity,
    review_output_uri: str,
    cursor: WriteCursor | None = None,
    time_left: TimeLeft = _never_late,
    workers: int = 8,
) -> WriteCursor:
    """Write the review's label records from `cursor` on, in idempotent batches, until done or out of time."""
    output = review_records(s3, config=config, run=run, review_output_uri=review_output_uri)
    cursor = WriteCursor(**asdict(cursor)) if cursor else WriteCursor()
    summary = output.summary()
    cursor.total, cursor.approved = len(output.records), summary["approved"]
    cursor.rejected, cursor.no_verdict = summary["rejected"], summary["no_verdict"]
    while cursor.next < cursor.total:
        batch = output.records[cursor.next : cursor.next + WRITE_BATCH_DEFAULT]
        report: WriteReport = write_records(featurestore, config.feature_group, batch, workers=workers)
        cursor.written += report.written
        cursor.unchanged += report.unchanged
        cursor.superseded += report.superseded
        cursor.next += len(batch)
        if time_left() < MIN_SECONDS_LEFT:
            break
    cursor.done = cursor.next >= cursor.total
    if cursor.done and output.failed:
        write_jsonl(
            s3,
            config.data_bucket,
            f"{reports_prefix(run.prefix)}no-verdict.jsonl",
            ({"image": f.image_uri, "reason": f.reason} for f in output.failed),
        )
    return cursor
