"""The stacks of the edge_deployment app that its asset pipeline deploys.

One workflow stack: the device fleet's resources (thing group, token exchange role and alias,
component bucket; each device's IoT policy is made by register_device), the inference component
version built from this commit, the deployment workflow (state machine, functions, approval rule),
the workflow pipeline that runs it and, when configured, a simulated device.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from edge_deployment import APP
from edge_deployment.fleet import DeviceFleet
from edge_deployment.fleet_monitoring import FleetMonitoring
from edge_deployment.inference_component import InferenceComponent
from edge_deployment.naming import edge_names
from edge_deployment.runtime_bundle import HANDLER_MODULE, runtime_bundle
from edge_deployment.telemetry_store import TelemetryStore
from edge_deployment.workflow import DeploymentWorkflow
from shared.app_stacks import AppWorkflowStack
from shared.config import Settings


class WorkflowStack(AppWorkflowStack):
    app = APP
    description = "edge deployment (devices, components, rollout workflow)"
    workflow_input = {"trigger": "workflow-pipeline"}  # the newest approved package

    def build(self) -> sfn.IStateMachine:
        settings, shared_names = self.settings, self.names
        own = edge_names(settings, account=self.account, region=self.region)

        self.fleet = DeviceFleet(self, "Fleet", settings=settings, names=own, shared_names=shared_names)
        self.inference = InferenceComponent(
            self, "InferenceComponent", settings=settings, fleet=self.fleet, shared_names=shared_names
        )
        self.workflow = DeploymentWorkflow(
            self,
            "Workflow",
            settings=settings,
            names=own,
            shared_names=shared_names,
            fleet=self.fleet,
            inference_version=self.inference.version,
        )
        self.telemetry = TelemetryStore(
            self,
            "Telemetry",
            settings=settings,
            function_code=runtime_bundle(),
            handler=f"{HANDLER_MODULE}.process_telemetry",
        )
        self.monitoring = FleetMonitoring(
            self,
            "Monitoring",
            settings=settings,
            names=own,
            state_machine=self.workflow.state_machine,
            telemetry_logs=self.telemetry.processor.log_group,
            function_code=runtime_bundle(),
            retrain_handler=f"{HANDLER_MODULE}.retrain_on_drift_alarm",
        )
        if settings.edge_deployment.simulated_device:
            from edge_deployment.simulated_device import SimulatedDevice  # noqa: PLC0415 - optional

            SimulatedDevice(self, "SimulatedDevice", settings=settings, names=own, fleet=self.fleet)

        for output_id, value, description in (
            ("ThingGroupName", settings.edge_deployment.thing_group_name, "Thing group the deployments target"),
            ("RoleAlias", own.role_alias, "iotRoleAlias for the Greengrass installer"),
            ("DevicePolicyPrefix", own.device_policy_prefix, "Each device's own IoT policy: this + its thing name"),
            ("ComponentBucketName", self.fleet.bucket.bucket_name, "Component artifacts (inference.zip, model.zip)"),
            ("InferenceComponentVersion", self.inference.version, "Inference component version this commit built"),
            ("StateMachineArn", self.workflow.state_machine.state_machine_arn, "The edge deployment workflow"),
            ("DashboardName", self.monitoring.dashboard.dashboard_name, "CloudWatch dashboard of the fleet"),
        ):
            cdk.CfnOutput(self, output_id, value=value, description=description)
        return self.workflow.state_machine


class EdgeDeploymentStage(cdk.Stage):
    def __init__(self, scope: Construct, construct_id: str, *, settings: Settings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.workflow = WorkflowStack(self, "Workflow", settings=settings)
