"""Secure-by-default pieces every app builds from: keys, buckets, topics and Python Lambda functions.

Each helper sets what cdk-nag (AwsSolutions) and our own standards ask for once, so an app cannot
forget it: KMS with rotation, TLS-only access, blocked public access, versioning, server access logs,
explicit log retention, X-Ray tracing. Grants across apps go by KMS alias and resource name, never by
reference to another app's construct.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import aws_cdk as cdk
import jsii
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.interfaces import aws_events as events_interfaces
from constructs import Construct

from shared.code_bundle import code_bundle, handler_file
from shared.guardrails import acknowledge, allow, checkov_skip

LAMBDA_RUNTIME = lambda_.Runtime.PYTHON_3_14
LAMBDA_ARCHITECTURE = lambda_.Architecture.ARM_64

_RETENTION_DAYS = {
    1: logs.RetentionDays.ONE_DAY,
    3: logs.RetentionDays.THREE_DAYS,
    5: logs.RetentionDays.FIVE_DAYS,
    7: logs.RetentionDays.ONE_WEEK,
    14: logs.RetentionDays.TWO_WEEKS,
    30: logs.RetentionDays.ONE_MONTH,
    60: logs.RetentionDays.TWO_MONTHS,
    90: logs.RetentionDays.THREE_MONTHS,
    120: logs.RetentionDays.FOUR_MONTHS,
    150: logs.RetentionDays.FIVE_MONTHS,
    180: logs.RetentionDays.SIX_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    400: logs.RetentionDays.THIRTEEN_MONTHS,
    545: logs.RetentionDays.EIGHTEEN_MONTHS,
    731: logs.RetentionDays.TWO_YEARS,
    1827: logs.RetentionDays.FIVE_YEARS,
    3653: logs.RetentionDays.TEN_YEARS,
}


def log_retention(days: int) -> logs.RetentionDays:
    """The CloudWatch Logs retention for a number of days (one of the values CloudWatch accepts)."""
    try:
        return _RETENTION_DAYS[days]
    except KeyError:
        raise ValueError(f"{days} is not a CloudWatch Logs retention; use one of {sorted(_RETENTION_DAYS)}") from None


def encryption_key(
    scope: Construct,
    construct_id: str,
    *,
    alias: str,
    description: str,
    retain: bool = False,
) -> kms.Key:
    """A customer managed key with rotation. Keys that protect data that outlives a stack are retained."""
    return kms.Key(
        scope,
        construct_id,
        alias=alias,
        description=description,
        enable_key_rotation=True,
        removal_policy=cdk.RemovalPolicy.RETAIN if retain else cdk.RemovalPolicy.DESTROY,
        pending_window=cdk.Duration.days(7) if not retain else None,
    )


def access_log_bucket(scope: Construct, construct_id: str = "AccessLogs", *, retention_days: int = 365) -> s3.Bucket:
    """Destination of S3 server access logs. S3 log delivery supports only SSE-S3 on the target."""
    bucket = s3.Bucket(
        scope,
        construct_id,
        encryption=s3.BucketEncryption.S3_MANAGED,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        removal_policy=cdk.RemovalPolicy.RETAIN,
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-access-logs",
                expiration=cdk.Duration.days(retention_days),
                noncurrent_version_expiration=cdk.Duration.days(30),
            )
        ],
    )
    acknowledge(
        bucket,
        "AwsSolutions-S1",
        "This bucket is the server access log destination; logging it into itself would loop.",
    )
    cfn_bucket = bucket.node.default_child
    assert isinstance(cfn_bucket, cdk.CfnResource)
    checkov_skip(cfn_bucket, "CKV_AWS_18", "The server access log destination: logging it into itself would loop.")
    return bucket


def secure_bucket(
    scope: Construct,
    construct_id: str,
    *,
    key: kms.IKey,
    access_logs: s3.IBucket,
    bucket_name: str | None = None,
    retain: bool = True,
    lifecycle_rules: Sequence[s3.LifecycleRule] | None = None,
    event_bridge_enabled: bool = False,
) -> s3.Bucket:
    """KMS-encrypted, TLS-only, private, versioned and access-logged bucket."""
    return s3.Bucket(
        scope,
        construct_id,
        bucket_name=bucket_name,
        encryption=s3.BucketEncryption.KMS,
        encryption_key=key,
        bucket_key_enabled=True,
        enforce_ssl=True,
        block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
        object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        versioned=True,
        server_access_logs_bucket=access_logs,
        server_access_logs_prefix=f"{construct_id}/",
        lifecycle_rules=list(lifecycle_rules or []),
        event_bridge_enabled=event_bridge_enabled,
        removal_policy=cdk.RemovalPolicy.RETAIN if retain else cdk.RemovalPolicy.DESTROY,
        auto_delete_objects=False,
    )


class NotificationTopic(Construct):
    """An app's SNS topic for failures and results: KMS-encrypted, TLS-only, with its subscribers.

    Who may publish besides the app's own roles (same account, by IAM):
    * EventBridge rules of this stack (pipeline failures). EventBridge's guide says Condition blocks
      cannot be used in SNS topic policies for EventBridge, so the topic statement has none; the key
      statement is narrowed to this one topic by the encryption context SNS itself sets.
    * CloudWatch alarms of this account whose names start with `alarm_prefix` (dead-letter queues of
      the app's event rules), with `aws:SourceAccount` and `aws:SourceArn` on the topic and the key.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        topic_name: str,
        key_alias: str,
        emails: Sequence[str] = (),
        slack: tuple[str, str] | None = None,
        alarm_prefix: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.key = encryption_key(self, "Key", alias=key_alias, description=f"Encrypts SNS topic {topic_name}")
        topic_arn = stack.format_arn(service="sns", resource=topic_name)
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="EventBridgeRulesPublishToThisTopic",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                resources=["*"],
                conditions={"StringEquals": {"kms:EncryptionContext:aws:sns:topicArn": topic_arn}},
            )
        )
        self.topic = sns.Topic(
            self,
            "Topic",
            topic_name=topic_name,
            master_key=self.key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                sid="EventBridgeRulesPublish",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["sns:Publish"],
                resources=[self.topic.topic_arn],
            )
        )
        if alarm_prefix is not None:
            alarms = stack.format_arn(
                service="cloudwatch",
                resource="alarm",
                resource_name=f"{alarm_prefix}*",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
            )
            own_alarms = {"StringEquals": {"aws:SourceAccount": stack.account}, "ArnLike": {"aws:SourceArn": alarms}}
            self.key.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="OwnAlarmsPublishToThisTopic",
                    principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                    actions=["kms:GenerateDataKey*", "kms:Decrypt"],
                    resources=["*"],
                    conditions={
                        **own_alarms,
                        "StringEquals": {
                            "aws:SourceAccount": stack.account,
                            "kms:EncryptionContext:aws:sns:topicArn": topic_arn,
                        },
                    },
                )
            )
            self.topic.add_to_resource_policy(
                iam.PolicyStatement(
                    sid="OwnAlarmsPublish",
                    principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                    actions=["sns:Publish"],
                    resources=[self.topic.topic_arn],
                    conditions=own_alarms,
                )
            )
        for email in emails:
            self.topic.add_subscription(subscriptions.EmailSubscription(email))
        if slack is not None:
            workspace_id, channel_id = slack
            chatbot.SlackChannelConfiguration(
                self,
                "Slack",
                slack_channel_configuration_name=topic_name[:128],
                slack_workspace_id=workspace_id,
                slack_channel_id=channel_id,
                notification_topics=[self.topic],
                # The channel only shows notifications: its role has no permissions, and the guardrail caps
                # whatever a later change might grant it at reading.
                guardrail_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("ReadOnlyAccess")],
            )

    def event_target(self, message: events.RuleTargetInput) -> events.IRuleTarget:
        """A target for this stack's EventBridge rules (the topic and key policies above let them publish)."""
        return _TopicRuleTarget(self.topic, message)


@jsii.implements(events.IRuleTarget)
class _TopicRuleTarget:
    """An EventBridge rule target that publishes to a topic whose policies are already in place.

    CDK's own SnsTopic target would add a second, unconditioned key statement for EventBridge.
    """

    def __init__(self, topic: sns.ITopic, message: events.RuleTargetInput) -> None:
        self._topic, self._message = topic, message

    def bind(self, rule: events_interfaces.IRuleRef, id: str | None = None) -> events.RuleTargetConfig:
        del rule, id  # the topic's and the key's policies are written by NotificationTopic
        return events.RuleTargetConfig(arn=self._topic.topic_arn, input=self._message)


class EventDeadLetters(Construct):
    """Where an EventBridge rule puts the events it could not deliver, and the alarm that says so.

    The queue is KMS-encrypted (its own key; EventBridge may use it for this one rule only), TLS-only and
    keeps events 14 days. Any message in it sets off the alarm, which notifies the app's topic.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        key_alias: str,
        rule_arn: str,
        alarm_name: str,
        alarm_topic_arn: str,
        description: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.key = encryption_key(
            self, "Key", alias=key_alias, description=f"Encrypts the dead letters of {description}"
        )
        # EventBridge's guide for DLQs with a customer managed key: the rule's service principal, this rule only.
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="ThisRuleSendsDeadLetters",
                principals=[iam.ServicePrincipal("events.amazonaws.com")],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],
                conditions={"ArnEquals": {"aws:SourceArn": rule_arn}},
            )
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.KMS,
            encryption_master_key=self.key,
            enforce_ssl=True,
            retention_period=cdk.Duration.days(14),
        )
        acknowledge(
            self.queue,
            "AwsSolutions-SQS3",
            "This queue is itself the dead-letter queue of an EventBridge rule target (EventBridge, not SQS redrive).",
        )
        self.alarm = cloudwatch.Alarm(
            self,
            "Alarm",
            alarm_name=alarm_name,
            alarm_description=f"Events that EventBridge could not deliver: {description}. They wait in the queue "
            "14 days (sqs receive-message to read them).",
            metric=self.queue.metric_approximate_number_of_messages_visible(
                period=cdk.Duration.minutes(5), statistic="Maximum"
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )
        topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarm_topic_arn)
        self.alarm.add_alarm_action(cloudwatch_actions.SnsAction(topic))


def grant_publish_by_name(
    grantable: iam.IGrantable,
    *,
    topic_name: str,
    key_alias: str,
    stack: cdk.Stack,
) -> None:
    """Let `grantable` publish to a topic that another stack of the same app owns, found by name."""
    allow(grantable, ["sns:Publish"], [stack.format_arn(service="sns", resource=topic_name)])
    grant_key_by_alias(grantable, alias=key_alias, stack=stack, actions=["kms:GenerateDataKey", "kms:Decrypt"])


def grant_key_by_alias(
    grantable: iam.IGrantable,
    *,
    alias: str,
    stack: cdk.Stack,
    actions: Sequence[str] = ("kms:Decrypt",),
) -> None:
    """Grant use of a KMS key that another app (or stack) owns, identified only by its alias.

    The key id is unknown to the reader, so the resource is any key of the account and region, and
    the `kms:ResourceAliases` condition narrows it to the one key that carries the alias.
    """
    allow(
        grantable,
        actions,
        [stack.format_arn(service="kms", resource="key", resource_name="*")],
        conditions={"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias}},
    )


def pipeline_arn(stack: cdk.Stack, pipeline_name: str) -> str:
    return stack.format_arn(service="codepipeline", resource=pipeline_name)


LOG_KEY_ID = "LogsKey"


def log_key(scope: Construct) -> kms.Key:
    """The key that encrypts every log group of `scope`'s stack (one per stack, created on first use).

    Log groups hold execution data: Lambda events, state machine inputs and outputs, build output. The key
    policy lets CloudWatch Logs use the key for this account's log groups in this region only (the
    encryption context CloudWatch Logs sets names the log group).
    """
    stack = cdk.Stack.of(scope)
    existing = stack.node.try_find_child(LOG_KEY_ID)
    if isinstance(existing, kms.Key):
        return existing
    key = encryption_key(
        stack,
        LOG_KEY_ID,
        alias=f"alias/{stack.stack_name}-logs",
        description="Encrypts the log groups of " + stack.stack_name,
    )
    key.add_to_resource_policy(
        iam.PolicyStatement(
            sid="CloudWatchLogsOfThisAccount",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={
                "ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                        service="logs",
                        resource="log-group",
                        resource_name="*",
                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                    )
                }
            },
        )
    )
    return key


def log_group(
    scope: Construct,
    construct_id: str,
    *,
    retention: logs.RetentionDays,
    log_group_name: str | None = None,
) -> logs.LogGroup:
    """A log group encrypted with its stack's log key, with a retention, removed with the stack."""
    return logs.LogGroup(
        scope,
        construct_id,
        log_group_name=log_group_name,
        retention=retention,
        encryption_key=log_key(scope),
        removal_policy=cdk.RemovalPolicy.DESTROY,
    )


class ServiceLogRetention(Construct):
    """A retention for log groups an AWS service creates by itself (SageMaker's `/aws/sagemaker/*Jobs`).

    A custom resource creates each group when missing and sets its retention at every deploy; destroying
    the stack leaves them as they are. These groups are shared by every job of their kind in the account
    and region, so the retention applies to those jobs too, and they keep CloudWatch Logs' own
    encryption: a key of this app (deleted with it) would make the account's other jobs unable to log.
    """

    def __init__(
        self, scope: Construct, construct_id: str, *, log_group_names: Sequence[str], retention_days: int
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        log_retention(retention_days)  # a value CloudWatch Logs accepts
        self.function = python_function(
            self,
            "Function",
            code_dir=code_bundle("shared-runtime", ["shared/runtime"]),
            handler="shared.runtime.service_log_groups.handler",
            description="Sets the retention of log groups AWS services create: " + ", ".join(log_group_names),
            timeout=cdk.Duration.minutes(2),
            log_retention=log_retention(retention_days),
            powertools=False,
        )
        groups = [
            stack.format_arn(
                service="logs", resource="log-group", resource_name=name, arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME
            )
            for name in log_group_names
        ]
        allow(
            self.function,
            ["logs:CreateLogGroup", "logs:PutRetentionPolicy"],
            [*groups, *(f"{group}:*" for group in groups)],
            why="CloudWatch Logs names a log group's ARN with a trailing ':*' in some requests; these groups only.",
        )
        cdk.CustomResource(
            self,
            "Retention",
            service_token=self.function.function_arn,
            resource_type="Custom::ServiceLogRetention",
            properties={"LogGroupNames": list(log_group_names), "RetentionInDays": retention_days},
        )


def workflow_state_machine(
    scope: Construct,
    construct_id: str,
    *,
    state_machine_name: str,
    definition: sfn.IChainable,
    timeout: cdk.Duration,
    log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
) -> sfn.StateMachine:
    """A standard state machine with logging level ALL (execution data included) and X-Ray tracing."""
    group = log_group(
        scope,
        f"{construct_id}Logs",
        # Step Functions vended logs must go to a group under /aws/vendedlogs/ to keep the policy small.
        log_group_name=f"/aws/vendedlogs/states/{state_machine_name}",
        retention=log_retention,
    )
    return sfn.StateMachine(
        scope,
        construct_id,
        state_machine_name=state_machine_name,
        definition_body=sfn.DefinitionBody.from_chainable(definition),
        timeout=timeout,
        tracing_enabled=True,
        logs=sfn.LogOptions(destination=group, level=sfn.LogLevel.ALL, include_execution_data=True),
    )


# --------------------------------------------------------------------------------------------------
# Lambda
# --------------------------------------------------------------------------------------------------


@jsii.implements(cdk.ILocalBundling)
class _CopyWithPowertools:
    """Local bundling (no Docker): the function's folder plus Powertools from this environment.

    Powertools is pure Python and pinned in requirements.txt, so the deployed function runs
    the version the tests ran against, and synth needs neither Docker nor a network.
    """

    def __init__(self, source: Path) -> None:
        self._source = source

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_: object) -> bool:
        import aws_lambda_powertools  # noqa: PLC0415 - only needed at synth

        shutil.copytree(self._source, output_dir, dirs_exist_ok=True, ignore=_IGNORED)
        package = Path(aws_lambda_powertools.__file__).parent
        shutil.copytree(package, Path(output_dir) / package.name, dirs_exist_ok=True, ignore=_IGNORED)
        return True


_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", ".pytest_cache", ".mypy_cache")


def python_function(
    scope: Construct,
    construct_id: str,
    *,
    code_dir: Path,
    handler: str,
    description: str,
    environment: Mapping[str, str] | None = None,
    timeout: cdk.Duration | None = None,
    memory_size: int = 256,
    log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
    powertools: bool = True,
    reserved_concurrent_executions: int | None = None,
) -> lambda_.Function:
    """A Python Lambda function from a folder of plain modules (the handler stays thin).

    `code_dir` is bundled as is (a `shared.code_bundle` folder, so that `handler` is the dotted path of a
    module in the repository); with `powertools=True` Powertools for AWS Lambda is added beside it.
    The function gets its own log group with a retention, X-Ray active tracing and the service name
    Powertools uses in its structured logs.
    """
    code_dir = Path(code_dir)
    if not handler_file(handler, code_dir).is_file():
        raise ValueError(f"handler module for {handler!r} not found in {code_dir}")
    if powertools:
        code = lambda_.Code.from_asset(
            str(code_dir),
            bundling=cdk.BundlingOptions(
                # Never pulled: local bundling always succeeds. CDK requires an image nonetheless.
                image=cdk.DockerImage.from_registry("public.ecr.aws/sam/build-python3.14"),
                local=_CopyWithPowertools(code_dir),
            ),
            asset_hash_type=cdk.AssetHashType.SOURCE,
            exclude=["__pycache__", "*.pyc"],
        )
    else:
        code = lambda_.Code.from_asset(str(code_dir), exclude=["__pycache__", "*.pyc"])
    logs_ = log_group(scope, f"{construct_id}Logs", retention=log_retention)
    # An own role instead of the AWSLambdaBasicExecutionRole managed policy: logs go to this
    # function's log group only.
    role = iam.Role(
        scope,
        f"{construct_id}Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"Execution role of {construct_id}",
    )
    logs_.grant_write(role)
    function = lambda_.Function(
        scope,
        construct_id,
        role=role,
        runtime=LAMBDA_RUNTIME,
        architecture=LAMBDA_ARCHITECTURE,
        code=code,
        handler=handler,
        description=description,
        timeout=timeout or cdk.Duration.minutes(1),
        memory_size=memory_size,
        tracing=lambda_.Tracing.ACTIVE,
        log_group=logs_,
        reserved_concurrent_executions=reserved_concurrent_executions,
        environment={
            "POWERTOOLS_SERVICE_NAME": construct_id,
            "POWERTOOLS_LOG_LEVEL": "INFO",
            **(environment or {}),
        },
    )
    cfn_function = function.node.default_child
    assert isinstance(cfn_function, cdk.CfnResource)
    for check_id, reason in _LAMBDA_CHECKOV_REASONS.items():
        checkov_skip(cfn_function, check_id, reason)
    return function


_LAMBDA_CHECKOV_REASONS = {
    "CKV_AWS_115": "Invoked by the app's own state machines, CloudFormation or one EventBridge rule at a low rate; "
    "reserved concurrency would only take capacity from the account and could throttle a workflow step.",
    "CKV_AWS_116": "Invoked synchronously (Step Functions retries and catches, CloudFormation waits for the answer) "
    "or by an EventBridge target with its own retries; a Lambda DLQ applies to asynchronous invocations only.",
    "CKV_AWS_117": "Calls AWS APIs only (no private network resource); a VPC would add NAT or endpoints for nothing.",
    "CKV_AWS_173": "The environment holds resource names and settings, no secret; Lambda encrypts it at rest.",
}
