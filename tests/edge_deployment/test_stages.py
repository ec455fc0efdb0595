"""Staged promotion's rules on their own: the health gate on telemetry the real inference component
recorded, the configuration of stages, and how a stage's groups make one rollout answer.

The health samples go the whole way a device's messages go: the real service publishes results and
heartbeats, the real record processor (runtime/telemetry.py) turns them into EMF metric documents, and a
CloudWatch that answers GetMetricData from those documents (only those inside [StartTime, EndTime), one
Sum, Maximum, Average or p95 per period, as CloudWatch computes them; requests checked against botocore)
feeds `device_samples` and `judge`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import validate_parameters

from edge_deployment.runtime.deployment import FAILED, NO_DEVICES, REDEPLOY, SUCCEEDED, SUPERSEDED
from edge_deployment.runtime.stages import HealthBounds, combine_rollouts, device_samples, judge
from edge_deployment.runtime.telemetry import transform
from shared.config import ConfigError, parse_settings
from tests.edge_deployment.device_support import THING
from tests.edge_deployment.test_inference_service import HEARTBEAT, MANIFEST, RESULTS, Device, jpeg, score_model, tag
from tests.edge_deployment.test_telemetry import CONFIG, envelope, firehose_event
from tests.shared.test_config import _set, raw  # noqa: F401 - `raw` is a fixture

VERSION = "1.0.2"
BOUNDS = HealthBounds(min_frames=20, max_failed_frame_rate=0.02, max_latency_p95_ms=1000.0, max_defect_rate_gap=0.25)
START = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
_MODEL = botocore.session.get_session().get_service_model("cloudwatch").operation_model("GetMetricData")


# --------------------------------------------------------------------------------------------------
# Recorded telemetry -> metrics -> the health rule
# --------------------------------------------------------------------------------------------------


def _model(score: float, *, detection_rate: float | None) -> Callable[[Path], Path]:
    """A model flagging every frame with `score`, whose model.json gives its test split's detection rate."""

    def make(directory: Path) -> Path:
        score_model(directory, score)
        if detection_rate is not None:
            statistics = {"images": 10, "detection_rate": detection_rate, "top_scores": [score] * 10}
            (directory / "model.json").write_text(json.dumps({**MANIFEST, "test_statistics": statistics}))
        return directory

    return make


def _broken(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(b"not an onnx model")
    (directory / "model.json").write_text(json.dumps(MANIFEST))
    return directory


def recorded(tmp_path: Path, make: Callable[[Path], Any], *, frames: int = 30) -> list[dict[str, Any]]:
    """The EMF documents of what one device published serving VERSION made by `make` (frames, a heartbeat)."""
    device = Device(tmp_path, confidentSampleRate=0.0, driftSampleRate=0.0)
    device.deploy_model(VERSION, make)
    service = device.service()
    for index in range(frames):
        device.drop(f"{index:03d}.jpg", jpeg(tag()))
    service.step()
    service.publish_heartbeat()
    records = [envelope(m) for m in device.greengrass.messages(RESULTS)]
    records += [envelope(m, kind="heartbeat") for m in device.greengrass.messages(HEARTBEAT)]
    printed: list[str] = []
    transform(firehose_event(*records), CONFIG, emit=printed.append, now=START + timedelta(minutes=30))
    return [json.loads(line) for line in printed]


class MetricsFromEmf:
    """GetMetricData answered from EMF documents: a query matches a document that declares its dimension set."""

    def __init__(self, documents: Sequence[Mapping[str, Any]]) -> None:
        self.documents = documents
        self.requests: list[dict[str, Any]] = []

    def _values(self, metric: Mapping[str, Any], start: datetime, end: datetime) -> list[tuple[datetime, float]]:
        wanted = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
        found: list[tuple[datetime, float]] = []
        for document in self.documents:
            moment = datetime.fromtimestamp(document["_aws"]["Timestamp"] / 1000, tz=UTC)
            if not start <= moment < end:  # as CloudWatch: only data points inside [StartTime, EndTime)
                continue
            directive = document["_aws"]["CloudWatchMetrics"][0]
            if directive["Namespace"] != metric["Namespace"]:
                continue
            if not any(set(names) == set(wanted) for names in directive["Dimensions"]):
                continue
            if metric["MetricName"] not in document or any(document.get(k) != v for k, v in wanted.items()):
                continue
            value = document[metric["MetricName"]]
            found += [(moment, float(v)) for v in (value if isinstance(value, list) else [value])]
        return found

    @staticmethod
    def _statistic(values: list[float], stat: str) -> float:
        if stat == "Sum":
            return sum(values)
        if stat == "Maximum":
            return max(values)
        if stat == "Average":
            return sum(values) / len(values)
        assert stat == "p95", stat
        ordered = sorted(values)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    def get_metric_data(self, **params: Any) -> dict[str, Any]:
        validate_parameters(params, _MODEL.input_shape)
        self.requests.append(params)
        start, end = params["StartTime"], params["EndTime"]
        results = []
        for query in params["MetricDataQueries"]:
            period = timedelta(seconds=query["MetricStat"]["Period"])
            periods: dict[int, list[float]] = {}  # one statistic per period, periods counted from StartTime
            for moment, value in self._values(query["MetricStat"]["Metric"], start, end):
                periods.setdefault((moment - start) // period, []).append(value)
            stat = query["MetricStat"]["Stat"]
            newest_first = sorted(periods, reverse=True)
            results.append(
                {
                    "Id": query["Id"],
                    "StatusCode": "Complete",
                    "Values": [self._statistic(periods[n], stat) for n in newest_first],
                    "Timestamps": [start + n * period for n in newest_first],
                }
            )
        return {"MetricDataResults": results}


def _judged(documents: Sequence[Mapping[str, Any]], bounds: HealthBounds = BOUNDS) -> tuple[Any, list[str]]:
    cloudwatch = MetricsFromEmf(documents)
    (sample,) = device_samples(
        cloudwatch,
        devices=[THING],
        namespace=CONFIG.namespace,
        fleet_group=CONFIG.thing_group,
        model_version=VERSION,
        start=START,
        end=START + timedelta(minutes=60),
    )
    return sample, judge(sample, bounds, model_version=VERSION)


def test_a_device_serving_the_model_as_on_its_test_split_is_healthy(tmp_path: Path) -> None:
    sample, problems = _judged(recorded(tmp_path, _model(0.9, detection_rate=0.9)))
    assert problems == []
    assert sample.frames == 30 and sample.defect_frames == 30 and sample.heartbeats_new_version >= 1
    assert sample.expected_empty_share == pytest.approx(0.1)
    assert sample.latency_p95_ms is not None and 0 < sample.latency_p95_ms < 1000


def test_a_model_flagging_far_more_than_on_its_test_split_breaks_the_defect_rate_bound(tmp_path: Path) -> None:
    _, problems = _judged(recorded(tmp_path, _model(0.9, detection_rate=0.1)))
    assert problems == ["defect rate 1.000 differs from the test split's 0.100 by more than max_defect_rate_gap 0.25"]


def test_a_model_gone_blind_breaks_the_defect_rate_bound(tmp_path: Path) -> None:
    _, problems = _judged(recorded(tmp_path, _model(0.05, detection_rate=0.6)))
    assert problems == ["defect rate 0.000 differs from the test split's 0.600 by more than max_defect_rate_gap 0.25"]


def test_a_model_that_does_not_load_reports_no_heartbeat_with_its_version_and_no_frames(tmp_path: Path) -> None:
    sample, problems = _judged(recorded(tmp_path, _broken))
    assert sample.frames == 0
    assert problems == [
        f"no heartbeat with model version {VERSION} during the soak",
        "served 0 frames, fewer than min_frames 20",
    ]


def test_the_p95_latency_the_device_measured_is_held_to_its_bound(tmp_path: Path) -> None:
    documents = recorded(tmp_path, _model(0.9, detection_rate=0.9))
    sample, _ = _judged(documents)
    assert sample.latency_p95_ms is not None
    tight = HealthBounds(**{**BOUNDS.to_json(), "max_latency_p95_ms": sample.latency_p95_ms / 2})
    _, problems = _judged(documents, tight)
    assert problems == [
        f"p95 latency {sample.latency_p95_ms:.0f} ms above max_latency_p95_ms {tight.max_latency_p95_ms:g}"
    ]


def test_an_idle_device_and_a_model_without_test_split_figures_are_not_called_healthy(tmp_path: Path) -> None:
    _, idle = _judged(recorded(tmp_path / "idle", _model(0.9, detection_rate=0.9), frames=5))
    assert idle == ["served 5 frames, fewer than min_frames 20"]
    _, unknown = _judged(recorded(tmp_path / "old", _model(0.9, detection_rate=None)))
    assert unknown == [
        "defect rate 1.000 cannot be judged: the device reported no test split figures "
        "(model.json without test_statistics)"
    ]


def _failed_total(documents: Sequence[Mapping[str, Any]], *totals: tuple[int, int]) -> list[dict[str, Any]]:
    """`documents` plus one heartbeat for each (minutes after START, the device's FramesFailedTotal then)."""
    (heartbeat, *_) = [d for d in documents if "FramesFailedTotal" in d]
    added = []
    for minutes, total in totals:
        moment = int((START + timedelta(minutes=minutes)).timestamp() * 1000)
        added.append({**heartbeat, "_aws": {**heartbeat["_aws"], "Timestamp": moment}, "FramesFailedTotal": total})
    return [d for d in documents if "FramesFailedTotal" not in d] + added


def test_failed_frames_are_the_rise_of_the_device_s_total_within_the_window(tmp_path: Path) -> None:
    documents = recorded(tmp_path, _model(0.9, detection_rate=0.9))
    # the total counts from the component's start, which a new model does not restart: 500 failures of an
    # older model before the window, 3 during it, and a later 90 after the window has ended
    counted = _failed_total(documents, (-5, 500), (10, 501), (30, 503), (61, 590))
    sample, problems = _judged(counted)
    assert sample.failed_frames == 3
    assert problems == ["failed frame rate 0.091 above max_failed_frame_rate 0.02 (3 of 33)"]
    sample, problems = _judged(_failed_total(documents, (-5, 500), (10, 500), (30, 500)))
    assert sample.failed_frames == 0 and problems == []  # old failures alone do not fail a good model


def test_a_component_restarted_in_the_window_counts_its_new_total_as_rise(tmp_path: Path) -> None:
    documents = recorded(tmp_path, _model(0.9, detection_rate=0.9))
    sample, _ = _judged(_failed_total(documents, (-5, 500), (10, 502), (20, 0), (30, 1)))
    assert sample.failed_frames == 3  # 2 before the restart, 1 after it (not 502 - 0)
    sample, _ = _judged(_failed_total(documents, (10, 40), (30, 40)))  # nothing before the window: its first value
    assert sample.failed_frames == 0


def test_the_metrics_asked_for_are_the_device_s_own(tmp_path: Path) -> None:
    cloudwatch = MetricsFromEmf(recorded(tmp_path, _model(0.9, detection_rate=0.9)))
    device_samples(
        cloudwatch,
        devices=[THING, "line-1-cam-9"],
        namespace=CONFIG.namespace,
        fleet_group=CONFIG.thing_group,
        model_version=VERSION,
        start=START,
        end=START + timedelta(minutes=61),
    )
    sums, totals = cloudwatch.requests
    queries = sums["MetricDataQueries"]
    assert len(queries) == 10 and {q["MetricStat"]["Period"] for q in queries} == {61 * 60}  # one period: the window
    assert sums["StartTime"] == START
    # the failed-frames total per minute, from a little before the window (its last value before)
    assert len(totals["MetricDataQueries"]) == 2 and totals["StartTime"] < START
    assert {q["MetricStat"]["Period"] for q in totals["MetricDataQueries"]} == {60}
    queries += totals["MetricDataQueries"]
    devices = {d["Value"] for q in queries for d in q["MetricStat"]["Metric"]["Dimensions"] if d["Name"] == "Device"}
    assert devices == {THING, "line-1-cam-9"}


# --------------------------------------------------------------------------------------------------
# Configuration of stages
# --------------------------------------------------------------------------------------------------

PILOT = {"name": "pilot", "thing_groups": ["line-1-pilot"]}
PRODUCTION = {"name": "production", "thing_groups": ["tag-inspection-line-1"]}


def test_the_example_has_a_pilot_then_production_and_no_stages_means_one_stage_as_before(raw):  # noqa: F811
    example = parse_settings(raw).edge_deployment
    assert [stage.name for stage in example.effective_stages] == ["pilot", "production"]
    assert example.effective_stages[0].rollout.max_wait_minutes == 60  # the pilot's own rollout
    assert example.effective_stages[1].rollout == example.rollout  # production: edge_deployment.rollout
    single = parse_settings(_set(raw, "edge_deployment.stages", [])).edge_deployment
    (stage,) = single.effective_stages
    assert stage.thing_groups == [single.thing_group_name] and stage.rollout == single.rollout
    assert stage.soak_minutes == 0 and not stage.manual_approval


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([PILOT, {**PRODUCTION, "name": "pilot"}], r"stage names must be unique; repeated: pilot"),
        ([PILOT, {**PRODUCTION, "thing_groups": ["line-1-pilot"]}], r"a thing group belongs to one stage only"),
        ([{**PILOT, "thing_groups": []}], r"edge_deployment\.stages\.0\.thing_groups"),
        ([{**PILOT, "thing_groups": ["a", "a"]}], r"thing groups must be distinct; repeated: a"),
        ([{**PILOT, "thing_groups": ["bad group"]}], r"edge_deployment\.stages\.0\.thing_groups\.0"),
        ([{**PILOT, "name": "Pilot Line"}], r"edge_deployment\.stages\.0\.name"),
        ([PILOT, {**PRODUCTION, "manual_approval": True}], r"the last stage \(production\) has no next stage"),
        ([{**PILOT, "soak_minutes": -1}], r"edge_deployment\.stages\.0\.soak_minutes"),
        ([{**PILOT, "colour": "red"}], r"edge_deployment\.stages\.0\.colour"),
        (
            [{**PILOT, "manual_approval": True, "approval_timeout_hours": 72}] * 1
            + [{**PRODUCTION, "soak_minutes": 10_000}],
            r"the stages' waits .* add up to",
        ),
    ],
    ids=[
        "same-name",
        "shared-group",
        "no-group",
        "group-twice",
        "bad-group-name",
        "bad-stage-name",
        "approval-on-last",
        "negative-soak",
        "unknown-key",
        "too-long",
    ],
)
def test_bad_stages_are_refused_naming_the_key(raw, stages, message):  # noqa: F811
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(raw, "edge_deployment.stages", stages), source="config.yaml")


# --------------------------------------------------------------------------------------------------
# One answer for a stage's groups
# --------------------------------------------------------------------------------------------------


def _status(outcome: str | None, **counts: int) -> dict[str, Any]:
    return {"finished": outcome is not None, "outcome": outcome, "counts": counts, "devices": []}


@pytest.mark.parametrize(
    ("outcomes", "combined"),
    [
        ([SUCCEEDED, SUCCEEDED], SUCCEEDED),
        ([SUCCEEDED, None], None),  # one group still rolling out
        ([FAILED, None], FAILED),  # a failed group stops the stage at once
        (["INCOMPLETE", "ABORTED"], "ABORTED"),  # the worst outcome
        ([SUPERSEDED, SUCCEEDED], SUPERSEDED),
        ([REDEPLOY, SUCCEEDED], REDEPLOY),
        ([NO_DEVICES, SUCCEEDED], SUCCEEDED),
        ([NO_DEVICES, NO_DEVICES], NO_DEVICES),
    ],
)
def test_a_stage_s_groups_make_one_rollout_answer(outcomes, combined):
    answer = combine_rollouts([(f"g{i}", _status(o, succeeded=1)) for i, o in enumerate(outcomes)])
    assert answer["outcome"] == combined and answer["finished"] is (combined is not None)
    assert answer["counts"] == {"succeeded": len(outcomes)}


def test_metric_values_gather_pages_and_periods_and_a_failing_query_is_named():
    import boto3
    from botocore.stub import ANY, Stubber

    from edge_deployment.runtime.stages import HealthQueryError, metric_values

    cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1")
    stat = {"Metric": {"Namespace": "n", "MetricName": "Frames", "Dimensions": []}, "Period": 3600}
    queries = [("q0_frames", {**stat, "Stat": "Sum"}), ("q0_latency", {**stat, "Stat": "p95"})]
    with Stubber(cloudwatch) as stub:
        window = {"MetricDataQueries": ANY, "StartTime": ANY, "EndTime": ANY, "ScanBy": "TimestampDescending"}
        first = {"MetricDataResults": [{"Id": "q0_frames", "Values": [3.0, 4.0]}], "NextToken": "page-2"}
        stub.add_response("get_metric_data", first, window)
        second = {"MetricDataResults": [{"Id": "q0_frames", "Values": [5.0]}, {"Id": "q0_latency", "Values": []}]}
        stub.add_response("get_metric_data", second, {**window, "NextToken": "page-2"})
        stub.add_client_error("get_metric_data", "AccessDenied", "not allowed")
        assert metric_values(cloudwatch, queries, start=START, end=START + timedelta(hours=1)) == {
            "q0_frames": 12.0,  # a sum adds up across periods and pages
            "q0_latency": None,  # no data point
        }
        with pytest.raises(HealthQueryError, match="GetMetricData: AccessDenied: not allowed"):
            metric_values(cloudwatch, queries, start=START, end=START + timedelta(hours=1))


def test_a_stage_s_rollout_takes_what_it_does_not_name_from_the_fleet_s(raw):  # noqa: F811
    document = _set(raw, "edge_deployment.rollout.poll_interval_seconds", 45)
    pilot, production = parse_settings(document).edge_deployment.effective_stages
    assert pilot.rollout is not None and production.rollout is not None
    assert pilot.rollout.poll_interval_seconds == 45  # not named by the pilot: the fleet's
    assert pilot.rollout.max_wait_minutes == 60 and pilot.rollout.base_rate_per_minute == 1  # the pilot's own
    assert production.rollout.poll_interval_seconds == 45
    with pytest.raises(ConfigError, match=r"edge_deployment\.stages\.0\.rollout"):
        parse_settings(_set(document, "edge_deployment.stages", [{**PILOT, "rollout": {"job_timeout_minutes": 999}}]))
