"""Entry points of the pipeline's SageMaker jobs: `python -m training.steps.cli <step> [options]`.

The pipeline definition starts each processing and training container with a small bootstrap that
unpacks this code (a CDK asset), installs `requirements.txt` and runs this module. Every step reads
and writes the folders SageMaker maps to S3 (the defaults below); tests pass temporary folders.
A step that fails writes its reason where SageMaker shows it as the job's (and the pipeline step's)
failure reason.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.steps.dataset import (
    DatasetError,
    DatasetManifest,
    ExportOptions,
    S3ImageStore,
    export_dataset,
    offline_store_uri,
    parse_s3_uri,
    read_offline_store,
)
from training.steps.evaluate import ChampionModel, evaluate_and_package, load_champion
from training.steps.gate import NO_CHAMPION
from training.steps.prepare import SplitPlan, prepare_dataset
from training.steps.scoring import EvaluationError
from training.steps.train import TRAINING_SUMMARY_FILE, TrainConfig, TrainingError, train_model

PROCESSING = Path("/opt/ml/processing")
TRAINING_INPUT = Path("/opt/ml/input")
MODEL_DIR = Path("/opt/ml/model")
CHECKPOINT_DIR = Path("/opt/ml/checkpoints")
FAILURE_FILES = (Path("/opt/ml/output/failure"), Path("/opt/ml/output/message"))
MANIFEST_OBJECT = "manifest.json"


def _boto3_client(service: str) -> Any:
    import boto3  # noqa: PLC0415 - comes with the SageMaker containers and the Lambda runtime

    return boto3.client(service)


def publish_manifest(s3_client: Any, manifest_path: Path, prefix_uri: str, version: str) -> str:
    """Store the manifest at `<prefix>/<version>/manifest.json` once (a dataset version never changes)."""
    bucket, prefix = parse_s3_uri(prefix_uri.rstrip("/") + "/")
    key = f"{prefix}{version}/{MANIFEST_OBJECT}"
    try:
        s3_client.put_object(Bucket=bucket, Key=key, Body=manifest_path.read_bytes(), IfNoneMatch="*")
    except s3_client.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
            raise
    return f"s3://{bucket}/{key}"


# --------------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------------


def run_export(args: argparse.Namespace, *, s3_client: Any = None, sagemaker_client: Any = None) -> int:
    s3_client = s3_client or _boto3_client("s3")
    source = args.offline_store or offline_store_uri(sagemaker_client or _boto3_client("sagemaker"), args.feature_group)
    output = Path(args.output)
    result = export_dataset(
        read_offline_store(source, s3_client=s3_client),
        S3ImageStore(s3_client),
        output,
        options=ExportOptions(class_names=args.class_names, min_images=args.min_images, workers=args.workers),
        source=source,
    )
    properties = json.loads(result.property_path.read_text(encoding="utf-8"))
    if args.publish:
        properties["manifest_uri"] = publish_manifest(
            s3_client, result.manifest_path, args.publish, result.manifest.dataset_version
        )
    result.property_path.write_text(json.dumps(properties), encoding="utf-8")
    print(json.dumps({"export": properties, "dropped": len(result.report["dropped"])}))
    return 0


def run_prepare(args: argparse.Namespace, *, s3_client: Any = None) -> int:
    manifest_path = Path(args.manifest)
    if manifest_path.is_dir():
        manifest_path = manifest_path / MANIFEST_OBJECT
    manifest = DatasetManifest.read(manifest_path)
    plan = SplitPlan(
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
        min_validation_images=args.min_validation_images,
        min_test_images=args.min_test_images,
        min_test_defects=args.min_test_defects,
    )
    prepared = prepare_dataset(
        manifest, S3ImageStore(s3_client or _boto3_client("s3")), args.output, plan=plan, workers=args.workers
    )
    print(json.dumps({"dataset_version": prepared.dataset_version, "counts": prepared.counts, "boxes": prepared.boxes}))
    return 0


def _hyperparameters(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise TrainingError(f"no hyperparameters at {path}: the training job passes them")
    raw = json.loads(path.read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in raw.items()}


def download_weights(s3_client: Any, uri: str, destination: Path) -> Path:
    """The pretrained weights of the S3 URI parameter, or a TrainingError that says how to fix access."""
    bucket, key = parse_s3_uri(uri)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        s3_client.download_file(bucket, key, str(destination))
    except Exception as error:  # botocore raises ClientError or a transfer error wrapping it
        raise TrainingError(
            f"cannot read the pretrained weights {uri} ({error}); upload them under the model bucket's "
            "pretrained/ prefix, which the pipeline role may read, or leave the parameter empty"
        ) from None
    return destination


def run_train(args: argparse.Namespace, *, s3_client: Any = None) -> int:
    hyper = _hyperparameters(Path(args.hyperparameters))

    def fetch_weights(uri: str) -> Path:
        return download_weights(s3_client or _boto3_client("s3"), uri, Path(args.work) / "pretrained.pt")

    config = TrainConfig.from_hyperparameters(hyper, workers=args.workers, weights=fetch_weights)
    result = train_model(args.dataset, args.model_dir, config, checkpoint_dir=args.checkpoints)
    print(json.dumps({"onnx_output_shape": result.output_shape, "resumed_from_epoch": result.resumed_from_epoch}))
    return 0


def _unpack_model(model_input: Path, work: Path) -> Path:
    """The training job's output (`model.tar.gz`, or a folder already unpacked) as a folder."""
    if (model_input / "model.onnx").is_file():
        return model_input
    archives = sorted(model_input.glob("*.tar.gz"))
    if not archives:
        raise TrainingError(f"no model.tar.gz from the training step in {model_input}")
    target = work / "trained"
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archives[0], "r:gz") as archive:
        archive.extractall(target, filter="data")
    return target


def fetch_champion(s3_client: Any, package: str, url: str, work: Path) -> ChampionModel:
    """The approved model's archive from S3, unpacked; one that cannot be read fails, naming the package."""
    destination = work / "champion.tar.gz"
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        bucket, key = parse_s3_uri(url)
        s3_client.download_file(bucket, key, str(destination))
    except Exception as error:  # botocore raises ClientError or a transfer error wrapping it
        raise EvaluationError(f"the approved model {package} cannot be read from {url}: {error}") from None
    return load_champion(destination, package=package, work_dir=work)


def run_evaluate(args: argparse.Namespace, *, s3_client: Any = None) -> int:
    work = Path(args.work)
    model_dir = _unpack_model(Path(args.model), work)
    summary_path = model_dir / TRAINING_SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    trained_with = summary["config"]
    champion = None
    if args.champion_model_url != NO_CHAMPION:
        champion = fetch_champion(
            s3_client or _boto3_client("s3"), args.champion_package, args.champion_model_url, work
        )
    evaluation, archive = evaluate_and_package(
        model_dir / "model.onnx",
        args.dataset,
        evaluation_dir=args.evaluation_output,
        package_dir=args.package_output,
        image_size=int(trained_with["image_size"]),
        confidence_threshold=args.confidence_threshold,
        iou_threshold=args.iou_threshold,
        map50_95_threshold=args.map50_95_threshold,
        regression_margin=args.regression_margin,
        onnx_opset=int(trained_with["onnx_opset"]),
        work_dir=work / "evaluate",
        champion=champion,
        training_summary=summary_path,
        quantize_int8=args.quantize_int8 == "true",
    )
    print(
        json.dumps({"evaluation": evaluation.report.metrics, "gate": evaluation.report.gate, "archive": str(archive)})
    )
    return 0


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _class_names(value: str) -> list[str]:
    names = json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",")]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise argparse.ArgumentTypeError("class names: a JSON list or comma-separated names")
    return names


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m training.steps.cli")
    steps = root.add_subparsers(dest="step", required=True)
    workers = min(16, os.cpu_count() or 1)

    export = steps.add_parser("export", help="export and QA the approved labels; write the dataset manifest")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--feature-group", help="label feature group (its offline store is looked up)")
    where.add_argument("--offline-store", help="s3:// prefix of the offline-store parquet files")
    export.add_argument("--class-names", type=_class_names, required=True)
    export.add_argument("--min-images", type=int, required=True)
    export.add_argument("--output", default=str(PROCESSING / "output" / "export"))
    export.add_argument("--publish", help="s3:// prefix where the manifest is stored per dataset version")
    export.add_argument("--workers", type=int, default=workers)

    prepare = steps.add_parser("prepare", help="split and convert a dataset version to the YOLO layout")
    prepare.add_argument("--manifest", default=str(PROCESSING / "input" / "manifest"))
    prepare.add_argument("--output", default=str(PROCESSING / "output" / "dataset"))
    prepare.add_argument("--validation-fraction", type=float, required=True)
    prepare.add_argument("--test-fraction", type=float, required=True)
    prepare.add_argument("--min-validation-images", type=int, required=True)
    prepare.add_argument("--min-test-images", type=int, required=True)
    prepare.add_argument("--min-test-defects", type=int, required=True)
    prepare.add_argument("--workers", type=int, default=workers)

    train = steps.add_parser("train", help="train and export ONNX (SageMaker training job layout)")
    train.add_argument("--hyperparameters", default=str(TRAINING_INPUT / "config" / "hyperparameters.json"))
    train.add_argument("--dataset", default=str(TRAINING_INPUT / "data" / "dataset"))
    train.add_argument("--model-dir", default=str(MODEL_DIR))
    train.add_argument("--checkpoints", default=str(CHECKPOINT_DIR))
    train.add_argument("--work", default="/tmp/training")  # noqa: S108 - the container's scratch space
    train.add_argument("--workers", type=int, default=min(8, workers))

    evaluate = steps.add_parser("evaluate", help="evaluate on the test split; build model.tar.gz")
    evaluate.add_argument("--model", default=str(PROCESSING / "input" / "model"))
    evaluate.add_argument("--dataset", default=str(PROCESSING / "input" / "dataset"))
    evaluate.add_argument("--evaluation-output", default=str(PROCESSING / "output" / "evaluation"))
    evaluate.add_argument("--package-output", default=str(PROCESSING / "output" / "package"))
    evaluate.add_argument("--confidence-threshold", type=float, required=True)
    evaluate.add_argument("--iou-threshold", type=float, required=True)
    evaluate.add_argument("--map50-95-threshold", type=float, required=True, help="gate for a group's first model")
    evaluate.add_argument("--regression-margin", type=float, required=True, help="allowed drop below the champion")
    evaluate.add_argument("--champion-package", required=True, help=f"approved model package ARN, or {NO_CHAMPION}")
    evaluate.add_argument("--champion-model-url", required=True, help=f"its model.tar.gz (s3://), or {NO_CHAMPION}")
    evaluate.add_argument("--quantize-int8", choices=["true", "false"], required=True, help="also ship an INT8 model")
    evaluate.add_argument("--work", default="/tmp/evaluation")  # noqa: S108
    return root


def report_failure(message: str) -> None:
    """Print the reason, and hand it to SageMaker (shown as the job's and the step's failure reason)."""
    print(f"error: {message}", file=sys.stderr)
    for path in FAILURE_FILES:
        if path.parent.is_dir():
            path.write_text(message[:1000], encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {"export": run_export, "prepare": run_prepare, "train": run_train, "evaluate": run_evaluate}
    try:
        return handlers[args.step](args)
    except (DatasetError, TrainingError, EvaluationError, ValueError) as error:
        report_failure(f"{args.step}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
