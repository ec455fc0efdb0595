"""Offline results survive a restart: the nucleus's disk spooler in each device's configuration and deployment."""

from __future__ import annotations

import json

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from edge_deployment.device_policy import device_policy_document
from edge_deployment.function_config import function_config
from edge_deployment.naming import edge_names
from edge_deployment.register_device import nucleus_url
from edge_deployment.runtime import handlers
from edge_deployment.runtime.config import ENVIRONMENT_VARIABLE, ConfigurationError, EdgeDeploymentConfig
from edge_deployment.runtime.spooler import DISK_SPOOLER, with_disk_spooler
from edge_deployment.simulated_device import boot_script
from shared.config import DISK_SPOOLER_NUCLEUS_RANGES, OfflineSpoolSettings, Settings, semver_tuple
from shared.names import resource_names
from tests.edge_deployment.conftest import ACCOUNT, REGION
from tests.edge_deployment.test_handlers import CREATE_EVENT, _context, _newest_approved

MODEL, INFERENCE = "com.example.tag-inspection.ScratchModel", "com.example.tag-inspection.ScratchDetector"


def _with_spool(settings: Settings, **spool) -> Settings:
    edge = settings.edge_deployment
    offline = OfflineSpoolSettings(**{**edge.offline_spool.model_dump(), **spool})
    return settings.model_copy(update={"edge_deployment": edge.model_copy(update={"offline_spool": offline})})


def _nucleus_spooler(config_text: str) -> dict:
    document = yaml.safe_load(config_text)
    return document["services"]["aws.greengrass.Nucleus"]["configuration"]["mqtt"]["spooler"]


# -- configuration: a disk spooler version and the nucleus new devices install must go together ----------------


@pytest.mark.parametrize(
    ("spooler", "nucleus", "error"),
    [
        ("1.0.7", "2.16.1", None),
        ("1.0.7", "2.11.0", None),
        ("1.0.7", "2.17.0", "installs only with nucleus >=2.11.0 <2.17.0"),
        ("1.0.4", "2.14.0", "installs only with nucleus >=2.11.0 <2.14.0"),
        ("1.0.9", "2.18.2", None),  # newer than the table: accepted, the guide says to check
        ("1.0.9", "2.10.0", "cannot use the disk spooler"),  # storageType Disk breaks a nucleus before 2.11
        (None, "2.10.0", None),  # memory spool: any nucleus
    ],
)
def test_the_disk_spooler_version_must_fit_the_nucleus_devices_install(spooler, nucleus, error):
    if error is None:
        assert OfflineSpoolSettings(disk_spooler_version=spooler, nucleus_version=nucleus).nucleus_version == nucleus
    else:
        with pytest.raises(ValueError, match=error):
            OfflineSpoolSettings(disk_spooler_version=spooler, nucleus_version=nucleus)


def test_the_default_pair_is_one_the_dependency_table_allows(settings):
    spool = settings.edge_deployment.offline_spool
    assert spool.disk_spooler_version is not None
    low, high = DISK_SPOOLER_NUCLEUS_RANGES[spool.disk_spooler_version]
    assert semver_tuple(low) <= semver_tuple(spool.nucleus_version) < semver_tuple(high)


@pytest.mark.parametrize("bad", ["1.0", "latest", "1.0.7-beta", ""])
def test_a_version_that_is_not_major_minor_patch_is_refused(bad):
    with pytest.raises(ValueError, match="disk_spooler_version"):
        OfflineSpoolSettings(disk_spooler_version=bad)


# -- the simulated device (register_device's configuration: test_register_device.py) ------------------------------


def test_the_simulated_device_installs_the_same_nucleus_with_the_same_spooler(settings):
    names = edge_names(settings, account=ACCOUNT, region=REGION)
    spool = OfflineSpoolSettings(max_size_mb=32)
    script = boot_script(names=names, region=REGION, spool=spool)
    config = script.split("<<CONFIG\n", 1)[1].split("\nCONFIG\n", 1)[0]
    assert _nucleus_spooler(config)["storageType"] == "Disk"
    assert _nucleus_spooler(config)["maxSizeInBytes"] == 32 * 1024 * 1024
    assert nucleus_url(spool.nucleus_version) in script


# -- the deployment carries the plugin at the pinned version ---------------------------------------------------------


def test_the_plugin_is_added_beside_the_components_only_when_configured():
    components = {MODEL: "1.0.7", INFERENCE: "1.0.99"}
    assert with_disk_spooler(components, "1.0.7") == {**components, DISK_SPOOLER: "1.0.7"}
    assert with_disk_spooler(components, None) == components
    with pytest.raises(ValueError, match="added by the configuration"):
        with_disk_spooler({**components, DISK_SPOOLER: "1.0.0"}, "1.0.7")


def _environment(monkeypatch, settings: Settings) -> EdgeDeploymentConfig:
    config = function_config(
        settings,
        names=edge_names(settings, account=ACCOUNT, region=REGION),
        shared_names=resource_names(settings, account=ACCOUNT, region=REGION),
        component_bucket=f"tag-inspect-edge-components-{ACCOUNT}-{REGION}",
    )
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, config.to_json())
    return config


@pytest.mark.parametrize("version", ["1.0.7", None])
def test_the_workflow_deploys_the_configured_plugin_version_in_a_request_greengrass_accepts(
    monkeypatch, settings, version
):
    configured = _with_spool(settings, disk_spooler_version=version)
    assert _environment(monkeypatch, configured).disk_spooler_version == version
    made = {service: boto3.client(service, region_name=REGION) for service in ("greengrassv2", "sagemaker", "iot")}
    monkeypatch.setattr(handlers, "client", lambda service, region=None: made[service])
    sent: list[dict] = []
    made["greengrassv2"].meta.events.register(
        "provide-client-params.greengrassv2.CreateDeployment", lambda params, **_: sent.append(params)
    )
    # Stubber validates the request against botocore's model of CreateDeployment (tests/conftest.py also checks
    # lengths, patterns and enums): a wrong shape for the plugin's entry fails here.
    with Stubber(made["greengrassv2"]) as stub, Stubber(made["sagemaker"]) as registry:
        _newest_approved(registry, 7)
        stub.add_response("list_deployments", {"deployments": []})
        stub.add_response("create_deployment", {"deploymentId": "d-1", "iotJobId": "job-1"})
        result = handlers.create_deployment(CREATE_EVENT, _context())
        stub.assert_no_pending_responses()
    components = sent[0]["components"]
    if version is None:
        assert DISK_SPOOLER not in components
    else:
        assert components[DISK_SPOOLER] == {"componentVersion": version, "configurationUpdate": {"reset": [""]}}
        assert result["components"][DISK_SPOOLER] == version
    assert components[MODEL]["componentVersion"] == "1.0.7"


@pytest.mark.parametrize("bad", ["latest", 107, ""])
def test_the_functions_refuse_a_malformed_plugin_version(bad, settings):
    config = function_config(
        settings,
        names=edge_names(settings, account=ACCOUNT, region=REGION),
        shared_names=resource_names(settings, account=ACCOUNT, region=REGION),
        component_bucket="bucket",
    )
    document = {**json.loads(config.to_json()), "disk_spooler_version": bad}
    with pytest.raises(ConfigurationError, match="disk_spooler_version"):
        EdgeDeploymentConfig.from_json(json.dumps(document))


# -- what the plugin needs of the device's permissions -------------------------------------------------------------


def test_the_device_policy_lets_the_nucleus_fetch_the_plugin_like_any_component(settings):
    """A public component's artifact comes through GetComponentVersionArtifact (a presigned URL of Greengrass's own
    bucket), resolved with ResolveComponentCandidates: both in the device policy, nothing more for the plugin."""
    names = edge_names(settings, account=ACCOUNT, region=REGION)
    document = device_policy_document(
        partition="aws",
        region=REGION,
        account=ACCOUNT,
        thing_name="line-1-cam-1",
        role_alias=names.role_alias,
        results_topic=settings.edge_deployment.results_topic,
        heartbeat_topic=settings.edge_deployment.heartbeat_topic,
    )
    allowed = {
        action
        for statement in document["Statement"]
        if statement["Effect"] == "Allow"
        for action in ([statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"])
    }
    assert {"greengrass:ResolveComponentCandidates", "greengrass:GetComponentVersionArtifact"} <= allowed
