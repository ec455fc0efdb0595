"""An optional simulated inspection device: an EC2 instance that registers itself and runs Greengrass.

Off by default (`edge_deployment.simulated_device: true` adds it). The instance (Ubuntu 24.04,
arm64) has no SSH access at all: no key pair and a security group without ingress; people reach it
with Session Manager. IMDSv2 only, encrypted disk, detailed monitoring, VPC flow logs. At first boot
it registers itself exactly like `register_device` (a thing named `<prefix>-sim-<instance id>`,
an exclusive certificate, its own IoT policy, the thing group) and installs the Greengrass nucleus,
which then receives the group's deployment. Its role may register only such things.
"""

from __future__ import annotations

import aws_cdk as cdk
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from edge_deployment.device_policy import device_policy_document, policy_json
from edge_deployment.fleet import DeviceFleet
from edge_deployment.naming import EdgeNames
from edge_deployment.register_device import ROOT_CA_URL, nucleus_url, spooler_config_lines
from shared.building_blocks import log_group, log_retention
from shared.config import OfflineSpoolSettings, Settings
from shared.guardrails import acknowledge, allow

UBUNTU_ARM64 = "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
DEVICE_DIR = "/greengrass/v2/device"


def simulated_thing_prefix(names: EdgeNames) -> str:
    return f"{names.prefix}-sim-"


THING_PLACEHOLDER = "__THING__"


def boot_script(
    *,
    names: EdgeNames,
    region: str,
    partition: str = "aws",
    account: str | None = None,
    spool: OfflineSpoolSettings | None = None,
) -> str:
    """First-boot script: register this instance as a device and install Greengrass (bash).

    The nucleus is `spool.nucleus_version`, set up to spool MQTT messages on disk like `register_device`'s devices.

    Like `register_device`, it gives the device its own IoT policy (device_policy.py), its thing name
    written into the document on the instance.
    """
    spool = spool or OfflineSpoolSettings()
    spooler = "\n".join(spooler_config_lines(spool, indent="      "))
    thing_prefix = simulated_thing_prefix(names)
    policy_template = policy_json(
        device_policy_document(
            partition=partition,
            region=region,
            account=account or names.account,
            thing_name=THING_PLACEHOLDER,
            role_alias=names.role_alias,
            results_topic=names.results_topic,
            heartbeat_topic=names.heartbeat_topic,
        )
    )
    return f"""#!/bin/bash
# Simulated inspection device: register with AWS IoT, install the Greengrass nucleus (first boot only).
set -euo pipefail
exec > >(tee -a /var/log/tag-inspection-device.log) 2>&1
export DEBIAN_FRONTEND=noninteractive PATH="$PATH:/snap/bin"
REGION="{region}"
IMDS_TOKEN=$(curl -sS -X PUT http://169.254.169.254/latest/api/token -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
INSTANCE_ID=$(curl -sS -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" http://169.254.169.254/latest/meta-data/instance-id)
THING="{thing_prefix}$INSTANCE_ID"
DEVICE_DIR="{DEVICE_DIR}"

apt-get update -y
apt-get install -y openjdk-17-jre-headless python3-venv python3-pip unzip curl
snap install aws-cli --classic

install -d -m 700 "$DEVICE_DIR"
if [ ! -s "$DEVICE_DIR/device.pem.crt" ]; then
  aws iot create-thing --region "$REGION" --thing-name "$THING" >/dev/null
  umask 077
  CERT_ARN=$(aws iot create-keys-and-certificate --region "$REGION" --set-as-active \\
    --certificate-pem-outfile "$DEVICE_DIR/device.pem.crt" --private-key-outfile "$DEVICE_DIR/private.pem.key" \\
    --query certificateArn --output text)
  cat > /tmp/device-policy.json <<'POLICY'
{policy_template}
POLICY
  sed -i "s/{THING_PLACEHOLDER}/$THING/g" /tmp/device-policy.json
  aws iot create-policy --region "$REGION" --policy-name "{names.device_policy_prefix}$THING" \\
    --policy-document file:///tmp/device-policy.json >/dev/null
  aws iot attach-policy --region "$REGION" --policy-name "{names.device_policy_prefix}$THING" --target "$CERT_ARN"
  aws iot attach-thing-principal --region "$REGION" --thing-name "$THING" --principal "$CERT_ARN" \\
    --thing-principal-type EXCLUSIVE_THING
  aws iot add-thing-to-thing-group --region "$REGION" --thing-group-name "{names.thing_group}" --thing-name "$THING"
fi
curl -sS -o "$DEVICE_DIR/AmazonRootCA1.pem" {ROOT_CA_URL}
DATA_ENDPOINT=$(aws iot describe-endpoint --region "$REGION" --endpoint-type iot:Data-ATS \\
  --query endpointAddress --output text)
CRED_ENDPOINT=$(aws iot describe-endpoint --region "$REGION" --endpoint-type iot:CredentialProvider \\
  --query endpointAddress --output text)
cat > "$DEVICE_DIR/greengrass-config.yaml" <<CONFIG
system:
  certificateFilePath: "$DEVICE_DIR/device.pem.crt"
  privateKeyPath: "$DEVICE_DIR/private.pem.key"
  rootCaPath: "$DEVICE_DIR/AmazonRootCA1.pem"
  rootpath: "/greengrass/v2"
  thingName: "$THING"
services:
  aws.greengrass.Nucleus:
    componentType: "NUCLEUS"
    configuration:
      awsRegion: "$REGION"
      iotRoleAlias: "{names.role_alias}"
      iotDataEndpoint: "$DATA_ENDPOINT"
      iotCredEndpoint: "$CRED_ENDPOINT"
{spooler}
CONFIG
curl -sS -o /tmp/greengrass-nucleus.zip {nucleus_url(spool.nucleus_version)}
unzip -o -q /tmp/greengrass-nucleus.zip -d /tmp/GreengrassInstaller
java -Droot=/greengrass/v2 -Dlog.store=FILE -jar /tmp/GreengrassInstaller/lib/Greengrass.jar \\
  --init-config "$DEVICE_DIR/greengrass-config.yaml" \\
  --component-default-user ggc_user:ggc_group --setup-system-service true
echo "registered $THING; Greengrass is running"
"""


class SimulatedDevice(Construct):
    """VPC (public subnet, flow logs), instance role, and the instance."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: Settings, names: EdgeNames, fleet: DeviceFleet
    ) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        edge = settings.edge_deployment

        self.vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=1,
            nat_gateways=0,
            subnet_configuration=[ec2.SubnetConfiguration(name="device", subnet_type=ec2.SubnetType.PUBLIC)],
        )
        flow_logs = log_group(self, "FlowLogs", retention=log_retention(settings.toolchain.log_retention_days))
        self.vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs))
        security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=self.vpc,
            description="Simulated inspection device: no inbound access (Session Manager only), outbound HTTPS",
            allow_all_outbound=False,
        )
        security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "AWS IoT, Greengrass, S3, packages")
        security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(8883), "AWS IoT Core MQTT over TLS")
        security_group.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(80), "Ubuntu package mirrors")

        self.role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description="Simulated device: Session Manager, and registering itself as an IoT thing",
            managed_policies=[iam.ManagedPolicy.from_aws_managed_policy_name("AmazonSSMManagedInstanceCore")],
        )
        things = stack.format_arn(service="iot", resource="thing", resource_name=f"{simulated_thing_prefix(names)}*")
        certificates = stack.format_arn(service="iot", resource="cert", resource_name="*")
        policies = stack.format_arn(
            service="iot",
            resource="policy",
            resource_name=f"{names.device_policy_prefix}{simulated_thing_prefix(names)}*",
        )
        own_thing = "Things named <prefix>-sim-<instance id>: the instance id is known only at boot."
        own_policy = "The IoT policy of <prefix>-sim-<instance id>, made at boot (instance id unknown before)."
        allow(
            self.role,
            ["iot:CreateThing", "iot:DescribeThing", "iot:AttachThingPrincipal"],
            [things],
            sid="OwnThing",
            why=own_thing,
        )
        allow(self.role, ["iot:AddThingToThingGroup"], [things, fleet.thing_group_arn], sid="JoinGroup", why=own_thing)
        allow(self.role, ["iot:CreatePolicy"], [policies], sid="OwnPolicy", why=own_policy)
        allow(
            self.role,
            ["iot:AttachPolicy"],
            [certificates, policies],
            sid="AttachOwnPolicy",
            why="The certificate the instance creates for itself at boot (id unknown before), and its own policy.",
        )
        allow(
            self.role,
            ["iot:CreateKeysAndCertificate", "iot:DescribeEndpoint"],
            ["*"],
            sid="Certificate",
            why="iot:CreateKeysAndCertificate and iot:DescribeEndpoint take no resource ARN.",
        )
        acknowledge(
            self.role,
            "AwsSolutions-IAM4",
            "AmazonSSMManagedInstanceCore is AWS's policy for Session Manager, the only way into the instance.",
            finding="Policy::arn:<AWS::Partition>:iam::aws:policy/AmazonSSMManagedInstanceCore",
        )

        user_data = ec2.UserData.custom(
            boot_script(
                names=names,
                region=stack.region,
                partition=stack.partition,
                account=stack.account,
                spool=edge.offline_spool,
            )
        )
        self.instance = ec2.Instance(
            self,
            "Instance",
            vpc=self.vpc,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            associate_public_ip_address=True,
            instance_type=ec2.InstanceType(edge.simulated_device_instance_type),
            machine_image=ec2.MachineImage.from_ssm_parameter(UBUNTU_ARM64, os=ec2.OperatingSystemType.LINUX),
            security_group=security_group,
            role=self.role,
            user_data=user_data,
            require_imdsv2=True,
            detailed_monitoring=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/sda1",
                    volume=ec2.BlockDeviceVolume.ebs(
                        20, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3, delete_on_termination=True
                    ),
                )
            ],
        )
        acknowledge(
            self.instance,
            "AwsSolutions-EC29",
            "A disposable simulator: replacing or terminating it loses nothing (devices register themselves).",
        )
        cdk.CfnOutput(
            self,
            "InstanceId",
            value=self.instance.instance_id,
            description=f"Simulated device; its thing is {simulated_thing_prefix(names)}<instance id>",
        )
