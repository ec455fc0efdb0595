"""The labeling round against a real Label Studio server (started on loopback from .venv-label-studio).

Images live in an S3 bucket of a moto server that Label Studio itself reads (its S3 storage resolves
the tasks' s3:// URIs to presigned URLs). Annotators and reviewers are played through Label Studio's
API, exactly as its interface submits answers. The Feature Store is the validating double; the
round's records are then written in the offline-store layout and read back as training reads them.
"""

from __future__ import annotations

import io
import random
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from labeling.local.server import LabelStudioServer, free_port
from labeling.runtime import label_studio as ls
from labeling.runtime import rounds
from labeling.runtime.errors import (
    ConfigurationError,
    LabelStudioAuthError,
    LabelStudioProjectError,
    LabelStudioUnavailable,
    NoLabelsError,
)
from labeling.runtime.ground_truth import RunIdentity, load_task_ui
from labeling.runtime.label_studio_api import LabelStudioClient
from labeling.runtime.pre_labels import Box, PreLabel, pre_labels_prefix
from labeling.runtime.s3io import write_jsonl
from shared.contracts import Annotation, LabelRecord
from shared.synthetic import make_tag
from tests.labeling.conftest import FEATURE_GROUP, REGION, make_config
from tests.labeling.fakes import FakeFeatureStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name=REGION)


def bucket_for(s3: Any, prefix: str) -> str:
    """A data bucket per test: each test's listing sees only its own images."""
    bucket = f"tag-inspect-data-{prefix}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    return bucket


@pytest.fixture
def client(studio: LabelStudioServer) -> LabelStudioClient:
    return LabelStudioClient(studio.url, studio.token)


def config_for(studio: LabelStudioServer, prefix: str, **changes: Any) -> Any:
    return make_config(
        project_prefix=prefix,
        data_bucket=f"tag-inspect-data-{prefix}",
        backend="label_studio",
        label_studio_url=studio.url,
        label_studio_token_secret="tag-inspect/labeling/label-studio-api-token",
        workforce=None,
        review_workforce=None,
        ground_truth_role_arn="",
        **changes,
    )


def run_identity(prefix: str, when: str) -> RunIdentity:
    from labeling.runtime.ground_truth import run_identity as identity

    return identity(
        project_prefix=prefix,
        jobs_prefix="labeling-jobs/",
        execution_arn=f"arn:aws:states:eu-west-1:123456789012:execution:tag-inspect-labeling:{when}",
        start_time=when,
    )


def put_tag(
    s3: Any, bucket: str, key: str, seed: int, metadata: dict[str, str] | None = None
) -> tuple[int, int, list[Annotation]]:
    image, boxes = make_tag(random.Random(seed), width=320, height=240)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue(), Metadata=metadata or {})
    return 320, 240, [Annotation(b.class_id, b.x1, b.y1, b.x2, b.y2) for b in boxes]


def find_and_select(s3: Any, featurestore: FakeFeatureStore, run: RunIdentity, bucket: str, budget: int) -> list[Any]:
    rounds.list_unlabeled_images(
        s3, featurestore, bucket=bucket, prefix="raw-images/", feature_group=FEATURE_GROUP, run_prefix=run.prefix
    )
    rounds.select_images(s3, bucket=bucket, run_prefix=run.prefix, budget=budget)
    return rounds.read_selected(s3, bucket=bucket, run_prefix=run.prefix)


def answer(client: LabelStudioClient, task_id: int, boxes: list[Annotation], *, verdict: str | None = None) -> None:
    """What an annotator's (or reviewer's) Submit sends: the regions, and the verdict for a verification."""
    result = ls.to_regions(boxes, width=320, height=240, class_names=("scratch",))
    if verdict is not None:
        result.append({"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [verdict]}})
    client.create_annotation(task_id, result=result, lead_time=4.2)


def round_tasks(client: LabelStudioClient, project_id: int, run: RunIdentity) -> dict[str, Any]:
    return {t.data["image"]: t for t in client.tasks(project_id, filters=[ls.data_filter("round", run.id)])}


# --------------------------------------------------------------------------------------------------
# A whole round, and the next one
# --------------------------------------------------------------------------------------------------


def test_a_round_on_label_studio_writes_exactly_the_reviewed_labels(studio, client, s3, tmp_path):
    prefix = "ls-round"
    config = config_for(studio, prefix)
    featurestore = FakeFeatureStore(FEATURE_GROUP)
    ui = load_task_ui(["scratch"])
    bucket = bucket_for(s3, prefix)
    keys = {
        "a": "raw-images/edge/cam-1/2026-11-20/a.jpg",
        "b": "raw-images/edge/cam-1/2026-11-20/b.jpg",
        "c": "raw-images/edge/cam-2/2026-11-20/c.jpg",
        "d": "raw-images/line/d.jpg",
    }
    metadata = {"a": {"reason": "uncertain", "uncertainty": "0.9"}, "b": {"reason": "sample"}, "c": {"reason": "drift"}}
    truth = {name: put_tag(s3, bucket, key, seed, metadata.get(name)) for seed, (name, key) in enumerate(keys.items())}
    uri = {name: f"s3://{bucket}/{key}" for name, key in keys.items()}
    run = run_identity(prefix, "2026-11-22T03:15:00Z")
    selected = find_and_select(s3, featurestore, run, bucket, budget=3)
    # most uncertain first, one source after the other: the drift frame, cam-1's uncertain frame, the line image
    assert [image.uri for image in selected] == [uri["c"], uri["a"], uri["d"]]
    model_boxes = {uri["a"]: (Box(0, 10.0, 20.0, 110.0, 60.0, 0.61),), uri["c"]: ()}
    write_jsonl(
        s3,
        bucket,
        f"{pre_labels_prefix(run.prefix)}part-000000.jsonl",
        [
            PreLabel(
                u, 320, 240, "arn:aws:sagemaker:eu-west-1:1:model-package/g/3", "g-v3", "2026-11-22T03:20:00.000Z", b
            ).to_json()
            for u, b in model_boxes.items()
        ],
    )

    prepared = ls.prepare_labeling_tasks(client, s3, featurestore, config=config, run=run, region=REGION)
    assert (prepared["tasks"], prepared["created"], prepared["carried_over"], prepared["pre_labeled"]) == (3, 3, 0, 2)
    tasks = round_tasks(client, prepared["project"], run)
    assert set(tasks) == {uri["a"], uri["c"], uri["d"]}
    # the model's boxes are offered as predictions, in Label Studio's percentages of the image
    (prediction,) = client.task(tasks[uri["a"]].id).predictions
    assert prediction["model_version"] == ls.PRE_LABEL_MODEL_VERSION
    (region,) = prediction["result"]
    assert region["value"]["rectanglelabels"] == ["scratch"]
    assert [round(region["value"][k], 4) for k in ("x", "y", "width", "height")] == [3.125, 8.3333, 31.25, 16.6667]
    assert client.task(tasks[uri["d"]].id).predictions == ()  # no pre-label for it: drawn from scratch
    # images are not copied: the task refers to the bucket and Label Studio presigns it for the browser
    assert tasks[uri["a"]].data["image"] == uri["a"]
    view_tasks = client.call(
        "GET", "/api/tasks", query={"view": prepared["view"], "page_size": 10, "resolve_uri": "false"}
    )
    assert [t["data"]["image"] for t in view_tasks["tasks"]] == [uri["c"], uri["a"], uri["d"]]  # by priority

    deadline = prepared["deadline"]
    assert ls.progress(client, project_id=prepared["project"], run_id=run.id, deadline=deadline) == {
        "total": 3, "answered": 0, "done": False, "timed_out": False,
    }  # fmt: skip
    answer(client, tasks[uri["a"]].id, truth["a"][2])  # corrects nothing, adds what the model missed
    answer(client, tasks[uri["c"]].id, [])  # "no defect" is an answer too
    later = datetime.now(UTC) + timedelta(days=4)
    assert ls.progress(client, project_id=prepared["project"], run_id=run.id, deadline=deadline) == {
        "total": 3, "answered": 2, "done": False, "timed_out": False,
    }  # fmt: skip
    assert ls.progress(client, project_id=prepared["project"], run_id=run.id, deadline=deadline, now=later) == {
        "total": 3, "answered": 2, "done": True, "timed_out": True,
    }  # fmt: skip

    review = ls.prepare_review_tasks(client, s3, config=config, run=run, region=REGION)
    assert (review["tasks"], review["unanswered"], review["not_reviewed"]) == (2, 1, 0)
    reviews = round_tasks(client, review["project"], run)
    # the reviewer sees the labeler's boxes as the starting point
    (shown,) = client.task(reviews[uri["a"]].id).predictions
    assert ls.from_regions(shown["result"], width=320, height=240, class_names=("scratch",)) == (
        [Annotation(b.class_id, round(b.x1, 2), round(b.y1, 2), round(b.x2, 2), round(b.y2, 2)) for b in truth["a"][2]],
        [],
    )
    answer(client, reviews[uri["a"]].id, truth["a"][2], verdict=ui.approve)
    answer(client, reviews[uri["c"]].id, [], verdict=ui.reject)

    cursor = ls.write_labels(client, s3, featurestore, config=config, run=run)
    assert (cursor.done, cursor.total, cursor.written, cursor.approved, cursor.rejected) == (True, 2, 2, 1, 1)
    assert featurestore.status_of(uri["a"]) == "approved" and featurestore.status_of(uri["c"]) == "rejected"
    assert featurestore.status_of(uri["d"]) is None  # unanswered: nothing written, the task stays
    stored = LabelRecord.from_values(featurestore.records[uri["a"]])
    assert stored.labeling_job == f"{prefix}-boxes/{run.id}"
    assert (stored.image_width, stored.image_height) == (320, 240)
    assert [(round(a.x1), round(a.y1), round(a.x2), round(a.y2)) for a in stored.annotations] == [
        (round(b.x1), round(b.y1), round(b.x2), round(b.y2)) for b in truth["a"][2]
    ]
    # a retry writes nothing twice
    again = ls.write_labels(client, s3, featurestore, config=config, run=run)
    assert (again.written, again.unchanged) == (0, 2)

    # in the offline-store layout, as training reads it
    from training.steps.dataset import read_offline_store, write_offline_store

    written = [LabelRecord.from_values(values) for values in featurestore.puts]
    write_offline_store(written, tmp_path / "offline")
    read_back = {
        r.image_uri: r for r in (LabelRecord.from_values(row) for row in read_offline_store(tmp_path / "offline"))
    }
    assert read_back == {record.image_uri: record for record in written}

    # the next round: the unanswered task is taken over (same task), the rejected image gets a fresh task
    run2 = run_identity(prefix, "2026-11-29T03:15:00Z")
    find_and_select(s3, featurestore, run2, bucket, budget=3)
    prepared2 = ls.prepare_labeling_tasks(client, s3, featurestore, config=config, run=run2, region=REGION)
    tasks2 = round_tasks(client, prepared2["project"], run2)
    assert (prepared2["carried_over"], prepared2["created"]) == (1, 2)
    assert tasks2[uri["d"]].id == tasks[uri["d"]].id
    assert tasks2[uri["c"]].id != tasks[uri["c"]].id
    assert uri["a"] not in tasks2  # approved
    assert client.task(tasks[uri["a"]].id).data["settled"] == f"{run.id}: label written"


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_answers_are_skipped_by_name_and_never_written(studio, client, s3):
    prefix = "ls-bad"
    config = config_for(studio, prefix, review_mode="adjustment")
    featurestore = FakeFeatureStore(FEATURE_GROUP)
    bucket = bucket_for(s3, prefix)
    for index, name in enumerate(("outside", "unknown", "deleted", "good")):
        put_tag(s3, bucket, f"raw-images/{name}.jpg", 10 + index)
    run = run_identity(prefix, "2026-11-22T03:15:00Z")
    find_and_select(s3, featurestore, run, bucket, budget=4)
    prepared = ls.prepare_labeling_tasks(client, s3, featurestore, config=config, run=run, region=REGION)
    tasks = {t.data["image"].rsplit("/", 1)[1][:-4]: t for t in round_tasks(client, prepared["project"], run).values()}
    region = ls.to_regions([Annotation(0, 10, 10, 50, 50)], width=320, height=240, class_names=("scratch",))[0]
    outside = {**region, "value": {**region["value"], "x": 90.0, "width": 30.0}}
    unknown = {**region, "value": {**region["value"], "rectanglelabels": ["dent"]}}
    client.create_annotation(tasks["outside"].id, result=[outside])
    client.create_annotation(tasks["unknown"].id, result=[unknown])
    client.create_annotation(tasks["deleted"].id, result=[region])
    client.create_annotation(tasks["good"].id, result=[region])
    client.call("DELETE", f"/api/tasks/{tasks['deleted'].id}")

    review = ls.prepare_review_tasks(client, s3, config=config, run=run, region=REGION)
    assert (review["tasks"], review["not_reviewed"]) == (1, 3)
    report = {
        row["task"]: row["reason"] for row in rounds.read_jsonl(s3, bucket, f"{run.prefix}reports/not-reviewed.jsonl")
    }
    assert "lies outside the image" in report[tasks["outside"].id]
    assert "label(s) ['dent']" in report[tasks["unknown"].id]
    assert "deleted in Label Studio" in report[tasks["deleted"].id]
    # broken answers settle their task: the image gets a fresh task next round, nothing is written for it
    assert client.task(tasks["outside"].id).data["settled"].startswith(f"{run.id}: not reviewed")
    (review_task,) = round_tasks(client, review["project"], run).values()
    client.create_annotation(review_task.id, result=[{**region, "value": {**region["value"], "y": -20.0}}])
    cursor = ls.write_labels(client, s3, featurestore, config=config, run=run)
    assert (cursor.total, cursor.written, cursor.no_verdict) == (0, 0, 1)
    assert featurestore.puts == []  # a corrected box outside the image is not a label


def test_a_project_edited_by_hand_stops_the_round(studio, client, s3):
    prefix = "ls-edited"
    put_tag(s3, bucket_for(s3, prefix), "raw-images/e.jpg", 50)
    config = config_for(studio, prefix)
    projects = ls.ensure_projects(client, config=config, region=REGION)
    edited = ls.boxes_label_config(["scratch", "dent"])
    client.update_project(projects.boxes.id, {"label_config": edited})
    with pytest.raises(
        LabelStudioProjectError, match=rf"project '{prefix}-boxes' \(id {projects.boxes.id}\).*edited by hand"
    ):
        ls.ensure_projects(client, config=config, region=REGION)


def test_a_deployment_that_changes_the_interface_updates_the_projects(studio, client, s3):
    prefix = "ls-mode"
    put_tag(s3, bucket_for(s3, prefix), "raw-images/k.jpg", 60)
    before = ls.ensure_projects(client, config=config_for(studio, prefix), region=REGION)
    assert 'name="verdict"' in client.project(before.review.id)["label_config"]
    after = ls.ensure_projects(client, config=config_for(studio, prefix, review_mode="adjustment"), region=REGION)
    assert after == before  # the same projects, their interface set by the round again
    assert 'name="verdict"' not in client.project(after.review.id)["label_config"]


def test_a_bucket_label_studio_cannot_read_is_named(studio, client):
    config = config_for(studio, "ls-nobucket")
    with pytest.raises(
        ConfigurationError, match=r"cannot connect to bucket tag-inspect-data-ls-nobucket: .*Validation"
    ):
        ls.ensure_projects(client, config=config, region=REGION)


def test_wrong_token_and_unreachable_server_are_named(studio):
    with pytest.raises(LabelStudioAuthError, match=rf"Label Studio at {studio.url}: GET /api/projects: HTTP 401"):
        LabelStudioClient(studio.url, "0" * 40).projects()
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(LabelStudioUnavailable, match=rf"Label Studio at {nobody}: GET /api/version: unreachable"):
        LabelStudioClient(nobody, "x" * 40, timeout=2).version()


def test_a_round_where_nobody_answered_fails_with_the_open_tasks_named(studio, client, s3):
    prefix = "ls-idle"
    config = config_for(studio, prefix)
    featurestore = FakeFeatureStore(FEATURE_GROUP)
    bucket = bucket_for(s3, prefix)
    put_tag(s3, bucket, "raw-images/x.jpg", 30)
    run = run_identity(prefix, "2026-11-22T03:15:00Z")
    find_and_select(s3, featurestore, run, bucket, budget=5)
    ls.prepare_labeling_tasks(client, s3, featurestore, config=config, run=run, region=REGION)
    with pytest.raises(NoLabelsError, match=r"no boxes task of round .* has a usable answer \(1 unanswered"):
        ls.prepare_review_tasks(client, s3, config=config, run=run, region=REGION)


def test_the_presigned_image_is_what_labelers_load(studio, client, s3):
    """Label Studio resolves the task's s3:// URI through the project's storage to a short-lived presigned URL."""
    prefix = "ls-presign"
    config = config_for(studio, prefix, label_studio_presign_ttl_minutes=3)
    featurestore = FakeFeatureStore(FEATURE_GROUP)
    bucket = bucket_for(s3, prefix)
    put_tag(s3, bucket, "raw-images/p.jpg", 40)
    run = run_identity(prefix, "2026-11-22T03:15:00Z")
    find_and_select(s3, featurestore, run, bucket, budget=1)
    prepared = ls.prepare_labeling_tasks(client, s3, featurestore, config=config, run=run, region=REGION)
    (storage,) = client.s3_import_storages(prepared["project"])
    assert (storage["bucket"], storage["presign"], storage["presign_ttl"]) == (bucket, True, 3)
    (task,) = round_tasks(client, prepared["project"], run).values()
    link = client.call("GET", f"/api/tasks/{task.id}")["data"]["image"]
    request = urllib.request.Request(f"{studio.url}{link}", headers={"Authorization": f"Token {studio.token}"})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        opener.open(request, timeout=10)
        raise AssertionError("expected a redirect to the presigned URL")
    except urllib.error.HTTPError as redirect:
        location = redirect.headers["Location"]
    assert "X-Amz-Expires=180" in location and f"/{bucket}/raw-images/p.jpg" in location
