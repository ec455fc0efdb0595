"""The edge_deployment section of the configuration: its checks and the names derived from it."""

from __future__ import annotations

import copy

import pytest
import yaml

from edge_deployment.naming import device_topic, edge_names
from shared.config import DEFAULT_CONFIG_FILE, ConfigError, parse_settings


def _with(**edge_overrides):
    raw = yaml.safe_load(DEFAULT_CONFIG_FILE.read_text())
    document = copy.deepcopy(raw)
    for dotted, value in edge_overrides.items():
        target = document["edge_deployment"]
        *parents, last = dotted.split("__")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[last] = value
    return parse_settings(document)


def test_the_example_configuration_is_valid_and_complete(settings):
    edge = settings.edge_deployment
    assert edge.effective_deployment_name == "tag-inspection-line-1"
    assert edge.rollout.max_wait_minutes >= edge.rollout.job_timeout_minutes
    assert edge.simulated_device is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rollout__maximum_per_minute": 2, "rollout__base_rate_per_minute": 5}, "maximum_per_minute must be at least"),
        ({"rollout__max_wait_minutes": 30, "rollout__job_timeout_minutes": 60}, "max_wait_minutes must be at least"),
        ({"rollout__increment_factor": 9}, r"rollout\.increment_factor"),
        ({"rollout__abort_failure_percentage": 0}, r"rollout\.abort_failure_percentage"),
        ({"max_model_archive_mb": 0}, r"max_model_archive_mb"),
        ({"deployment_name": " leading space"}, r"deployment_name"),
        ({"confidence_threshold": 1.5}, r"confidence_threshold"),
        ({"simulated_device_instance_type": "t3.medium"}, r"simulated_device_instance_type"),
        ({"frames_directory": "has space"}, r"frames_directory"),
        ({"rollout__poll_interval_seconds": 1}, r"poll_interval_seconds"),
    ],
)
def test_wrong_values_are_refused_with_the_key_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _with(**overrides)


def test_the_deployment_name_defaults_to_the_thing_group():
    settings = _with(deployment_name=None, thing_group_name="line-7")
    assert settings.edge_deployment.effective_deployment_name == "line-7"


def test_names_for_devices_and_scripts(settings):
    names = edge_names(settings, account="123456789012", region="eu-west-1")
    assert names.role_alias == "tag-inspect-edge-token-exchange"
    assert names.device_policy_prefix == "tag-inspect-edge-device-"
    assert names.component_key_alias == "alias/tag-inspect-edge-components"
    assert names.thing_group == settings.edge_deployment.thing_group_name
    assert device_topic(settings.edge_deployment.results_topic, "cam-1") == "inspection/cam-1/results"
