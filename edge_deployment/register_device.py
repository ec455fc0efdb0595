"""Register an inspection device (a Greengrass core device) with AWS IoT, or remove one.

    .venv/bin/python -m edge_deployment.register_device --thing-name line-1-cam-1 [--env prod]
        [--output-dir ~/greengrass-devices/line-1-cam-1] [--region eu-west-1] [--profile name] [--json]
        [--keep-other-groups] [--thing-group tag-inspection-line-1-pilot]
    .venv/bin/python -m edge_deployment.register_device --thing-name line-1-cam-1 --update-policy
    .venv/bin/python -m edge_deployment.register_device --thing-name line-1-cam-1 --remove

Registering creates the IoT thing, a key pair and certificate (written to the output folder, private
key 0600), the device's own IoT policy (its thing name written in: Greengrass core devices cannot use
thing policy variables; see edge_deployment/device_policy.py), attaches the policy to the certificate
and the certificate exclusively to the thing, and adds the thing to the app's thing group, whose
deployment the device then receives. It prints (and writes as greengrass-config.yaml) what the
Greengrass installer needs: data and credentials endpoints, role alias, thing name, certificate paths.
The edge_deployment app must be deployed first. If a step fails, what the script created so far is
removed again.

It also creates the device's own alarms (edge_deployment/device_alarms.py: silent, uploads dropped,
messages dropped).

--thing-group puts the device into another stage's thing group (edge_deployment.stages, e.g. the pilot)
instead of thing_group_name; give it to --remove too for such a device. The group must exist.

--update-policy writes the device's policy and alarms again from the configuration (after a change of
the result or heartbeat topics, or of edge_deployment.monitoring); --remove takes the device out of
the group and deletes its certificate, policy, Greengrass core device, thing and alarms.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from edge_deployment.device_alarms import delete_device_alarms, put_device_alarms
from edge_deployment.device_policy import MAX_POLICY_CHARACTERS, device_policy_document, device_policy_name, policy_json
from edge_deployment.naming import EdgeNames, edge_names
from edge_deployment.runtime.spooler import DISK_SPOOLER
from shared.config import DEFAULT_CONFIG_FILE, ConfigError, OfflineSpoolSettings, load_settings

THING_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")  # no ':' either: the name is also a path and an MQTT level
ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"


DEVICE_DIR = "/greengrass/v2/device"
DEFAULT_SPOOL = OfflineSpoolSettings()  # the configuration's defaults (settings frozen: safe to share)


def nucleus_url(version: str) -> str:
    """The Greengrass installer of one nucleus version (not `-latest`: the disk spooler works with one range)."""
    return f"https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-{version}.zip"


def spooler_config_lines(spool: OfflineSpoolSettings, *, indent: str) -> list[str]:
    """The nucleus's mqtt.spooler settings for the installer's --init-config (YAML lines, under `configuration:`).

    With a disk spooler version the spool is on disk: the nucleus finds the plugin when it starts after the
    deployment brought it (installing a plugin restarts the nucleus), and until then, or if the plugin is missing,
    it spools in memory. Without one, only the spool's size is set (the nucleus's memory spool).
    """
    lines = [f"{indent}mqtt:", f"{indent}  spooler:"]
    if spool.disk_spooler_version is not None:
        lines += [f'{indent}    storageType: "Disk"', f'{indent}    pluginName: "{DISK_SPOOLER}"']
    lines += [f"{indent}    maxSizeInBytes: {spool.max_size_bytes}", f"{indent}    keepQos0WhenOffline: false"]
    return lines


class RegistrationError(Exception):
    """What stopped the registration, in words for the person running the script."""


@dataclass(frozen=True)
class Registration:
    thing_name: str
    thing_arn: str
    thing_group: str
    certificate_arn: str
    certificate_id: str
    certificate_file: str
    private_key_file: str
    root_ca_file: str
    iot_data_endpoint: str
    iot_credentials_endpoint: str
    role_alias: str
    policy_name: str
    region: str
    config_file: str
    nucleus_version: str = DEFAULT_SPOOL.nucleus_version

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def check_prerequisites(iot: Any, names: EdgeNames) -> str:
    """The app's thing group and role alias exist (the app is deployed here); returns the role alias ARN."""
    checks = (
        ("thing group", names.thing_group, lambda: iot.describe_thing_group(thingGroupName=names.thing_group)),
        ("role alias", names.role_alias, lambda: iot.describe_role_alias(roleAlias=names.role_alias)),
    )
    answers = []
    for kind, name, call in checks:
        try:
            answers.append(call())
        except ClientError as error:
            if _code(error) == "ResourceNotFoundException":
                raise RegistrationError(
                    f"{kind} {name!r} not found: deploy the edge_deployment app to this account and region first"
                ) from None
            raise
    return str(answers[1]["roleAliasDescription"]["roleAliasArn"])


def device_policy(names: EdgeNames, thing_name: str, role_alias_arn: str) -> tuple[str, str]:
    """(name, JSON document) of the device's own IoT policy, in the role alias's partition, region and account."""
    _, partition, _, region, account, _ = role_alias_arn.split(":", 5)
    document = policy_json(
        device_policy_document(
            partition=partition,
            region=region,
            account=account,
            thing_name=thing_name,
            role_alias=names.role_alias,
            results_topic=names.results_topic,
            heartbeat_topic=names.heartbeat_topic,
        )
    )
    if len(document) > MAX_POLICY_CHARACTERS:
        raise RegistrationError(
            f"thing name {thing_name!r}: its IoT policy would be {len(document)} characters, over the "
            f"{MAX_POLICY_CHARACTERS} AWS IoT allows; use a shorter thing name"
        )
    return device_policy_name(names.device_policy_prefix, thing_name), document


def _other_groups(iot: Any, thing_name: str, own_group: str) -> list[str]:
    groups: list[str] = []
    token: str | None = None
    while True:
        page = iot.list_thing_groups_for_thing(thingName=thing_name, **({"nextToken": token} if token else {}))
        groups += [group["groupName"] for group in page.get("thingGroups", []) if group["groupName"] != own_group]
        token = page.get("nextToken")
        if not token:
            return groups


def register_device(
    iot: Any,
    *,
    names: EdgeNames,
    thing_name: str,
    output_dir: Path,
    region: str,
    keep_other_groups: bool = False,
    spool: OfflineSpoolSettings = DEFAULT_SPOOL,
) -> Registration:
    """Create thing, certificate and the device's policy, attach them, add to the group; undo all on failure."""
    _check_thing_name(thing_name)
    role_alias_arn = check_prerequisites(iot, names)
    policy_name, policy_document = device_policy(names, thing_name, role_alias_arn)
    existing = _thing(iot, thing_name)
    if existing is not None:
        principals = iot.list_thing_principals(thingName=thing_name).get("principals", [])
        if principals:
            raise RegistrationError(
                f"thing {thing_name!r} exists already with certificate(s) {', '.join(principals)}: pick another "
                "name, or remove it first (--remove)"
            )
        others = _other_groups(iot, thing_name, names.thing_group)
        if others and not keep_other_groups:
            raise RegistrationError(
                f"thing {thing_name!r} is in thing group(s) {', '.join(others)} already: their Greengrass deployments "
                f"would reach it beside {names.thing_group}'s (two versions of the same components conflict and "
                "fail the deployment). Remove it from them (aws iot remove-thing-from-thing-group), or pass "
                "--keep-other-groups if their deployments are meant for it too"
            )
    if _policy_exists(iot, policy_name):
        raise RegistrationError(
            f"IoT policy {policy_name!r} exists already (a device of that name was not removed completely): "
            "run --remove for it first"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    certificate_file = output_dir / "device.pem.crt"
    private_key_file = output_dir / "private.pem.key"
    for path in (certificate_file, private_key_file):
        if path.exists():
            raise RegistrationError(f"{path} exists already: use an empty --output-dir, nothing is overwritten")

    undo: list[tuple[str, Any]] = []
    try:
        if existing is None:
            thing_arn = iot.create_thing(thingName=thing_name)["thingArn"]
            undo.append(("thing", thing_name))
        else:
            thing_arn = existing["thingArn"]
        certificate = iot.create_keys_and_certificate(setAsActive=True)
        certificate_arn = certificate["certificateArn"]
        undo.append(("certificate", certificate["certificateId"]))
        private_key_file.touch(mode=0o600, exist_ok=False)
        private_key_file.write_text(certificate["keyPair"]["PrivateKey"], encoding="utf-8")
        undo.append(("file", private_key_file))
        certificate_file.write_text(certificate["certificatePem"], encoding="utf-8")
        undo.append(("file", certificate_file))
        iot.create_policy(policyName=policy_name, policyDocument=policy_document)
        undo.append(("policy", policy_name))
        iot.attach_policy(policyName=policy_name, target=certificate_arn)
        undo.append(("attachment", (policy_name, certificate_arn)))
        # Exclusive: this certificate is this device's identity and nothing else's.
        iot.attach_thing_principal(
            thingName=thing_name, principal=certificate_arn, thingPrincipalType="EXCLUSIVE_THING"
        )
        undo.append(("principal", (thing_name, certificate_arn)))
        iot.add_thing_to_thing_group(thingGroupName=names.thing_group, thingName=thing_name)
        undo.append(("membership", (names.thing_group, thing_name)))
        data_endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        credentials_endpoint = iot.describe_endpoint(endpointType="iot:CredentialProvider")["endpointAddress"]
    except (ClientError, BotoCoreError, OSError) as error:
        _undo(iot, undo)
        raise RegistrationError(f"registration of {thing_name!r} failed and was undone: {error}") from error

    root_ca_file = output_dir / "AmazonRootCA1.pem"
    registration = Registration(
        thing_name=thing_name,
        thing_arn=thing_arn,
        thing_group=names.thing_group,
        certificate_arn=certificate_arn,
        certificate_id=certificate["certificateId"],
        certificate_file=str(certificate_file.resolve()),
        private_key_file=str(private_key_file.resolve()),
        root_ca_file=str(root_ca_file.resolve()),
        iot_data_endpoint=data_endpoint,
        iot_credentials_endpoint=credentials_endpoint,
        role_alias=names.role_alias,
        policy_name=policy_name,
        region=region,
        config_file=str((output_dir / "greengrass-config.yaml").resolve()),
        nucleus_version=spool.nucleus_version,
    )
    Path(registration.config_file).write_text(greengrass_config(registration, device_dir=DEVICE_DIR, spool=spool))
    return registration


def _undo(iot: Any, undo: list[tuple[str, Any]]) -> None:
    for kind, value in reversed(undo):
        try:
            if kind == "membership":
                iot.remove_thing_from_thing_group(thingGroupName=value[0], thingName=value[1])
            elif kind == "principal":
                iot.detach_thing_principal(thingName=value[0], principal=value[1])
            elif kind == "attachment":
                iot.detach_policy(policyName=value[0], target=value[1])
            elif kind == "policy":
                iot.delete_policy(policyName=value)
            elif kind == "certificate":
                iot.update_certificate(certificateId=value, newStatus="INACTIVE")
                iot.delete_certificate(certificateId=value)
            elif kind == "thing":
                iot.delete_thing(thingName=value)
            elif kind == "file":
                Path(value).unlink(missing_ok=True)
        except (ClientError, BotoCoreError, OSError) as error:  # keep undoing the rest
            print(f"warning: could not undo {kind} {value}: {error}", file=sys.stderr)


def _check_thing_name(thing_name: str) -> None:
    if not THING_NAME.match(thing_name):
        raise RegistrationError(
            f"thing name {thing_name!r}: use 1-128 letters, digits, '_' or '-' (it names the device's topics and "
            "its upload folder)"
        )


def _thing(iot: Any, thing_name: str) -> dict[str, Any] | None:
    try:
        return dict(iot.describe_thing(thingName=thing_name))
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
        return None


def _policy_exists(iot: Any, policy_name: str) -> bool:
    try:
        iot.get_policy(policyName=policy_name)
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
        return False
    return True


MAX_POLICY_VERSIONS = 5  # AWS IoT keeps at most five versions of a policy


def update_device_policy(iot: Any, *, names: EdgeNames, thing_name: str) -> str:
    """Write the device's policy again from the configuration, as a new default version; returns its name."""
    _check_thing_name(thing_name)
    role_alias_arn = check_prerequisites(iot, names)
    policy_name, document = device_policy(names, thing_name, role_alias_arn)
    if not _policy_exists(iot, policy_name):
        raise RegistrationError(f"device {thing_name!r} has no IoT policy {policy_name!r}: register it first")
    versions = iot.list_policy_versions(policyName=policy_name).get("policyVersions", [])
    if len(versions) >= MAX_POLICY_VERSIONS:
        oldest = min((v for v in versions if not v.get("isDefaultVersion")), key=lambda v: v["createDate"])
        iot.delete_policy_version(policyName=policy_name, policyVersionId=oldest["versionId"])
    iot.create_policy_version(policyName=policy_name, policyDocument=document, setAsDefault=True)
    return policy_name


def remove_device(iot: Any, greengrass: Any, *, names: EdgeNames, thing_name: str) -> list[str]:
    """Take the device out of the group and delete its certificates, policy, core device and thing.

    Returns what was done, in order. Whatever is already gone is skipped, so a removal that stopped
    half-way can be run again.
    """
    _check_thing_name(thing_name)
    policy_name = device_policy_name(names.device_policy_prefix, thing_name)
    done: list[str] = []
    thing = _thing(iot, thing_name)
    if thing is not None:
        try:
            iot.remove_thing_from_thing_group(thingGroupName=names.thing_group, thingName=thing_name)
            done.append(f"removed {thing_name} from thing group {names.thing_group}")
        except ClientError as error:
            if _code(error) != "ResourceNotFoundException":
                raise
        done += _remove_certificates(iot, thing_name, policy_name)
    if _policy_exists(iot, policy_name):
        for version in iot.list_policy_versions(policyName=policy_name).get("policyVersions", []):
            if not version.get("isDefaultVersion"):
                iot.delete_policy_version(policyName=policy_name, policyVersionId=version["versionId"])
        iot.delete_policy(policyName=policy_name)
        done.append(f"deleted IoT policy {policy_name}")
    try:
        greengrass.delete_core_device(coreDeviceThingName=thing_name)
        done.append(f"deleted Greengrass core device {thing_name}")
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
    if thing is not None:
        iot.delete_thing(thingName=thing_name)
        done.append(f"deleted thing {thing_name}")
    if not done:
        raise RegistrationError(f"no device {thing_name!r} here: nothing to remove")
    return done


def _remove_certificates(iot: Any, thing_name: str, policy_name: str) -> list[str]:
    done = []
    has_policy = _policy_exists(iot, policy_name)
    for principal in iot.list_thing_principals(thingName=thing_name).get("principals", []):
        if has_policy:
            iot.detach_policy(policyName=policy_name, target=principal)
        iot.detach_thing_principal(thingName=thing_name, principal=principal)
        certificate_id = principal.rsplit("/", 1)[-1]
        iot.update_certificate(certificateId=certificate_id, newStatus="INACTIVE")
        try:
            iot.delete_certificate(certificateId=certificate_id)
        except ClientError as error:
            raise RegistrationError(
                f"certificate {certificate_id} was deactivated and detached from {thing_name}, but cannot be "
                f"deleted ({_code(error)}: another policy is attached to it?); detach it and run --remove again"
            ) from None
        done.append(f"deactivated and deleted certificate {certificate_id}")
    return done


def greengrass_config(registration: Registration, *, device_dir: str, spool: OfflineSpoolSettings | None = None) -> str:
    """The Greengrass installer's --init-config file, with the certificate files copied to `device_dir`."""
    spool = spool or OfflineSpoolSettings()
    return "\n".join(
        [
            "# Greengrass nucleus configuration for this device (installer: --init-config this file).",
            "# Copy device.pem.crt, private.pem.key and AmazonRootCA1.pem to " + device_dir + " first.",
            "system:",
            f'  certificateFilePath: "{device_dir}/device.pem.crt"',
            f'  privateKeyPath: "{device_dir}/private.pem.key"',
            f'  rootCaPath: "{device_dir}/AmazonRootCA1.pem"',
            '  rootpath: "/greengrass/v2"',
            f'  thingName: "{registration.thing_name}"',
            "services:",
            "  aws.greengrass.Nucleus:",
            '    componentType: "NUCLEUS"',
            "    configuration:",
            f'      awsRegion: "{registration.region}"',
            f'      iotRoleAlias: "{registration.role_alias}"',
            f'      iotDataEndpoint: "{registration.iot_data_endpoint}"',
            f'      iotCredEndpoint: "{registration.iot_credentials_endpoint}"',
            *spooler_config_lines(spool, indent="      "),
            "",
        ]
    )


def instructions(registration: Registration) -> str:
    device_dir = DEVICE_DIR
    return f"""Registered {registration.thing_name} in thing group {registration.thing_group} ({registration.region}).

Greengrass installer settings
  thing name            {registration.thing_name}
  iot data endpoint     {registration.iot_data_endpoint}
  iot cred endpoint     {registration.iot_credentials_endpoint}
  role alias            {registration.role_alias}
  IoT policy            {registration.policy_name}   (this device's own)
  certificate           {registration.certificate_file}
  private key           {registration.private_key_file}   (keep it secret; it never leaves this folder)
  root CA               {registration.root_ca_file}   (download: curl -o AmazonRootCA1.pem {ROOT_CA_URL})
  nucleus config        {registration.config_file}   (spools MQTT messages on disk while offline)
  nucleus version       {registration.nucleus_version}   (edge_deployment.offline_spool.nucleus_version)

On the device (Java 11+ installed; the files above copied to {device_dir}):
  curl -s {nucleus_url(registration.nucleus_version)} -o greengrass-nucleus.zip
  unzip greengrass-nucleus.zip -d GreengrassInstaller
  sudo -E java -Droot=/greengrass/v2 -Dlog.store=FILE -jar GreengrassInstaller/lib/Greengrass.jar \\
      --init-config {device_dir}/greengrass-config.yaml \\
      --component-default-user ggc_user:ggc_group --setup-system-service true

The device then receives the thing group's current deployment (inference + model components, and the
disk spooler plugin, whose installation restarts the nucleus once).
"""


def stage_membership(names: EdgeNames, stage_groups: Sequence[str], thing_group: str | None) -> EdgeNames:
    """The names with the device's thing group: a stage's (`--thing-group`) or the app's own.

    The device's deployments come from that group; its metrics and alarms keep the app's group name.
    """
    if not thing_group:
        return names
    if thing_group not in stage_groups:
        raise RegistrationError(
            f"--thing-group {thing_group} is no stage's thing group (edge_deployment.stages: {', '.join(stage_groups)})"
        )
    return dataclasses.replace(names, thing_group=thing_group)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thing-name", required=True, help="the device's IoT thing name (unique in the account)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--remove", action="store_true", help="remove the device: group, certificate, policy, thing")
    mode.add_argument(
        "--update-policy",
        action="store_true",
        help="write the device's IoT policy and alarms again from the configuration",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to write the certificate and key (default: ~/greengrass-devices/<thing name>, outside the repo)",
    )
    parser.add_argument(
        "--keep-other-groups",
        action="store_true",
        help="register a thing that is in other thing groups too (their deployments reach it as well)",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file")
    parser.add_argument("--env", help="environment of the configuration (its account and region)")
    parser.add_argument("--region", help="AWS region (default: the environment's, else the AWS CLI's)")
    parser.add_argument("--profile", help="AWS CLI profile")
    parser.add_argument("--json", action="store_true", help="print the registration as JSON")
    parser.add_argument(
        "--thing-group", help="a stage's thing group (edge_deployment.stages) instead of thing_group_name"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        import boto3  # noqa: PLC0415 - keep --help fast
        from botocore.config import Config  # noqa: PLC0415

        settings = load_settings(args.config, environment=args.env)
        session = boto3.Session(profile_name=args.profile)
        region = args.region or (settings.environment.region if settings.environment else None) or session.region_name
        if not region:
            raise RegistrationError("no AWS region: pass --region, --env or configure the AWS CLI")
        account = session.client("sts", region_name=region).get_caller_identity()["Account"]
        if settings.environment and settings.environment.account != account:
            raise RegistrationError(
                f"the credentials are for account {account}, the environment {args.env} is account "
                f"{settings.environment.account}"
            )
        names = edge_names(settings, account=account, region=region)
        membership = stage_membership(names, settings.edge_deployment.stage_thing_groups, args.thing_group)
        # Standard retry mode: throttling and transient errors are retried with backoff.
        retrying = Config(retries={"mode": "standard", "max_attempts": 8})
        iot = session.client("iot", region_name=region, config=retrying)
        cloudwatch = session.client("cloudwatch", region_name=region, config=retrying)
        monitoring = settings.edge_deployment.monitoring
        if args.remove:
            greengrass = session.client("greengrassv2", region_name=region, config=retrying)
            done = remove_device(iot, greengrass, names=membership, thing_name=args.thing_name)
            done += [f"deleted alarm {name}" for name in delete_device_alarms(cloudwatch, names, args.thing_name)]
            print("\n".join(done))
            return 0
        if args.update_policy:
            policy = update_device_policy(iot, names=names, thing_name=args.thing_name)
            print(f"IoT policy {policy} of {args.thing_name} now has the configuration's topics and role alias")
            alarms = put_device_alarms(cloudwatch, names, monitoring, args.thing_name)
            print(f"alarms {', '.join(alarms)} now have the configuration's thresholds")
            return 0
        registration = register_device(
            iot,
            names=membership,
            thing_name=args.thing_name,
            output_dir=args.output_dir or Path.home() / "greengrass-devices" / args.thing_name,
            region=region,
            keep_other_groups=args.keep_other_groups,
            spool=settings.edge_deployment.offline_spool,
        )
        try:
            put_device_alarms(cloudwatch, names, monitoring, args.thing_name)
        except (ClientError, BotoCoreError) as error:
            # The device is registered and works; only its alarms are missing, and --update-policy adds them.
            print(
                f"warning: the device's alarms were not created ({error}); run --update-policy to add them",
                file=sys.stderr,
            )
    except (RegistrationError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ClientError, BotoCoreError) as error:
        print(f"error: AWS call failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(registration.to_json(), indent=2) if args.json else instructions(registration))
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
