"""The configuration file: schema, per-environment overrides and the messages bad values produce."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import selected_apps
from shared.config import (
    APP_NAMES,
    LABEL_STUDIO_IMAGE,
    ConfigError,
    check_deployable,
    deployment_problems,
    load_settings,
    parse_settings,
)

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
    assert prod.training.training_instance_type == "ml.g5.xlarge" != base.training.training_instance_type
    assert prod.training.tuning.max_parallel_jobs == 4 != base.training.tuning.max_parallel_jobs
    assert prod.training.tuning.ranges == base.training.tuning.ranges  # a nested override keeps its siblings
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
        ("notifications.email", "not-an-address", r"notifications\.email\.0: does not match"),
        ("notifications.email", ["ops@acme-tags.test", "nope"], r"notifications\.email\.1: does not match"),
        ("edge_deployment.uncertainty_band", [0.8, 0.2], r"edge_deployment\.uncertainty_band: .*low < high"),
        (
            "edge_deployment.results_topic",
            "inspection/results",
            r"edge_deployment\.results_topic: .*\{thing\} exactly once",
        ),
        (
            "edge_deployment.heartbeat_topic",
            "line/{thing}/{thing}",
            r"edge_deployment\.heartbeat_topic: .*exactly once",
        ),
        (
            "edge_deployment.results_topic",
            "line/x{thing}/results",
            r"edge_deployment\.results_topic: .*whole topic level",
        ),
        (
            "edge_deployment.inference_component_name",
            "aws.greengrass.Nope",
            r"inference_component_name: does not match",
        ),
        ("edge_deployment.thing_group_name", _DELETE, r"edge_deployment\.thing_group_name: required key is missing"),
        ("toolchain.log_retention_days", 42, r"toolchain\.log_retention_days: Input should be"),
        ("training.patience", 0, r"training\.patience: Input should be greater than or equal to 1"),
        ("training.learning_rate", 1.5, r"training\.learning_rate: Input should be less than 1"),
        ("training.optimizer", "Adam", r"training\.optimizer: Input should be 'SGD' or 'AdamW'"),
        ("training.augmentation.flipud", 2, r"training\.augmentation\.flipud: Input should be less than or equal to 1"),
        ("training.augmentation.rotate", 5, r"training\.augmentation\.rotate: unknown key"),
        ("training.min_test_images", 0, r"training\.min_test_images: Input should be greater than or equal to 1"),
        ("training.tuning.ranges.model_size", [], r"training\.tuning\.ranges\.model_size: List should have at least 1"),
        ("training.tuning.ranges.model_size", ["n", "t"], r"training\.tuning\.ranges\.model_size\.1: Input should be"),
        ("training.tuning.ranges.model_size", ["s", "s"], r"training\.tuning\.ranges\.model_size: .*distinct"),
        ("training.tuning.ranges.image_size", [], r"training\.tuning\.ranges\.image_size: List should have at least 1"),
        ("training.tuning.ranges.image_size", [448, 500], r"training\.tuning\.ranges\.image_size: .*multiples of 32"),
        ("training.tuning.ranges.epochs", [300, 100], r"training\.tuning\.ranges\.epochs: .*1 <= min < max"),
        ("training.tuning.ranges.epochs", [100], r"training\.tuning\.ranges\.epochs"),
        ("training.tuning.ranges.learning_rate", [0.0, 0.01], r"training\.tuning\.ranges\.learning_rate: .*0 < min"),
        ("training.tuning.max_parallel_jobs", 9, r"training\.tuning: .*max_parallel_jobs must not exceed max_jobs"),
        ("training.tuning.max_jobs", 1, r"training\.tuning\.max_jobs: Input should be greater than or equal to 2"),
        ("training.tuning.strategy", "Grid", r"training\.tuning\.strategy: Input should be 'Bayesian' or 'Random'"),
        ("training.onnx_opset", 12, r"training: .*onnx_opset must be at least 13 when quantize_int8 is true"),
        ("training.onnx_opset", 10, r"training\.onnx_opset: Input should be greater than or equal to 11"),
    ],
)
def test_bad_values_fail_with_the_key_and_what_is_expected(raw, key, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_settings(_set(raw, key, value), source="config.yaml")


@pytest.mark.parametrize("opset", [11, 12])
def test_an_opset_below_13_is_valid_only_without_int8(raw, opset):
    """Per-channel QDQ (the INT8 model) needs opset 13; an FP32-only deployment may export older opsets."""
    document = _set(_set(raw, "training.onnx_opset", opset), "training.quantize_int8", False)
    assert parse_settings(document).training.onnx_opset == opset
    with pytest.raises(ConfigError, match=rf"onnx_opset must be at least 13 when quantize_int8 is true, got {opset}"):
        parse_settings(_set(document, "training.quantize_int8", True))


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
    from shared.config import ROLLOUT_OVERHEAD_MINUTES, WORKFLOW_ACTION_LIMIT_SECONDS, stage_wait_minutes
    from training.stacks import workflow_timeout

    # one stage (no stages configured): its rollout, and a rollback's, fit in the limit
    document = _set(
        _set(_set(raw, "training.max_runtime_seconds", 270_000), "edge_deployment.rollout.max_wait_minutes", 5010),
        "edge_deployment.stages",
        [],
    )
    settings = parse_settings(document)
    assert workflow_timeout(settings).to_seconds() <= WORKFLOW_ACTION_LIMIT_SECONDS
    assert stage_wait_minutes(settings.edge_deployment) == 2 * 5010
    assert (
        stage_wait_minutes(settings.edge_deployment) + ROLLOUT_OVERHEAD_MINUTES
    ) * 60 <= WORKFLOW_ACTION_LIMIT_SECONDS
    with pytest.raises(ConfigError, match=r"the stages' waits .* add up to 10022 minutes"):
        parse_settings(_set(document, "edge_deployment.rollout.max_wait_minutes", 5011))


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


_SERVER = _LS_SERVER["server"]
_OIDC = {
    "provider": "oidc",
    "issuer": "https://login.example.com",
    "authorization_endpoint": "https://login.example.com/authorize",
    "token_endpoint": "https://login.example.com/token",
    "user_info_endpoint": "https://login.example.com/userinfo",
    "client_id": "label-studio",
    "client_secret_secret": "tag-inspect/oidc-client-secret",
}
_DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ({}, None),
        ({"sign_in": _OIDC}, None),
        ({"sign_in": {"provider": "cognito", "cognito_domain_prefix": "tag-labels", "scope": "openid email profile"}},
         None),
        ({"cpu": 2048, "memory_mib": 16384}, None),
        ({"image": f"heartexlabs/label-studio@{_DIGEST}"}, None),
        ({"image": f"111111111111.dkr.ecr.eu-west-1.amazonaws.com/docker-hub/label-studio:1.23.0@{_DIGEST}"}, None),
        ({"hosted_zone_id": "Z0123456789ABC", "hosted_zone_name": "example.com"}, None),
        ({"allowed_cidrs": ["203.0.113.0/24"]}, None),
        ({"database": {"restore_from_snapshot": "ls-before-upgrade", "multi_az": True}}, None),
        # the image must be pinned by digest
        ({"image": "heartexlabs/label-studio:1.23.0"}, r"server\.image: does not match"),
        ({"image": "heartexlabs/label-studio:latest@sha256:abc"}, r"server\.image: does not match"),
        # sign-in
        ({"sign_in": {"provider": "oidc", "issuer": "https://login.example.com"}},
         r"server\.sign_in: .*provider oidc needs authorization_endpoint, token_endpoint"),
        ({"sign_in": {**_OIDC, "provider": "cognito"}}, r"server\.sign_in: .*issuer, .* apply to provider oidc only"),
        ({"sign_in": {**_OIDC, "cognito_domain_prefix": "labels"}},
         r"server\.sign_in: .*cognito_domain_prefix applies to provider cognito only"),
        ({"sign_in": {**_OIDC, "issuer": "http://login.example.com"}}, r"server\.sign_in\.issuer: does not match"),
        ({"sign_in": {"cognito_domain_prefix": "my-aws-labels"}}, r"server\.sign_in\.cognito_domain_prefix: .*may not"),
        ({"sign_in": {"scope": "openid phone"}}, r"server\.sign_in: .*scope phone is not one the Cognito"),
        ({"sign_in": {"session_timeout_hours": 200}}, r"server\.sign_in\.session_timeout_hours: Input should"),
        # task size
        ({"cpu": 1024, "memory_mib": 1024}, r"server: .*memory_mib 1024 is not a Fargate size for cpu 1024: 2048-8192"),
        ({"cpu": 512, "memory_mib": 1024}, r"server: .*memory_mib must be at least 2048"),
        ({"cpu": 256}, r"server\.cpu: Input should be 512, 1024, 2048 or 4096"),
        # network and DNS
        ({"allowed_cidrs": ["10.0.0.1/8"]}, r"server\.allowed_cidrs: .*10\.0\.0\.1/8 has host bits set"),
        ({"allowed_cidrs": []}, r"server\.allowed_cidrs: List should have at least 1 item"),
        ({"allowed_cidrs": ["2001:db8::/32"]}, r"server\.allowed_cidrs\.0: does not match"),
        ({"hosted_zone_id": "Z0123456789ABC"}, r"server: .*hosted_zone_id and hosted_zone_name go together"),
        ({"hosted_zone_id": "Z0123456789ABC", "hosted_zone_name": "example.org"},
         r"server: .*domain_name labels\.example\.com is not in hosted zone example\.org"),
        # registry credentials are for registries other than ECR
        ({"image": f"111111111111.dkr.ecr.eu-west-1.amazonaws.com/label-studio@{_DIGEST}", "image_pull_secret": "hub"},
         r"server: .*image_pull_secret applies to registries other than ECR"),
        # database
        ({"database": {"instance_class": "db.t4g.micro"}}, r"server\.database\.instance_class: does not match"),
        ({"database": {"backup_retention_days": 0}}, r"server\.database\.backup_retention_days: Input should"),
        ({"database": {"allocated_storage_gib": 200, "max_allocated_storage_gib": 100}},
         r"server\.database: .*max_allocated_storage_gib must be at least allocated_storage_gib"),
        ({"database": {"engine_version": "15.4"}}, r"server\.database\.engine_version: does not match"),
        ({"database": {"restore_from_snapshot": "-bad"}}, r"server\.database\.restore_from_snapshot: does not"),
        ({"presigned_url_minutes": 120}, r"server\.presigned_url_minutes: Input should be less than or equal to 60"),
        ({"databse": {}}, r"server\.databse: unknown key"),
    ],
)  # fmt: skip
def test_the_deployed_label_studio_server_settings(raw, server, message):
    document = _set(raw, "labeling.backend", "label_studio")
    document = _set(document, "labeling.label_studio", {"server": {**_SERVER, **server}})
    if message is None:
        deployed = parse_settings(document).labeling.label_studio.server
        assert deployed is not None
        assert re.fullmatch(r"[^:@]+@sha256:[0-9a-f]{64}", deployed.image_reference)
    else:
        with pytest.raises(ConfigError, match=rf"labeling\.label_studio\.{message}"):
            parse_settings(document)


def test_the_default_server_image_is_the_pinned_official_release(raw):
    document = _set(_set(raw, "labeling.backend", "label_studio"), "labeling.label_studio", {"server": _SERVER})
    server = parse_settings(document).labeling.label_studio.server
    assert server is not None
    assert server.image == LABEL_STUDIO_IMAGE
    assert server.image_reference == (
        "heartexlabs/label-studio@sha256:aa461572e8f9d86a1bf9520c1db620204e86160fd2f80dd7e9d40ac84a8828ea"
    )
    assert (server.image_tag, server.ecr_repository) == ("1.23.0", None)
    ecr = server.model_copy(
        update={"image": f"111111111111.dkr.ecr.eu-west-1.amazonaws.com/docker-hub/heartexlabs/label-studio@{_DIGEST}"}
    )
    assert ecr.ecr_repository == ("111111111111", "eu-west-1", "docker-hub/heartexlabs/label-studio")
    assert ecr.image_tag is None


# --------------------------------------------------------------------------------------------------
# A real deployment: example values and a notification target
# --------------------------------------------------------------------------------------------------

_CERTIFICATE = "arn:aws:acm:eu-west-1:{}:certificate/12345678-1234-1234-1234-123456789012"
_DEPLOYABLE = {
    "source.connection_arn": (
        "arn:aws:codeconnections:eu-west-1:210987654321:connection/6f1c2e3d-4b5a-4c7d-8e9f-0a1b2c3d4e5f"
    ),
    "source.repository": "acme-tags/edge-quality-inspection",
    "labeling.label_studio.url": "https://labels.acme-tags.test",
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
        "labeling.label_studio.url",
        "environments.dev.account",
        "notifications",
    ]
    assert "all-zero connection" in problems[0]
    assert "https://label-studio.example.com is the example" in problems[2]
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
        (
            "labeling.label_studio",
            {
                "server": {
                    "domain_name": "labels.example.org",
                    "certificate_arn": _CERTIFICATE.format("210987654321"),
                }
            },
            "labeling.label_studio.server.domain_name: labels.example.org is an example domain",
        ),
        (
            "labeling.label_studio",
            {
                "server": {
                    "domain_name": "labels.acme-tags.test",
                    "certificate_arn": _CERTIFICATE.format("111111111111"),
                }
            },
            "labeling.label_studio.server.certificate_arn: example account 111111111111",
        ),
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
                "work_team_arn": "arn:aws:sagemaker:eu-west-1:210987654321:workteam/private-crowd/inspectors",
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
