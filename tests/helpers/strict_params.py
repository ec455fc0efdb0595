"""Check every AWS request the tests make against what the service accepts, not only what botocore checks.

botocore validates types, required members and minimum lengths before sending; the service also
enforces maximum lengths, patterns and enums, which offline tests (Stubber, moto) would otherwise let
through. This hook checks string scalars for those three before each call; a violation raises
`StrictParamError` naming the parameter, the value's size or text and the rule it breaks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape


class StrictParamError(ValueError):
    """A request parameter the AWS service would reject."""


@lru_cache(maxsize=512)
def _pattern(text: str) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error:  # Java-only syntax (\p{...}, possessive quantifiers): length and enum still apply
        return None


def problems(value: Any, shape: Shape | None, where: str) -> list[str]:
    """Every max-length, pattern or enum violation in `value` (a request, or part of one)."""
    if shape is None:
        return []
    found: list[str] = []
    if isinstance(shape, StructureShape) and isinstance(value, Mapping):
        for name, item in value.items():
            if name in shape.members:
                found += problems(item, shape.members[name], f"{where}.{name}")
    elif isinstance(shape, ListShape) and isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found += problems(item, shape.member, f"{where}[{index}]")
    elif isinstance(shape, MapShape) and isinstance(value, Mapping):
        for key, item in value.items():
            found += problems(key, shape.key, f"{where} key {key!r}")
            found += problems(item, shape.value, f"{where}.{key}")
    elif shape.type_name == "string" and isinstance(value, str):
        maximum = shape.metadata.get("max")
        if maximum is not None and len(value) > maximum:
            found.append(f"{where}: {len(value)} characters, at most {maximum} allowed")
        enum = shape.enum
        if enum and value not in enum:
            found.append(f"{where}: {value!r} is not one of {list(enum)}")
        pattern = _pattern(shape.metadata["pattern"]) if "pattern" in shape.metadata else None
        if pattern is not None and not pattern.fullmatch(value) and not enum:
            found.append(f"{where}: {value[:200]!r} does not match {shape.metadata['pattern']}")
    return found


def check_request(params: Mapping[str, Any], model: OperationModel, **_: Any) -> None:
    errors = problems(params, model.input_shape, f"{model.service_model.service_name}.{model.name}")
    if errors:
        raise StrictParamError("; ".join(errors))


def install() -> None:
    """Register the check on every client botocore creates from now on (the tests' sessions included)."""
    original = botocore.session.Session.create_client
    if getattr(original, "_strict_params", False):
        return

    def create_client(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register_first("provide-client-params.*.*", check_request)
        return client

    create_client._strict_params = True  # type: ignore[attr-defined]
    botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
