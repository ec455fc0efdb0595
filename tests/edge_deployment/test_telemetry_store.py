"""The telemetry store as synthesized: topic rules, Firehose, record processor, bucket, Glue tables, Athena.

cdk-nag and cfn-lint run over the whole workflow stack in test_stack.py; here: what each resource
must say for no message to be lost, for Athena to read what the processor writes, and for every
piece to be encrypted and allowed no more than it needs.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Template

from edge_deployment.naming import thing_level, topic_filter
from edge_deployment.runtime import handlers
from edge_deployment.runtime.telemetry import HEARTBEATS, REJECTED, RESULTS, Row, TelemetryConfig
from edge_deployment.runtime_bundle import HANDLER_MODULE, runtime_bundle
from edge_deployment.telemetry_store import COLUMNS, RULE_ERRORS, TelemetryStore, rule_sql
from shared.config import TelemetrySettings
from tests.helpers.asl import render_token, role_statements


def _resources(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in template["Resources"].items() if r["Type"] == resource_type}


def _one(template: dict[str, Any], resource_type: str, prefix: str = "Telemetry") -> tuple[str, dict[str, Any]]:
    found = [(lid, r) for lid, r in _resources(template, resource_type).items() if lid.startswith(prefix)]
    assert len(found) == 1, (resource_type, [lid for lid, _ in found])
    return found[0]


def _ref(logical_id: str) -> dict[str, str]:
    return {"Ref": logical_id}


def _arn(logical_id: str) -> dict[str, list[str]]:
    return {"Fn::GetAtt": [logical_id, "Arn"]}


@pytest.fixture(scope="module")
def template(workflow_stack: Any) -> dict[str, Any]:
    return workflow_stack.template  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def ids(template: dict[str, Any]) -> dict[str, str]:
    """Logical ids of the store's resources."""
    return {
        "bucket": _one(template, "AWS::S3::Bucket", "TelemetryBucket")[0],
        "key": _one(template, "AWS::KMS::Key", "TelemetryKey")[0],
        "stream": _one(template, "AWS::KinesisFirehose::DeliveryStream")[0],
        "processor": _one(template, "AWS::Lambda::Function", "TelemetryProcessorFunction")[0],
        "rule_role": _one(template, "AWS::IAM::Role", "TelemetryRuleRole")[0],
        "delivery_role": _one(template, "AWS::IAM::Role", "TelemetryDeliveryRole")[0],
    }


# -- topic rules ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "level", "devices"),
    [
        ("inspection/{thing}/results", 2, "inspection/+/results"),
        ("{thing}/heartbeat", 1, "+/heartbeat"),
        ("plant/a/line/{thing}", 4, "plant/a/line/+"),
    ],
)
def test_the_rule_reads_the_thing_from_its_level_of_the_topic(topic: str, level: int, devices: str) -> None:
    assert thing_level(topic) == level and topic_filter(topic) == devices
    assert f"topic({level}) AS topic_thing" in rule_sql(topic, "result")
    assert rule_sql(topic, "result").endswith(f"FROM '{devices}'")


def test_each_device_topic_has_a_rule_that_forwards_every_payload_as_received(
    template: dict[str, Any], ids: dict[str, str], settings: Any
) -> None:
    rules = {
        r["Properties"]["TopicRulePayload"]["Sql"]: r for r in _resources(template, "AWS::IoT::TopicRule").values()
    }
    edge = settings.edge_deployment
    expected = {
        rule_sql(edge.results_topic, "result"): "results",
        rule_sql(edge.heartbeat_topic, "heartbeat"): "heartbeats",
    }
    assert set(expected) <= set(rules)
    for sql, table in expected.items():
        payload = rules[sql]["Properties"]["TopicRulePayload"]
        # The whole payload, base64: a message that is not JSON is forwarded too (and rejected with a reason).
        assert sql.startswith("SELECT encode(*, 'base64') AS payload")
        assert "FROM 'inspection/+/" in sql
        assert payload["AwsIotSqlVersion"] == "2016-03-23" and payload["RuleDisabled"] is False
        (action,) = payload["Actions"]
        assert action["Firehose"]["DeliveryStreamName"] == _ref(ids["stream"])
        assert action["Firehose"]["RoleArn"] == _arn(ids["rule_role"])
        error = payload["ErrorAction"]["S3"]
        assert error["BucketName"] == _ref(ids["bucket"])
        assert error["Key"].startswith(f"{RULE_ERRORS}{table}/") and "${newuuid()}" in error["Key"]


def test_the_rules_role_may_only_put_into_the_stream_and_write_rule_errors(
    template: dict[str, Any], ids: dict[str, str]
) -> None:
    allowed = {
        (action, json.dumps(resource, sort_keys=True))
        for statement in role_statements(template, ids["rule_role"])
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
        for resource in (statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]])
    }
    stream = json.dumps(_arn(ids["stream"]), sort_keys=True)
    assert ("firehose:PutRecord", stream) in allowed and ("firehose:PutRecordBatch", stream) in allowed
    s3_writes = {resource for action, resource in allowed if action.startswith("s3:")}
    assert len(s3_writes) == 1 and f"/{RULE_ERRORS}*" in next(iter(s3_writes))
    assert {action for action, _ in allowed if action.startswith("s3:")} == {"s3:PutObject"}
    kms_keys = {resource for action, resource in allowed if action.startswith("kms:")}
    assert kms_keys == {json.dumps(_arn(ids["key"]), sort_keys=True)}


# -- Firehose and the record processor --------------------------------------------------------------


def test_the_stream_is_encrypted_and_partitions_by_the_keys_the_processor_returns(
    template: dict[str, Any], ids: dict[str, str]
) -> None:
    stream = template["Resources"][ids["stream"]]["Properties"]
    assert stream["DeliveryStreamEncryptionConfigurationInput"] == {
        "KeyType": "CUSTOMER_MANAGED_CMK",
        "KeyARN": _arn(ids["key"]),
    }
    s3 = stream["ExtendedS3DestinationConfiguration"]
    assert s3["BucketARN"] == _arn(ids["bucket"])
    assert s3["EncryptionConfiguration"]["KMSEncryptionConfig"]["AWSKMSKeyARN"] == _arn(ids["key"])
    assert s3["DynamicPartitioningConfiguration"]["Enabled"] is True
    keys = Row(RESULTS, "2026-12-04", "cam", {}).partition_keys
    in_prefix = set(re.findall(r"!\{partitionKeyFromLambda:(\w+)\}", s3["Prefix"]))
    assert in_prefix == set(keys) == {"table", "date", "device"}
    assert s3["Prefix"].startswith("!{partitionKeyFromLambda:table}/"), "each table's files under its own folder"
    assert "!{firehose:error-output-type}" in s3["ErrorOutputPrefix"], "records Firehose could not process are kept"
    assert s3["CompressionFormat"] == "GZIP"
    (processor,) = s3["ProcessingConfiguration"]["Processors"]
    parameters = {p["ParameterName"]: p["ParameterValue"] for p in processor["Parameters"]}
    assert processor["Type"] == "Lambda" and parameters["LambdaArn"] == _arn(ids["processor"])
    assert s3["CloudWatchLoggingOptions"]["Enabled"] is True


def test_the_processor_knows_the_thing_group_namespace_and_band_from_the_configuration(
    template: dict[str, Any], ids: dict[str, str], settings: Any
) -> None:
    function = template["Resources"][ids["processor"]]["Properties"]
    handler = function["Handler"]
    assert handler == f"{HANDLER_MODULE}.process_telemetry" and callable(handlers.process_telemetry)
    config = TelemetryConfig.from_json(function["Environment"]["Variables"]["TELEMETRY_CONFIG"])
    edge = settings.edge_deployment
    assert config == TelemetryConfig(
        thing_group=edge.thing_group_name,
        namespace=f"{settings.project.prefix}/Devices",
        uncertainty_band=edge.uncertainty_band,
    )


def test_only_firehose_of_this_account_assumes_the_delivery_role(template: dict[str, Any], ids: dict[str, str]) -> None:
    (statement,) = template["Resources"][ids["delivery_role"]]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "firehose.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == {"Ref": "AWS::AccountId"}


# -- bucket, tables, workgroup -----------------------------------------------------------------------


def test_the_bucket_is_encrypted_with_the_telemetry_key_and_keeps_results_by_default(
    template: dict[str, Any], ids: dict[str, str]
) -> None:
    bucket = template["Resources"][ids["bucket"]]
    assert bucket["DeletionPolicy"] == "Retain"
    (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == _arn(ids["key"])
    lifecycle = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    expired = {r.get("Prefix") for r in lifecycle if "ExpirationInDays" in r}
    assert expired == {"athena-results/"}, "no result, heartbeat or rejected message expires by default"


def test_a_retention_expires_the_three_tables_and_nothing_else(settings: Any) -> None:
    edge = settings.edge_deployment.model_copy(update={"telemetry": TelemetrySettings(retention_days=400)})
    configured = settings.model_copy(update={"edge_deployment": edge})
    app = cdk.App(context={"@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True})  # as cdk.json sets it
    stack = cdk.Stack(app, "Telemetry", env=cdk.Environment(account="123456789012", region="eu-west-1"))
    TelemetryStore(
        stack,
        "Telemetry",
        settings=configured,
        function_code=runtime_bundle(),
        handler=f"{HANDLER_MODULE}.process_telemetry",
    )
    buckets = Template.from_stack(stack).find_resources("AWS::S3::Bucket")
    (bucket,) = [b for lid, b in buckets.items() if lid.startswith("TelemetryBucket")]
    rules = bucket["Properties"]["LifecycleConfiguration"]["Rules"]
    days = {r["Prefix"]: r["ExpirationInDays"] for r in rules if "ExpirationInDays" in r}
    assert days == {"results/": 400, "heartbeats/": 400, "rejected/": 400, "athena-results/": 30}


def test_athena_reads_each_table_where_the_stream_writes_it_with_one_partition_per_day(
    template: dict[str, Any], ids: dict[str, str]
) -> None:
    tables = {
        r["Properties"]["TableInput"]["Name"]: r["Properties"]
        for r in _resources(template, "AWS::Glue::Table").values()
    }
    assert set(tables) == {RESULTS, HEARTBEATS, REJECTED}
    (database,) = _resources(template, "AWS::Glue::Database").values()
    assert database["Properties"]["DatabaseInput"]["Name"] == "tag_inspect_telemetry"
    for name, properties in tables.items():
        table = properties["TableInput"]
        assert properties["DatabaseName"] == "tag_inspect_telemetry"
        descriptor = table["StorageDescriptor"]
        assert render_token(descriptor["Location"], {ids["bucket"]: "BUCKET"}) == f"s3://BUCKET/{name}/"
        assert [(c["Name"], c["Type"]) for c in descriptor["Columns"]] == COLUMNS[name]
        assert descriptor["SerdeInfo"]["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
        assert table["PartitionKeys"] == [{"Name": "date", "Type": "string"}]
        parameters = table["Parameters"]
        assert parameters["projection.enabled"] == "true" and parameters["projection.date.format"] == "yyyy-MM-dd"
        template_location = render_token(parameters["storage.location.template"], {ids["bucket"]: "BUCKET"})
        assert template_location == f"s3://BUCKET/{name}/date=${{date}}/"


def test_query_results_are_encrypted_and_the_workgroup_enforces_it(
    template: dict[str, Any], ids: dict[str, str]
) -> None:
    (workgroup,) = _resources(template, "AWS::Athena::WorkGroup").values()
    configuration = workgroup["Properties"]["WorkGroupConfiguration"]
    assert configuration["EnforceWorkGroupConfiguration"] is True
    result = configuration["ResultConfiguration"]
    assert result["EncryptionConfiguration"] == {"EncryptionOption": "SSE_KMS", "KmsKey": _arn(ids["key"])}
    assert render_token(result["OutputLocation"], {ids["bucket"]: "BUCKET"}) == "s3://BUCKET/athena-results/"
