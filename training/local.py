"""Run the training pipeline's steps on this machine: the same code, pointed at local folders.

    .venv/bin/python -m training.local --synthetic 80 --epochs 3 --image-size 160 --output local-run
    .venv/bin/python -m training.local --offline-store DIR --images DIR --output DIR [--epochs N ...]

`--offline-store` is a folder of the label feature group's offline-store parquet files (a copy of
the S3 prefix, e.g. `aws s3 sync`), `--images` a folder holding the labeled images (looked up by the
S3 key of their URI, else by file name). `--synthetic N` generates N engraved tags with drawn
scratches and their labels instead. Defaults come from the `training:` section of config.yaml.

The run writes to `--output`: `model.tar.gz` (the archive a model package points to),
`manifest.json` (the dataset manifest), `qa_report.json`, `evaluation.json` (test-split metrics) and
`gate.json` (the quality gate's verdict), with the intermediate folders under `work/`.
`run_local()` is the same run as a function.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import DEFAULT_CONFIG_FILE, Settings, load_settings
from shared.contracts import LabelRecord, ModelManifest, format_event_time
from shared.synthetic import Sample, write_dataset
from training.steps.dataset import (
    DatasetError,
    DatasetManifest,
    ExportOptions,
    LocalImageStore,
    export_dataset,
    read_offline_store,
    write_offline_store,
)
from training.steps.evaluate import EvaluationReport, evaluate_and_package, read_model_archive
from training.steps.gate import Baseline, GateDecision, decide
from training.steps.prepare import PreparedDataset, prepare_dataset
from training.steps.train import TrainConfig, TrainingError, TrainResult, train_model

GATE_FILE = "gate.json"
SYNTHETIC_BUCKET = "local-synthetic"


@dataclass(frozen=True)
class LocalRunOptions:
    """Everything a run can tune; `from_settings()` takes the defaults from config.yaml."""

    class_names: tuple[str, ...]
    model_size: str = "n"
    epochs: int = 50
    image_size: int = 640
    batch_size: int = 16
    min_images: int = 50
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    map50_95_threshold: float = 0.5
    regression_margin: float = 0.02
    baseline_map50_95: float | None = None  # the approved model's value, to check for a regression
    confidence_threshold: float = 0.25
    iou_threshold: float = 0.45
    onnx_opset: int = 17
    pretrained_weights: Path | None = None
    device: str | None = None
    workers: int = 0
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LocalRunOptions:
        training = settings.training
        defaults: dict[str, Any] = {
            "class_names": tuple(settings.project.class_names),
            **{f.name: getattr(training, f.name) for f in fields(cls) if hasattr(training, f.name)},
        }
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)


@dataclass(frozen=True)
class LocalRunResult:
    output: Path
    archive: Path
    onnx_path: Path
    weights: Path
    manifest: ModelManifest
    dataset: DatasetManifest
    dataset_manifest_path: Path
    qa_report: dict[str, Any]
    qa_report_path: Path
    prepared: PreparedDataset
    training: TrainResult
    evaluation: EvaluationReport
    evaluation_path: Path
    gate: GateDecision
    gate_path: Path


def run_local(
    *,
    offline_store: str | Path,
    images: str | Path,
    output: str | Path,
    options: LocalRunOptions,
    log: Callable[[str], None] = print,
) -> LocalRunResult:
    """Export/QA, split/convert, train, export ONNX, evaluate on the test split, package and gate."""
    out = Path(output)
    work = out / "work"
    store = LocalImageStore(images)
    log(f"[1/5] export and QA of {offline_store}")
    exported = export_dataset(
        read_offline_store(offline_store),
        store,
        out,
        options=ExportOptions(class_names=options.class_names, min_images=options.min_images),
        source=str(offline_store),
    )
    log(
        f"      dataset {exported.manifest.dataset_version}: {exported.report['kept']} images kept, "
        f"{len(exported.report['dropped'])} dropped"
    )
    log("[2/5] split and convert to the YOLO layout")
    prepared = prepare_dataset(
        exported.manifest,
        store,
        work / "yolo",
        validation_fraction=options.validation_fraction,
        test_fraction=options.test_fraction,
    )
    log(f"      images per split: {dict(prepared.counts)}")
    log(f"[3/5] train YOLOv8{options.model_size} for {options.epochs} epoch(s) at {options.image_size} px")
    trained = train_model(
        prepared.root,
        work / "model",
        TrainConfig(
            model_size=options.model_size,
            epochs=options.epochs,
            image_size=options.image_size,
            batch_size=options.batch_size,
            onnx_opset=options.onnx_opset,
            seed=options.seed,
            workers=options.workers,
            device=options.device,
            pretrained_weights=options.pretrained_weights,
        ),
        checkpoint_dir=work / "checkpoints",
        log=log,
    )
    log("[4/5] evaluate the ONNX model on the test split and build model.tar.gz")
    report, archive = evaluate_and_package(
        trained.onnx_path,
        prepared.root,
        evaluation_dir=out,
        package_dir=out,
        image_size=options.image_size,
        confidence_threshold=options.confidence_threshold,
        iou_threshold=options.iou_threshold,
        onnx_opset=options.onnx_opset,
        work_dir=work / "evaluate",
    )
    log("      " + ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items()))
    log("[5/5] quality gate")
    baseline = (
        Baseline(package_arn="(given on the command line)", metric=options.baseline_map50_95)
        if options.baseline_map50_95 is not None
        else None
    )
    gate = decide(
        report.metrics["mAP50-95"],
        threshold=options.map50_95_threshold,
        baseline=baseline,
        margin=options.regression_margin,
    )
    gate_path = out / GATE_FILE
    gate_path.write_text(json.dumps(gate.to_json(), indent=1), encoding="utf-8")
    log(f"      {'PASSED' if gate.passed else 'FAILED'}: {gate.reason}")
    manifest, _, _ = read_model_archive(archive)
    return LocalRunResult(
        output=out,
        archive=archive,
        onnx_path=trained.onnx_path,
        weights=trained.weights,
        manifest=manifest,
        dataset=exported.manifest,
        dataset_manifest_path=exported.manifest_path,
        qa_report=exported.report,
        qa_report_path=exported.report_path,
        prepared=prepared,
        training=trained,
        evaluation=report,
        evaluation_path=out / "evaluation.json",
        gate=gate,
        gate_path=gate_path,
    )


# --------------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticSource:
    offline_store: Path
    images: Path
    samples: list[Sample] = field(default_factory=list)
    records: list[LabelRecord] = field(default_factory=list)


def synthetic_records(samples: Sequence[Sample], *, labeled_at: datetime | None = None) -> list[LabelRecord]:
    """Approved label records for synthetic samples, as labeling would write them."""
    from shared.contracts import Annotation  # noqa: PLC0415

    moment = format_event_time(labeled_at or datetime.now(UTC))
    return [
        LabelRecord(
            image_uri=f"s3://{SYNTHETIC_BUCKET}/raw-images/{sample.path.name}",
            event_time=moment,
            image_width=sample.width,
            image_height=sample.height,
            annotations=tuple(
                Annotation(class_id=b.class_id, x1=b.x1, y1=b.y1, x2=b.x2, y2=b.y2) for b in sample.boxes
            ),
            review_status="approved",
            labeling_job="synthetic",
        )
        for sample in samples
    ]


def write_synthetic_source(
    directory: str | Path,
    count: int,
    *,
    num_classes: int = 1,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    image_format: str = "jpg",
) -> SyntheticSource:
    """Synthetic tags (`images/`) and their approved labels as an offline store (`offline-store/`)."""
    root = Path(directory)
    samples = write_dataset(
        root / "images",
        count,
        seed=seed,
        width=width,
        height=height,
        num_classes=num_classes,
        image_format=image_format,
    )
    records = synthetic_records(samples)
    write_offline_store(records, root / "offline-store")
    return SyntheticSource(root / "offline-store", root / "images", samples, records)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.local",
        description="Run export/QA, split/convert, training, ONNX export, evaluation and the quality gate locally.",
    )
    source = parser.add_argument_group("data (either --synthetic, or --offline-store and --images)")
    source.add_argument("--offline-store", type=Path, help="folder of the label feature group's parquet files")
    source.add_argument("--images", type=Path, help="folder of the labeled images")
    source.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic tags and labels instead")
    parser.add_argument("--output", type=Path, required=True, help="folder for model.tar.gz and the reports")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file for defaults")
    parser.add_argument("--env", help="environment of the configuration whose overrides apply")
    tune = parser.add_argument_group("overrides of the training: section")
    tune.add_argument("--model-size", choices=["n", "s", "m", "l", "x"])
    tune.add_argument("--epochs", type=int)
    tune.add_argument("--image-size", type=int)
    tune.add_argument("--batch-size", type=int)
    tune.add_argument("--min-images", type=int)
    tune.add_argument("--threshold", type=float, dest="map50_95_threshold", help="quality gate: minimum mAP50-95")
    tune.add_argument("--margin", type=float, dest="regression_margin", help="quality gate: allowed regression")
    tune.add_argument("--baseline", type=float, dest="baseline_map50_95", help="approved model's mAP50-95")
    tune.add_argument("--pretrained-weights", type=Path, help="Ultralytics .pt file to start from")
    tune.add_argument("--device", help="cpu, 0, 0,1 ... (default: first GPU, else CPU)")
    tune.add_argument("--workers", type=int, help="data loader processes (default 0)")
    parser.add_argument("--require-gate", action="store_true", help="exit with status 2 when the gate fails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.synthetic is None and (args.offline_store is None or args.images is None):
        parser.error("give --synthetic N, or both --offline-store and --images")
    settings = load_settings(args.config, environment=args.env)
    overrides = {
        name: getattr(args, name)
        for name in (
            "model_size",
            "epochs",
            "image_size",
            "batch_size",
            "min_images",
            "map50_95_threshold",
            "regression_margin",
            "baseline_map50_95",
            "pretrained_weights",
            "device",
            "workers",
        )
    }
    if args.synthetic is not None:
        source = write_synthetic_source(
            args.output / "synthetic", args.synthetic, num_classes=len(settings.project.class_names)
        )
        offline_store, images = source.offline_store, source.images
        overrides["min_images"] = overrides["min_images"] or min(settings.training.min_images, args.synthetic)
    else:
        offline_store, images = args.offline_store, args.images
    try:
        options = LocalRunOptions.from_settings(settings, **overrides)
        result = run_local(offline_store=offline_store, images=images, output=args.output, options=options)
    except (DatasetError, TrainingError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"model archive: {result.archive}")
    print(f"dataset manifest: {result.dataset_manifest_path} ({result.dataset.dataset_version})")
    print(f"evaluation report: {result.evaluation_path}")
    return 2 if args.require_gate and not result.gate.passed else 0


if __name__ == "__main__":
    sys.exit(main())
