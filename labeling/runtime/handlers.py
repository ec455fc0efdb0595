"""Lambda handlers of the labeling app: thin wrappers over `rounds` and `seeding`.

Every handler reads the deployment's settings from LABELING_CONFIG, builds its boto3 clients once per
container (adaptive retries for throttling), and returns small JSON documents: file lists travel
through S3, never through the state machine's payload.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import boto3
from aws_lambda_powertools import Logger

from labeling.runtime import label_studio, pre_labels, rounds
from labeling.runtime.config import LabelingConfig
from labeling.runtime.errors import SeedFileError
from labeling.runtime.feature_store import client_config
from labeling.runtime.ground_truth import RunIdentity
from labeling.runtime.s3io import read_text, write_text
from labeling.runtime.seeding import import_seed_records, parse_seed_file
from shared.runtime import cfn_response

logger = Logger()


@functools.cache
def _config() -> LabelingConfig:
    return LabelingConfig.from_environment()


@functools.cache
def _client(service: str) -> Any:
    return boto3.client(service, config=client_config())


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ["AWS_DEFAULT_REGION"]


def _time_left(context: Any) -> Callable[[], float]:
    return lambda: context.get_remaining_time_in_millis() / 1000.0


@logger.inject_lambda_context
def start_round(event: Mapping[str, Any], context: Any) -> dict[str, str]:
    """Event: execution_arn, start_time, state_machine_arn (from the Step Functions context object)."""
    run = rounds.start_round(
        _client("stepfunctions"),
        config=_config(),
        state_machine_arn=event["state_machine_arn"],
        execution_arn=event["execution_arn"],
        start_time=event["start_time"],
    )
    logger.info("labeling round started", extra={"run": run})
    return run


@logger.inject_lambda_context
def find_unlabeled(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run (from start_round), cursor (from the previous call, or the initial one)."""
    config = _config()
    run = RunIdentity.from_json(event["run"])
    cursor = rounds.find_unlabeled_images(
        _client("s3"),
        _client("sagemaker-featurestore-runtime"),
        bucket=config.data_bucket,
        prefix=config.raw_prefix,
        feature_group=config.feature_group,
        run_prefix=run.prefix,
        cursor=rounds.FindCursor.from_json(event.get("cursor")),
        time_left=_time_left(context),
    )
    logger.info("listed raw images", extra={"cursor": cursor.to_json()})
    return cursor.to_json()


@logger.inject_lambda_context
def select_images(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run. Spends the round's budget on the most informative candidates (`<round>/selected.jsonl`)."""
    config = _config()
    run = RunIdentity.from_json(event["run"])
    result = rounds.select_images(
        _client("s3"), bucket=config.data_bucket, run_prefix=run.prefix, budget=config.max_images_per_job
    )
    logger.info("images selected", extra={"selection": result})
    return result


@logger.inject_lambda_context
def pre_label(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run, cursor. The newest approved model's boxes for the selection (nothing without such a model)."""
    config = _config()
    run = RunIdentity.from_json(event["run"])
    cursor = pre_labels.pre_label_images(
        _client("s3"),
        _client("sagemaker"),
        bucket=config.data_bucket,
        run_prefix=run.prefix,
        group_name=config.model_package_group,
        images=rounds.read_selected(_client("s3"), bucket=config.data_bucket, run_prefix=run.prefix),
        cursor=pre_labels.PreLabelCursor.from_json(event.get("cursor")),
        time_left=_time_left(context),
    )
    logger.info("pre-labels", extra={"cursor": cursor.to_json()})
    return cursor.to_json()


@logger.inject_lambda_context
def prepare_labeling(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run. Returns the bounding-box job's request (or images: 0 when nothing can be labeled)."""
    result = rounds.prepare_labeling_job(
        _client("s3"), config=_config(), run=RunIdentity.from_json(event["run"]), region=_region()
    )
    logger.info("bounding-box job prepared", extra={k: v for k, v in result.items() if k != "request"})
    return result


@logger.inject_lambda_context
def prepare_review(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run, boxes_output (the bounding-box job's output manifest URI)."""
    result = rounds.prepare_review_job(
        _client("s3"),
        config=_config(),
        run=RunIdentity.from_json(event["run"]),
        boxes_output_uri=event["boxes_output"],
        region=_region(),
    )
    logger.info("review job prepared", extra={k: v for k, v in result.items() if k != "request"})
    return result


@logger.inject_lambda_context
def write_labels(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run, review_output (the review job's output manifest URI), cursor."""
    cursor = rounds.write_labels(
        _client("s3"),
        _client("sagemaker-featurestore-runtime"),
        config=_config(),
        run=RunIdentity.from_json(event["run"]),
        review_output_uri=event["review_output"],
        cursor=rounds.WriteCursor.from_json(event.get("cursor")),
        time_left=_time_left(context),
    )
    logger.info("labels written", extra={"cursor": cursor.to_json()})
    return cursor.to_json()


# --------------------------------------------------------------------------------------------------
# Label Studio
# --------------------------------------------------------------------------------------------------


def _label_studio(config: LabelingConfig) -> Any:
    """A client per invocation: a rotated API token is read again on the next call."""
    return label_studio.client_for(config, _client("secretsmanager"))


@logger.inject_lambda_context
def prepare_label_studio_tasks(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run. The round's boxes tasks (new ones with pre-labels, live ones taken over) and its view."""
    config = _config()
    result = label_studio.prepare_labeling_tasks(
        _label_studio(config),
        _client("s3"),
        _client("sagemaker-featurestore-runtime"),
        config=config,
        run=RunIdentity.from_json(event["run"]),
        region=_region(),
    )
    logger.info("Label Studio tasks ready", extra={"labeling": result})
    return result


@logger.inject_lambda_context
def label_studio_progress(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run, project, deadline. How many of the round's tasks have an answer (after each Wait)."""
    config = _config()
    result = label_studio.progress(
        _label_studio(config),
        project_id=int(event["project"]),
        run_id=RunIdentity.from_json(event["run"]).id,
        deadline=str(event["deadline"]),
    )
    logger.info("Label Studio progress", extra={"progress": result})
    return result


@logger.inject_lambda_context
def prepare_label_studio_review(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run. Review tasks for every answered boxes task of the round."""
    config = _config()
    result = label_studio.prepare_review_tasks(
        _label_studio(config),
        _client("s3"),
        config=config,
        run=RunIdentity.from_json(event["run"]),
        region=_region(),
    )
    logger.info("Label Studio review ready", extra={"review": result})
    return result


@logger.inject_lambda_context
def write_label_studio_labels(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """Event: run, cursor. The reviewed labels into the feature group; their tasks marked settled."""
    config = _config()
    cursor = label_studio.write_labels(
        _label_studio(config),
        _client("s3"),
        _client("sagemaker-featurestore-runtime"),
        config=config,
        run=RunIdentity.from_json(event["run"]),
        cursor=rounds.WriteCursor.from_json(event.get("cursor")),
        time_left=_time_left(context),
    )
    logger.info("labels written", extra={"cursor": cursor.to_json()})
    return dict(cursor.to_json())


# --------------------------------------------------------------------------------------------------
# Deploy-time seeding (a CloudFormation custom resource)
# --------------------------------------------------------------------------------------------------


def seed_from_s3(
    s3: Any,
    featurestore: Any,
    *,
    config: LabelingConfig,
    bucket: str,
    key: str,
    filename: str,
    base_uri: str,
    time_left: Callable[[], float],
) -> dict[str, Any]:
    """Import a seed file that CDK shipped as an asset; returns the counts reported to CloudFormation."""
    try:
        text = read_text(s3, bucket, key)
    except UnicodeDecodeError:
        raise SeedFileError(f"{filename}: not UTF-8 text") from None
    seed = parse_seed_file(text, filename=filename, class_names=config.class_names, base_uri=base_uri)
    for error in seed.errors:
        logger.warning("malformed seed row", extra={"file": filename, "line": error.line, "problem": error.message})
    if seed.rows and not seed.records:
        raise SeedFileError(
            f"{filename}: none of its {seed.rows} row(s) is valid; first problems: "
            + "; ".join(str(e) for e in seed.errors[:5])
        )
    report, handled = import_seed_records(
        featurestore, config.feature_group, seed.records, should_stop=lambda: time_left() < rounds.MIN_SECONDS_LEFT * 2
    )
    if handled < len(seed.records):
        raise SeedFileError(
            f"{filename}: too large to import while deploying ({handled} of {len(seed.records)} records done, "
            "all kept); import it with `python -m labeling.seed` and deploy again"
        )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    report_uri = write_text(
        s3,
        config.data_bucket,
        f"{config.jobs_prefix}seed-reports/{digest}.json",
        json.dumps(
            {
                "file": filename,
                "rows": seed.rows,
                "valid": len(seed.records),
                "malformed": [{"line": e.line, "problem": e.message} for e in seed.errors],
                **report.to_json(),
            },
            indent=2,
        ),
        content_type="application/json",
    )
    return {
        "Rows": seed.rows,
        "Valid": len(seed.records),
        "Malformed": len(seed.errors),
        **{name.capitalize(): count for name, count in report.to_json().items()},
        "Report": report_uri,
    }


def seed_resource(event: Mapping[str, Any], context: Any) -> None:
    """Custom resource: import the seed file on Create and Update; on Delete, keep every label."""
    properties = event.get("ResourceProperties", {})
    physical_id = f"label-seed-{properties.get('FeatureGroup', 'labels')}"
    try:
        data: dict[str, Any] = {}
        if event["RequestType"] in ("Create", "Update"):
            data = seed_from_s3(
                _client("s3"),
                _client("sagemaker-featurestore-runtime"),
                config=_config(),
                bucket=properties["SeedBucket"],
                key=properties["SeedKey"],
                filename=properties["FileName"],
                base_uri=properties["BaseUri"],
                time_left=_time_left(context),
            )
            logger.info("seed file imported", extra=data)
        cfn_response.send(event, "SUCCESS", reason="seed labels imported", physical_id=physical_id, data=data)
    except Exception as error:
        logger.exception("seeding failed")
        cfn_response.send(event, "FAILED", reason=f"{type(error).__name__}: {error}", physical_id=physical_id)
