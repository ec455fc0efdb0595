"""The component's configuration: its keys, their defaults, and validation.

Standard library only: the recipe builder (edge_deployment/components/inference/recipe.py) uses the
same defaults and checks at synth time, where the device packages are not installed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THING_PLACEHOLDER = "{thing}"

# Every key the component reads, with its default. `confidenceThreshold` / `iouThreshold` are optional
# overrides of model.json's values and have no default; `uploadBucket` and `modelComponentName` come
# from the deployment (recipe.py fills them from the settings).
DEFAULTS: dict[str, Any] = {
    "resultsTopic": "inspection/{thing}/results",
    "heartbeatTopic": "inspection/{thing}/heartbeat",
    "heartbeatIntervalSeconds": 60,
    "frameSource": "directory",  # "directory" (default) or "camera" (needs OpenCV, see README)
    "framesDirectory": "frames",  # relative paths are inside the component's work folder
    "frameIntervalSeconds": 1.0,
    "keepProcessedFrames": False,  # False: a processed frame file is deleted; True: moved to processed/
    "cameraDevice": 0,  # OpenCV device index, or a device path / stream URL
    "uncertaintyBand": [0.3, 0.7],
    "confidentSampleRate": 0.02,
    "driftSampleRate": 0.5,  # empty frames sent back while their share departs from the model's test split
    "driftWindowFrames": 200,  # frames over which that share is measured
    "maxUploadsPerHour": 120,  # 0: no cap
    "uploadBucket": "",
    "uploadPrefix": "raw-images/edge/",
    "offlineQueueMaxMB": 512,
    "outboxMaxMB": 16,  # results/heartbeats the nucleus refused (spool full, IPC down), kept to publish again
    "modelComponentName": "",
    "modelDirectory": "",  # optional: serve model.onnx + model.json from this folder instead
    "modelPollSeconds": 30,
    "inferenceThreads": 0,  # 0: onnxruntime's default (one per physical core)
}
# The model's precision and the hardware it runs on (model.json lists the files and their test metrics).
PRECISION_SETTINGS = ("auto", "int8", "fp32")
EXECUTION_PROVIDER_NAMES = ("tensorrt", "cuda", "openvino", "cpu")  # onnxruntime's, by their short names
DEFAULTS.update(
    {
        "precision": "auto",  # auto: INT8 when its recorded test mAP50 loss is within int8MaxMap50Loss
        "int8MaxMap50Loss": 0.01,  # in mAP units: 0.01 = one point
        "executionProviders": ["cpu"],  # in order of preference; CPU is always the last resort
    }
)
OPTIONAL_KEYS = ("confidenceThreshold", "iouThreshold")
IGNORED_KEYS = ("accessControl",)  # Greengrass keeps the IPC authorization policies in the configuration
KNOWN_KEYS = frozenset(DEFAULTS) | frozenset(OPTIONAL_KEYS)


class ConfigError(ValueError):
    """The component configuration is invalid; the message names every key that is wrong."""


@dataclass(frozen=True)
class ComponentConfig:
    results_topic: str
    heartbeat_topic: str
    heartbeat_interval_s: float
    frame_source: str
    frames_directory: Path
    frame_interval_s: float
    keep_processed_frames: bool
    camera_device: int | str
    uncertainty_band: tuple[float, float]
    confident_sample_rate: float
    drift_sample_rate: float
    drift_window_frames: int
    max_uploads_per_hour: int
    upload_bucket: str
    upload_prefix: str
    offline_queue_max_bytes: int
    model_component_name: str
    model_directory: Path | None
    model_poll_s: float
    inference_threads: int
    confidence_threshold: float | None
    iou_threshold: float | None
    precision: str = "auto"
    int8_max_map50_loss: float = 0.01
    execution_providers: tuple[str, ...] = ("cpu",)
    outbox_max_bytes: int = 16 * 1024 * 1024

    @property
    def uploads_enabled(self) -> bool:
        return bool(self.upload_bucket)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, thing: str, work_dir: Path) -> ComponentConfig:
        """Validate the configuration Greengrass holds for the component (defaults fill missing keys)."""
        values = {**DEFAULTS, **{key: value for key, value in raw.items() if key not in IGNORED_KEYS}}
        errors: list[str] = []
        reader = _Reader(values, errors)
        results_topic = reader.topic("resultsTopic", thing)
        heartbeat_topic = reader.topic("heartbeatTopic", thing)
        frame_source = reader.choice("frameSource", ("directory", "camera"))
        frames_directory = Path(reader.text("framesDirectory", allow_empty=False))
        if not frames_directory.is_absolute():
            frames_directory = work_dir / frames_directory
        band = reader.band("uncertaintyBand")
        prefix = reader.text("uploadPrefix", allow_empty=False)
        if prefix.startswith("/"):
            errors.append(f"uploadPrefix: must not start with '/', got {prefix!r}")
        prefix = prefix if prefix.endswith("/") else prefix + "/"
        model_component = reader.text("modelComponentName", allow_empty=True)
        model_directory = reader.text("modelDirectory", allow_empty=True)
        if not model_component and not model_directory:
            errors.append("modelComponentName: required (or modelDirectory for a fixed model folder)")
        camera = values["cameraDevice"]
        if isinstance(camera, float) and camera.is_integer():
            camera = int(camera)  # Greengrass may hand JSON numbers over as floats
        if isinstance(camera, bool) or not isinstance(camera, (int, str)) or camera == "":
            errors.append(f"cameraDevice: expected a device index or a device path / URL, got {camera!r}")
            camera = 0
        config = cls(
            results_topic=results_topic,
            heartbeat_topic=heartbeat_topic,
            heartbeat_interval_s=reader.number("heartbeatIntervalSeconds", minimum=1.0),
            frame_source=frame_source,
            frames_directory=frames_directory,
            frame_interval_s=reader.number("frameIntervalSeconds", minimum=0.01),
            keep_processed_frames=reader.flag("keepProcessedFrames"),
            camera_device=camera,
            uncertainty_band=band,
            confident_sample_rate=reader.fraction("confidentSampleRate"),
            drift_sample_rate=reader.fraction("driftSampleRate"),
            drift_window_frames=int(reader.number("driftWindowFrames", minimum=10.0)),
            max_uploads_per_hour=int(reader.number("maxUploadsPerHour", minimum=0.0)),
            upload_bucket=reader.text("uploadBucket", allow_empty=True),
            upload_prefix=prefix,
            offline_queue_max_bytes=int(reader.number("offlineQueueMaxMB", minimum=1.0) * 1024 * 1024),
            outbox_max_bytes=int(reader.number("outboxMaxMB", minimum=1.0) * 1024 * 1024),
            model_component_name=model_component,
            model_directory=Path(model_directory) if model_directory else None,
            model_poll_s=reader.number("modelPollSeconds", minimum=1.0),
            inference_threads=int(reader.number("inferenceThreads", minimum=0.0)),
            confidence_threshold=reader.optional_fraction("confidenceThreshold"),
            iou_threshold=reader.optional_fraction("iouThreshold"),
            precision=reader.choice("precision", PRECISION_SETTINGS),
            int8_max_map50_loss=reader.fraction("int8MaxMap50Loss"),
            execution_providers=reader.choice_list("executionProviders", EXECUTION_PROVIDER_NAMES),
        )
        if errors:
            raise ConfigError("invalid component configuration: " + "; ".join(errors))
        return config

    @staticmethod
    def unknown_keys(raw: Mapping[str, Any]) -> list[str]:
        return sorted(key for key in raw if key not in KNOWN_KEYS and key not in IGNORED_KEYS)


def topic_filter(topic: str) -> str:
    """The MQTT topic filter that covers `topic` on every device: `{thing}` (a whole level) becomes `+`."""
    levels = topic.split("/")
    for level in levels:
        if THING_PLACEHOLDER in level and level != THING_PLACEHOLDER:
            raise ConfigError(f"topic {topic!r}: {THING_PLACEHOLDER} must be a whole topic level")
    return "/".join("+" if level == THING_PLACEHOLDER else level for level in levels)


class _Reader:
    """Reads typed values out of the merged configuration, collecting errors instead of stopping at one."""

    def __init__(self, values: Mapping[str, Any], errors: list[str]) -> None:
        self.values = values
        self.errors = errors

    def number(self, key: str, *, minimum: float) -> float:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.errors.append(f"{key}: expected a number, got {value!r}")
            return float(DEFAULTS[key])
        if value < minimum:
            self.errors.append(f"{key}: must be at least {minimum:g}, got {value!r}")
        return float(value)

    def fraction(self, key: str) -> float:
        value = self.values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            self.errors.append(f"{key}: expected a number between 0 and 1, got {value!r}")
            return 0.0
        return float(value)

    def optional_fraction(self, key: str) -> float | None:
        if self.values.get(key) is None:
            return None
        return self.fraction(key)

    def flag(self, key: str) -> bool:
        value = self.values[key]
        if not isinstance(value, bool):
            self.errors.append(f"{key}: expected true or false, got {value!r}")
            return bool(DEFAULTS[key])
        return value

    def text(self, key: str, *, allow_empty: bool) -> str:
        value = self.values[key]
        if not isinstance(value, str) or (not allow_empty and not value.strip()):
            self.errors.append(f"{key}: expected a{'' if allow_empty else ' non-empty'} string, got {value!r}")
            return str(DEFAULTS.get(key, ""))
        return value.strip()

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.values[key]
        if value not in choices:
            self.errors.append(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
            return choices[0]
        return str(value)

    def choice_list(self, key: str, choices: tuple[str, ...]) -> tuple[str, ...]:
        """A non-empty list of distinct names out of `choices` (case-insensitive), lower-cased."""
        value = self.values[key]
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, (list, tuple))
            or not value
            or not all(isinstance(item, str) and item.strip().lower() in choices for item in value)
        ):
            self.errors.append(f"{key}: expected a list of {', '.join(choices)}, got {value!r}")
            return tuple(DEFAULTS[key])
        names = tuple(dict.fromkeys(item.strip().lower() for item in value))
        return names

    def topic(self, key: str, thing: str) -> str:
        value = self.text(key, allow_empty=False)
        if "#" in value or "+" in value or value.startswith("$aws/") or any(c.isspace() for c in value):
            self.errors.append(f"{key}: must be a concrete MQTT topic (no wildcards, spaces or $aws/), got {value!r}")
        try:
            topic_filter(value)
        except ConfigError as error:
            self.errors.append(f"{key}: {error}")
        return value.replace(THING_PLACEHOLDER, thing)

    def band(self, key: str) -> tuple[float, float]:
        value = self.values[key]
        if (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            and 0.0 <= value[0] < value[1] <= 1.0
        ):
            return float(value[0]), float(value[1])
        self.errors.append(f"{key}: expected [low, high] with 0 <= low < high <= 1, got {value!r}")
        return 0.3, 0.7
