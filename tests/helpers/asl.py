"""Check state machines in synthesized templates against botocore's service models and IAM.

* `state_machines(template)` renders each `AWS::StepFunctions::StateMachine` definition to plain ASL
  (tokens become readable placeholders, or the values you pass), ready to assert on or to run in
  moto's Step Functions executor.
* `sdk_tasks(definition)` lists every `arn:aws:states:::aws-sdk:<service>:<action>` task;
  `check_sdk_task(task)` returns what is wrong with it: unknown service, unknown operation, a parameter
  name the API does not have (nested literal structures included), a required parameter missing.
* `iam_actions(task)` is the IAM action the service really checks (e.g. `greengrass:CreateDeployment`
  for greengrassv2, `s3:ListBucket` for ListObjectsV2), and `role_allows(template, role, action)` says
  whether the role's policies grant it.
"""

from __future__ import annotations

import fnmatch
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, ServiceModel, Shape, StructureShape

from tests.helpers.strict_params import problems as strict_problems

PSEUDO_PARAMETERS = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}

# Operations whose IAM action is not `<signing name>:<operation>`.
# Services whose IAM prefix is neither their signing name nor their endpoint prefix.
IAM_PREFIXES = {"monitoring": "cloudwatch"}
IRREGULAR_IAM_ACTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("s3", "ListObjectsV2"): ("s3:ListBucket",),
    ("s3", "ListObjects"): ("s3:ListBucket",),
    ("s3", "HeadBucket"): ("s3:ListBucket",),
    ("s3", "HeadObject"): ("s3:GetObject",),
    ("s3", "ListObjectVersions"): ("s3:ListBucketVersions",),
    ("s3", "DeleteObjects"): ("s3:DeleteObject",),
    ("s3", "CopyObject"): ("s3:GetObject", "s3:PutObject"),
    ("s3", "GetObjectAttributes"): ("s3:GetObject", "s3:GetObjectAttributes"),
    ("lambda", "Invoke"): ("lambda:InvokeFunction",),
}


# --------------------------------------------------------------------------------------------------
# Definitions
# --------------------------------------------------------------------------------------------------


def render_token(value: Any, substitutions: Mapping[str, str]) -> str:
    """Turn a CloudFormation intrinsic inside a definition into a string."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return substitutions.get(argument, PSEUDO_PARAMETERS.get(argument, f"${{{argument}}}"))
        if function == "Fn::GetAtt":
            key = f"{argument[0]}.{argument[1]}"
            return substitutions.get(key, substitutions.get(argument[0], f"${{{key}}}"))
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(render_token(part, substitutions) for part in parts)
        if function == "Fn::Select":
            index, items = argument
            rendered = render_token(items, substitutions) if not isinstance(items, list) else None
            if rendered is not None:
                return rendered.split("\x00")[int(index)] if "\x00" in rendered else rendered
            return render_token(items[int(index)], substitutions)
        if function == "Fn::Split":
            separator, source = argument
            return "\x00".join(render_token(source, substitutions).split(separator))
    raise ValueError(f"cannot render {value!r} in a state machine definition")


@dataclass(frozen=True)
class StateMachine:
    logical_id: str
    definition: dict[str, Any]
    role_logical_id: str | None
    properties: dict[str, Any]


def state_machines(
    template: Mapping[str, Any], substitutions: Mapping[str, str] | None = None
) -> dict[str, StateMachine]:
    """Every state machine of a template with its rendered definition and its role's logical id."""
    found = {}
    for logical_id, resource in template.get("Resources", {}).items():
        if resource["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        properties = resource["Properties"]
        raw = properties.get("DefinitionString") or properties.get("Definition")
        text = raw if isinstance(raw, str) else render_token(raw, substitutions or {})
        role = properties.get("RoleArn")
        role_id = role["Fn::GetAtt"][0] if isinstance(role, dict) and "Fn::GetAtt" in role else None
        found[logical_id] = StateMachine(logical_id, json.loads(text), role_id, properties)
    return found


def iter_states(definition: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, state) of every state, inside Parallel branches and Map processors too."""
    for name, state in definition.get("States", {}).items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from iter_states(branch)
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                yield from iter_states(state[key])


# --------------------------------------------------------------------------------------------------
# aws-sdk tasks against botocore
# --------------------------------------------------------------------------------------------------


@functools.cache
def _session() -> botocore.session.Session:
    return botocore.session.get_session()


@functools.cache
def _services_by_sdk_id() -> dict[str, str]:
    """Step Functions names services like AWS SDK for Java v2 (`sfn`, `greengrassv2`): serviceId, lowercased."""
    result = {}
    for name in _session().get_available_services():
        model = _session().get_service_model(name)
        result[model.metadata["serviceId"].replace(" ", "").replace("-", "").lower()] = name
    return result


@dataclass(frozen=True)
class SdkTask:
    state_name: str
    service: str  # as written in the resource ARN, e.g. greengrassv2
    action: str  # as written, e.g. createDeployment
    parameters: dict[str, Any]
    resource: str

    @property
    def botocore_service(self) -> str | None:
        return _services_by_sdk_id().get(self.service)

    @property
    def operation_name(self) -> str:
        return self.action[:1].upper() + self.action[1:]


def sdk_tasks(definition: Mapping[str, Any]) -> list[SdkTask]:
    tasks = []
    for name, state in iter_states(definition):
        resource = state.get("Resource", "")
        if state.get("Type") != "Task" or ":states:::aws-sdk:" not in resource:
            continue
        _, _, tail = resource.partition(":states:::aws-sdk:")
        service, _, action = tail.partition(":")
        action = action.split(".")[0]  # .waitForTaskToken
        parameters = state.get("Parameters", state.get("Arguments", {}))
        tasks.append(SdkTask(name, service, action, parameters, resource))
    return tasks


def _operation(task: SdkTask) -> OperationModel | None:
    if task.botocore_service is None:
        return None
    model: ServiceModel = _session().get_service_model(task.botocore_service)
    if task.operation_name not in model.operation_names:
        return None
    return model.operation_model(task.operation_name)


def _is_dynamic(key: str, value: Any) -> bool:
    return key.endswith(".$") or (isinstance(value, str) and value.startswith("{%") and value.endswith("%}"))


def _check_structure(value: Any, shape: StructureShape, where: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        return  # a string here is an intrinsic or JSONata expression for the whole structure
    members = {name[:1].upper() + name[1:]: member for name, member in shape.members.items()}
    given = set()
    for key, item in value.items():
        plain = key.removesuffix(".$")
        given.add(plain)
        if plain not in members:
            errors.append(f"{where}: unknown parameter {plain!r} (expected one of {sorted(members)})")
        elif not _is_dynamic(key, item):
            _check_value(item, members[plain], f"{where}.{plain}", errors)
    for required in shape.required_members:
        name = required[:1].upper() + required[1:]
        if name not in given:
            errors.append(f"{where}: required parameter {name!r} missing")


def _check_value(value: Any, shape: Shape, where: str, errors: list[str]) -> None:
    if isinstance(shape, StructureShape):
        _check_structure(value, shape, where, errors)
    elif isinstance(shape, ListShape) and isinstance(value, list):
        for index, item in enumerate(value):
            _check_value(item, shape.member, f"{where}[{index}]", errors)
    elif isinstance(shape, MapShape) and isinstance(value, dict):
        for key, item in value.items():
            if not _is_dynamic(key, item):
                _check_value(item, shape.value, f"{where}.{key}", errors)
    elif isinstance(value, str) and "${" not in value:  # a literal (a `${...}` is a token resolved at deploy)
        errors.extend(strict_problems(value, shape, where))


def check_sdk_task(task: SdkTask) -> list[str]:
    """Everything wrong with one aws-sdk task (empty when botocore's model agrees with it)."""
    where = f"state {task.state_name!r} ({task.resource})"
    if task.botocore_service is None:
        return [f"{where}: no AWS service {task.service!r} in botocore"]
    if not task.action[:1].islower():
        return [f"{where}: Step Functions wants the action in camelCase, got {task.action!r}"]
    operation = _operation(task)
    if operation is None:
        return [f"{where}: {task.botocore_service} has no operation {task.operation_name}"]
    errors: list[str] = []
    if operation.input_shape is not None:
        _check_value(task.parameters, operation.input_shape, where, errors)
    elif task.parameters:
        errors.append(f"{where}: {task.operation_name} takes no parameters")
    return errors


def iam_actions(task: SdkTask) -> tuple[str, ...]:
    """The IAM action(s) the service checks for this call."""
    service = task.botocore_service
    if service is None:
        raise ValueError(f"unknown service {task.service}")
    irregular = IRREGULAR_IAM_ACTIONS.get((service, task.operation_name))
    if irregular:
        return irregular
    metadata = _session().get_service_model(service).metadata
    prefix = metadata.get("signingName") or metadata["endpointPrefix"]
    return (f"{IAM_PREFIXES.get(prefix, prefix)}:{task.operation_name}",)


# --------------------------------------------------------------------------------------------------
# IAM
# --------------------------------------------------------------------------------------------------


def role_statements(template: Mapping[str, Any], role_logical_id: str) -> list[dict[str, Any]]:
    """Allow statements of every policy attached to the role (AWS::IAM::Policy and inline)."""
    statements: list[dict[str, Any]] = []
    resources = template.get("Resources", {})
    role = resources.get(role_logical_id, {})
    for policy in role.get("Properties", {}).get("Policies", []) or []:
        statements.extend(policy["PolicyDocument"]["Statement"])
    for resource in resources.values():
        if resource["Type"] not in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            continue
        properties = resource["Properties"]
        if {"Ref": role_logical_id} in properties.get("Roles", []):
            statements.extend(properties["PolicyDocument"]["Statement"])
    return [s for s in statements if s.get("Effect") == "Allow"]


def role_allows(template: Mapping[str, Any], role_logical_id: str, action: str) -> bool:
    """Whether any Allow statement of the role names `action` (IAM actions are case-insensitive)."""
    for statement in role_statements(template, role_logical_id):
        actions = statement.get("Action", [])
        for granted in actions if isinstance(actions, list) else [actions]:
            if fnmatch.fnmatch(action.lower(), granted.lower()):
                return True
    return False
