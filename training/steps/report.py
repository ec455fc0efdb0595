"""The evaluation report a person reads before approving a model: one HTML page and its figures.

Written by the evaluation step next to `evaluation.json` (`report/index.html`, PNG figures, and the
test photos with the model's mistakes drawn on them), linked from the model package's metadata, and
by `training.local`. Figures come from matplotlib with its own bundled font (Agg backend, no font
or network download); photos are drawn with Pillow.

What it shows: the verdict and why; new and approved model side by side with 95% intervals; the
paired difference; the precision-recall curve with the deployment threshold marked; the confidence
histogram (correct detections against false alarms); the training curves; the test photos with
missed scratches and false alarms at the deployment threshold.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.steps.comparison import MATCH_IOU_INDEX, ImageResult

if TYPE_CHECKING:
    from training.steps.evaluation_results import Evaluation, ModelEvaluation

REPORT_FILE = "index.html"
MAX_ERROR_IMAGES = 40
COLOURS = {"new model": "#1f77b4", "approved model": "#7f7f7f"}
_BOX = {"label": (46, 160, 67), "correct": (31, 119, 180), "false alarm": (214, 39, 40), "missed": (255, 127, 14)}


# --------------------------------------------------------------------------------------------------
# What a model got right and wrong at its deployment threshold
# --------------------------------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (N, 4) with every box in `b` (M, 4), x1 y1 x2 y2."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area = lambda boxes: (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


@dataclass(frozen=True)
class ImageErrors:
    """One image at the deployment threshold: detections matched to labels greedily by confidence at IoU 0.5."""

    name: str
    correct: np.ndarray  # (k, 4) kept detections that match a label
    false_alarms: np.ndarray  # kept detections that match none
    missed: np.ndarray  # labels no kept detection matches
    labels: np.ndarray

    @property
    def count(self) -> int:
        return len(self.false_alarms) + len(self.missed)


def image_errors(result: ImageResult, confidence: float) -> ImageErrors:
    kept = np.flatnonzero(result.conf >= confidence)
    kept = kept[np.argsort(-result.conf[kept])]
    boxes = result.pred_boxes[kept] if len(result.pred_boxes) else np.zeros((0, 4))
    iou = _iou(boxes, result.target_boxes)
    matched_labels: set[int] = set()
    correct, false_alarms = [], []
    for row, index in enumerate(kept):
        candidates = [
            (iou[row, t], t)
            for t in range(len(result.target_boxes))
            if t not in matched_labels and result.target_cls[t] == result.pred_cls[index] and iou[row, t] >= 0.5
        ]
        if candidates:
            matched_labels.add(max(candidates)[1])
            correct.append(boxes[row])
        else:
            false_alarms.append(boxes[row])
    missed = [box for t, box in enumerate(result.target_boxes) if t not in matched_labels]
    as_array = lambda items: np.array(items).reshape(-1, 4)  # noqa: E731
    return ImageErrors(result.name, as_array(correct), as_array(false_alarms), as_array(missed), result.target_boxes)


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def precision_recall_curve(results: Sequence[ImageResult]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(recall, precision, confidence) at IoU 0.5 over all classes, detections by falling confidence."""
    labels = sum(len(r.target_cls) for r in results)
    conf = np.concatenate([r.conf for r in results]) if results else np.zeros(0)
    tp = np.concatenate([r.tp[:, MATCH_IOU_INDEX] for r in results]) if results else np.zeros(0, bool)
    order = np.argsort(-conf)
    hits = np.cumsum(tp[order])
    recall = hits / max(labels, 1)
    precision = hits / np.arange(1, len(order) + 1)
    return recall, precision, conf[order]


def _figure_pr(models: Sequence[ModelEvaluation], path: Path) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5), dpi=100)
    for model in models:
        recall, precision, _ = precision_recall_curve(model.results)
        colour = COLOURS.get(model.label, "#2ca02c")
        axis.plot(recall, precision, color=colour, label=f"{model.label} (mAP50 {model.score.map50:.3f})")
        axis.plot(
            [model.recall],
            [model.precision],
            "o",
            color=colour,
            markersize=9,
            markeredgecolor="black",
            label=f"{model.label} at confidence {model.confidence_threshold:g}",
        )
    axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title="Precision-recall, IoU 0.5")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _figure_comparison(models: Sequence[ModelEvaluation], evaluation: Evaluation, path: Path) -> None:
    plt = _pyplot()
    panels = 2 if evaluation.comparison is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4), dpi=100, squeeze=False)
    axis = axes[0][0]
    width = 0.8 / len(models)
    for index, model in enumerate(models):
        values = [model.score.map50, model.score.map50_95]
        intervals = [model.score.map50_interval, model.score.map50_95_interval]
        errors = np.array(
            [
                [v - i.low for v, i in zip(values, intervals, strict=True)],
                [i.high - v for v, i in zip(values, intervals, strict=True)],
            ]
        )
        positions = np.arange(2) + (index - (len(models) - 1) / 2) * width
        axis.bar(
            positions,
            values,
            width,
            yerr=np.clip(errors, 0, None),
            capsize=4,
            label=model.label,
            color=COLOURS.get(model.label),
        )
    axis.set_xticks(range(2), ["mAP50", "mAP50-95"])
    axis.set(ylim=(0, 1), title="Test split, 95% intervals")
    axis.legend(fontsize=8)
    if evaluation.comparison is not None:
        axis = axes[0][1]
        c = evaluation.comparison
        values = [c.map50_difference, c.map50_95_difference]
        intervals = [c.map50_interval, c.map50_95_interval]
        for position, (value, interval) in enumerate(zip(values, intervals, strict=True)):
            axis.errorbar(
                position,
                value,
                yerr=[[value - interval.low], [interval.high - value]],
                fmt="o",
                capsize=6,
                color="black",
            )
        axis.axhline(0, color="grey", linewidth=1)
        margin = float(evaluation.decision.margin)
        axis.axhspan(-margin, 0, color="orange", alpha=0.2, label=f"margin {margin:g}")
        axis.set_xticks(range(2), ["mAP50", "mAP50-95"])
        axis.set(xlim=(-0.5, 1.5), title=f"New - approved, same {len(evaluation.compared_images)} images")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _figure_scores(model: ModelEvaluation, path: Path) -> None:
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=100)
    conf = np.concatenate([r.conf for r in model.results]) if model.results else np.zeros(0)
    correct = np.concatenate([r.tp[:, MATCH_IOU_INDEX] for r in model.results]) if model.results else np.zeros(0, bool)
    shown = conf >= 0.05  # the long tail of near-zero candidates says nothing
    bins = np.linspace(0, 1, 21)
    left.hist(
        [conf[shown & correct], conf[shown & ~correct]],
        bins=bins,
        stacked=True,
        color=["#1f77b4", "#d62728"],
        label=["correct (IoU 0.5)", "false alarm"],
    )
    left.axvline(
        model.confidence_threshold, color="black", linestyle="--", label=f"threshold {model.confidence_threshold:g}"
    )
    left.set(xlabel="detection confidence", ylabel="detections", title="Detections (confidence >= 0.05)")
    left.legend(fontsize=8)
    top = [r.top_score for r in model.results]
    defect = [r.top_score for r in model.results if len(r.target_cls)]
    clean = [r.top_score for r in model.results if not len(r.target_cls)]
    right.hist(
        [defect, clean], bins=bins, stacked=True, color=["#ff7f0e", "#2ca02c"], label=["labeled defect", "no defect"]
    )
    right.axvline(model.confidence_threshold, color="black", linestyle="--")
    right.set(xlabel="highest score on the image", ylabel="images", title=f"Per image ({len(top)} test images)")
    right.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _figure_training(history: Sequence[dict[str, float]], path: Path) -> bool:
    if not history:
        return False
    plt = _pyplot()
    figure, (losses, quality) = plt.subplots(1, 2, figsize=(9, 3.8), dpi=100)
    epochs = [row["epoch"] for row in history]
    for name in ("train_box_loss", "train_cls_loss", "val_box_loss", "val_cls_loss"):
        if all(name in row for row in history):
            losses.plot(
                epochs, [row[name] for row in history], label=name, linestyle="--" if name.startswith("val") else "-"
            )
    losses.set(xlabel="epoch", title="Losses")
    losses.legend(fontsize=8)
    for name in ("mAP50", "mAP50-95"):
        if all(name in row for row in history):
            quality.plot(epochs, [row[name] for row in history], label=f"validation {name}")
    quality.set(xlabel="epoch", ylim=(0, 1), title="Validation split")
    quality.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True


def _draw_errors(errors: ImageErrors, image_path: Path, destination: Path) -> None:
    from PIL import Image, ImageDraw  # noqa: PLC0415

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    draw = ImageDraw.Draw(image)
    width = max(2, round(max(image.size) / 300))
    for kind, boxes in (
        ("label", errors.labels),
        ("correct", errors.correct),
        ("false alarm", errors.false_alarms),
        ("missed", errors.missed),
    ):
        for box in boxes:
            grow = width if kind in ("false alarm", "missed") else 0  # mistakes drawn around, not over, the label
            draw.rectangle(
                [box[0] - grow, box[1] - grow, box[2] + grow, box[3] + grow], outline=_BOX[kind], width=width
            )
    image.thumbnail((640, 640))
    destination.parent.mkdir(parents=True, exist_ok=True)
    image.save(destination, quality=85)


# --------------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------------


def _interval(values: Sequence[float]) -> str:
    return f"{values[0]:.3f} to {values[1]:.3f}"


def _with_interval(value: float, interval: Any) -> str:
    return f"{value:.3f} <small>({interval.low:.3f} to {interval.high:.3f})</small>"


def _model_rows(models: Sequence[ModelEvaluation]) -> str:
    heads = "".join(f"<th>{html.escape(m.label)}</th>" for m in models)
    rows: list[tuple[str, Callable[[ModelEvaluation], str]]] = [
        ("mAP50", lambda m: _with_interval(m.score.map50, m.score.map50_interval)),
        ("mAP50-95", lambda m: _with_interval(m.score.map50_95, m.score.map50_95_interval)),
        ("precision at its threshold", lambda m: f"{m.precision:.3f}"),
        ("recall at its threshold", lambda m: f"{m.recall:.3f}"),
        ("confidence threshold", lambda m: f"{m.confidence_threshold:g}"),
        ("input size", lambda m: f"{m.input_size} px"),
        ("test images scored", lambda m: str(m.score.images)),
    ]
    body = "".join(
        f"<tr><th>{name}</th>" + "".join(f"<td>{cell(m)}</td>" for m in models) + "</tr>" for name, cell in rows
    )
    return f"<table><tr><th></th>{heads}</tr>{body}</table>"


STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
.verdict { font-size: 1.3em; padding: 0.6em; border-radius: 6px; }
.register { background: #e3f5e1; } .no_change { background: #eef; } .fail { background: #fbe3e3; }
figure { display: inline-block; margin: 6px; max-width: 320px; vertical-align: top; }
figure img { max-width: 100%; }
.legend span { padding: 0 8px; border-left: 14px solid; margin-right: 12px; }
"""


def _int8_section(int8: dict[str, Any] | None) -> str:
    """The INT8 model beside the FP32 one (same test images), or why the archive carries FP32 only."""
    if int8 is None:
        return ""
    if "error" in int8:
        return f"<h2>INT8 model</h2><p>Not made: {html.escape(str(int8['error']))}. The devices run the FP32 model.</p>"
    names = ("mAP50", "mAP50-95", "precision", "recall")
    rows = "".join(
        f"<tr><th>{name}</th><td>{int8['fp32'][name]:.3f}</td><td>{int8['int8'][name]:.3f}</td>"
        f"<td>{int8['int8'][name] - int8['fp32'][name]:+.3f}</td></tr>"
        for name in names
    )
    paired = int8.get("int8_minus_fp32") or {}
    interval = (paired.get("intervals") or {}).get("mAP50")
    note = (
        f"<p>INT8 minus FP32, mAP50 on the same images: 95% interval {interval[0]:+.3f} to {interval[1]:+.3f}. "
        "The devices serve INT8 when it loses no more mAP50 than they are configured to accept.</p>"
        if interval
        else ""
    )
    return (
        "<h2>INT8 model</h2><p>Quantized for the devices' CPUs (calibrated on the training images), scored on the "
        "same test images.</p><table><tr><th></th><th>FP32</th><th>INT8</th><th>INT8 - FP32</th></tr>"
        f"{rows}</table>{note}"
    )


def _legend() -> str:
    names = {"label": "label", "correct": "found", "missed": "missed", "false alarm": "false alarm"}
    return "".join(f'<span style="border-color: rgb{_BOX[kind]}">{text}</span>' for kind, text in names.items())


def write_html_report(evaluation: Evaluation, directory: Path, *, training_summary: Path | None = None) -> Path:
    """Write `index.html` and its figures into `directory`; returns the page's path."""
    directory.mkdir(parents=True, exist_ok=True)
    report, decision = evaluation.report, evaluation.decision
    models = [evaluation.challenger] + ([evaluation.champion] if evaluation.champion else [])
    _figure_pr(models, directory / "precision_recall.png")
    _figure_comparison(models, evaluation, directory / "comparison.png")
    _figure_scores(evaluation.challenger, directory / "scores.png")
    summary = (
        json.loads(training_summary.read_text(encoding="utf-8"))
        if training_summary and training_summary.is_file()
        else {}
    )
    has_curves = _figure_training(summary.get("history", []), directory / "training.png")

    errors = [image_errors(r, evaluation.challenger.confidence_threshold) for r in evaluation.challenger.results]
    worst = sorted((e for e in errors if e.count), key=lambda e: (-e.count, e.name))[:MAX_ERROR_IMAGES]
    test_images = evaluation.dataset.root / "images" / "test"
    gallery = []
    for item in worst:
        file = Path("errors") / (Path(item.name).stem + ".jpg")
        _draw_errors(item, test_images / item.name, directory / file)
        name = html.escape(item.name)
        gallery.append(
            f'<figure><img src="{file.as_posix()}" alt="{name}"><figcaption>{name}: {len(item.missed)} missed, '
            f"{len(item.false_alarms)} false alarm(s)</figcaption></figure>"
        )
    missed = sum(len(e.missed) for e in errors)
    false_alarms = sum(len(e.false_alarms) for e in errors)

    verdict_text = {"register": "registered", "no_change": "no change", "fail": "not registered"}[decision.verdict]
    compared = ""
    if evaluation.comparison is not None:
        c = evaluation.comparison
        compared = (
            f"<p>On the same <b>{len(evaluation.compared_images)}</b> test images, new minus approved: mAP50-95 "
            f"<b>{c.map50_95_difference:+.3f}</b> (95% interval {c.map50_95_interval.low:+.3f} to "
            f"{c.map50_95_interval.high:+.3f}), mAP50 {c.map50_difference:+.3f} ({c.map50_interval.low:+.3f} to "
            f"{c.map50_interval.high:+.3f}). {len(evaluation.excluded_images)} test image(s) left out because the "
            "approved model was trained or validated on them.</p>"
        )
    config = summary.get("config", {})
    training_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v) if isinstance(v, dict) else str(v))}</td>"
        "</tr>"
        for k, v in config.items()
        if k not in ("workers",)
    )
    best = summary.get("best", {})
    best_text = ", ".join(f"{k} {v:.3f}" for k, v in best.items()) if best else "not recorded"
    counts = evaluation.dataset.counts
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation {html.escape(report.dataset_version)}</title>
<style>{STYLE}</style></head><body>
<h1>Model evaluation: {html.escape(report.dataset_version)}</h1>
<p class="verdict {decision.verdict}">Quality gate: <b>{verdict_text}</b>. {html.escape(decision.reason)}</p>
<h2>New and approved model on this run's test split</h2>
<p>Dataset {html.escape(report.dataset_version)}: {counts.get("train", 0)} training,
{counts.get("val", 0)} validation and {counts.get("test", 0)} test images; {report.instances} labeled defects
in the test split. Intervals: 95%,
bootstrap over test images ({report.bootstrap.get("samples")} draws).</p>
{_model_rows(models)}
{compared}
<img src="comparison.png" alt="mAP with intervals">
{_int8_section(report.int8)}
<h2>Precision and recall</h2>
<p>The dot is where the device works: detections at or above the deployment confidence threshold.</p>
<img src="precision_recall.png" alt="precision-recall curve">
<img src="scores.png" alt="confidence histograms">
<h2>Mistakes on the test photos (new model, confidence {evaluation.challenger.confidence_threshold:g})</h2>
<p>{missed} missed defect(s) and {false_alarms} false alarm(s) over {len(errors)} images;
the {len(worst)} images with the most mistakes are shown.</p>
<p class="legend">{_legend()}</p>
{"".join(gallery) or "<p>None.</p>"}
<h2>Training</h2>
<p>Validation of the kept weights: {html.escape(best_text)}.</p>
{'<img src="training.png" alt="training curves">' if has_curves else "<p>No training curves recorded.</p>"}
<table>{training_rows}</table>
</body></html>
"""
    path = directory / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
