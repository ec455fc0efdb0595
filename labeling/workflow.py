"""The labeling round: a Step Functions state machine over five small Lambda steps and two Ground Truth jobs.

    StartRound ─▶ FindUnlabeled ⟲ ─▶ (none) ─▶ NothingToLabel
                                 └─▶ PrepareLabelingJob ─▶ (none decodable) ─▶ NothingToLabel
                                      └─▶ LabelBoxes (.sync) ─▶ PrepareReviewJob ─▶ ReviewBoxes (.sync)
                                           ─▶ WriteLabels ⟲ ─▶ Summarize ─▶ RoundComplete

Every task retries transient errors with exponential backoff and jitter, fails at once on the errors
that retrying cannot fix (`labeling.runtime.errors.NON_RETRYABLE_ERRORS`), and routes any failure to
NotifyFailure (the app's SNS topic, found by name) and then RoundFailed. The Ground Truth jobs run
with the optimized `.sync` integration: Step Functions waits for them without any running Lambda.
Lists of images never enter the state: they travel through S3, and the loops carry small cursors.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from labeling.data_store import feature_group_arn, object_arn
from labeling.functions import acknowledge_resource, labeling_function, runtime_config
from labeling.runtime.config import ENVIRONMENT_VARIABLE
from labeling.runtime.errors import NON_RETRYABLE_ERRORS
from labeling.runtime.ground_truth import REQUEST_KEYS
from labeling.runtime.rounds import FindCursor, WriteCursor
from shared.building_blocks import (
    ServiceLogRetention,
    grant_key_by_alias,
    grant_publish_by_name,
    log_retention,
    workflow_state_machine,
)
from shared.config import AppName, Settings
from shared.names import LABELING_JOBS_PREFIX, RAW_IMAGE_PREFIX, ResourceNames

APP: AppName = "labeling"
LABELING_JOB_SYNC = "arn:aws:states:::sagemaker:createLabelingJob.sync"
# Step Functions manages an EventBridge rule in the account to learn when a labeling job ends (.sync).
# Its documented siblings are StepFunctionsGetEventsForSageMaker{Training,Transform,...}JobsRule; the
# labeling one is not documented by name, so the grant covers Step Functions' SageMaker rules only.
LABELING_JOB_EVENTS_RULES = "StepFunctionsGetEventsForSageMaker*"
SAGEMAKER_API_ERRORS = ["SageMaker.AmazonSageMakerException"]
# What the labeling job's execution role needs on the KMS key that encrypts the job's output (key policy of
# "Encrypt Output Data using KMS" in the Ground Truth guide; GenerateDataKey* and ReEncrypt* spelled out).
GROUND_TRUTH_KEY_ACTIONS = (
    "kms:Encrypt",
    "kms:Decrypt",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:GenerateDataKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
)
FAILURE_ERROR = "LabelingRoundFailed"


class LabelingWorkflow(Construct):
    """The state machine of a labeling round, its functions and the role Ground Truth works with."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.settings = settings
        self.names = names
        self.state_machine_name = names.workflow_state_machine(APP)
        self.ground_truth_role = self._ground_truth_role(stack)
        # Ground Truth's own log group of the labeling jobs never expires unless told to.
        self.job_log_retention = ServiceLogRetention(
            self,
            "LabelingJobLogRetention",
            log_group_names=["/aws/sagemaker/LabelingJobs"],
            retention_days=settings.toolchain.log_retention_days,
        )
        environment = {
            ENVIRONMENT_VARIABLE: runtime_config(
                settings,
                names,
                ground_truth_role_arn=self.ground_truth_role.role_arn,
                # Ground Truth encrypts its output with the data key, named by its alias (the key is the data stack's)
                output_kms_key=stack.format_arn(
                    service="kms", resource="alias", resource_name=names.data_key_alias.removeprefix("alias/")
                ),
            ).to_json()
        }

        def function(construct_id: str, handler: str, description: str, minutes: int, memory: int) -> lambda_.Function:
            return labeling_function(
                self,
                construct_id,
                handler=handler,
                description=description,
                environment=environment,
                settings=settings,
                timeout=cdk.Duration.minutes(minutes),
                memory_size=memory,
            )

        self.start_round = function(
            "StartRoundFunction", "start_round", "Names a labeling round; refuses a second one", 1, 256
        )
        self.find_unlabeled = function(
            "FindUnlabeledFunction", "find_unlabeled", "Lists raw images without an approved label into S3", 15, 1024
        )
        self.prepare_labeling = function(
            "PrepareLabelingJobFunction",
            "prepare_labeling",
            "Checks images and prepares the bounding-box job",
            15,
            1024,
        )
        self.prepare_review = function(
            "PrepareReviewJobFunction",
            "prepare_review",
            "Checks the bounding-box output and prepares the review job",
            10,
            1024,
        )
        self.write_labels = function(
            "WriteLabelsFunction", "write_labels", "Writes the reviewed labels to the label feature group", 15, 1024
        )
        self._grant_functions(stack)
        availability = settings.labeling.task_availability_lifetime_seconds
        job_timeout = cdk.Duration.seconds(availability + 86_400)
        self.state_machine = workflow_state_machine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            definition=self._definition(stack, job_timeout),
            # two jobs, each bounded by its tasks' availability, and a day for the rest
            timeout=cdk.Duration.seconds(2 * job_timeout.to_seconds() + 86_400),
            log_retention=log_retention(settings.toolchain.log_retention_days),
        )
        self._grant_state_machine(stack)

    # -- roles -------------------------------------------------------------------------------------
    def _ground_truth_role(self, stack: cdk.Stack) -> iam.Role:
        names = self.names
        role = iam.Role(
            self,
            "GroundTruthRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="SageMaker Ground Truth runs the labeling app's jobs with this role",
        )
        bucket_arn = stack.format_arn(service="s3", region="", account="", resource=names.data_bucket)
        raw_objects = object_arn(stack, names.data_bucket, f"{RAW_IMAGE_PREFIX}*")
        job_objects = object_arn(stack, names.data_bucket, f"{LABELING_JOBS_PREFIX}*")
        log_group = stack.format_arn(
            service="logs",
            resource="log-group",
            resource_name="/aws/sagemaker/LabelingJobs:*",
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )
        for statement in (
            iam.PolicyStatement(actions=["s3:ListBucket", "s3:GetBucketLocation"], resources=[bucket_arn]),
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[raw_objects, job_objects]),
            iam.PolicyStatement(actions=["s3:PutObject", "s3:AbortMultipartUpload"], resources=[job_objects]),
            iam.PolicyStatement(
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
                resources=[log_group],
            ),
            # Ground Truth publishes its job metrics under /aws/sagemaker/LabelingJobs: SageMaker's namespaces only.
            iam.PolicyStatement(
                actions=["cloudwatch:PutMetricData"],
                resources=["*"],
                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            ),
        ):
            role.add_to_policy(statement)
        # Ground Truth encrypts each job's output with the data key (OutputConfig.KmsKeyId) and needs on it what
        # "Encrypt Output Data and Storage Volume with AWS KMS" (SageMaker developer guide) lists for the
        # execution role (Encrypt and DescribeKey included), not only Decrypt and GenerateDataKey.
        grant_key_by_alias(role, alias=names.data_key_alias, stack=stack, actions=GROUND_TRUTH_KEY_ACTIONS)
        acknowledge_resource(role, raw_objects, "Ground Truth shows workers any raw image of a job's manifest.")
        acknowledge_resource(
            role, job_objects, "Ground Truth reads manifests and templates, writes outputs of its jobs."
        )
        acknowledge_resource(role, log_group, "Log streams of Ground Truth's own log group for labeling jobs.")
        acknowledge_resource(
            role, "*", "cloudwatch:PutMetricData supports no resource-level permissions; SageMaker namespaces only."
        )
        return role

    def _grant_functions(self, stack: cdk.Stack) -> None:
        names = self.names
        bucket_arn = stack.format_arn(service="s3", region="", account="", resource=names.data_bucket)
        raw_objects = object_arn(stack, names.data_bucket, f"{RAW_IMAGE_PREFIX}*")
        job_objects = object_arn(stack, names.data_bucket, f"{LABELING_JOBS_PREFIX}*")
        feature_group = feature_group_arn(stack, names)
        state_machine_arn = stack.format_arn(
            service="states",
            resource="stateMachine",
            resource_name=self.state_machine_name,
            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
        )

        def list_under(*prefixes: str) -> iam.PolicyStatement:
            return iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}},
            )

        self.start_round.add_to_role_policy(
            iam.PolicyStatement(actions=["states:ListExecutions"], resources=[state_machine_arn])
        )
        grants = {
            self.find_unlabeled: [
                list_under(RAW_IMAGE_PREFIX, LABELING_JOBS_PREFIX),
                iam.PolicyStatement(actions=["s3:PutObject"], resources=[job_objects]),
                iam.PolicyStatement(actions=["sagemaker:BatchGetRecord"], resources=[feature_group]),
            ],
            self.prepare_labeling: [
                list_under(RAW_IMAGE_PREFIX, LABELING_JOBS_PREFIX),
                iam.PolicyStatement(actions=["s3:GetObject"], resources=[raw_objects, job_objects]),
                iam.PolicyStatement(actions=["s3:PutObject"], resources=[job_objects]),
            ],
            self.prepare_review: [
                list_under(LABELING_JOBS_PREFIX),
                iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[job_objects]),
            ],
            self.write_labels: [
                list_under(LABELING_JOBS_PREFIX),
                iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[job_objects]),
                iam.PolicyStatement(
                    actions=["sagemaker:BatchGetRecord", "sagemaker:PutRecord"], resources=[feature_group]
                ),
            ],
        }
        for function, statements in grants.items():
            for statement in statements:
                function.add_to_role_policy(statement)
            # S3 objects and the online store are encrypted with the data key (owned by the data stack).
            grant_key_by_alias(
                function, alias=names.data_key_alias, stack=stack, actions=["kms:Decrypt", "kms:GenerateDataKey"]
            )
            role = function.role
            assert role is not None
            acknowledge_resource(role, job_objects, "This round's job files under the labeling-jobs/ prefix.")
            if function is self.prepare_labeling:
                acknowledge_resource(role, raw_objects, "Reads the header of each candidate raw image (ranged GET).")

    def _grant_state_machine(self, stack: cdk.Stack) -> None:
        names = self.names
        jobs = stack.format_arn(service="sagemaker", resource="labeling-job", resource_name=f"{names.prefix}-*")
        machine = self.state_machine
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=[
                    "sagemaker:CreateLabelingJob",
                    "sagemaker:DescribeLabelingJob",
                    "sagemaker:StopLabelingJob",
                    "sagemaker:ListTags",
                ],
                resources=[jobs],
            )
        )
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.ground_truth_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            )
        )
        managed_rules = stack.format_arn(service="events", resource="rule", resource_name=LABELING_JOB_EVENTS_RULES)
        machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["events:PutTargets", "events:PutRule", "events:DescribeRule"], resources=[managed_rules]
            )
        )
        acknowledge_resource(
            machine.role,
            managed_rules,
            "The .sync integration's managed rule for labeling jobs; AWS documents only its siblings' names "
            "(StepFunctionsGetEventsForSageMaker<Kind>JobsRule), so the prefix of those rules is granted.",
        )
        grant_publish_by_name(
            machine,
            topic_name=names.notification_topic(APP),
            key_alias=names.notification_key_alias(APP),
            stack=stack,
        )
        acknowledge_resource(machine.role, jobs, "Labeling jobs of this app; each round names its jobs <prefix>-....")
        for function in (
            self.start_round,
            self.find_unlabeled,
            self.prepare_labeling,
            self.prepare_review,
            self.write_labels,
        ):
            acknowledge_resource(
                machine.role,
                f"{function.function_arn}:*",
                "Versions of a function of this workflow (CDK's invoke grant).",
            )

    # -- definition ----------------------------------------------------------------------------------
    def _lambda_step(
        self, construct_id: str, function: lambda_.IFunction, payload: dict[str, object], result_path: str, comment: str
    ) -> tasks.LambdaInvoke:
        return tasks.LambdaInvoke(
            self,
            construct_id,
            lambda_function=function,
            payload=sfn.TaskInput.from_object(payload),
            payload_response_only=True,
            retry_on_service_exceptions=True,
            result_path=result_path,
            comment=comment,
        )

    def _labeling_job(
        self, construct_id: str, request_path: str, result_path: str, timeout: cdk.Duration, comment: str
    ) -> sfn.CustomState:
        stack = cdk.Stack.of(self)
        return sfn.CustomState(
            self,
            construct_id,
            state_json={
                "Type": "Task",
                "Comment": comment,
                "Resource": LABELING_JOB_SYNC.replace("arn:aws:", f"arn:{stack.partition}:"),
                "Parameters": {f"{key}.$": f"{request_path}.{key}" for key in REQUEST_KEYS},
                "ResultSelector": {
                    "name.$": "$.LabelingJobName",
                    "status.$": "$.LabelingJobStatus",
                    "counters.$": "$.LabelCounters",
                    "output.$": "$.LabelingJobOutput.OutputDatasetS3Uri",
                },
                "ResultPath": result_path,
                "TimeoutSeconds": int(timeout.to_seconds()),
            },
        )

    def _definition(self, stack: cdk.Stack, job_timeout: cdk.Duration) -> sfn.IChainable:
        names = self.names
        describe_failure = sfn.Pass(
            self,
            "DescribeFailure",
            comment="One line for the execution's failure cause: the error and its cause",
            parameters={
                "cause": sfn.JsonPath.format(
                    "{}: {}", sfn.JsonPath.string_at("$.error.Error"), sfn.JsonPath.string_at("$.error.Cause")
                )
            },
        )
        describe_failure.next(sfn.Fail(self, "RoundFailed", error=FAILURE_ERROR, cause_path="$.cause"))
        topic = sns.Topic.from_topic_arn(
            self, "NotificationTopic", stack.format_arn(service="sns", resource=names.notification_topic(APP))
        )
        notify = tasks.SnsPublish(
            self,
            "NotifyFailure",
            topic=topic,
            subject="Labeling round failed",
            message=sfn.TaskInput.from_text(
                sfn.JsonPath.format(
                    "Labeling round {} failed. Error: {}. Cause: {}",
                    sfn.JsonPath.execution_id,
                    sfn.JsonPath.string_at("$.error.Error"),
                    sfn.JsonPath.string_at("$.error.Cause"),
                )
            ),
            result_path=sfn.JsonPath.DISCARD,
            comment="Tells the labeling team which execution failed and why",
        )
        notify.add_retry(
            errors=["States.ALL"],
            interval=cdk.Duration.seconds(2),
            max_attempts=3,
            backoff_rate=2.0,
            jitter_strategy=sfn.JitterType.FULL,
        )
        notify.add_catch(describe_failure, errors=["States.ALL"], result_path="$.notify_error")
        notify.next(describe_failure)

        def guard(state: tasks.LambdaInvoke | sfn.CustomState, *, sagemaker: bool = False) -> None:
            if sagemaker:
                state.add_retry(
                    errors=SAGEMAKER_API_ERRORS,
                    interval=cdk.Duration.seconds(10),
                    max_attempts=3,
                    backoff_rate=2.0,
                    jitter_strategy=sfn.JitterType.FULL,
                )
            else:
                state.add_retry(errors=list(NON_RETRYABLE_ERRORS), max_attempts=0)
                state.add_retry(
                    errors=["States.ALL"],
                    interval=cdk.Duration.seconds(10),
                    max_attempts=3,
                    backoff_rate=2.0,
                    max_delay=cdk.Duration.minutes(2),
                    jitter_strategy=sfn.JitterType.FULL,
                )
            state.add_catch(notify, errors=["States.ALL"], result_path="$.error")

        run = sfn.JsonPath.object_at("$.run")
        start = self._lambda_step(
            "StartRound",
            self.start_round,
            {
                "execution_arn": sfn.JsonPath.execution_id,
                "start_time": sfn.JsonPath.execution_start_time,
                "state_machine_arn": sfn.JsonPath.state_machine_id,
            },
            "$.run",
            "Refuses to run beside another round; names the round and its jobs",
        )
        init_listing = sfn.Pass(
            self, "InitListing", result=sfn.Result.from_object(FindCursor().to_json()), result_path="$.find"
        )
        find = self._lambda_step(
            "FindUnlabeled",
            self.find_unlabeled,
            {"run": run, "cursor": sfn.JsonPath.object_at("$.find")},
            "$.find",
            "Lists raw images page by page; writes those without an approved label to S3",
        )
        prepare_labeling = self._lambda_step(
            "PrepareLabelingJob",
            self.prepare_labeling,
            {"run": run},
            "$.labeling",
            "Checks the candidates, writes the input manifest and worker files, builds the job request",
        )
        label_boxes = self._labeling_job(
            "LabelBoxes",
            "$.labeling.request",
            "$.boxes_job",
            job_timeout,
            "Ground Truth bounding-box job (waits for it)",
        )
        prepare_review = self._lambda_step(
            "PrepareReviewJob",
            self.prepare_review,
            {"run": run, "boxes_output": sfn.JsonPath.string_at("$.boxes_job.output")},
            "$.review",
            "Checks the bounding-box output; builds the review job over the boxed images",
        )
        review_boxes = self._labeling_job(
            "ReviewBoxes", "$.review.request", "$.review_job", job_timeout, "Ground Truth review job (waits for it)"
        )
        init_writing = sfn.Pass(
            self, "InitWriting", result=sfn.Result.from_object(WriteCursor().to_json()), result_path="$.write"
        )
        write = self._lambda_step(
            "WriteLabels",
            self.write_labels,
            {
                "run": run,
                "review_output": sfn.JsonPath.string_at("$.review_job.output"),
                "cursor": sfn.JsonPath.object_at("$.write"),
            },
            "$.write",
            "Writes the reviewed labels to the feature group in idempotent batches",
        )
        for state in (start, find, prepare_labeling, prepare_review, write):
            guard(state)
        for job in (label_boxes, review_boxes):
            guard(job, sagemaker=True)

        nothing = sfn.Succeed(
            self, "NothingToLabel", comment="Every image has an approved label (or none can be labeled)"
        )
        summarize = sfn.Pass(
            self,
            "Summarize",
            parameters={
                "round": sfn.JsonPath.string_at("$.run.id"),
                "listing": sfn.JsonPath.object_at("$.find"),
                "labeling_job": sfn.JsonPath.string_at("$.boxes_job.name"),
                "review_job": sfn.JsonPath.string_at("$.review_job.name"),
                "labels": sfn.JsonPath.object_at("$.write"),
                "reports": sfn.JsonPath.string_at("$.labeling.reports"),
            },
        )
        summarize.next(sfn.Succeed(self, "RoundComplete"))

        write_loop = write.next(
            sfn.Choice(self, "AllLabelsWritten?")
            .when(sfn.Condition.boolean_equals("$.write.done", True), summarize)
            .otherwise(write)
        )
        review_chain = prepare_review.next(review_boxes).next(init_writing).next(write_loop)
        labeling_chain = prepare_labeling.next(
            sfn.Choice(self, "AnyImageToLabel?")
            .when(sfn.Condition.number_equals("$.labeling.images", 0), nothing)
            .otherwise(label_boxes.next(review_chain))
        )
        listing_loop = find.next(
            sfn.Choice(self, "ListingDone?")
            .when(
                sfn.Condition.and_(
                    sfn.Condition.boolean_equals("$.find.done", True),
                    sfn.Condition.number_equals("$.find.candidates", 0),
                ),
                nothing,
            )
            .when(sfn.Condition.boolean_equals("$.find.done", True), labeling_chain)
            .otherwise(find)
        )
        return start.next(init_listing).next(listing_loop)
