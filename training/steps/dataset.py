"""Step 1, export and QA: from the label feature group's offline store to a versioned dataset manifest.

* `read_offline_store()` reads every parquet file under a local folder or an `s3://` prefix (the
  layout Feature Store writes: feature columns plus `write_time`, `api_invocation_time`, `is_deleted`).
* `latest_labels()` keeps the newest record per image (by `event_time`, then `api_invocation_time`)
  and of those only the approved ones, so a later rejection withdraws an earlier approval.
* `quality_check()` drops, and reports one by one, records whose image is missing, unreadable or of
  another size than labeled, or whose boxes are degenerate, outside the image or of an unknown class.
* `export_dataset()` writes the manifest (image URI, S3 version, content hash, label event time and
  boxes of every image: enough to recreate the dataset), the QA report and a small property file,
  then fails with a clear message when fewer than the configured minimum of images remain.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from shared.contracts import (
    LABEL_FEATURES,
    Annotation,
    ContractError,
    LabelRecord,
    format_event_time,
    parse_event_time,
)

MANIFEST_SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
QA_REPORT_FILE = "qa_report.json"
DATASET_PROPERTY_FILE = "dataset.json"
OFFLINE_STORE_COLUMNS = ("write_time", "api_invocation_time", "is_deleted")
"""Columns Feature Store adds to every offline-store row besides the features."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class DatasetError(Exception):
    """The dataset cannot be built or recreated; the message says what is wrong and what to do."""


# --------------------------------------------------------------------------------------------------
# Where images come from
# --------------------------------------------------------------------------------------------------


class ImageNotFound(LookupError):
    """The image an image URI names does not exist (or not in the requested version)."""


@dataclass(frozen=True)
class ImageBlob:
    data: bytes
    version_id: str | None = None


class ImageStore(Protocol):
    def fetch(self, uri: str, version_id: str | None = None) -> ImageBlob:
        """The bytes of the image `uri` names (raises ImageNotFound)."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key). The key may be empty (a whole bucket)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    return bucket, key


class LocalImageStore:
    """Images of `s3://bucket/key` URIs looked up in a local folder (a copy of the raw images).

    `root/<key>` first, then the key without its leading folders one by one (a copy made with
    `aws s3 sync s3://bucket/raw-images/ root/` keeps `edge/<device>/...`), then the file name alone.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist")

    def path_for(self, uri: str) -> Path | None:
        _, key = parse_s3_uri(uri)
        parts = [part for part in key.split("/") if part not in ("", ".", "..")]
        for start in range(len(parts)):
            candidate = self.root.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
        return None

    def fetch(self, uri: str, version_id: str | None = None) -> ImageBlob:
        path = self.path_for(uri)
        if path is None:
            raise ImageNotFound(f"{uri}: not found under {self.root} (by key or file name)")
        return ImageBlob(path.read_bytes(), None)


class S3ImageStore:
    """Images read from S3 (a boto3 S3 client is passed in). Records the object version it read."""

    def __init__(self, s3_client: Any) -> None:
        self._s3 = s3_client

    def fetch(self, uri: str, version_id: str | None = None) -> ImageBlob:
        bucket, key = parse_s3_uri(uri)
        request: dict[str, str] = {"Bucket": bucket, "Key": key}
        if version_id:
            request["VersionId"] = version_id
        try:
            response = self._s3.get_object(**request)
        except self._s3.exceptions.NoSuchKey:
            raise ImageNotFound(f"{uri}: no such object") from None
        except self._s3.exceptions.ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "NoSuchVersion", "404", "NotFound", "InvalidArgument"):
                raise ImageNotFound(f"{uri}: {code or 'not found'}") from None
            raise DatasetError(f"cannot read {uri} ({code}): {error}") from None
        return ImageBlob(response["Body"].read(), response.get("VersionId"))


# --------------------------------------------------------------------------------------------------
# Offline store
# --------------------------------------------------------------------------------------------------


def offline_store_uri(sagemaker_client: Any, feature_group_name: str) -> str:
    """The S3 URI under which Feature Store writes the feature group's offline-store parquet files."""
    description = sagemaker_client.describe_feature_group(FeatureGroupName=feature_group_name)
    config = description.get("OfflineStoreConfig") or {}
    storage = config.get("S3StorageConfig") or {}
    uri = storage.get("ResolvedOutputS3Uri") or storage.get("S3Uri")
    if not uri:
        raise DatasetError(f"feature group {feature_group_name} has no offline store; training reads labels from it")
    return str(uri)


def _parquet_tables(source: str | Path, s3_client: Any | None) -> Iterable[tuple[str, bytes]]:
    text = str(source)
    if text.startswith("s3://"):
        if s3_client is None:
            raise ValueError("an S3 client is needed to read an s3:// offline store")
        bucket, prefix = parse_s3_uri(text)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        paginator = s3_client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".parquet"):
                    body = s3_client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    yield f"s3://{bucket}/{item['Key']}", body
        return
    folder = Path(source)
    if not folder.is_dir():
        raise DatasetError(f"offline store folder {folder} does not exist")
    for path in sorted(folder.rglob("*.parquet")):
        yield str(path), path.read_bytes()


def read_offline_store(source: str | Path, *, s3_client: Any | None = None) -> list[dict[str, Any]]:
    """Every row of every parquet file under `source` (a folder or an `s3://` prefix), as dicts."""
    import pyarrow.parquet as pq  # noqa: PLC0415 - not needed by the gate Lambda that shares this folder

    rows: list[dict[str, Any]] = []
    for name, data in _parquet_tables(source, s3_client):
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as error:  # pyarrow raises several types for a damaged file
            raise DatasetError(f"offline store file {name} is not readable parquet: {error}") from None
        rows.extend(table.to_pylist())
    return rows


def write_offline_store(
    records: Sequence[LabelRecord],
    directory: str | Path,
    *,
    written_at: datetime | None = None,
    deleted: Sequence[bool] | None = None,
    file_name: str = "labels.parquet",
) -> Path:
    """Write label records as Feature Store writes its offline store (for tests and local runs).

    Features keep their Feature Store types (Integral -> int64, String -> string); the three
    columns Feature Store adds are filled in like it does. Files go under a `year=/month=/day=/hour=`
    partition folder of `directory`, as in the real layout.
    """
    import pyarrow as pa  # noqa: PLC0415
    import pyarrow.parquet as pq  # noqa: PLC0415

    moment = (written_at or datetime.now(UTC)).astimezone(UTC)
    columns: dict[str, list[Any]] = {name: [] for name in (*LABEL_FEATURES, *OFFLINE_STORE_COLUMNS)}
    for index, record in enumerate(records):
        values = {item["FeatureName"]: item["ValueAsString"] for item in record.to_feature_store()}
        for name, kind in LABEL_FEATURES.items():
            columns[name].append(int(values[name]) if kind == "Integral" else values[name])
        columns["write_time"].append(moment)
        columns["api_invocation_time"].append(moment)
        columns["is_deleted"].append(bool(deleted[index]) if deleted else False)
    types = {"Integral": pa.int64(), "String": pa.string(), "Fractional": pa.float64()}
    schema = pa.schema(
        [pa.field(name, types[kind]) for name, kind in LABEL_FEATURES.items()]
        + [
            pa.field("write_time", pa.timestamp("ms", tz="UTC")),
            pa.field("api_invocation_time", pa.timestamp("ms", tz="UTC")),
            pa.field("is_deleted", pa.bool_()),
        ]
    )
    partition = Path(directory) / f"year={moment:%Y}" / f"month={moment:%m}" / f"day={moment:%d}" / f"hour={moment:%H}"
    partition.mkdir(parents=True, exist_ok=True)
    path = partition / file_name
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


@dataclass(frozen=True)
class Rejection:
    """A record or image left out of the dataset, and why."""

    image_uri: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"image_uri": self.image_uri, "reason": self.reason}


@dataclass(frozen=True)
class LatestLabels:
    approved: tuple[LabelRecord, ...]
    records_read: int
    images_seen: int
    not_approved: int
    deleted: int
    invalid: tuple[Rejection, ...]


def _moment(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return parse_event_time(value)
        except ContractError:
            return _EPOCH
    return _EPOCH


def latest_labels(rows: Iterable[Mapping[str, Any]]) -> LatestLabels:
    """The newest record of every image, then only the approved ones (see the module docstring)."""
    newest: dict[str, tuple[tuple[datetime, datetime, datetime], Mapping[str, Any]]] = {}
    invalid: list[Rejection] = []
    count = 0
    for row in rows:
        count += 1
        uri = row.get("image_uri")
        if not isinstance(uri, str) or not uri:
            invalid.append(Rejection(str(uri), "offline-store row without an image_uri"))
            continue
        try:
            event_time = parse_event_time(str(row.get("event_time")))
        except ContractError as error:
            invalid.append(Rejection(uri, str(error)))
            continue
        key = (event_time, _moment(row.get("api_invocation_time")), _moment(row.get("write_time")))
        current = newest.get(uri)
        if current is None or key >= current[0]:
            newest[uri] = (key, row)
    approved: list[LabelRecord] = []
    not_approved = deleted = 0
    for uri in sorted(newest):
        row = newest[uri][1]
        if bool(row.get("is_deleted")):
            deleted += 1
            continue
        try:
            record = LabelRecord.from_values({name: row.get(name) for name in LABEL_FEATURES})
        except ContractError as error:
            invalid.append(Rejection(uri, f"invalid label record: {error}"))
            continue
        if record.approved:
            approved.append(record)
        else:
            not_approved += 1
    return LatestLabels(
        approved=tuple(approved),
        records_read=count,
        images_seen=len(newest),
        not_approved=not_approved,
        deleted=deleted,
        invalid=tuple(invalid),
    )


# --------------------------------------------------------------------------------------------------
# QA and the manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str


def inspect_image(data: bytes) -> ImageInfo:
    """Decode the whole image (a truncated or corrupt file raises ValueError naming the problem)."""
    from PIL import Image  # noqa: PLC0415

    if not data:  # e.g. a camera or an upload that stopped before writing anything
        raise ValueError("empty image file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return ImageInfo(width=image.width, height=image.height, format=str(image.format or ""))
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise ValueError(f"unreadable image ({type(error).__name__}: {error})") from None


@dataclass(frozen=True)
class ManifestEntry:
    """One image of a dataset version: where it is, what it is (hash) and its approved label."""

    image_uri: str
    sha256: str
    event_time: str
    width: int
    height: int
    annotations: tuple[Annotation, ...]
    labeling_job: str
    version_id: str | None = None

    def identity(self) -> dict[str, Any]:
        """What defines the dataset's content (the S3 version id is where to find it, not what it is)."""
        return {
            "image_uri": self.image_uri,
            "sha256": self.sha256,
            "event_time": self.event_time,
            "width": self.width,
            "height": self.height,
            "annotations": [a.to_json() for a in self.annotations],
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.identity(), "labeling_job": self.labeling_job, "version_id": self.version_id}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ManifestEntry:
        try:
            return cls(
                image_uri=str(raw["image_uri"]),
                sha256=str(raw["sha256"]),
                event_time=str(raw["event_time"]),
                width=int(raw["width"]),
                height=int(raw["height"]),
                annotations=tuple(Annotation.from_json(item) for item in raw["annotations"]),
                labeling_job=str(raw.get("labeling_job", "")),
                version_id=raw.get("version_id"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DatasetError(f"manifest entry {raw.get('image_uri')!r} is invalid: {error}") from None


def dataset_version(class_names: Sequence[str], entries: Sequence[ManifestEntry]) -> str:
    """A name for the dataset's content: the same images, labels and classes give the same version."""
    canonical = json.dumps(
        {
            "class_names": list(class_names),
            "images": [e.identity() for e in sorted(entries, key=lambda e: e.image_uri)],
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return "ds-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DatasetManifest:
    dataset_version: str
    class_names: tuple[str, ...]
    images: tuple[ManifestEntry, ...]
    source: str = ""
    created_at: str = ""
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "dataset_version": self.dataset_version,
            "created_at": self.created_at,
            "source": self.source,
            "class_names": list(self.class_names),
            "image_count": len(self.images),
            "box_count": sum(len(e.annotations) for e in self.images),
            "images": [e.to_json() for e in self.images],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DatasetManifest:
        try:
            manifest = cls(
                dataset_version=str(raw["dataset_version"]),
                class_names=tuple(str(name) for name in raw["class_names"]),
                images=tuple(ManifestEntry.from_json(item) for item in raw["images"]),
                source=str(raw.get("source", "")),
                created_at=str(raw.get("created_at", "")),
                schema_version=int(raw.get("schema_version", MANIFEST_SCHEMA_VERSION)),
            )
        except (KeyError, TypeError) as error:
            raise DatasetError(f"dataset manifest is invalid: missing {error}") from None
        if manifest.schema_version > MANIFEST_SCHEMA_VERSION:
            raise DatasetError(f"dataset manifest schema {manifest.schema_version} is newer than this code")
        expected = dataset_version(manifest.class_names, manifest.images)
        if expected != manifest.dataset_version:
            raise DatasetError(
                f"dataset manifest says version {manifest.dataset_version} but its content is {expected}; "
                "it was edited or damaged"
            )
        return manifest

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: str | Path) -> DatasetManifest:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(f"cannot read dataset manifest {path}: {error}") from None
        return cls.from_json(raw)


def check_record(record: LabelRecord, blob: ImageBlob, num_classes: int) -> tuple[ManifestEntry | None, str | None]:
    """QA of one approved label and its image: the manifest entry, or the reason to drop it."""
    try:
        info = inspect_image(blob.data)
    except ValueError as error:
        return None, str(error)
    if (info.width, info.height) != (record.image_width, record.image_height):
        return None, (
            f"image is {info.width}x{info.height} but the label was drawn on {record.image_width}x{record.image_height}"
        )
    for annotation in record.annotations:
        problem = annotation.problem(info.width, info.height, num_classes)
        if problem:
            return None, problem
    entry = ManifestEntry(
        image_uri=record.image_uri,
        sha256=hashlib.sha256(blob.data).hexdigest(),
        event_time=record.event_time,
        width=info.width,
        height=info.height,
        annotations=record.annotations,
        labeling_job=record.labeling_job,
        version_id=blob.version_id,
    )
    return entry, None


def quality_check(
    records: Sequence[LabelRecord],
    store: ImageStore,
    *,
    num_classes: int,
    workers: int = 8,
) -> tuple[list[ManifestEntry], list[Rejection]]:
    """Check every record against its image (fetched in parallel); keep the good, report the rest."""

    def one(record: LabelRecord) -> tuple[ManifestEntry | None, Rejection | None]:
        try:
            blob = store.fetch(record.image_uri)
        except ImageNotFound as error:
            return None, Rejection(record.image_uri, f"image missing: {error}")
        entry, reason = check_record(record, blob, num_classes)
        return entry, (Rejection(record.image_uri, reason) if reason else None)

    kept: list[ManifestEntry] = []
    dropped: list[Rejection] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for entry, rejection in pool.map(one, records):
            if entry is not None:
                kept.append(entry)
            if rejection is not None:
                dropped.append(rejection)
    return kept, dropped


@dataclass(frozen=True)
class ExportResult:
    manifest: DatasetManifest
    report: dict[str, Any]
    manifest_path: Path
    report_path: Path
    property_path: Path


@dataclass(frozen=True)
class ExportOptions:
    """The export step's settings; `min_images` has no default here: `training.min_images` is its one source."""

    class_names: Sequence[str]
    min_images: int
    workers: int = 8
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def export_dataset(
    rows: Iterable[Mapping[str, Any]],
    store: ImageStore,
    output_dir: str | Path,
    *,
    options: ExportOptions,
    source: str = "",
) -> ExportResult:
    """Build, check and write the dataset manifest; raise DatasetError when too few images remain.

    The QA report is written first, so a failed export still says which records were dropped.
    """
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    labels = latest_labels(rows)
    kept, dropped = quality_check(labels.approved, store, num_classes=len(options.class_names), workers=options.workers)
    kept.sort(key=lambda e: e.image_uri)
    version = dataset_version(options.class_names, kept)
    manifest = DatasetManifest(
        dataset_version=version,
        class_names=tuple(options.class_names),
        images=tuple(kept),
        source=source,
        created_at=format_event_time(options.now()),
    )
    report: dict[str, Any] = {
        "dataset_version": version,
        "source": source,
        "records_read": labels.records_read,
        "images_labeled": labels.images_seen,
        "approved": len(labels.approved),
        "not_approved": labels.not_approved,
        "deleted": labels.deleted,
        "kept": len(kept),
        "boxes": sum(len(e.annotations) for e in kept),
        "min_images": options.min_images,
        "dropped": [r.to_json() for r in (*labels.invalid, *dropped)],
    }
    report_path = output / QA_REPORT_FILE
    report_path.write_text(json.dumps(report, indent=1), encoding="utf-8")
    if labels.records_read == 0:
        raise DatasetError(
            f"the offline store{' ' + source if source else ''} holds no label records: nothing to train on"
        )
    if len(kept) < options.min_images:
        reasons = "; ".join(f"{r.image_uri}: {r.reason}" for r in (*labels.invalid, *dropped)[:5])
        raise DatasetError(
            f"only {len(kept)} usable image(s) after QA, at least {options.min_images} needed "
            f"({len(labels.approved)} approved of {labels.images_seen} labeled images; "
            f"{len(report['dropped'])} dropped{': ' + reasons if reasons else ''})"
        )
    manifest_path = manifest.write(output / MANIFEST_FILE)
    property_path = output / DATASET_PROPERTY_FILE
    property_path.write_text(
        json.dumps({"dataset_version": version, "image_count": len(kept), "box_count": report["boxes"]}),
        encoding="utf-8",
    )
    return ExportResult(manifest, report, manifest_path, report_path, property_path)
