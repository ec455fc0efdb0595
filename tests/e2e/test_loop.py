"""The whole loop on one machine: raw images -> labels -> a trained, registered, approved model -> a device
serving it -> uncertain frames back under the raw-image prefix -> found by the next labeling round.

`loop` runs it once with a real (tiny) training; the drift checks run it again with one interface
computed differently by one side (reusing that training's model) and expect it to break, naming where.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from shared.config import Settings, parse_settings
from shared.contracts import Annotation
from shared.names import EDGE_UPLOAD_PREFIX, resource_names
from tests.e2e.harness import THING, Loop, LoopBroken, LoopResult, Wiring, whole_pixels, wiring
from tests.e2e.pipeline import copy_trained_model
from tests.e2e.templates import ACCOUNT, REGION, Apps, synthesize
from tests.helpers.cdk_assembly import REPO_ROOT
from tests.labeling.stage import GROUND_TRUTH

pytestmark = pytest.mark.slow


def e2e_settings(backend: str = "label_studio") -> Settings:
    """config.yaml, except that the device sends back every frame a barely trained model is unsure of, and the
    test split may be as small as a few dozen tags allow.

    A two-epoch model scores every candidate box about 0.01: all frames are uncertain, which is what
    the device should then report (the configured band starts at 0.3 for a model that learned something).
    config.yaml labels with Label Studio; `ground_truth` is an account that uses Ground Truth.
    """
    raw = yaml.safe_load((REPO_ROOT / "config.yaml").read_text(encoding="utf-8"))
    raw["edge_deployment"]["uncertainty_band"] = [0.0, 0.7]
    raw["edge_deployment"]["confident_sample_rate"] = 0.0
    # 60 synthetic tags cannot fill the configured minimum splits (30 test images, ...): smaller ones here.
    raw["training"].update(min_validation_images=6, min_test_images=8, min_test_defects=4)
    if backend == "ground_truth":
        raw["labeling"].update(GROUND_TRUTH)
        raw["labeling"].pop("label_studio")
    return parse_settings(raw)


@pytest.fixture(scope="module", params=["label_studio", "ground_truth"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def settings(backend: str) -> Settings:
    return e2e_settings(backend)


@pytest.fixture(scope="module")
def apps(settings: Settings) -> Apps:
    return synthesize(settings)


@pytest.fixture(scope="module")
def loop(
    apps: Apps, backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> LoopResult:
    studio = request.getfixturevalue("studio") if backend == "label_studio" else None
    return Loop(wiring(apps), tmp_path_factory.mktemp(f"loop-{backend}"), studio=studio).run()


@pytest.fixture(scope="module")
def names(settings: Settings) -> Any:
    return resource_names(settings, account=ACCOUNT, region=REGION)


# --------------------------------------------------------------------------------------------------
# The loop closes
# --------------------------------------------------------------------------------------------------


def test_labeling_writes_every_raw_image_s_verified_boxes_to_the_offline_store(loop, names):
    assert loop.first_round["labels"]["approved"] == len(loop.raw_images) == 60
    records = {record.image_uri: record for record in loop.label_records}
    assert set(records) == set(loop.raw_images)
    for uri, sample in loop.raw_images.items():
        expected = tuple(
            Annotation(class_id=c, x1=left, y1=top, x2=left + w, y2=top + h)
            for c, left, top, w, h in whole_pixels(sample)
        )
        assert records[uri].approved and records[uri].annotations == expected
    (parquet,) = loop.offline_store_files
    assert re.fullmatch(
        rf"s3://{names.data_bucket}/feature-store/.+/{names.label_feature_group}-\d+/data/"
        r"year=\d{4}/month=\d\d/day=\d\d/hour=\d\d/[^/]+\.parquet",
        parquet,
    )


def test_training_trains_on_those_labels_and_registers_an_approved_package(loop, names):
    assert loop.dataset["image_count"] == len(loop.raw_images)
    assert {"ExportDataset", "PrepareDataset", "TrainSpot", "EvaluateSpot", "RegisterModelSpot-RegisterModel"} <= set(
        loop.pipeline_steps
    )
    registered, package = loop.registered_package, loop.model_package
    assert registered["ModelApprovalStatus"] == "PendingManualApproval"  # config.yaml: a person approves
    assert registered["CustomerMetadataProperties"]["dataset_version"] == loop.dataset["dataset_version"]
    assert package["ModelPackageGroupName"] == names.model_package_group
    assert package["ModelApprovalStatus"] == "Approved"
    url = package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    assert url.startswith(f"s3://{names.model_bucket}/pipeline-runs/") and url.endswith("/model.tar.gz")


def test_the_approval_deploys_exactly_that_package_to_the_thing_group(loop, settings):
    edge = settings.edge_deployment
    package = loop.model_package
    assert loop.edge_input["model_package_arn"] == package["ModelPackageArn"]
    assert loop.edge_output["rollout"]["outcome"] == "SUCCEEDED"
    assert loop.edge_output["health"]["healthy"] is True and loop.edge_output["stage"]["last"] is True
    # through the example's two stages: the pilot group first, then production (the device's group)
    pilot, production = loop.deployment_requests
    groups = [group for stage in edge.effective_stages for group in stage.thing_groups]
    assert [r["targetArn"].rsplit("/", 1)[-1] for r in (pilot, production)] == groups
    assert pilot["components"] == production["components"]  # the same versions, promoted
    assert {"line-1-pilot-camera", THING} == set(loop.stage_metrics_asked)  # each stage's own devices were judged
    request = loop.deployment_request
    assert request == production
    assert request["targetArn"] == f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/{edge.thing_group_name}"
    model = request["components"][edge.model_component_name]["componentVersion"]
    assert model == f"1.0.{package['ModelPackageVersion']}" == loop.model_recipe["ComponentVersion"]
    assert edge.inference_component_name in request["components"]
    configuration = loop.model_recipe["ComponentConfiguration"]["DefaultConfiguration"]
    assert configuration["modelPackageArn"] == package["ModelPackageArn"]
    # the model component carries both precisions the training pipeline shipped; the device picks one
    assert loop.model_files == ["model/model.int8.onnx", "model/model.json", "model/model.onnx"]


def test_the_device_serves_the_model_and_sends_uncertain_frames_under_the_raw_image_prefix(loop, names, settings):
    assert loop.frames == 12
    results_topic = settings.edge_deployment.results_topic.replace("{thing}", THING)
    results = [payload for topic, payload in loop.results if topic == results_topic]
    assert len(results) == loop.frames
    assert {payload["model_version"] for payload in results} == {loop.model_recipe["ComponentVersion"]}
    assert len(loop.uploads) == loop.frames  # the tiny model is unsure of every frame (see e2e_settings)
    for payload in results:
        key = payload["upload_key"]
        day = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00")).date().isoformat()
        assert re.fullmatch(rf"{EDGE_UPLOAD_PREFIX}{THING}/{day}/[^/]+\.jpg", key), key
        assert loop.uploads[key]["reason"] == "uncertain"
        assert loop.uploads[key]["model-version"] == payload["model_version"]


def test_the_next_labeling_round_finds_exactly_the_uploaded_frames(loop, names):
    uploaded = {f"s3://{names.data_bucket}/{key}" for key in loop.uploads}
    assert len(loop.second_round_images) == len(uploaded) == loop.frames
    assert set(loop.second_round_images) == uploaded


def test_the_next_round_offers_the_approved_models_boxes(loop, names):
    """Round two runs the model the loop approved over the device's frames (the device's own detector)."""
    pre_labels = loop.second_round["pre_labels"]
    assert pre_labels["model"] == loop.model_package["ModelPackageArn"]
    assert pre_labels["done"] and pre_labels["labeled"] == loop.frames
    assert loop.second_round["labels"]["written"] == loop.frames  # people confirmed "no defect" on each


def _rule_envelope(rules: list[dict[str, Any]], topic: str, payload: dict[str, Any], received_ms: int) -> bytes:
    """What the synthesized topic rule whose filter matches `topic` puts into Firehose for `payload`."""
    for rule in rules:
        sql = rule["TopicRulePayload"]["Sql"]
        (topic_filter,) = re.findall(r"FROM '([^']+)'", sql)
        levels, wanted = topic.split("/"), topic_filter.split("/")
        if len(levels) == len(wanted) and all(w in ("+", level) for w, level in zip(wanted, levels, strict=True)):
            (kind,) = re.findall(r"'(\w+)' AS kind", sql)
            (level,) = re.findall(r"topic\((\d+)\) AS topic_thing", sql)
            assert "encode(*, 'base64') AS payload" in sql
            return json.dumps(
                {
                    "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
                    "kind": kind,
                    "topic_thing": levels[int(level) - 1],
                    "received_at": received_ms,
                }
            ).encode()
    raise AssertionError(f"no topic rule reads {topic}: the device's messages would be lost")


def test_the_device_s_results_and_heartbeats_reach_the_telemetry_store_and_the_metrics(loop, apps):
    """The device's messages through the synthesized rules, the record processor with its deployed settings,
    and Firehose's prefix into the bucket (moto), where the Glue tables' partition template finds them."""
    from edge_deployment.runtime.telemetry import TelemetryConfig, transform

    edge = apps.edge_workflow
    rules = [edge.render(r["Properties"]) for r in edge.of_type("AWS::IoT::TopicRule").values()]
    (config_json,) = [
        variables["TELEMETRY_CONFIG"]
        for r in edge.of_type("AWS::Lambda::Function").values()
        if "TELEMETRY_CONFIG" in (variables := edge.render(r["Properties"].get("Environment", {}).get("Variables", {})))
    ]
    destination = edge.render(edge.one("AWS::KinesisFirehose::DeliveryStream")["Properties"])[
        "ExtendedS3DestinationConfiguration"
    ]
    bucket = destination["BucketARN"].removeprefix("arn:aws:s3:::")
    records = [
        {"recordId": str(index), "approximateArrivalTimestamp": 1_796_000_000_000,
         "data": base64.b64encode(_rule_envelope(rules, topic, payload, 1_796_000_000_000)).decode()}
        for index, (topic, payload) in enumerate(loop.results)
    ]  # fmt: skip
    metric_lines: list[str] = []
    response = transform({"records": records}, TelemetryConfig.from_json(config_json), emit=metric_lines.append)

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
        for index, answer in enumerate(response["records"]):
            assert answer["result"] == "Ok"
            prefix = destination["Prefix"]
            for key, value in answer["metadata"]["partitionKeys"].items():
                prefix = prefix.replace(f"!{{partitionKeyFromLambda:{key}}}", value)
            s3.put_object(Bucket=bucket, Key=f"{prefix}part-{index}.json", Body=base64.b64decode(answer["data"]))
        tables = {
            t["TableInput"]["Name"]: t["TableInput"]["Parameters"]["storage.location.template"]
            for t in (edge.render(r["Properties"]) for r in edge.of_type("AWS::Glue::Table").values())
        }
        found: dict[str, list[dict[str, Any]]] = {}
        for table, template in tables.items():
            for day in sorted({answer["metadata"]["partitionKeys"]["date"] for answer in response["records"]}):
                location = template.replace("${date}", day).removeprefix(f"s3://{bucket}/")
                for item in s3.list_objects_v2(Bucket=bucket, Prefix=location).get("Contents", []):
                    body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                    found.setdefault(table, []).extend(json.loads(line) for line in body.splitlines())
    assert len(found["results"]) == loop.frames and "rejected" not in found
    assert {row["thing"] for row in found["results"]} == {THING}
    assert {row["model_version"] for row in found["results"]} == {loop.model_recipe["ComponentVersion"]}
    assert found["heartbeats"] and {row["thing"] for row in found["heartbeats"]} == {THING}
    documents = [json.loads(line) for line in metric_lines]
    frames = sum(d["Frames"] for d in documents if "Frames" in d)
    assert frames == loop.frames
    assert sum(d.get("Heartbeats", 0) for d in documents) == len(found["heartbeats"])


# --------------------------------------------------------------------------------------------------
# ... and breaks when one side computes an interface differently
# --------------------------------------------------------------------------------------------------


def _device_configuration(wired: Wiring, **changes: Any) -> Wiring:
    recipe = copy.deepcopy(wired.inference_recipe)
    recipe["ComponentConfiguration"]["DefaultConfiguration"].update(changes)
    return dataclasses.replace(wired, inference_recipe=recipe)


def _export_argument(wired: Wiring, option: str, value: str) -> Wiring:
    pipeline = copy.deepcopy(wired.pipeline)
    (export,) = [step for step in pipeline["Steps"] if step["Name"] == "ExportDataset"]
    arguments = export["Arguments"]["AppSpecification"]["ContainerArguments"]
    arguments[arguments.index(option) + 1] = value
    return dataclasses.replace(wired, pipeline=pipeline)


def _edge_config(wired: Wiring, **changes: Any) -> Wiring:
    return dataclasses.replace(wired, edge=dataclasses.replace(wired.edge, **changes))


DRIFTS: list[Any] = [
    pytest.param(
        lambda w: _device_configuration(w, uploadPrefix="raw-images-edge/"),
        r"next labeling round: found no image to label .* the device uploaded 12 frame\(s\)",
        id="device-upload-prefix",
    ),
    pytest.param(
        lambda w: _device_configuration(w, uploadBucket=f"tag-inspect-data-{ACCOUNT}"),
        r"device: uploads failed, 12 frame\(s\) stay queued: .*HTTP 404 .*NoSuchBucket",
        id="data-bucket-name-on-the-device",
    ),
    pytest.param(
        lambda w: dataclasses.replace(w, labeling=dataclasses.replace(w.labeling, raw_prefix="raw-image/")),
        r"labeling: round-1 labeled 0 of the 60 raw images under raw-images/",
        id="raw-image-prefix-in-labeling",
    ),
    pytest.param(
        lambda w: _export_argument(w, "--feature-group", "tag-inspect-label"),
        r"training pipeline: .*tag-inspect-label\b",
        id="feature-group-name-in-training",
    ),
    pytest.param(
        lambda w: _edge_config(w, model_package_group="tag-inspect-detector"),
        r"edge deployment workflow: WrongModelPackageGroup: .*'tag-inspect-detector'",
        id="model-package-group-in-edge",
    ),
    pytest.param(
        lambda w: dataclasses.replace(w, archive_drops=("model.json",)),
        r"edge deployment workflow: InvalidModelArchive: .*has no model\.json at its root",
        id="model-archive-without-model-json",
    ),
    pytest.param(
        lambda w: _export_argument(w, "--class-names", '["dent"]'),
        r"edge deployment workflow: InvalidModelArchive: .*class_names \['dent'\] differ",
        id="class-names-in-training",
    ),
]


@pytest.mark.parametrize(("drift", "message"), DRIFTS)
def test_the_loop_breaks_where_an_interface_drifts(
    drift: Callable[[Wiring], Wiring], message: str, loop: LoopResult, tmp_path, request
):
    assert loop.trained_model is not None
    apps: Apps = request.getfixturevalue("apps")
    studio = request.getfixturevalue("studio") if request.getfixturevalue("backend") == "label_studio" else None
    drifted = Loop(drift(wiring(apps)), tmp_path, trainer=copy_trained_model(loop.trained_model), studio=studio)
    with pytest.raises(LoopBroken, match=message):
        drifted.run()
