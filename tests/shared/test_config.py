"""The configuration file: schema, per-environment overrides and the messages bad values produce."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import selected_apps
from shared.config import APP_NAMES, ConfigError, load_settings, parse_settings

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
        ("labeling.label_studio.poll_interval_seconds", 5, r"labeling\.label_studio\.poll_interval_seconds: .*10"),
        ("labeling.label_studio.presign_ttl_minutes", 0, r"labeling\.label_studio\.presign_ttl_minutes: .*1"),
        ("edge_deployment.max_uploads_per_hour", -1, r"edge_deployment\.max_uploads_per_hour: .*0"),
        ("edge_deployment.drift_sample_rate", 1.5, r"edge_deployment\.drift_sample_rate: .*1"),
        ("source.connection_arn", _DELETE, r"source: .*connection_arn is required"),
        ("source.connection_arn", "arn:aws:s3:::nope", r"source\.connection_arn: does not match"),
        ("source.provider", "svn", r"source\.provider: Input should be 'codestar_connection' or 'codecommit'"),
        ("retraining.schedule", "every monday", r"retraining\.schedule: does not match the expected format"),
        ("retraining.schedule", "cron(0 3 * * MON *)", r"retraining\.schedule: .*exactly one of day-of-month"),
        ("retraining.schedule", "cron(0 3 ? * ? *)", r"retraining\.schedule: .*exactly one of day-of-month"),
        ("retraining.schedule", "rate(1 days)", r"retraining\.schedule: .*a rate of 1 takes a singular unit"),
        ("retraining.schedule", "rate(7 day)", r"retraining\.schedule: .*any other a plural one"),
        ("retraining.schedule", "rate(0 minutes)", r"retraining\.schedule: .*a rate must be at least 1"),
        ("notifications.email", "not-an-address", r"notifications\.email: does not match"),
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


_WORKFORCE = {"type": "private", "work_team_arn": "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/t"}


def _ground_truth(raw: dict[str, Any]) -> dict[str, Any]:
    """config.yaml as an account that uses Ground Truth writes it (the example uses Label Studio)."""
    document = _set(_set(raw, "labeling.backend", "ground_truth"), "labeling.label_studio", _DELETE)
    return _set(document, "labeling.workforce", dict(_WORKFORCE))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("labeling.workforce.work_team_arn", _DELETE, r"labeling\.workforce: .*work_team_arn is required"),
        ("labeling.workforce.type", "public", r"labeling\.workforce: .*public_task_price_usd is required"),
        ("labeling.workforce", _DELETE, r"workforce is required when backend is ground_truth"),
    ],
)
def test_a_ground_truth_workforce_is_checked(raw, key, value, message):
    assert parse_settings(_ground_truth(raw)).labeling.workforce is not None
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(_ground_truth(raw), key, value))


def test_label_studio_needs_no_workforce_and_an_environment_may_keep_one(raw):
    assert parse_settings(raw).labeling.workforce is None  # config.yaml: Label Studio, no Ground Truth team
    # a file whose environments switch backend keeps the team: Label Studio leaves it unused
    switched = _set(_set(_ground_truth(raw), "labeling.backend", "label_studio"), "labeling.label_studio", _LS_URL)
    labeling = parse_settings(switched).labeling
    assert labeling.backend == "label_studio" and labeling.workforce is not None


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
    document = _set(_set(raw, "labeling.backend", backend), "labeling.workforce", dict(_WORKFORCE))
    document = _set(document, "labeling.label_studio", _DELETE if label_studio is None else label_studio)
    if message is None:
        settings = parse_settings(document)
        assert settings.labeling.backend == backend
        assert (settings.labeling.label_studio is None) == (label_studio is None)
    else:
        with pytest.raises(ConfigError, match=message):
            parse_settings(document)
