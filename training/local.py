"""Run the training pipeline's steps on this machine: the same code, pointed at local folders.

    .venv/bin/python -m training.local --labels datasets/reference-tags/labels.jsonl --output local-run
    .venv/bin/python -m training.local --synthetic 80 --epochs 3 --image-size 160 --output local-run
    .venv/bin/python -m training.local --offline-store DIR --images DIR --output DIR [--champion model.tar.gz]

Data, one of:
* `--labels FILE`: a labels file in the seed-file form (JSON lines or CSV, see labeling/README.md),
  images named relative to the file's folder; the repository's reference photos are one;
* `--offline-store DIR --images DIR`: a copy of the label feature group's offline-store parquet files
  (e.g. `aws s3 sync`) and a folder holding the labeled images (looked up by the S3 key of their URI,
  else by file name);
* `--synthetic N`: N generated tags with drawn scratches and their labels.

Defaults come from the `training:` section of config.yaml (the same defaults the pipeline uses).
`--champion model.tar.gz` scores an approved model on the same test images, as the pipeline does with
the newest approved model package; `--tune N` first searches the configured tuning ranges with N
training runs (random search) and evaluates the best like any other model.

The run writes to `--output`: `model.tar.gz` (the archive a model package points to),
`manifest.json` (the dataset manifest), `qa_report.json`, `evaluation.json` (test-split metrics with
intervals, the comparison, the gate's verdict), `gate.json`, `report/index.html` (the evaluation
report) and, with `--tune`, `tuning.json`; intermediate folders go under `work/`. `run_local()` is the
same run as a function.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.config import DEFAULT_CONFIG_FILE, Settings, TuningRanges, load_settings
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
from training.steps.evaluate import evaluate_and_package, load_champion, read_model_archive
from training.steps.evaluation_results import Evaluation, EvaluationReport
from training.steps.gate import FAIL, GateDecision
from training.steps.prepare import PreparedDataset, SplitPlan, prepare_dataset
from training.steps.scoring import EvaluationError
from training.steps.train import TRAINING_SUMMARY_FILE, TrainConfig, TrainingError, TrainResult, train_model

GATE_FILE = "gate.json"
TUNING_FILE = "tuning.json"
SYNTHETIC_BUCKET = "local-synthetic"
LABELS_BUCKET = "local-labels"


@dataclass(frozen=True)
class LocalRunOptions:
    """Everything a run can set; `from_settings()` takes every value from config.yaml (their one source)."""

    class_names: tuple[str, ...]
    model_size: str
    epochs: int
    image_size: int
    batch_size: int
    patience: int
    optimizer: str
    learning_rate: float
    augmentation: dict[str, float]
    min_images: int
    validation_fraction: float
    test_fraction: float
    min_validation_images: int
    min_test_images: int
    min_test_defects: int
    map50_95_threshold: float
    regression_margin: float
    confidence_threshold: float
    iou_threshold: float
    onnx_opset: int
    quantize_int8: bool
    pretrained_weights: Path | None = None
    champion: Path | None = None  # an approved model's model.tar.gz to compare with
    device: str | None = None
    workers: int = 0
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> LocalRunOptions:
        training = settings.training
        defaults: dict[str, Any] = {
            "class_names": tuple(settings.project.class_names),
            **{f.name: getattr(training, f.name) for f in fields(cls) if hasattr(training, f.name)},
            "augmentation": training.augmentation.model_dump(),
        }
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            model_size=self.model_size,
            epochs=self.epochs,
            image_size=self.image_size,
            batch_size=self.batch_size,
            patience=self.patience,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            augmentation=dict(self.augmentation),
            onnx_opset=self.onnx_opset,
            seed=self.seed,
            workers=self.workers,
            device=self.device,
            pretrained_weights=self.pretrained_weights,
        )

    @property
    def split_plan(self) -> SplitPlan:
        return SplitPlan(
            validation_fraction=self.validation_fraction,
            test_fraction=self.test_fraction,
            min_validation_images=self.min_validation_images,
            min_test_images=self.min_test_images,
            min_test_defects=self.min_test_defects,
        )


@dataclass(frozen=True)
class Trial:
    """One training run of a local search: its hyperparameters and the kept weights' validation mAP50-95."""

    number: int
    model_size: str
    epochs: int
    image_size: int
    learning_rate: float
    objective: float

    def to_json(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "model_size": self.model_size,
            "epochs": self.epochs,
            "image_size": self.image_size,
            "learning_rate": self.learning_rate,
            "best_mAP50-95": self.objective,
        }


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
    options: LocalRunOptions  # as trained (after tuning: the best trial's hyperparameters)
    evaluation: EvaluationReport
    evaluation_path: Path
    details: Evaluation
    gate: GateDecision
    gate_path: Path
    report_path: Path
    trials: list[Trial] = field(default_factory=list)


def sample_trials(ranges: TuningRanges, count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """`count` random points of the tuning ranges (learning rate on a log scale, as the pipeline's tuning)."""
    rng = random.Random(seed)
    low, high = ranges.learning_rate
    return [
        {
            "model_size": rng.choice(ranges.model_size),
            "epochs": rng.randint(*ranges.epochs),
            "image_size": rng.choice(ranges.image_size),
            "learning_rate": math.exp(rng.uniform(math.log(low), math.log(high))),
        }
        for _ in range(count)
    ]


def tune(
    prepared: PreparedDataset,
    options: LocalRunOptions,
    ranges: TuningRanges,
    trials: int,
    *,
    work: Path,
    log: Callable[[str], None] = print,
) -> tuple[LocalRunOptions, TrainResult, list[Trial]]:
    """Train `trials` sampled configurations; the one whose kept weights validate best wins."""
    if trials < 1:
        raise ValueError("--tune needs at least one trial")
    done: list[tuple[Trial, LocalRunOptions, TrainResult]] = []
    for number, point in enumerate(sample_trials(ranges, trials, seed=options.seed), start=1):
        trial_options = replace(options, **point)
        log(f"      trial {number}/{trials}: {point}")
        result = train_model(
            prepared.root,
            work / f"trial-{number}" / "model",
            trial_options.train_config(),
            checkpoint_dir=work / f"trial-{number}" / "checkpoints",
            log=log,
        )
        objective = float(result.best.get("mAP50-95", float("nan")))
        done.append((Trial(number, objective=objective, **point), trial_options, result))
    ranked = sorted(done, key=lambda item: -item[0].objective if not math.isnan(item[0].objective) else math.inf)
    best_trial, best_options, best_result = ranked[0]
    log(f"      best: trial {best_trial.number} (validation mAP50-95 {best_trial.objective:.4f})")
    return best_options, best_result, [trial for trial, _, _ in done]


def run_local(
    *,
    offline_store: str | Path,
    images: str | Path,
    output: str | Path,
    options: LocalRunOptions,
    tune_trials: int = 0,
    tuning_ranges: TuningRanges | None = None,
    log: Callable[[str], None] = print,
) -> LocalRunResult:
    """Export/QA, split/convert, train (or tune), export ONNX, evaluate against the champion, package, gate."""
    out = Path(output)
    work = out / "work"
    store = LocalImageStore(images)
    champion = None
    if options.champion is not None:  # read before hours of training: a broken archive fails the run now
        champion = load_champion(options.champion, package=str(options.champion), work_dir=work / "champion")
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
    prepared = prepare_dataset(exported.manifest, store, work / "yolo", plan=options.split_plan)
    log(f"      images per split: {dict(prepared.counts)}")
    trials: list[Trial] = []
    if tune_trials:
        log(f"[3/5] tune: {tune_trials} training run(s) over the configured ranges")
        options, trained, trials = tune(
            prepared, options, tuning_ranges or TuningRanges(), tune_trials, work=work / "tuning", log=log
        )
        (out / TUNING_FILE).write_text(json.dumps([t.to_json() for t in trials], indent=1), encoding="utf-8")
    else:
        log(f"[3/5] train YOLOv8{options.model_size} for {options.epochs} epoch(s) at {options.image_size} px")
        trained = train_model(
            prepared.root, work / "model", options.train_config(), checkpoint_dir=work / "checkpoints", log=log
        )
    log(
        "[4/5] evaluate the ONNX model on the test split" + (f" against {options.champion}" if options.champion else "")
    )
    evaluation, archive = evaluate_and_package(
        trained.onnx_path,
        prepared.root,
        evaluation_dir=out,
        package_dir=out,
        image_size=options.image_size,
        confidence_threshold=options.confidence_threshold,
        iou_threshold=options.iou_threshold,
        map50_95_threshold=options.map50_95_threshold,
        regression_margin=options.regression_margin,
        onnx_opset=options.onnx_opset,
        work_dir=work / "evaluate",
        champion=champion,
        training_summary=trained.onnx_path.parent / TRAINING_SUMMARY_FILE,
        quantize_int8=options.quantize_int8,
    )
    report = evaluation.report
    if report.int8 is not None:
        int8 = report.int8
        log(f"      INT8: {int8['error']}" if "error" in int8 else f"      INT8 mAP50 {int8['int8']['mAP50']:.4f}")
    intervals = report.intervals
    log(
        "      "
        + ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
        + "".join(f"; {k} 95% interval {v[0]:.4f}-{v[1]:.4f}" for k, v in intervals.items())
    )
    log("[5/5] quality gate")
    gate = evaluation.decision
    gate_path = out / GATE_FILE
    gate_path.write_text(json.dumps(gate.to_json(), indent=1), encoding="utf-8")
    log(f"      {gate.verdict.upper()}: {gate.reason}")
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
        options=options,
        evaluation=report,
        evaluation_path=out / "evaluation.json",
        details=evaluation,
        gate=gate,
        gate_path=gate_path,
        report_path=out / "report" / "index.html",
        trials=trials,
    )


# --------------------------------------------------------------------------------------------------
# Data sources: synthetic tags, or a labels file in the seed-file form
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


def labels_file_records(path: str | Path, class_names: Sequence[str]) -> list[LabelRecord]:
    """The records of a labels file in the seed-file form; images are named relative to its folder.

    A malformed row fails with its line number: a local run trains on the whole file or not at all.
    """
    from labeling.runtime.seeding import parse_seed_file  # noqa: PLC0415 - the one parser of the seed-file form

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DatasetError(f"labels file {path}: {error}") from None
    seed = parse_seed_file(text, filename=path.name, class_names=class_names, base_uri=f"s3://{LABELS_BUCKET}/")
    if seed.errors:
        listed = "; ".join(str(error) for error in seed.errors[:5])
        raise DatasetError(f"labels file {path}: {len(seed.errors)} malformed row(s): {listed}")
    if not seed.records:
        raise DatasetError(f"labels file {path} holds no labels")
    return seed.records


def labels_file_source(path: str | Path, directory: str | Path, class_names: Sequence[str]) -> tuple[Path, Path]:
    """(offline store, image folder) for a labels file: its records as an offline store under `directory`."""
    records = labels_file_records(path, class_names)
    store = Path(directory) / "offline-store"
    write_offline_store(records, store)
    return store, Path(path).resolve().parent


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

_OVERRIDES = (
    "model_size",
    "epochs",
    "image_size",
    "batch_size",
    "patience",
    "learning_rate",
    "min_images",
    "min_validation_images",
    "min_test_images",
    "min_test_defects",
    "map50_95_threshold",
    "regression_margin",
    "pretrained_weights",
    "champion",
    "device",
    "workers",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.local",
        description="Run export/QA, split/convert, training, ONNX export, evaluation and the quality gate locally.",
    )
    source = parser.add_argument_group("data: --labels, --synthetic, or --offline-store and --images")
    source.add_argument("--labels", type=Path, help="labels file in the seed-file form (images relative to it)")
    source.add_argument("--offline-store", type=Path, help="folder of the label feature group's parquet files")
    source.add_argument("--images", type=Path, help="folder of the labeled images")
    source.add_argument("--synthetic", type=int, metavar="N", help="generate N synthetic tags and labels instead")
    parser.add_argument("--output", type=Path, required=True, help="folder for model.tar.gz and the reports")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG_FILE, help="configuration file for defaults")
    parser.add_argument("--env", help="environment of the configuration whose overrides apply")
    tune_group = parser.add_argument_group("overrides of the training: section")
    tune_group.add_argument("--model-size", choices=["n", "s", "m", "l", "x"])
    tune_group.add_argument("--epochs", type=int)
    tune_group.add_argument("--image-size", type=int)
    tune_group.add_argument("--batch-size", type=int)
    tune_group.add_argument("--patience", type=int, help="epochs without improvement before training stops")
    tune_group.add_argument("--learning-rate", type=float)
    tune_group.add_argument("--min-images", type=int)
    tune_group.add_argument("--min-validation-images", type=int)
    tune_group.add_argument("--min-test-images", type=int)
    tune_group.add_argument("--min-test-defects", type=int)
    tune_group.add_argument("--threshold", type=float, dest="map50_95_threshold", help="gate: first model's minimum")
    tune_group.add_argument("--margin", type=float, dest="regression_margin", help="gate: allowed drop vs champion")
    tune_group.add_argument("--champion", type=Path, help="the approved model's model.tar.gz, to compare with")
    tune_group.add_argument("--pretrained-weights", type=Path, help="Ultralytics .pt file to start from")
    tune_group.add_argument("--device", help="cpu, 0, 0,1 ... (default: first GPU, else CPU)")
    tune_group.add_argument("--workers", type=int, help="data loader processes (default 0)")
    parser.add_argument("--tune", type=int, metavar="N", default=0, help="search the tuning ranges with N runs first")
    parser.add_argument("--require-gate", action="store_true", help="exit with status 2 when the gate fails")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    sources = [args.labels is not None, args.synthetic is not None, args.offline_store is not None]
    if sum(sources) != 1 or (args.offline_store is None) != (args.images is None):
        parser.error("give one data source: --labels FILE, --synthetic N, or both --offline-store and --images")
    settings = load_settings(args.config, environment=args.env)
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    class_names = settings.project.class_names
    try:
        if args.synthetic is not None:
            source = write_synthetic_source(args.output / "synthetic", args.synthetic, num_classes=len(class_names))
            offline_store, images = source.offline_store, source.images
            overrides["min_images"] = overrides["min_images"] or min(settings.training.min_images, args.synthetic)
        elif args.labels is not None:
            offline_store, images = labels_file_source(args.labels, args.output / "labels", class_names)
        else:
            offline_store, images = args.offline_store, args.images
        options = LocalRunOptions.from_settings(settings, **overrides)
        result = run_local(
            offline_store=offline_store,
            images=images,
            output=args.output,
            options=options,
            tune_trials=args.tune,
            tuning_ranges=settings.training.tuning.ranges,
        )
    except (DatasetError, TrainingError, EvaluationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"model archive: {result.archive}")
    print(f"dataset manifest: {result.dataset_manifest_path} ({result.dataset.dataset_version})")
    print(f"evaluation report: {result.report_path}")
    return 2 if args.require_gate and result.gate.verdict == FAIL else 0


if __name__ == "__main__":
    sys.exit(main())
