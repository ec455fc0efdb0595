"""Register an inspection device (a Greengrass core device) with AWS IoT.

    .venv/bin/python -m edge_deployment.register_device --thing-name line-1-cam-1 [--env prod]
        [--output-dir ~/greengrass-devices/line-1-cam-1] [--region eu-west-1] [--profile name] [--json]

Creates the IoT thing, a key pair and certificate (written to the output folder, private key 0600),
attaches the app's device IoT policy to the certificate and the certificate exclusively to the thing,
and adds the thing to the app's thing group, whose deployment the device then receives. It prints
(and writes as greengrass-config.yaml) what the Greengrass installer needs: data and credentials
endpoints, role alias, thing name, certificate paths. The edge_deployment app must be deployed first.
If a step fails, what the script created so far is removed again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from edge_deployment.naming import EdgeNames, edge_names
from shared.config import DEFAULT_CONFIG_FILE, ConfigError, load_settings

THING_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")  # no ':' either: the name is also a path and an MQTT level
ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
NUCLEUS_URL = "https://d2s8p88vqu9w66.cloudfront.net/releases/greengrass-nucleus-latest.zip"


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
    region: str
    config_file: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def check_prerequisites(iot: Any, names: EdgeNames) -> None:
    """The app's thing group, role alias and device policy exist (the app is deployed in this account/region)."""
    checks = (
        ("thing group", names.thing_group, lambda: iot.describe_thing_group(thingGroupName=names.thing_group)),
        ("role alias", names.role_alias, lambda: iot.describe_role_alias(roleAlias=names.role_alias)),
        ("IoT policy", names.iot_policy, lambda: iot.get_policy(policyName=names.iot_policy)),
    )
    for kind, name, call in checks:
        try:
            call()
        except ClientError as error:
            if _code(error) == "ResourceNotFoundException":
                raise RegistrationError(
                    f"{kind} {name!r} not found: deploy the edge_deployment app to this account and region first"
                ) from None
            raise


def register_device(
    iot: Any,
    *,
    names: EdgeNames,
    thing_name: str,
    output_dir: Path,
    region: str,
) -> Registration:
    """Create thing + certificate, attach policy and thing, add to the group; undo everything on failure."""
    if not THING_NAME.match(thing_name):
        raise RegistrationError(
            f"thing name {thing_name!r}: use 1-128 letters, digits, '_' or '-' (it names the device's topics and "
            "its upload folder)"
        )
    check_prerequisites(iot, names)
    try:
        existing = iot.describe_thing(thingName=thing_name)
    except ClientError as error:
        if _code(error) != "ResourceNotFoundException":
            raise
        existing = None
    if existing is not None:
        principals = iot.list_thing_principals(thingName=thing_name).get("principals", [])
        if principals:
            raise RegistrationError(
                f"thing {thing_name!r} exists already with certificate(s) {', '.join(principals)}: pick another "
                "name, or detach and deactivate the old certificate first"
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
        iot.attach_policy(policyName=names.iot_policy, target=certificate_arn)
        undo.append(("policy", certificate_arn))
        # Exclusive: the certificate belongs to this thing only, so the IoT policy's thing variables
        # resolve even for the nucleus's extra MQTT connections (client ids <thing>#2, ...).
        iot.attach_thing_principal(
            thingName=thing_name, principal=certificate_arn, thingPrincipalType="EXCLUSIVE_THING"
        )
        undo.append(("principal", (thing_name, certificate_arn)))
        iot.add_thing_to_thing_group(thingGroupName=names.thing_group, thingName=thing_name)
        data_endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
        credentials_endpoint = iot.describe_endpoint(endpointType="iot:CredentialProvider")["endpointAddress"]
    except (ClientError, BotoCoreError, OSError) as error:
        _undo(iot, undo, names=names)
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
        region=region,
        config_file=str((output_dir / "greengrass-config.yaml").resolve()),
    )
    Path(registration.config_file).write_text(greengrass_config(registration, device_dir="/greengrass/v2/device"))
    return registration


def _undo(iot: Any, undo: list[tuple[str, Any]], *, names: EdgeNames) -> None:
    for kind, value in reversed(undo):
        try:
            if kind == "principal":
                iot.detach_thing_principal(thingName=value[0], principal=value[1])
            elif kind == "policy":
                iot.detach_policy(policyName=names.iot_policy, target=value)
            elif kind == "certificate":
                iot.update_certificate(certificateId=value, newStatus="INACTIVE")
                iot.delete_certificate(certificateId=value)
            elif kind == "thing":
                iot.delete_thing(thingName=value)
            elif kind == "file":
                Path(value).unlink(missing_ok=True)
        except (ClientError, BotoCoreError, OSError) as error:  # keep undoing the rest
            print(f"warning: could not undo {kind} {value}: {error}", file=sys.stderr)


def greengrass_config(registration: Registration, *, device_dir: str) -> str:
    """The Greengrass installer's --init-config file, with the certificate files copied to `device_dir`."""
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
            "",
        ]
    )


def instructions(registration: Registration) -> str:
    device_dir = "/greengrass/v2/device"
    return f"""Registered {registration.thing_name} in thing group {registration.thing_group} ({registration.region}).

Greengrass installer settings
  thing name            {registration.thing_name}
  iot data endpoint     {registration.iot_data_endpoint}
  iot cred endpoint     {registration.iot_credentials_endpoint}
  role alias            {registration.role_alias}
  certificate           {registration.certificate_file}
  private key           {registration.private_key_file}   (keep it secret; it never leaves this folder)
  root CA               {registration.root_ca_file}   (download: curl -o AmazonRootCA1.pem {ROOT_CA_URL})
  nucleus config        {registration.config_file}

On the device (Java 11+ installed; the files above copied to {device_dir}):
  curl -s {NUCLEUS_URL} -o greengrass-nucleus-latest.zip
  unzip greengrass-nucleus-latest.zip -d GreengrassInstaller
  sudo -E java -Droot=/greengrass/v2 -Dlog.store=FILE -jar GreengrassInstaller/lib/Greengrass.jar \\
      --init-config {device_dir}/greengrass-config.yaml \\
      --component-default-user ggc_user:ggc_group --setup-system-service true

The device then receives the thing group's current deployment (inference + model components).
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thing-name", required=True, help="the device's IoT thing name (unique in the account)")
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to write the certificate and key (default: ~/greengrass-devices/<thing name>, outside the repo)",
    )
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file")
    parser.add_argument("--env", help="environment of the configuration (its account and region)")
    parser.add_argument("--region", help="AWS region (default: the environment's, else the AWS CLI's)")
    parser.add_argument("--profile", help="AWS CLI profile")
    parser.add_argument("--json", action="store_true", help="print the registration as JSON")
    args = parser.parse_args(argv)
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
        # Standard retry mode: throttling and transient errors are retried with backoff.
        retrying = Config(retries={"mode": "standard", "max_attempts": 8})
        registration = register_device(
            session.client("iot", region_name=region, config=retrying),
            names=names,
            thing_name=args.thing_name,
            output_dir=args.output_dir or Path.home() / "greengrass-devices" / args.thing_name,
            region=region,
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
