"""Fixtures of the edge deployment tests (cloud side)."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Mapping

import pytest

CLASS_NAMES = ["scratch"]
GROUP = "tag-inspect-scratch-detector"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
MODEL_BUCKET = f"tag-inspect-models-{ACCOUNT}-{REGION}"
# ListModelPackages as the newest approved package must be asked for: one, by creation time, newest first.
NEWEST_APPROVED_QUERY = {
    "ModelPackageGroupName": GROUP,
    "ModelApprovalStatus": "Approved",
    "ModelPackageType": "Versioned",
    "SortBy": "CreationTime",
    "SortOrder": "Descending",
    "MaxResults": 1,
}


def onnx_bytes() -> bytes:
    """A real (tiny) ONNX model: `images` [1, 3, 32, 32] -> [1, 5, 1024] like a one-class YOLOv8 export."""
    import onnx
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 3, 1024])
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["images", "shape"], ["flat"]),
            helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["sliced"]),
            helper.make_node("Concat", ["flat", "sliced"], ["output0"], axis=1),
        ],
        "tiny-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1024])],
        initializer=[
            shape,
            helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
            helper.make_tensor("ends", TensorProto.INT64, [1], [2]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest(**overrides: object) -> dict[str, object]:
    document: dict[str, object] = {
        "schema_version": 1,
        "model_file": "model.onnx",
        "class_names": list(CLASS_NAMES),
        "input_size": 320,
        "confidence_threshold": 0.25,
        "iou_threshold": 0.45,
        "metrics": {"precision": 0.91, "recall": 0.88, "mAP50": 0.9, "mAP50-95": 0.62},
        "dataset_version": "ds-2026-11-20-abc123",
        "onnx_opset": 17,
    }
    document.update(overrides)
    return document


def tar_gz(members: Mapping[str, bytes], *, symlinks: Mapping[str, str] | None = None) -> bytes:
    """A gzip tar with these files (and symbolic links)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def model_archive(**overrides: bytes | None) -> bytes:
    """A valid model.tar.gz; `model_onnx=None` leaves a file out, bytes replace it."""
    files: dict[str, bytes | None] = {
        "model.onnx": onnx_bytes(),
        "model.json": json.dumps(manifest()).encode(),
        "results.csv": b"epoch,map\n1,0.5\n",
    }
    for key, value in overrides.items():
        files[key.replace("_", ".", 1) if key in ("model_onnx", "model_json") else key] = value
    return tar_gz({name: content for name, content in files.items() if content is not None})


WORKFLOW_STACK = "tag-inspect-edge-deployment-workflow"
TOOLCHAIN_STACK = "tag-inspect-edge-deployment-toolchain"


@pytest.fixture(scope="session")
def edge_stacks():
    """The edge_deployment app as app.py builds it (cdk-nag runs during synthesis: findings fail it)."""
    from tests.helpers.cdk_assembly import synthesized

    return synthesized("edge_deployment")


@pytest.fixture(scope="session")
def workflow_stack(edge_stacks):
    from tests.helpers.cdk_assembly import stack_named

    return stack_named(edge_stacks, WORKFLOW_STACK)
