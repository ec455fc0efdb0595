"""Label Studio on AWS: the stack the labeling app deploys for `backend: label_studio` without an existing server.

Each configuration variant is synthesized once with cdk-nag over every stack (an unacknowledged finding fails the
synth); the tests read the templates and the acknowledgements the synth recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
import yaml
from cfnlint.api import ManualArgs, lint_file

from labeling.label_studio_server import (
    API_PATH_PATTERN,
    LabelStudioServer,
    container_environment,
    deployed_server,
    service_account_email,
)
from shared.config import LABEL_STUDIO_IMAGE, ConfigError
from shared.names import resource_names
from tests.helpers import asl
from tests.helpers.cdk_assembly import REPO_ROOT, SynthesizedStack, stack_named, stacks_of, synth
from tests.labeling.stage import Stage, settings_with, stage

CERTIFICATE = "arn:aws:acm:eu-west-1:111111111111:certificate/12345678-1234-1234-1234-123456789012"
SERVER = {"domain_name": "labels.example.com", "certificate_arn": CERTIFICATE}
OIDC = {
    "provider": "oidc",
    "issuer": "https://login.example.com/tenant",
    "authorization_endpoint": "https://login.example.com/tenant/authorize",
    "token_endpoint": "https://login.example.com/tenant/token",
    "user_info_endpoint": "https://login.example.com/tenant/userinfo",
    "client_id": "label-studio-app",
    "client_secret_secret": "tag-inspect/labeling/oidc-client-secret",
    "session_timeout_hours": 8,
}
ECR_IMAGE = (
    "222222222222.dkr.ecr.eu-west-1.amazonaws.com/docker-hub/heartexlabs/label-studio:1.23.0"
    "@sha256:aa461572e8f9d86a1bf9520c1db620204e86160fd2f80dd7e9d40ac84a8828ea"
)
NAMES = resource_names(settings_with(), account="123456789012", region="eu-west-1")
SUBSTITUTIONS = {"AWS::AccountId": "123456789012", "AWS::Region": "eu-west-1", "AWS::Partition": "aws"}


def label_studio(**server: Any) -> Stage:
    return stage(backend="label_studio", label_studio={"server": {**SERVER, **server}})


@pytest.fixture(scope="module")
def cognito() -> Stage:
    """The defaults: a Cognito user pool, the load balancer open to every address, a new database."""
    return label_studio()


@pytest.fixture(scope="module")
def oidc() -> Stage:
    """The organisation's identity provider, a narrowed load balancer, a Route 53 record, authenticated pulls."""
    return label_studio(
        sign_in=OIDC,
        allowed_cidrs=["203.0.113.0/24", "198.51.100.16/28"],
        hosted_zone_id="Z0123456789ABCDEFGHIJ",
        hosted_zone_name="example.com",
        image_pull_secret="tag-inspect/docker-hub",
    )


@pytest.fixture(scope="module")
def restored() -> Stage:
    """A database restored from a snapshot, with a standby and no deletion protection; the image from ECR."""
    return label_studio(
        image=ECR_IMAGE,
        cpu=2048,
        memory_mib=8192,
        database={
            "restore_from_snapshot": "tag-inspect-label-studio-2026-01-31",
            "multi_az": True,
            "deletion_protection": False,
            "backup_retention_days": 14,
        },
    )


def server_stack(variant: Stage) -> SynthesizedStack:
    return variant.stack("label-studio")


def only(resources: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    assert len(resources) == 1, list(resources)
    return next(iter(resources.items()))


def metadata(stack: SynthesizedStack) -> dict[str, list[dict[str, Any]]]:
    """The construct metadata synth recorded beside the template (logical ids, acknowledgements)."""
    return json.loads(Path(str(stack.template_file).replace(".template.json", ".metadata.json")).read_text())


def construct_paths(stack: SynthesizedStack) -> dict[str, str]:
    """Logical id -> construct path below the server construct (e.g. `/Vpc/serverSubnet1/Subnet`)."""
    return {
        entry["data"]: path.split("/LabelStudio/LabelStudio", 1)[-1]
        for path, entries in metadata(stack).items()
        for entry in entries
        if entry.get("type") == "aws:cdk:logicalId"
    }


def logical_ids(stack: SynthesizedStack, resource_type: str, path_part: str) -> set[str]:
    paths = construct_paths(stack)
    return {
        lid
        for lid, resource in stack.template["Resources"].items()
        if resource["Type"] == resource_type and path_part in paths.get(lid, "")
    }


def logical_id(stack: SynthesizedStack, resource_type: str, path_part: str) -> str:
    """The logical id of the one resource of `resource_type` whose construct path contains `path_part`."""
    (found,) = logical_ids(stack, resource_type, path_part)
    return found


def rendered(value: Any) -> str:
    return asl.render_token(value, SUBSTITUTIONS)


def acknowledged(stack: SynthesizedStack) -> dict[str, dict[str, str]]:
    """Construct path (below the server construct) -> acknowledged rule -> reason, as synth recorded them."""
    found: dict[str, dict[str, str]] = {}
    for path, entries in metadata(stack).items():
        for entry in entries:
            if entry.get("type") == "aws:cdk:acknowledged-rules":
                found.setdefault(path.split("/LabelStudio/LabelStudio", 1)[-1] or "/", {}).update(entry["data"])
    return found


# --------------------------------------------------------------------------------------------------
# When the stack exists
# --------------------------------------------------------------------------------------------------


def test_the_server_is_deployed_only_for_label_studio_without_an_existing_server(cognito):
    assert "tag-inspect-labeling-label-studio" not in stage().stacks  # ground_truth (the example config)
    existing = stage(
        backend="label_studio",
        label_studio={"url": "https://labels.example.com", "api_token_secret": "tag-inspect/label-studio-token"},
    )
    assert set(existing.stacks) == {"tag-inspect-labeling-data", "tag-inspect-labeling-workflow"}
    assert set(cognito.stacks) == {
        "tag-inspect-labeling-data",
        "tag-inspect-labeling-label-studio",
        "tag-inspect-labeling-workflow",
    }
    # after the data it reads, before the workflow that calls it; it holds the labelers' work
    assert cognito.dependencies["tag-inspect-labeling-label-studio"] == {"tag-inspect-labeling-data"}
    assert cognito.dependencies["tag-inspect-labeling-workflow"] == {
        "tag-inspect-labeling-data",
        "tag-inspect-labeling-label-studio",
    }
    assert cognito.termination_protection["tag-inspect-labeling-label-studio"] is True


@pytest.mark.parametrize(
    ("labeling", "deployed"),
    [
        ({}, False),
        ({"backend": "label_studio", "label_studio": {"server": SERVER}}, True),
        (
            {"backend": "label_studio", "label_studio": {"url": "https://ls.example.com", "api_token_secret": "t"}},
            False,
        ),
    ],
)
def test_deployed_server_follows_the_backend_and_the_url(labeling, deployed):
    settings = settings_with(**labeling)
    assert (deployed_server(settings.labeling) is not None) is deployed


# --------------------------------------------------------------------------------------------------
# The Label Studio task
# --------------------------------------------------------------------------------------------------


def test_the_task_runs_the_official_image_pinned_by_digest(cognito):
    _, task = only(server_stack(cognito).resources("AWS::ECS::TaskDefinition"))
    (container,) = task["Properties"]["ContainerDefinitions"]
    repository, digest = LABEL_STUDIO_IMAGE.split("@")
    assert container["Image"] == f"{repository.rsplit(':', 1)[0]}@{digest}"
    assert (
        container["Image"]
        == "heartexlabs/label-studio@sha256:" + "aa461572e8f9d86a1bf9520c1db620204e86160fd2f80dd7e9d40ac84a8828ea"
    )
    assert container["DockerLabels"] == {"org.opencontainers.image.version": "1.23.0"}
    assert "Command" not in container and "EntryPoint" not in container  # the image's own start
    assert container["PortMappings"] == [{"ContainerPort": 8080, "Protocol": "tcp"}]
    properties = task["Properties"]
    assert (properties["Cpu"], properties["Memory"]) == ("1024", "4096")
    assert properties["RuntimePlatform"] == {"CpuArchitecture": "X86_64", "OperatingSystemFamily": "LINUX"}
    assert properties["RequiresCompatibilities"] == ["FARGATE"]
    _, service = only(server_stack(cognito).resources("AWS::ECS::Service"))
    service_properties = service["Properties"]
    assert service_properties["DesiredCount"] == 1
    assert service_properties["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert service_properties["EnableExecuteCommand"] is False
    assert service_properties["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    server_subnets = logical_ids(server_stack(cognito), "AWS::EC2::Subnet", "/serverSubnet")
    subnets = service_properties["NetworkConfiguration"]["AwsvpcConfiguration"]["Subnets"]
    assert {s["Ref"] for s in subnets} == server_subnets and len(server_subnets) == 2
    _, cluster = only(server_stack(cognito).resources("AWS::ECS::Cluster"))
    assert cluster["Properties"]["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]


def test_label_studio_gets_its_settings_and_its_secrets_from_secrets_manager(cognito):
    stack = server_stack(cognito)
    template = stack.template
    _, task = only(stack.resources("AWS::ECS::TaskDefinition"))
    (container,) = task["Properties"]["ContainerDefinitions"]
    database_id = logical_id(stack, "AWS::RDS::DBInstance", "/Database/")
    environment = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert environment == container_environment(
        settings_with(backend="label_studio", label_studio={"server": SERVER}).labeling.label_studio.server,
        region={"Ref": "AWS::Region"},
        database_host={"Fn::GetAtt": [database_id, "Endpoint.Address"]},
        database_port={"Fn::GetAtt": [database_id, "Endpoint.Port"]},
    )
    assert environment["DJANGO_DB"] == "default" and environment["POSTGRE_NAME"] == "labelstudio"
    assert environment["LABEL_STUDIO_HOST"] == environment["CSRF_TRUSTED_ORIGINS"] == "https://labels.example.com"
    assert environment["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"  # "Authorization: Token <key>" works
    assert environment["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert environment["SENTRY_DSN"] == "" and environment["COLLECT_ANALYTICS"] == "false"
    secrets = {item["Name"]: item["ValueFrom"] for item in container["Secrets"]}
    assert not set(environment) & set(secrets)  # nothing secret in plain text
    database_secret = logical_id(stack, "AWS::SecretsManager::SecretTargetAttachment", "/Database/")
    api_token = logical_id(stack, "AWS::SecretsManager::Secret", "/ApiToken/")
    account = logical_id(stack, "AWS::SecretsManager::Secret", "/ServiceAccount/")
    secret_key = logical_id(stack, "AWS::SecretsManager::Secret", "/DjangoSecretKey/")

    def field(secret_id: str, key: str) -> dict[str, Any]:
        return {"Fn::Join": ["", [{"Ref": secret_id}, f":{key}::"]]}

    assert secrets == {
        "POSTGRE_USER": field(database_secret, "username"),
        "POSTGRE_PASSWORD": field(database_secret, "password"),
        "LABEL_STUDIO_USERNAME": field(account, "username"),
        "LABEL_STUDIO_PASSWORD": field(account, "password"),
        "LABEL_STUDIO_USER_TOKEN": {"Ref": api_token},
        "SECRET_KEY": {"Ref": secret_key},
    }
    # the execution role may read exactly these secrets, and write its own log group
    execution_role = task["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
    statements = asl.role_statements(template, execution_role)
    read = next(s for s in statements if "secretsmanager:GetSecretValue" in s["Action"])
    assert sorted(r["Ref"] for r in read["Resource"]) == sorted([database_secret, api_token, account, secret_key])
    assert {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])} == {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    }


def test_the_api_token_secret_is_generated_encrypted_and_named_for_the_labeling_round(cognito):
    stack = server_stack(cognito)
    template = stack.template
    key_id = logical_id(stack, "AWS::KMS::Key", "/Key/")
    secrets = stack.resources("AWS::SecretsManager::Secret")
    token = secrets[logical_id(stack, "AWS::SecretsManager::Secret", "/ApiToken/")]["Properties"]
    assert token["Name"] == NAMES.label_studio_api_token_secret == "tag-inspect/labeling/label-studio-api-token"
    # Django REST framework keeps token keys in a 40-character column; letters and digits only
    assert token["GenerateSecretString"] == {"PasswordLength": 40, "ExcludePunctuation": True, "IncludeSpace": False}
    account = secrets[logical_id(stack, "AWS::SecretsManager::Secret", "/ServiceAccount/")]["Properties"]
    assert json.loads(account["GenerateSecretString"]["SecretStringTemplate"]) == {
        "username": "labeling-round@labels.example.com"
    }
    assert account["GenerateSecretString"]["GenerateStringKey"] == "password"
    for secret in secrets.values():
        assert secret["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    # the labeling round decrypts the token with this key, found by its alias
    _, alias = only(stack.resources("AWS::KMS::Alias"))
    assert alias["Properties"] == {
        "AliasName": NAMES.label_studio_key_alias,
        "TargetKeyId": {"Fn::GetAtt": [key_id, "Arn"]},
    }
    assert NAMES.label_studio_key_alias == "alias/tag-inspect-label-studio"
    outputs = {output["Description"]: output["Value"] for output in template["Outputs"].values()}
    assert outputs["API token of the labeling round"] == NAMES.label_studio_api_token_secret


def test_logs_have_a_retention_and_are_encrypted(cognito):
    stack = server_stack(cognito)
    template = stack.template
    key_id = logical_id(stack, "AWS::KMS::Key", "/Key/")
    groups = stack.resources("AWS::Logs::LogGroup")
    assert len(groups) == 2  # the service and the VPC flow logs
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] == 90  # toolchain.log_retention_days
        assert group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    service_logs = logical_id(stack, "AWS::Logs::LogGroup", "/ServiceLogs/")
    assert groups[service_logs]["Properties"]["LogGroupName"] == "/ecs/tag-inspect-label-studio"
    _, task = only(stack.resources("AWS::ECS::TaskDefinition"))
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    assert container["LogConfiguration"]["Options"]["awslogs-group"] == {"Ref": service_logs}
    _, flow_log = only(stack.resources("AWS::EC2::FlowLog"))
    assert flow_log["Properties"]["TrafficType"] == "ALL"
    # CloudWatch Logs may use the key for this account's log groups only
    key = template["Resources"][key_id]
    assert key["DeletionPolicy"] == "Retain" and key["Properties"]["EnableKeyRotation"] is True
    logs_statement = next(
        s for s in key["Properties"]["KeyPolicy"]["Statement"] if s.get("Sid") == "CloudWatchLogsOfThisAccount"
    )
    assert rendered(logs_statement["Principal"]["Service"]) == "logs.eu-west-1.amazonaws.com"
    assert rendered(logs_statement["Condition"]["ArnLike"]["kms:EncryptionContext:aws:logs:arn"]) == (
        "arn:aws:logs:eu-west-1:123456789012:log-group:*"
    )


# --------------------------------------------------------------------------------------------------
# Images: read from the data bucket, nothing more
# --------------------------------------------------------------------------------------------------


def test_the_task_role_may_list_and_read_raw_images_and_decrypt_them_through_s3_only(cognito):
    stack = server_stack(cognito)
    _, task = only(stack.resources("AWS::ECS::TaskDefinition"))
    task_role = task["Properties"]["TaskRoleArn"]["Fn::GetAtt"][0]
    statements = {s["Sid"]: s for s in asl.role_statements(stack.template, task_role)}
    assert set(statements) == {"ListRawImages", "ReadRawImages", "DecryptRawImagesThroughS3"}
    bucket = "arn:aws:s3:::tag-inspect-data-123456789012-eu-west-1"
    listing = statements["ListRawImages"]
    assert (listing["Action"], rendered(listing["Resource"])) == ("s3:ListBucket", bucket)
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["raw-images/*"]}}
    read = statements["ReadRawImages"]
    assert (read["Action"], rendered(read["Resource"])) == ("s3:GetObject", f"{bucket}/raw-images/*")
    decrypt = statements["DecryptRawImagesThroughS3"]
    assert decrypt["Action"] == "kms:Decrypt"
    assert rendered(decrypt["Resource"]) == "arn:aws:kms:eu-west-1:123456789012:key/*"
    assert decrypt["Condition"]["ForAnyValue:StringEquals"] == {"kms:ResourceAliases": "alias/tag-inspect-data"}
    assert rendered(decrypt["Condition"]["StringEquals"]["kms:ViaService"]) == "s3.eu-west-1.amazonaws.com"
    for action in ("s3:PutObject", "s3:DeleteObject", "kms:GenerateDataKey", "kms:Encrypt"):
        assert not asl.role_allows(stack.template, task_role, action), action


# --------------------------------------------------------------------------------------------------
# Database
# --------------------------------------------------------------------------------------------------


def test_the_database_is_encrypted_backed_up_private_and_snapshotted_on_delete(cognito):
    stack = server_stack(cognito)
    key_id = logical_id(stack, "AWS::KMS::Key", "/Key/")
    _, database = only(stack.resources("AWS::RDS::DBInstance"))
    properties = database["Properties"]
    assert database["DeletionPolicy"] == database["UpdateReplacePolicy"] == "Snapshot"
    assert properties["StorageEncrypted"] is True and properties["KmsKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    assert properties["BackupRetentionPeriod"] == 7 and properties["DeleteAutomatedBackups"] is False
    assert properties["DeletionProtection"] is True and properties["PubliclyAccessible"] is False
    assert (properties["Engine"], properties["EngineVersion"], properties["DBName"]) == (
        "postgres",
        "17.9",
        "labelstudio",
    )
    assert (properties["DBInstanceClass"], properties["MultiAZ"]) == ("db.t4g.micro", False)
    assert (properties["AllocatedStorage"], properties["MaxAllocatedStorage"]) == ("20", 100)
    secret = logical_id(stack, "AWS::SecretsManager::Secret", "/Database/Secret/")
    assert properties["MasterUserPassword"] == {
        "Fn::Join": ["", ["{{resolve:secretsmanager:", {"Ref": secret}, ":SecretString:password::}}"]]
    }
    _, subnet_group = only(stack.resources("AWS::RDS::DBSubnetGroup"))
    isolated = logical_ids(stack, "AWS::EC2::Subnet", "/databaseSubnet")
    assert {s["Ref"] for s in subnet_group["Properties"]["SubnetIds"]} == isolated and len(isolated) == 2
    routes = [r["Properties"] for r in stack.resources("AWS::EC2::Route").values()]
    isolated_tables = logical_ids(stack, "AWS::EC2::RouteTable", "/databaseSubnet")
    assert not [r for r in routes if r["RouteTableId"]["Ref"] in isolated_tables]  # no way out of the database subnets


def test_a_restored_database_comes_from_the_snapshot_and_follows_the_database_settings(restored):
    _, database = only(server_stack(restored).resources("AWS::RDS::DBInstance"))
    properties = database["Properties"]
    assert properties["DBSnapshotIdentifier"] == "tag-inspect-label-studio-2026-01-31"
    assert "DBName" not in properties and "StorageEncrypted" not in properties  # both come with the snapshot
    assert (properties["MultiAZ"], properties["DeletionProtection"], properties["BackupRetentionPeriod"]) == (
        True,
        False,
        14,
    )
    assert database["DeletionPolicy"] == "Snapshot"
    # a new password is generated for the restored instance
    assert "resolve:secretsmanager" in json.dumps(properties["MasterUserPassword"])


# --------------------------------------------------------------------------------------------------
# Network: each security group only as wide as needed
# --------------------------------------------------------------------------------------------------


def security_group_rules(stack: SynthesizedStack, group_id: str) -> set[tuple[str, int | str, str]]:
    """(direction, port, peer) of a security group: peer is a CIDR or the other group's construct name."""

    def peer(rule: dict[str, Any]) -> str:
        for key in ("CidrIp", "SourceSecurityGroupId", "DestinationSecurityGroupId"):
            if key in rule:
                value = rule[key]
                if isinstance(value, dict):
                    other = value["Fn::GetAtt"][0]
                    return construct_paths(stack)[other].split("/")[-2]
                return value
        raise AssertionError(rule)

    def port(rule: dict[str, Any]) -> int | str:
        return "database port" if isinstance(rule["FromPort"], dict) else rule["FromPort"]

    template = stack.template
    found = set()
    group = template["Resources"][group_id]["Properties"]
    for direction, key in (("in", "SecurityGroupIngress"), ("out", "SecurityGroupEgress")):
        for rule in group.get(key, []):
            if rule.get("Description") != "Disallow all traffic":
                found.add((direction, port(rule), peer(rule)))
    for resource in template["Resources"].values():
        if resource["Type"] in ("AWS::EC2::SecurityGroupIngress", "AWS::EC2::SecurityGroupEgress"):
            rule = resource["Properties"]
            if rule["GroupId"] == {"Fn::GetAtt": [group_id, "GroupId"]}:
                direction = "in" if resource["Type"].endswith("Ingress") else "out"
                found.add((direction, port(rule), peer(rule)))
    return found


def test_security_groups_allow_only_the_paths_the_server_needs(cognito, oidc):
    stack = server_stack(cognito)
    group = {name: logical_id(stack, "AWS::EC2::SecurityGroup", f"/{name}/") for name in
             ("LoadBalancerSecurityGroup", "ServiceSecurityGroup", "DatabaseSecurityGroup")}  # fmt: skip
    assert security_group_rules(stack, group["LoadBalancerSecurityGroup"]) == {
        ("in", 443, "0.0.0.0/0"),
        ("in", 80, "0.0.0.0/0"),
        ("out", 443, "0.0.0.0/0"),  # the identity provider's token endpoint
        ("out", 8080, "ServiceSecurityGroup"),
    }
    assert security_group_rules(stack, group["ServiceSecurityGroup"]) == {
        ("in", 8080, "LoadBalancerSecurityGroup"),
        ("out", 443, "0.0.0.0/0"),  # image registry and AWS APIs through the NAT gateway
        ("out", "database port", "DatabaseSecurityGroup"),
    }
    assert security_group_rules(stack, group["DatabaseSecurityGroup"]) == {
        ("in", "database port", "ServiceSecurityGroup")
    }
    narrowed = server_stack(oidc)
    load_balancer_group = logical_id(narrowed, "AWS::EC2::SecurityGroup", "/LoadBalancerSecurityGroup/")
    inbound = {rule for rule in security_group_rules(narrowed, load_balancer_group) if rule[0] == "in"}
    assert inbound == {("in", port, cidr) for port in (443, 80) for cidr in ("203.0.113.0/24", "198.51.100.16/28")}


def test_the_vpc_reaches_the_internet_through_one_nat_gateway_and_s3_through_an_endpoint(cognito):
    stack = server_stack(cognito)
    assert len(stack.resources("AWS::EC2::NatGateway")) == 1
    _, endpoint = only(stack.resources("AWS::EC2::VPCEndpoint"))
    assert endpoint["Properties"]["VpcEndpointType"] == "Gateway"
    assert rendered(endpoint["Properties"]["ServiceName"]) == "com.amazonaws.eu-west-1.s3"
    paths = construct_paths(stack)
    subnets = {paths[lid].split("/")[-2] for lid in stack.resources("AWS::EC2::Subnet")}
    assert subnets == {f"{kind}Subnet{i}" for kind in ("load-balancer", "server", "database") for i in (1, 2)}


# --------------------------------------------------------------------------------------------------
# Load balancer and sign-in
# --------------------------------------------------------------------------------------------------


def listeners(stack: SynthesizedStack) -> dict[int, dict[str, Any]]:
    return {
        r["Properties"]["Port"]: r["Properties"]
        for r in stack.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    }


def test_https_only_with_sign_in_first_and_token_api_calls_straight_through(cognito):
    stack = server_stack(cognito)
    target_group = logical_id(stack, "AWS::ElasticLoadBalancingV2::TargetGroup", "/Targets/")
    by_port = listeners(stack)
    assert set(by_port) == {80, 443}
    assert by_port[80]["Protocol"] == "HTTP"
    assert by_port[80]["DefaultActions"] == [
        {"Type": "redirect", "RedirectConfig": {"Port": "443", "Protocol": "HTTPS", "StatusCode": "HTTP_301"}}
    ]
    https = by_port[443]
    assert https["Protocol"] == "HTTPS" and https["Certificates"] == [{"CertificateArn": CERTIFICATE}]
    assert https["SslPolicy"] == "ELBSecurityPolicy-TLS13-1-2-2021-06"
    authenticate, forward = sorted(https["DefaultActions"], key=lambda action: action["Order"])
    assert authenticate["Type"] == "authenticate-cognito" and forward["Type"] == "forward"
    assert forward["TargetGroupArn"] == {"Ref": target_group}
    cognito_config = authenticate["AuthenticateCognitoConfig"]
    assert cognito_config["OnUnauthenticatedRequest"] == "authenticate"
    assert (cognito_config["SessionTimeout"], cognito_config["Scope"]) == ("43200", "openid email")
    # exactly one rule skips the sign-in: API paths with a Label Studio token
    _, rule = only(stack.resources("AWS::ElasticLoadBalancingV2::ListenerRule"))
    conditions = {c["Field"]: c for c in rule["Properties"]["Conditions"]}
    assert conditions["path-pattern"]["PathPatternConfig"] == {"Values": [API_PATH_PATTERN]} == {"Values": ["/api/*"]}
    assert conditions["http-header"]["HttpHeaderConfig"] == {"HttpHeaderName": "Authorization", "Values": ["Token *"]}
    assert rule["Properties"]["Actions"] == [{"Type": "forward", "TargetGroupArn": {"Ref": target_group}}]
    _, group = only(stack.resources("AWS::ElasticLoadBalancingV2::TargetGroup"))
    assert (group["Properties"]["HealthCheckPath"], group["Properties"]["Matcher"]) == ("/health", {"HttpCode": "200"})
    assert (group["Properties"]["Port"], group["Properties"]["TargetType"]) == (8080, "ip")


def test_the_load_balancer_drops_invalid_headers_and_logs_every_request(cognito):
    stack = server_stack(cognito)
    template = stack.template
    _, balancer = only(stack.resources("AWS::ElasticLoadBalancingV2::LoadBalancer"))
    attributes = {a["Key"]: a["Value"] for a in balancer["Properties"]["LoadBalancerAttributes"]}
    bucket_id = logical_id(stack, "AWS::S3::Bucket", "/LoadBalancerLogs/")
    assert attributes["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attributes["access_logs.s3.enabled"] == "true"
    assert attributes["access_logs.s3.bucket"] == {"Ref": bucket_id}
    assert attributes["access_logs.s3.prefix"] == "label-studio"
    assert balancer["Properties"]["Scheme"] == "internet-facing"
    bucket = template["Resources"][bucket_id]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"  # the only encryption load balancer logs support
    }
    _, policy = only(stack.resources("AWS::S3::BucketPolicy"))
    writers = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s.get("Sid")}
    assert writers["LogDeliveryService"]["Principal"] == {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    mapped = writers["LoadBalancingAccountOfTheRegion"]["Principal"]["AWS"]["Fn::Join"][1][3]["Fn::FindInMap"]
    mapping = template["Mappings"][mapped[0]]
    assert mapping["eu-west-1"] == {"account": "156460612806"} and mapping["us-east-1"] == {"account": "127311923021"}
    assert mapped[3] == {"DefaultValue": {"Ref": "AWS::AccountId"}}  # regions without an account: nothing new
    for statement in writers.values():
        assert statement["Action"] == "s3:PutObject"
        assert rendered(statement["Resource"]).endswith("/label-studio/AWSLogs/123456789012/*")
    assert (
        balancer["DependsOn"]
        and logical_id(stack, "AWS::S3::BucketPolicy", "/LoadBalancerLogs/") in balancer["DependsOn"]
    )


def test_the_cognito_user_pool_is_invitation_only_with_mfa(cognito):
    stack = server_stack(cognito)
    _, pool = only(stack.resources("AWS::Cognito::UserPool"))
    properties = pool["Properties"]
    assert properties["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert properties["MfaConfiguration"] == "ON" and properties["EnabledMfas"] == ["SOFTWARE_TOKEN_MFA"]
    assert properties["UserPoolTier"] == "PLUS" and properties["UserPoolAddOns"] == {"AdvancedSecurityMode": "ENFORCED"}
    assert properties["Policies"]["PasswordPolicy"]["MinimumLength"] == 12
    assert pool["DeletionPolicy"] == "Retain" and properties["DeletionProtection"] == "ACTIVE"
    _, client = only(stack.resources("AWS::Cognito::UserPoolClient"))
    client_properties = client["Properties"]
    assert client_properties["GenerateSecret"] is True and client_properties["AllowedOAuthFlows"] == ["code"]
    assert client_properties["CallbackURLs"] == ["https://labels.example.com/oauth2/idpresponse"]
    assert client_properties["AllowedOAuthScopes"] == ["openid", "email"]
    _, domain = only(stack.resources("AWS::Cognito::UserPoolDomain"))
    assert rendered(domain["Properties"]["Domain"]) == "tag-inspect-labeling-123456789012"


def test_the_organisations_identity_provider_signs_in_through_oidc(oidc):
    stack = server_stack(oidc)
    assert not stack.resources("AWS::Cognito::UserPool")
    https = listeners(stack)[443]
    authenticate, forward = sorted(https["DefaultActions"], key=lambda action: action["Order"])
    assert authenticate["Type"] == "authenticate-oidc" and forward["Type"] == "forward"
    config = authenticate["AuthenticateOidcConfig"]
    assert {
        key: config[key] for key in ("Issuer", "AuthorizationEndpoint", "TokenEndpoint", "UserInfoEndpoint", "ClientId")
    } == {
        "Issuer": OIDC["issuer"],
        "AuthorizationEndpoint": OIDC["authorization_endpoint"],
        "TokenEndpoint": OIDC["token_endpoint"],
        "UserInfoEndpoint": OIDC["user_info_endpoint"],
        "ClientId": OIDC["client_id"],
    }
    # resolved by CloudFormation at deploy time: the template holds a reference, never the secret
    assert (
        config["ClientSecret"] == "{{resolve:secretsmanager:tag-inspect/labeling/oidc-client-secret:SecretString:::}}"
    )
    assert (config["SessionTimeout"], config["OnUnauthenticatedRequest"]) == ("28800", "authenticate")


def test_a_hosted_zone_gets_the_alias_record(cognito, oidc):
    assert not server_stack(cognito).resources("AWS::Route53::RecordSet")
    _, record = only(server_stack(oidc).resources("AWS::Route53::RecordSet"))
    properties = record["Properties"]
    assert (properties["Name"], properties["Type"], properties["HostedZoneId"]) == (
        "labels.example.com.",
        "A",
        "Z0123456789ABCDEFGHIJ",
    )
    balancer_id, _ = only(server_stack(oidc).resources("AWS::ElasticLoadBalancingV2::LoadBalancer"))
    assert "dualstack." in json.dumps(properties["AliasTarget"]["DNSName"]) and balancer_id in json.dumps(
        properties["AliasTarget"]
    )


# --------------------------------------------------------------------------------------------------
# Images from other registries
# --------------------------------------------------------------------------------------------------


def test_authenticated_pulls_use_the_configured_registry_secret(oidc):
    _, task = only(server_stack(oidc).resources("AWS::ECS::TaskDefinition"))
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert "tag-inspect/docker-hub" in rendered(container["RepositoryCredentials"]["CredentialsParameter"])


def test_an_ecr_image_is_pulled_with_the_execution_role_from_its_repository_only(restored):
    stack = server_stack(restored)
    _, task = only(stack.resources("AWS::ECS::TaskDefinition"))
    (container,) = task["Properties"]["ContainerDefinitions"]
    assert container["Image"] == ECR_IMAGE.replace(":1.23.0@", "@")
    assert "RepositoryCredentials" not in container
    assert (task["Properties"]["Cpu"], task["Properties"]["Memory"]) == ("2048", "8192")
    execution_role = task["Properties"]["ExecutionRoleArn"]["Fn::GetAtt"][0]
    statements = {s.get("Sid"): s for s in asl.role_statements(stack.template, execution_role)}
    pull = statements["PullTheImage"]
    assert rendered(pull["Resource"]) == (
        "arn:aws:ecr:eu-west-1:222222222222:repository/docker-hub/heartexlabs/label-studio"
    )
    assert statements["RegistrySignIn"] == {
        "Sid": "RegistrySignIn",
        "Action": "ecr:GetAuthorizationToken",
        "Effect": "Allow",
        "Resource": "*",
    }


# --------------------------------------------------------------------------------------------------
# cdk-nag and cfn-lint
# --------------------------------------------------------------------------------------------------


NAG_ACKNOWLEDGEMENTS = {
    "/ApiToken": {"Annotation::AwsSolutions-SMG4"},
    "/ServiceAccount": {"Annotation::AwsSolutions-SMG4"},
    "/DjangoSecretKey": {"Annotation::AwsSolutions-SMG4"},
    "/Database": {"Annotation::AwsSolutions-SMG4", "Annotation::AwsSolutions-RDS11", "Annotation::AwsSolutions-RDS3"},
    "/Task": {"Annotation::AwsSolutions-ECS2"},
    "/LoadBalancerSecurityGroup": {"Annotation::AwsSolutions-EC23"},
    "/LoadBalancerLogs": {"Annotation::AwsSolutions-S1"},
    "/Task/TaskRole": {
        "Annotation::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:s3:::tag-inspect-data-<AWS::AccountId>-"
        "<AWS::Region>/raw-images/*]"
    },
    "/Task/TaskRole/DefaultPolicy/Resource": {
        "Annotation::AwsSolutions-IAM5[Resource::arn:<AWS::Partition>:kms:<AWS::Region>:<AWS::AccountId>:key/*]"
    },
}


def nag_acknowledgements(stack: SynthesizedStack) -> dict[str, set[str]]:
    return {
        path: {rule for rule in rules if rule.startswith("Annotation::AwsSolutions")}
        for path, rules in acknowledged(stack).items()
        if any(rule.startswith("Annotation::AwsSolutions") for rule in rules)
    }


def test_every_cdk_nag_finding_is_acknowledged_with_its_own_reason(cognito, oidc, restored):
    """Synth ran cdk-nag; these are all the findings it let through, each with a specific reason."""
    assert nag_acknowledgements(server_stack(cognito)) == NAG_ACKNOWLEDGEMENTS
    for rules in acknowledged(server_stack(cognito)).values():
        for reason in rules.values():
            assert len(reason) >= 40, reason
    # narrowed to the organisation's networks: no open-ingress acknowledgement
    assert "/LoadBalancerSecurityGroup" not in nag_acknowledgements(server_stack(oidc))
    # a standby, no deletion protection by choice, a restored snapshot, an image from ECR
    restored_rules = nag_acknowledgements(server_stack(restored))
    assert restored_rules["/Database"] == {
        "Annotation::AwsSolutions-SMG4",
        "Annotation::AwsSolutions-RDS11",
        "Annotation::AwsSolutions-RDS10",
        "Annotation::AwsSolutions-RDS2",
    }
    assert restored_rules["/Task/ExecutionRole"] == {"Annotation::AwsSolutions-IAM5[Resource::*]"}


def test_the_server_templates_pass_cfn_lint(cognito, oidc, restored):
    problems = []
    for variant in (cognito, oidc, restored):
        synthesized = server_stack(variant)
        config = ManualArgs(regions=["eu-west-1", "us-east-1"], ignore_checks=["W3005"])
        problems += [
            f"{synthesized.stack_name}: {m}" for m in lint_file(Path(synthesized.template_file), config=config)
        ]
    assert problems == []


# --------------------------------------------------------------------------------------------------
# Configuration checked where only the construct can
# --------------------------------------------------------------------------------------------------


def test_a_project_prefix_cognito_reserves_needs_a_domain_prefix_of_its_own():
    settings = settings_with(backend="label_studio", label_studio={"server": SERVER})
    settings = settings.model_copy(update={"project": settings.project.model_copy(update={"prefix": "aws-tags"})})
    server = deployed_server(settings.labeling)
    assert server is not None
    stack = cdk.Stack(cdk.App())
    names = resource_names(settings, account=stack.account, region=stack.region)
    with pytest.raises(ConfigError, match=r"labeling\.label_studio\.server\.sign_in\.cognito_domain_prefix"):
        LabelStudioServer(stack, "Server", settings=settings, names=names, server=server)


def test_the_service_account_is_named_under_the_servers_domain():
    server = deployed_server(settings_with(backend="label_studio", label_studio={"server": SERVER}).labeling)
    assert server is not None and service_account_email(server) == "labeling-round@labels.example.com"


def test_the_asset_pipeline_deploys_the_server_between_the_data_and_the_workflow(tmp_path):
    """`cdk synth -c app=labeling` as app.py builds it (cdk-nag over every stack), with a deployed server."""
    raw = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    raw["labeling"].update(backend="label_studio", label_studio={"server": SERVER})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    stacks = stacks_of(synth(app="labeling", config=config))
    toolchain = stack_named(stacks, "tag-inspect-labeling-toolchain")
    (pipeline,) = [
        r["Properties"]
        for r in toolchain.resources("AWS::CodePipeline::Pipeline").values()
        if any(s["Name"] == "Deploy" for s in r["Properties"]["Stages"])
    ]
    (deploy,) = [s for s in pipeline["Stages"] if s["Name"] == "Deploy"]
    change_sets = sorted(
        (a["RunOrder"], a["Configuration"]["StackName"], a["Configuration"]["Capabilities"])
        for a in deploy["Actions"]
        if a["Name"].endswith(".Prepare")
    )
    # the server's template uses CloudFormation's language extensions: the change set must allow the transform
    assert [(stack, capabilities) for _, stack, capabilities in change_sets] == [
        (f"tag-inspect-labeling-{suffix}", "CAPABILITY_NAMED_IAM,CAPABILITY_AUTO_EXPAND")
        for suffix in ("data", "label-studio", "workflow")
    ]
    assert stack_named(stacks, "tag-inspect-labeling-label-studio").template["Transform"] == "AWS::LanguageExtensions"
