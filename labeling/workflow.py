"""The labeling round: a Step Functions state machine over small Lambda steps and the labeling backend.

    StartRound ─▶ FindUnlabeled ⟲ ─▶ (none) ─▶ NothingToLabel
                                 └─▶ SelectImages ─▶ (none decodable) ─▶ NothingToLabel
                                      └─▶ PreLabel ⟲ (with labeling.pre_labels) ─▶ the backend:

    ground_truth:  PrepareLabelingJob ─▶ LabelBoxes (.sync) ─▶ PrepareReviewJob ─▶ ReviewBoxes (.sync)
    label_studio:  PrepareLabelingTasks ─▶ WaitForLabelers ⟲ CheckLabeling ─▶ PrepareReviewTasks
                   ─▶ WaitForReviewers ⟲ CheckReview
                   ─▶ WriteLabels ⟲ ─▶ Summarize ─▶ RoundComplete

Both backends wait without any running function: Ground Truth through the optimized `.sync`
integration, Label Studio in Wait states between short progress checks.

Every task retries transient errors with the apps' one policy (`shared.workflow_states`), fails at once on
the errors that retrying cannot fix (`labeling.runtime.errors.NON_RETRYABLE_ERRORS`), and routes any failure
to NotifyFailure (the app's SNS topic, found by name) and then RoundFailed (with the error and its cause).
The Ground Truth jobs run with the optimized `.sync` integration: Step Functions waits for them without
any running Lambda.
Lists of images never enter the state: they travel through S3, and the loops carry small cursors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from labeling import APP
from labeling.data_store import feature_group_arn, object_arn
from labeling.functions import (
    label_studio_endpoint,
    labeling_function,
    pre_label_bundle_dir,
    runtime_config,
)
from labeling.runtime.config import ENVIRONMENT_VARIABLE
from labeling.runtime.errors import NON_RETRYABLE_ERRORS
from labeling.runtime.ground_truth import REQUEST_KEYS
from labeling.runtime.pre_labels import PreLabelCursor
from labeling.runtime.rounds import FindCursor, WriteCursor
from shared.building_blocks import (
    ServiceLogRetention,
    grant_key_by_alias,
    grant_publish_by_name,
    log_retention,
    workflow_state_machine,
)
from shared.config import Settings
from shared.guardrails import IAM5, acknowledge, allow, finding
from shared.names import LABELING_JOBS_PREFIX, RAW_IMAGE_PREFIX, ResourceNames
from shared.workflow_states import FailurePath, app_topic, lambda_step, retry

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
_Grant = Callable[[lambda_.Function], object]  # one statement, added to a function's role


class LabelingWorkflow(Construct):
    """The state machine of a labeling round, its functions and (Ground Truth) the role its jobs run with."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, names: ResourceNames) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.settings = settings
        self.names = names
        self.backend = settings.labeling.backend
        self.state_machine_name = names.workflow_state_machine(APP)
        self.ground_truth_role = self._ground_truth_role(stack) if self.backend == "ground_truth" else None
        # Ground Truth's own log group of the labeling jobs never expires unless told to.
        self.job_log_retention = (
            ServiceLogRetention(
                self,
                "LabelingJobLogRetention",
                log_group_names=["/aws/sagemaker/LabelingJobs"],
                retention_days=settings.toolchain.log_retention_days,
            )
            if self.backend == "ground_truth"
            else None
        )
        environment = {
            ENVIRONMENT_VARIABLE: runtime_config(
                settings,
                names,
                ground_truth_role_arn=self.ground_truth_role.role_arn if self.ground_truth_role else "",
                # Ground Truth encrypts its output with the data key, named by its alias (the key is the data stack's)
                output_kms_key=stack.format_arn(
                    service="kms", resource="alias", resource_name=names.data_key_alias.removeprefix("alias/")
                )
                if self.ground_truth_role
                else "",
            ).to_json()
        }

        def function(
            construct_id: str, handler: str, description: str, minutes: int, memory: int, **options: Any
        ) -> lambda_.Function:
            return labeling_function(
                self,
                construct_id,
                handler=handler,
                description=description,
                environment=environment,
                settings=settings,
                timeout=cdk.Duration.minutes(minutes),
                memory_size=memory,
                **options,
            )

        self.start_round = function(
            "StartRoundFunction", "start_round", "Names a labeling round; refuses a second one", 1, 256
        )
        self.find_unlabeled = function(
            "FindUnlabeledFunction", "find_unlabeled", "Lists raw images without an approved label into S3", 15, 1024
        )
        self.select_images = function(
            "SelectImagesFunction",
            "select_images",
            "Spends the round's budget on the most informative decodable images",
            15,
            1024,
        )
        self.pre_label = (
            function(
                "PreLabelFunction",
                "pre_label",
                "Runs the newest approved model (the device's detector) over the selected images",
                15,
                3008,
                code_dir=pre_label_bundle_dir(),
            )
            if settings.labeling.pre_labels
            else None
        )
        self.backend_functions: dict[str, lambda_.Function] = {}
        if self.backend == "ground_truth":
            for construct, handler, description, minutes in (
                ("PrepareLabelingJobFunction", "prepare_labeling", "Prepares the bounding-box (or adjustment) job", 10),
                (
                    "PrepareReviewJobFunction",
                    "prepare_review",
                    "Checks the first job's output; prepares the review",
                    10,
                ),
                ("WriteLabelsFunction", "write_labels", "Writes the reviewed labels to the label feature group", 15),
            ):
                self.backend_functions[handler] = function(construct, handler, description, minutes, 1024)
        else:
            for construct, handler, description, minutes in (
                (
                    "PrepareLabelingTasksFunction",
                    "prepare_label_studio_tasks",
                    "Creates the round's Label Studio tasks",
                    15,
                ),
                ("LabelStudioProgressFunction", "label_studio_progress", "Counts the round's answered tasks", 5),
                ("PrepareReviewTasksFunction", "prepare_label_studio_review", "Sends answered tasks to review", 15),
                (
                    "WriteLabelsFunction",
                    "write_label_studio_labels",
                    "Writes the reviewed labels to the feature group",
                    15,
                ),
            ):
                self.backend_functions[handler] = function(construct, handler, description, minutes, 1024)
        self._grant_functions(stack)
        availability = settings.labeling.task_availability_lifetime_seconds
        if self.backend == "ground_truth":
            phase_timeout = cdk.Duration.seconds(availability + 86_400)
        else:
            assert settings.labeling.label_studio is not None
            phase_timeout = cdk.Duration.seconds(
                availability + 2 * settings.labeling.label_studio.poll_interval_seconds
            )
        self.state_machine = workflow_state_machine(
            self,
            "StateMachine",
            state_machine_name=self.state_machine_name,
            definition=self._definition(phase_timeout),
            # two phases, each bounded by its tasks' availability, and a day for the rest
            timeout=cdk.Duration.seconds(2 * phase_timeout.to_seconds() + 86_400),
            log_retention=log_retention(settings.toolchain.log_retention_days),
        )
        self._grant_state_machine(stack)

    @property
    def functions(self) -> list[lambda_.Function]:
        found = [self.start_round, self.find_unlabeled, self.select_images]
        if self.pre_label is not None:
            found.append(self.pre_label)
        return found + list(self.backend_functions.values())

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
        allow(role, ["s3:ListBucket", "s3:GetBucketLocation"], [bucket_arn])
        allow(
            role,
            ["s3:GetObject"],
            [raw_objects, job_objects],
            why="Ground Truth shows workers any raw image of a job's manifest, reads manifests and templates.",
        )
        allow(
            role,
            ["s3:PutObject", "s3:AbortMultipartUpload"],
            [job_objects],
            why="Ground Truth reads manifests and templates, writes outputs of its jobs.",
        )
        allow(
            role,
            ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
            [log_group],
            why="Log streams of Ground Truth's own log group for labeling jobs.",
        )
        # Ground Truth publishes its job metrics under /aws/sagemaker/LabelingJobs: SageMaker's namespaces only.
        allow(
            role,
            ["cloudwatch:PutMetricData"],
            ["*"],
            conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}},
            why="cloudwatch:PutMetricData supports no resource-level permissions; SageMaker namespaces only.",
        )
        # Ground Truth encrypts each job's output with the data key (OutputConfig.KmsKeyId) and needs on it what
        # "Encrypt Output Data and Storage Volume with AWS KMS" (SageMaker developer guide) lists for the
        # execution role (Encrypt and DescribeKey included), not only Decrypt and GenerateDataKey.
        grant_key_by_alias(role, alias=names.data_key_alias, stack=stack, actions=GROUND_TRUTH_KEY_ACTIONS)
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

        def statement(actions: list[str], resources: list[str], **options: Any) -> _Grant:
            return lambda function: allow(function, actions, resources, **options)

        def list_under(*prefixes: str) -> _Grant:
            return statement(
                ["s3:ListBucket"],
                [bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in prefixes]}},
            )

        job_files = [
            list_under(LABELING_JOBS_PREFIX),
            statement(
                ["s3:GetObject", "s3:PutObject"],
                [job_objects],
                why="This round's job files under the labeling-jobs/ prefix.",
            ),
        ]
        read_raw = statement(
            ["s3:GetObject"], [raw_objects], why="Reads raw images: headers, device metadata, pixels for pre-labels."
        )
        read_labels = statement(["sagemaker:BatchGetRecord"], [feature_group])
        write_labels = statement(["sagemaker:BatchGetRecord", "sagemaker:PutRecord"], [feature_group])
        allow(self.start_round, ["states:ListExecutions"], [state_machine_arn])
        grants: dict[lambda_.Function, list[_Grant]] = {
            # HeadObject of device uploads (their recorded uncertainty) needs s3:GetObject
            self.find_unlabeled: [
                list_under(RAW_IMAGE_PREFIX, LABELING_JOBS_PREFIX),
                read_raw,
                *job_files,
                read_labels,
            ],
            self.select_images: [list_under(RAW_IMAGE_PREFIX, LABELING_JOBS_PREFIX), read_raw, *job_files],
        }
        if self.pre_label is not None:
            grants[self.pre_label] = [read_raw, *job_files]
            self._grant_model_registry(stack, self.pre_label)
        functions = self.backend_functions
        if self.backend == "ground_truth":
            grants[functions["prepare_labeling"]] = list(job_files)
            grants[functions["prepare_review"]] = list(job_files)
            grants[functions["write_labels"]] = [*job_files, write_labels]
        else:
            grants[functions["prepare_label_studio_tasks"]] = [*job_files, read_labels]
            grants[functions["label_studio_progress"]] = []
            grants[functions["prepare_label_studio_review"]] = list(job_files)
            grants[functions["write_label_studio_labels"]] = [*job_files, write_labels]
            for function in functions.values():
                self._grant_api_token(stack, function)
        for function, function_grants in grants.items():
            for grant in function_grants:
                grant(function)
            if function_grants:
                # S3 objects and the online store are encrypted with the data key (owned by the data stack).
                grant_key_by_alias(
                    function, alias=names.data_key_alias, stack=stack, actions=["kms:Decrypt", "kms:GenerateDataKey"]
                )

    def _grant_model_registry(self, stack: cdk.Stack, function: lambda_.Function) -> None:
        """The pre-label function reads the training app's newest approved model (by name: group, bucket, key)."""
        names = self.names
        packages = stack.format_arn(
            service="sagemaker", resource="model-package", resource_name=f"{names.model_package_group.lower()}/*"
        )
        archives = object_arn(stack, names.model_bucket, "*")
        allow(
            function,
            ["sagemaker:ListModelPackages"],
            ["*"],
            why="sagemaker:ListModelPackages supports no resource-level permission.",
        )
        allow(
            function,
            ["sagemaker:DescribeModelPackage"],
            [packages],
            why="Versions of the training app's model package group (by its name).",
        )
        allow(
            function,
            ["s3:GetObject"],
            [archives],
            why="Model archives in the training app's model bucket (by its name).",
        )
        grant_key_by_alias(function, alias=names.model_key_alias, stack=stack, actions=["kms:Decrypt"])

    def _grant_api_token(self, stack: cdk.Stack, function: lambda_.Function) -> None:
        """Read the Label Studio API token (a secret named in config.yaml, or the deployed server's)."""
        _, secret = label_studio_endpoint(self.settings, self.names)
        if secret.startswith("arn:"):
            resource = secret
        else:
            # A secret's ARN ends in -<6 random characters>: granted by name with that suffix's wildcard.
            resource = stack.format_arn(
                service="secretsmanager",
                resource="secret",
                resource_name=f"{secret}-??????",
                arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
            )
        allow(
            function,
            ["secretsmanager:GetSecretValue"],
            [resource],
            why="The Label Studio API token secret, by name (its ARN ends randomly).",
        )

    def _grant_state_machine(self, stack: cdk.Stack) -> None:
        names = self.names
        machine = self.state_machine
        grant_publish_by_name(
            machine,
            topic_name=names.notification_topic(APP),
            key_alias=names.notification_key_alias(APP),
            stack=stack,
        )
        for function in self.functions:
            acknowledge(
                machine.role,
                IAM5,
                "Versions of a function of this workflow (CDK's invoke grant).",
                finding=finding(machine, "Resource", f"{function.function_arn}:*"),
            )
        if self.ground_truth_role is None:
            return
        jobs = stack.format_arn(service="sagemaker", resource="labeling-job", resource_name=f"{names.prefix}-*")
        allow(
            machine,
            [
                "sagemaker:CreateLabelingJob",
                "sagemaker:DescribeLabelingJob",
                "sagemaker:StopLabelingJob",
                "sagemaker:ListTags",
            ],
            [jobs],
            why="Labeling jobs of this app; each round names its jobs <prefix>-....",
        )
        allow(
            machine,
            ["iam:PassRole"],
            [self.ground_truth_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
        )
        managed_rules = stack.format_arn(service="events", resource="rule", resource_name=LABELING_JOB_EVENTS_RULES)
        allow(
            machine,
            ["events:PutTargets", "events:PutRule", "events:DescribeRule"],
            [managed_rules],
            why="The .sync integration's managed rule for labeling jobs; AWS documents only its siblings' names "
            "(StepFunctionsGetEventsForSageMaker<Kind>JobsRule), so the prefix of those rules is granted.",
        )

    # -- definition ----------------------------------------------------------------------------------
    def _lambda_step(
        self, construct_id: str, function: lambda_.IFunction, payload: dict[str, object], result_path: str, comment: str
    ) -> tasks.LambdaInvoke:
        return lambda_step(
            self,
            construct_id,
            function=function,
            payload=payload,
            result_path=result_path,
            non_retryable=NON_RETRYABLE_ERRORS,
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

    def _definition(self, job_timeout: cdk.Duration) -> sfn.IChainable:
        failure = FailurePath(
            self,
            topic=app_topic(self, self.names.notification_topic(APP)),
            subject="Labeling round failed",
            title="Labeling round",
            fail_state="RoundFailed",
        )

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
        select = self._lambda_step(
            "SelectImages",
            self.select_images,
            {"run": run},
            "$.selection",
            "Spends the round's budget: most uncertain first, then newest, fair across devices; checks each image",
        )
        steps: list[tasks.LambdaInvoke] = [start, find, select]
        nothing = sfn.Succeed(
            self, "NothingToLabel", comment="Every image has an approved label (or none can be labeled)"
        )
        summarize = sfn.Pass(self, "Summarize", parameters=self._summary())
        summarize.next(sfn.Succeed(self, "RoundComplete"))
        if self.backend == "ground_truth":
            labeling = self._ground_truth_chain(job_timeout, failure, steps, done=summarize)
        else:
            labeling = self._label_studio_chain(steps, done=summarize)
        after_selection: sfn.IChainable = labeling
        if self.pre_label is not None:
            init_pre_labels = sfn.Pass(
                self,
                "InitPreLabels",
                result=sfn.Result.from_object(PreLabelCursor().to_json()),
                result_path="$.pre_labels",
            )
            pre_label = self._lambda_step(
                "PreLabel",
                self.pre_label,
                {"run": run, "cursor": sfn.JsonPath.object_at("$.pre_labels")},
                "$.pre_labels",
                "The newest approved model's boxes for the selected images (none without an approved model)",
            )
            steps.append(pre_label)
            after_selection = init_pre_labels.next(
                pre_label.next(
                    sfn.Choice(self, "AllPreLabeled?")
                    .when(sfn.Condition.boolean_equals("$.pre_labels.done", True), labeling)
                    .otherwise(pre_label)
                )
            )
        failure.guard(*steps)
        selection = select.next(
            sfn.Choice(self, "AnyImageToLabel?")
            .when(sfn.Condition.number_equals("$.selection.images", 0), nothing)
            .otherwise(after_selection)
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
            .when(sfn.Condition.boolean_equals("$.find.done", True), selection)
            .otherwise(find)
        )
        return start.next(init_listing).next(listing_loop)

    def _summary(self) -> dict[str, Any]:
        """The execution's output: what the round did, with links to its jobs or Label Studio views."""
        common = {
            "round": sfn.JsonPath.string_at("$.run.id"),
            "listing": sfn.JsonPath.object_at("$.find"),
            "selection": sfn.JsonPath.object_at("$.selection"),
            "labels": sfn.JsonPath.object_at("$.write"),
            "reports": sfn.JsonPath.string_at("$.selection.reports"),
        }
        if self.pre_label is not None:
            common["pre_labels"] = sfn.JsonPath.object_at("$.pre_labels")
        if self.backend == "ground_truth":
            return {
                **common,
                "labeling_job": sfn.JsonPath.string_at("$.boxes_job.name"),
                "review_job": sfn.JsonPath.string_at("$.review_job.name"),
            }
        return {
            **common,
            "labeling_tasks": sfn.JsonPath.string_at("$.labeling.url"),
            "review_tasks": sfn.JsonPath.string_at("$.review.url"),
        }

    def _write_loop(
        self,
        function: lambda_.IFunction,
        payload: dict[str, Any],
        steps: list[tasks.LambdaInvoke],
        *,
        done: sfn.IChainable,
    ) -> sfn.IChainable:
        """InitWriting ─▶ WriteLabels ⟲ ─▶ `done`."""
        init_writing = sfn.Pass(
            self, "InitWriting", result=sfn.Result.from_object(WriteCursor().to_json()), result_path="$.write"
        )
        write = self._lambda_step(
            "WriteLabels",
            function,
            {**payload, "run": sfn.JsonPath.object_at("$.run"), "cursor": sfn.JsonPath.object_at("$.write")},
            "$.write",
            "Writes the reviewed labels to the feature group in idempotent batches",
        )
        steps.append(write)
        write.next(
            sfn.Choice(self, "AllLabelsWritten?")
            .when(sfn.Condition.boolean_equals("$.write.done", True), done)
            .otherwise(write)
        )
        return init_writing.next(write)

    def _ground_truth_chain(
        self, job_timeout: cdk.Duration, failure: FailurePath, steps: list[tasks.LambdaInvoke], *, done: sfn.IChainable
    ) -> sfn.IChainable:
        run = sfn.JsonPath.object_at("$.run")
        functions = self.backend_functions
        prepare_labeling = self._lambda_step(
            "PrepareLabelingJob",
            functions["prepare_labeling"],
            {"run": run},
            "$.labeling",
            "Writes the input manifest (with the model's boxes when there are pre-labels) and the job request",
        )
        label_boxes = self._labeling_job(
            "LabelBoxes",
            "$.labeling.request",
            "$.boxes_job",
            job_timeout,
            "Ground Truth bounding-box job, or adjustment of the model's boxes (waits for it)",
        )
        prepare_review = self._lambda_step(
            "PrepareReviewJob",
            functions["prepare_review"],
            {"run": run, "boxes_output": sfn.JsonPath.string_at("$.boxes_job.output")},
            "$.review",
            "Checks the first job's output; builds the review job over the boxed images",
        )
        review_boxes = self._labeling_job(
            "ReviewBoxes", "$.review.request", "$.review_job", job_timeout, "Ground Truth review job (waits for it)"
        )
        steps.extend([prepare_labeling, prepare_review])
        for job in (label_boxes, review_boxes):
            retry(job, SAGEMAKER_API_ERRORS)  # the .sync integration's own calls; the job itself is not retried
        failure.guard(label_boxes, review_boxes)
        writing = self._write_loop(
            functions["write_labels"],
            {"review_output": sfn.JsonPath.string_at("$.review_job.output")},
            steps,
            done=done,
        )
        return prepare_labeling.next(label_boxes).next(prepare_review).next(review_boxes).next(writing)

    def _label_studio_chain(self, steps: list[tasks.LambdaInvoke], *, done: sfn.IChainable) -> sfn.IChainable:
        run = sfn.JsonPath.object_at("$.run")
        functions = self.backend_functions
        studio = self.settings.labeling.label_studio
        assert studio is not None
        poll = cdk.Duration.seconds(studio.poll_interval_seconds)
        prepare_tasks = self._lambda_step(
            "PrepareLabelingTasks",
            functions["prepare_label_studio_tasks"],
            {"run": run},
            "$.labeling",
            "Creates the round's tasks (the model's boxes as predictions), takes over live ones, adds the round's view",
        )
        prepare_review = self._lambda_step(
            "PrepareReviewTasks",
            functions["prepare_label_studio_review"],
            {"run": run},
            "$.review",
            "Checks every answered task's boxes; creates review tasks with the labeler's boxes",
        )
        steps.extend([prepare_tasks, prepare_review])

        def wait_loop(phase: str, people: str, source: str, next_state: sfn.IChainable) -> sfn.IChainable:
            wait = sfn.Wait(
                self,
                f"WaitFor{people}",
                time=sfn.WaitTime.duration(poll),
                comment=f"No function runs while {people.lower()} work",
            )
            check = self._lambda_step(
                f"Check{phase}",
                functions["label_studio_progress"],
                {
                    "run": run,
                    "project": sfn.JsonPath.number_at(f"{source}.project"),
                    "deadline": sfn.JsonPath.string_at(f"{source}.deadline"),
                },
                f"$.{phase.lower()}_progress",
                f"Counts the round's answered {phase.lower()} tasks; done when all are, or time is up",
            )
            steps.append(check)
            wait.next(check).next(
                sfn.Choice(self, f"{phase}Done?")
                .when(sfn.Condition.boolean_equals(f"$.{phase.lower()}_progress.done", True), next_state)
                .otherwise(wait)
            )
            return wait

        writing = self._write_loop(functions["write_label_studio_labels"], {}, steps, done=done)
        review_wait = wait_loop("Review", "Reviewers", "$.review", writing)
        labeling_wait = wait_loop("Labeling", "Labelers", "$.labeling", prepare_review.next(review_wait))
        return prepare_tasks.next(labeling_wait)
