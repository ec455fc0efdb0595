"""Results and heartbeats the nucleus did not take, kept on disk until it does.

PublishToIoTCore answers once the nucleus has put a message in its spooler (not when AWS IoT Core
acknowledged it), so what the nucleus took is its spooler's to keep: on disk with the disk spooler plugin
(edge_deployment.offline_spool), else in memory. What it refused is this component's to keep: its spool
was full (a long time offline), the IPC connection was down (the nucleus restarting), or it did not answer
in time. Such a message waits here, in the same durable first-in-first-out queue as the frames sent back
for labeling (one file each, written atomically, read back at the next start, the oldest dropped and
counted above the size cap), and is published again once a publish succeeds.

A message whose publish timed out may have reached the spooler all the same: publishing it again can
deliver it twice, as QoS 1 already may; the cloud drops repeats it sees together (runtime/telemetry.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .feedback import FrameUpload, QueueError, UploadQueue
from .greengrass import IpcError

LOG = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
REPLAY_BATCH = 100  # messages published again per pass of the loop at most: frames go on meanwhile


class Outbox:
    """Messages (topic, payload) waiting to be published again."""

    def __init__(self, directory: Path, *, max_bytes: int) -> None:
        self.queue = UploadQueue(directory, max_bytes=max_bytes, name="outbox", item="message")

    @property
    def pending(self) -> int:
        return self.queue.pending

    @property
    def dropped(self) -> int:
        """Messages dropped because the outbox was full (or one alone was larger than it), over all runs."""
        return self.queue.dropped

    @property
    def max_bytes(self) -> int:
        return self.queue.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.queue.max_bytes = value

    def put(self, topic: str, payload: Mapping[str, Any]) -> bool:
        """Keep a message durably; False when it was dropped (larger than the whole outbox). OSError: not kept."""
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return self.queue.put(FrameUpload(key=topic, body=body, content_type=CONTENT_TYPE))

    def replay(self, publish: Callable[[str, dict[str, Any]], None], *, limit: int = REPLAY_BATCH) -> int:
        """Publish the oldest messages again, up to `limit`; stops at the first IpcError. The number published."""
        sent = 0
        while sent < limit:
            item = self.queue.oldest()
            if item is None:
                break
            try:
                message = self.queue.read(item)
                payload = json.loads(message.body)
                if not isinstance(payload, dict):
                    raise QueueError(f"{item.path.name}: not a JSON object")
            except (QueueError, ValueError) as error:
                LOG.error("outbox: %s; moved aside", error)
                self.queue.set_aside(item)
                continue
            try:
                publish(message.key, payload)
            except IpcError as error:
                LOG.info("outbox: %d message(s) still waiting: %s", self.queue.pending, error)
                break
            self.queue.remove(item)
            sent += 1
        if sent:
            LOG.info("outbox: published %d kept message(s) again; %d waiting", sent, self.queue.pending)
        return sent
