"""The feedback loop's parts: which frames go, under which keys, the durable queue, and the S3 upload.

The upload is tested for real: a signed PUT to moto's S3 server on 127.0.0.1, which (with moto's
authentication switched on) recomputes the SigV4 signature and checks the IAM policy of the
temporary credentials, the way a device gets them from the token exchange service.
"""

from __future__ import annotations

import io
import json
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from edge_deployment.components.inference.inspector.feedback import (
    ALREADY_THERE,
    CORRUPT_DIR,
    UPLOADED,
    ContainerCredentials,
    Credentials,
    CredentialsError,
    EmptyFrameMonitor,
    FeedbackUploader,
    FrameUpload,
    S3Uploader,
    StaticCredentials,
    UploadError,
    UploadQueue,
    UploadRateLimiter,
    credentials_from_environment,
    feedback_reason,
    uncertainty,
    upload_key,
)
from shared.names import EDGE_UPLOAD_PREFIX

REGION = "eu-west-1"
BUCKET = "tag-inspect-data-123456789012-eu-west-1"
THING = "line-1-cam-1"


def frame(index: int, size: int = 100) -> FrameUpload:
    return FrameUpload(
        key=f"raw-images/edge/{THING}/2026-01-02/{index:04d}.jpg",
        body=bytes([index % 256]) * size,
        metadata={"reason": "uncertain"},
    )


# --------------------------------------------------------------------------------------------------
# Which frames, under which keys
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_score", "expected"),
    [(0.3, "uncertain"), (0.5, "uncertain"), (0.7, "uncertain"), (0.29, None), (0.71, None), (0.0, None)],
)
def test_frames_whose_top_score_is_inside_the_band_are_uncertain(top_score: float, expected: str | None) -> None:
    assert feedback_reason(top_score, (0.3, 0.7), 0.0, random.Random(0)) == expected


def test_a_configured_share_of_the_other_frames_is_sampled() -> None:
    rng = random.Random(1)
    reasons = [feedback_reason(0.95, (0.3, 0.7), 0.1, rng) for _ in range(5000)]
    assert set(reasons) == {"sample", None}
    assert 0.08 < reasons.count("sample") / len(reasons) < 0.12
    assert feedback_reason(0.95, (0.3, 0.7), 1.0, rng) == "sample"
    assert feedback_reason(0.95, (0.3, 0.7), 0.0, rng) is None


def test_upload_keys_follow_the_raw_image_contract() -> None:
    moment = datetime(2026, 3, 4, 23, 30, 1, 250000, tzinfo=UTC)
    key = upload_key(EDGE_UPLOAD_PREFIX, THING, moment.astimezone(), token="abcd1234")
    assert key == f"raw-images/edge/{THING}/2026-03-04/20260304T233001.250Z-abcd1234.jpg"
    assert upload_key("raw-images/edge", THING, moment).startswith(f"raw-images/edge/{THING}/2026-03-04/")
    assert upload_key(EDGE_UPLOAD_PREFIX, THING, moment) != upload_key(EDGE_UPLOAD_PREFIX, THING, moment)


# --------------------------------------------------------------------------------------------------
# The durable queue
# --------------------------------------------------------------------------------------------------


def test_the_queue_is_first_in_first_out_and_survives_a_restart(tmp_path: Path) -> None:
    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    for index in range(3):
        assert queue.put(frame(index))
    first = queue.oldest()
    assert first is not None and queue.read(first) == frame(0)
    queue.remove(first)

    # A crash: the process is gone; a new queue over the same folder finds the rest, in order.
    reopened = UploadQueue(tmp_path, max_bytes=1_000_000)
    assert reopened.pending == 2
    keys = []
    while (item := reopened.oldest()) is not None:
        keys.append(reopened.read(item).key)
        reopened.remove(item)
    assert keys == [frame(1).key, frame(2).key]
    assert reopened.pending == 0 and reopened.pending_bytes == 0
    reopened.put(frame(9))
    assert UploadQueue(tmp_path, max_bytes=1_000_000).read(reopened.oldest()) == frame(9)  # type: ignore[arg-type]


def test_a_write_cut_short_by_a_crash_is_not_in_the_queue_and_numbering_continues(tmp_path: Path) -> None:
    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    queue.put(frame(1))
    (tmp_path / "000000000002.frame.tmp").write_bytes(b'{"key": "half')  # the crash came mid-write
    reopened = UploadQueue(tmp_path, max_bytes=1_000_000)
    assert reopened.pending == 1
    assert not list(tmp_path.glob("*.tmp"))
    reopened.put(frame(2))
    assert sorted(path.name for path in tmp_path.glob("*.frame")) == ["000000000001.frame", "000000000002.frame"]


def test_over_its_cap_the_queue_drops_the_oldest_frames_and_counts_them_across_restarts(tmp_path: Path) -> None:
    one = len(json.dumps({"key": frame(0).key})) + 200  # a frame of 100 bytes takes well under this
    queue = UploadQueue(tmp_path, max_bytes=3 * one)
    for index in range(5):
        assert queue.put(frame(index))
    assert queue.dropped == 2
    assert queue.pending == 3
    assert queue.pending_bytes <= queue.max_bytes
    oldest = queue.oldest()
    assert oldest is not None and queue.read(oldest).key == frame(2).key

    reopened = UploadQueue(tmp_path, max_bytes=3 * one)
    assert (reopened.dropped, reopened.pending) == (2, 3)
    smaller = UploadQueue(tmp_path, max_bytes=one)  # a smaller cap (configuration change) applies on restart too
    assert (smaller.dropped, smaller.pending) == (4, 1)
    assert smaller.read(smaller.oldest()).key == frame(4).key  # type: ignore[arg-type]


def test_a_frame_larger_than_the_whole_queue_is_dropped_and_counted(tmp_path: Path) -> None:
    queue = UploadQueue(tmp_path, max_bytes=500)
    queue.put(frame(1))
    assert not queue.put(frame(2, size=10_000))
    assert (queue.pending, queue.dropped) == (1, 1)


def test_an_unreadable_queued_frame_is_set_aside_not_deleted(tmp_path: Path) -> None:
    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    queue.put(frame(1))
    queue.put(frame(2))
    (tmp_path / "000000000001.frame").write_bytes(b"garbage without a header")
    stored: list[str] = []

    class Store:
        def put(self, upload: FrameUpload) -> str:
            stored.append(upload.key)
            return UPLOADED

    assert FeedbackUploader(queue, Store()).drain()
    assert stored == [frame(2).key]
    assert (tmp_path / CORRUPT_DIR / "000000000001.frame").read_bytes() == b"garbage without a header"
    assert queue.pending == 0 and queue.pending_bytes == 0


def test_a_frame_dropped_while_it_uploads_is_not_subtracted_twice(tmp_path: Path) -> None:
    """The producer may drop the very frame the uploader is sending; the byte count must stay right."""
    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    queue.put(frame(0))
    queue.max_bytes = 2 * queue.pending_bytes  # room for two frames
    sending = queue.oldest()
    assert sending is not None
    queue.put(frame(1))
    queue.put(frame(2))  # over the cap: frame 0, the one being sent, is dropped
    assert queue.dropped == 1
    queue.remove(sending)  # the upload of frame 0 finished anyway
    on_disk = sum(path.stat().st_size for path in tmp_path.glob("*.frame"))
    assert queue.pending == 2
    assert queue.pending_bytes == on_disk


# --------------------------------------------------------------------------------------------------
# S3, for real, on a local moto server
# --------------------------------------------------------------------------------------------------


class _ThroughMoto:
    """urlopen for requests to AWS: the signed request, exactly as built, goes to moto's S3 mock.

    moto answers through `requests` (which it intercepts); its status and body come back the way
    urllib reports them (HTTPError for 4xx/5xx). Other URLs (127.0.0.1) use the real urlopen.
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self.sent: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request, timeout: float | None = None) -> Any:
        if ".amazonaws.com" not in request.full_url:
            return self.original(request, timeout=timeout)
        self.sent.append(request)
        response = requests.request(
            request.get_method(),
            request.full_url,
            data=request.data,
            headers=dict(request.header_items()),
            timeout=timeout,
        )
        if response.status_code >= 400:
            raise urllib.error.HTTPError(
                request.full_url, response.status_code, response.reason, response.headers, io.BytesIO(response.content)
            )
        return io.BytesIO(response.content)


@pytest.fixture
def moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Credentials, _ThroughMoto]]:
    """A bucket, and temporary credentials (as the token exchange service gives) that may only write
    under this thing's prefix. From then on moto checks every request's signature and permissions."""
    from moto import mock_aws, settings
    from moto.core.authorization import ActionAuthenticatorMixin

    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(
            RoleName="device-token-exchange",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
                }
            ),
        )["Role"]
        iam.put_role_policy(
            RoleName="device-token-exchange",
            PolicyName="edge-uploads",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Action": "s3:PutObject",
                            "Resource": f"arn:aws:s3:::{BUCKET}/{EDGE_UPLOAD_PREFIX}{THING}/*",
                        }
                    ],
                }
            ),
        )
        assumed = boto3.client("sts", region_name=REGION).assume_role(RoleArn=role["Arn"], RoleSessionName=THING)
        credentials = Credentials(
            assumed["Credentials"]["AccessKeyId"],
            assumed["Credentials"]["SecretAccessKey"],
            assumed["Credentials"]["SessionToken"],
        )
        transport = _ThroughMoto(urllib.request.urlopen)
        monkeypatch.setattr(urllib.request, "urlopen", transport)
        monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
        monkeypatch.setattr(ActionAuthenticatorMixin, "request_count", 0)
        yield credentials, transport


def _objects() -> dict[str, Any]:
    """What the bucket holds (read as an administrator: authentication off for this look)."""
    from moto import settings

    previous = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    try:
        s3 = boto3.client("s3", region_name=REGION)
        return {
            item["Key"]: s3.get_object(Bucket=BUCKET, Key=item["Key"])
            for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
        }
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = previous


def test_a_signed_put_with_device_credentials_uploads_the_frame_once(
    moto_s3: tuple[Credentials, _ThroughMoto],
) -> None:
    device_credentials, transport = moto_s3
    uploader = S3Uploader(bucket=BUCKET, region=REGION, credentials=StaticCredentials(device_credentials))
    upload = FrameUpload(
        key=f"{EDGE_UPLOAD_PREFIX}{THING}/2026-01-02/20260102T030405.006Z-ab12cd34.jpg",
        body=b"\xff\xd8\xff frame bytes",
        metadata={"reason": "uncertain", "top-score": "0.4512", "model-version": "1.0.7"},
    )
    assert uploader.put(upload) == UPLOADED
    assert transport.sent[0].full_url == f"https://{BUCKET}.s3.{REGION}.amazonaws.com/{upload.key}"
    stored = _objects()[upload.key]
    assert stored["Body"].read() == upload.body
    assert stored["ContentType"] == "image/jpeg"
    assert stored["Metadata"] == {"reason": "uncertain", "top-score": "0.4512", "model-version": "1.0.7"}

    # Nothing ever overwrites a raw image: the second PUT of the key is refused and reported as there.
    assert uploader.put(FrameUpload(key=upload.key, body=b"other bytes")) == ALREADY_THERE
    assert _objects()[upload.key]["Body"].read() == upload.body


def test_a_wrong_signature_or_another_devices_prefix_is_an_upload_error(
    moto_s3: tuple[Credentials, _ThroughMoto],
) -> None:
    device_credentials, _ = moto_s3
    wrong_secret = Credentials(device_credentials.access_key_id, "not-the-secret", device_credentials.session_token)
    uploader = S3Uploader(bucket=BUCKET, region=REGION, credentials=StaticCredentials(wrong_secret))
    with pytest.raises(UploadError, match=r"HTTP 403.*SignatureDoesNotMatch"):
        uploader.put(frame(1))
    allowed = S3Uploader(bucket=BUCKET, region=REGION, credentials=StaticCredentials(device_credentials))
    with pytest.raises(UploadError, match=r"HTTP 403.*AccessDenied"):
        allowed.put(FrameUpload(key=f"{EDGE_UPLOAD_PREFIX}other-thing/2026-01-02/x.jpg", body=b"x"))
    assert _objects() == {}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_offline_frames_stay_queued_and_upload_when_the_connection_returns(
    tmp_path: Path, moto_s3: tuple[Credentials, _ThroughMoto]
) -> None:
    device_credentials, _ = moto_s3
    queue = UploadQueue(tmp_path / "queue", max_bytes=1_000_000)
    for index in range(3):
        queue.put(frame(index))
    offline = S3Uploader(
        bucket=BUCKET,
        region=REGION,
        credentials=StaticCredentials(device_credentials),
        endpoint_url=f"http://127.0.0.1:{_closed_port()}",
        timeout=5,
    )
    uploader = FeedbackUploader(queue, offline)
    assert not uploader.drain()
    assert queue.pending == 3
    assert "Connection refused" in (uploader.last_error or "")
    assert uploader.status()["uploads_pending"] == 3

    # The device restarts while still offline; then the connection returns.
    queue = UploadQueue(tmp_path / "queue", max_bytes=1_000_000)
    online = S3Uploader(bucket=BUCKET, region=REGION, credentials=StaticCredentials(device_credentials))
    uploader = FeedbackUploader(queue, online)
    assert uploader.drain()
    assert (queue.pending, uploader.uploaded, uploader.last_error) == (0, 3, None)
    assert sorted(_objects()) == [frame(index).key for index in range(3)]


def test_the_background_uploader_drains_what_is_queued_and_stops(
    tmp_path: Path, moto_s3: tuple[Credentials, _ThroughMoto]
) -> None:
    device_credentials, _ = moto_s3
    from edge_deployment.components.inference.inspector.feedback import wait_for

    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    uploader = FeedbackUploader(
        queue,
        S3Uploader(bucket=BUCKET, region=REGION, credentials=StaticCredentials(device_credentials)),
    )
    uploader.start()
    try:
        queue.put(frame(7))
        uploader.wake()
        assert wait_for(lambda: queue.pending == 0, timeout=30)
    finally:
        uploader.stop()
    assert list(_objects()) == [frame(7).key]


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def token_exchange() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A stand-in for the Greengrass token exchange service on 127.0.0.1 (the container-credentials protocol)."""
    calls: list[dict[str, str]] = []
    expiration = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            calls.append(dict(self.headers))
            if self.headers.get("Authorization") != "device-token":
                self.send_response(403)
                self.end_headers()
                return
            body = json.dumps(
                {
                    "AccessKeyId": "ASIAEXAMPLE",
                    "SecretAccessKey": "secret",
                    "Token": "session",
                    "Expiration": expiration,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/2016-11-01/credentialprovider/", calls
    finally:
        server.shutdown()


def test_credentials_come_from_the_token_exchange_service_and_are_cached(token_exchange) -> None:
    uri, calls = token_exchange
    source = credentials_from_environment(
        {"AWS_CONTAINER_CREDENTIALS_FULL_URI": uri, "AWS_CONTAINER_AUTHORIZATION_TOKEN": "device-token"}
    )
    assert isinstance(source, ContainerCredentials)
    first = source.get()
    assert (first.access_key_id, first.secret_access_key, first.session_token) == ("ASIAEXAMPLE", "secret", "session")
    assert first.expiration is not None and first.expiration.tzinfo is not None
    assert source.get() is first
    assert len(calls) == 1

    with pytest.raises(CredentialsError, match=r"token exchange service at .*403"):
        ContainerCredentials(uri, "wrong-token").get()


def test_credentials_that_are_about_to_expire_are_fetched_again(token_exchange) -> None:
    uri, calls = token_exchange
    later = datetime.now(UTC) + timedelta(minutes=58)  # the served ones expire in 60: within the 5-minute margin
    source = ContainerCredentials(uri, "device-token", now=lambda: later)
    source.get()
    source.get()
    assert len(calls) == 2


def test_without_a_token_exchange_service_the_error_says_what_is_missing() -> None:
    with pytest.raises(CredentialsError, match="TokenExchangeService"):
        credentials_from_environment({})
    static = credentials_from_environment({"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": "s"})
    assert static.get() == Credentials("AKIA", "s", None)


def test_an_upload_without_credentials_is_an_upload_error_not_a_crash() -> None:
    class NoCredentials:
        def get(self) -> Credentials:
            raise CredentialsError("no AWS credentials: test")

    uploader = S3Uploader(bucket=BUCKET, region=REGION, credentials=NoCredentials(), endpoint_url="http://127.0.0.1:9")
    with pytest.raises(UploadError, match="no AWS credentials"):
        uploader.put(frame(1))


def test_the_regional_endpoint_is_used_without_an_override() -> None:
    credentials = StaticCredentials(Credentials("AKIAEXAMPLE", "secret"))
    request = S3Uploader(bucket=BUCKET, region=REGION, credentials=credentials).signed_request(frame(1))
    assert request.full_url == f"https://{BUCKET}.s3.{REGION}.amazonaws.com/{frame(1).key}"
    assert request.get_method() == "PUT"
    headers = {key.lower(): value for key, value in request.header_items()}
    assert headers["if-none-match"] == "*"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/")
    assert f"/{REGION}/s3/aws4_request" in headers["authorization"]
    assert "if-none-match" in headers["authorization"].split("SignedHeaders=")[1]
    dotted = S3Uploader(bucket="with.dots", region=REGION, credentials=credentials).signed_request(frame(1))
    assert dotted.full_url.startswith(f"https://s3.{REGION}.amazonaws.com/with.dots/raw-images/")


def test_environment_is_not_read_when_credentials_are_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    assert os.environ.get("AWS_ACCESS_KEY_ID") == "testing"  # tests/conftest.py
    assert credentials_from_environment().get().access_key_id == "testing"


# --------------------------------------------------------------------------------------------------
# A full disk, and a process killed in the middle of the whole queue -> upload -> remove sequence
# --------------------------------------------------------------------------------------------------


def test_a_full_disk_while_queueing_leaves_no_partial_file_and_the_queue_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from edge_deployment.components.inference.inspector import feedback

    queue = UploadQueue(tmp_path, max_bytes=1_000_000)
    queue.put(frame(1))
    queue.put(frame(2))
    before = (queue.pending, queue.pending_bytes)

    def disk_full(_descriptor: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(feedback.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        queue.put(frame(3))
    assert (queue.pending, queue.pending_bytes) == before
    assert not list(tmp_path.glob("*.tmp")), "a half-written frame would take what space is left"
    monkeypatch.undo()  # space again
    assert queue.put(frame(4))
    reopened = UploadQueue(tmp_path, max_bytes=1_000_000)
    keys = []
    while (item := reopened.oldest()) is not None:
        keys.append(reopened.read(item).key)
        reopened.remove(item)
    assert keys == [frame(1).key, frame(2).key, frame(4).key]


_KILLED_UPLOADER = """
import pathlib, sys, time
from edge_deployment.components.inference.inspector.feedback import FeedbackUploader, FrameUpload, UploadQueue
queue_dir, marker = sys.argv[1], pathlib.Path(sys.argv[2])
queue = UploadQueue(queue_dir, max_bytes=1_000_000)
queue.put(FrameUpload(key=sys.argv[3], body=bytes(range(256)) * 40, metadata={"reason": "uncertain"}))

class SlowStore:
    def put(self, upload):
        marker.write_text(upload.key)  # the PUT has started ...
        time.sleep(120)  # ... and the process is killed before it ends

FeedbackUploader(queue, SlowStore()).drain()
"""


class _Bucket:
    """S3 for one key: a PUT lands whole or not at all; with If-None-Match a second PUT is refused."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.puts = 0

    def put(self, upload: FrameUpload) -> str:
        self.puts += 1
        if upload.key in self.objects:
            return ALREADY_THERE
        self.objects[upload.key] = upload.body
        return UPLOADED


@pytest.mark.parametrize("killed", ["during the upload", "after the upload, before the queue forgot it"])
def test_a_process_killed_mid_upload_uploads_the_frame_exactly_once_after_the_restart(
    tmp_path: Path, killed: str
) -> None:
    import signal
    import subprocess
    import sys
    import time

    queue_dir, marker = tmp_path / "queue", tmp_path / "started"
    key = f"raw-images/edge/{THING}/2026-01-02/20260102T030405.006Z-ab12cd34.jpg"
    body = bytes(range(256)) * 40
    bucket = _Bucket()
    if killed != "during the upload":
        bucket.objects[key] = body  # S3 had the whole object when the process died
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_UPLOADER, str(queue_dir), str(marker), key],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert process.poll() is None, "the uploader ended before its upload started"
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)  # no clean-up of any kind
    finally:
        process.wait(timeout=30)

    restarted = UploadQueue(queue_dir, max_bytes=1_000_000)  # the component starts again
    assert restarted.pending == 1, "the frame was not lost"
    uploader = FeedbackUploader(restarted, bucket)
    assert uploader.drain()
    assert bucket.objects == {key: body} and restarted.pending == 0
    assert bucket.puts == 1 and uploader.uploaded == 1
    assert not [p for p in queue_dir.iterdir() if p.is_file() and p.name != "state.json"]


# --------------------------------------------------------------------------------------------------
# The hourly cap, the empty-frame monitor, the device's uncertainty
# --------------------------------------------------------------------------------------------------


def test_the_upload_cap_is_a_sliding_hour() -> None:
    now = [0.0]
    limiter = UploadRateLimiter(3, clock=lambda: now[0])
    assert [limiter.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] = 3599.0
    assert not limiter.allow()
    now[0] = 3600.0
    assert limiter.allow() and limiter.capped == 3
    assert all(UploadRateLimiter(0).allow() for _ in range(1000))  # 0: no cap


def test_the_empty_frame_monitor_judges_only_models_that_report_their_rate() -> None:
    monitor = EmptyFrameMonitor(window=100, min_frames=50)
    monitor.reset(0.3)
    for index in range(49):
        monitor.observe(index % 2 == 0)
    assert not monitor.drifting  # too few frames to judge
    for _ in range(100):
        monitor.observe(index % 3 == 0)
        index += 1
    assert monitor.observed == pytest.approx(0.33, abs=0.02) and not monitor.drifting  # what the test split showed
    for _ in range(100):
        monitor.observe(True)
    assert monitor.drifting  # blind
    monitor.reset(None)
    for _ in range(100):
        monitor.observe(True)
    assert not monitor.drifting  # no expectation (an older model.json): nothing to compare with


@pytest.mark.parametrize(("score", "expected"), [(0.5, 1.0), (0.6, 0.5), (0.3, 0.0), (0.95, 0.0)])
def test_the_recorded_uncertainty_is_highest_in_the_middle_of_the_band(score: float, expected: float) -> None:
    assert uncertainty(score, (0.3, 0.7)) == pytest.approx(expected)
