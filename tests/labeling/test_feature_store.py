"""Reading and writing the label feature group: Stubber-validated Feature Store runtime calls."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from labeling.runtime.errors import NON_RETRYABLE_ERRORS, ConfigurationError
from labeling.runtime.feature_store import (
    FeatureStoreError,
    approved_images,
    latest_records,
    plan_writes,
    write_records,
)
from shared.contracts import Annotation, LabelRecord
from tests.labeling.conftest import FEATURE_GROUP
from tests.labeling.fakes import FakeFeatureStore


def record(
    uri: str, *, status: str = "approved", time: str = "2026-11-22T03:00:00.000Z", job: str = "job-1"
) -> LabelRecord:
    return LabelRecord(
        image_uri=uri,
        event_time=time,
        image_width=320,
        image_height=240,
        annotations=(Annotation(0, 10.0, 12.0, 40.0, 20.0),),
        review_status=status,
        labeling_job=job,
    )


def stored(r: LabelRecord) -> dict[str, object]:
    return {
        "FeatureGroupName": FEATURE_GROUP,
        "RecordIdentifierValueAsString": r.image_uri,
        "Record": r.to_feature_store(),
    }


@pytest.fixture
def client():
    return boto3.client("sagemaker-featurestore-runtime", region_name="eu-west-1")


def test_new_records_are_written_and_known_ones_skipped(client):
    fresh, same, newer_stored = (
        record("s3://b/raw-images/1.jpg"),
        record("s3://b/raw-images/2.jpg"),
        record("s3://b/raw-images/3.jpg"),
    )
    newer = record("s3://b/raw-images/3.jpg", status="rejected", time="2027-01-01T00:00:00.000Z", job="job-2")
    uris = [fresh.image_uri, same.image_uri, newer_stored.image_uri]
    with Stubber(client) as stubber:
        stubber.add_response(
            "batch_get_record",
            {"Records": [stored(same), stored(newer)], "Errors": [], "UnprocessedIdentifiers": []},
            {"Identifiers": [{"FeatureGroupName": FEATURE_GROUP, "RecordIdentifiersValueAsString": uris}]},
        )
        stubber.add_response("put_record", {}, {"FeatureGroupName": FEATURE_GROUP, "Record": fresh.to_feature_store()})
        report = write_records(client, FEATURE_GROUP, [fresh, same, newer_stored], workers=1)
        stubber.assert_no_pending_responses()
    assert report.to_json() == {"written": 1, "unchanged": 1, "superseded": 1}


def test_a_record_changed_at_the_same_event_time_is_written_again():
    original = record("s3://b/raw-images/1.jpg")
    changed = record("s3://b/raw-images/1.jpg", status="rejected")
    to_write, report = plan_writes(
        [changed], {original.image_uri: {i["FeatureName"]: i["ValueAsString"] for i in original.to_feature_store()}}
    )
    assert to_write == [changed] and report.to_json() == {"written": 0, "unchanged": 0, "superseded": 0}


def test_reads_go_in_batches_of_100_and_retry_unprocessed_identifiers(client):
    uris = [f"s3://b/raw-images/{i:03d}.jpg" for i in range(150)]
    approved = record(uris[120])
    with Stubber(client) as stubber:
        stubber.add_response(
            "batch_get_record",
            {"Records": [], "Errors": [], "UnprocessedIdentifiers": []},
            {
                "Identifiers": [
                    {
                        "FeatureGroupName": FEATURE_GROUP,
                        "RecordIdentifiersValueAsString": uris[:100],
                        "FeatureNames": ["review_status"],
                    }
                ]
            },
        )
        stubber.add_response(
            "batch_get_record",
            {
                "Records": [],
                "Errors": [],
                "UnprocessedIdentifiers": [
                    {"FeatureGroupName": FEATURE_GROUP, "RecordIdentifiersValueAsString": [uris[120]]}
                ],
            },
            {
                "Identifiers": [
                    {
                        "FeatureGroupName": FEATURE_GROUP,
                        "RecordIdentifiersValueAsString": uris[100:],
                        "FeatureNames": ["review_status"],
                    }
                ]
            },
        )
        stubber.add_response(
            "batch_get_record",
            {
                "Records": [
                    {**stored(approved), "Record": [{"FeatureName": "review_status", "ValueAsString": "approved"}]}
                ],
                "Errors": [],
                "UnprocessedIdentifiers": [],
            },
            {
                "Identifiers": [
                    {
                        "FeatureGroupName": FEATURE_GROUP,
                        "RecordIdentifiersValueAsString": [uris[120]],
                        "FeatureNames": ["review_status"],
                    }
                ]
            },
        )
        sleeps: list[float] = []
        assert approved_images(client, FEATURE_GROUP, uris, workers=1, sleep=sleeps.append) == {uris[120]}
        stubber.assert_no_pending_responses()
    assert sleeps == [0.2]


def test_a_rejected_newest_label_counts_as_no_label(featurestore: FakeFeatureStore):
    uri = "s3://b/raw-images/1.jpg"
    write_records(featurestore, FEATURE_GROUP, [record(uri, time="2026-01-01T00:00:00.000Z")])
    write_records(featurestore, FEATURE_GROUP, [record(uri, status="rejected", time="2026-02-01T00:00:00.000Z")])
    assert approved_images(featurestore, FEATURE_GROUP, [uri]) == set()


def test_record_errors_name_the_records(client):
    with Stubber(client) as stubber:
        stubber.add_response(
            "batch_get_record",
            {
                "Records": [],
                "Errors": [
                    {
                        "FeatureGroupName": FEATURE_GROUP,
                        "RecordIdentifierValueAsString": "s3://b/x.jpg",
                        "ErrorCode": "ValidationError",
                        "ErrorMessage": "bad id",
                    }
                ],
                "UnprocessedIdentifiers": [],
            },
        )
        with pytest.raises(FeatureStoreError, match=r"failed for 1 record\(s\): s3://b/x.jpg: ValidationError bad id"):
            latest_records(client, FEATURE_GROUP, ["s3://b/x.jpg"], workers=1)


def test_a_failed_write_fails_the_call_after_the_others_and_a_retry_completes(featurestore: FakeFeatureStore):
    records = [record(f"s3://b/raw-images/{i}.jpg") for i in range(20)]
    featurestore.fail_puts_for = {records[7].image_uri}
    with pytest.raises(FeatureStoreError, match=r"failed for 1 of 20 record\(s\) \(the others were written"):
        write_records(featurestore, FEATURE_GROUP, records, workers=4)
    assert len(featurestore.records) == 19
    featurestore.fail_puts_for.clear()
    report = write_records(featurestore, FEATURE_GROUP, records, workers=4)
    assert report.to_json() == {"written": 1, "unchanged": 19, "superseded": 0}
    assert len(featurestore.puts) == 20  # nothing was written twice


def test_one_record_per_image_per_call():
    with pytest.raises(ValueError, match="at most one record per image"):
        write_records(None, FEATURE_GROUP, [record("s3://b/1.jpg"), record("s3://b/1.jpg")])


@pytest.mark.parametrize("code", ["ValidationError", "AccessForbidden", "ResourceNotFound"])
def test_a_missing_or_forbidden_feature_group_stops_at_once_naming_it(client, code):
    """Retrying cannot create the group or grant access: a ConfigurationError (not retried) says which group."""
    with Stubber(client) as stubber:
        stubber.add_client_error("batch_get_record", service_error_code=code, service_message="no such feature group")
        with pytest.raises(ConfigurationError, match=rf"feature group {FEATURE_GROUP} refused BatchGetRecord \({code}"):
            write_records(client, FEATURE_GROUP, [record("s3://b/raw-images/1.jpg")], workers=1)
    assert "ConfigurationError" in NON_RETRYABLE_ERRORS


def test_a_transient_feature_store_error_is_left_to_the_retries(client):
    with Stubber(client) as stubber:
        stubber.add_client_error("batch_get_record", service_error_code="ServiceUnavailable", http_status_code=503)
        with pytest.raises(ClientError, match="ServiceUnavailable"):
            approved_images(client, FEATURE_GROUP, ["s3://b/raw-images/1.jpg"])


@pytest.mark.parametrize("service", ["sagemaker-featurestore-runtime", "s3"])
def test_the_functions_and_the_command_line_absorb_throttling(monkeypatch, service):
    """Their clients retry throttled calls with adaptive (client-side rate limited) backoff and share a pool."""
    from labeling import seed
    from labeling.runtime import handlers

    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for client in (handlers._client.__wrapped__(service), seed._boto3_clients(service)):
        assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 11}
        assert client.meta.config.max_pool_connections >= 16  # one connection per writer thread, and more
