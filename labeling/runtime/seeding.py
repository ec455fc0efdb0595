"""Import existing labels (CSV or JSON lines) into the label feature group, idempotently.

One row per image. Columns / keys:

=================  ========================================================================
image_uri          the image's s3:// URI (or `image`: a key relative to a base URI given
                   with the file, e.g. the raw-image prefix)
image_width        pixels (alias `width`)
image_height       pixels (alias `height`)
annotations        JSON list of boxes {"class_id", "x1", "y1", "x2", "y2"} in source pixels
                   (alias `boxes`; in CSV a JSON string); an empty list means "no defect"
review_status      approved (default) or rejected
event_time         ISO-8601 time of the label with a time zone (default 2000-01-01T00:00:00.000Z,
                   so any label made later by a labeling round wins); stored in UTC as Feature
                   Store takes it (yyyy-MM-ddTHH:mm:ss[.SSS]Z), to the millisecond
labeling_job       where the label comes from (default `seed`)
=================  ========================================================================

The `labels.jsonl` that `shared.synthetic.write_dataset` writes (image, width, height, boxes) is a
valid seed file. A malformed row is reported with its line number; the valid rows still load.
Re-running a file writes nothing twice (see `feature_store.write_records`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from labeling.runtime.errors import SeedFileError
from labeling.runtime.feature_store import WRITE_BATCH_DEFAULT, WriteReport, write_records
from shared.contracts import Annotation, ContractError, LabelRecord, format_event_time

SEED_EVENT_TIME = "2000-01-01T00:00:00.000Z"
SEED_JOB = "seed"
# The only String event times Feature Store's PutRecord takes: yyyy-MM-dd'T'HH:mm:ssZ, yyyy-MM-dd'T'HH:mm:ss.SSSZ.
FEATURE_STORE_EVENT_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")
_ALIASES = {"width": "image_width", "height": "image_height", "boxes": "annotations"}
_KEYS = (
    "image_uri",
    "image",
    "image_width",
    "image_height",
    "annotations",
    "review_status",
    "event_time",
    "labeling_job",
)


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class SeedFile:
    records: list[LabelRecord] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    rows: int = 0


def _rows(text: str, filename: str) -> list[tuple[int, Mapping[str, Any] | None, str | None]]:
    """(line number, row, problem) for each row of a CSV or JSON-lines text."""
    suffix = PurePosixPath(filename).suffix.lower()
    rows: list[tuple[int, Mapping[str, Any] | None, str | None]] = []
    if suffix in (".jsonl", ".json"):
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append((number, None, f"not valid JSON ({error.msg})"))
                continue
            if isinstance(value, dict):
                rows.append((number, value, None))
            else:
                rows.append((number, None, "not a JSON object"))
        return rows
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [name.strip() for name in reader.fieldnames or []]
        if not header:
            return rows
        unknown = [name for name in header if name not in _KEYS and name not in _ALIASES]
        if unknown:
            raise SeedFileError(
                f"{filename}: unknown column(s) {', '.join(unknown)}; expected some of {', '.join(_KEYS)}"
            )
        reader.fieldnames = header
        for row in reader:
            if None in row:
                rows.append((reader.line_num, None, f"more values than the {len(header)} columns of the header"))
                continue
            rows.append((reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}, None))
        return rows
    raise SeedFileError(f"{filename}: a seed file must be .csv or .jsonl (JSON lines), got {suffix or 'no extension'}")


BaseUri = str | Callable[[], str] | None
"""Prefix of relative `image` names: a URI, or a function asked once, when a row first needs it."""


def _event_time(value: Any) -> str:
    """A row's event time as Feature Store takes it; other ISO-8601 forms with a time zone become UTC."""
    text = str(value).strip()
    if FEATURE_STORE_EVENT_TIME.fullmatch(text):
        return text  # kept as given, so that re-importing the file finds the record unchanged
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(
            f"event_time {text!r} is not an ISO-8601 timestamp (e.g. 2025-12-01T08:00:00.000Z)"
        ) from None
    if moment.tzinfo is None:
        raise ContractError(f"event_time {text!r} has no time zone; end it with Z for UTC (or give an offset)")
    return format_event_time(moment.astimezone(UTC))


def _record(
    raw: Mapping[str, Any], *, base_uri: Callable[[], str | None], class_names: Sequence[str], default_job: str
) -> LabelRecord:
    row = {_ALIASES.get(key, key): value for key, value in raw.items()}
    unknown = sorted(key for key in row if key not in _KEYS)
    if unknown:
        raise ContractError(f"unknown key(s) {', '.join(unknown)}; expected some of {', '.join(_KEYS)}")
    uri = row.get("image_uri")
    if uri is None and row.get("image") is not None:
        base = base_uri()
        if not base:
            raise ContractError("`image` is relative; give the file's base URI (e.g. s3://<data bucket>/raw-images/)")
        uri = f"{base.rstrip('/')}/{str(row['image']).lstrip('/')}"
    if not isinstance(uri, str):
        raise ContractError("image_uri (or image) is required")
    try:
        width, height = int(row["image_width"]), int(row["image_height"])
    except KeyError as missing:
        raise ContractError(f"{missing.args[0]} is required") from None
    except (TypeError, ValueError):
        raise ContractError("image_width and image_height must be integers") from None
    boxes = row.get("annotations", [])
    if isinstance(boxes, str):
        try:
            boxes = json.loads(boxes)
        except json.JSONDecodeError:
            raise ContractError("annotations is not valid JSON") from None
    if not isinstance(boxes, list):
        raise ContractError("annotations must be a list of boxes")
    annotations = []
    for index, box in enumerate(boxes):
        if not isinstance(box, Mapping):
            raise ContractError(f"box {index} is not an object")
        annotation = Annotation.from_json(box)
        problem = annotation.problem(width, height, len(class_names))
        if problem:
            raise ContractError(f"box {index}: {problem}")
        annotations.append(annotation)
    return LabelRecord(
        image_uri=uri,
        event_time=_event_time(row.get("event_time") or SEED_EVENT_TIME),
        image_width=width,
        image_height=height,
        annotations=tuple(annotations),
        review_status=str(row.get("review_status") or "approved"),
        labeling_job=str(row.get("labeling_job") or default_job),
    )


def parse_seed_file(
    text: str,
    *,
    filename: str,
    class_names: Sequence[str],
    base_uri: BaseUri = None,
    default_job: str = SEED_JOB,
) -> SeedFile:
    """Records of the valid rows and an error (with line number) for each malformed one."""
    seed = SeedFile()
    resolved: list[str | None] = []

    def base() -> str | None:
        if not resolved:
            resolved.append(base_uri() if callable(base_uri) else base_uri)
        return resolved[0]

    first_line: dict[str, int] = {}
    for number, row, problem in _rows(text, filename):
        seed.rows += 1
        if problem or row is None:
            seed.errors.append(RowError(number, problem or "empty row"))
            continue
        try:
            record = _record(row, base_uri=base, class_names=class_names, default_job=default_job)
        except (ContractError, ValueError) as error:
            seed.errors.append(RowError(number, str(error)))
            continue
        if record.image_uri in first_line:
            seed.errors.append(
                RowError(number, f"{record.image_uri} is already on line {first_line[record.image_uri]}")
            )
            continue
        first_line[record.image_uri] = number
        seed.records.append(record)
    return seed


def import_seed_records(
    featurestore: Any,
    feature_group: str,
    records: Sequence[LabelRecord],
    *,
    batch: int = WRITE_BATCH_DEFAULT,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[WriteReport, int]:
    """Write `records` in idempotent batches; (report, number of records handled) - fewer if `should_stop`."""
    report = WriteReport()
    done = 0
    for start in range(0, len(records), batch):
        if should_stop():
            break
        chunk = records[start : start + batch]
        report.add(write_records(featurestore, feature_group, chunk))
        done += len(chunk)
    return report, done
