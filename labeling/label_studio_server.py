"""Label Studio on AWS: the server the labeling app deploys when no existing one is configured.

    browser ──HTTPS──▶ load balancer ──sign-in (Cognito or the organisation's OIDC provider)──▶ Label Studio task
    labeling round ──HTTPS /api/* + "Authorization: Token …"──▶ load balancer ─────────────────▶ (Fargate, private)
                                                                                                  │        │
                                     images: the browser fetches pre-signed S3 URLs  ◀── signs ───┘        ▼
                                     (data bucket, raw-images/ only, never copied)               PostgreSQL (RDS)

* **Network**: a VPC over two availability zones: public subnets (load balancer, one NAT gateway), private
  subnets with egress (the Label Studio task), isolated subnets (the database); flow logs; an S3 gateway endpoint.
  One NAT gateway (about $35 a month) instead of interface endpoints: the official image comes from Docker Hub,
  which only the internet reaches, and the five interface endpoints the task would otherwise need (Secrets
  Manager, CloudWatch Logs, ECR api and dkr, KMS) cost about $15 a month each over two zones.
* **Database**: RDS PostgreSQL in the isolated subnets, storage encrypted with the server's KMS key, automated
  backups, deletion protection, a final snapshot when the instance is deleted or replaced. Its credentials are
  generated in Secrets Manager and reach the container as ECS secrets (Label Studio's `POSTGRE_*` settings).
* **Label Studio**: the official image pinned by digest, one Fargate task. At its first start it creates the
  service account (`LABEL_STUDIO_USERNAME` / `_PASSWORD`) with the API token from the secret that the labeling
  round reads by name (`names.label_studio_api_token_secret`); legacy tokens are enabled for the organisation so
  that `Authorization: Token <token>` works. Sign-up needs an invitation link.
* **Images**: Label Studio's S3 storage signs short-lived URLs with the task role, which may list and read
  `raw-images/` of the data bucket and decrypt with the data key through S3, nothing more.
* **Load balancer**: HTTPS only (HTTP redirects), a current TLS policy, invalid headers dropped, access logs.
  Browsers sign in at the identity provider before any request reaches Label Studio. One rule lets API calls
  that carry a Label Studio token (`/api/*` with `Authorization: Token …`) through without the browser sign-in:
  programs cannot follow a sign-in page, and Label Studio itself refuses such a call unless the token is valid.

The data bucket and its key belong to the labeling data stack; this module finds them by name.
"""

from __future__ import annotations

import json
from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_cognito as cognito
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_elasticloadbalancingv2_actions as elbv2_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_route53 as route53
from aws_cdk import aws_route53_targets as route53_targets
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import region_info
from constructs import Construct

from labeling.data_store import object_arn
from shared.building_blocks import access_log_bucket, encryption_key, log_retention
from shared.config import ConfigError, LabelingSettings, LabelStudioServerSettings, Settings
from shared.guardrails import acknowledge, allow
from shared.names import RAW_IMAGE_PREFIX, ResourceNames

CONTAINER_NAME = "label-studio"
CONTAINER_PORT = 8080  # the image's default command serves Label Studio here
HEALTH_CHECK_PATH = "/health"
DATABASE_NAME = "labelstudio"
DATABASE_USER = "labelstudio"
API_PATH_PATTERN = "/api/*"
API_AUTHORIZATION_HEADER = "Authorization"
API_AUTHORIZATION_PATTERN = "Token *"
API_RULE_PRIORITY = 10
API_TOKEN_LENGTH = 40  # Django REST framework keeps token keys in a 40-character column
SERVICE_ACCOUNT_NAME = "labeling-round"
LOAD_BALANCER_LOG_PREFIX = "label-studio"
CONFIG_KEY = "labeling.label_studio.server"


def deployed_server(labeling: LabelingSettings) -> LabelStudioServerSettings | None:
    """The server to deploy: with the Label Studio backend and no existing server (`url`), else None."""
    if labeling.backend != "label_studio" or labeling.label_studio is None:
        return None
    return labeling.label_studio.server


def service_account_email(server: LabelStudioServerSettings) -> str:
    """Label Studio signs users in by e-mail address; the round's account gets one under the server's domain."""
    return f"{SERVICE_ACCOUNT_NAME}@{server.domain_name}"


def container_environment(
    server: LabelStudioServerSettings, *, region: str, database_host: str, database_port: str
) -> dict[str, str]:
    """Label Studio's settings that are not secret (names as its `core/settings` read them)."""
    origin = f"https://{server.domain_name}"
    return {
        # PostgreSQL: DJANGO_DB=default selects the POSTGRE_* settings
        "DJANGO_DB": "default",
        "POSTGRE_NAME": DATABASE_NAME,
        "POSTGRE_HOST": database_host,
        "POSTGRE_PORT": database_port,
        # the public address: links, cookies and Django's CSRF origin check behind the HTTPS load balancer
        "LABEL_STUDIO_HOST": origin,
        "CSRF_TRUSTED_ORIGINS": origin,
        "SESSION_COOKIE_SECURE": "1",
        "CSRF_COOKIE_SECURE": "1",
        # accounts: invitation links only; the service account's token is a legacy token ("Token <key>")
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # images only from S3 (pre-signed in this region), never from the container's disk
        "S3_region": region,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "false",
        "LABEL_STUDIO_ENABLE_LOCAL_FILES_STORAGE": "false",
        # URL imports may not reach private addresses (the task's credential endpoint among them)
        "SSRF_PROTECTION_ENABLED": "true",
        # nothing leaves for the vendor: no error reports, analytics or version checks
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
        "LATEST_VERSION_CHECK": "false",
        "JSON_LOG": "1",
    }


class LabelStudioServer(Construct):
    """Network, database, secrets, the Label Studio service, its load balancer and sign-in."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: Settings,
        names: ResourceNames,
        server: LabelStudioServerSettings,
    ) -> None:
        super().__init__(scope, construct_id)
        self.stack = cdk.Stack.of(self)
        self.settings = settings
        self.names = names
        self.server = server
        self.url = f"https://{server.domain_name}"
        self.key = encryption_key(
            self,
            "Key",
            alias=names.label_studio_key_alias,  # readers of the API token secret grant themselves the key by it
            description=f"{names.prefix}: Label Studio's database, secrets and logs",
            retain=True,  # snapshots of the database outlive the stack and need the key
        )
        self._let_logs_use_key()
        self.vpc = self._network()
        self.api_token, self.service_account, self.secret_key = self._secrets()
        self.database = self._database()
        self.service = self._service()
        self.load_balancer, self.listener = self._load_balancer()
        self._dns()
        self._outputs()

    # -- key ----------------------------------------------------------------------------------------
    def _let_logs_use_key(self) -> None:
        """CloudWatch Logs encrypts this account's log groups with the key (the service log and flow logs)."""
        stack = self.stack
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsOfThisAccount",
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
                resources=["*"],  # in a key policy, "*" is this key
                conditions={
                    "ArnLike": {
                        "kms:EncryptionContext:aws:logs:arn": stack.format_arn(
                            service="logs",
                            resource="log-group",
                            resource_name="*",
                            arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME,
                        )
                    }
                },
            )
        )

    def _log_group(self, construct_id: str, *, log_group_name: str | None = None) -> logs.LogGroup:
        return logs.LogGroup(
            self,
            construct_id,
            log_group_name=log_group_name,
            retention=log_retention(self.settings.toolchain.log_retention_days),
            encryption_key=self.key,
            removal_policy=cdk.RemovalPolicy.DESTROY,
        )

    # -- network ------------------------------------------------------------------------------------
    def _network(self) -> ec2.Vpc:
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=2,  # the load balancer and the database's subnet group need two zones
            nat_gateways=1,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="load-balancer", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="server", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS, cidr_mask=24),
                ec2.SubnetConfiguration(name="database", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=24),
            ],
            # free, and keeps Label Studio's S3 listing (and ECR layers) off the NAT gateway
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
        )
        vpc.add_flow_log("FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(self._log_group("FlowLogs")))
        return vpc

    # -- secrets ------------------------------------------------------------------------------------
    def _secrets(self) -> tuple[secretsmanager.Secret, secretsmanager.Secret, secretsmanager.Secret]:
        names = self.names
        api_token = secretsmanager.Secret(
            self,
            "ApiToken",
            secret_name=names.label_studio_api_token_secret,
            description=f"API token of Label Studio's {SERVICE_ACCOUNT_NAME} account (the labeling round calls "
            f"{self.url}/api/ with it)",
            encryption_key=self.key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=API_TOKEN_LENGTH, exclude_punctuation=True, include_space=False
            ),
        )
        service_account = secretsmanager.Secret(
            self,
            "ServiceAccount",
            description="E-mail and password of Label Studio's first account (owner of the organisation, used by "
            "the labeling round and for the first sign-in)",
            encryption_key=self.key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"username": service_account_email(self.server)}),
                generate_string_key="password",
                password_length=32,
                exclude_punctuation=True,
                include_space=False,
            ),
        )
        secret_key = secretsmanager.Secret(
            self,
            "DjangoSecretKey",
            description="Label Studio's Django SECRET_KEY (signs sessions; stable across restarts)",
            encryption_key=self.key,
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=64, exclude_punctuation=True, include_space=False
            ),
        )
        for secret, reason in (
            (
                api_token,
                "Label Studio applies LABEL_STUDIO_USER_TOKEN only when it creates the account; a rotated secret would "
                "no longer match the token in its database. Rotation is a documented manual step (labeling/README.md).",
            ),
            (
                service_account,
                "Label Studio sets LABEL_STUDIO_PASSWORD only when it creates the account; the password is changed in "
                "Label Studio itself (labeling/README.md).",
            ),
            (
                secret_key,
                "Django signs the session cookies with it; changing it signs every labeler out, so it changes only "
                "when an operator decides to (labeling/README.md).",
            ),
        ):
            acknowledge(secret, "AwsSolutions-SMG4", reason)
        return api_token, service_account, secret_key

    # -- database -----------------------------------------------------------------------------------
    def _database(self) -> rds.DatabaseInstance | rds.DatabaseInstanceFromSnapshot:
        database = self.server.database
        self.database_security_group = ec2.SecurityGroup(
            self,
            "DatabaseSecurityGroup",
            vpc=self.vpc,
            description="Label Studio PostgreSQL: reachable from the Label Studio service only",
            allow_all_outbound=False,
        )
        common: dict[str, Any] = {
            "engine": rds.DatabaseInstanceEngine.postgres(
                version=rds.PostgresEngineVersion.of(
                    database.engine_version, database.engine_version.split(".", maxsplit=1)[0]
                )
            ),
            "instance_type": ec2.InstanceType(database.instance_class),
            "vpc": self.vpc,
            "vpc_subnets": ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            "security_groups": [self.database_security_group],
            "multi_az": database.multi_az,
            "allocated_storage": database.allocated_storage_gib,
            "max_allocated_storage": database.max_allocated_storage_gib,
            "storage_type": rds.StorageType.GP3,
            "backup_retention": cdk.Duration.days(database.backup_retention_days),
            "delete_automated_backups": False,  # kept for their retention period after the instance is gone
            "deletion_protection": database.deletion_protection,
            "removal_policy": cdk.RemovalPolicy.SNAPSHOT,  # a final snapshot on delete or replacement
            "copy_tags_to_snapshot": True,
            "auto_minor_version_upgrade": True,
            "publicly_accessible": False,
        }
        instance: rds.DatabaseInstance | rds.DatabaseInstanceFromSnapshot
        if database.restore_from_snapshot:
            # encryption (and its key) come with the snapshot; a new password is generated and set
            instance = rds.DatabaseInstanceFromSnapshot(
                self,
                "Database",
                snapshot_identifier=database.restore_from_snapshot,
                credentials=rds.SnapshotCredentials.from_generated_secret(DATABASE_USER, encryption_key=self.key),
                **common,
            )
            acknowledge(
                instance,
                "AwsSolutions-RDS2",
                "Restored from a snapshot of this server's database: RDS keeps the snapshot's storage encryption and "
                "KMS key (CloudFormation takes no encryption settings on a restore).",
            )
        else:
            instance = rds.DatabaseInstance(
                self,
                "Database",
                database_name=DATABASE_NAME,
                credentials=rds.Credentials.from_generated_secret(DATABASE_USER, encryption_key=self.key),
                storage_encrypted=True,
                storage_encryption_key=self.key,
                **common,
            )
        acknowledge(
            instance,  # its generated credentials secret is a child
            "AwsSolutions-SMG4",
            "ECS hands the database password to Label Studio when the task starts; a scheduled rotation would "
            "break the running server's new connections until a redeploy. Rotate with the documented procedure.",
        )
        acknowledge(
            instance,
            "AwsSolutions-RDS11",
            "The database is in isolated subnets and accepts connections only from the Label Studio service's "
            "security group; another port number would add no protection.",
        )
        if not database.multi_az:
            acknowledge(
                instance,
                "AwsSolutions-RDS3",
                f"{CONFIG_KEY}.database.multi_az is false: one labeling team can wait for a restore from the automated "
                "backups; a standby doubles the database cost. Set it to true for a standby in a second zone.",
            )
        if not database.deletion_protection:
            acknowledge(
                instance,
                "AwsSolutions-RDS10",
                f"{CONFIG_KEY}.database.deletion_protection is false by choice; a final snapshot is still taken.",
            )
        return instance

    # -- service ------------------------------------------------------------------------------------
    def _service(self) -> ecs.FargateService:
        stack, server = self.stack, self.server
        cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=self.vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        task = ecs.FargateTaskDefinition(
            self,
            "Task",
            family=f"{self.names.prefix}-label-studio",
            cpu=server.cpu,
            memory_limit_mib=server.memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64, operating_system_family=ecs.OperatingSystemFamily.LINUX
            ),
        )
        self._grant_raw_images(task.task_role)
        container = task.add_container(
            "LabelStudio",
            container_name=CONTAINER_NAME,
            image=self._image(task),
            # the image's own command: migrations, the service account, then the server on CONTAINER_PORT
            port_mappings=[ecs.PortMapping(container_port=CONTAINER_PORT)],
            environment=container_environment(
                server,
                region=stack.region,
                database_host=self.database.db_instance_endpoint_address,
                database_port=self.database.db_instance_endpoint_port,
            ),
            secrets=self._container_secrets(),
            logging=ecs.LogDriver.aws_logs(
                stream_prefix=CONTAINER_NAME,
                log_group=self._log_group("ServiceLogs", log_group_name=f"/ecs/{self.names.prefix}-label-studio"),
            ),
            docker_labels={"org.opencontainers.image.version": server.image_tag} if server.image_tag else None,
        )
        acknowledge(
            task,
            "AwsSolutions-ECS2",
            "Only settings that are not secret are environment variables (host names, switches, the database "
            "address); the passwords, the API token and Django's key come from Secrets Manager as ECS secrets.",
        )
        self.container = container
        self.service_security_group = ec2.SecurityGroup(
            self,
            "ServiceSecurityGroup",
            vpc=self.vpc,
            description="Label Studio task: requests from its load balancer; out to its database and HTTPS",
            allow_all_outbound=False,
        )
        self.service_security_group.add_egress_rule(
            ec2.Peer.any_ipv4(),
            ec2.Port.tcp(443),
            "HTTPS: the image registry, Secrets Manager, CloudWatch Logs, S3 (through the NAT gateway or endpoint)",
        )
        self.database.connections.allow_default_port_from(self.service_security_group, "Label Studio service")
        service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            task_definition=task,
            service_name=f"{self.names.prefix}-label-studio",
            desired_count=1,  # one server: Label Studio Community keeps no shared cache that a second task could use
            min_healthy_percent=100,  # the old task serves until its replacement is healthy
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            security_groups=[self.service_security_group],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            assign_public_ip=False,
            # the first start migrates an empty database before the server answers
            health_check_grace_period=cdk.Duration.minutes(10),
            platform_version=ecs.FargatePlatformVersion.LATEST,
            enable_execute_command=False,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        return service

    def _image(self, task: ecs.FargateTaskDefinition) -> ecs.ContainerImage:
        server = self.server
        credentials: secretsmanager.ISecret | None = None
        if server.image_pull_secret is not None:
            credentials = _secret_by_id(self, "ImagePullSecret", server.image_pull_secret)
        ecr = server.ecr_repository
        if ecr is not None:
            account, region, name = ecr
            repository_arn = f"arn:{self.stack.partition}:ecr:{region}:{account}:repository/{name}"
            execution_role = task.obtain_execution_role()
            allow(
                execution_role,
                # BatchImportUpstreamImage and CreateRepository: a pull-through cache fetches on first pull
                [
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage",
                    "ecr:BatchImportUpstreamImage",
                    "ecr:CreateRepository",
                ],
                [repository_arn],
                sid="PullTheImage",
            )
            allow(
                execution_role,
                ["ecr:GetAuthorizationToken"],
                ["*"],
                sid="RegistrySignIn",
                why="ecr:GetAuthorizationToken takes no resource; the pull itself is limited to the image's "
                "repository.",
            )
        return ecs.ContainerImage.from_registry(server.image_reference, credentials=credentials)

    def _container_secrets(self) -> dict[str, ecs.Secret]:
        database_secret = self.database.secret
        if database_secret is None:  # both database classes above generate one
            raise RuntimeError("the database has no generated credentials secret")
        return {
            "POSTGRE_USER": ecs.Secret.from_secrets_manager(database_secret, "username"),
            "POSTGRE_PASSWORD": ecs.Secret.from_secrets_manager(database_secret, "password"),
            "LABEL_STUDIO_USERNAME": ecs.Secret.from_secrets_manager(self.service_account, "username"),
            "LABEL_STUDIO_PASSWORD": ecs.Secret.from_secrets_manager(self.service_account, "password"),
            "LABEL_STUDIO_USER_TOKEN": ecs.Secret.from_secrets_manager(self.api_token),
            "SECRET_KEY": ecs.Secret.from_secrets_manager(self.secret_key),
        }

    def _grant_raw_images(self, role: iam.IRole) -> None:
        """List and read raw-images/ of the data bucket, and decrypt those objects through S3: nothing more."""
        stack, names = self.stack, self.names
        raw_objects = object_arn(stack, names.data_bucket, f"{RAW_IMAGE_PREFIX}*")
        allow(
            role,
            ["s3:ListBucket"],
            [stack.format_arn(service="s3", region="", account="", resource=names.data_bucket)],
            sid="ListRawImages",
            conditions={"StringLike": {"s3:prefix": [f"{RAW_IMAGE_PREFIX}*"]}},
        )
        allow(
            role,
            ["s3:GetObject"],
            [raw_objects],
            sid="ReadRawImages",
            why="Label Studio signs URLs for, and lists, the raw images only: every object under raw-images/.",
        )
        allow(
            role,
            ["kms:Decrypt"],
            [stack.format_arn(service="kms", resource="key", resource_name="*")],
            sid="DecryptRawImagesThroughS3",
            conditions={
                "ForAnyValue:StringEquals": {"kms:ResourceAliases": names.data_key_alias},
                "StringEquals": {"kms:ViaService": f"s3.{stack.region}.amazonaws.com"},
            },
        )

    # -- load balancer and sign-in ------------------------------------------------------------------
    def _load_balancer(self) -> tuple[elbv2.ApplicationLoadBalancer, elbv2.ApplicationListener]:
        server = self.server
        security_group = ec2.SecurityGroup(
            self,
            "LoadBalancerSecurityGroup",
            vpc=self.vpc,
            description="Label Studio load balancer: HTTPS (and HTTP to redirect) from the allowed ranges",
            allow_all_outbound=False,
        )
        for cidr in server.allowed_cidrs:
            security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), f"HTTPS from {cidr}")
            security_group.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(80), f"HTTP from {cidr} (redirected)")
        if any(cidr.endswith("/0") for cidr in server.allowed_cidrs):
            acknowledge(
                security_group,
                "AwsSolutions-EC23",
                f"Labelers work from wherever they are ({CONFIG_KEY}.allowed_cidrs); every browser request signs in "
                "at the identity provider first and API calls need a Label Studio token. Narrow allowed_cidrs to "
                "your networks to close it further.",
            )
        load_balancer = elbv2.ApplicationLoadBalancer(
            self,
            "LoadBalancer",
            vpc=self.vpc,
            internet_facing=True,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC),
            security_group=security_group,
            drop_invalid_header_fields=True,
        )
        self._access_logs(load_balancer)
        target_group = elbv2.ApplicationTargetGroup(
            self,
            "Targets",
            vpc=self.vpc,
            port=CONTAINER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            target_type=elbv2.TargetType.IP,
            targets=[self.service],
            deregistration_delay=cdk.Duration.seconds(30),
            health_check=elbv2.HealthCheck(
                path=HEALTH_CHECK_PATH,
                healthy_http_codes="200",
                interval=cdk.Duration.seconds(30),
                timeout=cdk.Duration.seconds(10),
            ),
        )
        forward = elbv2.ListenerAction.forward([target_group])
        listener = load_balancer.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(server.certificate_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,  # the security group above says who may connect
            default_action=self._sign_in(forward),
        )
        # Programs (the labeling round) cannot follow a sign-in page: API calls that carry a Label Studio token go
        # straight to Label Studio, which answers 401 unless the token belongs to an active account.
        listener.add_action(
            "TokenApi",
            priority=API_RULE_PRIORITY,
            conditions=[
                elbv2.ListenerCondition.path_patterns([API_PATH_PATTERN]),
                elbv2.ListenerCondition.http_header(API_AUTHORIZATION_HEADER, [API_AUTHORIZATION_PATTERN]),
            ],
            action=forward,
        )
        load_balancer.add_listener(
            "Http",
            port=80,
            protocol=elbv2.ApplicationProtocol.HTTP,
            open=False,
            default_action=elbv2.ListenerAction.redirect(protocol="HTTPS", port="443", permanent=True),
        )
        return load_balancer, listener

    def _access_logs(self, load_balancer: elbv2.ApplicationLoadBalancer) -> None:
        """Access logs to a bucket of this stack, for any region (CDK's own helper needs the region at synth).

        Load balancers in regions opened before August 2022 write as their region's Elastic Load Balancing account,
        newer regions as the log delivery service: the policy names both. The account comes from a map of the
        regions CDK knows (CloudFormation's language extensions fall back to this account elsewhere, which grants
        nothing new).
        """
        stack = self.stack
        bucket = access_log_bucket(self, "LoadBalancerLogs", retention_days=365)
        accounts = cdk.CfnMapping(
            self,
            "LoadBalancerLogAccounts",
            mapping={
                region: {"account": account}
                for region, account in sorted(
                    region_info.RegionInfo.region_map(region_info.FactName.ELBV2_ACCOUNT).items()
                )
            },
        )
        elb_account = accounts.find_in_map(stack.region, "account", stack.account)
        log_objects = bucket.arn_for_objects(f"{LOAD_BALANCER_LOG_PREFIX}/AWSLogs/{stack.account}/*")
        for sid, principal in (
            ("LogDeliveryService", iam.ServicePrincipal("logdelivery.elasticloadbalancing.amazonaws.com")),
            ("LoadBalancingAccountOfTheRegion", iam.ArnPrincipal(f"arn:{stack.partition}:iam::{elb_account}:root")),
        ):
            bucket.add_to_resource_policy(
                iam.PolicyStatement(sid=sid, principals=[principal], actions=["s3:PutObject"], resources=[log_objects])
            )
        for key, value in (
            ("access_logs.s3.enabled", "true"),
            ("access_logs.s3.bucket", bucket.bucket_name),
            ("access_logs.s3.prefix", LOAD_BALANCER_LOG_PREFIX),
        ):
            load_balancer.set_attribute(key, value)
        if bucket.policy is not None:  # the load balancer checks that it may write when logging is turned on
            load_balancer.node.add_dependency(bucket.policy)

    def _sign_in(self, forward: elbv2.ListenerAction) -> elbv2.ListenerAction:
        sign_in = self.server.sign_in
        timeout = cdk.Duration.hours(sign_in.session_timeout_hours)
        if sign_in.provider == "oidc":
            return elbv2.ListenerAction.authenticate_oidc(
                issuer=str(sign_in.issuer),
                authorization_endpoint=str(sign_in.authorization_endpoint),
                token_endpoint=str(sign_in.token_endpoint),
                user_info_endpoint=str(sign_in.user_info_endpoint),
                client_id=str(sign_in.client_id),
                # a dynamic reference: CloudFormation reads the secret at deploy time, the template never holds it
                client_secret=cdk.SecretValue.secrets_manager(str(sign_in.client_secret_secret)),
                scope=sign_in.scope,
                session_timeout=timeout,
                on_unauthenticated_request=elbv2.UnauthenticatedAction.AUTHENTICATE,
                next=forward,
            )
        pool, client, domain = self._user_pool()
        return elbv2_actions.AuthenticateCognitoAction(
            user_pool=pool,
            user_pool_client=client,
            user_pool_domain=domain,
            scope=sign_in.scope,
            session_timeout=timeout,
            on_unauthenticated_request=elbv2.UnauthenticatedAction.AUTHENTICATE,
            next=forward,
        )

    def _user_pool(self) -> tuple[cognito.UserPool, cognito.UserPoolClient, cognito.UserPoolDomain]:
        names, sign_in = self.names, self.server.sign_in
        domain_prefix = sign_in.cognito_domain_prefix or f"{names.prefix}-labeling-{self.stack.account}"
        if any(word in names.prefix for word in ("aws", "amazon", "cognito")) and not sign_in.cognito_domain_prefix:
            raise ConfigError(
                f"{CONFIG_KEY}.sign_in.cognito_domain_prefix: the default ({names.prefix}-labeling-<account>) contains "
                "a word Cognito reserves (aws, amazon, cognito); set a prefix of your own"
            )
        pool = cognito.UserPool(
            self,
            "UserPool",
            user_pool_name=f"{names.prefix}-label-studio",
            self_sign_up_enabled=False,  # administrators add the labelers
            sign_in_aliases=cognito.SignInAliases(email=True),
            auto_verify=cognito.AutoVerifiedAttrs(email=True),
            standard_attributes=cognito.StandardAttributes(
                email=cognito.StandardAttribute(required=True, mutable=True)
            ),
            mfa=cognito.Mfa.REQUIRED,
            mfa_second_factor=cognito.MfaSecondFactor(otp=True, sms=False),
            password_policy=cognito.PasswordPolicy(
                min_length=12,
                require_lowercase=True,
                require_uppercase=True,
                require_digits=True,
                require_symbols=True,
                temp_password_validity=cdk.Duration.days(7),
            ),
            account_recovery=cognito.AccountRecovery.EMAIL_ONLY,
            feature_plan=cognito.FeaturePlan.PLUS,
            standard_threat_protection_mode=cognito.StandardThreatProtectionMode.FULL_FUNCTION,
            user_invitation=cognito.UserInvitationConfig(
                email_subject="Your sign-in for the labeling server",
                email_body=f"Sign in at {self.url} with {{username}} and the temporary password {{####}}. "
                "You will choose a password and set up an authenticator app.",
            ),
            deletion_protection=True,
            removal_policy=cdk.RemovalPolicy.RETAIN,  # the labelers' accounts outlive the stack
        )
        domain = pool.add_domain(
            "SignInDomain", cognito_domain=cognito.CognitoDomainOptions(domain_prefix=domain_prefix)
        )
        scopes = {"openid": cognito.OAuthScope.OPENID, "email": cognito.OAuthScope.EMAIL,
                  "profile": cognito.OAuthScope.PROFILE}  # fmt: skip
        client = pool.add_client(
            "LoadBalancerClient",
            generate_secret=True,  # the load balancer is a confidential client
            o_auth=cognito.OAuthSettings(
                flows=cognito.OAuthFlows(authorization_code_grant=True),
                scopes=[scopes[scope] for scope in sign_in.scope.split()],
                callback_urls=[f"{self.url}/oauth2/idpresponse"],
                logout_urls=[f"{self.url}/"],
            ),
            supported_identity_providers=[cognito.UserPoolClientIdentityProvider.COGNITO],
            prevent_user_existence_errors=True,
            enable_token_revocation=True,
            id_token_validity=cdk.Duration.hours(1),
            access_token_validity=cdk.Duration.hours(1),
            refresh_token_validity=cdk.Duration.hours(max(sign_in.session_timeout_hours, 1)),
        )
        self.user_pool = pool
        self.user_pool_domain = domain
        return pool, client, domain

    # -- DNS and outputs ----------------------------------------------------------------------------
    def _dns(self) -> None:
        server = self.server
        if server.hosted_zone_id is None or server.hosted_zone_name is None:
            return
        zone = route53.HostedZone.from_hosted_zone_attributes(
            self, "Zone", hosted_zone_id=server.hosted_zone_id, zone_name=server.hosted_zone_name
        )
        route53.ARecord(
            self,
            "Address",
            zone=zone,
            record_name=f"{server.domain_name}.",
            target=route53.RecordTarget.from_alias(route53_targets.LoadBalancerTarget(self.load_balancer)),
            comment="Label Studio of the labeling app",
        )

    def _outputs(self) -> None:
        outputs = {
            "Url": (self.url, "Label Studio (sign in at the identity provider, then at Label Studio)"),
            "LoadBalancerDnsName": (
                self.load_balancer.load_balancer_dns_name,
                f"Point {self.server.domain_name} here (CNAME, or an alias record in Route 53)",
            ),
            "ApiTokenSecretName": (self.names.label_studio_api_token_secret, "API token of the labeling round"),
            "ServiceAccountSecretArn": (
                self.service_account.secret_arn,
                "First Label Studio account (e-mail, password)",
            ),
        }
        if self.server.sign_in.provider == "cognito":
            outputs["UserPoolId"] = (self.user_pool.user_pool_id, "Add labelers here (admin-create-user)")
        for output_id, (value, description) in outputs.items():
            cdk.CfnOutput(self, output_id, value=value, description=description)


def _secret_by_id(scope: Construct, construct_id: str, secret_id: str) -> secretsmanager.ISecret:
    """A secret named in the configuration: its full ARN, or its name."""
    if secret_id.startswith("arn:"):
        return secretsmanager.Secret.from_secret_complete_arn(scope, construct_id, secret_id)
    return secretsmanager.Secret.from_secret_name_v2(scope, construct_id, secret_id)
