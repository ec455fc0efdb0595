"""A simulated labeler: what a person does to turn the offered boxes into the true ones, counted.

Offered boxes (a model's pre-labels, or none) are matched to the true boxes of the same class, best
overlap first (intersection over union). A match at `keep_iou` or better is close enough to submit as
it is; a looser match (down to `match_iou`) is moved or resized; an offered box that matches nothing
is deleted; a true box that nothing matched is drawn. Drawing, adjusting and deleting are the work;
kept boxes cost a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shared.contracts import Annotation

KEEP_IOU = 0.85  # a labeler leaves a box this close alone (it is within a few pixels on every side)
MATCH_IOU = 0.3  # below this, fixing the offered box is not easier than deleting it and drawing anew


@dataclass
class Effort:
    images: int = 0
    true_boxes: int = 0
    offered: int = 0
    kept: int = 0
    adjusted: int = 0
    deleted: int = 0
    drawn: int = 0
    images_untouched: int = 0  # submitted as offered (e.g. "no defect" confirmed)
    corrections: list[list[Annotation]] = field(default_factory=list, repr=False)

    @property
    def actions(self) -> int:
        """Boxes a person drew or changed (moved, resized or deleted)."""
        return self.drawn + self.adjusted + self.deleted

    def add(self, other: Effort) -> None:
        for name in ("images", "true_boxes", "offered", "kept", "adjusted", "deleted", "drawn", "images_untouched"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self) -> dict[str, int]:
        return {
            "images": self.images,
            "true_boxes": self.true_boxes,
            "offered": self.offered,
            "kept": self.kept,
            "adjusted": self.adjusted,
            "deleted": self.deleted,
            "drawn": self.drawn,
            "actions": self.actions,
            "images_untouched": self.images_untouched,
        }


def iou(a: Annotation, b: Annotation) -> float:
    width = min(a.x2, b.x2) - max(a.x1, b.x1)
    height = min(a.y2, b.y2) - max(a.y1, b.y1)
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a.x2 - a.x1) * (a.y2 - a.y1) + (b.x2 - b.x1) * (b.y2 - b.y1) - inter
    return inter / union if union > 0 else 0.0


def correct(
    offered: Sequence[Annotation],
    truth: Sequence[Annotation],
    *,
    keep_iou: float = KEEP_IOU,
    match_iou: float = MATCH_IOU,
) -> tuple[Effort, list[Annotation]]:
    """The labeler's work on one image, and the boxes they submit (kept offered boxes, fixed ones, drawn ones)."""
    pairs = sorted(
        (
            (iou(o, t), i, j)
            for i, o in enumerate(offered)
            for j, t in enumerate(truth)
            if o.class_id == t.class_id and iou(o, t) >= match_iou
        ),
        reverse=True,
    )
    used_offered: set[int] = set()
    used_truth: set[int] = set()
    effort = Effort(images=1, true_boxes=len(truth), offered=len(offered))
    submitted: list[Annotation] = []
    for overlap, i, j in pairs:
        if i in used_offered or j in used_truth:
            continue
        used_offered.add(i)
        used_truth.add(j)
        if overlap >= keep_iou:
            effort.kept += 1
            submitted.append(offered[i])
        else:
            effort.adjusted += 1
            submitted.append(truth[j])
    effort.deleted = len(offered) - len(used_offered)
    missing = [t for j, t in enumerate(truth) if j not in used_truth]
    effort.drawn = len(missing)
    submitted.extend(missing)
    effort.images_untouched = int(effort.actions == 0)
    return effort, submitted
