"""Step 4, evaluate: the new model and the approved one on the same test images, the gate's verdict,
the report, and the model archive the registered model package points to.

The exported ONNX model (the file the devices run, not the PyTorch weights) is evaluated on the
held-out **test** split, which training never saw (it validates on `val`):

* mAP50 and mAP50-95 are the standard, threshold-free values (Ultralytics' validator, confidence
  0.001, NMS at the deployment IoU threshold), each with a 95% bootstrap interval over test images;
* precision and recall are measured at the deployment confidence threshold, i.e. what the device
  will actually report, with a detection counted correct at IoU >= 0.5;
* the test split's statistics (`test_statistics` in model.json): the share of test images with a
  detection at that threshold and each image's top score, which the devices compare their own frames
  with (a model gone blind, an uncertainty rate drifting up).

When a **champion** exists (the approved model the devices run, `--champion` archive), it is scored
in the same run on the same test images, at its own input size and thresholds; test images it was
trained or validated on (its archive's `dataset.json`) are left out of the comparison. The paired
difference and its interval go to the gate (`training.steps.gate.decide`), whose verdict is written
into `evaluation.json` (the pipeline's property file: its condition steps read `gate.verdict`).

`build_model_archive()` writes `model.tar.gz` with `model.onnx` and `model.json`
(shared.contracts.ModelManifest, with the test split's statistics) at its root, as the edge
deployment expects, plus the reports and the dataset's split for the next run's comparison.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shared.contracts import (
    MANIFEST_FILE,
    MODEL_FILE,
    REQUIRED_METRICS,
    ContractError,
    ModelManifest,
    ModelVariant,
    SplitStatistics,
)
from training.steps import comparison
from training.steps.comparison import Comparison, ImageResult
from training.steps.dataset import DatasetError
from training.steps.evaluation_results import Evaluation, EvaluationReport, ModelEvaluation
from training.steps.gate import REGISTRY_METADATA, ChampionResult, decide
from training.steps.prepare import PREPARED_FILE, PreparedDataset, file_stem
from training.steps.scoring import EvaluationError, score_images
from training.steps.train import TRAINING_SUMMARY_FILE, TrainingError

LOG = logging.getLogger(__name__)

EVALUATION_FILE = "evaluation.json"
ARCHIVE_FILE = "model.tar.gz"


# --------------------------------------------------------------------------------------------------
# The champion: the approved model, unpacked from its archive
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionModel:
    package: str  # the model package ARN (or the archive's path for local runs): named in every message
    onnx_path: Path
    manifest: ModelManifest
    seen: frozenset[str] | None  # image URIs it was trained or validated on; None: its archive does not say


def load_champion(archive: str | Path, *, package: str, work_dir: str | Path) -> ChampionModel:
    """Unpack a champion's `model.tar.gz`; an archive that breaks the contract fails, naming the package."""
    target = Path(work_dir) / "champion"
    target.mkdir(parents=True, exist_ok=True)
    try:
        manifest, onnx_bytes, names = read_model_archive(archive)
        with tarfile.open(archive, "r:gz") as tar:
            split_file = tar.extractfile(PREPARED_FILE) if PREPARED_FILE in names else None
            splits = json.loads(split_file.read())["splits"] if split_file is not None else None
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as error:
        raise EvaluationError(f"the approved model {package} cannot be read: {error}") from None
    onnx_path = target / MODEL_FILE
    onnx_path.write_bytes(onnx_bytes)
    seen = frozenset(uri for uri, split in splits.items() if split != "test") if splits is not None else None
    return ChampionModel(package=package, onnx_path=onnx_path, manifest=manifest, seen=seen)


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def split_statistics(results: Sequence[ImageResult], confidence_threshold: float) -> SplitStatistics:
    return SplitStatistics(
        images=len(results),
        detection_rate=comparison.detection_rate(results, confidence_threshold),
        top_scores=tuple(r.top_score for r in results),
    )


def _per_class(results: Sequence[ImageResult], class_names: Sequence[str], confidence: float) -> dict[str, Any]:
    import numpy as np  # noqa: PLC0415

    per_class: dict[str, dict[str, float]] = {}
    labeled = sorted({int(c) for r in results for c in r.target_cls})
    for class_id in labeled:
        only = [
            ImageResult(
                name=r.name,
                tp=r.tp[r.pred_cls == class_id],
                conf=r.conf[r.pred_cls == class_id],
                pred_cls=r.pred_cls[r.pred_cls == class_id],
                target_cls=r.target_cls[r.target_cls == class_id],
            )
            for r in results
        ]
        map50, map50_95 = comparison.mean_average_precision(only)
        precision, recall = comparison.precision_recall_at(only, confidence)
        per_class[class_names[class_id]] = {
            "precision": precision,
            "recall": recall,
            "mAP50": map50,
            "mAP50-95": map50_95,
            "instances": float(np.sum([len(r.target_cls) for r in only])),
        }
    return per_class


def _evaluation(label: str, results: list[ImageResult], *, confidence: float, input_size: int) -> ModelEvaluation:
    precision, recall = comparison.precision_recall_at(results, confidence)
    return ModelEvaluation(
        label=label,
        results=results,
        score=comparison.score(results),
        precision=precision,
        recall=recall,
        confidence_threshold=confidence,
        input_size=input_size,
    )


def evaluate_model(
    onnx_path: str | Path,
    dataset_dir: str | Path,
    *,
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    map50_95_threshold: float,
    regression_margin: float,
    work_dir: str | Path,
    champion: ChampionModel | None = None,
) -> Evaluation:
    """Score the new model (and the champion) on the prepared dataset's test split; the gate's verdict."""
    dataset = PreparedDataset.load(dataset_dir)
    if dataset.counts.get("test", 0) == 0 or dataset.boxes.get("test", 0) == 0:
        raise DatasetError("the test split is empty or has no labeled defect; the model cannot be evaluated")
    work = Path(work_dir)
    results, validator = score_images(
        onnx_path, dataset, image_size=image_size, iou_threshold=iou_threshold, work_dir=work, name="challenger"
    )
    challenger = _evaluation("new model", results, confidence=confidence_threshold, input_size=image_size)
    # The same statistics as the validator's, regrouped per image: its mAP, up to the order of tied scores.
    if abs(challenger.score.map50_95 - validator["mAP50-95"]) > 0.01:
        raise EvaluationError(f"mAP50-95 {challenger.score.map50_95} differs from the validator's {validator}")

    champion_evaluation: ChampionEvaluation | None = None
    if champion is not None:
        champion_evaluation = _score_champion(champion, dataset, challenger=results, work=work)
    decision = decide(
        challenger.score.map50_95,
        dataset_version=dataset.dataset_version,
        threshold=map50_95_threshold,
        margin=regression_margin,
        champion=champion_evaluation.result if champion_evaluation else None,
    )
    statistics = split_statistics(results, confidence_threshold)
    report = EvaluationReport(
        metrics=challenger.metrics,
        intervals=challenger.score.to_json()["intervals"],
        split="test",
        images=int(dataset.counts["test"]),
        instances=sum(len(r.target_cls) for r in results),
        input_size=image_size,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        dataset_version=dataset.dataset_version,
        class_names=dataset.class_names,
        gate=decision.to_json(),
        test_statistics=statistics.to_json(),
        per_class=_per_class(results, dataset.class_names, confidence_threshold),
        champion=champion_evaluation.to_json() if champion_evaluation else None,
        comparison=champion_evaluation.comparison.to_json() if champion_evaluation else None,
        bootstrap={
            "samples": comparison.BOOTSTRAP_SAMPLES,
            "confidence": comparison.CONFIDENCE,
            "seed": comparison.BOOTSTRAP_SEED,
            "unit": "test image",
        },
    )
    return Evaluation(
        report=report,
        decision=decision,
        challenger=challenger,
        champion=champion_evaluation.evaluation if champion_evaluation else None,
        comparison=champion_evaluation.comparison if champion_evaluation else None,
        compared_images=champion_evaluation.compared if champion_evaluation else [],
        excluded_images=champion_evaluation.excluded if champion_evaluation else [],
        dataset=dataset,
    )


@dataclass(frozen=True)
class ChampionEvaluation:
    model: ChampionModel
    evaluation: ModelEvaluation
    comparison: Comparison
    compared: list[str]
    excluded: list[str]

    @property
    def result(self) -> ChampionResult:
        low, high = self.comparison.map50_95_interval.low, self.comparison.map50_95_interval.high
        return ChampionResult(
            package_arn=self.model.package,
            dataset_version=self.model.manifest.dataset_version,
            difference=self.comparison.map50_95_difference,
            interval=(low, high),
            images=len(self.compared),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.model.package,
            "dataset_version": self.model.manifest.dataset_version,
            **self.evaluation.to_json(),
            "excluded_images": len(self.excluded),
            "split_known": self.model.seen is not None,
        }


def _score_champion(
    champion: ChampionModel, dataset: PreparedDataset, *, challenger: list[ImageResult], work: Path
) -> ChampionEvaluation:
    manifest = champion.manifest
    if tuple(manifest.class_names) != tuple(dataset.class_names):
        raise EvaluationError(
            f"the approved model {champion.package} detects {list(manifest.class_names)}, this dataset "
            f"{list(dataset.class_names)}: they cannot be compared; reject it or keep the class list"
        )
    try:
        results, _ = score_images(
            champion.onnx_path,
            dataset,
            image_size=manifest.input_size,
            iou_threshold=manifest.iou_threshold,
            work_dir=work,
            name="champion",
        )
    except (TrainingError, EvaluationError, RuntimeError, ValueError) as error:
        raise EvaluationError(f"the approved model {champion.package} cannot be scored: {error}") from None
    by_name = {file_stem(uri): uri for uri, split in dataset.splits.items() if split == "test"}
    excluded = sorted(
        r.name for r in results if champion.seen is not None and by_name.get(Path(r.name).stem) in champion.seen
    )
    mine = [r for r in challenger if r.name not in excluded]
    theirs = [r for r in results if r.name not in excluded]
    if not any(len(r.target_cls) for r in mine):
        raise EvaluationError(
            f"the approved model {champion.package} was trained on every labeled test image of this run "
            f"({len(excluded)} excluded): the two cannot be compared fairly; label new images"
        )
    evaluation = _evaluation(
        "approved model", results, confidence=manifest.confidence_threshold, input_size=manifest.input_size
    )
    return ChampionEvaluation(
        model=champion,
        evaluation=evaluation,
        comparison=comparison.compare(mine, theirs),
        compared=[r.name for r in mine],
        excluded=excluded,
    )


def registry_metadata(evaluation: Evaluation, trained_with: Mapping[str, Any]) -> dict[str, str]:
    """What the person who approves sees on the model package, all strings (JsonGet-able by the pipeline)."""
    score = evaluation.challenger.score
    comparison_text = "none (first model)"
    if evaluation.comparison is not None:
        c = evaluation.comparison
        comparison_text = (
            f"{c.map50_95_difference:+.4f} ({c.map50_95_interval.low:+.4f} to {c.map50_95_interval.high:+.4f}) "
            f"on {len(evaluation.compared_images)} images"
        )
    values = {
        "mAP50-95": f"{score.map50_95:.4f}",
        "mAP50-95_interval": f"{score.map50_95_interval.low:.4f}-{score.map50_95_interval.high:.4f}",
        "mAP50": f"{score.map50:.4f}",
        "verdict": evaluation.decision.verdict,
        "champion_package": evaluation.decision.champion.package_arn if evaluation.decision.champion else "none",
        "difference_vs_champion": comparison_text,
        **{name: str(trained_with.get(name, "")) for name in ("model_size", "image_size", "epochs", "learning_rate")},
    }
    return {name: values[name] for name in REGISTRY_METADATA}


def write_evaluation(report: EvaluationReport, directory: str | Path) -> Path:
    path = Path(directory) / EVALUATION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# The model archive
# --------------------------------------------------------------------------------------------------


def model_manifest(report: EvaluationReport, *, onnx_opset: int) -> ModelManifest:
    """`model.json` for the archive: everything the device needs to run the model as it was evaluated."""
    return ModelManifest(
        class_names=report.class_names,
        input_size=report.input_size,
        confidence_threshold=report.confidence_threshold,
        iou_threshold=report.iou_threshold,
        metrics={name: report.metrics[name] for name in REQUIRED_METRICS},
        dataset_version=report.dataset_version,
        onnx_opset=onnx_opset,
        test_statistics=SplitStatistics.from_json(report.test_statistics),
    )


def build_model_archive(
    onnx_path: str | Path,
    manifest: ModelManifest,
    destination: str | Path,
    *,
    extra_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write `model.tar.gz`: `model.onnx` and `model.json` at the root, then any extra (small) files."""
    ModelManifest.from_json(manifest.to_json())  # the archive never carries a manifest the reader rejects
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(destination, "w:gz") as archive:
        archive.add(str(onnx_path), arcname=MODEL_FILE)
        data = json.dumps(manifest.to_json(), indent=1).encode()
        info = tarfile.TarInfo(MANIFEST_FILE)
        info.size = len(data)
        info.mode = 0o644
        archive.addfile(info, io.BytesIO(data))
        for name, path in (extra_files or {}).items():
            if name in (MODEL_FILE, MANIFEST_FILE):
                raise ValueError(f"extra file name {name!r} is reserved")
            archive.add(str(path), arcname=name)
    return destination


def read_model_archive(path: str | Path) -> tuple[ModelManifest, bytes, list[str]]:
    """(manifest, ONNX bytes, member names) of a model archive; raises ValueError if it breaks the contract."""
    with tarfile.open(path, "r:gz") as archive:
        names = archive.getnames()
        members = {m.name: m for m in archive.getmembers()}
        for required in (MODEL_FILE, MANIFEST_FILE):
            if required not in members or not members[required].isfile():
                raise ValueError(f"{path}: {required} missing at the archive root")
        manifest_file = archive.extractfile(members[MANIFEST_FILE])
        model_file = archive.extractfile(members[MODEL_FILE])
        if manifest_file is None or model_file is None:
            raise ValueError(f"{path}: unreadable archive members")
        try:
            manifest = ModelManifest.from_json(json.loads(manifest_file.read()))
        except (ContractError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: {error}") from None
        return manifest, model_file.read(), names


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def evaluate_and_package(
    onnx_path: str | Path,
    dataset_dir: str | Path,
    *,
    evaluation_dir: str | Path,
    package_dir: str | Path,
    image_size: int,
    confidence_threshold: float,
    iou_threshold: float,
    map50_95_threshold: float,
    regression_margin: float,
    onnx_opset: int,
    work_dir: str | Path,
    champion: ChampionModel | None = None,
    training_summary: str | Path | None = None,
    quantize_int8: bool = False,
) -> tuple[Evaluation, Path]:
    """The pipeline's Evaluate step: `evaluation.json` and `report/` in one folder, `model.tar.gz` in the other.

    With `quantize_int8`, the model is also quantized to INT8 (calibrated on the training images) and scored
    on the same test images; the archive then carries both files, model.json both sets of metrics, and the
    device picks one. A model that cannot be quantized ships as FP32 only, with the reason in the report.
    """
    from training.steps.report import write_html_report  # noqa: PLC0415 - plotting only where a report is written

    evaluation = evaluate_model(
        onnx_path,
        dataset_dir,
        image_size=image_size,
        confidence_threshold=confidence_threshold,
        iou_threshold=iou_threshold,
        map50_95_threshold=map50_95_threshold,
        regression_margin=regression_margin,
        work_dir=work_dir,
        champion=champion,
    )
    summary = Path(training_summary) if training_summary else None
    trained_with = json.loads(summary.read_text(encoding="utf-8")).get("config", {}) if summary else {}
    int8_report, int8_variant, int8_file = None, None, None
    if quantize_int8:
        int8_report, int8_variant, int8_file = _quantize(onnx_path, evaluation, image_size, Path(work_dir) / "int8")
    evaluation = replace(
        evaluation,
        report=replace(
            evaluation.report, registry_metadata=registry_metadata(evaluation, trained_with), int8=int8_report
        ),
    )
    report_path = write_evaluation(evaluation.report, evaluation_dir)
    write_html_report(evaluation, Path(evaluation_dir) / "report", training_summary=summary)
    extras: dict[str, str | Path] = {
        EVALUATION_FILE: report_path,
        PREPARED_FILE: evaluation.dataset.root / PREPARED_FILE,
    }
    if summary is not None:
        extras[TRAINING_SUMMARY_FILE] = summary
    manifest = model_manifest(evaluation.report, onnx_opset=onnx_opset)
    if int8_variant is not None and int8_file is not None:
        manifest = manifest.with_variant(int8_variant)
        extras[int8_variant.file] = int8_file
    archive = build_model_archive(onnx_path, manifest, Path(package_dir) / ARCHIVE_FILE, extra_files=extras)
    return evaluation, archive


def _quantize(
    onnx_path: str | Path, evaluation: Evaluation, image_size: int, work: Path
) -> tuple[dict[str, Any], ModelVariant | None, Path | None]:
    """INT8 model of the new one: (what the report says, model.json's entry, the file), or why there is none.

    The INT8 model is an extra: whatever goes wrong making or scoring it (onnxruntime's quantization tools
    raise more than QuantizationError), the FP32 model that passed its gate still ships, and the report
    says why it ships alone.
    """
    from training.steps import quantize  # noqa: PLC0415 - onnxruntime's quantization tools only when used

    try:
        made = quantize.quantize_and_evaluate(
            onnx_path,
            evaluation.dataset.root,
            fp32_metrics=evaluation.report.metrics,
            image_size=image_size,
            confidence_threshold=evaluation.report.confidence_threshold,
            iou_threshold=evaluation.report.iou_threshold,
            work_dir=work,
            fp32_results=evaluation.challenger.results,
        )
    except quantize.QuantizationError as error:
        LOG.warning("no INT8 model, the FP32 model ships alone: %s", error)
        return {"error": str(error)}, None, None
    except Exception as error:  # any other failure of the INT8 part leaves the FP32 result intact too
        reason = f"{type(error).__name__}: {error}"
        LOG.exception("no INT8 model, the FP32 model ships alone: %s", reason)
        return {"error": reason}, None, None
    return made.to_json(), made.variant, made.quantization.output
