"""What every function of the edge workflow shares: clients with backoff, error kinds, S3 URIs, ARNs."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionError, EndpointConnectionError, ReadTimeoutError

# Every AWS call retries throttling and transient faults with exponential backoff and jitter
# ("standard" mode); what is still failing afterwards surfaces as TransientError, which the state
# machine retries again with its own backoff.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=60)

_TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "InternalError",
        "InternalFailure",
        "InternalFailureException",
        "InternalServerError",
        "InternalServerException",
        "InternalException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


class TransientError(Exception):
    """An AWS call that kept failing for a reason that may pass (throttling, a 5xx): worth retrying."""


class DeploymentInputError(Exception):
    """Bad input: retrying cannot help. The message says what is wrong and that nothing was created."""


def client(service: str, region: str | None = None) -> Any:
    return boto3.client(service, region_name=region, config=RETRY_CONFIG)


def error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def is_transient(error: BaseException) -> bool:
    if isinstance(error, (EndpointConnectionError, ConnectionError, ReadTimeoutError)):
        return True
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return error_code(error) in _TRANSIENT_CODES or status >= 500
    return False


@contextlib.contextmanager
def transient_errors() -> Iterator[None]:
    """Re-raise throttling and service faults as TransientError (the state machine retries those)."""
    try:
        yield
    except Exception as error:
        if is_transient(error):
            raise TransientError(f"{type(error).__name__}: {error}") from error
        raise


_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>.+)$")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    match = _S3_URI.match(uri or "")
    if not match:
        raise DeploymentInputError(f"{uri!r} is not an s3://bucket/key URI")
    return match["bucket"], match["key"]


_FUNCTION_ARN = re.compile(r"^arn:(?P<partition>[^:]+):lambda:(?P<region>[^:]+):(?P<account>\d{12}):function:.+$")


def account_of(function_arn: str) -> tuple[str, str, str]:
    """(partition, region, account) of a Lambda function ARN (the running function's own)."""
    match = _FUNCTION_ARN.match(function_arn)
    if not match:
        raise ValueError(f"not a Lambda function ARN: {function_arn!r}")
    return match["partition"], match["region"], match["account"]


def component_arn(*, partition: str, region: str, account: str, name: str, version: str | None = None) -> str:
    """ARN of a Greengrass component (or of one version of it)."""
    arn = f"arn:{partition}:greengrass:{region}:{account}:components:{name}"
    return f"{arn}:versions:{version}" if version else arn


def thing_group_arn(*, partition: str, region: str, account: str, name: str) -> str:
    return f"arn:{partition}:iot:{region}:{account}:thinggroup/{name}"
