"""The code bundle of the edge deployment's functions (the workflow's steps and the inference component's publisher).

`edge_deployment/runtime/`, `shared/contracts.py` and the CloudFormation responder at their repository
paths (`shared.code_bundle`), so a function's handler string is the function itself:
`edge_deployment.runtime.handlers.prepare_model`.
"""

from __future__ import annotations

from pathlib import Path

from shared.code_bundle import code_bundle

HANDLER_MODULE = "edge_deployment.runtime.handlers"


def runtime_bundle() -> Path:
    """Stage the bundle (once per content) and return its folder."""
    return code_bundle(
        "edge-deployment-runtime",
        ["edge_deployment/runtime", "shared/runtime/cfn_response.py", "shared/runtime/model_registry.py"],
    )
