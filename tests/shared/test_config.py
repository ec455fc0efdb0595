"""The configuration file: schema, per-environment overrides and the messages bad values produce."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import selected_apps
from shared.config import APP_NAMES, ConfigError, check_deployable, deployment_problems, load_settings, parse_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO_ROOT / "config.yaml").read_text())


def _set(document: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(document)
    *parents, leaf = dotted.split(".")
    node = document
    for key in parents:
        node = node[key]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return document


_DELETE = object()


def test_example_configuration_is_valid():
    settings = load_settings(REPO_ROOT / "config.yaml")
    assert settings.project.prefix == "tag-inspect"
    assert settings.project.class_names == ["scratch"]
    assert settings.environment is None and settings.environment_name is None


def test_environment_overrides_merge_without_copying_the_file(raw):
    prod = parse_settings(raw, environment="prod")
    base = parse_settings(raw)
    assert prod.environment is not None
    assert (prod.environment.account, prod.environment.region) == ("222222222222", "eu-west-1")
    assert prod.environment_name == "prod"
    # overridden keys change, their siblings keep the shared values
    assert prod.training.epochs == 150 and base.training.epochs == 50
    assert prod.training.training_instance_type == "ml.g5.xlarge"
    assert prod.training.image_size == base.training.image_size
    assert prod.labeling == base.labeling


def test_unknown_environment_is_named(raw):
    with pytest.raises(ConfigError, match=r"environments\.staging: no such environment \(known: dev, prod\)"):
        parse_settings(raw, environment="staging")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("project.prefix", "Tag_Inspect", r"project\.prefix: does not match the expected format"),
        ("project.prefix", _DELETE, r"project\.prefix: required key is missing"),
        ("project.class_names", [], r"project\.class_names: List should have at least 1 item"),
        ("project.class_names", ["scratch", "scratch"], r"project\.class_names: .*repeated: scratch"),
        ("training.epochs", 0, r"training\.epochs: Input should be greater than or equal to 1 \(got 0\)"),
        ("training.epochs", "many", r"training\.epochs: Input should be a valid integer"),
        ("training.image_size", 100, r"training\.image_size: Input should be a multiple of 32"),
        ("training.epoch", 3, r"training\.epoch: unknown key"),
        ("training.approval_status", "Rejected", r"training\.approval_status: Input should be"),
        ("labeling.max_images_per_job", -5, r"labeling\.max_images_per_job: Input should be greater than"),
        ("labeling.workforce.work_team_arn", _DELETE, r"labeling\.workforce: .*work_team_arn is required"),
        ("labeling.workforce.type", "public", r"labeling\.workforce: .*public_task_price_usd is required"),
        ("source.connection_arn", _DELETE, r"source: .*connection_arn is required"),
        ("source.connection_arn", "arn:aws:s3:::nope", r"source\.connection_arn: does not match"),
        ("source.provider", "svn", r"source\.provider: Input should be 'codestar_connection' or 'codecommit'"),
        ("retraining.schedule", "every monday", r"retraining\.schedule: does not match the expected format"),
        ("retraining.schedule", "cron(0 3 * * MON *)", r"retraining\.schedule: .*exactly one of day-of-month"),
        ("retraining.schedule", "cron(0 3 ? * ? *)", r"retraining\.schedule: .*exactly one of day-of-month"),
        ("retraining.schedule", "rate(1 days)", r"retraining\.schedule: .*a rate of 1 takes a singular unit"),
        ("retraining.schedule", "rate(7 day)", r"retraining\.schedule: .*any other a plural one"),
        ("retraining.schedule", "rate(0 minutes)", r"retraining\.schedule: .*a rate must be at least 1"),
        ("notifications.email", "not-an-address", r"notifications\.email\.0: does not match"),
        ("notifications.email", ["ops@acme-tags.test", "nope"], r"notifications\.email\.1: does not match"),
        ("edge_deployment.uncertainty_band", [0.8, 0.2], r"edge_deployment\.uncertainty_band: .*low < high"),
        (
            "edge_deployment.inference_component_name",
            "aws.greengrass.Nope",
            r"inference_component_name: does not match",
        ),
        ("edge_deployment.thing_group_name", _DELETE, r"edge_deployment\.thing_group_name: required key is missing"),
        ("toolchain.log_retention_days", 42, r"toolchain\.log_retention_days: Input should be"),
    ],
)
def test_bad_values_fail_with_the_key_and_what_is_expected(raw, key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(raw, key, value), source="config.yaml")


def test_every_error_is_reported_at_once(raw):
    document = _set(_set(raw, "training.epochs", 0), "project.prefix", "X")
    with pytest.raises(ConfigError) as error:
        parse_settings(document, source="config.yaml")
    assert "2 invalid configuration value(s)" in str(error.value)
    assert "training.epochs" in str(error.value) and "project.prefix" in str(error.value)


def test_bad_override_names_the_environment(raw):
    document = _set(raw, "environments.prod.overrides.training.epochs", -1)
    with pytest.raises(ConfigError, match=r"(?s)\(environment prod\).*training\.epochs"):
        parse_settings(document, environment="prod", source="config.yaml")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("environments.dev.account", "1234", r"environments\.dev\.account: does not match"),
        ("environments.dev.region", "Europe", r"environments\.dev\.region: does not match"),
        ("environments.dev.region", _DELETE, r"environments\.dev\.region: required key is missing"),
        ("environments.dev.acount", "111111111111", r"environments\.dev\.acount: unknown key"),
        ("environments.dev.overrides", {"environments": {}}, r"overrides\.environments: cannot be overridden"),
    ],
)
def test_bad_environment_entries(raw, key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(raw, key, value), environment="dev")


@pytest.mark.parametrize(
    "schedule",
    ["cron(0 3 ? * MON *)", "cron(0 3 1 * ? *)", "cron(0/30 * ? * MON-FRI *)", "rate(1 day)", "rate(7 days)"],
)
def test_valid_schedules(raw, schedule):
    assert parse_settings(_set(raw, "retraining.schedule", schedule)).retraining.schedule == schedule


def test_codecommit_source_needs_no_connection(raw):
    document = _set(raw, "source", {"provider": "codecommit", "repository": "edge-inspection", "branch": "main"})
    assert parse_settings(document).source.connection_arn is None
    with pytest.raises(ConfigError, match="repository must be a CodeCommit repository name"):
        parse_settings(_set(document, "source.repository", "org/repo"))


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("project: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_settings(listed)


def test_app_selection():
    assert selected_apps(None) == list(APP_NAMES)
    assert selected_apps("training") == ["training"]
    assert selected_apps("edge-deployment") == ["edge_deployment"]
    assert selected_apps("labeling,training") == ["labeling", "training"]
    with pytest.raises(
        ConfigError, match=r"unknown app 'trainin'; expected one of labeling, training, edge_deployment"
    ):
        selected_apps("trainin")


# The workflow pipelines run each app's state machine with CodePipeline's Step Functions action, which
# gives up after 7 days; the next app's asset pipeline starts only when that action succeeded.
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("training.max_runtime_seconds", 270_001, r"training: .*max_runtime_seconds must be at most 270000"),
        ("training.max_runtime_seconds", 2_419_200, r"training: .*within the 7 days CodePipeline waits"),
        (
            "edge_deployment.rollout.max_wait_minutes",
            10_021,
            r"edge_deployment\.rollout: .*max_wait_minutes must be at most 10020",
        ),
    ],
)
def test_workflows_that_could_outlast_the_workflow_pipeline_are_refused(raw, key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(raw, key, value), source="config.yaml")


def test_the_longest_accepted_workflows_end_within_the_workflow_action_limit(raw):
    from shared.config import ROLLOUT_OVERHEAD_MINUTES, WORKFLOW_ACTION_LIMIT_SECONDS
    from training.component import workflow_timeout

    document = _set(
        _set(raw, "training.max_runtime_seconds", 270_000), "edge_deployment.rollout.max_wait_minutes", 10_020
    )
    settings = parse_settings(document)
    assert workflow_timeout(settings).to_seconds() <= WORKFLOW_ACTION_LIMIT_SECONDS
    assert (
        settings.edge_deployment.rollout.max_wait_minutes + ROLLOUT_OVERHEAD_MINUTES
    ) * 60 <= WORKFLOW_ACTION_LIMIT_SECONDS


_LS_URL = {"url": "https://labels.example.com", "api_token_secret": "tag-inspect/label-studio-token"}
_LS_SERVER = {
    "server": {
        "domain_name": "labels.example.com",
        "certificate_arn": "arn:aws:acm:eu-west-1:111111111111:certificate/12345678-1234-1234-1234-123456789012",
    }
}


@pytest.mark.parametrize(
    ("backend", "label_studio", "message"),
    [
        ("ground_truth", None, None),
        ("label_studio", _LS_URL, None),
        ("label_studio", _LS_SERVER, None),
        ("label_studio", None, "label_studio .* is required when backend is label_studio"),
        ("ground_truth", _LS_URL, "label_studio applies to backend label_studio only"),
        ("label_studio", {"url": "https://labels.example.com"}, "api_token_secret is required with url"),
        ("label_studio", {**_LS_URL, **_LS_SERVER}, "set either url .* or server"),
        ("label_studio", {}, "set either url .* or server"),
        ("label_studio", {**_LS_SERVER, "api_token_secret": "x"}, "api_token_secret applies to an existing server"),
        ("label_studio", {"url": "ftp://labels", "api_token_secret": "x"}, r"labeling\.label_studio\.url"),
        ("label_studio", {"server": {"domain_name": "labels", "certificate_arn": "x"}}, r"server\.domain_name"),
    ],
)
def test_labeling_backend_and_its_label_studio_server(raw, backend, label_studio, message):
    document = _set(raw, "labeling.backend", backend)
    if label_studio is not None:
        document = _set(document, "labeling.label_studio", label_studio)
    if message is None:
        settings = parse_settings(document)
        assert settings.labeling.backend == backend
        assert (settings.labeling.label_studio is None) == (label_studio is None)
    else:
        with pytest.raises(ConfigError, match=message):
            parse_settings(document)


# --------------------------------------------------------------------------------------------------
# A real deployment: example values and a notification target
# --------------------------------------------------------------------------------------------------

_DEPLOYABLE = {
    "source.connection_arn": (
        "arn:aws:codeconnections:eu-west-1:210987654321:connection/6f1c2e3d-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    ),
    "source.repository": "acme-tags/edge-quality-inspection",
    "labeling.workforce.work_team_arn": "arn:aws:sagemaker:eu-west-1:210987654321:workteam/private-crowd/inspectors",
    "notifications.email": "quality-ops@acme-tags.test",
    "environments.dev.account": "210987654321",
}


def _deployable(raw: dict[str, Any]) -> dict[str, Any]:
    for key, value in _DEPLOYABLE.items():
        raw = _set(raw, key, value)
    return raw


def test_the_example_configuration_is_refused_for_a_real_deployment_naming_each_key(raw):
    problems = deployment_problems(parse_settings(raw, environment="dev"))
    keys = [problem.split(":", 1)[0] for problem in problems]
    assert keys == [
        "source.connection_arn",
        "source.repository",
        "labeling.workforce.work_team_arn",
        "environments.dev.account",
        "notifications",
    ]
    assert "all-zero connection" in problems[0]
    assert "example account 111111111111" in problems[2]
    with pytest.raises(ConfigError) as refused:
        check_deployable(parse_settings(raw, environment="dev"), source="config.yaml")
    message = str(refused.value)
    assert message.startswith("config.yaml (environment dev): not deployable as it is (5 value(s) to set first):")
    assert all(f"  - {key}:" in message for key in keys)
    # the example still validates: make synth and the tests use it as it is
    assert parse_settings(raw).project.prefix == "tag-inspect"


def test_a_configuration_with_real_values_and_a_notification_target_is_deployable(raw):
    settings = parse_settings(_deployable(raw), environment="dev")
    assert deployment_problems(settings) == []
    check_deployable(settings)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (
            "source.connection_arn",
            "arn:aws:codeconnections:eu-west-1:123456789012:connection/6f1c2e3d-4b5a-4c7d-8e9f-0a1b2c3d4e5f",
            "source.connection_arn: example account 123456789012",
        ),
        ("source.repository", "example-org/inspection", "source.repository: 'example-org/inspection' is the example"),
        (
            "labeling.review_workforce",
            {
                "type": "private",
                "work_team_arn": "arn:aws:sagemaker:eu-west-1:222222222222:workteam/private-crowd/reviewers",
            },
            "labeling.review_workforce.work_team_arn: a work team of example account 222222222222",
        ),
        (
            "notifications.email",
            ["quality-ops@acme-tags.test", "someone@example.com"],
            "notifications.email: someone@example.com is an example address",
        ),
        ("notifications.email", None, "notifications: no target"),
    ],
)
def test_each_placeholder_is_named(raw, key, value, problem):
    problems = deployment_problems(parse_settings(_set(_deployable(raw), key, value), environment="dev"))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize(
    ("notifications", "message"),
    [
        ({"email": "ops@acme-tags.test"}, None),
        ({"email": ["ops@acme-tags.test", "lead@acme-tags.test"]}, None),
        ({"slack": {"workspace_id": "T0123ABCD", "channel_id": "C0456EFGH"}}, None),
        ({"opt_out_reason": "the plant's NOC subscribes its pager to the three topics"}, None),
        (
            {"email": "ops@acme-tags.test", "opt_out_reason": "we have a pager"},
            "opt_out_reason is for deploying without",
        ),
        ({"opt_out_reason": "no"}, r"opt_out_reason: String should have at least 10"),
        ({"email": ["a@acme-tags.test", "a@acme-tags.test"]}, "each address once"),
        ({"slack": {"workspace_id": "t-lower", "channel_id": "C1"}}, r"slack\.workspace_id: does not match"),
    ],
)
def test_notification_targets_or_an_explicit_opt_out(raw, notifications, message):
    document = _set(_deployable(raw), "notifications", notifications)
    if message is None:
        settings = parse_settings(document, environment="dev")
        assert deployment_problems(settings) == []
        assert settings.notifications.has_target == ("opt_out_reason" not in notifications)
    else:
        with pytest.raises(ConfigError, match=message):
            parse_settings(document)


_PUBLIC = {"type": "public", "public_task_price_usd": 0.036}


@pytest.mark.parametrize(
    ("workforce", "message"),
    [
        ({**_PUBLIC}, "public_content is required for the public workforce"),
        (
            {**_PUBLIC, "public_content": {"free_of_personal_data": True}},
            r"public_content\.free_of_adult_content: required",
        ),
        (
            {**_PUBLIC, "public_content": {"free_of_personal_data": False, "free_of_adult_content": True}},
            "images with personal data must not go to the public crowd",
        ),
        ({**_PUBLIC, "public_content": {"free_of_personal_data": True, "free_of_adult_content": False}}, None),
        ({**_PUBLIC, "public_content": {"free_of_personal_data": True, "free_of_adult_content": True}}, None),
        (
            {
                "type": "private",
                "work_team_arn": _DEPLOYABLE["labeling.workforce.work_team_arn"],
                "public_content": {"free_of_personal_data": True, "free_of_adult_content": True},
            },
            "public_content applies to the public workforce only",
        ),
    ],
)
def test_the_public_crowd_needs_explicit_content_declarations(raw, workforce, message):
    document = _set(_set(raw, "labeling.workforce", workforce), "labeling.task_availability_lifetime_seconds", 43_200)
    if message is None:
        declared = parse_settings(document).labeling.workforce.public_content
        assert declared is not None and declared.model_dump() == workforce["public_content"]
    else:
        with pytest.raises(ConfigError, match=message):
            parse_settings(document)


def test_make_deploy_and_the_pipelines_synthesize_as_a_real_deployment():
    makefile = (REPO_ROOT / "Makefile").read_text()
    deploy_recipe = makefile.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    assert "cdk deploy $(CDK_CONTEXT) -c deploy=true" in deploy_recipe
    assert "$(if $(filter true,$(DEPLOY)),-c deploy=true)" in makefile


def test_app_py_refuses_the_example_for_a_deployment_and_warns_at_synth(raw, tmp_path):
    import aws_cdk as cdk

    from app import build
    from tests.helpers.cdk_assembly import CDK_CONTEXT

    def app(**context: str) -> cdk.App:
        return cdk.App(outdir=str(tmp_path / "out"), context={**CDK_CONTEXT, "app": "training", **context})

    with pytest.raises(ConfigError, match=r"(?s)not deployable.*source\.connection_arn.*notifications: no target"):
        build(app(deploy="true"))
    (toolchain,) = build(app())  # make synth: the same problems are warnings
    warnings = cdk.assertions.Annotations.from_stack(toolchain).find_warning("*", cdk.assertions.Match.any_value())
    texts = [str(warning.entry.data) for warning in warnings]
    assert any("make deploy would refuse: notifications: no target" in text for text in texts), texts
    assert any("make deploy would refuse: source.connection_arn" in text for text in texts), texts
    real = tmp_path / "real.yaml"
    real.write_text(yaml.safe_dump(_deployable(raw)))
    (deployable,) = build(app(deploy="true", config=str(real)))
    assert not cdk.assertions.Annotations.from_stack(deployable).find_warning("*", cdk.assertions.Match.any_value())
