"""The feedback loop: frames the model is unsure about go back to the data bucket to be labeled.

- `feedback_reason` decides which frames go (top score inside the uncertainty band, or a random
  sample of the confident ones); `upload_key` names them under the raw-image prefix.
- `FeedbackSelector` adds what keeps that loop useful: a cap on uploads per hour (`UploadRateLimiter`),
  and frames on which the model finds nothing at all sampled at `driftSampleRate` instead of the
  confident rate while the share of such frames departs from what the model showed on its test split
  (`EmptyFrameMonitor`, against model.json's `test_statistics`): a model gone blind sends its
  frames back. Each upload records the frame's `uncertainty` (1 at the middle of the band, 0 at its
  edges), which the labeling round ranks candidates by.
- `UploadQueue` keeps them on local disk until they are uploaded: one file per frame, written to a
  temporary name, flushed and renamed, so a crash or restart loses nothing that was queued. Over
  its size cap it drops the oldest frames first and counts them (the count survives restarts).
- `S3Uploader` writes one object with a SigV4-signed PUT (signing and credentials types from
  awscrt, which the Greengrass IPC SDK brings anyway; the transport is the standard library, which
  honours the proxy settings Greengrass passes to components). `If-None-Match: *` makes S3 refuse
  to overwrite an existing object; a 412 answer means the frame is already there.
- `ContainerCredentials` reads temporary credentials from the Greengrass token exchange service.
- `FeedbackUploader` drains the queue in a background thread and backs off while offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

LOG = logging.getLogger(__name__)

ITEM_SUFFIX = ".frame"
TEMP_SUFFIX = ".tmp"
STATE_FILE = "state.json"
CORRUPT_DIR = "corrupt"


# --------------------------------------------------------------------------------------------------
# Which frames, under which keys
# --------------------------------------------------------------------------------------------------


def feedback_reason(top_score: float, band: tuple[float, float], sample_rate: float, rng: random.Random) -> str | None:
    """ "uncertain" when the top score is inside the band, "sample" for the sampled rest, else None."""
    low, high = band
    if low <= top_score <= high:
        return "uncertain"
    if sample_rate > 0.0 and rng.random() < sample_rate:
        return "sample"
    return None


def uncertainty(top_score: float, band: tuple[float, float]) -> float:
    """1 at the middle of the uncertainty band, falling to 0 at its edges and outside it."""
    low, high = band
    middle, half = (low + high) / 2, (high - low) / 2
    return max(0.0, 1.0 - abs(top_score - middle) / half) if half > 0 else 0.0


def expected_empty_rate(model_directory: Path | None) -> float | None:
    """The test split's share of frames with no detection: 1 - `test_statistics.detection_rate` of model.json."""
    if model_directory is None:
        return None
    try:
        raw = json.loads((model_directory / "model.json").read_text(encoding="utf-8"))
        value = round(1.0 - float(raw["test_statistics"]["detection_rate"]), 4)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if 0.0 <= value <= 1.0 else None


def expected_uncertain_rate(model_directory: Path | None, band: tuple[float, float]) -> float | None:
    """The test split's share of images whose top score falls in the uncertainty band (model.json's
    `test_statistics.top_scores`): what the cloud compares the line's share of uncertain frames with."""
    if model_directory is None:
        return None
    try:
        raw = json.loads((model_directory / "model.json").read_text(encoding="utf-8"))
        scores = [float(score) for score in raw["test_statistics"]["top_scores"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    low, high = band
    return round(sum(1 for score in scores if low <= score < high) / len(scores), 4) if scores else None


class UploadRateLimiter:
    """At most `max_per_hour` uploads in any sliding hour (0: no cap); counts the frames it turned away."""

    def __init__(self, max_per_hour: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_per_hour = max_per_hour
        self._clock = clock
        self._sent: deque[float] = deque()
        self.capped = 0

    def allow(self) -> bool:
        if self.max_per_hour <= 0:
            return True
        now = self._clock()
        while self._sent and now - self._sent[0] >= 3600.0:
            self._sent.popleft()
        if len(self._sent) >= self.max_per_hour:
            self.capped += 1
            return False
        self._sent.append(now)
        return True


class EmptyFrameMonitor:
    """Whether the share of frames with no detection has left what the model showed on its test split.

    Over the last `window` frames (at least `min_frames`), the observed rate departs when it differs
    from the expected one by more than three binomial standard deviations and `tolerance`. A model
    without `test_statistics` in its model.json is not judged.
    """

    def __init__(self, *, window: int = 200, min_frames: int = 50, tolerance: float = 0.05) -> None:
        self.window = window
        self.min_frames = min(min_frames, window)
        self.tolerance = tolerance
        self.expected: float | None = None
        self._frames: deque[bool] = deque(maxlen=window)

    def reset(self, expected: float | None) -> None:
        """A new model: a new expectation, and a fresh window."""
        self.expected = expected
        self._frames.clear()

    def observe(self, empty: bool) -> None:
        self._frames.append(empty)

    @property
    def observed(self) -> float | None:
        return sum(self._frames) / len(self._frames) if self._frames else None

    @property
    def drifting(self) -> bool:
        if self.expected is None or len(self._frames) < self.min_frames:
            return False
        spread = 3.0 * (self.expected * (1.0 - self.expected) / len(self._frames)) ** 0.5
        return abs(float(self.observed or 0.0) - self.expected) > spread + self.tolerance


class FeedbackSelector:
    """Which frames go back for labeling: uncertain ones, empty frames while the model drifts, a sample
    of the rest; never more than the hourly cap. Not thread-safe: the inference loop calls it."""

    def __init__(
        self,
        *,
        band: tuple[float, float],
        sample_rate: float,
        drift_sample_rate: float,
        max_per_hour: int,
        window: int,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.band, self.sample_rate, self.drift_sample_rate = band, sample_rate, drift_sample_rate
        self.rng = rng
        self.limiter = UploadRateLimiter(max_per_hour, clock=clock)
        self.monitor = EmptyFrameMonitor(window=window)
        self._model: Path | None = None
        self._expected_uncertain: tuple[Path | None, tuple[float, float], float | None] | None = None

    def configure(
        self, *, band: tuple[float, float], sample_rate: float, drift_sample_rate: float, max_per_hour: int
    ) -> None:
        self.band, self.sample_rate, self.drift_sample_rate = band, sample_rate, drift_sample_rate
        self.limiter.max_per_hour = max_per_hour

    def choose(self, top_score: float, *, empty: bool, model_directory: Path | None) -> str | None:
        """The upload reason of a frame ("uncertain", "drift", "sample"), None to keep it on the device."""
        if model_directory != self._model:
            self._model = model_directory
            self.monitor.reset(expected_empty_rate(model_directory))
        self.monitor.observe(empty)
        reason = feedback_reason(top_score, self.band, 0.0, self.rng)
        if reason is None and empty and self.monitor.drifting and self.rng.random() < self.drift_sample_rate:
            reason = "drift"
        if reason is None and self.sample_rate > 0.0 and self.rng.random() < self.sample_rate:
            reason = "sample"
        if reason is not None and not self.limiter.allow():
            return None
        return reason

    def expected_uncertain_rate(self) -> float | None:
        """expected_uncertain_rate of the serving model and band, read once per model and band."""
        if self._expected_uncertain is None or self._expected_uncertain[:2] != (self._model, self.band):
            self._expected_uncertain = (self._model, self.band, expected_uncertain_rate(self._model, self.band))
        return self._expected_uncertain[2]

    def status(self) -> dict[str, Any]:
        observed = self.monitor.observed
        return {
            "expected_uncertain_frame_rate": self.expected_uncertain_rate(),
            "uploads_capped": self.limiter.capped,
            "empty_frame_rate": round(observed, 4) if observed is not None else None,
            "expected_empty_frame_rate": self.monitor.expected,
            "empty_frames_drifting": self.monitor.drifting,
        }


def upload_key(prefix: str, thing: str, captured_at: datetime, token: str | None = None) -> str:
    """raw-images/edge/<thing>/<yyyy-mm-dd>/<utc timestamp>-<random>.jpg (shared/contracts.py)."""
    moment = captured_at.astimezone(UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%S") + f".{moment.microsecond // 1000:03d}Z"
    prefix = prefix if prefix.endswith("/") else prefix + "/"
    return f"{prefix}{thing}/{moment:%Y-%m-%d}/{stamp}-{token or secrets.token_hex(4)}.jpg"


# --------------------------------------------------------------------------------------------------
# The durable queue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedFrame:
    sequence: int
    path: Path
    size: int  # bytes on disk (header + body)


@dataclass(frozen=True)
class FrameUpload:
    key: str
    body: bytes
    content_type: str = "image/jpeg"
    metadata: Mapping[str, str] = field(default_factory=dict)


class QueueError(Exception):
    """A queued file that cannot be read back (moved aside to corrupt/, never deleted)."""


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened for fsync
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError:  # e.g. the disk is full: leave no half-written file taking what space is left
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


class UploadQueue:
    """First in, first out, on disk, size-capped; safe to share between one producer and one consumer thread.

    `name` and `item` only word the log lines (the outbox of results keeps messages in one too).
    """

    def __init__(
        self, directory: str | Path, *, max_bytes: int, name: str = "upload queue", item: str = "frame"
    ) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.name, self.item = name, item
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: deque[QueuedFrame] = deque()
        self._bytes = 0
        self._dropped = 0
        self._next_sequence = 1
        self._recover()

    def _recover(self) -> None:
        """Load what a previous run left: finished items stay queued; half-written ones were never queued."""
        for leftover in self.directory.glob(f"*{TEMP_SUFFIX}"):
            LOG.warning("discarding %s: a write that never finished (it was not queued yet)", leftover.name)
            leftover.unlink(missing_ok=True)
        state_path = self.directory / STATE_FILE
        if state_path.is_file():
            try:
                self._dropped = int(json.loads(state_path.read_text(encoding="utf-8")).get("dropped", 0))
            except (OSError, ValueError, TypeError, AttributeError) as error:
                LOG.warning("%s state %s unreadable (%s); dropped count restarts at 0", self.name, state_path, error)
        items = []
        for path in self.directory.glob(f"*{ITEM_SUFFIX}"):
            try:
                items.append(QueuedFrame(sequence=int(path.stem), path=path, size=path.stat().st_size))
            except (ValueError, OSError):
                LOG.warning("ignoring %s in the %s folder: not a queued %s", path.name, self.name, self.item)
        items.sort(key=lambda item: item.sequence)
        self._items.extend(items)
        self._bytes = sum(item.size for item in items)
        self._next_sequence = (items[-1].sequence + 1) if items else 1
        if items:
            LOG.info(
                "%s: %d %s(s), %.1f MB waiting from a previous run", self.name, len(items), self.item, self._bytes / 1e6
            )
        self._enforce_cap(incoming=0)

    # -- state ----------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def dropped(self) -> int:
        with self._lock:
            return self._dropped

    def _save_state(self) -> None:
        _write_atomically(self.directory / STATE_FILE, json.dumps({"dropped": self._dropped}).encode())

    def _drop_oldest(self) -> None:
        item = self._items.popleft()
        self._bytes -= item.size
        item.path.unlink(missing_ok=True)
        self._dropped += 1
        LOG.warning(
            "%s over %.0f MB: dropped the oldest %s (%s); %d dropped so far",
            self.name,
            self.max_bytes / 1024 / 1024,
            self.item,
            item.path.name,
            self._dropped,
        )

    def _enforce_cap(self, *, incoming: int) -> None:
        dropped_before = self._dropped
        while self._items and self._bytes + incoming > self.max_bytes:
            self._drop_oldest()
        if self._dropped != dropped_before:
            self._save_state()

    # -- producer -------------------------------------------------------------------------------------

    def put(self, upload: FrameUpload) -> bool:
        """Queue a frame durably; False when it alone is larger than the whole queue (then it is dropped)."""
        header = json.dumps(
            {"key": upload.key, "content_type": upload.content_type, "metadata": dict(upload.metadata)},
            separators=(",", ":"),
        ).encode("utf-8")
        data = header + b"\n" + upload.body
        with self._lock:
            if len(data) > self.max_bytes:
                self._dropped += 1
                self._save_state()
                LOG.warning(
                    "%s %s (%d bytes) is larger than the %s (%d bytes): dropped",
                    self.item,
                    upload.key,
                    len(data),
                    self.name,
                    self.max_bytes,
                )
                return False
            self._enforce_cap(incoming=len(data))
            sequence = self._next_sequence
            self._next_sequence += 1
            path = self.directory / f"{sequence:012d}{ITEM_SUFFIX}"
            _write_atomically(path, data)
            self._items.append(QueuedFrame(sequence=sequence, path=path, size=len(data)))
            self._bytes += len(data)
        return True

    # -- consumer -------------------------------------------------------------------------------------

    def oldest(self) -> QueuedFrame | None:
        with self._lock:
            return self._items[0] if self._items else None

    def read(self, item: QueuedFrame) -> FrameUpload:
        try:
            raw = item.path.read_bytes()
            header, _, body = raw.partition(b"\n")
            meta = json.loads(header)
            return FrameUpload(
                key=str(meta["key"]),
                body=body,
                content_type=str(meta.get("content_type", "image/jpeg")),
                metadata={str(k): str(v) for k, v in dict(meta.get("metadata", {})).items()},
            )
        except FileNotFoundError:
            raise QueueError(f"{item.path.name}: gone from the {self.name} folder") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise QueueError(f"{item.path.name}: unreadable queued {self.item} ({error})") from None

    def _forget(self, item: QueuedFrame) -> bool:
        """Take `item` out of the queue (lock held); False when it is no longer there.

        The producer may have dropped it (over the cap) while the uploader was sending it: then
        its bytes were subtracted already and must not be subtracted twice.
        """
        if self._items and self._items[0].sequence == item.sequence:
            self._items.popleft()
        else:
            try:
                self._items.remove(item)
            except ValueError:
                return False
        self._bytes -= item.size
        return True

    def remove(self, item: QueuedFrame) -> None:
        """Forget an item that was uploaded."""
        with self._lock:
            if self._forget(item):
                item.path.unlink(missing_ok=True)

    def set_aside(self, item: QueuedFrame) -> None:
        """Move an unreadable item to corrupt/ (kept for a person to look at) and out of the queue."""
        with self._lock:
            if not self._forget(item):
                return  # dropped meanwhile: its file is gone already
            target = self.directory / CORRUPT_DIR
            target.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.replace(item.path, target / item.path.name)


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expiration: datetime | None = None


class CredentialsError(Exception):
    """No usable AWS credentials (the message says where they were looked for)."""


class CredentialSource(Protocol):
    def get(self) -> Credentials: ...


class StaticCredentials:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def get(self) -> Credentials:
        return self._credentials


class ContainerCredentials:
    """Temporary credentials from the Greengrass token exchange service (the container-credentials endpoint).

    Greengrass sets AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN for a
    component that depends on aws.greengrass.TokenExchangeService. Cached until 5 minutes before expiry.
    """

    REFRESH_BEFORE = timedelta(minutes=5)

    def __init__(self, uri: str, token: str | None, *, timeout: float = 5.0, now: Callable[[], datetime] | None = None):
        self.uri = uri
        self.token = token
        self.timeout = timeout
        self._now = now or (lambda: datetime.now(UTC))
        self._cached: Credentials | None = None
        self._lock = threading.Lock()

    def get(self) -> Credentials:
        with self._lock:
            cached = self._cached
            if cached and (cached.expiration is None or cached.expiration - self.REFRESH_BEFORE > self._now()):
                return cached
            self._cached = self._fetch()
            return self._cached

    def _fetch(self) -> Credentials:
        headers = {"Authorization": self.token} if self.token else {}
        request = urllib.request.Request(self.uri, headers=headers)  # noqa: S310 - the URI Greengrass gives
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - URI from Greengrass
                raw = json.loads(response.read())
            expiration = raw.get("Expiration")
            return Credentials(
                access_key_id=raw["AccessKeyId"],
                secret_access_key=raw["SecretAccessKey"],
                session_token=raw.get("Token"),
                expiration=datetime.fromisoformat(expiration) if expiration else None,
            )
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as error:
            raise CredentialsError(f"token exchange service at {self.uri}: no credentials ({error})") from None


def credentials_from_environment(environ: Mapping[str, str] | None = None) -> CredentialSource:
    """The Greengrass token exchange service, else AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (local runs)."""
    env = os.environ if environ is None else environ
    uri = env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    if uri:
        return ContainerCredentials(uri, env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN"))
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return StaticCredentials(
            Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
        )
    raise CredentialsError(
        "no AWS credentials: AWS_CONTAINER_CREDENTIALS_FULL_URI is not set (the component needs its dependency "
        "on aws.greengrass.TokenExchangeService) and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not set either"
    )


# --------------------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------------------


class UploadError(Exception):
    """An upload that did not happen this time; the frame stays queued and is tried again later."""


UPLOADED = "uploaded"
ALREADY_THERE = "already there"


class S3Uploader:
    """PutObject with If-None-Match: * through a SigV4-signed HTTPS request."""

    def __init__(
        self,
        *,
        bucket: str,
        region: str,
        credentials: CredentialSource,
        endpoint_url: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not bucket:
            raise ValueError("bucket is required")
        if not region:
            raise ValueError("region is required (Greengrass sets AWS_REGION for components)")
        self.bucket = bucket
        self.region = region
        self.credentials = credentials
        self.timeout = timeout
        if endpoint_url:  # path-style against a given endpoint (a VPC endpoint, or a local test server)
            parsed = urllib.parse.urlsplit(endpoint_url.rstrip("/"))
            self._scheme, self._host, self._base_path = parsed.scheme, parsed.netloc, f"{parsed.path}/{bucket}"
        else:
            suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
            if "." in bucket:  # virtual-hosted names with dots do not match the TLS certificate
                self._scheme, self._host, self._base_path = "https", f"s3.{region}.{suffix}", f"/{bucket}"
            else:
                self._scheme, self._host, self._base_path = "https", f"{bucket}.s3.{region}.{suffix}", ""

    def signed_request(self, upload: FrameUpload, *, now: datetime | None = None) -> urllib.request.Request:
        """The signed PUT request for one frame (exposed so tests can check the signature)."""
        from awscrt import auth, http  # noqa: PLC0415 - awscrt comes with the Greengrass IPC SDK

        credentials = self.credentials.get()
        path = self._base_path + "/" + urllib.parse.quote(upload.key, safe="/~")
        headers = [
            ("Host", self._host),
            ("Content-Type", upload.content_type),
            ("Content-Length", str(len(upload.body))),
            ("If-None-Match", "*"),
        ]
        headers += [(f"x-amz-meta-{name}", value) for name, value in sorted(upload.metadata.items())]
        request = http.HttpRequest(method="PUT", path=path, headers=http.HttpHeaders(headers))
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_HEADERS,
            credentials_provider=auth.AwsCredentialsProvider.new_static(
                credentials.access_key_id, credentials.secret_access_key, credentials.session_token
            ),
            region=self.region,
            service="s3",
            date=now or datetime.now(UTC),
            use_double_uri_encode=False,  # S3 signs the path as sent
            should_normalize_uri_path=False,
            signed_body_value=hashlib.sha256(upload.body).hexdigest(),
            signed_body_header_type=auth.AwsSignedBodyHeaderType.X_AMZ_CONTENT_SHA_256,
        )
        signed = auth.aws_sign_request(request, config).result(timeout=self.timeout)
        return urllib.request.Request(  # noqa: S310 - https, or the endpoint given in the configuration
            f"{self._scheme}://{self._host}{path}",
            data=upload.body,
            method="PUT",
            headers=dict(signed.headers),
        )

    def put(self, upload: FrameUpload) -> str:
        """Upload one frame: UPLOADED, or ALREADY_THERE when the key exists (S3 answered 412); UploadError else."""
        try:
            request = self.signed_request(upload)
        except CredentialsError as error:
            raise UploadError(str(error)) from None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - https endpoint
                response.read()
            return UPLOADED
        except urllib.error.HTTPError as error:
            if error.code == 412:
                return ALREADY_THERE
            detail = " ".join(error.read(500).decode("utf-8", "replace").split())  # S3's XML, on one log line
            raise UploadError(f"s3://{self.bucket}/{upload.key}: HTTP {error.code} {error.reason} {detail}") from None
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            raise UploadError(f"s3://{self.bucket}/{upload.key}: {error}") from None


class ObjectStore(Protocol):
    def put(self, upload: FrameUpload) -> str: ...


class FeedbackUploader:
    """Drains the queue into the bucket in a background thread; backs off while uploads fail (offline)."""

    def __init__(
        self, queue: UploadQueue, store: ObjectStore, *, min_backoff: float = 2.0, max_backoff: float = 300.0
    ) -> None:
        self.queue = queue
        self.store = store
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.uploaded = 0
        self.last_error: str | None = None
        self._backoff = min_backoff
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def drain(self) -> bool:
        """Upload queued frames oldest first until the queue is empty (True) or an upload fails (False)."""
        while not self._stop.is_set():
            item = self.queue.oldest()
            if item is None:
                return True
            try:
                upload = self.queue.read(item)
            except QueueError as error:
                LOG.error("upload queue: %s; moved to %s/", error, CORRUPT_DIR)
                self.queue.set_aside(item)
                continue
            try:
                outcome = self.store.put(upload)
            except UploadError as error:
                self.last_error = str(error)
                LOG.warning("upload failed, %d frame(s) stay queued: %s", self.queue.pending, error)
                return False
            self.queue.remove(item)
            self.uploaded += 1
            self.last_error = None
            LOG.info("uploaded %s (%s)", upload.key, outcome)
        return True

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="feedback-uploader", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                emptied = self.drain()
            except Exception:  # the uploader must outlive anything unexpected (disk full, ...)
                LOG.exception("upload loop error")
                emptied = False
            if emptied:
                self._backoff = self.min_backoff
                self._wake.wait(timeout=60.0)
                self._wake.clear()
            else:
                self._stop.wait(self._backoff * (0.8 + 0.4 * random.random()))
                self._backoff = min(self._backoff * 2, self.max_backoff)

    def status(self) -> dict[str, Any]:
        return {
            "uploads_pending": self.queue.pending,
            "uploads_dropped": self.queue.dropped,
            "uploads_done": self.uploaded,
            "upload_error": self.last_error,
        }


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes (used by the service on shutdown and by tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
