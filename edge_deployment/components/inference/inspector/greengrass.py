"""Everything the component asks of Greengrass, behind one small class.

`GreengrassIpc` wraps the AWS IoT Device SDK's `GreengrassCoreIPCClientV2` (awsiotsdk): publish
to AWS IoT Core, read a component's configuration, and watch it for changes. The service only
sees these three methods, so it runs in tests without a Greengrass nucleus.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

LOG = logging.getLogger(__name__)

MODEL_SUBDIRECTORY = "model"  # model.zip unpacks to {artifacts:decompressedPath}/model/ (shared/contracts.py)
MODEL_VERSION_KEY = "modelVersion"


class Greengrass(Protocol):
    """What the service needs from Greengrass (GreengrassIpc in production)."""

    def publish(self, topic: str, payload: Mapping[str, Any]) -> None: ...

    def configuration(self, component: str | None = None) -> dict[str, Any]: ...

    def watch_configuration(self, component: str | None, on_change: Callable[[], None]) -> None: ...


class IpcError(Exception):
    """A Greengrass IPC call that failed (the nucleus refused it or the connection is down)."""


class ModelUnavailable(Exception):
    """No model can be located right now (model component not deployed yet, or its files missing)."""


# The nucleus gives up on a publish after its own MQTT operation timeout (mqtt.operationTimeoutMs, 30 s by
# default); the component waits a little longer, but never forever (the SDK's blocking calls have no limit).
PUBLISH_TIMEOUT_S = 40.0


class GreengrassIpc:
    """Greengrass IPC through awsiotsdk's GreengrassCoreIPCClientV2."""

    def __init__(self, client: Any, *, timeout: float = PUBLISH_TIMEOUT_S) -> None:
        self._client = client
        self.timeout = timeout

    @classmethod
    def connect(cls) -> GreengrassIpc:
        """Connect over the nucleus' IPC socket (SVCUID and socket path come from Greengrass' environment)."""
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2  # noqa: PLC0415

        try:
            return cls(GreengrassCoreIPCClientV2())
        except Exception as error:  # missing SVCUID / socket path, or the nucleus refused the connection
            raise IpcError(
                f"cannot connect to the Greengrass nucleus over IPC ({type(error).__name__}: {error}); "
                "run this as a Greengrass component, or use `python -m inspector.cli` without Greengrass"
            ) from None

    def publish(self, topic: str, payload: Mapping[str, Any]) -> None:
        """PublishToIoTCore, QoS 1 (the nucleus spools messages while the device is offline)."""
        from awsiot.greengrasscoreipc.model import QOS  # noqa: PLC0415

        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        try:
            # The SDK's publish_to_iot_core() waits without a limit: a nucleus that never answers would stop the
            # inference loop. The async call's future is waited on for at most `timeout` seconds.
            future = self._client.publish_to_iot_core_async(topic_name=topic, qos=QOS.AT_LEAST_ONCE, payload=body)
            future.result(timeout=self.timeout)
        except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError since Python 3.11
            raise IpcError(f"publish to {topic}: no answer from the nucleus within {self.timeout:g} s") from None
        except Exception as error:  # the SDK raises its own model errors and connection errors
            raise IpcError(f"publish to {topic}: {type(error).__name__}: {error}") from None

    def configuration(self, component: str | None = None) -> dict[str, Any]:
        """GetConfiguration of the whole configuration of `component` (None: this component)."""
        try:
            response = self._client.get_configuration(component_name=component, key_path=[])
        except Exception as error:
            name = component or "this component"
            raise IpcError(f"configuration of {name}: {type(error).__name__}: {error}") from None
        value = response.value
        return dict(value) if isinstance(value, Mapping) else {}

    def watch_configuration(self, component: str | None, on_change: Callable[[], None]) -> None:
        """SubscribeToConfigurationUpdate on the whole configuration; `on_change` runs on an SDK thread."""

        def on_event(_event: Any) -> None:
            on_change()

        def on_error(error: Exception) -> bool:
            LOG.warning("configuration updates of %s: stream error %s", component or "this component", error)
            return False  # keep the stream open

        try:
            self._client.subscribe_to_configuration_update(
                component_name=component, key_path=[], on_stream_event=on_event, on_stream_error=on_error
            )
        except Exception as error:
            raise IpcError(f"watch configuration of {component or 'this component'}: {error}") from None


def unarchived_root(decompressed_path: str | Path) -> Path:
    """`.../artifacts-unarchived` from this component's {artifacts:decompressedPath} (`.../<name>/<version>`)."""
    return Path(decompressed_path).parents[1]


def model_directory(root: Path, component: str, version: str) -> Path:
    """Where Greengrass unpacked model.zip of `component` at `version`."""
    return root / component / version / MODEL_SUBDIRECTORY


class ModelComponentLocator:
    """Finds the model to serve: the model component's configured modelVersion and its unpacked artifact.

    The model component is a SOFT dependency: a new version arrives without restarting this
    component. Its DefaultConfiguration holds `modelVersion` (= its component version), and its
    artifact is unpacked under the same artifacts-unarchived folder as this component's own.
    """

    def __init__(self, greengrass: Greengrass, *, component: str, root: Path) -> None:
        self.greengrass = greengrass
        self.component = component
        self.root = root

    def locate(self) -> tuple[str, Path]:
        try:
            config = self.greengrass.configuration(self.component)
        except IpcError as error:
            raise ModelUnavailable(f"model component {self.component} is not available: {error}") from None
        version = config.get(MODEL_VERSION_KEY)
        if not isinstance(version, str) or not version:
            raise ModelUnavailable(
                f"model component {self.component}: its configuration has no {MODEL_VERSION_KEY} "
                f"(keys: {', '.join(sorted(config)) or 'none'})"
            )
        return version, model_directory(self.root, self.component, version)


class FixedModelLocator:
    """A fixed model folder (configuration key modelDirectory): for manual installs and local runs."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def locate(self) -> tuple[str, Path]:
        """The version is the model file's modification time, so replacing the files swaps the model."""
        model = self.directory / "model.onnx"
        try:
            stamp = datetime.fromtimestamp(model.stat().st_mtime, UTC).strftime("%Y%m%dT%H%M%SZ")
        except OSError as error:
            raise ModelUnavailable(f"modelDirectory {self.directory}: {error}") from None
        return f"local-{stamp}", self.directory
