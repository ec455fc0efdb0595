"""The CI/CD backbone every app stands on.

* `AppToolchainStack` - the stack a team deploys once by hand (`make deploy APP=...`). It holds the
  app's **asset pipeline** (CDK Pipelines, self-mutating) that tests and synthesizes the app and
  deploys its workflow stage on every push that touches the app or the common code, and when the
  previous app's workflow pipeline succeeds; the app's notification topic; and, for the first app,
  the retraining schedule that starts the chain.
* `WorkflowPipeline` - lives in the app's workflow stack and runs the app's workflow (a Step
  Functions state machine) from CodePipeline, so it can be started alone and succeeds or fails
  with the workflow.

Apps find each other's pipelines by name (`shared.names`), never by reference.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_codebuild as codebuild
from aws_cdk import aws_codecommit as codecommit
from aws_cdk import aws_codepipeline as codepipeline
from aws_cdk import aws_codepipeline_actions as actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import pipelines
from constructs import Construct

from shared.building_blocks import (
    NotificationTopic,
    access_log_bucket,
    encryption_key,
    log_group,
    log_retention,
    pipeline_arn,
    python_function,
    secure_bucket,
)
from shared.code_bundle import code_bundle
from shared.config import APP_NAMES, AppName, Settings
from shared.guardrails import IAM5, acknowledge, allow, checkov_skip, finding
from shared.names import ResourceNames, app_slug, resource_names, upstream_app

REPO_ROOT = Path(__file__).resolve().parent.parent
PIPELINE_STATE_CHANGE = "CodePipeline Pipeline Execution State Change"

# CodePipeline takes at most 8 include and 8 exclude globs per trigger. Everything that is not
# another app's folder (or documentation) is common code, so a new top-level file redeploys every
# app rather than none.
DOCUMENTATION_PATHS: tuple[str, ...] = ("**/*.md", "docs/**", ".ci/**", "tests/e2e/**")

StageFactory = Callable[..., cdk.Stage]


def trigger_paths(app: AppName | str) -> tuple[list[str], list[str]]:
    """(includes, excludes) globs: pushes that change only other apps' files leave `app` alone."""
    others = [other for other in APP_NAMES if other != app]
    excludes = [pattern for other in others for pattern in (f"{other}/**", f"tests/{other}/**")]
    return ["**"], [*excludes, *DOCUMENTATION_PATHS]


def cdk_cli_version(package_json: Path = REPO_ROOT / "package.json") -> str:
    """The CDK CLI version pinned in package.json, so the pipeline runs the CLI the repo tested."""
    manifest = json.loads(package_json.read_text(encoding="utf-8"))
    version = manifest.get("devDependencies", {}).get("aws-cdk")
    if not version or not version[0].isdigit():
        raise ValueError(f"{package_json}: devDependencies.aws-cdk must be an exact version, got {version!r}")
    return str(version)


ASSET_EXECUTION_VARIABLE = "ASSET_PIPELINE_EXECUTION_ID"


def start_workflow_command(*, asset_pipeline: str, workflow_pipeline: str) -> str:
    """The asset pipeline's last step: start the workflow pipeline, unless this very run created it.

    CodePipeline starts a pipeline by itself when it is created; on the first deploy (or after the
    workflow stack was re-created) that run already uses what was just deployed, and a second start
    would run the workflow twice. The step compares the workflow pipeline's creation time with the
    start of this asset pipeline execution (`$ASSET_PIPELINE_EXECUTION_ID`); when it cannot tell, it
    starts the workflow (twice is better than never).
    """
    own_start = (
        f"aws codepipeline list-pipeline-executions --pipeline-name {asset_pipeline} --no-paginate "
        f"--query \"pipelineExecutionSummaries[?pipelineExecutionId=='${ASSET_EXECUTION_VARIABLE}'].startTime | [0]\" "
        "--output text"
    )
    created = f"aws codepipeline get-pipeline --name {workflow_pipeline} --query metadata.created --output text"
    return "\n".join(
        [
            f'started="$({own_start})"',
            f'created="$({created})"',
            'if [ -n "$started" ] && [ "$started" != "None" ] '
            '&& [ "$(date -d "$created" +%s)" -ge "$(date -d "$started" +%s)" ]; then',
            f'  echo "{workflow_pipeline} was created by this deploy ($created) and CodePipeline started it itself"',
            "else",
            f"  aws codepipeline start-pipeline-execution --name {workflow_pipeline}",
            "fi",
        ]
    )


def acknowledge_asset_publishing(pipeline: pipelines.CodePipeline) -> None:
    """Acknowledge the three wildcards of the asset publishing role CDK Pipelines adds when a stage has
    file assets (Lambda code, step code, component artifacts), finding by finding, on this pipeline only.

    They are CDK's own: its per-asset CodeBuild projects get generated names, so their log groups and
    report groups cannot be named in advance, and it writes codebuild:StartBuild/BatchGetBuilds on `*`.
    Only the asset publishing constructs (`Assets/`, where the publishing role lives) are acknowledged:
    a wildcard anywhere else in the pipeline still fails synth.
    """
    assets = pipeline.node.try_find_child("Assets")
    if assets is None:  # no stage of this pipeline has file assets
        return
    stack = cdk.Stack.of(pipeline)
    log_groups = stack.format_arn(
        service="logs",
        resource="log-group",
        resource_name="/aws/codebuild/*",
        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
    )
    report_groups = stack.format_arn(service="codebuild", resource="report-group", resource_name="*")
    for policy in assets.node.find_all():
        if isinstance(policy, iam.CfnPolicy):
            checkov_skip(
                policy,
                "CKV_AWS_111",
                "CDK Pipelines' asset publishing role: CodeBuild and log actions on its generated per-asset "
                "projects (names unknown in advance); acknowledged finding by finding for cdk-nag below.",
            )
    for resource, reason in {
        log_groups: "CDK Pipelines asset publishing: log groups of its per-asset CodeBuild projects (generated names).",
        report_groups: "CDK Pipelines asset publishing: report groups of its per-asset CodeBuild projects.",
        "*": "CDK Pipelines asset publishing: codebuild:StartBuild/StopBuild/BatchGetBuilds as CDK writes them.",
    }.items():
        acknowledge(assets, IAM5, reason, finding=finding(assets, "Resource", resource))


def execution_roles_as_sub(pipeline: codepipeline.Pipeline, stage: cdk.Stage) -> None:
    """Write the change-set actions' CloudFormation execution role ARN as `Fn::Sub`, as cfn-lint (E3703) asks.

    The stage's stacks are deployed into the pipeline's own account and region, so CDK Pipelines writes
    the role of each `<stack>.Prepare` action as an `Fn::Join` of pseudo parameters (with or without an
    environment in config.yaml); the stack synthesizer's ARN template says the same as `Fn::Sub`. A
    stage given an explicit environment has a literal ARN, which is left alone.
    """
    executing = {
        f"{stack.stack_name}.Prepare": stack.synthesizer.cloud_formation_execution_role_arn
        for stack in stage.node.children
        if isinstance(stack, cdk.Stack) and isinstance(stack.synthesizer, cdk.DefaultStackSynthesizer)
    }
    cfn_pipeline = pipeline.node.default_child
    assert isinstance(cfn_pipeline, cdk.CfnResource)
    for stage_index, pipeline_stage in enumerate(pipeline.stages):
        for action_index, action in enumerate(pipeline_stage.actions):
            template = executing.get(action.action_properties.action_name)
            if template is None or "${" not in template:
                continue
            cfn_pipeline.add_property_override(
                f"Stages.{stage_index}.Actions.{action_index}.Configuration.RoleArn", {"Fn::Sub": template}
            )


def allow_connection_use(pipeline: codepipeline.Pipeline, connection_arn: str) -> None:
    """Let the source action of `pipeline` use a connection whose ARN has the `codeconnections` prefix.

    CDK grants `codestar-connections:UseConnection` only, and IAM matches the action's service prefix
    to the resource's: a connection created since July 2024 (`arn:aws:codeconnections:...`) needs
    `codeconnections:UseConnection`, or the source action fails with insufficient permissions.
    """
    if cdk.Token.is_unresolved(connection_arn) or ":codeconnections:" not in connection_arn:
        return
    stage = pipeline.stages[0]
    action_name = stage.actions[0].action_properties.action_name
    action_scope = pipeline.node.find_child(stage.stage_name).node.find_child(action_name)
    role = action_scope.node.find_child("CodePipelineActionRole")
    if not isinstance(role, iam.Role):
        raise TypeError(f"{role.node.path}: expected the role CodePipeline created for the source action")
    allow(role, ["codeconnections:UseConnection"], [connection_arn])


def _source_action(
    scope: Construct, settings: Settings, output: codepipeline.Artifact, *, action_name: str = "Source"
) -> actions.Action:
    """A source action that never starts its pipeline by itself (triggers are added explicitly)."""
    source = settings.source
    if source.provider == "codestar_connection":
        owner, repo = source.repository.split("/", 1)
        return actions.CodeStarConnectionsSourceAction(
            action_name=action_name,
            owner=owner,
            repo=repo,
            branch=source.branch,
            connection_arn=str(source.connection_arn),
            output=output,
            trigger_on_push=False,
        )
    repository = codecommit.Repository.from_repository_name(scope, "Repository", source.repository)
    return actions.CodeCommitSourceAction(
        action_name=action_name,
        repository=repository,
        branch=source.branch,
        output=output,
        trigger=actions.CodeCommitTrigger.NONE,
    )


def _artifact_bucket(scope: Construct, names: ResourceNames, app: AppName, purpose: str) -> s3.Bucket:
    key = encryption_key(
        scope,
        "ArtifactKey",
        alias=f"alias/{names.prefix}-{app_slug(app)}-{purpose}-artifacts",
        description=f"Encrypts the {purpose} pipeline artifacts of {app}",
    )
    logs_bucket = access_log_bucket(scope, "ArtifactAccessLogs", retention_days=90)
    return secure_bucket(
        scope,
        "ArtifactBucket",
        key=key,
        access_logs=logs_bucket,
        retain=False,
        lifecycle_rules=[
            s3.LifecycleRule(
                id="expire-old-artifacts",
                expiration=cdk.Duration.days(90),
                noncurrent_version_expiration=cdk.Duration.days(7),
                abort_incomplete_multipart_upload_after=cdk.Duration.days(1),
            )
        ],
    )


class WorkflowPipeline(Construct):
    """Runs an app's workflow state machine from CodePipeline; succeeds or fails with it.

    Its source stage reads the same repository and branch as the asset pipeline but never starts
    the pipeline: the asset pipeline starts it after a deploy, the previous stage's events and
    people start it by name (`aws codepipeline start-pipeline-execution --name ...`).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        app: AppName,
        state_machine: sfn.IStateMachine,
        workflow_input: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        names = resource_names(settings, account=stack.account, region=stack.region)
        source_output = codepipeline.Artifact("Source")
        self.pipeline = codepipeline.Pipeline(
            self,
            "Pipeline",
            pipeline_name=names.workflow_pipeline(app),
            pipeline_type=codepipeline.PipelineType.V2,
            artifact_bucket=_artifact_bucket(self, names, app, "workflow"),
            restart_execution_on_update=False,
            stages=[
                codepipeline.StageProps(stage_name="Source", actions=[_source_action(self, settings, source_output)]),
                codepipeline.StageProps(
                    stage_name="Workflow",
                    actions=[
                        actions.StepFunctionInvokeAction(
                            action_name="RunWorkflow",
                            state_machine=state_machine,
                            state_machine_input=actions.StateMachineInput.literal(
                                dict(workflow_input or {"trigger": "workflow-pipeline"})
                            ),
                        )
                    ],
                ),
            ],
        )
        if settings.source.provider == "codestar_connection":
            allow_connection_use(self.pipeline, str(settings.source.connection_arn))


class AppToolchainStack(cdk.Stack):
    """One app's asset pipeline, notification topic and event wiring."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        app: AppName,
        stage_factory: StageFactory,
        env: cdk.Environment | None = None,
    ) -> None:
        names = resource_names(settings, account=cdk.Aws.ACCOUNT_ID, region=cdk.Aws.REGION)
        super().__init__(
            scope,
            construct_id,
            env=env,
            stack_name=names.toolchain_stack(app),
            description=f"{settings.project.prefix}: CI/CD of the {app} app (asset pipeline, notifications)",
        )
        self.app_name = app
        self.names = resource_names(settings, account=self.account, region=self.region)
        self.notifications = NotificationTopic(
            self,
            "Notifications",
            topic_name=self.names.notification_topic(app),
            key_alias=self.names.notification_key_alias(app),
            emails=settings.notifications.email_addresses,
            slack=(slack.workspace_id, slack.channel_id) if (slack := settings.notifications.slack) else None,
            alarm_prefix=self.names.alarm_prefix(app),
        )
        self.pipeline = self._asset_pipeline(settings, stage_factory)
        self._add_push_trigger(settings)
        self._notify_failures()
        self._chain_from_upstream()
        if app == "labeling" and settings.retraining.schedule:
            self._retraining_schedule(settings.retraining.schedule)

    # -- asset pipeline -----------------------------------------------------------------------
    def _asset_pipeline(self, settings: Settings, stage_factory: StageFactory) -> pipelines.CodePipeline:
        app, names = self.app_name, self.names
        source = settings.source
        if source.provider == "codestar_connection":
            pipeline_source = pipelines.CodePipelineSource.connection(
                source.repository,
                source.branch,
                connection_arn=str(source.connection_arn),
                trigger_on_push=False,  # the path-filtered trigger below starts it instead
            )
        else:
            repository = codecommit.Repository.from_repository_name(self, "Repository", source.repository)
            pipeline_source = pipelines.CodePipelineSource.code_commit(
                repository, source.branch, trigger=actions.CodeCommitTrigger.NONE
            )
        make_vars = f"APP={app}" + (f" ENV={settings.environment_name}" if settings.environment_name else "")
        synth = pipelines.CodeBuildStep(
            "Synth",
            input=pipeline_source,
            # DEPLOY=true: what this synthesizes is deployed, so example values and a missing notification
            # target fail the build here, naming each key (see shared.config.deployment_problems).
            commands=[f"make test {make_vars}", f"make synth {make_vars} DEPLOY=true"],
            primary_output_directory="cdk.out",
        )
        build_logs = log_group(self, "BuildLogs", retention=log_retention(settings.toolchain.log_retention_days))
        pipeline = pipelines.CodePipeline(
            self,
            "AssetPipeline",
            pipeline_name=names.asset_pipeline(app),
            pipeline_type=codepipeline.PipelineType.V2,
            synth=synth,
            self_mutation=True,
            cli_version=cdk_cli_version(),
            artifact_bucket=_artifact_bucket(self, names, app, "asset"),
            publish_assets_in_parallel=False,
            code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(
                    build_image=codebuild.LinuxBuildImage.STANDARD_7_0,
                    compute_type=codebuild.ComputeType.SMALL,
                ),
                partial_build_spec=codebuild.BuildSpec.from_object(
                    {"phases": {"install": {"runtime-versions": {"nodejs": "22", "python": "3.12"}}}}
                ),
                logging=codebuild.LoggingOptions(cloud_watch=codebuild.CloudWatchLoggingOptions(log_group=build_logs)),
            ),
            synth_code_build_defaults=pipelines.CodeBuildOptions(
                build_environment=codebuild.BuildEnvironment(
                    compute_type=codebuild.ComputeType(settings.toolchain.build_compute),
                ),
                timeout=cdk.Duration.hours(2),
            ),
        )
        stage = stage_factory(self, "Deploy", settings=settings)
        # Tags are an Aspect, and the App's Aspects stop at Stage boundaries; CDK Pipelines also
        # synthesizes the stage in add_stage, so its tags must be there before.
        for key, value in settings.project.tags.items():
            cdk.Tags.of(stage).add(key, value)
        workflow_pipeline = names.workflow_pipeline(app)
        start_workflow = pipelines.CodeBuildStep(
            "StartWorkflow",
            commands=[
                start_workflow_command(asset_pipeline=names.asset_pipeline(app), workflow_pipeline=workflow_pipeline)
            ],
            env={ASSET_EXECUTION_VARIABLE: "#{codepipeline.PipelineExecutionId}"},
            role_policy_statements=[
                iam.PolicyStatement(
                    actions=["codepipeline:StartPipelineExecution", "codepipeline:GetPipeline"],
                    resources=[pipeline_arn(self, workflow_pipeline)],
                ),
                iam.PolicyStatement(
                    actions=["codepipeline:ListPipelineExecutions"],
                    resources=[pipeline_arn(self, names.asset_pipeline(app))],
                ),
            ],
        )
        pipeline.add_stage(stage, post=[start_workflow])
        pipeline.build_pipeline()
        if source.provider == "codestar_connection":
            allow_connection_use(pipeline.pipeline, str(source.connection_arn))
        acknowledge_asset_publishing(pipeline)
        execution_roles_as_sub(pipeline.pipeline, stage)
        return pipeline

    # -- triggers and events --------------------------------------------------------------------
    def _add_push_trigger(self, settings: Settings) -> None:
        """Start the asset pipeline only for pushes that touch this app or the common code."""
        includes, excludes = trigger_paths(self.app_name)
        if settings.source.provider == "codestar_connection":
            source_action = self.pipeline.pipeline.stages[0].actions[0]
            self.pipeline.pipeline.add_trigger(
                provider_type=codepipeline.ProviderType.CODE_STAR_SOURCE_CONNECTION,
                git_configuration=codepipeline.GitConfiguration(
                    source_action=source_action,
                    push_filter=[
                        codepipeline.GitPushFilter(
                            branches_includes=[settings.source.branch],
                            file_paths_includes=includes,
                            file_paths_excludes=excludes,
                        )
                    ],
                ),
            )
            return
        # CodeCommit has no file-path triggers: a small function looks at the pushed commits.
        repository = codecommit.Repository.from_repository_name(self, "PushedRepository", settings.source.repository)
        filter_fn = python_function(
            self,
            "PathFilter",
            code_dir=code_bundle("shared-runtime", ["shared/runtime"]),
            handler="shared.runtime.path_filter.handler",
            description=f"Starts {self.names.asset_pipeline(self.app_name)} for pushes that touch its paths",
            environment={
                "PIPELINE_NAME": self.names.asset_pipeline(self.app_name),
                "SOURCE_ACTION_NAME": self.pipeline.pipeline.stages[0].actions[0].action_properties.action_name,
                "TRIGGER_PATHS": json.dumps({"includes": includes, "excludes": excludes}),
            },
        )
        allow(filter_fn, ["codecommit:GetDifferences"], [repository.repository_arn])
        allow(filter_fn, ["codepipeline:StartPipelineExecution"], [self.pipeline.pipeline.pipeline_arn])
        events.Rule(
            self,
            "PushRule",
            description="Pushes to the configured branch, handed to the path filter",
            event_pattern=events.EventPattern(
                source=["aws.codecommit"],
                detail_type=["CodeCommit Repository State Change"],
                resources=[repository.repository_arn],
                detail={
                    "event": ["referenceCreated", "referenceUpdated"],
                    "referenceType": ["branch"],
                    "referenceName": [settings.source.branch],
                },
            ),
            targets=[targets.LambdaFunction(filter_fn, retry_attempts=2)],
        )

    def _notify_failures(self) -> None:
        app, names = self.app_name, self.names
        events.Rule(
            self,
            "PipelineFailedRule",
            description=f"Failures of the {app} asset and workflow pipelines",
            event_pattern=events.EventPattern(
                source=["aws.codepipeline"],
                detail_type=[PIPELINE_STATE_CHANGE],
                detail={
                    "pipeline": [names.asset_pipeline(app), names.workflow_pipeline(app)],
                    "state": ["FAILED"],
                },
            ),
            targets=[
                self.notifications.event_target(
                    events.RuleTargetInput.from_text(
                        f"Pipeline {events.EventField.from_path('$.detail.pipeline')} failed "
                        f"(execution {events.EventField.from_path('$.detail.execution-id')}, "
                        f"account {events.EventField.account}, region {events.EventField.region})."
                    )
                )
            ],
        )

    def _chain_from_upstream(self) -> None:
        upstream = upstream_app(self.app_name)
        if upstream is None:
            return
        events.Rule(
            self,
            "UpstreamSucceededRule",
            description=f"Redeploys {self.app_name} when the {upstream} workflow pipeline succeeds",
            event_pattern=events.EventPattern(
                source=["aws.codepipeline"],
                detail_type=[PIPELINE_STATE_CHANGE],
                detail={"pipeline": [self.names.workflow_pipeline(upstream)], "state": ["SUCCEEDED"]},
            ),
            targets=[targets.CodePipeline(self.pipeline.pipeline)],
        )

    def _retraining_schedule(self, expression: str) -> None:
        workflow = codepipeline.Pipeline.from_pipeline_arn(
            self, "LabelingWorkflowPipeline", pipeline_arn(self, self.names.workflow_pipeline(self.app_name))
        )
        events.Rule(
            self,
            "RetrainingSchedule",
            description="Starts the chain: labeling workflow, then training, then edge deployment",
            schedule=events.Schedule.expression(expression),
            targets=[targets.CodePipeline(workflow)],
        )
