"""The model manager: which model version the service serves, and swapping in a new one between frames."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .detector import Detector, DetectorError
from .greengrass import ModelUnavailable

LOG = logging.getLogger(__name__)


FilesState = tuple[tuple[str, int, int] | None, ...]  # (name, size, mtime) of each model file, None if missing


class ModelLocator(Protocol):
    def locate(self) -> tuple[str, Path]: ...


def _model_files_state(directory: Path) -> FilesState:
    """(name, size, mtime) of model.onnx, model.json and the other precisions' files (None for a missing
    model.onnx or model.json): tells whether a retry can help."""
    state: list[tuple[str, int, int] | None] = []
    try:
        others = sorted(path.name for path in directory.glob("*.onnx") if path.name != "model.onnx")
    except OSError:
        others = []
    for name in ("model.onnx", "model.json", *others):
        try:
            stat = (directory / name).stat()
            state.append((name, stat.st_size, stat.st_mtime_ns))
        except OSError:
            state.append(None)
    return tuple(state)


class ModelManager:
    """Holds the detector being served and swaps in new model versions between frames.

    `refresh()` (main loop) looks the model up when asked (`request_check()`, e.g. from a
    configuration-update event) or every `poll_s` seconds. A version that fails to load leaves
    the previous model serving; the error stays in `error` (heartbeat) until a model loads. A model
    served with a warning (its INT8 file missing or broken: FP32 serves) is loaded again when its files
    change, so an INT8 file that was still being written is served once it is complete.
    """

    def __init__(
        self,
        locator: ModelLocator,
        *,
        load: Callable[[Path], Detector],
        poll_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.locator = locator
        self.load = load
        self.poll_s = poll_s
        self._clock = clock
        self.detector: Detector | None = None
        self.version: str | None = None
        self.directory: Path | None = None
        self.error: str | None = None
        self._failed: tuple[str, Path, FilesState] | None = None
        self._served_files: FilesState | None = None
        self._requested = threading.Event()
        self._next_poll = 0.0

    def request_check(self) -> None:
        """Thread-safe: look for a new model at the next refresh."""
        self._requested.set()

    def _served_files_changed(self) -> bool:
        return (
            self._served_files is not None
            and self.directory is not None
            and _model_files_state(self.directory) != self._served_files
        )

    def fall_back(self, load: Callable[[Path], Detector], reason: str) -> bool:
        """Serve the same version through `load` (its FP32 model) after the served model failed on a frame.

        `reason` becomes the detector's warning (heartbeat); the version's files are watched as for any
        model served with a warning. False, and the old detector stays, when `load` fails too."""
        if self.directory is None:
            return False
        files = _model_files_state(self.directory)
        try:
            detector = load(self.directory)
        except (DetectorError, OSError) as error:
            LOG.error("model %s: no fallback (%s)", self.version, error)
            return False
        detector.warnings.append(reason)
        self.detector, self._served_files = detector, files
        return True

    def refresh(self, *, force: bool = False) -> bool:
        """Load a new model version if there is one; True when the served model changed."""
        now = self._clock()
        requested = self._requested.is_set()
        if not (force or requested or now >= self._next_poll):
            return False
        self._requested.clear()
        self._next_poll = now + self.poll_s
        try:
            version, directory = self.locator.locate()
        except ModelUnavailable as error:
            if self.error != str(error):
                LOG.warning("%s", error)
            if self.detector is None:
                self.error = str(error)
            return False
        if (version, directory) == (self.version, self.directory) and not force and not self._served_files_changed():
            return False
        attempt = (version, directory, _model_files_state(directory))
        if attempt == self._failed and not (force or requested):
            # Tried already and the files are unchanged: again when Greengrass reports a change or the
            # files change (a version whose files were still being unpacked is retried once they are there).
            return False
        try:
            detector = self.load(directory)
        except (DetectorError, OSError) as error:
            self._failed = attempt
            serving = f"; still serving model {self.version}" if self.detector is not None else ""
            self.error = f"model {version} failed to load: {error}{serving}"
            LOG.error("%s", self.error)
            return False
        previous = self.version
        self.detector, self.version, self.directory = detector, version, directory
        self.error, self._failed = None, None
        # Served with a warning (its INT8 file missing or half-written, say): loaded again once the files change.
        self._served_files = attempt[2] if detector.warnings else None
        LOG.info(
            "serving model %s from %s (%s; %d classes, input %dx%d; %s on %s: %s)%s",
            version,
            directory,
            ", ".join(detector.class_names),
            detector.num_classes,
            detector.input_width,
            detector.input_height,
            detector.precision.upper(),
            detector.execution_provider,
            detector.precision_reason,
            f", replacing {previous}" if previous and previous != version else "",
        )
        return True
