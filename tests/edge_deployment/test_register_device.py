"""Registering a device: thing, certificate, exclusive attachment, policy, group; installer settings."""

from __future__ import annotations

import dataclasses
import json
import stat

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from edge_deployment.device_policy import device_policy_document
from edge_deployment.naming import edge_names
from edge_deployment.register_device import (
    RegistrationError,
    main,
    nucleus_url,
    register_device,
    remove_device,
    update_device_policy,
)
from edge_deployment.runtime.spooler import DISK_SPOOLER
from shared.config import OfflineSpoolSettings
from tests.edge_deployment.conftest import ACCOUNT, REGION


@pytest.fixture
def names(settings):
    return edge_names(settings, account=ACCOUNT, region=REGION)


@pytest.fixture
def iot(names):
    """An account where the edge_deployment app is deployed (its thing group and role alias)."""
    with mock_aws():
        client = boto3.client("iot", region_name=REGION)
        _deploy_app(client, names)
        yield client


def _deploy_app(client, names) -> None:
    client.create_thing_group(thingGroupName=names.thing_group)
    client.create_role_alias(roleAlias=names.role_alias, roleArn=f"arn:aws:iam::{ACCOUNT}:role/token-exchange")


def _policies(client) -> list[str]:
    return sorted(policy["policyName"] for policy in client.list_policies()["policies"])


def _sent(client, operation: str) -> list[dict]:
    calls: list[dict] = []
    client.meta.events.register(f"provide-client-params.iot.{operation}", lambda params, **_: calls.append(params))
    return calls


def test_a_device_is_registered_in_the_group_with_its_own_exclusive_certificate_and_policy(
    iot, names, tmp_path, settings
):
    attachments = _sent(iot, "AttachThingPrincipal")
    registration = register_device(
        iot, names=names, thing_name="line-1-cam-1", output_dir=tmp_path / "cam1", region=REGION
    )

    assert iot.describe_thing(thingName="line-1-cam-1")["thingArn"] == registration.thing_arn
    (principal,) = iot.list_thing_principals(thingName="line-1-cam-1")["principals"]
    assert principal == registration.certificate_arn
    assert attachments == [
        {"thingName": "line-1-cam-1", "principal": principal, "thingPrincipalType": "EXCLUSIVE_THING"}
    ]
    certificate = iot.describe_certificate(certificateId=registration.certificate_id)["certificateDescription"]
    assert certificate["status"] == "ACTIVE"
    # its own policy, with its thing name written in (Greengrass core devices cannot use thing policy variables)
    policy = "tag-inspect-edge-device-line-1-cam-1"
    assert registration.policy_name == policy
    assert [p["policyName"] for p in iot.list_attached_policies(target=principal)["policies"]] == [policy]
    document = json.loads(iot.get_policy(policyName=policy)["policyDocument"])
    assert document == device_policy_document(
        partition="aws",
        region=REGION,
        account=ACCOUNT,
        thing_name="line-1-cam-1",
        role_alias=names.role_alias,
        results_topic=settings.edge_deployment.results_topic,
        heartbeat_topic=settings.edge_deployment.heartbeat_topic,
    )
    members = iot.list_things_in_thing_group(thingGroupName=names.thing_group)["things"]
    assert members == ["line-1-cam-1"]

    key_file = tmp_path / "cam1" / "private.pem.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert (tmp_path / "cam1" / "device.pem.crt").read_text() == certificate["certificatePem"]
    config = (tmp_path / "cam1" / "greengrass-config.yaml").read_text()
    assert 'thingName: "line-1-cam-1"' in config
    assert f'iotRoleAlias: "{names.role_alias}"' in config
    assert f'iotDataEndpoint: "{registration.iot_data_endpoint}"' in config
    assert f'iotCredEndpoint: "{registration.iot_credentials_endpoint}"' in config
    assert registration.iot_data_endpoint.endswith(f"-ats.iot.{REGION}.amazonaws.com")
    assert ".credentials.iot." in registration.iot_credentials_endpoint


def test_registration_refuses_to_run_before_the_app_is_deployed(tmp_path, names):
    with mock_aws():
        client = boto3.client("iot", region_name=REGION)
        with pytest.raises(
            RegistrationError, match="thing group 'tag-inspection-line-1' not found: deploy the edge_deployment app"
        ):
            register_device(client, names=names, thing_name="cam", output_dir=tmp_path, region=REGION)
        assert client.list_things()["things"] == [] and _policies(client) == []


def test_a_thing_that_already_has_a_certificate_is_not_registered_twice(iot, names, tmp_path):
    register_device(iot, names=names, thing_name="cam", output_dir=tmp_path / "first", region=REGION)
    with pytest.raises(RegistrationError, match="exists already with certificate"):
        register_device(iot, names=names, thing_name="cam", output_dir=tmp_path / "second", region=REGION)
    assert len(iot.list_certificates()["certificates"]) == 1


@pytest.mark.parametrize("name", ["", "cam 1", "cam/1", "cam+1", "cam#1", "x" * 129, "line:1"])
def test_thing_names_that_would_break_topics_or_upload_paths_are_refused(iot, names, tmp_path, name):
    with pytest.raises(RegistrationError, match="thing name"):
        register_device(iot, names=names, thing_name=name, output_dir=tmp_path, region=REGION)
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []
    assert _policies(iot) == []


def test_a_thing_name_too_long_for_its_policy_document_is_refused(iot, names, tmp_path):
    with pytest.raises(RegistrationError, match=r"its IoT policy would be \d+ characters, over the 2048"):
        register_device(iot, names=names, thing_name="c" * 120, output_dir=tmp_path, region=REGION)
    assert iot.list_things()["things"] == [] and _policies(iot) == []


def test_a_thing_already_in_another_thing_group_is_refused_naming_the_group(iot, names, tmp_path):
    # e.g. registered for line 2 before: both lines' deployments would reach it, with two versions of our components
    iot.create_thing(thingName="line-2-cam-1")
    iot.create_thing_group(thingGroupName="tag-inspection-line-2")
    iot.add_thing_to_thing_group(thingGroupName="tag-inspection-line-2", thingName="line-2-cam-1")
    with pytest.raises(RegistrationError, match=r"is in thing group\(s\) tag-inspection-line-2 already"):
        register_device(iot, names=names, thing_name="line-2-cam-1", output_dir=tmp_path / "a", region=REGION)
    assert iot.list_certificates()["certificates"] == [] and _policies(iot) == []
    assert iot.list_things_in_thing_group(thingGroupName=names.thing_group)["things"] == []
    # on purpose: it stays in both groups
    register_device(
        iot, names=names, thing_name="line-2-cam-1", output_dir=tmp_path / "b", region=REGION, keep_other_groups=True
    )
    groups = {g["groupName"] for g in iot.list_thing_groups_for_thing(thingName="line-2-cam-1")["thingGroups"]}
    assert groups == {names.thing_group, "tag-inspection-line-2"}


def test_a_failure_half_way_undoes_everything_it_created(iot, names, tmp_path, monkeypatch):
    def refuse(**kwargs):
        raise ClientError(
            {"Error": {"Code": "LimitExceededException", "Message": "too many things"}}, "AddThingToThingGroup"
        )

    monkeypatch.setattr(iot, "add_thing_to_thing_group", refuse)
    with pytest.raises(RegistrationError, match=r"failed and was undone: .*too many things"):
        register_device(iot, names=names, thing_name="cam", output_dir=tmp_path / "cam", region=REGION)
    assert iot.list_things()["things"] == []
    assert iot.list_certificates()["certificates"] == []
    assert _policies(iot) == []
    assert list((tmp_path / "cam").iterdir()) == []


def test_existing_key_files_are_never_overwritten(iot, names, tmp_path):
    (tmp_path / "private.pem.key").write_text("someone's key")
    with pytest.raises(RegistrationError, match="nothing is overwritten"):
        register_device(iot, names=names, thing_name="cam", output_dir=tmp_path, region=REGION)
    assert (tmp_path / "private.pem.key").read_text() == "someone's key"
    assert iot.list_certificates()["certificates"] == []


def test_the_command_line_prints_what_the_installer_needs(tmp_path, capsys, settings):
    names = edge_names(settings, account=ACCOUNT, region=REGION)
    with mock_aws():
        client = boto3.client("iot", region_name=REGION)
        _deploy_app(client, names)
        assert main(["--thing-name", "line-1-cam-2", "--region", REGION, "--output-dir", str(tmp_path / "d")]) == 0
        text = capsys.readouterr().out
        assert (
            main(["--thing-name", "line-1-cam-3", "--region", REGION, "--output-dir", str(tmp_path / "e"), "--json"])
            == 0
        )
        as_json = json.loads(capsys.readouterr().out)
    for expected in (
        "line-1-cam-2",
        names.role_alias,
        "-ats.iot.",
        ".credentials.iot.",
        "private.pem.key",
        "--init-config",
        "AmazonRootCA1.pem",
    ):
        assert expected in text
    assert as_json["thing_group"] == names.thing_group and as_json["region"] == REGION


def test_the_command_line_explains_a_missing_app(tmp_path, capsys):
    with mock_aws():
        assert main(["--thing-name", "cam", "--region", REGION, "--output-dir", str(tmp_path)]) == 1
    assert "deploy the edge_deployment app" in capsys.readouterr().err


def test_a_removed_device_leaves_nothing_behind_and_removing_again_says_so(iot, names, tmp_path):
    register_device(iot, names=names, thing_name="line-1-cam-1", output_dir=tmp_path / "cam", region=REGION)
    certificate_id = iot.list_certificates()["certificates"][0]["certificateId"]
    greengrass = boto3.client("greengrassv2", region_name=REGION)
    with Stubber(greengrass) as stub:
        stub.add_response("delete_core_device", {}, {"coreDeviceThingName": "line-1-cam-1"})
        done = remove_device(iot, greengrass, names=names, thing_name="line-1-cam-1")
    assert done == [
        f"removed line-1-cam-1 from thing group {names.thing_group}",
        f"deactivated and deleted certificate {certificate_id}",
        "deleted IoT policy tag-inspect-edge-device-line-1-cam-1",
        "deleted Greengrass core device line-1-cam-1",
        "deleted thing line-1-cam-1",
    ]
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []
    assert _policies(iot) == []
    with Stubber(greengrass) as stub:
        stub.add_client_error("delete_core_device", "ResourceNotFoundException", http_status_code=404)
        with pytest.raises(RegistrationError, match="no device 'line-1-cam-1' here: nothing to remove"):
            remove_device(iot, greengrass, names=names, thing_name="line-1-cam-1")
    # and the name can be registered again
    register_device(iot, names=names, thing_name="line-1-cam-1", output_dir=tmp_path / "again", region=REGION)


def test_the_policy_is_written_again_from_the_configuration(iot, names, tmp_path):
    register_device(iot, names=names, thing_name="line-1-cam-1", output_dir=tmp_path / "cam", region=REGION)
    renamed = dataclasses.replace(names, results_topic="plant-7/{thing}/detections")
    for _ in range(6):  # IoT keeps five versions: the oldest non-default one makes room
        update_device_policy(iot, names=renamed, thing_name="line-1-cam-1")
    policy = iot.get_policy(policyName="tag-inspect-edge-device-line-1-cam-1")
    assert "topic/plant-7/line-1-cam-1/detections" in policy["policyDocument"]
    versions = iot.list_policy_versions(policyName="tag-inspect-edge-device-line-1-cam-1")["policyVersions"]
    assert len(versions) == 5 and sum(v["isDefaultVersion"] for v in versions) == 1
    with pytest.raises(RegistrationError, match=r"has no IoT policy .*: register it first"):
        update_device_policy(iot, names=renamed, thing_name="line-1-cam-9")


def test_an_existing_policy_of_that_name_stops_the_registration_before_anything_is_made(iot, names, tmp_path):
    iot.create_policy(
        policyName="tag-inspect-edge-device-cam", policyDocument='{"Version":"2012-10-17","Statement":[]}'
    )
    with pytest.raises(RegistrationError, match="run --remove for it first"):
        register_device(iot, names=names, thing_name="cam", output_dir=tmp_path, region=REGION)
    assert iot.list_things()["things"] == [] and iot.list_certificates()["certificates"] == []


# --------------------------------------------------------------------------------------------------
# The nucleus's spool: on disk through the plugin the deployment brings (edge_deployment.offline_spool)
# --------------------------------------------------------------------------------------------------


def _nucleus_spooler(config_text: str) -> dict:
    document = yaml.safe_load(config_text)
    return document["services"]["aws.greengrass.Nucleus"]["configuration"]["mqtt"]["spooler"]


def test_a_registered_device_spools_on_disk_through_the_plugin_the_deployment_brings(iot, names, tmp_path):
    spool = OfflineSpoolSettings(max_size_mb=16)
    registration = register_device(
        iot, names=names, thing_name="line-1-cam-1", output_dir=tmp_path / "cam1", region=REGION, spool=spool
    )
    text = (tmp_path / "cam1" / "greengrass-config.yaml").read_text()
    document = yaml.safe_load(text)  # the installer reads YAML: the file must parse, not only contain the words
    nucleus = document["services"]["aws.greengrass.Nucleus"]
    assert nucleus["configuration"]["iotRoleAlias"] == names.role_alias
    assert nucleus["configuration"]["mqtt"]["spooler"] == {
        "storageType": "Disk",
        "pluginName": DISK_SPOOLER,
        "maxSizeInBytes": 16 * 1024 * 1024,
        "keepQos0WhenOffline": False,
    }
    assert document["system"]["thingName"] == "line-1-cam-1"
    assert registration.nucleus_version == spool.nucleus_version


def test_without_a_disk_spooler_the_device_keeps_the_memory_spool_at_the_configured_size(iot, names, tmp_path):
    spool = OfflineSpoolSettings(disk_spooler_version=None, nucleus_version="2.10.3", max_size_mb=8)
    register_device(iot, names=names, thing_name="cam-2", output_dir=tmp_path / "c", region=REGION, spool=spool)
    spooler = _nucleus_spooler((tmp_path / "c" / "greengrass-config.yaml").read_text())
    # no storageType at all: a nucleus before 2.11 knows no "Disk" and would stop publishing
    assert spooler == {"maxSizeInBytes": 8 * 1024 * 1024, "keepQos0WhenOffline": False}


def test_the_installer_printed_is_the_configured_nucleus_version_not_the_latest(tmp_path, capsys, settings, names):
    with mock_aws():
        _deploy_app(boto3.client("iot", region_name=REGION), names)
        assert main(["--thing-name", "line-1-cam-2", "--region", REGION, "--output-dir", str(tmp_path / "d")]) == 0
    text = capsys.readouterr().out
    version = settings.edge_deployment.offline_spool.nucleus_version
    assert nucleus_url(version) in text
    assert nucleus_url(version).endswith(f"/releases/greengrass-{version}.zip")
    assert "latest" not in text


def test_a_pilot_device_joins_its_stage_s_group_and_keeps_the_app_s_alarms(tmp_path, capsys, settings):
    names = edge_names(settings, account=ACCOUNT, region=REGION)
    pilot = settings.edge_deployment.effective_stages[0].thing_groups[0]
    with mock_aws():
        client = boto3.client("iot", region_name=REGION)
        _deploy_app(client, names)
        client.create_thing_group(thingGroupName=pilot)
        arguments = ["--thing-name", "line-1-pilot-cam", "--region", REGION, "--output-dir", str(tmp_path / "p")]
        assert main([*arguments, "--thing-group", pilot, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["thing_group"] == pilot
        assert client.list_things_in_thing_group(thingGroupName=pilot)["things"] == ["line-1-pilot-cam"]
        assert client.list_things_in_thing_group(thingGroupName=names.thing_group)["things"] == []
        alarms = boto3.client("cloudwatch", region_name=REGION).describe_alarms()["MetricAlarms"]
        dimensions = {d["Name"]: d["Value"] for alarm in alarms for d in alarm["Dimensions"]}
        assert dimensions["ThingGroup"] == names.thing_group  # the telemetry's group name, whatever the stage
        assert (
            main(
                ["--thing-name", "x", "--region", REGION, "--output-dir", str(tmp_path / "x"), "--thing-group", "other"]
            )
            == 1
        )
    assert "--thing-group other is no stage's thing group" in capsys.readouterr().err
