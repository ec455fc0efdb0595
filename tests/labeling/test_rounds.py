"""The round's steps against moto S3, a Feature Store double and a Ground Truth double."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from labeling.runtime import ground_truth as gt
from labeling.runtime import rounds
from labeling.runtime.errors import ConcurrentRoundError, ManifestError, NoLabelsError
from labeling.runtime.feature_store import write_records
from labeling.runtime.s3io import list_keys, read_jsonl, read_text
from tests.labeling.conftest import BUCKET, FEATURE_GROUP, REGION
from tests.labeling.fakes import FakeFeatureStore, FakeGroundTruth
from tests.labeling.test_feature_store import record

RUN = gt.run_identity(
    project_prefix="tag-inspect",
    jobs_prefix="labeling-jobs/",
    execution_arn="arn:aws:states:eu-west-1:123456789012:execution:tag-inspect-labeling:test",
    start_time="2026-11-22T03:15:00.000Z",
)


def uri(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def find_all(s3: Any, featurestore: FakeFeatureStore, **kwargs: Any) -> rounds.FindCursor:
    return rounds.find_unlabeled_images(
        s3,
        featurestore,
        bucket=BUCKET,
        prefix="raw-images/",
        feature_group=FEATURE_GROUP,
        run_prefix=RUN.prefix,
        **kwargs,
    )


@pytest.fixture
def mixed_prefix(s3, featurestore, jpeg, png):
    """Raw images in every state a round meets, and what it should make of them."""
    put(s3, "raw-images/line-1/new.jpg", jpeg)
    put(s3, "raw-images/line-1/new.png", png)
    put(s3, "raw-images/line-1/approved.jpg", jpeg)
    put(s3, "raw-images/line-1/rejected.jpg", jpeg)
    put(s3, "raw-images/line-1/notes.txt", b"operator notes")
    put(s3, "raw-images/line-1/empty.jpg", b"")
    put(s3, "raw-images/line-1/broken.jpg", b"this is not a jpeg at all" * 10)
    put(s3, "raw-images/line-1/cut.jpg", jpeg[: len(jpeg) // 2])
    put(s3, "raw-images/line-1/", b"")  # a folder marker from the console
    put(s3, "raw-images/edge/dev-1/2026-11-22/frame.jpg", jpeg)
    put(s3, "other/outside.jpg", jpeg)  # not under the raw-image prefix
    write_records(featurestore, FEATURE_GROUP, [record(uri("raw-images/line-1/approved.jpg"))])
    write_records(featurestore, FEATURE_GROUP, [record(uri("raw-images/line-1/rejected.jpg"), status="rejected")])


def test_listing_keeps_images_without_an_approved_label_and_reports_the_rest(s3, featurestore, mixed_prefix):
    cursor = find_all(s3, featurestore)
    assert cursor.done and cursor.to_json() == {
        "start_after": "raw-images/line-1/rejected.jpg",
        "part": 1,
        "listed": 10,
        "images": 7,
        "approved": 1,
        "candidates": 6,
        "skipped": 2,
        "done": True,
    }
    candidates = [key for key, _ in rounds.iter_candidates(s3, bucket=BUCKET, run_prefix=RUN.prefix)]
    assert "raw-images/line-1/approved.jpg" not in candidates
    assert "raw-images/line-1/rejected.jpg" in candidates  # a rejected newest label counts as missing
    assert "raw-images/edge/dev-1/2026-11-22/frame.jpg" in candidates  # device uploads are picked up
    report = list(read_jsonl(s3, BUCKET, f"{RUN.prefix}reports/skipped-listing-00000.jsonl"))
    assert {(row["key"], row["reason"]) for row in report} == {
        ("raw-images/line-1/notes.txt", "not an image file (.txt)"),
        ("raw-images/line-1/empty.jpg", "zero-byte file"),
    }


def test_a_listing_cut_by_the_time_budget_resumes_where_it_stopped(s3, featurestore, mixed_prefix):
    calls, cursor = 0, None
    while cursor is None or not cursor.done:
        cursor = find_all(s3, featurestore, cursor=cursor, page_size=3, time_left=lambda: 0.0)
        calls += 1
    assert calls == 4 and cursor.candidates == 6 and cursor.skipped == 2
    assert len(list(rounds.iter_candidates(s3, bucket=BUCKET, run_prefix=RUN.prefix))) == 6


def test_a_repeated_call_rewrites_the_same_part(s3, featurestore, mixed_prefix):
    first = find_all(s3, featurestore, page_size=4, time_left=lambda: 0.0)
    again = find_all(s3, featurestore, page_size=4, time_left=lambda: 0.0)  # the state machine retried
    assert first == again
    assert list_keys(s3, BUCKET, f"{RUN.prefix}candidates/") == [f"{RUN.prefix}candidates/part-00000.jsonl"]


def test_listing_10000_images_keeps_the_payload_small(s3, featurestore):
    """1,000,000 images work the same way: only the cursor travels through the state machine."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]  # moto's store directly: 10,000 PUT requests take minutes
    for index in range(10_000):
        backend.put_object(BUCKET, f"raw-images/line-{index % 4}/{index:06d}.jpg", b"x")
    write_records(
        featurestore, FEATURE_GROUP, [record(uri(f"raw-images/line-0/{i:06d}.jpg")) for i in range(0, 2000, 4)]
    )
    featurestore.gets = 0
    payloads, cursor = [], None
    while cursor is None or not cursor.done:
        # each call gets a three-page budget, as a Lambda near its time limit would
        budget = iter([1e9, 1e9, 0.0])
        cursor = find_all(s3, featurestore, cursor=cursor, part_size=2_500, time_left=lambda b=budget: next(b, 0.0))
        payloads.append(json.dumps(cursor.to_json()))
    assert cursor.images == 10_000 and cursor.approved == 500 and cursor.candidates == 9_500
    assert len(payloads) == 4 and max(len(p) for p in payloads) < 300
    parts = list_keys(s3, BUCKET, f"{RUN.prefix}candidates/")
    assert len(parts) >= 4
    assert sum(1 for _ in rounds.iter_candidates(s3, bucket=BUCKET, run_prefix=RUN.prefix)) == 9_500
    assert featurestore.gets == 100  # one BatchGetRecord per 100 images


def select(s3: Any, featurestore: FakeFeatureStore, config: Any) -> dict[str, Any]:
    find_all(s3, featurestore)
    return rounds.select_images(s3, bucket=BUCKET, run_prefix=RUN.prefix, budget=config.max_images_per_job)


def test_the_job_input_manifest_holds_only_complete_images_up_to_the_limit(s3, featurestore, mixed_prefix, config):
    selection = select(s3, featurestore, config)
    assert (selection["images"], selection["undecodable"]) == (4, 2)
    result = rounds.prepare_labeling_job(s3, config=config, run=RUN, region=REGION)
    manifest = [row["source-ref"] for row in read_jsonl(s3, BUCKET, f"{RUN.prefix}boxes/input.manifest")]
    assert sorted(manifest) == sorted(
        uri(k)
        for k in (
            "raw-images/edge/dev-1/2026-11-22/frame.jpg",
            "raw-images/line-1/new.jpg",
            "raw-images/line-1/new.png",
            "raw-images/line-1/rejected.jpg",
        )
    )
    assert (result["images"], result["pre_labeled"]) == (4, 0)
    undecodable = {
        row["key"]: row["reason"] for row in read_jsonl(s3, BUCKET, f"{RUN.prefix}reports/undecodable.jsonl")
    }
    assert set(undecodable) == {"raw-images/line-1/broken.jpg", "raw-images/line-1/cut.jpg"}
    assert all(reason.startswith("undecodable image: ") for reason in undecodable.values())
    request = result["request"]
    assert request["LabelingJobName"] == RUN.boxes_job
    assert request["InputConfig"]["DataSource"]["S3DataSource"]["ManifestS3Uri"] == uri(
        f"{RUN.prefix}boxes/input.manifest"
    )
    assert request["OutputConfig"]["S3OutputPath"] == uri(f"{RUN.prefix}boxes/output/")
    categories = json.loads(read_text(s3, BUCKET, f"{RUN.prefix}boxes/label-categories.json"))
    assert categories["labels"] == [{"label": "scratch"}]
    assert "<crowd-bounding-box" in read_text(s3, BUCKET, f"{RUN.prefix}boxes/template.liquid.html")
    assert rounds.select_images(s3, bucket=BUCKET, run_prefix=RUN.prefix, budget=2)["images"] == 2
    limited = rounds.prepare_labeling_job(s3, config=config, run=RUN, region=REGION)
    assert limited["images"] == 2


def test_nothing_decodable_means_no_job(s3, featurestore, config):
    put(s3, "raw-images/only-broken.jpg", b"\xff\xd8\xff\xe0 not really")
    assert select(s3, featurestore, config)["images"] == 0
    result = rounds.prepare_labeling_job(s3, config=config, run=RUN, region=REGION)
    assert result["images"] == 0 and "request" not in result


def _boxes_job(s3, featurestore, config, ground_truth: FakeGroundTruth) -> str:
    select(s3, featurestore, config)
    request = rounds.prepare_labeling_job(s3, config=config, run=RUN, region=REGION)["request"]
    return ground_truth.run_job(request)["LabelingJobOutput"]["OutputDatasetS3Uri"]


def test_the_review_job_covers_the_images_that_got_boxes(s3, featurestore, mixed_prefix, config, ground_truth):
    ground_truth.boxes = lambda image: None if image.endswith("new.png") else [(0, 5, 5, 20, 10)]
    boxes_output = _boxes_job(s3, featurestore, config, ground_truth)
    result = rounds.prepare_review_job(s3, config=config, run=RUN, boxes_output_uri=boxes_output, region=REGION)
    assert (result["images"], result["not_reviewed"]) == (3, 1)
    review_lines = read_text(s3, BUCKET, f"{RUN.prefix}verification/input.manifest").splitlines()
    output_lines = read_text(s3, *boxes_output[5:].split("/", 1)).splitlines()
    assert set(review_lines) <= set(output_lines)  # Ground Truth's lines, untouched
    assert result["request"]["LabelAttributeName"] == "defect-boxes-verified"
    assert result["request"]["HumanTaskConfig"]["PreHumanTaskLambdaArn"].endswith("PRE-VerificationBoundingBox")
    ground_truth.run_job(result["request"])  # a valid CreateLabelingJob request over that manifest


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (None, ManifestError, "does not exist"),
        ("", ManifestError, "is empty"),
        (
            '{"source-ref": "s3://b/a.jpg", "defect-boxes": 3}\n',
            ManifestError,
            "line 1: defect-boxes must be an object",
        ),
        (
            '{"source-ref": "s3://b/a.jpg", "defect-boxes-metadata": {"failure-reason": "expired"}}\n',
            NoLabelsError,
            "returned no boxes",
        ),
    ],
    ids=["missing", "empty", "malformed", "nothing-labeled"],
)
def test_a_bad_bounding_box_output_stops_the_round(s3, config, content, error, message):
    key = f"{RUN.prefix}boxes/output/x/manifests/output/output.manifest"
    if content is not None:
        put(s3, key, content.encode())
    with pytest.raises(error, match=message):
        rounds.prepare_review_job(s3, config=config, run=RUN, boxes_output_uri=uri(key), region=REGION)
    assert list_keys(s3, BUCKET, f"{RUN.prefix}verification/") == []


def _reviewed(s3, featurestore, config, ground_truth) -> str:
    boxes_output = _boxes_job(s3, featurestore, config, ground_truth)
    review = rounds.prepare_review_job(s3, config=config, run=RUN, boxes_output_uri=boxes_output, region=REGION)
    return ground_truth.run_job(review["request"])["LabelingJobOutput"]["OutputDatasetS3Uri"]


def test_reviewed_labels_are_written_once_even_when_the_step_runs_again(
    s3, featurestore, mixed_prefix, config, ground_truth
):
    ground_truth.verdicts = lambda image: "reject" if image.endswith("new.jpg") else "approve"
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert cursor.to_json() == {
        "next": 4, "total": 4, "written": 4, "unchanged": 0, "superseded": 0,
        "approved": 3, "rejected": 1, "no_verdict": 0, "done": True,
    }  # fmt: skip
    assert featurestore.status_of(uri("raw-images/line-1/new.jpg")) == "rejected"
    assert featurestore.status_of(uri("raw-images/line-1/rejected.jpg")) == "approved"  # labeled again, now approved
    stored = featurestore.records[uri("raw-images/line-1/new.png")]
    assert stored["labeling_job"] == RUN.boxes_job and json.loads(stored["annotations"]) == [
        {"class_id": 0, "x1": 10.0, "y1": 12.0, "x2": 40.0, "y2": 20.0}
    ]
    puts = len(featurestore.puts)
    again = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert (again.written, again.unchanged) == (0, 4) and len(featurestore.puts) == puts
    # the next round finds only the rejected image (and nothing approved) to label again
    cursor = rounds.list_unlabeled_images(
        s3,
        featurestore,
        bucket=BUCKET,
        prefix="raw-images/",
        feature_group=FEATURE_GROUP,
        run_prefix="labeling-jobs/next/",
    )
    assert [k for k, _ in rounds.iter_candidates(s3, bucket=BUCKET, run_prefix="labeling-jobs/next/")] == [
        "raw-images/line-1/broken.jpg",
        "raw-images/line-1/cut.jpg",
        "raw-images/line-1/new.jpg",
    ]
    assert cursor.approved == 4


def test_a_verification_that_rejects_everything_writes_rejected_records(
    s3, featurestore, mixed_prefix, config, ground_truth
):
    ground_truth.verdicts = lambda image: "reject"
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    before = len(featurestore.puts)
    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert (cursor.approved, cursor.rejected, cursor.written) == (0, 4, 4)
    assert [record["review_status"] for record in featurestore.puts[before:]] == ["rejected"] * 4


def test_adjustment_reviews_write_the_corrected_boxes(s3, featurestore, mixed_prefix, config, ground_truth):
    config = config.__class__(**{**config.__dict__, "review_mode": "adjustment"})
    ground_truth.adjusted = lambda image: [(0, 11, 12, 30, 9)]
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    before = len(featurestore.puts)
    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert (cursor.approved, cursor.written) == (4, 4)
    assert {r["labeling_job"] for r in featurestore.puts[before:]} == {RUN.review_job}
    assert json.loads(featurestore.puts[before]["annotations"]) == [
        {"class_id": 0, "x1": 11.0, "y1": 12.0, "x2": 41.0, "y2": 21.0}
    ]


def test_a_malformed_review_output_writes_nothing(s3, featurestore, mixed_prefix, config, ground_truth):
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    bucket, key = review_output[5:].split("/", 1)
    lines = read_text(s3, bucket, key).splitlines()
    lines[2] = lines[2][:40]  # one line cut short
    put(s3, key, ("\n".join(lines) + "\n").encode())
    before = len(featurestore.puts)
    with pytest.raises(ManifestError, match=r"line 3: not a JSON object"):
        rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert len(featurestore.puts) == before


def test_a_review_without_any_verdict_stops_the_round(s3, featurestore, mixed_prefix, config, ground_truth):
    ground_truth.verdicts = lambda image: None
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    with pytest.raises(NoLabelsError, match=r"returned no verdict for any of its 4 image\(s\)"):
        rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)


@pytest.mark.usefixtures("jpeg_files")
def test_writing_in_several_calls_when_time_runs_out(s3, featurestore, config, ground_truth, monkeypatch):
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    monkeypatch.setattr(rounds, "WRITE_BATCH_DEFAULT", 5)
    cursor, calls = None, 0
    while cursor is None or not cursor.done:
        cursor = rounds.write_labels(
            s3,
            featurestore,
            config=config,
            run=RUN,
            review_output_uri=review_output,
            cursor=cursor,
            time_left=lambda: 0.0,
        )
        calls += 1
    assert calls == 3 and cursor.written == 12 and len(featurestore.puts) == 12


@pytest.fixture
def jpeg_files(s3, jpeg):
    for index in range(12):
        put(s3, f"raw-images/{index:02d}.jpg", jpeg)


def test_a_round_refuses_to_run_beside_another(aws, config):
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(
        name="tag-inspect-labeling",
        definition=json.dumps({"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 600, "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/states",
    )["stateMachineArn"]
    this = sfn.start_execution(stateMachineArn=machine, name="this-round")
    run = rounds.start_round(
        sfn,
        config=config,
        state_machine_arn=machine,
        execution_arn=this["executionArn"],
        start_time="2026-11-22T03:15:00Z",
    )
    assert run["boxes_job"].startswith("tag-inspect-boxes-20261122-031500-")
    other = sfn.start_execution(stateMachineArn=machine, name="other-round")
    with pytest.raises(ConcurrentRoundError, match=r"labeling round \S+:this-round \(started .*\) is still running"):
        rounds.start_round(
            sfn,
            config=config,
            state_machine_arn=machine,
            execution_arn=other["executionArn"],
            start_time="2026-11-22T03:16:00Z",
        )


@pytest.mark.usefixtures("mixed_prefix")
def test_verdicts_are_read_with_the_answers_the_review_job_had(s3, featurestore, config, ground_truth, monkeypatch):
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    # the worker texts were edited (and deployed) while the round ran
    changed = gt.TaskUi(("scratch",), {"scratch": "x"}, approve="Looks right", reject="Needs work")
    monkeypatch.setattr(gt, "load_task_ui", lambda class_names: changed)
    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)
    assert (cursor.approved, cursor.written) == (4, 4)


@pytest.mark.parametrize(
    "case",
    [
        # an import with the seed file's default time (2000-01-01): the round's answer is newer and decides
        (None, True),
        # an import of labels made after the round's reviewers answered: the seed is newer and decides
        ("2026-11-22T09:00:00.000Z", False),
    ],
    ids=["older-seed", "newer-seed"],
)
@pytest.mark.usefixtures("mixed_prefix")
def test_a_seed_import_during_a_round_is_decided_by_event_time_and_nothing_is_lost(
    s3, featurestore, config, ground_truth, case
):
    from labeling.runtime.seeding import import_seed_records, parse_seed_file

    seed_time, round_wins = case
    ground_truth.verdicts = lambda image: "reject" if image.endswith("new.jpg") else "approve"
    review_output = _reviewed(s3, featurestore, config, ground_truth)
    # while the round waits for its reviewers, someone imports a seed file that approves new.jpg
    row = {"image_uri": uri("raw-images/line-1/new.jpg"), "image_width": 320, "image_height": 240, "annotations": []}
    if seed_time:
        row["event_time"] = seed_time
    seed = parse_seed_file(json.dumps(row), filename="late.jsonl", class_names=["scratch"])
    import_seed_records(featurestore, FEATURE_GROUP, seed.records)
    puts_before = len(featurestore.puts)

    cursor = rounds.write_labels(s3, featurestore, config=config, run=RUN, review_output_uri=review_output)

    assert (cursor.written, cursor.superseded) == ((4, 0) if round_wins else (3, 1))
    status = featurestore.status_of(uri("raw-images/line-1/new.jpg"))
    assert status == ("rejected" if round_wins else "approved")
    # every label that was written is still there (the offline store keeps each record)
    sources = {put["labeling_job"] for put in featurestore.puts if put["image_uri"].endswith("new.jpg")}
    assert "seed" in sources and (RUN.boxes_job in sources) == round_wins
    assert len(featurestore.puts) == puts_before + cursor.written
