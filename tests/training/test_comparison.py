"""Scores with intervals and the paired comparison, on hand-made predictions whose answers are worked out here.

Each image below holds one labeled scratch. A model either finds it (one detection, correct at every
IoU threshold) or finds nothing. mAP is Ultralytics' (the validator's): the precision envelope sampled
at 101 recall points, ending at zero at the largest recall reached, integrated with the trapezoid rule.
So a perfect detector scores 0.995 (precision 1 up to recall 0.99), and one that finds one of two
scratches at precision 1 scores 0.495 (precision 1 up to recall 0.49, 0 from 0.5 on).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.steps.comparison import (
    ImageResult,
    compare,
    detection_rate,
    mean_average_precision,
    precision_recall_at,
    score,
)
from training.steps.report import image_errors

PERFECT = 0.995  # AP of a detector that finds every scratch and nothing else
HALF = 0.495  # AP when one of two scratches is found, nothing else detected


def found(name: str, conf: float = 0.9) -> ImageResult:
    return ImageResult(
        name=name,
        tp=np.ones((1, 10), dtype=bool),
        conf=np.array([conf]),
        pred_cls=np.array([0.0]),
        target_cls=np.array([0.0]),
        pred_boxes=np.array([[10.0, 10.0, 50.0, 50.0]]),
        target_boxes=np.array([[10.0, 10.0, 50.0, 50.0]]),
    )


def missed(name: str) -> ImageResult:
    return ImageResult(
        name=name,
        tp=np.zeros((0, 10), dtype=bool),
        conf=np.zeros(0),
        pred_cls=np.zeros(0),
        target_cls=np.array([0.0]),
        target_boxes=np.array([[10.0, 10.0, 50.0, 50.0]]),
    )


def false_alarm(name: str, conf: float) -> ImageResult:
    """An image without a scratch on which the model reports one."""
    return ImageResult(
        name=name,
        tp=np.zeros((1, 10), dtype=bool),
        conf=np.array([conf]),
        pred_cls=np.array([0.0]),
        target_cls=np.zeros(0),
        pred_boxes=np.array([[100.0, 100.0, 120.0, 130.0]]),
    )


def test_a_perfect_model_scores_one_whatever_images_are_drawn():
    result = score([found("a"), found("b"), found("c")], samples=200)
    assert (result.map50, result.map50_95) == pytest.approx((PERFECT, PERFECT), abs=1e-9)
    assert (result.map50_interval.low, result.map50_interval.high) == pytest.approx((PERFECT, PERFECT), abs=1e-9)
    assert result.images == 3


def test_finding_one_of_two_scratches():
    assert mean_average_precision([found("a"), missed("b")]) == pytest.approx((HALF, HALF), abs=1e-9)
    assert mean_average_precision([missed("a"), missed("b")]) == (0.0, 0.0)


def test_the_paired_bootstrap_on_two_images_has_the_distribution_worked_out_by_hand():
    # Draws of two images (each 1/4): {a,a} both perfect -> 0; {b,b} champion finds nothing -> 0.995;
    # {a,b} and {b,a} -> 0.995 - 0.495. The 2.5th and 97.5th percentiles are therefore 0 and 0.995.
    challenger = [found("a"), found("b")]
    champion = [found("a"), missed("b")]
    result = compare(challenger, champion, samples=4000)
    assert result.map50_95_difference == pytest.approx(PERFECT - HALF, abs=1e-9)
    interval = result.map50_95_interval
    assert (interval.low, interval.high) == pytest.approx((0.0, PERFECT), abs=1e-9)
    assert result.champion.map50_95 == pytest.approx(HALF, abs=1e-9)
    assert result.challenger.map50_95 == pytest.approx(PERFECT, abs=1e-9)
    champion_interval = result.champion.map50_95_interval
    assert (champion_interval.low, champion_interval.high) == pytest.approx((0.0, PERFECT), abs=1e-9)


def test_the_same_model_twice_differs_by_exactly_nothing():
    images = [found("a"), missed("b"), found("c", conf=0.4), false_alarm("d", 0.8)]
    result = compare(images, images, samples=500)
    assert result.map50_95_difference == 0.0 and result.map50_difference == 0.0
    assert (result.map50_95_interval.low, result.map50_95_interval.high) == (0.0, 0.0)


def test_pairing_is_what_narrows_the_interval():
    # The champion is the challenger with one scratch fewer found: on every draw the challenger is at least as
    # good, so the paired interval never goes below zero although the two intervals overlap widely.
    rng = np.random.default_rng(3)
    challenger, champion = [], []
    for index in range(30):
        name = f"img-{index:02d}"
        conf = float(rng.uniform(0.3, 0.95))
        image = found(name, conf) if rng.random() < 0.7 else missed(name)
        challenger.append(image)
        champion.append(missed(name) if index == 0 else image)
    challenger[0] = found("img-00", 0.9)
    result = compare(challenger, champion, samples=1000)
    assert result.map50_95_interval.low >= 0.0
    assert result.champion.map50_95_interval.high > result.challenger.map50_95_interval.low  # overlapping


def test_draws_without_any_labeled_image_are_left_out():
    # {b,b} holds no label (mAP undefined): the interval comes from the other three draws.
    result = score([found("a"), false_alarm("b", 0.9)], samples=1000)
    assert not math.isnan(result.map50_95_interval.low)
    assert result.map50_95_interval.high == pytest.approx(PERFECT, abs=1e-9)  # {a,a}


def test_the_comparison_refuses_different_images():
    with pytest.raises(ValueError, match="same images"):
        compare([found("a")], [found("b")])
    with pytest.raises(ValueError, match="no images"):
        score([])


def test_precision_recall_and_detection_rate_count_only_what_the_device_reports():
    images = [found("a", 0.9), found("b", 0.2), missed("c"), false_alarm("d", 0.5), false_alarm("e", 0.1)]
    precision, recall = precision_recall_at(images, 0.25)
    assert (precision, recall) == (pytest.approx(1 / 2), pytest.approx(1 / 3))  # a and d kept: one right
    assert detection_rate(images, 0.25) == pytest.approx(2 / 5)
    assert [image.top_score for image in images] == [0.9, 0.2, 0.0, 0.5, 0.1]


def test_mistakes_at_the_deployment_threshold_are_matched_at_iou_half():
    image = ImageResult(
        name="x.jpg",
        tp=np.array([[True] * 10, [False] * 10, [True] * 10]),
        conf=np.array([0.9, 0.6, 0.1]),
        pred_cls=np.array([0.0, 0.0, 0.0]),
        target_cls=np.array([0.0, 0.0]),
        pred_boxes=np.array([[10, 10, 50, 50], [200, 200, 240, 260], [300, 10, 340, 60]], dtype=float),
        target_boxes=np.array([[12, 12, 50, 52], [300, 10, 340, 60]], dtype=float),
    )
    errors = image_errors(image, 0.25)
    assert errors.correct.tolist() == [[10, 10, 50, 50]]
    assert errors.false_alarms.tolist() == [[200, 200, 240, 260]]
    assert errors.missed.tolist() == [[300, 10, 340, 60]]  # found only below the threshold
    assert errors.count == 2
