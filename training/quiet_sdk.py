"""The SageMaker Python SDK, imported and used at synth without its side effects on the CDK app.

On import the SDK reads its defaults files and warns that v2 is on the path of deprecation (the choice
is explained in the training guide, "The SDK"); sagemaker-core also replaces `sys.excepthook` with
rich's, which would print every synth error (a configuration error naming a key, say) with the local
variables of each frame. While the pipeline is built it logs a note per step (job names left for the
service to fill in, no job started in a pipeline session). None of that is synth's business: inside
`quiet_sdk()` only the SDK's errors are shown, and the exception hook stays the app's.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

SDK_LOGGERS = ("sagemaker", "sagemaker.config")


@contextlib.contextmanager
def quiet_sdk() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in SDK_LOGGERS]
    levels = [logger.level for logger in loggers]
    excepthook = sys.excepthook
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"sagemaker(\.|$)")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            sys.excepthook = excepthook
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
