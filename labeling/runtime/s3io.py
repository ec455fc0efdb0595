"""Small S3 helpers shared by the workflow steps and the seeding code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from botocore.exceptions import ClientError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"s3:// URI needs a bucket and a key: {uri!r}")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def is_missing(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def read_text(s3: Any, bucket: str, key: str) -> str:
    body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body.decode("utf-8")


def write_text(s3: Any, bucket: str, key: str, text: str, *, content_type: str = "text/plain") -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)
    return s3_uri(bucket, key)


def write_jsonl(s3: Any, bucket: str, key: str, rows: Iterable[Mapping[str, Any]]) -> str:
    text = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
    return write_text(s3, bucket, key, text, content_type="application/jsonl")


def read_jsonl(s3: Any, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    for line in read_text(s3, bucket, key).splitlines():
        if line.strip():
            yield json.loads(line)


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Every key under `prefix`, in S3's (lexicographic) order."""
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(item["Key"] for item in page.get("Contents", []))
    return keys
