"""The telemetry store's record processor: device messages in, Athena rows and CloudWatch metrics out.

Two IoT topic rules (results, heartbeats) put every message a device publishes into one Firehose
stream, wrapped as `{"kind", "topic_thing", "received_at", "payload"}` with the payload base64-encoded,
so that a message that is not even JSON still arrives here. Firehose hands batches to this function
(a data transformation) and writes what it returns to S3 under the partition keys it returns:

* a valid message becomes one JSON line of its table (`results` or `heartbeats`), partitioned by the
  UTC date of the device's timestamp and the thing name;
* anything else (not JSON, oversized, an unknown message version, a missing or mistyped field, a
  negative latency, a thing that is not the one whose topic it came on) becomes a line of `rejected`
  with the reason and the payload as received: counted, kept, never a metric.

The metrics are CloudWatch embedded metric format lines printed to the function's log, per device and
per thing group, aggregated per device and minute of the devices' own timestamps (late messages from
a device that was offline count for the minute they describe).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.contracts import (
    MAX_DEVICE_MESSAGE_BYTES,
    ContractError,
    DeviceHeartbeat,
    DeviceResult,
    format_event_time,
)

ENVIRONMENT_VARIABLE = "TELEMETRY_CONFIG"
RESULTS, HEARTBEATS, REJECTED = "results", "heartbeats", "rejected"
TABLE_OF_KIND = {"result": RESULTS, "heartbeat": HEARTBEATS}
DEVICE_DIMENSIONS = [["ThingGroup"], ["ThingGroup", "Device"]]
# Metric names, read by the alarms and dashboards (edge_deployment/fleet_monitoring.py, device_alarms.py).
FRAMES, DEFECT_FRAMES, UNCERTAIN_FRAMES, TOP_SCORE, LATENCY = (
    "Frames",
    "DefectFrames",
    "UncertainFrames",
    "TopScore",
    "LatencyMs",
)
HEARTBEAT_COUNT, SERVING, EMPTY_FRAMES_DRIFTING = "Heartbeats", "Serving", "EmptyFramesDrifting"
EXPECTED_UNCERTAIN, UPLOADS_PENDING, UPLOADS_DROPPED = "ExpectedUncertainShare", "UploadsPending", "UploadsDroppedTotal"
PUBLISH_PENDING, PUBLISH_DROPPED = "PublishPending", "PublishDroppedTotal"  # the device's outbox (inspector/outbox.py)
EXPECTED_EMPTY = "ExpectedEmptyShare"  # 1 - the serving model's test split detection rate (model.json)
FRAMES_FAILED, PUBLISH_FAILURES, REJECTED_MESSAGES = "FramesFailedTotal", "PublishFailuresTotal", "RejectedMessages"
HEARTBEATS_BY_VERSION = "DeviceHeartbeats"
MAX_EMF_VALUES = 100  # values of one metric in one EMF document
# CloudWatch takes data points up to two weeks old and two hours ahead; others count when received.
METRIC_PAST, METRIC_FUTURE = timedelta(days=13), timedelta(hours=1)
_SAFE_KEY = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")


class TelemetryConfigurationError(RuntimeError):
    """The function's settings are missing or malformed (a deployment defect, not a device's)."""


@dataclass(frozen=True)
class TelemetryConfig:
    """What the function knows of the deployment: one JSON document in TELEMETRY_CONFIG (written at synth)."""

    thing_group: str
    namespace: str  # CloudWatch namespace of the device metrics
    uncertainty_band: tuple[float, float]  # a frame whose top score is in [low, high) is uncertain

    def to_json(self) -> str:
        return json.dumps(
            {
                "thing_group": self.thing_group,
                "namespace": self.namespace,
                "uncertainty_band": list(self.uncertainty_band),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> TelemetryConfig:
        try:
            raw = json.loads(text)
            low, high = (float(value) for value in raw["uncertainty_band"])
            return cls(
                thing_group=str(raw["thing_group"]), namespace=str(raw["namespace"]), uncertainty_band=(low, high)
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise TelemetryConfigurationError(
                f"{ENVIRONMENT_VARIABLE} is not a valid telemetry configuration: {error}"
            ) from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> TelemetryConfig:
        text = environ.get(ENVIRONMENT_VARIABLE)
        if not text:
            raise TelemetryConfigurationError(f"environment variable {ENVIRONMENT_VARIABLE} is not set")
        return cls.from_json(text)


# --------------------------------------------------------------------------------------------------
# One record
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """What the topic rule wrote: the message's kind, the thing of its topic, when IoT received it, the payload."""

    kind: str
    topic_thing: str
    received_at: datetime
    payload: bytes


@dataclass(frozen=True)
class Row:
    """One line for S3: its table, its partition (date, device) and its JSON document."""

    table: str
    date: str
    device: str
    document: dict[str, Any]
    result: DeviceResult | None = None
    heartbeat: DeviceHeartbeat | None = None
    reason: str | None = None

    def line(self) -> bytes:
        return (json.dumps(self.document, separators=(",", ":"), sort_keys=True) + "\n").encode()

    @property
    def partition_keys(self) -> dict[str, str]:
        return {"table": self.table, "date": self.date, "device": self.device}


def safe_key(value: str) -> str:
    """A value usable as an S3 partition folder (thing names already are; anything else is made so)."""
    cleaned = "".join(character if character in _SAFE_KEY else "_" for character in value)[:128]
    return cleaned or "unknown"


def read_envelope(data: bytes, arrived: datetime) -> Envelope:
    """The topic rule's wrapper of one message; ContractError when it is not one (never from a device)."""
    try:
        raw = json.loads(data)
        received_ms = raw.get("received_at")
        received = datetime.fromtimestamp(received_ms / 1000, UTC) if isinstance(received_ms, int | float) else arrived
        payload = base64.b64decode(raw["payload"], validate=True)
        return Envelope(
            kind=str(raw["kind"]), topic_thing=str(raw["topic_thing"]), received_at=received, payload=payload
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, binascii.Error) as error:
        raise ContractError(f"not a telemetry envelope ({type(error).__name__}: {error})") from None


def parse_message(envelope: Envelope) -> DeviceResult | DeviceHeartbeat:
    """The device message inside an envelope, checked against its contract; ContractError says why not."""
    if envelope.kind not in TABLE_OF_KIND:
        raise ContractError(f"kind: {envelope.kind!r} is not result or heartbeat")
    if len(envelope.payload) > MAX_DEVICE_MESSAGE_BYTES:
        raise ContractError(f"{len(envelope.payload)} bytes, larger than {MAX_DEVICE_MESSAGE_BYTES}")
    try:
        raw = json.loads(envelope.payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ContractError(f"not JSON ({error})") from None
    message = DeviceResult.from_json(raw) if envelope.kind == "result" else DeviceHeartbeat.from_json(raw)
    if message.thing != envelope.topic_thing:
        raise ContractError(f"thing: {message.thing!r} published on the topic of {envelope.topic_thing!r}")
    return message


def is_uncertain(score: float, band: tuple[float, float]) -> bool:
    low, high = band
    return low <= score < high


def result_row(result: DeviceResult, received_at: datetime, config: TelemetryConfig) -> Row:
    document = {
        **result.to_json(),
        "received_at": format_event_time(received_at),
        "defect": result.defect,
        "top_score": result.top_score,
        "uncertain": is_uncertain(result.top_score, config.uncertainty_band),
    }
    return Row(RESULTS, result.timestamp.strftime("%Y-%m-%d"), result.thing, document, result=result)


def heartbeat_row(raw: Mapping[str, Any], heartbeat: DeviceHeartbeat, received_at: datetime) -> Row:
    document = {name: raw.get(name) for name in sorted(DeviceHeartbeat.FIELDS)}
    document["timestamp"] = format_event_time(heartbeat.timestamp)
    document["received_at"] = format_event_time(received_at)
    return Row(HEARTBEATS, heartbeat.timestamp.strftime("%Y-%m-%d"), heartbeat.thing, document, heartbeat=heartbeat)


def rejected_row(reason: str, data: bytes, envelope: Envelope | None, arrived: datetime) -> Row:
    received = envelope.received_at if envelope is not None else arrived
    document = {
        "received_at": format_event_time(received),
        "kind": envelope.kind if envelope is not None else None,
        "topic_thing": envelope.topic_thing if envelope is not None else None,
        "reason": reason,
        # As received: text when it is text, else base64 (nothing a device sent is lost).
        "payload": _as_text(envelope.payload if envelope is not None else data),
    }
    device = safe_key(envelope.topic_thing) if envelope is not None else "unknown"
    return Row(REJECTED, received.strftime("%Y-%m-%d"), device, document, reason=reason)


def _as_text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def process(data: bytes, arrived: datetime, config: TelemetryConfig) -> Row:
    """One Firehose record to its row: the message's table, or `rejected` with the reason."""
    envelope: Envelope | None = None
    try:
        envelope = read_envelope(data, arrived)
        message = parse_message(envelope)
    except ContractError as error:
        return rejected_row(str(error), data, envelope, arrived)
    if isinstance(message, DeviceResult):
        return result_row(message, envelope.received_at, config)
    return heartbeat_row(json.loads(envelope.payload), message, envelope.received_at)


# --------------------------------------------------------------------------------------------------
# Metrics (CloudWatch embedded metric format)
# --------------------------------------------------------------------------------------------------


@dataclass
class _DeviceMinute:
    frames: int = 0
    defects: int = 0
    uncertain: int = 0
    top_scores: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    heartbeats: list[DeviceHeartbeat] = field(default_factory=list)


def _metric_time(moment: datetime, now: datetime) -> datetime:
    inside = now - METRIC_PAST <= moment <= now + METRIC_FUTURE
    return (moment if inside else now).replace(second=0, microsecond=0)


def _document(  # noqa: PLR0917 - one private builder, called with its arguments in order
    config: TelemetryConfig,
    moment: datetime,
    dimensions: Mapping[str, str],
    dimension_sets: Sequence[Sequence[str]],
    metrics: Mapping[str, tuple[str, float | list[float]]],
    properties: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "_aws": {
            "Timestamp": int(moment.timestamp() * 1000),
            "CloudWatchMetrics": [
                {
                    "Namespace": config.namespace,
                    "Dimensions": [list(names) for names in dimension_sets],
                    "Metrics": [{"Name": name, "Unit": unit} for name, (unit, _) in metrics.items()],
                }
            ],
        },
        **dimensions,
        **{name: value for name, (_, value) in metrics.items()},
        **(properties or {}),
    }


def _chunks(values: Sequence[float]) -> list[list[float]]:
    return [list(values[start : start + MAX_EMF_VALUES]) for start in range(0, len(values), MAX_EMF_VALUES)] or [[]]


def metric_documents(rows: Iterable[Row], config: TelemetryConfig, now: datetime) -> list[dict[str, Any]]:
    """EMF documents for a batch of rows: per device and minute, dimensions ThingGroup and ThingGroup+Device.

    Results: Frames, DefectFrames, UncertainFrames (counts), TopScore and LatencyMs (every value, so
    CloudWatch computes averages and percentiles). Heartbeats: Heartbeats, FramesFailedTotal,
    PublishFailuresTotal, UploadsPending, UploadsDroppedTotal, PublishPending, PublishDroppedTotal, Serving and
    EmptyFramesDrifting (1 or 0),
    ExpectedUncertainShare and ExpectedEmptyShare (the serving model's test split, when known), and
    DeviceHeartbeats by ModelVersion (per thing group and per device). Rejected messages: RejectedMessages
    (thing group only).
    """
    minutes: dict[tuple[str, datetime], _DeviceMinute] = defaultdict(_DeviceMinute)
    rejected: dict[datetime, int] = defaultdict(int)
    for row in rows:
        if row.result is not None:
            result = row.result
            bucket = minutes[(result.thing, _metric_time(result.timestamp, now))]
            bucket.frames += 1
            bucket.defects += result.defect
            bucket.uncertain += is_uncertain(result.top_score, config.uncertainty_band)
            bucket.top_scores.append(result.top_score)
            bucket.latencies.append(result.latency_ms)
        elif row.heartbeat is not None:
            minutes[(row.heartbeat.thing, _metric_time(row.heartbeat.timestamp, now))].heartbeats.append(row.heartbeat)
        else:
            rejected[_metric_time(now, now)] += 1
    documents: list[dict[str, Any]] = []
    for (thing, moment), bucket in sorted(minutes.items()):
        dimensions = {"ThingGroup": config.thing_group, "Device": thing}
        if bucket.frames:
            scores, latencies = _chunks(bucket.top_scores), _chunks(bucket.latencies)
            for index in range(max(len(scores), len(latencies))):
                metrics: dict[str, tuple[str, float | list[float]]] = {}
                if index == 0:
                    metrics |= {
                        FRAMES: ("Count", bucket.frames),
                        DEFECT_FRAMES: ("Count", bucket.defects),
                        UNCERTAIN_FRAMES: ("Count", bucket.uncertain),
                    }
                metrics |= {TOP_SCORE: ("None", scores[index]), LATENCY: ("Milliseconds", latencies[index])}
                documents.append(_document(config, moment, dimensions, DEVICE_DIMENSIONS, metrics))
        for heartbeat in bucket.heartbeats:
            health: dict[str, tuple[str, float | list[float]]] = {
                HEARTBEAT_COUNT: ("Count", 1),
                FRAMES_FAILED: ("Count", heartbeat.frames_failed),
                PUBLISH_FAILURES: ("Count", heartbeat.publish_failures),
                UPLOADS_PENDING: ("Count", heartbeat.uploads_pending),
                UPLOADS_DROPPED: ("Count", heartbeat.uploads_dropped),
                PUBLISH_PENDING: ("Count", heartbeat.publish_pending),
                PUBLISH_DROPPED: ("Count", heartbeat.publish_dropped),
                SERVING: ("None", 1 if heartbeat.serving else 0),
                EMPTY_FRAMES_DRIFTING: ("None", 1 if heartbeat.empty_frames_drifting else 0),
            }
            if heartbeat.expected_uncertain_frame_rate is not None:
                health[EXPECTED_UNCERTAIN] = ("None", heartbeat.expected_uncertain_frame_rate)
            if heartbeat.expected_empty_frame_rate is not None:
                health[EXPECTED_EMPTY] = ("None", heartbeat.expected_empty_frame_rate)
            properties = {"ModelVersion": heartbeat.model_version or "none", "Status": heartbeat.status}
            documents.append(_document(config, moment, dimensions, DEVICE_DIMENSIONS, health, properties))
            documents.append(
                _document(
                    config,
                    moment,
                    {
                        "ThingGroup": config.thing_group,
                        "ModelVersion": heartbeat.model_version or "none",
                        "Device": thing,
                    },
                    # per device too: the staged rollout asks whether each device serves the new version
                    [["ThingGroup", "ModelVersion"], ["ThingGroup", "Device", "ModelVersion"]],
                    {HEARTBEATS_BY_VERSION: ("Count", 1)},
                )
            )
    for moment, count in sorted(rejected.items()):
        documents.append(
            _document(
                config,
                moment,
                {"ThingGroup": config.thing_group},
                [["ThingGroup"]],
                {REJECTED_MESSAGES: ("Count", count)},
            )
        )
    return documents


# --------------------------------------------------------------------------------------------------
# The Firehose data transformation
# --------------------------------------------------------------------------------------------------


def _identity(data: bytes, arrived: datetime) -> tuple[str, str, bytes] | None:
    """What makes two records the same device message (not the time IoT received each copy); None: no envelope."""
    try:
        envelope = read_envelope(data, arrived)
    except ContractError:
        return None
    return envelope.kind, envelope.topic_thing, envelope.payload


def transform(
    event: Mapping[str, Any],
    config: TelemetryConfig,
    *,
    emit: Callable[[str], None] = print,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Firehose's transformation request to its response: every record Ok, with its line and partition keys.

    A record is never dropped or failed for what a device sent (that goes to `rejected`), with one exception:
    a repeat of a message already in this batch (the same device, kind and payload bytes: QoS 1 delivers a
    message again when its acknowledgement was lost, and a device publishes again what its nucleus may have
    taken before refusing) is Dropped, so it is neither stored nor counted twice; its first copy is kept.
    The metric lines go to `emit` (the function's log, where CloudWatch extracts them).
    """
    now = now or datetime.now(UTC)
    answers, rows = [], []
    seen: set[tuple[str, str, bytes]] = set()
    for record in event["records"]:
        arrived_ms = record.get("approximateArrivalTimestamp")
        arrived = datetime.fromtimestamp(arrived_ms / 1000, UTC) if isinstance(arrived_ms, int | float) else now
        try:
            data = base64.b64decode(record["data"])
        except (binascii.Error, TypeError) as error:
            data = str(record.get("data")).encode()
            row = rejected_row(f"record data is not base64 ({error})", data, None, arrived)
        else:
            identity = _identity(data, arrived)
            if identity is not None and identity in seen:
                answers.append({"recordId": record["recordId"], "result": "Dropped", "data": record["data"]})
                continue
            if identity is not None:
                seen.add(identity)
            row = process(data, arrived, config)
        rows.append(row)
        answers.append(
            {
                "recordId": record["recordId"],
                "result": "Ok",
                "data": base64.b64encode(row.line()).decode(),
                "metadata": {"partitionKeys": row.partition_keys},
            }
        )
    for document in metric_documents(rows, config, now):
        emit(json.dumps(document, separators=(",", ":")))
    return {"records": answers}
