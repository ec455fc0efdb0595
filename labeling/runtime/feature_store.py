"""Reading and writing the label feature group's online store (sagemaker-featurestore-runtime).

* `latest_records` reads the newest record of many images at once (BatchGetRecord, 100 per call, a few
  calls in parallel). The online store keeps one record per image, the one with the newest event time,
  and answers at once after a write; the offline store (what training reads) receives the same records
  within minutes.
* `write_records` writes records idempotently: a record already stored (same features, same event time
  and job) is skipped, and so is one older than the stored record, so a retried step or a re-run seed
  writes nothing twice and never puts an older label over a newer one. Writes run in a bounded thread
  pool; throttling is absorbed by botocore's adaptive retry mode (client-side rate limiting with
  exponential backoff) and a failed write fails the whole call, after the others finished, for the
  caller's retry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.config import Config
from botocore.exceptions import ClientError

from labeling.runtime.errors import ConfigurationError
from shared.contracts import LABEL_FEATURES, LabelRecord, parse_event_time

BATCH_GET_LIMIT = 100
WRITE_BATCH_DEFAULT = 500  # records per idempotent write batch (one read-back, then the writes)
DEFAULT_WORKERS = 8
UNPROCESSED_RETRIES = 6
# Answers that the same request will always get (no such group, no permission): not worth a retry.
PERMANENT_ERRORS = frozenset({"ValidationError", "AccessForbidden", "ResourceNotFound"})


def client_config(max_workers: int = DEFAULT_WORKERS) -> Config:
    """botocore settings for Feature Store and S3 clients used from a thread pool."""
    return Config(
        retries={"mode": "adaptive", "max_attempts": 10},
        max_pool_connections=max(10, 2 * max_workers),
        connect_timeout=5,
        read_timeout=30,
    )


class FeatureStoreError(RuntimeError):
    """Feature Store refused records; the message lists which and why."""


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _batch_get(
    featurestore: Any,
    feature_group: str,
    uris: Sequence[str],
    feature_names: Sequence[str] | None,
    sleep: Callable[[float], None],
) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    pending = list(uris)
    for attempt in range(UNPROCESSED_RETRIES + 1):
        identifier: dict[str, Any] = {"FeatureGroupName": feature_group, "RecordIdentifiersValueAsString": pending}
        if feature_names:
            identifier["FeatureNames"] = list(feature_names)
        try:
            response = featurestore.batch_get_record(Identifiers=[identifier])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in PERMANENT_ERRORS:
                raise ConfigurationError(
                    f"feature group {feature_group} refused BatchGetRecord ({code}: {error}); check that it "
                    "exists in this account and region and that the function's role may read it"
                ) from error
            raise
        for item in response.get("Records", []):
            found[item["RecordIdentifierValueAsString"]] = {
                feature["FeatureName"]: feature["ValueAsString"] for feature in item["Record"]
            }
        errors = response.get("Errors", [])
        if errors:
            shown = "; ".join(
                f"{e['RecordIdentifierValueAsString']}: {e['ErrorCode']} {e['ErrorMessage']}" for e in errors[:5]
            )
            raise FeatureStoreError(f"BatchGetRecord on {feature_group} failed for {len(errors)} record(s): {shown}")
        pending = [
            uri
            for unprocessed in response.get("UnprocessedIdentifiers", [])
            for uri in unprocessed["RecordIdentifiersValueAsString"]
        ]
        if not pending:
            return found
        if attempt < UNPROCESSED_RETRIES:
            sleep(min(0.2 * 2**attempt, 5.0))
    raise FeatureStoreError(
        f"BatchGetRecord on {feature_group} left {len(pending)} record(s) unprocessed after retries"
    )


def latest_records(
    featurestore: Any,
    feature_group: str,
    uris: Sequence[str],
    *,
    feature_names: Sequence[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[str, str]]:
    """The stored (newest) record of each image that has one: image URI -> feature name -> value."""
    batches = list(chunks(list(dict.fromkeys(uris)), BATCH_GET_LIMIT))
    result: dict[str, dict[str, str]] = {}
    if not batches:
        return result
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(batches)))) as pool:
        for found in pool.map(
            lambda batch: _batch_get(featurestore, feature_group, batch, feature_names, sleep), batches
        ):
            result.update(found)
    return result


def approved_images(featurestore: Any, feature_group: str, uris: Sequence[str], **kwargs: Any) -> set[str]:
    """The images whose newest label is approved (a rejected newest label counts as no label)."""
    records = latest_records(featurestore, feature_group, uris, feature_names=["review_status"], **kwargs)
    return {uri for uri, values in records.items() if values.get("review_status") == "approved"}


@dataclass
class WriteReport:
    written: int = 0
    unchanged: int = 0  # already stored exactly so (a retry, or a seed file imported before)
    superseded: int = 0  # the store holds a newer label of the image; the older one is not written

    def add(self, other: WriteReport) -> None:
        self.written += other.written
        self.unchanged += other.unchanged
        self.superseded += other.superseded

    def to_json(self) -> dict[str, int]:
        return {"written": self.written, "unchanged": self.unchanged, "superseded": self.superseded}


def _values(record: LabelRecord) -> dict[str, str]:
    return {item["FeatureName"]: item["ValueAsString"] for item in record.to_feature_store()}


def plan_writes(
    records: Iterable[LabelRecord], stored: dict[str, dict[str, str]]
) -> tuple[list[LabelRecord], WriteReport]:
    """Which records to write, given what the online store holds; the report counts the skipped ones."""
    report = WriteReport()
    to_write: list[LabelRecord] = []
    for record in records:
        current = stored.get(record.image_uri)
        if current is not None and {k: current.get(k) for k in LABEL_FEATURES} == _values(record):
            report.unchanged += 1
            continue
        if current is not None and current.get("event_time"):
            try:
                newer = parse_event_time(current["event_time"]) > parse_event_time(record.event_time)
            except ValueError:
                newer = False
            if newer:
                report.superseded += 1
                continue
        to_write.append(record)
    return to_write, report


def write_records(
    featurestore: Any,
    feature_group: str,
    records: Sequence[LabelRecord],
    *,
    workers: int = DEFAULT_WORKERS,
    sleep: Callable[[float], None] = time.sleep,
) -> WriteReport:
    """Write `records` (one per image) to the feature group, skipping what is stored already; see module doc."""
    uris = [record.image_uri for record in records]
    if len(set(uris)) != len(uris):
        raise ValueError("write_records takes at most one record per image")
    stored = latest_records(featurestore, feature_group, uris, workers=workers, sleep=sleep)
    to_write, report = plan_writes(records, stored)
    failures: list[str] = []

    def put(record: LabelRecord) -> None:
        try:
            featurestore.put_record(FeatureGroupName=feature_group, Record=record.to_feature_store())
        except Exception as error:
            failures.append(f"{record.image_uri}: {error}")

    if to_write:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(to_write)))) as pool:
            list(pool.map(put, to_write))
    if failures:
        raise FeatureStoreError(
            f"PutRecord on {feature_group} failed for {len(failures)} of {len(to_write)} record(s) "
            f"(the others were written; a retry skips them): {'; '.join(failures[:5])}"
        )
    report.written = len(to_write)
    return report
