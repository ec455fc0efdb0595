"""The devices' telemetry in the cloud: every result and heartbeat kept in S3, queryable in Athena, as metrics.

    device --MQTT--> IoT topic rules (results, heartbeats) --> Firehose --> telemetry bucket (KMS)
                                                                  |
                                     record processor (Lambda): rows + partition keys, EMF metrics

* Each topic rule wraps the message as received (base64, so a payload that is not JSON arrives too)
  with its kind, the thing of its topic and IoT's arrival time; a rule that cannot deliver writes the
  message with the failure to `rule-errors/` (the rule's error action).
* The record processor (`edge_deployment/runtime/telemetry.py`) checks each message against its
  contract (`shared/contracts.py`, DeviceResult / DeviceHeartbeat) and returns its JSON line with the
  partition keys: `results/`, `heartbeats/` or, with the reason, `rejected/`, each under
  `date=<UTC date>/device=<thing>/`. It prints the metrics in CloudWatch's embedded metric format.
* Glue tables `results`, `heartbeats` and `rejected` (partition projection on the date: no crawler, no
  partition to add) and an Athena workgroup whose query results are encrypted with the same key.

Nothing expires unless `edge_deployment.telemetry.retention_days` is set.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_kinesisfirehose as firehose
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from constructs import Construct

from edge_deployment.naming import thing_level, topic_filter
from edge_deployment.runtime.telemetry import HEARTBEATS, REJECTED, RESULTS, TelemetryConfig
from shared.building_blocks import (
    access_log_bucket,
    encryption_key,
    log_group,
    log_retention,
    python_function,
)
from shared.config import Settings
from shared.guardrails import acknowledge, allow, finding

IAM5 = "AwsSolutions-IAM5"
RULE_ERRORS = "rule-errors/"
FIREHOSE_ERRORS = "firehose-errors/"
ATHENA_RESULTS = "athena-results/"
FIRST_DATE = "2026-01-01"  # partition projection starts here; a query for an earlier date finds nothing

# Column types of the three tables, in the order of the contract (shared/contracts.py).
DETECTION = "struct<box:array<double>,class_id:int,class_name:string,score:double>"
COLUMNS: dict[str, list[tuple[str, str]]] = {
    RESULTS: [
        ("thing", "string"),
        ("image", "string"),
        ("timestamp", "string"),
        ("received_at", "string"),
        ("model_version", "string"),
        ("latency_ms", "double"),
        ("defect", "boolean"),
        ("top_score", "double"),
        ("uncertain", "boolean"),
        ("detections", f"array<{DETECTION}>"),
        ("upload_key", "string"),
        ("message_version", "int"),
    ],
    HEARTBEATS: [
        ("thing", "string"),
        ("timestamp", "string"),
        ("received_at", "string"),
        ("status", "string"),
        ("model_version", "string"),
        ("model_error", "string"),
        ("model_precision", "string"),
        ("model_precision_reason", "string"),
        ("execution_provider", "string"),
        ("model_warning", "string"),
        ("frames_processed", "bigint"),
        ("frames_failed", "bigint"),
        ("frames_since_last_heartbeat", "bigint"),
        ("mean_latency_ms", "double"),
        ("publish_failures", "bigint"),
        ("uploads_enabled", "boolean"),
        ("uploads_pending", "bigint"),
        ("uploads_dropped", "bigint"),
        ("uploads_done", "bigint"),
        ("upload_error", "string"),
        ("uploads_capped", "bigint"),
        ("empty_frame_rate", "double"),
        ("expected_empty_frame_rate", "double"),
        ("empty_frames_drifting", "boolean"),
        ("expected_uncertain_frame_rate", "double"),
        ("publish_pending", "bigint"),
        ("publish_dropped", "bigint"),
        ("message_version", "int"),
    ],
    REJECTED: [
        ("received_at", "string"),
        ("kind", "string"),
        ("topic_thing", "string"),
        ("reason", "string"),
        ("payload", "string"),
    ],
}


def rule_sql(topic: str, kind: str) -> str:
    """The topic rule's query: the payload as received (base64), its kind, its topic's thing, IoT's time."""
    # IoT SQL from validated config values (the topic's pattern) and a fixed kind.
    selected = f"encode(*, 'base64') AS payload, '{kind}' AS kind, topic({thing_level(topic)}) AS topic_thing"
    return f"SELECT {selected}, timestamp() AS received_at FROM '{topic_filter(topic)}'"  # noqa: S608


def glue_name(value: str) -> str:
    """Glue and Athena names: lower case, underscores."""
    return "".join(character if character.isalnum() else "_" for character in value.lower())


class TelemetryStore(Construct):
    """Topic rules, Firehose stream, record processor, telemetry bucket, Glue tables and Athena workgroup."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        function_code: Any,
        handler: str,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        prefix = settings.project.prefix
        edge = settings.edge_deployment
        telemetry = edge.telemetry
        retention = log_retention(settings.toolchain.log_retention_days)
        self.namespace = telemetry.metrics_namespace or f"{prefix}/Devices"
        self.thing_group = edge.thing_group_name

        self.key: kms.Key = encryption_key(
            self,
            "Key",
            alias=f"alias/{prefix}-telemetry",
            description="Encrypts the devices' stored results and heartbeats and the Athena query results",
            retain=True,
        )
        days = telemetry.retention_days
        expiry = [
            s3.LifecycleRule(id=f"expire-{table}", prefix=f"{table}/", expiration=cdk.Duration.days(days))
            for table in (RESULTS, HEARTBEATS, REJECTED)
            if days is not None
        ]
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=f"{prefix}-telemetry-{stack.account}-{stack.region}",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            versioned=True,
            server_access_logs_bucket=access_log_bucket(self, "AccessLogs"),
            server_access_logs_prefix="telemetry/",
            lifecycle_rules=[
                *expiry,
                s3.LifecycleRule(
                    id=f"expire-{ATHENA_RESULTS[:-1]}", prefix=ATHENA_RESULTS, expiration=cdk.Duration.days(30)
                ),
                s3.LifecycleRule(id="expire-overwritten-versions", noncurrent_version_expiration=cdk.Duration.days(30)),
            ],
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )

        # -- record processor ----------------------------------------------------------------------
        config = TelemetryConfig(
            thing_group=edge.thing_group_name, namespace=self.namespace, uncertainty_band=edge.uncertainty_band
        )
        self.processor: lambda_.Function = python_function(
            self,
            "ProcessorFunction",
            code_dir=function_code,
            handler=handler,
            description="Telemetry: checks device messages, returns their rows and partitions, prints their metrics",
            environment={"TELEMETRY_CONFIG": config.to_json()},
            timeout=cdk.Duration.minutes(3),
            memory_size=512,
            log_retention=retention,
        )

        # -- Firehose -----------------------------------------------------------------------------
        firehose_logs = log_group(self, "DeliveryLogs", retention=retention)
        firehose_role = iam.Role(
            self,
            "DeliveryRole",
            assumed_by=iam.ServicePrincipal(
                "firehose.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description="Firehose: runs the record processor and writes the telemetry bucket",
        )
        self.bucket.grant_read_write(firehose_role)
        self.processor.grant_invoke(firehose_role)
        allow(firehose_role, ["lambda:GetFunctionConfiguration"], [self.processor.function_arn])
        firehose_logs.grant_write(firehose_role)
        partition = "/".join(
            (
                "!{partitionKeyFromLambda:table}",
                "date=!{partitionKeyFromLambda:date}",
                "device=!{partitionKeyFromLambda:device}/",
            )
        )
        self.stream = firehose.CfnDeliveryStream(
            self,
            "Stream",
            delivery_stream_name=f"{prefix}-telemetry",
            delivery_stream_type="DirectPut",
            delivery_stream_encryption_configuration_input=firehose.CfnDeliveryStream.DeliveryStreamEncryptionConfigurationInputProperty(
                key_type="CUSTOMER_MANAGED_CMK", key_arn=self.key.key_arn
            ),
            extended_s3_destination_configuration=firehose.CfnDeliveryStream.ExtendedS3DestinationConfigurationProperty(
                bucket_arn=self.bucket.bucket_arn,
                role_arn=firehose_role.role_arn,
                prefix=partition,
                error_output_prefix=FIREHOSE_ERRORS + "!{firehose:error-output-type}/!{timestamp:yyyy-MM-dd}/",
                buffering_hints=firehose.CfnDeliveryStream.BufferingHintsProperty(
                    interval_in_seconds=telemetry.buffer_seconds, size_in_m_bs=64
                ),
                compression_format="GZIP",
                file_extension=".json.gz",
                encryption_configuration=firehose.CfnDeliveryStream.EncryptionConfigurationProperty(
                    kms_encryption_config=firehose.CfnDeliveryStream.KMSEncryptionConfigProperty(
                        awskms_key_arn=self.key.key_arn
                    )
                ),
                dynamic_partitioning_configuration=firehose.CfnDeliveryStream.DynamicPartitioningConfigurationProperty(
                    enabled=True, retry_options=firehose.CfnDeliveryStream.RetryOptionsProperty(duration_in_seconds=300)
                ),
                processing_configuration=firehose.CfnDeliveryStream.ProcessingConfigurationProperty(
                    enabled=True,
                    processors=[
                        firehose.CfnDeliveryStream.ProcessorProperty(
                            type="Lambda",
                            parameters=[
                                firehose.CfnDeliveryStream.ProcessorParameterProperty(
                                    parameter_name=name, parameter_value=value
                                )
                                for name, value in (
                                    ("LambdaArn", self.processor.function_arn),
                                    ("BufferSizeInMBs", "1"),
                                    ("BufferIntervalInSeconds", "60"),
                                    ("NumberOfRetries", "3"),
                                )
                            ],
                        )
                    ],
                ),
                cloud_watch_logging_options=firehose.CfnDeliveryStream.CloudWatchLoggingOptionsProperty(
                    enabled=True, log_group_name=firehose_logs.log_group_name, log_stream_name="DestinationDelivery"
                ),
            ),
        )
        self.stream.node.add_dependency(firehose_role)
        self.key.grant_encrypt_decrypt(firehose_role)

        # -- topic rules --------------------------------------------------------------------------
        rule_role = iam.Role(
            self,
            "RuleRole",
            assumed_by=iam.ServicePrincipal(
                "iot.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description="IoT topic rules: put device messages into the telemetry stream, failures into the bucket",
        )
        allow(rule_role, ["firehose:PutRecord", "firehose:PutRecordBatch"], [self.stream.attr_arn])
        allow(
            rule_role,
            ["s3:PutObject"],
            [self.bucket.arn_for_objects(f"{RULE_ERRORS}*")],
            why="The rules' error action writes generated object names (a date and a UUID) under rule-errors/ only.",
        )
        self.key.grant_encrypt(rule_role)
        self.rules: dict[str, iot.CfnTopicRule] = {}
        for kind, table, topic in (
            ("result", RESULTS, edge.results_topic),
            ("heartbeat", HEARTBEATS, edge.heartbeat_topic),
        ):
            self.rules[table] = iot.CfnTopicRule(
                self,
                f"{table.capitalize()}Rule",
                rule_name=glue_name(f"{prefix}_{table}"),
                topic_rule_payload=iot.CfnTopicRule.TopicRulePayloadProperty(
                    description=f"Every device {kind} into the telemetry stream (stored, queried, turned into metrics)",
                    sql=rule_sql(topic, kind),
                    aws_iot_sql_version="2016-03-23",
                    rule_disabled=False,
                    actions=[
                        iot.CfnTopicRule.ActionProperty(
                            firehose=iot.CfnTopicRule.FirehoseActionProperty(
                                delivery_stream_name=self.stream.ref, role_arn=rule_role.role_arn, batch_mode=False
                            )
                        )
                    ],
                    error_action=iot.CfnTopicRule.ActionProperty(
                        s3=iot.CfnTopicRule.S3ActionProperty(
                            bucket_name=self.bucket.bucket_name,
                            key=RULE_ERRORS + table + "/${parse_time('yyyy-MM-dd', timestamp())}/${newuuid()}.json",
                            role_arn=rule_role.role_arn,
                        )
                    ),
                ),
            )

        # -- Glue tables and the Athena workgroup -------------------------------------------------
        self.database_name = glue_name(f"{prefix}_telemetry")
        database = glue.CfnDatabase(
            self,
            "Database",
            catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="The devices' results and heartbeats (edge deployment app)"
            ),
        )
        self.tables: dict[str, glue.CfnTable] = {}
        for table, columns in COLUMNS.items():
            location = f"s3://{self.bucket.bucket_name}/{table}/"
            self.tables[table] = glue.CfnTable(
                self,
                f"{table.capitalize()}Table",
                catalog_id=stack.account,
                database_name=self.database_name,
                table_input=glue.CfnTable.TableInputProperty(
                    name=table,
                    description=f"Device {table}: one JSON line per message, partitioned by the UTC date it describes",
                    table_type="EXTERNAL_TABLE",
                    partition_keys=[glue.CfnTable.ColumnProperty(name="date", type="string")],
                    parameters={
                        "classification": "json",
                        "compressionType": "gzip",
                        "projection.enabled": "true",
                        "projection.date.type": "date",
                        "projection.date.format": "yyyy-MM-dd",
                        "projection.date.range": f"{FIRST_DATE},NOW",
                        "projection.date.interval": "1",
                        "projection.date.interval.unit": "DAYS",
                        # Each date folder holds one folder per device; Athena reads them all.
                        "storage.location.template": location + "date=${date}/",
                    },
                    storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                        location=location,
                        input_format="org.apache.hadoop.mapred.TextInputFormat",
                        output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                        serde_info=glue.CfnTable.SerdeInfoProperty(
                            serialization_library="org.openx.data.jsonserde.JsonSerDe",
                            parameters={"ignore.malformed.json": "false", "case.insensitive": "false"},
                        ),
                        columns=[glue.CfnTable.ColumnProperty(name=name, type=type_) for name, type_ in columns],
                    ),
                ),
            )
            self.tables[table].add_dependency(database)
        self.workgroup = athena.CfnWorkGroup(
            self,
            "WorkGroup",
            name=f"{prefix}-telemetry",
            description="Queries over the devices' results and heartbeats; results encrypted, kept 30 days",
            recursive_delete_option=False,
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=10 * 1024**3,  # a runaway query stops at 10 GiB scanned
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=f"s3://{self.bucket.bucket_name}/{ATHENA_RESULTS}",
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_KMS", kms_key=self.key.key_arn
                    ),
                ),
            ),
        )

        acknowledge(
            firehose_role,
            IAM5,
            "Invoking the record processor: CDK's invoke grant covers the function's versions (<arn>:*).",
            finding=finding(firehose_role, "Resource", f"{self.processor.function_arn}:*"),
        )
        for output_id, value, description in (
            ("TelemetryBucketName", self.bucket.bucket_name, "Devices' results and heartbeats (JSON lines, gzip)"),
            ("TelemetryDatabase", self.database_name, "Glue database of the results, heartbeats and rejected tables"),
            ("TelemetryWorkGroup", self.workgroup.name, "Athena workgroup for querying the telemetry"),
            ("DeviceMetricsNamespace", self.namespace, "CloudWatch namespace of the device metrics"),
        ):
            cdk.CfnOutput(stack, output_id, value=value, description=description)
