"""Render CloudFormation intrinsics of a synthesized template to plain strings (for JSON bodies built with tokens)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

PSEUDO = {
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
}


def render(
    value: Any,
    substitutions: Mapping[str, str] | None = None,
    mappings: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
) -> str:
    """Ref / GetAtt / Join / Sub / FindInMap (with the template's `mappings`) to a string; references become
    `${LogicalId}` or `${LogicalId.Attr}`."""
    subs = dict(substitutions or {})
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return subs.get(argument, PSEUDO.get(argument, f"${{{argument}}}"))
        if function == "Fn::GetAtt":
            key = f"{argument[0]}.{argument[1]}"
            return subs.get(key, f"${{{key}}}")
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(render(part, subs, mappings) for part in parts)
        if function == "Fn::FindInMap" and mappings is not None:
            name, first, second = (render(part, subs, mappings) for part in argument)
            return mappings[name][first][second]
        if function == "Fn::Sub":
            text = argument if isinstance(argument, str) else argument[0]
            return re.sub(r"\$\{([\w:.]+)\}", lambda m: subs.get(m[1], PSEUDO.get(m[1], f"${{{m[1]}}}")), text)
    raise ValueError(f"cannot render {value!r}")
