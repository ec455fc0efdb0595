"""CloudFormation's side of a custom resource: the event it sends and the pre-signed URL it listens on."""

from __future__ import annotations

import json
from typing import Any

RESPONSE_URL = "https://cloudformation-custom-resource-response.example/presigned"


def cfn_event(request_type: str, logical_id: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A Create/Update/Delete request as CloudFormation sends it to the function."""
    return {
        "RequestType": request_type,
        "ResponseURL": RESPONSE_URL,
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/s/1",
        "RequestId": "r-1",
        "LogicalResourceId": logical_id,
        "ResourceProperties": properties,
        **extra,
    }


class CfnAnswers:
    """Stands for the pre-signed response URL (pass it as `opener`, or `install` it): keeps every answer.

    Each answer must be a PUT to an https URL (`url` when given) with a Content-Length, as CloudFormation's
    S3 URL requires.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: Any, timeout: float) -> Any:  # urllib.request.urlopen(request, timeout=...)
        assert request.get_method() == "PUT" and timeout == 30
        assert request.full_url.startswith("https://")
        if self.url is not None:
            assert request.full_url == self.url
        assert int(request.get_header("Content-length")) == len(request.data)
        self.bodies.append(json.loads(request.data))
        return _EmptyResponse()

    def install(self, monkeypatch: Any) -> CfnAnswers:
        """Answer every custom resource of the process here (`shared.runtime.cfn_response` opens the URL)."""
        from shared.runtime import cfn_response

        monkeypatch.setattr(cfn_response.urllib.request, "urlopen", self)
        return self


class _EmptyResponse:
    def __enter__(self) -> _EmptyResponse:
        return self

    def __exit__(self, *exc: object) -> bool:
        return False

    def read(self) -> bytes:
        return b""
