"""Device telemetry: the messages' contract, the record processor, and what its rows and metrics hold.

The messages come from the real inference service (its loop run with a fake nucleus, as in
test_inference_service.py); Firehose's request and response follow its data transformation format.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_deployment.runtime.telemetry import (
    ENVIRONMENT_VARIABLE,
    HEARTBEATS,
    REJECTED,
    RESULTS,
    TelemetryConfig,
    TelemetryConfigurationError,
    transform,
)
from edge_deployment.telemetry_store import COLUMNS
from shared.contracts import MAX_DEVICE_MESSAGE_BYTES, DeviceHeartbeat, DeviceResult
from tests.edge_deployment.device_support import THING
from tests.edge_deployment.test_inference_service import (
    HEARTBEAT,
    Device,
    jpeg,
    score_model,
    tag,
)
from tests.edge_deployment.test_inference_service import (
    RESULTS as RESULTS_TOPIC,
)

CONFIG = TelemetryConfig(thing_group="line-1", namespace="tag-inspect/Devices", uncertainty_band=(0.3, 0.7))
NOW = datetime(2026, 12, 4, 10, 30, 15, tzinfo=UTC)


def device_messages(tmp_path: Path, scores: list[float]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, heartbeats) the real service publishes for frames scored `scores` in turn."""
    results: list[dict[str, Any]] = []
    for index, score in enumerate(scores):
        device = Device(tmp_path / f"device-{index}", uncertaintyBand=[0.3, 0.7])
        device.deploy_model("1.0.1", lambda d, s=score: score_model(d, s))
        service = device.service()
        device.drop(f"frame-{index}.jpg", jpeg(tag()))
        service.step()
        results.extend(device.greengrass.messages(RESULTS_TOPIC))
        heartbeats = device.greengrass.messages(HEARTBEAT)
    return results, heartbeats


def envelope(payload: bytes | dict[str, Any], *, kind: str = "result", topic_thing: str = THING) -> bytes:
    """What the topic rule writes into Firehose for one message."""
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return json.dumps(
        {
            "payload": base64.b64encode(raw).decode(),
            "kind": kind,
            "topic_thing": topic_thing,
            "received_at": int(NOW.timestamp() * 1000),
        }
    ).encode()


def firehose_event(*records: bytes) -> dict[str, Any]:
    return {
        "invocationId": "invocation",
        "deliveryStreamArn": "arn:aws:firehose:eu-west-1:123456789012:deliverystream/tag-inspect-telemetry",
        "region": "eu-west-1",
        "records": [
            {
                "recordId": f"r{index}",
                "approximateArrivalTimestamp": 1_796_000_000_000,
                "data": base64.b64encode(data).decode(),
            }
            for index, data in enumerate(records)
        ],
    }


def run(*records: bytes) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(answers, rows, EMF documents) of one transformation."""
    printed: list[str] = []
    response = transform(firehose_event(*records), CONFIG, emit=printed.append, now=NOW)
    answers = response["records"]
    rows = [json.loads(base64.b64decode(answer["data"])) for answer in answers]
    for answer in answers:
        assert base64.b64decode(answer["data"]).endswith(b"\n"), "one JSON line per record"
    return answers, rows, [json.loads(line) for line in printed]


def metric_values(documents: list[dict[str, Any]], name: str, **dimensions: str) -> list[Any]:
    """Every value of metric `name` in documents whose dimension values are `dimensions`."""
    found = []
    for document in documents:
        directive = document["_aws"]["CloudWatchMetrics"][0]
        names = {metric["Name"] for metric in directive["Metrics"]}
        if name in names and all(document.get(key) == value for key, value in dimensions.items()):
            found.append(document[name])
    return found


# --------------------------------------------------------------------------------------------------
# The contract holds what the device actually sends
# --------------------------------------------------------------------------------------------------


def test_the_device_s_results_and_heartbeats_satisfy_their_contract(tmp_path: Path) -> None:
    results, heartbeats = device_messages(tmp_path, [0.9, 0.1])
    assert len(results) == 2 and heartbeats
    for raw in results:
        assert set(raw) <= DeviceResult.FIELDS, set(raw) - DeviceResult.FIELDS
        parsed = DeviceResult.from_json(raw)
        assert parsed.thing == THING and parsed.model_version == "1.0.1" and parsed.latency_ms > 0
    flagged, empty = (DeviceResult.from_json(raw) for raw in results)
    assert flagged.defect and flagged.top_score == pytest.approx(0.9)
    # Nothing above the confidence threshold (0.25), yet the best candidate's score travels: it decides
    # whether the frame was uncertain.
    assert not empty.defect and empty.detections == () and empty.top_score == pytest.approx(0.1)
    for raw in heartbeats:
        assert set(raw) <= DeviceHeartbeat.FIELDS, set(raw) - DeviceHeartbeat.FIELDS
        heartbeat = DeviceHeartbeat.from_json(raw)
        assert heartbeat.thing == THING and heartbeat.model_version == "1.0.1" and heartbeat.serving


def test_every_column_of_the_tables_is_a_field_of_the_rows_and_back(tmp_path: Path) -> None:
    """What the processor writes and what Athena's tables declare are the same columns."""
    results, heartbeats = device_messages(tmp_path, [0.9])
    _, rows, _ = run(envelope(results[0]), envelope(heartbeats[-1], kind="heartbeat"), b"not an envelope")
    for row, table in zip(rows, (RESULTS, HEARTBEATS, REJECTED), strict=True):
        assert set(row) == {name for name, _ in COLUMNS[table]}, table


# --------------------------------------------------------------------------------------------------
# Rows and their partitions
# --------------------------------------------------------------------------------------------------


def test_a_result_becomes_a_row_of_results_under_its_date_and_device(tmp_path: Path) -> None:
    (result,), _ = device_messages(tmp_path, [0.5])
    answers, (row,), _ = run(envelope(result))
    (answer,) = answers
    assert answer["result"] == "Ok" and answer["recordId"] == "r0"
    date = DeviceResult.from_json(result).timestamp.strftime("%Y-%m-%d")
    assert answer["metadata"]["partitionKeys"] == {"table": RESULTS, "date": date, "device": THING}
    assert row["image"] == "frame-0.jpg" and row["model_version"] == "1.0.1"
    assert row["defect"] is True and row["top_score"] == pytest.approx(0.5) and row["uncertain"] is True
    assert row["received_at"] == "2026-12-04T10:30:15.000Z"
    assert row["detections"] == result["detections"]


def test_the_date_partition_is_the_devices_utc_date_not_the_arrival(tmp_path: Path) -> None:
    """A result spooled while offline lands on the day it describes."""
    (result,), _ = device_messages(tmp_path, [0.9])
    late = {**result, "timestamp": "2026-12-01T23:59:59.500+01:00"}
    answers, (row,), _ = run(envelope(late))
    assert answers[0]["metadata"]["partitionKeys"]["date"] == "2026-12-01"
    assert row["timestamp"] == "2026-12-01T22:59:59.500Z"


def test_a_heartbeat_becomes_a_row_of_heartbeats(tmp_path: Path) -> None:
    _, heartbeats = device_messages(tmp_path, [0.9])
    answers, (row,), _ = run(envelope(heartbeats[-1], kind="heartbeat"))
    assert answers[0]["metadata"]["partitionKeys"]["table"] == HEARTBEATS
    assert row["thing"] == THING and row["status"] == "serving" and row["frames_processed"] == 1


# -- bad input: counted, kept with the reason, never a metric -------------------------------------


def _result(**changes: Any) -> dict[str, Any]:
    base = {
        "message_version": 1,
        "thing": THING,
        "image": "f.jpg",
        "timestamp": "2026-12-04T10:29:00.000Z",
        "model_version": "1.0.1",
        "latency_ms": 12.5,
        "detections": [{"box": [1, 2, 3, 4], "class_id": 0, "class_name": "scratch", "score": 0.8}],
    }
    return {key: value for key, value in {**base, **changes}.items() if value is not _DROP}


def _heartbeat(**changes: Any) -> dict[str, Any]:
    base = {
        "message_version": 1, "thing": THING, "timestamp": "2026-12-04T10:29:00Z", "status": "serving",
        "model_version": "1.0.1", "model_error": None, "model_precision": "fp32", "execution_provider": "cpu",
        "frames_processed": 5, "frames_failed": 0, "frames_since_last_heartbeat": 5, "mean_latency_ms": 9.0,
        "publish_failures": 0, "uploads_enabled": True, "uploads_pending": 0, "uploads_dropped": 0, "uploads_done": 0,
    }  # fmt: skip
    return {key: value for key, value in {**base, **changes}.items() if value is not _DROP}


_DROP = object()
BAD_RECORDS: dict[str, tuple[Callable[[], bytes], str]] = {
    "not an envelope": (lambda: b"\x00\x01 raw bytes", "not a telemetry envelope"),
    "payload not JSON": (lambda: envelope(b"scratch!"), "not JSON"),
    "payload binary": (lambda: envelope(b"\xff\xfe\x00"), "not JSON"),
    "oversized": (lambda: envelope(b"{" + b" " * MAX_DEVICE_MESSAGE_BYTES + b"}"), "larger than"),
    "a list, not an object": (lambda: envelope(b"[1, 2]"), "must be a JSON object"),
    "unknown version": (lambda: envelope(_result(message_version=2)), "message_version: 2"),
    "no version": (lambda: envelope(_result(message_version=_DROP)), "message_version: missing"),
    "missing latency": (lambda: envelope(_result(latency_ms=_DROP)), "latency_ms: missing"),
    "negative latency": (lambda: envelope(_result(latency_ms=-3)), "latency_ms: must be"),
    "latency as text": (lambda: envelope(_result(latency_ms="12")), "latency_ms: expected"),
    "latency as boolean": (lambda: envelope(_result(latency_ms=True)), "latency_ms: expected"),
    "time without zone": (lambda: envelope(_result(timestamp="2026-12-04T10:29:00")), "no time zone"),
    "time not a time": (lambda: envelope(_result(timestamp="yesterday")), "timestamp: 'yesterday'"),
    "score above 1": (
        lambda: envelope(_result(detections=[{"box": [1, 2, 3, 4], "class_id": 0, "class_name": "s", "score": 7}])),
        "detections[0].score",
    ),
    "candidate score above 1": (lambda: envelope(_result(top_score=1.5)), "top_score: must be in [0, 1]"),
    "box of three": (
        lambda: envelope(_result(detections=[{"box": [1, 2, 3], "class_id": 0, "class_name": "s", "score": 0.5}])),
        "detections[0].box",
    ),
    "another thing's topic": (lambda: envelope(_result(), topic_thing="line-2-camera"), "published on the topic of"),
    "thing name not a thing name": (
        lambda: envelope(_result(thing="../../etc"), topic_thing="../../etc"),
        "is not an IoT thing name",
    ),
    "unknown kind": (lambda: envelope(_result(), kind="telemetry"), "kind: 'telemetry'"),
    "heartbeat with a negative counter": (
        lambda: envelope(_heartbeat(frames_failed=-1), kind="heartbeat"),
        "frames_failed: must not be negative",
    ),
    "heartbeat with a rate above 1": (
        lambda: envelope(_heartbeat(empty_frame_rate=1.5), kind="heartbeat"),
        "empty_frame_rate: must be in [0, 1]",
    ),
    "heartbeat without a status": (lambda: envelope(_heartbeat(status=_DROP), kind="heartbeat"), "status: missing"),
    "a result sent as a heartbeat": (lambda: envelope(_result(), kind="heartbeat"), "status: missing"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDS))
def test_a_bad_message_is_kept_in_rejected_with_its_reason_and_counted(case: str) -> None:
    make, reason = BAD_RECORDS[case]
    data = make()
    answers, (row,), documents = run(data)
    (answer,) = answers
    assert answer["result"] == "Ok", "never dropped or failed: kept under rejected/"
    assert answer["metadata"]["partitionKeys"]["table"] == REJECTED
    assert reason in row["reason"]
    assert row["payload"], "what arrived is kept"
    assert metric_values(documents, "RejectedMessages", ThingGroup="line-1") == [1]
    assert metric_values(documents, "Frames") == [] and metric_values(documents, "LatencyMs") == []


def test_a_rejected_payload_is_kept_as_received(tmp_path: Path) -> None:
    _, (text_row, binary_row), _ = run(envelope(b"scratch!"), envelope(b"\xff\xfe\x00"))
    assert text_row["payload"] == "scratch!"
    assert base64.b64decode(binary_row["payload"].removeprefix("base64:")) == b"\xff\xfe\x00"


def test_a_rejected_message_s_partition_is_safe_for_s3() -> None:
    answers, _, _ = run(envelope(b"x", topic_thing="a/b c"))
    assert answers[0]["metadata"]["partitionKeys"]["device"] == "a_b_c"


def test_a_well_formed_heartbeat_of_the_table_is_accepted() -> None:
    """The bad heartbeats above differ from this one in one field each."""
    assert DeviceHeartbeat.from_json(_heartbeat()).frames_processed == 5


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_results_become_frame_defect_uncertainty_score_and_latency_metrics_per_device_and_group() -> None:
    minute = "2026-12-04T10:29:"
    scores = [0.9, 0.5, 0.0, 0.35]  # defect, defect + uncertain, nothing, defect + uncertain
    records = [
        envelope(
            _result(
                timestamp=f"{minute}{index:02d}.000Z",
                latency_ms=10.0 + index,
                detections=[{"box": [1, 2, 3, 4], "class_id": 0, "class_name": "scratch", "score": s}] if s else [],
            )
        )
        for index, s in enumerate(scores)
    ]
    _, _, documents = run(*records)
    (document,) = [d for d in documents if "Frames" in d]
    assert document["_aws"]["Timestamp"] == int(datetime(2026, 12, 4, 10, 29, tzinfo=UTC).timestamp() * 1000)
    directive = document["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "tag-inspect/Devices"
    assert directive["Dimensions"] == [["ThingGroup"], ["ThingGroup", "Device"]]
    assert (document["ThingGroup"], document["Device"]) == ("line-1", THING)
    assert (document["Frames"], document["DefectFrames"], document["UncertainFrames"]) == (4, 3, 2)
    assert document["TopScore"] == [0.9, 0.5, 0.0, 0.35]
    assert document["LatencyMs"] == [10.0, 11.0, 12.0, 13.0]
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    counts = {"Frames": "Count", "DefectFrames": "Count", "UncertainFrames": "Count"}
    assert units == {**counts, "TopScore": "None", "LatencyMs": "Milliseconds"}


def test_metrics_are_per_minute_of_the_device_s_own_time_and_values_come_in_chunks_of_100() -> None:
    records = [
        envelope(_result(image=f"f-{index}.jpg", timestamp=f"2026-12-04T10:{10 + index // 150:02d}:00.000Z"))
        for index in range(300)  # each frame its own message (identical copies count once)
    ]
    _, _, documents = run(*records)
    frames = [(d["_aws"]["Timestamp"], d["Frames"]) for d in documents if "Frames" in d]
    assert [count for _, count in frames] == [150, 150]
    latencies = [len(d["LatencyMs"]) for d in documents if "LatencyMs" in d]
    assert latencies == [100, 50, 100, 50]


def test_a_time_cloudwatch_would_refuse_counts_when_received() -> None:
    too_old = (NOW - timedelta(days=20)).isoformat()
    _, rows, documents = run(envelope(_result(timestamp=too_old)))
    assert rows[0]["timestamp"].startswith("2026-11-14"), "the row keeps the device's time"
    (document,) = [d for d in documents if "Frames" in d]
    assert document["_aws"]["Timestamp"] == int(NOW.replace(second=0).timestamp() * 1000)


def test_a_result_without_the_candidate_score_falls_back_to_its_best_detection() -> None:
    assert DeviceResult.from_json(_result()).top_score == 0.8
    assert DeviceResult.from_json(_result(detections=[])).top_score == 0.0
    assert DeviceResult.from_json(_result(top_score=0.42)).top_score == 0.42


def test_the_heartbeat_carries_what_the_model_showed_in_the_band_on_its_test_split(tmp_path: Path) -> None:
    device = Device(tmp_path, uncertaintyBand=[0.3, 0.7])
    statistics = {"images": 4, "detection_rate": 0.5, "top_scores": [0.1, 0.35, 0.69, 0.9]}

    def model(directory: Path) -> None:
        score_model(directory, 0.9)
        manifest = json.loads((directory / "model.json").read_text())
        (directory / "model.json").write_text(json.dumps({**manifest, "test_statistics": statistics}))

    device.deploy_model("1.0.2", model)
    service = device.service()
    device.drop("f.jpg", jpeg(tag()))
    service.step()
    heartbeat = service.publish_heartbeat()
    assert heartbeat["expected_uncertain_frame_rate"] == 0.5  # 0.35 and 0.69 of four
    assert DeviceHeartbeat.from_json(heartbeat).expected_uncertain_frame_rate == 0.5
    _, _, documents = run(envelope(heartbeat, kind="heartbeat"))
    assert metric_values(documents, "ExpectedUncertainShare", Device=THING) == [0.5]
    assert metric_values(documents, "EmptyFramesDrifting", Device=THING) == [0]


def test_a_heartbeat_becomes_health_metrics_and_a_count_per_model_version(tmp_path: Path) -> None:
    _, heartbeats = device_messages(tmp_path, [0.9])
    _, _, documents = run(envelope(heartbeats[-1], kind="heartbeat"))
    assert metric_values(documents, "Heartbeats", Device=THING) == [1]
    assert metric_values(documents, "Serving", Device=THING) == [1]
    assert metric_values(documents, "FramesFailedTotal", Device=THING) == [0]
    assert metric_values(documents, "UploadsDroppedTotal", Device=THING) == [0]
    assert metric_values(documents, "PublishPending", Device=THING) == [0]
    assert metric_values(documents, "PublishDroppedTotal", Device=THING) == [0]
    assert metric_values(documents, "DeviceHeartbeats", ModelVersion="1.0.1") == [1]
    (by_version,) = [d for d in documents if "DeviceHeartbeats" in d]
    assert by_version["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        ["ThingGroup", "ModelVersion"],
        ["ThingGroup", "Device", "ModelVersion"],  # the staged rollout asks per device
    ]
    assert by_version["Device"] == THING


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


def test_the_settings_travel_as_one_json_document() -> None:
    assert TelemetryConfig.from_json(CONFIG.to_json()) == CONFIG
    assert TelemetryConfig.from_environment({ENVIRONMENT_VARIABLE: CONFIG.to_json()}) == CONFIG


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "TELEMETRY_CONFIG is not set"),
        ({ENVIRONMENT_VARIABLE: "{"}, "not a valid telemetry configuration"),
        ({ENVIRONMENT_VARIABLE: '{"thing_group": "g", "namespace": "n"}'}, "uncertainty_band"),
    ],
)
def test_missing_or_malformed_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TelemetryConfigurationError, match=message):
        TelemetryConfig.from_environment(environ)


# --------------------------------------------------------------------------------------------------
# Messages delivered twice (QoS 1 redelivery, a device publishing again what its nucleus may have taken)
# --------------------------------------------------------------------------------------------------


def _received_later(record: bytes, seconds: int) -> bytes:
    """The same message as IoT received it again `seconds` later (only the envelope's receive time differs)."""
    document = json.loads(record)
    document["received_at"] += seconds * 1000
    return json.dumps(document).encode()


def test_a_message_delivered_twice_in_a_batch_is_stored_and_counted_once(tmp_path: Path) -> None:
    (result,), heartbeats = device_messages(tmp_path, [0.9])
    first, beat = envelope(result), envelope(heartbeats[-1], kind="heartbeat")
    printed: list[str] = []
    records = [first, beat, _received_later(first, 40), _received_later(beat, 40)]
    answers = transform(firehose_event(*records), CONFIG, emit=printed.append, now=NOW)["records"]
    assert [answer["result"] for answer in answers] == ["Ok", "Ok", "Dropped", "Dropped"]
    assert [answer["recordId"] for answer in answers] == ["r0", "r1", "r2", "r3"]  # every record answered
    documents = [json.loads(line) for line in printed]
    assert metric_values(documents, "Frames", Device=THING) == [1]
    assert metric_values(documents, "Heartbeats", Device=THING) == [1]


def test_two_frames_with_the_same_content_but_their_own_image_are_both_kept(tmp_path: Path) -> None:
    (result,), _ = device_messages(tmp_path, [0.9])
    other = {**result, "image": "frame-other.jpg"}
    answers, rows, documents = run(envelope(result), envelope(other))
    assert [answer["result"] for answer in answers] == ["Ok", "Ok"]
    assert sorted(row["image"] for row in rows) == ["frame-0.jpg", "frame-other.jpg"]
    assert metric_values(documents, "Frames", Device=THING) == [2]
