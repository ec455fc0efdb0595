"""The edge functions' settings contract: written from the configuration, read back whole, bad ones named."""

from __future__ import annotations

import json

import pytest

from edge_deployment.function_config import function_config
from edge_deployment.naming import edge_names
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, ConfigurationError, EdgeDeploymentConfig
from shared.names import MODEL_ARCHIVE_PREFIX, resource_names
from tests.edge_deployment.conftest import ACCOUNT, REGION

BUCKET = f"tag-inspect-edge-components-{ACCOUNT}-{REGION}"


@pytest.fixture
def config(settings) -> EdgeDeploymentConfig:
    return function_config(
        settings,
        names=edge_names(settings, account=ACCOUNT, region=REGION),
        shared_names=resource_names(settings, account=ACCOUNT, region=REGION),
        component_bucket=BUCKET,
    )


def _document(config: EdgeDeploymentConfig) -> dict:
    return json.loads(config.to_json())


def test_the_configuration_is_written_once_and_read_back_whole(config, settings):
    edge = settings.edge_deployment
    assert config.model_component_name == edge.model_component_name
    assert config.thing_group_name == edge.thing_group_name
    assert config.deployment_name == edge.effective_deployment_name
    assert config.model_archive_prefix == MODEL_ARCHIVE_PREFIX
    assert config.max_archive_bytes == edge.max_model_archive_mb * 1024 * 1024
    assert config.class_names == tuple(settings.project.class_names)
    assert config.rollout.max_wait_minutes == edge.rollout.max_wait_minutes
    assert EdgeDeploymentConfig.from_json(config.to_json()) == config
    assert EdgeDeploymentConfig.from_environment({ENVIRONMENT_VARIABLE: config.to_json()}) == config


def test_the_model_component_step_gets_its_settings_in_the_function_s_account(config):
    settings = config.model_component(partition="aws", region=REGION, account=ACCOUNT)
    assert (settings.component_name, settings.bucket, settings.model_bucket) == (
        config.model_component_name,
        BUCKET,
        config.model_bucket,
    )
    assert (settings.partition, settings.region, settings.account) == ("aws", REGION, ACCOUNT)
    assert list(settings.class_names) == list(config.class_names)


def test_an_unset_variable_is_named():
    with pytest.raises(ConfigurationError, match=f"environment variable {ENVIRONMENT_VARIABLE} is not set"):
        EdgeDeploymentConfig.from_environment({})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("thing_group_name"), r"missing thing_group_name"),
        (lambda d: d.update(colour="blue"), r"unknown colour"),
        (lambda d: d.update(model_bucket=""), r"model_bucket must be a non-empty string"),
        (lambda d: d.update(max_archive_bytes="512"), r"max_archive_bytes must be an integer"),
        (lambda d: d.update(max_archive_bytes=0), r"max_archive_bytes must be positive"),
        (lambda d: d.update(class_names=[]), r"class_names must be a non-empty list"),
        (lambda d: d.update(class_names="scratch"), r"class_names must be a list"),
        (lambda d: d.update(model_archive_prefix="pipeline-runs"), r"model_archive_prefix must be a key prefix"),
        (lambda d: d["rollout"].pop("job_timeout_minutes"), r"rollout is missing job_timeout_minutes"),
    ],
)
def test_a_missing_or_invalid_field_is_named(config, change, message):
    document = _document(config)
    change(document)
    with pytest.raises(ConfigurationError, match=rf"^{ENVIRONMENT_VARIABLE}: {message}"):
        EdgeDeploymentConfig.from_json(json.dumps(document))


@pytest.mark.parametrize("text", ["{not json", "[]"])
def test_a_document_that_is_no_json_object_is_refused(text):
    with pytest.raises(ConfigurationError, match=ENVIRONMENT_VARIABLE):
        EdgeDeploymentConfig.from_json(text)
