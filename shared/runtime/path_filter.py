"""Starts an app's asset pipeline for CodeCommit pushes that touch the app's paths.

CodePipeline's file-path triggers exist only for connection sources (GitHub, GitLab, Bitbucket);
for CodeCommit this function reads the pushed range of commits and decides. Patterns are the same
globs the connection trigger uses (`training/**`, `**/*.md`).
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import boto3
from aws_lambda_powertools import Logger

logger = Logger()

# CodeCommit reports a new branch with this as its previous commit.
_NO_COMMIT = "0000000000000000000000000000000000000000"


@functools.cache
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob with globstar: `**/` is any number of folders (none too), `**` anything, `*` and `?` stay in a folder."""
    parts = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts))


def matches(path: str, *, includes: Sequence[str], excludes: Sequence[str] = ()) -> bool:
    """True when `path` matches an include glob and no exclude glob (excludes win, as in CodePipeline)."""
    if any(_glob_regex(pattern).fullmatch(path) for pattern in excludes):
        return False
    return any(_glob_regex(pattern).fullmatch(path) for pattern in includes)


def changed_paths(codecommit: Any, *, repository: str, before: str | None, after: str) -> Iterable[str]:
    """Every path added, changed or removed between two commits (old and new path of a move)."""
    request: dict[str, Any] = {"repositoryName": repository, "afterCommitSpecifier": after}
    if before and before != _NO_COMMIT:
        request["beforeCommitSpecifier"] = before
    paginator = codecommit.get_paginator("get_differences")
    for page in paginator.paginate(**request):
        for difference in page.get("differences", []):
            for side in ("beforeBlob", "afterBlob"):
                blob = difference.get(side)
                if blob and blob.get("path"):
                    yield blob["path"]


def decide_and_start(
    event: dict[str, Any],
    *,
    codecommit: Any,
    codepipeline: Any,
    pipeline_name: str,
    source_action_name: str,
    includes: Sequence[str],
    excludes: Sequence[str] = (),
) -> dict[str, Any]:
    """Start `pipeline_name` at the pushed commit if any changed path is included and not excluded."""
    detail = event.get("detail") or {}
    missing = [key for key in ("repositoryName", "commitId") if not detail.get(key)]
    if missing:
        raise ValueError(f"CodeCommit event without detail.{missing[0]}: not a reference change event")
    repository, after = detail["repositoryName"], detail["commitId"]
    for path in changed_paths(codecommit, repository=repository, before=detail.get("oldCommitId"), after=after):
        if matches(path, includes=includes, excludes=excludes):
            response = codepipeline.start_pipeline_execution(
                name=pipeline_name,
                sourceRevisions=[
                    {"actionName": source_action_name, "revisionType": "COMMIT_ID", "revisionValue": after}
                ],
            )
            logger.info("started pipeline", extra={"path": path, "commit": after, "pipeline": pipeline_name})
            return {"started": True, "path": path, "executionId": response["pipelineExecutionId"]}
    logger.info("no path of this push concerns the pipeline", extra={"commit": after, "pipeline": pipeline_name})
    return {"started": False}


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return decide_and_start(
        event,
        codecommit=boto3.client("codecommit"),
        codepipeline=boto3.client("codepipeline"),
        pipeline_name=os.environ["PIPELINE_NAME"],
        source_action_name=os.environ["SOURCE_ACTION_NAME"],
        **json.loads(os.environ["TRIGGER_PATHS"]),
    )
