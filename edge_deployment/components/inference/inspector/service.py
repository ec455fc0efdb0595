"""The component's main loop: frames in, a result per frame and a periodic heartbeat out over MQTT,
uncertain frames back to the data bucket, and model versions swapped in without a restart.

`create_service(context)` builds the service from the component's Greengrass configuration;
`InferenceService.run(stop)` runs until `stop` is set. Nothing here talks to Greengrass directly:
it goes through `context.greengrass` (`greengrass.GreengrassIpc` on a device, a fake in tests).
Frames come from a `frame_sources` source, the served model from the `model_manager`.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import native
from .config import ComponentConfig, ConfigError
from .detector import FP32, INT8, Detector, ImageError, ModelError, encode_jpeg, load_detector, load_image
from .feedback import (
    Credentials,
    CredentialSource,
    FeedbackSelector,
    FeedbackUploader,
    FrameUpload,
    ObjectStore,
    S3Uploader,
    UploadQueue,
    credentials_from_environment,
    uncertainty,
    upload_key,
)
from .frame_sources import REJECTED_DIR, DirectoryFrames, Frame, make_frame_source, utc_now
from .greengrass import FixedModelLocator, Greengrass, IpcError, ModelComponentLocator
from .model_manager import ModelLocator, ModelManager
from .outbox import Outbox

LOG = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024 * 1024
_JPEG_MAGIC = b"\xff\xd8\xff"


# The version of the result and heartbeat messages (shared/contracts.py, DEVICE_MESSAGE_VERSION): the cloud
# keeps a message of a version it does not know aside instead of misreading it.
MESSAGE_VERSION = 1


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _LazyCredentials:
    """Looks credentials up when first needed, so a missing token exchange service shows as an upload error."""

    def __init__(self, factory: Callable[[], CredentialSource]) -> None:
        self._factory = factory
        self._source: CredentialSource | None = None

    def get(self) -> Credentials:
        if self._source is None:
            self._source = self._factory()
        return self._source.get()


@dataclass(frozen=True)
class DeviceContext:
    """What the device gives the service: its thing name, Greengrass, folders and AWS access."""

    thing: str
    greengrass: Greengrass
    work_dir: Path
    model_root: Path | None = None  # .../packages/artifacts-unarchived (None: only modelDirectory works)
    region: str = ""
    credentials: CredentialSource | None = None  # None: the token exchange service (from the environment)
    s3_endpoint: str | None = None  # None: the bucket's regional endpoint
    load_model: Callable[..., Detector] = field(default=load_detector)

    @classmethod
    def from_environment(cls, greengrass: Greengrass, environ: dict[str, str] | None = None) -> DeviceContext:
        """The environment Greengrass gives a component (AWS_IOT_THING_NAME, AWS_REGION) + the recipe's Setenv."""
        env = dict(os.environ if environ is None else environ)
        thing = env.get("AWS_IOT_THING_NAME", "")
        if not thing:
            raise ConfigError("AWS_IOT_THING_NAME is not set: run this as a Greengrass component")
        decompressed = env.get("INSPECTOR_DECOMPRESSED_PATH")
        from .greengrass import unarchived_root  # noqa: PLC0415

        return cls(
            thing=thing,
            greengrass=greengrass,
            work_dir=Path(env.get("INSPECTOR_WORK_DIR") or os.getcwd()),
            model_root=unarchived_root(decompressed) if decompressed else None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION", ""),
        )


class InferenceService:
    def __init__(
        self,
        context: DeviceContext,
        config: ComponentConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        store: ObjectStore | None = None,
    ) -> None:
        self.context = context
        self.config = config
        self.rng = rng or random.Random()
        self._clock = clock
        self._now = now
        self._store_override = store
        self.models = ModelManager(
            self._locator(config), load=self._loader(config), poll_s=config.model_poll_s, clock=clock
        )
        self.frames = make_frame_source(config)
        self.selector = FeedbackSelector(
            band=config.uncertainty_band,
            sample_rate=config.confident_sample_rate,
            drift_sample_rate=config.drift_sample_rate,
            max_per_hour=config.max_uploads_per_hour,
            window=config.drift_window_frames,
            rng=self.rng,
            clock=clock,
        )
        self.queue: UploadQueue | None = None
        self.uploader: FeedbackUploader | None = None
        self._running = False
        if config.uploads_enabled:
            self._enable_uploads(config)
        else:
            LOG.warning("uploadBucket is empty: no frames are sent back for labeling")
        self.frames_processed = 0
        self.frames_failed = 0
        self.publish_failures = 0
        # What the nucleus refused waits here (read back from disk) and is published again once it takes messages.
        self.outbox = Outbox(context.work_dir / "outbox", max_bytes=config.outbox_max_bytes)
        self.outbox_write_failures = 0
        self._nucleus_took_last = True
        self._window_latency = 0.0
        self._window_frames = 0
        self._config_changed = threading.Event()
        self._next_heartbeat = 0.0

    # -- wiring -------------------------------------------------------------------------------------

    def _locator(self, config: ComponentConfig) -> ModelLocator:
        if config.model_directory is not None:
            return FixedModelLocator(config.model_directory)
        if self.context.model_root is None:
            raise ConfigError(
                "modelComponentName is set but the artifacts folder is unknown (INSPECTOR_DECOMPRESSED_PATH, set by "
                "the recipe); set modelDirectory to run without Greengrass"
            )
        return ModelComponentLocator(
            self.context.greengrass, component=config.model_component_name, root=self.context.model_root
        )

    def _loader(self, config: ComponentConfig) -> Callable[[Path], Detector]:
        def load(directory: Path) -> Detector:
            return self.context.load_model(
                directory / "model.onnx",
                confidence_threshold=config.confidence_threshold,
                iou_threshold=config.iou_threshold,
                threads=config.inference_threads,
                precision=config.precision,
                int8_max_map50_loss=config.int8_max_map50_loss,
                providers=config.execution_providers,
            )

        return load

    def _store(self, config: ComponentConfig) -> ObjectStore:
        if self._store_override is not None:
            return self._store_override
        credentials = self.context.credentials or _LazyCredentials(credentials_from_environment)
        return S3Uploader(
            bucket=config.upload_bucket,
            region=self.context.region,
            credentials=credentials,
            endpoint_url=self.context.s3_endpoint,
        )

    def _enable_uploads(self, config: ComponentConfig) -> None:
        """The upload queue (read back from disk) and its uploader; started at once when the loop runs."""
        self.queue = UploadQueue(self.context.work_dir / "upload-queue", max_bytes=config.offline_queue_max_bytes)
        self.uploader = FeedbackUploader(self.queue, self._store(config))
        if self._running:
            self.uploader.start()

    def watch(self) -> None:
        """Subscribe to configuration updates of this component and of the model component."""
        greengrass = self.context.greengrass
        try:
            greengrass.watch_configuration(None, self._config_changed.set)
        except IpcError as error:
            LOG.warning("configuration updates of this component will not be seen: %s", error)
        if self.config.model_directory is None:
            try:
                greengrass.watch_configuration(self.config.model_component_name, self.models.request_check)
            except IpcError as error:
                LOG.warning("model updates are found by polling every %.0f s: %s", self.config.model_poll_s, error)

    def apply_configuration(self, config: ComponentConfig) -> None:
        """Take a changed configuration into use without restarting."""
        old, self.config = self.config, config
        frames_keys = ("frame_source", "frames_directory", "keep_processed_frames", "camera_device")
        if any(getattr(old, key) != getattr(config, key) for key in frames_keys):
            self.frames.close()
            self.frames = make_frame_source(config)
        model_keys = (
            "model_component_name",
            "model_directory",
            "confidence_threshold",
            "iou_threshold",
            "inference_threads",
            "precision",
            "int8_max_map50_loss",
            "execution_providers",
        )
        if any(getattr(old, key) != getattr(config, key) for key in model_keys):
            self.models.locator = self._locator(config)
            self.models.load = self._loader(config)
            self.models.refresh(force=True)
        self.models.poll_s = config.model_poll_s
        self.selector.configure(
            band=config.uncertainty_band,
            sample_rate=config.confident_sample_rate,
            drift_sample_rate=config.drift_sample_rate,
            max_per_hour=config.max_uploads_per_hour,
        )
        if self.queue is not None:
            self.queue.max_bytes = config.offline_queue_max_bytes
        self.outbox.max_bytes = config.outbox_max_bytes
        if config.uploads_enabled and self.uploader is None:
            # A bucket configured after the start (a deployment's configuration merge does not restart the
            # component): uploads begin now, not at the next restart.
            self._enable_uploads(config)
            LOG.info("uploadBucket is now %s: frames are sent back for labeling", config.upload_bucket)
        elif self.uploader is not None and old.upload_bucket != config.upload_bucket and config.upload_bucket:
            self.uploader.store = self._store(config)
        if not config.upload_bucket and self.queue is not None:
            LOG.warning("uploadBucket is now empty: queued frames wait until a bucket is configured again")
        self._next_heartbeat = min(self._next_heartbeat, self._clock() + config.heartbeat_interval_s)
        LOG.info("configuration updated")

    def _reload_configuration(self) -> None:
        self._config_changed.clear()
        try:
            raw = self.context.greengrass.configuration(None)
            config = ComponentConfig.from_mapping(raw, thing=self.context.thing, work_dir=self.context.work_dir)
        except (IpcError, ConfigError) as error:
            LOG.error("configuration update not applied, keeping the previous one: %s", error)
            return
        if config != self.config:
            self.apply_configuration(config)

    # -- frames ---------------------------------------------------------------------------------------

    def process(self, frame: Frame) -> dict[str, Any] | None:
        """Detect, publish the result, queue the frame for labeling if selected; None if the frame was bad."""
        detector = self.models.detector
        if detector is None:
            return None
        started = time.perf_counter()
        data: bytes | None = None
        try:
            if frame.image is not None:
                image = frame.image
            else:
                assert frame.path is not None
                size = frame.path.stat().st_size
                if size > MAX_FRAME_BYTES:
                    raise ImageError(f"{frame.name}: {size} bytes, larger than the {MAX_FRAME_BYTES} byte limit")
                data = frame.path.read_bytes()
                image = load_image(data, name=frame.name)
            result = detector.detect(image)
        except (ImageError, ModelError, OSError) as error:
            if isinstance(error, ModelError) and detector.precision == INT8 and self._serve_fp32_after(error):
                return self.process(frame)  # the FP32 model serves now, this frame too
            self.frames_failed += 1
            kind = "model error on" if isinstance(error, ModelError) else "bad frame"
            LOG.error("%s %s (kept in %s/): %s", kind, frame.name, REJECTED_DIR, error)
            self.frames.reject(frame)
            return None
        latency_ms = (time.perf_counter() - started) * 1000.0
        payload: dict[str, Any] = {
            "message_version": MESSAGE_VERSION,
            "thing": self.context.thing,
            "image": frame.name,
            "timestamp": iso(frame.captured_at),
            "model_version": self.models.version,
            "latency_ms": round(latency_ms, 2),
            "detections": [detection.to_json() for detection in result.detections],
            # The highest candidate score, also below the confidence threshold: the uncertainty band's measure.
            "top_score": round(result.top_score, 5),
        }
        key, kept = self._queue_feedback(frame, data, image, result.top_score, empty=not result.detections)
        if key:
            payload["upload_key"] = key
        self._publish(self.config.results_topic, payload)
        self.frames_processed += 1
        self._window_frames += 1
        self._window_latency += latency_ms
        if kept and isinstance(self.frames, DirectoryFrames):
            self.frames.keep(frame)  # its upload could not be queued: keep the file instead
        else:
            self.frames.done(frame)
        return payload

    def _serve_fp32_after(self, error: ModelError) -> bool:
        """An INT8 model that loaded but fails on real frames: the same version's FP32 model takes over."""
        reason = f"the INT8 model failed on a frame ({error}): FP32 serves"
        if not self.models.fall_back(self._loader(replace(self.config, precision=FP32)), reason):
            return False
        LOG.error("model %s: %s", self.models.version, reason)
        return True

    def _queue_feedback(
        self, frame: Frame, data: bytes | None, image: np.ndarray, top_score: float, *, empty: bool = False
    ) -> tuple[str | None, bool]:
        """(upload key, keep the frame file) for a frame selected for labeling; (None, False) otherwise."""
        if self.queue is None:
            return None, False
        config = self.config
        reason = self.selector.choose(top_score, empty=empty, model_directory=self.models.directory)
        if reason is None:
            return None, False
        key = upload_key(config.upload_prefix, self.context.thing, frame.captured_at)
        body = data if data is not None and data.startswith(_JPEG_MAGIC) else encode_jpeg(image)
        upload = FrameUpload(
            key=key,
            body=body,
            metadata={
                "reason": reason,
                "top-score": f"{top_score:.4f}",
                "uncertainty": f"{uncertainty(top_score, config.uncertainty_band):.4f}",
                "model-version": self.models.version or "",
                "source-frame": frame.name.encode("ascii", "replace").decode("ascii")[:200],
            },
        )
        try:
            queued = self.queue.put(upload)
        except OSError as error:
            LOG.error("frame %s could not be queued for upload (%s); the file is kept in processed/", frame.name, error)
            return None, True
        if queued and self.uploader is not None:
            self.uploader.wake()
        return (key if queued else None), False

    def _publish(self, topic: str, payload: dict[str, Any]) -> bool:
        """Publish; what the nucleus refuses goes to the outbox (on disk) to be published again. Never raises."""
        try:
            self.context.greengrass.publish(topic, payload)
        except ValueError as error:  # not JSON (a NaN): no retry can help
            self.publish_failures += 1
            LOG.error("publish to %s refused, not kept: %s", topic, error)
            return False
        except IpcError as error:
            self.publish_failures += 1
            self._nucleus_took_last = False
            try:
                kept = self.outbox.put(topic, payload)
            except OSError as write_error:  # disk full or read-only: the message is lost, and counted
                self.outbox_write_failures += 1
                LOG.error("publish failed and the outbox cannot keep the message (%s): %s", write_error, error)
                return False
            LOG.warning(
                "publish failed (%d so far), %s: %s",
                self.publish_failures,
                "kept in the outbox" if kept else "larger than the outbox, dropped",
                error,
            )
            return False
        self._nucleus_took_last = True
        return True

    def replay_outbox(self) -> int:
        """Publish kept messages again while the nucleus takes messages (a bounded batch per call)."""
        if not self.outbox.pending or not self._nucleus_took_last:
            return 0

        def publish(topic: str, payload: dict[str, Any]) -> None:
            try:
                self.context.greengrass.publish(topic, payload)
            except IpcError:
                self._nucleus_took_last = False
                raise

        return self.outbox.replay(publish)

    def poll_frames(self, stop: threading.Event | None = None) -> int:
        """Process every frame that is ready now; the number processed."""
        if self.models.detector is None:
            return 0
        count = 0
        for frame in self.frames.poll():
            if stop is not None and stop.is_set():
                break
            if self.process(frame) is not None:
                count += 1
            self._heartbeat_if_due()
        return count

    # -- health ---------------------------------------------------------------------------------------

    def heartbeat_payload(self) -> dict[str, Any]:
        mean = self._window_latency / self._window_frames if self._window_frames else None
        detector = self.models.detector
        payload: dict[str, Any] = {
            "message_version": MESSAGE_VERSION,
            "thing": self.context.thing,
            "timestamp": iso(self._now()),
            "status": "serving" if detector is not None else "waiting for a model",
            "model_version": self.models.version,
            "model_error": self.models.error,
            "model_precision": detector.precision if detector is not None else None,
            "model_precision_reason": detector.precision_reason if detector is not None else None,
            "execution_provider": detector.execution_provider if detector is not None else None,
            # Why the model serves otherwise than configured (an INT8 file that failed, a missing provider).
            "model_warning": "; ".join(detector.warnings) if detector is not None and detector.warnings else None,
            "frames_processed": self.frames_processed,
            "frames_failed": self.frames_failed,
            "frames_since_last_heartbeat": self._window_frames,
            "mean_latency_ms": round(mean, 2) if mean is not None else None,
            "publish_failures": self.publish_failures,
            "publish_pending": self.outbox.pending,
            "publish_dropped": self.outbox.dropped + self.outbox_write_failures,
            "uploads_enabled": self.uploader is not None,
            "uploads_pending": 0,
            "uploads_dropped": 0,
            "uploads_done": 0,
            "upload_error": None,
        }
        if self.uploader is not None:
            payload.update(self.uploader.status())
        payload.update(self.selector.status())
        return payload

    def publish_heartbeat(self) -> dict[str, Any]:
        payload = self.heartbeat_payload()
        self._publish(self.config.heartbeat_topic, payload)
        self._window_latency, self._window_frames = 0.0, 0
        self._next_heartbeat = self._clock() + self.config.heartbeat_interval_s
        return payload

    def _heartbeat_if_due(self) -> None:
        if self._clock() >= self._next_heartbeat:
            self.publish_heartbeat()

    # -- loop -----------------------------------------------------------------------------------------

    def step(self, stop: threading.Event | None = None) -> int:
        """One pass of the loop: configuration and model updates, frames, heartbeat."""
        if self._config_changed.is_set():
            self._reload_configuration()
        self.models.refresh()
        processed = self.poll_frames(stop)
        self._heartbeat_if_due()
        self.replay_outbox()
        return processed

    def run(self, stop: threading.Event) -> None:
        """Serve until `stop` is set (SIGTERM from Greengrass)."""
        self.watch()
        self.models.refresh(force=True)
        self._running = True
        if self.uploader is not None:
            self.uploader.start()
        self._next_heartbeat = self._clock()
        try:
            while not stop.is_set():
                started = self._clock()
                try:
                    self.step(stop)
                except Exception:  # a bug must not take the line down: log it and go on with the next frames
                    LOG.exception("unexpected error in the inference loop")
                stop.wait(max(0.0, self.config.frame_interval_s - (self._clock() - started)))
        finally:
            self._running = False
            if self.uploader is not None:
                self.uploader.stop()
            self.frames.close()
            LOG.info("stopped after %d frames", self.frames_processed)


def create_service(context: DeviceContext, **options: Any) -> InferenceService:
    """Read and validate this component's configuration from Greengrass, and build the service."""
    raw = context.greengrass.configuration(None)
    unknown = ComponentConfig.unknown_keys(raw)
    if unknown:
        LOG.warning("ignoring unknown configuration keys: %s", ", ".join(unknown))
    config = ComponentConfig.from_mapping(raw, thing=context.thing, work_dir=context.work_dir)
    LOG.info("%s", native.library()[1])  # built here unless the install phase built it
    return InferenceService(context, config, **options)
