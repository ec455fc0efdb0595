"""The edge deployment workflow: approved model package -> Greengrass components -> stage by stage -> report.

    ResolveModelPackage -> (none approved yet: NothingToDeploy, succeed)
      -> PrepareModelComponent -> DescribeModelComponent <-> WaitForModelComponent (until DEPLOYABLE;
         FAILED/DEPRECATED, or not DEPLOYABLE after MODEL_COMPONENT_MAX_POLLS looks: NotifyFailure)
      -> StartStages, then for each stage (runtime/stages.py):
         BeginStage (groups exist and have devices; what they run recorded; bad input: NotifyFailure)
         -> CreateDeployment (a newer approved package exists: NotifySuperseded, succeed)
         -> WaitForRollout <-> CheckRollout (until every group's job finished; replaced by an older package's
            deployment: CreateDeployment again, at most MAX_REDEPLOYS times; overtaken: NotifyOvertaken)
         -> WaitForHeartbeats <-> CheckServing (every device reports the new version)
         -> Soak -> CheckHealth -> [RequestApproval (task token, timeout)] -> NotifyStagePassed -> NextStage
         -> after the last: NotifySuccess
      a stage that fails (jobs, heartbeats, health, telemetry query, rejection, approval timeout):
         RollBackStage -> WaitForRollback <-> CheckRollback -> NotifyStageRolledBack -> StageRolledBack
         (a rollback on demand is not put back: CheckRollback reports it -> RollbackOnDemandFailed)
      any other error -> NotifyFailure -> DeploymentFailed

Runs may overlap; the devices end on the newest approved package whatever the order (see
runtime/deployment.py). A rollback on demand (`{"trigger": "rollback", ...}`, edge_deployment/promotion.py)
runs the named stages without soak, health gate or approval.

Started by the model package group's "SageMaker Model Package State Change" event when a package
is Approved (the event's package), and by the workflow pipeline (the newest approved package).
Every task retries transient errors with the apps' one policy (`shared.workflow_states`) and has a
catch; nothing waits in a function (Wait states, and the task token for an approval).
Logging ALL and tracing are set by `workflow_state_machine`.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from edge_deployment import APP
from edge_deployment.fleet import DeviceFleet
from edge_deployment.function_config import function_environment
from edge_deployment.naming import EdgeNames
from edge_deployment.runtime.deployment import NO_DEVICES, REDEPLOY, SUCCEEDED, SUPERSEDED, Counter
from edge_deployment.runtime_bundle import HANDLER_MODULE, runtime_bundle
from shared.building_blocks import (
    EventDeadLetters,
    grant_key_by_alias,
    grant_publish_by_name,
    log_retention,
    python_function,
    workflow_state_machine,
)
from shared.config import ROLLOUT_OVERHEAD_MINUTES, Settings, stage_wait_minutes
from shared.guardrails import IAM5, acknowledge, allow, finding
from shared.names import MODEL_ARCHIVE_PREFIX, ResourceNames
from shared.workflow_states import (
    ERROR_PATH,
    NOTIFICATION_ERROR_PATH,
    FailurePath,
    app_topic,
    lambda_step,
    publish,
    retry,
)

PACKAGE_STATE_CHANGE = "SageMaker Model Package State Change"
# Errors worth another try: Lambda service faults, a function timeout, AWS calls still throttled.
TRANSIENT_ERRORS = [
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
    "Sandbox.Timedout",
    "TransientError",
]
COMPONENT_POLL_SECONDS = 5
# Greengrass makes a component version DEPLOYABLE (or FAILED) within seconds; one still neither after
# this many looks is reported, instead of polling until the execution times out without a word.
MODEL_COMPONENT_MAX_POLLS = 60
# An older package's deployment can replace this run's only while its run was between its check and its
# CreateDeployment call; more than this many in a row means something else keeps deploying.
MAX_REDEPLOYS = 3
# Rollout outcomes after which the stage's devices are asked for heartbeats with the new version.
SERVING_CHECKED = frozenset({SUCCEEDED, NO_DEVICES})
APPROVAL_TIMEOUT = "States.Timeout"
REJECTED = "Rejected"  # the error a rejection sends (edge_deployment/promotion.py)
# The SNS publish integration's errors worth another try (Step Functions names them SNS.<exception>).
SNS_PUBLISH_TRANSIENT_ERRORS = [
    "SNS.ThrottledException",
    "SNS.InternalErrorException",
    "SNS.KMSThrottlingException",
    "SNS.SdkClientException",
]


def model_approved_pattern(*, group_name: str) -> events.EventPattern:
    """Approved packages of this group only: a merely registered (pending) package does not match."""
    return events.EventPattern(
        source=["aws.sagemaker"],
        detail_type=[PACKAGE_STATE_CHANGE],
        detail={"ModelPackageGroupName": [group_name], "ModelApprovalStatus": ["Approved"]},
    )


class DeploymentWorkflow(Construct):
    """Functions, state machine and approval rule of the edge deployment workflow."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: EdgeNames,
        shared_names: ResourceNames,
        fleet: DeviceFleet,
        inference_version: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self._stack = stack = cdk.Stack.of(self)
        edge = settings.edge_deployment
        retention = log_retention(settings.toolchain.log_retention_days)
        code = runtime_bundle()
        environment = function_environment(
            settings, names=names, shared_names=shared_names, component_bucket=fleet.bucket.bucket_name
        )

        self.resolve_function = python_function(
            self,
            "ResolveFunction",
            code_dir=code,
            handler=f"{HANDLER_MODULE}.resolve",
            description="Edge workflow step 1: the model package to deploy",
            environment=environment,
            log_retention=retention,
        )
        self.prepare_function = python_function(
            self,
            "PrepareModelFunction",
            code_dir=code,
            handler=f"{HANDLER_MODULE}.prepare_model",
            description="Edge workflow step 2: validate the model archive, create the model component version",
            environment=environment,
            timeout=cdk.Duration.minutes(15),
            memory_size=1024,
            log_retention=retention,
        )
        # The archive and its repackaged ZIP both sit in /tmp.
        prepare_cfn = self.prepare_function.node.default_child
        assert isinstance(prepare_cfn, lambda_.CfnFunction)
        prepare_cfn.ephemeral_storage = lambda_.CfnFunction.EphemeralStorageProperty(
            size=min(10_240, max(512, 3 * edge.max_model_archive_mb + 256))
        )
        self.create_function = python_function(
            self,
            "CreateDeploymentFunction",
            code_dir=code,
            handler=f"{HANDLER_MODULE}.create_deployment",
            description="Edge workflow step 3: the Greengrass deployment to the thing group",
            environment=environment,
            timeout=cdk.Duration.minutes(2),
            log_retention=retention,
        )
        self.check_function = python_function(
            self,
            "CheckRolloutFunction",
            code_dir=code,
            handler=f"{HANDLER_MODULE}.check_rollout",
            description="Edge workflow step 4: one look at the rollout's IoT job (the state machine waits between)",
            environment=environment,
            timeout=cdk.Duration.minutes(2),
            log_retention=retention,
        )

        def stage_function(function_id: str, handler: str, description: str) -> lambda_.Function:
            return python_function(
                self,
                function_id,
                code_dir=code,
                handler=f"{HANDLER_MODULE}.{handler}",
                description=f"Edge workflow stage step: {description}",
                environment=environment,
                timeout=cdk.Duration.minutes(2),
                log_retention=retention,
            )

        self.begin_stage_function = stage_function(
            "BeginStageFunction", "begin_stage", "a stage begins, its groups checked and what they run recorded"
        )
        self.serving_function = stage_function(
            "CheckServingFunction", "check_serving", "one look whether the devices report the new version"
        )
        self.health_function = stage_function("CheckHealthFunction", "check_health", "the health gate")
        self.rollback_function = stage_function(
            "RollBackStageFunction", "roll_back_stage", "a failed stage put back on what it ran before"
        )
        self.check_rollback_function = stage_function(
            "CheckRollbackFunction", "check_rollback", "one look at a stage's rollback"
        )
        self._grant_functions(settings=settings, shared_names=shared_names, fleet=fleet)

        self.state_machine = workflow_state_machine(
            self,
            "StateMachine",
            state_machine_name=shared_names.workflow_state_machine(APP),
            definition=self._definition(
                settings=settings, shared_names=shared_names, inference_version=inference_version
            ),
            timeout=cdk.Duration.minutes(stage_wait_minutes(edge) + ROLLOUT_OVERHEAD_MINUTES),
            log_retention=retention,
        )
        grant_publish_by_name(
            self.state_machine,
            topic_name=shared_names.notification_topic(APP),
            key_alias=shared_names.notification_key_alias(APP),
            stack=stack,
        )
        self._acknowledge_state_machine_role()

        # Named, so that the dead-letter key can name the rule without a reference loop (rule -> queue -> key).
        approval_rule_name = f"{names.prefix}-edge-model-approved"
        self.approval_dead_letters = EventDeadLetters(
            self,
            "ApprovalDeadLetters",
            key_alias=f"alias/{names.prefix}-edge-approval-dead-letters",
            rule_arn=stack.format_arn(service="events", resource="rule", resource_name=approval_rule_name),
            alarm_name=f"{shared_names.alarm_prefix(APP)}approval-events-undelivered",
            alarm_topic_arn=stack.format_arn(service="sns", resource=shared_names.notification_topic(APP)),
            description="model approvals that did not start the edge deployment workflow",
        )
        self.approval_rule = events.Rule(
            self,
            "ModelApprovedRule",
            rule_name=approval_rule_name,
            description=f"Deploys approved model packages of {shared_names.model_package_group} to the devices",
            event_pattern=model_approved_pattern(group_name=shared_names.model_package_group),
            targets=[
                targets.SfnStateMachine(
                    self.state_machine,
                    input=events.RuleTargetInput.from_object(
                        {
                            "trigger": "model-package-approved",
                            "model_package_arn": events.EventField.from_path("$.detail.ModelPackageArn"),
                            "model_package_group_name": events.EventField.from_path("$.detail.ModelPackageGroupName"),
                            "event_id": events.EventField.event_id,
                        }
                    ),
                    retry_attempts=8,
                    max_event_age=cdk.Duration.hours(6),
                    # An approval that cannot start the workflow (throttled, state machine missing) is kept,
                    # and its alarm notifies the app's topic.
                    dead_letter_queue=self.approval_dead_letters.queue,
                )
            ],
        )

    # -- permissions ----------------------------------------------------------------------------
    def _arn(self, service: str, resource: str, name: str, *, colon: bool = False) -> str:
        return self._stack.format_arn(
            service=service,
            resource=resource,
            resource_name=name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME if colon else cdk.ArnFormat.SLASH_RESOURCE_NAME,
        )

    def _grant_functions(self, *, settings: Settings, shared_names: ResourceNames, fleet: DeviceFleet) -> None:
        edge = settings.edge_deployment
        stack = self._stack
        # Step 1: read the model registry of this app's group.
        package_arns = self._arn("sagemaker", "model-package", f"{shared_names.model_package_group.lower()}/*")
        allow(
            self.resolve_function,
            ["sagemaker:DescribeModelPackage"],
            [package_arns],
            sid="DescribeGroupPackages",
            why="Any version of this app's model package group (versions are created by training).",
        )
        allow(
            self.resolve_function,
            ["sagemaker:ListModelPackages"],
            ["*"],
            sid="ListGroupPackages",
            why="sagemaker:ListModelPackages supports no resource-level permission; the function lists only "
            "the group named in its environment.",
        )

        # Step 2: read the model archive, write model.zip, create the model component version.
        archives = f"arn:{stack.partition}:s3:::{shared_names.model_bucket}/{MODEL_ARCHIVE_PREFIX}*"
        allow(
            self.prepare_function,
            ["s3:GetObject"],
            [archives],
            sid="ReadModelArchives",
            why=f"Model archives under {MODEL_ARCHIVE_PREFIX} of training's model bucket (one per pipeline run): "
            "the package names the key, unknown in advance.",
        )
        grant_key_by_alias(self.prepare_function, alias=shared_names.model_key_alias, stack=stack)
        fleet.grant_artifact_publishing(self.prepare_function, component_name=edge.model_component_name)
        model_component = self._arn("greengrass", "components", edge.model_component_name, colon=True)
        allow(
            self.prepare_function,
            ["greengrass:CreateComponentVersion"],
            [model_component],
            sid="CreateModelComponentVersions",
        )
        allow(
            self.prepare_function,
            ["greengrass:DescribeComponent", "greengrass:GetComponent"],
            [f"{model_component}:versions:*"],
            sid="ReadModelComponentVersions",
            why="Versions of the model component (one per model package version).",
        )

        # Step 3: the deployment, and the IoT job Greengrass creates with the caller's permissions.
        # Every stage's thing groups (the app's own is the fleet's; a stage's others exist outside the stack).
        group_arns = [
            fleet.thing_group_arn if name == edge.thing_group_name else self._arn("iot", "thinggroup", name)
            for name in edge.stage_thing_groups
        ]
        deployments = self._arn("greengrass", "deployments", "*", colon=True)
        jobs = self._arn("iot", "job", "*")
        new_deployments = "Deployments are created at run time; ids unknown in advance."
        rollout_jobs = "Greengrass names the rollout's IoT job itself (a generated id)."
        allow(
            self.create_function,
            ["greengrass:CreateDeployment", "greengrass:ListDeployments"],
            ["*"],
            sid="CreateAndListDeployments",
            why="greengrass:CreateDeployment and ListDeployments take no resource ARN in IAM; the function deploys "
            "only to the thing group named in its environment.",
        )
        allow(
            self.create_function,
            ["greengrass:GetDeployment"],
            [deployments],
            sid="ReadDeployments",
            why=new_deployments,
        )
        # Why `job/*` stays: Greengrass creates the deployment's continuous IoT job with a generated id, and revises
        # (UpdateJob) or cancels (CancelJob) the previous one, all with the caller's permissions (CreateDeployment's
        # dependent actions in the service authorization reference). No IoT condition key tells a Greengrass
        # deployment job from another job of the account, and the id is known only after the call. The function's
        # own code only reads jobs; the job's targets are narrowed to this app's thing group below.
        allow(
            self.create_function,
            ["iot:CreateJob", "iot:CancelJob", "iot:UpdateJob", "iot:DescribeJob"],
            [jobs],
            sid="DeploymentJobs",
            why=rollout_jobs,
        )
        allow(
            self.create_function,
            ["iot:CreateJob", "iot:DescribeThingGroup"],
            group_arns,
            sid="TargetThingGroup",
        )

        # Steps 3 and 4 ask which package is the newest approved one (a newer approval overtakes a run).
        for function in (self.create_function, self.check_function):
            allow(
                function,
                ["sagemaker:ListModelPackages"],
                ["*"],
                sid="NewestApprovedPackage",
                why="sagemaker:ListModelPackages supports no resource-level permission; only this app's group "
                "is listed.",
            )

        # Step 4: follow the job, see which deployment replaced a cancelled one, ask Greengrass why a device failed.
        core_devices = self._arn("greengrass", "coreDevices", "*", colon=True)

        def follow_rollout(function: lambda_.IFunction, *, jobs_sid: str) -> None:
            """What following a rollout reads: its IoT job, each device's deployment result, the groups' members."""
            allow(function, ["iot:DescribeJob", "iot:ListJobExecutionsForJob"], [jobs], sid=jobs_sid, why=rollout_jobs)
            allow(
                function,
                ["greengrass:ListEffectiveDeployments"],
                [core_devices],
                sid="DeviceResults",
                why="Any core device may have failed; the function only reads the deployments in effect on it.",
            )
            allow(function, ["iot:ListThingsInThingGroup"], group_arns, sid="GroupMembers")

        allow(
            self.check_function, ["greengrass:GetDeployment"], [deployments], sid="ReadDeployments", why=new_deployments
        )
        allow(
            self.check_function,
            ["greengrass:ListDeployments"],
            ["*"],
            sid="LatestDeployment",
            why="greengrass:ListDeployments supports no resource-level permission; the function lists only the "
            "deployments of this app's thing group.",
        )
        # the executions of its own state machine that started earlier and still run (overlapping runs)
        own_machine = self._arn("states", "stateMachine", shared_names.workflow_state_machine(APP), colon=True)
        allow(self.check_function, ["states:ListExecutions"], [own_machine], sid="OlderRuns")
        follow_rollout(self.check_function, jobs_sid="FollowDeploymentJobs")

        # The stages: groups checked and their current deployment recorded, devices' metrics read, rollbacks.
        allow(
            self.begin_stage_function,
            ["iot:DescribeThingGroup", "iot:ListThingsInThingGroup"],
            group_arns,
            sid="StageGroups",
        )
        allow(
            self.begin_stage_function,
            ["greengrass:ListDeployments"],
            ["*"],
            sid="GroupDeployments",
            why="greengrass:ListDeployments supports no resource-level permission; the function lists only the "
            "deployments of the stage's thing groups.",
        )
        allow(
            self.begin_stage_function,
            ["greengrass:GetDeployment"],
            [deployments],
            sid="ReadDeployments",
            why="The groups' current deployments, made by earlier runs or by people; ids unknown in advance.",
        )
        allow(
            self.begin_stage_function,
            ["greengrass:DescribeComponent"],
            [self._arn("greengrass", "components", "*", colon=True)],
            sid="PreviousComponentVersions",
            why="Any component version a stage's groups ran before (this account's): it must still exist to roll "
            "back to.",
        )
        for function, sid in ((self.serving_function, "Heartbeats"), (self.health_function, "Health")):
            allow(function, ["iot:ListThingsInThingGroup"], group_arns, sid="StageDevices")
            allow(
                function,
                ["cloudwatch:GetMetricData"],
                ["*"],
                sid=f"Device{sid}Metrics",
                why="cloudwatch:GetMetricData supports no resource-level permission; the function reads the device "
                "metrics of this app's namespace.",
            )
        allow(
            self.rollback_function,
            ["greengrass:CreateDeployment"],
            ["*"],
            sid="RollbackDeployments",
            why="greengrass:CreateDeployment takes no resource ARN in IAM; the function deploys only to the stage's "
            "thing groups, the versions they ran before.",
        )
        allow(self.rollback_function, ["iot:CreateJob", "iot:DescribeThingGroup"], group_arns, sid="StageGroups")
        allow(
            self.rollback_function,
            ["iot:CreateJob", "iot:CancelJob", "iot:UpdateJob", "iot:DescribeJob"],
            [jobs],
            sid="RollbackJobs",
            why=rollout_jobs,
        )
        allow(
            self.check_rollback_function,
            ["greengrass:GetDeployment"],
            [deployments],
            sid="ReadDeployments",
            why=new_deployments,
        )
        follow_rollout(self.check_rollback_function, jobs_sid="FollowRollbackJobs")

    def _acknowledge_state_machine_role(self) -> None:
        role = self.state_machine.role
        for function in (
            self.resolve_function,
            self.prepare_function,
            self.create_function,
            self.check_function,
            self.begin_stage_function,
            self.serving_function,
            self.health_function,
            self.rollback_function,
            self.check_rollback_function,
        ):
            acknowledge(
                role,
                IAM5,
                "Step Functions invokes the workflow's own function; CDK grants its versions and aliases too.",
                finding=finding(role, "Resource", f"{function.function_arn}:*"),
            )
        acknowledge(
            role,
            IAM5,
            "Versions of the model component (one per model package version) whose state the workflow polls.",
            finding=finding(role, "Resource", self._model_component_versions),
        )

    # -- definition -----------------------------------------------------------------------------
    def _lambda_step(
        self, state_id: str, function: lambda_.IFunction, payload: dict[str, object] | None, result_path: str
    ) -> tasks.LambdaInvoke:
        """A function call (its whole state input when `payload` is None); transient errors are retried."""
        return lambda_step(
            self, state_id, function=function, payload=payload, result_path=result_path, retryable=TRANSIENT_ERRORS
        )

    def _definition(self, *, settings: Settings, shared_names: ResourceNames, inference_version: str) -> sfn.IChainable:
        edge = settings.edge_deployment
        stack = self._stack
        topic = app_topic(self, shared_names.notification_topic(APP))
        prefix = settings.project.prefix

        failure = FailurePath(
            self,
            topic=topic,
            subject=f"[{prefix}] Edge deployment failed",
            title="Edge deployment workflow execution",
            fail_state="DeploymentFailed",
        )

        def guarded(task: sfn.TaskStateBase) -> sfn.TaskStateBase:
            failure.guard(task)
            return task

        resolve = guarded(self._lambda_step("ResolveModelPackage", self.resolve_function, None, "$.resolution"))
        nothing_to_deploy = sfn.Pass(
            self,
            "NothingToDeploy",
            parameters={"deployed": False, "message.$": "$.resolution.message"},
        ).next(sfn.Succeed(self, "NoApprovedModelYet", comment="No approved model package: nothing to deploy"))

        prepare = guarded(
            self._lambda_step(
                "PrepareModelComponent",
                self.prepare_function,
                {"package.$": "$.resolution.package"},
                "$.model_component",
            )
        )
        model_component = stack.format_arn(
            service="greengrass",
            resource="components",
            resource_name=edge.model_component_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        self._model_component_versions = f"{model_component}:versions:*"
        describe_component = tasks.CallAwsService(
            self,
            "DescribeModelComponent",
            service="greengrassv2",
            action="describeComponent",
            iam_action="greengrass:DescribeComponent",
            iam_resources=[self._model_component_versions],
            parameters={"Arn": sfn.JsonPath.string_at("$.model_component.arn")},
            result_selector={"status": sfn.JsonPath.object_at("$.Status")},
            result_path="$.model_component_state",
        )
        retry(describe_component, ["States.TaskFailed"])
        guarded(describe_component)
        wait_for_component = sfn.Wait(
            self,
            "WaitForModelComponent",
            time=sfn.WaitTime.duration(cdk.Duration.seconds(COMPONENT_POLL_SECONDS)),
        )
        start_component_polls = sfn.Pass(
            self,
            "StartModelComponentPolls",
            result=sfn.Result.from_object(Counter().to_json()),
            result_path="$.model_component_polls",
        )
        count_component_poll = sfn.Pass(
            self,
            "CountModelComponentPoll",
            parameters={"count.$": "States.MathAdd($.model_component_polls.count, 1)"},
            result_path="$.model_component_polls",
        )
        component_not_deployable = failure.error(
            self,
            "ModelComponentNotDeployable",
            error="ModelComponentNotDeployable",
            cause="States.Format('Greengrass did not make the model component version {} deployable "
            f"within {MODEL_COMPONENT_MAX_POLLS * COMPONENT_POLL_SECONDS} seconds (still {{}}): {{}}', "
            "$.model_component.arn, $.model_component_state.status.ComponentState, "
            "States.JsonToString($.model_component_state.status))",
        )
        component_rejected = failure.error(
            self,
            "ModelComponentRejected",
            error="ModelComponentRejected",
            cause="States.Format('Greengrass marked the model component version {} as {}: {}. A version "
            "cannot be created twice: after fixing the cause, delete it (aws greengrassv2 delete-component "
            "--arn {}) and run the workflow again', "
            "$.model_component.arn, $.model_component_state.status.ComponentState, "
            "States.JsonToString($.model_component_state.status), $.model_component.arn)",
        )

        stage_flow = self._stage_flow(
            topic=topic, failure=failure, prefix=prefix, settings=settings, inference_version=inference_version
        )
        return resolve.next(
            sfn.Choice(self, "ModelPackageFound")
            .when(sfn.Condition.boolean_equals("$.resolution.found", False), nothing_to_deploy)
            .otherwise(
                prepare.next(start_component_polls)
                .next(describe_component)
                .next(
                    sfn.Choice(self, "ModelComponentDeployable")
                    .when(
                        sfn.Condition.string_equals("$.model_component_state.status.ComponentState", "DEPLOYABLE"),
                        stage_flow,
                    )
                    .when(
                        sfn.Condition.or_(
                            sfn.Condition.string_equals("$.model_component_state.status.ComponentState", "FAILED"),
                            sfn.Condition.string_equals("$.model_component_state.status.ComponentState", "DEPRECATED"),
                        ),
                        component_rejected,
                    )
                    .when(
                        sfn.Condition.number_greater_than_equals(
                            "$.model_component_polls.count", MODEL_COMPONENT_MAX_POLLS
                        ),
                        component_not_deployable,
                    )
                    .otherwise(count_component_poll.next(wait_for_component).next(describe_component))
                )
            )
        )

    def _stage_flow(
        self, *, topic: sns.ITopic, failure: FailurePath, prefix: str, settings: Settings, inference_version: str
    ) -> sfn.Chain:
        """The stages, one after the other: deploy, follow, heartbeats, soak, health gate, approval; or roll back."""
        edge = settings.edge_deployment

        def guarded(task: sfn.TaskStateBase) -> sfn.TaskStateBase:
            failure.guard(task)
            return task

        # -- the stages, one after the other (runtime/stages.py) ------------------------------------
        start_stages = sfn.Pass(
            self,
            "StartStages",
            result=sfn.Result.from_object({"index": 0}),
            result_path="$.next_stage",
        )
        begin_stage = guarded(
            self._lambda_step(
                "BeginStage",
                self.begin_stage_function,
                {"index.$": "$.next_stage.index", "request.$": "$$.Execution.Input"},
                "$.stage",
            )
        )
        create_deployment = guarded(
            self._lambda_step(
                "CreateDeployment",
                self.create_function,
                {
                    "package.$": "$.resolution.package",
                    "model_component.$": "$.model_component",
                    "inference_component": {"name": edge.inference_component_name, "version": inference_version},
                    "stage.$": "$.stage",
                    "execution_id.$": "$$.Execution.Id",
                    "attempt.$": "$.deployment_attempts.count",
                },
                "$.deployment",
            )
        )
        start_deployment_attempts = sfn.Pass(
            self,
            "StartDeploymentAttempts",
            result=sfn.Result.from_object(Counter().to_json()),
            result_path="$.deployment_attempts",
        )
        count_redeploy = sfn.Pass(
            self,
            "CountRedeploy",
            parameters={"count.$": "States.MathAdd($.deployment_attempts.count, 1)"},
            result_path="$.deployment_attempts",
        )
        kept_being_replaced = failure.error(
            self,
            "DeploymentKeptBeingReplaced",
            error="DeploymentKeptBeingReplaced",
            cause="States.Format('Deployments of older model packages replaced the deployment of this run {} "
            "times; the newest approved package was not left on the devices. Run the workflow pipeline "
            "when no other deployment is running: it deploys the newest approved package.', "
            "$.deployment_attempts.count)",
        )
        notify_superseded = publish(
            self,
            "NotifySuperseded",
            topic=topic,
            subject_path="$.deployment.subject",
            message=sfn.TaskInput.from_json_path_at("$.deployment.message"),
        )
        not_deployed = sfn.Succeed(
            self, "NewerPackageApproved", comment="A newer approved package overtook this one: nothing deployed"
        )
        notify_superseded.add_catch(not_deployed, errors=["States.ALL"], result_path=NOTIFICATION_ERROR_PATH)
        notify_superseded.next(not_deployed)
        wait_for_rollout = sfn.Wait(self, "WaitForRollout", time=sfn.WaitTime.seconds_path("$.stage.poll_seconds"))
        check_rollout = guarded(
            self._lambda_step(
                "CheckRollout",
                self.check_function,
                {
                    "deployment.$": "$.deployment",
                    "package.$": "$.resolution.package",
                    "stage.$": "$.stage",
                    "execution_id.$": "$$.Execution.Id",
                    "execution_start.$": "$$.Execution.StartTime",
                },
                "$.rollout",
            )
        )
        notify_overtaken = publish(
            self,
            "NotifyOvertaken",
            topic=topic,
            subject_path="$.rollout.subject",
            message=sfn.TaskInput.from_json_path_at("$.rollout.message"),
        )
        overtaken = sfn.Succeed(
            self, "Overtaken", comment="Another run of the same or a newer package took over the devices"
        )
        notify_overtaken.add_catch(overtaken, errors=["States.ALL"], result_path=NOTIFICATION_ERROR_PATH)

        # -- every device serves the new version (heartbeats), then the soak and the health gate ----------
        wait_for_serving = sfn.Wait(self, "WaitForHeartbeats", time=sfn.WaitTime.seconds_path("$.stage.poll_seconds"))
        stage_devices = {"stage.$": "$.stage", "model_version.$": "$.model_component.version"}
        check_serving = self._lambda_step(
            "CheckServing",
            self.serving_function,
            {**stage_devices, "deployment.$": "$.deployment"},
            "$.serving",
        )
        soak = sfn.Wait(self, "Soak", time=sfn.WaitTime.seconds_path("$.stage.soak_seconds"))
        check_health = self._lambda_step(
            "CheckHealth",
            self.health_function,
            {**stage_devices, "since.$": "$.serving.confirmed_at"},
            "$.health",
        )

        # -- a person's approval before the next stage (optional) ------------------------------------
        request_approval = self._approval_request(topic=topic, prefix=prefix)
        # Only the publish's own throttling and faults are retried: any error sent for the token (Rejected,
        # the console's "send task failure", a typo) is an answer, and it rolls the stage back. Retrying
        # one would publish a new request with a new token and a new full timeout.
        retry(request_approval, SNS_PUBLISH_TRANSIENT_ERRORS)

        # -- a stage that fails is put back on what it ran before --------------------------------------
        def stage_failed(state_id: str, source: str) -> sfn.Pass:
            return sfn.Pass(self, state_id, input_path=source, result_path="$.stage_failure")

        roll_back = self._rollback_path(topic=topic, failure=failure)
        rollout_failed = stage_failed("RolloutFailedOnStage", "$.rollout.failure").next(roll_back)
        not_serving = stage_failed("NotServingNewVersion", "$.serving.failure").next(roll_back)
        unhealthy = stage_failed("HealthGateFailed", "$.health.failure").next(roll_back)
        for step, state_id in ((check_serving, "HeartbeatQueryFailed"), (check_health, "HealthQueryFailed")):
            # a query that fails after its retries: the stage is not promoted, it is put back
            step.add_catch(
                sfn.Pass(
                    self,
                    state_id,
                    parameters={
                        "summary.$": "States.Format('the stage could not be judged from its devices telemetry "
                        "({}: {})', $.error.Error, $.error.Cause)",
                        "devices": [],
                        "more_devices": 0,
                    },
                    result_path="$.stage_failure",
                ).next(roll_back),
                errors=["States.ALL"],
                result_path=ERROR_PATH,
            )
        approval_timed_out = sfn.Pass(
            self,
            "ApprovalTimedOut",
            parameters={
                "summary.$": "States.Format('nobody approved the next stage within {} seconds', "
                "$.stage.approval_timeout_seconds)",
                "devices": [],
                "more_devices": 0,
            },
            result_path="$.stage_failure",
        ).next(roll_back)
        approval_rejected = sfn.Pass(
            self,
            "ApprovalRejected",
            parameters={
                "summary.$": "States.Format('the next stage was not approved ({}: {})', $.error.Error, $.error.Cause)",
                "devices": [],
                "more_devices": 0,
            },
            result_path="$.stage_failure",
        ).next(roll_back)
        approval_not_given = sfn.Pass(
            self,
            "ApprovalNotGiven",
            parameters={
                "summary.$": "States.Format('the answer to the approval request was not an approval ({})', "
                "States.JsonToString($.approval))",
                "devices": [],
                "more_devices": 0,
            },
            result_path="$.stage_failure",
        ).next(roll_back)
        request_approval.add_catch(approval_timed_out, errors=[APPROVAL_TIMEOUT], result_path=ERROR_PATH)
        request_approval.add_catch(approval_rejected, errors=["States.ALL"], result_path=ERROR_PATH)

        # -- a stage passed: the next one, or the end --------------------------------------------------
        stage_passed_message = sfn.TaskInput.from_text(
            sfn.JsonPath.format(
                "Stage {} passed with model version {}: every one of its {} devices reports it in its heartbeats; "
                "{}.\n\n{}",
                sfn.JsonPath.string_at("$.stage.name"),
                sfn.JsonPath.string_at("$.model_component.version"),
                sfn.JsonPath.string_at("$.serving.devices"),
                sfn.JsonPath.string_at("$.health.verdict"),
                sfn.JsonPath.string_at("$.rollout.message"),
            )
        )
        notify_stage_passed = publish(
            self,
            "NotifyStagePassed",
            topic=topic,
            subject=sfn.JsonPath.format(
                f"[{prefix}] Edge stage {{}} passed: model version {{}}",
                sfn.JsonPath.string_at("$.stage.name"),
                sfn.JsonPath.string_at("$.model_component.version"),
            ),
            message=stage_passed_message,
        )
        next_stage = sfn.Pass(
            self, "NextStage", parameters={"index.$": "$.stage.next_index"}, result_path="$.next_stage"
        )
        notify_stage_passed.add_catch(next_stage, errors=["States.ALL"], result_path=NOTIFICATION_ERROR_PATH)
        deployed = sfn.Succeed(self, "Deployed", comment="Every stage serves the new model and passed its health gate")
        notify_success = publish(
            self,
            "NotifySuccess",
            topic=topic,
            subject=sfn.JsonPath.format(
                f"[{prefix}] Edge rollout SUCCEEDED: model version {{}} through stage {{}}",
                sfn.JsonPath.string_at("$.model_component.version"),
                sfn.JsonPath.string_at("$.stage.name"),
            ),
            message=stage_passed_message,
        )
        notification_failed = sfn.Fail(
            self,
            "NotificationFailed",
            comment="The rollout finished but its report could not be published",
            error="NotificationFailed",
            cause="Publishing the rollout report to the notification topic failed",
        )
        notify_success.add_catch(notification_failed, errors=["States.ALL"], result_path=NOTIFICATION_ERROR_PATH)
        promote = sfn.Choice(self, "LastStage")
        promote.when(sfn.Condition.boolean_equals("$.stage.last", True), notify_success.next(deployed))
        promote.otherwise(notify_stage_passed.next(next_stage).next(begin_stage))
        request_approval.next(
            sfn.Choice(self, "Approved")
            # only an explicit {"approved": true} promotes; any other answer is a rejection
            .when(
                sfn.Condition.and_(
                    sfn.Condition.is_present("$.approval.approved"),
                    sfn.Condition.is_boolean("$.approval.approved"),
                    sfn.Condition.boolean_equals("$.approval.approved", True),
                ),
                promote,
            )
            .otherwise(approval_not_given)
        )

        serving_devices = [sfn.Condition.string_equals("$.rollout.outcome", o) for o in sorted(SERVING_CHECKED)]
        return (
            start_stages.next(begin_stage)
            .next(start_deployment_attempts)
            .next(create_deployment)
            .next(
                sfn.Choice(self, "DeploymentSuperseded")
                # create_deployment always answers `superseded` (runtime/deployment.py)
                .when(sfn.Condition.boolean_equals("$.deployment.superseded", True), notify_superseded)
                .otherwise(
                    wait_for_rollout.next(check_rollout).next(
                        sfn.Choice(self, "RolloutFinished")
                        .when(
                            sfn.Condition.string_equals("$.rollout.outcome", REDEPLOY),
                            count_redeploy.next(
                                sfn.Choice(self, "RedeployAgain")
                                .when(
                                    sfn.Condition.number_greater_than("$.deployment_attempts.count", MAX_REDEPLOYS),
                                    kept_being_replaced,
                                )
                                .otherwise(create_deployment)
                            ),
                        )
                        .when(sfn.Condition.boolean_equals("$.rollout.finished", False), wait_for_rollout)
                        .when(
                            sfn.Condition.string_equals("$.rollout.outcome", SUPERSEDED),
                            notify_overtaken.next(overtaken),
                        )
                        .when(
                            sfn.Condition.or_(*serving_devices),
                            wait_for_serving.next(check_serving).next(
                                sfn.Choice(self, "ServingNewVersion")
                                .when(sfn.Condition.boolean_equals("$.serving.finished", False), wait_for_serving)
                                .when(
                                    sfn.Condition.string_equals("$.serving.outcome", SUCCEEDED),
                                    soak.next(check_health).next(
                                        sfn.Choice(self, "StageHealthy")
                                        .when(sfn.Condition.boolean_equals("$.health.healthy", False), unhealthy)
                                        .when(
                                            sfn.Condition.and_(
                                                sfn.Condition.boolean_equals("$.stage.manual_approval", True),
                                                sfn.Condition.boolean_equals("$.stage.last", False),
                                            ),
                                            request_approval,
                                        )
                                        .otherwise(promote)
                                    ),
                                )
                                .otherwise(not_serving)
                            ),
                        )
                        .otherwise(rollout_failed)
                    )
                )
            )
        )

    def _approval_request(self, *, topic: sns.ITopic, prefix: str) -> tasks.SnsPublish:
        """The request for a person's approval: waits for the answer (a task token) or the stage's timeout."""
        request_approval = tasks.SnsPublish(
            self,
            "RequestApproval",
            topic=topic,
            integration_pattern=sfn.IntegrationPattern.WAIT_FOR_TASK_TOKEN,
            subject=sfn.JsonPath.format(
                f"[{prefix}] Approve the next edge stage after {{}}?", sfn.JsonPath.string_at("$.stage.name")
            ),
            # JSON, so that the CLI (and a person) can take the token from it as it is
            message=sfn.TaskInput.from_object(
                {
                    "request": sfn.JsonPath.format(
                        "Stage {} passed the health gate with model version {}. The next stage starts only when a "
                        "person approves; without an answer within {} seconds the stage is rolled back.",
                        sfn.JsonPath.string_at("$.stage.name"),
                        sfn.JsonPath.string_at("$.model_component.version"),
                        sfn.JsonPath.string_at("$.stage.approval_timeout_seconds"),
                    ),
                    "stage": sfn.JsonPath.string_at("$.stage.name"),
                    "model_version": sfn.JsonPath.string_at("$.model_component.version"),
                    "health": sfn.JsonPath.object_at("$.health"),
                    "approve": "python -m edge_deployment.promotion approve --token <task_token>",
                    "reject": "python -m edge_deployment.promotion reject --token <task_token> --reason '<why>' "
                    "(rolls the stage back)",
                    "task_token": sfn.JsonPath.task_token,
                }
            ),
            task_timeout=sfn.Timeout.at("$.stage.approval_timeout_seconds"),
            result_path="$.approval",
            comment="Waits for approve/reject (edge_deployment/promotion.py) or the stage's approval timeout",
        )
        return request_approval

    def _rollback_path(self, *, topic: sns.ITopic, failure: FailurePath) -> sfn.TaskStateBase:
        """RollBackStage -> WaitForRollback <-> CheckRollback -> NotifyStageRolledBack -> StageRolledBack."""

        def guarded(task: sfn.TaskStateBase) -> sfn.TaskStateBase:
            failure.guard(task)
            return task

        roll_back = guarded(
            self._lambda_step(
                "RollBackStage",
                self.rollback_function,
                {"stage.$": "$.stage", "execution_id.$": "$$.Execution.Id"},
                "$.rollback",
            )
        )
        wait_for_rollback = sfn.Wait(self, "WaitForRollback", time=sfn.WaitTime.seconds_path("$.stage.poll_seconds"))
        check_rollback = guarded(
            self._lambda_step(
                "CheckRollback",
                self.check_rollback_function,
                {
                    "rollback.$": "$.rollback",
                    "stage.$": "$.stage",
                    "failure.$": "$.stage_failure",
                    "package.$": "$.resolution.package",
                },
                "$.rollback_status",
            )
        )
        stage_rolled_back = sfn.Fail(
            self,
            "StageRolledBack",
            comment="A stage failed its rollout, its heartbeats, its health gate or its approval and was put back",
            error="StageRolledBack",
            cause_path="$.rollback_status.subject",
        )
        notify_rolled_back = publish(
            self,
            "NotifyStageRolledBack",
            topic=topic,
            subject_path="$.rollback_status.subject",
            message=sfn.TaskInput.from_json_path_at("$.rollback_status.message"),
        )
        # a rollback on demand that fails is reported, not put back (RollBackStage deploys nothing for it)
        on_demand_failed = sfn.Fail(
            self,
            "RollbackOnDemandFailed",
            comment="A stage of a rollback on demand did not confirm the older version; nothing else was deployed",
            error="RollbackOnDemandFailed",
            cause_path="$.rollback_status.subject",
        )
        ended = (
            sfn.Choice(self, "RolledBackOrOnDemand")
            .when(sfn.Condition.boolean_equals("$.stage.on_demand", True), on_demand_failed)
            .otherwise(stage_rolled_back)
        )
        notify_rolled_back.add_catch(ended, errors=["States.ALL"], result_path=NOTIFICATION_ERROR_PATH)
        roll_back.next(wait_for_rollback).next(check_rollback).next(
            sfn.Choice(self, "RollbackFinished")
            .when(sfn.Condition.boolean_equals("$.rollback_status.finished", False), wait_for_rollback)
            .otherwise(notify_rolled_back.next(ended))
        )
        return roll_back
