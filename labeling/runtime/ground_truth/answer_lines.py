"""The one parser of output manifest lines that both kinds of job share.

Ground Truth writes one JSON object per image: its `source-ref`, and under the job's label attribute
either an answer or (in `<attribute>-metadata`) why there is none. `read_answer_lines` walks a
manifest, sets the unanswered images aside, and hands each answered line to the job's own reader;
every malformed line is collected and raised as one ManifestError, so nothing is written from a
manifest that is only partly understood. The field readers below are the pieces those job readers
share (the image's boxes, the answer's time, the job that answered).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from labeling.runtime.errors import ManifestError
from labeling.runtime.ground_truth.jobs import parse_timestamp
from shared.contracts import Annotation, format_event_time

MAX_REPORTED_PROBLEMS = 20


class AnswerLineError(ValueError):
    """What is wrong with one manifest line (collected, then raised with the others as a ManifestError)."""


@dataclass(frozen=True)
class AnswerLine:
    """One answered line of an output manifest."""

    number: int
    raw: str  # the line as Ground Truth wrote it
    image_uri: str
    fields: Mapping[str, Any]


@dataclass(frozen=True)
class FailedImage:
    line: int
    image_uri: str
    reason: str


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


def read_answer_lines(
    text: str, *, attribute: str, source: str, answered: Callable[[AnswerLine], None]
) -> list[FailedImage]:
    """Hand every answered line of a manifest to `answered`; the images without an answer.

    A line that is not a JSON object, has no s3:// `source-ref`, repeats an image, or makes `answered`
    raise AnswerLineError is malformed: all of them are named in one ManifestError at the end.
    """
    problems = _Problems(source)
    failed: list[FailedImage] = []
    seen: dict[str, int] = {}
    for number, raw, line in _lines(text, source):
        if line is None:
            problems.add(number, "not a JSON object")
            continue
        try:
            uri = _source(line)
            if uri in seen:
                raise AnswerLineError(f"{uri} is also on line {seen[uri]}")
            seen[uri] = number
            reason = failure(line, attribute)
            if reason is not None:
                failed.append(FailedImage(number, uri, reason))
                continue
            answered(AnswerLine(number=number, raw=raw, image_uri=uri, fields=line))
        except AnswerLineError as error:
            problems.add(number, str(error))
    problems.raise_if_any()
    return failed


def _source(line: Mapping[str, Any]) -> str:
    uri = line.get("source-ref")
    if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri) < 8:
        raise AnswerLineError(f"source-ref must be the image's s3:// URI, got {uri!r}")
    return uri


def failure(line: Mapping[str, Any], attribute: str) -> str | None:
    """Why Ground Truth has no answer for this line (None when it has one)."""
    metadata = line.get(f"{attribute}-metadata")
    if isinstance(metadata, dict) and metadata.get("failure-reason"):
        return str(metadata["failure-reason"])
    if attribute not in line and f"{attribute}-metadata" not in line:
        return "no answer (the task expired or was declined)"
    return None


# --------------------------------------------------------------------------------------------------
# Field readers
# --------------------------------------------------------------------------------------------------


def answering_job(metadata: Mapping[str, Any]) -> str | None:
    """The labeling job that answered, from `<attribute>-metadata.job-name` (None when not named)."""
    name = metadata.get("job-name")
    if not isinstance(name, str) or not name:
        return None
    return name.removeprefix("labeling-job/")


def answer_time(metadata: Mapping[str, Any], attribute: str) -> str:
    """The answer's event time (ISO-8601 UTC, milliseconds) from `<attribute>-metadata.creation-date`."""
    value = metadata.get("creation-date")
    if not isinstance(value, str):
        raise AnswerLineError(f"{attribute}-metadata has no creation-date")
    try:
        return format_event_time(parse_timestamp(value))
    except ValueError:
        raise AnswerLineError(f"{attribute}-metadata creation-date {value!r} is not a timestamp") from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AnswerLineError(f"{what} must be a number, got {value!r}")
    return float(value)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def boxes(
    line: Mapping[str, Any], attribute: str, class_names: Sequence[str]
) -> tuple[int, int, list[Annotation], list[str]]:
    """Image size, boxes (clipped to the image) and box problems of a bounding-box label attribute."""
    label = line.get(attribute)
    metadata = line.get(f"{attribute}-metadata") or {}
    if not isinstance(label, dict) or not isinstance(metadata, dict):
        raise AnswerLineError(f"{attribute} must be an object with image_size and annotations")
    sizes = label.get("image_size")
    if not isinstance(sizes, list) or not sizes or not isinstance(sizes[0], dict):
        raise AnswerLineError(f"{attribute}.image_size must be a list with the image's width and height")
    width, height = sizes[0].get("width"), sizes[0].get("height")
    if not (_positive_int(width) and _positive_int(height)):
        raise AnswerLineError(f"{attribute}.image_size has no positive integer width and height: {sizes[0]!r}")
    assert isinstance(width, int) and isinstance(height, int)
    raw_boxes = label.get("annotations")
    if not isinstance(raw_boxes, list):
        raise AnswerLineError(f"{attribute}.annotations must be a list")
    class_map = metadata.get("class-map")
    if raw_boxes and not isinstance(class_map, dict):
        raise AnswerLineError(f"{attribute}-metadata has boxes but no class-map")
    annotations: list[Annotation] = []
    problems: list[str] = []
    for index, box in enumerate(raw_boxes):
        if not isinstance(box, dict):
            raise AnswerLineError(f"{attribute}.annotations[{index}] is not an object")
        class_id = box.get("class_id")
        if isinstance(class_id, bool) or not isinstance(class_id, int) or not 0 <= class_id < len(class_names):
            raise AnswerLineError(
                f"{attribute}.annotations[{index}].class_id {class_id!r} is not one of the {len(class_names)} classes"
            )
        named = class_map.get(str(class_id)) if isinstance(class_map, dict) else None
        if named != class_names[class_id]:
            raise AnswerLineError(
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
