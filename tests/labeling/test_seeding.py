"""Seeding existing labels: CSV and JSON lines, line-numbered errors, idempotent imports (CLI and deploy time)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from labeling import seed as seed_cli
from labeling.runtime import handlers
from labeling.runtime.errors import SeedFileError
from labeling.runtime.seeding import _KEYS as KEYS
from labeling.runtime.seeding import SEED_EVENT_TIME, import_seed_records, parse_seed_file
from shared.synthetic import write_dataset
from tests.helpers.custom_resource import CfnAnswers
from tests.helpers.lambda_context import LambdaContext
from tests.labeling.conftest import BUCKET, FEATURE_GROUP
from tests.labeling.fakes import FakeFeatureStore

REPO_ROOT = Path(__file__).resolve().parents[2]
BASE = f"s3://{BUCKET}/raw-images/"

JSONL = "\n".join(
    [
        json.dumps(
            {
                "image_uri": f"{BASE}a.jpg",
                "image_width": 320,
                "image_height": 240,
                "annotations": [{"class_id": 0, "x1": 1, "y1": 2, "x2": 30, "y2": 40}],
            }
        ),
        json.dumps({"image_uri": f"{BASE}b.jpg", "width": 320, "height": 240, "boxes": []}),
        "{broken json",
        json.dumps(
            {
                "image_uri": f"{BASE}c.jpg",
                "image_width": 320,
                "image_height": 240,
                "annotations": [{"class_id": 3, "x1": 1, "y1": 2, "x2": 3, "y2": 4}],
            }
        ),
        "",
        json.dumps(
            {
                "image_uri": f"{BASE}d.jpg",
                "image_width": 320,
                "image_height": 240,
                "annotations": [{"class_id": 0, "x1": 1, "y1": 2, "x2": 400, "y2": 4}],
            }
        ),
        json.dumps({"image_uri": f"{BASE}a.jpg", "image_width": 320, "image_height": 240}),
        json.dumps({"image_uri": f"{BASE}e.jpg", "image_width": 320, "image_height": 240, "review_status": "maybe"}),
        json.dumps({"image_uri": f"{BASE}f.jpg", "image_width": 320, "image_height": 240, "reveiw_status": "approved"}),
        json.dumps({"image_uri": f"{BASE}g.jpg", "image_height": 240}),
        json.dumps(
            {
                "image_uri": f"{BASE}h.jpg",
                "image_width": 320,
                "image_height": 240,
                "review_status": "rejected",
                "event_time": "2025-05-01T10:00:00Z",
                "labeling_job": "legacy-tool",
            }
        ),
    ]
)


def test_malformed_rows_are_reported_with_line_numbers_and_valid_rows_kept():
    seed = parse_seed_file(JSONL, filename="labels.jsonl", class_names=["scratch"])
    assert [r.image_uri.rsplit("/", 1)[1] for r in seed.records] == ["a.jpg", "b.jpg", "h.jpg"]
    assert [(e.line, e.message) for e in seed.errors] == [
        (3, "not valid JSON (Expecting property name enclosed in double quotes)"),
        (4, "box 0: unknown class id 3 (only 1 classes)"),
        (6, "box 0: box (1.0, 2.0, 400.0, 4.0) outside the 320x240 image"),
        (7, f"{BASE}a.jpg is already on line 1"),
        (8, f"{BASE}e.jpg: review_status must be one of ('approved', 'rejected'), got 'maybe'"),
        (9, "unknown key(s) reveiw_status; expected some of " + ", ".join(KEYS)),
        (10, "image_width is required"),
    ]
    assert seed.rows == 10
    first, _, last = seed.records
    assert (first.review_status, first.event_time, first.labeling_job) == ("approved", SEED_EVENT_TIME, "seed")
    assert (last.review_status, last.event_time, last.labeling_job) == (
        "rejected",
        "2025-05-01T10:00:00Z",
        "legacy-tool",
    )


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2025-05-01T10:00:00Z", "2025-05-01T10:00:00Z"),  # already as Feature Store takes it: kept as given
        ("2025-05-01T10:00:00.250Z", "2025-05-01T10:00:00.250Z"),
        ("2025-05-01T10:00:00+00:00", "2025-05-01T10:00:00.000Z"),  # Python's isoformat()
        ("2025-05-01T12:00:00.123456+02:00", "2025-05-01T10:00:00.123Z"),
        ("2025-05-01 10:00:00Z", "2025-05-01T10:00:00.000Z"),
    ],
)
def test_event_times_are_stored_as_feature_store_takes_them(featurestore: FakeFeatureStore, given, stored):
    """Feature Store refuses any other String event time than yyyy-MM-ddTHH:mm:ss[.SSS]Z (PutRecord fails)."""
    row = {"image_uri": f"{BASE}a.jpg", "image_width": 320, "image_height": 240, "event_time": given}
    seed = parse_seed_file(json.dumps(row), filename="labels.jsonl", class_names=["scratch"])
    assert seed.errors == [] and seed.records[0].event_time == stored
    report, _ = import_seed_records(featurestore, FEATURE_GROUP, seed.records)
    assert report.written == 1 and featurestore.records[f"{BASE}a.jpg"]["event_time"] == stored


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            "2025-05-01T10:00:00",
            "event_time '2025-05-01T10:00:00' has no time zone; end it with Z for UTC (or give an offset)",
        ),
        ("2025-05-01", "event_time '2025-05-01' has no time zone; end it with Z for UTC (or give an offset)"),
        ("yesterday", "event_time 'yesterday' is not an ISO-8601 timestamp (e.g. 2025-12-01T08:00:00.000Z)"),
    ],
)
def test_an_event_time_feature_store_cannot_take_is_a_malformed_row(featurestore: FakeFeatureStore, given, message):
    rows = [
        {"image_uri": f"{BASE}a.jpg", "image_width": 320, "image_height": 240, "event_time": given},
        {"image_uri": f"{BASE}b.jpg", "image_width": 320, "image_height": 240},
    ]
    seed = parse_seed_file("\n".join(json.dumps(row) for row in rows), filename="labels.jsonl", class_names=["scratch"])
    assert [(e.line, e.message) for e in seed.errors] == [(1, message)]
    report, _ = import_seed_records(featurestore, FEATURE_GROUP, seed.records)  # the valid row still loads
    assert report.written == 1 and set(featurestore.records) == {f"{BASE}b.jpg"}


@pytest.mark.parametrize("example", ["seed-labels.example.csv", "seed-labels.example.jsonl"])
def test_the_documented_example_files_are_valid_seed_files(example):
    text = (REPO_ROOT / "labeling" / "examples" / example).read_text()
    seed = parse_seed_file(text, filename=example, class_names=["scratch"], base_uri=BASE)
    assert seed.errors == [] and len(seed.records) == seed.rows > 0


def test_csv_rows_carry_annotations_as_json():
    text = (
        "image_uri,image_width,image_height,annotations,review_status\n"
        f'{BASE}a.jpg,320,240,"[{{""class_id"": 0, ""x1"": 1, ""y1"": 2, ""x2"": 3, ""y2"": 4}}]",approved\n'
        f"{BASE}b.jpg,320,240,[],rejected\n"
        f"{BASE}c.jpg,320,two hundred,[],approved\n"
        f"{BASE}d.jpg,320,240,[not json],approved\n"
        f"{BASE}e.jpg,320,240,[],approved,extra\n"
    )
    seed = parse_seed_file(text, filename="labels.csv", class_names=["scratch"])
    assert [(r.image_uri[-5:], r.review_status, len(r.annotations)) for r in seed.records] == [
        ("a.jpg", "approved", 1),
        ("b.jpg", "rejected", 0),
    ]
    assert [(e.line, e.message) for e in seed.errors] == [
        (4, "image_width and image_height must be integers"),
        (5, "annotations is not valid JSON"),
        (6, "more values than the 5 columns of the header"),
    ]


def test_files_that_cannot_be_seed_files_are_refused():
    with pytest.raises(SeedFileError, match=r"unknown column\(s\) path"):
        parse_seed_file("path,width\nx,1\n", filename="labels.csv", class_names=["scratch"])
    with pytest.raises(SeedFileError, match=r"must be \.csv or \.jsonl"):
        parse_seed_file("{}", filename="labels.parquet", class_names=["scratch"])


def test_the_synthetic_dataset_labels_are_a_seed_file(tmp_path):
    samples = write_dataset(tmp_path, 6, seed=3)
    text = (tmp_path / "labels.jsonl").read_text()
    seed = parse_seed_file(text, filename="labels.jsonl", class_names=["scratch"], base_uri=BASE)
    assert not seed.errors and len(seed.records) == 6
    assert [r.image_uri for r in seed.records] == [f"{BASE}{s.path.name}" for s in samples]
    assert [len(r.annotations) for r in seed.records] == [len(s.boxes) for s in samples]
    with_none = parse_seed_file(text, filename="labels.jsonl", class_names=["scratch"])
    assert len(with_none.errors) == 6 and "is relative" in with_none.errors[0].message


def test_importing_twice_writes_nothing_twice(featurestore: FakeFeatureStore):
    seed = parse_seed_file(JSONL, filename="labels.jsonl", class_names=["scratch"])
    first, _ = import_seed_records(featurestore, FEATURE_GROUP, seed.records)
    second, _ = import_seed_records(featurestore, FEATURE_GROUP, seed.records)
    assert first.to_json() == {"written": 3, "unchanged": 0, "superseded": 0}
    assert second.to_json() == {"written": 0, "unchanged": 3, "superseded": 0}
    assert len(featurestore.puts) == 3


def test_a_seed_never_replaces_a_newer_label(featurestore: FakeFeatureStore):
    newer = parse_seed_file(
        json.dumps(
            {
                "image_uri": f"{BASE}a.jpg",
                "image_width": 320,
                "image_height": 240,
                "event_time": "2026-11-22T03:00:00.000Z",
                "labeling_job": "round-7",
            }
        ),
        filename="x.jsonl",
        class_names=["scratch"],
    )
    import_seed_records(featurestore, FEATURE_GROUP, newer.records)
    old = parse_seed_file(JSONL.splitlines()[0], filename="x.jsonl", class_names=["scratch"])
    report, _ = import_seed_records(featurestore, FEATURE_GROUP, old.records)
    assert report.to_json() == {"written": 0, "unchanged": 0, "superseded": 1}
    assert featurestore.records[f"{BASE}a.jpg"]["labeling_job"] == "round-7"


class FakeSts:
    class meta:
        region_name = "eu-west-1"

    def get_caller_identity(self) -> dict[str, str]:
        return {"Account": "123456789012"}


def test_command_line_import(tmp_path, featurestore: FakeFeatureStore):
    write_dataset(tmp_path, 3, seed=1)
    (tmp_path / "labels.jsonl").write_text((tmp_path / "labels.jsonl").read_text() + "not json\n")
    clients = {"sts": FakeSts(), "sagemaker-featurestore-runtime": featurestore}
    out = io.StringIO()
    status = seed_cli.main(
        [str(tmp_path / "labels.jsonl"), "--config", str(REPO_ROOT / "config.yaml")],
        clients=clients.__getitem__,
        out=out,
    )
    lines = out.getvalue().splitlines()
    assert status == 1
    assert lines[0] == f"{tmp_path / 'labels.jsonl'}:4: not valid JSON (Expecting value)"
    assert lines[1:] == [
        "4 row(s): 3 valid, 1 malformed",
        f"{FEATURE_GROUP}: 3 written, 0 already there, 0 older than the stored label (kept the newer)",
    ]
    assert set(featurestore.records) == {f"s3://{BUCKET}/raw-images/tag-0001-0000{i}.jpg" for i in range(3)}
    out = io.StringIO()
    assert (
        seed_cli.main(
            [str(tmp_path / "labels.jsonl"), "--dry-run", "--base-uri", "s3://elsewhere/x/"],
            clients=clients.__getitem__,
            out=out,
        )
        == 1
    )
    assert out.getvalue().endswith("dry run: nothing written\n") and len(featurestore.records) == 3


def test_command_line_refuses_unusable_input(tmp_path):
    out = io.StringIO()
    assert seed_cli.main([str(tmp_path / "missing.jsonl")], clients=lambda service: None, out=out) == 2
    assert out.getvalue().startswith("error: ")


# --------------------------------------------------------------------------------------------------
# Deploy time: the custom resource
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def custom_resource(s3, featurestore, config, monkeypatch):
    """The seed handler with moto S3, the Feature Store double and a recorder of CloudFormation answers."""
    monkeypatch.setenv("LABELING_CONFIG", config.to_json())
    handlers._config.cache_clear()
    clients = {"s3": s3, "sagemaker-featurestore-runtime": featurestore}
    monkeypatch.setattr(handlers, "_client", clients.__getitem__)
    answers = CfnAnswers(url="https://cloudformation-response.example/abc").install(monkeypatch)
    yield answers.bodies
    handlers._config.cache_clear()


def _event(request_type: str, key: str = "assets/abc.jsonl") -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ResponseURL": "https://cloudformation-response.example/abc",
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/tag-inspect-labeling-data/1",
        "RequestId": "req-1",
        "LogicalResourceId": "SeedingSeed",
        "ResourceProperties": {
            "SeedBucket": BUCKET,
            "SeedKey": key,
            "FileName": "labels.jsonl",
            "BaseUri": BASE,
            "FeatureGroup": FEATURE_GROUP,
        },
    }


def test_deploy_time_seeding_imports_and_reports(s3, featurestore, custom_resource):
    s3.put_object(Bucket=BUCKET, Key="assets/abc.jsonl", Body=JSONL.encode())
    handlers.seed_resource(_event("Create"), LambdaContext())
    (answer,) = custom_resource
    assert answer["Status"] == "SUCCESS" and answer["PhysicalResourceId"] == f"label-seed-{FEATURE_GROUP}"
    assert {k: answer["Data"][k] for k in ("Rows", "Valid", "Malformed", "Written", "Unchanged")} == {
        "Rows": 10, "Valid": 3, "Malformed": 7, "Written": 3, "Unchanged": 0,
    }  # fmt: skip
    report = json.loads(
        s3.get_object(Bucket=BUCKET, Key=answer["Data"]["Report"].split(f"{BUCKET}/")[1])["Body"].read()
    )
    assert report["malformed"][0] == {
        "line": 3,
        "problem": "not valid JSON (Expecting property name enclosed in double quotes)",
    }
    handlers.seed_resource(_event("Update"), LambdaContext())  # the stack was updated with the same file
    assert custom_resource[1]["Data"]["Written"] == 0 and custom_resource[1]["Data"]["Unchanged"] == 3
    handlers.seed_resource(_event("Delete"), LambdaContext())  # deleting the stack keeps every label
    assert custom_resource[2]["Status"] == "SUCCESS" and len(featurestore.records) == 3


def test_deploy_time_seeding_fails_clearly_on_an_unusable_file(s3, featurestore, custom_resource):
    s3.put_object(Bucket=BUCKET, Key="assets/bad.jsonl", Body=b"not json\nnor this\n")
    handlers.seed_resource(_event("Create", "assets/bad.jsonl"), LambdaContext())
    (answer,) = custom_resource
    assert answer["Status"] == "FAILED"
    assert answer["Reason"].startswith(
        "SeedFileError: labels.jsonl: none of its 2 row(s) is valid; first problems: line 1:"
    )
    assert featurestore.records == {}


def test_deploy_time_seeding_stops_before_the_function_times_out(s3, featurestore, custom_resource):
    s3.put_object(Bucket=BUCKET, Key="assets/abc.jsonl", Body=JSONL.encode())
    handlers.seed_resource(_event("Create"), LambdaContext(seconds_left=30))
    (answer,) = custom_resource
    assert answer["Status"] == "FAILED" and "too large to import while deploying" in answer["Reason"]
    assert "python -m labeling.seed" in answer["Reason"]
