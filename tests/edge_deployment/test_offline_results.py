"""Results and heartbeats published while a device is offline reach AWS IoT Core after restarts, once each.

The inference component runs for real (as in test_inference_service.py) against `SpoolingNucleus`, a fake
nucleus that behaves as the Greengrass nucleus source does (aws-greengrass-nucleus, MqttClient.publish and
mqttclient/spool/Spool.java): PublishToIoTCore answers once a message is in the spooler, not at the PUBACK;
a spool over its maxSizeInBytes refuses new QoS 1 messages (it drops only QoS 0 ones to make room); the
spooler delivers what it holds once connected; a restart empties a memory spool and keeps a disk one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from edge_deployment.components.inference.inspector.greengrass import IpcError
from edge_deployment.components.inference.inspector.outbox import REPLAY_BATCH, Outbox
from shared.contracts import DeviceHeartbeat
from tests.edge_deployment.device_support import MODEL_COMPONENT, THING, FakeGreengrass, restore_pillow_open
from tests.edge_deployment.test_inference_service import BUCKET, HEARTBEAT, RESULTS, Device, jpeg, score_model, tag
from tests.edge_deployment.test_telemetry import envelope, metric_values, run


@pytest.fixture(autouse=True)
def _device_pillow(monkeypatch: pytest.MonkeyPatch) -> None:
    restore_pillow_open(monkeypatch)


class SpoolingNucleus(FakeGreengrass):
    """The nucleus's MQTT spooler between the component and AWS IoT Core (`delivered`)."""

    def __init__(self, configuration: dict[str, Any], *, storage: str, max_bytes: int) -> None:
        super().__init__(configuration, models={})
        self.storage, self.max_bytes = storage, max_bytes
        self.connected = False
        self.ipc_up = True
        self.spool: list[tuple[str, dict[str, Any]]] = []
        self.delivered: list[tuple[str, dict[str, Any]]] = []
        self.offered: list[tuple[str, dict[str, Any]]] = []  # every publish the component attempted

    @staticmethod
    def _size(payload: dict[str, Any]) -> int:
        return len(json.dumps(payload, separators=(",", ":")).encode())

    def publish(self, topic: str, payload: Any) -> None:
        document = json.loads(json.dumps(payload, allow_nan=False))
        self.offered.append((topic, document))
        if not self.ipc_up:
            raise IpcError(f"publish to {topic}: the IPC connection is closed (nucleus restarting)")
        if sum(self._size(p) for _, p in self.spool) + self._size(document) > self.max_bytes:
            raise IpcError(f"publish to {topic}: ServiceError: Message spool is full. Message could not be added.")
        self.spool.append((topic, document))
        self.published.append((topic, document))
        if self.connected:
            self._flush()

    def _flush(self) -> None:
        self.delivered.extend(self.spool)
        self.spool.clear()

    def reconnect(self) -> None:
        self.connected = True
        self._flush()

    def restart(self) -> None:
        """The nucleus (and with it every component) restarts: a memory spool starts empty."""
        if self.storage == "Memory":
            self.spool.clear()

    def distinct_offered(self, topic: str) -> list[str]:
        return sorted({json.dumps(p, sort_keys=True) for name, p in self.offered if name == topic})

    def delivered_of(self, topic: str) -> list[str]:
        return sorted(json.dumps(p, sort_keys=True) for name, p in self.delivered if name == topic)


def _device(tmp_path: Path, *, storage: str, max_bytes: int) -> tuple[Device, SpoolingNucleus]:
    device = Device(tmp_path)
    nucleus = SpoolingNucleus(
        {"modelComponentName": MODEL_COMPONENT, "uploadBucket": BUCKET}, storage=storage, max_bytes=max_bytes
    )
    device.greengrass = nucleus
    device.deploy_model("1.0.1", lambda d: score_model(d, 0.9))
    return device, nucleus


def _frames(device: Device, service: Any, names: list[str]) -> None:
    for name in names:
        device.drop(name, jpeg(tag()))
        device.clock.now += 61  # a heartbeat is due at every step
        assert service.step() == 1


def _images(nucleus: SpoolingNucleus) -> list[str]:
    return sorted(payload["image"] for topic, payload in nucleus.delivered if topic == RESULTS)


@pytest.mark.parametrize("storage", ["Disk", "Memory"])
def test_an_offline_period_with_a_restart_loses_nothing_with_the_disk_spooler(tmp_path: Path, storage: str) -> None:
    # A spool that holds about three results: a long offline period in small.
    device, nucleus = _device(tmp_path, storage=storage, max_bytes=1500)
    service = device.service(rng=random.Random(1))
    _frames(device, service, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"])
    taken_before_restart = [p["image"] for t, p in nucleus.spool if t == RESULTS]
    assert taken_before_restart and service.outbox.pending > 0  # the nucleus took some, then refused the rest

    # Power cut while offline: the nucleus and the component restart; the IPC is down while the nucleus starts.
    pending = service.outbox.pending
    nucleus.restart()
    nucleus.ipc_up = False
    service = device.service(rng=random.Random(2))
    assert service.outbox.pending == pending  # read back from disk
    _frames(device, service, ["f.jpg"])
    nucleus.ipc_up = True
    _frames(device, service, ["g.jpg"])  # still offline, spool full: kept by the component

    nucleus.reconnect()
    _frames(device, service, ["h.jpg"])
    while service.outbox.pending:
        device.clock.now += 61
        service.step()

    every_frame = sorted(f"{name}.jpg" for name in "abcdefgh")
    if storage == "Disk":
        # every result and heartbeat the component produced reached AWS IoT Core, each once
        assert _images(nucleus) == every_frame
        assert nucleus.delivered_of(RESULTS) == nucleus.distinct_offered(RESULTS)
        assert nucleus.delivered_of(HEARTBEAT) == nucleus.distinct_offered(HEARTBEAT)
    else:
        # the memory spool lost exactly what the nucleus held at the restart: why the disk spooler is deployed
        assert _images(nucleus) == sorted(set(every_frame) - set(taken_before_restart))
    heartbeat = DeviceHeartbeat.from_json(service.heartbeat_payload())
    assert heartbeat.publish_pending == 0 and heartbeat.publish_dropped == 0


def test_kept_messages_go_out_in_bounded_batches_so_frames_keep_flowing(tmp_path: Path) -> None:
    device, nucleus = _device(tmp_path, storage="Disk", max_bytes=10_000_000)
    service = device.service()
    for index in range(REPLAY_BATCH + 30):  # left by an earlier run
        service.outbox.put(RESULTS, {"image": f"old-{index:03d}.jpg"})
    nucleus.connected = True
    _frames(device, service, ["new.jpg"])
    delivered = [p["image"] for t, p in nucleus.delivered if t == RESULTS]
    assert delivered[0] == "new.jpg"  # the frame first, then one batch of the backlog
    assert len(delivered) == 1 + REPLAY_BATCH and service.outbox.pending == 30
    _frames(device, service, ["next.jpg"])
    assert service.outbox.pending == 0
    assert len({p["image"] for t, p in nucleus.delivered if t == RESULTS}) == REPLAY_BATCH + 32  # no repeats


def test_a_nucleus_that_still_refuses_stops_the_replay_at_the_first_refusal(tmp_path: Path) -> None:
    device, nucleus = _device(tmp_path, storage="Disk", max_bytes=10_000_000)
    service = device.service()
    nucleus.ipc_up = False
    _frames(device, service, ["a.jpg", "b.jpg"])
    offered = len(nucleus.offered)
    assert service.replay_outbox() == 0
    assert len(nucleus.offered) == offered  # no attempt while the last publish failed: no wait per kept message


def test_a_full_outbox_drops_its_oldest_messages_and_counts_them(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", max_bytes=2_000)
    for index in range(40):
        assert outbox.put(RESULTS, {"image": f"{index:02d}.jpg", "detections": [], "pad": "x" * 40})
    assert 0 < outbox.pending < 40 and outbox.dropped == 40 - outbox.pending
    sent: list[str] = []
    outbox.replay(lambda topic, payload: sent.append(payload["image"]), limit=100)
    assert sent == [f"{index:02d}.jpg" for index in range(40 - len(sent), 40)]  # the newest kept, in order
    assert Outbox(tmp_path / "outbox", max_bytes=2_000).dropped == 40 - len(sent)  # the count survives a restart


def test_a_message_larger_than_the_outbox_is_dropped_and_counted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", max_bytes=100)
    assert outbox.put(RESULTS, {"image": "x" * 200}) is False
    assert outbox.pending == 0 and outbox.dropped == 1


def test_an_unreadable_kept_message_is_set_aside_not_published_and_not_fatal(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", max_bytes=10_000)
    outbox.put(RESULTS, {"image": "a.jpg"})
    outbox.put(RESULTS, {"image": "b.jpg"})
    first = outbox.queue.oldest()
    assert first is not None
    first.path.write_bytes(b'{"key": "inspection/x/results"}\n{not json')
    sent: list[str] = []
    assert outbox.replay(lambda topic, payload: sent.append(payload["image"])) == 1
    assert sent == ["b.jpg"] and (tmp_path / "outbox" / "corrupt" / first.path.name).is_file()


def _offline_with_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Device, Any]:
    """A device whose nucleus refuses every message and whose outbox cannot write (disk full)."""
    device, nucleus = _device(tmp_path, storage="Disk", max_bytes=10_000_000)
    service = device.service()
    nucleus.ipc_up = False

    def disk_full(*_: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(service.outbox, "put", disk_full)
    return device, service


def test_the_service_counts_a_message_it_could_not_keep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device, service = _offline_with_a_full_disk(tmp_path, monkeypatch)
    _frames(device, service, ["a.jpg"])  # inference goes on
    assert service.heartbeat_payload()["publish_dropped"] == 2  # the result and the heartbeat: lost, and counted


def test_the_messages_a_device_lost_reach_the_metric_its_alarm_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device, service = _offline_with_a_full_disk(tmp_path, monkeypatch)
    _frames(device, service, ["a.jpg", "b.jpg"])
    heartbeat = service.heartbeat_payload()
    assert heartbeat["publish_dropped"] >= 2  # both results at least
    _, _, documents = run(envelope(heartbeat, kind="heartbeat"))
    # the running count becomes PublishDroppedTotal, the metric the messages-dropped alarm watches
    assert metric_values(documents, "PublishDroppedTotal", Device=THING) == [heartbeat["publish_dropped"]]
    assert metric_values(documents, "PublishPending", Device=THING) == [0]
