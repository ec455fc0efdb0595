"""The disk spooler plugin in the devices' deployment: what keeps offline results on disk across a restart.

The nucleus spools the MQTT messages components publish (PublishToIoTCore answers once a message is
spooled, not when AWS IoT Core acknowledged it), in memory unless its `mqtt.spooler.storageType` is `Disk`
and the plugin component `aws.greengrass.DiskSpooler` is installed. `register_device` writes that setting
into each device's first configuration; the deployment carries the plugin at the configured, pinned version.
"""

from __future__ import annotations

from collections.abc import Mapping

DISK_SPOOLER = "aws.greengrass.DiskSpooler"


def with_disk_spooler(components: Mapping[str, str], version: str | None) -> dict[str, str]:
    """`components` (name -> version) plus the disk spooler at `version`; unchanged when `version` is None."""
    if DISK_SPOOLER in components:
        raise ValueError(f"{DISK_SPOOLER} is added by the configuration (offline_spool), not by a step")
    return {**components, DISK_SPOOLER: version} if version else dict(components)
