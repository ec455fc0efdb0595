"""The labeling app (see shared/app_stacks.py for how an app is laid out)."""

from typing import Final

APP: Final = "labeling"
