"""Where a round spends its labeling budget: uncertainty from the device, then recency, fair across devices."""

from __future__ import annotations

import json

import pytest

from labeling.runtime import ground_truth as gt
from labeling.runtime import rounds
from labeling.runtime import selection as sel
from labeling.runtime.pre_labels import Box, PreLabel, pre_labels_prefix
from labeling.runtime.s3io import read_jsonl, write_jsonl
from shared.names import EDGE_UPLOAD_PREFIX
from tests.labeling.conftest import BUCKET, REGION
from tests.labeling.test_rounds import RUN, find_all, put, uri


def candidate(key: str, uncertainty: float = 0.5, modified: str = "2026-11-20T00:00:00+00:00") -> sel.Candidate:
    return sel.Candidate(key=key, size=1, modified=modified, uncertainty=uncertainty)


def test_the_edge_prefix_is_the_shared_one():
    assert sel.EDGE_UPLOAD_PREFIX == EDGE_UPLOAD_PREFIX  # the bundle cannot import shared.names


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"reason": "uncertain", "uncertainty": "0.8"}, (0.8, "uncertain")),
        ({"reason": "uncertain", "top-score": "0.5"}, (1.0, "uncertain")),  # older devices: the default band
        ({"reason": "uncertain", "top-score": "0.65"}, (0.25, "uncertain")),
        ({"reason": "drift", "top-score": "0.01"}, (1.0, "drift")),  # a model going blind: its silence is in doubt
        ({"reason": "sample", "top-score": "0.97"}, (0.0, "sample")),
        ({}, (0.5, "")),
        ({"uncertainty": "not a number"}, (0.5, "")),
        ({"uncertainty": "7"}, (0.5, "")),
    ],
)
def test_uncertainty_comes_from_what_the_device_recorded(metadata, expected):
    assert sel.uncertainty_from_metadata(metadata) == expected


def test_sources_are_devices_and_everything_else():
    assert sel.source_of("raw-images/edge/cam-7/2026-11-20/x.jpg") == "edge/cam-7"
    assert sel.source_of("raw-images/line-1/x.jpg") == sel.OTHER_SOURCE
    assert sel.source_of("raw-images/edge/x.jpg") == "edge/x.jpg"  # odd, but its own source: never dropped


def test_most_uncertain_first_then_newest_not_key_order():
    ranked = sel.rank_candidates(
        [
            candidate("raw-images/a.jpg", 0.5, "2026-11-01T00:00:00+00:00"),
            candidate("raw-images/b.jpg", 0.5, "2026-11-21T00:00:00+00:00"),
            candidate("raw-images/c.jpg", 0.9, "2026-10-01T00:00:00+00:00"),
        ],
        budget=3,
    )
    assert [c.key for c in ranked] == ["raw-images/c.jpg", "raw-images/b.jpg", "raw-images/a.jpg"]


def test_a_chatty_device_cannot_fill_the_round_alone():
    chatty = [candidate(f"raw-images/edge/cam-1/d/{i:03d}.jpg", 0.99) for i in range(50)]
    quiet = [candidate("raw-images/edge/cam-2/d/q.jpg", 0.6), candidate("raw-images/edge/cam-3/d/r.jpg", 0.3)]
    ranked = sel.rank_candidates([*chatty, *quiet], budget=6)
    first = [c.source for c in ranked[:3]]
    assert first == ["edge/cam-1", "edge/cam-2", "edge/cam-3"]  # every device gets its turn
    assert [c.source for c in ranked[3:6]] == ["edge/cam-1"] * 3  # then the rest of the budget
    assert len(ranked) == 8  # each source keeps at most `budget` candidates (spares for undecodable ones)


def test_the_round_spends_its_budget_on_uncertain_device_frames(s3, featurestore, jpeg):
    put(s3, "raw-images/a-old-line-image.jpg", jpeg)
    s3.put_object(
        Bucket=BUCKET,
        Key="raw-images/edge/cam-1/2026-11-20/u.jpg",
        Body=jpeg,
        Metadata={"reason": "uncertain", "uncertainty": "0.9", "top-score": "0.5"},
    )
    s3.put_object(Bucket=BUCKET, Key="raw-images/edge/cam-1/2026-11-20/s.jpg", Body=jpeg, Metadata={"reason": "sample"})
    find_all(s3, featurestore)
    rows = {row["key"]: row for row in read_jsonl(s3, BUCKET, f"{RUN.prefix}candidates/part-00000.jsonl")}
    assert rows["raw-images/edge/cam-1/2026-11-20/u.jpg"]["uncertainty"] == 0.9
    assert rows["raw-images/edge/cam-1/2026-11-20/s.jpg"]["reason"] == "sample"
    assert rows["raw-images/a-old-line-image.jpg"]["modified"]  # listing time, for recency
    result = rounds.select_images(s3, bucket=BUCKET, run_prefix=RUN.prefix, budget=2)
    assert (result["images"], result["sources"]) == (2, 2)
    selected = rounds.read_selected(s3, bucket=BUCKET, run_prefix=RUN.prefix)
    assert [image.uri for image in selected] == [
        uri("raw-images/edge/cam-1/2026-11-20/u.jpg"),
        uri("raw-images/a-old-line-image.jpg"),
    ]
    assert (selected[0].width, selected[0].height) == (320, 240)  # from the header, for the labeling tool


def test_pre_labels_turn_the_ground_truth_job_into_an_adjustment_of_the_models_boxes(
    s3, featurestore, config, ground_truth, jpeg
):
    put(s3, "raw-images/a.jpg", jpeg)
    put(s3, "raw-images/b.jpg", jpeg)
    find_all(s3, featurestore)
    rounds.select_images(s3, bucket=BUCKET, run_prefix=RUN.prefix, budget=5)
    model = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/tag-inspect-scratch-detector/4"
    write_jsonl(
        s3,
        BUCKET,
        f"{pre_labels_prefix(RUN.prefix)}part-000000.jsonl",
        [
            PreLabel(
                uri("raw-images/a.jpg"),
                320,
                240,
                model,
                "tag-inspect-scratch-detector-v4",
                "2026-11-22T03:20:00.000Z",
                (Box(0, 10.4, 12.0, 40.2, 20.0, 0.71),),
            ).to_json()
        ],
    )
    result = rounds.prepare_labeling_job(s3, config=config, run=RUN, region=REGION)
    request = result["request"]
    assert result["pre_labeled"] == 1
    assert request["HumanTaskConfig"]["PreHumanTaskLambdaArn"].endswith("PRE-AdjustmentBoundingBox")
    assert request["LabelAttributeName"] == gt.BOXES_ATTRIBUTE  # the review reads it as any first job's answer
    lines = {line["source-ref"]: line for line in read_jsonl(s3, BUCKET, f"{RUN.prefix}{gt.BOXES}/input.manifest")}
    model_boxes = lines[uri("raw-images/a.jpg")][gt.PRE_LABEL_ATTRIBUTE]
    assert model_boxes["annotations"] == [{"class_id": 0, "left": 10, "top": 12, "width": 30, "height": 8}]
    assert lines[uri("raw-images/b.jpg")][gt.PRE_LABEL_ATTRIBUTE]["annotations"] == []  # no box found: none shown
    metadata = lines[uri("raw-images/a.jpg")][f"{gt.PRE_LABEL_ATTRIBUTE}-metadata"]
    assert (
        metadata["human-annotated"] == "no" and metadata["job-name"] == "labeling-job/tag-inspect-scratch-detector-v4"
    )
    template = s3.get_object(Bucket=BUCKET, Key=f"{RUN.prefix}{gt.BOXES}/template.liquid.html")["Body"].read()
    assert f"manifestLine.{gt.PRE_LABEL_ATTRIBUTE}.annotations".encode() in template
    # workers correct the model's boxes; the review and the records follow as after a bounding-box job
    output = ground_truth.run_job(request)["LabelingJobOutput"]["OutputDatasetS3Uri"]
    review = rounds.prepare_review_job(s3, config=config, run=RUN, boxes_output_uri=output, region=REGION)
    reviewed = ground_truth.run_job(review["request"])["LabelingJobOutput"]["OutputDatasetS3Uri"]
    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=reviewed)
    assert (cursor.approved, cursor.written) == (2, 2)
    stored = featurestore.records[uri("raw-images/a.jpg")]
    assert json.loads(stored["annotations"]) == [{"class_id": 0, "x1": 10.0, "y1": 12.0, "x2": 40.0, "y2": 20.0}]
    assert stored["labeling_job"] == RUN.boxes_job
