"""How sure a test-split score is: per-image results, mAP over any set of images, bootstrap intervals.

A test split of a few dozen images gives a mAP that moves by several points with the images drawn,
so every score here comes with a 95% confidence interval from a bootstrap over test images (images
drawn with replacement, the mAP recomputed on each draw). Two models scored on the **same** images
are compared by a *paired* bootstrap: each draw scores both models on the same images, so what the
images have in common (easy or hard tags) cancels out and the interval of the difference is much
narrower than the two intervals side by side suggest.

mAP is Ultralytics' own (`ap_per_class`: COCO 101-point interpolation, IoU 0.50:0.95), so the value
on all images equals the validator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MATCH_IOU_INDEX = 0  # IoU 0.5: where precision and recall at the deployment threshold are counted


@dataclass(frozen=True)
class ImageResult:
    """What one model found on one test image, and what the image holds.

    `tp[d, t]` says whether detection `d` is correct at IoU threshold `IOU_THRESHOLDS[t]`; boxes are
    x1, y1, x2, y2 in source-image pixels.
    """

    name: str
    tp: np.ndarray  # (D, 10) bool
    conf: np.ndarray  # (D,)
    pred_cls: np.ndarray  # (D,)
    target_cls: np.ndarray  # (T,)
    pred_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (D, 4)
    target_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # (T, 4)

    def __post_init__(self) -> None:
        detections = len(self.conf)
        if self.tp.shape != (detections, len(IOU_THRESHOLDS)) or len(self.pred_cls) != detections:
            raise ValueError(f"{self.name}: tp, conf and pred_cls disagree on the number of detections")

    @property
    def top_score(self) -> float:
        """The highest detection confidence on the image (0 when nothing was found)."""
        return float(self.conf.max()) if len(self.conf) else 0.0


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def to_json(self) -> list[float]:
        return [self.low, self.high]

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Score:
    """mAP50 and mAP50-95 of one model on a set of images, each with its confidence interval."""

    map50: float
    map50_95: float
    map50_interval: Interval
    map50_95_interval: Interval
    images: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mAP50": self.map50,
            "mAP50-95": self.map50_95,
            "intervals": {"mAP50": self.map50_interval.to_json(), "mAP50-95": self.map50_95_interval.to_json()},
            "images": self.images,
        }


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion on the same images (paired bootstrap)."""

    challenger: Score
    champion: Score
    map50_difference: float
    map50_95_difference: float
    map50_interval: Interval
    map50_95_interval: Interval

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.challenger.images,
            "challenger": self.challenger.to_json(),
            "champion": self.champion.to_json(),
            "difference": {"mAP50": self.map50_difference, "mAP50-95": self.map50_95_difference},
            "intervals": {"mAP50": self.map50_interval.to_json(), "mAP50-95": self.map50_95_interval.to_json()},
        }


def mean_average_precision(results: Sequence[ImageResult]) -> tuple[float, float]:
    """(mAP50, mAP50-95) over the images (each counted as often as it appears), averaged over the classes
    that have labels; NaN when none of the images has a label."""
    from ultralytics.utils.metrics import ap_per_class  # noqa: PLC0415

    targets = np.concatenate([r.target_cls for r in results]) if results else np.zeros(0)
    if len(targets) == 0:
        return float("nan"), float("nan")
    tp = np.concatenate([r.tp for r in results]).astype(bool)
    conf = np.concatenate([r.conf for r in results]).astype(float)
    predicted = np.concatenate([r.pred_cls for r in results]).astype(float)
    ap = ap_per_class(tp, conf, predicted, targets.astype(float))[5]  # (classes with labels, 10)
    return float(ap[:, 0].mean()), float(ap.mean())


def _interval(values: np.ndarray, confidence: float) -> Interval:
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return Interval(float(low), float(high))


def _bootstrap(models: Sequence[Sequence[ImageResult]], samples: int, seed: int) -> np.ndarray:
    """(samples, models, 2): mAP50 and mAP50-95 of each model on the same image draws."""
    images = len(models[0])
    draws = np.random.default_rng(seed).integers(0, images, size=(samples, images))
    return np.array([[mean_average_precision([model[i] for i in draw]) for model in models] for draw in draws])


def _score(results: Sequence[ImageResult], drawn: np.ndarray, confidence: float) -> Score:
    map50, map50_95 = mean_average_precision(results)
    return Score(
        map50=map50,
        map50_95=map50_95,
        map50_interval=_interval(drawn[:, 0], confidence),
        map50_95_interval=_interval(drawn[:, 1], confidence),
        images=len(results),
    )


def score(
    results: Sequence[ImageResult],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Score:
    """mAP50 and mAP50-95 on all images, with percentile bootstrap intervals."""
    if not results:
        raise ValueError("no images to score")
    return _score(results, _bootstrap([results], samples, seed)[:, 0], confidence)


def compare(
    challenger: Sequence[ImageResult],
    champion: Sequence[ImageResult],
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Comparison:
    """Paired bootstrap of challenger - champion; both lists hold the same images in the same order."""
    if [r.name for r in challenger] != [r.name for r in champion]:
        raise ValueError("the two models must be scored on the same images, in the same order")
    if not challenger:
        raise ValueError("no images to compare on")
    drawn = _bootstrap([challenger, champion], samples, seed)
    ours, theirs = _score(challenger, drawn[:, 0], confidence), _score(champion, drawn[:, 1], confidence)
    difference = drawn[:, 0] - drawn[:, 1]
    return Comparison(
        challenger=ours,
        champion=theirs,
        map50_difference=ours.map50 - theirs.map50,
        map50_95_difference=ours.map50_95 - theirs.map50_95,
        map50_interval=_interval(difference[:, 0], confidence),
        map50_95_interval=_interval(difference[:, 1], confidence),
    )


def precision_recall_at(results: Sequence[ImageResult], confidence: float) -> tuple[float, float]:
    """Precision and recall over all classes' detections kept at `confidence`, correct at IoU 0.5.

    Averaged over the classes that have labels (a class without kept detections has precision 0).
    """
    targets = np.concatenate([r.target_cls for r in results]).astype(int) if results else np.zeros(0, int)
    if len(targets) == 0:
        return 0.0, 0.0
    tp = np.concatenate([r.tp[:, MATCH_IOU_INDEX] for r in results]).astype(bool)
    conf = np.concatenate([r.conf for r in results]).astype(float)
    predicted = np.concatenate([r.pred_cls for r in results]).astype(int)
    precisions, recalls = [], []
    for class_id in sorted(set(targets.tolist())):
        kept = (predicted == class_id) & (conf >= confidence)
        correct, found, labeled = int(tp[kept].sum()), int(kept.sum()), int((targets == class_id).sum())
        precisions.append(correct / found if found else 0.0)
        recalls.append(correct / labeled)
    return float(np.mean(precisions)), float(np.mean(recalls))


def detection_rate(results: Sequence[ImageResult], confidence: float) -> float:
    """Share of images with at least one detection at `confidence` (what a device flags as defective)."""
    if not results:
        return 0.0
    return sum(1 for r in results if (r.conf >= confidence).any()) / len(results)
