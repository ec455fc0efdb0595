"""The Greengrass component's entry point: `python -m inspector` (the recipe's Run step).

Connects to the nucleus over IPC, reads the component configuration, and serves until Greengrass
stops the component (SIGTERM). `python -m inspector --check` only imports what the component
needs, builds the compiled letterbox where the device can (native.py), and prints the versions and
which letterbox serves: a quick check of the install phase on a device.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

LOG = logging.getLogger("inspector")


def check() -> int:
    """Import every dependency of the component, build the compiled letterbox, print what serves."""
    import awscrt  # noqa: PLC0415
    import awsiot.greengrasscoreipc.clientv2  # noqa: F401, PLC0415
    import numpy  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415
    import PIL  # noqa: PLC0415

    from . import __version__, detector, feedback, frame_sources, greengrass, model_manager, native, service  # noqa: F401, PLC0415

    print(
        f"inspector {__version__}: python {sys.version.split()[0]}, onnxruntime {onnxruntime.__version__}, "
        f"numpy {numpy.__version__}, pillow {PIL.__version__}, awscrt {awscrt.__version__}"
    )
    print(native.library()[1])  # without a compiler the numpy letterbox serves: not an install failure
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inspector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="import the dependencies, print versions, exit")
    args = parser.parse_args(argv)
    if args.check:
        return check()
    # Greengrass writes the component's standard output to its log file (logs/<component>.log).
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)

    from .config import ConfigError  # noqa: PLC0415
    from .greengrass import GreengrassIpc, IpcError  # noqa: PLC0415
    from .service import DeviceContext, create_service  # noqa: PLC0415

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        LOG.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        context = DeviceContext.from_environment(GreengrassIpc.connect())
        service = create_service(context)
    except (ConfigError, IpcError, ValueError) as error:
        LOG.error("cannot start: %s", error)
        return 1
    service.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
