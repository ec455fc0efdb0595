"""Output manifests: a bounding-box job's boxes, and a review job's verdicts as label records.

Parsed exactly as Ground Truth writes them (see "Labeling job output data" and "Label verification and
adjustment data in the output manifest" in the SageMaker developer guide), line by line through the
shared `answer_lines.read_answer_lines`, and turned into `LabelRecord`s for the label feature group.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from labeling.runtime.errors import NoLabelsError
from labeling.runtime.ground_truth.answer_lines import (
    AnswerLine,
    AnswerLineError,
    FailedImage,
    answer_time,
    answering_job,
    boxes,
    failure,
    read_answer_lines,
)
from labeling.runtime.ground_truth.jobs import BOXES_ATTRIBUTE, REVIEW_ATTRIBUTES, VERIFICATION
from shared.contracts import Annotation, LabelRecord


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


def parse_boxes_output(
    text: str, *, class_names: Sequence[str], attribute: str = BOXES_ATTRIBUTE, source: str = "output manifest"
) -> BoxesOutput:
    """Parse a bounding-box job's output manifest. Malformed lines raise ManifestError (all named at once)."""
    output = BoxesOutput()

    def answered(line: AnswerLine) -> None:
        width, height, annotations, box_problems = boxes(line.fields, attribute, class_names)
        raw_metadata = line.fields.get(f"{attribute}-metadata")
        metadata = raw_metadata if isinstance(raw_metadata, dict) else {}
        output.labeled.append(
            LabeledImage(
                line=line.number,
                image_uri=line.image_uri,
                width=width,
                height=height,
                annotations=tuple(annotations),
                created=answer_time(metadata, attribute),
                job_name=answering_job(metadata),
                problems=tuple(box_problems),
                raw=line.raw,
            )
        )

    output.failed = read_answer_lines(text, attribute=attribute, source=source, answered=answered)
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
    attribute = review_attribute or REVIEW_ATTRIBUTES[mode]
    output = ReviewOutput()

    def answered(line: AnswerLine) -> None:
        metadata = line.fields.get(f"{attribute}-metadata")
        if not isinstance(metadata, dict):
            raise AnswerLineError(f"{attribute}-metadata must be an object")
        if mode == VERIFICATION:
            record = _verified_record(
                line=line.fields,
                uri=line.image_uri,
                metadata=metadata,
                class_names=class_names,
                approve=approve,
                reject=reject,
                boxes_job=boxes_job,
                boxes_attribute=boxes_attribute,
                review_attribute=attribute,
                output=output,
            )
        else:
            record = _adjusted_record(
                line=line.fields,
                uri=line.image_uri,
                metadata=metadata,
                class_names=class_names,
                review_job=review_job,
                review_attribute=attribute,
                output=output,
            )
        output.records.append(record)

    output.failed = read_answer_lines(text, attribute=attribute, source=source, answered=answered)
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
            raise AnswerLineError(f"{attribute} {value!r} is not the index of a verification answer")
        by_index = answers[index]
    named = metadata.get("class-name")
    if named is not None and named not in answers:
        raise AnswerLineError(f"{attribute}-metadata.class-name {named!r} is neither {approve!r} nor {reject!r}")
    if named is not None and by_index is not None and named != by_index:
        raise AnswerLineError(f"{attribute} {value!r} and its class-name {named!r} disagree")
    verdict = named if named is not None else by_index
    if verdict is None:
        raise AnswerLineError(f"{attribute} has neither a value nor a class-name")
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
    if failure(line, boxes_attribute) is not None:
        raise AnswerLineError(f"a verdict for an image without boxes ({boxes_attribute} is missing)")
    width, height, annotations, box_problems = boxes(line, boxes_attribute, class_names)
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
        event_time=answer_time(metadata, review_attribute),
        image_width=width,
        image_height=height,
        annotations=tuple(annotations),
        review_status="approved" if approved else "rejected",
        labeling_job=boxes_job or answering_job(line.get(f"{boxes_attribute}-metadata") or {}) or "unknown",
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
    width, height, annotations, box_problems = boxes(line, review_attribute, class_names)
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
        event_time=answer_time(metadata, review_attribute),
        image_width=width,
        image_height=height,
        annotations=tuple(annotations),
        review_status="approved" if approved else "rejected",
        labeling_job=review_job or answering_job(metadata) or "unknown",
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
