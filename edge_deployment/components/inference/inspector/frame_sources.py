"""Frame sources: where the service's frames come from (a watched folder, or a camera through OpenCV).

A source hands out the frames that are ready (`poll`) and is told what became of each: served
(`done`), unreadable (`reject`); `make_frame_source` picks the one the configuration names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import ComponentConfig, ConfigError

LOG = logging.getLogger(__name__)

PROCESSED_DIR = "processed"
REJECTED_DIR = "rejected"
_PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".swp", "~")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Frame:
    name: str
    captured_at: datetime
    path: Path | None = None  # a file in the watched directory
    image: np.ndarray | None = None  # an RGB camera frame


class FrameSource(Protocol):
    def poll(self) -> list[Frame]: ...

    def done(self, frame: Frame) -> None: ...

    def reject(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


class DirectoryFrames:
    """Image files that appear in a folder, oldest first, once they stopped changing.

    A camera should write each frame under a temporary name (e.g. `.frame.jpg.tmp`) and rename it
    when complete; files that are hidden, carry a partial-download suffix, or changed within the
    last `settle_seconds` are left for a later poll. A processed frame is deleted (or moved to
    processed/ with keepProcessedFrames); a frame that cannot be read is moved to rejected/.
    """

    def __init__(
        self,
        directory: Path,
        *,
        keep_processed: bool = False,
        settle_seconds: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.keep_processed = keep_processed
        self.settle_seconds = settle_seconds
        self._clock = clock
        self._stuck: set[Path] = set()  # served frames that could not be moved: left alone on disk
        directory.mkdir(parents=True, exist_ok=True)

    def poll(self) -> list[Frame]:
        now = self._clock()
        ready: list[tuple[float, str, Path]] = []
        try:
            entries = list(os.scandir(self.directory))
        except OSError as error:
            LOG.error("frames directory %s cannot be read: %s", self.directory, error)
            return []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(_PARTIAL_SUFFIXES):
                continue
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                modified = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue  # vanished meanwhile
            if now - modified >= self.settle_seconds and Path(entry.path) not in self._stuck:
                ready.append((modified, name, Path(entry.path)))
        ready.sort()
        return [Frame(name=name, captured_at=datetime.fromtimestamp(m, UTC), path=path) for m, name, path in ready]

    def _move(self, frame: Frame, folder: str) -> None:
        if frame.path is None:
            return
        target = self.directory / folder
        try:
            target.mkdir(exist_ok=True)
            destination = target / frame.path.name
            if destination.exists():  # never overwrite an earlier frame of the same name
                destination = target / f"{frame.path.stem}-{time.time_ns()}{frame.path.suffix}"
            with contextlib.suppress(FileNotFoundError):
                os.replace(frame.path, destination)
        except OSError as error:  # e.g. the disk is full: the frame stays where it is, and is not served again
            self._stuck.add(frame.path)
            LOG.error("frame %s stays in %s (could not move it to %s/: %s)", frame.name, self.directory, folder, error)

    def done(self, frame: Frame) -> None:
        if self.keep_processed:
            self._move(frame, PROCESSED_DIR)
        elif frame.path is not None:
            frame.path.unlink(missing_ok=True)

    def keep(self, frame: Frame) -> None:
        self._move(frame, PROCESSED_DIR)

    def reject(self, frame: Frame) -> None:
        self._move(frame, REJECTED_DIR)

    def close(self) -> None:
        pass


class CameraFrames:
    """One frame per poll from an OpenCV camera (device index, device path or stream URL).

    OpenCV is optional and not in requirements.txt: install `opencv-python-headless` into the
    component's environment to use a camera (see README.md).
    """

    REOPEN_AFTER_FAILURES = 10

    def __init__(self, device: int | str) -> None:
        try:
            import cv2  # noqa: PLC0415 - optional dependency, only for frameSource "camera"
        except ImportError:
            raise ConfigError(
                "frameSource 'camera' needs OpenCV, which is not installed: add opencv-python-headless to the "
                "component's environment (README.md, 'Camera'), or use frameSource 'directory'"
            ) from None
        self._cv2 = cv2
        self.device = device
        self._sequence = 0
        self._failures = 0
        self._capture = self._open()

    def _open(self) -> Any:
        capture = self._cv2.VideoCapture(self.device)
        if not capture.isOpened():
            LOG.error("camera %r cannot be opened; retrying on the next frames", self.device)
        return capture

    def poll(self) -> list[Frame]:
        ok, bgr = self._capture.read()
        if not ok or bgr is None:
            self._failures += 1
            if self._failures % self.REOPEN_AFTER_FAILURES == 0:
                LOG.warning("camera %r gave no frame %d times in a row: reopening", self.device, self._failures)
                self._capture.release()
                self._capture = self._open()
            return []
        self._failures = 0
        self._sequence += 1
        captured = utc_now()
        # Grey cameras give 2-D frames; colour ones BGR (or BGRA): reversed to RGB, alpha left out.
        rgb = np.repeat(bgr[..., None], 3, axis=2) if bgr.ndim == 2 else np.ascontiguousarray(bgr[..., 2::-1])
        return [Frame(name=f"camera-{captured:%Y%m%dT%H%M%S}-{self._sequence:06d}", captured_at=captured, image=rgb)]

    def done(self, frame: Frame) -> None:
        pass

    def reject(self, frame: Frame) -> None:
        pass

    def close(self) -> None:
        self._capture.release()


def make_frame_source(config: ComponentConfig) -> FrameSource:
    if config.frame_source == "camera":
        return CameraFrames(config.camera_device)
    return DirectoryFrames(config.frames_directory, keep_processed=config.keep_processed_frames)
