"""Fixtures of the labeling tests: a moto data bucket, the runtime configuration, images and fakes."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from labeling.runtime.config import LabelingConfig, Workforce
from labeling.runtime.ground_truth import load_task_ui
from shared.synthetic import make_tag
from tests.labeling.fakes import FakeFeatureStore, FakeGroundTruth

REGION = "eu-west-1"
BUCKET = "tag-inspect-data-123456789012-eu-west-1"
FEATURE_GROUP = "tag-inspect-labels"
WORK_TEAM = "arn:aws:sagemaker:eu-west-1:111111111111:workteam/private-crowd/tag-inspectors"
ROLE = "arn:aws:iam::123456789012:role/ground-truth"


def make_config(**changes: Any) -> LabelingConfig:
    values: dict[str, Any] = {
        "project_prefix": "tag-inspect",
        "data_bucket": BUCKET,
        "feature_group": FEATURE_GROUP,
        "class_names": ("scratch",),
        "raw_prefix": "raw-images/",
        "jobs_prefix": "labeling-jobs/",
        "workforce": Workforce(type="private", work_team_arn=WORK_TEAM),
        "review_workforce": Workforce(type="private", work_team_arn=WORK_TEAM),
        "ground_truth_role_arn": ROLE,
        "output_kms_key": "arn:aws:kms:eu-west-1:123456789012:alias/tag-inspect-data",
        "max_images_per_job": 500,
        "pre_labels": True,
        "model_package_group": "tag-inspect-scratch-detector",
    }
    values.update(changes)
    return LabelingConfig(**values)


@pytest.fixture
def config() -> LabelingConfig:
    return make_config()


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws():
        yield


@pytest.fixture
def s3(aws: None) -> Any:
    client = boto3.client("s3", region_name=REGION)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    return client


@pytest.fixture
def featurestore() -> FakeFeatureStore:
    return FakeFeatureStore(FEATURE_GROUP)


def image_bytes(seed: int = 0, *, image_format: str = "JPEG", width: int = 320, height: int = 240) -> bytes:
    image, _ = make_tag(random.Random(seed), width=width, height=height)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="session")
def jpeg() -> bytes:
    return image_bytes(1)


@pytest.fixture(scope="session")
def png() -> bytes:
    return image_bytes(2, image_format="PNG")


@pytest.fixture
def ground_truth(s3: Any) -> FakeGroundTruth:
    ui = load_task_ui(["scratch"])
    return FakeGroundTruth(s3=s3, class_names=("scratch",), approve=ui.approve, reject=ui.reject)
