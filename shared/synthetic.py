"""Synthetic engraved metal tags with drawn defects and their exact boxes.

Tests, benchmarks and local runs use these instead of downloaded data: a brushed-metal background,
engraved marks that look like serial numbers (no fonts needed), and defects drawn at known places.
Class 0 is a scratch (a thin bright or dark stroke); further classes, when configured, get other
shapes (a dent, a stain) so multi-class code paths can be exercised too.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True)
class Box:
    """A defect's box in source-image pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    class_id: int


@dataclass(frozen=True)
class Sample:
    path: Path
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


def _background(rng: random.Random, width: int, height: int) -> Image.Image:
    base = rng.randint(120, 170)
    image = Image.new("L", (width, height), base)
    draw = ImageDraw.Draw(image)
    for y in range(height):  # brushed metal: faint horizontal streaks
        shade = base + rng.randint(-12, 12)
        draw.line([(0, y), (width, y)], fill=shade)
    return image.filter(ImageFilter.GaussianBlur(0.6))


def _engraving(rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    """Rows of short strokes standing in for an engraved serial number."""
    x0, y0 = int(width * 0.1), int(height * 0.15)
    glyph_w, glyph_h = max(4, width // 30), max(6, height // 12)
    for row in range(2):
        for column in range(rng.randint(6, 10)):
            gx = x0 + column * int(glyph_w * 1.6)
            gy = y0 + row * int(glyph_h * 1.8)
            for _ in range(rng.randint(2, 3)):
                points = [(gx + rng.randint(0, glyph_w), gy + rng.randint(0, glyph_h)) for _ in range(2)]
                draw.line(points, fill=rng.randint(40, 80), width=2)


def _scratch(
    rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int
) -> tuple[float, float, float, float]:
    length = rng.uniform(0.2, 0.5) * min(width, height)
    angle = rng.uniform(0, math.pi)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.3, 0.8) * height
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    stroke = rng.randint(2, 4)
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=rng.choice([15, 245]), width=stroke)
    pad = stroke / 2 + 1
    return cx - abs(dx) - pad, cy - abs(dy) - pad, cx + abs(dx) + pad, cy + abs(dy) + pad


def _blob(
    rng: random.Random, draw: ImageDraw.ImageDraw, width: int, height: int, *, ellipse: bool
) -> tuple[float, float, float, float]:
    w, h = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
    x1, y1 = rng.uniform(0.05, 0.9) * width - w / 2, rng.uniform(0.3, 0.85) * height - h / 2
    x1, y1 = max(1.0, x1), max(1.0, y1)
    box = (x1, y1, min(width - 1.0, x1 + w), min(height - 1.0, y1 + h))
    (draw.ellipse if ellipse else draw.rectangle)(box, fill=rng.choice([30, 225]))
    return box


def make_tag(
    rng: random.Random, *, width: int = 320, height: int = 240, defects: int = 1, num_classes: int = 1
) -> tuple[Image.Image, list[Box]]:
    """One tag image (RGB) with `defects` defects and their boxes, clipped to the image."""
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    _engraving(rng, draw, width, height)
    boxes = []
    for _ in range(defects):
        class_id = rng.randrange(num_classes)
        if class_id % 3 == 0:
            x1, y1, x2, y2 = _scratch(rng, draw, width, height)
        else:
            x1, y1, x2, y2 = _blob(rng, draw, width, height, ellipse=class_id % 3 == 1)
        boxes.append(
            Box(
                x1=round(max(0.0, x1), 2),
                y1=round(max(0.0, y1), 2),
                x2=round(min(float(width), x2), 2),
                y2=round(min(float(height), y2), 2),
                class_id=class_id,
            )
        )
    return image.convert("RGB"), boxes


def write_dataset(
    directory: str | Path,
    count: int,
    *,
    seed: int = 0,
    width: int = 320,
    height: int = 240,
    num_classes: int = 1,
    image_format: str = "jpg",
    empty_fraction: float = 0.1,
) -> list[Sample]:
    """Write `count` tags to `directory` and a `labels.jsonl` with their boxes; return the samples.

    About `empty_fraction` of the tags have no defect (a frame with nothing to find is normal).
    Formats alternate between jpg and png when `image_format` is "mixed".
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        defects = 0 if rng.random() < empty_fraction else rng.randint(1, 2)
        image, boxes = make_tag(rng, width=width, height=height, defects=defects, num_classes=num_classes)
        suffix = ("jpg", "png")[index % 2] if image_format == "mixed" else image_format
        path = directory / f"tag-{seed:04d}-{index:05d}.{suffix}"
        image.save(path, quality=95) if suffix == "jpg" else image.save(path)
        samples.append(Sample(path=path, width=width, height=height, boxes=boxes))
    with (directory / "labels.jsonl").open("w", encoding="utf-8") as handle:
        for sample in samples:
            record = {
                "image": sample.path.name,
                "width": sample.width,
                "height": sample.height,
                "boxes": [asdict(box) for box in sample.boxes],
            }
            handle.write(json.dumps(record) + "\n")
    return samples
