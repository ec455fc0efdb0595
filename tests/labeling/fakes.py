"""Test doubles for the services moto does not cover: Feature Store runtime and Ground Truth labeling jobs.

Both validate every request against botocore's real service models (a wrong parameter name or type
fails the test, as with `botocore.stub.Stubber`), and answer with the shapes the real services return.

* `FakeFeatureStore` keeps an online store in memory: one record per image, the one with the newest
  event time (an older PutRecord does not replace a newer record), and counts the calls. Like the
  service, it refuses a String event time in any other form than `yyyy-MM-ddTHH:mm:ss[.SSS]Z`.
* `FakeGroundTruth` plays a labeling job: it takes the CreateLabelingJob request through a Stubber
  (validated against the model), reads the input manifest from (moto) S3, and writes the output
  manifest exactly in Ground Truth's formats (bounding box, verification, adjustment; failed tasks with
  `failure-reason`), answering with a DescribeLabelingJob response validated the same way.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from botocore.validate import validate_parameters

from labeling.runtime import ground_truth as gt
from shared.contracts import parse_event_time
from tests.helpers.strict_params import check_request

_FEATURESTORE = botocore.session.get_session().get_service_model("sagemaker-featurestore-runtime")
# A String event time must be yyyy-MM-dd'T'HH:mm:ssZ or yyyy-MM-dd'T'HH:mm:ss.SSSZ ('T' and 'Z' constants).
EVENT_TIME_FORMAT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{3})?Z")


class FakeFeatureStore:
    """The label feature group's online store, behind the sagemaker-featurestore-runtime API."""

    def __init__(self, feature_group: str) -> None:
        self.feature_group = feature_group
        self.records: dict[str, dict[str, str]] = {}
        self.puts: list[dict[str, str]] = []
        self.gets = 0
        self.fail_puts_for: set[str] = set()
        self.unprocessed_once: set[str] = set()
        self._lock = threading.Lock()

    def _validate(self, operation: str, params: Mapping[str, Any]) -> None:
        model = _FEATURESTORE.operation_model(operation)
        validate_parameters(dict(params), model.input_shape)
        check_request(params, model)  # what the service rejects beyond botocore's checks

    def batch_get_record(self, **params: Any) -> dict[str, Any]:
        self._validate("BatchGetRecord", params)
        records, unprocessed = [], []
        with self._lock:
            self.gets += 1
            for identifier in params["Identifiers"]:
                assert identifier["FeatureGroupName"] == self.feature_group
                names = identifier.get("FeatureNames")
                for uri in identifier["RecordIdentifiersValueAsString"]:
                    if uri in self.unprocessed_once:
                        self.unprocessed_once.discard(uri)
                        unprocessed.append(uri)
                        continue
                    stored = self.records.get(uri)
                    if stored is None:
                        continue
                    values = {k: v for k, v in stored.items() if names is None or k in names}
                    records.append(
                        {
                            "FeatureGroupName": self.feature_group,
                            "RecordIdentifierValueAsString": uri,
                            "Record": [{"FeatureName": k, "ValueAsString": v} for k, v in values.items()],
                        }
                    )
        response: dict[str, Any] = {"Records": records, "Errors": [], "UnprocessedIdentifiers": []}
        if unprocessed:
            response["UnprocessedIdentifiers"] = [
                {"FeatureGroupName": self.feature_group, "RecordIdentifiersValueAsString": unprocessed}
            ]
        return response

    def put_record(self, **params: Any) -> dict[str, Any]:
        self._validate("PutRecord", params)
        assert params["FeatureGroupName"] == self.feature_group
        values = {item["FeatureName"]: item["ValueAsString"] for item in params["Record"]}
        uri = values["image_uri"]
        if not EVENT_TIME_FORMAT.fullmatch(values["event_time"]):
            raise ClientError(
                {"Error": {"Code": "ValidationError", "Message": f"Invalid EventTime {values['event_time']!r}"}},
                "PutRecord",
            )
        if uri in self.fail_puts_for:
            raise RuntimeError(f"simulated PutRecord failure for {uri}")
        with self._lock:
            self.puts.append(values)
            current = self.records.get(uri)
            if current is None or parse_event_time(values["event_time"]) >= parse_event_time(current["event_time"]):
                self.records[uri] = values
        return {}

    def status_of(self, uri: str) -> str | None:
        record = self.records.get(uri)
        return record["review_status"] if record else None


# --------------------------------------------------------------------------------------------------
# Ground Truth
# --------------------------------------------------------------------------------------------------

Answer = Callable[[str], Any]
"""Per image URI: boxes [(class_id, left, top, width, height)], a verdict, or None (the task expired)."""


@dataclass
class FakeGroundTruth:
    """Answers labeling jobs; `boxes`, `verdicts` and `adjusted` script what the workers do per image."""

    s3: Any
    class_names: tuple[str, ...]
    approve: str
    reject: str
    boxes: Answer = lambda uri: [(0, 10, 12, 30, 8)]
    verdicts: Answer = lambda uri: "approve"
    adjusted: Answer | None = None
    image_size: tuple[int, int] = (320, 240)
    requests: list[dict[str, Any]] = field(default_factory=list)
    clock: datetime = field(default_factory=lambda: datetime(2026, 11, 22, 3, 0, 0, 123456, tzinfo=UTC))

    def _tick(self) -> str:
        self.clock += timedelta(seconds=7)
        return self.clock.replace(tzinfo=None).isoformat()  # Ground Truth writes naive UTC timestamps

    def run_job(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """CreateLabelingJob + wait: what the `.sync` integration does, returning DescribeLabelingJob's answer."""
        sagemaker = boto3.client("sagemaker", region_name="eu-west-1")
        stubber = Stubber(sagemaker)
        arn = f"arn:aws:sagemaker:eu-west-1:123456789012:labeling-job/{request['LabelingJobName']}"
        stubber.add_response("create_labeling_job", {"LabelingJobArn": arn}, dict(request))
        with stubber:
            sagemaker.create_labeling_job(**request)  # validates the request against the real model
        self.requests.append(dict(request))
        kind = self._kind(request)
        bucket, key = request["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"][5:].split("/", 1)
        lines = [
            json.loads(line)
            for line in self.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()
            if line
        ]
        out_lines = [self._answer(kind, request, line) for line in lines]
        labeled = sum(1 for line in out_lines if request["LabelAttributeName"] in line)
        output_prefix = request["OutputConfig"]["S3OutputPath"]
        out_bucket, out_prefix = output_prefix[5:].split("/", 1)
        output_key = f"{out_prefix}{request['LabelingJobName']}/manifests/output/output.manifest"
        self.s3.put_object(
            Bucket=out_bucket, Key=output_key, Body="".join(json.dumps(line) + "\n" for line in out_lines).encode()
        )
        now = datetime.now(UTC)
        described = {
            "LabelingJobStatus": "Completed",
            "LabelCounters": {
                "TotalLabeled": labeled,
                "HumanLabeled": labeled,
                "MachineLabeled": 0,
                "FailedNonRetryableError": len(out_lines) - labeled,
                "Unlabeled": 0,
            },
            "CreationTime": now,
            "LastModifiedTime": now,
            "JobReferenceCode": "a1b2c3",
            "LabelingJobName": request["LabelingJobName"],
            "LabelingJobArn": arn,
            "LabelAttributeName": request["LabelAttributeName"],
            "InputConfig": request["InputConfig"],
            "OutputConfig": request["OutputConfig"],
            "RoleArn": request["RoleArn"],
            "LabelCategoryConfigS3Uri": request["LabelCategoryConfigS3Uri"],
            "HumanTaskConfig": request["HumanTaskConfig"],
            "LabelingJobOutput": {"OutputDatasetS3Uri": f"s3://{out_bucket}/{output_key}"},
        }
        stubber = Stubber(sagemaker)
        stubber.add_response("describe_labeling_job", described, {"LabelingJobName": request["LabelingJobName"]})
        with stubber:
            response = sagemaker.describe_labeling_job(LabelingJobName=request["LabelingJobName"])
        response.pop("ResponseMetadata", None)
        return json.loads(json.dumps(response, default=lambda value: value.isoformat()))

    @staticmethod
    def _kind(request: Mapping[str, Any]) -> str:
        pre = request["HumanTaskConfig"]["PreHumanTaskLambdaArn"]
        for kind, task_type in gt.TASK_TYPES.items():
            if pre.endswith(f":function:PRE-{task_type}"):
                # an adjustment task is the first job (over the model's boxes) or the review
                if task_type == "AdjustmentBoundingBox":
                    return gt.PRE_LABELED if request["LabelAttributeName"] == gt.BOXES_ATTRIBUTE else gt.ADJUSTMENT
                return kind
        raise AssertionError(f"unexpected pre-annotation function {pre}")

    def _box_label(self, boxes: list[tuple[int, float, float, float, float]]) -> dict[str, Any]:
        width, height = self.image_size
        return {
            "image_size": [{"width": width, "height": height, "depth": 3}],
            "annotations": [
                {"class_id": c, "left": left, "top": top, "width": w, "height": h} for c, left, top, w, h in boxes
            ],
        }

    def _box_metadata(self, boxes: list[Any], job: str, **extra: Any) -> dict[str, Any]:
        return {
            "objects": [{"confidence": 0.0} for _ in boxes],
            "class-map": {str(c): self.class_names[c] for c, *_ in boxes},
            "type": "groundtruth/object-detection",
            "human-annotated": "yes",
            "creation-date": self._tick(),
            "job-name": f"labeling-job/{job}",
            **extra,
        }

    def _answer(self, kind: str, request: Mapping[str, Any], line: dict[str, Any]) -> dict[str, Any]:
        uri, attribute, job = line["source-ref"], request["LabelAttributeName"], request["LabelingJobName"]
        out = dict(line)
        if kind == gt.BOXES:
            boxes = self.boxes(uri)
            if boxes is None:
                out[f"{attribute}-metadata"] = self._failure(job)
                return out
            out[attribute] = self._box_label(boxes)
            out[f"{attribute}-metadata"] = self._box_metadata(boxes, job)
        elif kind == gt.VERIFICATION:
            verdict = self.verdicts(uri)
            if verdict is None:
                out[f"{attribute}-metadata"] = self._failure(job)
                return out
            index = 0 if verdict == "approve" else 1
            out[attribute] = str(index)
            metadata = {
                "class-name": (self.approve, self.reject)[index],
                "confidence": 0.0,
                "type": "groundtruth/label-verification",
                "job-name": f"labeling-job/{job}",
                "human-annotated": "yes",
                "creation-date": self._tick(),
            }
            if index:
                metadata["worker-feedback"] = [{"comment": "the scratch at the bottom has no box"}]
            out[f"{attribute}-metadata"] = metadata
        else:
            # the review corrects the labeler's boxes; a pre-labeled job's workers correct the model's to theirs
            source = gt.PRE_LABEL_ATTRIBUTE if kind == gt.PRE_LABELED else gt.BOXES_ATTRIBUTE
            answer = self.boxes if kind == gt.PRE_LABELED else self.adjusted
            assert answer is not None, "script the adjusted boxes for an adjustment job"
            boxes = answer(uri)
            if boxes is None:
                out[f"{attribute}-metadata"] = self._failure(job)
                return out
            original = [
                (b["class_id"], b["left"], b["top"], b["width"], b["height"]) for b in line[source]["annotations"]
            ]
            status = "unadjusted" if boxes == original else "adjusted"
            out[attribute] = self._box_label(boxes)
            out[f"{attribute}-metadata"] = self._box_metadata(boxes, job, **{"adjustment-status": status})
        return out

    def _failure(self, job: str) -> dict[str, Any]:
        return {
            "failure-reason": "ClientError: The task expired before a worker submitted it.",
            "human-annotated": "yes",
            "creation-date": self._tick(),
            "job-name": f"labeling-job/{job}",
        }
